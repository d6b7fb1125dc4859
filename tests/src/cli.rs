//! Running the real `pgferry` binary in tests, with its own state directory, and making its
//! output stable for snapshots (ports, times, durations and versions replaced by names).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{workspace_root, Cluster};

/// The `pgferry` binary of this workspace, built once per test process.
pub fn pgferry_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root).args(["build", "--quiet", "-p", "pgferry", "--bin", "pgferry"]);
        // `cargo test` sets CARGO_PKG_* and CARGO_MANIFEST_DIR for this crate; passed on, they
        // would make build scripts (ring's) rerun and rebuild half the tree every time.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_") || key == "CARGO_MANIFEST_DIR" || key == "CARGO_CRATE_NAME" || key == "CARGO_PRIMARY_PACKAGE" {
                cmd.env_remove(&*key);
            }
        }
        let status = cmd.status()
            .expect("running cargo build for the pgferry binary");
        assert!(status.success(), "building the pgferry binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        target.join("debug").join("pgferry")
    })
    .clone()
}

/// One isolated pgferry "installation": its own state dir, the shared compile cache.
pub struct Pgferry {
    dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Exit code, stdout and stderr in one block, for snapshots.
    pub fn transcript(&self) -> String {
        format!("exit: {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Default for Pgferry {
    fn default() -> Self {
        Self::new()
    }
}

impl Pgferry {
    pub fn new() -> Self {
        Pgferry { dir: tempfile::Builder::new().prefix("pgferry-cli-").tempdir().expect("temp dir") }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` into this installation's directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("writing a test file");
        path
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(pgferry_bin());
        cmd.env("PGFERRY_STATE_DIR", self.dir.path().join("state"))
            .env("PGFERRY_CACHE_DIR", workspace_root().join("target").join("pgferry-test-cache"))
            .env("HOME", self.dir.path())
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGFERRY_PLUGINS")
            .env_remove("RUST_LOG")
            .env_remove("PGFERRY_LOG");
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> CliOutput {
        self.run_with(args, &[])
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut cmd = self.command();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running pgferry");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Writes `<db>.json`, the properties of a migration of `db` from `source` (on-premises,
    /// user postgres) with `extra` keys merged in, and returns its path.
    pub fn properties(&self, source: &Cluster, db: &str, extra: Value) -> String {
        let mut body = json!({"SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()), "DBsToMigrate": [db], "sourceType": "OnPremises"});
        body.as_object_mut().unwrap().extend(extra.as_object().expect("extra properties are an object").clone());
        self.write(&format!("{db}.json"), json!({ "properties": body }).to_string()).display().to_string()
    }

    /// `migration show --output json` of migration `name`.
    pub fn show(&self, name: &str) -> Value {
        let out = self.run(&["migration", "show", "--migration-name", name, "--output", "json"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("show {name}: {e}: {}", out.transcript()))
    }

    /// Polls `show` until `done` holds for its JSON document, which it returns. Panics when
    /// the migration fails first (unless `done` accepts that) or `timeout` passes.
    pub fn wait_for(&self, name: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(&["migration", "show", "--migration-name", name, "--output", "json"]);
            // A runner just started may not have recorded the migration yet.
            if let Ok(doc) = serde_json::from_str::<Value>(&out.stdout) {
                if done(&doc) {
                    return doc;
                }
                assert!(doc["state"] != "Failed", "{name} failed before {what}: {doc:#}");
            }
            assert!(Instant::now() < deadline, "{name} never reached {what}: {}", out.transcript());
            // Short: some tests catch a state that lasts a second or two.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Replaces what differs between runs: the given ports by names, times, durations, server
/// versions and temp paths.
pub fn stabilize(text: &str, ports: &[(u16, &str)], dir: &Path) -> String {
    let mut text = text.replace(&dir.display().to_string(), "[DIR]");
    for (port, name) in ports {
        text = text.replace(&format!(":{port}"), &format!(":[{name}]"));
        text = text.replace(&format!("\"port\": {port}"), &format!("\"port\": \"[{name}]\""));
    }
    let rules: &[(&str, &str)] = &[
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "[TIME]"),
        (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "[TIME]"),
        (r#""durationSeconds": [0-9.]+"#, r#""durationSeconds": "[DURATION]""#),
        (r"\b\d+(\.\d)?s\b|\b\d+m\d\ds\b", "[DURATION]"),
        (r"PostgreSQL 1\d\.\d+", "PostgreSQL [VERSION]"),
        (r#""(source|target)Version": "[^"]*""#, r#""${1}Version": "[VERSION]""#),
    ];
    for (pattern, replacement) in rules {
        text = regex::Regex::new(pattern).unwrap().replace_all(&text, *replacement).into_owned();
    }
    text
}

/// A running `pgferry serve` on a free loopback port; stopped when dropped.
pub struct Served {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The first line it printed: the console's URL (with `?token=` on a first start).
    pub first_line: String,
}

impl Served {
    /// The token of the first line (a first start shows it).
    pub fn token(&self) -> String {
        self.first_line.split_once("?token=").expect("a first start shows the token").1.to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pgferry {
    /// Starts `pgferry serve --listen 127.0.0.1:0` with `extra` arguments and waits for the
    /// first line it prints.
    pub fn serve(&self, extra: &[&str]) -> Served {
        use std::io::BufRead;
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting pgferry serve");
        let mut first_line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first_line).expect("reading serve's first line");
        let first_line = first_line.trim().to_string();
        assert!(first_line.starts_with("http://127.0.0.1:"), "the first line is the console's URL: {first_line:?}");
        let base = first_line.split('/').take(3).collect::<Vec<_>>().join("/");
        Served { child, base, first_line }
    }
}
