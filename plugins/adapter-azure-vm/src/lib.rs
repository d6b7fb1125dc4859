//! Source adapter for PostgreSQL that a user runs on an Azure virtual machine: self-managed
//! like on-premises (nothing is the provider's, every SSL mode is allowed), with remediation
//! that speaks of the VM's postgresql.conf and pg_hba.conf and of the network security group
//! (NSG) in front of it.
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
pub struct AzureVm;

impl ProviderAdapter for AzureVm {
    // Self-managed, with the VM's restart command and its network security group.
    const PROVIDER: Provider = Provider {
        ids: &["AzureVM"],
        display_name: "PostgreSQL on an Azure VM",
        logical: Logical {
            fix: "On the VM, set `wal_level = logical` in postgresql.conf (or run `ALTER SYSTEM SET wal_level = logical;`) \
                  and restart PostgreSQL (e.g. `sudo systemctl restart postgresql`); make sure max_replication_slots and \
                  max_wal_senders leave room for one more slot and sender per migrated database.",
            ..SELF_MANAGED.logical
        },
        replication: Replication {
            fix: "Run `ALTER ROLE {role} WITH REPLICATION;` as a superuser. Also make sure pg_hba.conf lets {role} \
                  connect from the runner's address to every migrated database (logical replication connections \
                  match the database column, not the `replication` keyword), then `SELECT pg_reload_conf();`, \
                  and that the VM's network security group allows inbound TCP 5432 from the runner.",
            ..SELF_MANAGED.replication
        },
        ..SELF_MANAGED
    };
}

export_adapter!(AzureVm);

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
        let info = AzureVm.info();
        assert_eq!(info.ids, ["AzureVM"]);
        assert!(info.allowed_ssl_modes.contains(&info.preferred_ssl_mode));
        assert!(info.allowed_ssl_modes.contains(&SslMode::Disable));
        let objects = AzureVm.provider_objects();
        assert!(objects.databases.is_empty() && objects.roles.is_empty());
        assert!(AzureVm.replication_roles().is_empty());
    }

    #[test]
    fn connection_is_unchanged() {
        let d = ConnectionDetails { host: "pgvm.westeurope.cloudapp.azure.com".into(), port: 5433, user: "admin".into() };
        assert_eq!(AzureVm.normalize_connection(d.clone()).unwrap(), d);
    }

    #[test]
    fn online_wal_level_fires_only_when_not_logical() {
        let mut fx = Fixture::new();
        let online = fx.context(MigrationMode::Online, None);
        let f = fx.readiness(&AzureVm, online.clone());
        assert_eq!(codes(&f), ["wal-level-not-logical"]);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].remediation.as_deref().unwrap().contains("On the VM, set `wal_level = logical` in postgresql.conf"));

        set_setting(&mut fx.source, "wal_level", "logical");
        assert!(fx.readiness(&AzureVm, online).is_empty());

        set_setting(&mut fx.source, "wal_level", "replica");
        assert!(fx.readiness(&AzureVm, fx.context(MigrationMode::Offline, None)).is_empty());
    }

    #[test]
    fn replication_privilege() {
        let mut fx = with_plain_role(false);
        set_setting(&mut fx.source, "wal_level", "logical");
        let f = fx.readiness(&AzureVm, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), ["replication-privilege-missing", "admin-privilege-missing"]);
        let fix = f[0].remediation.as_deref().unwrap();
        assert!(fix.contains("ALTER ROLE migrator WITH REPLICATION;") && fix.contains("pg_hba.conf") && fix.contains("network security group"));

        let mut fx = with_plain_role(true);
        set_setting(&mut fx.source, "wal_level", "logical");
        let f = fx.readiness(&AzureVm, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
    }

    #[test]
    fn admin_privilege_warns_for_non_superuser() {
        let fx = with_plain_role(false);
        let f = fx.readiness(&AzureVm, fx.context(MigrationMode::Offline, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].object.as_deref(), Some("migrator"));
    }

    #[test]
    fn unknown_inventory_yields_nothing() {
        let mut fx = Fixture::new();
        fx.source.settings.clear();
        fx.source.current_user = "ghost".into();
        assert!(fx.readiness(&AzureVm, fx.context(MigrationMode::Online, None)).is_empty());
    }
}
