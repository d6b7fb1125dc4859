//! A plugin's manifest (contract 0.2.0 on) and the checks made against it when the plugin
//! is loaded, before any migration starts: the operator's settings (each known, of its
//! type; every required one given; defaults filled in) and the grants it needs.

use std::path::PathBuf;

use super::bindings::{Grant, PluginManifest, SettingSpec, SettingType};
use super::Grants;

/// Where the operator's settings and grants for a plugin come from, for the messages.
#[derive(Clone, Debug)]
pub enum Given {
    /// Its `[[plugin]]` entry in this plugins.toml.
    Config(PathBuf),
    /// `--setting KEY=VALUE` of `pgferry plugin test`.
    Flag,
    /// `--plugin-dev PATH`: no settings, no grants.
    Dev,
    /// Built into the runner: no settings, no grants.
    BuiltIn,
}

impl Given {
    fn at(&self) -> String {
        match self {
            Given::Config(path) => format!(" in {}", path.display()),
            Given::Flag => " with --setting".into(),
            Given::Dev | Given::BuiltIn => String::new(),
        }
    }

    fn add_setting(&self, key: &str) -> String {
        match self {
            Given::Config(path) => format!("add `{key} = …` to its `[plugin.settings]` in {}", path.display()),
            Given::Flag => format!("add `--setting {key}=…`"),
            Given::Dev => "a --plugin-dev plugin gets no settings: pin it in a plugins.toml with its settings".into(),
            Given::BuiltIn => "this build of pgferry is broken".into(),
        }
    }

    fn add_grant(&self, grant: &str) -> String {
        match self {
            Given::Config(path) => format!("add `grants = [\"{grant}\"]` to its entry in {} if you trust it with that", path.display()),
            Given::Flag | Given::Dev => format!("pin it in a plugins.toml with `grants = [\"{grant}\"]` if you trust it with that"),
            Given::BuiltIn => "this build of pgferry is broken".into(),
        }
    }
}

/// What is wrong with a manifest or with the configuration of its plugin. Shown after
/// "plugin `NAME`: ".
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("its manifest is unusable: {0}; the plugin's author must fix it")]
    Invalid(String),
    #[error("unknown setting `{key}`{at}; {known}")]
    UnknownSetting { key: String, at: String, known: String },
    #[error("setting `{key}`{at} must be {expected}, but is {value:?}")]
    Mistyped { key: String, at: String, expected: &'static str, value: String },
    #[error("setting `{key}` is required ({kind}: {description}) but not given; {fix}")]
    Missing { key: String, kind: &'static str, description: String, fix: String },
    #[error("needs grant `{grant}`, which it is not given{at}; {fix}")]
    GrantMissing { grant: &'static str, at: String, fix: String },
}

pub fn type_name(t: SettingType) -> &'static str {
    match t {
        SettingType::Text => "text",
        SettingType::Boolean => "boolean",
        SettingType::Integer => "integer",
        SettingType::Number => "number",
    }
}

fn expected(t: SettingType) -> &'static str {
    match t {
        SettingType::Text => "text",
        SettingType::Boolean => "a boolean (true or false)",
        SettingType::Integer => "an integer",
        SettingType::Number => "a number",
    }
}

pub fn grant_name(g: Grant) -> &'static str {
    match g {
        Grant::Sql => "sql",
    }
}

/// `value` in the canonical form of type `t` (what the plugin is given), if it is one.
pub fn canonical(t: SettingType, value: &str) -> Option<String> {
    let v = value.trim();
    match t {
        SettingType::Text => Some(value.to_string()),
        SettingType::Boolean => match v.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some("true".into()),
            "false" | "off" | "no" | "0" => Some("false".into()),
            _ => None,
        },
        SettingType::Integer => v.parse::<i64>().ok().map(|n| n.to_string()),
        SettingType::Number => v.parse::<f64>().ok().filter(|n| n.is_finite()).map(|n| n.to_string()),
    }
}

