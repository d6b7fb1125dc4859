//! What the runner knows of both servers, in the contract's types: the container plugins
//! read through the host imports. `crate::inventory` collects it; keeping the container
//! here makes that dependency one-way (the plugin host needs nothing of the collector).

use std::collections::BTreeMap;

use super::bindings::{DatabaseInfo, ServerInfo, Side};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    pub source: ServerInfo,
    pub target: ServerInfo,
    pub source_databases: BTreeMap<String, DatabaseInfo>,
    pub target_databases: BTreeMap<String, DatabaseInfo>,
}

impl Inventory {
    pub fn empty() -> Self {
        Inventory {
            source: empty_server(Side::Source),
            target: empty_server(Side::Target),
            source_databases: BTreeMap::new(),
            target_databases: BTreeMap::new(),
        }
    }

    pub fn server(&self, side: Side) -> &ServerInfo {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// As `pgferry inventory dump` writes it: the JSON the SDK's test `Fixture` loads
    /// (databases as lists, no plugin settings).
    pub fn to_fixture_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source,
            "target": self.target,
            "source_databases": self.source_databases.values().collect::<Vec<_>>(),
            "target_databases": self.target_databases.values().collect::<Vec<_>>(),
            "settings": [],
        })
    }

    /// Reads an inventory dump (or an SDK fixture written as JSON).
    pub fn from_fixture_json(text: &str) -> Result<Inventory, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Fixture {
            source: ServerInfo,
            target: ServerInfo,
            #[serde(default)]
            source_databases: Vec<DatabaseInfo>,
            #[serde(default)]
            target_databases: Vec<DatabaseInfo>,
        }
        let f: Fixture = serde_json::from_str(text)?;
        let by_name = |dbs: Vec<DatabaseInfo>| dbs.into_iter().map(|d| (d.name.clone(), d)).collect();
        Ok(Inventory { source: f.source, target: f.target, source_databases: by_name(f.source_databases), target_databases: by_name(f.target_databases) })
    }

    pub fn database(&self, side: Side, name: &str) -> Option<&DatabaseInfo> {
        match side {
            Side::Source => self.source_databases.get(name),
            Side::Target => self.target_databases.get(name),
        }
    }
}

fn empty_server(side: Side) -> ServerInfo {
    ServerInfo {
        side,
        host: String::new(),
        port: 0,
        version_num: 0,
        version: String::new(),
        current_user: String::new(),
        settings: vec![],
        roles: vec![],
        databases: vec![],
        available_extensions: vec![],
        collations: vec![],
        replication_slots_used: 0,
        wal_senders_used: 0,
        prepared_xacts: 0,
        oldest_xact_age_seconds: 0,
    }
}

