//! Source adapters written as data.
//!
//! Most source types differ only in data: their ids and SSL modes, the provider's own
//! objects, what switches logical replication on, which roles give replication and admin
//! rights, and the words of their remediation. A [`Provider`] holds that data and implements
//! the readiness checks every such adapter makes; a unit struct becomes the adapter by
//! implementing [`ProviderAdapter`]. A self-managed server needs little more than its ids
//! (see [`SELF_MANAGED`]); a managed one says what its provider does differently:
//!
//! ```
//! use pgferry_sdk::provider::*;
//! use pgferry_sdk::*;
//!
//! #[derive(Default)]
//! pub struct CloudPg;
//!
//! impl ProviderAdapter for CloudPg {
//!     const PROVIDER: Provider = Provider {
//!         ids: &["CLOUD_PG", "CLOUD"],
//!         display_name: "Cloud PG",
//!         ssl_modes: &[SslMode::Require, SslMode::VerifyFull],
//!         preferred_ssl_mode: SslMode::Require,
//!         // The provider's parameter and role decide these, not wal_level and REPLICATION.
//!         owned_codes: &[WAL_LEVEL_NOT_LOGICAL, REPLICATION_PRIVILEGE_MISSING],
//!         objects: Objects { databases: &["cloudadmin"], roles: &["cloud_*"], ..Objects::NONE },
//!         logical: Logical {
//!             switch: Switch::Setting { name: "cloud.logical_decoding", on: &["on"] },
//!             needs: "logical replication",
//!             fix: "Set the cloud.logical_decoding flag and restart the instance.",
//!         },
//!         replication: Replication {
//!             roles: &["cloud_replication"],
//!             missing: "is not a member of cloud_replication",
//!             fix: "As the admin user, run `GRANT cloud_replication TO {role};`",
//!         },
//!         admin: Admin { role: AdminRole::MemberOf("cloud_admin"), fix: "Connect as the admin user." },
//!     };
//! }
//!
//! export_adapter!(CloudPg);
//! # fn main() {}
//! ```
//!
//! An adapter with special cases (a login to rewrite, a remediation that needs more than the
//! role) implements [`SourceAdapter`] itself and delegates the rest to its `Provider`.
//!
//! Readiness findings (the codes are stable; a setting or role the inventory does not know
//! yields no finding):
//! - [`WAL_LEVEL_NOT_LOGICAL`] (error, online migrations): logical replication is off; the
//!   object is the switch's setting.
//! - [`REPLICATION_PRIVILEGE_MISSING`] (error, online migrations): the connecting role is not
//!   a superuser, has no REPLICATION and is in none of the replication roles; the object is
//!   the role.
//! - [`ADMIN_PRIVILEGE_MISSING`] (warning): the connecting role is not a superuser (nor a
//!   member of the admin role), so the schema dump may not read every object; the object is
//!   the role.

use crate::*;

pub const WAL_LEVEL_NOT_LOGICAL: &str = "wal-level-not-logical";
pub const REPLICATION_PRIVILEGE_MISSING: &str = "replication-privilege-missing";
pub const ADMIN_PRIVILEGE_MISSING: &str = "admin-privilege-missing";

