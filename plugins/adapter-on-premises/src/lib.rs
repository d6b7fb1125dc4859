//! Source adapter for self-managed PostgreSQL: nothing is the provider's, every SSL mode
//! is allowed, and readiness remediation speaks of postgresql.conf and pg_hba.conf.
//!
//! Readiness findings (codes are stable):
//! - `wal-level-not-logical` (error, Online): `wal_level` is not `logical`.
//! - `replication-privilege-missing` (error, Online): the connecting role is neither a
//!   superuser nor has REPLICATION.
//! - `admin-privilege-missing` (warning): the connecting role is not a superuser, so the
//!   schema dump may not be able to read every object.
//!
//! A setting or role the inventory does not know yields no finding: readiness reports what
//! it can see, it does not guess.

use pgferry_sdk::provider::*;
use pgferry_sdk::*;

#[derive(Default)]
pub struct OnPremises;

impl ProviderAdapter for OnPremises {
    const PROVIDER: Provider = Provider { ids: &["OnPremises"], display_name: "On-premises PostgreSQL", ..SELF_MANAGED };
}

export_adapter!(OnPremises);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{codes, role, set_setting, Fixture};

    /// A source whose runner role is the non-superuser `migrator`.
    fn with_plain_role(replication: bool) -> Fixture {
        let mut fx = Fixture::new();
        let mut r = role("migrator", false);
        r.replication = replication;
        fx.source.roles.push(r);
        fx.source.current_user = "migrator".into();
        fx
    }

    #[test]
    fn info_is_consistent() {
        let info = OnPremises.info();
        assert_eq!(info.ids, ["OnPremises"]);
        assert!(info.allowed_ssl_modes.contains(&info.preferred_ssl_mode));
        assert!(info.allowed_ssl_modes.contains(&SslMode::Disable));
        let objects = OnPremises.provider_objects();
        assert!(objects.databases.is_empty() && objects.roles.is_empty());
        assert!(OnPremises.replication_roles().is_empty());
    }

    #[test]
    fn connection_is_unchanged() {
        let d = ConnectionDetails { host: "db.internal".into(), port: 5433, user: "admin".into() };
        assert_eq!(OnPremises.normalize_connection(d.clone()).unwrap(), d);
    }

    #[test]
    fn online_wal_level_fires_only_when_not_logical() {
        let mut fx = Fixture::new();
        let online = fx.context(MigrationMode::Online, None);
        let f = fx.readiness(&OnPremises, online.clone());
        assert_eq!(codes(&f), ["wal-level-not-logical"]);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].remediation.as_deref().unwrap().contains("ALTER SYSTEM SET wal_level = logical"));

        set_setting(&mut fx.source, "wal_level", "logical");
        assert!(fx.readiness(&OnPremises, online).is_empty());

        set_setting(&mut fx.source, "wal_level", "replica");
        assert!(fx.readiness(&OnPremises, fx.context(MigrationMode::Offline, None)).is_empty());
    }

    #[test]
    fn replication_privilege() {
        let mut fx = with_plain_role(false);
        set_setting(&mut fx.source, "wal_level", "logical");
        let f = fx.readiness(&OnPremises, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), ["replication-privilege-missing", "admin-privilege-missing"]);
        let fix = f[0].remediation.as_deref().unwrap();
        assert!(fix.contains("ALTER ROLE migrator WITH REPLICATION;") && fix.contains("pg_hba.conf"));

        let mut fx = with_plain_role(true);
        set_setting(&mut fx.source, "wal_level", "logical");
        let f = fx.readiness(&OnPremises, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
    }

    #[test]
    fn admin_privilege_warns_for_non_superuser() {
        let fx = with_plain_role(false);
        let f = fx.readiness(&OnPremises, fx.context(MigrationMode::Offline, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].object.as_deref(), Some("migrator"));
    }

    #[test]
    fn unknown_inventory_yields_nothing() {
        let mut fx = Fixture::new();
        fx.source.settings.clear();
        fx.source.current_user = "ghost".into();
        assert!(fx.readiness(&OnPremises, fx.context(MigrationMode::Online, None)).is_empty());
    }
}
