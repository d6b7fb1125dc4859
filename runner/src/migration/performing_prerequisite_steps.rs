//! PerformingPreRequisiteSteps: connect to both servers the way the source adapter says
//! (SSL modes, login normalisation), then collect the inventory once for the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::conn_config::ConnParams;
use crate::connect::{ConnSpec, Role, TlsState};
use crate::inventory::{self, Inventory};
use crate::plugin_host::{ConnectionDetails, Side};
use crate::plugins::{AdapterPlugin, Registry};
use crate::properties::SslMode;

/// The outcome of the step: open connection specs, the inventory, and what TLS gave.
pub struct Prepared {
    pub source: ConnSpec,
    pub target: ConnSpec,
    pub source_tls: TlsState,
    pub target_tls: TlsState,
    pub inventory: Arc<Inventory>,
}

/// The source adapter moved the source endpoint, with the user's consent
/// (`AllowAdapterEndpointChange`); validation shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointChange {
    pub plugin: String,
    pub from: String,
    pub to: String,
}

/// The source's settings as the adapter has them: the SSL mode checked against the modes it
/// allows (the one it prefers when nobody chose), the login it normalises. The adapter may
/// reshape the user (`user@server`); a host or port other than the user's would take the
/// source password elsewhere, so that is an error naming the adapter, checked before any
/// connection, unless `allow_endpoint_change`.
pub async fn apply_adapter(registry: &Registry, adapter: &AdapterPlugin, params: ConnParams, allow_endpoint_change: bool) -> Result<(ConnSpec, Option<EndpointChange>)> {
    let info = &adapter.description.info;
    if let Some(mode) = params.sslmode
        && !info.allowed_ssl_modes.contains(&mode.to_wit())
    {
        bail!(
            "sslMode {mode:?} is not allowed for source type {} ({}); allowed: {}",
            info.ids[0],
            info.display_name,
            info.allowed_ssl_modes.iter().map(|m| format!("{:?}", SslMode::from_wit(*m))).collect::<Vec<_>>().join(", ")
        );
    }
    let mut source = params.resolve(Role::Source, SslMode::from_wit(info.preferred_ssl_mode))?;
    let normalized = registry
        .host
        .normalize_connection(&adapter.plugin, &ConnectionDetails { host: source.host.clone(), port: source.port, user: source.user.clone() })
        .await?;
    let from = format!("{}:{}", source.host, source.port);
    let to = format!("{}:{}", normalized.host, normalized.port);
    let change = if !normalized.host.eq_ignore_ascii_case(&source.host) || normalized.port != source.port {
        if !allow_endpoint_change {
            bail!(
                "source adapter plugin `{}` ({}) asks to connect to {to} instead of the source server {from}; pgferry refused and connected nowhere, as that would send the source password to {to}. If the adapter is right, set \"AllowAdapterEndpointChange\": \"true\" in the properties (validation then shows the change)",
                adapter.plugin.name,
                info.display_name
            );
        }
        tracing::warn!("source adapter plugin `{}` moves the source from {from} to {to} (AllowAdapterEndpointChange)", adapter.plugin.name);
        Some(EndpointChange { plugin: adapter.plugin.name.clone(), from, to })
    } else {
        None
    };
    source.host = normalized.host;
    source.port = normalized.port;
    source.user = normalized.user;
    Ok((source, change))
}

/// `declared_settings`: the server settings the plugins read beyond the base ones
/// ([`Registry::inventory_settings`]).
pub async fn run(source: ConnSpec, target: ConnSpec, dbs_to_migrate: &[String], declared_settings: &[String]) -> Result<Prepared> {
    let (source_client, source_tls) = source.connect(&source.dbname).await?;
    let (target_client, target_tls) = target.connect(&target.dbname).await?;
    let source_info = inventory::collect_server(&source_client, Side::Source, &source.host, source.port, declared_settings)
        .await
        .with_context(|| format!("collecting the inventory of the {}", source.describe()))?;
    let target_info = inventory::collect_server(&target_client, Side::Target, &target.host, target.port, declared_settings)
        .await
        .with_context(|| format!("collecting the inventory of the {}", target.describe()))?;

    let mut source_databases = BTreeMap::new();
    let mut target_databases = BTreeMap::new();
    for name in dbs_to_migrate {
        // A missing or unconnectable database is a validation finding, not a crash.
        if source_info.databases.iter().any(|d| &d.name == name && d.allow_connections) {
            let (client, _) = source.connect(name).await?;
            source_databases.insert(name.clone(), inventory::collect_database(&client, name).await?);
        }
        if target_info.databases.iter().any(|d| &d.name == name && d.allow_connections) {
            let (client, _) = target.connect(name).await?;
            target_databases.insert(name.clone(), inventory::collect_database(&client, name).await?);
        }
    }
    Ok(Prepared {
        source,
        target,
        source_tls,
        target_tls,
        inventory: Arc::new(Inventory { source: source_info, target: target_info, source_databases, target_databases }),
    })
}
