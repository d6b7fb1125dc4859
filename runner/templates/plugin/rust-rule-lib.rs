//! {{name}}: a pgferry validation rule.
//!
//! Rule `{{name}}` (database level): no source table whose name starts with a prefix
//! (a leftover of an import or a test) is migrated.
//! Setting `prefix` (plugin configuration): the prefix; `tmp_` when not set.
//! Finding `leftover-table` (error): the table, with what to do about it.
//!
//! Change `describe` and `check` to what your platform needs; README.md says how to test,
//! build and pin it.

use pgferry_sdk::*;

/// The prefix when the operator sets none.
pub const DEFAULT_PREFIX: &str = "tmp_";

#[derive(Default)]
pub struct {{Struct}};

impl Rule for {{Struct}} {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("{{name}}", "No leftover tables are migrated")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let prefix = cx.setting("prefix").unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if prefix.is_empty() {
            return Err("setting `prefix` is empty: give a table name prefix, e.g. \"tmp_\"".into());
        }
        let Some(db) = cx.database() else {
            cx.log(LogLevel::Warn, &format!("database `{}` is not in the source inventory; skipped", cx.database_name()));
            return Ok(vec![]);
        };
        Ok(db
            .tables
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .map(|t| {
                let name = t.qualified_name();
                error("leftover-table", format!("table `{name}` in database `{}` starts with `{prefix}`", db.name))
                    .on(&name)
                    .fix(format!("Drop `{name}` on the source if it is a leftover, or rename it; then validate again."))
            })
            .collect())
    }
}

// The manifest declares the settings the runner accepts for this plugin (an unknown or
// mistyped key in plugins.toml is refused at load, naming the plugin and the key).
export_rules!(
    {{Struct}};
    manifest = Manifest::new("No leftover tables are migrated")
        .setting(SettingSpec::text("prefix", "Tables whose name starts with this are reported").with_default(DEFAULT_PREFIX))
);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{assert_absent, assert_fires, table, Fixture};

    fn check(fx: &Fixture) -> Result<Vec<Finding>, String> {
        fx.check(&{{Struct}}, fx.context(MigrationMode::Offline, Some("app")))
    }

    fn with_tables(names: &[&str]) -> Fixture {
        let mut fx = Fixture::new();
        fx.source_database_mut("app").tables.extend(names.iter().map(|n| table("public", n)));
        fx
    }

    #[test]
    fn describes_a_database_rule() {
        let d = {{Struct}}.describe();
        assert_eq!(d.id, "{{name}}");
        assert_eq!(d.level, Level::Database);
    }

    #[test]
    fn flags_tables_with_the_prefix_only() {
        let f = check(&with_tables(&["orders", "tmp_import"])).unwrap();
        assert_eq!(f.len(), 1, "{f:#?}");
        let leftover = assert_fires(&f, "leftover-table", Severity::Error, "public.tmp_import");
        assert!(leftover.message.contains("`tmp_`"), "{}", leftover.message);
        assert!(check(&with_tables(&["orders"])).unwrap().is_empty());
    }

    #[test]
    fn the_prefix_is_a_setting() {
        let mut fx = with_tables(&["tmp_import", "old_orders"]);
        fx.settings.push(("prefix".into(), "old_".into()));
        let f = check(&fx).unwrap();
        assert_fires(&f, "leftover-table", Severity::Error, "public.old_orders");
        assert_eq!(f.len(), 1, "{f:#?}");
        fx.settings[0].1 = String::new();
        assert!(check(&fx).unwrap_err().contains("prefix"));
    }

    #[test]
    fn runs_through_the_export_as_the_runner_does() {
        let fx = with_tables(&["tmp_import"]);
        let f = __PgferryRuleSet::run("{{name}}", fx.context(MigrationMode::Online, Some("app")), &fx).unwrap();
        assert_eq!(f.len(), 1);
        assert_absent(&check(&Fixture::new()).unwrap(), "leftover-table");
    }
}
