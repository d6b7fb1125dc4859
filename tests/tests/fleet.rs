//! Fleets: the state store on a PostgreSQL control database (`--store postgres://…`), shared
//! by `pgferry worker`s that claim queued migrations with leases. A worker killed mid-copy
//! leaves its migration to another, which finishes it exactly; fifty queued migrations on
//! two workers each run once, none lost.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pgferry::lifecycle::Status;
use pgferry::store::{Holder, Location, NewMigration, ProgressDelta, Store, TableChange};
use pgferry_tests::{compare, Cluster, Pgferry};
use serde_json::{json, Value};

/// A control database of its own for the catalog.
fn control() -> (Cluster, String) {
    let control = Cluster::start().unwrap();
    control.create_database("pgferry").unwrap();
    let uri = control.uri("pgferry");
    (control, uri)
}

fn new<'a>(name: &'a str, target: &'a str, option: &'a str, dbs: &'a [String], props: &'a Value, queued: bool) -> NewMigration<'a> {
    NewMigration {
        name,
        target_server: target,
        source_server: "s:5432",
        source_type: "OnPremises",
        mode: "Offline",
        option,
        databases: dbs,
        properties: props,
        properties_file: None,
        queued,
    }
}

#[test]
fn the_catalog_runs_on_a_postgres_control_database_as_on_sqlite() {
    let (control, uri) = control();
    let location = Location::parse(&uri).unwrap();
    let mut store = Store::open_at(&location).unwrap();
    Store::open_at(&location).expect("opening an up-to-date store again changes nothing");
    let tables = control.psql("pgferry", "select string_agg(tablename, ',' order by tablename) from pg_tables where schemaname = 'pgferry'").unwrap();
    assert!(tables.contains("migration") && tables.contains("table_copied") && tables.contains("lease"), "{tables}");

    let (props, dbs) = (json!({"k": "v"}), vec!["app".to_string()]);
    let m = store.create(&new("m1", "t:5432", "Migrate", &dbs, &props, false)).unwrap();
    let clash = store.create(&new("m1", "t:5432", "Migrate", &dbs, &props, false)).unwrap_err().to_string();
    assert!(clash.contains("already exists for target server t:5432"), "{clash}");
    assert!(store.transition(m.id, Status::SUCCEEDED).is_err(), "the lifecycle is enforced");
    store.transition(m.id, Status::MIGRATING).unwrap();
    store.merge_details(m.id, json!({"a": 1})).unwrap();
    store.merge_details(m.id, json!({"b": {"c": [1, 2]}})).unwrap();
    assert_eq!(store.get_by_id(m.id).unwrap().details, json!({"a": 1, "b": {"c": [1, 2]}}));

    // Tables come back in the order they finished, a table copied again at the end.
    let table = |name: &str| pgferry::store::CopiedTable { table: name.into(), schema: "public".into(), digest: json!({"sum": name}), rows: 1 << 40, ..Default::default() };
    let mut delta = ProgressDelta::default();
    for name in ["public.z", "public.a", "public.m"] {
        delta.tables.push(("app".into(), TableChange::Copied(table(name))));
    }
    delta.steps.insert("app".into(), ("SchemaRestored".into(), vec![]));
    store.save_progress(m.id, &delta).unwrap();
    let again = ProgressDelta { tables: vec![("app".into(), TableChange::Copied(table("public.z")))], ..Default::default() };
    store.save_progress(m.id, &again).unwrap();
    let record = store.resume_record(m.id).unwrap();
    let order: Vec<&str> = record["app"].tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(order, ["public.a", "public.m", "public.z"]);
    assert_eq!(record["app"].tables[0].rows, 1 << 40, "64-bit counts fit");

    // Leases: a live one is exclusive; one expired on another host is taken over.
    let me = Holder::this_process();
    assert!(store.acquire_lease(m.id, &me).unwrap().is_none());
    let other = Holder { id: "9@elsewhere#1".into(), pid: 9, host: "elsewhere".into() };
    assert!(store.acquire_lease(m.id, &other).unwrap().is_some(), "held by a live runner");
    control.psql("pgferry", &format!("update pgferry.lease set holder = '{}', host = 'elsewhere', pid = 9, expires_at_ms = 0 where migration_id = {}", other.id, m.id)).unwrap();
    assert!(store.acquire_lease(m.id, &me).unwrap().is_none(), "an expired lease is taken over");

    // A claim skips a migration held by a live runner elsewhere, takes it once the lease
    // expired, and leaves a later one for the same target waiting its turn.
    let queued = store.create(&new("m2", "t:5432", "Migrate", &dbs, &props, true)).unwrap();
    assert!(queued.queued_at.is_some());
    control.psql("pgferry", &format!("update pgferry.lease set holder = '{}', host = 'elsewhere', pid = 9, expires_at_ms = (extract(epoch from now()) * 1000)::bigint + 60000 where migration_id = {}", other.id, m.id)).unwrap();
    assert!(store.claim(&me).unwrap().is_none(), "m1 is live elsewhere, and m2 waits for m1 on target t:5432");
    let validate = store.create(&new("m3", "t:5432", "Validate", &dbs, &props, true)).unwrap();
    assert_eq!(store.claim(&me).unwrap().map(|c| c.id), Some(validate.id), "a Validate does not wait for the target");
    control.psql("pgferry", &format!("update pgferry.lease set expires_at_ms = 0 where migration_id = {}", m.id)).unwrap();
    assert_eq!(store.claim(&me).unwrap().map(|c| c.id), Some(m.id), "the expired one first");

    // Cancel, leftovers, requests, transitions, list.
    store.set_leftovers(queued.id, &[pgferry::store::Leftover { server: "source".into(), kind: "replication slot".into(), object: "s".into(), problem: "busy".into() }]).unwrap();
    assert_eq!(store.leftovers(queued.id).unwrap().len(), 1);
    let canceling = store.request_cancel(queued.id).unwrap();
    assert_eq!(canceling.status, Status::CANCELING);
    assert!(!store.request(queued.id, pgferry::store::RequestKind::Cancel, &json!({})).unwrap(), "recorded once");
    let history: Vec<Status> = store.transitions(m.id).unwrap().into_iter().map(|(_, s)| s).collect();
    assert_eq!(history, [Status::CREATED, Status::MIGRATING]);
    assert_eq!(store.list(false).unwrap().len(), 3);

    // A store written by a newer pgferry is refused, naming it.
    control.psql("pgferry", "update pgferry.catalog_version set version = 99").unwrap();
    let newer = Store::open_at(&location).err().expect("a newer store is refused").to_string();
    assert!(newer.contains("newer pgferry") && newer.contains("99") && newer.contains(&format!("127.0.0.1:{}", control.port())), "{newer}");
    assert!(!newer.contains("password"), "{newer}");
}

