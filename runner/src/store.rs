//! The embedded state store: one SQLite file (WAL mode, so `show` from another shell reads
//! while a runner writes). Every transition is checked against the lifecycle and committed
//! before the next step starts. Nothing secret is ever written here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::lifecycle::{IllegalTransition, Status};

const SCHEMA: &str = "
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
";

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
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

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
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join("state.db");
        let conn = Connection::open(&path).with_context(|| format!("cannot open the state store {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.execute_batch(SCHEMA).with_context(|| format!("cannot initialise the state store {}", path.display()))?;
        Ok(Store { conn, path })
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
            "insert into migration (name, target_server, source_server, source_type, mode, option, status, databases, properties, runner_pid, created_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => anyhow::anyhow!(
                "a migration named {:?} already exists for target server {}; pick another name (check with `pgferry migration check-name-availability`)",
                new.name,
                new.target_server
            ),
            e => e.into(),
        })?;
        let id = tx.last_insert_rowid();
        tx.execute("insert into transition values (?1, ?2, ?3)", params![id, now.to_rfc3339(), Status::CREATED.to_string()])?;
        tx.commit()?;
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
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (name, from): (String, String) =
            tx.query_row("select name, status from migration where id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let from: Status = from.parse().map_err(anyhow::Error::msg)?;
        if !from.can_become(to) {
            return Err(IllegalTransition { name, from, to }.into());
        }
        let now = Utc::now().to_rfc3339();
        let ended = (!to.is_active()).then(|| now.clone());
        tx.execute("update migration set status = ?2, ended_at = ?3 where id = ?1", params![id, to.to_string(), ended])?;
        if let Some(error) = error {
            tx.execute("update migration set error = ?2 where id = ?1", params![id, error.to_string()])?;
        }
        tx.execute("insert into transition values (?1, ?2, ?3)", params![id, now, to.to_string()])?;
        tx.commit()?;
        self.get_by_id(id)
    }

    /// Records that this process now runs the migration (a resumed one).
    pub fn claim(&mut self, id: i64, pid: u32) -> Result<()> {
        self.conn.execute("update migration set runner_pid = ?2 where id = ?1", params![id, pid])?;
        Ok(())
    }

    pub fn set_validation(&mut self, id: i64, validation: &serde_json::Value) -> Result<()> {
        self.conn.execute("update migration set validation = ?2 where id = ?1", params![id, validation.to_string()])?;
        Ok(())
    }

    /// Merges `patch`'s top-level keys into the migration's details.
    pub fn merge_details(&mut self, id: i64, patch: serde_json::Value) -> Result<()> {
        let current: String = self.conn.query_row("select details from migration where id = ?1", params![id], |r| r.get(0))?;
        let mut details: serde_json::Value = serde_json::from_str(&current)?;
        if let (Some(d), serde_json::Value::Object(p)) = (details.as_object_mut(), patch) {
            d.extend(p);
        }
        self.conn.execute("update migration set details = ?2 where id = ?1", params![id, details.to_string()])?;
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
    validation, error, details, runner_pid, created_at, ended_at from migration";

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
}