fn usable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks that a manifest makes sense on its own.
pub fn validate(m: &PluginManifest) -> Result<(), ManifestError> {
    let invalid = |what: String| Err(ManifestError::Invalid(what));
    if !usable_name(&m.id) {
        return invalid(format!("id {:?} is not usable (use letters, digits, `-`, `_`, `.`)", m.id));
    }
    for (i, s) in m.settings.iter().enumerate() {
        if !usable_name(&s.name) {
            return invalid(format!("setting name {:?} is not usable (use letters, digits, `-`, `_`, `.`)", s.name));
        }
        if m.settings[..i].iter().any(|other| other.name == s.name) {
            return invalid(format!("setting `{}` is declared twice", s.name));
        }
        match (&s.default, s.required) {
            (Some(_), true) => return invalid(format!("setting `{}` is required and has a default", s.name)),
            (Some(d), false) if canonical(s.value_type, d).is_none() => {
                return invalid(format!("the default {d:?} of setting `{}` is not {}", s.name, expected(s.value_type)));
            }
            _ => {}
        }
    }
    for entry in &m.inventory_settings {
        let name = entry.strip_suffix('*').unwrap_or(entry);
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.')) || entry.is_empty() {
            return invalid(format!("inventory setting {entry:?} is not a setting name (letters, digits, `_`, `.`, optionally ending in `*`)"));
        }
    }
    Ok(())
}

/// The settings the plugin is given: each of `given` checked against the manifest, the
/// defaults of the others added, in the manifest's order. Also checks the grants it needs.
pub fn resolve(m: &PluginManifest, given: &[(String, String)], grants: &Grants, source: &Given) -> Result<Vec<(String, String)>, ManifestError> {
    for grant in &m.grants {
        let granted = match grant {
            Grant::Sql => grants.sql,
        };
        if !granted {
            let grant = grant_name(*grant);
            return Err(ManifestError::GrantMissing { grant, at: source.at(), fix: source.add_grant(grant) });
        }
    }
    if let Some((key, _)) = given.iter().find(|(k, _)| !m.settings.iter().any(|s| &s.name == k)) {
        let known = if m.settings.is_empty() {
            "it declares no settings; remove it".to_string()
        } else {
            let list: Vec<String> = m.settings.iter().map(|s| format!("`{}` ({})", s.name, type_name(s.value_type))).collect();
            format!("its settings are {}; fix the name or remove it", list.join(", "))
        };
        return Err(ManifestError::UnknownSetting { key: key.clone(), at: source.at(), known });
    }
    let mut out = Vec::new();
    for spec in &m.settings {
        match given.iter().rev().find(|(k, _)| *k == spec.name) {
            Some((_, value)) => {
                let value = canonical(spec.value_type, value).ok_or_else(|| ManifestError::Mistyped {
                    key: spec.name.clone(),
                    at: source.at(),
                    expected: expected(spec.value_type),
                    value: value.clone(),
                })?;
                out.push((spec.name.clone(), value));
            }
            None => match (&spec.default, spec.required) {
                (_, true) => return Err(missing(spec, source)),
                // Validated: a default fits its type.
                (Some(d), _) => out.push((spec.name.clone(), canonical(spec.value_type, d).unwrap_or_else(|| d.clone()))),
                (None, false) => {}
            },
        }
    }
    Ok(out)
}

