//! What a rule or adapter sees while it runs: the check context and the host's services,
//! through the component's imports or, in native tests, a fixture.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

use crate::{CheckContext, DatabaseInfo, LogLevel, QueryResult, ServerInfo, Side};

/// The services the runner offers a plugin.
pub trait Host {
    fn log(&self, level: LogLevel, message: &str);
    fn settings(&self) -> Vec<(String, String)>;
    fn server(&self, side: Side) -> ServerInfo;
    fn database(&self, side: Side, name: &str) -> Option<DatabaseInfo>;
    fn query(&self, side: Side, database: Option<&str>, sql: &str) -> Result<QueryResult, String>;
}

/// The host reached through the component's imports.
pub struct WasmHost;

impl Host for WasmHost {
    fn log(&self, level: LogLevel, message: &str) {
        crate::wit::pgferry::plugin::host::log(level, message)
    }
    fn settings(&self) -> Vec<(String, String)> {
        crate::wit::pgferry::plugin::host::settings()
    }
    fn server(&self, side: Side) -> ServerInfo {
        crate::wit::pgferry::plugin::host::server(side)
    }
    fn database(&self, side: Side, name: &str) -> Option<DatabaseInfo> {
        crate::wit::pgferry::plugin::host::database(side, name)
    }
    fn query(&self, side: Side, database: Option<&str>, sql: &str) -> Result<QueryResult, String> {
        crate::wit::pgferry::plugin::host::query(side, database, sql)
    }
}

/// One check's view of the migration. Inventory parts are fetched from the host once and
/// cached for the rest of the call.
pub struct Context<'h> {
    pub check: CheckContext,
    host: &'h dyn Host,
    source: OnceCell<ServerInfo>,
    target: OnceCell<ServerInfo>,
    databases: RefCell<HashMap<(bool, String), Option<DatabaseInfo>>>,
}

impl<'h> Context<'h> {
    pub fn new(check: CheckContext, host: &'h dyn Host) -> Self {
        Context {
            check,
            host,
            source: OnceCell::new(),
            target: OnceCell::new(),
            databases: RefCell::new(HashMap::new()),
        }
    }

    pub fn source(&self) -> &ServerInfo {
        self.source.get_or_init(|| self.host.server(Side::Source))
    }

    pub fn target(&self) -> &ServerInfo {
        self.target.get_or_init(|| self.host.server(Side::Target))
    }

    /// A database's inventory on one side (`None` when it does not exist there).
    pub fn database_on(&self, side: Side, name: &str) -> Option<DatabaseInfo> {
        let key = (side == Side::Source, name.to_string());
        self.databases
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| self.host.database(side, name))
            .clone()
    }

    /// The source inventory of the database a database-level rule is checking.
    pub fn database(&self) -> Option<DatabaseInfo> {
        let name = self.check.database.clone()?;
        self.database_on(Side::Source, &name)
    }

    /// The database name a database-level rule is checking (empty for instance rules).
    pub fn database_name(&self) -> &str {
        self.check.database.as_deref().unwrap_or("")
    }

    pub fn is_online(&self) -> bool {
        self.check.mode == crate::MigrationMode::Online
    }

    /// One of this plugin's settings from the runner's configuration (or its default), as
    /// its manifest declares it.
    pub fn setting(&self, key: &str) -> Option<String> {
        self.host.settings().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A setting declared `integer` (the runner checked its value).
    pub fn setting_i64(&self, key: &str) -> Option<i64> {
        self.setting(key)?.trim().parse().ok()
    }

    /// A setting declared `number`.
    pub fn setting_f64(&self, key: &str) -> Option<f64> {
        self.setting(key)?.trim().parse().ok()
    }

    /// A setting declared `boolean` (the runner gives `true` or `false`).
    pub fn setting_bool(&self, key: &str) -> Option<bool> {
        match self.setting(key)?.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// Read-only SQL; works only when the operator granted this plugin `sql`.
    pub fn query(&self, side: Side, database: Option<&str>, sql: &str) -> Result<QueryResult, String> {
        self.host.query(side, database, sql)
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, message)
    }
}
