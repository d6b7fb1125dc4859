//! The plugin host: the one place where WebAssembly components are compiled, sandboxed and
//! called. Everything source-specific and every validation rule comes through here.

mod bindings;
mod cache;
mod inventory;
pub mod contract;
pub mod manifest;
mod sandbox;
mod services;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, Store};

pub use bindings::*;
use bindings::{v0_1, v0_2};
pub use contract::{ComponentShape, Hosted, Version, World, CONTRACT_VERSION};
pub use inventory::Inventory;
pub use sandbox::Limits;
pub use services::{BoxFuture, Services, SqlRunner};

use sandbox::{CallSetup, StoreState};

/// Where a plugin came from.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "path")]
pub enum Origin {
    BuiltIn,
    File(PathBuf),
    /// `--plugin-dev PATH`: not pinned.
    Dev(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built in"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Dev(path) => write!(f, "{} (--plugin-dev)", path.display()),
        }
    }
}

/// What the operator allows a plugin beyond the inventory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Grants {
    pub sql: bool,
}

/// A failed plugin call or load. The message always names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {kind}")]
pub struct PluginError {
    pub plugin: String,
    pub kind: PluginErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginErrorKind {
    #[error("{0}")]
    Shape(#[from] contract::ShapeError),
    #[error("cannot be compiled: {0}")]
    Compile(String),
    #[error("cannot be instantiated (it needs imports this runner does not give): {0}")]
    Link(String),
    #[error("`{function}` exceeded its deadline of {deadline:?} (wall-clock, host calls and SQL included) and was stopped; raise `deadline_ms` in its configuration if it is legitimately slow")]
    Deadline { function: &'static str, deadline: Duration },
    #[error("`{function}` tried to grow its memory (all its memories and tables together) to {requested} bytes, over its cap of {cap} bytes, and was stopped; raise `memory_mb` in its configuration if it legitimately needs more")]
    Memory { function: &'static str, requested: usize, cap: usize },
    #[error("`{function}` returned a malformed value: {message}")]
    Malformed { function: &'static str, message: String },
    #[error("`{function}` trapped: {message}")]
    Trap { function: &'static str, message: String },
    #[error("`{function}` failed: {message}")]
    Reported { function: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Manifest(#[from] manifest::ManifestError),
}

/// A compiled plugin, ready to be instantiated once per call.
pub struct Plugin {
    pub name: String,
    pub origin: Origin,
    pub sha256: String,
    pub shape: ComponentShape,
    /// What the plugin declares about itself (contract 0.2.0 on; `None` for 0.1.0, whose
    /// plugins declare nothing and get their settings unchecked, as 0.1 runners gave them).
    pub manifest: Option<PluginManifest>,
    pub grants: Grants,
    pub settings: Arc<Vec<(String, String)>>,
    pub limits: Limits,
    pre: InstancePre<StoreState>,
}

/// Compiles components and runs calls into them under the sandbox limits.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: cache::CompileCache,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    /// `cache_dir`: where compiled components are kept between runs (`None`: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Every hosted contract version at once: a component picks its own by its imports.
        v0_1::pgferry::plugin::host::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        v0_1::pgferry::plugin::types::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        v0_2::pgferry::plugin::host::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        v0_2::pgferry::plugin::manifest::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
        // 0.2.0's `types` is 0.1.0's, reused through `with`; its instance holds types only.
        linker.instance("pgferry:plugin/types@0.2.0")?;

        // One ticker per host drives every store's deadline (epoch interruption).
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new().name("pgferry-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(sandbox::EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        }
        let cache = cache::CompileCache::new(cache_dir, &engine);
        Ok(PluginHost { engine, linker, cache, ticker_stop })
    }

    /// Loads a plugin as a run uses it: [`load`](Self::load), then its manifest read and the
    /// operator's `settings` and `grants` checked against it (`given` says where they were
    /// given, for the messages). The plugin then sees its settings with their defaults
    /// filled in.
    #[allow(clippy::too_many_arguments)]
    pub async fn load_checked(
        &self,
        name: &str,
        origin: Origin,
        bytes: &[u8],
        grants: Grants,
        settings: Vec<(String, String)>,
        limits: Limits,
        given: &manifest::Given,
    ) -> Result<Plugin, PluginError> {
        let mut plugin = self.load(name, origin, bytes, grants, Vec::new(), limits)?;
        let err = |kind| PluginError { plugin: name.to_string(), kind };
        plugin.manifest = self.read_manifest(&plugin).await?;
        let resolved = match &plugin.manifest {
            Some(m) => manifest::resolve(m, &settings, &plugin.grants, given).map_err(|e| err(e.into()))?,
            None => settings,
        };
        plugin.settings = Arc::new(resolved);
        Ok(plugin)
    }

    /// Checks the component's contract, compiles it (or loads it from the cache) and links
    /// it. Its settings are passed as given, unchecked: runs use [`load_checked`](Self::load_checked).
    pub fn load(
        &self,
        name: &str,
        origin: Origin,
        bytes: &[u8],
        grants: Grants,
        settings: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Plugin, PluginError> {
        let err = |kind| PluginError { plugin: name.to_string(), kind };
        let shape = contract::inspect(bytes).map_err(|e| err(e.into()))?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component = self
            .cache
            .get_or_compile(&self.engine, &sha256, bytes)
            .map_err(|e| err(PluginErrorKind::Compile(format!("{e:#}"))))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| err(PluginErrorKind::Link(format!("{e:#}"))))?;
        Ok(Plugin {
            name: name.to_string(),
            origin,
            sha256,
            shape,
            manifest: None,
            grants,
            settings: Arc::new(settings),
            limits,
            pre,
        })
    }

    fn store(&self, plugin: &Plugin, services: Arc<Services>) -> Store<StoreState> {
        sandbox::new_store(
            &self.engine,
            CallSetup {
                plugin: plugin.name.as_str().into(),
                services,
                settings: plugin.settings.clone(),
                sql_granted: plugin.grants.sql,
                limits: plugin.limits,
            },
        )
    }

    pub async fn describe_rules(&self, plugin: &Plugin) -> Result<Vec<RuleDescriptor>, PluginError> {
        let mut store = self.store(plugin, Services::none());
        let result = async {
            Ok(match plugin.shape.hosted {
                Hosted::V0_1 => {
                    let instance = v0_1::ValidationRulePre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_rules().call_describe(&mut store).await?.into_iter().map(Into::into).collect()
                }
                Hosted::V0_2 => {
                    let instance = v0_2::ValidationRulePre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_rules().call_describe(&mut store).await?
                }
            })
        }
        .await;
        let rules: Vec<RuleDescriptor> = classify(plugin, &store, "describe", result)?;
        for rule in &rules {
            if rule.id.is_empty() || !rule.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                return Err(PluginError {
                    plugin: plugin.name.clone(),
                    kind: PluginErrorKind::Invalid(format!("declares a rule with an unusable id {:?} (use letters, digits, `-`, `_`, `.`)", rule.id)),
                });
            }
        }
        Ok(rules)
    }

    pub async fn check_rule(
        &self,
        plugin: &Plugin,
        services: Arc<Services>,
        rule_id: &str,
        ctx: &CheckContext,
    ) -> Result<Vec<Finding>, PluginError> {
        let mut store = self.store(plugin, services);
        let result = async {
            match plugin.shape.hosted {
                Hosted::V0_1 => {
                    let instance = v0_1::ValidationRulePre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_rules().call_check(&mut store, rule_id, ctx).await
                }
                Hosted::V0_2 => {
                    let instance = v0_2::ValidationRulePre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_rules().call_check(&mut store, rule_id, ctx).await
                }
            }
        }
        .await;
        classify(plugin, &store, "check", result)?.map_err(|message| PluginError {
            plugin: plugin.name.clone(),
            kind: PluginErrorKind::Reported { function: "check", message },
        })
    }

    /// Calls the adapter's exports once and returns what it declares.
    pub async fn describe_adapter(&self, plugin: &Plugin) -> Result<AdapterDescription, PluginError> {
        let mut store = self.store(plugin, Services::none());
        let result = async {
            Ok(match plugin.shape.hosted {
                Hosted::V0_1 => {
                    let instance = v0_1::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    let iface = instance.pgferry_plugin_adapter();
                    let info = iface.call_info(&mut store).await?.into();
                    let provider_objects = iface.call_provider_objects(&mut store).await?.into();
                    let replication_roles = iface.call_replication_roles(&mut store).await?;
                    (info, provider_objects, replication_roles)
                }
                Hosted::V0_2 => {
                    let instance = v0_2::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    let iface = instance.pgferry_plugin_adapter();
                    let info = iface.call_info(&mut store).await?;
                    let provider_objects = iface.call_provider_objects(&mut store).await?;
                    let replication_roles = iface.call_replication_roles(&mut store).await?;
                    (info, provider_objects, replication_roles)
                }
            })
        }
        .await;
        let (info, provider_objects, replication_roles) = classify(plugin, &store, "info", result)?;
        if info.ids.is_empty() || info.ids.iter().any(|id| id.trim().is_empty()) {
            return Err(PluginError {
                plugin: plugin.name.clone(),
                kind: PluginErrorKind::Invalid("declares no usable source type id".into()),
            });
        }
        if !info.allowed_ssl_modes.contains(&info.preferred_ssl_mode) {
            return Err(PluginError {
                plugin: plugin.name.clone(),
                kind: PluginErrorKind::Invalid(format!(
                    "prefers SSL mode {:?}, which is not among the modes it allows",
                    info.preferred_ssl_mode
                )),
            });
        }
        Ok(AdapterDescription { info, provider_objects, replication_roles })
    }

    pub async fn normalize_connection(
        &self,
        plugin: &Plugin,
        details: &ConnectionDetails,
    ) -> Result<ConnectionDetails, PluginError> {
        let mut store = self.store(plugin, Services::none());
        let result = async {
            Ok(match plugin.shape.hosted {
                Hosted::V0_1 => {
                    let instance = v0_1::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_adapter().call_normalize_connection(&mut store, &details.into()).await?.map(Into::into)
                }
                Hosted::V0_2 => {
                    let instance = v0_2::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_adapter().call_normalize_connection(&mut store, details).await?
                }
            })
        }
        .await;
        classify(plugin, &store, "normalize-connection", result)?.map_err(|message| PluginError {
            plugin: plugin.name.clone(),
            kind: PluginErrorKind::Reported { function: "normalize-connection", message },
        })
    }

    pub async fn readiness(
        &self,
        plugin: &Plugin,
        services: Arc<Services>,
        ctx: &CheckContext,
    ) -> Result<Vec<Finding>, PluginError> {
        let mut store = self.store(plugin, services);
        let result = async {
            match plugin.shape.hosted {
                Hosted::V0_1 => {
                    let instance = v0_1::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_adapter().call_readiness(&mut store, ctx).await
                }
                Hosted::V0_2 => {
                    let instance = v0_2::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_adapter().call_readiness(&mut store, ctx).await
                }
            }
        }
        .await;
        classify(plugin, &store, "readiness", result)
    }

    /// The plugin's manifest (`None` for a contract 0.1.0 component, which has none),
    /// checked for sense: a usable id, settings whose defaults fit their types.
    pub async fn read_manifest(&self, plugin: &Plugin) -> Result<Option<PluginManifest>, PluginError> {
        if plugin.shape.hosted == Hosted::V0_1 {
            return Ok(None);
        }
        let mut store = self.store(plugin, Services::none());
        let result = async {
            match plugin.shape.world {
                World::ValidationRule => {
                    let instance = v0_2::ValidationRulePre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_rules().call_manifest(&mut store).await
                }
                World::SourceAdapter => {
                    let instance = v0_2::adapter::SourceAdapterPre::new(plugin.pre.clone())?.instantiate_async(&mut store).await?;
                    instance.pgferry_plugin_adapter().call_manifest(&mut store).await
                }
            }
        }
        .await;
        let m = classify(plugin, &store, "manifest", result)?;
        manifest::validate(&m).map_err(|e| PluginError { plugin: plugin.name.clone(), kind: e.into() })?;
        Ok(Some(m))
    }
}

/// What a source adapter declares about its source type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterDescription {
    pub info: AdapterInfo,
    pub provider_objects: ProviderObjectNames,
    pub replication_roles: Vec<String>,
}

/// Turns a wasmtime outcome into a result whose error says, in the user's terms, what the
/// plugin did wrong.
fn classify<T>(
    plugin: &Plugin,
    store: &Store<StoreState>,
    function: &'static str,
    result: wasmtime::Result<T>,
) -> Result<T, PluginError> {
    let state = store.data();
    state.log_output();
    let error = match result {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let kind = if state.deadline_hit {
        PluginErrorKind::Deadline { function, deadline: plugin.limits.deadline }
    } else if let Some(requested) = state.memory_hit() {
        PluginErrorKind::Memory { function, requested, cap: plugin.limits.memory_bytes }
    } else if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        // A Rust guest's panic message went to its stderr just before the trap.
        let said = state.stderr_tail();
        let message = if said.is_empty() { format!("{trap}") } else { format!("{trap}; it said: {said}") };
        PluginErrorKind::Trap { function, message }
    } else {
        // Lifting errors: an enum discriminant out of range, invalid UTF-8, bad pointers.
        PluginErrorKind::Malformed { function, message: format!("{error:#}") }
    };
    Err(PluginError { plugin: plugin.name.clone(), kind })
}
