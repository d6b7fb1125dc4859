//! Progress of the data steps: the counters `show` reports (per database and per table,
//! as the cloud service's fullLoad ones), the resume record, and the loop that runs a step
//! while recording its events and watching for a cancel from another shell.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::copy_digest::Digest;
use super::migrating_data::{self, CopiedDigest, DatabaseState};
use crate::lifecycle::Status;
use crate::store::Store;

/// Receives every progress event as it happens (the CLI draws bars, prints lines or JSON).
pub type Observer = Box<dyn FnMut(&migrating_data::Progress) + Send>;

/// Copy progress as `show` reports it: per database and per table.
#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Progress {
    databases: BTreeMap<String, DatabaseProgress>,
    #[serde(skip)]
    pub(super) observer: Option<Observer>,
    /// The resume record, stored beside the progress.
    #[serde(skip)]
    pub(super) states: BTreeMap<String, DatabaseState>,
    /// Parts copied so far of tables split into parts, and their digests added up.
    #[serde(skip)]
    parts_done: BTreeMap<String, (usize, Digest)>,
    /// When the store last got the counters (see `record`).
    #[serde(skip)]
    saved_at: Option<std::time::Instant>,
    /// Events recorded since the last save.
    #[serde(skip)]
    unsaved: bool,
    /// Set when another process took the migration over: the work stops.
    #[serde(skip)]
    pub(super) lease_lost: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// How often the counters are written while tables stream by: the document grows with the
/// tables, so writing it per table would cost quadratic time on a 10,000-table database.
const SAVE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DatabaseProgress {
    tables_total: usize,
    /// As the cloud service's fullLoad counters: waiting, being copied, finished.
    tables_queued: usize,
    tables_loading: usize,
    tables_done: usize,
    /// Tables whose copy failed, and which (`schema.name`).
    tables_errored: usize,
    errored_tables: Vec<String>,
    #[serde(skip)]
    loading: std::collections::BTreeSet<String>,
    /// Bytes sent so far of each (part of a) table still streaming: counted in
    /// `bytes_copied` until the table ends and its own count replaces them.
    #[serde(skip)]
    streaming: std::collections::HashMap<String, u64>,
    rows_copied: u64,
    bytes_copied: u64,
    bytes_total: u64,
    tables: Vec<migrating_data::TableCopy>,
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

    pub(super) fn record(&mut self, store: &mut Store, id: i64, event: migrating_data::Progress) {
        if let Some(observer) = &mut self.observer {
            observer(&event);
        }
        // Saved at once: what the resume record says of a stage or of the tables a resume
        // empties to copy again must hold when the runner dies right after.
        let save_now = matches!(event, migrating_data::Progress::StageReached { .. } | migrating_data::Progress::TablesRecopying { .. });
        self.unsaved = true;
        match event {
            // Online counters have their own place in the store (see waiting_for_cutover_trigger).
            migrating_data::Progress::Replicating { .. } => {}
            migrating_data::Progress::DatabaseStarted { database, tables_total, bytes_total } => {
                // A new attempt (after an outage) counts afresh what is left to copy.
                self.parts_done.retain(|key, _| !key.starts_with(&format!("{database}\0")));
                self.databases.insert(database, DatabaseProgress { tables_total, tables_queued: tables_total, bytes_total, ..Default::default() });
            }
            migrating_data::Progress::StageReached { database, stage } => {
                self.states.entry(database).or_default().stage = stage;
            }
            migrating_data::Progress::TableStarted { database, schema, name } => {
                let db = self.databases.entry(database).or_default();
                let key = format!("{schema}.{name}");
                if db.errored_tables.contains(&key) {
                    // Another part of a table that already failed.
                    return;
                }
                if db.loading.insert(key) {
                    db.tables_queued = db.tables_queued.saturating_sub(1);
                }
                db.tables_loading = db.loading.len();
            }
            migrating_data::Progress::TableCopied { database, table } => {
                // A table copied in parts is done when all its parts are.
                let key = format!("{}.{}", table.schema, table.name);
                let (parts, digest) = self.parts_done.entry(format!("{database}\0{key}")).or_default();
                *parts += 1;
                *digest = digest.combine(table.digest);
                let (complete, digest) = (*parts == table.parts, *digest);
                let db = self.databases.entry(database.clone()).or_default();
                if complete {
                    db.loading.remove(&key);
                    db.tables_loading = db.loading.len();
                    db.tables_done += 1;
                    let state = self.states.entry(database).or_default();
                    state.digests.insert(key.clone(), CopiedDigest { format: table.format, digest });
                    state.tables_done.push(key);
                }
                db.rows_copied += table.rows;
                let streamed = db.streaming.remove(&format!("{}.{}\0{:?}", table.schema, table.name, table.part)).unwrap_or(0);
                db.bytes_copied = db.bytes_copied - streamed + table.bytes;
                db.tables.push(table);
            }
            migrating_data::Progress::TablesRecopying { database, tables } => {
                let state = self.states.entry(database).or_default();
                state.tables_done.retain(|t| !tables.contains(t));
                for table in tables {
                    state.digests.remove(&table);
                    if !state.recopied.contains(&table) {
                        state.recopied.push(table);
                    }
                }
            }
            migrating_data::Progress::TableBytes { database, schema, name, part, bytes } => {
                let db = self.databases.entry(database).or_default();
                let before = db.streaming.insert(format!("{schema}.{name}\0{part:?}"), bytes).unwrap_or(0);
                db.bytes_copied = db.bytes_copied - before + bytes;
            }
            migrating_data::Progress::VerificationStarted { .. } => {}
            migrating_data::Progress::TableFailed { database, schema, name, error: _ } => {
                let db = self.databases.entry(database).or_default();
                let key = format!("{schema}.{name}");
                db.loading.remove(&key);
                db.tables_loading = db.loading.len();
                if !db.errored_tables.contains(&key) {
                    db.errored_tables.push(key);
                    db.tables_errored = db.errored_tables.len();
                }
            }
        }
        // Stages are saved at once; table counters at most every SAVE_EVERY. A table done
        // but not yet saved when the runner dies is only copied again on resume.
        if save_now || self.saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY) {
            self.save(store, id);
        }
    }

    /// Writes the counters and the resume record to the store. A store hiccup must not fail
    /// the copy: it is logged, and the next save (at most a tick later) catches up.
    pub(super) fn save(&mut self, store: &mut Store, id: i64) {
        let record = self.states.iter().map(|(db, state)| (db.clone(), state.to_record())).collect();
        let saved = store
            .save_resume_record(id, &record)
            .and_then(|()| serde_json::to_value(&*self).map_err(anyhow::Error::from))
            .and_then(|value| store.merge_details(id, json!({ "progress": value })));
        match saved {
            Ok(()) => self.unsaved = false,
            Err(e) => tracing::warn!("saving the progress of migration {id} to the state store (retried in a second): {e:#}"),
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
                if progress.unsaved {
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