/// Every libpq sslmode, for a source that accepts them all.
pub const ALL_SSL_MODES: &[SslMode] =
    &[SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

/// A self-managed server (on-premises, on a VM): every sslmode allowed, `prefer` preferred,
/// nothing the provider's, `wal_level` switches logical replication on, the REPLICATION
/// attribute gives replication and superusers read everything; remediation speaks of
/// postgresql.conf and pg_hba.conf. Start from it and override what differs:
/// `Provider { ids: &["MyVm"], display_name: "PostgreSQL on my VM", ..SELF_MANAGED }`.
pub const SELF_MANAGED: Provider = Provider {
    ids: &[],
    display_name: "",
    ssl_modes: ALL_SSL_MODES,
    preferred_ssl_mode: SslMode::Prefer,
    owned_codes: &[],
    objects: Objects::NONE,
    logical: Logical {
        switch: Switch::WalLevel,
        needs: "`logical` for logical replication",
        fix: "Set `wal_level = logical` in postgresql.conf (or run `ALTER SYSTEM SET wal_level = logical;`) \
              and restart PostgreSQL; make sure max_replication_slots and max_wal_senders leave room for one \
              more slot and sender per migrated database.",
    },
    replication: Replication {
        roles: &[],
        missing: "may not replicate (it is neither a superuser nor has REPLICATION)",
        fix: "Run `ALTER ROLE {role} WITH REPLICATION;` as a superuser. Also make sure pg_hba.conf lets {role} \
              connect from the runner's address to every migrated database (logical replication connections \
              match the database column, not the `replication` keyword), then `SELECT pg_reload_conf();`.",
    },
    admin: Admin {
        role: AdminRole::Superuser,
        fix: "Connect as a superuser, or grant the role read access to every object of the migrated databases.",
    },
};

/// A source type described as data; see the [module](self) documentation.
///
/// Remediation texts (`fix`) are templates: `{role}` stands for the connecting role, quoted
/// as an identifier, and [`Provider::readiness_with`] can supply more placeholders. Any other
/// `{…}` is left as written.
#[derive(Clone, Debug)]
pub struct Provider {
    /// The first id is the canonical one; the others are aliases.
    pub ids: &'static [&'static str],
    pub display_name: &'static str,
    /// The sslmodes the source allows.
    pub ssl_modes: &'static [SslMode],
    pub preferred_ssl_mode: SslMode,
    /// Finding codes whose verdict belongs to this adapter rather than to the generic rules
    /// (e.g. [`WAL_LEVEL_NOT_LOGICAL`] where a provider parameter, not `wal_level`, decides).
    pub owned_codes: &'static [&'static str],
    /// The provider's own objects, never migrated.
    pub objects: Objects,
    pub logical: Logical,
    pub replication: Replication,
    pub admin: Admin,
}

/// Names of the provider's own objects; an entry ending in `*` matches by prefix.
#[derive(Clone, Copy, Debug)]
pub struct Objects {
    pub databases: &'static [&'static str],
    pub roles: &'static [&'static str],
    pub schemas: &'static [&'static str],
    pub extensions: &'static [&'static str],
    /// The provider's server settings the inventory must read (`rds.*`, or a name, read
    /// even as a placeholder). The logical-replication switch's setting is added by itself.
    pub settings: &'static [&'static str],
}

impl Objects {
    /// A self-managed server: nothing is the provider's.
    pub const NONE: Objects = Objects { databases: &[], roles: &[], schemas: &[], extensions: &[], settings: &[] };
}

/// What switches logical replication on.
#[derive(Clone, Copy, Debug)]
pub enum Switch {
    /// `wal_level = logical`.
    WalLevel,
    /// A provider parameter, on when its value is one of `on` (compared ignoring ASCII case).
    /// A server that does not report it is judged by `wal_level`.
    Setting { name: &'static str, on: &'static [&'static str] },
}

/// The `wal-level-not-logical` check.
#[derive(Clone, Copy, Debug)]
pub struct Logical {
    pub switch: Switch,
    /// Ends the message "`<setting>` is `<value>`; online migration needs …".
    pub needs: &'static str,
    pub fix: &'static str,
}

/// The `replication-privilege-missing` check. Superusers and roles with REPLICATION may
/// always replicate.
#[derive(Clone, Copy, Debug)]
pub struct Replication {
    /// Roles whose (transitive) membership also gives replication rights (e.g. RDS's
    /// `rds_replication`); empty where only the attribute does.
    pub roles: &'static [&'static str],
    /// Ends the message "role `<name>` …".
    pub missing: &'static str,
    pub fix: &'static str,
}

/// Whose rights the schema dump needs to read every object.
#[derive(Clone, Copy, Debug)]
pub enum AdminRole {
    Superuser,
    /// Membership in this role (e.g. `rds_superuser`), or a superuser.
    MemberOf(&'static str),
}

/// The `admin-privilege-missing` check.
#[derive(Clone, Copy, Debug)]
pub struct Admin {
    pub role: AdminRole,
    pub fix: &'static str,
}

impl Provider {
    /// The manifest: described by the display name, reading the provider's settings and
    /// the logical-replication switch.
    pub fn manifest(&self) -> Manifest {
        let mut reads = self.objects.settings.to_vec();
        if let Switch::Setting { name, .. } = self.logical.switch
            && !reads.contains(&name)
        {
            reads.push(name);
        }
        Manifest::new(&format!("Source adapter for {}", self.display_name)).reads_settings(&reads)
    }

