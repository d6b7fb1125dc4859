//! Inventory collection (`pgferry::inventory`) against a real PostgreSQL server: every
//! kind of object the validation rules look at, and a database with many tables.

use std::time::Instant;

use anyhow::{Context, Result};
use pgferry::inventory::{collect_database, collect_server};
use pgferry::plugin_host::{DatabaseInfo, RelationKind, ReplicaIdentity, Side, TableInfo};
use pgferry_tests::Cluster;

fn table<'a>(db: &'a DatabaseInfo, schema: &str, name: &str) -> &'a TableInfo {
    db.tables
        .iter()
        .find(|t| t.schema == schema && t.name == name)
        .unwrap_or_else(|| {
            panic!(
                "table {schema}.{name} not in inventory: {:?}",
                db.tables
                    .iter()
                    .map(|t| format!("{}.{}", t.schema, t.name))
                    .collect::<Vec<_>>()
            )
        })
}

/// The objects of the varied database, all but the optional extension.
const SETUP_SQL: &str = r#"
CREATE ROLE app_owner LOGIN;
CREATE TABLE with_pk (id int PRIMARY KEY, label text COLLATE "C");
CREATE TABLE no_pk (x int, y text);
CREATE TABLE ri_full (x int);
ALTER TABLE ri_full REPLICA IDENTITY FULL;
CREATE TABLE ri_index (a int NOT NULL, b int);
CREATE UNIQUE INDEX ri_index_a ON ri_index (a);
ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_a;
CREATE TABLE uniq_nullable (a int, b int NOT NULL);
CREATE UNIQUE INDEX uniq_nullable_a ON uniq_nullable (a);
CREATE UNIQUE INDEX uniq_nullable_b_partial ON uniq_nullable (b) WHERE b > 0;
CREATE UNLOGGED TABLE unlogged_t (x int);
CREATE TABLE parted (k int NOT NULL, v text) PARTITION BY RANGE (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
CREATE MATERIALIZED VIEW mv AS SELECT 1 AS one;
CREATE TABLE gen (
    a int,
    doubled int GENERATED ALWAYS AS (a * 2) STORED,
    id int GENERATED ALWAYS AS IDENTITY
);
CREATE TABLE "Odd ""Name""; DROP TABLE x" ("Col'" int);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE FUNCTION mood_to_int(mood) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
CREATE CAST (mood AS int) WITH FUNCTION mood_to_int(mood);
CREATE TABLE owned_t (x int);
ALTER TABLE owned_t OWNER TO app_owner;
INSERT INTO with_pk SELECT g, 'x' FROM generate_series(1, 100) g;
ANALYZE with_pk;
SELECT lo_from_bytea(0, 'x');
"#;

#[tokio::test]
async fn inventory_of_a_varied_database() -> Result<()> {
    let pg = Cluster::builder().setting("wal_level", "logical").start()?;
    pg.create_database("inv")?;
    pg.psql("inv", SETUP_SQL)?;

    let has_hstore = pg.psql(
        "inv",
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'hstore'",
    )? == "1";
    if has_hstore {
        pg.psql("inv", "CREATE EXTENSION hstore")?;
    } else {
        eprintln!("SKIPPED (part): the hstore extension is not installed (postgresql-contrib)");
    }
    let has_icu = pg.psql(
        "inv",
        "SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'",
    )? == "1";
    if has_icu {
        pg.psql("inv", r#"CREATE TABLE icu_t (t text COLLATE "und-x-icu")"#)?;
    } else {
        eprintln!("SKIPPED (part): no ICU collation und-x-icu on this server");
    }

    // --- Server level -----------------------------------------------------------------
    let admin = pg.client("postgres").await?;
    let server = collect_server(&admin, Side::Source, "127.0.0.1", pg.port(), &[]).await?;
    assert_eq!(server.side, Side::Source);
    assert_eq!(server.port, pg.port());
    assert_eq!(server.version_num / 10000, pg.version());
    assert!(server.version.starts_with(&pg.version().to_string()));
    assert_eq!(server.current_user, "postgres");

    let setting = |name: &str| {
        server
            .settings
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("setting {name} missing: {:?}", server.settings))
    };
    assert_eq!(setting("wal_level").value, "logical");
    assert_eq!(setting("wal_sender_timeout").unit, "ms");
    assert_eq!(setting("server_encoding").value, "UTF8");
    assert_eq!(setting("max_connections").unit, "");
    assert!(server.settings.iter().all(|s| !s.name.starts_with("rds.")));

    let owner = server
        .roles
        .iter()
        .find(|r| r.name == "app_owner")
        .expect("role app_owner");
    assert!(owner.can_login && !owner.superuser && !owner.replication);
    assert!(owner.member_of.is_empty());
    let postgres = server.roles.iter().find(|r| r.name == "postgres").unwrap();
    assert!(postgres.superuser && postgres.replication && postgres.bypass_rls);

    let inv = server
        .databases
        .iter()
        .find(|d| d.name == "inv")
        .expect("database inv");
    assert_eq!(inv.encoding, "UTF8");
    assert_eq!(inv.owner, "postgres");
    assert_eq!(inv.locale_provider, "libc");
    assert!(inv.size_bytes > 0);
    assert!(inv.allow_connections && !inv.is_template);
    let template0 = server
        .databases
        .iter()
        .find(|d| d.name == "template0")
        .unwrap();
    assert!(template0.is_template && !template0.allow_connections);

    let plpgsql = server
        .available_extensions
        .iter()
        .find(|e| e.name == "plpgsql")
        .expect("plpgsql available");
    assert!(plpgsql.installed_version.is_some());
    let c = server
        .collations
        .iter()
        .find(|c| c.name == "C")
        .expect("collation C");
    assert_eq!(
        (c.schema.as_str(), c.provider.as_str()),
        ("pg_catalog", "libc")
    );
    assert_eq!(c.collate.as_deref(), Some("C"));
    assert_eq!(c.encoding, "-1");
    let default = server
        .collations
        .iter()
        .find(|c| c.name == "default")
        .unwrap();
    assert_eq!(default.provider, "default");
    assert_eq!(server.replication_slots_used, 0);
    assert_eq!(server.prepared_xacts, 0);

    // (Before the open transaction below: creating a logical slot waits for it.)
    pg.psql(
        "inv",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
    )?;
    // An open transaction elsewhere shows as the oldest one.
    let idle = pg.client("inv").await?;
    idle.batch_execute("BEGIN; SELECT txid_current(); SELECT pg_sleep(1.1)")
        .await?;
    let server = collect_server(&admin, Side::Target, "h", 1, &[]).await?;
    assert_eq!(server.side, Side::Target);
    assert_eq!(server.replication_slots_used, 1);
    assert!(
        server.oldest_xact_age_seconds >= 1,
        "oldest_xact_age_seconds = {}",
        server.oldest_xact_age_seconds
    );
    idle.batch_execute("ROLLBACK").await?;
    pg.psql("inv", "SELECT pg_drop_replication_slot('s')")?;

    // --- Database level ---------------------------------------------------------------
    let client = pg.client("inv").await?;
    let db = collect_database(&client, "inv").await?;
    assert_eq!(db.name, "inv");

    let public = db
        .schemas
        .iter()
        .find(|s| s.name == "public")
        .expect("public");
    assert_eq!(public.owner, "pg_database_owner");
    assert!(
        db.schemas
            .iter()
            .all(|s| !s.name.starts_with("pg_") && s.name != "information_schema"),
        "{:?}",
        db.schemas
    );

    let t = table(&db, "public", "with_pk");
    assert_eq!(t.kind, RelationKind::Table);
    assert!(t.has_primary_key && t.has_unique_not_null_index);
    assert_eq!(t.replica_identity, ReplicaIdentity::Default);
    assert_eq!(t.owner, "postgres");
    assert!(!t.unlogged && !t.has_oids);
    assert_eq!(t.row_estimate, 100);
    assert!(t.size_bytes > 0);
    assert_eq!(t.columns.len(), 2);
    assert_eq!(t.columns[0].name, "id");
    assert_eq!(t.columns[0].type_name, "integer");
    assert_eq!(t.columns[0].collation, None);
    assert_eq!(t.columns[1].type_name, "text");
    assert_eq!(t.columns[1].collation.as_deref(), Some("C"));

    let t = table(&db, "public", "no_pk");
    assert!(!t.has_primary_key && !t.has_unique_not_null_index);
    assert_eq!(t.replica_identity, ReplicaIdentity::Default);
    assert_eq!(t.replica_identity_index, None);
    assert_eq!(t.row_estimate, 0);
    assert_eq!(
        t.columns[1].collation, None,
        "default collation is not reported"
    );

    assert_eq!(
        table(&db, "public", "ri_full").replica_identity,
        ReplicaIdentity::Full
    );
    let t = table(&db, "public", "ri_index");
    assert_eq!(t.replica_identity, ReplicaIdentity::Index);
    assert_eq!(t.replica_identity_index.as_deref(), Some("ri_index_a"));
    assert!(!t.has_primary_key && t.has_unique_not_null_index);

    let t = table(&db, "public", "uniq_nullable");
    assert!(
        !t.has_unique_not_null_index,
        "a unique index on a nullable column and a partial one do not count"
    );

    assert!(table(&db, "public", "unlogged_t").unlogged);

    let t = table(&db, "public", "parted");
    assert_eq!(t.kind, RelationKind::PartitionedTable);
    assert_eq!(t.partition_of, None);
    for p in ["parted_1", "parted_2"] {
        let t = table(&db, "public", p);
        assert_eq!(t.kind, RelationKind::Table);
        assert_eq!(t.partition_of.as_deref(), Some("public.parted"));
    }

    assert_eq!(
        table(&db, "public", "mv").kind,
        RelationKind::MaterializedView
    );

    let t = table(&db, "public", "gen");
    let cols: Vec<(&str, &str, bool)> = t
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.generated.as_str(), c.identity))
        .collect();
    assert_eq!(
        cols,
        [("a", "", false), ("doubled", "s", false), ("id", "", true)]
    );

    let t = table(&db, "public", "Odd \"Name\"; DROP TABLE x");
    assert_eq!(t.columns[0].name, "Col'");

    assert_eq!(table(&db, "public", "owned_t").owner, "app_owner");

    let used: Vec<(&str, &str)> = db
        .collations_used
        .iter()
        .map(|c| (c.schema.as_str(), c.name.as_str()))
        .collect();
    assert!(used.contains(&("pg_catalog", "C")), "{used:?}");
    if has_icu {
        assert!(used.contains(&("pg_catalog", "und-x-icu")), "{used:?}");
        let icu = db
            .collations_used
            .iter()
            .find(|c| c.name == "und-x-icu")
            .unwrap();
        assert_eq!(icu.provider, "icu");
        assert_eq!(
            table(&db, "public", "icu_t").columns[0]
                .collation
                .as_deref(),
            Some("und-x-icu")
        );
    }
    assert!(!used.iter().any(|(_, n)| *n == "default"));

    let plpgsql = db
        .languages
        .iter()
        .find(|l| l.name == "plpgsql")
        .expect("plpgsql");
    assert!(plpgsql.trusted);
    assert!(
        db.languages
            .iter()
            .all(|l| l.name != "sql" && l.name != "c")
    );

    // Only the user's cast: hstore's casts belong to the extension.
    assert_eq!(db.user_casts.len(), 1, "{:?}", db.user_casts);
    assert_eq!(db.user_casts[0].source_type, "mood");
    assert_eq!(db.user_casts[0].target_type, "integer");
    assert_eq!(
        db.user_casts[0].function.as_deref(),
        Some("mood_to_int(mood)")
    );

    assert_eq!(db.large_object_count, 1);

    if has_hstore {
        let e = db
            .extensions
            .iter()
            .find(|e| e.name == "hstore")
            .expect("hstore");
        assert_eq!(e.schema, "public");
        assert!(!e.version.is_empty());
        // Extension-owned functions and types are not counted as the owner's objects.
    }
    assert!(db.extensions.iter().any(|e| e.name == "plpgsql"));

    let owners: std::collections::BTreeMap<&str, u32> =
        db.owners.iter().map(|(o, n)| (o.as_str(), *n)).collect();
    assert_eq!(owners.get("app_owner"), Some(&1), "{owners:?}");
    // 11 tables (+ icu_t), mv, gen_id_seq, mood, mood_to_int, schema public is
    // pg_database_owner's.
    let expected_postgres = 11 + u32::from(has_icu) + 1 + 1 + 1 + 1;
    assert_eq!(
        owners.get("postgres"),
        Some(&expected_postgres),
        "{owners:?}"
    );
    assert_eq!(owners.get("pg_database_owner"), Some(&1), "{owners:?}");

    // The inventory survives its own serde round trip (it is an SDK test fixture).
    let json = serde_json::to_string(&db)?;
    let back: DatabaseInfo = serde_json::from_str(&json)?;
    assert_eq!(back, db);
    Ok(())
}

