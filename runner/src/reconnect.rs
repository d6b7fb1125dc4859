//! Riding out short outages: a source or target that restarts, or a network that drops or
//! stalls the connections, costs a reconnect, not the migration. Which errors mean a lost
//! connection (as opposed to a change the target refused), the backoff between attempts, and
//! the time limit (`--reconnect-timeout`) after which the migration gives up.
//!
//! One database's stream runs under [`supervise`]: on a lost connection it waits and starts
//! again from the slot, and the target's replication origin says which transactions it
//! already has (see `apply`), so nothing is lost or applied twice. [`watch`] polls each
//! server (the source for the WAL each slot holds) and notices one that stopped answering,
//! which a stream waiting for changes or for an answer cannot tell from a quiet one.
//!
//! The other steps (the copy, post-data, verification, the cutover's last part) are
//! repeatable from what the catalog records: [`Outages`] waits out a lost server and the step
//! runs again from there, under [`unless_silent`] so that a stalled server cannot hold it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use pgwire_replication::{PgWireError, ReplicationClient};
use serde_json::json;
use tokio::sync::Notify;

use crate::replication::apply::{self, ApplyStats};
use crate::replication::stream::PgOutputStream;
use crate::replication::{slot, Names};
use crate::connect::{is_lost, is_lost_io, pg_failure, ConnSpec, ConnectionLost, Role};

/// How long to keep trying to reach a server, unless `--reconnect-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(10);
/// A session that stays up this long has ended the outage, even when a quiet source gave it
/// nothing to apply.
const STABLE: Duration = Duration::from_secs(60);
/// How often the source is asked for the WAL its slots hold.
const POLL: Duration = Duration::from_secs(5);

/// Whether an error means a connection was lost or could not be made, rather than that a
/// server refused what was asked (a constraint violation, a missing table: those fail at once).
pub fn is_connection_lost(e: &anyhow::Error) -> bool {
    lost_server(e).is_some()
}

/// The server whose connection was lost, when that is what the error is.
fn lost_server(e: &anyhow::Error) -> Option<Role> {
    e.chain().find_map(|cause| {
        if let Some(lost) = cause.downcast_ref::<ConnectionLost>() {
            return Some(lost.role);
        }
        // The replication connection is the only one of this crate's: always the source.
        if let Some(e) = cause.downcast_ref::<PgWireError>() {
            return wire_lost(e).then_some(Role::Source);
        }
        // The source speaks to a stream through pgwire-replication: a bare tokio-postgres
        // error there is the target's.
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return is_lost(e).then_some(Role::Target);
        }
        None
    })
}

fn wire_lost(e: &PgWireError) -> bool {
    match e {
        PgWireError::Io(io) => is_lost_io(io),
        PgWireError::Task(_) => true,
        // The server's words come as text: "… (SQLSTATE 57P01)". 55006: the slot is still
        // held by our walsender from before the reconnect.
        PgWireError::Server(message) => ["57P01", "57P02", "57P03", "55006", "08"].iter().any(|code| message.contains(&format!("(SQLSTATE {code}"))),
        _ => false,
    }
}

/// One outage: since when a server cannot be reached, how often it was tried.
struct Outage {
    since: Instant,
    since_wall: chrono::DateTime<chrono::Utc>,
    attempts: u32,
    server: String,
    /// What was interrupted: the error that began the outage.
    first_error: String,
    last_error: String,
}

/// The time limit and the outage under way, for one connection's user (a stream, the
/// monitor, a fence).
pub struct Reconnect {
    limit: Duration,
    /// The command that carries the migration on once the server is back.
    resume: String,
    outage: Option<Outage>,
}

impl Reconnect {
    pub fn new(limit: Duration, resume: &str) -> Reconnect {
        Reconnect { limit, resume: resume.to_string(), outage: None }
    }

    /// What is left of the time limit.
    pub fn remaining(&self) -> Duration {
        self.outage.as_ref().map_or(self.limit, |o| self.limit.saturating_sub(o.since.elapsed()))
    }

    /// A connection worked again (it applied, caught up or answered): the next outage has
    /// the whole time limit.
    pub fn recovered(&mut self) {
        self.outage = None;
    }