    pub fn info(&self) -> AdapterInfo {
        AdapterInfo {
            ids: strings(self.ids),
            display_name: self.display_name.into(),
            allowed_ssl_modes: self.ssl_modes.to_vec(),
            preferred_ssl_mode: self.preferred_ssl_mode,
            owned_codes: strings(self.owned_codes),
        }
    }

    pub fn provider_objects(&self) -> ProviderObjectNames {
        let o = &self.objects;
        ProviderObjectNames {
            databases: strings(o.databases),
            roles: strings(o.roles),
            schemas: strings(o.schemas),
            extensions: strings(o.extensions),
        }
    }

    pub fn replication_roles(&self) -> Vec<String> {
        strings(self.replication.roles)
    }

    /// The readiness findings, in the order wal level, replication, admin.
    pub fn readiness(&self, cx: &Context) -> Vec<Finding> {
        self.readiness_with(cx, &[])
    }

    /// [`readiness`](Self::readiness) with more placeholders for the remediation templates,
    /// e.g. `&[("server", "myserver")]` for `{server}`.
    pub fn readiness_with(&self, cx: &Context, vars: &[(&str, &str)]) -> Vec<Finding> {
        let source = cx.source();
        let mut findings = Vec::new();
        let role = source.current_role();
        let fix = |template: &str, role: Option<&RoleInfo>| {
            let quoted = role.map(|r| quote_ident(&r.name));
            fill(template, |key| match key {
                "role" => quoted.clone(),
                _ => vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string()),
            })
        };

        if cx.is_online() {
            if let Some(problem) = self.logical_replication_off(source) {
                findings.push(
                    error(WAL_LEVEL_NOT_LOGICAL, format!("{problem}; online migration needs {}", self.logical.needs))
                        .on(self.logical_setting())
                        .fix(fix(self.logical.fix, role)),
                );
            }
            let replicates = |r: &RoleInfo| {
                r.superuser || r.replication || self.replication.roles.iter().any(|g| source.is_member_of(&r.name, g))
            };
            if let Some(role) = role.filter(|r| !replicates(r)) {
                findings.push(
                    error(REPLICATION_PRIVILEGE_MISSING, format!("role `{}` {}", role.name, self.replication.missing))
                        .on(role.name.clone())
                        .fix(fix(self.replication.fix, Some(role))),
                );
            }
        }

        let (is_admin, not_admin) = match self.admin.role {
            AdminRole::Superuser => (None, "a superuser".to_string()),
            AdminRole::MemberOf(admin) => (Some(admin), format!("a member of {admin}")),
        };
        let admin = |r: &RoleInfo| r.superuser || is_admin.is_some_and(|a| source.is_member_of(&r.name, a));
        if let Some(role) = role.filter(|r| !admin(r)) {
            findings.push(
                warning(
                    ADMIN_PRIVILEGE_MISSING,
                    format!("role `{}` is not {not_admin}; the schema dump may fail on objects it cannot read", role.name),
                )
                .on(role.name.clone())
                .fix(fix(self.admin.fix, Some(role))),
            );
        }
        findings
    }

    /// The setting the `wal-level-not-logical` finding names.
    fn logical_setting(&self) -> &'static str {
        match self.logical.switch {
            Switch::WalLevel => "wal_level",
            Switch::Setting { name, .. } => name,
        }
    }

    /// Says why logical replication is off, if it is. The provider's parameter decides; a
    /// server that does not report it is judged by `wal_level`; a server reporting neither,
    /// not at all.
    fn logical_replication_off(&self, source: &ServerInfo) -> Option<String> {
        if let Switch::Setting { name, on } = self.logical.switch
            && let Some(value) = source.setting(name)
        {
            return (!on.iter().any(|v| value.eq_ignore_ascii_case(v))).then(|| format!("{name} is `{value}`"));
        }
        let level = source.setting("wal_level")?;
        (level != "logical").then(|| format!("wal_level is `{level}`"))
    }
}

/// Makes a `Default` unit struct the [`SourceAdapter`] its [`Provider`] describes; export it
/// with [`export_adapter!`](crate::export_adapter).
pub trait ProviderAdapter {
    const PROVIDER: Provider;
}

