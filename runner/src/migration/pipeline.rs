//! The per-table pipeline of MigratingData: what happens to a table once every part of its
//! copy has landed, while other tables are still copying (as pgcopydb does, plus the
//! verification).
//!
//! A landed table becomes jobs on one queue that `--index-jobs` workers share:
//! - a build per index or key (`post_data::TableEntry::build`): a table's builds run at
//!   once, on as many workers as are free, since each takes a SHARE lock;
//! - offline, its read-back: the target's rows digested, in block ranges when the table is
//!   big (digests add up), alongside the builds (a COPY TO takes ACCESS SHARE only);
//! - once those are done, its finish: the keys attached `USING INDEX`, the entries'
//!   follow-ups, the digest compared with the copy's, and ANALYZE;
//! - offline, once both its tables are finished, each foreign key between copied tables.
//!   One that fails here (a deadlock with another, a key it needs that pg_restore makes) is
//!   left to the restore after the copy, which runs it and says why if it fails again.
//!
//! A small table's work is one job instead (see `SMALL_TABLE`).
//!
//! The biggest table's jobs come first. A job that fails ends the copy with its error.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::completing_migration::{digest_rows, Compared};
use super::copy_digest::Digest;
use super::migrating_data::{Landed, TableToVerify};
use super::post_data::{ForeignKey, TableEntry, TableKey};
use crate::connect::{pg_failure, ConnSpec, Role};
use crate::sql_text::{quote_ident, stable_text};

/// What the pipeline does with the tables that land.
pub struct Plan {
    /// The archive entries that build each table's indexes and keys.
    pub entries: BTreeMap<TableKey, Vec<TableEntry>>,
    /// Offline: read back, compare and analyze each table (online, the target's tables move
    /// on with the stream and are verified at the cutover).
    pub verify: bool,
    /// Tables bigger than this are read back in block ranges (0: never; a target before
    /// PostgreSQL 14 has no TID range scan, and every range would read the whole table).
    pub split_bytes: u64,
    /// Foreign keys to add once both their tables are finished.
    pub foreign_keys: Vec<ForeignKey>,
}

/// What the pipeline did.
#[derive(Default)]
pub struct Done {
    /// TOC ids of the archive entries run.
    pub built: BTreeSet<u32>,
    /// `(schema, table, name)` of the foreign keys added (the restore keeps them).
    pub foreign_keys: BTreeSet<(String, String, String)>,
    /// The tables verified and analyzed.
    pub landed: Landed,
}

/// A table whose copy has landed whole.
pub struct LandedTable {
    pub table: TableToVerify,
    /// Heap and TOAST bytes on the source: the queue's order.
    pub size: i64,
    /// Main-fork bytes on the source: what block ranges divide.
    pub main_size: i64,
}

/// Below this (heap and TOAST), a table's work is one job: its entries run whole, one after
/// the other, then its read-back, comparison and ANALYZE. Its indexes take milliseconds; a
/// job each, with the attachments apart, would cost more in round trips than they save, and
/// ten thousand small tables would feel it.
const SMALL_TABLE: i64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// A small table's whole work.
    Small,
    /// Index `i` of the table's entries.
    Build(usize),
    /// The target's rows in blocks `[start, end)`, `end` open for the last range.
    ReadBack(Option<(i64, Option<i64>)>),
    Finish,
    /// Foreign key `i` of the plan's.
    ForeignKey(usize),
}

