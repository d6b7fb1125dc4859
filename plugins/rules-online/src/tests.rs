use pgferry_sdk::testing::*;
use pgferry_sdk::*;

use super::*;

const README: &str = include_str!("../README.md");

/// A source ready for logical replication.
fn ready() -> Fixture {
    let mut fx = Fixture::new();
    set(&mut fx.source, "wal_level", "logical", "");
    fx
}

fn set(server: &mut ServerInfo, name: &str, value: &str, unit: &str) {
    set_setting(server, name, value).unit = unit.into();
}

fn run(rule: &impl Rule, fx: &Fixture) -> Vec<Finding> {
    let database = (rule.describe().level == Level::Database).then_some("app");
    fx.check(rule, fx.context(MigrationMode::Online, database)).unwrap()
}

/// Asserts a finding with this code, severity and object, and that README documents the code.
fn fires(findings: &[Finding], code: &str, severity: Severity, object: &str) {
    assert_documented(README, code);
    assert_fires(findings, code, severity, object);
}

#[test]
fn every_rule_is_online_only_exported_documented_and_quiet_on_a_ready_source() {
    let fx = ready();
    let rules = __PgferryRuleSet::descriptors();
    assert_eq!(rules.len(), 7);
    for d in rules {
        assert_eq!(d.modes, vec![MigrationMode::Online], "{}", d.id);
        assert_documented(README, &d.id);
        let database = (d.level == Level::Database).then_some("app");
        let findings = __PgferryRuleSet::run(&d.id, fx.context(MigrationMode::Online, database), &fx).unwrap();
        assert!(findings.is_empty(), "{}: {findings:#?}", d.id);
    }
}

#[test]
fn quantities_scale_by_unit() {
    let mut s = server(Side::Source, 160000);
    set(&mut s, "shared_buffers", "16384", "8kB");
    set(&mut s, "wal_sender_timeout", "5s", "");
    set(&mut s, "max_slot_wal_keep_size", "-1", "MB");
    assert_eq!(s.setting_quantity("shared_buffers", ""), Some(128 << 20));
    assert_eq!(s.setting_quantity("wal_sender_timeout", "ms"), Some(5_000));
    assert_eq!(s.setting_quantity("max_slot_wal_keep_size", "MB"), Some(-1));
    assert_eq!(s.setting_quantity("missing", "ms"), None);
}

#[test]
fn wal_level() {
    let mut fx = ready();
    assert_absent(&run(&WalLevel, &fx), "wal-level-not-logical");
    set(&mut fx.source, "wal_level", "replica", "");
    let f = run(&WalLevel, &fx);
    fires(&f, "wal-level-not-logical", Severity::Error, "wal_level");
    assert!(f[0].message.contains("`replica`"));
}

#[test]
fn replication_slots() {
    let mut fx = ready();
    fx.source_database_mut("b");
    fx.source_database_mut("c");
    fx.source.replication_slots_used = 7;
    assert_absent(&run(&ReplicationCapacity, &fx), "replication-slots-insufficient");
    fx.source.replication_slots_used = 8;
    let f = run(&ReplicationCapacity, &fx);
    fires(&f, "replication-slots-insufficient", Severity::Error, "max_replication_slots");
    assert!(f[0].remediation.as_deref().unwrap().contains("max_replication_slots = 11"));
}

#[test]
fn wal_senders() {
    let mut fx = ready();
    fx.source.wal_senders_used = 9;
    assert_absent(&run(&ReplicationCapacity, &fx), "wal-senders-insufficient");
    fx.source.wal_senders_used = 10;
    fires(&run(&ReplicationCapacity, &fx), "wal-senders-insufficient", Severity::Error, "max_wal_senders");
}

#[test]
fn wal_senders_below_slots() {
    let mut fx = ready();
    set(&mut fx.source, "max_wal_senders", "5", "");
    fires(&run(&ReplicationCapacity, &fx), "wal-senders-below-slots", Severity::Warning, "max_wal_senders");
    set(&mut fx.source, "max_wal_senders", "10", "");
    assert_absent(&run(&ReplicationCapacity, &fx), "wal-senders-below-slots");
}

#[test]
fn replication_privilege() {
    let mut fx = ready();
    assert_absent(&run(&ReplicationPrivilege, &fx), "replication-privilege-missing");
    fx.source.current_user = "migrator".into();
    fx.source.roles.push(role("migrator", false));
    fires(&run(&ReplicationPrivilege, &fx), "replication-privilege-missing", Severity::Error, "migrator");
    fx.source.roles[1].replication = true;
    assert_absent(&run(&ReplicationPrivilege, &fx), "replication-privilege-missing");
}

