//! Runners in processes of their own: `create --no-wait` and `serve` start this binary's
//! `migration` commands detached (their own process group, so they outlive the shell or the
//! server), logging to `logs/<name>.log` in the state directory, and return once the runner
//! has recorded that it runs the migration, or with what it said when it stopped first.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::store::{self, Location, Migration, Store};

/// A started runner.
pub struct Runner {
    pub child: Child,
    pub log: PathBuf,
}

/// What a runner was started for.
pub struct Launch<'a> {
    pub exe: &'a Path,
    /// Where its log goes (`logs/`).
    pub state_dir: &'a Path,
    /// The store it uses (handed over in its environment when shared: the URI may hold a
    /// password).
    pub store: &'a Location,
    /// The migration's name: its log file's name (checked with `validate_name` first).
    pub name: &'a str,
    pub args: Vec<OsString>,
    /// Written to its standard input, then closed (a properties body with its passwords).
    pub stdin: Option<Vec<u8>>,
    /// Set in its environment only (passwords).
    pub env: Vec<(&'static str, String)>,
}

/// Starts the runner. Its log is private (0600, in a 0700 directory).
pub fn start(launch: Launch<'_>) -> Result<Runner> {
    crate::migration::validate_name(launch.name)?;
    let logs = launch.state_dir.join("logs");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&logs).with_context(|| format!("creating {}", logs.display()))?;
    }
    let log_path = logs.join(format!("{}.log", launch.name));
    let log = store::create_private_file(&log_path)?;
    let mut cmd = Command::new(launch.exe);
    cmd.args(&launch.args)
        .stdin(if launch.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for (key, value) in launch.env.iter().chain(&launch.store.child_env()) {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().context("starting the detached runner")?;
    if let Some(input) = launch.stdin {
        let mut stdin = child.stdin.take().expect("piped above");
        stdin.write_all(&input).context("handing the properties to the runner")?;
    }
    Ok(Runner { child, log: log_path })
}

impl Runner {
    /// Leaves the runner to itself, reaping it when it exits (a long-running parent such as
    /// `serve` would otherwise keep every finished runner as a zombie).
    pub fn reap_in_background(self) {
        let mut child = self.child;
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

/// How a started runner got on.
pub enum Started {
    /// It runs the migration (its lease's process).
    Running(Box<Migration>),
    /// It ended before (or without) taking the migration on: its exit status and what it
    /// printed (the error, for bad input).
    Ended { success: bool, output: String },
}

/// Waits until `runner` has recorded migration `name` (in the store at `location`) as its
/// own, or ends.
pub async fn wait_started(location: &Location, name: &str, target: Option<&str>, runner: &mut Runner) -> Result<Started> {
    let store = Store::open_at(location)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = runner.child.id();
    loop {
        if let Some(m) = store.find(name, target)?
            && m.runner_pid == Some(pid)
        {
            return Ok(Started::Running(Box::new(m)));
        }
        if let Some(status) = runner.child.try_wait()? {
            let output = std::fs::read_to_string(&runner.log).unwrap_or_default();
            return Ok(Started::Ended { success: status.success(), output });
        }
        if Instant::now() > deadline {
            bail!("the detached runner (process {pid}) has not taken migration {name:?} on after 2 minutes; see {}", runner.log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Error:` lines of a runner's output: what it refused and why.
pub fn error_text(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| l.starts_with("Error: ") || l.starts_with("Caused by: ")).collect();
    if lines.is_empty() { output.trim().to_string() } else { lines.join("\n") }
}