impl Step {
    /// A table's finish first (short, and it ends the table's work), then builds (the
    /// longest work), then read-backs.
    fn rank(&self) -> u8 {
        match self {
            Step::Finish => 2,
            Step::Small | Step::Build(_) => 1,
            Step::ReadBack(_) | Step::ForeignKey(_) => 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Job {
    size: i64,
    /// Arrival order: the earlier first among equals.
    seq: u64,
    table: TableKey,
    step: Step,
}

impl Ord for Job {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.step == Step::Finish, self.size, self.step.rank(), std::cmp::Reverse(self.seq)).cmp(&(
            other.step == Step::Finish,
            other.size,
            other.step.rank(),
            std::cmp::Reverse(other.seq),
        ))
    }
}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A landed table's work in progress.
struct TableWork {
    table: TableToVerify,
    size: i64,
    /// Jobs not yet done before its finish.
    left: usize,
    /// The sum of its read-back ranges so far.
    target: Digest,
}

#[derive(Default)]
struct Queue {
    ready: BinaryHeap<Job>,
    tables: HashMap<TableKey, TableWork>,
    running: usize,
    seq: u64,
    /// No table lands any more: workers stop once nothing is ready or running.
    closed: bool,
    /// Tables whose work is finished: their foreign keys may come.
    finished: std::collections::HashSet<TableKey>,
    done: Done,
}

impl Queue {
    fn push(&mut self, table: &TableKey, size: i64, step: Step) {
        self.seq += 1;
        self.ready.push(Job { size, seq: self.seq, table: table.clone(), step });
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    plan: Plan,
    target: ConnSpec,
    db: String,
    workers: usize,
    /// The plan's foreign keys per table they involve.
    foreign_keys_of: HashMap<TableKey, Vec<usize>>,
}

/// Where the copy workers hand over the tables that land (cloned to each).
#[derive(Clone)]
pub struct Arrivals(Arc<Shared>);

/// The pipeline's workers.
pub struct Pipeline {
    shared: Arc<Shared>,
    /// A JoinSet aborts its tasks when dropped (a canceled or failed copy).
    workers: tokio::task::JoinSet<Result<()>>,
}

impl Pipeline {
    pub fn start(target: &ConnSpec, db: &str, workers: usize, plan: Plan) -> (Pipeline, Arrivals) {
        let workers = workers.max(1);
        let mut foreign_keys_of: HashMap<TableKey, Vec<usize>> = HashMap::new();
        for (i, fk) in plan.foreign_keys.iter().enumerate() {
            foreign_keys_of.entry(fk.table.clone()).or_default().push(i);
            if fk.references != fk.table {
                foreign_keys_of.entry(fk.references.clone()).or_default().push(i);
            }
        }
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: tokio::sync::Notify::new(), plan, target: target.clone(), db: db.to_string(), workers, foreign_keys_of });
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let shared = shared.clone();
            set.spawn(crate::own_thread::run("pgferry-pipeline", move || work(shared)));
        }
        (Pipeline { shared: shared.clone(), workers: set }, Arrivals(shared))
    }

    /// A worker's error, as soon as one fails; pending while they work. For use while
    /// tables still land (until `finish`, a worker ends only by failing).
    pub async fn failure(&mut self) -> anyhow::Error {
        match self.workers.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Err(e)) => anyhow::anyhow!("a pipeline worker panicked: {e}"),
            Some(Ok(Ok(()))) => anyhow::anyhow!("a pipeline worker stopped while tables were still copying"),
            None => std::future::pending().await,
        }
    }

    /// Once no table lands any more: waits for every queued job, and says what was done.
    pub async fn finish(mut self) -> Result<Done> {
        self.shared.queue.lock().expect("pipeline queue").closed = true;
        self.shared.wake.notify_waiters();
        while let Some(worker) = self.workers.join_next().await {
            worker.context("a pipeline worker panicked")??;
        }
        Ok(std::mem::take(&mut self.shared.queue.lock().expect("pipeline queue").done))
    }
}

impl Arrivals {
    /// Queues a landed table's jobs.
    pub fn landed(&self, landed: LandedTable) {
        let shared = &self.0;
        let key = (landed.table.schema.clone(), landed.table.name.clone());
        let builds = shared.plan.entries.get(&key).map_or(0, Vec::len);
        let ranges = if shared.plan.verify { read_back_ranges(landed.size, landed.main_size, shared.plan.split_bytes, shared.workers) } else { Vec::new() };
        if builds == 0 && ranges.is_empty() {
            return;
        }
        let mut queue = shared.queue.lock().expect("pipeline queue");
        let left = if landed.size < SMALL_TABLE {
            queue.push(&key, landed.size, Step::Small);
            1
        } else {
            for i in 0..builds {
                queue.push(&key, landed.size, Step::Build(i));
            }
            for range in &ranges {
                queue.push(&key, landed.size, Step::ReadBack(*range));
            }
            builds + ranges.len()
        };
        queue.tables.insert(key, TableWork { table: landed.table, size: landed.size, left, target: Digest::default() });
        drop(queue);
        shared.wake.notify_waiters();
    }
}