impl<T: ProviderAdapter> SourceAdapter for T {
    fn manifest(&self) -> Manifest {
        T::PROVIDER.manifest()
    }
    fn info(&self) -> AdapterInfo {
        T::PROVIDER.info()
    }
    fn provider_objects(&self) -> ProviderObjectNames {
        T::PROVIDER.provider_objects()
    }
    fn replication_roles(&self) -> Vec<String> {
        T::PROVIDER.replication_roles()
    }
    fn readiness(&self, cx: &Context) -> Vec<Finding> {
        T::PROVIDER.readiness(cx)
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Replaces each `{key}` for which `value` has an answer; one pass, so a value that contains
/// braces is not expanded again.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| Some((close, value(&after[..close])?))) {
            Some((close, v)) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_fires, codes, role, set_setting, Fixture};

    const MANAGED: Provider = Provider {
        ids: &["MANAGED", "M"],
        display_name: "A managed PostgreSQL",
        ssl_modes: &[SslMode::Require, SslMode::VerifyFull],
        preferred_ssl_mode: SslMode::Require,
        owned_codes: &[WAL_LEVEL_NOT_LOGICAL],
        objects: Objects { databases: &["admindb"], roles: &["cloud_*"], ..Objects::NONE },
        logical: Logical {
            switch: Switch::Setting { name: "cloud.logical", on: &["on", "1"] },
            needs: "logical replication",
            fix: "Turn cloud.logical on for {server}.",
        },
        replication: Replication {
            roles: &["cloud_replication"],
            missing: "is not a member of cloud_replication",
            fix: "GRANT cloud_replication TO {role};",
        },
        admin: Admin { role: AdminRole::MemberOf("cloud_admin"), fix: "GRANT cloud_admin TO {role}; {unknown}" },
    };

    #[derive(Default)]
    struct SelfManaged;

    impl ProviderAdapter for SelfManaged {
        const PROVIDER: Provider = Provider {
            ids: &["Self"],
            display_name: "Self-managed",
            ssl_modes: ALL_SSL_MODES,
            preferred_ssl_mode: SslMode::Prefer,
            owned_codes: &[],
            objects: Objects::NONE,
            logical: Logical { switch: Switch::WalLevel, needs: "`logical`", fix: "Set wal_level." },
            replication: Replication { roles: &[], missing: "may not replicate", fix: "ALTER ROLE {role} WITH REPLICATION;" },
            admin: Admin { role: AdminRole::Superuser, fix: "Connect as a superuser." },
        };
    }

    /// A source whose runner role is `Migrator`, neither superuser nor REPLICATION.
    fn plain() -> Fixture {
        let mut fx = Fixture::new();
        fx.source.roles.extend([role("Migrator", false), role("cloud_replication", false), role("cloud_admin", false)]);
        fx.source.current_user = "Migrator".into();
        fx
    }

    fn online(fx: &Fixture, provider: &Provider) -> Vec<Finding> {
        let cx = Context::new(fx.context(MigrationMode::Online, None), fx);
        provider.readiness_with(&cx, &[("server", "srv")])
    }

    #[test]
    fn info_objects_and_roles_are_the_data() {
        let info = MANAGED.info();
        assert_eq!(info.ids, ["MANAGED", "M"]);
        assert_eq!(info.allowed_ssl_modes, [SslMode::Require, SslMode::VerifyFull]);
        assert_eq!(info.owned_codes, [WAL_LEVEL_NOT_LOGICAL]);
        let objects = MANAGED.provider_objects();
        assert_eq!((objects.databases, objects.roles), (vec!["admindb".to_string()], vec!["cloud_*".to_string()]));
        assert!(objects.schemas.is_empty() && objects.extensions.is_empty());
        assert_eq!(MANAGED.replication_roles(), ["cloud_replication"]);
        // Through the blanket SourceAdapter.
        assert_eq!(SelfManaged.info().ids, ["Self"]);
        assert!(SelfManaged.replication_roles().is_empty());
        let d = ConnectionDetails { host: "h".into(), port: 5432, user: "u".into() };
        assert_eq!(SelfManaged.normalize_connection(d.clone()).unwrap(), d);
    }

