//! Offline migration end to end: real corpus databases into a source, `ValidateAndMigrate`,
//! then the target compared with the source by means independent of pgferry's own
//! verification: the schema as pg_dump prints it, every table's rows, sequences, large
//! objects, owners and ACLs.

use pgferry_tests::compare::{large_objects, schema, sequences};
use pgferry_tests::{compare, require, Cluster, Pgferry};
use std::time::Duration;

use serde_json::{json, Value};

fn table_digests(c: &Cluster, db: &str) -> String {
    compare::table_digests(c, db, false)
}

#[test]
fn pagila_with_large_objects_moves_exactly() {
    let corpus = require!(pgferry_tests::corpus_dir(), "../shared/corpus not found: the offline end-to-end test needs pagila");
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("pagila").unwrap();
    for file in ["pagila/pagila-schema.sql", "pagila/pagila-data.sql"] {
        let out = source.psql_file("pagila", &corpus.join(file), true).unwrap();
        assert!(!out.stderr.contains("ERROR"), "{file}: {}", out.stderr);
    }
    // Large objects of several sizes, with owner, ACL and comment, as pgcopydb's blobs test.
    source
        .psql(
            "pagila",
            "create role lo_owner; create role lo_reader; create role app_login login password 'app-secret';
             grant select on public.film to app_login;
             select lo_from_bytea(0, ''::bytea);
             select lo_from_bytea(0, convert_to(repeat('poster ', 10), 'UTF8'));
             select lo_from_bytea(0, decode(repeat(md5(g::text), 80000), 'hex')) from generate_series(1, 2) g;
             do $$ declare o oid; begin
               for o in select oid from pg_largeobject_metadata loop
                 execute format('alter large object %s owner to lo_owner', o);
                 execute format('grant select on large object %s to lo_reader', o);
                 execute format('comment on large object %s is %L', o, 'poster ' || o);
               end loop; end $$;",
        )
        .unwrap();

    let pf = Pgferry::new();
    let props = pf.properties(&source, "pagila", json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "pagila", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "2", "--split-tables-larger-than", "200000", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    // With --output json, progress comes as JSON events on stderr, one per line.
    let events: Vec<Value> = out.stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds[..3], ["StageReached", "StageReached", "DatabaseStarted"], "created, schema restored, then the copy");
    assert_eq!(kinds.last(), Some(&"StageReached"));
    let copied: Vec<&Value> = events.iter().filter(|e| e["event"] == "TableCopied").collect();
    assert!(copied.len() > 20, "{}", out.stderr);
    // The biggest tables went in block ranges (PostgreSQL 14+ TID range scans).
    assert!(copied.iter().any(|e| e["table"]["part"] == 0), "no table was split: {}", out.stderr);
    let substates: Vec<&str> = doc["transitions"].as_array().unwrap().iter().map(|t| t["substate"].as_str().unwrap()).collect();
    assert_eq!(substates, ["PerformingPreRequisiteSteps", "ValidationInProgress", "MigratingData", "CompletingMigration", "Completed"]);
    let progress = &doc["details"]["progress"]["databases"]["pagila"];
    assert_eq!(progress["tablesDone"], progress["tablesTotal"]);
    assert_eq!((progress["tablesQueued"].as_u64(), progress["tablesLoading"].as_u64()), (Some(0), Some(0)), "{progress}");
    assert!(progress["rowsCopied"].as_u64().unwrap() > 40_000, "{progress}");
    // One entry per table, its parts added up, each read at the run's exported snapshot.
    let snapshot = events.iter().find(|e| e["event"] == "DatabaseStarted").unwrap()["snapshot"].as_str().unwrap();
    let tables = progress["tables"].as_array().unwrap();
    assert_eq!(Some(tables.len() as u64), progress["tablesDone"].as_u64(), "{progress}");
    assert!(tables.iter().all(|t| t["readAt"] == snapshot && t["rows"].is_u64() && t["copiedAt"].as_str().is_some_and(|a| !a.is_empty())), "{progress}");
    assert!(tables.iter().any(|t| t["parts"].as_u64() > Some(1)), "the split tables are listed once: {progress}");
    assert!(doc["details"]["copyState"]["pagila"]["readAt"].as_object().unwrap().values().all(|v| v == snapshot), "{doc}");
    let verification = &doc["details"]["verification"][0];
    assert_eq!(verification["mismatches"], json!([]));
    assert!(verification["objects"]["relation r"].as_i64().unwrap() >= 15, "{verification}");
    assert_eq!(verification["largeObjects"], 4);
    // Every table has its planner statistics: ANALYZE ran on the target (not autovacuum).
    let analyzed = events.iter().find(|e| e["event"] == "Analyzed").expect("an Analyzed event");
    assert!(analyzed["tables"].as_u64().unwrap() >= 15, "{analyzed}");
    // (A partitioned parent's ANALYZE samples its partitions and records no last_analyze; a
    // materialized view never populated has nothing to analyze.)
    let never_analyzed = || {
        target
            .psql("pagila", "select coalesce(string_agg(s.relname, ', '), '') from pg_stat_user_tables s join pg_class c on c.oid = s.relid where c.relkind <> 'p' and (c.relkind <> 'm' or c.relispopulated) and s.last_analyze is null")
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !never_analyzed().trim().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(never_analyzed().trim(), "", "tables the migration did not analyze");

    assert_eq!(schema(&source, "pagila"), schema(&target, "pagila"), "schemas differ");
    assert_eq!(table_digests(&source, "pagila"), table_digests(&target, "pagila"), "table contents differ");
    assert_eq!(sequences(&source, "pagila"), sequences(&target, "pagila"), "sequences differ");
    assert_eq!(large_objects(&source, "pagila"), large_objects(&target, "pagila"), "large objects differ");
    assert!(!sequences(&target, "pagila").is_empty());
    // Roles came across with their password hashes (the source connection is superuser)…
    let hash = |c: &Cluster| c.psql("postgres", "select rolpassword from pg_authid where rolname = 'app_login'").unwrap();
    assert!(hash(&source).starts_with("SCRAM-SHA-256$"));
    assert_eq!(hash(&source), hash(&target));
    // …and neither the hash nor anything else secret reached the state store.
    let state = std::fs::read(pf.dir().join("state/state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&state).contains(&hash(&source)));
}

#[test]
fn cancel_from_another_shell_stops_the_copy_and_drops_the_target_database() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("big").unwrap();
    // Enough rows that the copy is still running when the cancel arrives.
    source
        .psql("big", "create table wide (id bigint primary key, payload text); insert into wide select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;")
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "big", json!({}));
    let running = pf
        .command()
        .args(["migration", "create", "--migration-name", "to-cancel", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until the other shell sees MigratingData.
    // Another shell sees the live counters: the one table being copied.
    let doc = pf.wait_for("to-cancel", "MigratingData", Duration::from_secs(120), |doc| doc["details"]["progress"]["databases"]["big"]["tablesLoading"] == 1);
    assert_eq!(doc["substate"], "MigratingData");
    assert_eq!(doc["details"]["progress"]["databases"]["big"]["tablesDone"], 0);
    // A second migration to the same target is refused while this one copies.
    let second = pf.run(&["migration", "create", "--migration-name", "second", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port())]);
    assert_eq!(second.code, 1, "{}", second.transcript());
    assert!(second.stderr.contains("\"to-cancel\" is still InProgress/MigratingData"), "{}", second.transcript());

    let cancel = pf.run(&["migration", "update", "--migration-name", "to-cancel", "--cancel"]);
    assert_eq!(cancel.code, 0, "{}", cancel.transcript());

    let out = running.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "Canceled exits 6: {}", String::from_utf8_lossy(&out.stderr));
    let show = pf.show("to-cancel");
    assert_eq!(show["state"], "Canceled");
    assert_eq!(show["details"]["droppedOnCancel"], json!(["big"]));
    assert_eq!(target.psql("postgres", "select count(*) from pg_database where datname = 'big'").unwrap(), "0", "the half-copied database is gone");
    // A canceled migration cannot be canceled again, with a clear message.
    let again = pf.run(&["migration", "update", "--migration-name", "to-cancel", "--cancel"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("is Canceled already"), "{}", again.transcript());
}

#[test]
fn kill_9_during_the_copy_then_resume_keeps_finished_tables_and_ends_exact() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;
             create table customers (id serial primary key, name text); insert into customers (name) select 'c' || g from generate_series(1, 5000) g;
             create table orders (id serial primary key, customer int references customers, total numeric); insert into orders (customer, total) select 1 + g % 5000, g from generate_series(1, 20000) g;
             create table notes (line text); insert into notes select 'note ' || g from generate_series(1, 100) g;",
        )
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    // A TMPDIR of the test's own, to see which work dirs are left.
    let tmp = pf.dir().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let work_dirs = || -> Vec<String> {
        std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("pgferry-")).collect()
    };
    let mut running = pf
        .command()
        .env("TMPDIR", &tmp)
        .args(["migration", "create", "--migration-name", "crash", "--properties", &props, "--target", &target_arg, "--jobs", "2", "--output", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once the small tables are done and the big one is not.
    let tables_done = |doc: &Value| -> Vec<String> {
        doc["details"]["copyState"]["shop"]["tablesDone"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default()
    };
    let doc = pf.wait_for("crash", "a partly done copy", Duration::from_secs(120), |doc| {
        let done = tables_done(doc);
        done.len() >= 2 && !done.contains(&"public.big".to_string())
    });
    running.kill().unwrap();
    running.wait().unwrap();
    let done_before_kill = tables_done(&doc);
    let show = pf.show("crash");
    assert_eq!(show["state"], "InProgress", "a killed runner leaves the migration in progress");
    let left = work_dirs();
    assert_eq!(left.len(), 1, "the killed runner leaves its work dir: {left:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tmp.join(&left[0])).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the work dir is private");

    let tmp_env = tmp.display().to_string();
    let out = pf.run_with(&["migration", "resume", "--migration-name", "crash", "--output", "json"], &[("TMPDIR", &tmp_env)]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    let recopied: Vec<String> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "TableCopied")
        .map(|e| format!("{}.{}", e["table"]["schema"].as_str().unwrap(), e["table"]["name"].as_str().unwrap()))
        .collect();
    assert!(recopied.contains(&"public.big".to_string()), "{recopied:?}");
    assert_eq!(work_dirs(), Vec::<String>::new(), "the resume removed the killed runner's work dir and its own");
    for table in &done_before_kill {
        assert!(!recopied.contains(table), "{table} was finished before the kill and copied again");
    }
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]));
    // Nothing changed between the kill and the resume: the finished tables were checked
    // at the resume's snapshot and kept.
    assert_eq!(doc["details"]["verification"][0]["tablesRecopied"], 0);
    assert_eq!(doc["details"]["verification"][0]["recopiedTables"], json!([]));
    assert_eq!(table_digests(&source, "shop"), table_digests(&target, "shop"));
    assert_eq!(schema(&source, "shop"), schema(&target, "shop"));
    assert_eq!(sequences(&source, "shop"), sequences(&target, "shop"));
}

