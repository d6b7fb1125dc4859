//! Running rules and adapters natively, without building wasm, against an inventory fixture,
//! and asserting on their findings.
//!
//! ```
//! use pgferry_sdk::testing::{assert_absent, assert_fires, set_setting, Fixture};
//! use pgferry_sdk::*;
//!
//! #[derive(Default)]
//! struct WalLevel;
//!
//! impl Rule for WalLevel {
//!     fn describe(&self) -> RuleDescriptor {
//!         RuleDescriptor::instance("wal-level", "wal_level is logical").only_in(MigrationMode::Online)
//!     }
//!     fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
//!         let level = cx.source().setting("wal_level").unwrap_or("unknown");
//!         Ok(if level == "logical" {
//!             vec![]
//!         } else {
//!             vec![error("wal-level-not-logical", format!("wal_level is `{level}`")).on("wal_level").fix("…")]
//!         })
//!     }
//! }
//!
//! let mut fx = Fixture::new();
//! set_setting(&mut fx.source, "wal_level", "replica");
//! let findings = fx.check(&WalLevel, fx.context(MigrationMode::Online, None)).unwrap();
//! let f = assert_fires(&findings, "wal-level-not-logical", Severity::Error, "wal_level");
//! assert!(f.message.contains("`replica`"));
//!
//! set_setting(&mut fx.source, "wal_level", "logical");
//! assert_absent(&fx.check(&WalLevel, fx.context(MigrationMode::Online, None)).unwrap(), "wal-level-not-logical");
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::*;

/// The inventory and settings a native test runs a plugin against. It serialises to the
/// same JSON as `pgferry`'s inventory dumps, so a fixture can be captured from a real server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fixture {
    pub source: ServerInfo,
    pub target: ServerInfo,
    #[serde(default)]
    pub source_databases: Vec<DatabaseInfo>,
    #[serde(default)]
    pub target_databases: Vec<DatabaseInfo>,
    #[serde(default)]
    pub settings: Vec<(String, String)>,
    /// Canned answers for `query`, keyed by the SQL text.
    #[serde(default)]
    pub queries: HashMap<String, QueryResult>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A PostgreSQL 15 source and target with default settings, a superuser `postgres`, and
    /// one empty source database `app`.
    pub fn new() -> Self {
        let mut source = server(Side::Source, 150000);
        source.databases.push(database_summary("app"));
        Fixture {
            source,
            target: server(Side::Target, 150000),
            source_databases: vec![database("app")],
            target_databases: vec![],
            settings: vec![],
            queries: HashMap::new(),
        }
    }

    /// Loads a fixture from JSON (e.g. a captured inventory).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn source_database_mut(&mut self, name: &str) -> &mut DatabaseInfo {
        if !self.source_databases.iter().any(|d| d.name == name) {
            self.source_databases.push(database(name));
            self.source.databases.push(database_summary(name));
        }
        self.source_databases.iter_mut().find(|d| d.name == name).unwrap()
    }

    /// The check context of a migration of all source databases in `mode`; `database` is
    /// set for database-level rules.
    pub fn context(&self, mode: MigrationMode, database: Option<&str>) -> CheckContext {
        CheckContext {
            migration_name: "test".into(),
            mode,
            migration_option: MigrationOption::Validate,
            source_type: "OnPremises".into(),
            database: database.map(str::to_string),
            dbs_to_migrate: self.source_databases.iter().map(|d| d.name.clone()).collect(),
            overwrite_dbs_in_target: false,
        }
    }

    /// Runs an adapter's readiness check.
    pub fn readiness<A: SourceAdapter>(&self, adapter: &A, ctx: CheckContext) -> Vec<Finding> {
        adapter.readiness(&Context::new(ctx, self))
    }

    /// Runs one rule against this fixture.
    pub fn check<R: Rule>(&self, rule: &R, ctx: CheckContext) -> Result<Vec<Finding>, String> {
        rule.check(&Context::new(ctx, self))
    }
}

impl Host for Fixture {
    fn log(&self, _level: LogLevel, message: &str) {
        eprintln!("plugin log: {message}");
    }
    fn settings(&self) -> Vec<(String, String)> {
        self.settings.clone()
    }
    fn server(&self, side: Side) -> ServerInfo {
        match side {
            Side::Source => self.source.clone(),
            Side::Target => self.target.clone(),
        }
    }
    fn database(&self, side: Side, name: &str) -> Option<DatabaseInfo> {
        let list = match side {
            Side::Source => &self.source_databases,
            Side::Target => &self.target_databases,
        };
        list.iter().find(|d| d.name == name).cloned()
    }
    fn query(&self, _side: Side, _database: Option<&str>, sql: &str) -> Result<QueryResult, String> {
        self.queries.get(sql).cloned().ok_or_else(|| format!("the fixture has no answer for `{sql}`"))
    }
}

pub fn setting(name: &str, value: &str) -> Setting {
    Setting { name: name.into(), value: value.into(), unit: String::new() }
}

/// Sets a setting of `server`, replacing any earlier value, and returns it (unitless) so that
/// a test can give it a pg_settings unit: `set_setting(&mut fx.source, "work_mem", "4096").unit = "kB".into()`.
pub fn set_setting<'s>(server: &'s mut ServerInfo, name: &str, value: &str) -> &'s mut Setting {
    server.settings.retain(|s| s.name != name);
    server.settings.push(setting(name, value));
    server.settings.last_mut().unwrap()
}

/// The findings' codes, in order.
pub fn codes(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.code.as_str()).collect()
}

