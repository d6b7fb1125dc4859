//! The server's own tooling (pg_dump, pg_restore), found on this machine in a version that
//! can read the source: pg_dump refuses servers newer than itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::process::Command as AsyncCommand;

use anyhow::{bail, Context, Result};

use crate::connect::ConnSpec;
use crate::properties::SslMode;

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
    /// A command for `tool` connected to `db` on `spec`'s server: the connection goes through
    /// the environment (PGPASSWORD never appears on a command line).
    pub fn command(&self, tool: &str, spec: &ConnSpec, db: &str) -> AsyncCommand {
        let mut cmd = AsyncCommand::new(self.bin_dir.join(tool));
        // A canceled migration drops this future: the tool must not outlive it.
        cmd.kill_on_drop(true);
        cmd.env("PGHOST", &spec.host)
            .env("PGPORT", spec.port.to_string())
            .env("PGUSER", &spec.user)
            .env("PGDATABASE", db)
            .env("PGAPPNAME", "pgferry")
            .env("PGSSLMODE", match spec.ssl_mode {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                SslMode::VerifyCA => "verify-ca",
                SslMode::VerifyFull => "verify-full",
            })
            .env("PGCONNECT_TIMEOUT", spec.connect_timeout.as_secs().max(1).to_string())
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        match &spec.password {
            Some(pw) => cmd.env("PGPASSWORD", pw.expose()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        if let Some(root) = &spec.root_cert {
            cmd.env("PGSSLROOTCERT", root);
        }
        cmd
    }
}

/// Runs a tool; the error names it, the server and what it printed.
pub async fn run(mut cmd: AsyncCommand, what: &str) -> Result<()> {
    let out = cmd.output().await.with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}
