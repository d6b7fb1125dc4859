//! A migration from `create` to its end state, one module per lifecycle step (named after
//! its substate). Every transition is persisted before the next step's work starts.

pub mod completing_migration;
pub mod copy_digest;
pub mod migrating_data;
mod progress;
pub mod performing_prerequisite_steps;
pub mod validation_in_progress;
pub mod waiting_for_cutover_trigger;

use std::collections::BTreeMap;
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
use migrating_data::{DatabaseState, Stage};
use progress::{watched, Progress};
pub use progress::Observer;
use validation_in_progress::CheckState;

pub struct CreateRequest {
    pub name: String,
    pub properties: Properties,
    /// `--target` (host:port or a postgres URI); else `TargetDbServerFullyQualifiedDomainName`.
    pub target: Option<String>,
    pub option: Option<MigrationOption>,
    pub mode: Option<MigrationMode>,
    pub copy: CopyOptions,
}

/// How the data moves, for `create` and `resume` alike.
pub struct CopyOptions {
    /// Parallel copy workers.
    pub jobs: usize,
    /// Tables bigger than this are copied in parts by several workers (0: never).
    pub split_bytes: u64,
    /// Where pg_dump/pg_restore live, when not found on their own.
    pub pg_bin: Option<std::path::PathBuf>,
    /// Online: how long streaming keeps trying to reach a server it lost before failing.
    pub reconnect_timeout: Duration,
    pub observer: Option<Observer>,
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
        "setReplicaIdentity": p.set_replica_identity,
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
pub async fn create(store: &mut Store, registry: &Registry, mut req: CreateRequest) -> Result<Migration> {
    let observer = req.copy.observer.take();
    validate_name(&req.name)?;
    let props = &req.properties;
    let option = req.option.or(props.option).unwrap_or(MigrationOption::ValidateAndMigrate);
    let mode = req.mode.or(props.mode).unwrap_or(MigrationMode::Offline);
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
    // One migration at a time per target: two copies racing for the same server's disk and
    // connections help no one, and their databases could collide.
    if option != MigrationOption::Validate
        && let Some(active) = store.list(true)?.into_iter().find(|m| m.target_server == target_server && m.option != "Validate") {
            bail!(
                "migration {:?} is still {} on target {target_server}; wait for it, or `pgferry migration update --migration-name {} --cancel` (or `resume` it if its runner died)",
                active.name,
                active.status,
                active.name
            );
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
    drive(store, registry, migration.id, &req, adapter, source, target, BTreeMap::new(), observer).await
}

/// Continues a migration whose runner died (kill -9, reboot): the databases and tables it
/// finished are kept, the rest is done again. Passwords come from `secrets` (the properties
/// file again) or the environment and ~/.pgpass: the store never held them.
pub async fn resume(store: &mut Store, registry: &Registry, name: &str, target: Option<&str>, secrets: Option<Properties>, mut copy: CopyOptions) -> Result<Migration> {
    let observer = copy.observer.take();
    let m = store.find(name, target)?.with_context(|| format!("no migration named {name:?} in the state store {}", store.path().display()))?;
    let failed_step = m.error.as_ref().and_then(|e| e.get("step")).and_then(serde_json::Value::as_str).unwrap_or("");
    let failed_copying = m.status == Status::FAILED && matches!(failed_step, "MigratingData" | "CompletingMigration");
    if !m.status.is_active() && !failed_copying {
        bail!(
            "migration {name:?} is {}; only an interrupted migration (InProgress) or one that failed while moving data can be resumed",
            m.status.state
        );
    }
    if let Some(pid) = live_runner(&m) {
        bail!("migration {name:?} is still being run by process {pid} on this machine; follow it with `pgferry migration show`, or stop it with `pgferry migration update --cancel`");
    }
    let (options, adapter, source, target) = stored_request(registry, &m, secrets, copy).await?;
    store.claim(m.id, std::process::id())?;
    if failed_copying {
        store.merge_details(m.id, json!({ "resumedAfter": m.error }))?;
        store.transition(m.id, Status::MIGRATING)?;
    }
    let states: BTreeMap<String, DatabaseState> = serde_json::from_value(m.details.get("copyState").cloned().unwrap_or_default()).unwrap_or_default();
    drive(store, registry, m.id, &options, adapter, source, target, states, observer).await
}

/// The process running a migration, when it is alive on this machine (and not us).
pub fn live_runner(m: &Migration) -> Option<u32> {
    m.runner_pid.filter(|pid| *pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// A stored migration's request and connection specs, as `create` had them but for the
/// passwords: those come from `secrets` (the properties file again) or the environment and
/// ~/.pgpass, as the store never held them.
async fn stored_request<'r>(registry: &'r Registry, m: &Migration, secrets: Option<Properties>, copy: CopyOptions) -> Result<(CreateRequest, &'r crate::plugins::AdapterPlugin, ConnSpec, ConnSpec)> {
    let p = &m.properties;
    let text = |k: &str| p.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
    let source = parse_endpoint(&text("sourceServer").context("the stored migration has no source server")?)?;
    let target_endpoint = parse_endpoint(&text("targetServer").context("the stored migration has no target server")?)?;
    let properties = Properties {
        source: Endpoint { user: text("sourceServerUserName"), ..source },
        source_password: secrets.as_ref().and_then(|s| s.source_password.clone()),
        target: Some(target_endpoint),
        target_user: text("targetServerUserName"),
        target_password: secrets.as_ref().and_then(|s| s.target_password.clone()),
        dbs_to_migrate: m.databases.clone(),
        overwrite_dbs_in_target: p.get("overwriteDbsInTarget").and_then(serde_json::Value::as_bool).unwrap_or(false),
        set_replica_identity: p.get("setReplicaIdentity").and_then(serde_json::Value::as_bool).unwrap_or(false),
        mode: serde_json::from_value(p["migrationMode"].clone()).ok(),
        option: serde_json::from_value(p["migrationOption"].clone()).ok(),
        source_type: m.source_type.clone(),
        ssl_mode: serde_json::from_value(p["sslMode"].clone()).ok(),
        accepted: Default::default(),
        warnings: vec![],
    };
    let options = CreateRequest { name: m.name.clone(), option: properties.option, mode: properties.mode, target: None, properties, copy };
    let adapter = registry.require_adapter(&options.properties.source_type)?;
    let target = target_spec(&options)?;
    let props = &options.properties;
    let source = spec(Role::Source, &props.source, props.source.user.clone(), props.source_password.clone(), SslMode::Prefer);
    let source = performing_prerequisite_steps::apply_adapter(registry, adapter, source, props.ssl_mode).await?;
    Ok((options, adapter, source, target))
}

/// `update --cancel`: the migration ends Canceled at once. A live runner notices within a
/// second and removes what the migration made; when its runner is gone (killed), this
/// does it: slots and publications on the source, origins and the databases the migration
/// created on the target.
pub async fn cancel(store: &mut Store, registry: &Registry, m: &Migration, secrets: Option<Properties>) -> Result<Migration> {
    let canceled = store.transition(m.id, Status::CANCELED)?;
    if live_runner(m).is_some() {
        return Ok(canceled);
    }
    let states: BTreeMap<String, DatabaseState> = serde_json::from_value(m.details.get("copyState").cloned().unwrap_or_default()).unwrap_or_default();
    let replicating = waiting_for_cutover_trigger::records(m);
    let created: Vec<String> = m
        .databases
        .iter()
        .filter(|db| states.get(*db).is_some_and(|st| st.stage >= Stage::Created) || replicating.contains_key(*db))
        .cloned()
        .collect();
    if created.is_empty() && replicating.is_empty() {
        return Ok(canceled);
    }
    let copy = CopyOptions { jobs: 1, split_bytes: 0, pg_bin: None, reconnect_timeout: crate::replication::reconnect::DEFAULT_TIMEOUT, observer: None };
    let (_, _, source, target) = stored_request(registry, m, secrets, copy).await?;
    canceled_cleanup(store, m.id, &source, &target, &created).await
}

/// Runs a recorded migration from its current status to its end.
#[allow(clippy::too_many_arguments)]
async fn drive(
    store: &mut Store,
    registry: &Registry,
    id: i64,
    req: &CreateRequest,
    adapter: &crate::plugins::AdapterPlugin,
    source: ConnSpec,
    target: ConnSpec,
    states: BTreeMap<String, DatabaseState>,
    observer: Option<Observer>,
) -> Result<Migration> {
    let props = &req.properties;
    let option = req.option.or(props.option).unwrap_or(MigrationOption::ValidateAndMigrate);
    let mode = req.mode.or(props.mode).unwrap_or(MigrationMode::Offline);
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

    let status = store.get_by_id(id)?.status;
    let validated = [Status::MIGRATING, Status::WAITING_FOR_CUTOVER, Status::COMPLETING].contains(&status);
    if option != MigrationOption::Migrate && !validated {
        if status != Status::VALIDATING
            && let Some(canceled) = advance(store, id, Status::VALIDATING)? {
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
            migration_option: match option {
                MigrationOption::Validate => plugin_host::MigrationOption::Validate,
                MigrationOption::Migrate => plugin_host::MigrationOption::Migrate,
                MigrationOption::ValidateAndMigrate => plugin_host::MigrationOption::ValidateAndMigrate,
            },
            source_type: props.source_type.clone(),
            database: None,
            dbs_to_migrate: props.dbs_to_migrate.clone(),
            overwrite_dbs_in_target: props.overwrite_dbs_in_target,
        };
        let mut report = validation_in_progress::run(registry, adapter, services, &ctx).await;
        if mode == MigrationMode::Online && props.set_replica_identity {
            report.consent("replica-identity-missing", "SetReplicaIdentity: pgferry gives it one on the source (USING a unique index when one fits, else FULL) and restores it when the migration ends");
        }
        store.set_validation(id, &serde_json::to_value(&report)?)?;
        if report.status == CheckState::Failed || option == MigrationOption::Validate {
            let end = if report.status == CheckState::Failed { Status::VALIDATION_FAILED } else { Status::SUCCEEDED };
            return Ok(advance(store, id, end)?.unwrap_or(store.get_by_id(id)?));
        }
    }
    if !validated
        && let Some(canceled) = advance(store, id, Status::MIGRATING)? {
            return Ok(canceled);
        }
    let work_dir = std::env::temp_dir().join(format!("pgferry-{}-{}", req.name, std::process::id()));
    let progress = Progress::new(observer, states);
    let result = migrate(store, id, req, adapter, &prepared, &work_dir, progress).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    match result {
        Ok(Some(canceled)) => Ok(canceled),
        Ok(None) => Ok(advance(store, id, Status::SUCCEEDED)?.unwrap_or(store.get_by_id(id)?)),
        Err((step, created, e)) => {
            // An online migration's slots go first: the source must not keep WAL for it.
            // Streaming cannot go on without them, so a resume copies again.
            let leftovers = waiting_for_cutover_trigger::clean_up(&prepared.source, &prepared.target, &store.get_by_id(id)?).await;
            if !leftovers.is_empty() {
                store.merge_details(id, json!({ "cleanupFailed": leftovers }))?;
            }
            store.merge_details(id, json!({ "replication": {} }))?;
            // Nothing half-copied may be left looking valid on the target; what could be
            // dropped starts over on resume, what could not (target down) is resumed.
            let dropped = drop_databases(&prepared.target, &created).await;
            let mut states: BTreeMap<String, DatabaseState> =
                serde_json::from_value(store.get_by_id(id)?.details.get("copyState").cloned().unwrap_or_default()).unwrap_or_default();
            for db in &dropped {
                states.remove(db);
            }
            store.merge_details(id, json!({ "copyState": states, "droppedOnFailure": dropped }))?;
            fail(store, id, step, e)
        }
    }
}

type StepError = (&'static str, Vec<String>, anyhow::Error);

/// MigratingData then CompletingMigration, database by database. On error: the step, the
/// target databases created so far, and the error.
async fn migrate(
    store: &mut Store,
    id: i64,
    req: &CreateRequest,
    adapter: &crate::plugins::AdapterPlugin,
    prepared: &performing_prerequisite_steps::Prepared,
    work_dir: &std::path::Path,
    mut progress: Progress,
) -> Result<Option<Migration>, StepError> {
    let mut created: Vec<String> = Vec::new();
    let step = "MigratingData";
    let source_major = prepared.inventory.source.version_num / 10000;
    let tools = crate::pg_tools::find(source_major, req.copy.pg_bin.as_deref()).map_err(|e| (step, vec![], e))?;
    let settings = migrating_data::Settings {
        source: &prepared.source,
        target: &prepared.target,
        inventory: &prepared.inventory,
        provider: &adapter.description.provider_objects,
        overwrite: req.properties.overwrite_dbs_in_target,
        jobs: req.copy.jobs.max(1),
        split_bytes: req.copy.split_bytes,
        tools: &tools,
        work_dir: work_dir.to_path_buf(),
        reconnect_timeout: req.copy.reconnect_timeout,
    };
    let roles = migrating_data::create_roles(&settings).await.map_err(|e| (step, vec![], e))?;
    let _ = store.merge_details(id, json!({ "rolesCreated": roles }));

    let mode = req.mode.or(req.properties.mode).unwrap_or(MigrationMode::Offline);
    if mode == MigrationMode::Online {
        let props = &req.properties;
        return waiting_for_cutover_trigger::run(store, id, &settings, &props.dbs_to_migrate, props.set_replica_identity, &mut progress, &mut created).await;
    }
    let states = progress.states.clone();
    let mut copied = Vec::new();
    for db in &req.properties.dbs_to_migrate {
        let state = states.get(db).cloned().unwrap_or_default();
        if state.stage == Stage::Completed {
            continue;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        created.push(db.clone());
        let work = migrating_data::run_database(&settings, db, &state, None, &tx);
        match watched(store, id, work, &mut rx, &mut progress).await.map_err(|e| (step, created.clone(), e))? {
            Some(database) => copied.push(database),
            None => return canceled_cleanup(store, id, &prepared.source, &prepared.target, &created).await.map(Some).map_err(|e| (step, created.clone(), e)),
        }
    }

    let current = store.get_by_id(id).map_err(|e| (step, created.clone(), e))?.status;
    if current != Status::COMPLETING
        && let Some(canceled) = advance(store, id, Status::COMPLETING).map_err(|e| (step, created.clone(), e))? {
            drop_databases(&prepared.target, &created).await;
            return Ok(Some(canceled));
        }
    let step = "CompletingMigration";
    let mut verification = Vec::new();
    for database in &copied {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let work = completing_migration::run_database(&settings, database, &tx);
        match watched(store, id, work, &mut rx, &mut progress).await.map_err(|e| (step, created.clone(), e))? {
            Some(checked) => {
                verification.push(checked);
                progress.record(store, id, migrating_data::Progress::StageReached { database: database.name.clone(), stage: Stage::Completed });
            }
            None => return canceled_cleanup(store, id, &prepared.source, &prepared.target, &created).await.map(Some).map_err(|e| (step, created.clone(), e)),
        }
    }
    let _ = store.merge_details(id, json!({ "verification": verification }));
    check_verification(&verification).map_err(|e| (step, created, e))?;
    Ok(None)
}

/// Fails naming every table (or kind of object) where the target differs from the source.
fn check_verification(verification: &[completing_migration::DatabaseVerification]) -> Result<()> {
    let mismatched: Vec<String> = verification
        .iter()
        .flat_map(|v| v.mismatches.iter().map(move |m| format!("{}: {} ({} on the source, {} on the target{})", v.database, m.table, m.source_rows, m.target_rows, if m.source_rows == m.target_rows { ", contents differ" } else { "" })))
        .collect();
    if !mismatched.is_empty() {
        bail!("verification failed: the target differs from the source in {}", mismatched.join("; "));
    }
    Ok(())
}

/// After a cancel: the target databases this migration created are dropped, so nothing
/// half-copied is left looking valid.
async fn canceled_cleanup(store: &mut Store, id: i64, source: &ConnSpec, target: &ConnSpec, created: &[String]) -> Result<Migration> {
    let leftovers = waiting_for_cutover_trigger::clean_up(source, target, &store.get_by_id(id)?).await;
    drop_databases(target, created).await;
    store.merge_details(id, json!({ "droppedOnCancel": created, "replication": {}, "cleanupFailed": leftovers }))?;
    store.get_by_id(id)
}

/// Best effort: drops what this migration created on the target; returns what it dropped.
async fn drop_databases(target: &ConnSpec, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return vec![];
    }
    let Ok((client, _)) = target.connect("postgres").await else { return vec![] };
    let mut dropped = Vec::new();
    for name in names {
        let drop = format!("DROP DATABASE IF EXISTS {}", migrating_data::quote_ident(name));
        // WITH (FORCE) ends other sessions from PostgreSQL 13 on; older targets get the plain form.
        let result = match client.batch_execute(&format!("{drop} WITH (FORCE)")).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR) => client.batch_execute(&drop).await,
            other => other,
        };
        match result {
            Ok(()) => dropped.push(name.clone()),
            Err(e) => tracing::warn!("could not drop database {name} on the target: {}", crate::connect::pg_error(&e)),
        }
    }
    dropped
}

/// Moves the migration on; `Some(migration)` when it was canceled from another shell in the
/// meantime (the work stops there, the cancel stands).
fn advance(store: &mut Store, id: i64, to: Status) -> Result<Option<Migration>> {
    let transitioned = store.transition(id, to);
    settle(store, id, transitioned)
}

/// A transition refused because the migration was canceled meanwhile yields the canceled one.
fn settle(store: &Store, id: i64, transitioned: Result<Migration>) -> Result<Option<Migration>> {
    match transitioned {
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
    let error = json!({ "step": step, "message": format!("{error:#}") });
    let failed = store.transition_with_error(id, Status::FAILED, &error);
    Ok(settle(store, id, failed)?.unwrap_or(store.get_by_id(id)?))
}
