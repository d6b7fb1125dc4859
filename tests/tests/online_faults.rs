//! Online migrations through short outages: a fault-injecting proxy sits between pgferry and
//! one server while a write load runs on the source. A restart or a reset costs a reconnect,
//! and the target still ends an exact copy; an outage longer than `--reconnect-timeout`
//! fails the migration, naming the server and the command to run next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgferry_tests::compare::{self, sequences};
use pgferry_tests::{Cluster, Pgferry, Proxy};
use serde_json::{json, Value};

fn source_cluster() -> Cluster {
    Cluster::builder().setting("wal_level", "logical").setting("max_replication_slots", "10").setting("max_wal_senders", "10").start().unwrap()
}

/// Properties of an online migration of `db` from the source reached at `port`.
fn online(pf: &Pgferry, port: u16, db: &str) -> String {
    let body = json!({"properties": {
        "SourceDBServerResourceId": format!("127.0.0.1:{port}@postgres"),
        "DBsToMigrate": [db],
        "sourceType": "OnPremises",
        "MigrationMode": "Online",
    }});
    pf.write(&format!("{db}.json"), body.to_string()).display().to_string()
}

/// Which server the fault-injecting proxy stands in front of.
#[derive(PartialEq)]
enum Through {
    Source,
    Target,
}

/// Two clusters (the source ready for logical replication, `bench` loaded), a proxy in front
/// of one of them, and the properties of an online migration of `bench` through it.
struct Setup {
    source: Cluster,
    target: Cluster,
    proxy: Proxy,
    pf: Pgferry,
    props: String,
    target_arg: String,
}

impl Setup {
    fn new(through: Through) -> Setup {
        let source = source_cluster();
        let target = Cluster::start().unwrap();
        load(&source, "bench");
        let proxy = Proxy::start(if through == Through::Source { source.port() } else { target.port() }).unwrap();
        let pf = Pgferry::new();
        let (source_port, target_port) = if through == Through::Source { (proxy.port(), target.port()) } else { (source.port(), proxy.port()) };
        let props = online(&pf, source_port, "bench");
        Setup { source, target, proxy, pf, props, target_arg: format!("127.0.0.1:{target_port}") }
    }

    /// `migration create … --no-wait` with `extra` arguments and environment.
    fn create(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) {
        let mut args = vec!["migration", "create", "--migration-name", name, "--properties", &self.props, "--target", &self.target_arg, "--no-wait"];
        args.extend_from_slice(extra);
        let out = self.pf.run_with(&args, env);
        assert_eq!(out.code, 0, "{}", out.transcript());
    }
}

fn pgbench(source: &Cluster) -> std::process::Command {
    let mut cmd = std::process::Command::new(source.bin_dir().join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &source.port().to_string(), "-U", "postgres"]);
    cmd
}

/// pgbench's tables (scale 1), a ledger of increments whose sum shows a transaction lost or
/// applied twice, and a publication of the user's own (migrated, unlike pgferry's).
fn load(source: &Cluster, db: &str) {
    source.create_database(db).unwrap();
    let out = pgbench(source).args(["-i", "-s", "1", "-q", db]).output().unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    source
        .psql(db, "alter table pgbench_history replica identity full; create table ledger (id bigserial primary key, delta int not null); create publication userpub for table pgbench_accounts")
        .unwrap();
}

/// A write load that outlives source restarts: short pgbench runs one after the other until
/// stopped (a run cut by a restart just fails; its committed transactions stand). Throttled:
/// a debug build applying on two shared cores must keep up, or the cutover waits for it.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Load {
    fn start(source: &Cluster, pf: &Pgferry, db: &str) -> Load {
        let script = pf.write("script.sql", "INSERT INTO ledger (delta) VALUES (1);\n");
        let stop = Arc::new(AtomicBool::new(false));
        let mut cmd = pgbench(source);
        cmd.args(["-n", "-c", "2", "-j", "1", "-T", "1", "-R", "50", "-b", "tpcb-like@5", "-f"]).arg(format!("{}@5", script.display())).arg(db);
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut succeeded = 0;
                while !stop.load(Ordering::SeqCst) {
                    if cmd.output().is_ok_and(|o| o.status.success()) {
                        succeeded += 1;
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                succeeded
            }
        });
        Load { stop, thread: Some(thread) }
    }

    /// Stops the load; how many runs succeeded.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn applied(doc: &Value) -> u64 {
    doc["details"]["replicationProgress"]["bench"]["transactions"].as_u64().unwrap_or(0)
}

/// Waits for `more` transactions applied beyond `before`, the migration staying in `substate`.
fn wait_for_applies(pf: &Pgferry, name: &str, substate: &str, before: u64, more: u64) -> Value {
    pf.wait_for(name, &format!("{more} more transactions applied in {substate}"), Duration::from_secs(60), |d| {
        assert_eq!(d["substate"], substate, "{d:#}");
        applied(d) >= before + more && d["details"]["replicationProgress"]["bench"].get("reconnecting").is_none()
    })
}

