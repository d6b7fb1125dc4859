//! The embedded state store: one SQLite file (WAL mode, so `show` from another shell reads
//! while a runner writes). Every transition is checked against the lifecycle and committed
//! before the next step starts; every write is one statement or one transaction, so a
//! runner saving progress and a CLI recording a request never lose each other's writes.
//! Nothing secret is ever written here.
//!
//! The schema is versioned (`PRAGMA user_version`) and upgraded in place when opened; a
//! store written by a newer pgferry is refused, not misread. The SQL is kept to what
//! PostgreSQL runs too (integer, text, no SQLite-only types).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{IllegalTransition, Status};

/// Each entry upgrades the schema by one version; the store's version is how many ran.
/// Released entries never change: a new one is appended.
const UPGRADES: &[&str] = &[
    // 1: the first release's tables.
    "
    create table if not exists migration (
        id            integer primary key,
        name          text not null,
        target_server text not null,
        source_server text not null,
        source_type   text not null,
        mode          text not null,
        option        text not null,
        status        text not null,
        databases     text not null,
        properties    text not null,
        validation    text,
        error         text,
        details       text not null default '{}',
        runner_pid    integer,
        created_at    text not null,
        ended_at      text,
        unique (target_server, name)
    );
    create table if not exists transition (
        migration_id integer not null references migration(id),
        at           text not null,
        status       text not null
    );
    ",
    // 2: requests as rows of their own, runner leases, what a cleanup could not remove, and
    // where the properties file was (so hints can name it; it is the user's, not a secret).
    "
    create table request (
        migration_id integer not null references migration(id),
        kind         text not null check (kind in ('cutover', 'cancel')),
        options      text not null default '{}',
        requested_at text not null,
        primary key (migration_id, kind)
    );
    create table lease (
        migration_id   integer primary key references migration(id),
        holder         text not null,
        pid            integer not null,
        host           text not null,
        acquired_at    text not null,
        expires_at_ms  integer not null
    );
    create table leftover (
        migration_id integer not null references migration(id),
        server       text not null,
        kind         text not null,
        object       text not null,
        problem      text not null,
        primary key (migration_id, server, kind, object)
    );
    alter table migration add column properties_file text;
    ",
    // 3: the resume record as rows: each database's step, and each table copied completely
    // with its digest (written as tables finish, not as one document). Records of
    // migrations in flight are carried over from the details document.
    "
    create table database_step (
        migration_id integer not null references migration(id),
        database     text not null,
        stage        text not null,
        recopied     text not null default '[]',
        primary key (migration_id, database)
    );
    create table table_copied (
        migration_id integer not null references migration(id),
        database     text not null,
        table_name   text not null,
        digest       text not null,
        primary key (migration_id, database, table_name)
    );
    insert into database_step (migration_id, database, stage, recopied)
        select m.id, d.key, json_extract(d.value, '$.stage'), coalesce(json_extract(d.value, '$.recopied'), '[]')
          from migration m, json_each(m.details, '$.copyState') d;
    insert into table_copied (migration_id, database, table_name, digest)
        select m.id, d.key, t.value, json_extract(d.value, '$.digests.\"' || t.value || '\"')
          from migration m, json_each(m.details, '$.copyState') d, json_each(d.value, '$.tablesDone') t
         where json_extract(d.value, '$.digests.\"' || t.value || '\"') is not null;
    update migration set details = json_remove(details, '$.copyState');
    create table replication_object (
        migration_id       integer not null references migration(id),
        database           text not null,
        slot               text not null,
        publication        text not null,
        origin             text not null,
        consistent_point   text not null default '',
        base_copied        integer not null default 0,
        replica_identities text not null default '[]',
        primary key (migration_id, database)
    );
    insert into replication_object (migration_id, database, slot, publication, origin, consistent_point, base_copied, replica_identities)
        select m.id, r.key, json_extract(r.value, '$.names.slot'), json_extract(r.value, '$.names.publication'), json_extract(r.value, '$.names.origin'),
               coalesce(json_extract(r.value, '$.consistentPoint'), ''), coalesce(json_extract(r.value, '$.baseCopied'), 0),
               coalesce(json_extract(r.value, '$.replicaIdentitiesSet'), '[]')
          from migration m, json_each(m.details, '$.replication') r;
    update migration set details = json_remove(details, '$.replication');
    ",
];

/// How long a lease lasts without renewal; runners renew every [`LEASE_RENEW`].
pub const LEASE_TTL: Duration = Duration::from_secs(10);
pub const LEASE_RENEW: Duration = Duration::from_secs(2);

/// One migration as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Migration {
    pub id: i64,
    pub name: String,
    pub target_server: String,
    pub source_server: String,
    pub source_type: String,
    pub mode: String,
    pub option: String,
    pub status: Status,
    pub databases: Vec<String>,
    /// The properties with secrets removed.
    pub properties: serde_json::Value,
    pub validation: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    /// Connection facts (TLS state, server versions) and later progress.
    pub details: serde_json::Value,
    pub runner_pid: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The properties file `create` read (its path; the file may hold passwords, the store
    /// never does).
    pub properties_file: Option<PathBuf>,
}

