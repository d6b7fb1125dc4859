//! The apply side of an online migration: changes applied to the target in source commit
//! order, as PostgreSQL's own apply worker does (`session_replication_role = replica`, so
//! triggers and foreign keys do not fire twice). Source transactions that arrive together
//! are applied as one target transaction, which also records, through a replication
//! origin, the source position it reached; the source is acknowledged only after that
//! commit. After a crash, the origin's position says where to go on: nothing is lost,
//! nothing applied twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::pgoutput::{lsn_to_string, Message, OldRow, ReplicaIdentity, Relation, Tuple, Value};
use super::stream::{ChangeStream, Event};
use super::{Lsn, FENCE_PREFIX};
use crate::connect::{is_lost, pg_error, pg_failure, ConnectionLost, Role};
use crate::migration::copy_digest::stable_text;
use crate::migration::migrating_data::{quote_ident, quote_literal};

/// Source transactions merged into one target transaction at most; keeps a commit's
/// latency bounded under a steady stream of small transactions.
const MAX_BATCH_TRANSACTIONS: u64 = 500;
/// Statements sent and not yet answered, at most: the pipeline never waits for a round
/// trip until it is this deep (or a transaction commits).
const PIPELINE: usize = 512;

/// What `show` reports of one database's replication.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyStats {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub truncates: u64,
    /// Source transactions applied.
    pub transactions: u64,
    /// UPDATEs and DELETEs whose row was not on the target (it has diverged: the
    /// cutover's verification will name the table).
    pub rows_not_found: u64,
    /// Source position the target has committed (end of the last applied transaction).
    #[serde(serialize_with = "serialize_lsn")]
    pub applied_lsn: Lsn,
    /// Source position known to be fully applied: the applied one, or the server's
    /// position while nothing is pending.
    #[serde(serialize_with = "serialize_lsn")]
    pub caught_up_lsn: Lsn,
    /// Seconds the target is behind the source: from the last applied transaction's commit
    /// on the source to its commit on the target; 0 once the stream has been idle (nothing
    /// pending) for a second.
    pub latency_seconds: f64,
    /// The last cutover fence applied (its token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
}

fn serialize_lsn<S: serde::Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&lsn_to_string(*lsn))
}

/// Applies the stream to the target until it fails or the task is aborted.
pub async fn run<S: ChangeStream>(mut stream: S, target: Client, origin: &str, stats: Arc<Mutex<ApplyStats>>) -> Result<()> {
    let mut applier = Applier::start(target, origin, stats).await?;
    let mut next: Option<Event> = None;
    loop {
        let event = match next.take() {
            Some(event) => event,
            None => {
                // Answers are read when the stream pauses: before waiting for it, so a quiet
                // stream leaves every transaction committed and acknowledged.
                let ready = if applier.in_flight.is_empty() { None } else { stream.ready() };
                let event = match ready {
                    Some(event) => event,
                    None => {
                        applier.flush().await?;
                        acknowledge(&mut stream, &mut applier);
                        stream.recv().await
                    }
                };
                event?.ok_or_else(source_ended)?
            }
        };
        match event {
            Event::KeepAlive { wal_end, server_time } => {
                applier.skew.observe(now_micros() - server_time);
                if !applier.in_transaction && !applier.receiving && applier.in_flight.is_empty() {
                    // Nothing pending: all the server sent up to here is applied.
                    if wal_end > stream.acknowledged() {
                        stream.acknowledge(wal_end);
                    }
                    let mut stats = applier.stats.lock().unwrap();
                    stats.caught_up_lsn = stats.caught_up_lsn.max(wal_end);
                    // Keepalives come between transactions under load too: only a quiet
                    // stream means the target is not behind.
                    if applier.committed_at.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1)) {
                        stats.latency_seconds = 0.0;
                    }
                }
            }
            Event::Message(Message::Commit { end_lsn, commit_time, .. }) => {
                applier.receiving = false;
                if applier.skipping {
                    applier.skipping = false;
                    continue;
                }
                applier.batch.transactions += 1;
                applier.batch.end = (end_lsn, commit_time);
                // Keep the target transaction open while the next source transaction is
                // already here; commit as soon as the stream pauses.
                if applier.batch.transactions < MAX_BATCH_TRANSACTIONS
                    && let Some(ready) = stream.ready() {
                        let ready = ready?.ok_or_else(source_ended)?;
                        let more = matches!(ready, Event::Message(Message::Begin { .. }));
                        next = Some(ready);
                        if more {
                            continue;
                        }
                    }
                applier.commit().await?;
            }
            Event::Message(message) => applier.handle(message).await?,
        }
        acknowledge(&mut stream, &mut applier);
    }
}

