//! CompletingMigration: post-data (indexes, constraints, triggers, rules, policies, ACLs,
//! comments, materialized view refreshes) with pg_restore in parallel, sequences set to the
//! source's values at the snapshot, then verification: per table, the digest (row count and
//! order-independent checksum, see `copy_digest`) of the target's rows, read with COPY in
//! the copy's format and column order, against the digest of what the copy read from the
//! source at the snapshot (after a resume: the last run's, at which the tables of earlier
//! runs were checksummed again or copied again).

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_postgres::Client;

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::copy_digest::{CopyDigester, Digest};
use crate::connect::{pg_failure, Role};
use crate::sql_text::{quote_ident, quote_literal, stable_text};
use super::migrating_data::{restore_post_data, CopiedDatabase, Progress, Settings, TableToVerify};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableCheck {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: i64,
    pub source_checksum: String,
    pub target_checksum: String,
    pub matches: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseVerification {
    pub database: String,
    /// Objects per kind on the source (the target's matched, else verification failed).
    pub objects: std::collections::BTreeMap<String, i64>,
    pub tables_verified: usize,
    pub sequences_set: usize,
    pub large_objects: u64,
    /// Tables a resume copied again: copied by an earlier run at an earlier snapshot, they
    /// differed from the source at the final one (changed on either side meanwhile).
    pub tables_recopied: usize,
    pub recopied_tables: Vec<String>,
    pub mismatches: Vec<TableCheck>,
}

/// User objects per kind, the same query on both sides.
const OBJECT_COUNTS: &str = "
    with user_ns as (select oid from pg_namespace where nspname not in ('pg_catalog', 'information_schema')
                     and nspname not like 'pg\\_toast%' and nspname not like 'pg\\_temp%')
    select 'relation ' || c.relkind::text, count(*) from pg_class c where c.relnamespace in (select oid from user_ns) and c.relkind <> 't' group by 1
    union all select 'function', count(*) from pg_proc where pronamespace in (select oid from user_ns)
    union all select 'type', count(*) from pg_type where typnamespace in (select oid from user_ns) and typtype <> 'b' and typrelid = 0
    union all select 'constraint ' || contype::text, count(*) from pg_constraint where connamespace in (select oid from user_ns) group by 1
    union all select 'trigger', count(*) from pg_trigger where not tgisinternal
    union all select 'policy', count(*) from pg_policy
    union all select 'rule', count(*) from pg_rewrite r join pg_class c on c.oid = r.ev_class where c.relnamespace in (select oid from user_ns) and r.rulename <> '_RETURN'
    union all select 'schema', count(*) from user_ns
    union all select 'extension', count(*) from pg_extension";

async fn object_counts(client: &Client) -> Result<std::collections::BTreeMap<String, i64>> {
    let rows = client.query(OBJECT_COUNTS, &[]).await.context("counting objects per kind")?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).filter(|(_, n)| *n > 0).collect())
}

async fn set_sequences(coordinator: &Client, target: &Client) -> Result<usize> {
    let rows = coordinator
        .query(
            "select quote_ident(n.nspname) || '.' || quote_ident(c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'S' and n.nspname not in ('pg_catalog', 'information_schema')
                and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')",
            &[],
        )
        .await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    // In batches, two statements each: one round trip per sequence would take seconds for
    // ten thousand of them, over a network more.
    for batch in names.chunks(500) {
        let read = batch.iter().map(|name| format!("select {}, last_value, is_called from {name}", quote_literal(name))).collect::<Vec<_>>().join(" union all ");
        let values = coordinator.query(&read, &[]).await.with_context(|| format!("reading the sequences {} … of the source", batch[0]))?;
        let (mut names, mut last, mut called) = (Vec::<String>::new(), Vec::<i64>::new(), Vec::<bool>::new());
        for value in &values {
            names.push(value.get(0));
            last.push(value.get(1));
            called.push(value.get(2));
        }
        target
            .execute("select setval(s.name::regclass, s.last, s.called) from unnest($1::text[], $2::int8[], $3::bool[]) as s(name, last, called)", &[&names, &last, &called])
            .await
            .map_err(|e| anyhow::anyhow!(crate::connect::pg_error(&e)))
            .with_context(|| format!("setting the sequences {} … on the target", batch[0]))?;
    }
    Ok(rows.len())
}

