//! `pgferry migration create --migration-option Validate` end to end: the real binary
//! against real throwaway servers, its output snapshot-tested, and `list` / `show` / bad input.

use pgferry_tests::{stabilize, Cluster, Pgferry};
use serde_json::{json, Value};

struct Servers {
    source: Cluster,
    target: Cluster,
}

/// A source with one database `app` holding a table with and one without a primary key.
fn servers() -> Servers {
    let source = Cluster::start().expect("source cluster");
    let target = Cluster::start().expect("target cluster");
    source.create_database("app").unwrap();
    source
        .psql("app", "create table public.orders (id int primary key, note text); create table public.audit_log (at timestamptz, line text);")
        .unwrap();
    Servers { source, target }
}

fn properties(pf: &Pgferry, s: &Servers, extra: Value) -> String {
    let mut body = json!({
        "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", s.source.port()),
        "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "unused-by-trust", "TargetServerPassword": "unused-by-trust"}},
        "targetServerUserName": "postgres",
        "DBsToMigrate": ["app"],
        "OverwriteDBsInTarget": "false",
        "sourceType": "OnPremises",
        "sslMode": "Prefer",
        "migrationRuntimeResourceId": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/runtime"
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    pf.write("properties.json", json!({ "properties": body }).to_string()).display().to_string()
}

fn target_arg(s: &Servers) -> String {
    format!("127.0.0.1:{}", s.target.port())
}

fn stable(pf: &Pgferry, s: &Servers, text: &str) -> String {
    stabilize(text, &[(s.source.port(), "SOURCE_PORT"), (s.target.port(), "TARGET_PORT")], pf.dir())
}

#[test]
fn validate_offline_succeeds_with_findings_and_list_show_follow() {
    let s = servers();
    let pf = Pgferry::new();
    let props = properties(&pf, &s, json!({}));
    let out = pf.run(&["migration", "create", "--migration-name", "check-1", "--properties", &props, "--target", &target_arg(&s), "--migration-option", "Validate"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert!(out.stdout.contains("Succeeded"), "{}", out.transcript());
    insta::assert_snapshot!("validate_offline_table", stable(&pf, &s, &out.transcript()));

    // Another shell sees it.
    let list = pf.run(&["migration", "list"]);
    assert_eq!(list.code, 0);
    insta::assert_snapshot!("list_table", stable(&pf, &s, &list.transcript()));

    let show = pf.run(&["migration", "show", "--migration-name", "check-1", "--output", "json"]);
    assert_eq!(show.code, 0, "{}", show.transcript());
    let doc: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    assert_eq!(doc["substate"], "Completed");
    let states: Vec<&str> = doc["transitions"].as_array().unwrap().iter().map(|t| t["substate"].as_str().unwrap()).collect();
    assert_eq!(states, ["PerformingPreRequisiteSteps", "ValidationInProgress", "Completed"]);
    assert!(!show.stdout.contains("unused-by-trust"), "a secret reached the store");
    insta::assert_snapshot!("show_json", stable(&pf, &s, &show.stdout));

    // The name is now taken on that target, free on another.
    let taken = pf.run(&["migration", "check-name-availability", "--migration-name", "check-1", "--target", &target_arg(&s)]);
    assert_eq!(taken.code, 1);
    assert!(taken.stdout.contains("not available"), "{}", taken.transcript());
    let free = pf.run(&["migration", "check-name-availability", "--migration-name", "check-1", "--target", "elsewhere:5432"]);
    assert_eq!(free.code, 0, "{}", free.transcript());
    let again = pf.run(&["migration", "create", "--migration-name", "check-1", "--properties", &props, "--target", &target_arg(&s), "--migration-option", "Validate"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already taken"), "{}", again.transcript());

    let state_db = std::fs::read(pf.dir().join("state/state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&state_db).contains("unused-by-trust"), "a secret reached the state store");
}

#[test]
fn validate_online_fails_on_wal_level_and_tables_without_keys() {
    let s = servers();
    let pf = Pgferry::new();
    let props = properties(&pf, &s, json!({"MigrationMode": "Online"}));
    let out = pf.run(&["migration", "create", "--migration-name", "online-1", "--properties", &props, "--target", &target_arg(&s), "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 4, "ValidationFailed exits 4: {}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "ValidationFailed");
    let codes = |level: &Value| -> Vec<String> {
        level["checks"].as_array().unwrap().iter().flat_map(|c| c["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_string())).collect()
    };
    assert!(codes(&doc["validation"]["serverLevel"]).contains(&"wal-level-not-logical".to_string()), "{}", out.stdout);
    let db = &doc["validation"]["dbLevel"][0];
    assert_eq!(db["databaseName"], "app");
    assert_eq!(db["state"], "Failed");
    let objects: Vec<&str> = db["checks"].as_array().unwrap().iter().flat_map(|c| c["findings"].as_array().unwrap()).filter_map(|f| f["object"].as_str()).collect();
    assert!(objects.contains(&"public.audit_log"), "the table without a key is named: {}", out.stdout);
    assert!(!objects.contains(&"public.orders"), "the table with a key passes: {}", out.stdout);
    insta::assert_snapshot!("validate_online_json", stable(&pf, &s, &out.stdout));
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_nothing_recorded() {
    let s = servers();
    let pf = Pgferry::new();
    let target = target_arg(&s);
    let create = |name: &str, props: &str| {
        pf.run(&["migration", "create", "--migration-name", name, "--properties", props, "--target", &target, "--migration-option", "Validate"])
    };

    let malformed = pf.write("bad.json", "{\"properties\": {\"SourceDBServerResourceId\": ");
    let out = create("m1", &malformed.display().to_string());
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad.json") && out.stderr.contains("is not valid JSON"), "{}", out.transcript());

    let unknown_type = properties(&pf, &s, json!({"sourceType": "Mainframe"}));
    let out = create("m2", &unknown_type);
    assert_eq!(out.code, 1);
    for known in ["OnPremises", "AWS_RDS", "AWS_AURORA", "AzureVM", "PostgreSQLSingleServer"] {
        assert!(out.stderr.contains(known), "lists {known}: {}", out.transcript());
    }
    assert!(out.stderr.contains("\"Mainframe\""), "{}", out.transcript());

    let props = properties(&pf, &s, json!({}));
    let out = create("-leading-hyphen", &props);
    assert_eq!(out.code, 2, "clap treats it as an option: {}", out.transcript());
    let out = create("has_underscore", &props);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("letters, digits and hyphens"), "{}", out.transcript());

    // A target URI naming a migrated database: that is where pgferry would create it from.
    let uri = format!("postgresql://postgres@127.0.0.1:{}/app?sslmode=disable", s.target.port());
    let out = pf.run(&["migration", "create", "--migration-name", "m4", "--properties", &props, "--target", &uri, "--migration-option", "Validate"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("is given with database \"app\", which is being migrated"), "{}", out.transcript());
    // And a URI parameter pgferry does not take is named.
    let out = pf.run(&["migration", "create", "--migration-name", "m5", "--properties", &props, "--target", &format!("{uri}&hostaddr=10.0.0.1"), "--migration-option", "Validate"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("parameter `hostaddr` is not supported"), "{}", out.transcript());

    let unreachable = {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p: Value = serde_json::from_str(&std::fs::read_to_string(&props).unwrap()).unwrap();
        p["properties"]["SourceDBServerResourceId"] = json!(format!("127.0.0.1:{port}@postgres"));
        pf.write("unreachable.json", p.to_string()).display().to_string()
    };
    let out = create("m3", &unreachable);
    assert_eq!(out.code, 5, "an unreachable source fails the migration: {}", out.transcript());
    assert!(out.stdout.contains("PerformingPreRequisiteSteps") && out.stdout.contains("source server 127.0.0.1"), "{}", out.transcript());

    // Nothing was recorded for the refused ones; the unreachable one is Failed.
    let list = pf.run(&["migration", "list", "--output", "json"]);
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m3"]);
    assert_eq!(list[0]["state"], "Failed");
    // And nothing was written on the target.
    let dbs = s.target.psql("postgres", "select count(*) from pg_database where datname = 'app'").unwrap();
    assert_eq!(dbs.trim(), "0");
}

#[test]
fn wrong_and_missing_passwords_are_named() {
    let source = Cluster::builder().password("right-secret").start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let pf = Pgferry::new();
    let write = |password: Option<&str>| {
        let mut body = json!({
            "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()),
            "DBsToMigrate": ["app"],
            "sourceType": "OnPremises",
        });
        if let Some(pw) = password {
            body["SecretParameters"] = json!({"AdminCredentials": {"SourceServerPassword": pw}});
        }
        pf.write("p.json", json!({"properties": body}).to_string()).display().to_string()
    };
    let target_arg = format!("127.0.0.1:{}", target.port());
    let run = |name: &str, props: &str, env: &[(&str, &str)]| {
        pf.run_with(&["migration", "create", "--migration-name", name, "--properties", props, "--target", &target_arg, "--migration-option", "Validate"], env)
    };

    let out = run("wrong", &write(Some("wrong-secret")), &[]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(out.stdout.contains("password authentication failed"), "{}", out.transcript());
    assert!(out.stdout.contains("28P01"), "{}", out.transcript());

    let out = run("missing", &write(None), &[]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(out.stdout.contains("asks for a password"), "{}", out.transcript());

    // The same password from the environment works, as with libpq.
    let out = run("from-env", &write(None), &[("PGPASSWORD", "right-secret")]);
    assert_eq!(out.code, 0, "{}", out.transcript());

    // And from ~/.pgpass (HOME is the installation dir); 0600 as libpq requires.
    let pgpass = pf.write(".pgpass", format!("127.0.0.1:{}:*:postgres:right-secret\n", source.port()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run("from-pgpass", &write(None), &[]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    for secret in ["right-secret", "wrong-secret"] {
        let state = std::fs::read(pf.dir().join("state/state.db")).unwrap();
        assert!(!String::from_utf8_lossy(&state).contains(secret), "{secret} reached the state store");
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
}

#[test]
fn tls_modes_verify_as_libpq_does() {
    let certs = pgferry_tests::test_ca_and_server_cert(&["db.test.internal"]);
    let stranger = pgferry_tests::test_ca_and_server_cert(&["db.test.internal"]);
    let source = Cluster::builder().ssl(&certs.server_cert_pem, &certs.server_key_pem).start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let pf = Pgferry::new();
    let ca = pf.write("ca.pem", &certs.ca_pem).display().to_string();
    let wrong_ca = pf.write("wrong-ca.pem", &stranger.ca_pem).display().to_string();
    let no_ca = pf.dir().join("no-such-root.crt").display().to_string();
    let target_arg = format!("127.0.0.1:{}", target.port());
    let run = |name: &str, mode: &str, root: &str| {
        let props = pf.write(
            &format!("{name}.json"),
            json!({"properties": {
                "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()),
                "DBsToMigrate": ["app"], "sourceType": "OnPremises", "sslMode": mode,
            }})
            .to_string(),
        );
        pf.run_with(
            &["migration", "create", "--migration-name", name, "--properties", &props.display().to_string(), "--target", &target_arg, "--migration-option", "Validate", "--output", "json"],
            &[("PGSSLROOTCERT", root)],
        )
    };
    let tls_of = |out: &pgferry_tests::CliOutput| -> String {
        let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.transcript()));
        doc["details"]["sourceTls"].as_str().unwrap_or("").to_string()
    };
    let error_of = |out: &pgferry_tests::CliOutput| -> String {
        let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.transcript()));
        doc["error"]["message"].as_str().unwrap_or_else(|| panic!("no error: {doc:#}")).to_string()
    };
    // No root certificate file: Require encrypts without verifying.
    let out = run("require-no-root", "Require", &no_ca);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(tls_of(&out), "Unverified");
    // A root certificate file present: Require verifies the chain, as libpq does.
    let out = run("require", "Require", &ca);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(tls_of(&out), "VerifiedCa");
    let out = run("require-wrong-ca", "Require", &wrong_ca);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(error_of(&out).contains("is not signed by the root certificate given"), "{}", out.transcript());
    // Prefer gives up on TLS that does not verify and tries plain text, as libpq does.
    let out = run("prefer-wrong-ca", "Prefer", &wrong_ca);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(tls_of(&out), "None");
    let out = run("verify-ca", "VerifyCA", &ca);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_eq!(tls_of(&out), "VerifiedCa");

    // The certificate names db.test.internal, not 127.0.0.1: VerifyFull refuses.
    let out = run("verify-full", "VerifyFull", &ca);
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(error_of(&out).contains("does not name host"), "{}", out.transcript());
    // No root certificate: said so, never the public web roots in its place.
    for mode in ["VerifyFull", "VerifyCA"] {
        let out = run(&format!("{}-no-root", mode.to_lowercase()), mode, &no_ca);
        assert_eq!(out.code, 5, "{}", out.transcript());
        let message = error_of(&out);
        assert!(message.contains(&format!("root certificate file {no_ca} does not exist")) && message.contains("PGSSLROOTCERT"), "{message}");
    }
}

#[test]
fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    // Accepts TCP connections and then says nothing, like a host behind a dropping firewall
    // that completes the handshake; the runner must give up after PGCONNECT_TIMEOUT.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        if let Ok((stream, _)) = silent.accept() {
            std::thread::sleep(std::time::Duration::from_secs(5));
            drop(stream);
        }
    });
    let target = Cluster::start().unwrap();
    let pf = Pgferry::new();
    let props = pf.write(
        "p.json",
        json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{port}@postgres"), "DBsToMigrate": ["app"], "sourceType": "OnPremises"}}).to_string(),
    );
    let started = std::time::Instant::now();
    let out = pf.run_with(
        &["migration", "create", "--migration-name", "silent", "--properties", &props.display().to_string(), "--target", &format!("127.0.0.1:{}", target.port()), "--migration-option", "Validate"],
        &[("PGCONNECT_TIMEOUT", "1")],
    );
    assert_eq!(out.code, 5, "{}", out.transcript());
    assert!(out.stdout.contains("no answer within 1s"), "{}", out.transcript());
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "bounded by the timeout, took {:?}", started.elapsed());
    drop(held);
}

#[test]
fn a_provider_database_in_dbs_to_migrate_is_a_validation_error_and_never_copied() {
    let s = servers();
    s.source.create_database("rdsadmin").unwrap();
    let pf = Pgferry::new();
    let target = target_arg(&s);
    let props = properties(&pf, &s, json!({"sourceType": "AWS_RDS", "DBsToMigrate": ["app", "rdsadmin"]}));

    // Validated first: the database the RDS adapter declares as the provider's is an error
    // finding on it, and nothing is copied.
    let out = pf.run(&["migration", "create", "--migration-name", "with-admin", "--properties", &props, "--target", &target, "--output", "json"]);
    assert_eq!(out.code, 4, "ValidationFailed exits 4: {}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "ValidationFailed", "{doc:#}");
    let dbs = doc["validation"]["dbLevel"].as_array().unwrap();
    let admin = dbs.iter().find(|d| d["databaseName"] == "rdsadmin").expect("rdsadmin is validated");
    assert_eq!(admin["state"], "Failed", "{admin:#}");
    let check = admin["checks"].as_array().unwrap().iter().find(|c| c["id"] == "provider-database").expect("the provider-database check");
    let finding = &check["findings"][0];
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["plugin"], "adapter-aws-rds");
    assert_eq!(
        finding["message"],
        "database \"rdsadmin\" is the provider's own (source adapter plugin `adapter-aws-rds` declares it for Amazon RDS for PostgreSQL): it must not be migrated"
    );
    assert_eq!(finding["remediation"], "remove \"rdsadmin\" from DBsToMigrate");
    let app = dbs.iter().find(|d| d["databaseName"] == "app").unwrap();
    assert!(!app["checks"].as_array().unwrap().iter().any(|c| c["id"] == "provider-database"), "app is the user's: {app:#}");
    let copied = s.target.psql("postgres", "select count(*) from pg_database where datname in ('app', 'rdsadmin')").unwrap();
    assert_eq!(copied.trim(), "0", "nothing was copied");

    // Without validation it is refused before anything is recorded.
    let out = pf.run(&["migration", "create", "--migration-name", "unchecked", "--properties", &props, "--target", &target, "--migration-option", "Migrate"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert_eq!(
        out.stderr.trim_end(),
        "Error: database \"rdsadmin\" is the provider's own (source adapter plugin `adapter-aws-rds` declares it for Amazon RDS for PostgreSQL): it must not be migrated; remove it from DBsToMigrate",
        "{}",
        out.transcript()
    );
    let shown = pf.run(&["migration", "show", "--migration-name", "unchecked"]);
    assert_eq!(shown.code, 3, "nothing was recorded: {}", shown.transcript());
}

/// The runner reads the settings a source adapter declares, and only those: the RDS adapter
/// declares `rds.*` and its switch `rds.logical_replication`, which a server without the
/// provider's module holds only as a placeholder; its readiness then judges by it.
#[test]
fn the_settings_an_adapter_declares_are_read_even_as_placeholders() {
    let source = Cluster::builder().setting("wal_level", "logical").setting("rds.logical_replication", "0").start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let s = Servers { source, target };
    let pf = Pgferry::new();
    let props = properties(&pf, &s, json!({"sourceType": "AWS_RDS", "MigrationMode": "Online"}));
    let out = pf.run(&["migration", "create", "--migration-name", "rds-flag", "--properties", &props, "--target", &target_arg(&s), "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let readiness = doc["validation"]["serverLevel"]["checks"].as_array().unwrap().iter().find(|c| c["id"] == "source-readiness").unwrap().clone();
    let finding = readiness["findings"].as_array().unwrap().iter().find(|f| f["code"] == "wal-level-not-logical").unwrap_or_else(|| panic!("{readiness:#}")).clone();
    assert_eq!(finding["plugin"], "adapter-aws-rds");
    assert_eq!(finding["object"], "rds.logical_replication");
    assert_eq!(finding["message"], "rds.logical_replication is `0`; online migration needs logical replication");
}
