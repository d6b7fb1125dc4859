//! Online migrations: the base copy reads at the snapshot of a new replication slot; then
//! the changes made since stream to the target (MigratingData while catching up,
//! WaitingForCutoverTrigger once caught up, changes still flowing) until the user asks for
//! the cutover: a fence is written on the source, applied on the target, sequences are
//! set, the slot and the publication dropped, and CompletingMigration verifies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinHandle;

use super::completing_migration;
use super::migrating_data::{self, DatabaseState, Settings, Stage};
use crate::sql_text::quote_ident;
use super::progress::{watched, Progress};
use super::{advance, at, StepError};
use crate::connect::{pg_error, pg_failure, ConnSpec, Role};
use crate::lifecycle::Status;
use crate::replication::apply::ApplyStats;
use crate::replication::pgoutput::{lsn_to_string, parse_lsn};
use crate::reconnect::{self, unless_silent, Outages, StreamSpec, StreamState};
use crate::replication::{slot, Lsn, Names};
use crate::store::{Leftover, Migration, ReplicationProgress, RequestKind, Store};

/// What the store keeps of one database's replication: enough to clean up after a crash,
/// and to go on streaming after one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub names: Names,
    /// Where the slot's snapshot is; empty until the slot exists.
    #[serde(default)]
    pub consistent_point: String,
    /// The base copy and post-data are done: a restart goes on streaming.
    #[serde(default)]
    pub base_copied: bool,
    /// Tables given a replica identity (SetReplicaIdentity), with their former setting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_identities_set: Vec<(String, String)>,
}

/// The cutover request (`migration update --cutover`) and, as it proceeds, its receipt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cutover {
    pub requested_at: String,
    #[serde(default)]
    pub read_only_source: bool,
    /// Databases `--read-only-source` made read-only (not those that already were): that
    /// setting is not carried over to the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made_read_only: Vec<String>,
    /// Per database: the fence's LSN on the source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fence_lsn: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_applied_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences_set: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables_verified: Option<usize>,
    /// How long the final verification took (the rest of the cutover is the switch itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// The replication records of a migration, from the store's catalog.
pub(super) fn records(store: &Store, id: i64) -> Result<BTreeMap<String, Record>> {
    let objects = store.replication_objects(id).context("reading the replication objects the migration recorded")?;
    Ok(objects
        .into_iter()
        .map(|(db, o)| {
            let record = Record {
                names: Names { slot: o.slot, publication: o.publication, origin: o.origin },
                consistent_point: o.consistent_point,
                base_copied: o.base_copied,
                replica_identities_set: o.replica_identities,
            };
            (db, record)
        })
        .collect())
}

/// The cutover's receipt as the runner recorded it so far.
pub fn cutover_of(m: &Migration) -> Option<Cutover> {
    serde_json::from_value(m.details.get("cutover").cloned()?).ok()
}

/// The cutover in progress: the receipt, else a new one from the request recorded by
/// `update --cutover` (a row of its own, so the runner's writes cannot lose it).
fn cutover_requested(store: &Store, m: &Migration) -> Result<Option<Cutover>> {
    if let Some(cutover) = cutover_of(m) {
        return Ok(Some(cutover));
    }
    Ok(store.requested(m.id, RequestKind::Cutover)?.map(|(at, options)| Cutover {
        requested_at: at.to_rfc3339(),
        read_only_source: options.get("readOnlySource").and_then(serde_json::Value::as_bool).unwrap_or(false),
        ..Default::default()
    }))
}

fn save_records(store: &mut Store, id: i64, records: &BTreeMap<String, Record>) -> Result<()> {
    let objects = records
        .iter()
        .map(|(db, r)| {
            let objects = crate::store::ReplicationObjects {
                slot: r.names.slot.clone(),
                publication: r.names.publication.clone(),
                origin: r.names.origin.clone(),
                consistent_point: r.consistent_point.clone(),
                base_copied: r.base_copied,
                replica_identities: r.replica_identities_set.clone(),
            };
            (db.clone(), objects)
        })
        .collect();
    store.save_replication_objects(id, &objects)
}

/// Forgets the replication records once everything they name is gone from the servers.
pub(super) fn forget_records(store: &mut Store, id: i64) -> Result<()> {
    save_records(store, id, &BTreeMap::new())
}

