//! Offline migrations of every database of the shared corpus (`../shared/corpus`), end to
//! end: each test loads one corpus database into a fresh PostgreSQL source exactly as the
//! corpus README says, runs the real `pgferry migration create` (default option
//! ValidateAndMigrate, Offline) into a fresh target, requires exit 0 and `Succeeded`, then
//! compares source and target by means independent of pgferry (`pgferry_tests::compare`):
//! the schema as pg_dump prints it (owners, ACLs and database-level settings included),
//! every table's column order, every table's and materialized view's rows (materialized
//! views as a restore refreshes them: see `compare::table_digests`), sequence values and
//! large objects.
//!
//! One test per database, so each failure stands alone. Each prints a `TIMING` line (load,
//! migrate, compare) to stderr; `cargo test -- --nocapture` shows them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgferry_tests::compare::{self, Snapshot};
use pgferry_tests::{pg_available, require, skip, Cluster, Pgferry};
use serde_json::{json, Value};

const NO_CORPUS: &str = "../shared/corpus not found (set PGFERRY_CORPUS): the corpus end-to-end tests need it";

/// Runs a corpus SQL file with `psql -X -q -f` from the file's folder (as the corpus README
/// says for `unit-setup/`), stopping at and failing on the first error.
fn load(cluster: &Cluster, db: &str, file: &Path) {
    let mut cmd = cluster.psql_command(db);
    cmd.args(["-v", "ON_ERROR_STOP=1", "-q", "-f"]).arg(file).current_dir(file.parent().unwrap()).stdout(Stdio::null());
    let out = cmd.output().expect("running psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("ERROR"), "loading {} into {db} failed ({}):\n{stderr}", file.display(), out.status);
}

/// As [`load`], in one transaction (`psql -1`), as the corpus README says for pagila.
fn load_single_transaction(cluster: &Cluster, db: &str, file: &Path) {
    let mut cmd = cluster.psql_command(db);
    cmd.args(["-1", "-v", "ON_ERROR_STOP=1", "-q", "-f"]).arg(file).stdout(Stdio::null());
    let out = cmd.output().expect("running psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("ERROR"), "loading {} into {db} failed ({}):\n{stderr}", file.display(), out.status);
}

fn load_pagila(cluster: &Cluster, db: &str, corpus: &Path) {
    for file in ["pagila/pagila-schema.sql", "pagila/pagila-data.sql"] {
        load_single_transaction(cluster, db, &corpus.join(file));
    }
}

/// Large objects of several sizes (0 bytes to ~2.5 MB) with an owner, a GRANT and a
/// comment, as pgcopydb's blobs test does with images (the corpus ships none).
fn make_large_objects(cluster: &Cluster, db: &str) {
    cluster
        .psql(
            db,
            "create role lo_owner; create role lo_reader;
             select lo_from_bytea(0, ''::bytea);
             select lo_from_bytea(0, convert_to(repeat('poster ', 10), 'UTF8'));
             select lo_from_bytea(0, decode(repeat(md5(g::text), 80000 * g), 'hex')) from generate_series(1, 2) g;
             do $$ declare o oid; begin
               for o in select oid from pg_largeobject_metadata loop
                 execute format('alter large object %s owner to lo_owner', o);
                 execute format('grant select on large object %s to lo_reader', o);
                 execute format('comment on large object %s is %L', o, 'poster ' || o);
               end loop; end $$;",
        )
        .unwrap();
}

/// Runs `pgferry migration create` (ValidateAndMigrate, Offline: the defaults) of `dbs`
/// from `source` to `target` and requires exit 0, `Succeeded`, every table copied and
/// pgferry's own verification clean. Returns the JSON document of the migration.
fn migrate(source: &Cluster, target: &Cluster, name: &str, dbs: &[&str]) -> Value {
    let pf = Pgferry::new();
    let props = pf.write(
        "p.json",
        json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()), "DBsToMigrate": dbs, "sourceType": "OnPremises"}}).to_string(),
    );
    let out = pf.run(&["migration", "create", "--migration-name", name, "--properties", &props.display().to_string(), "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "2", "--output", "json"]);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    if out.code != 0 || doc["state"] != "Succeeded" {
        // The JSON document lists every table copied: only its state and error are shown.
        let detail = if doc.is_null() { out.transcript() } else { format!("state {}, error {}\n--- stderr (last 40 lines)\n{}", doc["state"], doc["error"], tail(&out.stderr, 40)) };
        panic!("migration {name} did not succeed (exit {}): {detail}", out.code);
    }
    for db in dbs {
        let progress = &doc["details"]["progress"]["databases"][db];
        assert_eq!(progress["tablesDone"], progress["tablesTotal"], "{db}: {progress}");
    }
    let verification = doc["details"]["verification"].as_array().expect("a verification per database");
    assert_eq!(verification.len(), dbs.len(), "{verification:?}");
    for v in verification {
        assert_eq!(v["mismatches"], json!([]), "pgferry's own verification: {v}");
    }
    doc
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Migrates `dbs`, then compares each database on both sides; prints the timings.
fn migrate_and_compare(label: &str, source: &Cluster, target: &Cluster, dbs: &[&str], loaded_in: Duration) {
    let t = Instant::now();
    migrate(source, target, label, dbs);
    let migrated_in = t.elapsed();
    let t = Instant::now();
    let mut diffs = Vec::new();
    for db in dbs {
        diffs.extend(compare::differences(source, target, db).into_iter().map(|d| format!("database {db}: {d}")));
    }
    eprintln!("TIMING {label}: load {:.1}s, migrate {:.1}s, compare {:.1}s", loaded_in.as_secs_f64(), migrated_in.as_secs_f64(), t.elapsed().as_secs_f64());
    assert!(diffs.is_empty(), "the target differs from the source:\n\n{}", diffs.join("\n\n"));
}

fn clusters() -> (Cluster, Cluster) {
    (Cluster::start().unwrap(), Cluster::start().unwrap())
}

/// Chinook: the script drops and creates database `chinook` itself, so it runs against
/// `postgres`.
#[test]
fn chinook() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    let t = Instant::now();
    let (source, target) = clusters();
    load(&source, "postgres", &corpus.join("pgcopydb/chinook--Chinook_PostgreSql.sql"));
    assert_eq!(source.psql("chinook", "select count(*) from track").unwrap(), "3503");
    migrate_and_compare("chinook", &source, &target, &["chinook"], t.elapsed());
}