/// Block ranges for a big table's read-back: as many as workers, when it is worth it.
fn read_back_ranges(size: i64, main_size: i64, split_bytes: u64, workers: usize) -> Vec<Option<(i64, Option<i64>)>> {
    const BLOCK: i64 = 8192;
    let blocks = main_size / BLOCK;
    let parts = if split_bytes == 0 { 1 } else { (size.max(0) as u64).div_ceil(split_bytes).min(workers as u64).min(blocks.max(1) as u64) as i64 };
    if parts < 2 {
        return vec![None];
    }
    let per = (blocks + parts - 1) / parts;
    (0..parts).map(|i| Some((i * per, (i + 1 < parts).then_some((i + 1) * per)))).collect()
}

async fn work(shared: Arc<Shared>) -> Result<()> {
    let mut client: Option<Client> = None;
    loop {
        let wake = shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let job = {
            let mut queue = shared.queue.lock().expect("pipeline queue");
            match queue.ready.pop() {
                Some(job) => {
                    queue.running += 1;
                    Some(job)
                }
                None if queue.closed && queue.running == 0 => return Ok(()),
                None => None,
            }
        };
        let Some(job) = job else {
            wake.await;
            continue;
        };
        if client.is_none() {
            let (connected, _) = shared.target.connect(&shared.db).await?;
            connected.batch_execute(&stable_text()).await?;
            client = Some(connected);
        }
        run(&shared, client.as_ref().expect("connected"), job).await?;
        shared.wake.notify_waiters();
    }
}

