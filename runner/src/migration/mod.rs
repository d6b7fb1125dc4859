//! A migration from `create` to its end state, one module per lifecycle step (named after
//! its substate). Every transition is persisted before the next step's work starts.

pub mod performing_prerequisite_steps;
pub mod validation_in_progress;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::connect::{ConnSpec, Role};
use crate::lifecycle::{IllegalTransition, Status};
use crate::plugin_host::{self, CheckContext, Services};
use crate::plugin_sql::PluginSql;
use crate::plugins::Registry;
use crate::properties::{parse_endpoint, Endpoint, MigrationMode, MigrationOption, Properties, SslMode};
use crate::store::{Migration, NewMigration, Store};
use validation_in_progress::CheckState;

pub struct CreateRequest {
    pub name: String,
    pub properties: Properties,
    /// `--target` (host:port or a postgres URI); else `TargetDbServerFullyQualifiedDomainName`.
    pub target: Option<String>,
    pub option: Option<MigrationOption>,
    pub mode: Option<MigrationMode>,
}

/// Letters, digits and hyphens, not starting with a hyphen (as the cloud service).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        bail!("migration name {name:?} is not valid: use 1 to 63 letters, digits and hyphens, not starting with a hyphen");
    }
    Ok(())
}

/// The target endpoint of a request, as a `host:port` key and a connection spec.
pub fn target_spec(req: &CreateRequest) -> Result<ConnSpec> {
    let endpoint = match (&req.target, &req.properties.target) {
        (Some(t), _) => parse_endpoint(t).with_context(|| format!("--target {t:?}"))?,
        (None, Some(t)) => t.clone(),
        (None, None) => match std::env::var("PGHOST") {
            Ok(host) => Endpoint { host, ..Default::default() },
            Err(_) => bail!("no target server: pass --target host:port (or a postgres URI), set TargetDbServerFullyQualifiedDomainName in the properties, or PGHOST"),
        },
    };
    let user = req.properties.target_user.clone().or(endpoint.user.clone());
    // sslMode of the properties is about the source (as in the cloud service); the target's
    // comes from its URI or PGSSLMODE, as libpq would take it.
    let ssl_mode = endpoint
        .ssl_mode
        .or_else(|| std::env::var("PGSSLMODE").ok().and_then(|m| SslMode::parse(&m)))
        .unwrap_or(SslMode::Prefer);
    Ok(spec(Role::Target, &endpoint, user, req.properties.target_password.clone(), ssl_mode))
}

fn spec(role: Role, e: &Endpoint, user: Option<String>, password: Option<crate::properties::Secret>, ssl_mode: SslMode) -> ConnSpec {
    let timeout = std::env::var("PGCONNECT_TIMEOUT").ok().and_then(|s| s.parse().ok()).filter(|s| *s > 0).unwrap_or(10);
    ConnSpec {
        role,
        host: e.host.clone(),
        port: e.port.or_else(|| std::env::var("PGPORT").ok()?.parse().ok()).unwrap_or(5432),
        user: user.or_else(|| std::env::var("PGUSER").ok()).unwrap_or_else(|| "postgres".into()),
        password,
        ssl_mode,
        root_cert: None,
        connect_timeout: Duration::from_secs(timeout),
    }
    .resolve_from_env()
}

/// What the store keeps of the properties: everything but the secrets.
fn stored_properties(p: &Properties, source: &ConnSpec, target: &ConnSpec, option: MigrationOption, mode: MigrationMode) -> serde_json::Value {
    let mut notes: Vec<String> = p
        .accepted
        .keys()
        .map(|k| format!("`{k}` is accepted for compatibility but unused: this runner is the runtime server"))
        .collect();
    notes.extend(p.warnings.iter().cloned());
    json!({
        "sourceDbServerResourceId": p.source.spelled,
        "sourceServer": format!("{}:{}", source.host, source.port),
        "sourceServerUserName": source.user,
        "targetServer": format!("{}:{}", target.host, target.port),
        "targetServerUserName": target.user,
        "dbsToMigrate": p.dbs_to_migrate,
        "overwriteDbsInTarget": p.overwrite_dbs_in_target,
        "migrationMode": mode,
        "migrationOption": option,
        "sourceType": p.source_type,
        "sslMode": source.ssl_mode,
        "acceptedKeys": p.accepted,
        "notes": notes,
    })
}