/// pgcopydb's unit schemas: quoted and 63-character identifiers, a table name with
/// newlines, exclusion constraints, inheritance, ICU and user collations, identity,
/// generated columns, an enum in schema `"abc"` (double quotes in its name) used by a
/// partial index, a zero-column table, NOT VALID checks, sequences, function ACLs, an ACL
/// on an extension's function. As pgcopydb's unit test: the database's search_path is set
/// first (setup.sql's partial index needs it), then setup.sql runs from its folder.
///
/// The database's own settings (`ALTER DATABASE unit SET search_path …`) must come along:
/// an application connecting to the target would otherwise resolve names differently.
#[test]
fn pgcopydb_unit_schemas() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    let t = Instant::now();
    let (source, target) = clusters();
    source.create_database("unit").unwrap();
    source.psql("postgres", r#"ALTER DATABASE unit SET search_path TO public, """abc""""#).unwrap();
    load(&source, "unit", &corpus.join("pgcopydb/unit-setup/setup.sql"));
    migrate_and_compare("pgcopydb-unit", &source, &target, &["unit"], t.elapsed());
}

/// pgcopydb's filtering schema and its CDC test DDL/DML, on top of pagila (which the CDC
/// files alter and write to, as in pgcopydb's tests): a LIST-partitioned table with a
/// DEFAULT partition, materialized views (one on another, one with an index), 63-character
/// schema/table/column names, Cyrillic and bracketed identifiers, an enum `"[Status]"`,
/// bit/varbit, generated columns with odd names, a 100-argument function, TOASTed rows,
/// REPLICA IDENTITY FULL and USING INDEX, a trigger enabled as REPLICA TRIGGER.
#[test]
fn pgcopydb_filtering_and_cdc() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    let t = Instant::now();
    let (source, target) = clusters();
    source.create_database("filtering").unwrap();
    load_pagila(&source, "filtering", &corpus);
    for file in [
        "filtering--extra.sql",
        "cdc-test-decoding--ddl.sql",
        "cdc-test-decoding--dml.sql",
        "cdc-pgoutput--special-ddl.sql",
        "cdc-pgoutput--special-dml.sql",
        "cdc-low-level--ddl.sql",
        "cdc-replica-identity-index--ddl.sql",
        "cdc-matview--source.sql",
    ] {
        load(&source, "filtering", &corpus.join("pgcopydb").join(file));
    }
    migrate_and_compare("pgcopydb-filtering-cdc", &source, &target, &["filtering"], t.elapsed());
}

