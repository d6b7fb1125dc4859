//! An example of a platform team's own validation rule: no source database over a size
//! limit is migrated without a ticket.
//!
//! Setting `max_bytes` (plugin configuration, bytes): the limit; 2 TiB when not set.
//! Finding `max-database-size` (error): the database is bigger than the limit.
//!
//! See README.md for building it and pinning it in the runner's plugin configuration.

use pgferry_sdk::*;

/// The limit when the operator sets none: 2 TiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 40;

#[derive(Default)]
pub struct MaxDatabaseSize;

impl Rule for MaxDatabaseSize {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("max-database-size", "Source databases stay under the size limit")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let max = match cx.setting("max_bytes") {
            None => DEFAULT_MAX_BYTES,
            Some(v) => v
                .trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("setting `max_bytes` must be a number of bytes, not {v:?}"))?,
        };
        let name = cx.database_name();
        let Some(db) = cx.source().database(name) else {
            cx.log(LogLevel::Warn, &format!("database `{name}` is not in the source inventory; skipped"));
            return Ok(vec![]);
        };
        if db.size_bytes <= max {
            return Ok(vec![]);
        }
        Ok(vec![
            error(
                "max-database-size",
                format!("database `{name}` is {} ({} bytes), over the limit of {} ({max} bytes)", human(db.size_bytes), db.size_bytes, human(max)),
            )
            .on(name)
            .fix(format!(
                "Open a ticket with the platform team to approve migrating `{name}`; once it is approved, \
                 raise `max_bytes` in this plugin's settings (or leave `{name}` out of DBsToMigrate)."
            )),
        ])
    }
}

/// `2.0 TiB`, `512.0 MiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{value:.1} {}", UNITS[unit]) }
}

export_rules!(
    MaxDatabaseSize;
    manifest = Manifest::new("Source databases stay under a size limit")
        .setting(SettingSpec::integer("max_bytes", "Largest database size allowed, in bytes").with_default(DEFAULT_MAX_BYTES))
);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::Fixture;

    fn with_size(bytes: u64) -> Fixture {
        let mut fx = Fixture::new();
        fx.source.databases.iter_mut().find(|d| d.name == "app").unwrap().size_bytes = bytes;
        fx
    }

    fn check(fx: &Fixture) -> Result<Vec<Finding>, String> {
        fx.check(&MaxDatabaseSize, fx.context(MigrationMode::Offline, Some("app")))
    }

    #[test]
    fn describes_a_database_rule() {
        let d = MaxDatabaseSize.describe();
        assert_eq!(d.id, "max-database-size");
        assert_eq!(d.level, Level::Database);
    }

    #[test]
    fn default_limit_is_two_tib() {
        assert!(check(&with_size(DEFAULT_MAX_BYTES)).unwrap().is_empty());
        let f = check(&with_size(DEFAULT_MAX_BYTES + 1)).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "max-database-size");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].object.as_deref(), Some("app"));
        assert!(f[0].message.contains("2.0 TiB"), "{}", f[0].message);
        assert!(f[0].remediation.as_deref().unwrap().starts_with("Open a ticket"));
    }

    #[test]
    fn setting_overrides_the_limit() {
        let mut fx = with_size(1_000_001);
        fx.settings.push(("max_bytes".into(), "1_000_000".into()));
        assert_eq!(check(&fx).unwrap().len(), 1);
        fx.settings[0].1 = "1000001".into();
        assert!(check(&fx).unwrap().is_empty());
    }

    #[test]
    fn bad_setting_is_reported() {
        let mut fx = with_size(1);
        fx.settings.push(("max_bytes".into(), "2TB".into()));
        let e = check(&fx).unwrap_err();
        assert!(e.contains("max_bytes") && e.contains("2TB"), "{e}");
    }

    #[test]
    fn unknown_database_is_skipped() {
        let fx = Fixture::new();
        assert!(fx.check(&MaxDatabaseSize, fx.context(MigrationMode::Offline, Some("nope"))).unwrap().is_empty());
    }

    #[test]
    fn runs_through_the_export() {
        let fx = with_size(5 << 40);
        let f = __PgferryRuleSet::run("max-database-size", fx.context(MigrationMode::Online, Some("app")), &fx).unwrap();
        assert_eq!(f.len(), 1);
    }
}
