//! MigratingData: per database, the target database and the roles first, then the schema
//! before the data with the server's own tooling (pg_dump pre-data at one exported
//! snapshot), then every table streamed `COPY … TO STDOUT (FORMAT binary)` →
//! `COPY … FROM STDIN (FORMAT binary)` (text for types whose binary form is not portable)
//! by parallel workers, biggest first, all reading at that same snapshot (a table copied
//! whole is loaded with COPY FREEZE), then the large objects. The copy takes each table's
//! digest from the stream as it passes (see `copy_digest`), for verification. The snapshot's coordinator connection stays
//! open for CompletingMigration, which verifies against it. A resumed run exports a new
//! snapshot and brings what earlier runs copied to it (see `run_database`): the target ends
//! as the source is at one snapshot, the last.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::Client;

use super::copy_digest::{CopyDigester, Digest, Format};
use crate::sql_text::{quote_ident, quote_literal, stable_text};
use crate::connect::{pg_error, pg_failure, ConnSpec, Role};
use crate::inventory::Inventory;
use crate::pg_tools::{self, PgTools};
use crate::plugin_host::ProviderObjectNames;

/// Does `name` match one of the adapter's provider object names (`*` suffix = prefix)?
pub fn is_provider_object(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableCopy {
    pub schema: String,
    pub name: String,
    /// First block of the range, for a table copied in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<i64>,
    /// How many parts the table was split into (1: copied whole).
    pub parts: usize,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub format: Format,
    /// The digest of the rows this part streamed (what verification compares the target with).
    #[serde(skip)]
    pub digest: Digest,
}

/// A table as verification checks it: the copy's column list and format, and the digest
/// of what the copy read from the source.
#[derive(Clone, Debug)]
pub struct TableToVerify {
    pub schema: String,
    pub name: String,
    /// Quoted, in the source's order: the target is read in the same order.
    pub columns: Vec<String>,
    pub format: Format,
    /// `None`: the source is read at the snapshot (an online migration's tables, whose
    /// source moved on since their copy; a resumed copy checking earlier runs' tables).
    pub source: Option<Digest>,
}

/// What the resume record keeps of a finished table: what its copy read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CopiedDigest {
    pub format: Format,
    #[serde(flatten)]
    pub digest: Digest,
}

/// What the data step leaves for CompletingMigration.
pub struct CopiedDatabase {
    pub name: String,
    /// Holds the exported snapshot open: the source as of the copy.
    pub coordinator: Client,
    pub snapshot: String,
    /// Every table of the database, biggest first: what verification checks.
    pub tables: Vec<TableToVerify>,
    pub large_objects: u64,
    /// `schema.name` of the tables resumes copied again (see `DatabaseState::recopied`).
    pub recopied: Vec<String>,
    pub dump_dir: PathBuf,
    /// The post-data archive at the snapshot, and the entries of it built during the copy
    /// (none for a cutover's verification, which restores nothing).
    pub post_data: Option<PostData>,
    /// Tables the pipeline verified and analyzed as they landed (offline, a fresh copy).
    pub landed: Landed,
}

/// What the per-table pipeline did after each table's copy, so that CompletingMigration
/// does not do it again.
#[derive(Default)]
pub struct Landed {
    /// Digests of both sides, read on the target right after the table's indexes were built.
    pub verified: Vec<super::completing_migration::Compared>,
    /// `(schema, name)` of the tables analyzed.
    pub analyzed: std::collections::HashSet<(String, String)>,
}

/// A database's post-data archive (dumped at the copy's snapshot) and the TOC ids of its
/// entries already run: the indexes and keys built as their tables landed.
pub struct PostData {
    pub file: PathBuf,
    pub built: std::collections::BTreeSet<u32>,
    /// `(schema, table, name)` of the foreign keys among them: the restore keeps them.
    pub foreign_keys: std::collections::BTreeSet<(String, String, String)>,
}

/// How far a database got, recorded in the store as it happens: the resume record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Stage {
    /// Nothing of it exists on the target yet.
    #[default]
    NotStarted,
    /// The target database exists (created by this migration).
    Created,
    /// Pre-data is restored; tables are being copied.
    SchemaRestored,
    /// Every table and large object is copied.
    DataCopied,
    /// Post-data, sequences and verification are done.
    Completed,
}

/// What a resumed run keeps of an interrupted one, per database.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseState {
    pub stage: Stage,
    /// `schema.name` of the tables copied completely (all parts).
    pub tables_done: Vec<String>,
    /// The digest of each table in `tables_done`, all parts together: the source as it was
    /// copied. A resume checks these tables at its own snapshot; for one that differs, this
    /// tells which side changed since (its log says).
    #[serde(default)]
    pub digests: std::collections::BTreeMap<String, CopiedDigest>,
    /// `schema.name` of the tables a resume copied again because they differed, at its
    /// snapshot, from what an earlier run had copied at an earlier one.
    #[serde(default)]
    pub recopied: Vec<String>,
    /// What each table in `tables_done` was read at (its run's snapshot), when known.
    #[serde(default)]
    pub read_at: std::collections::BTreeMap<String, String>,
}

impl DatabaseState {
    pub fn from_record(database: &str, record: crate::store::ResumeDatabase) -> Result<DatabaseState> {
        let context = || format!("the resume record of database {database:?} cannot be read; it was written by another pgferry version or damaged");
        let stage = serde_json::from_value(serde_json::Value::String(record.stage)).with_context(context)?;
        let mut state = DatabaseState { stage, recopied: record.recopied, ..Default::default() };
        for copied in record.tables {
            state.digests.insert(copied.table.clone(), serde_json::from_value(copied.digest).with_context(context)?);
            if !copied.read_at.is_empty() {
                state.read_at.insert(copied.table.clone(), copied.read_at);
            }
            state.tables_done.push(copied.table);
        }
        Ok(state)
    }
}

/// Progress the step reports while it works.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all_fields = "camelCase")]
pub enum Progress {
    /// `snapshot`: what every table of this run is read at (the exported snapshot; online,
    /// the replication slot's), recorded with each table it finishes.
    DatabaseStarted { database: String, tables_total: usize, bytes_total: u64, snapshot: String },
    /// A worker took (a part of) a table.
    TableStarted { database: String, schema: String, name: String },
    TableCopied { database: String, table: TableCopy },
    /// Bytes of (a part of) a table sent so far, while it streams (twice a second).
    TableBytes { database: String, schema: String, name: String, part: Option<i64>, bytes: u64 },
    /// A resume found these tables (`schema.name`), copied by an earlier run, different at its
    /// snapshot: they are no longer done, and are emptied and copied again.
    TablesRecopying { database: String, tables: Vec<String> },
    /// Copying (a part of) a table failed; the migration fails with this error.
    TableFailed { database: String, schema: String, name: String, error: String },
    StageReached { database: String, stage: Stage },
    /// Online: changes applied so far (every few seconds while streaming).
    Replicating { database: String, transactions: u64, inserts: u64, updates: u64, deletes: u64, latency_seconds: f64, wal_bytes_pending: Option<i64> },
    /// Every table of the target database was analyzed (the planner's statistics made).
    Analyzed { database: String, tables: usize, seconds: f64 },
    /// Post-data and sequences are done; the target's tables are being checked.
    VerificationStarted { database: String, tables_total: usize },
}

