use pgferry_sdk::testing::*;
use pgferry_sdk::*;

use super::*;

const README: &str = include_str!("../README.md");

fn run(rule: &impl Rule, fx: &Fixture) -> Vec<Finding> {
    fx.check(rule, fx.context(MigrationMode::Offline, None)).unwrap()
}

/// Asserts a finding with this code, severity and object, and that README documents the code.
fn fires(findings: &[Finding], code: &str, severity: Severity, object: &str) {
    assert_documented(README, code);
    assert_fires(findings, code, severity, object);
}

fn collation(name: &str, provider: &str, collate: &str) -> CollationInfo {
    CollationInfo {
        schema: "pg_catalog".into(),
        name: name.into(),
        provider: provider.into(),
        collate: Some(collate.into()),
        ctype: Some(collate.into()),
        encoding: "6".into(),
    }
}

#[test]
fn every_rule_is_exported_documented_and_quiet_on_a_default_fixture() {
    let fx = Fixture::new();
    let rules = __PgferryRuleSet::descriptors();
    assert_eq!(rules.len(), 7);
    for d in rules {
        assert_documented(README, &d.id);
        let findings = __PgferryRuleSet::run(&d.id, fx.context(MigrationMode::Offline, None), &fx).unwrap();
        assert!(findings.is_empty(), "{}: {findings:#?}", d.id);
    }
}

#[test]
fn source_too_old() {
    let mut fx = Fixture::new();
    fx.source.version_num = 90426;
    fires(&run(&ServerVersion, &fx), "source-version-too-old", Severity::Error, "127.0.0.1:5432");
    fx.source.version_num = 90500;
    assert_absent(&run(&ServerVersion, &fx), "source-version-too-old");
}

#[test]
fn target_older_than_source() {
    let mut fx = Fixture::new();
    fx.source.version_num = 160004;
    fx.target.version_num = 150008;
    let f = run(&ServerVersion, &fx);
    fires(&f, "target-version-older", Severity::Error, "127.0.0.1:5432");
    assert!(f[0].message.contains("16") && f[0].message.contains("15"), "{}", f[0].message);
    // 9.6 → 9.5 is a downgrade although both are "9".
    fx.source.version_num = 90624;
    fx.target.version_num = 90525;
    fires(&run(&ServerVersion, &fx), "target-version-older", Severity::Error, "127.0.0.1:5432");
    fx.target.version_num = 100023;
    assert_absent(&run(&ServerVersion, &fx), "target-version-older");
}

#[test]
fn target_far_newer() {
    let mut fx = Fixture::new();
    fx.source.version_num = 120020;
    fx.target.version_num = 170002;
    fires(&run(&ServerVersion, &fx), "target-version-newer", Severity::Info, "127.0.0.1:5432");
    fx.target.version_num = 130020;
    assert_absent(&run(&ServerVersion, &fx), "target-version-newer");
    // 9.6 → 10 is one release.
    fx.source.version_num = 90624;
    fx.target.version_num = 100023;
    assert!(run(&ServerVersion, &fx).is_empty());
}

#[test]
fn no_databases() {
    let fx = Fixture::new();
    let mut ctx = fx.context(MigrationMode::Offline, None);
    ctx.dbs_to_migrate.clear();
    fires(&fx.check(&DatabaseCount, ctx).unwrap(), "no-databases-to-migrate", Severity::Error, "DBsToMigrate");
    assert_absent(&run(&DatabaseCount, &fx), "no-databases-to-migrate");
}

#[test]
fn too_many_databases() {
    let mut fx = Fixture::new();
    for i in 0..8 {
        fx.source_database_mut(&format!("db{i}"));
    }
    fires(&run(&DatabaseCount, &fx), "too-many-databases", Severity::Warning, "DBsToMigrate");
    fx.settings.push(("max_databases".into(), "9".into()));
    assert_absent(&run(&DatabaseCount, &fx), "too-many-databases");
    fx.settings[0].1 = "lots".into();
    assert!(fx.check(&DatabaseCount, fx.context(MigrationMode::Offline, None)).unwrap_err().contains("max_databases"));
}

#[test]
fn source_database_missing() {
    let mut fx = Fixture::new();
    fx.source.databases.push(database_summary("Sales"));
    let mut ctx = fx.context(MigrationMode::Offline, None);
    ctx.dbs_to_migrate.push("sales".into());
    let f = fx.check(&SourceDatabases, ctx).unwrap();
    fires(&f, "source-database-missing", Severity::Error, "sales");
    assert!(f[0].message.contains("`Sales`"));
    assert_absent(&run(&SourceDatabases, &fx), "source-database-missing");
}

#[test]
fn source_database_template_or_closed() {
    let mut fx = Fixture::new();
    fx.source_database_mut("tpl");
    fx.source_database_mut("closed");
    let f = run(&SourceDatabases, &fx);
    assert_absent(&f, "source-database-is-template");
    assert_absent(&f, "source-database-not-connectable");
    fx.source.databases.iter_mut().find(|d| d.name == "tpl").unwrap().is_template = true;
    fx.source.databases.iter_mut().find(|d| d.name == "closed").unwrap().allow_connections = false;
    let f = run(&SourceDatabases, &fx);
    fires(&f, "source-database-is-template", Severity::Error, "tpl");
    fires(&f, "source-database-not-connectable", Severity::Error, "closed");
}