#[test]
fn replica_identity_missing() {
    let mut fx = ready();
    let keyless = |name: &str, unique: bool| TableInfo {
        has_primary_key: false,
        has_unique_not_null_index: unique,
        ..table("public", name)
    };
    let mut parent = keyless("events", false);
    parent.kind = RelationKind::PartitionedTable;
    let mut scratch = keyless("scratch", false);
    scratch.unlogged = true;
    let mut full = keyless("audit", false);
    full.replica_identity = ReplicaIdentity::Full;
    fx.source_database_mut("app").tables = vec![table("public", "keyed"), parent, scratch, full];
    assert_absent(&run(&TableReplicaIdentity, &fx), "replica-identity-missing");

    fx.source_database_mut("app").tables.extend([keyless("Log", false), keyless("codes", true)]);
    let f = run(&TableReplicaIdentity, &fx);
    fires(&f, "replica-identity-missing", Severity::Error, "public.\"Log\"");
    fires(&f, "replica-identity-missing", Severity::Error, "public.codes");
    assert_eq!(f.iter().filter(|f| f.code == "replica-identity-missing").count(), 2, "{f:#?}");
    let fix = |obj: &str| f.iter().find(|f| f.object.as_deref() == Some(obj)).unwrap().remediation.clone().unwrap();
    assert!(fix("public.\"Log\"").contains("REPLICA IDENTITY FULL"));
    assert!(fix("public.codes").contains("REPLICA IDENTITY USING INDEX"));
}

#[test]
fn replica_identity_full() {
    let mut fx = ready();
    fx.source_database_mut("app").tables = vec![table("public", "t")];
    assert_absent(&run(&TableReplicaIdentity, &fx), "replica-identity-full");
    fx.source_database_mut("app").tables[0].replica_identity = ReplicaIdentity::Full;
    let f = run(&TableReplicaIdentity, &fx);
    fires(&f, "replica-identity-full", Severity::Info, "public.t");
    assert!(f[0].remediation.as_deref().unwrap().contains("REPLICA IDENTITY DEFAULT"));
}

#[test]
fn unlogged_tables() {
    let mut fx = ready();
    fx.source_database_mut("app").tables = vec![table("public", "cache")];
    assert_absent(&run(&UnreplicatedObjects, &fx), "unlogged-table");
    fx.source_database_mut("app").tables[0].unlogged = true;
    fires(&run(&UnreplicatedObjects, &fx), "unlogged-table", Severity::Warning, "public.cache");
}

#[test]
fn large_objects() {
    let mut fx = ready();
    assert_absent(&run(&UnreplicatedObjects, &fx), "large-objects");
    fx.source_database_mut("app").large_object_count = 12;
    let f = run(&UnreplicatedObjects, &fx);
    fires(&f, "large-objects", Severity::Warning, "app");
    assert!(f[0].message.contains("12 large objects"));
}

#[test]
fn materialized_views() {
    let mut fx = ready();
    let mut mv = table("reports", "daily");
    assert_absent(&run(&UnreplicatedObjects, &fx), "materialized-view");
    mv.kind = RelationKind::MaterializedView;
    fx.source_database_mut("app").tables = vec![mv];
    fires(&run(&UnreplicatedObjects, &fx), "materialized-view", Severity::Info, "reports.daily");
}

#[test]
fn prepared_transactions() {
    let mut fx = ready();
    assert_absent(&run(&SourceTransactions, &fx), "prepared-transactions");
    fx.source.prepared_xacts = 2;
    fires(&run(&SourceTransactions, &fx), "prepared-transactions", Severity::Error, "127.0.0.1:5432");
}

#[test]
fn long_running_transaction() {
    let mut fx = ready();
    fx.source.oldest_xact_age_seconds = 600;
    assert_absent(&run(&SourceTransactions, &fx), "long-running-transaction");
    fx.source.oldest_xact_age_seconds = 601;
    fires(&run(&SourceTransactions, &fx), "long-running-transaction", Severity::Warning, "127.0.0.1:5432");
}

#[test]
fn slot_wal_unlimited() {
    let mut fx = ready();
    set(&mut fx.source, "max_slot_wal_keep_size", "10240", "MB");
    assert_absent(&run(&ReplicationSettings, &fx), "slot-wal-unlimited");
    set(&mut fx.source, "max_slot_wal_keep_size", "-1", "MB");
    fires(&run(&ReplicationSettings, &fx), "slot-wal-unlimited", Severity::Info, "max_slot_wal_keep_size");
}

#[test]
fn wal_sender_timeout() {
    let mut fx = ready();
    for ok in ["60000", "10s", "0"] {
        set(&mut fx.source, "wal_sender_timeout", ok, "ms");
        assert_absent(&run(&ReplicationSettings, &fx), "wal-sender-timeout-short");
    }
    set(&mut fx.source, "wal_sender_timeout", "5000", "ms");
    fires(&run(&ReplicationSettings, &fx), "wal-sender-timeout-short", Severity::Warning, "wal_sender_timeout");
    set(&mut fx.source, "wal_sender_timeout", "5s", "");
    fires(&run(&ReplicationSettings, &fx), "wal-sender-timeout-short", Severity::Warning, "wal_sender_timeout");
}

#[test]
fn logical_decoding_work_mem() {
    let mut fx = ready();
    set(&mut fx.source, "logical_decoding_work_mem", "65536", "kB");
    assert_absent(&run(&ReplicationSettings, &fx), "logical-decoding-work-mem-low");
    set(&mut fx.source, "logical_decoding_work_mem", "4096", "kB");
    let f = run(&ReplicationSettings, &fx);
    fires(&f, "logical-decoding-work-mem-low", Severity::Info, "logical_decoding_work_mem");
    assert!(f[0].message.contains("4096 kB"));
    // Bare numbers are in pg_settings' unit for this setting, kB.
    set(&mut fx.source, "logical_decoding_work_mem", "32768", "");
    fires(
        &run(&ReplicationSettings, &fx),
        "logical-decoding-work-mem-low",
        Severity::Info,
        "logical_decoding_work_mem",
    );
}