    #[test]
    fn self_managed_judges_wal_level_the_attribute_and_superuser() {
        let mut fx = plain();
        let f = fx.readiness(&SelfManaged, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), [WAL_LEVEL_NOT_LOGICAL, REPLICATION_PRIVILEGE_MISSING, ADMIN_PRIVILEGE_MISSING]);
        let w = assert_fires(&f, WAL_LEVEL_NOT_LOGICAL, Severity::Error, "wal_level");
        assert_eq!(w.message, "wal_level is `replica`; online migration needs `logical`");
        let r = assert_fires(&f, REPLICATION_PRIVILEGE_MISSING, Severity::Error, "Migrator");
        assert_eq!(r.message, "role `Migrator` may not replicate");
        assert_eq!(r.remediation.as_deref(), Some("ALTER ROLE \"Migrator\" WITH REPLICATION;"));
        let a = assert_fires(&f, ADMIN_PRIVILEGE_MISSING, Severity::Warning, "Migrator");
        assert_eq!(a.message, "role `Migrator` is not a superuser; the schema dump may fail on objects it cannot read");

        // Offline: only the admin check.
        let f = fx.readiness(&SelfManaged, fx.context(MigrationMode::Offline, None));
        assert_eq!(codes(&f), [ADMIN_PRIVILEGE_MISSING]);

        set_setting(&mut fx.source, "wal_level", "logical");
        fx.source.roles[1].replication = true;
        let f = fx.readiness(&SelfManaged, fx.context(MigrationMode::Online, None));
        assert_eq!(codes(&f), [ADMIN_PRIVILEGE_MISSING]);
    }

    #[test]
    fn provider_setting_decides_before_wal_level() {
        let mut fx = plain();
        fx.source.current_user = "postgres".into();
        set_setting(&mut fx.source, "cloud.logical", "OFF");
        let f = online(&fx, &MANAGED);
        let w = assert_fires(&f, WAL_LEVEL_NOT_LOGICAL, Severity::Error, "cloud.logical");
        assert_eq!(w.message, "cloud.logical is `OFF`; online migration needs logical replication");
        assert_eq!(w.remediation.as_deref(), Some("Turn cloud.logical on for srv."));
        set_setting(&mut fx.source, "cloud.logical", "On");
        assert!(online(&fx, &MANAGED).is_empty());

        // Without the parameter, wal_level decides; the object stays the parameter.
        fx.source.settings.retain(|s| s.name != "cloud.logical");
        let f = online(&fx, &MANAGED);
        assert_eq!(f[0].message, "wal_level is `replica`; online migration needs logical replication");
        assert_eq!(f[0].object.as_deref(), Some("cloud.logical"));
        set_setting(&mut fx.source, "wal_level", "logical");
        assert!(online(&fx, &MANAGED).is_empty());

        // Neither reported: no guess.
        fx.source.settings.clear();
        assert!(online(&fx, &MANAGED).is_empty());
    }

    #[test]
    fn provider_roles_give_replication_and_admin_rights() {
        let mut fx = plain();
        set_setting(&mut fx.source, "cloud.logical", "1");
        let f = online(&fx, &MANAGED);
        assert_eq!(codes(&f), [REPLICATION_PRIVILEGE_MISSING, ADMIN_PRIVILEGE_MISSING]);
        assert_eq!(f[0].message, "role `Migrator` is not a member of cloud_replication");
        assert_eq!(f[0].remediation.as_deref(), Some("GRANT cloud_replication TO \"Migrator\";"));
        assert_eq!(f[1].message, "role `Migrator` is not a member of cloud_admin; the schema dump may fail on objects it cannot read");
        // An unknown placeholder is left as written.
        assert_eq!(f[1].remediation.as_deref(), Some("GRANT cloud_admin TO \"Migrator\"; {unknown}"));

        // Transitive membership counts.
        fx.source.roles[3].member_of = vec!["cloud_replication".into()];
        fx.source.roles[1].member_of = vec!["cloud_admin".into()];
        assert!(online(&fx, &MANAGED).is_empty());

        // An unknown role yields nothing.
        fx.source.current_user = "ghost".into();
        fx.source.settings.clear();
        assert!(online(&fx, &MANAGED).is_empty());
    }

    #[test]
    fn templates_fill_once() {
        let v = |k: &str| (k == "a").then(|| "{a}".to_string());
        assert_eq!(fill("x {a} {b} {a", v), "x {a} {b} {a");
        assert_eq!(fill("{a}{a}}", v), "{a}{a}}");
        assert_eq!(fill("no braces", v), "no braces");
    }
}
