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