pub struct Settings<'a> {
    pub source: &'a ConnSpec,
    pub target: &'a ConnSpec,
    pub inventory: &'a Inventory,
    pub provider: &'a ProviderObjectNames,
    pub overwrite: bool,
    pub jobs: usize,
    /// Index and key builds at once, while the copy goes on (see `post_data`).
    pub index_jobs: usize,
    /// Tables bigger than this are copied in block ranges by several workers (0: never).
    pub split_bytes: u64,
    pub tools: &'a PgTools,
    pub work_dir: PathBuf,
    /// Online: how long streaming keeps trying to reach a server it lost.
    pub reconnect_timeout: std::time::Duration,
}

/// Creates the roles the migrated objects need that the target lacks, with their password
/// hashes when the source lets them be read (superuser); otherwise without: set them after.
/// The hashes go from one server to the other and nowhere else (no log, no store).
pub async fn create_roles(s: &Settings<'_>) -> Result<Vec<String>> {
    let (target, _) = s.target.connect(&s.target.dbname).await?;
    let (source, _) = s.source.connect(&s.source.dbname).await?;
    let hashes: std::collections::HashMap<String, String> = match source.query("select rolname::text, rolpassword from pg_authid where rolpassword is not null", &[]).await {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        // Only a user who may not read pg_authid (not a superuser, as on managed servers)
        // goes on without the hashes; any other failure is an error, not "no passwords".
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::info!("the source user {} may not read pg_authid: roles are created on the target without their passwords", s.source.user);
            Default::default()
        }
        Err(e) => anyhow::bail!("reading the roles' password hashes on the {}: {}", s.source.describe(), pg_error(&e)),
    };
    let target_info = &s.inventory.target;
    let may_superuser = target_info.roles.iter().any(|r| r.name == target_info.current_user && r.superuser);
    let wanted: Vec<_> = s
        .inventory
        .source
        .roles
        .iter()
        .filter(|r| !r.name.starts_with("pg_") && !is_provider_object(&s.provider.roles, &r.name))
        .collect();
    let mut created = Vec::new();
    let mut passwords = Vec::new();
    for role in &wanted {
        if target_info.roles.iter().any(|t| t.name == role.name) {
            continue;
        }
        let flag = |on: bool, name: &str| if on { name.to_string() } else { format!("NO{name}") };
        let sql = format!(
            "CREATE ROLE {} WITH {} {} {} {} {} {}",
            quote_ident(&role.name),
            flag(role.can_login, "LOGIN"),
            flag(role.create_db, "CREATEDB"),
            flag(role.create_role, "CREATEROLE"),
            flag(role.replication && may_superuser, "REPLICATION"),
            flag(role.bypass_rls && may_superuser, "BYPASSRLS"),
            flag(role.superuser && may_superuser, "SUPERUSER"),
        );
        target.batch_execute(&sql).await.with_context(|| format!("creating role {} on the {}", role.name, s.target.describe()))?;
        if let Some(hash) = hashes.get(&role.name) {
            passwords.push((role.name.as_str(), hash.as_str()));
        }
        created.push(role.name.clone());
    }
    set_password_hashes(&target, &passwords).await.with_context(|| format!("setting the passwords of the roles created on the {}", s.target.describe()))?;
    for role in &wanted {
        for parent in &role.member_of {
            if parent.starts_with("pg_") || is_provider_object(&s.provider.roles, parent) {
                continue;
            }
            let sql = format!("GRANT {} TO {}", quote_ident(parent), quote_ident(&role.name));
            if let Err(e) = target.batch_execute(&sql).await {
                tracing::warn!("granting role {parent} to {} on the target: {e}", role.name);
            }
        }
    }
    Ok(created)
}

/// Gives roles their password hashes without a hash ever standing in a statement, where
/// statement logging (tokio-postgres' at debug level, the server's log_statement) would
/// record it: the hashes travel as COPY data into a temporary table, and the server sets
/// them from there. A failure names the role, not the statement.
async fn set_password_hashes(target: &Client, passwords: &[(&str, &str)]) -> Result<()> {
    if passwords.is_empty() {
        return Ok(());
    }
    // COPY's text format: backslash, tab and line ends escaped.
    let field = |v: &str| v.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r");
    let rows: String = passwords.iter().map(|(role, hash)| format!("{}\t{}\n", field(role), field(hash))).collect();
    target.batch_execute("BEGIN; CREATE TEMPORARY TABLE pgferry_role_password (role text, hash text) ON COMMIT DROP").await?;
    let sink = target.copy_in("COPY pgferry_role_password FROM STDIN").await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(rows)).await?;
    sink.finish().await?;
    let set = "DO $pgferry$ DECLARE r record; BEGIN
                 FOR r IN SELECT role, hash FROM pgferry_role_password LOOP
                   BEGIN
                     EXECUTE format('ALTER ROLE %I PASSWORD %L', r.role, r.hash);
                   EXCEPTION WHEN others THEN
                     RAISE EXCEPTION 'setting the password of role % failed: %', r.role, SQLERRM;
                   END;
                 END LOOP;
               END $pgferry$; COMMIT";
    if let Err(e) = target.batch_execute(set).await {
        let _ = target.batch_execute("ROLLBACK").await;
        bail!("{}", pg_error(&e));
    }
    Ok(())
}

