//! A resumed offline migration copies the rest at a new snapshot: the tables an earlier run
//! finished are checked against the source at that final snapshot and copied again when
//! they differ, so that the target ends as the source is at one snapshot. The runner is
//! killed (-9) at chosen moments, the source changed in between, and the target compared
//! with the source by pgferry-independent means.

use pgferry_tests::compare::{large_objects, schema, sequences};
use pgferry_tests::{compare, Cluster, Pgferry};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// One big table (copied for several seconds) and small ones around it; `orders` has a key
/// into `customers` (customers over 4000 have no orders), an audit trigger and a disabled
/// one (made after the rows: audit is empty); a sequence and large objects.
const SHOP: &str = "
    create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;
    create table customers (id serial primary key, name text); insert into customers (name) select 'c' || g from generate_series(1, 5000) g;
    create table orders (id serial primary key, customer int references customers, total numeric); insert into orders (customer, total) select 1 + g % 4000, g from generate_series(1, 20000) g;
    create table notes (line text); insert into notes select 'note ' || g from generate_series(1, 100) g;
    create table audit (at timestamptz default now(), what text);
    create function audited() returns trigger language plpgsql as $$ begin insert into audit (what) values (tg_op || ' ' || new.id); return new; end $$;
    create trigger orders_audit after insert or update on orders for each row execute function audited();
    create trigger orders_audit_off after insert on orders for each row execute function audited();
    alter table orders disable trigger orders_audit_off;
    select lo_from_bytea(1001, convert_to(repeat('poster ', 1000), 'UTF8'));
    select lo_from_bytea(1002, 'flyer');
    select lo_from_bytea(1003, 'leaflet');";

