//! The server's own tooling (pg_dump, pg_restore), found on this machine in a version that
//! can read the source: pg_dump refuses servers newer than itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::process::Command as AsyncCommand;

use anyhow::{bail, Context, Result};

use crate::connect::{ConnSpec, ConnectionLost, Role};

/// A directory holding pg_dump and pg_restore of one major version.
#[derive(Clone, Debug)]
pub struct PgTools {
    pub bin_dir: PathBuf,
    pub major: u32,
}

fn major_of(bin_dir: &Path) -> Option<u32> {
    let out = Command::new(bin_dir.join("pg_dump")).arg("--version").output().ok()?;
    // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = explicit {
        dirs.push(dir.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    dirs.retain(|d| d.join("pg_dump").is_file() && d.join("pg_restore").is_file());
    dirs
}

/// The oldest pg_dump/pg_restore pair that can read a `source_major` server (so its output
/// needs the fewest new features on the target). `explicit` (`--pg-bin`) must fit.
pub fn find(source_major: u32, explicit: Option<&Path>) -> Result<PgTools> {
    if let Some(dir) = explicit {
        let major = major_of(dir).with_context(|| format!("no usable pg_dump in --pg-bin {}", dir.display()))?;
        if major < source_major {
            bail!("pg_dump in {} is version {major}, which cannot dump a PostgreSQL {source_major} source; point --pg-bin at version {source_major} or newer", dir.display());
        }
        return Ok(PgTools { bin_dir: dir.to_path_buf(), major });
    }
    let mut found: Vec<PgTools> = candidates(None).into_iter().filter_map(|d| Some(PgTools { major: major_of(&d)?, bin_dir: d })).collect();
    found.sort_by_key(|t| t.major);
    let seen: Vec<String> = found.iter().map(|t| format!("{} ({})", t.major, t.bin_dir.display())).collect();
    found.into_iter().find(|t| t.major >= source_major).with_context(|| {
        format!(
            "no pg_dump of version {source_major} or newer on this machine (found: {}); install the PostgreSQL {source_major} client (e.g. apt-get install postgresql-client-{source_major}) or pass --pg-bin DIR",
            if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
        )
    })
}

impl PgTools {
    /// `tool` connected to `db` on `spec`'s server (see [`libpq_command`]).
    pub fn command(&self, tool: &str, spec: &ConnSpec, db: &str) -> AsyncCommand {
        let mut cmd = libpq_command(self.bin_dir.join(tool), spec, db);
        cmd.arg("--dbname").arg(spec.conninfo(db));
        cmd
    }

    /// `tool` for work that connects nowhere (`pg_restore --list`), with the same clean
    /// environment.
    pub fn offline(&self, tool: &str) -> AsyncCommand {
        let mut cmd = AsyncCommand::new(self.bin_dir.join(tool));
        cmd.kill_on_drop(true);
        clear_libpq_env(&mut cmd);
        cmd
    }
}

/// The one way pgferry starts a libpq program: none of pgferry's own `PG*` variables reach
/// it (PGSERVICE, PGHOSTADDR, PGOPTIONS, PGSSLKEY… would redirect or change it), the
/// connection is what pgferry decided, passed as [`ConnSpec::conninfo`], and the password
/// (for `db`, `~/.pgpass` read as for pgferry's own connections) goes only through the
/// child's environment, never its command line.
pub fn libpq_command(program: impl AsRef<std::ffi::OsStr>, spec: &ConnSpec, db: &str) -> AsyncCommand {
    let mut cmd = AsyncCommand::new(program);
    // A canceled migration drops this future: the tool must not outlive it.
    cmd.kill_on_drop(true);
    clear_libpq_env(&mut cmd);
    if let Some(pw) = spec.password_for(db) {
        cmd.env("PGPASSWORD", pw.expose());
    }
    cmd
}

fn clear_libpq_env(cmd: &mut AsyncCommand) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
}

