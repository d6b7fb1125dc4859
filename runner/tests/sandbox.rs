//! The plugin host against hostile guests: each misbehaviour ends in a clear error naming
//! the plugin (never a crashed or wedged runner), and the same host keeps serving a
//! well-behaved plugin afterwards. Also loads every built-in source adapter and the example
//! rule plugin. No database is needed.
//!
//! The components are built by `cargo xtask build-plugins` into `*/dist/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::pgferry::inventory::Inventory;
use ::pgferry::plugin_host::contract::ShapeError;
use ::pgferry::plugin_host::*;

const DEADLINE: Duration = Duration::from_millis(500);
const MEMORY: usize = 32 << 20;

fn limits() -> Limits {
    Limits { deadline: DEADLINE, memory_bytes: MEMORY }
}

fn dist(dir: &str, package: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(dir).join("dist").join(format!("{package}.wasm"))
}

fn read(dir: &str, package: &str) -> (PathBuf, Vec<u8>) {
    let path = dist(dir, package);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build-plugins`", path.display()));
    (path, bytes)
}

fn load_from(host: &PluginHost, dir: &str, package: &str, settings: Vec<(String, String)>) -> Plugin {
    let (path, bytes) = read(dir, package);
    host.load(package, Origin::File(path), &bytes, Grants::default(), settings, limits())
        .unwrap_or_else(|e| panic!("loading {package}: {e}"))
}

fn guest(host: &PluginHost, package: &str) -> Plugin {
    load_from(host, "tests/guests", package, vec![])
}

fn new_host() -> PluginHost {
    PluginHost::new(None).expect("plugin host")
}

fn ctx(mode: MigrationMode, source_type: &str, database: Option<&str>) -> CheckContext {
    CheckContext {
        migration_name: "sandbox-test".into(),
        mode,
        migration_option: MigrationOption::Validate,
        source_type: source_type.into(),
        database: database.map(str::to_string),
        dbs_to_migrate: database.into_iter().map(str::to_string).collect(),
        overwrite_dbs_in_target: false,
    }
}

fn instance_ctx() -> CheckContext {
    ctx(MigrationMode::Offline, "OnPremises", None)
}

fn codes(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.code.as_str()).collect()
}

/// A host that has just dealt with a hostile call still runs a good plugin.
async fn assert_host_still_works(host: &PluginHost, well: &Plugin) {
    let findings = host
        .check_rule(well, Services::none(), "all-good", &instance_ctx())
        .await
        .unwrap_or_else(|e| panic!("the host no longer works after a hostile call: {e}"));
    assert_eq!(codes(&findings), ["all-good"]);
}

/// Checks the error names the plugin and returns its kind.
fn kind_of(err: PluginError, package: &str) -> PluginErrorKind {
    let shown = err.to_string();
    eprintln!("{shown}");
    assert_eq!(err.plugin, package);
    assert!(shown.contains(&format!("plugin `{package}`")), "error does not name the plugin: {shown}");
    err.kind
}

// --- hostile guests -----------------------------------------------------------------------

async fn infinite_loop(host: &PluginHost) {
    let p = guest(host, "guest-infinite-loop");
    let started = Instant::now();
    let err = host.check_rule(&p, Services::none(), "spin", &instance_ctx()).await.unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("guest-infinite-loop stopped after {elapsed:?}");
    let shown = err.to_string();
    match kind_of(err, "guest-infinite-loop") {
        PluginErrorKind::Deadline { function, deadline } => {
            assert_eq!(function, "check");
            assert_eq!(deadline, DEADLINE);
        }
        other => panic!("expected Deadline, got {other:?}: {shown}"),
    }
    assert!(shown.contains("deadline"), "{shown}");
    assert!(elapsed >= DEADLINE, "stopped after {elapsed:?}, before its deadline");
    assert!(elapsed < DEADLINE * 10, "stopped only after {elapsed:?}");
}

async fn memory_bomb(host: &PluginHost) {
    let p = guest(host, "guest-memory-bomb");
    let err = host.check_rule(&p, Services::none(), "hog", &instance_ctx()).await.unwrap_err();
    let shown = err.to_string();
    match kind_of(err, "guest-memory-bomb") {
        PluginErrorKind::Memory { function, requested, cap } => {
            assert_eq!(function, "check");
            assert_eq!(cap, MEMORY);
            assert!(requested > cap, "requested {requested} ≤ cap {cap}");
        }
        other => panic!("expected Memory, got {other:?}: {shown}"),
    }
}

async fn trap(host: &PluginHost) {
    let p = guest(host, "guest-trap");
    let err = host.check_rule(&p, Services::none(), "boom", &instance_ctx()).await.unwrap_err();
    let shown = err.to_string();
    match kind_of(err, "guest-trap") {
        PluginErrorKind::Trap { function, message } => {
            assert_eq!(function, "check");
            // The guest's panic message, read from its captured stderr, explains the trap.
            assert!(message.contains("deliberate panic in check()"), "{message}");
        }
        other => panic!("expected Trap, got {other:?}: {shown}"),
    }
}

/// What a subscriber wrote, for a test to read.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn what_a_guest_prints_is_logged_under_its_name_printable_and_capped() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).with_max_level(tracing::Level::INFO).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let host = new_host();
    trap(&host).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log.lines().find(|l| l.contains("about to panic")).unwrap_or_else(|| panic!("the guest's stdout is logged: {log}"));
    assert!(line.contains("plugin=\"guest-trap\"") && line.contains("stdout: guest-trap: about to panic"), "{line}");
    assert!(!log.contains('\x1b'), "escape sequences are made printable: {log:?}");
    assert!(log.contains("deliberate panic in check()"), "its stderr is logged too: {log}");
    assert!(log.contains("more bytes to its stdout in one call than are kept"), "what is dropped is said: {log}");
    assert!(log.len() < 40 * 1024, "the log keeps at most the cap of the 40 KiB printed: {} bytes", log.len());
}

async fn garbage_describe(host: &PluginHost) {
    let p = guest(host, "guest-garbage");
    let err = host.describe_rules(&p).await.unwrap_err();
    let shown = err.to_string();
    match kind_of(err, "guest-garbage") {
        PluginErrorKind::Malformed { function, .. } => assert_eq!(function, "describe"),
        other => panic!("expected Malformed, got {other:?}: {shown}"),
    }
}

async fn garbage_check(host: &PluginHost) {
    let p = guest(host, "guest-garbage");
    let err = host.check_rule(&p, Services::none(), "bad-utf8", &instance_ctx()).await.unwrap_err();
    let shown = err.to_string();
    match kind_of(err, "guest-garbage") {
        PluginErrorKind::Malformed { function, .. } => assert_eq!(function, "check"),
        other => panic!("expected Malformed, got {other:?}: {shown}"),
    }
}

async fn sandbox_escape(host: &PluginHost) {
    let p = guest(host, "guest-sandbox-escape");
    let findings = host
        .check_rule(&p, Services::none(), "escape", &instance_ctx())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let escaped: Vec<_> = findings.iter().filter(|f| f.code.starts_with("escaped-")).map(|f| format!("{}: {}", f.code, f.message)).collect();
    assert!(escaped.is_empty(), "the guest got out: {escaped:?}");
    assert_eq!(codes(&findings), ["sandbox-held"]);
}

fn wrong_contract(host: &PluginHost) {
    let (path, bytes) = read("tests/guests", "guest-wrong-contract");
    let err = host.load("guest-wrong-contract", Origin::File(path), &bytes, Grants::default(), vec![], limits()).err().expect("a 0.3.0 plugin must be refused");
    let shown = err.to_string();
    match kind_of(err, "guest-wrong-contract") {
        PluginErrorKind::Shape(ShapeError::NewerContract { found, hosted }) => {
            assert_eq!(found, Version { major: 0, minor: 3, patch: 0 });
            assert_eq!(hosted, "0.1.0, 0.2.0");
        }
        other => panic!("expected NewerContract, got {other:?}: {shown}"),
    }
    assert_eq!(
        shown,
        "plugin `guest-wrong-contract`: was built for plugin contract 0.3.0, newer than this runner knows (it hosts contracts 0.1.0, 0.2.0); \
         upgrade pgferry to one that hosts 0.3.0, or rebuild the plugin with a pgferry-sdk for one of 0.1.0, 0.2.0"
    );
}

fn not_a_component(host: &PluginHost) {
    let load = |name: &str, bytes: &[u8]| {
        host.load(name, Origin::File(name.into()), bytes, Grants::default(), vec![], limits()).err().expect("must be refused")
    };
    let err = load("core-module.wasm", b"\0asm\x01\0\0\0");
    let shown = err.to_string();
    match kind_of(err, "core-module.wasm") {
        PluginErrorKind::Shape(ShapeError::CoreModule) => {}
        other => panic!("expected CoreModule, got {other:?}: {shown}"),
    }
    assert!(shown.contains("core WebAssembly module, not a component"), "{shown}");

    let err = load("notes.txt", b"#!/bin/sh\necho not wasm\n");
    let shown = err.to_string();
    match kind_of(err, "notes.txt") {
        PluginErrorKind::Shape(ShapeError::NotWasm) => {}
        other => panic!("expected NotWasm, got {other:?}: {shown}"),
    }

    // A component header followed by nonsense.
    let err = load("truncated.wasm", b"\0asm\x0d\0\x01\0\xff\xff");
    let shown = err.to_string();
    match kind_of(err, "truncated.wasm") {
        PluginErrorKind::Shape(ShapeError::Malformed(_)) => {}
        other => panic!("expected Malformed shape, got {other:?}: {shown}"),
    }
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_its_deadline() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    infinite_loop(&host).await;
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn memory_bomb_is_stopped_at_its_cap() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    memory_bomb(&host).await;
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn panic_is_a_trap() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    trap(&host).await;
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn garbage_is_malformed() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    garbage_describe(&host).await;
    assert_host_still_works(&host, &well).await;
    garbage_check(&host).await;
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn sandbox_holds() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    sandbox_escape(&host).await;
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn wrong_contract_names_both_versions() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    wrong_contract(&host);
    assert_host_still_works(&host, &well).await;
}

#[tokio::test]
async fn non_components_are_refused_clearly() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    not_a_component(&host);
    assert_host_still_works(&host, &well).await;
}

/// Every hostile call in turn on one host, with a good call after each.
#[tokio::test]
async fn one_host_survives_every_hostile_guest_in_turn() {
    let host = new_host();
    let well = guest(&host, "guest-well-behaved");
    assert_eq!(host.describe_rules(&well).await.unwrap()[0].id, "all-good");
    assert_host_still_works(&host, &well).await;
    infinite_loop(&host).await;
    assert_host_still_works(&host, &well).await;
    memory_bomb(&host).await;
    assert_host_still_works(&host, &well).await;
    trap(&host).await;
    assert_host_still_works(&host, &well).await;
    garbage_describe(&host).await;
    assert_host_still_works(&host, &well).await;
    garbage_check(&host).await;
    assert_host_still_works(&host, &well).await;
    sandbox_escape(&host).await;
    assert_host_still_works(&host, &well).await;
    wrong_contract(&host);
    assert_host_still_works(&host, &well).await;
    not_a_component(&host);
    assert_host_still_works(&host, &well).await;
}

/// A hostile plugin's other functions still answer: a fresh store per call.
#[tokio::test]
async fn a_plugin_that_trapped_can_be_called_again() {
    let host = new_host();
    let p = guest(&host, "guest-trap");
    for _ in 0..3 {
        assert!(matches!(host.check_rule(&p, Services::none(), "boom", &instance_ctx()).await.unwrap_err().kind, PluginErrorKind::Trap { .. }));
    }
    assert_eq!(host.describe_rules(&p).await.unwrap()[0].id, "boom");
}

// --- built-in source adapters ---------------------------------------------------------------

const ADAPTERS: &[(&str, &[&str])] = &[
    ("adapter-aws-aurora", &["AWS_AURORA"]),
    ("adapter-aws-rds", &["AWS_RDS", "AWS"]),
    ("adapter-azure-single-server", &["PostgreSQLSingleServer"]),
    ("adapter-azure-vm", &["AzureVM"]),
    ("adapter-on-premises", &["OnPremises"]),
];

fn adapter(host: &PluginHost, package: &str) -> Plugin {
    load_from(host, "plugins", package, vec![])
}

#[tokio::test]
async fn every_builtin_adapter_loads_and_describes_itself() {
    let host = new_host();
    for (package, ids) in ADAPTERS {
        let p = adapter(&host, package);
        assert_eq!(p.shape.world, World::SourceAdapter, "{package}");
        assert_eq!(p.shape.contract, CONTRACT_VERSION, "{package}");
        let d = host.describe_adapter(&p).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&d.info.ids, ids, "{package}");
        assert!(!d.info.display_name.is_empty(), "{package}");
        assert!(d.info.allowed_ssl_modes.contains(&d.info.preferred_ssl_mode), "{package}");
        // With no inventory there is nothing to judge: no finding, no failure.
        let findings = host.readiness(&p, Services::none(), &ctx(MigrationMode::Online, ids[0], None)).await.unwrap();
        assert!(findings.is_empty(), "{package}: {findings:?}");
    }
}

/// What each built-in adapter asks the inventory to read: its provider's settings and its
/// logical-replication switch (the runner itself names none).
#[tokio::test]
async fn builtin_adapters_declare_their_provider_settings() {
    let host = new_host();
    let expected: &[(&str, &[&str])] = &[
        ("adapter-on-premises", &[]),
        ("adapter-aws-rds", &["rds.*", "rds.logical_replication"]),
        ("adapter-aws-aurora", &["rds.*", "rds.logical_replication"]),
        ("adapter-azure-vm", &[]),
        ("adapter-azure-single-server", &["azure.*", "azure.replication_support"]),
    ];
    for (package, settings) in expected {
        let m = host.read_manifest(&adapter(&host, package)).await.unwrap().expect("a manifest");
        assert_eq!((m.id.as_str(), &m.inventory_settings[..]), (*package, &settings.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]));
    }
}

#[tokio::test]
async fn provider_objects_and_replication_roles() {
    let host = new_host();
    let rds = host.describe_adapter(&adapter(&host, "adapter-aws-rds")).await.unwrap();
    assert_eq!(rds.provider_objects.databases, ["rdsadmin"]);
    assert!(rds.provider_objects.roles.iter().any(|r| r == "rds_*"));
    assert_eq!(rds.replication_roles, ["rds_replication"]);
    let single = host.describe_adapter(&adapter(&host, "adapter-azure-single-server")).await.unwrap();
    assert_eq!(single.provider_objects.databases, ["azure_maintenance", "azure_sys"]);
    assert_eq!(single.info.preferred_ssl_mode, SslMode::Require);
    assert!(!single.info.allowed_ssl_modes.contains(&SslMode::Disable));
}

#[tokio::test]
async fn single_server_login_gets_the_server_name() {
    let host = new_host();
    let p = adapter(&host, "adapter-azure-single-server");
    let details = |user: &str| ConnectionDetails { host: "myserver.postgres.database.azure.com".into(), port: 5432, user: user.into() };
    let n = host.normalize_connection(&p, &details("admin")).await.unwrap();
    assert_eq!(n.user, "admin@myserver");
    assert_eq!(n.host, "myserver.postgres.database.azure.com");
    assert_eq!(n.port, 5432);
    assert_eq!(host.normalize_connection(&p, &details("admin@other")).await.unwrap().user, "admin@other");

    let err = host.normalize_connection(&p, &details("")).await.unwrap_err();
    let shown = err.to_string();
    match kind_of(err, "adapter-azure-single-server") {
        PluginErrorKind::Reported { function, message } => {
            assert_eq!(function, "normalize-connection");
            assert!(message.contains("no user name"), "{message}");
        }
        other => panic!("expected Reported, got {other:?}: {shown}"),
    }
}

fn setting(name: &str, value: &str) -> Setting {
    Setting { name: name.into(), value: value.into(), unit: String::new() }
}

fn role(name: &str, member_of: &[&str]) -> RoleInfo {
    RoleInfo {
        name: name.into(),
        superuser: false,
        can_login: true,
        replication: false,
        create_role: true,
        create_db: true,
        bypass_rls: false,
        member_of: member_of.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn rds_readiness_sees_the_inventory() {
    let host = new_host();
    let p = adapter(&host, "adapter-aws-rds");
    let mut inventory = Inventory::empty();
    inventory.source.current_user = "master".into();
    inventory.source.roles = vec![role("rds_replication", &[]), role("rds_superuser", &[]), role("master", &["rds_superuser"])];
    inventory.source.settings = vec![setting("rds.logical_replication", "off"), setting("wal_level", "replica")];
    let services = Arc::new(Services { inventory: Arc::new(inventory), sql: None });

    let online = host.readiness(&p, services.clone(), &ctx(MigrationMode::Online, "AWS", None)).await.unwrap();
    assert_eq!(codes(&online), ["wal-level-not-logical", "replication-privilege-missing"]);
    assert!(online[0].remediation.as_deref().unwrap().contains("DB parameter group"));
    assert_eq!(online[1].remediation.as_deref(), Some("As the master user, run `GRANT rds_replication TO master;`"));

    let offline = host.readiness(&p, services, &ctx(MigrationMode::Offline, "AWS", None)).await.unwrap();
    assert!(offline.is_empty(), "{offline:?}");
}

// --- contract 0.1.0 components ------------------------------------------------------------------

/// Components built for contract 0.1.0 before the SDK moved to 0.2.0 (tests/guests/contract-v0.1):
/// a rule set and a source adapter load, describe themselves, run, and see the inventory.
#[tokio::test]
async fn contract_0_1_components_still_run() {
    let host = new_host();
    async fn load(host: &PluginHost, file: &str, settings: Vec<(String, String)>) -> Plugin {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/guests/contract-v0.1").join(file);
        let bytes = std::fs::read(&path).unwrap();
        host.load_checked(file, Origin::File(path), &bytes, Grants::default(), settings, limits(), &manifest::Given::Flag)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    // A 0.1.0 plugin declares no settings: what the operator gives passes unchecked, as before.
    let rules = load(&host, "guest-well-behaved.wasm", vec![("anything".into(), "goes".into())]).await;
    assert_eq!(rules.shape.contract, Version { major: 0, minor: 1, patch: 0 });
    assert!(rules.manifest.is_none());
    assert_eq!(*rules.settings, [("anything".to_string(), "goes".to_string())]);
    let described = host.describe_rules(&rules).await.unwrap();
    assert_eq!(described.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["all-good"]);
    let findings = host.check_rule(&rules, Services::none(), "all-good", &instance_ctx()).await.unwrap();
    assert_eq!(codes(&findings), ["all-good"]);
    assert_eq!(findings[0].message, "everything is fine");

    let rds = load(&host, "adapter-aws-rds.wasm", vec![]).await;
    assert_eq!((rds.shape.world, rds.shape.contract), (World::SourceAdapter, Version { major: 0, minor: 1, patch: 0 }));
    let d = host.describe_adapter(&rds).await.unwrap();
    assert_eq!(d.info.ids, ["AWS_RDS", "AWS"]);
    assert_eq!(d.provider_objects.databases, ["rdsadmin"]);
    assert_eq!(d.replication_roles, ["rds_replication"]);
    let details = ConnectionDetails { host: "db.example".into(), port: 5432, user: "master".into() };
    assert_eq!(host.normalize_connection(&rds, &details).await.unwrap(), details);
    // Its readiness reads the inventory through 0.1.0's host imports.
    let mut inventory = Inventory::empty();
    inventory.source.current_user = "master".into();
    inventory.source.roles = vec![role("rds_superuser", &[]), role("master", &["rds_superuser"])];
    inventory.source.settings = vec![setting("rds.logical_replication", "off")];
    let services = Arc::new(Services { inventory: Arc::new(inventory), sql: None });
    let online = host.readiness(&rds, services, &ctx(MigrationMode::Online, "AWS", None)).await.unwrap();
    assert_eq!(codes(&online), ["wal-level-not-logical", "replication-privilege-missing"]);
}

// --- manifests (contract 0.2.0) -------------------------------------------------------------------

fn load_example(host: &PluginHost, settings: &[(&str, &str)]) -> impl std::future::Future<Output = Result<Plugin, PluginError>> {
    let (path, bytes) = read("examples", "example-max-database-size");
    let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let given = manifest::Given::Config("/etc/pgferry/plugins.toml".into());
    async move { host.load_checked("max-size", Origin::File(path), &bytes, Grants::default(), settings, limits(), &given).await }
}

#[tokio::test]
async fn the_manifest_is_read_and_its_defaults_given() {
    let host = new_host();
    let p = load_example(&host, &[]).await.unwrap();
    let m = p.manifest.as_ref().expect("a 0.2.0 plugin has a manifest");
    assert_eq!((m.id.as_str(), m.version.as_str()), ("example-max-database-size", env!("CARGO_PKG_VERSION")));
    assert_eq!(m.settings.len(), 1);
    assert_eq!((m.settings[0].name.as_str(), m.settings[0].value_type), ("max_bytes", SettingType::Integer));
    // Not given: the default (2 TiB) is what the plugin sees.
    assert_eq!(*p.settings, [("max_bytes".to_string(), (2u64 << 40).to_string())]);
    let p = load_example(&host, &[("max_bytes", "1000")]).await.unwrap();
    assert_eq!(*p.settings, [("max_bytes".to_string(), "1000".to_string())]);

    let rds = host.load_checked("rds", Origin::BuiltIn, &read("plugins", "adapter-aws-rds").1, Grants::default(), vec![], limits(), &manifest::Given::BuiltIn).await.unwrap();
    assert_eq!(rds.manifest.unwrap().inventory_settings, ["rds.*", "rds.logical_replication"]);
}

#[tokio::test]
async fn settings_that_do_not_fit_the_manifest_are_refused_naming_plugin_and_key() {
    let host = new_host();
    let err = load_example(&host, &[("max_byte", "1000")]).await.err().expect("must be refused");
    assert_eq!(
        err.to_string(),
        "plugin `max-size`: unknown setting `max_byte` in /etc/pgferry/plugins.toml; its settings are `max_bytes` (integer); fix the name or remove it"
    );
    let err = load_example(&host, &[("max_bytes", "2 TB")]).await.err().expect("must be refused");
    assert_eq!(err.to_string(), "plugin `max-size`: setting `max_bytes` in /etc/pgferry/plugins.toml must be an integer, but is \"2 TB\"");
    assert!(matches!(err.kind, PluginErrorKind::Manifest(manifest::ManifestError::Mistyped { .. })));
}

#[tokio::test]
async fn required_settings_and_grants_are_enforced_at_load() {
    let host = new_host();
    // guest-sql-attacks declares that it needs the `sql` grant.
    let (path, bytes) = read("tests/guests", "guest-sql-attacks");
    let given = manifest::Given::Config("/etc/pgferry/plugins.toml".into());
    let err = host.load_checked("attacks", Origin::File(path.clone()), &bytes, Grants::default(), vec![], limits(), &given).await.err().expect("must be refused");
    assert_eq!(
        err.to_string(),
        "plugin `attacks`: needs grant `sql`, which it is not given in /etc/pgferry/plugins.toml; add `grants = [\"sql\"]` to its entry in /etc/pgferry/plugins.toml if you trust it with that"
    );
    host.load_checked("attacks", Origin::File(path), &bytes, Grants { sql: true }, vec![], limits(), &given).await.unwrap();

    // guest-endpoint-mover cannot work without its `port`.
    let (path, bytes) = read("tests/guests", "guest-endpoint-mover");
    let err = host.load_checked("mover", Origin::File(path.clone()), &bytes, Grants::default(), vec![], limits(), &given).await.err().expect("must be refused");
    assert_eq!(
        err.to_string(),
        "plugin `mover`: setting `port` is required (integer: Where to send the source connection) but not given; \
         add `port = …` to its `[plugin.settings]` in /etc/pgferry/plugins.toml"
    );
    let port = vec![("port".to_string(), "5999".to_string())];
    let p = host.load_checked("mover", Origin::File(path), &bytes, Grants::default(), port.clone(), limits(), &given).await.unwrap();
    assert_eq!(*p.settings, port);
}