/// What `create` records before any work starts.
pub struct NewMigration<'a> {
    pub name: &'a str,
    pub target_server: &'a str,
    pub source_server: &'a str,
    pub source_type: &'a str,
    pub mode: &'a str,
    pub option: &'a str,
    pub databases: &'a [String],
    pub properties: &'a serde_json::Value,
    pub properties_file: Option<&'a Path>,
}

/// Who runs a migration: a process on a host, told apart from a later process that got the
/// same pid by a random nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub id: String,
    pub pid: u32,
    pub host: String,
}

impl Holder {
    /// This process.
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
            h.finish()
        };
        Holder { id: format!("{pid}@{host}#{nonce:016x}"), pid, host }
    }
}

/// A migration's lease as stored.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub holder: String,
    pub pid: u32,
    pub host: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// Whether its runner may still be at work: the lease has not expired, and when the
    /// runner was on this host, its process exists (a kill -9 is seen at once; a reused pid
    /// only delays it to the expiry).
    pub fn alive(&self) -> bool {
        if self.expires_at <= Utc::now() {
            return false;
        }
        let this_host = Holder::this_process().host;
        self.host != this_host || Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// A request recorded for the migration's runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Cutover,
    Cancel,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Cutover => "cutover",
            RequestKind::Cancel => "cancel",
        }
    }
}

/// One database's part of the resume record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResumeDatabase {
    pub stage: String,
    /// Tables copied again by a resume.
    pub recopied: Vec<String>,
    /// Tables copied completely, in the order they finished, with their digests.
    pub tables: Vec<(String, serde_json::Value)>,
}

/// What an online migration made for one database, recorded before it exists on a server:
/// what a cancel or a failure removes, and where a restart goes on streaming from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationObjects {
    /// The logical replication slot on the source.
    pub slot: String,
    /// The publication in the source database.
    pub publication: String,
    /// The replication origin on the target.
    pub origin: String,
    /// Where the slot's snapshot is; empty until the slot exists.
    pub consistent_point: String,
    /// The base copy and post-data are done: a restart goes on streaming.
    pub base_copied: bool,
    /// Tables given a replica identity (SetReplicaIdentity), with their former setting.
    pub replica_identities: Vec<(String, String)>,
}

/// Something a cleanup could not remove, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leftover {
    /// `source`, `target` or `local`.
    pub server: String,
    /// `database`, `replication slot`, `publication`, `replication origin`, `replica identity`.
    pub kind: String,
    pub object: String,
    pub problem: String,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Set by a runner holding a migration's lease: its writes to that migration happen
    /// only while it still holds the lease (a runner that stalled past its lease and woke
    /// up cannot overwrite what the process that took over wrote).
    fence: Option<(i64, String)>,
}

/// A write refused because this process no longer holds the migration's lease.
#[derive(Debug, thiserror::Error)]
#[error("migration {0}: this runner lost its lease (another pgferry process took the migration over); its write was refused")]
pub struct LeaseLost(pub i64);

/// `--state-dir`, else `PGFERRY_STATE_DIR`, else the user's state directory
/// (`$XDG_STATE_HOME/pgferry`, `~/.local/state/pgferry`).
pub fn default_state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PGFERRY_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    use etcetera::BaseStrategy;
    let strategy = etcetera::choose_base_strategy().context("cannot find the home directory; pass --state-dir")?;
    Ok(strategy.state_dir().unwrap_or_else(|| strategy.data_dir()).join("pgferry"))
}

