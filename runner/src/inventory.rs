//! The inventory: what the runner knows of both servers, collected once per run in
//! PerformingPreRequisiteSteps and handed to plugins through the contract's types.
//!
//! How it is collected, and why:
//! - **Catalog queries, one per section.** Each part of [`ServerInfo`] / [`DatabaseInfo`]
//!   (settings, roles, tables, …) is one SQL statement; per-table detail (columns, index
//!   facts, partition parent) is folded into the table query with correlated subqueries and
//!   `array_agg(… ORDER BY attnum)` instead of one query per table, so a database with
//!   10,000 tables costs the same handful of round trips as one with ten. After the
//!   version probe the sections run concurrently on the one connection, which
//!   tokio-postgres pipelines, so latency is paid about once, not once per section.
//! - **Columns as parallel arrays** (`text[]`, `bool[]`) rather than JSON: they decode with
//!   tokio-postgres' built-in types, keep SQL NULL distinct from an empty string, and need
//!   no extra feature of the driver.
//! - **PostgreSQL 9.5 to 18.** The statements are assembled from fixed fragments chosen by
//!   `server_version_num` (never from catalog data): `relhasoids` before 12,
//!   `attgenerated` from 12, `attidentity`/`relispartition`/`collprovider` from 10,
//!   `indnkeyatts` from 11, `datlocprovider` from 15 with the ICU locale in `daticulocale`
//!   (15–16) or `datlocale` (17+).
//! - **Quote safety.** Every identifier is read from the catalogs as text and never
//!   spliced into SQL; the only values sent to the server are bind parameters.
//! - **Names.** Relations and partition parents are reported unquoted as `schema.name`
//!   (the form findings use for `object`); column collations by their bare name, with the
//!   schema in `collations-used`.
//! - **No snapshot across sections.** Each statement runs in its own implicit
//!   transaction, so locks taken by `pg_total_relation_size` are released as it goes and
//!   nothing is held open on the source; an object created between two sections may show
//!   in one and not the other, which is acceptable for a pre-migration check.
//! - **Cost.** Most of the time for a large database goes to `pg_total_relation_size`,
//!   which opens every table, TOAST table and index (relcache entries are built per
//!   backend, so a fresh connection pays most): of ~2.3 s for 10,000 tables with a
//!   primary key and a TOAST table each (fresh connection, 2-core VM), ~1.5 s is sizes and
//!   ~0.4 s the rest of the tables statement. `relpages` would be free but is stale until
//!   VACUUM/ANALYZE.
//! - **"System" schemas** are `pg_catalog`, `information_schema`, `pg_toast*` and
//!   `pg_temp_*`; objects that belong to an extension (a `pg_depend` row of type `e`) are
//!   left out of tables, casts and owner counts, since `CREATE EXTENSION` recreates them.

use anyhow::Context;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::plugin_host::{
    AvailableExtension, CastInfo, CollationInfo, ColumnInfo, DatabaseInfo, DatabaseSummary,
    ExtensionInfo, LanguageInfo, RelationKind, ReplicaIdentity, RoleInfo, SchemaInfo, ServerInfo,
    Setting, Side, TableInfo,
};

/// The container lives with the plugin host, which hands it to plugins; this module fills it.
pub use crate::plugin_host::Inventory;

/// Settings every inventory carries (what contract 0.1.0 plugins were given, and what the
/// generic rules read), from `pg_settings` when the server has them. Whatever else a plugin
/// reads, it declares in its manifest (`inventory-settings`): a provider's own settings
/// come from its source adapter, never from here.
const BASE_SETTINGS: &[&str] = &[
    "wal_level",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "max_logical_replication_workers",
    "max_slot_wal_keep_size",
    "wal_sender_timeout",
    "logical_decoding_work_mem",
    "shared_preload_libraries",
    "server_encoding",
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "default_transaction_read_only",
    "password_encryption",
    "idle_in_transaction_session_timeout",
    "ssl",
];

/// The `pg_settings` part of the settings statement: the names (`$1`) and every setting
/// starting with one of the prefixes (`$2`).
const SETTINGS_SQL: &str = "\
    SELECT name::text, coalesce(setting, ''), coalesce(unit, '') FROM pg_settings \
    WHERE name = ANY($1::text[]) \
       OR EXISTS (SELECT 1 FROM unnest($2::text[]) AS p(prefix) \
                  WHERE left(name, length(p.prefix)) = p.prefix)";

