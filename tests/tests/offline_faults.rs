//! Offline migrations through outages: a fault-injecting proxy between pgferry and one
//! server cuts or freezes its connections while a big table streams. Once the server answers
//! again the copy goes on from what the catalog says was finished, and the target still ends
//! an exact copy; an outage past `--reconnect-timeout` fails naming the server and the
//! command to run next, and leaves nothing on the target.

use std::time::Duration;

use pgferry_tests::{compare, Cluster, Pgferry, Proxy};
use serde_json::{json, Value};

/// A table that takes seconds to copy, small ones with a key between them, a sequence and a
/// large object.
const SHOP: &str = "
    create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1000000) g;
    create table customers (id serial primary key, name text); insert into customers (name) select 'c' || g from generate_series(1, 5000) g;
    create table orders (id serial primary key, customer int references customers, total numeric); insert into orders (customer, total) select 1 + g % 4000, g from generate_series(1, 20000) g;
    select lo_from_bytea(1001, convert_to(repeat('poster ', 1000), 'UTF8'));";

fn shop() -> (Cluster, Cluster) {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("shop").unwrap();
    source.psql("shop", SHOP).unwrap();
    (source, target)
}

/// Properties of an offline migration of `shop` from the source reached at `port`.
fn properties(pf: &Pgferry, port: u16) -> String {
    let body = json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{port}@postgres"), "DBsToMigrate": ["shop"], "sourceType": "OnPremises"}});
    pf.write("shop.json", body.to_string()).display().to_string()
}

/// Starts the migration in the background; a short connect timeout, so that a server that
/// stopped answering is noticed within seconds.
fn start(pf: &Pgferry, name: &str, props: &str, target_port: u16, extra: &[&str]) {
    let target = format!("127.0.0.1:{target_port}");
    let mut args = vec!["migration", "create", "--migration-name", name, "--properties", props, "--target", &target, "--jobs", "2", "--no-wait"];
    args.extend_from_slice(extra);
    let out = pf.run_with(&args, &[("PGCONNECT_TIMEOUT", "2")]);
    assert_eq!(out.code, 0, "{}", out.transcript());
}

/// Waits until `big` is streaming: bytes copied, the table not finished.
fn wait_mid_copy(pf: &Pgferry, name: &str) -> Value {
    pf.wait_for(name, "big streaming", Duration::from_secs(120), |d| {
        let progress = &d["details"]["progress"]["databases"]["shop"];
        let done: Vec<&str> = d["details"]["copyState"]["shop"]["tablesDone"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        progress["bytesCopied"].as_u64().unwrap_or(0) > 2_000_000 && !done.contains(&"public.big")
    })
}

fn reconnecting(doc: &Value) -> Option<&Value> {
    doc["details"].get("reconnecting").filter(|r| r.is_object())
}

/// Every state the migration went through, in order.
fn states(doc: &Value) -> Vec<String> {
    doc["transitions"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
}

/// Succeeded without passing through Failed, an exact copy, its work dir gone.
fn assert_succeeded_exact(pf: &Pgferry, name: &str, source: &Cluster, target: &Cluster) {
    let doc = pf.wait_for(name, "Succeeded", Duration::from_secs(240), |d| d["state"] == "Succeeded");
    assert!(!states(&doc).contains(&"Failed".to_string()), "the outage was ridden out, not failed and resumed: {:?}", states(&doc));
    assert!(reconnecting(&doc).is_none(), "the outage is over: {doc:#}");
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]), "{doc:#}");
    compare::assert_same(source, target, "shop");
    let work_dir = doc["details"]["workDir"].as_str().expect("the work dir is recorded");
    assert!(!std::path::Path::new(work_dir).exists(), "the work dir {work_dir} is removed");
}

#[test]
fn source_connections_reset_mid_copy_are_reconnected_and_the_copy_stays_exact() {
    let (source, target) = shop();
    let proxy = Proxy::start(source.port()).unwrap();
    let pf = Pgferry::new();
    let props = properties(&pf, proxy.port());
    start(&pf, "reset", &props, target.port(), &[]);
    wait_mid_copy(&pf, "reset");
    let accepted = proxy.accepted();
    proxy.reset_all();
    assert_succeeded_exact(&pf, "reset", &source, &target);
    assert!(proxy.accepted() > accepted, "pgferry connected again through the proxy");
}

#[test]
fn a_target_stalled_mid_copy_is_noticed_shown_and_the_copy_goes_on_after_it() {
    let (source, target) = shop();
    let proxy = Proxy::start(target.port()).unwrap();
    let pf = Pgferry::new();
    let props = properties(&pf, source.port());
    start(&pf, "stalled", &props, proxy.port(), &[]);
    wait_mid_copy(&pf, "stalled");
    proxy.stall(true);
    let stalled = std::time::Instant::now();
    // Found silent by three probes in a row (every 5 s, 2 s to answer), then shown while it lasts.
    let doc = pf.wait_for("stalled", "reconnecting", Duration::from_secs(60), |d| reconnecting(d).is_some());
    eprintln!("the stall was shown {:.1} s after it began", stalled.elapsed().as_secs_f64());
    assert_eq!(doc["substate"], "MigratingData", "{doc:#}");
    let server = format!("target server 127.0.0.1:{}", proxy.port());
    assert_eq!(reconnecting(&doc).unwrap()["server"], server.as_str(), "{doc:#}");
    let show = pf.run(&["migration", "show", "--migration-name", "stalled"]);
    assert!(show.stdout.contains(&format!("RECONNECTING to the {server}")), "{}", show.stdout);
    std::thread::sleep(Duration::from_secs(3));
    proxy.stall(false);
    let back = std::time::Instant::now();
    pf.wait_for("stalled", "the outage over", Duration::from_secs(60), |d| reconnecting(d).is_none());
    eprintln!("copying again {:.1} s after the stall ended", back.elapsed().as_secs_f64());
    assert_succeeded_exact(&pf, "stalled", &source, &target);
}

#[test]
fn a_source_down_past_the_reconnect_timeout_fails_naming_it_and_resume_finishes_the_copy() {
    let (source, target) = shop();
    let proxy = Proxy::start(source.port()).unwrap();
    let pf = Pgferry::new();
    let props = properties(&pf, proxy.port());
    start(&pf, "gone", &props, target.port(), &["--reconnect-timeout", "4"]);
    wait_mid_copy(&pf, "gone");
    proxy.refuse(true);
    proxy.reset_all();
    let doc = pf.wait_for("gone", "Failed", Duration::from_secs(60), |d| d["state"] == "Failed");
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    let server = format!("source server 127.0.0.1:{}", proxy.port());
    assert!(message.contains("gave up after") && message.contains(&server), "the error names the server: {message}");
    assert!(message.contains("pgferry migration resume --migration-name gone"), "the error says what to run next: {message}");
    assert_eq!(doc["error"]["step"], "MigratingData", "{doc:#}");
    // Nothing half-copied is left looking valid on the target.
    let left = target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap();
    assert_eq!(left.trim(), "0", "the half-copied database was dropped: {doc:#}");

    proxy.refuse(false);
    let out = pf.run(&["migration", "resume", "--migration-name", "gone", "--properties", &props, "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded", "{doc:#}");
    compare::assert_same(&source, &target, "shop");
}