#[test]
fn target_database_exists() {
    let mut fx = Fixture::new();
    assert_absent(&run(&TargetDatabaseExists, &fx), "target-database-exists");
    fx.target.databases.push(database_summary("app"));
    let f = run(&TargetDatabaseExists, &fx);
    fires(&f, "target-database-exists", Severity::Error, "app");
    assert_absent(&f, "target-database-will-be-replaced");

    let mut ctx = fx.context(MigrationMode::Offline, None);
    ctx.overwrite_dbs_in_target = true;
    let f = fx.check(&TargetDatabaseExists, ctx.clone()).unwrap();
    fires(&f, "target-database-will-be-replaced", Severity::Warning, "app");
    assert_absent(&f, "target-database-exists");
    assert_absent(&f, "target-database-not-droppable");

    fx.target.current_user = "migrator".into();
    fx.target.roles.push(role("migrator", false));
    fires(
        &fx.check(&TargetDatabaseExists, ctx.clone()).unwrap(),
        "target-database-not-droppable",
        Severity::Error,
        "app",
    );
    fx.target.roles[1].member_of.push("postgres".into());
    assert_absent(&fx.check(&TargetDatabaseExists, ctx).unwrap(), "target-database-not-droppable");
}

#[test]
fn target_role_privileges() {
    let mut fx = Fixture::new();
    assert_absent(&run(&RolePrivileges, &fx), "target-role-cannot-create-databases");
    fx.target.current_user = "admin".into();
    fx.target.roles.push(role("admin", false));
    let f = run(&RolePrivileges, &fx);
    fires(&f, "target-role-cannot-create-databases", Severity::Error, "admin");
    fires(&f, "target-role-cannot-create-roles", Severity::Error, "admin");
    fx.target.roles[1].create_db = true;
    fx.target.roles[1].create_role = true;
    let f = run(&RolePrivileges, &fx);
    assert_absent(&f, "target-role-cannot-create-databases");
    assert_absent(&f, "target-role-cannot-create-roles");
}

#[test]
fn source_role_reads_all() {
    let mut fx = Fixture::new();
    fx.source.current_user = "reader".into();
    fx.source.roles.push(role("reader", false));
    let f = run(&RolePrivileges, &fx);
    fires(&f, "source-role-cannot-read-all", Severity::Warning, "reader");
    assert!(f[0].remediation.as_deref().unwrap().contains("GRANT pg_read_all_data TO reader"));
    fx.source.roles[1].member_of.push("pg_read_all_data".into());
    assert_absent(&run(&RolePrivileges, &fx), "source-role-cannot-read-all");
    // The role does not exist before 14.
    fx.source.version_num = 130010;
    fires(&run(&RolePrivileges, &fx), "source-role-cannot-read-all", Severity::Warning, "reader");
}

#[test]
fn lock_table() {
    let mut fx = Fixture::new();
    fx.target.settings.extend([setting("max_locks_per_transaction", "64"), setting("max_connections", "50")]);
    fx.source_database_mut("app").tables = (0..1601).map(|i| table("public", &format!("t{i}"))).collect();
    let f = run(&LockTableCapacity, &fx);
    fires(&f, "lock-table-too-small", Severity::Warning, "max_locks_per_transaction");
    assert!(f[0].remediation.as_deref().unwrap().contains("= 128"), "{f:?}");
    fx.source_database_mut("app").tables.truncate(1600);
    assert_absent(&run(&LockTableCapacity, &fx), "lock-table-too-small");
}

#[test]
fn sql_ascii() {
    let mut fx = Fixture::new();
    assert_absent(&run(&EncodingLocale, &fx), "sql-ascii-encoding");
    fx.source.databases[1].encoding = "SQL_ASCII".into();
    fires(&run(&EncodingLocale, &fx), "sql-ascii-encoding", Severity::Warning, "app");
}

#[test]
fn locale_missing() {
    let mut fx = Fixture::new();
    fx.target.collations = vec![collation("C", "libc", "C"), collation("en_US.utf8", "libc", "en_US.utf8")];
    fx.source.databases[1].collate = "de_DE.UTF-8".into();
    fx.source.databases[1].ctype = "de_DE.UTF-8".into();
    let f = run(&EncodingLocale, &fx);
    fires(&f, "locale-missing-on-target", Severity::Warning, "app");
    assert_eq!(f.len(), 1, "one finding when collate and ctype are the same: {f:#?}");
    // `en_US.UTF-8` is glibc's `en_US.utf8`.
    fx.source.databases[1].collate = "en_US.UTF-8".into();
    fx.source.databases[1].ctype = "C".into();
    assert_absent(&run(&EncodingLocale, &fx), "locale-missing-on-target");
    // Unknown target collations: no guess.
    fx.source.databases[1].collate = "de_DE.UTF-8".into();
    fx.target.collations.clear();
    assert_absent(&run(&EncodingLocale, &fx), "locale-missing-on-target");
}

#[test]
fn icu_unavailable() {
    let mut fx = Fixture::new();
    fx.target.collations = vec![collation("C", "libc", "C")];
    fx.source.databases[1].locale_provider = "icu".into();
    fx.source.databases[1].icu_locale = Some("und".into());
    fires(&run(&EncodingLocale, &fx), "icu-unavailable-on-target", Severity::Error, "app");
    fx.target.collations.push(collation("und-x-icu", "icu", "und"));
    assert_absent(&run(&EncodingLocale, &fx), "icu-unavailable-on-target");
}
