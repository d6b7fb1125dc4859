//! Plugin costs, printed (not asserted): `cargo bench -p pgferry --bench plugins`.
//! Targets from the foundation issue: all built-in rules over a 10,000-table inventory
//! under 1 s; a warm instantiate-and-call per plugin under 1 ms; `pgferry` start-up with
//! the embedded plugins under 150 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgferry::inventory::Inventory;
use pgferry::migration::validation_in_progress;
use pgferry::plugin_host::*;
use pgferry::plugins::Registry;

fn table(i: usize) -> TableInfo {
    TableInfo {
        schema: format!("s{}", i % 20),
        name: format!("table_{i}"),
        owner: "app".into(),
        kind: RelationKind::Table,
        unlogged: i.is_multiple_of(500),
        has_oids: false,
        has_primary_key: !i.is_multiple_of(97),
        replica_identity: ReplicaIdentity::Default,
        replica_identity_index: None,
        has_unique_not_null_index: !i.is_multiple_of(97),
        partition_of: None,
        row_estimate: (i * 13) as u64,
        size_bytes: (i * 8192) as u64,
        columns: (0..8)
            .map(|c| ColumnInfo { name: format!("col_{c}"), type_name: "integer".into(), generated: String::new(), identity: c == 0, collation: None })
            .collect(),
    }
}

fn inventory(tables: usize) -> Inventory {
    let mut inv = Inventory::empty();
    for server in [&mut inv.source, &mut inv.target] {
        server.version_num = 150000;
        server.version = "15.0".into();
        server.current_user = "postgres".into();
        server.settings = [("wal_level", "logical"), ("max_replication_slots", "10"), ("max_wal_senders", "10"), ("max_connections", "100"), ("max_locks_per_transaction", "64")]
            .iter()
            .map(|(n, v)| Setting { name: n.to_string(), value: v.to_string(), unit: String::new() })
            .collect();
        server.roles = vec![RoleInfo { name: "postgres".into(), superuser: true, can_login: true, replication: true, create_role: true, create_db: true, bypass_rls: true, member_of: vec![] }];
    }
    inv.source.databases = vec![DatabaseSummary {
        name: "app".into(),
        owner: "postgres".into(),
        encoding: "UTF8".into(),
        collate: "C".into(),
        ctype: "C".into(),
        locale_provider: "libc".into(),
        icu_locale: None,
        size_bytes: 1 << 30,
        is_template: false,
        allow_connections: true,
    }];
    inv.source_databases.insert(
        "app".into(),
        DatabaseInfo {
            name: "app".into(),
            schemas: (0..20).map(|i| SchemaInfo { name: format!("s{i}"), owner: "app".into() }).collect(),
            extensions: vec![ExtensionInfo { name: "plpgsql".into(), version: "1.0".into(), schema: "pg_catalog".into() }],
            tables: (0..tables).map(table).collect(),
            collations_used: vec![],
            languages: vec![],
            user_casts: vec![],
            large_object_count: 0,
            owners: vec![("app".into(), tables as u32)],
        },
    );
    inv
}

fn per_call(total: Duration, n: u32) -> String {
    format!("{:.3} ms", total.as_secs_f64() * 1000.0 / n as f64)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = std::env::temp_dir().join(format!("pgferry-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);

    let t = Instant::now();
    let cold = rt.block_on(Registry::load(None, &[], Some(cache.clone()))).unwrap();
    println!("registry load, cold cache (compile {} components): {:?}", pgferry::plugins::BUILTIN.len(), t.elapsed());
    drop(cold);
    let t = Instant::now();
    let registry = rt.block_on(Registry::load(None, &[], Some(cache.clone()))).unwrap();
    println!("registry load, warm cache: {:?}", t.elapsed());

    // A warm instantiate + the smallest call (describe), per plugin.
    for r in &registry.rules {
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            rt.block_on(registry.host.describe_rules(&r.plugin)).unwrap();
        }
        println!("instantiate + describe, {}: {} per call", r.plugin.name, per_call(t.elapsed(), n));
    }
    for a in &registry.adapters {
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            rt.block_on(registry.host.describe_adapter(&a.plugin)).unwrap();
        }
        println!("instantiate + info/provider-objects/replication-roles, {}: {} per call", a.plugin.name, per_call(t.elapsed(), n));
    }

    for mode in [MigrationMode::Offline, MigrationMode::Online] {
        let services = Arc::new(Services { inventory: Arc::new(inventory(10_000)), sql: None });
        let ctx = CheckContext {
            migration_name: "bench".into(),
            mode,
            migration_option: MigrationOption::Validate,
            source_type: "OnPremises".into(),
            database: None,
            dbs_to_migrate: vec!["app".into()],
            overwrite_dbs_in_target: false,
        };
        let adapter = registry.require_adapter("OnPremises").unwrap();
        let t = Instant::now();
        let report = rt.block_on(validation_in_progress::run(&registry, adapter, services, &ctx));
        let findings: usize = report.db_level.iter().flat_map(|d| &d.result.checks).map(|c| c.findings.len()).sum();
        println!("all built-in rules over a 10,000-table inventory ({mode:?}): {:?} ({findings} database findings)", t.elapsed());
    }

    let bin = env!("CARGO_BIN_EXE_pgferry");
    let mut runs = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = std::process::Command::new(bin).args(["plugin", "list"]).env("PGFERRY_CACHE_DIR", &cache).output().unwrap();
        assert!(out.status.success());
        runs.push(t.elapsed());
    }
    runs.sort();
    println!("`pgferry plugin list` start-up with {} embedded plugins, warm cache: median {:?} (min {:?})", pgferry::plugins::BUILTIN.len(), runs[5], runs[0]);
    let _ = std::fs::remove_dir_all(&cache);
}
