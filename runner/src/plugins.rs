//! Which plugins a run uses: the built-in ones embedded in the binary, plus the external
//! ones an operator lists (and pins by sha256) in a TOML file.
//!
//! ```toml
//! [[plugin]]
//! path = "rules/no-huge-dbs.wasm"   # relative to this file
//! sha256 = "…"
//! grants = ["sql"]                  # optional; read-only SQL
//! deadline_ms = 2000                # optional
//! memory_mb = 64                    # optional
//! [plugin.settings]                 # checked against the plugin's manifest at load
//! max_bytes = 1000000
//!
//! [sql]                             # optional: plugin SQL logs in as this role on both
//! user = "pgferry_plugins"          # servers (password: PGFERRY_PLUGIN_SQL_PASSWORD, else
//!                                   # ~/.pgpass), not as the migration's admin
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::connect::ConnSpec;
use crate::plugin_host::manifest::Given;
use crate::plugin_host::{
    AdapterDescription, Grants, Limits, Origin, Plugin, PluginHost, RuleDescriptor, World,
};
use crate::plugin_sql::PluginSql;
use crate::properties::Secret;

/// The built-in plugins (name, component), as plugins/builtin.txt lists them; compiled by
/// `cargo xtask build-plugins`, embedded by build.rs.
pub const BUILTIN: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// Bytes of settings (names and values) one plugin may be given.
const SETTINGS_BYTES: usize = 64 << 10;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    plugin: Vec<PluginEntry>,
    #[serde(default)]
    sql: Option<SqlLogin>,
}

/// The login plugin SQL uses instead of the migration's admin.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlLogin {
    user: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    path: PathBuf,
    sha256: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    memory_mb: Option<usize>,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
}

pub struct RulePlugin {
    pub plugin: Arc<Plugin>,
    pub rules: Vec<RuleDescriptor>,
}

pub struct AdapterPlugin {
    pub plugin: Arc<Plugin>,
    pub description: AdapterDescription,
}

/// The loaded plugins of one run.
pub struct Registry {
    pub host: PluginHost,
    pub rules: Vec<RulePlugin>,
    pub adapters: Vec<AdapterPlugin>,
    /// `[sql] user` of the configuration: the role plugin SQL logs in as.
    sql_user: Option<String>,
}

/// The compile cache: `PGFERRY_CACHE_DIR`, else the user's cache directory.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGFERRY_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    use etcetera::BaseStrategy;
    Some(etcetera::choose_base_strategy().ok()?.cache_dir().join("pgferry").join("components"))
}

/// `--plugins FILE`, else `PGFERRY_PLUGINS`, else `<config dir>/pgferry/plugins.toml` if present.
pub fn default_config_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGFERRY_PLUGINS") {
        return Some(PathBuf::from(file));
    }
    use etcetera::BaseStrategy;
    let file = etcetera::choose_base_strategy().ok()?.config_dir().join("pgferry").join("plugins.toml");
    file.exists().then_some(file)
}

impl Registry {
    /// Loads the built-in plugins, those of `config` (if any) and the unpinned `dev` files
    /// (`--plugin-dev`, each announced loudly on stderr). A broken external plugin, or one
    /// whose configuration does not fit its manifest, stops the load with an error naming
    /// it and its file.
    pub async fn load(config: Option<&Path>, dev: &[PathBuf], cache_dir: Option<PathBuf>) -> Result<Registry> {
        let host = PluginHost::new(cache_dir)?;
        let mut plugins = Vec::new();
        let mut sql_user = None;
        for (name, bytes) in BUILTIN {
            let plugin = host
                .load_checked(name, Origin::BuiltIn, bytes, Grants::default(), Vec::new(), Limits::default(), &Given::BuiltIn)
                .await
                .with_context(|| "a built-in plugin failed to load; this build of pgferry is broken")?;
            plugins.push(plugin);
        }
        if let Some(config) = config {
            let (external, login) = load_config(&host, config).await?;
            plugins.extend(external);
            sql_user = login.map(|l| l.user);
        }
        for file in dev {
            plugins.push(load_dev(&host, file).await?);
        }
        // Ids and codes are each plugin's own, told apart by the plugin's name.
        for (i, plugin) in plugins.iter().enumerate() {
            if let Some(other) = plugins[..i].iter().find(|o| o.name == plugin.name) {
                bail!(
                    "two plugins are named `{}` ({} and {}); reports tell plugins apart by name: give one another `name` in the plugin configuration",
                    plugin.name,
                    other.origin,
                    plugin.origin
                );
            }
        }
        let mut registry = Registry { host, rules: Vec::new(), adapters: Vec::new(), sql_user };
        for plugin in plugins {
            let plugin = Arc::new(plugin);
            match plugin.shape.world {
                World::ValidationRule => {
                    let rules = registry.host.describe_rules(&plugin).await?;
                    registry.rules.push(RulePlugin { plugin, rules });
                }
                World::SourceAdapter => {
                    let description = registry.host.describe_adapter(&plugin).await?;
                    for id in &description.info.ids {
                        if let Some(other) = registry.adapter_for(id) {
                            bail!("plugin `{}` declares source type {id:?}, which plugin `{}` already declares; remove one of them", plugin.name, other.plugin.name);
                        }
                    }
                    registry.adapters.push(AdapterPlugin { plugin, description });
                }
            }
        }
        Ok(registry)
    }