/// A `pgferry worker` on the shared store, its output in `<name>.log`.
fn worker(pf: &Pgferry, uri: &str, name: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(pf.dir().join(format!("{name}.log"))).unwrap();
    let mut cmd = pf.command();
    cmd.args(["worker", "--poll-interval", "0.2", "--jobs", "2"]).args(extra).env("PGFERRY_STORE", uri).stdout(Stdio::null()).stderr(log);
    cmd.spawn().expect("starting a worker")
}

fn worker_log(pf: &Pgferry, name: &str) -> String {
    std::fs::read_to_string(pf.dir().join(format!("{name}.log"))).unwrap_or_default()
}

fn show(pf: &Pgferry, uri: &str, name: &str) -> Value {
    let out = pf.run_with(&["migration", "show", "--migration-name", name, "--output", "json"], &[("PGFERRY_STORE", uri)]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("show {name}: {e}: {}", out.transcript()))
}

fn wait_for(pf: &Pgferry, uri: &str, name: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let doc = show(pf, uri, name);
        if done(&doc) {
            return doc;
        }
        assert!(doc["state"] != "Failed", "{name} failed before {what}: {doc:#}");
        assert!(Instant::now() < deadline, "{name}: no {what} within {timeout:?}: {doc:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn queue(pf: &Pgferry, uri: &str, name: &str, props: &str, target: &Cluster) {
    let target = format!("127.0.0.1:{}", target.port());
    let out = pf.run_with(&["migration", "create", "--migration-name", name, "--properties", props, "--target", &target, "--queue"], &[("PGFERRY_STORE", uri)]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert!(out.stdout.contains("queued: waiting for a pgferry worker"), "{}", out.transcript());
}

#[test]
fn a_worker_killed_mid_copy_leaves_its_migration_to_another_which_finishes_it_exactly() {
    let (_control, uri) = control();
    let (source, target) = (Cluster::start().unwrap(), Cluster::start().unwrap());
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1000000) g;
             create table customers (id serial primary key, name text); insert into customers (name) select 'c' || g from generate_series(1, 5000) g;
             create table orders (id serial primary key, customer int references customers, total numeric); insert into orders (customer, total) select 1 + g % 4000, g from generate_series(1, 20000) g;",
        )
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    queue(&pf, &uri, "shop", &props, &target);

    // Two workers on the store; whichever claims the migration is killed mid-copy.
    let mut workers = vec![(worker(&pf, &uri, "w1", &[]), "w1"), (worker(&pf, &uri, "w2", &[]), "w2")];
    let doc = wait_for(&pf, &uri, "shop", "big streaming", Duration::from_secs(120), |d| {
        let done: Vec<&str> = d["details"]["copyState"]["shop"]["tablesDone"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        d["details"]["progress"]["databases"]["shop"]["bytesCopied"].as_u64().unwrap_or(0) > 2_000_000 && !done.contains(&"public.big")
    });
    let running = workers.iter().position(|(w, _)| doc["runner"]["pid"] == w.id()).unwrap_or_else(|| panic!("a worker runs it: {doc:#}"));
    let (mut killed, killed_name) = workers.remove(running);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let (mut other, other_name) = workers.pop().unwrap();

    let doc = wait_for(&pf, &uri, "shop", "Succeeded", Duration::from_secs(240), |d| d["state"] == "Succeeded");
    other.kill().unwrap();
    other.wait().unwrap();
    assert_eq!(doc["runner"]["alive"], false, "{doc:#}");
    assert!(worker_log(&pf, other_name).contains("claimed migration \"shop\""), "the other worker took it over: {}", worker_log(&pf, other_name));
    assert!(worker_log(&pf, killed_name).contains("claimed migration \"shop\""), "{}", worker_log(&pf, killed_name));
    let states: Vec<&str> = doc["transitions"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert!(!states.contains(&"Failed"), "taken over, not failed: {states:?}");
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]), "{doc:#}");
    compare::assert_same(&source, &target, "shop");
}

