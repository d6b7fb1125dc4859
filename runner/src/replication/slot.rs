//! The source side of an online migration: a publication of the migrated tables and a
//! logical replication slot (pgoutput) created with an exported snapshot, which the base
//! copy reads at, so that nothing is missed or doubled between the copy and the stream.
//! Both are dropped at cutover, on cancel and on failure: a dead slot keeps WAL forever.

use std::time::Duration;

use anyhow::{Context, Result};
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationConfig};

use super::{Lsn, Names};
use crate::connect::{pg_error, ConnSpec};
use crate::migration::migrating_data::{quote_ident, quote_literal};

/// How long slot creation may wait for the transactions open on the source to end.
const SLOT_CREATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of the replication session, from the same connection spec as every other
/// connection to the source (libpq environment, ~/.pgpass and TLS included).
pub async fn replication_config(source: &ConnSpec, db: &str, names: &Names, start: Lsn) -> Result<ReplicationConfig> {
    let password = source.password_for(db).map(|p| p.expose().to_string()).unwrap_or_default();
    let tls = source.replication_tls(db).await?;
    Ok(ReplicationConfig::new(source.host.clone(), source.user.clone(), password, db, names.slot.clone(), names.publication.clone())
        .with_port(source.port)
        .with_tls(tls)
        .with_start_lsn(WireLsn(start))
        .with_status_interval(Duration::from_millis(500))
        .with_application_name(format!("pgferry {}", names.slot))
        .with_options(crate::migration::copy_digest::stable_text_options()))
}

/// Publishes the tables the base copy copies: permanent leaf tables outside the provider's
/// schemas and extensions (partitions are published as themselves, as they are copied).
pub async fn create_publication(source: &ConnSpec, db: &str, names: &Names, provider_schemas: &[String]) -> Result<usize> {
    let (client, _) = source.connect(db).await?;
    let tables: Vec<String> = client
        .query(
            "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'r' and c.relpersistence = 'p'
                and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
                and n.nspname::text <> all($1::text[])
                and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
              order by 1",
            &[&provider_schemas],
        )
        .await
        .context("listing the tables to publish")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sql = format!("CREATE PUBLICATION {}", quote_ident(&names.publication));
    if !tables.is_empty() {
        sql.push_str(&format!(" FOR TABLE {}", tables.join(", ")));
    }
    client.batch_execute(&sql).await.map_err(|e| {
        anyhow::anyhow!(
            "creating publication {} in database {db:?} on the {}: {}; the source user needs to own the tables (or be a superuser)",
            names.publication,
            source.describe(),
            pg_error(&e)
        )
    })?;
    Ok(tables.len())
}

/// Gives the published tables that lack one a replica identity (the user consented with
/// `SetReplicaIdentity`): USING a unique index on NOT NULL columns when there is one, else
/// FULL. Returns each changed table with its former setting, to restore it afterwards.
pub async fn set_replica_identities(source: &ConnSpec, db: &str, provider_schemas: &[String]) -> Result<Vec<(String, String)>> {
    let (client, _) = source.connect(db).await?;
    let rows = client
        .query(
            "select format('%I.%I', n.nspname, c.relname), c.relreplident::text,
                    (select format('%I', i.relname) from pg_index x join pg_class i on i.oid = x.indexrelid
                      where x.indrelid = c.oid and x.indisunique and x.indisvalid and x.indimmediate
                        and x.indpred is null and x.indexprs is null
                        and not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attnum = any(x.indkey) and not a.attnotnull)
                      order by x.indnkeyatts, i.relname limit 1)
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'r' and c.relpersistence = 'p'
                and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
                and n.nspname::text <> all($1::text[])
                and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
                and (c.relreplident = 'n' or (c.relreplident = 'd' and not exists (select 1 from pg_constraint k where k.conrelid = c.oid and k.contype = 'p')))",
            &[&provider_schemas],
        )
        .await
        .context("listing the tables without a replica identity")?;
    let mut changed = Vec::new();
    for row in rows {
        let (table, former, index): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let identity = index.map(|i| format!("USING INDEX {i}")).unwrap_or_else(|| "FULL".into());
        client
            .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY {identity}"))
            .await
            .map_err(|e| anyhow::anyhow!("setting REPLICA IDENTITY {identity} on table {table} in database {db:?} on the {}: {}", source.describe(), pg_error(&e)))?;
        changed.push((table, former));
    }
    Ok(changed)
}

/// Puts back the replica identities `set_replica_identities` changed (best effort: a table
/// dropped since is skipped).
pub async fn restore_replica_identities(source: &ConnSpec, db: &str, changed: &[(String, String)]) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let client = writable(source, db).await?;
    for (table, former) in changed {
        let identity = if former == "n" { "NOTHING" } else { "DEFAULT" };
        if let Err(e) = client.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY {identity}")).await {
            tracing::warn!("restoring REPLICA IDENTITY {identity} on table {table} in database {db:?}: {}", pg_error(&e));
        }
    }
    Ok(())
}

