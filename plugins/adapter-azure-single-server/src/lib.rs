//! Source adapter for Azure Database for PostgreSQL Single Server.
//!
//! Single Server gateways route a login by its `user@servername` form, enforce SSL by
//! default, and keep their own databases and roles. The admin is a member of
//! `azure_pg_admin`, not a superuser; logical decoding is switched on by the server
//! parameter `azure.replication_support = logical` (a restart), and the admin needs
//! `ALTER ROLE … WITH REPLICATION` to use it.
//!
//! Readiness findings (codes are stable):
//! - `wal-level-not-logical` (error, Online): `azure.replication_support` is not `logical`.
//! - `replication-privilege-missing` (error, Online): the connecting role lacks REPLICATION.
//! - `admin-privilege-missing` (warning): the connecting role is not a member of
//!   `azure_pg_admin`, so the schema dump may not be able to read every object.
//!
//! A setting or role the inventory does not know yields no finding.

use pgferry_sdk::provider::*;
use pgferry_sdk::*;

const LOGICAL_SETTING: &str = "azure.replication_support";

const SINGLE_SERVER: Provider = Provider {
    ids: &["PostgreSQLSingleServer"],
    display_name: "Azure Database for PostgreSQL Single Server",
    // Single Server enforces SSL unless the user turned that off.
    ssl_modes: &[SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull],
    preferred_ssl_mode: SslMode::Require,
    // azure.replication_support decides this, not wal_level alone.
    owned_codes: &[WAL_LEVEL_NOT_LOGICAL, REPLICATION_PRIVILEGE_MISSING],
    objects: Objects {
        databases: &["azure_maintenance", "azure_sys"],
        roles: &["azure_superuser", "azure_pg_admin", "azuresu"],
        settings: &["azure.*"],
        ..Objects::NONE
    },
    logical: Logical {
        switch: Switch::Setting { name: LOGICAL_SETTING, on: &["logical"] },
        needs: "logical decoding",
        // `{server}`: see `readiness`.
        fix: "Run `az postgres server configuration set --resource-group <group> --server-name {server} \
              --name azure.replication_support --value logical` and then restart the server with \
              `az postgres server restart --resource-group <group> --name {server}` (or set \
              Replication support to Logical on the portal's Replication page, which restarts it).",
    },
    // No role grants replication on Single Server: it takes `ALTER ROLE … WITH REPLICATION`.
    replication: Replication {
        roles: &[],
        missing: "lacks the REPLICATION attribute that logical decoding needs",
        fix: "As the server admin, run `ALTER ROLE {role} WITH REPLICATION;`",
    },
    admin: Admin {
        role: AdminRole::MemberOf("azure_pg_admin"),
        fix: "Connect as the server admin login (a member of azure_pg_admin).",
    },
};

#[derive(Default)]
pub struct AzureSingleServer;

// Not a plain ProviderAdapter: the login and the remediation need the server's name.
impl SourceAdapter for AzureSingleServer {
    fn manifest(&self) -> Manifest {
        SINGLE_SERVER.manifest()
    }

    fn info(&self) -> AdapterInfo {
        SINGLE_SERVER.info()
    }

    /// `admin` at `myserver.postgres.database.azure.com` logs in as `admin@myserver`; a user
    /// that already names its server is left alone.
    fn normalize_connection(&self, mut details: ConnectionDetails) -> Result<ConnectionDetails, String> {
        if details.user.trim().is_empty() {
            return Err("no user name given: Azure Single Server needs the server admin login, as `user` or `user@servername`".into());
        }
        if details.user.contains('@') {
            return Ok(details);
        }
        let Some(server) = server_name(&details.host) else {
            return Err(format!(
                "cannot tell the Single Server name from host `{}`, so the login `{}@<servername>` cannot be built; \
                 give the user in that form (e.g. `{}@myserver`)",
                details.host, details.user, details.user
            ));
        };
        details.user = format!("{}@{server}", details.user);
        Ok(details)
    }

    fn provider_objects(&self) -> ProviderObjectNames {
        SINGLE_SERVER.provider_objects()
    }

    fn replication_roles(&self) -> Vec<String> {
        SINGLE_SERVER.replication_roles()
    }

    fn readiness(&self, cx: &Context) -> Vec<Finding> {
        let server = server_name(&cx.source().host).unwrap_or_else(|| "<server>".into());
        SINGLE_SERVER.readiness_with(cx, &[("server", &server)])
    }
}

/// The first label of the host (`myserver` of `myserver.postgres.database.azure.com`), when
/// the host is a name at all.
fn server_name(host: &str) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let label = host.split('.').next()?;
    let usable = !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    usable.then(|| label.to_ascii_lowercase())
}