/// The digest of a table's rows as `client` has them: `COPY (SELECT <columns>) TO STDOUT`
/// in the copy's format, its columns in the copy's order (an inheritance child's columns
/// may be in another order on the target), parsed as it streams.
pub async fn digest_table(client: &Client, role: Role, table: &TableToVerify) -> Result<Digest> {
    digest_rows(client, role, table, None).await
}

/// The digest of a table's rows in blocks `[start, end)` (`end` open: to the last), or of
/// all of them.
pub async fn digest_rows(client: &Client, role: Role, table: &TableToVerify, blocks: Option<(i64, Option<i64>)>) -> Result<Digest> {
    let sql = format!("COPY ({}) TO STDOUT (FORMAT {})", rows_query(&table.schema, &table.name, &table.columns, blocks), table.format.sql());
    let checksumming = || format!("checksumming {}.{}", table.schema, table.name);
    let out = client.copy_out(&sql).await.map_err(|e| pg_failure(role, &e, checksumming()))?;
    futures_util::pin_mut!(out);
    let mut digest = CopyDigester::new(table.format);
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(|e| pg_failure(role, &e, checksumming()))?;
        digest.feed(&chunk).with_context(checksumming)?;
    }
    digest.finish().with_context(checksumming)
}

/// `SELECT columns FROM ONLY table`, in blocks `[start, end)` when given (a TID range scan
/// from PostgreSQL 14).
pub fn rows_query(schema: &str, name: &str, columns: &[String], blocks: Option<(i64, Option<i64>)>) -> String {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let range = match blocks {
        None => String::new(),
        Some((start, end)) => {
            let upper = end.map(|e| format!(" AND ctid < '({e},0)'::tid")).unwrap_or_default();
            format!(" WHERE ctid >= '({start},0)'::tid{upper}")
        }
    };
    format!("SELECT {} FROM ONLY {table}{range}", columns.join(", "))
}

/// One table's digests on both sides.
#[derive(Clone)]
pub struct Compared {
    /// `schema.name`.
    pub table: String,
    pub source: Digest,
    pub target: Digest,
}