impl Store {
    /// Opens (creating it private to this user: directory 0700, files 0600) and upgrades
    /// the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        create_private_dir(dir)?;
        let path = dir.join("state.db");
        // SQLite gives the -wal and -shm files the database file's mode: made 0600 first.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&path).with_context(|| format!("cannot create the state store {}", path.display()))?;
        }
        restrict(&path)?;
        let conn = Connection::open(&path).with_context(|| format!("cannot open the state store {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        restrict(&path)?;
        let mut store = Store { conn, path, fence: None };
        store.upgrade()?;
        Ok(store)
    }

    /// Brings the schema to this release's version, in one transaction.
    fn upgrade(&mut self) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: usize = tx.query_row("pragma user_version", [], |r| r.get::<_, i64>(0))? as usize;
        // Stores of the first release have the tables but no version number.
        let version = if version == 0 && tx.query_row("select count(*) from sqlite_master where name = 'migration'", [], |r| r.get::<_, i64>(0))? > 0 { 1 } else { version };
        if version > UPGRADES.len() {
            bail!(
                "the state store {} was written by a newer pgferry (schema version {version}; this one knows up to {}): run that release, or give this one another --state-dir",
                self.path.display(),
                UPGRADES.len()
            );
        }
        for (n, upgrade) in UPGRADES.iter().enumerate().skip(version) {
            tx.execute_batch(upgrade).with_context(|| format!("upgrading the state store {} to schema version {}", self.path.display(), n + 1))?;
        }
        tx.pragma_update(None, "user_version", UPGRADES.len() as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// Another connection to the same store (for a thread of its own).
    pub fn reopen(&self) -> Result<Store> {
        let conn = Connection::open(&self.path).with_context(|| format!("cannot open the state store {}", self.path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(Store { conn, path: self.path.clone(), fence: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `name` is free on `target_server`; `Some(status)` of the one holding it.
    pub fn name_taken(&self, target_server: &str, name: &str) -> Result<Option<Status>> {
        let status: Option<String> = self
            .conn
            .query_row("select status from migration where target_server = ?1 and name = ?2", params![target_server, name], |r| r.get(0))
            .optional()?;
        status.map(|s| s.parse().map_err(anyhow::Error::msg)).transpose()
    }

    pub fn create(&mut self, new: &NewMigration) -> Result<Migration> {
        let now = Utc::now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "insert into migration (name, target_server, source_server, source_type, mode, option, status, databases, properties, runner_pid, created_at, properties_file)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                new.name,
                new.target_server,
                new.source_server,
                new.source_type,
                new.mode,
                new.option,
                Status::CREATED.to_string(),
                serde_json::to_string(new.databases)?,
                new.properties.to_string(),
                std::process::id(),
                now.to_rfc3339(),
                new.properties_file.map(|p| p.display().to_string()),
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => anyhow::anyhow!(
                "a migration named {:?} already exists for target server {}; pick another name (`pgferry migration check-name-availability --migration-name <name> --target {}` says whether one is free)",
                new.name,
                new.target_server,
                new.target_server
            ),
            e => e.into(),
        })?;
        let id = tx.last_insert_rowid();
        tx.execute("insert into transition values (?1, ?2, ?3)", params![id, now.to_rfc3339(), Status::CREATED.to_string()])?;
        tx.commit()?;
        crash_point(Status::CREATED);
        self.get_by_id(id)
    }

    /// Moves a migration to `to`, refusing what the lifecycle does not allow.
    pub fn transition(&mut self, id: i64, to: Status) -> Result<Migration> {
        self.transition_recording(id, to, None)
    }

    /// Like `transition`, recording `error` in the same transaction, so that no reader sees
    /// the error on a migration that still looks active.
    pub fn transition_with_error(&mut self, id: i64, to: Status, error: &serde_json::Value) -> Result<Migration> {
        self.transition_recording(id, to, Some(error))
    }

    fn transition_recording(&mut self, id: i64, to: Status, error: Option<&serde_json::Value>) -> Result<Migration> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        let (name, from): (String, String) =
            tx.query_row("select name, status from migration where id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let from: Status = from.parse().map_err(anyhow::Error::msg)?;
        if !from.can_become(to) {
            return Err(IllegalTransition { name, from, to }.into());
        }
        let now = Utc::now().to_rfc3339();
        let ended = (!to.is_active()).then(|| now.clone());
        tx.execute("update migration set status = ?2, ended_at = ?3 where id = ?1", params![id, to.to_string(), ended])?;
        if from == Status::FAILED && to != Status::CANCELING {
            // Resumed: the old error is history (kept in `resumedAfter`), not the status.
            tx.execute("update migration set error = null where id = ?1", params![id])?;
        }
        if let Some(error) = error {
            tx.execute("update migration set error = ?2 where id = ?1", params![id, error.to_string()])?;
        }
        tx.execute("insert into transition values (?1, ?2, ?3)", params![id, now, to.to_string()])?;
        tx.commit()?;
        crash_point(to);
        self.get_by_id(id)
    }

    /// From now on, this connection's writes to migration `id` require `holder`'s lease.
    pub fn fence(&mut self, id: i64, holder: &Holder) {
        self.fence = Some((id, holder.id.clone()));
    }

    /// Fails with [`LeaseLost`] when this connection is fenced for `id` and no longer holds
    /// its lease: checked before work on the servers that only the lease holder may do.
    pub fn check_lease(&self, id: i64) -> Result<()> {
        check_fence(&self.fence, &self.conn, id)
    }

    /// Takes the migration's lease for `holder` unless a live runner holds it, whose lease
    /// is returned instead. One transaction: of two processes trying at once, one wins.
    pub fn acquire_lease(&mut self, id: i64, holder: &Holder) -> Result<Option<Lease>> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = lease_of(&tx, id)?;
        if let Some(current) = current.filter(|l| l.holder != holder.id && l.alive()) {
            return Ok(Some(current));
        }
        tx.execute(
            "insert into lease (migration_id, holder, pid, host, acquired_at, expires_at_ms) values (?1, ?2, ?3, ?4, ?5, ?6)
             on conflict (migration_id) do update set holder = excluded.holder, pid = excluded.pid, host = excluded.host,
                 acquired_at = excluded.acquired_at, expires_at_ms = excluded.expires_at_ms",
            params![id, holder.id, holder.pid, holder.host, Utc::now().to_rfc3339(), now_ms() + LEASE_TTL.as_millis() as i64],
        )?;
        tx.execute("update migration set runner_pid = ?2 where id = ?1", params![id, holder.pid])?;
        tx.commit()?;
        Ok(None)
    }

    /// Extends `holder`'s lease; false when it no longer holds it (it expired and another
    /// process took it: this one must stop).
    pub fn renew_lease(&mut self, id: i64, holder: &Holder) -> Result<bool> {
        let n = self.conn.execute(
            "update lease set expires_at_ms = ?3 where migration_id = ?1 and holder = ?2",
            params![id, holder.id, now_ms() + LEASE_TTL.as_millis() as i64],
        )?;
        Ok(n == 1)
    }

    pub fn release_lease(&mut self, id: i64, holder: &Holder) -> Result<()> {
        self.conn.execute("delete from lease where migration_id = ?1 and holder = ?2", params![id, holder.id])?;
        Ok(())
    }

    pub fn lease(&self, id: i64) -> Result<Option<Lease>> {
        lease_of(&self.conn, id)
    }

    /// Records a request for the runner; false when one of that kind is recorded already.
    pub fn request(&mut self, id: i64, kind: RequestKind, options: &serde_json::Value) -> Result<bool> {
        let n = self.conn.execute(
            "insert into request (migration_id, kind, options, requested_at) values (?1, ?2, ?3, ?4) on conflict do nothing",
            params![id, kind.as_str(), options.to_string(), Utc::now().to_rfc3339()],
        )?;
        Ok(n == 1)
    }

    /// The request of that kind, with when it was made.
    pub fn requested(&self, id: i64, kind: RequestKind) -> Result<Option<(DateTime<Utc>, serde_json::Value)>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("select requested_at, options from request where migration_id = ?1 and kind = ?2", params![id, kind.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(at, options)| Ok((DateTime::parse_from_rfc3339(&at)?.with_timezone(&Utc), serde_json::from_str(&options)?))).transpose()
    }

    /// Starts a cancel: the Canceling state and the request, in one transaction.
    pub fn request_cancel(&mut self, id: i64) -> Result<Migration> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "insert into request (migration_id, kind, options, requested_at) values (?1, 'cancel', '{}', ?2) on conflict do nothing",
            params![id, Utc::now().to_rfc3339()],
        )?;
        let (name, from): (String, String) = tx.query_row("select name, status from migration where id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let from: Status = from.parse().map_err(anyhow::Error::msg)?;
        if from != Status::CANCELING {
            if !from.can_become(Status::CANCELING) {
                return Err(IllegalTransition { name, from, to: Status::CANCELING }.into());
            }
            let now = Utc::now().to_rfc3339();
            tx.execute("update migration set status = ?2, ended_at = null where id = ?1", params![id, Status::CANCELING.to_string()])?;
            tx.execute("insert into transition values (?1, ?2, ?3)", params![id, now, Status::CANCELING.to_string()])?;
        }
        tx.commit()?;
        self.get_by_id(id)
    }

    /// The resume record: per database, its step and the tables it finished.
    pub fn resume_record(&self, id: i64) -> Result<std::collections::BTreeMap<String, ResumeDatabase>> {
        let mut record = std::collections::BTreeMap::new();
        let mut steps = self.conn.prepare("select database, stage, recopied from database_step where migration_id = ?1")?;
        for row in steps.query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))? {
            let (database, stage, recopied) = row?;
            let recopied = serde_json::from_str(&recopied).with_context(|| format!("the resume record of database {database:?} in {}", self.path.display()))?;
            record.insert(database, ResumeDatabase { stage, recopied, tables: Vec::new() });
        }
        let mut tables = self.conn.prepare("select database, table_name, digest from table_copied where migration_id = ?1 order by rowid")?;
        for row in tables.query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))? {
            let (database, table, digest) = row?;
            let digest = serde_json::from_str(&digest).with_context(|| format!("the digest of table {table} of database {database:?} in {}", self.path.display()))?;
            record.entry(database).or_default().tables.push((table, digest));
        }
        Ok(record)
    }

    /// Brings the stored resume record of the databases in `record` to `record`, in one
    /// transaction, writing only the tables that changed (a 10,000-table database costs
    /// the tables finished since the last save, not the whole list).
    pub fn save_resume_record(&mut self, id: i64, record: &std::collections::BTreeMap<String, ResumeDatabase>) -> Result<()> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        for (database, db) in record {
            tx.execute(
                "insert into database_step (migration_id, database, stage, recopied) values (?1, ?2, ?3, ?4)
                 on conflict (migration_id, database) do update set stage = excluded.stage, recopied = excluded.recopied",
                params![id, database, db.stage, serde_json::to_string(&db.recopied)?],
            )?;
            let stored: std::collections::HashMap<String, String> = {
                let mut stmt = tx.prepare("select table_name, digest from table_copied where migration_id = ?1 and database = ?2")?;
                let rows = stmt.query_map(params![id, database], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let wanted: std::collections::HashSet<&str> = db.tables.iter().map(|(t, _)| t.as_str()).collect();
            for gone in stored.keys().filter(|t| !wanted.contains(t.as_str())) {
                tx.execute("delete from table_copied where migration_id = ?1 and database = ?2 and table_name = ?3", params![id, database, gone])?;
            }
            for (table, digest) in &db.tables {
                let digest = digest.to_string();
                if stored.get(table) != Some(&digest) {
                    // Copied again: it takes its place at the end, as it finished last.
                    tx.execute("delete from table_copied where migration_id = ?1 and database = ?2 and table_name = ?3", params![id, database, table])?;
                    tx.execute("insert into table_copied (migration_id, database, table_name, digest) values (?1, ?2, ?3, ?4)", params![id, database, table, digest])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The replication objects of an online migration, per database.
    pub fn replication_objects(&self, id: i64) -> Result<std::collections::BTreeMap<String, ReplicationObjects>> {
        let mut stmt = self.conn.prepare(
            "select database, slot, publication, origin, consistent_point, base_copied, replica_identities from replication_object where migration_id = ?1",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, bool>(5)?, r.get::<_, String>(6)?))
        })?;
        let mut objects = std::collections::BTreeMap::new();
        for row in rows {
            let (database, slot, publication, origin, consistent_point, base_copied, identities) = row?;
            let replica_identities = serde_json::from_str(&identities).with_context(|| format!("the replica identities recorded for database {database:?} in {}", self.path.display()))?;
            objects.insert(database, ReplicationObjects { slot, publication, origin, consistent_point, base_copied, replica_identities });
        }
        Ok(objects)
    }

    /// Records the replication objects of an online migration (all its databases), in one
    /// transaction under the runner's lease.
    pub fn save_replication_objects(&mut self, id: i64, objects: &std::collections::BTreeMap<String, ReplicationObjects>) -> Result<()> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        tx.execute("delete from replication_object where migration_id = ?1", params![id])?;
        for (database, o) in objects {
            tx.execute(
                "insert into replication_object (migration_id, database, slot, publication, origin, consistent_point, base_copied, replica_identities)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![id, database, o.slot, o.publication, o.origin, o.consistent_point, o.base_copied, serde_json::to_string(&o.replica_identities)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the resume record of databases that start over (dropped on the target).
    pub fn forget_databases(&mut self, id: i64, databases: &[String]) -> Result<()> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        for database in databases {
            tx.execute("delete from table_copied where migration_id = ?1 and database = ?2", params![id, database])?;
            tx.execute("delete from database_step where migration_id = ?1 and database = ?2", params![id, database])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the list of what cleanup could not remove.
    pub fn set_leftovers(&mut self, id: i64, leftovers: &[Leftover]) -> Result<()> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        tx.execute("delete from leftover where migration_id = ?1", params![id])?;
        for l in leftovers {
            tx.execute(
                "insert into leftover values (?1, ?2, ?3, ?4, ?5) on conflict do update set problem = excluded.problem",
                params![id, l.server, l.kind, l.object, l.problem],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn leftovers(&self, id: i64) -> Result<Vec<Leftover>> {
        let mut stmt = self.conn.prepare("select server, kind, object, problem from leftover where migration_id = ?1 order by rowid")?;
        let rows = stmt.query_map(params![id], |r| Ok(Leftover { server: r.get(0)?, kind: r.get(1)?, object: r.get(2)?, problem: r.get(3)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_validation(&mut self, id: i64, validation: &serde_json::Value) -> Result<()> {
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        tx.execute("update migration set validation = ?2 where id = ?1", params![id, validation.to_string()])?;
        tx.commit()?;
        Ok(())
    }

    /// Sets `patch`'s top-level keys in the migration's details, in one statement: a
    /// concurrent writer's other keys are never overwritten with an old copy.
    pub fn merge_details(&mut self, id: i64, patch: serde_json::Value) -> Result<()> {
        let serde_json::Value::Object(patch) = patch else { bail!("details patch must be an object") };
        if patch.is_empty() {
            return Ok(());
        }
        let mut sql = String::from("update migration set details = json_set(details");
        let mut values: Vec<String> = Vec::new();
        for (key, value) in &patch {
            anyhow::ensure!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "details key {key:?}");
            values.push(value.to_string());
            sql.push_str(&format!(", '$.{key}', json(?{})", values.len() + 1));
        }
        sql.push_str(") where id = ?1");
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id];
        args.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
        let fence = self.fence.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_fence(&fence, &tx, id)?;
        tx.execute(&sql, args.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn get_by_id(&self, id: i64) -> Result<Migration> {
        self.conn.query_row(&format!("{SELECT} where id = ?1"), params![id], row_to_migration)?
    }

    /// Finds a migration by name; with several targets holding the name, `target` decides.
    pub fn find(&self, name: &str, target: Option<&str>) -> Result<Option<Migration>> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} where name = ?1 and (?2 is null or target_server = ?2) order by id"))?;
        let mut found: Vec<Migration> = stmt.query_map(params![name, target], row_to_migration)?.collect::<rusqlite::Result<Result<Vec<_>>>>()??;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => anyhow::bail!(
                "{} migrations are named {name:?} (targets {}); say which with --target",
                found.len(),
                found.iter().map(|m| m.target_server.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Newest first.
    pub fn list(&self, active_only: bool) -> Result<Vec<Migration>> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} order by created_at desc, id desc"))?;
        let all: Vec<Migration> = stmt.query_map([], row_to_migration)?.collect::<rusqlite::Result<Result<Vec<_>>>>()??;
        Ok(all.into_iter().filter(|m| !active_only || m.status.is_active()).collect())
    }

    /// The recorded transitions of a migration, oldest first.
    pub fn transitions(&self, id: i64) -> Result<Vec<(DateTime<Utc>, Status)>> {
        let mut stmt = self.conn.prepare("select at, status from transition where migration_id = ?1 order by rowid")?;
        let rows = stmt.query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (at, status) = row?;
            Ok((DateTime::parse_from_rfc3339(&at)?.with_timezone(&Utc), status.parse().map_err(anyhow::Error::msg)?))
        })
        .collect()
    }
}

const SELECT: &str = "select id, name, target_server, source_server, source_type, mode, option, status, databases, properties,
    validation, error, details, runner_pid, created_at, ended_at, properties_file from migration";

/// Fails when `fence` is a lease on migration `id` that is no longer held.
fn check_fence(fence: &Option<(i64, String)>, conn: &Connection, id: i64) -> Result<()> {
    if let Some((fenced, holder)) = fence
        && *fenced == id
    {
        let holds: bool = conn.query_row("select exists (select 1 from lease where migration_id = ?1 and holder = ?2)", params![id, holder], |r| r.get(0))?;
        if !holds {
            return Err(LeaseLost(id).into());
        }
    }
    Ok(())
}

/// Fault injection for the recovery tests: `PGFERRY_CRASH_AFTER=<substate>` aborts the
/// process the moment entering that substate is committed, as a kill -9 at that step
/// boundary would (no cleanup, the lease not released).
fn crash_point(entered: Status) {
    if std::env::var("PGFERRY_CRASH_AFTER").is_ok_and(|s| s == entered.substate.to_string()) {
        eprintln!("PGFERRY_CRASH_AFTER={}: aborting", entered.substate);
        std::process::abort();
    }
}

fn lease_of(conn: &Connection, id: i64) -> Result<Option<Lease>> {
    let row: Option<(String, u32, String, String, i64)> = conn
        .query_row("select holder, pid, host, acquired_at, expires_at_ms from lease where migration_id = ?1", params![id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    row.map(|(holder, pid, host, acquired_at, expires)| {
        Ok(Lease {
            holder,
            pid,
            host,
            acquired_at: DateTime::parse_from_rfc3339(&acquired_at)?.with_timezone(&Utc),
            expires_at: DateTime::from_timestamp_millis(expires).context("lease expiry out of range")?,
        })
    })
    .transpose()
}

/// Creates `dir` (and its parents) with mode 0700, and makes an existing one 0700 when it
/// is ours: the store and logs name servers and databases.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read the state directory {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make the state directory {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

/// Makes a file the store wrote private (0600), whatever the umask was when it was made.
fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for file in [path.to_path_buf(), PathBuf::from(format!("{}-wal", path.display())), PathBuf::from(format!("{}-shm", path.display()))] {
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("cannot make {} private (mode 0600)", file.display()))?;
        }
    }
    Ok(())
}

/// Creates (or truncates) a file only this user can read: logs name servers and databases.
pub fn create_private_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    restrict(path)?;
    Ok(file)
}

fn row_to_migration(r: &rusqlite::Row) -> rusqlite::Result<Result<Migration>> {
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s);
    let time = |s: String| DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc));
    let parse = || -> Result<Migration> {
        Ok(Migration {
            id: r.get(0)?,
            name: r.get(1)?,
            target_server: r.get(2)?,
            source_server: r.get(3)?,
            source_type: r.get(4)?,
            mode: r.get(5)?,
            option: r.get(6)?,
            status: r.get::<_, String>(7)?.parse().map_err(anyhow::Error::msg)?,
            databases: serde_json::from_str(&r.get::<_, String>(8)?)?,
            properties: json(r.get(9)?)?,
            validation: r.get::<_, Option<String>>(10)?.map(json).transpose()?,
            error: r.get::<_, Option<String>>(11)?.map(json).transpose()?,
            details: json(r.get(12)?)?,
            runner_pid: r.get(13)?,
            created_at: time(r.get(14)?)?,
            ended_at: r.get::<_, Option<String>>(15)?.map(time).transpose()?,
            properties_file: r.get::<_, Option<String>>(16)?.map(PathBuf::from),
        })
    };
    Ok(parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pgferry-store-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    fn new<'a>(name: &'a str, dbs: &'a [String], props: &'a serde_json::Value) -> NewMigration<'a> {
        NewMigration {
            name,
            target_server: "t:5432",
            source_server: "s:5432",
            source_type: "OnPremises",
            mode: "Offline",
            option: "Validate",
            databases: dbs,
            properties: props,
            properties_file: None,
        }
    }

    #[test]
    fn names_are_unique_per_target_and_transitions_are_checked() {
        let (mut store, dir) = scratch();
        let props = serde_json::json!({});
        let dbs = vec!["app".to_string()];
        let m = store.create(&new("m1", &dbs, &props)).unwrap();
        assert_eq!(store.name_taken("t:5432", "m1").unwrap(), Some(Status::CREATED));
        assert_eq!(store.name_taken("other:5432", "m1").unwrap(), None);
        let err = store.create(&new("m1", &dbs, &props)).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");

        let illegal = store.transition(m.id, Status::SUCCEEDED).unwrap_err();
        assert!(illegal.downcast_ref::<IllegalTransition>().is_some());
        store.transition(m.id, Status::VALIDATING).unwrap();
        let done = store.transition(m.id, Status::SUCCEEDED).unwrap();
        assert!(done.ended_at.is_some());
        let history: Vec<Status> = store.transitions(m.id).unwrap().into_iter().map(|(_, s)| s).collect();
        assert_eq!(history, [Status::CREATED, Status::VALIDATING, Status::SUCCEEDED]);
        assert!(store.list(true).unwrap().is_empty());
        assert_eq!(store.list(false).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_first_release_store_is_upgraded_in_place_and_a_newer_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("pgferry-store-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            // The first release's file: its tables, one migration, no version number.
            let conn = Connection::open(dir.join("state.db")).unwrap();
            conn.execute_batch(UPGRADES[0]).unwrap();
            // Its resume record was a document in the details.
            let details = serde_json::json!({ "copyState": { "app": {
                "stage": "SchemaRestored",
                "tablesDone": ["public.a", "public.b.c"],
                "digests": { "public.a": { "format": "binary", "rows": 2, "sum": "00ff" }, "public.b.c": { "format": "text", "rows": 0, "sum": "0" } }
            } }, "sourceTls": "None",
               "replication": { "app": { "names": { "slot": "pgferry_1_0", "publication": "pgferry_1_0", "origin": "pgferry_1_0" },
                                         "consistentPoint": "0/16B3748", "baseCopied": true, "replicaIdentitiesSet": [["public.t", "d"]] } } });
            conn.execute(
                "insert into migration (name, target_server, source_server, source_type, mode, option, status, databases, properties, created_at, details)
                 values ('old', 't:5432', 's:5432', 'OnPremises', 'Offline', 'Migrate', 'InProgress/MigratingData', '[\"app\"]', '{}', '2026-12-01T00:00:00Z', ?1)",
                [details.to_string()],
            )
            .unwrap();
        }
        let mut store = Store::open(&dir).unwrap();
        let old = store.find("old", None).unwrap().expect("the old migration is still there");
        assert_eq!(old.status, Status::MIGRATING);
        assert!(old.properties_file.is_none());
        assert!(store.request(old.id, RequestKind::Cancel, &serde_json::json!({})).unwrap(), "the new tables exist");
        // The resume record moved into its tables, in order, and out of the details.
        let record = store.resume_record(old.id).unwrap();
        let app = &record["app"];
        assert_eq!(app.stage, "SchemaRestored");
        let tables: Vec<&str> = app.tables.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tables, ["public.a", "public.b.c"]);
        assert_eq!(app.tables[0].1["sum"], "00ff");
        assert!(old.details.get("copyState").is_none());
        let replication = store.replication_objects(old.id).unwrap();
        assert_eq!(
            replication["app"],
            ReplicationObjects {
                slot: "pgferry_1_0".into(),
                publication: "pgferry_1_0".into(),
                origin: "pgferry_1_0".into(),
                consistent_point: "0/16B3748".into(),
                base_copied: true,
                replica_identities: vec![("public.t".into(), "d".into())],
            }
        );
        assert!(old.details.get("replication").is_none());
        assert_eq!(old.details["sourceTls"], "None");
        let version: i64 = store.conn.query_row("pragma user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version as usize, UPGRADES.len());
        drop(store);
        Store::open(&dir).expect("opening an upgraded store again changes nothing");

        Connection::open(dir.join("state.db")).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = Store::open(&dir).err().expect("a newer store is refused").to_string();
        assert!(err.contains("newer pgferry") && err.contains("99"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_store_is_private_to_its_user() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = scratch();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        let wal = PathBuf::from(format!("{}-wal", store.path().display()));
        assert!(wal.exists());
        assert_eq!(mode(&wal), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_lease_is_exclusive_and_an_expired_or_dead_one_is_taken_over() {
        let (mut store, dir) = scratch();
        let props = serde_json::json!({});
        let dbs = vec!["app".to_string()];
        let m = store.create(&new("leased", &dbs, &props)).unwrap();
        let me = Holder::this_process();
        assert!(store.acquire_lease(m.id, &me).unwrap().is_none());
        assert!(store.acquire_lease(m.id, &me).unwrap().is_none(), "the holder may take it again");
        // Another live process on this host (pid 1 always exists) is refused.
        let other = Holder { id: "1@x#1".into(), pid: 1, host: me.host.clone() };
        let held = store.acquire_lease(m.id, &other).unwrap().expect("refused while held");
        assert_eq!(held.holder, me.id);
        assert!(store.renew_lease(m.id, &me).unwrap());
        assert!(!store.renew_lease(m.id, &other).unwrap(), "only the holder renews");
        // A holder whose process is gone (a pid that cannot exist) is dead at once.
        let dead = Holder { id: "dead".into(), pid: u32::MAX, host: me.host.clone() };
        store.conn.execute("update lease set holder = 'dead', pid = ?2 where migration_id = ?1", params![m.id, u32::MAX]).unwrap();
        assert!(!store.lease(m.id).unwrap().unwrap().alive());
        assert!(store.acquire_lease(m.id, &other).unwrap().is_none(), "a dead runner's lease is taken over");
        assert!(!store.renew_lease(m.id, &dead).unwrap(), "the dead holder learns it lost the lease");
        // On another host only the expiry counts.
        store.conn.execute("update lease set host = 'elsewhere', pid = 42, expires_at_ms = ?2 where migration_id = ?1", params![m.id, now_ms() - 1]).unwrap();
        assert!(!store.lease(m.id).unwrap().unwrap().alive());
        assert!(store.acquire_lease(m.id, &me).unwrap().is_none());
        store.release_lease(m.id, &me).unwrap();
        assert!(store.lease(m.id).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_resume_record_is_saved_as_rows_and_read_back_in_order() {
        let (mut store, dir) = scratch();
        let props = serde_json::json!({});
        let dbs = vec!["app".to_string(), "other".to_string()];
        let m = store.create(&new("resumable", &dbs, &props)).unwrap();
        let digest = |n: u64| serde_json::json!({ "format": "binary", "rows": n, "sum": "1" });
        let mut app = ResumeDatabase { stage: "SchemaRestored".into(), recopied: vec![], tables: vec![("public.z".into(), digest(1)), ("public.a".into(), digest(2))] };
        let mut record = std::collections::BTreeMap::from([("app".to_string(), app.clone())]);
        store.save_resume_record(m.id, &record).unwrap();
        assert_eq!(store.resume_record(m.id).unwrap(), record);
        // A table copied again leaves the list and comes back with a new digest; one more finishes.
        app.tables.remove(0);
        app.recopied.push("public.z".into());
        app.tables.push(("public.m".into(), digest(3)));
        app.tables.push(("public.z".into(), digest(9)));
        app.stage = "DataCopied".into();
        record.insert("app".into(), app.clone());
        record.insert("other".into(), ResumeDatabase { stage: "Created".into(), ..Default::default() });
        store.save_resume_record(m.id, &record).unwrap();
        assert_eq!(store.resume_record(m.id).unwrap(), record);
        store.forget_databases(m.id, &["app".to_string()]).unwrap();
        let left = store.resume_record(m.id).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["other"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_runner_that_lost_its_lease_cannot_write() {
        let (mut store, dir) = scratch();
        let props = serde_json::json!({});
        let dbs = vec!["app".to_string()];
        let m = store.create(&new("fenced", &dbs, &props)).unwrap();
        let stale = Holder::this_process();
        assert!(store.acquire_lease(m.id, &stale).unwrap().is_none());
        store.fence(m.id, &stale);
        store.merge_details(m.id, serde_json::json!({ "copyState": 1 })).unwrap();
        store.transition(m.id, Status::MIGRATING).unwrap();
        // It stalls past its lease; another process takes the migration over.
        let mut other = store.reopen().unwrap();
        other.conn.execute("update lease set expires_at_ms = 0 where migration_id = ?1", params![m.id]).unwrap();
        let next = Holder { id: "next".into(), pid: 1, host: "elsewhere".into() };
        assert!(other.acquire_lease(m.id, &next).unwrap().is_none());
        other.merge_details(m.id, serde_json::json!({ "copyState": 2 })).unwrap();
        // The stale runner wakes up: every write is refused, nothing it had is written.
        for refused in [
            store.merge_details(m.id, serde_json::json!({ "copyState": 1 })),
            store.transition(m.id, Status::COMPLETING).map(drop),
            store.set_validation(m.id, &serde_json::json!({})),
            store.set_leftovers(m.id, &[]),
            store.check_lease(m.id),
        ] {
            assert!(refused.unwrap_err().is::<LeaseLost>());
        }
        let now = store.get_by_id(m.id).unwrap();
        assert_eq!(now.details["copyState"], 2);
        assert_eq!(now.status, Status::MIGRATING);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A runner saving progress many times a second and CLIs recording requests and other
    /// details at the same time, each from its own connection: no write is lost.
    #[test]
    fn concurrent_writers_lose_no_request_and_no_detail() {
        let (mut store, dir) = scratch();
        let props = serde_json::json!({});
        let dbs = vec!["app".to_string()];
        let ids: Vec<i64> = (0..20).map(|i| store.create(&new(&format!("m{i}"), &dbs, &props)).unwrap().id).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runner = {
            let (mut store, stop, ids) = (store.reopen().unwrap(), stop.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    for id in &ids {
                        store.merge_details(*id, serde_json::json!({ "progress": { "n": n }, "copyState": { "app": n } })).unwrap();
                    }
                    n += 1;
                }
                n
            })
        };
        let clis: Vec<_> = (0..4)
            .map(|t| {
                let (mut store, ids) = (store.reopen().unwrap(), ids.clone());
                std::thread::spawn(move || {
                    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 4 == t) {
                        let kind = if i % 2 == 0 { RequestKind::Cutover } else { RequestKind::Cancel };
                        assert!(store.request(*id, kind, &serde_json::json!({ "by": t })).unwrap());
                        assert!(!store.request(*id, kind, &serde_json::json!({})).unwrap(), "a second request of a kind is refused");
                        store.merge_details(*id, serde_json::json!({ "note": format!("cli {t}") })).unwrap();
                    }
                })
            })
            .collect();
        for cli in clis {
            cli.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rounds = runner.join().unwrap();
        assert!(rounds > 0);
        for (i, id) in ids.iter().enumerate() {
            let kind = if i % 2 == 0 { RequestKind::Cutover } else { RequestKind::Cancel };
            let (_, options) = store.requested(*id, kind).unwrap().unwrap_or_else(|| panic!("request of m{i} lost"));
            assert_eq!(options["by"], i % 4);
            let m = store.get_by_id(*id).unwrap();
            assert_eq!(m.details["note"], format!("cli {}", i % 4), "m{i}: the CLI's detail was overwritten by the runner's save");
            assert!(m.details["progress"]["n"].is_u64());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
