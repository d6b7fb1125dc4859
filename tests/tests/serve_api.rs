//! `pgferry serve`'s HTTP API end to end: the real binary serving, real runners it starts,
//! real throwaway servers. The token, problem+json errors, create / conflict / name checks,
//! the event stream to the end state, cutover and cancel, and the OpenAPI document against
//! the routes.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgferry_tests::{compare, Cluster, Pgferry, Served};
use serde_json::{json, Value};

fn token_of(first_line: &str) -> String {
    first_line.split_once("?token=").expect("a first start shows the token").1.to_string()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(180))).build().into()
}

/// Status, content type and body (JSON when it parses, else the text as a JSON string).
struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    let agent = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "GET" => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "PUT" => agent.put(url),
                "PATCH" => agent.patch(url),
                "POST" => agent.post(url),
                other => panic!("{other}"),
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.header("Content-Type", "application/json").send(body.unwrap_or(""))
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, content_type, body }
}

/// Polls `GET /migrations/{name}` until `done`.
fn wait_for(server: &Served, token: &str, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = call("GET", &format!("{}/api/v1/migrations/{name}", server.base), Some(token), None);
        if r.status == 200 && done(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "{name} never reached {what}: {} {:#}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn properties(source: &Cluster, db: &str, extra: Value) -> String {
    let mut props = json!({
        "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()),
        "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "pw-never-stored-7f3a", "TargetServerPassword": "pw-never-stored-9c1e"}},
        "DBsToMigrate": [db],
        "sourceType": "OnPremises",
    });
    props.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({ "properties": props }).to_string()
}

#[test]
fn every_request_needs_the_token_which_is_stored_only_as_a_hash_and_rotates() {
    let pf = Pgferry::new();
    let server = pf.serve(&[]);
    let token = token_of(&server.first_line);
    let list = format!("{}/api/v1/migrations", server.base);

    let r = call("GET", &list, None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["status"], 401);
    assert!(r.body["detail"].as_str().unwrap().contains("access token"), "{:#}", r.body);
    assert_eq!(call("GET", &list, Some("not-the-token"), None).status, 401);
    let r = call("GET", &list, Some(&token), None);
    assert_eq!((r.status, r.body.clone()), (200, json!([])));
    assert_eq!(call("GET", &format!("{list}?token={token}"), None, None).status, 200, "a browser's first load carries it in the URL");
    let r = call("GET", &format!("{}/api/v1/nothing-here", server.base), Some(&token), None);
    assert_eq!((r.status, r.content_type.as_str()), (404, "application/problem+json"));
    // The unauthenticated see no route list either.
    assert_eq!(call("GET", &format!("{}/api/v1/nothing-here", server.base), None, None).status, 401);

    // The store has its hash, never the token.
    let mut store = Vec::new();
    std::fs::File::open(pf.dir().join("state").join("state.db")).unwrap().read_to_end(&mut store).unwrap();
    assert!(!String::from_utf8_lossy(&store).contains(&token), "the token is not in the store");
    drop(server);

    // A restart does not show it again, and it still works.
    let server = pf.serve(&[]);
    assert!(!server.first_line.contains("token="), "{}", server.first_line);
    assert_eq!(call("GET", &format!("{}/api/v1/migrations", server.base), Some(&token), None).status, 200);
    // Rotated: the old one stops working at once, the new one works.
    let out = pf.run(&["serve", "rotate-token"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let rotated = out.stdout.lines().next().unwrap().trim().to_string();
    assert!(!rotated.is_empty() && rotated != token, "{}", out.transcript());
    assert_eq!(call("GET", &format!("{}/api/v1/migrations", server.base), Some(&token), None).status, 401);
    assert_eq!(call("GET", &format!("{}/api/v1/migrations", server.base), Some(&rotated), None).status, 200);
}

#[test]
fn create_checks_its_input_streams_each_state_and_never_stores_the_passwords() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    source.psql("app", "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 200000) g;").unwrap();
    let pf = Pgferry::new();
    let server = pf.serve(&[]);
    let token = token_of(&server.first_line);
    let api = format!("{}/api/v1", server.base);
    let props = properties(&source, "app", json!({}));
    let target_q = format!("target=127.0.0.1:{}", target.port());

    // The wizard's "test connection": version, TLS state, databases with their sizes.
    let r = call("POST", &format!("{api}/source/test-connection"), Some(&token), Some(&props));
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["server"], format!("127.0.0.1:{}", source.port()));
    assert!(r.body["version"].as_str().unwrap().starts_with("15."), "{:#}", r.body);
    assert_eq!(r.body["tls"], "None", "the test clusters speak plain text: {:#}", r.body);
    let app = r.body["databases"].as_array().unwrap().iter().find(|d| d["name"] == "app").expect("app is listed");
    assert!(app["sizeBytes"].as_u64().unwrap() > 5_000_000, "{app}");
    assert!(!r.body["databases"].as_array().unwrap().iter().any(|d| d["name"] == "template1"), "templates are not offered");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = call("POST", &format!("{api}/source/test-connection"), Some(&token), Some(&props.replace(&format!("127.0.0.1:{}@", source.port()), &format!("127.0.0.1:{closed}@"))));
    assert_eq!(r.status, 400, "{:#}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains(&format!("source server 127.0.0.1:{closed}")), "names the server: {:#}", r.body);

    let r = call("PUT", &format!("{api}/migrations/bad_name?{target_q}"), Some(&token), Some(&props));
    assert_eq!(r.status, 400, "{:#}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("letters, digits and hyphens"), "{:#}", r.body);
    let r = call("PUT", &format!("{api}/migrations/m1?{target_q}"), Some(&token), Some("{\"properties\": "));
    assert_eq!(r.status, 400, "{:#}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("JSON"), "{:#}", r.body);
    let r = call("PUT", &format!("{api}/migrations/m1?{target_q}&migrationOption=Sometimes"), Some(&token), Some(&props));
    assert_eq!(r.status, 400, "{:#}", r.body);

    let r = call("PUT", &format!("{api}/migrations/m1?{target_q}"), Some(&token), Some(&props));
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.body["name"], "m1");
    // The events from here to the end: the state it is in, each change, the end state.
    let mut events = agent().get(&format!("{api}/migrations/m1/events")).header("Authorization", &format!("Bearer {token}")).call().unwrap();
    assert_eq!(events.headers().get("content-type").unwrap().to_str().unwrap(), "text/event-stream");
    let reader = BufReader::new(events.body_mut().as_reader());
    let mut states = Vec::new();
    let mut progress_events = 0;
    let mut kind = String::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            match kind.as_str() {
                "state" => states.push(format!("{}/{}", data["state"].as_str().unwrap(), data["substate"].as_str().unwrap_or(""))),
                "progress" => progress_events += 1,
                _ => {}
            }
        }
    }
    assert_eq!(states.last().map(String::as_str), Some("Succeeded/Completed"), "the stream ends with the end state: {states:?}");
    assert!(states.len() >= 2, "each change of state is an event: {states:?}");
    let order = ["InProgress/PerformingPreRequisiteSteps", "InProgress/ValidationInProgress", "InProgress/MigratingData", "InProgress/CompletingMigration", "Succeeded/Completed"];
    let positions: Vec<usize> = states.iter().map(|s| order.iter().position(|o| o == s).unwrap_or_else(|| panic!("unexpected state {s}: {states:?}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in lifecycle order, each once: {states:?}");
    assert!(progress_events >= 1, "the copy's counters are streamed");
    compare::assert_same(&source, &target, "app");

    // The name is taken now: 409, and the availability check says so.
    let r = call("PUT", &format!("{api}/migrations/m1?{target_q}"), Some(&token), Some(&props));
    assert_eq!((r.status, r.content_type.as_str()), (409, "application/problem+json"), "{:#}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("already taken"), "{:#}", r.body);
    let check = |name: &str| call("POST", &format!("{api}/check-name-availability"), Some(&token), Some(&json!({"name": name, "target": format!("127.0.0.1:{}", target.port())}).to_string())).body;
    assert_eq!(check("m1")["nameAvailable"], false);
    assert_eq!(check("m2")["nameAvailable"], true);
    let r = call("POST", &format!("{api}/check-name-availability"), Some(&token), Some("{}"));
    assert_eq!(r.status, 400, "{:#}", r.body);

    let shown = call("GET", &format!("{api}/migrations/m1"), Some(&token), None);
    assert_eq!(shown.body["state"], "Succeeded", "{:#}", shown.body);
    let listed = call("GET", &format!("{api}/migrations?filter=All"), Some(&token), None);
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{:#}", listed.body);
    assert_eq!(call("GET", &format!("{api}/migrations?filter=Active"), Some(&token), None).body, json!([]));
    assert_eq!(call("GET", &format!("{api}/migrations/nope"), Some(&token), None).status, 404);

    // The passwords of the body reached the runner and nothing else.
    for entry in walk(&pf.dir().join("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("pw-never-stored"), "a password is in {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn an_online_migration_is_cut_over_and_another_canceled_through_the_api() {
    let source = Cluster::builder().setting("wal_level", "logical").setting("max_replication_slots", "10").setting("max_wal_senders", "10").start().unwrap();
    let target = Cluster::start().unwrap();
    for db in ["app", "shop"] {
        source.create_database(db).unwrap();
        source.psql(db, "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 1000) g;").unwrap();
    }
    let pf = Pgferry::new();
    let server = pf.serve(&[]);
    let token = token_of(&server.first_line);
    let api = format!("{}/api/v1", server.base);
    let target_q = format!("target=127.0.0.1:{}", target.port());
    let online = json!({"MigrationMode": "Online"});

    let r = call("PUT", &format!("{api}/migrations/live?{target_q}"), Some(&token), Some(&properties(&source, "app", online.clone())));
    assert_eq!(r.status, 201, "{:#}", r.body);
    wait_for(&server, &token, "live", "WaitingForCutoverTrigger", |d| d["substate"] == "WaitingForCutoverTrigger");
    source.psql("app", "insert into items values (5000, 'after the copy')").unwrap();
    let patch = format!("{api}/migrations/live");
    assert_eq!(call("PATCH", &patch, Some(&token), Some("{}")).status, 400, "a body that asks for nothing");
    let r = call("PATCH", &patch, Some(&token), Some(r#"{"properties": {"triggerCutover": "True"}}"#));
    assert_eq!(r.status, 202, "{:#}", r.body);
    wait_for(&server, &token, "live", "Succeeded", |d| d["state"] == "Succeeded");
    compare::assert_same(&source, &target, "app");
    let r = call("PATCH", &patch, Some(&token), Some(r#"{"properties": {"triggerCutover": "True"}}"#));
    assert_eq!(r.status, 409, "a cutover of a migration that ended: {:#}", r.body);

    let r = call("PUT", &format!("{api}/migrations/dropped?{target_q}"), Some(&token), Some(&properties(&source, "shop", online)));
    assert_eq!(r.status, 201, "{:#}", r.body);
    let doc = wait_for(&server, &token, "dropped", "WaitingForCutoverTrigger", |d| d["substate"] == "WaitingForCutoverTrigger");
    // Its runner (a child of serve) is killed: seen dead at once, not as a zombie until the
    // lease expires, so a cutover is refused with what to run; a cancel cleans up by itself.
    let pid = doc["runner"]["pid"].as_i64().expect("the runner's pid") as i32;
    // SAFETY: signals the runner process this test's server started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let doc = wait_for(&server, &token, "dropped", "its runner seen dead", |d| d["runner"]["alive"] == false);
    assert!(killed.elapsed() < Duration::from_secs(5), "seen dead before the 10 s lease ran out, after {:?}", killed.elapsed());
    assert!(doc["runner"]["leaseExpiresAt"].is_string(), "the lease had not expired: {doc:#}");
    let r = call("PATCH", &format!("{api}/migrations/dropped"), Some(&token), Some(r#"{"properties": {"triggerCutover": "True"}}"#));
    assert_eq!(r.status, 409, "{:#}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("no runner is following"), "{:#}", r.body);
    let r = call("PATCH", &format!("{api}/migrations/dropped"), Some(&token), Some(r#"{"properties": {"cancel": "True"}}"#));
    assert_eq!(r.status, 202, "{:#}", r.body);
    wait_for(&server, &token, "dropped", "Canceled", |d| d["state"] == "Canceled");
    let slots = source.psql("postgres", "select count(*) from pg_replication_slots").unwrap();
    assert_eq!(slots.trim(), "0", "the slot went with the cancel");
    let dbs = target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap();
    assert_eq!(dbs.trim(), "0", "the target database went with the cancel");
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let pf = Pgferry::new();
    let server = pf.serve(&[]);
    let token = token_of(&server.first_line);
    let doc = call("GET", &format!("{}/api/v1/openapi.json", server.base), Some(&token), None).body;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            operations += 1;
            let url = format!("{}{}", server.base, path.replace("{name}", "no-such-migration"));
            if path.ends_with("/events") {
                // A stream: a missing migration answers at once.
                let r = call("GET", &url, Some(&token), None);
                assert_eq!(r.status, 404, "{method} {path}: {:#}", r.body);
                continue;
            }
            let r = call(&method.to_uppercase(), &url, Some(&token), Some("{}"));
            // Routed: an answer of the handler (a missing migration, a bad body), never the
            // fallback's or a method not allowed.
            assert_ne!(r.status, 405, "{method} {path} is documented but not routed");
            let fallback = r.body["detail"].as_str().is_some_and(|d| d.starts_with("no such route"));
            assert!(!fallback, "{method} {path} is documented but not routed: {:#}", r.body);
            let unauthenticated = call(&method.to_uppercase(), &url, None, Some("{}"));
            assert_eq!(unauthenticated.status, 401, "{method} {path} needs the token");
        }
    }
    assert!(operations >= 8, "{doc:#}");
}

#[test]
fn listening_beyond_loopback_needs_tls_or_insecure() {
    let pf = Pgferry::new();
    let out = pf.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("--tls-cert") && out.stderr.contains("--insecure"), "{}", out.transcript());
    let mut child = pf.command().args(["serve", "--listen", "0.0.0.0:0", "--insecure"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("http://0.0.0.0:") && line.contains("?token="), "{line}");
}

#[test]
fn https_with_the_given_certificate_serves_the_api_and_plain_http_gets_nothing() {
    let certs = pgferry_tests::test_ca_and_server_cert(&["127.0.0.1", "localhost"]);
    let pf = Pgferry::new();
    let cert = pf.write("server.crt", &certs.server_cert_pem);
    let key = pf.write("server.key", &certs.server_key_pem);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut child = pf
        .command()
        .args(["serve", "--listen", "0.0.0.0:0", "--tls-cert", &cert, "--tls-key", &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let token = token_of(line.trim());
    assert!(line.starts_with("https://0.0.0.0:"), "{line}");
    let port = line.trim_start_matches("https://0.0.0.0:").split('/').next().unwrap().to_string();

    let ca = ureq::tls::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap();
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[ca])).build();
    let trusting: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into();
    let mut response = trusting.get(&format!("https://127.0.0.1:{port}/api/v1/migrations")).header("Authorization", &format!("Bearer {token}")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.body_mut().read_to_string().unwrap(), "[]");
    // The certificate is the one given: a client that does not trust its CA is refused.
    assert!(agent().get(&format!("https://127.0.0.1:{port}/api/v1/migrations")).call().is_err(), "an unknown CA is not trusted");
    // And nothing is served in the clear on that port.
    assert!(agent().get(&format!("http://127.0.0.1:{port}/api/v1/migrations?token={token}")).call().map(|r| r.status().as_u16() != 200).unwrap_or(true));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The wizard's source types are what the loaded source-adapter plugins declare.
#[test]
fn source_types_are_the_loaded_adapters() {
    let pf = Pgferry::new();
    let server = pf.serve(&[]);
    let token = token_of(&server.first_line);
    let r = call("GET", &format!("{}/api/v1/source-types", server.base), Some(&token), None);
    assert_eq!(r.status, 200, "{:#}", r.body);
    let ids: Vec<&str> = r.body.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["OnPremises", "AWS_RDS", "AWS_AURORA", "AzureVM", "PostgreSQLSingleServer"]);
    assert_eq!(r.body[1], json!({"id": "AWS_RDS", "aliases": ["AWS"], "displayName": "Amazon RDS for PostgreSQL"}));
}