/// Creates the target database with the source's encoding, locale and owner, replacing an
/// existing one only when the user asked for it (validation has passed by now).
pub async fn create_target_database(s: &Settings<'_>, name: &str, ours: bool) -> Result<()> {
    let summary = s.inventory.source.databases.iter().find(|d| d.name == name).with_context(|| format!("database {name:?} does not exist on the {}", s.source.describe()))?;
    let (target, _) = s.target.connect(&s.target.dbname).await?;
    let exists = target.query_opt("select 1 from pg_database where datname = $1", &[&name]).await?.is_some();
    if exists {
        if !s.overwrite && !ours {
            bail!("database {name:?} already exists on the {}; set OverwriteDBsInTarget to replace it", s.target.describe());
        }
        let force = if s.inventory.target.version_num >= 130000 { " WITH (FORCE)" } else { "" };
        target
            .batch_execute(&format!("DROP DATABASE {}{force}", quote_ident(name)))
            .await
            .with_context(|| format!("dropping database {name:?} on the {} to replace it", s.target.describe()))?;
    }
    let mut sql = format!(
        "CREATE DATABASE {} WITH TEMPLATE = template0 ENCODING = {} LC_COLLATE = {} LC_CTYPE = {}",
        quote_ident(name),
        quote_literal(&summary.encoding),
        quote_literal(&summary.collate),
        quote_literal(&summary.ctype)
    );
    if s.inventory.target.version_num >= 150000 && summary.locale_provider == "icu" {
        sql.push_str(&format!(" LOCALE_PROVIDER = icu ICU_LOCALE = {}", quote_literal(summary.icu_locale.as_deref().unwrap_or("und"))));
    }
    if s.inventory.target.roles.iter().any(|r| r.name == summary.owner) || s.inventory.source.roles.iter().any(|r| r.name == summary.owner && !is_provider_object(&s.provider.roles, &r.name)) {
        sql.push_str(&format!(" OWNER = {}", quote_ident(&summary.owner)));
    }
    target.batch_execute(&sql).await.with_context(|| format!("creating database {name:?} on the {}", s.target.describe()))?;
    Ok(())
}

/// Opens the coordinator's transaction and exports its snapshot. An online migration
/// passes the snapshot its replication slot was created with: the coordinator adopts it and
/// exports it again, so that it outlives the slot's session.
pub async fn export_snapshot(source: &ConnSpec, db: &str, adopt: Option<&str>) -> Result<(Client, String)> {
    let (client, _) = source.connect(db).await?;
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    if let Some(snapshot) = adopt {
        client
            .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(snapshot)))
            .await
            .map_err(|e| anyhow::anyhow!("adopting the replication slot's snapshot {snapshot} on the {}: {}", source.describe(), pg_error(&e)))?;
    }
    let snapshot: String = client.query_one("select pg_export_snapshot()", &[]).await?.get(0);
    Ok((client, snapshot))
}

/// pg_dump of the schema of database `db` (both sections, pre-data and post-data: the
/// catalog is read once) at the snapshot, into the work directory.
async fn dump_schema(s: &Settings<'_>, db: &str, snapshot: &str, dump_dir: &std::path::Path) -> Result<PathBuf> {
    let file = dump_dir.join("schema.dump");
    let mut dump = s.tools.command("pg_dump", s.source, db);
    // Sections, not --schema-only, which leaves large objects out (their pre-data entries).
    dump.args(["--format=custom", "--no-sync", "--section=pre-data", "--section=post-data", &format!("--snapshot={snapshot}"), "--file"]).arg(&file);
    for schema in &s.provider.schemas {
        dump.arg(format!("--exclude-schema={schema}"));
    }
    pg_tools::run(dump, &format!("pg_dump --section=pre-data --section=post-data of database {db:?} on the {}", s.source.describe())).await?;
    Ok(file)
}

/// The pre-data of the schema archive restored into the target database, in one transaction.
async fn restore_pre_data(s: &Settings<'_>, db: &str, file: &std::path::Path) -> Result<()> {
    let mut restore = s.tools.command("pg_restore", s.target, db);
    restore.args(["--section=pre-data", "--exit-on-error", "--no-password", "--single-transaction"]).arg(file);
    pg_tools::run(restore, &format!("pg_restore --section=pre-data into database {db:?} on the {}", s.target.describe())).await
}