// --- the example rule plugin -------------------------------------------------------------------

fn database_summary(name: &str, size_bytes: u64) -> DatabaseSummary {
    DatabaseSummary {
        name: name.into(),
        owner: "postgres".into(),
        encoding: "UTF8".into(),
        collate: "C.UTF-8".into(),
        ctype: "C.UTF-8".into(),
        locale_provider: "libc".into(),
        icu_locale: None,
        size_bytes,
        is_template: false,
        allow_connections: true,
    }
}

#[tokio::test]
async fn example_max_database_size() {
    let host = new_host();
    let settings = vec![("max_bytes".to_string(), "1000000".to_string())];
    let p = load_from(&host, "examples", "example-max-database-size", settings);
    assert_eq!(p.shape.world, World::ValidationRule);
    let rules = host.describe_rules(&p).await.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id, "max-database-size");
    assert_eq!(rules[0].level, Level::Database);

    let mut inventory = Inventory::empty();
    inventory.source.databases = vec![database_summary("big", 2_000_000), database_summary("small", 999_999)];
    let services = Arc::new(Services { inventory: Arc::new(inventory), sql: None });

    let big = host.check_rule(&p, services.clone(), "max-database-size", &ctx(MigrationMode::Offline, "AWS", Some("big"))).await.unwrap();
    assert_eq!(codes(&big), ["max-database-size"]);
    assert_eq!(big[0].severity, Severity::Error);
    assert_eq!(big[0].object.as_deref(), Some("big"));
    assert!(big[0].remediation.as_deref().unwrap().starts_with("Open a ticket"));

    let small = host.check_rule(&p, services.clone(), "max-database-size", &ctx(MigrationMode::Offline, "AWS", Some("small"))).await.unwrap();
    assert!(small.is_empty(), "{small:?}");

    // A setting the rule cannot read is the rule's own error, reported as such.
    let bad = load_from(&host, "examples", "example-max-database-size", vec![("max_bytes".into(), "lots".into())]);
    let err = host.check_rule(&bad, services, "max-database-size", &ctx(MigrationMode::Offline, "AWS", Some("big"))).await.unwrap_err();
    match kind_of(err, "example-max-database-size") {
        PluginErrorKind::Reported { function, message } => {
            assert_eq!(function, "check");
            assert!(message.contains("max_bytes"), "{message}");
        }
        other => panic!("expected Reported, got {other:?}"),
    }
}