/// One database's apply task and its counters.
struct Stream {
    database: String,
    names: Names,
    stats: Arc<Mutex<ApplyStats>>,
    /// Whether it is reconnecting, and to restart it when the source stops answering.
    state: StreamState,
    /// Ends only with an error that is not a lost connection, or past the time limit.
    task: JoinHandle<Result<()>>,
    /// The source's WAL position when streaming started: reaching it is catching up.
    goal: Lsn,
    wal_pending: Option<i64>,
}

/// The online part of a migration, from the base copies to the end of the cutover.
/// `cutover_applied`: the run started in CompletingMigration. `Ok(Some(m))`: canceled.
pub(super) async fn run(
    store: &mut Store,
    id: i64,
    s: &Settings<'_>,
    databases: &[String],
    set_replica_identity: bool,
    cutover_applied: bool,
    progress: &mut Progress,
) -> Result<Option<Migration>, StepError> {
    let step = "MigratingData";
    check_apply_privileges(s.target).await.map_err(at(step))?;
    let mut records = records(store, id).map_err(at(step))?;
    let resume = super::resume_command(&store.get_by_id(id).map_err(at(step))?);
    let mut outages = Outages::new(s.reconnect_timeout, &resume, s.source, s.target);
    for (index, db) in databases.iter().enumerate() {
        while !records.get(db).is_some_and(|r| r.base_copied) {
            match base_copy(store, id, s, db, index, set_replica_identity, &mut records, progress).await {
                Ok(true) => super::recovered(store, id, &mut outages).map_err(at(step))?,
                Ok(false) => return super::canceled_cleanup(store, id, s.source, s.target).await.map(Some).map_err(at(step)),
                Err(e) => {
                    progress.check_lease().map_err(at(step))?;
                    super::ride_out(store, id, &mut outages, e, &format!("the base copy of database {db:?}")).await.map_err(at(step))?;
                    super::end_stale_sessions(s.target, db).await;
                }
            }
        }
    }

    if cutover_applied {
        // A runner died after the fences were applied: the slots may be gone already, and
        // nothing is left to stream. The cutover goes on from there.
        return complete_riding_out(store, id, s, databases, &records).await;
    }
    let mut streams = Vec::new();
    for db in databases {
        let names = records[db].names.clone();
        streams.push(start_stream(s, &resume, db, names).await.map_err(at(step))?);
    }
    let outcome = follow(store, id, s, &mut streams, progress).await;
    for stream in &streams {
        stream.task.abort();
    }
    match outcome {
        Err(e) => {
            let step = if store.get_by_id(id).is_ok_and(|m| m.status == Status::WAITING_FOR_CUTOVER) { "WaitingForCutoverTrigger" } else { step };
            Err(StepError { step, error: e })
        }
        Ok(Some(_)) => {
            super::canceled_cleanup(store, id, s.source, s.target).await.map(Some).map_err(at(step))
        }
        Ok(None) => {
            // The fences are applied: everything the source committed before the request is
            // on the target.
            for stream in streams {
                let _ = stream.task.await;
            }
            complete_riding_out(store, id, s, databases, &records).await
        }
    }
}

