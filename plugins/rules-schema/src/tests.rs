use pgferry_sdk::testing::*;
use pgferry_sdk::*;

use super::*;

const README: &str = include_str!("../README.md");

fn run(rule: &impl Rule, fx: &Fixture) -> Vec<Finding> {
    fx.check(rule, fx.context(MigrationMode::Offline, Some("app"))).unwrap()
}

/// Asserts a finding with this code, severity and object, and that README documents the code.
fn fires(findings: &[Finding], code: &str, severity: Severity, object: &str) {
    assert_documented(README, code);
    assert_fires(findings, code, severity, object);
}

fn extension(name: &str, version: &str, schema: &str) -> ExtensionInfo {
    ExtensionInfo { name: name.into(), version: version.into(), schema: schema.into() }
}

fn collation(schema: &str, name: &str, provider: &str, collate: &str) -> CollationInfo {
    CollationInfo {
        schema: schema.into(),
        name: name.into(),
        provider: provider.into(),
        collate: Some(collate.into()),
        ctype: Some(collate.into()),
        encoding: "-1".into(),
    }
}

fn make_available(fx: &mut Fixture, name: &str, version: &str) {
    fx.target.available_extensions.push(AvailableExtension {
        name: name.into(),
        default_version: Some(version.into()),
        installed_version: None,
    });
}

fn with_extension(name: &str, version: &str) -> Fixture {
    let mut fx = Fixture::new();
    fx.source_database_mut("app").extensions.push(extension(name, version, "public"));
    fx
}

#[test]
fn every_rule_is_exported_documented_and_quiet_on_a_default_fixture() {
    let mut fx = Fixture::new();
    fx.target.collations = vec![collation("pg_catalog", "C", "libc", "C")];
    let rules = __PgferryRuleSet::descriptors();
    assert_eq!(rules.len(), 8);
    for d in rules {
        assert_eq!(d.level, Level::Database, "{}", d.id);
        assert_documented(README, &d.id);
        for mode in [MigrationMode::Offline, MigrationMode::Online] {
            let findings = __PgferryRuleSet::run(&d.id, fx.context(mode, Some("app")), &fx).unwrap();
            assert!(findings.is_empty(), "{}: {findings:#?}", d.id);
        }
        // A database missing on the source is another rule's business.
        assert!(
            __PgferryRuleSet::run(&d.id, fx.context(MigrationMode::Offline, Some("gone")), &fx).unwrap().is_empty()
        );
    }
}

#[test]
fn versions_compare_numerically() {
    assert!(version_cmp("1.10", "1.9").is_gt());
    assert!(version_cmp("3.4.0", "3.4").is_eq());
    assert!(version_cmp("3.3.2", "3.4.0dev").is_lt());
}

#[test]
fn extension_unavailable() {
    let mut fx = with_extension("postgis", "3.4.2");
    fires(&run(&Extensions, &fx), "extension-unavailable-on-target", Severity::Error, "postgis");
    make_available(&mut fx, "postgis", "3.4.2");
    assert_absent(&run(&Extensions, &fx), "extension-unavailable-on-target");
}

#[test]
fn extension_version_older_on_target() {
    let mut fx = with_extension("postgis", "3.4.2");
    make_available(&mut fx, "postgis", "3.3.6");
    fires(&run(&Extensions, &fx), "extension-version-older-on-target", Severity::Warning, "postgis");
    fx.target.available_extensions.last_mut().unwrap().default_version = Some("3.5.0".into());
    assert_absent(&run(&Extensions, &fx), "extension-version-older-on-target");
}

#[test]
fn extension_allowlist() {
    let mut fx = with_extension("citext", "1.0");
    fx.source_database_mut("app").extensions.push(extension("pg_trgm", "1.0", "public"));
    assert_absent(&run(&Extensions, &fx), "extension-not-allowlisted");
    fx.target.settings.push(setting("azure.extensions", "HSTORE, pg_trgm"));
    let f = run(&Extensions, &fx);
    fires(&f, "extension-not-allowlisted", Severity::Error, "citext");
    assert_eq!(f.len(), 1, "pg_trgm is allowed: {f:#?}");
    assert!(f[0].remediation.as_deref().unwrap().contains("\"HSTORE, pg_trgm,citext\""));
}