    /// Counts a lost connection to `server` (for `what`): how long to wait before the next
    /// attempt, or the error that gives up once the time limit has passed.
    pub fn failed(&mut self, error: &anyhow::Error, server: &str, what: &str) -> Result<Duration> {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            since_wall: chrono::Utc::now(),
            attempts: 0,
            server: String::new(),
            first_error: format!("{error:#}"),
            last_error: String::new(),
        });
        outage.attempts += 1;
        outage.server = server.to_string();
        outage.last_error = format!("{error:#}");
        let tried = outage.since.elapsed();
        if tried >= self.limit {
            let first = if outage.first_error == outage.last_error { String::new() } else { format!("; the outage began with: {}", outage.first_error) };
            anyhow::bail!(
                "gave up after {} s of trying to reach the {server} ({what}; {} attempts, the time limit is --reconnect-timeout {}): {}{first}; once it is reachable again, run `{}`",
                tried.as_secs(),
                outage.attempts,
                self.limit.as_secs(),
                outage.last_error,
                self.resume
            );
        }
        let wait = FIRST_WAIT.saturating_mul(1 << (outage.attempts - 1).min(5)).min(LONGEST_WAIT);
        tracing::warn!("lost the connection to the {server} ({what}): {}; trying again in {wait:?} (attempt {})", outage.last_error, outage.attempts);
        // Never wait past the limit: giving up is on time.
        Ok(wait.min(self.remaining()))
    }

    /// `{"since", "attempts", "server", "lastError"}` while reconnecting, for `show`.
    pub fn status(&self) -> Option<serde_json::Value> {
        self.outage.as_ref().map(|o| json!({ "since": o.since_wall.to_rfc3339(), "attempts": o.attempts, "server": o.server, "lastError": o.last_error }))
    }
}

/// Runs `op` until it succeeds, trying again after a lost connection to `server` (each try
/// bounded by what is left of the time limit, so a stalled server counts as lost).
pub async fn retry<T, F, Fut>(limit: Duration, resume: &str, server: &ConnSpec, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut reconnect = Reconnect::new(limit, resume);
    loop {
        let error = match tokio::time::timeout(reconnect.remaining(), op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if is_connection_lost(&e) => e,
            Ok(Err(e)) => return Err(e),
            Err(_) => no_answer(server),
        };
        let wait = reconnect.failed(&error, &server.describe(), what)?;
        tokio::time::sleep(wait).await;
    }
}

fn no_answer(server: &ConnSpec) -> anyhow::Error {
    ConnectionLost { role: server.role, message: format!("the {} stopped answering", server.describe()) }.into()
}

/// Connects to `server` and asks it `select 1`, within its connect timeout: a
/// [`ConnectionLost`] error when it cannot be reached or does not answer.
pub async fn probe(server: &ConnSpec) -> Result<()> {
    let ask = async {
        let (client, _) = server.connect(&server.dbname).await?;
        client.simple_query("select 1").await.map_err(|e| pg_failure(server.role, &e, format!("asking the {}", server.describe())))?;
        anyhow::Ok(())
    };
    tokio::time::timeout(server.connect_timeout, ask).await.unwrap_or_else(|_| Err(no_answer(server)))
}

/// How many probes in a row must find a server out of reach before the work in progress
/// is given up: one slow answer from a busy server must not cost a long copy.
const SILENT_PROBES: u32 = 3;

/// Ends (with the error to stop on) once [`SILENT_PROBES`] probes of `server` in a row,
/// every few seconds, find it out of reach. A refusal that is not an outage (too many
/// connections) is not silence.
async fn silence(server: &ConnSpec) -> anyhow::Error {
    let mut silent = 0;
    loop {
        tokio::time::sleep(POLL).await;
        match probe(server).await {
            Err(e) if is_connection_lost(&e) => {
                silent += 1;
                if silent >= SILENT_PROBES {
                    return e;
                }
                tracing::info!("the {} did not answer a probe ({silent} in a row): {e:#}", server.describe());
            }
            _ => silent = 0,
        }
    }
}

/// Runs `work` unless the source or the target stops answering first: a connection to a
/// stalled server waits for an answer forever, so the work is dropped (its pg_dump and
/// pg_restore killed) and the error says which server went silent.
pub async fn unless_silent<T>(source: &ConnSpec, target: &ConnSpec, work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        done = work => done,
        lost = silence(source) => Err(lost),
        lost = silence(target) => Err(lost),
    }
}

/// The outages of one run's repeatable steps: after a failed attempt, [`Outages::next_try`]
/// tells a lost server (the error says so, or a probe finds it out of reach now) from a
/// real failure, and says how long to wait before the step is tried again.
pub struct Outages<'a> {
    reconnect: Reconnect,
    source: &'a ConnSpec,
    target: &'a ConnSpec,
}

impl<'a> Outages<'a> {
    pub fn new(limit: Duration, resume: &str, source: &'a ConnSpec, target: &'a ConnSpec) -> Self {
        Outages { reconnect: Reconnect::new(limit, resume), source, target }
    }