/// One database's base copy: publication, slot, the copy at the slot's snapshot and
/// post-data, recorded as it goes. `false`: canceled. An attempt that failed (a server lost)
/// is started over by the next: its snapshot died with it.
#[allow(clippy::too_many_arguments)]
async fn base_copy(
    store: &mut Store,
    id: i64,
    s: &Settings<'_>,
    db: &String,
    index: usize,
    set_replica_identity: bool,
    records: &mut BTreeMap<String, Record>,
    progress: &mut Progress,
) -> Result<bool> {
    // A base copy interrupted by a crash cannot go on: its snapshot died with it.
    // Its slot and publication go, and the copy starts over (the target database,
    // created by this migration, is replaced).
    let restarted = records.get(db).cloned();
    if let Some(old) = &restarted {
        slot::drop_slot_and_publication(s.source, db, &old.names).await?;
    }
    // Whether an earlier attempt created the target database (ours to replace).
    let ours = restarted.is_some() || progress.states.remove(db).is_some_and(|st| st.stage >= Stage::Created);
    let names = Names::new(id, index);
    let mut record = Record { names: names.clone(), consistent_point: String::new(), base_copied: false, replica_identities_set: vec![] };
    if let Some(old) = &restarted {
        record.replica_identities_set = old.replica_identities_set.clone();
    }
    records.insert(db.clone(), record);
    // Recorded before anything exists on the source, so that cancel and failure find it.
    save_records(store, id, records)?;
    let state = DatabaseState { stage: if ours { Stage::Created } else { Stage::NotStarted }, ..Default::default() };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    if set_replica_identity {
        let changed = slot::set_replica_identities(s.source, db, &s.provider.schemas).await?;
        let record = records.get_mut(db).expect("recorded above");
        for change in changed {
            if !record.replica_identities_set.iter().any(|(t, _)| *t == change.0) {
                record.replica_identities_set.push(change);
            }
        }
        save_records(store, id, records)?;
    }
    let work = async {
        slot::create_publication(s.source, db, &names, &s.provider.schemas).await?;
        let created_slot = slot::create_slot(s.source, db, &names).await?;
        let copied = migrating_data::run_database(s, db, &state, Some(&created_slot.snapshot), &tx).await?;
        // The copy has adopted the snapshot: the slot's session is no longer needed.
        drop(created_slot.session);
        // Indexes and keys before streaming: applying UPDATEs needs them.
        migrating_data::restore_post_data(s, &copied).await?;
        super::completing_migration::analyze(s, db, &copied.landed.analyzed, &tx).await?;
        copied.coordinator.batch_execute("COMMIT").await?;
        let _ = std::fs::remove_dir_all(&copied.dump_dir);
        anyhow::Ok(created_slot.consistent_point)
    };
    let work = unless_silent(s.source, s.target, work);
    match watched(store, id, work, &mut rx, progress).await? {
        Some(consistent_point) => {
            let record = records.get_mut(db).expect("recorded above");
            record.consistent_point = lsn_to_string(consistent_point);
            record.base_copied = true;
            save_records(store, id, records)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Applying needs what PostgreSQL's apply worker has; found out before anything is created
/// rather than after the base copy.
async fn check_apply_privileges(target: &ConnSpec) -> Result<()> {
    let (client, _) = target.connect(&target.dbname).await?;
    client.batch_execute("SET session_replication_role = replica; SELECT pg_replication_origin_session_is_setup()").await.map_err(|e| {
        anyhow::anyhow!(
            "the target user {} cannot apply replicated changes: {}; online migration applies them as PostgreSQL's apply worker does, which needs a superuser (or, from PostgreSQL 15, SET on session_replication_role and EXECUTE on the pg_replication_origin functions)",
            target.user,
            pg_error(&e)
        )
    })
}

async fn start_stream(s: &Settings<'_>, resume: &str, db: &str, names: Names) -> Result<Stream> {
    let goal = reconnect::retry(s.reconnect_timeout, resume, s.source, &format!("reading the WAL position of database {db:?}"), || async {
        let (source, _) = s.source.connect(db).await?;
        let goal: String = source.query_one("select pg_current_wal_lsn()::text", &[]).await?.get(0);
        parse_lsn(&goal).context("the source's WAL position does not parse")
    })
    .await?;
    let state = StreamState::default();
    let spec = StreamSpec {
        source: s.source.clone(),
        target: s.target.clone(),
        database: db.to_string(),
        names: names.clone(),
        resume: resume.to_string(),
        limit: s.reconnect_timeout,
    };
    let task = tokio::spawn(reconnect::supervise(spec, state.clone()));
    Ok(Stream { database: db.to_string(), names, stats: state.stats.clone(), state, task, goal, wal_pending: None })
}

/// Follows the streams: saves their counters, moves to WaitingForCutoverTrigger once every
/// database caught up, writes the fences when the cutover is asked for, and returns once
/// they are applied. `Ok(Some(_))`: canceled.
async fn follow(store: &mut Store, id: i64, s: &Settings<'_>, streams: &mut [Stream], progress: &mut Progress) -> Result<Option<Migration>> {
    let resume = super::resume_command(&store.get_by_id(id)?);
    let pending = Arc::new(Mutex::new(streams.iter().map(|st| (st.names.slot.clone(), None)).collect()));
    let restarts: Vec<_> = streams.iter().map(|st| st.state.restart.clone()).collect();
    let mut watches = [
        AbortOnDrop(tokio::spawn(reconnect::watch(s.source.clone(), resume.clone(), s.reconnect_timeout, Some(pending.clone()), restarts.clone()))),
        AbortOnDrop(tokio::spawn(reconnect::watch(s.target.clone(), resume.clone(), s.reconnect_timeout, None, restarts))),
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut polled_wal = Instant::now() - Duration::from_secs(60);
    let (mut saved, mut saved_counters) = (Instant::now() - Duration::from_secs(60), BTreeMap::new());
    loop {
        tick.tick().await;
        for stream in streams.iter_mut() {
            if stream.task.is_finished() {
                let outcome = (&mut stream.task).await.context("an apply task panicked")?;
                outcome.with_context(|| format!("replicating database {:?}", stream.database))?;
                anyhow::bail!("replicating database {:?}: the apply task stopped", stream.database);
            }
        }
        if let Some(watch) = watches.iter_mut().find(|w| w.0.is_finished()) {
            (&mut watch.0).await.context("a server's monitor panicked")??;
            anyhow::bail!("a server's monitor stopped");
        }
        if polled_wal.elapsed() >= Duration::from_secs(5) {
            for stream in streams.iter_mut() {
                stream.wal_pending = pending.lock().unwrap().get(&stream.names.slot).copied().flatten();
                if stream.wal_pending == Some(0) {
                    // The target has applied all the WAL the source has: not behind at all,
                    // even when no keepalive has said so (a source with no WAL traffic).
                    stream.stats.lock().unwrap().latency_seconds = 0.0;
                }
                let stats = stream.stats.lock().unwrap().clone();
                progress.notify(&migrating_data::Progress::Replicating {
                    database: stream.database.clone(),
                    transactions: stats.transactions,
                    inserts: stats.inserts,
                    updates: stats.updates,
                    deletes: stats.deletes,
                    latency_seconds: stats.latency_seconds,
                    wal_bytes_pending: stream.wal_pending,
                });
            }
            polled_wal = Instant::now();
        }
        // `show` reads the counters from the store: written when they changed, at most once a second.
        if saved.elapsed() >= Duration::from_secs(1) {
            save_counters(store, id, streams, &mut saved_counters)?;
            saved = Instant::now();
        }

        progress.check_lease()?;
        let m = store.get_by_id(id)?;
        if m.status == Status::CANCELING {
            return Ok(Some(m));
        }
        let caught_up = streams.iter().all(|st| st.stats.lock().unwrap().caught_up_lsn >= st.goal);
        if m.status == Status::MIGRATING && caught_up {
            if let Some(canceled) = advance(store, id, Status::WAITING_FOR_CUTOVER)? {
                return Ok(Some(canceled));
            }
            continue;
        }
        let Some(mut cutover) = cutover_requested(store, &m)? else { continue };
        if m.status != Status::WAITING_FOR_CUTOVER {
            continue;
        }
        if cutover.fence_lsn.is_empty() {
            if cutover.read_only_source {
                for stream in streams.iter() {
                    let db = &stream.database;
                    let what = format!("making database {db:?} read-only");
                    // Asked once, before: a retry after a lost connection could find our own setting.
                    let already = reconnect::retry(s.reconnect_timeout, &resume, s.source, &what, || is_read_only(s.source, db)).await?;
                    reconnect::retry(s.reconnect_timeout, &resume, s.source, &what, || make_read_only(s.source, db)).await?;
                    if !already {
                        cutover.made_read_only.push(db.clone());
                    }
                }
            }
            let token = format!("migration {id} cutover {}", cutover.requested_at);
            for stream in streams.iter() {
                let what = format!("writing the cutover fence in database {:?}", stream.database);
                let lsn = reconnect::retry(s.reconnect_timeout, &resume, s.source, &what, || slot::emit_fence(s.source, &stream.database, &token)).await?;
                cutover.fence_lsn.insert(stream.database.clone(), lsn_to_string(lsn));
            }
            store.merge_details(id, json!({ "cutover": cutover }))?;
        }
        // Applied up to the fence: every transaction the source committed before it.
        let applied = streams.iter().all(|st| {
            let fence = cutover.fence_lsn.get(&st.database).and_then(|l| parse_lsn(l)).unwrap_or(Lsn::MAX);
            st.stats.lock().unwrap().caught_up_lsn >= fence
        });
        if applied {
            save_counters(store, id, streams, &mut saved_counters)?;
            cutover.fence_applied_at = Some(chrono::Utc::now().to_rfc3339());
            store.merge_details(id, json!({ "cutover": cutover }))?;
            return Ok(None);
        }
    }
}

/// A task that ends with its owner (the source's monitor ends when following does).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes every stream's counters to the store's `replication_progress` rows (what `show`
/// gives as `details.replicationProgress`) unless they equal `last`.
fn save_counters(store: &mut Store, id: i64, streams: &[Stream], last: &mut BTreeMap<String, ReplicationProgress>) -> Result<()> {
    let counters: BTreeMap<String, ReplicationProgress> = streams
        .iter()
        .map(|st| {
            let stats = st.stats.lock().unwrap().clone();
            let progress = ReplicationProgress {
                transactions: stats.transactions,
                inserts: stats.inserts,
                updates: stats.updates,
                deletes: stats.deletes,
                truncates: stats.truncates,
                rows_not_found: stats.rows_not_found,
                applied_lsn: lsn_to_string(stats.applied_lsn),
                caught_up_lsn: lsn_to_string(stats.caught_up_lsn),
                latency_ms: (stats.latency_seconds * 1000.0).round() as u64,
                fence: stats.fence,
                wal_bytes_pending: st.wal_pending,
                reconnecting: st.state.reconnecting.lock().unwrap().clone(),
            };
            (st.database.clone(), progress)
        })
        .collect();
    if counters != *last {
        store.save_replication_progress(id, &counters)?;
        *last = counters;
    }
    Ok(())
}

/// Whether a source database is read-only for new transactions already.
async fn is_read_only(source: &ConnSpec, db: &str) -> Result<bool> {
    let (client, _) = source.connect(&source.dbname).await?;
    let row = client
        .query_one(
            "select exists (select 1 from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase
                             where d.datname = $1 and s.setrole = 0 and 'default_transaction_read_only=on' = any(s.setconfig))",
            &[&db],
        )
        .await?;
    Ok(row.get(0))
}

/// Makes a source database read-only for the applications before the fence, as
/// pg_easy_replicate does: new transactions default to read-only and the sessions
/// connected now are ended (replication connections are left alone).
async fn make_read_only(source: &ConnSpec, db: &str) -> Result<()> {
    let (client, _) = source.connect(&source.dbname).await?;
    client
        .batch_execute(&format!("ALTER DATABASE {} SET default_transaction_read_only = on", quote_ident(db)))
        .await
        .map_err(|e| pg_failure(Role::Source, &e, format!("making database {db:?} read-only on the {}", source.describe())))?;
    client
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid() and backend_type = 'client backend'",
            &[&db],
        )
        .await
        .map_err(|e| pg_failure(Role::Source, &e, format!("ending the sessions of database {db:?} on the {}", source.describe())))?;
    Ok(())
}

/// The cutover's last part, tried again after each outage: every part of it can be done
/// twice (drops are `if exists`, verification reads again).
async fn complete_riding_out(store: &mut Store, id: i64, s: &Settings<'_>, databases: &[String], records: &BTreeMap<String, Record>) -> Result<Option<Migration>, StepError> {
    let step = "CompletingMigration";
    let resume = super::resume_command(&store.get_by_id(id).map_err(at(step))?);
    let mut outages = Outages::new(s.reconnect_timeout, &resume, s.source, s.target);
    loop {
        let error = match unless_silent(s.source, s.target, complete(store, id, s, databases, records)).await {
            Ok(done) => return super::recovered(store, id, &mut outages).map(|()| done).map_err(at(step)),
            Err(e) => e,
        };
        store.check_lease(id).map_err(at(step))?;
        super::ride_out(store, id, &mut outages, error, "completing the cutover").await.map_err(at(step))?;
        for db in databases {
            super::end_stale_sessions(s.target, db).await;
        }
    }
}

/// After the fences: sequences, slots, publications and origins, then CompletingMigration
/// verifies each database at a snapshot taken now and records the receipt.
async fn complete(store: &mut Store, id: i64, s: &Settings<'_>, databases: &[String], records: &BTreeMap<String, Record>) -> Result<Option<Migration>> {
    let m = store.get_by_id(id)?;
    let mut cutover = cutover_of(&m).unwrap_or_default();
    if m.status != Status::COMPLETING
        && let Some(canceled) = advance(store, id, Status::COMPLETING)?
    {
        return Ok(Some(canceled));
    }
    for db in databases {
        slot::drop_slot_and_publication(s.source, db, &records[db].names).await?;
        slot::restore_replica_identities(s.source, db, &records[db].replica_identities_set).await?;
        drop_origin(s.target, &records[db].names).await?;
    }
    for db in databases {
        refresh_materialized_views(s, db).await?;
    }
    let verifying = Instant::now();
    let mut verification = Vec::new();
    let mut tables_verified = 0;
    let mut sequences_set = 0;
    for db in databases {
        let (coordinator, snapshot) = migrating_data::export_snapshot(s.source, db, None).await?;
        let tables = migrating_data::tables_to_verify(&coordinator, s.inventory.source.version_num).await?;
        let copied = migrating_data::CopiedDatabase {
            name: db.clone(),
            coordinator,
            snapshot,
            tables,
            large_objects: 0,
            recopied: vec![],
            dump_dir: crate::work_dir::WorkDir::database_dir(&s.work_dir, db),
            post_data: None,
            landed: Default::default(),
        };
        let (no_events, _) = tokio::sync::mpsc::unbounded_channel();
        let checked = completing_migration::verify(s, &copied, &no_events).await?;
        if cutover.made_read_only.contains(db) {
            // The source's settings were just carried over, this one included: the target is
            // where the applications go next.
            let (target, _) = s.target.connect(&s.target.dbname).await?;
            target.batch_execute(&format!("ALTER DATABASE {} RESET default_transaction_read_only", quote_ident(db))).await?;
        }
        tables_verified += checked.tables_verified;
        sequences_set += checked.sequences_set;
        verification.push(checked);
    }
    cutover.sequences_set = Some(sequences_set);
    cutover.tables_verified = Some(tables_verified);
    cutover.verification_seconds = Some(verifying.elapsed().as_secs_f64());
    cutover.completed_at = Some(chrono::Utc::now().to_rfc3339());
    store.merge_details(id, json!({ "verification": verification, "cutover": cutover }))?;
    super::check_verification(&verification)?;
    Ok(None)
}

/// Materialized views are not replicated: the ones populated on the source are refreshed
/// on the target from the replicated tables, dependencies first.
async fn refresh_materialized_views(s: &Settings<'_>, db: &str) -> Result<()> {
    let (source, _) = s.source.connect(db).await?;
    let populated: Vec<String> = source
        .query("select format('%I.%I', schemaname, matviewname) from pg_matviews where ispopulated order by 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if populated.is_empty() {
        return Ok(());
    }
    let (target, _) = s.target.connect(db).await?;
    // A view may read another: refresh in rounds until all succeed or none does.
    let mut pending = populated;
    while !pending.is_empty() {
        let mut failed = Vec::new();
        let mut last_error = None;
        for view in &pending {
            if let Err(e) = target.batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}")).await {
                last_error = Some(format!("refreshing materialized view {view} in database {db:?} on the target: {}", pg_error(&e)));
                failed.push(view.clone());
            }
        }
        if failed.len() == pending.len() {
            anyhow::bail!(last_error.unwrap_or_default());
        }
        pending = failed;
    }
    Ok(())
}