#[test]
fn source_down_past_the_reconnect_timeout_mid_copy_fails_naming_the_table_and_resume_recovers() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql("shop", "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;")
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let running = pf
        .command()
        .args(["migration", "create", "--migration-name", "lost", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "1", "--output", "json", "--reconnect-timeout", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the worker has taken the table (not merely once the schema is restored: the
    // worker might not have connected yet, and then the error would name no table).
    pf.wait_for("lost", "the copy", Duration::from_secs(120), |doc| doc["details"]["progress"]["databases"]["shop"]["tablesLoading"] == 1);
    source.stop().unwrap();
    let out = running.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "Failed exits 5: {}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Failed");
    assert_eq!(doc["error"]["step"], "MigratingData");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("public.big") && message.contains("shop"), "names the table and database: {message}");
    assert!(message.contains("gave up after") && message.contains("--reconnect-timeout 3"), "says it waited for the source: {message}");
    assert_eq!(target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap(), "0", "nothing half-copied is left");

    source.restart().unwrap();
    let out = pf.run(&["migration", "resume", "--migration-name", "lost", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    assert_eq!(doc["details"]["resumedAfter"]["step"], "MigratingData");
    assert_eq!(table_digests(&source, "shop"), table_digests(&target, "shop"));
}

#[test]
fn no_wait_returns_at_once_and_a_detached_runner_finishes_the_migration() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("small").unwrap();
    source.psql("small", "create table t (id serial primary key, v text); insert into t (v) select md5(g::text) from generate_series(1, 10000) g;").unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "small", json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "bg", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--no-wait", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert!(out.stderr.contains("running in the background"), "{}", out.transcript());
    let doc = pf.wait_for("bg", "its end", Duration::from_secs(120), |doc| doc["state"] != "InProgress");
    assert_eq!(doc["state"], "Succeeded", "{doc}");
    assert_eq!(table_digests(&source, "small"), table_digests(&target, "small"));
    assert!(std::fs::read_to_string(pf.dir().join("state/logs/bg.log")).unwrap().contains("small"), "the runner logged its progress");
}

#[test]
fn verify_full_tls_source_migrates_with_pg_dump_verifying_too() {
    let certs = pgferry_tests::test_ca_and_server_cert(&["127.0.0.1"]);
    let source = Cluster::builder().ssl(&certs.server_cert_pem, &certs.server_key_pem).setting("log_connections", "on").start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("secure").unwrap();
    source.psql("secure", "create table t (id serial primary key, v text); insert into t (v) select md5(g::text) from generate_series(1, 1000) g;").unwrap();
    let pf = Pgferry::new();
    let ca = pf.write("ca.pem", &certs.ca_pem).display().to_string();
    let props = pf.properties(&source, "secure", json!({"sslMode": "VerifyFull"}));
    let out = pf.run_with(
        &["migration", "create", "--migration-name", "tls", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--output", "json"],
        &[("PGSSLROOTCERT", &ca)],
    );
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["details"]["sourceTls"], "VerifiedFull");
    assert_eq!(table_digests(&source, "secure"), table_digests(&target, "secure"));
    // Every connection pgferry and its pg_dump made to the source was encrypted.
    let log = source.log();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("connection authorized") && l.contains("application_name=pgferry")).collect();
    assert!(ours.len() >= 4, "pgferry's connections are logged: {log}");
    assert!(ours.iter().all(|l| l.contains("SSL enabled")), "{ours:#?}");
}