    /// How long to wait before trying `what` again: `error` was a lost connection or a
    /// server is out of reach. Otherwise, or past the time limit, the error to fail with.
    pub async fn next_try(&mut self, error: anyhow::Error, what: &str) -> Result<Duration> {
        let mut down = None;
        for server in [self.source, self.target] {
            if let Err(e) = probe(server).await
                && is_connection_lost(&e)
            {
                down = Some(server.describe());
                break;
            }
        }
        let server = match (down, lost_role(&error)) {
            (Some(server), _) => server,
            // Back already (a reset connection, a quick restart): the error names it.
            (None, Some(role)) => if role == Role::Source { self.source.describe() } else { self.target.describe() },
            (None, None) if is_connection_lost(&error) => "server".to_string(),
            (None, None) => return Err(error),
        };
        self.reconnect.failed(&error, &server, what)
    }

    /// The step got through: the next outage has the whole time limit.
    pub fn recovered(&mut self) {
        self.reconnect.recovered();
    }

    /// `{"since", "attempts", "server", "lastError"}` during an outage, for `show`.
    pub fn status(&self) -> Option<serde_json::Value> {
        self.reconnect.status()
    }
}

/// The server a [`ConnectionLost`] in the error's chain names.
fn lost_role(e: &anyhow::Error) -> Option<Role> {
    e.chain().find_map(|cause| cause.downcast_ref::<ConnectionLost>().map(|lost| lost.role))
}

/// What one database's stream needs to connect, again and again.
pub struct StreamSpec {
    pub source: ConnSpec,
    pub target: ConnSpec,
    pub database: String,
    pub names: Names,
    /// The command that carries the migration on (see [`Reconnect`]).
    pub resume: String,
    pub limit: Duration,
}

/// What a supervised stream shows while it runs.
#[derive(Clone, Default)]
pub struct StreamState {
    pub stats: Arc<Mutex<ApplyStats>>,
    /// `Reconnect::status` while the stream is down, `None` while it streams.
    pub reconnecting: Arc<Mutex<Option<serde_json::Value>>>,
    pub restart: Arc<Restart>,
}

/// Ends a stream's session as lost: a monitor found one of its servers silent, and a stream
/// waiting for changes (or for the target's answer) cannot tell silence from quiet.
#[derive(Default)]
pub struct Restart {
    notify: Notify,
    server: Mutex<Option<(Role, String)>>,
}

impl Restart {
    fn request(&self, server: &ConnSpec) {
        *self.server.lock().unwrap() = Some((server.role, server.describe()));
        self.notify.notify_waiters();
    }

    /// Waits for a request (only those made while waiting: a stale one would cut the next
    /// session short) and gives it as the session's error.
    async fn requested(&self) -> anyhow::Error {
        self.notify.notified().await;
        let (role, server) = self.server.lock().unwrap().take().unwrap_or((Role::Source, "server".into()));
        ConnectionLost { role, message: format!("the {server} stopped answering") }.into()
    }
}

/// Streams one database's changes to the target until a change fails or a server stays
/// out of reach past the time limit; a lost connection is reconnected from the slot's and
/// the origin's positions.
pub async fn supervise(spec: StreamSpec, state: StreamState) -> Result<()> {
    let mut reconnect = Reconnect::new(spec.limit, &spec.resume);
    let what = format!("streaming from slot {}", spec.names.slot);
    loop {
        let mark = |stats: &Mutex<ApplyStats>| {
            let s = stats.lock().unwrap();
            (s.transactions, s.caught_up_lsn)
        };
        let before = mark(&state.stats);
        let started = Instant::now();
        let deadline = reconnect.remaining().min(spec.source.connect_timeout * 3);
        let error = match session(&spec, &state, deadline).await {
            Err(e) => e,
            Ok(()) => ConnectionLost { role: Role::Source, message: "the replication stream stopped".into() }.into(),
        };
        // Applying or catching up (or a long healthy session) ends an outage: the time limit
        // is for one outage, not for all of them.
        if mark(&state.stats) != before || started.elapsed() >= STABLE {
            reconnect.recovered();
        }
        let Some(role) = lost_server(&error) else { return Err(error) };
        let server = if role == Role::Source { &spec.source } else { &spec.target };
        let wait = reconnect.failed(&error, &server.describe(), &what)?;
        *state.reconnecting.lock().unwrap() = reconnect.status();
        tokio::time::sleep(wait).await;
    }
}

/// One session: connect both sides (within `deadline`: a server that does not answer is as
/// good as down), then apply until something fails.
async fn session(spec: &StreamSpec, state: &StreamState, deadline: Duration) -> Result<()> {
    let what = format!("replication slot {} (database {:?}) on the {}", spec.names.slot, spec.database, spec.source.describe());
    let deadline = tokio::time::Instant::now() + deadline;
    let silent = |server: &ConnSpec, doing: &str| anyhow::Error::from(ConnectionLost { role: server.role, message: format!("{doing}: no answer from the {}", server.describe()) });
    // Start 0: from the slot's confirmed position, which is never past what the target
    // committed; the origin's position skips what it already has.
    let connect = async {
        let client = ReplicationClient::connect_gated(slot::replication_config(&spec.source, &spec.database, &spec.names, 0).await?).await.map_err(|e| anyhow::Error::new(e).context(format!("connecting to stream from {what}")))?;
        PgOutputStream::start(client, what.clone()).await
    };
    let stream = tokio::time::timeout_at(deadline, connect).await.map_err(|_| silent(&spec.source, &format!("connecting to stream from {what}")))??;
    let connect = spec.target.connect(&spec.database);
    let (target, _) = tokio::time::timeout_at(deadline, connect).await.map_err(|_| silent(&spec.target, "connecting to apply changes"))??;
    *state.reconnecting.lock().unwrap() = None;
    tokio::select! {
        result = apply::run(stream, target, &spec.names.origin, state.stats.clone()) => result,
        lost = state.restart.requested() => Err(lost),
    }
}