/// Drops a replication origin on the target (idempotent). The apply session
/// that used it may take a moment to go away after its task was stopped.
async fn drop_origin(target: &ConnSpec, names: &Names) -> Result<()> {
    let (client, _) = target.connect(&target.dbname).await?;
    for attempt in 0..50 {
        let result = client
            .execute("select pg_replication_origin_drop($1) where pg_replication_origin_oid($1) is not null", &[&names.origin])
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) && attempt < 49 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("dropping replication origin {} on the {}: {}", names.origin, target.describe(), pg_error(&e)),
        }
    }
    Ok(())
}

/// Removes what an online migration left on both servers: slots and publications on the
/// source (the source must never keep WAL for a dead migration), replica identities it
/// changed, origins on the target. For cancel and failure: returns what could not be removed.
pub(super) async fn clean_up(source: &ConnSpec, target: &ConnSpec, records: &BTreeMap<String, Record>) -> Vec<Leftover> {
    let mut left = Vec::new();
    for (db, record) in records {
        if let Err(e) = slot::drop_slot_and_publication(source, db, &record.names).await {
            let object = format!("{} and publication {} in database {db}", record.names.slot, record.names.publication);
            left.push(Leftover { server: "source".into(), kind: "replication slot".into(), object, problem: format!("{e:#}") });
        }
        if let Err(e) = slot::restore_replica_identities(source, db, &record.replica_identities_set).await {
            let tables: Vec<&str> = record.replica_identities_set.iter().map(|(t, _)| t.as_str()).collect();
            left.push(Leftover { server: "source".into(), kind: "replica identity".into(), object: format!("{} in database {db}", tables.join(", ")), problem: format!("{e:#}") });
        }
        if let Err(e) = drop_origin(target, &record.names).await {
            left.push(Leftover { server: "target".into(), kind: "replication origin".into(), object: record.names.origin.clone(), problem: format!("{e:#}") });
        }
    }
    left
}