/// Runs a tool; the error names it, the server and what it printed. One that lost its
/// server (libpq's words for it) fails with a [`ConnectionLost`], so the step is tried again
/// once the server is back.
pub async fn run(mut cmd: AsyncCommand, what: &str) -> Result<()> {
    // pg_dump reads the source; pg_restore writes the target.
    let role = if cmd.as_std().get_program().to_string_lossy().ends_with("pg_dump") { Role::Source } else { Role::Target };
    let out = cmd.output().await.with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let message = format!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        if lost_connection(&stderr) {
            return Err(ConnectionLost { role, message }.into());
        }
        bail!(message);
    }
    Ok(())
}

/// Whether libpq's messages in a tool's output say the connection was lost or could not
/// be made (rather than that the server refused a statement).
fn lost_connection(stderr: &str) -> bool {
    const LOST: &[&str] = &[
        "server closed the connection unexpectedly",
        "could not receive data from server",
        "could not send data to server",
        "no connection to the server",
        "SSL SYSCALL error",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "Connection refused",
        "Connection reset by peer",
        "lost synchronization with server",
        "timeout expired",
    ];
    LOST.iter().any(|words| stderr.contains(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn_config::{conninfo_quote, RootCert};
    use crate::properties::SslMode;

    fn spec() -> ConnSpec {
        ConnSpec {
            role: Role::Source,
            host: "db.example".into(),
            port: 6432,
            user: "o'brien".into(),
            password: Some(crate::properties::Secret::new("pw-not-on-the-command-line")),
            dbname: "postgres".into(),
            ssl_mode: SslMode::Require,
            root_cert: RootCert::File("/certs/root.crt".into()),
            connect_timeout: std::time::Duration::from_secs(5),
            application_name: "pgferry".into(),
        }
    }

    #[test]
    fn lost_servers_are_told_from_refusals_in_libpq_words() {
        assert!(lost_connection("pg_dump: error: query failed: server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally"));
        assert!(lost_connection("pg_restore: error: connection to server at \"127.0.0.1\", port 5 failed: Connection refused"));
        assert!(!lost_connection("pg_restore: error: connection to server at \"127.0.0.1\", port 5 failed: FATAL:  password authentication failed for user \"u\""));
        assert!(!lost_connection("pg_restore: error: could not execute query: ERROR:  permission denied for schema s"));
    }

    #[test]
    fn names_are_quoted_values_in_the_connection_string() {
        let info = spec().conninfo("host=127.0.0.1 port=1 dbname=x");
        assert_eq!(
            info,
            r"host='db.example' port='6432' user='o\'brien' dbname='host=127.0.0.1 port=1 dbname=x' sslmode='require' connect_timeout='5' application_name='pgferry' sslrootcert='/certs/root.crt'"
        );
        assert!(!info.contains("pw-not"), "the password is not in the connection string");
        assert_eq!(conninfo_quote(r"a\'b"), r"'a\\\'b'");
        assert_eq!(conninfo_quote(""), "''");
        let verify = ConnSpec { ssl_mode: SslMode::VerifyFull, ..spec() };
        assert!(verify.conninfo("postgresql://evil/x").ends_with("sslrootcert='/certs/root.crt'"));
    }

    #[test]
    fn children_get_no_pg_variable_but_the_password() {
        let tools = PgTools { bin_dir: "/nonexistent".into(), major: 15 };
        // SAFETY: this test alone touches these variables.
        unsafe { std::env::set_var("PGSERVICE", "evil") };
        let cmd = tools.command("pg_dump", &spec(), "db");
        let std = cmd.as_std();
        let envs: Vec<(String, Option<String>)> = std
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        assert!(envs.contains(&("PGSERVICE".into(), None)), "{envs:?}");
        let set: Vec<&(String, Option<String>)> = envs.iter().filter(|(_, v)| v.is_some()).collect();
        assert_eq!(set, [&("PGPASSWORD".to_string(), Some("pw-not-on-the-command-line".to_string()))]);
        let args: Vec<String> = std.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[0], "--dbname");
        assert!(args[1].contains("dbname='db'"));
    }
}