/// What the settings statement reads: the names (base and declared), the declared
/// prefixes (`prefix*`), and the declared names, which are also probed as placeholders.
fn settings_to_read(declared: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (prefixes, probed): (Vec<&String>, Vec<&String>) = declared.iter().partition(|e| e.ends_with('*'));
    let prefixes: Vec<String> = prefixes.iter().map(|p| p.trim_end_matches('*').to_string()).collect();
    let probed: Vec<String> = probed.into_iter().cloned().collect();
    let mut names: Vec<String> = BASE_SETTINGS.iter().map(|s| s.to_string()).chain(probed.iter().cloned()).collect();
    names.sort();
    names.dedup();
    (names, prefixes, probed)
}

/// FirstNormalObjectId: oids below it were assigned by initdb (built-in objects).
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Source => "source",
        Side::Target => "target",
    }
}

/// SQL predicate: the schema aliased `alias` is not a system one.
fn user_schema(alias: &str) -> String {
    format!(
        "({alias}.nspname <> 'pg_catalog' AND {alias}.nspname <> 'information_schema' \
         AND left({alias}.nspname, 8) <> 'pg_toast' AND left({alias}.nspname, 8) <> 'pg_temp_')"
    )
}

/// SQL predicate: the object `oid_expr` of catalog `catalog` is not an extension member.
fn not_extension_member(catalog: &str, oid_expr: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = '{catalog}'::regclass \
         AND dep.objid = {oid_expr} AND dep.deptype = 'e')"
    )
}

/// SQL expression: the provider of the collation aliased `alias`, as text.
fn collation_provider(alias: &str, v: i32) -> String {
    if v >= 100_000 {
        format!(
            "CASE {alias}.collprovider WHEN 'd' THEN 'default' WHEN 'c' THEN 'libc' \
             WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE {alias}.collprovider::text END"
        )
    } else {
        format!("CASE WHEN {alias}.oid = 100 THEN 'default' ELSE 'libc' END")
    }
}

/// SQL select list of a `CollationInfo` for collation `co` in schema `cn`.
fn collation_columns(v: i32) -> String {
    format!(
        "cn.nspname::text, co.collname::text, {}, co.collcollate::text, co.collctype::text, \
         CASE WHEN co.collencoding = -1 THEN '-1' \
              ELSE pg_encoding_to_char(co.collencoding)::text END",
        collation_provider("co", v)
    )
}