/// The source ending the stream without being asked to: it is shutting down.
fn source_ended() -> anyhow::Error {
    ConnectionLost { role: Role::Source, message: "the source ended the replication stream".into() }.into()
}

/// Acknowledges to the source what the target committed.
fn acknowledge<S: ChangeStream>(stream: &mut S, applier: &mut Applier) {
    if let Some(lsn) = applier.committed.take() {
        stream.acknowledge(lsn);
    }
}

struct Table {
    /// `"schema"."name"`, quoted.
    name: String,
    /// The stream's columns: quoted name and the target's type for the cast from text.
    columns: Vec<(String, String)>,
    /// Positions of the replica identity's columns (empty: FULL or NOTHING).
    key: Vec<usize>,
    identity: ReplicaIdentity,
}

#[derive(Default)]
struct Batch {
    transactions: u64,
    /// End LSN and commit time of the last source transaction in the batch.
    end: (Lsn, i64),
    inserts: u64,
    updates: u64,
    deletes: u64,
    truncates: u64,
    fence: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// The answer to a request in the pipeline: rows affected.
type Answer = Result<u64, tokio_postgres::Error>;

/// A request sent to the target whose answer is not read yet.
struct InFlight {
    request: Request,
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

enum Request {
    Begin,
    Change(Kind, u32),
    /// The commit of a batch: counted and acknowledged once answered.
    Commit(Batch),
}

struct Applier {
    client: Arc<Client>,
    stats: Arc<Mutex<ApplyStats>>,
    tables: HashMap<u32, Table>,
    /// Per relation, kind and shape (which columns are set or matched).
    statements: HashMap<(u32, Kind, Vec<bool>), Statement>,
    in_flight: std::collections::VecDeque<InFlight>,
    in_transaction: bool,
    /// The target transaction's BEGIN goes with its first statements (one round trip less).
    begin_pending: bool,
    /// Between a Begin and its Commit.
    receiving: bool,
    /// The current source transaction was applied before (a restart replays it).
    skipping: bool,
    applied: Lsn,
    batch: Batch,
    /// Our clock minus the source's (latency is measured on the source's clock).
    skew: Skew,
    /// When the last batch was committed on the target.
    committed_at: Option<std::time::Instant>,
    /// The end of the last batch committed on the target, not yet acknowledged.
    committed: Option<Lsn>,
}

/// Our clock minus the source's, from keepalives. A keepalive read now may have waited
/// behind a backlog of changes, and taking its delay as skew would hide exactly the lag we
/// measure: the smallest delay seen within the last minute or so is the estimate.
#[derive(Default)]
struct Skew {
    window: Option<(i64, std::time::Instant)>,
    previous: Option<i64>,
}

impl Skew {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

    fn observe(&mut self, delay_micros: i64) {
        match &mut self.window {
            Some((min, since)) if since.elapsed() < Self::WINDOW => *min = (*min).min(delay_micros),
            _ => {
                // The window ends: keep its minimum one more window, so the estimate never
                // rests on a single fresh (possibly delayed) observation.
                self.previous = self.window.map(|(min, _)| min);
                self.window = Some((delay_micros, std::time::Instant::now()));
            }
        }
    }