async fn run(shared: &Shared, client: &Client, job: Job) -> Result<()> {
    let db = &shared.db;
    let (schema, name) = &job.table;
    let entries = shared.plan.entries.get(&job.table).map(Vec::as_slice).unwrap_or_default();
    let started = std::time::Instant::now();
    let mut read = None;
    match &job.step {
        Step::Small => {
            // One round trip: its entries, then ANALYZE (which may run in the implicit
            // transaction of a multi-statement query).
            let mut sql: Vec<String> = entries.iter().map(|e| e.whole.clone()).collect();
            if shared.plan.verify {
                sql.push(format!("ANALYZE {}.{};", quote_ident(schema), quote_ident(name)));
            }
            let ids = entries.iter().map(|e| e.id.to_string()).collect::<Vec<_>>().join(", ");
            client.batch_execute(&sql.join("\n")).await.map_err(|e| {
                pg_failure(Role::Target, &e, format!("building the indexes and keys of table {schema}.{name} in database {db:?} (archive entries {ids}) and analyzing it"))
            })?;
            if shared.plan.verify {
                let table = shared.queue.lock().expect("pipeline queue").tables[&job.table].table.clone();
                read = Some(digest_rows(client, Role::Target, &table, None).await?);
            }
        }
        Step::Build(i) => {
            let entry = &entries[*i];
            client.batch_execute(&entry.build).await.map_err(|e| {
                pg_failure(Role::Target, &e, format!("building the indexes and keys of table {schema}.{name} in database {db:?} (archive entry {})", entry.id))
            })?;
        }
        Step::ReadBack(range) => {
            let table = shared.queue.lock().expect("pipeline queue").tables[&job.table].table.clone();
            read = Some(digest_rows(client, Role::Target, &table, *range).await?);
        }
        Step::ForeignKey(i) => {
            let fk = &shared.plan.foreign_keys[*i];
            let added = client.batch_execute(&fk.sql).await;
            let mut queue = shared.queue.lock().expect("pipeline queue");
            queue.running -= 1;
            match added {
                Ok(()) => {
                    queue.done.built.insert(fk.id);
                    queue.done.foreign_keys.insert((fk.table.0.clone(), fk.table.1.clone(), fk.name.clone()));
                }
                Err(e) => tracing::debug!("{db}: foreign key {} of {schema}.{name} left to the restore after the copy: {}", fk.name, crate::connect::pg_error(&e)),
            }
            return Ok(());
        }
        Step::Finish => {
            for entry in entries.iter().filter(|e| !e.finish.is_empty()) {
                client.batch_execute(&entry.finish).await.map_err(|e| {
                    pg_failure(Role::Target, &e, format!("attaching the keys of table {schema}.{name} in database {db:?} (archive entry {})", entry.id))
                })?;
            }
            if shared.plan.verify {
                analyze(client, db, schema, name).await?;
            }
        }
    }
    tracing::debug!("{db}: {schema}.{name}: {:?} in {:.2}s", job.step, started.elapsed().as_secs_f64());
    let mut queue = shared.queue.lock().expect("pipeline queue");
    queue.running -= 1;
    if matches!(job.step, Step::Finish | Step::Small) {
        let mut work = queue.tables.remove(&job.table).expect("a table in the pipeline");
        if let Some(read) = read {
            work.target = read;
        }
        queue.done.built.extend(entries.iter().map(|e| e.id));
        if shared.plan.verify {
            queue.done.landed.verified.push(Compared {
                table: format!("{schema}.{name}"),
                source: work.table.source.expect("the copy's digest"),
                target: work.target,
            });
            queue.done.landed.analyzed.insert(job.table.clone());
        }
        queue.finished.insert(job.table.clone());
        // Its foreign keys whose other table is finished too.
        for &i in shared.foreign_keys_of.get(&job.table).map(Vec::as_slice).unwrap_or_default() {
            let fk = &shared.plan.foreign_keys[i];
            if queue.finished.contains(&fk.table) && queue.finished.contains(&fk.references) {
                let size = work.size;
                queue.push(&fk.table, size, Step::ForeignKey(i));
            }
        }
        return Ok(());
    }
    let work = queue.tables.get_mut(&job.table).expect("a table in the pipeline");
    if let Some(read) = read {
        work.target = work.target.combine(read);
    }
    work.left -= 1;
    if work.left == 0 {
        let size = work.size;
        queue.push(&job.table, size, Step::Finish);
    }
    Ok(())
}

async fn analyze(client: &Client, db: &str, schema: &str, name: &str) -> Result<()> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
    client.batch_execute(&format!("ANALYZE {qualified}")).await.map_err(|e| pg_failure(Role::Target, &e, format!("analyzing table {qualified} of database {db:?} on the target")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_back_ranges_cover_every_block_once() {
        const MB: i64 = 1 << 20;
        assert_eq!(read_back_ranges(10 * MB, 10 * MB, 0, 4), [None], "never split");
        assert_eq!(read_back_ranges(10 * MB, 10 * MB, 64 << 20, 4), [None], "small");
        assert_eq!(read_back_ranges(500 * MB, 500 * MB, 64 << 20, 1), [None], "one worker");
        let ranges = read_back_ranges(500 * MB, 400 * MB, 64 << 20, 3);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0], Some((0, Some(17067))));
        assert_eq!(ranges[1], Some((17067, Some(34134))));
        // The last is open: rows past the source's size are read too.
        assert_eq!(ranges[2], Some((34134, None)));
        // Mostly TOAST: few main blocks, no more ranges than blocks.
        assert_eq!(read_back_ranges(500 * MB, 8192, 64 << 20, 3), [None]);
    }

    #[test]
    fn finish_comes_first_then_the_biggest_tables_builds_then_read_backs() {
        let job = |size, seq, step| Job { size, seq, table: ("s".into(), format!("t{seq}")), step };
        let mut heap = BinaryHeap::from(vec![job(10, 1, Step::ReadBack(None)), job(10, 2, Step::Build(0)), job(99, 3, Step::ReadBack(None)), job(99, 4, Step::Build(0)), job(1, 5, Step::Finish), job(99, 6, Step::Build(1))]);
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop()).map(|j| j.seq).collect();
        assert_eq!(order, [5, 4, 6, 3, 2, 1]);
    }
}
