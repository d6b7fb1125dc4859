//! PerformingPreRequisiteSteps: connect to both servers the way the source adapter says
//! (SSL modes, login normalisation), then collect the inventory once for the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::connect::{ConnSpec, TlsState};
use crate::inventory::{self, Inventory};
use crate::plugin_host::{ConnectionDetails, Side, SslMode as WitSslMode};
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

/// Asks the adapter to normalise the source login and checks the SSL mode against the
/// modes it allows (falling back to the one it prefers).
pub async fn apply_adapter(registry: &Registry, adapter: &AdapterPlugin, mut source: ConnSpec, asked: Option<SslMode>) -> Result<ConnSpec> {
    let info = &adapter.description.info;
    let normalized = registry
        .host
        .normalize_connection(&adapter.plugin, &ConnectionDetails { host: source.host.clone(), port: source.port, user: source.user.clone() })
        .await?;
    source.host = normalized.host;
    source.port = normalized.port;
    source.user = normalized.user;
    source.ssl_mode = match asked {
        Some(mode) => {
            if !info.allowed_ssl_modes.contains(&to_wit(mode)) {
                bail!(
                    "sslMode {mode:?} is not allowed for source type {} ({}); allowed: {}",
                    info.ids[0],
                    info.display_name,
                    info.allowed_ssl_modes.iter().map(|m| format!("{:?}", from_wit(*m))).collect::<Vec<_>>().join(", ")
                );
            }
            mode
        }
        None => from_wit(info.preferred_ssl_mode),
    };
    Ok(source)
}

pub async fn run(source: ConnSpec, target: ConnSpec, dbs_to_migrate: &[String]) -> Result<Prepared> {
    let (source_client, source_tls) = source.connect("postgres").await?;
    let (target_client, target_tls) = target.connect("postgres").await?;
    let source_info = inventory::collect_server(&source_client, Side::Source, &source.host, source.port)
        .await
        .with_context(|| format!("collecting the inventory of the {}", source.describe()))?;
    let target_info = inventory::collect_server(&target_client, Side::Target, &target.host, target.port)
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

pub fn to_wit(mode: SslMode) -> WitSslMode {
    match mode {
        SslMode::Disable => WitSslMode::Disable,
        SslMode::Prefer => WitSslMode::Prefer,
        SslMode::Require => WitSslMode::Require,
        SslMode::VerifyCA => WitSslMode::VerifyCa,
        SslMode::VerifyFull => WitSslMode::VerifyFull,
    }
}

pub fn from_wit(mode: WitSslMode) -> SslMode {
    match mode {
        WitSslMode::Disable => SslMode::Disable,
        WitSslMode::Prefer => SslMode::Prefer,
        WitSslMode::Require => SslMode::Require,
        WitSslMode::VerifyCa => SslMode::VerifyCA,
        WitSslMode::VerifyFull => SslMode::VerifyFull,
    }
}