/// PostGIS countries: the extensions first (intarray, postgis, hstore in schema `foo`),
/// then pagila, then the circular foreign keys and the geometries.
#[test]
fn postgis_countries() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    let t = Instant::now();
    let (source, target) = clusters();
    source.create_database("extensions").unwrap();
    if let Err(e) = source.psql("extensions", "create extension postgis") {
        skip!("PostGIS is not installed (apt-get install postgresql-15-postgis-3): {e:#}");
    }
    source.psql("extensions", "create extension intarray; create schema foo; create extension hstore with schema foo").unwrap();
    load_pagila(&source, "extensions", &corpus);
    for file in ["extensions--ddl.sql", "extensions--countries.sql"] {
        load(&source, "extensions", &corpus.join("pgcopydb").join(file));
    }
    assert_eq!(source.psql("extensions", "select count(*) > 200 from countries").unwrap(), "t");
    migrate_and_compare("postgis-countries", &source, &target, &["extensions"], t.elapsed());
}

/// Not a corpus database, but what the PostGIS one misses: rows a user adds to an
/// extension's configuration table (`pg_extension_config_dump`, here PostGIS's
/// `spatial_ref_sys` with a custom projection). `CREATE EXTENSION` on the target makes the
/// extension's own rows; pg_dump's data section carries the user's rows (those the
/// extension's filter selects), and a migration must too.
#[test]
fn postgis_custom_projection_in_extension_config_table() {
    let t = Instant::now();
    let (source, target) = clusters();
    source.create_database("srid").unwrap();
    if let Err(e) = source.psql("srid", "create extension postgis") {
        skip!("PostGIS is not installed (apt-get install postgresql-15-postgis-3): {e:#}");
    }
    source
        .psql(
            "srid",
            "insert into spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
               values (990001, 'custom', 990001, 'LOCAL_CS[\"site grid\"]', '+proj=longlat +datum=WGS84');
             create table sites (id int primary key, geom geometry(Point, 990001));
             insert into sites values (1, st_setsrid(st_makepoint(1, 2), 990001))",
        )
        .unwrap();
    migrate_and_compare("postgis-custom-srid", &source, &target, &["srid"], t.elapsed());
}

/// PostgreSQL 15's regression database, loaded as pg_regress would (template0, schedule
/// order, its environment), minus the tests that need a C module. Errors inside the files
/// are expected. The hardest test of exactness: ~1700 objects of every kind.
#[test]
fn postgres_regression_database() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    let t = Instant::now();
    let (source, target) = clusters();
    source.psql("postgres", "CREATE DATABASE regression TEMPLATE template0").unwrap();
    let dir = corpus.join("pg-regress");
    let scratch = tempfile::tempdir().unwrap();
    let (build_dir, lib_dir) = (scratch.path().join("build"), scratch.path().join("lib"));
    for d in [&build_dir.join("results"), &lib_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // copy.sql and largeobject.sql write into PG_ABS_BUILDDIR/results with server-side COPY
    // and lo_export: the server's OS user must reach it.
    let _ = Command::new("chmod").args(["-R", "a+rwx"]).arg(scratch.path()).status();
    let schedule = std::fs::read_to_string(dir.join("schedule.txt")).unwrap();
    let mut errors = 0;
    for name in schedule.split_whitespace() {
        let mut cmd = source.psql_command("regression");
        cmd.args(["-a", "-q", "-f"])
            .arg(format!("sql/{name}.sql"))
            .current_dir(&dir)
            .env("PGTZ", "PST8PDT")
            .env("PGDATESTYLE", "Postgres, MDY")
            .env("PGOPTIONS", "-c intervalstyle=postgres_verbose")
            .env("PG_ABS_SRCDIR", &dir)
            .env("PG_ABS_BUILDDIR", &build_dir)
            .env("PG_LIBDIR", &lib_dir)
            .env("PG_DLSUFFIX", ".so")
            .stdout(Stdio::null());
        let out = cmd.output().expect("running psql");
        assert!(out.status.code() != Some(2), "psql lost the connection running {name}.sql: {}", String::from_utf8_lossy(&out.stderr));
        errors += String::from_utf8_lossy(&out.stderr).matches("ERROR:").count();
    }
    eprintln!("regression: {} files loaded, {errors} errors (expected)", schedule.split_whitespace().count());
    assert!(source.psql("regression", "select count(*) > 400 from pg_class where relkind = 'r'").unwrap() == "t");
    migrate_and_compare("regression", &source, &target, &["regression"], t.elapsed());
}