/// The post-data archive restored into the target database, less the entries built during
/// the copy (TOC ids).
pub async fn restore_post_data(s: &Settings<'_>, copied: &CopiedDatabase) -> Result<()> {
    let post_data = copied.post_data.as_ref().context("no post-data archive was dumped for this database")?;
    let (db, file, dump_dir, exclude) = (&copied.name, &post_data.file, &copied.dump_dir, &post_data.built);
    let restore = |list: &std::path::Path, jobs: usize| {
        let mut cmd = s.tools.command("pg_restore", s.target, db);
        // Idempotent, so that a resumed migration can run it again.
        cmd.args(["--section=post-data", "--exit-on-error", "--no-password", "--clean", "--if-exists"]);
        if jobs > 1 {
            cmd.arg(format!("--jobs={jobs}"));
        }
        cmd.arg(format!("--use-list={}", list.display())).arg(file);
        cmd
    };
    let what = format!("pg_restore --section=post-data into database {db:?} on the {}", s.target.describe());
    let mut list_cmd = s.tools.offline("pg_restore");
    list_cmd.arg("--list").arg(file);
    let listing = list_cmd.output().await.context("listing the post-data archive")?;
    anyhow::ensure!(listing.status.success(), "pg_restore --list failed: {}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    // An online migration's own publication is in the snapshot: it stays on the source.
    let built = |l: &str| l.split_once(';').and_then(|(id, _)| id.trim().parse::<u32>().ok()).is_some_and(|id| exclude.contains(&id));
    let entries: Vec<&str> = listing.lines().filter(|l| !l.starts_with(';') && !is_pgferry_publication(l) && !built(l)).collect();
    if s.jobs < 2 {
        let list_file = dump_dir.join("post-data.list");
        std::fs::write(&list_file, entries.join("\n"))?;
        return pg_tools::run(restore(&list_file, 1), &what).await;
    }
    // A foreign key on a partitioned table locks every partition, which pg_restore's
    // parallel scheduler does not know: it deadlocks against the partitions' own keys. So,
    // where there are partitioned tables: everything else in parallel, then the foreign
    // keys one by one. Without any, the foreign keys go in parallel too (ten thousand of
    // them one by one would take seconds).
    // A resumed run may find foreign keys of an earlier attempt; they would keep --clean
    // from dropping the keys and indexes they depend on.
    let (target, _) = s.target.connect(db).await?;
    drop_foreign_keys(&target, &post_data.foreign_keys).await.context("dropping the foreign keys of an earlier attempt")?;
    let partitioned: bool = target
        .query_one("select exists (select 1 from pg_class where relkind = 'p')", &[])
        .await
        .map_err(|e| pg_failure(Role::Target, &e, format!("looking for partitioned tables in database {db:?}")))?
        .get(0);
    // Partition indexes are attached to their parents one by one too, in the archive's order:
    // in parallel, a sub-partitioned table's index could be attached before its own
    // partitions' were, which leaves the top index invalid, and a key referencing it fails
    // ("no unique constraint matching given keys"; seen once on the regression database).
    let (keys, rest): (Vec<&str>, Vec<&str>) = entries.into_iter().partition(|l| {
        // The keys, comments on constraints (which may be on a key), index attachments.
        partitioned && (l.contains(" FK CONSTRAINT ") || (l.contains(" COMMENT ") && l.contains(" CONSTRAINT ")) || l.contains(" INDEX ATTACH "))
    });
    let (keys_file, rest_file) = (dump_dir.join("post-data-keys.list"), dump_dir.join("post-data-rest.list"));
    std::fs::write(&keys_file, keys.join("\n"))?;
    std::fs::write(&rest_file, rest.join("\n"))?;
    pg_tools::run(restore(&rest_file, s.jobs), &what).await?;
    if keys.is_empty() {
        return Ok(());
    }
    pg_tools::run(restore(&keys_file, 1), &format!("{what} (index attachments and foreign keys)")).await
}

/// Whether a line of `pg_restore --list` is a publication of pgferry's (`pgferry_<id>_<n>`,
/// see `Names`) or one of its tables: `7; 6104 16390 PUBLICATION - pgferry_1_0 owner`,
/// `8; 6106 16391 PUBLICATION TABLE public pgferry_1_0 t -`,
/// `9; 6237 16392 PUBLICATION TABLES IN SCHEMA - pgferry_1_0 s -`.
fn is_pgferry_publication(line: &str) -> bool {
    let Some((_, entry)) = line.split_once("; ") else { return false };
    // Catalog ids, then the kind of entry, its schema, and its tag (first word: the publication).
    let words: Vec<&str> = entry.split(' ').skip(2).collect();
    let publication = match words.as_slice() {
        ["PUBLICATION", "TABLE", _schema, name, ..] => name,
        ["PUBLICATION", "TABLES", "IN", "SCHEMA", _schema, name, ..] => name,
        ["PUBLICATION", _schema, name, ..] => name,
        _ => return false,
    };
    publication.strip_prefix("pgferry_").and_then(|rest| rest.split_once('_')).is_some_and(|(id, n)| {
        !id.is_empty() && !n.is_empty() && id.chars().chain(n.chars()).all(|c| c.is_ascii_digit())
    })
}

#[derive(Clone)]
struct TableJob {
    schema: String,
    name: String,
    /// Non-generated columns, in order (generated ones are recomputed by the target).
    columns: Vec<String>,
    /// Main fork: what block ranges divide.
    main_size: i64,
    /// With TOAST: what the copy costs, so the queue order (biggest first).
    size: i64,
    /// Binary when every column's type allows it (see `list_tables`), else text.
    format: Format,
    /// For a big table split across workers: blocks `[start, end)`, `end` open for the last.
    blocks: Option<(i64, Option<i64>)>,
    parts: usize,
}

/// Every table the copy takes, to be verified by reading both sides (no source digests:
/// an online migration's source moved on since its copy).
pub async fn tables_to_verify(coordinator: &Client, version_num: u32) -> Result<Vec<TableToVerify>> {
    Ok(list_tables(coordinator, version_num)
        .await?
        .into_iter()
        .map(|t| TableToVerify { schema: t.schema, name: t.name, columns: t.columns, format: t.format, source: None })
        .collect())
}

async fn list_tables(coordinator: &Client, version_num: u32) -> Result<Vec<TableJob>> {
    // Generated columns exist from PostgreSQL 12; before that every column is copied.
    let not_generated = if version_num >= 120000 { "and a.attgenerated = ''" } else { "" };
    // Leaf tables only (a partitioned parent holds no rows), no extension members.
    //
    // Binary COPY needs send/receive functions for every type a column holds (through
    // domains, arrays and ranges): aclitem and some user types have none. And binary values
    // must mean the same on the target, where user-defined types have other OIDs:
    // array_recv checks the element type's OID and record_recv each field's, so arrays of
    // user-defined types (enum[], arrays of domains or composites, extension types) and
    // composite values go in text; so do the reg* types, whose binary form is a bare OID
    // of the source. Text names the objects instead.
    let sql = format!(
        "with recursive tables as (
             select c.oid, n.nspname::text as schema, c.relname::text as name
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'r' and c.relpersistence <> 't'
                and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
                and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
         ), reached(relid, typid) as (
             select a.attrelid, a.atttypid from pg_attribute a
              where a.attrelid in (select oid from tables) and a.attnum > 0 and not a.attisdropped
             union
             select r.relid, x.typid from reached r join pg_type t on t.oid = r.typid
                    cross join lateral (values (t.typbasetype),
                                               (case when t.typelem <> 0 and t.typlen = -1 then t.typelem else 0 end),
                                               ((select g.rngsubtype from pg_range g where g.rngtypid = t.oid))) x(typid)
              where x.typid <> 0
         ), text_only as (
             select distinct r.relid from reached r join pg_type t on t.oid = r.typid
              where t.typsend = 0 or t.typreceive = 0 or t.typtype = 'c'
                 or (t.typelem <> 0 and t.typlen = -1 and t.typelem >= 16384)
                 or (t.oid < 16384 and t.typname in ('regproc', 'regprocedure', 'regoper', 'regoperator', 'regclass', 'regtype',
                                                     'regconfig', 'regdictionary', 'regnamespace', 'regrole', 'regcollation'))
         )
         select t.schema, t.name,
                coalesce((select array_agg(quote_ident(a.attname) order by a.attnum) from pg_attribute a
                          where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped {not_generated}), '{{}}'::text[]),
                pg_relation_size(t.oid), pg_table_size(t.oid),
                not exists (select 1 from text_only x where x.relid = t.oid)
           from tables t
          order by pg_table_size(t.oid) desc, 1, 2"
    );
    let rows = coordinator.query(&sql, &[]).await.context("listing the tables to copy")?;
    Ok(rows
        .iter()
        .map(|r| TableJob {
            schema: r.get(0),
            name: r.get(1),
            columns: r.get(2),
            main_size: r.get(3),
            size: r.get(4),
            format: if r.get(5) { Format::Binary } else { Format::Text },
            blocks: None,
            parts: 1,
        })
        .collect())
}

/// Splits tables over `split_bytes` into block ranges (TID range scans, PostgreSQL 14+),
/// so that one big table keeps every worker busy; the queue stays biggest first.
fn split_big_tables(tables: Vec<TableJob>, split_bytes: u64, jobs: usize, version_num: u32) -> Vec<TableJob> {
    const BLOCK: i64 = 8192;
    if version_num < 140000 || split_bytes == 0 {
        return tables;
    }
    let mut out = Vec::new();
    for t in tables {
        let parts = ((t.size.max(0) as u64).div_ceil(split_bytes) as usize).min(jobs * 4);
        let blocks = t.main_size / BLOCK;
        // Block ranges divide the main fork; a table that is mostly TOAST has few blocks.
        let parts = parts.min(blocks.max(1) as usize);
        if parts < 2 {
            out.push(t);
            continue;
        }
        let per = (blocks + parts as i64 - 1) / parts as i64;
        for i in 0..parts as i64 {
            let end = if i + 1 == parts as i64 { None } else { Some((i + 1) * per) };
            out.push(TableJob { size: t.size / parts as i64, blocks: Some((i * per, end)), parts, ..t.clone() });
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.size));
    out
}

