//! `pgferry plugin list | inspect` and external plugins pinned in a configuration file:
//! what users see, and every way a plugin file can be wrong.

use pgferry_tests::{stabilize, workspace_root, Cluster, Pgferry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn example_wasm() -> std::path::PathBuf {
    workspace_root().join("examples/dist/example-max-database-size.wasm")
}

fn guest_wasm(name: &str) -> std::path::PathBuf {
    workspace_root().join("tests/guests/dist").join(format!("{name}.wasm"))
}

fn sha256(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn plugin_list_shows_every_builtin() {
    let pf = Pgferry::new();
    let out = pf.run(&["plugin", "list"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    insta::assert_snapshot!("plugin_list", out.transcript());

    let json = pf.run(&["plugin", "list", "--output", "json"]);
    let rows: Value = serde_json::from_str(&json.stdout).unwrap();
    let ids: Vec<&str> = rows.as_array().unwrap().iter().flat_map(|r| r["ids"].as_array().unwrap()).filter_map(Value::as_str).collect();
    for id in ["OnPremises", "AWS_RDS", "AWS", "AWS_AURORA", "AzureVM", "PostgreSQLSingleServer", "server-version", "wal-level", "replica-identity", "extensions"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(rows.as_array().unwrap().iter().all(|r| r["contract"] == "0.2.0"));
}

#[test]
fn plugin_inspect_describes_a_component_and_refuses_what_is_not_one() {
    let pf = Pgferry::new();
    let example = example_wasm();
    let out = pf.run(&["plugin", "inspect", &example.display().to_string(), "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["world"], "validation-rule");
    assert_eq!(doc["contract"], "0.2.0");
    assert_eq!(doc["hostedContracts"], json!(["0.1.0", "0.2.0"]));
    assert_eq!(doc["sha256"], sha256(&example));
    assert_eq!(doc["provides"], json!(["max-database-size"]));
    assert!(doc["exports"].as_array().unwrap().iter().any(|e| e == "pgferry:plugin/rules@0.2.0"));
    assert_eq!(doc["manifest"]["id"], "example-max-database-size");
    assert_eq!(doc["manifest"]["settings"], json!([{"name": "max_bytes", "description": "Largest database size allowed, in bytes",
        "type": "integer", "default": (2u64 << 40).to_string(), "required": false}]));
    let table = pf.run(&["plugin", "inspect", &example.display().to_string()]);
    assert!(table.stdout.contains("Setting   max_bytes (integer, default 2199023255552): Largest database size allowed, in bytes\nGrants    none\n"), "{}", table.transcript());

    // A component built for contract 0.1.0 has no manifest and is still hosted.
    let old = workspace_root().join("tests/guests/contract-v0.1/guest-well-behaved.wasm");
    let out = pf.run(&["plugin", "inspect", &old.display().to_string(), "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((&doc["contract"], &doc["manifest"], &doc["provides"]), (&json!("0.1.0"), &Value::Null, &json!(["all-good"])));

    let text = pf.write("notes.txt", "not wasm at all");
    let core = pf.write("core.wasm", b"\0asm\x01\0\0\0");
    let wrong = guest_wasm("guest-wrong-contract");
    let cases = [
        (text.display().to_string(), "is not a WebAssembly file"),
        (core.display().to_string(), "is a core WebAssembly module, not a component"),
        (
            wrong.display().to_string(),
            "plugin `guest-wrong-contract`: was built for plugin contract 0.3.0, newer than this runner knows (it hosts contracts 0.1.0, 0.2.0); \
             upgrade pgferry to one that hosts 0.3.0, or rebuild the plugin with a pgferry-sdk for one of 0.1.0, 0.2.0",
        ),
    ];
    for (file, expected) in cases {
        let out = pf.run(&["plugin", "inspect", &file]);
        assert_eq!(out.code, 1, "{}", out.transcript());
        assert!(out.stderr.contains(expected), "{file}: {}", out.transcript());
        assert!(out.stderr.contains(&file), "the error names the file: {}", out.transcript());
    }
}

#[test]
fn a_pinned_external_rule_runs_in_validation_and_a_bad_pin_is_refused() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let pf = Pgferry::new();
    let example = example_wasm();
    let config = |pin: &str| {
        pf.write(
            "plugins.toml",
            format!(
                "[[plugin]]\npath = {:?}\nsha256 = {pin:?}\n[plugin.settings]\nmax_bytes = \"1000\"\n",
                example.display().to_string()
            ),
        )
        .display()
        .to_string()
    };
    let props = pf
        .write(
            "p.json",
            json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()), "DBsToMigrate": ["app"], "sourceType": "OnPremises"}})
                .to_string(),
        )
        .display()
        .to_string();
    let target_arg = format!("127.0.0.1:{}", target.port());

    // Pinned correctly: the rule runs with its setting (1000 bytes) and fails the database.
    let good = config(&sha256(&example));
    let out = pf.run(&["--plugins", &good, "migration", "create", "--migration-name", "ext", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let check = doc["validation"]["dbLevel"][0]["checks"].as_array().unwrap().iter().find(|c| c["id"] == "max-database-size").expect("the external rule ran").clone();
    assert_eq!(check["plugin"], "example-max-database-size");
    assert_eq!(check["state"], "Failed");
    assert_eq!(check["findings"][0]["object"], "app");

    let listed = pf.run(&["--plugins", &good, "plugin", "list"]);
    assert!(listed.stdout.contains("example-max-database-size"), "{}", listed.transcript());

    // A pin that does not match: refused before anything runs, naming file and both hashes.
    let bad = config(&"0".repeat(64));
    let out = pf.run(&["--plugins", &bad, "migration", "create", "--migration-name", "ext2", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("does not match its pin") && out.stderr.contains(&sha256(&example)), "{}", out.transcript());
    let list = pf.run(&["migration", "list", "--output", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&list.stdout).unwrap().as_array().unwrap().len(), 1, "nothing recorded for the refused run");

    // A hostile plugin in the configuration fails validation with a finding naming it; the
    // runner itself carries on and reports.
    let looping = guest_wasm("guest-infinite-loop");
    let hostile = pf.write(
        "hostile.toml",
        format!("[[plugin]]\npath = {:?}\nsha256 = {:?}\ndeadline_ms = 300\n", looping.display().to_string(), sha256(&looping)),
    );
    let out = pf.run(&["--plugins", &hostile.display().to_string(), "migration", "create", "--migration-name", "ext3", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    assert!(out.stdout.contains("plugin-failed") && out.stdout.contains("guest-infinite-loop") && out.stdout.contains("exceeded its deadline"), "{}", out.transcript());
    insta::assert_snapshot!(
        "hostile_plugin_finding",
        stabilize(&out.stdout, &[(source.port(), "SOURCE_PORT"), (target.port(), "TARGET_PORT")], pf.dir())
    );
}

#[test]
fn read_only_sql_is_only_for_granted_plugins_and_stays_read_only() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    let pf = Pgferry::new();
    let probe = guest_wasm("guest-sql-probe");
    let props = pf
        .write(
            "p.json",
            json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()), "DBsToMigrate": ["app"], "sourceType": "OnPremises"}})
                .to_string(),
        )
        .display()
        .to_string();
    let target_arg = format!("127.0.0.1:{}", target.port());
    let findings = |name: &str, grants: &str| -> Vec<(String, String)> {
        let config = pf.write(
            &format!("{name}.toml"),
            format!("[[plugin]]\npath = {:?}\nsha256 = {:?}\ngrants = {grants}\n", probe.display().to_string(), sha256(&probe)),
        );
        let out = pf.run(&["--plugins", &config.display().to_string(), "migration", "create", "--migration-name", name, "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--output", "json"]);
        assert_eq!(out.code, 0, "{}", out.transcript());
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        let check = doc["validation"]["serverLevel"]["checks"].as_array().unwrap().iter().find(|c| c["id"] == "sql-probe").unwrap().clone();
        check["findings"].as_array().unwrap().iter().map(|f| (f["code"].as_str().unwrap().to_string(), f["message"].as_str().unwrap().to_string())).collect()
    };

    let granted = findings("granted", r#"["sql"]"#);
    let by_code = |code: &str| granted.iter().find(|(c, _)| c == code).unwrap_or_else(|| panic!("no {code} in {granted:?}")).1.clone();
    assert!(by_code("read").contains(r#"rows=[[Some("app")]]"#), "{granted:?}");
    assert!(by_code("write-refused").contains("it is a CreateStmt; only a single SELECT may run"), "{granted:?}");
    assert!(by_code("escape-refused").contains("holds 2 statements"), "{granted:?}");
    assert_eq!(by_code("many-rows-ran"), "1000 rows, truncated=true");
    assert_eq!(source.psql("app", "select count(*) from pg_class where relname = 'sneaky'").unwrap(), "0");

    let denied = findings("denied", "[]");
    assert!(denied.iter().all(|(c, _)| c.ends_with("-refused")), "{denied:?}");
    assert!(denied[0].1.contains("not granted `sql`"), "{denied:?}");
}

/// A plugin author's loop without a migration: dump a real server's inventory, load it as
/// the SDK's test fixture, and run one plugin against the dump and against the live server.
#[test]
fn an_inventory_dump_is_an_sdk_fixture_and_plugin_test_runs_one_plugin_against_it() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    source.psql("app", "create table t (id int primary key, pad text); insert into t select g, repeat('x', 500) from generate_series(1, 20000) g;").unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "app", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());

    let out = pf.run(&["inventory", "dump", "--properties", &props, "--target", &target_arg]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let fixture = pgferry_sdk::testing::Fixture::from_json(&out.stdout).unwrap_or_else(|e| panic!("the SDK loads the dump: {e}: {}", out.stdout));
    let app = fixture.source_databases.iter().find(|d| d.name == "app").expect("app is in the dump");
    assert!(app.tables.iter().any(|t| t.name == "t"), "its tables are in the dump");
    let size = fixture.source.databases.iter().find(|d| d.name == "app").expect("app is in the server's list").size_bytes;
    assert!(size > 10_000_000, "{size}");
    let dump = pf.write("inventory.json", &out.stdout);
    let dump = dump.display().to_string();

    // Under the limit: no finding, exit 0.
    let example = example_wasm().display().to_string();
    let out = pf.run(&["plugin", "test", &example, "--inventory", &dump]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert!(out.stdout.contains("ok   example-max-database-size/max-database-size"), "{}", out.transcript());
    // Over the limit set for the test: the rule's finding, exit 4 as a failed validation.
    let out = pf.run(&["plugin", "test", &example, "--inventory", &dump, "--setting", "max_bytes=1000000", "--output", "json"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let finding = &report["dbLevel"][0]["checks"][0]["findings"][0];
    assert_eq!((report["dbLevel"][0]["databaseName"].as_str(), finding["code"].as_str()), (Some("app"), Some("max-database-size")), "{report:#}");
    // The same against the live servers.
    let out = pf.run(&["plugin", "test", &example, "--properties", &props, "--target", &target_arg, "--setting", "max_bytes=1000000"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    assert!(out.stdout.contains("over the limit of"), "{}", out.transcript());
    // Or straight from a live source URI and the databases to check.
    let source_uri = format!("postgresql://postgres@127.0.0.1:{}/postgres", source.port());
    let out = pf.run(&["plugin", "test", &example, "--source", &source_uri, "--database", "app", "--target", &target_arg, "--setting", "max_bytes=1000000"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    assert!(out.stdout.contains("over the limit of") && out.stdout.contains("app"), "{}", out.transcript());
    // An adapter: its readiness, here for an online migration of a source without logical WAL.
    let adapter = workspace_root().join("plugins/dist/adapter-on-premises.wasm").display().to_string();
    let out = pf.run(&["plugin", "test", &adapter, "--inventory", &dump, "--migration-mode", "Online"]);
    assert_eq!(out.code, 4, "{}", out.transcript());
    assert!(out.stdout.contains("adapter-on-premises/source-readiness") && out.stdout.contains("wal_level"), "{}", out.transcript());
    // A file that is not a dump is named.
    let out = pf.run(&["plugin", "test", &example, "--inventory", &props]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("is not an inventory dump"), "{}", out.transcript());
}

/// A plugins.toml entry for `wasm`, pinned, with `extra` lines (grants, settings).
fn entry(wasm: &std::path::Path, extra: &str) -> String {
    format!("[[plugin]]\npath = {:?}\nsha256 = {:?}\n{extra}", wasm.display().to_string(), sha256(wasm))
}

/// Every way a plugin's configuration can miss its manifest is refused when the plugins are
/// loaded, before any server is touched or anything recorded, naming plugin, key and file.
#[test]
fn configurations_that_do_not_fit_the_manifest_are_refused_at_load() {
    let pf = Pgferry::new();
    let example = example_wasm();
    let attacks = guest_wasm("guest-sql-attacks");
    let mover = guest_wasm("guest-endpoint-mover");
    let wrong = guest_wasm("guest-wrong-contract");
    let cases = [
        ("unknown", entry(&example, "[plugin.settings]\nmax_byte = 1000\n"),
         "plugin `example-max-database-size`: unknown setting `max_byte` in FILE; its settings are `max_bytes` (integer); fix the name or remove it"),
        ("mistyped", entry(&example, "[plugin.settings]\nmax_bytes = \"lots\"\n"),
         "plugin `example-max-database-size`: setting `max_bytes` in FILE must be an integer, but is \"lots\""),
        ("array", entry(&example, "[plugin.settings]\nmax_bytes = [1, 2]\n"),
         "plugin `example-max-database-size`: setting `max_bytes` in FILE is an array; a setting is text, a boolean or a number"),
        ("required", entry(&mover, ""),
         "plugin `guest-endpoint-mover`: setting `port` is required (integer: Where to send the source connection) but not given; add `port = …` to its `[plugin.settings]` in FILE"),
        ("grant", entry(&attacks, ""),
         "plugin `guest-sql-attacks`: needs grant `sql`, which it is not given in FILE; add `grants = [\"sql\"]` to its entry in FILE if you trust it with that"),
        ("newer", entry(&wrong, ""),
         "plugin `guest-wrong-contract`: was built for plugin contract 0.3.0, newer than this runner knows (it hosts contracts 0.1.0, 0.2.0); upgrade pgferry to one that hosts 0.3.0, or rebuild the plugin with a pgferry-sdk for one of 0.1.0, 0.2.0"),
    ];
    let props = pf
        .write("p.json", json!({"properties": {"SourceDBServerResourceId": "127.0.0.1:1@postgres", "DBsToMigrate": ["app"], "sourceType": "OnPremises"}}).to_string())
        .display()
        .to_string();
    for (name, config, expected) in cases {
        let file = pf.write(&format!("{name}.toml"), config).display().to_string();
        let expected = expected.replace("FILE", &file);
        let out = pf.run(&["--plugins", &file, "plugin", "list"]);
        assert_eq!(out.code, 1, "{name}: {}", out.transcript());
        assert_eq!(out.stderr.trim_end(), format!("Error: {expected}"), "{name}: {}", out.transcript());
        // A migration is refused the same way, before it reaches a server or the store.
        let out = pf.run(&["--plugins", &file, "migration", "create", "--migration-name", name, "--properties", &props, "--target", "127.0.0.1:1"]);
        assert_eq!(out.code, 1, "{name}: {}", out.transcript());
        assert!(out.stderr.contains(&expected), "{name}: {}", out.transcript());
    }
    let list = pf.run(&["migration", "list", "--output", "json"]);
    assert_eq!(list.stdout.trim(), "[]", "nothing recorded: {}", list.transcript());

    // Two plugins of one name could not be told apart in a report.
    let twice = pf.write("twice.toml", format!("{}{}", entry(&example, ""), entry(&example, ""))).display().to_string();
    let out = pf.run(&["--plugins", &twice, "plugin", "list"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    let path = example.display();
    assert_eq!(
        out.stderr.trim_end(),
        format!("Error: two plugins are named `example-max-database-size` ({path} and {path}); reports tell plugins apart by name: give one another `name` in the plugin configuration")
    );

    // Fitting values are given to the plugin as its manifest types them; 0.1.0 components
    // load beside 0.2.0 ones.
    let old = workspace_root().join("tests/guests/contract-v0.1/guest-well-behaved.wasm");
    let file = pf.write("good.toml", format!("{}{}", entry(&example, "[plugin.settings]\nmax_bytes = 1000\n"), entry(&old, "name = \"old-rules\"\n"))).display().to_string();
    let out = pf.run(&["--plugins", &file, "plugin", "list", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    let contract = |name: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} missing: {rows:#}"))["contract"].clone();
    assert_eq!((contract("example-max-database-size"), contract("old-rules")), (json!("0.2.0"), json!("0.1.0")));
    let version = |name: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["version"].clone();
    assert_eq!((version("example-max-database-size"), version("old-rules")), (json!(env!("CARGO_PKG_VERSION")), Value::Null));
}

/// `--plugin-dev PATH` loads an unpinned file with a loud warning naming it; `serve` refuses it.
#[test]
fn plugin_dev_loads_unpinned_with_a_warning_and_serve_refuses_it() {
    let pf = Pgferry::new();
    let example = example_wasm();
    let path = example.display().to_string();
    let out = pf.run(&["--plugin-dev", &path, "plugin", "list"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert!(
        out.stderr.contains(&format!("WARNING: DEVELOPMENT PLUGIN `example-max-database-size` loaded from {path} without a sha256 pin (--plugin-dev)")),
        "{}",
        out.transcript()
    );
    let row = out.stdout.lines().find(|l| l.starts_with(" example-max-database-size")).unwrap_or_else(|| panic!("{}", out.transcript()));
    assert!(row.contains(&format!("{path} (--plugin-dev, unpinned)")) && row.contains("max-database-size"), "{row}");

    let out = pf.run(&["--plugin-dev", &path, "serve"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert_eq!(
        out.stderr.trim_end(),
        format!("Error: `pgferry serve` refuses --plugin-dev ({path}): a server runs only pinned plugins. Pin it in a plugins.toml (path and sha256) and pass that with --plugins, or try it with `pgferry plugin test` or `pgferry migration create --plugin-dev`")
    );
}