/// What differs between `pg_dump --schema-only --create` (one pg_dump 15 binary) of a
/// PostgreSQL 13 server and of a 15 server holding the same schema, for what this test
/// loads: nothing, so nothing is removed. Checked by hand, and worth knowing:
/// - The `public` schema. PostgreSQL 15 creates it owned by `pg_database_owner` with
///   `CREATE` revoked from PUBLIC; 13 made it owned by the bootstrap superuser with `=UC`.
///   pg_dump 15 compares a 13 server's ACL with 13's defaults, so it prints `ALTER SCHEMA
///   public OWNER TO postgres`, `REVOKE USAGE … FROM PUBLIC; GRANT ALL … TO PUBLIC`: the
///   target keeps 13's semantics (PUBLIC may still create in `public`), and the target's
///   dump prints the same lines. (pagila sets exactly that explicitly; `plain` has 13's
///   defaults; both must come out equal.)
/// - `CREATE DATABASE`: pg_dump 15 prints `LOCALE_PROVIDER = libc` for a 13 server too.
/// - Function, view and rule bodies are deparsed by each server; pagila's print the same.
///
/// A new difference here is either a new version quirk (normalise it, with its reason) or
/// a migration bug.
fn normalize_cross_version(schema: &str) -> String {
    schema.to_string()
}

/// Cross-version: pagila (with large objects) and a database with PostgreSQL 13's default
/// `public` schema, in a PostgreSQL 13 source, migrated into a 15 target. Both sides are
/// dumped with the same pg_dump 15; version differences are normalised away (see
/// [`normalize_cross_version`]); rows, sequences and large objects must be identical.
#[test]
fn pagila_from_postgres_13_to_15() {
    let corpus = require!(pgferry_tests::corpus_dir(), "{NO_CORPUS}");
    if !pg_available(13) {
        skip!("PostgreSQL 13 is not installed (PGFERRY_TEST_PG_BIN_13, /usr/lib/postgresql/13 or /opt/pgferry-pg/13)");
    }
    let t = Instant::now();
    let source = Cluster::builder().version(13).start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("pagila").unwrap();
    load_pagila(&source, "pagila", &corpus);
    make_large_objects(&source, "pagila");
    source.create_database("plain").unwrap();
    source
        .psql("plain", "create table notes (id int generated by default as identity primary key, body text); insert into notes (body) select 'note ' || g from generate_series(1, 100) g")
        .unwrap();
    let loaded_in = t.elapsed();

    let t = Instant::now();
    migrate(&source, &target, "pagila-13-to-15", &["pagila", "plain"]);
    let migrated_in = t.elapsed();
    let t = Instant::now();
    let mut diffs = Vec::new();
    for db in ["pagila", "plain"] {
        let mut before = Snapshot::source(&source, db);
        let mut after = Snapshot::target(&target, db);
        before.schema = normalize_cross_version(&before.schema);
        after.schema = normalize_cross_version(&after.schema);
        assert!(!after.sequences.is_empty(), "{db}: no sequences on the target");
        diffs.extend(compare::snapshot_differences(&before, &after).into_iter().map(|d| format!("database {db}: {d}")));
    }
    eprintln!("TIMING pagila-13-to-15: load {:.1}s, migrate {:.1}s, compare {:.1}s", loaded_in.as_secs_f64(), migrated_in.as_secs_f64(), t.elapsed().as_secs_f64());
    assert_eq!(target.psql("pagila", "select count(*) from pg_largeobject_metadata").unwrap(), "4");
    assert!(diffs.is_empty(), "the PostgreSQL 15 target differs from the 13 source:\n\n{}", diffs.join("\n\n"));
}
