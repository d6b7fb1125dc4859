//! Hostile fixture: tries to reach the filesystem, the network and the environment. Under
//! the host's sandbox every attempt must fail; the rule then reports `sandbox-held` (info),
//! and `escaped-fs` / `escaped-net` / `escaped-env` (errors) for any attempt that worked.

use pgferry_sdk::*;

#[derive(Default)]
pub struct Escape;

impl Rule for Escape {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("escape", "Tries to leave the sandbox")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        let mut findings = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/") {
            findings.push(error("escaped-fs", format!("listed / ({} entries)", entries.count())));
        }
        if let Ok(bytes) = std::fs::read("/etc/passwd") {
            findings.push(error("escaped-fs", format!("read /etc/passwd ({} bytes)", bytes.len())));
        }
        if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
            findings.push(error("escaped-net", "connected to 127.0.0.1:5432"));
        }
        let vars = std::env::vars().count();
        if vars > 0 {
            findings.push(error("escaped-env", format!("saw {vars} environment variables")));
        }
        if let Ok(home) = std::env::var("HOME") {
            findings.push(error("escaped-env", format!("read HOME={home}")));
        }
        if findings.is_empty() {
            findings.push(info("sandbox-held", "no file, socket or environment variable was reachable"));
        }
        Ok(findings)
    }
}

export_rules!(Escape);
