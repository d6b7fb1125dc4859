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

use pgferry_sdk::*;

const IDS: &[&str] = &["AWS_RDS", "AWS"];
const DISPLAY_NAME: &str = "Amazon RDS for PostgreSQL";
const ADMIN_ROLE: &str = "rds_superuser";
const REPLICATION_ROLE: &str = "rds_replication";
const LOGICAL_SETTING: &str = "rds.logical_replication";
const LOGICAL_FIX: &str = "Set rds.logical_replication = 1 in the DB parameter group and reboot the instance: \
    the default parameter group cannot be changed, so attach a custom one if needed, e.g. \
    `aws rds modify-db-parameter-group --db-parameter-group-name <group> --parameters \
    \"ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot\"` then \
    `aws rds reboot-db-instance --db-instance-identifier <instance>`.";

#[derive(Default)]
pub struct AwsRds;

impl SourceAdapter for AwsRds {
    fn info(&self) -> AdapterInfo {
        AdapterInfo {
            ids: IDS.iter().map(|s| s.to_string()).collect(),
            display_name: DISPLAY_NAME.into(),
            // RDS accepts plaintext unless rds.force_ssl is on; encrypted is the sane default.
            allowed_ssl_modes: vec![SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull],
            preferred_ssl_mode: SslMode::Require,
            // rds.logical_replication and rds_replication decide these, not wal_level and REPLICATION.
            owned_codes: strings(&["wal-level-not-logical", "replication-privilege-missing"]),
        }
    }

    fn provider_objects(&self) -> ProviderObjectNames {
        ProviderObjectNames {
            databases: strings(&["rdsadmin"]),
            roles: strings(&["rdsadmin", "rds_*", "rdsrepladmin", "rdstopmgr"]),
            schemas: vec![],
            extensions: vec![],
        }
    }

    fn replication_roles(&self) -> Vec<String> {
        strings(&[REPLICATION_ROLE])
    }

    fn readiness(&self, cx: &Context) -> Vec<Finding> {
        let source = cx.source();
        let mut findings = Vec::new();
        let role = source.current_role();

        if cx.is_online() {
            if let Some(problem) = logical_replication_off(source) {
                findings.push(
                    error("wal-level-not-logical", format!("{problem}; online migration needs logical replication"))
                        .on(LOGICAL_SETTING)
                        .fix(LOGICAL_FIX),
                );
            }
            if let Some(role) = role.filter(|r| !r.superuser && !r.replication && !source.is_member_of(&r.name, REPLICATION_ROLE)) {
                findings.push(
                    error("replication-privilege-missing", format!("role `{}` is not a member of {REPLICATION_ROLE}, so it cannot create a logical replication slot", role.name))
                        .on(role.name.clone())
                        .fix(format!("As the master user, run `GRANT {REPLICATION_ROLE} TO {};`", quote_ident(&role.name))),
                );
            }
        }

        if let Some(role) = role.filter(|r| !r.superuser && !source.is_member_of(&r.name, ADMIN_ROLE)) {
            findings.push(
                warning("admin-privilege-missing", format!("role `{}` is not a member of {ADMIN_ROLE}; the schema dump may fail on objects it cannot read", role.name))
                    .on(role.name.clone())
                    .fix(format!("Connect as the master user, or run `GRANT {ADMIN_ROLE} TO {};` as the master user.", quote_ident(&role.name))),
            );
        }
        findings
    }
}

/// Says why logical replication is off, if it is. The provider's parameter decides; a server
/// that does not report it is judged by `wal_level`; a server reporting neither, not at all.
fn logical_replication_off(source: &ServerInfo) -> Option<String> {
    if let Some(value) = source.setting(LOGICAL_SETTING) {
        return (!matches!(value.to_ascii_lowercase().as_str(), "on" | "1" | "true")).then(|| format!("{LOGICAL_SETTING} is `{value}`"));
    }
    let level = source.setting("wal_level")?;
    (level != "logical").then(|| format!("wal_level is `{level}`"))
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

export_adapter!(AwsRds);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{role, setting, Fixture};

    fn codes(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.code.as_str()).collect()
    }

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

    fn set(fx: &mut Fixture, name: &str, value: &str) {
        fx.source.settings.retain(|s| s.name != name);
        fx.source.settings.push(setting(name, value));
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

        set(&mut fx, LOGICAL_SETTING, "on");
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn without_the_rds_parameter_wal_level_decides() {
        let mut fx = rds();
        fx.source.settings.retain(|s| s.name != LOGICAL_SETTING);
        assert_eq!(codes(&online(&fx)), ["wal-level-not-logical"]);
        set(&mut fx, "wal_level", "logical");
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn replication_membership() {
        let mut fx = rds();
        set(&mut fx, LOGICAL_SETTING, "on");
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
