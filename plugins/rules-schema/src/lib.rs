//! Database-level premigration rules: extensions, collations, casts, OIDs, procedural
//! languages, object owners, and notes on how tables are copied and verified. Each rule
//! reads the source inventory of the database being checked and the target's server
//! inventory. A database missing on the source is reported once, by rules-server's
//! `source-databases`; the rules here have nothing to say about it. Codes and remediations
//! are documented in README.md.

use pgferry_sdk::*;

#[cfg(test)]
mod tests;

/// `a, "b" ,c` → `["a", "b", "c"]`, as a comma-separated GUC list.
fn guc_list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().trim_matches('"').to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
}

fn collation_name(c: &CollationInfo) -> String {
    format!("{}.{}", quote_ident(&c.schema), quote_ident(&c.name))
}

#[derive(Default)]
pub struct Extensions;

/// Extensions whose library must be in shared_preload_libraries, and how bad its absence is.
enum Preload {
    Required,
    Recommended,
    /// Only when the source preloads it too (pg_partman's optional background worker).
    IfSourcePreloads,
}

const PRELOAD: &[(&str, &str, Preload)] = &[
    ("timescaledb", "timescaledb", Preload::Required),
    ("pg_cron", "pg_cron", Preload::Required),
    ("pg_stat_statements", "pg_stat_statements", Preload::Recommended),
    ("pgaudit", "pgaudit", Preload::Recommended),
    ("pg_hint_plan", "pg_hint_plan", Preload::Recommended),
    ("pglogical", "pglogical", Preload::Recommended),
    ("pg_partman", "pg_partman_bgw", Preload::IfSourcePreloads),
];

/// Extensions whose control file fixes their schema to `pg_catalog` (they are not
/// relocatable): being there is nobody's choice, so `extension-in-system-schema` leaves
/// them alone. Any other procedural-language extension is recognised by its language.
const PG_CATALOG_BY_DESIGN: &[&str] =
    &["plpgsql", "adminpack", "plperl", "plperlu", "plpython3u", "plpythonu", "plpython2u", "pltcl", "pltclu"];

