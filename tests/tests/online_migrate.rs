//! Online migration end to end: a pgbench write load runs on the source during the whole
//! migration; the target must end an exact copy (every table's rows, every sequence), and
//! nothing of the migration may be left on the source.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgferry_tests::compare::{self, sequences};
use pgferry_tests::{Cluster, Pgferry};
use serde_json::{json, Value};

fn source_cluster() -> Cluster {
    Cluster::builder().setting("wal_level", "logical").setting("max_replication_slots", "10").setting("max_wal_senders", "10").start().unwrap()
}

/// Properties of an online migration of `db` from `source`, `extra` keys merged in.
fn online(pf: &Pgferry, source: &Cluster, db: &str, extra: Value) -> String {
    let mut extra = extra;
    extra["MigrationMode"] = json!("Online");
    pf.properties(source, db, extra)
}

fn pgbench(source: &Cluster) -> Command {
    let mut cmd = Command::new(source.bin_dir().join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &source.port().to_string(), "-U", "postgres"]);
    cmd
}

/// Loads pgbench's tables plus tables that exercise what pgbench does not: TOASTed values
/// left unchanged by an UPDATE, a table without a key (REPLICA IDENTITY FULL), and a
/// ledger of increments whose sum shows whether a transaction was applied twice.
fn load(source: &Cluster, db: &str) {
    source.create_database(db).unwrap();
    let out = pgbench(source).args(["-i", "-s", "2", "-q", db]).output().unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    source
        .psql(
            db,
            "alter table pgbench_history replica identity full;
             create table toasty (id int primary key, big text not null, n int not null default 0);
             insert into toasty select g, (select string_agg(md5(random()::text || g || s), '') from generate_series(1, 300) s), 0 from generate_series(1, 200) g;
             create table keyless (a int, b text);
             alter table keyless replica identity full;
             insert into keyless select g % 50, 'row ' || g from generate_series(1, 500) g;
             create table ledger (id bigserial primary key, delta int not null);
             create table dated (id int primary key, d date not null, i interval not null);
             insert into dated select g, date '2026-01-31', interval '1 day' from generate_series(0, 9) g;",
        )
        .unwrap();
    // Changes arrive as text written with the walsender's settings: a day-first DateStyle
    // would turn 1 February into 2 January on a target reading month first.
    source.psql(db, &format!("alter database {db} set datestyle = 'SQL, DMY'; alter database {db} set intervalstyle = 'sql_standard'")).unwrap();
}

/// The custom script: updates TOASTed rows without touching the TOASTed column, deletes and
/// reinserts, works on the keyless table, appends increments to the ledger and moves dates
/// and intervals (which the source writes day first).
const SCRIPT: &str = r"\set id random(1, 200)
\set k random(0, 49)
BEGIN;
UPDATE toasty SET n = n + 1 WHERE id = :id;
DELETE FROM keyless WHERE ctid = (SELECT ctid FROM keyless WHERE a = :k LIMIT 1);
INSERT INTO keyless VALUES (:k, 'again');
UPDATE keyless SET b = b || '+' WHERE ctid = (SELECT ctid FROM keyless WHERE a = :k LIMIT 1);
INSERT INTO ledger (delta) VALUES (1);
UPDATE dated SET d = d + 1, i = i + interval '1 day 1 hour' WHERE id = :k % 10;
END;
";

struct Load(Child);

impl Load {
    fn start(source: &Cluster, db: &str, script: &std::path::Path, seconds: u32) -> Load {
        let child = pgbench(source)
            .args(["-c", "4", "-j", "2", "-T", &seconds.to_string(), "-b", "tpcb-like@5", "-f"])
            .arg(format!("{}@5", script.display()))
            .arg(db)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load(child)
    }