/// The post-data archive as pg_restore would run it (plain SQL, each entry marked with its
/// TOC id), for `post_data::table_entries`.
async fn plain_archive(s: &Settings<'_>, file: &std::path::Path) -> Result<String> {
    let mut cmd = s.tools.offline("pg_restore");
    cmd.args(["--section=post-data", "--verbose", "--file", "-"]).arg(file);
    let out = cmd.output().await.context("reading the post-data archive")?;
    anyhow::ensure!(out.status.success(), "pg_restore --file - of {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).context("the post-data archive is not UTF-8 text")
}

/// Copies every table with `jobs` workers, each in its own transaction at `snapshot`.
/// With `plan`, a table goes on through the per-table pipeline (`super::pipeline`) as soon
/// as all its parts are copied, while other tables are still copying. Returned with the
/// copies: the TOC ids of the entries the pipeline ran, and what it verified and analyzed.
async fn copy_tables(
    s: &Settings<'_>,
    db: &str,
    snapshot: &str,
    tables: Vec<TableJob>,
    plan: Option<super::pipeline::Plan>,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<(Vec<TableCopy>, super::pipeline::Done)> {
    // Parts still being copied per table, and the digest of those copied: at 0 the table
    // goes on through the pipeline.
    let mut parts_left: std::collections::HashMap<(String, String), (usize, Digest)> = std::collections::HashMap::new();
    for t in &tables {
        parts_left.entry((t.schema.clone(), t.name.clone())).or_default().0 += 1;
    }
    let parts_left = Arc::new(Mutex::new(parts_left));
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let (mut pipeline, arrivals) = match plan {
        Some(plan) => {
            let (pipeline, arrivals) = super::pipeline::Pipeline::start(s.target, db, s.index_jobs, plan);
            (Some(pipeline), Some(arrivals))
        }
        None => (None, None),
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..s.jobs.max(1) {
        let (source, target) = (s.source.clone(), s.target.clone());
        let (queue, db, snapshot, progress) = (queue.clone(), db.to_string(), snapshot.to_string(), progress.clone());
        let (parts_left, arrivals) = (parts_left.clone(), arrivals.clone());
        workers.spawn(crate::own_thread::run("pgferry-copy", move || async move {
            let (src, _) = source.connect(&db).await?;
            // The text settings matter to tables copied as text: what the source writes is
            // what the target parses, and what the source's digest is taken of.
            src.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; {}", quote_literal(&snapshot), stable_text()))
                .await
                .context("joining the exported snapshot")?;
            let (dst, _) = target.connect(&db).await?;
            dst.batch_execute(&format!("SET synchronous_commit = off; {}", stable_text())).await?;
            let mut done = Vec::new();
            loop {
                let Some(job) = queue.lock().await.pop_front() else { break };
                let _ = progress.send(Progress::TableStarted { database: db.clone(), schema: job.schema.clone(), name: job.name.clone() });
                let copy = match copy_table(&src, &dst, &job, &db, &progress).await {
                    Ok(copy) => copy,
                    Err(e) => {
                        let _ = progress.send(Progress::TableFailed { database: db.clone(), schema: job.schema.clone(), name: job.name.clone(), error: format!("{e:#}") });
                        return Err(e.context(format!("copying table {}.{} of database {db:?}", job.schema, job.name)));
                    }
                };
                let _ = progress.send(Progress::TableCopied { database: db.clone(), table: copy.clone() });
                let whole = {
                    let mut left = parts_left.lock().await;
                    let (n, digest) = left.get_mut(&(job.schema.clone(), job.name.clone())).expect("counted above");
                    *n -= 1;
                    *digest = digest.combine(copy.digest);
                    (*n == 0).then_some(*digest)
                };
                if let (Some(digest), Some(arrivals)) = (whole, &arrivals) {
                    arrivals.landed(super::pipeline::LandedTable {
                        table: TableToVerify { schema: job.schema.clone(), name: job.name.clone(), columns: job.columns.clone(), format: job.format, source: Some(digest) },
                        size: job.size * job.parts as i64,
                        main_size: job.main_size,
                    });
                }
                done.push(copy);
            }
            src.batch_execute("COMMIT").await?;
            anyhow::Ok(done)
        }));
    }
    let mut copied = Vec::new();
    let mut first_error = None;
    loop {
        let failed = async {
            match pipeline.as_mut() {
                Some(pipeline) => pipeline.failure().await,
                None => std::future::pending().await,
            }
        };
        let worker = tokio::select! {
            worker = workers.join_next() => worker,
            e = failed => {
                first_error = Some(e);
                None
            }
        };
        let Some(worker) = worker else { break };
        match worker.context("a copy worker panicked")? {
            Ok(done) => copied.extend(done),
            Err(e) => {
                first_error.get_or_insert(e);
                break;
            }
        }
    }
    if let Some(e) = first_error {
        // Stop the others: nothing more is taken from the queue, and dropping the JoinSets
        // ends the tasks.
        queue.lock().await.clear();
        return Err(e);
    }
    let done = match pipeline.take() {
        None => Default::default(),
        Some(pipeline) => pipeline.finish().await?,
    };
    Ok((copied, done))
}

/// How often a table that streams says how far it got.
const BYTES_EVERY: Duration = Duration::from_millis(500);

async fn copy_table(src: &Client, dst: &Client, job: &TableJob, db: &str, progress: &mpsc::UnboundedSender<Progress>) -> Result<TableCopy> {
    let started = Instant::now();
    let table = format!("{}.{}", quote_ident(&job.schema), quote_ident(&job.name));
    let columns = if job.columns.is_empty() { String::new() } else { format!(" ({})", job.columns.join(", ")) };
    let format = job.format.sql();
    let source_query = match job.blocks {
        None => format!("COPY {table}{columns} TO STDOUT (FORMAT {format})"),
        Some(_) => format!("COPY ({}) TO STDOUT (FORMAT {format})", super::completing_migration::rows_query(&job.schema, &job.name, &job.columns, job.blocks)),
    };
    // Marked when the connection was lost: the copy is then tried again once the server is back.
    let source_err = |e: tokio_postgres::Error| crate::connect::pg_failure(Role::Source, &e, "reading from the source");
    let target_err = |e: tokio_postgres::Error| crate::connect::pg_failure(Role::Target, &e, "writing to the target");
    // A table copied whole is loaded frozen: emptied in the same transaction, its rows need
    // no hint bits set (and no page rewritten) later, when post-data and verification read it.
    // Not a small one, where the TRUNCATE (a new file) costs more than the hint bits.
    const FREEZE_FROM: i64 = 8 << 20;
    let freeze = job.blocks.is_none() && job.size >= FREEZE_FROM && begin_frozen_load(dst, &table).await.map_err(target_err)?;
    let options = if freeze { format!("FORMAT {format}, FREEZE") } else { format!("FORMAT {format}") };
    let out = src.copy_out(&source_query).await.map_err(source_err)?;
    let sink = dst.copy_in(&format!("COPY {table}{columns} FROM STDIN ({options})")).await.map_err(target_err)?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let mut bytes = 0u64;
    let mut digest = CopyDigester::new(job.format);
    // COPY OUT yields a row per chunk; sending each with a flush would cost a syscall per
    // row. Rows are gathered into batches instead: memory stays bounded (one batch).
    const BATCH: usize = 256 << 10;
    let mut batch = bytes::BytesMut::with_capacity(BATCH);
    let mut said = Instant::now();
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(source_err)?;
        bytes += chunk.len() as u64;
        digest.feed(&chunk).context("reading the source's COPY stream")?;
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH {
            sink.send(batch.split().freeze()).await.map_err(target_err)?;
            if said.elapsed() >= BYTES_EVERY {
                said = Instant::now();
                let part = job.blocks.map(|(start, _)| start);
                let _ = progress.send(Progress::TableBytes { database: db.to_string(), schema: job.schema.clone(), name: job.name.clone(), part, bytes });
            }
        }
    }
    if !batch.is_empty() {
        sink.send(batch.freeze()).await.map_err(target_err)?;
    }
    let rows = sink.finish().await.map_err(target_err)?;
    if freeze {
        dst.batch_execute("COMMIT").await.map_err(target_err)?;
    }
    let digest = digest.finish().context("reading the source's COPY stream")?;
    anyhow::ensure!(digest.rows == rows, "the source sent {} rows and the target stored {rows}", digest.rows);
    Ok(TableCopy {
        schema: job.schema.clone(),
        name: job.name.clone(),
        part: job.blocks.map(|(start, _)| start),
        parts: job.parts,
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        format: job.format,
        digest,
    })
}

/// `BEGIN; TRUNCATE ONLY table` on the target, so that the COPY that follows may FREEZE.
/// `false` (and nothing begun) when the target refuses the TRUNCATE (a role allowed to
/// insert but not to truncate): the table is then loaded plainly.
async fn begin_frozen_load(dst: &Client, table: &str) -> Result<bool, tokio_postgres::Error> {
    match dst.batch_execute(&format!("BEGIN; TRUNCATE ONLY {table}")).await {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::debug!("loading {table} without FREEZE: {}", pg_error(&e));
            dst.batch_execute("ROLLBACK").await?;
            Ok(false)
        }
    }
}

/// Large objects' contents at the coordinator's snapshot (their existence, owner, ACL and
/// comment came with pre-data). A resumed run finds the objects as an earlier run left them,
/// as of an earlier snapshot: it first makes the target's set the source's (unlinking those
/// deleted since, creating those added since, with their owner) and empties each before
/// writing it, as a shorter version would otherwise keep the old one's tail.
async fn copy_large_objects(coordinator: &Client, target: &ConnSpec, db: &str, resumed: bool) -> Result<u64> {
    let oids: Vec<u32> = coordinator.query("select oid from pg_largeobject_metadata order by oid", &[]).await?.iter().map(|r| r.get(0)).collect();
    if oids.is_empty() && !resumed {
        return Ok(0);
    }
    let (dst, _) = target.connect(db).await?;
    if resumed {
        let on_target: std::collections::BTreeSet<u32> = dst.query("select oid from pg_largeobject_metadata", &[]).await?.iter().map(|r| r.get(0)).collect();
        let on_source: std::collections::BTreeSet<u32> = oids.iter().copied().collect();
        for oid in on_target.difference(&on_source) {
            dst.execute("select lo_unlink($1)", &[oid]).await.with_context(|| format!("unlinking large object {oid}, deleted on the source since an earlier run copied it"))?;
        }
        for oid in on_source.difference(&on_target) {
            let owner: String = coordinator.query_one("select pg_get_userbyid(lomowner)::text from pg_largeobject_metadata where oid = $1", &[oid]).await?.get(0);
            dst.execute("select lo_create($1)", &[oid]).await.with_context(|| format!("creating large object {oid}, added on the source since an earlier run"))?;
            dst.batch_execute(&format!("ALTER LARGE OBJECT {oid} OWNER TO {}", quote_ident(&owner))).await.with_context(|| format!("giving large object {oid} to {owner}"))?;
        }
    }
    const CHUNK: i32 = 1 << 20;
    const INV_WRITE: i32 = 0x20000;
    for oid in &oids {
        if resumed {
            // One statement, one transaction: the descriptor lives as long as it needs to.
            dst.execute("select lo_truncate64(lo_open($1, $2), 0)", &[oid, &INV_WRITE]).await.with_context(|| format!("emptying large object {oid}"))?;
        }
        let mut offset: i64 = 0;
        loop {
            let row = coordinator.query_one("select lo_get($1, $2, $3)", &[oid, &offset, &CHUNK]).await.with_context(|| format!("reading large object {oid}"))?;
            let data: Vec<u8> = row.get(0);
            if data.is_empty() {
                break;
            }
            dst.execute("select lo_put($1, $2, $3)", &[oid, &offset, &data]).await.with_context(|| format!("writing large object {oid}"))?;
            offset += data.len() as i64;
            if data.len() < CHUNK as usize {
                break;
            }
        }
    }
    Ok(oids.len() as u64)
}

/// The data step for one database, from where `state` says an earlier run stopped: a
/// database not yet restored is (re)created; tables not completely copied are truncated and
/// copied again; what was finished is kept if it still matches the source at this run's
/// snapshot (see `recheck_earlier_tables`), else copied again too.
/// `snapshot`: the replication slot's, for an online migration (else one is exported).
pub async fn run_database(s: &Settings<'_>, db: &str, state: &DatabaseState, snapshot: Option<&str>, progress: &mpsc::UnboundedSender<Progress>) -> Result<CopiedDatabase> {
    let stage = |stage| {
        let _ = progress.send(Progress::StageReached { database: db.to_string(), stage });
    };
    let dump_dir = crate::work_dir::WorkDir::database_dir(&s.work_dir, db);
    std::fs::create_dir_all(&dump_dir).with_context(|| format!("creating the work directory {}", dump_dir.display()))?;
    if state.stage < Stage::SchemaRestored {
        // Created by an interrupted run of this migration: ours to replace.
        create_target_database(s, db, state.stage == Stage::Created).await?;
        stage(Stage::Created);
    }
    // What the tables are read at, as recorded with each: online, the slot's snapshot (the
    // exported one below is the same view under a name of its own).
    let slot_snapshot = snapshot.map(str::to_string);
    let (coordinator, snapshot) = export_snapshot(s.source, db, snapshot).await?;
    // At the copy's snapshot, post-data included: its indexes and keys are built as tables land.
    let post_data_file = dump_schema(s, db, &snapshot, &dump_dir).await?;
    if state.stage < Stage::SchemaRestored {
        restore_pre_data(s, db, &post_data_file).await?;
        stage(Stage::SchemaRestored);
    }
    let version = s.inventory.source.version_num;
    let tables = list_tables(&coordinator, version).await?;
    let key = |t: &TableJob| format!("{}.{}", t.schema, t.name);
    let mut all: Vec<TableToVerify> =
        tables.iter().map(|t| TableToVerify { schema: t.schema.clone(), name: t.name.clone(), columns: t.columns.clone(), format: t.format, source: None }).collect();
    // A resumed run: the tables earlier runs finished were read at their snapshots, not this one.
    let resumed = state.stage >= Stage::SchemaRestored;
    let mut done: std::collections::HashSet<String> = if resumed { state.tables_done.iter().cloned().collect() } else { Default::default() };
    let mut recopied: std::collections::BTreeSet<String> = state.recopied.iter().cloned().collect();
    if !done.is_empty() {
        let differ = recheck_earlier_tables(s, db, &snapshot, state, &mut all, &done).await?;
        if !differ.is_empty() {
            // Sent before they are emptied, and saved at once: a run killed from here on
            // copies them again (and one killed before the save finds them different again).
            let _ = progress.send(Progress::TablesRecopying { database: db.to_string(), tables: differ.clone() });
            for table in differ {
                done.remove(&table);
                recopied.insert(table);
            }
        }
    }
    let todo: Vec<TableJob> = tables.into_iter().filter(|t| !done.contains(&key(t))).collect();
    let mut pipelined = super::pipeline::Done::default();
    if state.stage < Stage::DataCopied || !todo.is_empty() {
        let _ = progress.send(Progress::DatabaseStarted {
            database: db.to_string(),
            tables_total: todo.len(),
            bytes_total: todo.iter().map(|t| t.size.max(0) as u64).sum(),
            snapshot: slot_snapshot.clone().unwrap_or_else(|| snapshot.clone()),
        });
        if resumed {
            // Post-data of an earlier run may be in place.
            clear_post_data_for_copy(s, db, &todo, state.stage).await?;
            // An interrupted copy may have left some rows of these tables behind.
            truncate(s.target, db, &todo).await?;
        }
        // A fresh copy builds each table's indexes and keys as soon as its data is in. A
        // resumed one leaves them to the restore after the copy, which drops and remakes
        // what an interrupted run may have built (`--clean`).
        let plan = if resumed {
            None
        } else {
            let keys = todo.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
            let entries = super::post_data::table_entries(&plain_archive(s, &post_data_file).await?, &keys);
            // Online, the target's tables move on with the stream: verified at the cutover,
            // and their foreign keys added after the copy, as before.
            let offline = slot_snapshot.is_none();
            Some(super::pipeline::Plan {
                entries: entries.by_table,
                verify: offline,
                split_bytes: if s.inventory.target.version_num >= 140000 { s.split_bytes } else { 0 },
                foreign_keys: if offline { entries.foreign_keys } else { Vec::new() },
            })
        };
        let copied;
        (copied, pipelined) = copy_tables(s, db, &snapshot, split_big_tables(todo, s.split_bytes, s.jobs, version), plan, progress).await?;
        // The parts of a split table add up to its digest.
        let mut digests: std::collections::HashMap<(String, String), Digest> = std::collections::HashMap::new();
        for part in copied {
            let sum = digests.entry((part.schema, part.name)).or_default();
            *sum = sum.combine(part.digest);
        }
        for table in &mut all {
            if let Some(digest) = digests.get(&(table.schema.clone(), table.name.clone())) {
                table.source = Some(*digest);
            }
        }
    }
    // Every run copies the large objects at its own snapshot: a resumed one as well, since
    // an earlier run's copy of them is as old as that run's snapshot.
    let large_objects = copy_large_objects(&coordinator, s.target, db, resumed).await?;
    if state.stage < Stage::DataCopied {
        copy_extension_config(&coordinator, s.target, db).await?;
        stage(Stage::DataCopied);
    }
    let post_data = Some(PostData { file: post_data_file, built: pipelined.built, foreign_keys: pipelined.foreign_keys });
    let landed = pipelined.landed;
    Ok(CopiedDatabase { name: db.to_string(), coordinator, snapshot, tables: all, large_objects, recopied: recopied.into_iter().collect(), dump_dir, post_data, landed })
}

/// A resumed run's check of the tables earlier runs finished (`done`), each copied at its
/// run's snapshot: the source at this run's snapshot and the target are digested side by
/// side. A table that matches keeps its copy and is verified against the source digest
/// taken here (set in `all`); the ones that differ are returned, to be copied again. A target
/// table that differs is overwritten too: the database is this migration's own, and a
/// difference there (rows lost by a crash of the target, which the copy writes with
/// synchronous_commit off, or a write nobody should have made yet) would otherwise fail
/// the verification with nothing left to do but start over.
async fn recheck_earlier_tables(
    s: &Settings<'_>,
    db: &str,
    snapshot: &str,
    state: &DatabaseState,
    all: &mut [TableToVerify],
    done: &std::collections::HashSet<String>,
) -> Result<Vec<String>> {
    let earlier: Vec<TableToVerify> = all.iter().filter(|t| done.contains(&format!("{}.{}", t.schema, t.name))).cloned().collect();
    let compared = super::completing_migration::compare_tables(s, db, snapshot, &earlier)
        .await
        .with_context(|| format!("checking the tables an earlier run copied of database {db:?} against the source at this run's snapshot"))?;
    let mut differ = Vec::new();
    for c in compared {
        if c.source == c.target {
            if let Some(table) = all.iter_mut().find(|t| format!("{}.{}", t.schema, t.name) == c.table) {
                table.source = Some(c.source);
            }
            continue;
        }
        // The earlier copy's digest tells which side moved.
        let side = match state.digests.get(&c.table) {
            Some(copied) if copied.digest == c.target => "on the source",
            Some(copied) if copied.digest == c.source => "on the target",
            _ => "",
        };
        tracing::info!("{db}: {} changed {side} since an earlier run copied it ({} rows on the source, {} on the target); copying it again", c.table, c.source.rows, c.target.rows);
        differ.push(c.table);
    }
    differ.sort();
    Ok(differ)
}

/// Before a resumed run copies tables again, what an earlier run made of post-data goes,
/// for the restore after the copy to make it anew (`--clean`):
/// - its foreign keys: they would refuse the TRUNCATE and a copy in any order;
/// - before DataCopied, the indexes and keys the per-table pipeline built: it builds a key as
///   a unique index and attaches it after, and a run killed in between leaves an index
///   that `--clean` does not know of, whose name the key's restore would find taken;
/// - at DataCopied, the tables' own triggers are disabled: they would fire on the copied rows.
async fn clear_post_data_for_copy(s: &Settings<'_>, db: &str, tables: &[TableJob], stage: Stage) -> Result<()> {
    let (target, _) = s.target.connect(db).await?;
    let clearing = |what: &str| format!("dropping the {what} of database {db:?} on the {} to copy tables again", s.target.describe());
    drop_foreign_keys(&target, &Default::default()).await.with_context(|| clearing("foreign keys"))?;
    if stage < Stage::DataCopied {
        // Parents' keys and indexes take their partitions' along; extensions' stay.
        let drops = target
            .query(
                "with ours as (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                                where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
                                  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e'))
                 select format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', k.conrelid::regclass, k.conname) from pg_constraint k
                  where k.contype in ('p', 'u', 'x') and k.conparentid = 0 and k.conrelid in (select oid from ours)
                 union all
                 select format('DROP INDEX IF EXISTS %s', i.indexrelid::regclass) from pg_index i
                  where i.indrelid in (select oid from ours) and i.indexrelid in (select oid from ours)
                    and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid and k.contype in ('p', 'u', 'x'))
                    and not exists (select 1 from pg_inherits h where h.inhrelid = i.indexrelid)",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!(pg_error(&e)))
            .with_context(|| clearing("indexes and keys"))?;
        for drop in drops {
            target.batch_execute(drop.get::<_, &str>(0)).await.map_err(|e| anyhow::anyhow!(pg_error(&e))).with_context(|| clearing("indexes and keys"))?;
        }
        return Ok(());
    }
    for t in tables {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        target
            .batch_execute(&format!("ALTER TABLE ONLY {table} DISABLE TRIGGER USER"))
            .await
            .map_err(|e| anyhow::anyhow!(pg_error(&e)))
            .with_context(|| format!("disabling the triggers of {}.{} in database {db:?} on the {} to copy it again", t.schema, t.name, s.target.describe()))?;
    }
    Ok(())
}

/// Drops every foreign key of the database `target` is connected to (one on a partition
/// goes with its parent's) but those in `keep` (`(schema, table, name)`).
async fn drop_foreign_keys(target: &Client, keep: &std::collections::BTreeSet<(String, String, String)>) -> Result<()> {
    let fks = target
        .query(
            "select n.nspname::text, c.relname::text, k.conname::text, format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname)
               from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
              where k.contype = 'f' and k.conparentid = 0",
            &[],
        )
        .await?;
    for fk in fks {
        if keep.contains(&(fk.get(0), fk.get(1), fk.get(2))) {
            continue;
        }
        target.batch_execute(fk.get::<_, &str>(3)).await.map_err(|e| anyhow::anyhow!(pg_error(&e)))?;
    }
    Ok(())
}

/// Rows users added to extensions' configuration tables (a custom SRID in PostGIS's
/// spatial_ref_sys): `CREATE EXTENSION` on the target made the defaults, these are the rest,
/// selected by the extension's own condition as pg_dump does; its sequences follow.
async fn copy_extension_config(coordinator: &Client, target: &ConnSpec, db: &str) -> Result<()> {
    let configs = coordinator
        .query(
            "select format('%I.%I', n.nspname, c.relname), c.relkind::text, coalesce(x.cond, '')
               from pg_extension e cross join lateral unnest(e.extconfig, e.extcondition) as x(cfg, cond)
               join pg_class c on c.oid = x.cfg join pg_namespace n on n.oid = c.relnamespace
              where e.extconfig is not null",
            &[],
        )
        .await
        .context("listing extension configuration tables")?;
    if configs.is_empty() {
        return Ok(());
    }
    let (dst, _) = target.connect(db).await?;
    for row in configs {
        let (table, kind, condition): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        if kind == "S" {
            let state = coordinator.query_one(&format!("select last_value, is_called from {table}"), &[]).await?;
            dst.execute("select setval($1::text::regclass, $2, $3)", &[&table, &state.get::<_, i64>(0), &state.get::<_, bool>(1)]).await?;
            continue;
        }
        let out = coordinator.copy_out(&format!("COPY (SELECT * FROM ONLY {table} {condition}) TO STDOUT")).await?;
        let sink = dst.copy_in(&format!("COPY {table} FROM STDIN")).await?;
        futures_util::pin_mut!(out);
        futures_util::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            sink.send(chunk?).await.map_err(|e| anyhow::anyhow!("copying extension configuration table {table}: {}", pg_error(&e)))?;
        }
        sink.finish().await.map_err(|e| anyhow::anyhow!("copying extension configuration table {table}: {}", pg_error(&e)))?;
    }
    Ok(())
}