fn collation_from_row(row: &Row) -> anyhow::Result<CollationInfo> {
    Ok(CollationInfo {
        schema: row.try_get(0)?,
        name: row.try_get(1)?,
        provider: row.try_get(2)?,
        collate: row.try_get(3)?,
        ctype: row.try_get(4)?,
        encoding: row.try_get(5)?,
    })
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Runs one section's statement and maps its rows; any failure (the query or decoding a
/// row) carries `context`.
async fn section<T>(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    context: impl FnOnce() -> String,
    map: impl FnMut(&Row) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let result = match client.query(sql, params).await {
        Ok(rows) => rows.iter().map(map).collect(),
        Err(e) => Err(e.into()),
    };
    result.with_context(context)
}

/// As [`section`], for a statement returning exactly one row.
async fn section_one<T>(
    client: &Client,
    sql: &str,
    context: impl FnOnce() -> String,
    map: impl FnOnce(&Row) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let result = match client.query_one(sql, &[]).await {
        Ok(row) => map(&row),
        Err(e) => Err(e.into()),
    };
    result.with_context(context)
}

/// Instance-level inventory of one server, from a connection to any database on it.
/// `declared_settings`: the settings the loaded plugins declare they read
/// ([`crate::plugins::Registry::inventory_settings`]), read besides the base ones.
///
/// `host` and `port` are recorded as given (they name the server in findings). The
/// collations are those of the connected database: `pg_collation` is per database, and
/// every database starts as a copy of the same template.
pub async fn collect_server(
    client: &Client,
    side: Side,
    host: &str,
    port: u16,
    declared_settings: &[String],
) -> anyhow::Result<ServerInfo> {
    let side_name = side_name(side);
    let ctx = |what: &'static str| move || format!("collecting {what} of the {side_name} server");

    let (v, version, current_user) = section_one(
        client,
        "SELECT current_setting('server_version_num')::int, \
                current_setting('server_version'), current_user::text",
        ctx("the version"),
        |r| {
            Ok((
                r.try_get::<_, i32>(0)?,
                r.try_get::<_, String>(1)?,
                r.try_get::<_, String>(2)?,
            ))
        },
    )
    .await?;

    let (names, prefixes, probed) = settings_to_read(declared_settings);
    let settings = async {
        let mut settings = section(
            client,
            &format!("{SETTINGS_SQL} ORDER BY 1"),
            &[&names, &prefixes],
            ctx("settings"),
            |r| {
                Ok(Setting {
                    name: r.try_get(0)?,
                    value: r.try_get(1)?,
                    unit: r.try_get(2)?,
                })
            },
        )
        .await?;
        // Placeholders (a provider setting whose module is not loaded, or set by the
        // provider without one) are hidden from pg_settings but readable by name (9.6+;
        // on 9.5 a provider's settings are real GUCs, in pg_settings). One statement per
        // name: a setting this login may not read (a superuser-only one) fails alone and
        // is left out, so no plugin's declaration can break the inventory.
        let missing: Vec<&String> = probed.iter().filter(|n| !settings.iter().any(|s| &&s.name == n)).collect();
        if v >= 90_600 && !missing.is_empty() {
            for name in missing {
                match client.query_one("SELECT current_setting($1, true)", &[name]).await {
                    Ok(row) => {
                        if let Some(value) = row.try_get::<_, Option<String>>(0)? {
                            settings.push(Setting { name: name.clone(), value, unit: String::new() });
                        }
                    }
                    Err(e) => tracing::warn!("the {side_name} server's setting {name:?}, which a plugin reads, is not readable by this login and is left out: {e}"),
                }
            }
            settings.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok::<_, anyhow::Error>(settings)
    };

    let roles = section(
        client,
        "SELECT r.rolname::text, r.rolsuper, r.rolcanlogin, r.rolreplication, \
                r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, \
                ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m \
                      JOIN pg_roles g ON g.oid = m.roleid \
                      WHERE m.member = r.oid ORDER BY 1) \
         FROM pg_roles r ORDER BY 1",
        &[],
        ctx("roles"),
        |r| {
            Ok(RoleInfo {
                name: r.try_get(0)?,
                superuser: r.try_get(1)?,
                can_login: r.try_get(2)?,
                replication: r.try_get(3)?,
                create_role: r.try_get(4)?,
                create_db: r.try_get(5)?,
                bypass_rls: r.try_get(6)?,
                member_of: r.try_get(7)?,
            })
        },
    );

    let (provider, icu_locale) = if v >= 170_000 {
        (
            "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END",
            "CASE WHEN d.datlocprovider = 'i' THEN d.datlocale::text END",
        )
    } else if v >= 150_000 {
        (
            "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END",
            "d.daticulocale::text",
        )
    } else {
        ("'libc'", "NULL::text")
    };
    // pg_database_size needs CONNECT on the database (or pg_read_all_stats); asking
    // without it would fail the whole statement.
    let databases_sql = format!(
        "SELECT d.datname::text, pg_get_userbyid(d.datdba)::text, \
                pg_encoding_to_char(d.encoding)::text, \
                coalesce(d.datcollate::text, ''), coalesce(d.datctype::text, ''), \
                {provider}, {icu_locale}, \
                CASE WHEN has_database_privilege(d.oid, 'CONNECT') \
                     THEN coalesce(pg_database_size(d.oid), 0) ELSE 0 END, \
                d.datistemplate, d.datallowconn \
         FROM pg_database d ORDER BY 1"
    );
    let databases = section(client, &databases_sql, &[], ctx("databases"), |r| {
        Ok(DatabaseSummary {
            name: r.try_get(0)?,
            owner: r.try_get(1)?,
            encoding: r.try_get(2)?,
            collate: r.try_get(3)?,
            ctype: r.try_get(4)?,
            locale_provider: r.try_get(5)?,
            icu_locale: r.try_get(6)?,
            size_bytes: to_u64(r.try_get(7)?),
            is_template: r.try_get(8)?,
            allow_connections: r.try_get(9)?,
        })
    });

    let available_extensions = section(
        client,
        "SELECT name::text, default_version, installed_version \
         FROM pg_available_extensions ORDER BY 1",
        &[],
        ctx("available extensions"),
        |r| {
            Ok(AvailableExtension {
                name: r.try_get(0)?,
                default_version: r.try_get(1)?,
                installed_version: r.try_get(2)?,
            })
        },
    );

    let collations_sql = format!(
        "SELECT {} FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace \
         ORDER BY 1, 2",
        collation_columns(v)
    );
    let collations = section(
        client,
        &collations_sql,
        &[],
        ctx("collations"),
        collation_from_row,
    );

    let activity = section_one(
        client,
        "SELECT (SELECT count(*) FROM pg_replication_slots), \
                (SELECT count(*) FROM pg_stat_replication), \
                (SELECT count(*) FROM pg_prepared_xacts), \
                coalesce((SELECT floor(extract(epoch FROM max(now() - xact_start)))::bigint \
                          FROM pg_stat_activity \
                          WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()), 0)",
        ctx("replication slots, WAL senders and open transactions"),
        |r| {
            Ok((
                to_u32(r.try_get(0)?),
                to_u32(r.try_get(1)?),
                to_u32(r.try_get(2)?),
                to_u64(r.try_get(3)?),
            ))
        },
    );

    let (settings, roles, databases, available_extensions, collations, activity) = futures_util::try_join!(
        settings,
        roles,
        databases,
        available_extensions,
        collations,
        activity
    )?;
    let (replication_slots_used, wal_senders_used, prepared_xacts, oldest_xact_age_seconds) =
        activity;

    Ok(ServerInfo {
        side,
        host: host.to_owned(),
        port,
        version_num: u32::try_from(v).unwrap_or(0),
        version,
        current_user,
        settings,
        roles,
        databases,
        available_extensions,
        collations,
        replication_slots_used,
        wal_senders_used,
        prepared_xacts,
        oldest_xact_age_seconds,
    })
}

/// Inventory of one database, from a connection to that database.
///
/// `name` labels the result (and error messages); the catalogs read are those of the
/// database `client` is connected to.
pub async fn collect_database(client: &Client, name: &str) -> anyhow::Result<DatabaseInfo> {
    let ctx = |what: &'static str| move || format!("collecting {what} of database {name}");
    let v = section_one(
        client,
        "SELECT current_setting('server_version_num')::int",
        ctx("the server version"),
        |r| Ok(r.try_get::<_, i32>(0)?),
    )
    .await?;

    let schemas_sql = format!(
        "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n \
         WHERE {} ORDER BY 1",
        user_schema("n")
    );
    let schemas = section(client, &schemas_sql, &[], ctx("schemas"), |r| {
        Ok(SchemaInfo {
            name: r.try_get(0)?,
            owner: r.try_get(1)?,
        })
    });

    let extensions = section(
        client,
        "SELECT e.extname::text, e.extversion::text, n.nspname::text \
         FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
        &[],
        ctx("extensions"),
        |r| {
            Ok(ExtensionInfo {
                name: r.try_get(0)?,
                version: r.try_get(1)?,
                schema: r.try_get(2)?,
            })
        },
    );

    let tables_sql = tables_sql(v);
    let tables = section(client, &tables_sql, &[], ctx("tables"), table_from_row);

    let collations_used_sql = format!(
        "WITH used AS ( \
           SELECT a.attcollation AS coll FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attcollation <> 0 AND {ns} \
           UNION \
           SELECT u.coll FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS u(coll) \
            WHERE u.coll <> 0 AND {ns}) \
         SELECT {cols} FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace \
          WHERE co.oid <> 100 AND co.oid IN (SELECT coll FROM used) ORDER BY 1, 2",
        ns = user_schema("n"),
        cols = collation_columns(v)
    );
    let collations_used = section(
        client,
        &collations_used_sql,
        &[],
        ctx("collations used"),
        collation_from_row,
    );

    let languages = section(
        client,
        "SELECT l.lanname::text, l.lanpltrusted, pg_get_userbyid(l.lanowner)::text \
         FROM pg_language l WHERE l.lanname NOT IN ('internal', 'c', 'sql') ORDER BY 1",
        &[],
        ctx("languages"),
        |r| {
            Ok(LanguageInfo {
                name: r.try_get(0)?,
                trusted: r.try_get(1)?,
                owner: r.try_get(2)?,
            })
        },
    );

    let casts_sql = format!(
        "SELECT format_type(c.castsource, NULL), format_type(c.casttarget, NULL), \
                CASE WHEN c.castfunc <> 0 THEN c.castfunc::regprocedure::text END \
         FROM pg_cast c WHERE c.oid >= {FIRST_NORMAL_OBJECT_ID} AND {} ORDER BY 1, 2",
        not_extension_member("pg_cast", "c.oid")
    );
    let user_casts = section(client, &casts_sql, &[], ctx("user-defined casts"), |r| {
        Ok(CastInfo {
            source_type: r.try_get(0)?,
            target_type: r.try_get(1)?,
            function: r.try_get(2)?,
        })
    });

    let large_object_count = section_one(
        client,
        "SELECT count(*) FROM pg_largeobject_metadata",
        ctx("large objects"),
        |r| Ok(to_u64(r.try_get(0)?)),
    );

    let owners_sql = owners_sql();
    let owners = section(client, &owners_sql, &[], ctx("object owners"), |r| {
        Ok((r.try_get::<_, String>(0)?, to_u32(r.try_get(1)?)))
    });

    let (
        schemas,
        extensions,
        tables,
        collations_used,
        languages,
        user_casts,
        large_object_count,
        owners,
    ) = futures_util::try_join!(
        schemas,
        extensions,
        tables,
        collations_used,
        languages,
        user_casts,
        large_object_count,
        owners
    )?;

    Ok(DatabaseInfo {
        name: name.to_owned(),
        schemas,
        extensions,
        tables,
        collations_used,
        languages,
        user_casts,
        large_object_count,
        owners,
    })
}

/// The tables query for server version `v`: one row per table with its columns as
/// parallel arrays ordered by attnum.
fn tables_sql(v: i32) -> String {
    let has_oids = if v < 120_000 { "c.relhasoids" } else { "false" };
    let partition_of = if v >= 100_000 {
        "CASE WHEN c.relispartition THEN \
           (SELECT pn.nspname::text || '.' || p.relname::text FROM pg_inherits inh \
              JOIN pg_class p ON p.oid = inh.inhparent \
              JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE inh.inhrelid = c.oid LIMIT 1) END"
    } else {
        "NULL::text"
    };
    // Only key columns must be NOT NULL; INCLUDE columns (11+) may be nullable.
    let key_atts = if v >= 110_000 {
        "i.indnkeyatts"
    } else {
        "i.indnatts"
    };
    let generated = if v >= 120_000 {
        "a.attgenerated::text"
    } else {
        "''::text"
    };
    let identity = if v >= 100_000 {
        "a.attidentity <> ''"
    } else {
        "false"
    };
    format!(
        "SELECT n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text, \
                c.relkind::text, c.relpersistence = 'u', {has_oids}, \
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                c.relreplident::text, \
                CASE WHEN c.relreplident = 'i' THEN \
                  (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                    WHERE i.indrelid = c.oid AND i.indisreplident LIMIT 1) END, \
                EXISTS (SELECT 1 FROM pg_index i \
                         WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid \
                           AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL \
                           AND NOT EXISTS ( \
                             SELECT 1 FROM generate_series(0, {key_atts} - 1) AS k(n) \
                               JOIN pg_attribute ka ON ka.attrelid = i.indrelid \
                                                   AND ka.attnum = i.indkey[k.n] \
                              WHERE NOT ka.attnotnull)), \
                {partition_of}, \
                greatest(c.reltuples::float8, 0)::bigint, \
                coalesce(pg_total_relation_size(c.oid), 0), \
                cols.names, cols.types, cols.generated, cols.identity, cols.collations \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN LATERAL ( \
           SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names, \
                  array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS types, \
                  array_agg({generated} ORDER BY a.attnum) AS generated, \
                  array_agg({identity} ORDER BY a.attnum) AS identity, \
                  array_agg(CASE WHEN a.attcollation NOT IN (0, 100) THEN \
                    (SELECT co.collname::text FROM pg_collation co WHERE co.oid = a.attcollation) \
                  END ORDER BY a.attnum) AS collations \
             FROM pg_attribute a \
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) cols ON true \
         WHERE c.relkind IN ('r', 'p', 'f', 'm') AND {ns} AND {not_ext} \
         ORDER BY 1, 2",
        ns = user_schema("n"),
        not_ext = not_extension_member("pg_class", "c.oid"),
    )
}

fn table_from_row(r: &Row) -> anyhow::Result<TableInfo> {
    let schema: String = r.try_get(0)?;
    let name: String = r.try_get(1)?;
    let relkind: String = r.try_get(3)?;
    let kind = match relkind.as_str() {
        "r" => RelationKind::Table,
        "p" => RelationKind::PartitionedTable,
        "f" => RelationKind::ForeignTable,
        "m" => RelationKind::MaterializedView,
        other => anyhow::bail!("{schema}.{name}: unexpected relkind {other:?}"),
    };
    let replident: String = r.try_get(7)?;
    let replica_identity = match replident.as_str() {
        "d" => ReplicaIdentity::Default,
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        other => anyhow::bail!("{schema}.{name}: unexpected relreplident {other:?}"),
    };
    // A relation without columns (`CREATE TABLE t ()`) aggregates to NULL arrays.
    let names: Vec<String> = r.try_get::<_, Option<_>>(13)?.unwrap_or_default();
    let types: Vec<String> = r.try_get::<_, Option<_>>(14)?.unwrap_or_default();
    let generated: Vec<String> = r.try_get::<_, Option<_>>(15)?.unwrap_or_default();
    let identity: Vec<bool> = r.try_get::<_, Option<_>>(16)?.unwrap_or_default();
    let collations: Vec<Option<String>> = r.try_get::<_, Option<_>>(17)?.unwrap_or_default();
    let n = names.len();
    if [
        types.len(),
        generated.len(),
        identity.len(),
        collations.len(),
    ]
    .iter()
    .any(|&l| l != n)
    {
        anyhow::bail!("{schema}.{name}: column arrays of different lengths");
    }
    let columns = names
        .into_iter()
        .zip(types)
        .zip(generated)
        .zip(identity)
        .zip(collations)
        .map(
            |((((name, type_name), generated), identity), collation)| ColumnInfo {
                name,
                type_name,
                generated,
                identity,
                collation,
            },
        )
        .collect();
    Ok(TableInfo {
        owner: r.try_get(2)?,
        kind,
        unlogged: r.try_get(4)?,
        has_oids: r.try_get(5)?,
        has_primary_key: r.try_get(6)?,
        replica_identity,
        replica_identity_index: r.try_get(8)?,
        has_unique_not_null_index: r.try_get(9)?,
        partition_of: r.try_get(10)?,
        row_estimate: to_u64(r.try_get(11)?),
        size_bytes: to_u64(r.try_get(12)?),
        columns,
        schema,
        name,
    })
}

/// Objects counted by owner, all outside the system schemas and not members of an
/// extension: relations (tables, views, sequences, …; not indexes or TOAST tables, whose
/// owner is their table's), functions, types users created (composite types count here,
/// not as relations; a table's row type and implicit array and multirange types do not
/// count), and schemas.
fn owners_sql() -> String {
    format!(
        "SELECT owner::text, count(*) FROM ( \
           SELECT pg_get_userbyid(c.relowner) AS owner FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.relkind NOT IN ('i', 'I', 't', 'c') AND {ns} AND {class_ext} \
           UNION ALL \
           SELECT pg_get_userbyid(p.proowner) FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
            WHERE {ns} AND {proc_ext} \
           UNION ALL \
           SELECT pg_get_userbyid(t.typowner) FROM pg_type t \
             JOIN pg_namespace n ON n.oid = t.typnamespace \
            WHERE {ns} AND {type_ext} AND t.typtype <> 'm' \
              AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class tc \
                                             WHERE tc.oid = t.typrelid AND tc.relkind = 'c')) \
              AND NOT (t.typelem <> 0 AND EXISTS (SELECT 1 FROM pg_type e \
                                                  WHERE e.oid = t.typelem AND e.typarray = t.oid)) \
           UNION ALL \
           SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE {ns} \
         ) o GROUP BY owner ORDER BY owner",
        ns = user_schema("n"),
        class_ext = not_extension_member("pg_class", "c.oid"),
        proc_ext = not_extension_member("pg_proc", "p.oid"),
        type_ext = not_extension_member("pg_type", "t.oid"),
    )
}