// --- the compile cache -------------------------------------------------------------------------

/// A fresh path under the temp dir that does not exist yet.
fn scratch(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("pgferry-sandbox-{name}-{}-{nanos}", std::process::id()))
}

fn cwasm_of(dir: &std::path::Path, package: &str) -> PathBuf {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(read("tests/guests", package).1));
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha) && p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap_or_else(|| panic!("no cached compilation of {package} in {}", dir.display()))
}

/// Native code in the cache is run only when it is what this runner compiled for that very
/// component: another plugin's `.cwasm` (with or without its seal) put in place of a pinned
/// plugin's is refused, compiled again and replaced, never run.
#[tokio::test]
async fn a_swapped_cwasm_is_refused_and_never_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("cache");
    let host = PluginHost::new(Some(dir.clone())).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "the cache dir is private");
    guest(&host, "guest-well-behaved");
    guest(&host, "guest-trap");
    let well = cwasm_of(&dir, "guest-well-behaved");
    let trap = cwasm_of(&dir, "guest-trap");
    let original = std::fs::read(&well).unwrap();
    let seal = |p: &std::path::Path| p.with_extension("cwasm.sha256");

    for swap_seal_too in [false, true] {
        std::fs::copy(&trap, &well).unwrap();
        if swap_seal_too {
            std::fs::copy(seal(&trap), seal(&well)).unwrap();
        }
        let host = PluginHost::new(Some(dir.clone())).unwrap();
        let p = guest(&host, "guest-well-behaved");
        let findings = host.check_rule(&p, Services::none(), "all-good", &instance_ctx()).await.unwrap_or_else(|e| panic!("the swapped code ran: {e}"));
        assert_eq!(codes(&findings), ["all-good"]);
        assert!(std::fs::read(&well).unwrap() == original, "the swapped file was not replaced by a fresh compilation");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_cache_dir_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("open-cache");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let host = PluginHost::new(Some(dir.clone())).unwrap();
    let p = guest(&host, "guest-well-behaved");
    assert_eq!(codes(&host.check_rule(&p, Services::none(), "all-good", &instance_ctx()).await.unwrap()), ["all-good"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing may be cached in a directory others can write to");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- namespaces -------------------------------------------------------------------------------

/// Ids and codes are each plugin's own: two plugins with the same rule id and finding code
/// both run, and every row and finding says which plugin it is from.
#[tokio::test]
async fn two_plugins_with_the_same_rule_id_both_report_distinguishably() {
    use ::pgferry::migration::validation_in_progress::{report, rule_checks};
    use ::pgferry::plugins::RulePlugin;
    let host = new_host();
    let (path, bytes) = read("tests/guests", "guest-well-behaved");
    let mut plugins = Vec::new();
    for name in ["team-a", "team-b"] {
        let plugin = host.load_checked(name, Origin::File(path.clone()), &bytes, Grants::default(), vec![], limits(), &manifest::Given::Flag).await.unwrap();
        let rules = host.describe_rules(&plugin).await.unwrap();
        plugins.push(RulePlugin { plugin: Arc::new(plugin), rules });
    }
    let (server_checks, db_checks) = rule_checks(&host, &plugins, Services::none(), &instance_ctx(), &["onpremises".into()], &[]).await;
    let doc = serde_json::to_value(report(chrono::Utc::now(), server_checks, db_checks)).unwrap();
    let rows: Vec<(String, String, String, String)> = doc["serverLevel"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
            (s(&c["plugin"]), s(&c["id"]), s(&c["findings"][0]["plugin"]), s(&c["findings"][0]["code"]))
        })
        .collect();
    let row = |p: &str| (p.to_string(), "all-good".to_string(), p.to_string(), "all-good".to_string());
    assert_eq!(rows, [row("team-a"), row("team-b")]);
}