#[test]
fn a_copy_the_target_refuses_names_the_table_and_the_row_and_leaves_nothing() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql("shop", "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;")
        .unwrap();
    // The target cuts any statement off after 700 ms: the COPY of `big` is refused partway,
    // the way a full disk or a rejected row refuses it.
    target.psql("postgres", "alter role postgres set statement_timeout = '700ms'").unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "refused", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "1", "--output", "json"]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("copying table public.big of database \"shop\""), "{message}");
    assert!(message.contains("writing to the target: canceling statement due to statement timeout"), "{message}");
    assert!(message.contains("CONTEXT: COPY big, line "), "PostgreSQL's row position is passed on: {message}");
    // The fullLoad counters count the table as errored, and name it.
    let progress = &doc["details"]["progress"]["databases"]["shop"];
    assert_eq!(progress["tablesErrored"], 1, "{progress}");
    assert_eq!(progress["erroredTables"], json!(["public.big"]), "{progress}");
    assert_eq!((progress["tablesLoading"].as_u64(), progress["tablesDone"].as_u64()), (Some(0), Some(0)), "{progress}");
    let failed = events(&out.stderr).into_iter().find(|e| e["event"] == "TableFailed").expect("a TableFailed event");
    assert_eq!((failed["schema"].as_str(), failed["name"].as_str()), (Some("public"), Some("big")));
    let show = pf.run(&["migration", "show", "--migration-name", "refused"]);
    assert!(show.stdout.contains("shop: 0/1 tables, ") && show.stdout.contains(", 1 errored (public.big)"), "{}", show.stdout);
    assert_eq!(doc["details"]["droppedOnFailure"], json!(["shop"]));
    target.psql("postgres", "alter role postgres reset statement_timeout").unwrap();
    assert_eq!(target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap(), "0", "nothing half-copied is left");
}

