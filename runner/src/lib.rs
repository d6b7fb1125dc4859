//! pgferry: migrates PostgreSQL databases between servers. The runner owns connections, the
//! lifecycle, the state store and the data pipelines; everything source-specific and every
//! validation rule is a sandboxed WebAssembly plugin (see `plugin_host`).

pub mod conn_config;
pub mod connect;
pub mod detached;
pub mod inventory;
pub mod lease;
pub mod lifecycle;
pub mod migration;
pub mod own_thread;
pub mod pg_tools;
pub mod plugin_host;
pub mod plugin_sql;
pub mod plugins;
pub mod progress_view;
pub mod properties;
pub mod reconnect;
pub mod replication;
pub mod report;
pub mod scaffold;
pub mod serve;
pub mod sql_text;
pub mod store;
pub mod terminal;
pub mod work_dir;
pub mod worker;