#[test]
fn extension_needs_preload() {
    let mut fx = with_extension("pg_stat_statements", "1.0");
    for name in ["pg_cron", "pg_partman"] {
        fx.source_database_mut("app").extensions.push(extension(name, "1.0", "public"));
        make_available(&mut fx, name, "1.0");
    }
    let f = run(&Extensions, &fx);
    fires(&f, "extension-needs-preload", Severity::Warning, "pg_stat_statements");
    fires(&f, "extension-needs-preload", Severity::Error, "pg_cron");
    assert!(!f.iter().any(|f| f.object.as_deref() == Some("pg_partman")), "pg_partman's worker is optional: {f:#?}");

    fx.source.settings.retain(|s| s.name != "shared_preload_libraries");
    fx.source.settings.push(setting("shared_preload_libraries", "pg_partman_bgw"));
    fires(&run(&Extensions, &fx), "extension-needs-preload", Severity::Warning, "pg_partman");

    fx.target.settings.retain(|s| s.name != "shared_preload_libraries");
    fx.target.settings.push(setting("shared_preload_libraries", "pg_cron,pg_stat_statements, pg_partman_bgw"));
    assert_absent(&run(&Extensions, &fx), "extension-needs-preload");
}

#[test]
fn extension_in_system_schema() {
    let mut fx = Fixture::new();
    fx.source_database_mut("app").extensions.push(extension("hstore", "1.0", "pg_catalog"));
    fires(&run(&Extensions, &fx), "extension-in-system-schema", Severity::Warning, "hstore");
    fx.source_database_mut("app").extensions[1].schema = "public".into();
    // plpgsql lives in pg_catalog everywhere.
    assert_absent(&run(&Extensions, &fx), "extension-in-system-schema");

    // So do the procedural languages and adminpack: their control files put them there
    // (found on real servers: pltcl was reported). A language extension not in the list is
    // recognised by its language.
    let db = fx.source_database_mut("app");
    for name in ["pltcl", "pltclu", "plperl", "plpython3u", "adminpack", "plv8"] {
        db.extensions.push(extension(name, "1.0", "pg_catalog"));
    }
    db.languages.push(LanguageInfo { name: "plv8".into(), trusted: true, owner: "postgres".into() });
    assert_absent(&run(&Extensions, &fx), "extension-in-system-schema");
}

#[test]
fn collation_missing() {
    let mut fx = Fixture::new();
    fx.target.collations = vec![
        collation("pg_catalog", "C", "libc", "C"),
        collation("pg_catalog", "en_US.utf8", "libc", "en_US.utf8"),
        collation("pg_catalog", "und-x-icu", "icu", "und"),
    ];
    fx.source_database_mut("app").collations_used = vec![
        collation("pg_catalog", "de_DE", "libc", "de_DE.UTF-8"),
        collation("pg_catalog", "de-x-icu", "icu", "de"),
        collation("pg_catalog", "en_US", "libc", "en_US.UTF-8"),
        collation("pg_catalog", "und-x-icu", "icu", "und"),
    ];
    let f = run(&Collations, &fx);
    fires(&f, "collation-missing-on-target", Severity::Error, "pg_catalog.\"de_DE\"");
    fires(&f, "collation-missing-on-target", Severity::Error, "pg_catalog.\"de-x-icu\"");
    assert_eq!(f.len(), 2, "en_US.UTF-8 is en_US.utf8, und-x-icu exists: {f:#?}");
    fx.target.collations.clear();
    assert_absent(&run(&Collations, &fx), "collation-missing-on-target");
}

#[test]
fn user_defined_collation() {
    let mut fx = Fixture::new();
    fx.target.collations = vec![collation("pg_catalog", "und-x-icu", "icu", "und")];
    assert_absent(&run(&Collations, &fx), "user-defined-collation");
    fx.source_database_mut("app").collations_used =
        vec![collation("public", "german", "icu", "de-DE"), collation("public", "mine", "libc", "xx_XX.UTF-8")];
    let f = run(&Collations, &fx);
    fires(&f, "user-defined-collation", Severity::Info, "public.german");
    fires(&f, "user-defined-collation", Severity::Info, "public.mine");
    // An ICU collation is created from any ICU locale; a libc one needs the OS locale.
    fires(&f, "collation-missing-on-target", Severity::Error, "public.mine");
    assert_eq!(f.len(), 3, "{f:#?}");
}