/// Digests every table on the target with `jobs` workers, biggest first, and pairs it with
/// the source's: the digest the copy took, or, for a table without one, the source read
/// at the snapshot (what a resumed copy checks the tables of earlier runs with).
pub async fn compare_tables(s: &Settings<'_>, db: &str, snapshot: &str, tables: &[TableToVerify]) -> Result<Vec<Compared>> {
    let queue = Arc::new(Mutex::new(tables.iter().cloned().collect::<VecDeque<_>>()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..s.jobs.max(1).min(tables.len().max(1)) {
        let (source, target, queue) = (s.source.clone(), s.target.clone(), queue.clone());
        let (db, snapshot) = (db.to_string(), snapshot.to_string());
        workers.spawn(async move {
            let (dst, _) = target.connect(&db).await?;
            dst.batch_execute(&stable_text()).await?;
            let mut src = None;
            let mut compared = Vec::new();
            loop {
                let Some(table) = queue.lock().await.pop_front() else { break };
                let target_side = digest_table(&dst, Role::Target, &table);
                let (source_digest, target_digest) = match table.source {
                    Some(digest) => (digest, target_side.await?),
                    None => {
                        if src.is_none() {
                            let (client, _) = source.connect(&db).await?;
                            client
                                .batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; {}", quote_literal(&snapshot), stable_text()))
                                .await
                                .context("joining the exported snapshot to verify")?;
                            src = Some(client);
                        }
                        let (source_side, target_side) = tokio::join!(digest_table(src.as_ref().expect("connected"), Role::Source, &table), target_side);
                        (source_side?, target_side?)
                    }
                };
                compared.push(Compared { table: format!("{}.{}", table.schema, table.name), source: source_digest, target: target_digest });
            }
            if let Some(src) = src {
                src.batch_execute("COMMIT").await?;
            }
            anyhow::Ok(compared)
        });
    }
    let mut compared = Vec::new();
    while let Some(worker) = workers.join_next().await {
        compared.extend(worker.context("a verification worker panicked")??);
    }
    Ok(compared)
}

/// The tables' digests on both sides, less those `landed` has already (verified by the
/// pipeline as they landed), and the tables that differ.
async fn verify_tables(s: &Settings<'_>, db: &str, snapshot: &str, tables: &[TableToVerify], landed: &[Compared]) -> Result<Vec<TableCheck>> {
    let checked: std::collections::HashSet<&str> = landed.iter().map(|c| c.table.as_str()).collect();
    let left: Vec<TableToVerify> = tables.iter().filter(|t| !checked.contains(format!("{}.{}", t.schema, t.name).as_str())).cloned().collect();
    let mut mismatches: Vec<TableCheck> = compare_tables(s, db, snapshot, &left)
        .await?
        .into_iter()
        .chain(landed.iter().cloned())
        .filter(|c| c.source != c.target)
        .map(|c| TableCheck {
            table: c.table,
            source_rows: c.source.rows as i64,
            target_rows: c.target.rows as i64,
            source_checksum: c.source.hex(),
            target_checksum: c.target.hex(),
            matches: false,
        })
        .collect();
    mismatches.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(mismatches)
}

/// Settings whose stored value is already a quoted list (pg_dump writes them verbatim).
const LIST_SETTINGS: &[&str] = &["search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"];

/// What `CREATE DATABASE` and pg_restore without `--create` leave out: the database's
/// settings (also per role), comment, connection limit and ACL. Applied last, so that a
/// setting such as default_transaction_read_only cannot get in the copy's way.
async fn apply_database_properties(s: &Settings<'_>, db: &str) -> Result<()> {
    let (source, _) = s.source.connect(&s.source.dbname).await?;
    let (target, _) = s.target.connect(&s.target.dbname).await?;
    let name = quote_ident(db);
    let settings = source
        .query(
            "select r.rolname::text, unnest(d.setconfig) from pg_db_role_setting d left join pg_roles r on r.oid = d.setrole
              where d.setdatabase = (select oid from pg_database where datname = $1)",
            &[&db],
        )
        .await?;
    for row in settings {
        let (role, setting): (Option<String>, String) = (row.get(0), row.get(1));
        let Some((key, value)) = setting.split_once('=') else { continue };
        let value = if LIST_SETTINGS.contains(&key) { value.to_string() } else { quote_literal(value) };
        let sql = match role {
            None => format!("ALTER DATABASE {name} SET {} TO {value}", quote_ident(key)),
            Some(role) => format!("ALTER ROLE {} IN DATABASE {name} SET {} TO {value}", quote_ident(&role), quote_ident(key)),
        };
        target.batch_execute(&sql).await.with_context(|| format!("applying setting {key} of database {db:?} on the target"))?;
    }
    let props = source
        .query_one("select shobj_description(oid, 'pg_database'), datconnlimit, datacl is not null from pg_database where datname = $1", &[&db])
        .await?;
    if let Some(comment) = props.get::<_, Option<String>>(0) {
        target.batch_execute(&format!("COMMENT ON DATABASE {name} IS {}", quote_literal(&comment))).await?;
    }
    let limit: i32 = props.get(1);
    if limit != -1 {
        target.batch_execute(&format!("ALTER DATABASE {name} CONNECTION LIMIT {limit}")).await?;
    }
    if props.get::<_, bool>(2) {
        let grants = source
            .query(
                "select case when a.grantee = 0 then 'PUBLIC' else quote_ident(pg_get_userbyid(a.grantee)) end, a.privilege_type, a.is_grantable
                   from pg_database d, aclexplode(d.datacl) a where d.datname = $1 and a.grantee <> d.datdba",
                &[&db],
            )
            .await?;
        target.batch_execute(&format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC")).await?;
        for g in grants {
            let (grantee, privilege, grantable): (String, String, bool) = (g.get(0), g.get(1), g.get(2));
            let option = if grantable { " WITH GRANT OPTION" } else { "" };
            target
                .batch_execute(&format!("GRANT {privilege} ON DATABASE {name} TO {grantee}{option}"))
                .await
                .with_context(|| format!("granting {privilege} on database {db:?} to {grantee} on the target"))?;
        }
    }
    Ok(())
}

pub async fn run_database(s: &Settings<'_>, copied: &CopiedDatabase, progress: &tokio::sync::mpsc::UnboundedSender<Progress>) -> Result<DatabaseVerification> {
    restore_post_data(s, copied).await?;
    analyze(s, &copied.name, &copied.landed.analyzed, progress).await?;
    verify(s, copied, progress).await
}

/// ANALYZE of every table of the target database, `jobs` at a time, biggest first: the
/// planner's statistics are not copied, and a target without them plans its first queries
/// blind (as pgcopydb's and the cloud service's guidance says, the migration makes them).
/// `done`: `(schema, name)` of the tables the pipeline analyzed already.
pub async fn analyze(s: &Settings<'_>, db: &str, done: &std::collections::HashSet<(String, String)>, progress: &tokio::sync::mpsc::UnboundedSender<Progress>) -> Result<()> {
    let started = std::time::Instant::now();
    let (client, _) = s.target.connect(db).await?;
    let tables: Vec<String> = client
        .query(
            "select n.nspname::text, c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
                and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
                and (c.relkind <> 'm' or c.relispopulated)
              order by pg_total_relation_size(c.oid) desc",
            &[],
        )
        .await
        .map_err(|e| pg_failure(Role::Target, &e, format!("listing the tables of database {db:?} to analyze")))?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|table| !done.contains(table))
        .map(|(schema, name)| format!("{}.{}", quote_ident(&schema), quote_ident(&name)))
        .collect();
    drop(client);
    let total = tables.len() + done.len();
    let queue = Arc::new(Mutex::new(tables.into_iter().collect::<VecDeque<_>>()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..s.jobs.max(1).min(total.max(1)) {
        let (target, queue, db) = (s.target.clone(), queue.clone(), db.to_string());
        workers.spawn(async move {
            let (client, _) = target.connect(&db).await?;
            loop {
                let Some(table) = queue.lock().await.pop_front() else { break };
                client.batch_execute(&format!("ANALYZE {table}")).await.map_err(|e| pg_failure(Role::Target, &e, format!("analyzing table {table} of database {db:?} on the target")))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.context("an ANALYZE worker panicked")??;
    }
    let _ = progress.send(Progress::Analyzed { database: db.to_string(), tables: total, seconds: started.elapsed().as_secs_f64() });
    Ok(())
}

/// Sequences, verification at the coordinator's snapshot, then the database's own
/// properties. (An online migration restores post-data before streaming and comes here at
/// cutover, with a snapshot taken after the fence and no source digests: both sides are read.)
pub async fn verify(s: &Settings<'_>, copied: &CopiedDatabase, progress: &tokio::sync::mpsc::UnboundedSender<Progress>) -> Result<DatabaseVerification> {
    let db = &copied.name;
    let (target, _) = s.target.connect(db).await?;
    let sequences_set = set_sequences(&copied.coordinator, &target).await?;
    let _ = progress.send(Progress::VerificationStarted { database: db.clone(), tables_total: copied.tables.len() });

    let tables = &copied.tables;
    let mut mismatches = verify_tables(s, db, &copied.snapshot, tables, &copied.landed.verified).await?;
    let objects = object_counts(&copied.coordinator).await?;
    let target_objects = object_counts(&target).await?;
    let kinds: std::collections::BTreeSet<&String> = objects.keys().chain(target_objects.keys()).collect();
    for kind in kinds {
        let (source_n, target_n) = (objects.get(kind).copied().unwrap_or(0), target_objects.get(kind).copied().unwrap_or(0));
        if source_n != target_n {
            mismatches.push(TableCheck {
                table: format!("objects of kind {kind}"),
                source_rows: source_n,
                target_rows: target_n,
                source_checksum: String::new(),
                target_checksum: String::new(),
                matches: false,
            });
        }
    }
    copied.coordinator.batch_execute("COMMIT").await?;
    apply_database_properties(s, db).await?;
    let _ = std::fs::remove_dir_all(&copied.dump_dir);
    Ok(DatabaseVerification {
        database: db.clone(),
        objects,
        tables_verified: tables.len(),
        sequences_set,
        large_objects: copied.large_objects,
        tables_recopied: copied.recopied.len(),
        recopied_tables: copied.recopied.clone(),
        mismatches,
    })
}