    /// The server settings the inventory reads beyond those it always carries: what every
    /// loaded plugin's manifest declares (`inventory-settings`), sorted, without repeats.
    pub fn inventory_settings(&self) -> Vec<String> {
        let rules = self.rules.iter().map(|r| &r.plugin);
        let adapters = self.adapters.iter().map(|a| &a.plugin);
        let mut names: Vec<String> = rules
            .chain(adapters)
            .filter_map(|p| p.manifest.as_ref())
            .flat_map(|m| m.inventory_settings.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The adapter declaring `source_type` (ids compare case-insensitively).
    pub fn adapter_for(&self, source_type: &str) -> Option<&AdapterPlugin> {
        self.adapters
            .iter()
            .find(|a| a.description.info.ids.iter().any(|id| id.eq_ignore_ascii_case(source_type)))
    }

    /// SQL for plugins granted it, on the migration's servers: as the configured plugin
    /// login when there is one (its password from PGFERRY_PLUGIN_SQL_PASSWORD, else
    /// `~/.pgpass`; never the admin's), else as the admin.
    pub fn plugin_sql(&self, source: &ConnSpec, target: &ConnSpec) -> PluginSql {
        let login = |admin: &ConnSpec| match &self.sql_user {
            None => admin.clone(),
            // Without the variable, `~/.pgpass` is read for this user at connect time.
            Some(user) => ConnSpec {
                user: user.clone(),
                password: std::env::var("PGFERRY_PLUGIN_SQL_PASSWORD").ok().map(Secret::new),
                ..admin.clone()
            },
        };
        PluginSql::new(login(source), login(target))
    }

    pub fn require_adapter(&self, source_type: &str) -> Result<&AdapterPlugin> {
        self.adapter_for(source_type).with_context(|| {
            let known: Vec<String> = self.adapters.iter().flat_map(|a| a.description.info.ids.clone()).collect();
            format!("unknown sourceType {source_type:?}; known source types: {} (a source-adapter plugin can add more)", known.join(", "))
        })
    }
}

/// A plugin file given with `--plugin-dev`: loaded without a pin, grants or settings, and
/// said so on stderr every time, so that it is never mistaken for a pinned one.
async fn load_dev(host: &PluginHost, file: &Path) -> Result<Plugin> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read plugin file {} (given with --plugin-dev)", file.display()))?;
    let name = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    eprintln!(
        "WARNING: DEVELOPMENT PLUGIN `{name}` loaded from {} without a sha256 pin (--plugin-dev); its findings decide this run. Pin it in a plugins.toml before production use.",
        file.display()
    );
    tracing::warn!(plugin = name.as_str(), "development plugin loaded unpinned from {}", file.display());
    Ok(host.load_checked(&name, Origin::Dev(file.to_path_buf()), &bytes, Grants::default(), Vec::new(), Limits::default(), &Given::Dev).await?)
}

async fn load_config(host: &PluginHost, path: &Path) -> Result<(Vec<Plugin>, Option<SqlLogin>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plugin configuration {}", path.display()))?;
    let config: ConfigFile = toml::from_str(&text).with_context(|| format!("plugin configuration {} is not valid", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    if config.sql.as_ref().is_some_and(|l| l.user.trim().is_empty()) {
        bail!("plugin configuration {}: `[sql] user` is empty; name the role plugin SQL logs in as, or remove the section", path.display());
    }
    let mut plugins = Vec::new();
    for entry in config.plugin {
        let file = base.join(&entry.path);
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read plugin file {} (listed in {})", file.display(), path.display()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(entry.sha256.trim()) {
            bail!(
                "plugin file {} does not match its pin in {}: sha256 is {actual}, the pin says {}; if you trust the new file, update the pin",
                file.display(),
                path.display(),
                entry.sha256
            );
        }
        let name = entry.name.clone().unwrap_or_else(|| file.file_stem().unwrap_or_default().to_string_lossy().into_owned());
        let mut grants = Grants::default();
        for grant in &entry.grants {
            match grant.as_str() {
                "sql" => grants.sql = true,
                other => bail!("plugin `{name}` in {}: unknown grant {other:?} (known: \"sql\")", path.display()),
            }
        }
        let defaults = Limits::default();
        let limits = Limits {
            deadline: entry.deadline_ms.map(Duration::from_millis).unwrap_or(defaults.deadline),
            memory_bytes: entry.memory_mb.map(|mb| mb << 20).unwrap_or(defaults.memory_bytes),
        };
        let mut settings = Vec::new();
        for (key, value) in entry.settings {
            // Scalars as text; the manifest's type decides what they must look like.
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => value.to_string(),
                other => bail!(
                    "plugin `{name}`: setting `{key}` in {} is {} {}; a setting is text, a boolean or a number",
                    path.display(),
                    if other.is_array() { "an" } else { "a" },
                    other.type_str()
                ),
            };
            settings.push((key, value));
        }
        // Settings cross into the plugin on every call that asks for them.
        let size: usize = settings.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > SETTINGS_BYTES {
            bail!("plugin `{name}` in {}: its settings take {size} bytes, over the cap of {SETTINGS_BYTES}; pass large data another way", path.display());
        }
        let given = Given::Config(path.to_path_buf());
        plugins.push(host.load_checked(&name, Origin::File(file.clone()), &bytes, grants, settings, limits, &given).await?);
    }
    Ok((plugins, config.sql))
}