#[test]
fn fifty_queued_migrations_on_two_workers_each_run_once_and_none_is_lost() {
    const MIGRATIONS: usize = 50;
    let (_control, uri) = control();
    let source = Cluster::start().unwrap();
    let targets = [Cluster::start().unwrap(), Cluster::start().unwrap()];
    let pf = Pgferry::new();
    for n in 0..MIGRATIONS {
        source.create_database(&format!("db{n:02}")).unwrap();
        source.psql(&format!("db{n:02}"), &format!("create table t (id int primary key, owner text); insert into t values ({n}, 'db{n:02}');")).unwrap();
    }
    for n in 0..MIGRATIONS {
        let db = format!("db{n:02}");
        let props = pf.properties(&source, &db, json!({}));
        queue(&pf, &uri, &format!("m{n:02}"), &props, &targets[n % 2]);
    }
    let mut workers = [worker(&pf, &uri, "w1", &["--until-idle"]), worker(&pf, &uri, "w2", &["--until-idle"])];
    let deadline = Instant::now() + Duration::from_secs(600);
    for w in &mut workers {
        loop {
            if let Some(status) = w.try_wait().unwrap() {
                assert!(status.success(), "a worker failed: {}\n{}", worker_log(&pf, "w1"), worker_log(&pf, "w2"));
                break;
            }
            assert!(Instant::now() < deadline, "the workers did not finish in 10 minutes");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Each migration claimed exactly once, by one of the two.
    let logs = worker_log(&pf, "w1") + &worker_log(&pf, "w2");
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for line in logs.lines().filter(|l| l.contains("claimed migration")) {
        let name = line.split('"').nth(1).unwrap().to_string();
        *claims.entry(name).or_default() += 1;
    }
    assert_eq!(claims.len(), MIGRATIONS, "{logs}");
    assert!(claims.values().all(|n| *n == 1), "a migration claimed twice: {claims:?}");
    let per_worker = |log: &str| worker_log(&pf, log).lines().filter(|l| l.contains("claimed migration")).count();
    assert!(per_worker("w1") > 0 && per_worker("w2") > 0, "both workers worked: w1 {} w2 {}", per_worker("w1"), per_worker("w2"));

    // Every one Succeeded, once through the lifecycle, and its database is on its target.
    for n in 0..MIGRATIONS {
        let doc = show(&pf, &uri, &format!("m{n:02}"));
        assert_eq!(doc["state"], "Succeeded", "{doc:#}");
        let substates: Vec<&str> = doc["transitions"].as_array().unwrap().iter().map(|t| t["substate"].as_str().unwrap()).collect();
        assert_eq!(substates.iter().filter(|s| **s == "MigratingData").count(), 1, "migrated once: {substates:?}");
        let owner = targets[n % 2].psql(&format!("db{n:02}"), "select owner from t").unwrap();
        assert_eq!(owner.trim(), format!("db{n:02}"));
    }
}

#[test]
fn a_control_database_restart_mid_copy_is_ridden_out_and_the_copy_ends_exact() {
    let (control, uri) = control();
    let (source, target) = (Cluster::start().unwrap(), Cluster::start().unwrap());
    source.create_database("shop").unwrap();
    source.psql("shop", "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1000000) g;").unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    queue(&pf, &uri, "shop", &props, &target);
    let mut w = worker(&pf, &uri, "w", &[]);
    wait_for(&pf, &uri, "shop", "big streaming", Duration::from_secs(120), |d| d["details"]["progress"]["databases"]["shop"]["bytesCopied"].as_u64().unwrap_or(0) > 2_000_000);
    control.restart().unwrap();
    let doc = wait_for(&pf, &uri, "shop", "Succeeded", Duration::from_secs(240), |d| d["state"] == "Succeeded");
    w.kill().unwrap();
    w.wait().unwrap();
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]), "{doc:#}");
    compare::assert_same(&source, &target, "shop");
    // The store did restart under the run (which took it in its stride: a statement on a
    // connection the restart ended is run again on a new one).
    let restarts = control.log().matches("database system is ready to accept connections").count();
    assert_eq!(restarts, 2, "the control database restarted once mid-copy: {}", control.log());
    assert!(!doc["transitions"].as_array().unwrap().iter().any(|t| t["state"] == "Failed"), "{doc:#}");
}