impl Rule for Extensions {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("extensions", "Extensions in use can be created on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let (source, target) = (cx.source(), cx.target());
        let allowlist = target.setting("azure.extensions");
        let allowed = allowlist.map(guc_list);
        let target_preload = guc_list(target.setting("shared_preload_libraries").unwrap_or(""));
        let source_preload = guc_list(source.setting("shared_preload_libraries").unwrap_or(""));
        let mut out = vec![];
        for ext in db.extensions.iter().filter(|e| e.name != "plpgsql") {
            let (name, q) = (&ext.name, quote_ident(&ext.name));
            let in_db = format!("extension `{name}` {} in database `{}`", ext.version, db.name);
            match target.available_extensions.iter().find(|a| &a.name == name) {
                None => out.push(
                    error("extension-unavailable-on-target", format!("{in_db} is not available on the target"))
                        .on(name)
                        .fix(format!(
                            "Install the package that provides `{name}` on the target host (or pick a target that offers it); if the database does not use it, DROP EXTENSION {q}; on the source."
                        )),
                ),
                Some(available) => {
                    if let Some(default) = available.default_version.as_deref().filter(|d| version_cmp(d, &ext.version).is_lt()) {
                        out.push(
                            warning("extension-version-older-on-target", format!("{in_db} is newer than the target's version {default}"))
                                .on(name)
                                .fix(format!(
                                    "Install `{name}` {} or newer on the target, or check that the objects and the application work with {default} (CREATE EXTENSION installs the target's default version).",
                                    ext.version
                                )),
                        );
                    }
                }
            }
            if let Some(allowed) = &allowed
                && !allowed.contains(&name.to_ascii_lowercase())
            {
                let list = allowlist.unwrap_or("").trim();
                let value = if list.is_empty() { name.clone() } else { format!("{list},{name}") };
                out.push(
                    error("extension-not-allowlisted", format!("{in_db} is not in the target's allow-list azure.extensions"))
                        .on(name)
                        .fix(format!(
                            "Add it to the target's server parameter: az postgres flexible-server parameter set --name azure.extensions --value \"{value}\" (with --resource-group and --server-name)."
                        )),
                );
            }
            let loads = |list: &[String], lib: &str| list.iter().any(|l| l == lib);
            if let Some((_, lib, need)) = PRELOAD.iter().find(|(e, ..)| e == name)
                && (!matches!(need, Preload::IfSourcePreloads) || loads(&source_preload, lib))
                && !loads(&target_preload, lib)
            {
                let msg = format!(
                    "{in_db} needs library `{lib}` in shared_preload_libraries, which the target does not load"
                );
                let finding = if matches!(need, Preload::Required) {
                    error("extension-needs-preload", msg)
                } else {
                    warning("extension-needs-preload", msg)
                };
                let current = target.setting("shared_preload_libraries").unwrap_or("").trim();
                let value = if current.is_empty() { lib.to_string() } else { format!("{current},{lib}") };
                out.push(finding.on(name).fix(format!(
                    "On the target: ALTER SYSTEM SET shared_preload_libraries = '{value}'; (on a managed server, set the server parameter) and restart it."
                )));
            }
            let pinned = PG_CATALOG_BY_DESIGN.contains(&name.as_str()) || db.languages.iter().any(|l| &l.name == name);
            if (ext.schema == "pg_catalog" || ext.schema == "information_schema") && !pinned {
                out.push(
                    warning("extension-in-system-schema", format!("{in_db} is installed in system schema {}", ext.schema))
                        .on(name)
                        .fix(format!("On the source, move it to a regular schema: ALTER EXTENSION {q} SET SCHEMA public; (relocatable extensions only; otherwise drop and recreate it there).")),
                );
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct Collations;

impl Rule for Collations {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("collations", "Collations in use exist on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let target = cx.target();
        // A real pg_collation is never empty: an empty list was not read, so do not guess.
        let known = !target.collations.is_empty();
        if !known {
            cx.log(LogLevel::Warn, "the target inventory has no collations; collations are not checked");
        }
        let has_provider = |p: &str| target.collations.iter().any(|c| c.provider == p);
        let mut out = vec![];
        // The database's own default collation is rules-server's `encoding-locale`.
        for c in db.collations_used.iter().filter(|c| c.provider != "default") {
            let obj = collation_name(c);
            let user_defined = c.schema != "pg_catalog";
            if user_defined {
                out.push(
                    info(
                        "user-defined-collation",
                        format!(
                            "collation {obj} ({} provider) is user-defined; the schema dump recreates it on the target",
                            c.provider
                        ),
                    )
                    .on(&obj)
                    .fix("Nothing to do when its locale exists on the target (see collation-missing-on-target)."),
                );
            }
            if !known {
                continue;
            }
            // A user-defined collation only needs its locale; a built-in one must exist by name.
            let present = match c.provider.as_str() {
                "libc" => {
                    c.collate.as_deref().is_some_and(|l| target.has_locale(l))
                        || (!user_defined
                            && target.collations.iter().any(|t| t.name == c.name && t.provider == c.provider))
                }
                p if user_defined => has_provider(p),
                p => target.collations.iter().any(|t| t.name == c.name && t.provider == p),
            };
            if !present {
                let locale = c.collate.as_deref().unwrap_or(&c.name);
                let fix = match c.provider.as_str() {
                    "libc" => format!(
                        "Install locale `{locale}` on the target host and run SELECT pg_import_system_collations('pg_catalog'); there, or change the columns to a collation the target has (ALTER TABLE … ALTER COLUMN … TYPE … COLLATE …)."
                    ),
                    "icu" => "Migrate to a target built with ICU support, or change the columns to a libc collation on the source.".into(),
                    _ => format!("Migrate to a target that supports the {} collation provider (PostgreSQL 17+ for builtin).", c.provider),
                };
                out.push(
                    error(
                        "collation-missing-on-target",
                        format!("collation {obj} ({} provider, locale `{locale}`) used in database `{}` does not exist on the target", c.provider, db.name),
                    )
                    .on(obj)
                    .fix(fix),
                );
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct UserCasts;

impl Rule for UserCasts {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("user-casts", "User-defined casts can be recreated")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        Ok(db
            .user_casts
            .iter()
            .map(|c| {
                let cast = format!("({} AS {})", c.source_type, c.target_type);
                let via = c.function.as_deref().map_or(String::new(), |f| format!(" using {f}"));
                warning("user-defined-cast", format!("database `{}` has the user-defined cast {cast}{via}", db.name))
                    .on(format!("CAST {cast}"))
                    .fix(format!(
                        "Recreating a cast needs a superuser or the owner of both types on the target; if no target role qualifies, drop it on the source (DROP CAST {cast};) and recreate it after the migration."
                    ))
            })
            .collect())
    }
}

#[derive(Default)]
pub struct TablesWithOids;

impl Rule for TablesWithOids {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("tables-with-oids", "No table is declared WITH OIDS")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        Ok(db
            .tables
            .iter()
            .filter(|t| t.has_oids)
            .map(|t| {
                let q = t.qualified_name();
                error("table-with-oids", format!("table {q} is declared WITH OIDS, which PostgreSQL 12 and later removed"))
                    .on(&q)
                    .fix(format!("On the source: ALTER TABLE {q} SET WITHOUT OIDS; (copy the oid column into a regular column first if the application reads it)."))
            })
            .collect())
    }
}

#[derive(Default)]
pub struct ProceduralLanguages;

const BUILTIN_LANGUAGES: &[&str] = &["c", "internal", "sql", "plpgsql"];

impl Rule for ProceduralLanguages {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("procedural-languages", "Procedural languages in use exist on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let target = cx.target();
        let mut out = vec![];
        for lang in db.languages.iter().filter(|l| !BUILTIN_LANGUAGES.contains(&l.name.as_str())) {
            let name = &lang.name;
            if !target.has_extension_available(name) {
                let fix = if matches!(name.as_str(), "plpythonu" | "plpython2u") {
                    "Python 2 languages are gone since PostgreSQL 12: port the functions to plpython3u on the source, then DROP EXTENSION plpythonu;".to_string()
                } else {
                    format!(
                        "Install the package that provides `{name}` on the target host, or drop the language and its functions on the source."
                    )
                };
                out.push(
                    error(
                        "language-unavailable-on-target",
                        format!(
                            "procedural language `{name}` used in database `{}` is not available on the target",
                            db.name
                        ),
                    )
                    .on(name)
                    .fix(fix),
                );
            } else if !lang.trusted {
                out.push(
                    warning("untrusted-language", format!("procedural language `{name}` in database `{}` is untrusted: only a superuser can create it and its functions", db.name))
                        .on(name)
                        .fix("Migrate with a superuser target role, or check that the target's admin role may create this language (managed servers allow-list it)."),
                );
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct ObjectOwners;

impl Rule for ObjectOwners {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("object-owners", "Object owners exist on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let (source, target) = (cx.source(), cx.target());
        Ok(db
            .owners
            .iter()
            .filter(|(owner, _)| target.role(owner).is_none() && source.role(owner).is_some_and(|r| r.superuser))
            .map(|(owner, count)| {
                let q = quote_ident(owner);
                info(
                    "superuser-owner-missing-on-target",
                    format!("{count} objects in database `{}` are owned by `{owner}`, a superuser on the source that does not exist on the target", db.name),
                )
                .on(owner)
                .fix(format!("Create the role on the target (CREATE ROLE {q};) or reassign the objects on the source: REASSIGN OWNED BY {q} TO <role>;"))
            })
            .collect())
    }
}

#[derive(Default)]
pub struct GeneratedColumns;

impl Rule for GeneratedColumns {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("generated-columns", "Generated columns are computed again on the target")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        Ok(db
            .tables
            .iter()
            .filter_map(|t| {
                let cols: Vec<&str> = t.columns.iter().filter(|c| !c.generated.is_empty()).map(|c| c.name.as_str()).collect();
                (!cols.is_empty()).then(|| {
                    let q = t.qualified_name();
                    info("generated-columns-recomputed", format!("table {q} has generated columns ({}): their values are not copied but computed on the target", cols.join(", ")))
                        .on(&q)
                        .fix("Nothing to do, unless their expressions call functions that behave differently on the target (volatile or version-dependent).")
                })
            })
            .collect())
    }
}

#[derive(Default)]
pub struct TablesWithoutPrimaryKey;

impl Rule for TablesWithoutPrimaryKey {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("tables-without-primary-key", "Tables without a primary key (offline verification)")
            .only_in(MigrationMode::Offline)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        Ok(db
            .tables
            .iter()
            .filter(|t| t.kind == RelationKind::Table && !t.has_primary_key)
            .map(|t| {
                let q = t.qualified_name();
                info("table-without-primary-key", format!("table {q} has no primary key: its copy is verified by row count and checksum only"))
                    .on(&q)
                    .fix(format!("Add a primary key on the source if a column set identifies rows: ALTER TABLE {q} ADD PRIMARY KEY (…);"))
            })
            .collect())
    }
}

export_rules!(
    Extensions,
    Collations,
    UserCasts,
    TablesWithOids,
    ProceduralLanguages,
    ObjectOwners,
    GeneratedColumns,
    TablesWithoutPrimaryKey;
    // A managed target's extension allowlist (Azure Database for PostgreSQL).
    manifest = Manifest::new("Premigration checks of the migrated databases' schema: extensions, collations, casts, languages, owners")
        .reads_settings(&["azure.extensions"])
);
