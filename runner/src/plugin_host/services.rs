//! What the host imports give a plugin: logging, its settings, the inventory, and
//! read-only SQL for plugins granted it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::bindings::{v0_1, v0_2};
use super::bindings::{DatabaseInfo, LogLevel, QueryResult, ServerInfo, Side};
use super::sandbox::StoreState;
use super::inventory::Inventory;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs plugin SQL on a server: the implementation must refuse statements that can have
/// side effects, use a READ ONLY transaction, caps on rows and bytes, and finish (or give up)
/// within `time_left`, what is left of the plugin call's deadline.
pub trait SqlRunner: Send + Sync {
    fn query<'a>(&'a self, side: Side, database: Option<&'a str>, sql: &'a str, time_left: Duration) -> BoxFuture<'a, Result<QueryResult, String>>;
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
/// Log bytes one plugin call may write; later lines are dropped (with one warning).
pub const LOG_BYTES_PER_CALL: usize = 64 << 10;

impl v0_1::pgferry::plugin::types::Host for StoreState {}
impl v0_2::pgferry::plugin::manifest::Host for StoreState {}

/// Contract 0.1.0's host: the same services, its own copies of two host types.
impl v0_1::pgferry::plugin::host::Host for StoreState {
    async fn log(&mut self, level: v0_1::pgferry::plugin::host::LogLevel, message: String) {
        v0_2::pgferry::plugin::host::Host::log(self, level.into(), message).await
    }

    async fn settings(&mut self) -> Vec<(String, String)> {
        v0_2::pgferry::plugin::host::Host::settings(self).await
    }

    async fn server(&mut self, side: Side) -> ServerInfo {
        v0_2::pgferry::plugin::host::Host::server(self, side).await
    }

    async fn database(&mut self, side: Side, name: String) -> Option<DatabaseInfo> {
        v0_2::pgferry::plugin::host::Host::database(self, side, name).await
    }

    async fn query(&mut self, side: Side, database: Option<String>, sql: String) -> Result<v0_1::pgferry::plugin::host::QueryResult, String> {
        v0_2::pgferry::plugin::host::Host::query(self, side, database, sql).await.map(Into::into)
    }
}

impl v0_2::pgferry::plugin::host::Host for StoreState {
    async fn log(&mut self, level: LogLevel, message: String) {
        if self.log_bytes >= LOG_BYTES_PER_CALL {
            return;
        }
        self.log_bytes += message.len().min(MAX_LOG_LINE);
        if self.log_bytes >= LOG_BYTES_PER_CALL {
            tracing::warn!(plugin = &*self.plugin, "plugin `{}` wrote over {LOG_BYTES_PER_CALL} bytes of log in one call; its further lines in this call are dropped", self.plugin);
            return;
        }
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
            return Err(format!("plugin `{}`: SQL is not available in this phase (no server connection)", self.plugin));
        };
        // The statement gets what is left of the call's deadline, which counts this wait too.
        let result = runner.query(side, database.as_deref(), &sql, self.time_left()).await;
        result.map_err(|e| {
            tracing::warn!(plugin = &*self.plugin, "plugin `{}`: its SQL was refused or failed: {e}", self.plugin);
            format!("plugin `{}`: {e}", self.plugin)
        })
    }
}