/// The settings read are the base ones plus exactly what the plugins declare: a name (read
/// even when only a placeholder, as a provider's custom setting often is) or a prefix.
#[tokio::test]
async fn the_settings_read_are_the_base_ones_and_those_plugins_declare() -> Result<()> {
    let pg = Cluster::builder()
        .setting("vendor.logical_decoding", "on")
        .setting("vendor.undeclared", "x")
        .start()?;
    let admin = pg.client("postgres").await?;
    let names = |server: &pgferry::plugin_host::ServerInfo| server.settings.iter().map(|s| s.name.clone()).collect::<Vec<_>>();

    let base = collect_server(&admin, Side::Source, "127.0.0.1", pg.port(), &[]).await?;
    assert!(names(&base).contains(&"wal_level".to_string()), "{:?}", names(&base));
    assert!(!names(&base).iter().any(|n| n.starts_with("vendor.") || n.starts_with("autovacuum")), "{:?}", names(&base));

    let declared = ["vendor.logical_decoding".to_string(), "autovacuum_vacuum_*".to_string()];
    let server = collect_server(&admin, Side::Source, "127.0.0.1", pg.port(), &declared).await?;
    let placeholder = server.settings.iter().find(|s| s.name == "vendor.logical_decoding").expect("the declared placeholder");
    assert_eq!((placeholder.value.as_str(), placeholder.unit.as_str()), ("on", ""));
    assert!(names(&server).contains(&"autovacuum_vacuum_threshold".to_string()), "{:?}", names(&server));
    assert!(names(&server).iter().filter(|n| n.starts_with("autovacuum")).all(|n| n.starts_with("autovacuum_vacuum_")), "{:?}", names(&server));
    assert!(!names(&server).contains(&"vendor.undeclared".to_string()), "{:?}", names(&server));
    // The base settings stay.
    assert_eq!(names(&server).iter().filter(|n| *n == "wal_level").count(), 1);

    // A setting the login may not read (superuser-only, hidden from its pg_settings) is left
    // out; it does not break the inventory.
    pg.psql("postgres", "CREATE ROLE plain LOGIN")?;
    let (plain, conn) = pg.config("postgres").user("plain").connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let declared = ["data_directory".to_string(), "vendor.logical_decoding".to_string()];
    let server = collect_server(&plain, Side::Source, "127.0.0.1", pg.port(), &declared).await?;
    assert!(!names(&server).contains(&"data_directory".to_string()), "{:?}", names(&server));
    assert!(names(&server).contains(&"vendor.logical_decoding".to_string()), "{:?}", names(&server));
    Ok(())
}

