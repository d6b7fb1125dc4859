//! What the host imports give a plugin: logging, its settings, the inventory, and
//! read-only SQL for plugins granted it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::bindings::generated::pgferry::plugin::{host, types};
use super::bindings::{DatabaseInfo, LogLevel, QueryResult, ServerInfo, Side};
use super::sandbox::StoreState;
use super::inventory::Inventory;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs plugin SQL on a server: the implementation must use a READ ONLY transaction, a
/// statement timeout and a row cap.
pub trait SqlRunner: Send + Sync {
    fn query<'a>(&'a self, side: Side, database: Option<&'a str>, sql: &'a str) -> BoxFuture<'a, Result<QueryResult, String>>;
}

/// Everything a plugin call may reach through its imports.
pub struct Services {
    pub inventory: Arc<Inventory>,
    pub sql: Option<Arc<dyn SqlRunner>>,
}

impl Services {
    /// Services for calls that need no inventory (describe, info, plugin inspection).
    pub fn none() -> Arc<Services> {
        Arc::new(Services { inventory: Arc::new(Inventory::empty()), sql: None })
    }
}

/// Longest log line a plugin may write; the rest is cut so a plugin cannot flood the logs.
const MAX_LOG_LINE: usize = 4096;

impl types::Host for StoreState {}

impl host::Host for StoreState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    async fn settings(&mut self) -> Vec<(String, String)> {
        (*self.settings).clone()
    }

    async fn server(&mut self, side: Side) -> ServerInfo {
        self.services.inventory.server(side).clone()
    }

    async fn database(&mut self, side: Side, name: String) -> Option<DatabaseInfo> {
        self.services.inventory.database(side, &name).cloned()
    }

    async fn query(&mut self, side: Side, database: Option<String>, sql: String) -> Result<QueryResult, String> {
        if !self.sql_granted {
            return Err(format!(
                "plugin `{}` is not granted `sql`; add `grants = [\"sql\"]` to its entry in the plugin configuration",
                self.plugin
            ));
        }
        let Some(runner) = self.services.sql.clone() else {
            return Err("SQL is not available in this phase (no server connection)".into());
        };
        let started = Instant::now();
        let result = runner.query(side, database.as_deref(), &sql).await;
        self.host_time += started.elapsed();
        result
    }
}
