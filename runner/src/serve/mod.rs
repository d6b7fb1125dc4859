//! `pgferry serve`: the HTTP API (`/api/v1/`, shaped like the cloud service's migrations
//! resource) over the same state store the CLI uses. The server is a control plane only:
//! each migration it creates, resumes or cleans up runs in a pgferry runner process of its
//! own (the CLI's, detached), so a restart of `serve` stops no migration, and what a runner
//! does is exactly what the CLI does. Passwords sent in a body reach that process through
//! its standard input or environment and are never written anywhere.
//!
//! Every request needs the access token (`Authorization: Bearer …`, or `?token=…` for a
//! browser's first load); the store keeps only its hash (see `token`). Loopback is the
//! default; listening on another address needs TLS or an explicit `--insecure`.
//!
//! The web console (`console`) is served at `/`: static assets, without the token, that call
//! the API with it.

mod api;
mod console;
pub mod openapi;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::store::{Location, Store};

/// How `serve` was started.
pub struct Config {
    pub listen: SocketAddr,
    /// Where the runners it starts log (`logs/`).
    pub state_dir: PathBuf,
    pub store: Location,
    /// The plugin configuration the runners it starts use (`--plugins`).
    pub plugins: Option<PathBuf>,
    /// PEM certificate chain and private key, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plain HTTP on a non-loopback address, asked for explicitly.
    pub insecure: bool,
}

/// What the handlers share.
pub(crate) struct App {
    pub state_dir: PathBuf,
    /// A shared store: migrations created here are queued for `pgferry worker`s.
    pub store: Location,
    pub plugins: Option<PathBuf>,
    /// This binary: the runners are its `migration` commands.
    pub exe: PathBuf,
    /// The plugins, loaded at the first request that needs them (compiling them is seconds
    /// on a cold cache, so not at every request).
    pub registry: tokio::sync::OnceCell<crate::plugins::Registry>,
}

impl App {
    /// A store connection of its own for one request (SQLite connections are not shared
    /// between threads; opening one is cheap).
    pub fn store(&self) -> Result<Store> {
        Store::open_at(&self.store)
    }

    /// The plugins of `--plugins` (or the default configuration), as the runners load them.
    pub async fn registry(&self) -> Result<&crate::plugins::Registry> {
        self.registry
            .get_or_try_init(|| {
                let config = self.plugins.clone().or_else(crate::plugins::default_config_file);
                async move { crate::plugins::Registry::load(config.as_deref(), &[], crate::plugins::default_cache_dir()).await }
            })
            .await
    }
}

/// Binds, makes the access token on a first start, then calls `ready` with the console's URL
/// (carrying the token when it was just made) before serving until the process ends.
pub async fn run(config: Config, ready: impl FnOnce(&str, Option<&str>)) -> Result<()> {
    if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.insecure {
        bail!(
            "serve would listen on {} with plain HTTP, where the access token and the passwords sent to it could be read on the network; give --tls-cert and --tls-key, or --insecure if something else (a TLS proxy, a private network) protects it",
            config.listen
        );
    }
    let mut store = Store::open_at(&config.store)?;
    let new_token = token::ensure(&mut store)?;
    drop(store);
    let listener = std::net::TcpListener::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{bound}/");
    let app = Arc::new(App { state_dir: config.state_dir.clone(), store: config.store.clone(), plugins: config.plugins.clone(),
        exe: std::env::current_exe().context("finding this program's path")?,
        registry: tokio::sync::OnceCell::new(),
    });
    let router = api::router(app);
    match &new_token {
        Some(token) => ready(&format!("{url}?token={token}"), Some(token)),
        None => ready(&url, None),
    }
    match &config.tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("reading the TLS certificate {} and key {}", cert.display(), key.display()))?;
            axum_server::from_tcp_rustls(listener, tls)?.serve(router.into_make_service()).await?;
        }
        None => axum_server::from_tcp(listener)?.serve(router.into_make_service()).await?,
    }
    Ok(())
}