/// A replication session that has just created the slot; the snapshot it exported lives
/// until the session's next command, so keep it until the copy has adopted the snapshot.
pub struct CreatedSlot {
    pub session: ReplicationClient,
    pub snapshot: String,
    /// Changes committed after this are streamed; before it, the snapshot has them.
    pub consistent_point: Lsn,
}

pub async fn create_slot(source: &ConnSpec, db: &str, names: &Names) -> Result<CreatedSlot> {
    let what = || format!("replication slot {} for database {db:?} on the {}", names.slot, source.describe());
    let mut session = tokio::time::timeout(source.connect_timeout * 3, ReplicationClient::connect_gated(replication_config(source, db, names, 0).await?))
        .await
        .map_err(|_| anyhow::anyhow!("opening a replication connection for {}: no answer; check pg_hba.conf allows a replication connection to this database", what()))?
        .map_err(|e| anyhow::anyhow!("opening a replication connection for {}: {e}; the source user needs the REPLICATION attribute (or the provider's replication role) and pg_hba.conf must allow it", what()))?;
    // EXPORT_SNAPSHOT is the spelling every supported version accepts (PostgreSQL 15 added
    // an option list, keeping this one).
    let command = format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT", names.slot);
    let rows = tokio::time::timeout(SLOT_CREATION_TIMEOUT, session.simple_query(&command))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "creating {}: still waiting after {:?} for transactions open on the source to end (a slot's snapshot needs them finished); end them (see pg_stat_activity) and retry",
                what(),
                SLOT_CREATION_TIMEOUT
            )
        })?
        .with_context(|| format!("creating {}", what()))?;
    let row = rows.first().with_context(|| format!("creating {}: the server returned no row", what()))?;
    let text = |i: usize| row.get(i).and_then(|v| v.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned());
    let consistent_point = text(1).and_then(|s| super::pgoutput::parse_lsn(&s)).with_context(|| format!("creating {}: no consistent point in the answer", what()))?;
    let snapshot = text(2).with_context(|| format!("creating {}: no exported snapshot in the answer", what()))?;
    Ok(CreatedSlot { session, snapshot, consistent_point })
}

/// Drops the slot and the publication when they exist (idempotent: cancel, failure and
/// cutover all call it). A slot still held by a walsender (a runner that died a moment
/// ago) is released first.
pub async fn drop_slot_and_publication(source: &ConnSpec, db: &str, names: &Names) -> Result<()> {
    let client = writable(source, db).await?;
    for attempt in 0..20 {
        let row = client.query_opt("select active_pid from pg_replication_slots where slot_name = $1", &[&names.slot]).await?;
        let Some(row) = row else { break };
        if let Some(pid) = row.get::<_, Option<i32>>(0) {
            client.execute("select pg_terminate_backend($1)", &[&pid]).await?;
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            continue;
        }
        match client.execute("select pg_drop_replication_slot($1)", &[&names.slot]).await {
            Ok(_) => break,
            // Taken again between the check and the drop: look again.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => continue,
            Err(e) => anyhow::bail!("dropping replication slot {} on the {}: {}", names.slot, source.describe(), pg_error(&e)),
        }
    }
    if let Some(row) = client.query_opt("select active_pid from pg_replication_slots where slot_name = $1", &[&names.slot]).await? {
        let pid: Option<i32> = row.get(0);
        anyhow::bail!(
            "replication slot {} in database {db:?} on the {} is still there{}: it keeps WAL on the source; drop it with `select pg_drop_replication_slot('{}')` once nothing uses it",
            names.slot,
            source.describe(),
            pid.map(|p| format!(", held by process {p}")).unwrap_or_default(),
            names.slot
        );
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&names.publication)))
        .await
        .map_err(|e| anyhow::anyhow!("dropping publication {} in database {db:?} on the {}: {}", names.publication, source.describe(), pg_error(&e)))?;
    Ok(())
}

/// A session that may write even in a database made read-only by `--read-only-source`.
async fn writable(source: &ConnSpec, db: &str) -> Result<tokio_postgres::Client> {
    let (client, _) = source.connect(db).await?;
    client.batch_execute("SET default_transaction_read_only = off").await?;
    Ok(client)
}

/// Writes the cutover fence into the source's WAL for one database: a transactional
/// logical message carrying the migration's token. Returns its LSN.
pub async fn emit_fence(source: &ConnSpec, db: &str, token: &str) -> Result<Lsn> {
    let (client, _) = source.connect(db).await?;
    let row = client
        .query_one(&format!("select pg_logical_emit_message(true, {}, $1::text)::text", quote_literal(super::FENCE_PREFIX)), &[&token])
        .await
        .map_err(|e| crate::connect::pg_failure(source.role, &e, format!("writing the cutover fence in database {db:?} on the {}", source.describe())))?;
    let lsn: String = row.get(0);
    super::pgoutput::parse_lsn(&lsn).with_context(|| format!("the fence's LSN {lsn:?} does not parse"))
}