#[test]
fn user_casts() {
    let mut fx = Fixture::new();
    assert_absent(&run(&UserCasts, &fx), "user-defined-cast");
    fx.source_database_mut("app").user_casts.push(CastInfo {
        source_type: "text".into(),
        target_type: "public.mood".into(),
        function: Some("public.text_to_mood(text)".into()),
    });
    fires(&run(&UserCasts, &fx), "user-defined-cast", Severity::Warning, "CAST (text AS public.mood)");
}

#[test]
fn tables_with_oids() {
    let mut fx = Fixture::new();
    fx.source_database_mut("app").tables.push(table("public", "Legacy"));
    assert_absent(&run(&TablesWithOids, &fx), "table-with-oids");
    fx.source_database_mut("app").tables[0].has_oids = true;
    let f = run(&TablesWithOids, &fx);
    fires(&f, "table-with-oids", Severity::Error, "public.\"Legacy\"");
    assert!(f[0].remediation.as_deref().unwrap().contains("ALTER TABLE public.\"Legacy\" SET WITHOUT OIDS"));
}

#[test]
fn procedural_languages() {
    let mut fx = Fixture::new();
    let lang = |name: &str, trusted| LanguageInfo { name: name.into(), trusted, owner: "postgres".into() };
    fx.source_database_mut("app").languages.extend([
        lang("plperlu", false),
        lang("plpythonu", false),
        lang("plperl", true),
    ]);
    make_available(&mut fx, "plperl", "1.0");
    let f = run(&ProceduralLanguages, &fx);
    fires(&f, "language-unavailable-on-target", Severity::Error, "plperlu");
    fires(&f, "language-unavailable-on-target", Severity::Error, "plpythonu");
    assert!(f.iter().any(|f| f.remediation.as_deref().unwrap().contains("plpython3u")));
    assert_eq!(f.len(), 2, "plperl is trusted and available: {f:#?}");

    make_available(&mut fx, "plperlu", "1.0");
    let f = run(&ProceduralLanguages, &fx);
    fires(&f, "untrusted-language", Severity::Warning, "plperlu");
    assert!(!f.iter().any(|f| f.object.as_deref() == Some("plperlu") && f.code == "language-unavailable-on-target"));
}

#[test]
fn superuser_owner_missing() {
    let mut fx = Fixture::new();
    fx.source.roles.push(role("dba", true));
    fx.source.roles.push(role("app", false));
    fx.source_database_mut("app").owners = vec![("postgres".into(), 10), ("app".into(), 5)];
    assert_absent(&run(&ObjectOwners, &fx), "superuser-owner-missing-on-target");
    fx.source_database_mut("app").owners.push(("dba".into(), 3));
    let f = run(&ObjectOwners, &fx);
    fires(&f, "superuser-owner-missing-on-target", Severity::Info, "dba");
    assert_eq!(f.len(), 1);
    assert!(f[0].message.starts_with("3 objects"));
}

#[test]
fn generated_columns() {
    let mut fx = Fixture::new();
    let mut t = table("public", "orders");
    fx.source_database_mut("app").tables.push(t.clone());
    assert_absent(&run(&GeneratedColumns, &fx), "generated-columns-recomputed");
    t.columns.push(ColumnInfo {
        name: "total".into(),
        type_name: "numeric".into(),
        generated: "s".into(),
        identity: false,
        collation: None,
    });
    fx.source_database_mut("app").tables = vec![t];
    let f = run(&GeneratedColumns, &fx);
    fires(&f, "generated-columns-recomputed", Severity::Info, "public.orders");
    assert!(f[0].message.contains("(total)"));
}

#[test]
fn tables_without_primary_key() {
    assert_eq!(TablesWithoutPrimaryKey.describe().modes, vec![MigrationMode::Offline]);
    let mut fx = Fixture::new();
    let mut parent = table("public", "events");
    parent.kind = RelationKind::PartitionedTable;
    parent.has_primary_key = false;
    fx.source_database_mut("app").tables = vec![table("public", "keyed"), parent];
    assert_absent(&run(&TablesWithoutPrimaryKey, &fx), "table-without-primary-key");
    let mut t = table("public", "log");
    t.has_primary_key = false;
    fx.source_database_mut("app").tables.push(t);
    let f = run(&TablesWithoutPrimaryKey, &fx);
    fires(&f, "table-without-primary-key", Severity::Info, "public.log");
    assert_eq!(f.len(), 1);
}
