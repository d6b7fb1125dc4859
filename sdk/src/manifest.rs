//! The plugin's manifest, built in the plugin's code and completed by the export macros.

use crate::{Grant, PluginManifest, SettingSpec, SettingType};

/// What a plugin declares about itself; see the crate documentation. Fields left empty
/// (`id`, `version`, `description`) are filled from the crate's Cargo.toml.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub description: String,
    pub settings: Vec<SettingSpec>,
    pub grants: Vec<Grant>,
    pub inventory_settings: Vec<String>,
}

impl Manifest {
    pub fn new(description: &str) -> Self {
        Manifest { description: description.into(), ..Manifest::default() }
    }

    /// Overrides the crate name as the plugin's id.
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }

    /// Overrides the crate version as the plugin's version.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Declares a setting; the runner refuses any other, checks the value against its type
    /// and fills in its default.
    pub fn setting(mut self, spec: SettingSpec) -> Self {
        self.settings.push(spec);
        self
    }

    /// Declares a grant the plugin cannot work without (`Grant::Sql`).
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Server settings the plugin reads from the inventory besides those it always carries;
    /// `name` (read even when it is only a placeholder) or `prefix*`.
    pub fn reads_settings(mut self, names: &[&str]) -> Self {
        self.inventory_settings.extend(names.iter().map(|n| n.to_string()));
        self
    }
}

#[doc(hidden)]
pub fn finish(m: Manifest, name: &str, version: &str, description: &str) -> PluginManifest {
    let or = |value: String, default: &str| if value.is_empty() { default.to_string() } else { value };
    PluginManifest {
        id: or(m.id, name),
        version: or(m.version, version),
        description: or(m.description, description),
        settings: m.settings,
        grants: m.grants,
        inventory_settings: m.inventory_settings,
    }
}

impl SettingSpec {
    fn new(name: &str, description: &str, value_type: SettingType) -> Self {
        SettingSpec { name: name.into(), description: description.into(), value_type, default: None, required: false }
    }
    /// Any text.
    pub fn text(name: &str, description: &str) -> Self {
        Self::new(name, description, SettingType::Text)
    }
    /// `true` or `false` (`on`/`off`, `yes`/`no`, `1`/`0` are accepted and given as such).
    pub fn boolean(name: &str, description: &str) -> Self {
        Self::new(name, description, SettingType::Boolean)
    }
    /// A signed 64-bit integer.
    pub fn integer(name: &str, description: &str) -> Self {
        Self::new(name, description, SettingType::Integer)
    }
    /// A finite decimal number.
    pub fn number(name: &str, description: &str) -> Self {
        Self::new(name, description, SettingType::Number)
    }
    /// The value used when the operator gives none.
    pub fn with_default(mut self, value: impl ToString) -> Self {
        self.default = Some(value.to_string());
        self
    }
    /// The operator must give a value (a required setting has no default).
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Fixture;
    use crate::*;

    #[test]
    fn empty_fields_come_from_the_crate_and_settings_keep_their_order() {
        let m = Manifest::new("")
            .setting(SettingSpec::integer("max", "the most").with_default(8))
            .setting(SettingSpec::text("ticket", "the ticket").required())
            .grant(Grant::Sql)
            .reads_settings(&["vendor.*"]);
        let p = crate::manifest::finish(m, "my-rules", "1.2.3", "Checks things");
        assert_eq!((p.id.as_str(), p.version.as_str(), p.description.as_str()), ("my-rules", "1.2.3", "Checks things"));
        assert_eq!(p.settings.iter().map(|s| (s.name.as_str(), s.default.as_deref(), s.required)).collect::<Vec<_>>(), [("max", Some("8"), false), ("ticket", None, true)]);
        assert_eq!((p.grants, p.inventory_settings), (vec![Grant::Sql], vec!["vendor.*".to_string()]));
        let p = crate::manifest::finish(Manifest::new("Mine").id("custom").version("0.0.1"), "my-rules", "1.2.3", "Checks things");
        assert_eq!((p.id.as_str(), p.version.as_str(), p.description.as_str()), ("custom", "0.0.1", "Mine"));
    }

    #[test]
    fn typed_setting_accessors_read_what_the_runner_gives() {
        let mut fx = Fixture::new();
        fx.settings = [("n", "42"), ("b", "true"), ("x", "0.5"), ("bad", "many")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cx = Context::new(fx.context(MigrationMode::Offline, None), &fx);
        assert_eq!((cx.setting_i64("n"), cx.setting_bool("b"), cx.setting_f64("x")), (Some(42), Some(true), Some(0.5)));
        assert_eq!((cx.setting_i64("bad"), cx.setting_bool("n"), cx.setting_i64("absent")), (None, None, None));
    }
}
