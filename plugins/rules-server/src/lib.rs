//! Instance-level premigration rules: server versions, the list of databases to migrate,
//! what the migration roles may do, the target's lock table, and database encodings and
//! locales. Codes and remediations are documented in README.md.

use pgferry_sdk::*;

#[cfg(test)]
mod tests;

#[derive(Default)]
pub struct ServerVersion;

impl Rule for ServerVersion {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("server-version", "Source and target PostgreSQL versions are compatible")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let (source, target) = (cx.source(), cx.target());
        let (s, t) = (source.major_name(), target.major_name());
        let mut out = vec![];
        if source.version_num < 90500 {
            out.push(
                error("source-version-too-old", format!("the source runs PostgreSQL {s}; pgferry migrates from 9.5 or newer"))
                    .on(source.address())
                    .fix("Upgrade the source in place to PostgreSQL 9.5 or newer (pg_upgrade), then migrate."),
            );
        }
        // Ranks count majors across the renumbering at 10: 9.6 → 9.5 is a downgrade.
        let gap = target.major_rank() - source.major_rank();
        if gap < 0 {
            out.push(
                error(
                    "target-version-older",
                    format!(
                        "the target runs PostgreSQL {t} and the source {s}: a dump cannot be restored into an older major version"
                    ),
                )
                .on(target.address())
                .fix(format!("Migrate to a target running PostgreSQL {s} or newer.")),
            );
        } else if gap > 1 {
            out.push(
                info("target-version-newer", format!("the target runs PostgreSQL {t}, {gap} major versions above the source ({s})"))
                    .on(target.address())
                    .fix(format!(
                        "Read the release notes of every major version after {s} for removed features and changed defaults, and test the application against PostgreSQL {t}."
                    )),
            );
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct DatabaseCount;

impl Rule for DatabaseCount {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("database-count", "The migration has databases to migrate, and not too many")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let max = match cx.setting("max_databases") {
            None => 8,
            Some(v) => {
                v.trim().parse::<usize>().map_err(|_| format!("setting max_databases = `{v}` is not a whole number"))?
            }
        };
        let dbs = &cx.check.dbs_to_migrate;
        Ok(if dbs.is_empty() {
            vec![
                error("no-databases-to-migrate", "DBsToMigrate is empty: there is nothing to migrate")
                    .on("DBsToMigrate")
                    .fix("List the databases to migrate in the DBsToMigrate property."),
            ]
        } else if dbs.len() > max {
            vec![
                warning("too-many-databases", format!("{} databases are migrated at once, more than the recommended {max}", dbs.len()))
                    .on("DBsToMigrate")
                    .fix(format!(
                        "Split DBsToMigrate into migrations of at most {max} databases each, or raise this plugin's max_databases setting."
                    )),
            ]
        } else {
            vec![]
        })
    }
}

#[derive(Default)]
pub struct SourceDatabases;

impl Rule for SourceDatabases {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance(
            "source-databases",
            "Every database to migrate exists on the source and accepts connections",
        )
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let source = cx.source();
        let mut out = vec![];
        for name in &cx.check.dbs_to_migrate {
            let q = quote_ident(name);
            match source.database(name) {
                None => {
                    let similar = source.databases.iter().find(|d| d.name.eq_ignore_ascii_case(name));
                    let hint = similar.map_or(String::new(), |d| format!(" (names are case-sensitive: did you mean `{}`?)", d.name));
                    out.push(
                        error("source-database-missing", format!("database `{name}` does not exist on the source{hint}"))
                            .on(name)
                            .fix("Correct or remove the name in DBsToMigrate."),
                    );
                }
                Some(d) if d.is_template => out.push(
                    error("source-database-is-template", format!("database `{name}` is a template database"))
                        .on(name)
                        .fix(format!(
                            "Remove it from DBsToMigrate (the target has its own templates), or make it a regular database on the source: ALTER DATABASE {q} IS_TEMPLATE false;"
                        )),
                ),
                Some(d) if !d.allow_connections => out.push(
                    error("source-database-not-connectable", format!("database `{name}` does not allow connections"))
                        .on(name)
                        .fix(format!("ALTER DATABASE {q} ALLOW_CONNECTIONS true; on the source, or remove it from DBsToMigrate.")),
                ),
                Some(_) => {}
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct TargetDatabaseExists;

impl Rule for TargetDatabaseExists {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("target-database-exists", "Databases to migrate do not already exist on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let target = cx.target();
        let user = &target.current_user;
        let superuser = target.current_role().is_some_and(|r| r.superuser);
        let mut out = vec![];
        for name in &cx.check.dbs_to_migrate {
            let Some(existing) = target.database(name) else { continue };
            let q = quote_ident(name);
            if !cx.check.overwrite_dbs_in_target {
                out.push(
                    error("target-database-exists", format!("database `{name}` already exists on the target and OverwriteDBsInTarget is false"))
                        .on(name)
                        .fix(format!("Set \"OverwriteDBsInTarget\": \"true\" to replace it, or drop it on the target: DROP DATABASE {q};")),
                );
                continue;
            }
            out.push(
                warning("target-database-will-be-replaced", format!("database `{name}` exists on the target and will be dropped and recreated; its contents are lost"))
                    .on(name)
                    .fix(format!("Back it up first if it matters (pg_dump -Fc -d {q}), or set OverwriteDBsInTarget to false.")),
            );
            // DROP DATABASE needs ownership, which membership in the owning role gives.
            if !superuser && !target.is_member_of(user, &existing.owner) {
                out.push(
                    error(
                        "target-database-not-droppable",
                        format!(
                            "target role `{user}` cannot drop database `{name}`, which is owned by `{}`",
                            existing.owner
                        ),
                    )
                    .on(name)
                    .fix(format!(
                        "As `{}` or a superuser on the target: GRANT {} TO {}; or DROP DATABASE {q};",
                        existing.owner,
                        quote_ident(&existing.owner),
                        quote_ident(user)
                    )),
                );
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct RolePrivileges;

impl Rule for RolePrivileges {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance(
            "role-privileges",
            "The migration roles may read the source and create databases and roles on the target",
        )
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let mut out = vec![];
        let target = cx.target();
        let user = &target.current_user;
        let role = target.current_role();
        if !role.is_some_and(|r| r.superuser) {
            if !role.is_some_and(|r| r.create_db) {
                out.push(
                    error(
                        "target-role-cannot-create-databases",
                        format!("target role `{user}` is neither superuser nor has CREATEDB"),
                    )
                    .on(user)
                    .fix(format!(
                        "As a superuser or the server admin on the target: ALTER ROLE {} CREATEDB;",
                        quote_ident(user)
                    )),
                );
            }
            if !role.is_some_and(|r| r.create_role) {
                out.push(
                    error(
                        "target-role-cannot-create-roles",
                        format!("target role `{user}` is neither superuser nor has CREATEROLE"),
                    )
                    .on(user)
                    .fix(format!(
                        "As a superuser or the server admin on the target: ALTER ROLE {} CREATEROLE;",
                        quote_ident(user)
                    )),
                );
            }
        }

        let source = cx.source();
        let user = &source.current_user;
        let reads_all = source.current_role().is_some_and(|r| r.superuser)
            || (source.version_num >= 140000 && source.is_member_of(user, "pg_read_all_data"));
        if !reads_all {
            let q = quote_ident(user);
            let fix = if source.version_num >= 140000 {
                format!("On the source: GRANT pg_read_all_data TO {q};")
            } else {
                format!(
                    "In every migrated database and schema: GRANT USAGE ON SCHEMA <schema> TO {q}; GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO {q};"
                )
            };
            out.push(
                warning(
                    "source-role-cannot-read-all",
                    format!("source role `{user}` is neither superuser nor a member of pg_read_all_data: tables it may not read cannot be copied"),
                )
                .on(user)
                .fix(fix),
            );
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct LockTableCapacity;

impl Rule for LockTableCapacity {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance(
            "lock-table-capacity",
            "The target's lock table can hold a restore of every table and index",
        )
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let target = cx.target();
        // PostgreSQL's defaults stand in for settings the inventory lacks.
        let per_xact = target.setting_i64("max_locks_per_transaction").unwrap_or(64);
        let slots = target.setting_i64("max_connections").unwrap_or(100)
            + target.setting_i64("max_prepared_transactions").unwrap_or(0);
        let capacity = per_xact * slots;
        let tables: usize = cx
            .check
            .dbs_to_migrate
            .iter()
            .filter_map(|d| cx.database_on(Side::Source, d))
            .map(|d| d.tables.len())
            .sum();
        // Tables ×2 approximates tables plus their indexes.
        let needed = tables as i64 * 2;
        if needed <= capacity {
            return Ok(vec![]);
        }
        let suggested = (needed as u64).div_ceil(slots.max(1) as u64).next_power_of_two().max(64);
        Ok(vec![
            warning(
                "lock-table-too-small",
                format!(
                    "the target's lock table holds about {capacity} locks (max_locks_per_transaction {per_xact} × {slots} connections and prepared transactions), but restoring {tables} tables and their indexes takes about {needed}: pg_restore may fail with \"out of shared memory\""
                ),
            )
            .on("max_locks_per_transaction")
            .fix(format!(
                "On the target: ALTER SYSTEM SET max_locks_per_transaction = {suggested}; and restart it (on a managed server, change the server parameter)."
            )),
        ])
    }
}

#[derive(Default)]
pub struct EncodingLocale;

impl Rule for EncodingLocale {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("encoding-locale", "Database encodings and locales can be recreated on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let target = cx.target();
        // A real pg_collation is never empty (it has default, C and POSIX): an empty list
        // means the inventory could not read it, and guessing would flag every locale.
        let collations_known = !target.collations.is_empty();
        if !collations_known {
            cx.log(LogLevel::Warn, "the target inventory has no collations; locales are not checked");
        }
        let has_icu = target.collations.iter().any(|c| c.provider == "icu");
        let mut out = vec![];
        for name in &cx.check.dbs_to_migrate {
            let Some(db) = cx.source().database(name) else { continue };
            if db.encoding.eq_ignore_ascii_case("SQL_ASCII") {
                out.push(
                    warning(
                        "sql-ascii-encoding",
                        format!("database `{name}` uses encoding SQL_ASCII: its text is copied byte for byte, unchecked, into a SQL_ASCII database"),
                    )
                    .on(name)
                    .fix("If the data's real encoding is known, convert the database to UTF8 before migrating (dump, convert with iconv, restore into a UTF8 database); otherwise accept SQL_ASCII on the target."),
                );
            }
            if !collations_known {
                continue;
            }
            if db.locale_provider == "icu" && !has_icu {
                let locale = db.icu_locale.as_deref().unwrap_or("?");
                out.push(
                    error("icu-unavailable-on-target", format!("database `{name}` uses the ICU locale provider (locale `{locale}`), but the target has no ICU collations"))
                        .on(name)
                        .fix("Migrate to a target built with ICU support (configure --with-icu; managed services are)."),
                );
            }
            let mut locales = vec![("LC_COLLATE", &db.collate)];
            if db.ctype != db.collate {
                locales.push(("LC_CTYPE", &db.ctype));
            }
            for (what, locale) in locales {
                if !target.has_locale(locale) {
                    out.push(
                        warning("locale-missing-on-target", format!("database `{name}` has {what} `{locale}`, which the target's operating system does not provide"))
                            .on(name)
                            .fix(format!(
                                "Install the locale on the target host (e.g. locale-gen {locale}) and run SELECT pg_import_system_collations('pg_catalog'); there, or migrate to a target that offers it."
                            )),
                    );
                }
            }
        }
        Ok(out)
    }
}

export_rules!(
    ServerVersion,
    DatabaseCount,
    SourceDatabases,
    TargetDatabaseExists,
    RolePrivileges,
    LockTableCapacity,
    EncodingLocale;
    manifest = Manifest::new("Premigration checks of both servers: versions, databases, roles, lock capacity, encodings")
        .setting(SettingSpec::integer("max_databases", "Databases one migration moves before `too-many-databases` warns").with_default(8))
);