    fn micros(&self) -> i64 {
        match (self.window, self.previous) {
            (Some((current, _)), Some(previous)) => current.min(previous),
            (Some((current, _)), None) => current,
            (None, _) => 0,
        }
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn now_micros() -> i64 {
    const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - PG_EPOCH_UNIX_SECONDS * 1_000_000
}

impl Applier {
    async fn start(client: Client, origin: &str, stats: Arc<Mutex<ApplyStats>>) -> Result<Applier> {
        let hint = "online migration applies changes as PostgreSQL's apply worker does: the target user must be a superuser \
                    (or, from PostgreSQL 15, be granted SET on session_replication_role and EXECUTE on the pg_replication_origin functions)";
        client
            // Rows are found by key, as PostgreSQL's apply worker finds them through the
            // index: the planner would scan a small table instead, and within one target
            // transaction of many source transactions a hot row's dead versions pile up.
            // A table without an index is still scanned, at a cost that would make every
            // statement worth compiling with JIT: no JIT.
            .batch_execute(&format!("SET session_replication_role = replica; SET enable_seqscan = off; SET jit = off; {}", stable_text()))
            .await
            .map_err(|e| if is_lost(&e) { pg_failure(Role::Target, &e, "preparing to apply changes on the target") } else { anyhow::anyhow!("preparing to apply changes on the target: {}; {hint}", pg_error(&e)) })?;
        let setup = async {
            let exists = client.query_one("select pg_replication_origin_oid($1) is not null", &[&origin]).await?.get::<_, bool>(0);
            if !exists {
                client.execute("select pg_replication_origin_create($1)", &[&origin]).await?;
            }
            client.execute("select pg_replication_origin_session_setup($1)", &[&origin]).await?;
            let progress: Option<String> = client.query_one("select pg_replication_origin_progress($1, true)::text", &[&origin]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(progress)
        };
        let progress = setup.await.map_err(|e| {
            let context = format!("setting up replication origin {origin} on the target");
            // Held by our session from before a reconnect, until the target notices it is gone.
            if is_lost(&e) || e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) {
                anyhow::Error::new(ConnectionLost { role: Role::Target, message: format!("{context}: {}", pg_error(&e)) })
            } else {
                anyhow::anyhow!("{context}: {}; {hint}", pg_error(&e))
            }
        })?;
        let applied = progress.as_deref().and_then(super::pgoutput::parse_lsn).unwrap_or(0);
        {
            let mut s = stats.lock().unwrap();
            s.applied_lsn = s.applied_lsn.max(applied);
            s.caught_up_lsn = s.caught_up_lsn.max(applied);
        }
        Ok(Applier {
            client: Arc::new(client),
            stats,
            tables: HashMap::new(),
            statements: HashMap::new(),
            in_flight: Default::default(),
            in_transaction: false,
            begin_pending: false,
            receiving: false,
            skipping: false,
            applied,
            batch: Batch::default(),
            skew: Skew::default(),
            committed_at: None,
            committed: None,
        })
    }

    async fn handle(&mut self, message: Message) -> Result<()> {
        match message {
            Message::Begin { final_lsn, .. } => {
                self.receiving = true;
                // Committed on the target before a restart: its end is at or before ours.
                self.skipping = final_lsn < self.applied;
                if !self.skipping && !self.in_transaction {
                    self.in_transaction = true;
                    self.begin_pending = true;
                }
            }
            Message::Relation(relation) => {
                self.flush().await?;
                self.describe(relation).await?;
            }
            Message::Insert { relation, new } if !self.skipping => {
                let values: Vec<&Value> = new.0.iter().collect();
                let shape = vec![true; values.len()];
                let statement = self.statement(relation, Kind::Insert, &shape).await?;
                self.queue(statement, values.into_iter().map(text).collect(), Kind::Insert, relation).await?;
                self.batch.inserts += 1;
            }
            Message::Update { relation, old, new } if !self.skipping => {
                // Unchanged TOAST values are not sent: those columns are left as they are.
                let set: Vec<bool> = new.0.iter().map(|v| *v != Value::UnchangedToast).collect();
                let (matched, mut key_values) = self.match_values(relation, old.as_ref(), &new)?;
                let mut shape = set.clone();
                shape.extend(matched.iter().copied());
                let statement = self.statement(relation, Kind::Update, &shape).await?;
                let mut params: Vec<Option<Text>> = new.0.iter().zip(&set).filter(|(_, s)| **s).map(|(v, _)| text(v)).collect();
                params.append(&mut key_values);
                self.queue(statement, params, Kind::Update, relation).await?;
                self.batch.updates += 1;
            }
            Message::Delete { relation, old } if !self.skipping => {
                let empty = Tuple(vec![]);
                let (matched, key_values) = self.match_values(relation, Some(&old), &empty)?;
                let statement = self.statement(relation, Kind::Delete, &matched).await?;
                self.queue(statement, key_values, Kind::Delete, relation).await?;
                self.batch.deletes += 1;
            }
            Message::Truncate { relations, cascade, restart_identity } if !self.skipping => {
                self.flush().await?;
                let names: Vec<String> = relations.iter().map(|r| self.table(*r).map(|t| format!("ONLY {}", t.name))).collect::<Result<_>>()?;
                let sql = format!(
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if restart_identity { " RESTART IDENTITY" } else { "" },
                    if cascade { " CASCADE" } else { "" }
                );
                self.client.batch_execute(&sql).await.map_err(|e| pg_failure(Role::Target, &e, format!("applying {sql} on the target")))?;
                self.batch.truncates += 1;
            }
            Message::Message { transactional: true, prefix, content, .. } if prefix == FENCE_PREFIX => {
                self.batch.fence = Some(String::from_utf8_lossy(&content).into_owned());
            }
            // Changes of a transaction applied before; types (values come as text);
            // origins and other extensions' messages: nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn table(&self, relation: u32) -> Result<&Table> {
        self.tables.get(&relation).with_context(|| format!("the stream sent a change for relation {relation} before describing it"))
    }

    /// Loads the target's types of a relation's columns: values are cast from their text.
    async fn describe(&mut self, relation: Relation) -> Result<()> {
        let name = format!("{}.{}", quote_ident(if relation.namespace.is_empty() { "pg_catalog" } else { &relation.namespace }), quote_ident(&relation.name));
        let rows = self
            .client
            .query(
                "select a.attname::text, format_type(a.atttypid, a.atttypmod) from pg_attribute a
                  where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped",
                &[&name],
            )
            .await
            .with_context(|| format!("looking up table {name} on the target"))?;
        if rows.is_empty() {
            bail!("table {name} changed on the source but does not exist on the target: was it created after the migration started? (DDL is not replicated)");
        }
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut columns = Vec::new();
        for column in &relation.columns {
            let ty = types.get(&column.name).with_context(|| {
                format!("column {:?} of table {name} is on the source but not on the target (DDL is not replicated: apply it on the target too)", column.name)
            })?;
            columns.push((quote_ident(&column.name), ty.clone()));
        }
        let key = relation.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
        self.statements.retain(|(r, _, _), _| *r != relation.oid);
        self.tables.insert(relation.oid, Table { name, columns, key, identity: relation.replica_identity });
        Ok(())
    }

    /// Which columns identify the row, and their values: the key columns (from the old key
    /// tuple, or the new row when the key did not change); with REPLICA IDENTITY FULL,
    /// every column of the old row (unchanged TOAST values cannot be matched, and need not).
    fn match_values(&self, relation: u32, old: Option<&OldRow>, new: &Tuple) -> Result<(Vec<bool>, Vec<Option<Text>>)> {
        let table = self.table(relation)?;
        let row = match old {
            Some(OldRow::Key(t)) | Some(OldRow::Full(t)) => t,
            None => new,
        };
        let by_all = table.identity == ReplicaIdentity::Full || matches!(old, Some(OldRow::Full(_)));
        if !by_all && table.key.is_empty() {
            bail!(
                "table {} has no replica identity on the source (REPLICA IDENTITY NOTHING, or no primary key): its UPDATEs and DELETEs cannot be applied; give it a primary key or REPLICA IDENTITY FULL",
                table.name
            );
        }
        let matched: Vec<bool> = (0..table.columns.len())
            .map(|i| {
                let value = row.0.get(i);
                if by_all { value.is_some_and(|v| *v != Value::UnchangedToast) } else { table.key.contains(&i) }
            })
            .collect();
        let values = matched.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| row.0.get(i).map(text).unwrap_or(None)).collect();
        Ok((matched, values))
    }

    /// The prepared statement for a relation, kind and shape (prepared once, then reused).
    async fn statement(&mut self, relation: u32, kind: Kind, shape: &[bool]) -> Result<Statement> {
        let key = (relation, kind, shape.to_vec());
        if let Some(statement) = self.statements.get(&key) {
            return Ok(statement.clone());
        }
        self.flush().await?;
        let table = self.table(relation)?;
        let cast = |n: usize, ty: &str| format!("${n}::text::{ty}");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let sql = match kind {
            Kind::Insert => {
                let names: Vec<&str> = table.columns.iter().map(|(c, _)| c.as_str()).collect();
                let values: Vec<String> = table.columns.iter().map(|(_, ty)| cast(next(), ty)).collect();
                format!("INSERT INTO {} ({}) VALUES ({})", table.name, names.join(", "), values.join(", "))
            }
            Kind::Update | Kind::Delete => {
                let width = table.columns.len();
                let (set_shape, match_shape) = if kind == Kind::Update { shape.split_at(width) } else { (&[][..], shape) };
                let sets: Vec<String> = table.columns.iter().zip(set_shape).filter(|(_, s)| **s).map(|((c, ty), _)| format!("{c} = {}", cast(next(), ty))).collect();
                let by_all = table.key.is_empty() || table.identity == ReplicaIdentity::Full;
                let conditions: Vec<String> = table
                    .columns
                    .iter()
                    .zip(match_shape)
                    .filter(|(_, m)| **m)
                    .map(|((c, ty), _)| {
                        let p = cast(next(), ty);
                        // Any type, even without an equality operator (json, point): compare text.
                        if by_all { format!("{c}::text IS NOT DISTINCT FROM ({p})::text") } else { format!("{c} = {p}") }
                    })
                    .collect();
                let condition = if conditions.is_empty() { "true".to_string() } else { conditions.join(" AND ") };
                // Without a key, duplicates are possible: touch exactly one of them.
                let target = if by_all { format!("ctid = (SELECT ctid FROM ONLY {} WHERE {condition} LIMIT 1)", table.name) } else { condition };
                if kind == Kind::Update {
                    if sets.is_empty() {
                        // Only unchanged TOAST values: the row stays as it is, but must exist.
                        format!("SELECT 1 FROM ONLY {} WHERE {target}", table.name)
                    } else {
                        format!("UPDATE ONLY {} SET {} WHERE {target}", table.name, sets.join(", "))
                    }
                } else {
                    format!("DELETE FROM ONLY {} WHERE {target}", table.name)
                }
            }
        };
        let types = vec![Type::TEXT; n];
        let statement = self.client.prepare_typed(&sql, &types).await.map_err(|e| pg_failure(Role::Target, &e, format!("preparing {sql} on the target")))?;
        self.statements.insert(key, statement.clone());
        Ok(statement)
    }

    /// Sends a change to the target without waiting for its answer (reading the oldest
    /// answers first when the pipeline is full).
    async fn queue(&mut self, statement: Statement, params: Vec<Option<Text>>, kind: Kind, relation: u32) -> Result<()> {
        self.send_begin().await;
        let client = self.client.clone();
        let answer = Box::pin(async move { client.execute_raw(&statement, params.iter().map(|p| p as &(dyn ToSql + Sync))).await });
        self.send(Request::Change(kind, relation), answer).await;
        while self.in_flight.len() > PIPELINE {
            self.read_answer().await?;
        }
        Ok(())
    }

    /// Sends the transaction's BEGIN if it has not gone yet.
    async fn send_begin(&mut self) {
        if std::mem::take(&mut self.begin_pending) {
            self.send_simple(Request::Begin, "BEGIN".to_string()).await;
        }
    }

    /// Sends a simple query (BEGIN, COMMIT) through the pipeline.
    async fn send_simple(&mut self, request: Request, sql: String) {
        let client = self.client.clone();
        self.send(request, Box::pin(async move { client.batch_execute(&sql).await.map(|()| 0) })).await;
    }

    /// Puts a request on the wire: tokio-postgres sends it when its future is first polled,
    /// so polling each once as it is made keeps the source's order.
    async fn send(&mut self, request: Request, mut answer: Pin<Box<dyn Future<Output = Answer> + Send>>) {
        if let std::task::Poll::Ready(done) = std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await {
            answer = Box::pin(std::future::ready(done));
        }
        self.in_flight.push_back(InFlight { request, answer });
    }

    /// Reads the oldest answer: an error names the table the change was for; a commit's
    /// batch is counted.
    async fn read_answer(&mut self) -> Result<()> {
        let Some(InFlight { request, answer }) = self.in_flight.pop_front() else { return Ok(()) };
        let result = answer.await;
        match request {
            Request::Begin => {
                result.map_err(|e| pg_failure(Role::Target, &e, "beginning a transaction on the target"))?;
            }
            Request::Change(kind, relation) => {
                let table = self.tables.get(&relation).map(|t| t.name.as_str()).unwrap_or("?");
                let rows = result.map_err(|e| pg_failure(Role::Target, &e, format!("applying a change to table {table} on the target")))?;
                if rows == 0 && kind != Kind::Insert {
                    self.stats.lock().unwrap().rows_not_found += 1;
                    tracing::warn!("a replicated {} found no row in table {table} on the target", if kind == Kind::Update { "UPDATE" } else { "DELETE" });
                }
            }
            Request::Commit(batch) => {
                result.map_err(|e| pg_failure(Role::Target, &e, "committing applied changes on the target"))?;
                self.counted(batch);
            }
        }
        Ok(())
    }

    /// Waits for every answer: before the connection is used directly (a catalog query,
    /// PREPARE, TRUNCATE), and at commit.
    async fn flush(&mut self) -> Result<()> {
        self.send_begin().await;
        while !self.in_flight.is_empty() {
            self.read_answer().await?;
        }
        Ok(())
    }

    /// Sends the batch's commit, with the source position it reached, after its changes;
    /// it is counted and acknowledged when its answer is read.
    async fn commit(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.applied = batch.end.0;
        if !self.in_transaction {
            self.flush().await?;
            self.counted(batch);
            return Ok(());
        }
        let sql = format!(
            "SELECT pg_replication_origin_xact_setup({}::pg_lsn, {}::timestamptz); COMMIT",
            quote_literal(&lsn_to_string(batch.end.0)),
            quote_literal(&pg_timestamp(batch.end.1))
        );
        self.send_begin().await;
        self.send_simple(Request::Commit(batch), sql).await;
        self.in_transaction = false;
        Ok(())
    }

    /// Adds a committed batch to the counters.
    fn counted(&mut self, batch: Batch) {
        let (end, commit_time) = batch.end;
        let mut stats = self.stats.lock().unwrap();
        stats.inserts += batch.inserts;
        stats.updates += batch.updates;
        stats.deletes += batch.deletes;
        stats.truncates += batch.truncates;
        stats.transactions += batch.transactions;
        stats.applied_lsn = end;
        stats.caught_up_lsn = stats.caught_up_lsn.max(end);
        stats.latency_seconds = ((now_micros() - self.skew.micros() - commit_time) as f64 / 1e6).max(0.0);
        self.committed_at = Some(std::time::Instant::now());
        self.committed = Some(end);
        if batch.fence.is_some() {
            stats.fence = batch.fence;
        }
    }
}

/// A value as the text its type's input function reads (None: NULL).
fn text(value: &Value) -> Option<Text> {
    match value {
        Value::Text(bytes) | Value::Binary(bytes) => Some(Text(bytes.clone())),
        Value::Null | Value::UnchangedToast => None,
    }
}

/// A `text` parameter passed on as the stream sent it, without a copy: its binary form is
/// its bytes. The stream is UTF-8 (pgwire-replication asks for it) and the target checks it.
#[derive(Debug)]
struct Text(bytes::Bytes);

impl ToSql for Text {
    fn to_sql(&self, _: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }

    to_sql_checked!();
}

/// A commit time (µs since 2000-01-01 UTC) as timestamptz text.
fn pg_timestamp(micros: i64) -> String {
    let epoch = chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or_default();
    (epoch + chrono::Duration::microseconds(micros)).format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_become_postgres_timestamps() {
        assert_eq!(pg_timestamp(0), "2000-01-01 00:00:00.000000+00");
        assert_eq!(pg_timestamp(86_400_000_001), "2000-01-02 00:00:00.000001+00");
    }

    #[test]
    fn a_keepalive_delayed_by_a_backlog_does_not_count_as_skew() {
        let mut skew = Skew::default();
        assert_eq!(skew.micros(), 0);
        skew.observe(1_200);
        // Read after three seconds behind queued changes: the clocks did not move.
        skew.observe(3_000_000);
        assert_eq!(skew.micros(), 1_200);
        skew.observe(-500);
        assert_eq!(skew.micros(), -500, "a source clock ahead of ours gives a negative skew");
    }
}
