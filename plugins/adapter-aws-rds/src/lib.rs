//! Source adapter for Amazon RDS for PostgreSQL.
//!
//! The master user is no superuser on RDS: it is a member of `rds_superuser`, and logical
//! replication rights come from membership in `rds_replication`. Logical replication is
//! switched on by the `rds.logical_replication` parameter of the instance's DB parameter
//! group, which takes a reboot.
//!
//! Readiness findings (codes are stable):
//! - `wal-level-not-logical` (error, Online): `rds.logical_replication` is not on.
//! - `replication-privilege-missing` (error, Online): the connecting role is not a member
//!   of `rds_replication` (nor a superuser or a role with REPLICATION).
//! - `admin-privilege-missing` (warning): the connecting role is not a member of
//!   `rds_superuser`, so the schema dump may not be able to read every object.
//!
//! A setting or role the inventory does not know yields no finding.

use pgferry_sdk::provider::*;
use pgferry_sdk::*;

const LOGICAL_SETTING: &str = "rds.logical_replication";
const LOGICAL_FIX: &str = "Set rds.logical_replication = 1 in the DB parameter group and reboot the instance: \
    the default parameter group cannot be changed, so attach a custom one if needed, e.g. \
    `aws rds modify-db-parameter-group --db-parameter-group-name <group> --parameters \
    \"ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot\"` then \
    `aws rds reboot-db-instance --db-instance-identifier <instance>`.";

#[derive(Default)]
pub struct AwsRds;

impl ProviderAdapter for AwsRds {
    // adapter-aws-aurora repeats this but for ids, display name and LOGICAL_FIX: keep the two in step.
    const PROVIDER: Provider = Provider {
        ids: &["AWS_RDS", "AWS"],
        display_name: "Amazon RDS for PostgreSQL",
        // RDS accepts plaintext unless rds.force_ssl is on; encrypted is the sane default.
        ssl_modes: ALL_SSL_MODES,
        preferred_ssl_mode: SslMode::Require,
        // rds.logical_replication and rds_replication decide these, not wal_level and REPLICATION.
        owned_codes: &[WAL_LEVEL_NOT_LOGICAL, REPLICATION_PRIVILEGE_MISSING],
        objects: Objects { databases: &["rdsadmin"], roles: &["rdsadmin", "rds_*", "rdsrepladmin", "rdstopmgr"], settings: &["rds.*"], ..Objects::NONE },
        logical: Logical {
            switch: Switch::Setting { name: LOGICAL_SETTING, on: &["on", "1", "true"] },
            needs: "logical replication",
            fix: LOGICAL_FIX,
        },
        replication: Replication {
            roles: &["rds_replication"],
            missing: "is not a member of rds_replication, so it cannot create a logical replication slot",
            fix: "As the master user, run `GRANT rds_replication TO {role};`",
        },
        admin: Admin {
            role: AdminRole::MemberOf("rds_superuser"),
            fix: "Connect as the master user, or run `GRANT rds_superuser TO {role};` as the master user.",
        },
    };
}

export_adapter!(AwsRds);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{codes, role, set_setting, setting, Fixture};

    /// An RDS source as the master user `master` sees it: member of rds_superuser, which is a
    /// member of rds_replication, logical replication off.
    fn rds() -> Fixture {
        let mut fx = Fixture::new();
        fx.source.roles = vec![role("rdsadmin", true), role("rds_replication", false), role("rds_superuser", false)];
        fx.source.roles[2].member_of = vec!["rds_replication".into()];
        let mut master = role("master", false);
        master.member_of = vec!["rds_superuser".into()];
        fx.source.roles.push(master);
        fx.source.current_user = "master".into();
        fx.source.settings.push(setting(LOGICAL_SETTING, "off"));
        fx
    }

    fn online(fx: &Fixture) -> Vec<Finding> {
        let mut ctx = fx.context(MigrationMode::Online, None);
        ctx.source_type = "AWS_RDS".into();
        fx.readiness(&AwsRds, ctx)
    }

    #[test]
    fn info_is_consistent() {
        let info = AwsRds.info();
        assert_eq!(info.ids, ["AWS_RDS", "AWS"]);
        assert_eq!(info.preferred_ssl_mode, SslMode::Require);
        assert!(info.allowed_ssl_modes.contains(&info.preferred_ssl_mode));
        let objects = AwsRds.provider_objects();
        assert_eq!(objects.databases, ["rdsadmin"]);
        assert!(objects.roles.contains(&"rds_*".to_string()));
        assert_eq!(AwsRds.replication_roles(), ["rds_replication"]);
    }

    #[test]
    fn connection_is_unchanged() {
        let d = ConnectionDetails { host: "db.abc.eu-west-1.rds.amazonaws.com".into(), port: 5432, user: "master".into() };
        assert_eq!(AwsRds.normalize_connection(d.clone()).unwrap(), d);
    }

    #[test]
    fn logical_replication_off_fires_online_only() {
        let mut fx = rds();
        let f = online(&fx);
        assert_eq!(codes(&f), ["wal-level-not-logical"]);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].remediation.as_deref().unwrap().contains("rds.logical_replication = 1 in the DB parameter group and reboot the instance"));
        assert!(fx.readiness(&AwsRds, fx.context(MigrationMode::Offline, None)).is_empty());

        set_setting(&mut fx.source, LOGICAL_SETTING, "on");
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn without_the_rds_parameter_wal_level_decides() {
        let mut fx = rds();
        fx.source.settings.retain(|s| s.name != LOGICAL_SETTING);
        assert_eq!(codes(&online(&fx)), ["wal-level-not-logical"]);
        set_setting(&mut fx.source, "wal_level", "logical");
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn replication_membership() {
        let mut fx = rds();
        set_setting(&mut fx.source, LOGICAL_SETTING, "on");
        fx.source.roles[2].member_of.clear(); // rds_superuser without rds_replication
        let f = online(&fx);
        assert_eq!(codes(&f), ["replication-privilege-missing"]);
        assert_eq!(f[0].remediation.as_deref(), Some("As the master user, run `GRANT rds_replication TO master;`"));

        fx.source.roles.iter_mut().find(|r| r.name == "master").unwrap().member_of.push("rds_replication".into());
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn admin_membership_warns() {
        let mut fx = rds();
        fx.source.roles.push(role("Reader", false));
        fx.source.current_user = "Reader".into();
        let f = fx.readiness(&AwsRds, fx.context(MigrationMode::Offline, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].remediation.as_deref().unwrap().contains("GRANT rds_superuser TO \"Reader\";"));

        fx.source.current_user = "master".into();
        assert!(fx.readiness(&AwsRds, fx.context(MigrationMode::Offline, None)).is_empty());
    }
}