/// The cutover ends Succeeded and the target is an exact copy, with nothing of the
/// migration left on either server (and pgferry's publication never copied).
fn cut_over_and_check(pf: &Pgferry, name: &str, source: &Cluster, target: &Cluster) {
    let out = pf.run(&["migration", "update", "--migration-name", name, "--cutover", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded", "{doc:#}");
    assert_exact_and_clean(source, target);
}

/// The target is an exact copy, with nothing of the migration left on either server (and
/// pgferry's publication never copied).
fn assert_exact_and_clean(source: &Cluster, target: &Cluster) {
    assert_eq!(compare::table_digests(target, "bench", true), compare::table_digests(source, "bench", true), "table contents differ");
    assert_eq!(sequences(target, "bench"), sequences(source, "bench"), "sequences differ");
    let sum = |c: &Cluster| c.psql("bench", "select count(*), coalesce(sum(delta), 0) from ledger").unwrap();
    assert_eq!(sum(target), sum(source), "the ledger's increments differ: a transaction was lost or applied twice");
    assert_nothing_left(source);
    let origins = target.psql("postgres", "select count(*) from pg_replication_origin").unwrap();
    assert_eq!(origins.trim(), "0", "replication origins left on the target");
    let publications = target.psql("bench", "select string_agg(pubname, ',' order by pubname) from pg_publication").unwrap();
    assert_eq!(publications.trim(), "userpub", "the user's publication is migrated, pgferry's is not");
}

fn assert_nothing_left(source: &Cluster) {
    let slots = source.psql("postgres", "select count(*) from pg_replication_slots where slot_name like 'pgferry%'").unwrap();
    assert_eq!(slots.trim(), "0", "replication slots left on the source");
    let publications = source.psql("bench", "select count(*) from pg_publication where pubname like 'pgferry%'").unwrap();
    assert_eq!(publications.trim(), "0", "publications left on the source");
}

#[test]
fn a_source_restart_while_waiting_for_cutover_costs_a_reconnect_not_the_migration() {
    let setup = Setup::new(Through::Source);
    let Setup { source, target, proxy, pf, .. } = &setup;
    let load = Load::start(source, pf, "bench");
    setup.create("restarted", &["--reconnect-timeout", "60"], &[]);
    let doc = pf.wait_for("restarted", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    let before = applied(&doc);

    // Down long enough for show to say so, then up again.
    source.stop().unwrap();
    let doc = pf.wait_for("restarted", "reconnecting", Duration::from_secs(30), |d| d["details"]["replicationProgress"]["bench"].get("reconnecting").is_some());
    assert_eq!(doc["substate"], "WaitingForCutoverTrigger", "{doc:#}");
    let reconnecting = &doc["details"]["replicationProgress"]["bench"]["reconnecting"];
    assert!(reconnecting["attempts"].as_u64().unwrap() >= 1 && reconnecting["since"].is_string(), "{reconnecting:#}");
    let server = format!("source server 127.0.0.1:{}", proxy.port());
    assert_eq!(reconnecting["server"], server.as_str(), "{reconnecting:#}");
    source.restart().unwrap();

    // Streaming again: the load's new transactions arrive, the reconnecting mark is gone.
    wait_for_applies(pf, "restarted", "WaitingForCutoverTrigger", before, 20);
    assert!(load.finish() > 0, "the load ran");
    cut_over_and_check(pf, "restarted", source, target);
}

#[test]
fn target_connections_reset_mid_stream_are_reconnected_and_the_copy_stays_exact() {
    let setup = Setup::new(Through::Target);
    let Setup { source, target, proxy, pf, .. } = &setup;
    let load = Load::start(source, pf, "bench");
    setup.create("reset", &[], &[]);

    // Once changes stream (catching up in MigratingData, or already waiting), cut the
    // target's connections, and again while waiting for the cutover.
    let doc = pf.wait_for("reset", "streaming", Duration::from_secs(120), |d| applied(d) > 0);
    let accepted = proxy.accepted();
    proxy.reset_all();
    let doc = pf.wait_for("reset", "more applied after the first reset", Duration::from_secs(60), |d| applied(d) >= applied(&doc) + 20);
    assert!(proxy.accepted() > accepted, "pgferry reconnected through the proxy");
    let doc = pf.wait_for("reset", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger" && applied(d) > applied(&doc));
    proxy.reset_all();
    wait_for_applies(pf, "reset", "WaitingForCutoverTrigger", applied(&doc), 20);
    assert!(load.finish() > 0, "the load ran");
    cut_over_and_check(pf, "reset", source, target);
}

#[test]
fn a_source_stalled_past_the_reconnect_timeout_fails_naming_the_server_and_resume() {
    let setup = Setup::new(Through::Source);
    let Setup { source, proxy, pf, .. } = &setup;
    // A connection attempt into the stall waits 10 s: the failure's cleanup gets through once
    // the stall ends, a few seconds after the 5 s limit.
    setup.create("stalled", &["--reconnect-timeout", "5"], &[("PGCONNECT_TIMEOUT", "10")]);
    pf.wait_for("stalled", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");

    proxy.stall(true);
    let stalled = Instant::now();
    // The monitor finds the source silent within its poll interval and a connect timeout.
    let doc = pf.wait_for("stalled", "reconnecting", Duration::from_secs(30), |d| d["details"]["replicationProgress"]["bench"].get("reconnecting").is_some());
    assert_eq!(doc["state"], "WaitingForUserAction", "still waiting while it reconnects: {doc:#}");
    std::thread::sleep(Duration::from_secs(7));
    proxy.stall(false);
    let doc = pf.wait_for("stalled", "Failed", Duration::from_secs(60), |d| d["state"] == "Failed");
    eprintln!("failed {:.1} s after the stall began: {}", stalled.elapsed().as_secs_f64(), doc["error"]);
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    let server = format!("source server 127.0.0.1:{}", proxy.port());
    assert!(message.contains("gave up after") && message.contains(&server), "the error names the server: {message}");
    assert!(message.contains("pgferry migration resume --migration-name stalled"), "the error says what to run next: {message}");
    assert_eq!(doc["error"]["step"], "WaitingForCutoverTrigger", "{doc:#}");
    assert_nothing_left(source);
}

#[test]
fn a_target_stalled_for_a_while_is_noticed_and_streaming_resumes_after_it() {
    let setup = Setup::new(Through::Target);
    let Setup { source, target, proxy, pf, .. } = &setup;
    let load = Load::start(source, pf, "bench");
    setup.create("frozen", &["--reconnect-timeout", "60"], &[]);
    let doc = pf.wait_for("frozen", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    let before = applied(&doc);
    let started = Instant::now();

    // The applier waits for answers that do not come: the target's monitor notices.
    proxy.stall(true);
    let doc = pf.wait_for("frozen", "reconnecting", Duration::from_secs(30), |d| d["details"]["replicationProgress"]["bench"].get("reconnecting").is_some());
    assert_eq!(doc["substate"], "WaitingForCutoverTrigger", "{doc:#}");
    let server = format!("target server 127.0.0.1:{}", proxy.port());
    assert_eq!(doc["details"]["replicationProgress"]["bench"]["reconnecting"]["server"], server.as_str(), "{doc:#}");
    proxy.stall(false);

    wait_for_applies(pf, "frozen", "WaitingForCutoverTrigger", before, 20);
    eprintln!("streaming again {:.1} s after the stall began", started.elapsed().as_secs_f64());
    assert!(load.finish() > 0, "the load ran");
    cut_over_and_check(pf, "frozen", source, target);
}

#[test]
fn a_target_refusing_connections_mid_cutover_holds_the_cutover_until_it_is_back() {
    let setup = Setup::new(Through::Target);
    let Setup { source, target, proxy, pf, .. } = &setup;
    setup.create("held", &["--reconnect-timeout", "60"], &[]);
    pf.wait_for("held", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    source.psql("bench", "insert into ledger (delta) select 1 from generate_series(1, 100)").unwrap();

    // The streams keep their connections and apply up to the fence; every connection the
    // cutover's last part opens (origins, materialized views, verification) is turned away.
    proxy.refuse(true);
    let out = pf.run(&["migration", "update", "--migration-name", "held", "--cutover", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc = pf.wait_for("held", "reconnecting in CompletingMigration", Duration::from_secs(60), |d| {
        d["substate"] == "CompletingMigration" && d["details"].get("reconnecting").is_some_and(Value::is_object)
    });
    let server = format!("target server 127.0.0.1:{}", proxy.port());
    assert_eq!(doc["details"]["reconnecting"]["server"], server.as_str(), "{doc:#}");
    std::thread::sleep(Duration::from_secs(2));
    proxy.refuse(false);

    let doc = pf.wait_for("held", "Succeeded", Duration::from_secs(120), |d| d["state"] == "Succeeded");
    let states: Vec<&str> = doc["transitions"].as_array().unwrap().iter().filter_map(|t| t["state"].as_str()).collect();
    assert!(!states.contains(&"Failed"), "{states:?}");
    assert!(doc["details"]["cutover"]["completedAt"].is_string(), "the receipt is recorded: {doc:#}");
    assert_exact_and_clean(source, target);
}