#[tokio::test]
async fn inventory_of_two_thousand_tables() -> Result<()> {
    // Creating 2,000 tables with primary keys in one transaction holds ~4,000 locks.
    let pg = Cluster::builder()
        .setting("max_locks_per_transaction", "512")
        .start()?;
    pg.create_database("many")?;
    pg.psql(
        "many",
        "DO $$ BEGIN FOR i IN 1..2000 LOOP \
           EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, v text, w timestamptz)', 't' || i); \
         END LOOP; END $$",
    )
    .context("creating 2,000 tables")?;
    let client = pg.client("many").await?;

    let t = Instant::now();
    let db = collect_database(&client, "many").await?;
    let took = t.elapsed();
    eprintln!("collecting 2,000 tables took {took:?}");
    assert_eq!(db.tables.len(), 2000);
    assert!(
        db.tables
            .iter()
            .all(|t| t.has_primary_key && t.columns.len() == 3)
    );
    let postgres = db.owners.iter().find(|(o, _)| o == "postgres");
    assert_eq!(postgres.map(|(_, n)| *n), Some(2000), "{:?}", db.owners);

    let t = Instant::now();
    collect_server(&client, Side::Source, "127.0.0.1", pg.port(), &[]).await?;
    eprintln!("collecting the server inventory took {:?}", t.elapsed());
    Ok(())
}