fn missing(spec: &SettingSpec, source: &Given) -> ManifestError {
    ManifestError::Missing {
        key: spec.name.clone(),
        kind: type_name(spec.value_type),
        description: spec.description.clone(),
        fix: source.add_setting(&spec.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, t: SettingType, default: Option<&str>, required: bool) -> SettingSpec {
        SettingSpec { name: name.into(), description: format!("the {name}"), value_type: t, default: default.map(Into::into), required }
    }

    fn manifest() -> PluginManifest {
        PluginManifest {
            id: "no-huge-dbs".into(),
            version: "1.2.0".into(),
            description: "Databases stay small".into(),
            settings: vec![
                spec("max_bytes", SettingType::Integer, Some("1000"), false),
                spec("ticket", SettingType::Text, None, true),
                spec("strict", SettingType::Boolean, Some("off"), false),
                spec("ratio", SettingType::Number, None, false),
            ],
            grants: vec![],
            inventory_settings: vec!["vendor.logical_decoding".into(), "vendor.*".into()],
        }
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn config() -> Given {
        Given::Config("/etc/pgferry/plugins.toml".into())
    }

    #[test]
    fn defaults_are_filled_in_and_values_made_canonical() {
        validate(&manifest()).unwrap();
        let out = resolve(&manifest(), &given(&[("ticket", "T-1"), ("max_bytes", " 42 ")]), &Grants::default(), &config()).unwrap();
        assert_eq!(out, given(&[("max_bytes", "42"), ("ticket", "T-1"), ("strict", "false")]));
        let out = resolve(&manifest(), &given(&[("ticket", "x"), ("strict", "YES"), ("ratio", "0.5")]), &Grants::default(), &Given::Flag).unwrap();
        assert_eq!(out, given(&[("max_bytes", "1000"), ("ticket", "x"), ("strict", "true"), ("ratio", "0.5")]));
    }

    #[test]
    fn an_unknown_key_names_itself_and_the_known_ones() {
        let err = resolve(&manifest(), &given(&[("ticket", "x"), ("max_byte", "1")]), &Grants::default(), &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown setting `max_byte` in /etc/pgferry/plugins.toml; its settings are `max_bytes` (integer), `ticket` (text), \
             `strict` (boolean), `ratio` (number); fix the name or remove it"
        );
    }

    #[test]
    fn a_mistyped_value_says_what_was_expected() {
        let err = resolve(&manifest(), &given(&[("ticket", "x"), ("max_bytes", "lots")]), &Grants::default(), &Given::Flag).unwrap_err();
        assert_eq!(err.to_string(), "setting `max_bytes` with --setting must be an integer, but is \"lots\"");
        let err = resolve(&manifest(), &given(&[("ticket", "x"), ("strict", "maybe")]), &Grants::default(), &config()).unwrap_err();
        assert_eq!(err.to_string(), "setting `strict` in /etc/pgferry/plugins.toml must be a boolean (true or false), but is \"maybe\"");
        let err = resolve(&manifest(), &given(&[("ticket", "x"), ("ratio", "inf")]), &Grants::default(), &config()).unwrap_err();
        assert!(matches!(err, ManifestError::Mistyped { expected: "a number", .. }), "{err}");
    }

    #[test]
    fn a_missing_required_setting_says_where_to_add_it() {
        let err = resolve(&manifest(), &[], &Grants::default(), &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "setting `ticket` is required (text: the ticket) but not given; add `ticket = …` to its `[plugin.settings]` in /etc/pgferry/plugins.toml"
        );
    }

    #[test]
    fn a_needed_grant_must_be_given() {
        let m = PluginManifest { grants: vec![Grant::Sql], ..manifest() };
        let err = resolve(&m, &given(&[("ticket", "x")]), &Grants::default(), &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "needs grant `sql`, which it is not given in /etc/pgferry/plugins.toml; add `grants = [\"sql\"]` to its entry in \
             /etc/pgferry/plugins.toml if you trust it with that"
        );
        assert!(resolve(&m, &given(&[("ticket", "x")]), &Grants { sql: true }, &config()).is_ok());
    }

    #[test]
    fn a_manifest_that_contradicts_itself_is_refused() {
        let mut m = manifest();
        m.settings[0].default = Some("a thousand".into());
        assert_eq!(validate(&m).unwrap_err().to_string(), "its manifest is unusable: the default \"a thousand\" of setting `max_bytes` is not an integer; the plugin's author must fix it");
        let mut m = manifest();
        m.settings[1].default = Some("x".into());
        assert!(matches!(validate(&m), Err(ManifestError::Invalid(_))));
        let mut m = manifest();
        m.settings.push(spec("ticket", SettingType::Text, None, false));
        assert!(validate(&m).is_err());
        let m = PluginManifest { inventory_settings: vec!["x'; drop".into()], ..manifest() };
        assert!(validate(&m).is_err());
        let m = PluginManifest { id: "".into(), ..manifest() };
        assert!(validate(&m).is_err());
    }
}