export_adapter!(AzureSingleServer);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::{codes, role, set_setting, setting, Fixture};

    fn details(host: &str, user: &str) -> ConnectionDetails {
        ConnectionDetails { host: host.into(), port: 5432, user: user.into() }
    }

    /// A Single Server source as its admin `admin` sees it: member of azure_pg_admin, no
    /// REPLICATION, replication support off.
    fn single_server() -> Fixture {
        let mut fx = Fixture::new();
        fx.source.host = "myserver.postgres.database.azure.com".into();
        fx.source.roles = vec![role("azure_superuser", true), role("azure_pg_admin", false)];
        let mut admin = role("admin", false);
        admin.member_of = vec!["azure_pg_admin".into()];
        fx.source.roles.push(admin);
        fx.source.current_user = "admin".into();
        fx.source.settings.push(setting(LOGICAL_SETTING, "OFF"));
        fx
    }

    fn admin_mut(fx: &mut Fixture) -> &mut RoleInfo {
        fx.source.roles.iter_mut().find(|r| r.name == "admin").unwrap()
    }

    fn online(fx: &Fixture) -> Vec<Finding> {
        let mut ctx = fx.context(MigrationMode::Online, None);
        ctx.source_type = "PostgreSQLSingleServer".into();
        fx.readiness(&AzureSingleServer, ctx)
    }

    #[test]
    fn the_manifest_asks_for_the_provider_settings() {
        let m = __PgferryAdapter::manifest();
        assert_eq!(m.id, "adapter-azure-single-server");
        assert_eq!(m.inventory_settings, ["azure.*", "azure.replication_support"]);
    }

    #[test]
    fn info_is_consistent() {
        let info = AzureSingleServer.info();
        assert_eq!(info.ids, ["PostgreSQLSingleServer"]);
        assert_eq!(info.preferred_ssl_mode, SslMode::Require);
        assert!(info.allowed_ssl_modes.contains(&info.preferred_ssl_mode));
        assert!(!info.allowed_ssl_modes.contains(&SslMode::Disable));
        assert!(!info.allowed_ssl_modes.contains(&SslMode::Prefer));
        let objects = AzureSingleServer.provider_objects();
        assert_eq!(objects.databases, ["azure_maintenance", "azure_sys"]);
        assert_eq!(objects.roles, ["azure_superuser", "azure_pg_admin", "azuresu"]);
        assert!(AzureSingleServer.replication_roles().is_empty());
    }

    #[test]
    fn login_gets_the_server_name() {
        let n = AzureSingleServer.normalize_connection(details("myserver.postgres.database.azure.com", "admin")).unwrap();
        assert_eq!(n, details("myserver.postgres.database.azure.com", "admin@myserver"));
        // Private endpoints keep the server as the first label.
        let n = AzureSingleServer.normalize_connection(details("MyServer.privatelink.postgres.database.azure.com", "admin")).unwrap();
        assert_eq!(n.user, "admin@myserver");
    }

    #[test]
    fn login_with_server_is_unchanged() {
        let d = details("myserver.postgres.database.azure.com", "admin@otherserver");
        assert_eq!(AzureSingleServer.normalize_connection(d.clone()).unwrap(), d);
    }

    #[test]
    fn empty_user_or_ip_host_is_an_error() {
        let e = AzureSingleServer.normalize_connection(details("myserver.postgres.database.azure.com", " ")).unwrap_err();
        assert!(e.contains("no user name"), "{e}");
        let e = AzureSingleServer.normalize_connection(details("10.1.2.3", "admin")).unwrap_err();
        assert!(e.contains("10.1.2.3") && e.contains("admin@<servername>"), "{e}");
        // With the server named by the user, an IP host is fine.
        assert!(AzureSingleServer.normalize_connection(details("10.1.2.3", "admin@myserver")).is_ok());
    }

    #[test]
    fn replication_support_off_fires_online_only() {
        let mut fx = single_server();
        admin_mut(&mut fx).replication = true;
        let f = online(&fx);
        assert_eq!(codes(&f), ["wal-level-not-logical"]);
        assert_eq!(f[0].severity, Severity::Error);
        let fix = f[0].remediation.as_deref().unwrap();
        assert!(fix.contains("--server-name myserver --name azure.replication_support --value logical"), "{fix}");
        assert!(fix.contains("az postgres server restart"), "{fix}");
        assert!(fx.readiness(&AzureSingleServer, fx.context(MigrationMode::Offline, None)).is_empty());

        set_setting(&mut fx.source, LOGICAL_SETTING, "LOGICAL");
        assert!(online(&fx).is_empty());
        set_setting(&mut fx.source, LOGICAL_SETTING, "REPLICA");
        assert_eq!(codes(&online(&fx)), ["wal-level-not-logical"]);
    }

    #[test]
    fn replication_attribute() {
        let mut fx = single_server();
        set_setting(&mut fx.source, LOGICAL_SETTING, "logical");
        let f = online(&fx);
        assert_eq!(codes(&f), ["replication-privilege-missing"]);
        assert_eq!(f[0].remediation.as_deref(), Some("As the server admin, run `ALTER ROLE admin WITH REPLICATION;`"));
        admin_mut(&mut fx).replication = true;
        assert!(online(&fx).is_empty());
    }

    #[test]
    fn admin_membership_warns() {
        let mut fx = single_server();
        admin_mut(&mut fx).member_of.clear();
        let f = fx.readiness(&AzureSingleServer, fx.context(MigrationMode::Offline, None));
        assert_eq!(codes(&f), ["admin-privilege-missing"]);
        assert_eq!(f[0].severity, Severity::Warning);
    }
}