/// Runs `create` to its end state and returns the stored migration. Bad input (name,
/// sourceType, properties) fails before anything is recorded or any server is touched.
pub async fn create(store: &mut Store, registry: &Registry, req: CreateRequest) -> Result<Migration> {
    validate_name(&req.name)?;
    let props = &req.properties;
    let option = req.option.or(props.option).unwrap_or(MigrationOption::ValidateAndMigrate);
    let mode = req.mode.or(props.mode).unwrap_or(MigrationMode::Offline);
    if option != MigrationOption::Validate {
        bail!("migration option {option:?} is not available in this build yet: only Validate is; pass --migration-option Validate");
    }
    if props.dbs_to_migrate.is_empty() {
        bail!("`DBsToMigrate` is empty: list the databases to migrate in the properties");
    }
    let adapter = registry.require_adapter(&props.source_type)?;
    let target = target_spec(&req)?;
    let source = spec(Role::Source, &props.source, props.source.user.clone(), props.source_password.clone(), SslMode::Prefer);
    let source = performing_prerequisite_steps::apply_adapter(registry, adapter, source, props.ssl_mode).await?;

    let target_server = format!("{}:{}", target.host, target.port);
    if let Some(status) = store.name_taken(&target_server, &req.name)? {
        bail!("migration name {:?} is already taken on target {target_server} (that migration is {status}); pick another name", req.name);
    }
    let properties = stored_properties(props, &source, &target, option, mode);
    let migration = store.create(&NewMigration {
        name: &req.name,
        target_server: &target_server,
        source_server: &format!("{}:{}", source.host, source.port),
        source_type: &adapter.description.info.ids[0],
        mode: &format!("{mode:?}"),
        option: &format!("{option:?}"),
        databases: &props.dbs_to_migrate,
        properties: &properties,
    })?;
    let id = migration.id;

    let prepared = match performing_prerequisite_steps::run(source, target, &props.dbs_to_migrate).await {
        Ok(p) => p,
        Err(e) => return fail(store, id, "PerformingPreRequisiteSteps", e),
    };
    store.merge_details(
        id,
        json!({
            "sourceTls": prepared.source_tls,
            "targetTls": prepared.target_tls,
            "sourceVersion": prepared.inventory.source.version,
            "targetVersion": prepared.inventory.target.version,
        }),
    )?;

    if let Some(canceled) = advance(store, id, Status::VALIDATING)? {
        return Ok(canceled);
    }
    let services = Arc::new(Services {
        inventory: prepared.inventory.clone(),
        sql: Some(Arc::new(PluginSql::new(prepared.source.clone(), prepared.target.clone()))),
    });
    let ctx = CheckContext {
        migration_name: req.name.clone(),
        mode: match mode {
            MigrationMode::Offline => plugin_host::MigrationMode::Offline,
            MigrationMode::Online => plugin_host::MigrationMode::Online,
        },
        migration_option: plugin_host::MigrationOption::Validate,
        source_type: props.source_type.clone(),
        database: None,
        dbs_to_migrate: props.dbs_to_migrate.clone(),
        overwrite_dbs_in_target: props.overwrite_dbs_in_target,
    };
    let report = validation_in_progress::run(registry, adapter, services, &ctx).await;
    store.set_validation(id, &serde_json::to_value(&report)?)?;
    let end = if report.status == CheckState::Failed { Status::VALIDATION_FAILED } else { Status::SUCCEEDED };
    Ok(advance(store, id, end)?.unwrap_or(store.get_by_id(id)?))
}

/// Moves the migration on; `Some(migration)` when it was canceled from another shell in the
/// meantime (the work stops there, the cancel stands).
fn advance(store: &mut Store, id: i64, to: Status) -> Result<Option<Migration>> {
    match store.transition(id, to) {
        Ok(_) => Ok(None),
        Err(e) if e.is::<IllegalTransition>() => {
            let current = store.get_by_id(id)?;
            if current.status == Status::CANCELED { Ok(Some(current)) } else { Err(e) }
        }
        Err(e) => Err(e),
    }
}

fn fail(store: &mut Store, id: i64, step: &str, error: anyhow::Error) -> Result<Migration> {
    tracing::debug!("{step}: {error:#}");
    store.set_error(id, &json!({ "step": step, "message": format!("{error:#}") }))?;
    Ok(advance(store, id, Status::FAILED)?.unwrap_or(store.get_by_id(id)?))
}
