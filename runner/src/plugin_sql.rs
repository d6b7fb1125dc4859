//! Read-only SQL for plugins granted `sql`: one statement, in a READ ONLY transaction that is
//! always rolled back, under a statement timeout, with a row cap.

use std::collections::HashMap;

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::connect::{pg_error, ConnSpec};
use crate::plugin_host::{BoxFuture, QueryResult, Side, SqlRunner};

pub const ROW_CAP: usize = 1000;
pub const STATEMENT_TIMEOUT_MS: u32 = 5000;

pub struct PluginSql {
    source: ConnSpec,
    target: ConnSpec,
    clients: Mutex<HashMap<(bool, String), Client>>,
}

impl PluginSql {
    pub fn new(source: ConnSpec, target: ConnSpec) -> Self {
        PluginSql { source, target, clients: Mutex::new(HashMap::new()) }
    }

    async fn run(&self, side: Side, database: Option<&str>, sql: &str) -> Result<QueryResult, String> {
        let spec = if side == Side::Source { &self.source } else { &self.target };
        let db = database.unwrap_or(&spec.dbname).to_string();
        let mut clients = self.clients.lock().await;
        let key = (side == Side::Source, db.clone());
        if !clients.contains_key(&key) {
            let (client, _) = spec.connect(&db).await.map_err(|e| format!("{e:#}"))?;
            clients.insert(key.clone(), client);
        }
        let client = &clients[&key];
        // The extended protocol refuses several statements in one string, so the text cannot
        // close the read-only transaction and go on.
        client.prepare(sql).await.map_err(|e| format!("cannot run the query: {}", pg_error(&e)))?;
        client
            .batch_execute(&format!("begin transaction read only; set local statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            .await
            .map_err(|e| pg_error(&e))?;
        let result = collect(client, sql).await;
        let _ = client.batch_execute("rollback").await;
        result
    }
}

async fn collect(client: &Client, sql: &str) -> Result<QueryResult, String> {
    let stream = client.simple_query_raw(sql).await.map_err(|e| pg_error(&e))?;
    futures_util::pin_mut!(stream);
    let mut out = QueryResult { columns: vec![], rows: vec![], truncated: false };
    while let Some(message) = stream.next().await {
        match message.map_err(|e| pg_error(&e))? {
            SimpleQueryMessage::RowDescription(cols) => out.columns = cols.iter().map(|c| c.name().to_string()).collect(),
            SimpleQueryMessage::Row(row) => {
                if out.rows.len() == ROW_CAP {
                    out.truncated = true;
                    break;
                }
                out.rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    Ok(out)
}

impl SqlRunner for PluginSql {
    fn query<'a>(&'a self, side: Side, database: Option<&'a str>, sql: &'a str) -> BoxFuture<'a, Result<QueryResult, String>> {
        Box::pin(self.run(side, database, sql))
    }
}