fn tables_done(doc: &Value) -> Vec<String> {
    doc["details"]["copyState"]["shop"]["tablesDone"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// `schema.name` of every table the run copied, from its JSON events (stderr).
fn copied_tables(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "TableCopied")
        .map(|e| format!("{}.{}", e["table"]["schema"].as_str().unwrap(), e["table"]["name"].as_str().unwrap()))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn kill(mut runner: Child) {
    runner.kill().unwrap();
    runner.wait().unwrap();
}

/// Starts `args` of pgferry in the background, its output discarded.
fn spawn(pf: &Pgferry, args: &[&str]) -> Child {
    pf.command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// Kills the runner once the small tables are copied and `big` is not; `show`'s document
/// then.
fn kill_mid_copy(pf: &Pgferry, name: &str, runner: Child) -> Value {
    let doc = pf.wait_for(name, "the small tables copied", Duration::from_secs(120), |doc| {
        let done = tables_done(doc);
        ["public.customers", "public.orders", "public.notes"].iter().all(|t| done.contains(&t.to_string())) && !done.contains(&"public.big".to_string())
    });
    kill(runner);
    doc
}

/// What each finished table was read at, per `show` (`copyState.<db>.readAt`).
fn read_at(doc: &Value, table: &str) -> String {
    doc["details"]["copyState"]["shop"]["readAt"][table].as_str().unwrap_or_else(|| panic!("no readAt for {table}: {doc}")).to_string()
}

fn assert_exact(source: &Cluster, target: &Cluster) {
    assert_eq!(compare::table_digests(source, "shop", false), compare::table_digests(target, "shop", false), "table contents differ");
    assert_eq!(sequences(source, "shop"), sequences(target, "shop"), "sequences differ");
    assert_eq!(large_objects(source, "shop"), large_objects(target, "shop"), "large objects differ");
    assert_eq!(schema(source, "shop"), schema(target, "shop"), "schemas differ (a trigger left disabled, a key missing)");
}

#[test]
fn a_finished_table_changed_on_the_source_before_a_resume_is_copied_again_at_the_final_snapshot() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source.psql("shop", SHOP).unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let runner = spawn(&pf, &["migration", "create", "--migration-name", "moved", "--properties", &props, "--target", &target_arg, "--jobs", "2"]);
    let first_run = kill_mid_copy(&pf, "moved", runner);
    let done_before_kill = tables_done(&first_run);
    assert!(done_before_kill.contains(&"public.customers".to_string()), "{done_before_kill:?}");
    // Every table the first run finished was read at its exported snapshot.
    let first_snapshot = read_at(&first_run, "public.customers");
    assert!(first_snapshot.len() > 10 && first_snapshot.contains('-'), "a snapshot id: {first_snapshot}");
    for table in &done_before_kill {
        assert_eq!(read_at(&first_run, table), first_snapshot, "{table}");
    }

    // Between the kill and the resume the source moves on: a finished table (customers:
    // updates, an insert that advances its sequence, a delete), the unfinished one (big),
    // and the large objects (one changed and shorter, one gone, one new). notes and orders
    // stay as they were copied.
    source
        .psql(
            "shop",
            "update customers set name = name || '!' where id <= 10; insert into customers (name) values ('late'); delete from customers where id = 4999;
             update big set payload = 'changed' where id = 1; delete from big where id = 2; insert into big values (2000000, 'new');
             select lo_truncate(lo_open(1001, x'20000'::int), 5); select lo_put(1001, 0, 'POST'); select lo_unlink(1002); select lo_from_bytea(1004, 'brochure');",
        )
        .unwrap();

    // What a kill between a key's two steps in the per-table pipeline leaves on the target:
    // the key's unique index, under the key's name, and no key yet.
    target.psql("shop", "alter table orders drop constraint orders_pkey cascade; create unique index orders_pkey on orders (id)").unwrap();

    let out = pf.run(&["migration", "resume", "--migration-name", "moved", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    let verification = &doc["details"]["verification"][0];
    assert_eq!(verification["mismatches"], json!([]));
    assert_eq!(verification["tablesRecopied"], 1, "{verification}");
    assert_eq!(verification["recopiedTables"], json!(["public.customers"]), "{verification}");
    assert_eq!(verification["largeObjects"], 3, "{verification}");
    // The resume copied big and customers again, and left the unchanged finished tables.
    let copied = copied_tables(&out.stderr);
    assert!(copied.contains(&"public.big".to_string()) && copied.contains(&"public.customers".to_string()), "{copied:?}");
    for table in ["public.notes", "public.orders"] {
        assert!(!copied.contains(&table.to_string()), "{table} did not change and was copied again: {copied:?}");
    }
    let recopying: Vec<Value> = out.stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|e| e["event"] == "TablesRecopying").collect();
    assert_eq!(recopying.len(), 1, "{}", out.stderr);
    assert_eq!(recopying[0]["tables"], json!(["public.customers"]));
    // The resume record has customers done again, with the digest of its new copy.
    let state = &doc["details"]["copyState"]["shop"];
    assert!(strings(&state["tablesDone"]).contains(&"public.customers".to_string()), "{state}");
    assert_eq!(state["digests"]["public.customers"]["rows"], 5000, "5000 + 1 inserted - 1 deleted: {state}");
    // Each table says which snapshot it was read at: the tables the resume kept, the first
    // run's; the ones it copied (again), its own (the one its DatabaseStarted event names).
    let started: Vec<Value> = out.stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|e| e["event"] == "DatabaseStarted").collect();
    assert_eq!(started.len(), 1, "{}", out.stderr);
    let second_snapshot = started[0]["snapshot"].as_str().unwrap().to_string();
    assert_ne!(second_snapshot, first_snapshot);
    for (table, snapshot) in [("public.notes", &first_snapshot), ("public.orders", &first_snapshot), ("public.customers", &second_snapshot), ("public.big", &second_snapshot)] {
        assert_eq!(&read_at(&doc, table), snapshot, "{table}: {state}");
    }
    // The per-table list of `details.progress` (built from the same rows) says the same.
    let listed: std::collections::BTreeMap<String, String> = doc["details"]["progress"]["databases"]["shop"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (format!("{}.{}", t["schema"].as_str().unwrap(), t["name"].as_str().unwrap()), t["readAt"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed.get("public.orders"), Some(&first_snapshot), "{listed:?}");
    assert_eq!(listed.get("public.big"), Some(&second_snapshot), "{listed:?}");
    assert_exact(&source, &target);
    let show = pf.run(&["migration", "show", "--migration-name", "moved"]);
    assert!(show.stdout.contains("1 tables changed since an earlier run copied them: public.customers"), "{}", show.stdout);
}

#[test]
fn killed_twice_the_second_time_after_the_copy_a_resume_still_ends_at_one_snapshot() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source.psql("shop", SHOP).unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let runner = spawn(&pf, &["migration", "create", "--migration-name", "twice", "--properties", &props, "--target", &target_arg, "--jobs", "2"]);
    kill_mid_copy(&pf, "twice", runner);
    source.psql("shop", "update customers set name = 'first change' where id = 1").unwrap();

    // The first resume copies customers again and big, then is killed while it completes,
    // once post-data has made the keys (the last of it) and the triggers on the target:
    // every table is copied, all of them at its snapshot.
    let runner = spawn(&pf, &["migration", "resume", "--migration-name", "twice"]);
    pf.wait_for("twice", "CompletingMigration", Duration::from_secs(180), |doc| doc["substate"] == "CompletingMigration");
    let post_data = "select count(*) from pg_constraint where conname = 'orders_customer_fkey'";
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while target.psql("shop", post_data).unwrap() != "1" {
        assert!(std::time::Instant::now() < deadline, "post-data never made the foreign key");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(runner);
    let doc = pf.show("twice");
    assert_eq!(doc["substate"], "CompletingMigration", "killed before the end: {doc}");
    assert_eq!(target.psql("shop", "select count(*) from pg_trigger where tgname like 'orders_audit%'").unwrap(), "2");
    assert_eq!(doc["details"]["copyState"]["shop"]["stage"], "DataCopied", "{doc}");
    assert_eq!(strings(&doc["details"]["copyState"]["shop"]["recopied"]), ["public.customers"]);

    // Now orders changes (its triggers held off on the source: audit stays empty there). It
    // has a key into customers and triggers that must not fire on its copy (audit would get
    // rows the source has not); a large object shrinks.
    source
        .psql(
            "shop",
            "set session_replication_role = replica; update orders set total = total * 2 where id <= 100; delete from orders where id = 20000;
             select lo_truncate(lo_open(1001, x'20000'::int), 3);",
        )
        .unwrap();
    let out = pf.run(&["migration", "resume", "--migration-name", "twice", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    let verification = &doc["details"]["verification"][0];
    assert_eq!(verification["mismatches"], json!([]));
    // Both resumes' re-copies are reported.
    assert_eq!(verification["recopiedTables"], json!(["public.customers", "public.orders"]), "{verification}");
    assert_eq!(verification["tablesRecopied"], 2);
    assert_eq!(copied_tables(&out.stderr), ["public.orders"], "only orders changed since the first resume");
    assert_eq!(target.psql("shop", "select count(*) from audit").unwrap(), "0", "no trigger fired on the copied rows");
    assert_exact(&source, &target);
}
