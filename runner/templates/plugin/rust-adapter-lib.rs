//! {{name}}: a pgferry source adapter, for `"sourceType": "{{ID}}"` in the properties.
//!
//! It describes the provider as data (pgferry_sdk::provider): its SSL modes, its own
//! databases and roles (never migrated), and what switches logical replication on. The
//! readiness findings are the SDK's: `wal-level-not-logical` and
//! `replication-privilege-missing` (errors, online migrations), `admin-privilege-missing`
//! (warning).
//!
//! Change the `Provider` below to what your platform does; README.md says how to test,
//! build and pin it.

use pgferry_sdk::provider::*;
use pgferry_sdk::*;

#[derive(Default)]
pub struct {{Struct}};

impl ProviderAdapter for {{Struct}} {
    const PROVIDER: Provider = Provider {
        ids: &["{{ID}}"],
        display_name: "{{name}}",
        // A managed service: encrypted connections only.
        ssl_modes: &[SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull],
        preferred_ssl_mode: SslMode::Require,
        // The provider's own objects: refused in DBsToMigrate, left out of the migration.
        objects: Objects { databases: &["platform_admin"], roles: &["platform_*"], ..Objects::NONE },
        ..SELF_MANAGED
    };
}

export_adapter!({{Struct}});

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{assert_fires, codes, set_setting, Fixture};

    #[test]
    fn info_is_consistent() {
        let info = {{Struct}}.info();
        assert_eq!(info.ids, ["{{ID}}"]);
        assert!(info.allowed_ssl_modes.contains(&info.preferred_ssl_mode));
        assert!(!info.allowed_ssl_modes.contains(&SslMode::Disable));
        let objects = {{Struct}}.provider_objects();
        assert_eq!(objects.databases, ["platform_admin"]);
    }

    #[test]
    fn online_needs_logical_replication() {
        let mut fx = Fixture::new();
        let online = fx.context(MigrationMode::Online, None);
        let f = fx.readiness(&{{Struct}}, online.clone());
        assert_fires(&f, "wal-level-not-logical", Severity::Error, "wal_level");
        set_setting(&mut fx.source, "wal_level", "logical");
        assert!(fx.readiness(&{{Struct}}, online).is_empty());
    }

    #[test]
    fn offline_with_a_superuser_is_ready() {
        let fx = Fixture::new();
        assert_eq!(codes(&fx.readiness(&{{Struct}}, fx.context(MigrationMode::Offline, None))), Vec::<&str>::new());
    }
}