async fn truncate(target: &ConnSpec, db: &str, tables: &[TableJob]) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let (client, _) = target.connect(db).await?;
    let list: Vec<String> = tables.iter().map(|t| format!("ONLY {}.{}", quote_ident(&t.schema), quote_ident(&t.name))).collect();
    client.batch_execute(&format!("TRUNCATE {}", list.join(", "))).await.with_context(|| format!("emptying the unfinished tables of database {db:?} on the target"))
}

#[cfg(test)]
mod tests {
    use super::is_pgferry_publication;

    #[test]
    fn only_pgferry_publications_are_left_out_of_the_restore() {
        for ours in [
            "3351; 6104 16390 PUBLICATION - pgferry_1_0 postgres",
            "3352; 6106 16391 PUBLICATION TABLE public pgferry_12_3 pgbench_accounts -",
            "3353; 6237 16392 PUBLICATION TABLES IN SCHEMA - pgferry_1_0 s2 -",
        ] {
            assert!(is_pgferry_publication(ours), "{ours}");
        }
        for theirs in [
            "3354; 6104 16393 PUBLICATION - mypub postgres",
            "3355; 6106 16394 PUBLICATION TABLE s2 mypub pgferry_1_0 -",
            "3356; 6104 16395 PUBLICATION - pgferry_audit postgres",
            "3357; 1259 16396 TABLE public pgferry_1_0 postgres",
            "3358; 2606 16397 CONSTRAINT public t t_pkey postgres",
        ] {
            assert!(!is_pgferry_publication(theirs), "{theirs}");
        }
    }
}