/// The events of `--output json` (stderr), one JSON object per line.
fn events(stderr: &str) -> Vec<Value> {
    stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn arrays_of_user_types_composites_and_reg_types_go_as_text_and_arrive_exact() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    // Objects made on the target first: the migrated types get other OIDs there than on the
    // source, which binary COPY of an enum[] or a composite would trip over (array_recv and
    // record_recv check the OIDs in the data).
    target
        .psql("postgres", "create type shift1 as enum ('a'); create type shift2 as (x int); create domain shift3 as int; create table shift4 (x shift1[]);")
        .unwrap();
    source.create_database("types").unwrap();
    source
        .psql(
            "types",
            "create type mood as enum ('sad', 'ok', 'happy');
             create domain posint as integer check (value > 0);
             create type pair as (label text, n posint, m mood, tags mood[]);
             create table feelings (id integer primary key, moods mood[], p pair, ps pair[], counts posint[], nums integer[], rel regclass, typ regtype);
             insert into feelings
             select g, array['sad', 'happy', null]::mood[] || (array['ok'::mood])[1:g % 2],
                    row('pair ' || g, g, 'ok', array['happy', 'sad']::mood[])::pair,
                    array[row('a', 1, 'sad', null)::pair, null, row(null, null, null, '{}')::pair],
                    array[g, g + 1]::posint[], array[g, null], 'feelings'::regclass, 'pair'::regtype
               from generate_series(1, 500) g;
             insert into feelings (id) values (0);
             create table plain (id integer primary key, v text, nums integer[]);
             insert into plain select g, md5(g::text), array[g] from generate_series(1, 120000) g;",
        )
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "types", json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "types", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "2", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]));
    // The OIDs do differ (else this test would prove nothing about binary COPY).
    let oids = |c: &Cluster| c.psql("types", "select 'mood'::regtype::oid || ' ' || 'pair'::regtype::oid || ' ' || 'feelings'::regclass::oid").unwrap();
    let (source_oids, target_oids) = (oids(&source), oids(&target));
    for (s, t) in source_oids.split(' ').zip(target_oids.split(' ')) {
        assert_ne!(s, t, "source OIDs {source_oids}, target {target_oids}");
    }
    let format = |table: &str| {
        events(&out.stderr).into_iter().find(|e| e["event"] == "TableCopied" && e["table"]["name"] == table).map(|e| e["table"]["format"].clone())
    };
    assert_eq!(format("feelings"), Some(json!("text")));
    assert_eq!(format("plain"), Some(json!("binary")));
    assert_eq!(table_digests(&source, "types"), table_digests(&target, "types"), "table contents differ");
    assert_eq!(schema(&source, "types"), schema(&target, "types"));
    // The reg* values name the target's own objects.
    assert_eq!(target.psql("types", "select count(*) from feelings where rel = 'feelings'::regclass and typ = 'pair'::regtype").unwrap(), "500");
    // Tables copied whole (of 8 MB or more) were loaded with COPY FREEZE: every page is
    // frozen already.
    target.psql("types", "create extension pg_visibility").unwrap();
    let frozen = target.psql("types", "select all_frozen || ' of ' || pg_relation_size('plain') / 8192 from pg_visibility_map_summary('plain')").unwrap();
    let (all_frozen, pages) = frozen.split_once(" of ").unwrap();
    assert!(pages.parse::<u64>().unwrap() > 0 && all_frozen == pages, "frozen pages of plain: {frozen}");
}

