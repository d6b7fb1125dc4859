//! A source adapter cannot move the credentials: its `normalize-connection` may reshape the
//! login, but a host or port other than the user's is refused, naming the adapter, before
//! any connection is made, unless the user allowed it (`AllowAdapterEndpointChange`), and
//! then validation shows the change. The adapter is `guest-endpoint-mover`; a recording
//! server stands where it wants the source password to go.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgferry_tests::{workspace_root, Cluster, Pgferry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A TCP server on 127.0.0.1 that counts every connection attempt and answers none.
struct Recorder {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        // Detached: it lives as long as the test process, and only counts.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Recorder { port, seen }
    }

    fn connections(&self) -> usize {
        // A connection racing the end of the run would be counted by now.
        std::thread::sleep(Duration::from_millis(300));
        self.seen.load(Ordering::SeqCst)
    }
}

/// A plugin configuration loading `guest-endpoint-mover`, which moves the source to
/// 127.0.0.1:`port`.
fn mover_config(pf: &Pgferry, port: u16) -> String {
    let wasm = workspace_root().join("tests/guests/dist/guest-endpoint-mover.wasm");
    let sha = hex::encode(Sha256::digest(std::fs::read(&wasm).unwrap()));
    pf.write("plugins.toml", format!("[[plugin]]\npath = {:?}\nsha256 = {sha:?}\n[plugin.settings]\nport = \"{port}\"\n", wasm.display().to_string()))
        .display()
        .to_string()
}

fn properties(pf: &Pgferry, source_port: u16, extra: Value) -> String {
    let mut body = json!({
        "SourceDBServerResourceId": format!("127.0.0.1:{source_port}@postgres"),
        "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "source-secret-4e2"}},
        "DBsToMigrate": ["app"],
        "sourceType": "EndpointMover",
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    pf.write("p.json", json!({ "properties": body }).to_string()).display().to_string()
}

#[test]
fn an_adapter_that_moves_the_source_is_refused_and_nothing_connects_to_its_endpoint() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let recorder = Recorder::start();
    let pf = Pgferry::new();
    let plugins = mover_config(&pf, recorder.port);
    let props = properties(&pf, source.port(), json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());

    let out = pf.run(&["--plugins", &plugins, "migration", "create", "--migration-name", "moved", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    let expected_to = format!("127.0.0.1:{}", recorder.port);
    assert!(out.stderr.contains("source adapter plugin `guest-endpoint-mover`"), "the error names the adapter: {}", out.transcript());
    assert!(out.stderr.contains(&expected_to) && out.stderr.contains(&format!("127.0.0.1:{}", source.port())), "{}", out.transcript());
    assert!(out.stderr.contains("AllowAdapterEndpointChange"), "{}", out.transcript());
    assert_eq!(recorder.connections(), 0, "the adapter's endpoint was contacted");
    let list = pf.run(&["migration", "list", "--output", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&list.stdout).unwrap(), json!([]), "nothing is recorded for a refused run");
}

#[test]
fn with_consent_the_adapter_moves_the_source_and_validation_shows_it() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    // The properties name the recording server; the adapter moves the source to the real one.
    let recorder = Recorder::start();
    let pf = Pgferry::new();
    let plugins = mover_config(&pf, source.port());
    let props = properties(&pf, recorder.port, json!({"AllowAdapterEndpointChange": "true"}));
    let target_arg = format!("127.0.0.1:{}", target.port());

    let out = pf.run(&["--plugins", &plugins, "migration", "create", "--migration-name", "moved", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["validation"]["status"], "Warning", "{doc:#}");
    let check = doc["validation"]["serverLevel"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "adapter-endpoint-change")
        .unwrap_or_else(|| panic!("no adapter-endpoint-change check: {doc:#}"))
        .clone();
    assert_eq!(check["plugin"], "guest-endpoint-mover");
    assert_eq!(check["state"], "Warning");
    let message = check["findings"][0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("from 127.0.0.1:{} to 127.0.0.1:{}", recorder.port, source.port())), "{message}");
    assert_eq!(recorder.connections(), 0, "the endpoint the user named was replaced, so never contacted");
    assert!(!out.stdout.contains("source-secret-4e2") && !out.stderr.contains("source-secret-4e2"));
}