/// Bytes of WAL each slot holds on the source, by slot name (`None`: not known).
pub type WalPending = Arc<Mutex<BTreeMap<String, Option<i64>>>>;

/// Polls a server until it stays out of reach past the time limit: the source for the WAL
/// each slot holds (`pending`, by slot name), the target for an answer. When it stops
/// answering, the streams are restarted: their connections to it are as stuck as this one.
pub async fn watch(server: ConnSpec, resume: String, limit: Duration, pending: Option<WalPending>, streams: Vec<Arc<Restart>>) -> Result<()> {
    let slots: Vec<String> = pending.as_ref().map(|p| p.lock().unwrap().keys().cloned().collect()).unwrap_or_default();
    let mut reconnect = Reconnect::new(limit, &resume);
    let mut monitor: Option<tokio_postgres::Client> = None;
    loop {
        let poll = async {
            if monitor.is_none() {
                monitor = Some(server.connect(&server.dbname).await?.0);
            }
            let client = monitor.as_ref().expect("connected above");
            if pending.is_none() {
                client.simple_query("select 1").await?;
                return anyhow::Ok(BTreeMap::new());
            }
            let rows = client
                .query(
                    "select slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 from pg_replication_slots where slot_name = any($1)",
                    &[&slots],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1))).collect::<BTreeMap<_, _>>())
        };
        let error = match tokio::time::timeout(server.connect_timeout.min(reconnect.remaining()), poll).await {
            Ok(Ok(held)) => {
                reconnect.recovered();
                if let Some(pending) = &pending {
                    for (slot, bytes) in pending.lock().unwrap().iter_mut() {
                        *bytes = held.get(slot).copied().flatten();
                    }
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Ok(Err(e)) if is_connection_lost(&e) => e,
            Ok(Err(e)) => {
                // Not an outage (a permission, a setting): the numbers are only shown.
                tracing::debug!("polling the {}: {e:#}", server.describe());
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(_) => {
                for stream in &streams {
                    stream.request(&server);
                }
                no_answer(&server)
            }
        };
        monitor = None;
        let wait = reconnect.failed(&error, &server.describe(), "watching the replication")?;
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(role: Role) -> anyhow::Error {
        ConnectionLost { role, message: "connection closed".into() }.into()
    }

    #[test]
    fn lost_connections_are_told_from_refused_changes() {
        assert_eq!(lost_server(&lost(Role::Target).context("replicating")), Some(Role::Target));
        let eof = PgWireError::from(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF while reading backend message header"));
        assert_eq!(lost_server(&anyhow::Error::new(eof).context("receiving changes")), Some(Role::Source));
        let shutdown = PgWireError::Server("terminating connection due to administrator command (SQLSTATE 57P01)".into());
        assert!(is_connection_lost(&anyhow::Error::new(shutdown)));
        let refused = PgWireError::Server("permission denied to start WAL sender (SQLSTATE 42501)".into());
        assert!(!is_connection_lost(&anyhow::Error::new(refused)));
        assert!(!is_connection_lost(&anyhow::anyhow!("applying a change to table public.t on the target: duplicate key value (SQLSTATE 23505)")));
    }

    #[test]
    fn waits_double_up_to_ten_seconds_and_the_limit_gives_up_naming_server_and_resume() {
        let mut reconnect = Reconnect::new(Duration::from_secs(60), "pgferry migration resume --migration-name m1");
        let waits: Vec<Duration> = (0..7).map(|_| reconnect.failed(&lost(Role::Source), "source server h:1", "x").unwrap()).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(reconnect.status().unwrap()["attempts"], 7);
        reconnect.recovered();
        assert!(reconnect.status().is_none(), "a recovered connection starts a new outage");

        let mut reconnect = Reconnect::new(Duration::ZERO, "pgferry migration resume --migration-name m1");
        let message = format!("{:#}", reconnect.failed(&lost(Role::Source), "source server h:1", "x").unwrap_err());
        assert!(message.contains("source server h:1") && message.contains("pgferry migration resume --migration-name m1"), "{message}");
    }
}