#[test]
fn a_finished_table_changed_on_the_target_before_a_resume_is_copied_again() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;
             create table customers (id serial primary key, name text); insert into customers (name) select 'c' || g from generate_series(1, 5000) g;
             create table orders (id serial primary key, customer int, total numeric); insert into orders (customer, total) select 1 + g % 5000, g from generate_series(1, 20000) g;",
        )
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let mut running = pf
        .command()
        .args(["migration", "create", "--migration-name", "tampered", "--properties", &props, "--target", &target_arg, "--jobs", "2", "--output", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let doc = pf.wait_for("tampered", "the small tables copied", Duration::from_secs(120), |doc| {
        let state = &doc["details"]["copyState"]["shop"];
        state["digests"]["public.customers"].is_object() && state["digests"]["public.orders"].is_object() && state["digests"]["public.big"].is_null()
    });
    running.kill().unwrap();
    running.wait().unwrap();
    // The resume record holds what the copy read of each finished table.
    assert_eq!(doc["details"]["copyState"]["shop"]["digests"]["public.customers"]["rows"], 5000);
    // Between the kill and the resume, finished tables change on the target: one loses a
    // row, one gets a value changed (same row count). The target database is this
    // migration's own until it ends (a target that crashed loses what the copy wrote with
    // synchronous_commit off the same way): the resume checks every finished table against
    // the source and copies the ones that differ again, rather than failing a migration
    // that can still end exact.
    target.psql("shop", "delete from customers where id = 17; update orders set total = total + 1 where id = 5").unwrap();

    let out = pf.run(&["migration", "resume", "--migration-name", "tampered", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    let verification = &doc["details"]["verification"][0];
    assert_eq!(verification["mismatches"], json!([]));
    assert_eq!(verification["recopiedTables"], json!(["public.customers", "public.orders"]), "{verification}");
    assert_eq!(verification["tablesRecopied"], 2);
    assert_eq!(table_digests(&source, "shop"), table_digests(&target, "shop"));
    let show = pf.run(&["migration", "show", "--migration-name", "tampered"]);
    assert!(show.stdout.contains("0 mismatches") && show.stdout.contains("2 tables changed since an earlier run copied them: public.customers, public.orders"), "{}", show.stdout);
}

#[test]
fn a_target_out_of_disk_space_fails_naming_the_table_and_leaves_nothing() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    // The target's databases live on a 40 MiB tmpfs (its WAL does not): the copy of `big`
    // (about 60 MB) runs out of space for real.
    let _tmpfs = match target.move_base_to_tmpfs(40) {
        Ok(mount) => mount,
        Err(e) => pgferry_tests::skip!("the disk-full test needs `mount -t tmpfs` (root with CAP_SYS_ADMIN): {e:#}"),
    };
    source.create_database("shop").unwrap();
    source
        .psql("shop", "create table small (id int primary key); insert into small select generate_series(1, 100);
                       create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 3) from generate_series(1, 400000) g;")
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "full", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "1", "--output", "json"]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Failed");
    assert_eq!(doc["error"]["step"], "MigratingData");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("copying table public.big of database \"shop\""), "{message}");
    assert!(message.contains("writing to the target: could not extend file") && message.contains("No space left on device"), "{message}");
    let progress = &doc["details"]["progress"]["databases"]["shop"];
    assert_eq!((progress["tablesErrored"].clone(), progress["erroredTables"].clone()), (json!(1), json!(["public.big"])), "{progress}");
    assert_eq!(doc["details"]["droppedOnFailure"], json!(["shop"]));
    assert_eq!(target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap(), "0", "nothing half-copied is left");
    // The space is back: the server still works.
    target.psql("postgres", "create table after_full (x int); insert into after_full values (1)").unwrap();
}
