//! Progress of the data steps: the counters `show` reports (per database and per table,
//! as the cloud service's fullLoad ones), the resume record, and the loop that runs a step
//! while recording its events and watching for a cancel from another shell.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;

use super::copy_digest::Digest;
use super::migrating_data::{self, CopiedDigest, DatabaseState};
use crate::lifecycle::Status;
use crate::store::{CopiedTable, CopyCounters, ProgressDelta, Store, TableChange};

/// Receives every progress event as it happens (the CLI draws bars, prints lines or JSON).
pub type Observer = Box<dyn FnMut(&migrating_data::Progress) + Send>;

/// Copy progress as `show` reports it (per database and per table), kept here and written
/// to the store's catalog as deltas: each save writes what changed since the last one.
#[derive(Default)]
pub(super) struct Progress {
    databases: BTreeMap<String, DatabaseProgress>,
    pub(super) observer: Option<Observer>,
    /// The resume record, stored beside the progress.
    pub(super) states: BTreeMap<String, DatabaseState>,
    /// Parts copied so far of tables split into parts, added up.
    parts_done: BTreeMap<String, PartsDone>,
    /// Per database, what this run reads its tables at (from `DatabaseStarted`).
    snapshots: BTreeMap<String, String>,
    /// Table changes since the last save, in order.
    unsaved_tables: Vec<(String, TableChange)>,
    /// Databases whose step (stage, recopied) changed since the last save.
    unsaved_steps: BTreeSet<String>,
    /// Databases whose counters changed since the last save.
    unsaved_counters: BTreeSet<String>,
    /// When the store last got the counters (see `record`).
    saved_at: Option<std::time::Instant>,
    /// Set when another process took the migration over: the work stops.
    pub(super) lease_lost: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// How often the counters are written while tables stream by (a save writes only what
/// changed, but one per table of a 10,000-table database would still be 10,000 commits).
const SAVE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct DatabaseProgress {
    tables_total: usize,
    /// As the cloud service's fullLoad counters: waiting, being copied, finished.
    tables_queued: usize,
    tables_loading: usize,
    tables_done: usize,
    /// Tables whose copy failed, and which (`schema.name`).
    errored_tables: Vec<String>,
    loading: BTreeSet<String>,
    /// Bytes sent so far of each (part of a) table still streaming: counted in
    /// `bytes_copied` until the table ends and its own count replaces them.
    streaming: std::collections::HashMap<String, u64>,
    rows_copied: u64,
    bytes_copied: u64,
    bytes_total: u64,
}

impl DatabaseProgress {
    fn counters(&self) -> CopyCounters {
        CopyCounters {
            tables_total: self.tables_total as u64,
            tables_queued: self.tables_queued as u64,
            tables_loading: self.tables_loading as u64,
            tables_done: self.tables_done as u64,
            tables_errored: self.errored_tables.len() as u64,
            errored_tables: self.errored_tables.clone(),
            rows_copied: self.rows_copied,
            bytes_copied: self.bytes_copied,
            bytes_total: self.bytes_total,
        }
    }
}

/// The parts of a table copied so far, added up.
#[derive(Default)]
struct PartsDone {
    parts: usize,
    digest: Digest,
    rows: u64,
    bytes: u64,
    seconds: f64,
}

/// A value's JSON string form (`Stage::SchemaRestored` → `SchemaRestored`).
fn json_str(value: impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

impl Progress {
    pub(super) fn new(observer: Option<Observer>, states: BTreeMap<String, DatabaseState>, lease: &crate::lease::RunnerLease) -> Self {
        Progress { observer, states, lease_lost: Some(lease.lost_flag()), ..Default::default() }
    }

    /// Fails when this runner lost the migration's lease.
    pub(super) fn check_lease(&self) -> Result<()> {
        if self.lease_lost.as_ref().is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)) {
            anyhow::bail!("this runner lost the migration's lease: another pgferry process took the migration over after this one stalled for longer than the lease");
        }
        Ok(())
    }

