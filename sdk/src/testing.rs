//! Running rules and adapters natively, without building wasm, against an inventory fixture.
//!
//! ```ignore
//! let mut fx = Fixture::new();
//! fx.source.settings.push(setting("wal_level", "replica"));
//! let findings = fx.check::<MyRules>("wal-level", fx.context(MigrationMode::Online, None));
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
