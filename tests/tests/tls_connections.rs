//! TLS on every connection a migration makes, with libpq's meanings: a `--target` URI with
//! `sslmode=verify-full` (pgferry's own connections and the pg_dump/pg_restore children),
//! and the replication connection of an online migration checking what the others check.

use std::time::{Duration, Instant};

use pgferry_tests::{test_ca_and_server_cert, Cluster, Pgferry};
use serde_json::{json, Value};

#[test]
fn a_target_uri_with_sslmode_verify_full_verifies_the_target_for_every_connection() {
    let certs = test_ca_and_server_cert(&["localhost", "127.0.0.1"]);
    let stranger = test_ca_and_server_cert(&["localhost", "127.0.0.1"]);
    let source = Cluster::start().unwrap();
    let target = Cluster::builder().ssl(&certs.server_cert_pem, &certs.server_key_pem).start().unwrap();
    source.create_database("app").unwrap();
    source.psql("app", "create table t (id int primary key, note text); insert into t select g, 'row ' || g from generate_series(1, 100) g;").unwrap();
    let pf = Pgferry::new();
    let ca = pf.write("ca.pem", &certs.ca_pem).display().to_string();
    let wrong_ca = pf.write("wrong-ca.pem", &stranger.ca_pem).display().to_string();
    let props = pf.properties(&source, "app", json!({}));
    let uri = |root: &str| format!("postgresql://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={root}", target.port());

    // A CA that did not sign the target's certificate: refused.
    let out = pf.run(&["migration", "create", "--migration-name", "wrong-ca", "--properties", &props, "--target", &uri(&wrong_ca), "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(out.stdout.contains("is not signed by the root certificate given"), "{}", out.transcript());

    // The right one: validated, copied by pg_dump/pg_restore, and reported as verified. The
    // children's libpq verifies too: with verify-full and no sslrootcert in their connection
    // string they would fail (their HOME has no ~/.postgresql/root.crt).
    let out = pf.run(&["migration", "create", "--migration-name", "verified", "--properties", &props, "--target", &uri(&ca), "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["details"]["targetTls"], "VerifiedFull", "{doc:#}");
    assert_eq!(target.psql("app", "select count(*) from t").unwrap().trim(), "100");
}

#[test]
fn the_replication_connection_verifies_the_source_as_verify_ca_does() {
    // The certificate names db.test.internal while pgferry connects to 127.0.0.1: VerifyCA
    // must accept it (chain checked, name not), on the replication connection too.
    stream_verified("VerifyCA", &["db.test.internal"], "VerifiedCa");
}

#[test]
fn the_replication_connection_verifies_the_source_as_verify_full_does() {
    stream_verified("VerifyFull", &["127.0.0.1"], "VerifiedFull");
}

/// An online migration from a TLS source with `mode` and its CA as PGSSLROOTCERT: the base
/// copy, a change streamed over the (encrypted) replication connection, the cutover.
fn stream_verified(mode: &str, sans: &[&str], expected_tls: &str) {
    let certs = test_ca_and_server_cert(sans);
    let source = Cluster::builder()
        .ssl(&certs.server_cert_pem, &certs.server_key_pem)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "10")
        .setting("max_wal_senders", "10")
        .start()
        .unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    source.psql("app", "create table t (id int primary key, note text); insert into t values (1, 'before');").unwrap();
    let pf = Pgferry::new();
    let ca = pf.write("ca.pem", &certs.ca_pem).display().to_string();
    let props = pf.properties(&source, "app", json!({"MigrationMode": "Online", "sslMode": mode}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let env = [("PGSSLROOTCERT", ca.as_str())];

    let out = pf.run_with(&["migration", "create", "--migration-name", "streamed", "--properties", &props, "--target", &target_arg, "--no-wait"], &env);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc = pf.wait_for("streamed", "WaitingForCutoverTrigger", Duration::from_secs(120), |d| d["substate"] == "WaitingForCutoverTrigger");
    assert_eq!(doc["details"]["sourceTls"], expected_tls, "{doc:#}");

    // A change made now reaches the target through the replication connection, which is
    // encrypted.
    source.psql("app", "insert into t values (2, 'streamed');").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while target.psql("app", "select count(*) from t where id = 2").unwrap().trim() != "1" {
        assert!(Instant::now() < deadline, "the change never arrived: {:#}", pf.show("streamed"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let walsenders = source.psql("postgres", "select string_agg(s.ssl::text, ',') from pg_stat_replication r join pg_stat_ssl s using (pid)").unwrap();
    assert_eq!(walsenders.trim(), "true", "the replication connection is one encrypted session");

    let out = pf.run_with(&["migration", "update", "--migration-name", "streamed", "--cutover", "--output", "json"], &env);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(pf.show("streamed")["state"], "Succeeded");
}