    fn finish(mut self) {
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(self.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "pgbench failed: {err}");
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nothing of migration `id` on the source: no slot, no publication.
fn assert_nothing_left(source: &Cluster, db: &str) {
    let slots = source.psql("postgres", "select count(*) from pg_replication_slots where slot_name like 'pgferry%'").unwrap();
    assert_eq!(slots.trim(), "0", "replication slots left on the source");
    let publications = source.psql(db, "select count(*) from pg_publication where pubname like 'pgferry%'").unwrap();
    assert_eq!(publications.trim(), "0", "publications left on the source");
}

fn assert_same(source: &Cluster, target: &Cluster, db: &str) {
    // Materialized views as a refresh leaves them: the target's were refreshed at cutover.
    assert_eq!(compare::table_digests(target, db, true), compare::table_digests(source, db, true), "table contents differ");
    assert_eq!(sequences(target, db), sequences(source, db), "sequences differ");
    let sum = |c: &Cluster| c.psql(db, "select count(*), coalesce(sum(delta), 0) from ledger").unwrap();
    assert_eq!(sum(target), sum(source), "the ledger's increments differ: a transaction was lost or applied twice");
}

#[test]
fn pgbench_load_during_online_migration_then_cutover_gives_an_exact_copy() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    load(&source, "bench");
    // Two tables without a key that the user lets pgferry give a replica identity: one has
    // a unique index on NOT NULL columns (USING INDEX), the other nothing (FULL).
    source
        .psql(
            "bench",
            "alter table pgbench_history replica identity default;
             create table coded (code text not null, label text); create unique index coded_code on coded (code);
             insert into coded select 'c' || g, 'label ' || g from generate_series(1, 100) g;",
        )
        .unwrap();
    let identities = "select relname || ' ' || relreplident::text from pg_class where relname in ('pgbench_history', 'coded') order by 1";
    let pf = Pgferry::new();
    let script = pf.write("script.sql", format!("{SCRIPT}UPDATE coded SET label = label || '!' WHERE code = 'c' || :id % 100;\n"));
    let props = online(&pf, &source, "bench", json!({"SetReplicaIdentity": "true"}));
    let target_arg = format!("127.0.0.1:{}", target.port());

    source.psql("bench", "create materialized view branch_totals as select bid, sum(abalance) from pgbench_accounts group by bid").unwrap();
    let load = Load::start(&source, "bench", &script, 25);
    std::thread::sleep(Duration::from_secs(2));
    let out = pf.run(&["migration", "create", "--migration-name", "online", "--properties", &props, "--target", &target_arg, "--no-wait", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc = pf.wait_for("online", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    // Changes keep flowing while it waits.
    let applied = |d: &Value| d["details"]["replicationProgress"]["bench"]["transactions"].as_u64().unwrap_or(0);
    let before = applied(&doc);
    // …and the target keeps up: the lag comes down under load (a debug build on two cores).
    let lag = |d: &Value| d["details"]["replicationProgress"]["bench"]["latencySeconds"].as_f64().unwrap_or(f64::MAX);
    let doc = pf.wait_for("online", "more applied transactions, less than 5 s behind", Duration::from_secs(30), |d| applied(d) > before + 20 && lag(d) < 5.0);
    assert_eq!(source.psql("bench", identities).unwrap(), "coded i\npgbench_history f", "identities given while migrating");
    let validation = doc["validation"].to_string();
    assert!(validation.contains("SetReplicaIdentity: pgferry gives it one"), "the consent turned the error into a warning: {validation}");
    let progress = &doc["details"]["replicationProgress"]["bench"];
    assert!(progress["inserts"].as_u64().unwrap() > 0 && progress["updates"].as_u64().unwrap() > 0 && progress["deletes"].as_u64().unwrap() > 0, "{progress:#}");
    assert!(progress.get("walBytesPending").is_some(), "{progress:#}");
    let text = pf.run(&["migration", "show", "--migration-name", "online"]);
    assert!(text.stdout.contains("Replicating     bench: "), "{}", text.stdout);
    // One transaction longer than the apply's pipeline (512 requests): the ledger's sum
    // shows it arrived whole and once.
    source.psql("bench", "insert into ledger (delta) select 1 from generate_series(1, 5000)").unwrap();
    load.finish();
    // Once the source is idle, the target is not behind at all.
    pf.wait_for("online", "a latency of 0 on an idle source", Duration::from_secs(30), |d| lag(d) == 0.0);

    let requested = Instant::now();
    let out = pf.run(&["migration", "update", "--migration-name", "online", "--cutover", "--output", "json"]);
    let cutover_seconds = requested.elapsed().as_secs_f64();
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded", "{doc:#}");
    let receipt = &doc["details"]["cutover"];
    assert!(receipt["fenceLsn"]["bench"].as_str().is_some_and(|l| l.contains('/')), "{receipt:#}");
    assert!(receipt["fenceAppliedAt"].is_string() && receipt["completedAt"].is_string(), "{receipt:#}");
    assert!(receipt["tablesVerified"].as_u64().unwrap() >= 7, "{receipt:#}");
    let substates: Vec<&str> = doc["transitions"].as_array().unwrap().iter().map(|t| t["substate"].as_str().unwrap()).collect();
    assert_eq!(substates, ["PerformingPreRequisiteSteps", "ValidationInProgress", "MigratingData", "WaitingForCutoverTrigger", "CompletingMigration", "Completed"]);
    eprintln!("cutover took {cutover_seconds:.2} s including verification");

    assert_same(&source, &target, "bench");
    let totals = "select * from branch_totals order by bid";
    let fresh = source.psql("bench", &format!("begin; refresh materialized view branch_totals; {totals}; rollback")).unwrap();
    let fresh: Vec<&str> = fresh.lines().filter(|l| l.contains('|')).collect();
    assert_eq!(target.psql("bench", totals).unwrap().lines().collect::<Vec<_>>(), fresh, "materialized views are refreshed at cutover");
    assert_nothing_left(&source, "bench");
    assert_eq!(source.psql("bench", identities).unwrap(), "coded d\npgbench_history d", "the replica identities are restored");
    let origins = target.psql("postgres", "select count(*) from pg_replication_origin").unwrap();
    assert_eq!(origins.trim(), "0", "replication origins left on the target");
}

#[test]
fn cancel_while_waiting_for_cutover_leaves_nothing_on_the_source() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    load(&source, "bench");
    let pf = Pgferry::new();
    let props = online(&pf, &source, "bench", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let out = pf.run(&["migration", "create", "--migration-name", "doomed", "--properties", &props, "--target", &target_arg, "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    pf.wait_for("doomed", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    let slots = source.psql("postgres", "select count(*) from pg_replication_slots where slot_name like 'pgferry%'").unwrap();
    assert_eq!(slots.trim(), "1", "the migration streams from one slot");

    let out = pf.run(&["migration", "update", "--migration-name", "doomed", "--cancel"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    // The runner notices within a second, drops slot, publication and target database.
    let doc = pf.wait_for("doomed", "the runner's cleanup", Duration::from_secs(30), |d| d["details"].get("droppedOnCancel").is_some());
    assert_eq!(doc["state"], "Canceled");
    assert_nothing_left(&source, "bench");
    let dbs = target.psql("postgres", "select count(*) from pg_database where datname = 'bench'").unwrap();
    assert_eq!(dbs.trim(), "0", "the canceled migration's database is still on the target");
}

/// Waits until the target shows a COPY into it: the base copy is under way.
fn wait_for_copy(target: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let copying = target.psql("postgres", "select count(*) from pg_stat_activity where query like 'COPY %FROM STDIN%'").unwrap_or_default();
        if copying.trim() != "0" && !copying.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the base copy never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn kill_9_during_base_copy_and_during_apply_then_resume_applies_every_transaction_once() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    source.create_database("bench").unwrap();
    // Big enough that the base copy takes a moment to catch it in the act.
    let out = pgbench(&source).args(["-i", "-s", "10", "-q", "bench"]).output().unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    source.psql("bench", "alter table pgbench_history replica identity full; create table ledger (id bigserial primary key, delta int not null);").unwrap();
    let pf = Pgferry::new();
    let script = pf.write("ledger.sql", "INSERT INTO ledger (delta) VALUES (1);\n");
    let props = online(&pf, &source, "bench", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let load = Load::start(&source, "bench", &script, 30);
    let spawn = |args: &[&str]| pf.command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();

    // 1. Killed during the base copy: the copy starts over with a new slot.
    let mut runner = spawn(&["migration", "create", "--migration-name", "crashy", "--properties", &props, "--target", &target_arg, "--jobs", "2"]);
    wait_for_copy(&target);
    kill_9(&mut runner);
    let doc = pf.show("crashy");
    assert_eq!((doc["state"].as_str(), doc["substate"].as_str()), (Some("InProgress"), Some("MigratingData")), "{doc:#}");
    let first_slot = source.psql("postgres", "select slot_name from pg_replication_slots").unwrap();
    assert_eq!(first_slot.trim(), "pgferry_1_0", "the killed runner's slot stays until resume or cancel");

    let mut runner = spawn(&["migration", "resume", "--migration-name", "crashy"]);
    let applied = |d: &Value| d["details"]["replicationProgress"]["bench"]["transactions"].as_u64().unwrap_or(0);
    pf.wait_for("crashy", "WaitingForCutoverTrigger after resume", Duration::from_secs(180), |d| d["substate"] == "WaitingForCutoverTrigger");
    // It streams: what the source commits now is applied (the load may be over by now on a
    // busy machine, so these are made here).
    source.psql("bench", "insert into ledger (delta) select 1 from generate_series(1, 100)").unwrap();
    pf.wait_for("crashy", "changes applied after resume", Duration::from_secs(60), |d| applied(d) > 0);
    let slots = source.psql("postgres", "select count(*) from pg_replication_slots").unwrap();
    assert_eq!(slots.trim(), "1", "the interrupted copy's slot was replaced, not added to");

    // 2. Killed while applying: it goes on from the position the target committed.
    kill_9(&mut runner);
    let ledger = |c: &Cluster| c.psql("bench", "select count(*) from ledger").unwrap().trim().parse::<u64>().unwrap();
    let at_kill = ledger(&target);
    // Changes made while no runner applies (the load may be over by now on a busy machine).
    source.psql("bench", "insert into ledger (delta) select 1 from generate_series(1, 200)").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut runner = spawn(&["migration", "resume", "--migration-name", "crashy"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger(&target) < at_kill + 200 {
        assert!(Instant::now() < deadline, "the resumed runner does not apply: {:#}", pf.show("crashy"));
        std::thread::sleep(Duration::from_millis(100));
    }
    load.finish();

    // A session left open on the source: --read-only-source ends it before the fence.
    let mut idle = Command::new(source.bin_dir().join("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &source.port().to_string(), "-U", "postgres", "-d", "bench", "-c", "select pg_sleep(600)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = pf.run(&["migration", "update", "--migration-name", "crashy", "--cutover", "--read-only-source", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(runner.wait().unwrap().code(), Some(0), "the resumed runner ends with the migration");
    assert!(!idle.wait().unwrap().success(), "the open session on the source was ended");
    let read_only = source.psql("bench", "show default_transaction_read_only").unwrap();
    assert_eq!(read_only.trim(), "on", "the source database is read-only for new sessions");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["details"]["cutover"]["readOnlySource"], true);
    assert_eq!(target.psql("bench", "show default_transaction_read_only").unwrap().trim(), "off", "the target stays writable");
    // The comparison below writes temp tables.
    source.psql("postgres", "alter database bench reset default_transaction_read_only").unwrap();
    assert_same(&source, &target, "bench");
    assert_nothing_left(&source, "bench");
}

#[test]
fn cancel_after_the_runner_died_cleans_up_by_itself() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    load(&source, "bench");
    source.psql("bench", "create materialized view branch_totals as select bid, sum(abalance) from pgbench_accounts group by bid").unwrap();
    let pf = Pgferry::new();
    let props = online(&pf, &source, "bench", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let mut runner = pf
        .command()
        .args(["migration", "create", "--migration-name", "orphan", "--properties", &props, "--target", &target_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    pf.wait_for("orphan", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    kill_9(&mut runner);

    // No runner is left to notice the cancel: the command removes what the migration made.
    let out = pf.run(&["migration", "update", "--migration-name", "orphan", "--cancel", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Canceled");
    assert_eq!(doc["details"]["droppedOnCancel"], json!(["bench"]), "{doc:#}");
    assert_nothing_left(&source, "bench");
    let dbs = target.psql("postgres", "select count(*) from pg_database where datname = 'bench'").unwrap();
    assert_eq!(dbs.trim(), "0");
    let origins = target.psql("postgres", "select count(*) from pg_replication_origin").unwrap();
    assert_eq!(origins.trim(), "0", "replication origins left on the target");
}

#[test]
fn an_apply_failure_ends_failed_naming_the_table_and_drops_the_slot() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    load(&source, "bench");
    let pf = Pgferry::new();
    let props = online(&pf, &source, "bench", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let out = pf.run(&["migration", "create", "--migration-name", "clash", "--properties", &props, "--target", &target_arg, "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    pf.wait_for("clash", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    // Someone writes to the target behind the migration's back: the next replicated insert
    // into the ledger collides with it.
    target.psql("bench", "insert into ledger (id, delta) values (1, 42)").unwrap();
    source.psql("bench", "insert into ledger (delta) values (1)").unwrap();
    let doc = pf.wait_for("clash", "Failed", Duration::from_secs(30), |d| d["state"] == "Failed");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(doc["state"], "Failed", "{doc:#}");
    assert!(message.contains("public.ledger") || message.contains("\"ledger\""), "the error names the table: {message}");
    assert!(message.contains("duplicate key"), "the error carries PostgreSQL's message: {message}");
    assert_eq!(doc["error"]["step"], "WaitingForCutoverTrigger");
    assert_nothing_left(&source, "bench");
}

#[test]
fn a_target_user_that_cannot_apply_changes_is_refused_before_anything_is_created() {
    let source = source_cluster();
    let target = Cluster::start().unwrap();
    load(&source, "bench");
    target.psql("postgres", "create role mover login createdb createrole").unwrap();
    let pf = Pgferry::new();
    let props = online(&pf, &source, "bench", json!({}));
    let target_arg = format!("postgresql://mover@127.0.0.1:{}/postgres", target.port());
    let out = pf.run(&["migration", "create", "--migration-name", "weak", "--properties", &props, "--target", &target_arg, "--migration-option", "Migrate"]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(out.stdout.contains("cannot apply replicated changes") && out.stdout.contains("mover"), "{}", out.transcript());
    assert_nothing_left(&source, "bench");
    let dbs = target.psql("postgres", "select count(*) from pg_database where datname = 'bench'").unwrap();
    assert_eq!(dbs.trim(), "0");
}