    /// Shows an event without recording it.
    pub(super) fn notify(&mut self, event: &migrating_data::Progress) {
        if let Some(observer) = &mut self.observer {
            observer(event);
        }
    }

    /// Whether events were recorded since the last save.
    fn unsaved(&self) -> bool {
        !(self.unsaved_tables.is_empty() && self.unsaved_steps.is_empty() && self.unsaved_counters.is_empty())
    }

    pub(super) fn record(&mut self, store: &mut Store, id: i64, event: migrating_data::Progress) {
        if let Some(observer) = &mut self.observer {
            observer(&event);
        }
        // Saved at once: what the resume record says of a stage or of the tables a resume
        // empties to copy again must hold when the runner dies right after.
        let save_now = matches!(event, migrating_data::Progress::StageReached { .. } | migrating_data::Progress::TablesRecopying { .. });
        match event {
            // Online counters have their own place in the store (see waiting_for_cutover_trigger).
            migrating_data::Progress::Replicating { .. } => {}
            migrating_data::Progress::DatabaseStarted { database, tables_total, bytes_total, snapshot } => {
                // A new attempt (after an outage) counts afresh what is left to copy.
                self.parts_done.retain(|key, _| !key.starts_with(&format!("{database}\0")));
                self.databases.insert(database.clone(), DatabaseProgress { tables_total, tables_queued: tables_total, bytes_total, ..Default::default() });
                self.snapshots.insert(database.clone(), snapshot);
                self.unsaved_counters.insert(database);
            }
            migrating_data::Progress::StageReached { database, stage } => {
                self.states.entry(database.clone()).or_default().stage = stage;
                self.unsaved_steps.insert(database);
            }
            migrating_data::Progress::TableStarted { database, schema, name } => {
                let db = self.databases.entry(database.clone()).or_default();
                let key = format!("{schema}.{name}");
                if db.errored_tables.contains(&key) {
                    // Another part of a table that already failed.
                    return;
                }
                if db.loading.insert(key) {
                    db.tables_queued = db.tables_queued.saturating_sub(1);
                }
                db.tables_loading = db.loading.len();
                self.unsaved_counters.insert(database);
            }
            migrating_data::Progress::TableCopied { database, table } => {
                // A table copied in parts is done when all its parts are.
                let key = format!("{}.{}", table.schema, table.name);
                let parts_key = format!("{database}\0{key}");
                let done = self.parts_done.entry(parts_key.clone()).or_default();
                done.parts += 1;
                done.digest = done.digest.combine(table.digest);
                done.rows += table.rows;
                done.bytes += table.bytes;
                done.seconds += table.seconds;
                let db = self.databases.entry(database.clone()).or_default();
                if done.parts == table.parts {
                    let done = self.parts_done.remove(&parts_key).unwrap_or_default();
                    db.loading.remove(&key);
                    db.tables_loading = db.loading.len();
                    db.tables_done += 1;
                    let copied = CopiedDigest { format: table.format, digest: done.digest };
                    let read_at = self.snapshots.get(&database).cloned().unwrap_or_default();
                    let state = self.states.entry(database.clone()).or_default();
                    state.digests.insert(key.clone(), copied);
                    state.read_at.insert(key.clone(), read_at.clone());
                    state.tables_done.push(key.clone());
                    let row = CopiedTable {
                        table: key,
                        schema: table.schema.clone(),
                        digest: serde_json::to_value(copied).unwrap_or_default(),
                        format: json_str(table.format),
                        parts: done.parts as u64,
                        rows: done.rows,
                        bytes: done.bytes,
                        milliseconds: (done.seconds * 1000.0).round() as u64,
                        read_at,
                        copied_at: chrono::Utc::now().to_rfc3339(),
                    };
                    self.unsaved_tables.push((database.clone(), TableChange::Copied(row)));
                }
                db.rows_copied += table.rows;
                let streamed = db.streaming.remove(&format!("{}.{}\0{:?}", table.schema, table.name, table.part)).unwrap_or(0);
                db.bytes_copied = db.bytes_copied - streamed + table.bytes;
                self.unsaved_counters.insert(database);
            }
            migrating_data::Progress::TablesRecopying { database, tables } => {
                let state = self.states.entry(database.clone()).or_default();
                state.tables_done.retain(|t| !tables.contains(t));
                for table in tables {
                    state.digests.remove(&table);
                    state.read_at.remove(&table);
                    if !state.recopied.contains(&table) {
                        state.recopied.push(table.clone());
                    }
                    self.unsaved_tables.push((database.clone(), TableChange::Recopying(table)));
                }
                self.unsaved_steps.insert(database);
            }
            migrating_data::Progress::TableBytes { database, schema, name, part, bytes } => {
                let db = self.databases.entry(database.clone()).or_default();
                let before = db.streaming.insert(format!("{schema}.{name}\0{part:?}"), bytes).unwrap_or(0);
                db.bytes_copied = db.bytes_copied - before + bytes;
                self.unsaved_counters.insert(database);
            }
            migrating_data::Progress::VerificationStarted { .. } | migrating_data::Progress::Analyzed { .. } => {}
            migrating_data::Progress::TableFailed { database, schema, name, error: _ } => {
                let db = self.databases.entry(database.clone()).or_default();
                let key = format!("{schema}.{name}");
                db.loading.remove(&key);
                db.tables_loading = db.loading.len();
                if !db.errored_tables.contains(&key) {
                    db.errored_tables.push(key);
                }
                self.unsaved_counters.insert(database);
            }
        }
        // Stages are saved at once; table counters at most every SAVE_EVERY. A table done
        // but not yet saved when the runner dies is only copied again on resume.
        if save_now || self.saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY) {
            self.save(store, id);
        }
    }

    /// What changed since the last save, as the store writes it.
    fn delta(&self) -> ProgressDelta {
        ProgressDelta {
            steps: self
                .unsaved_steps
                .iter()
                .filter_map(|db| self.states.get(db).map(|st| (db.clone(), (json_str(st.stage), st.recopied.clone()))))
                .collect(),
            tables: self.unsaved_tables.clone(),
            counters: self.unsaved_counters.iter().filter_map(|db| self.databases.get(db).map(|p| (db.clone(), p.counters()))).collect(),
        }
    }

    /// Writes what changed since the last save to the store, in one transaction under the
    /// lease. A store hiccup must not fail the copy: it is logged, the changes are kept, and
    /// the next save (at most a tick later) writes them.
    pub(super) fn save(&mut self, store: &mut Store, id: i64) {
        if self.unsaved() {
            match store.save_progress(id, &self.delta()) {
                Ok(()) => {
                    self.unsaved_tables.clear();
                    self.unsaved_steps.clear();
                    self.unsaved_counters.clear();
                }
                Err(e) => tracing::warn!("saving the progress of migration {id} to the state store (retried in a second): {e:#}"),
            }
        }
        self.saved_at = Some(std::time::Instant::now());
    }
}

/// Runs one step's work while recording its progress events and watching, every second,
/// for a cancel from another shell. `None`: canceled; the work was dropped, which stops its
/// workers and kills its pg_dump/pg_restore.
pub(super) async fn watched<T>(
    store: &mut Store,
    id: i64,
    work: impl std::future::Future<Output = Result<T>>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<migrating_data::Progress>,
    progress: &mut Progress,
) -> Result<Option<T>> {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut work => {
                while let Ok(event) = events.try_recv() {
                    progress.record(store, id, event);
                }
                progress.save(store, id);
                return result.map(Some);
            }
            Some(event) = events.recv() => progress.record(store, id, event),
            _ = tick.tick() => {
                // Counters held back by SAVE_EVERY reach the store within a tick.
                if progress.unsaved() {
                    progress.save(store, id);
                }
                progress.check_lease()?;
                if store.get_by_id(id)?.status == Status::CANCELING {
                    return Ok(None);
                }
            }
        }
    }
}