/// Asserts that `findings` has one with this code, severity and object, and a remediation
/// (every finding should say what to do), and returns the first such finding.
#[track_caller]
pub fn assert_fires<'f>(findings: &'f [Finding], code: &str, severity: Severity, object: &str) -> &'f Finding {
    findings
        .iter()
        .find(|f| f.code == code && f.severity == severity && f.object.as_deref() == Some(object) && f.remediation.is_some())
        .unwrap_or_else(|| panic!("expected {severity:?} `{code}` on `{object}` with a remediation in {findings:#?}"))
}

/// Asserts that no finding has this code.
#[track_caller]
pub fn assert_absent(findings: &[Finding], code: &str) {
    assert!(!findings.iter().any(|f| f.code == code), "unexpected `{code}` in {findings:#?}");
}

/// Asserts that a plugin's documentation (e.g. `include_str!("../README.md")`) mentions a
/// rule id or finding code, written as code: `` `code` ``.
#[track_caller]
pub fn assert_documented(doc: &str, id: &str) {
    assert!(doc.contains(&format!("`{id}`")), "the documentation does not mention `{id}`");
}

/// A server as `initdb` leaves it: superuser `postgres`, plpgsql, default settings.
pub fn server(side: Side, version_num: u32) -> ServerInfo {
    ServerInfo {
        side,
        host: "127.0.0.1".into(),
        port: 5432,
        version_num,
        version: format!("{}.{}", version_num / 10000, version_num % 100),
        current_user: "postgres".into(),
        settings: vec![
            setting("wal_level", "replica"),
            setting("max_replication_slots", "10"),
            setting("max_wal_senders", "10"),
            setting("shared_preload_libraries", ""),
            setting("server_encoding", "UTF8"),
        ],
        roles: vec![role("postgres", true)],
        databases: vec![database_summary("postgres")],
        available_extensions: ["plpgsql", "hstore", "pg_trgm", "uuid-ossp", "citext", "pg_stat_statements"]
            .iter()
            .map(|n| AvailableExtension { name: n.to_string(), default_version: Some("1.0".into()), installed_version: None })
            .collect(),
        collations: vec![],
        replication_slots_used: 0,
        wal_senders_used: 0,
        prepared_xacts: 0,
        oldest_xact_age_seconds: 0,
    }
}

pub fn role(name: &str, superuser: bool) -> RoleInfo {
    RoleInfo {
        name: name.into(),
        superuser,
        can_login: true,
        replication: superuser,
        create_role: superuser,
        create_db: superuser,
        bypass_rls: superuser,
        member_of: vec![],
    }
}

pub fn database_summary(name: &str) -> DatabaseSummary {
    DatabaseSummary {
        name: name.into(),
        owner: "postgres".into(),
        encoding: "UTF8".into(),
        collate: "C.UTF-8".into(),
        ctype: "C.UTF-8".into(),
        locale_provider: "libc".into(),
        icu_locale: None,
        size_bytes: 8 << 20,
        is_template: false,
        allow_connections: true,
    }
}

pub fn database(name: &str) -> DatabaseInfo {
    DatabaseInfo {
        name: name.into(),
        schemas: vec![SchemaInfo { name: "public".into(), owner: "pg_database_owner".into() }],
        extensions: vec![ExtensionInfo { name: "plpgsql".into(), version: "1.0".into(), schema: "pg_catalog".into() }],
        tables: vec![],
        collations_used: vec![],
        languages: vec![LanguageInfo { name: "plpgsql".into(), trusted: true, owner: "postgres".into() }],
        user_casts: vec![],
        large_object_count: 0,
        owners: vec![],
    }
}

/// A plain table with a primary key and one `id` column.
pub fn table(schema: &str, name: &str) -> TableInfo {
    TableInfo {
        schema: schema.into(),
        name: name.into(),
        owner: "postgres".into(),
        kind: RelationKind::Table,
        unlogged: false,
        has_oids: false,
        has_primary_key: true,
        replica_identity: ReplicaIdentity::Default,
        replica_identity_index: None,
        has_unique_not_null_index: true,
        partition_of: None,
        row_estimate: 0,
        size_bytes: 8192,
        columns: vec![ColumnInfo {
            name: "id".into(),
            type_name: "integer".into(),
            generated: String::new(),
            identity: false,
            collation: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings() -> Vec<Finding> {
        vec![
            warning("a", "no fix").on("x"),
            error("b", "fixed").on("y").fix("do this"),
            warning("a", "fixed").on("x").fix("do that"),
        ]
    }

    #[test]
    fn assert_fires_returns_the_match_with_a_remediation() {
        let f = findings();
        assert_eq!(codes(&f), ["a", "b", "a"]);
        assert_eq!(assert_fires(&f, "a", Severity::Warning, "x").message, "fixed");
        assert_absent(&f, "c");
        assert_documented("codes: `a`, `b`", "b");
    }

    #[test]
    #[should_panic(expected = "expected Severity::Error `a` on `x`")]
    fn assert_fires_checks_the_severity() {
        assert_fires(&findings(), "a", Severity::Error, "x");
    }

    #[test]
    #[should_panic(expected = "unexpected `b`")]
    fn assert_absent_fails_on_the_code() {
        assert_absent(&findings(), "b");
    }

    #[test]
    fn set_setting_replaces() {
        let mut s = server(Side::Source, 150000);
        set_setting(&mut s, "wal_level", "logical");
        set_setting(&mut s, "work_mem", "4").unit = "MB".into();
        assert_eq!(s.settings.iter().filter(|s| s.name == "wal_level").count(), 1);
        assert_eq!(s.setting("wal_level"), Some("logical"));
        assert_eq!(s.setting_quantity("work_mem", "kB"), Some(4 << 20));
    }
}
