//! A migration from `create` to its end state, one module per lifecycle step (named after
//! its substate). Every transition is persisted before the next step's work starts.

pub mod completing_migration;
pub mod copy_digest;
pub mod migrating_data;
mod progress;
pub mod performing_prerequisite_steps;
mod pipeline;
mod post_data;
pub mod validation_in_progress;
pub mod waiting_for_cutover_trigger;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::conn_config::ConnParams;
use crate::connect::{ConnSpec, Role};
use crate::lease::RunnerLease;
use crate::lifecycle::{IllegalTransition, Status};
use crate::plugin_host::{self, CheckContext, Services};
use crate::plugins::Registry;
use crate::reconnect::{unless_silent, Outages};
use crate::properties::{parse_endpoint, Endpoint, MigrationMode, MigrationOption, Properties, SslMode};
use performing_prerequisite_steps::EndpointChange;
use crate::store::{Leftover, Migration, NewMigration, Store};
use migrating_data::{DatabaseState, Stage};
use progress::{watched, Progress};
pub use progress::Observer;
use validation_in_progress::CheckState;

pub struct CreateRequest {
    pub name: String,
    pub properties: Properties,
    /// Where the properties were read from, so that hints can name the file again.
    pub properties_file: Option<std::path::PathBuf>,
    /// `--target` (host:port or a postgres URI); else `TargetDbServerFullyQualifiedDomainName`.
    pub target: Option<String>,
    pub option: Option<MigrationOption>,
    pub mode: Option<MigrationMode>,
    pub copy: CopyOptions,
    /// Record it for a `pgferry worker` and return, instead of running it here.
    pub queue: bool,
}

/// How the data moves, for `create` and `resume` alike.
pub struct CopyOptions {
    /// Parallel copy workers.
    pub jobs: usize,
    /// Index and key builds at once, while tables are still copying.
    pub index_jobs: usize,
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

/// The target's settings: `--target` (host:port or a URI), else
/// `TargetDbServerFullyQualifiedDomainName`, over the environment (PGHOST included).
pub fn target_spec(req: &CreateRequest) -> Result<ConnSpec> {
    target_spec_of(&req.properties, req.target.as_deref())
}

fn target_spec_of(props: &Properties, target: Option<&str>) -> Result<ConnSpec> {
    let endpoint = match (target, &props.target) {
        (Some(t), _) => parse_endpoint(t).with_context(|| format!("--target {t:?}"))?.params,
        (None, Some(t)) => t.params.clone(),
        (None, None) => ConnParams::default(),
    };
    // sslMode of the properties is about the source (as in the cloud service); the target's
    // comes from its URI or PGSSLMODE, as libpq would take it.
    let given = ConnParams { user: props.target_user.clone(), password: props.target_password.clone(), ..Default::default() };
    given.or(endpoint).or(ConnParams::from_env(true)?).resolve(Role::Target, SslMode::Prefer)
}

/// The target server (`host:port`) a migration with these properties would be recorded under:
/// the key of its name.
pub fn target_server(props: &Properties, target: Option<&str>) -> Result<String> {
    let spec = target_spec_of(props, target)?;
    Ok(format!("{}:{}", spec.host, spec.port))
}

/// Why a migration that moves data cannot start on `target_server` now (one at a time per
/// target: two copies racing for one server's disk and connections help no one, and their
/// databases could collide), with what to do; `None` when it can.
pub fn target_busy(store: &Store, target_server: &str, option: MigrationOption) -> Result<Option<String>> {
    if option == MigrationOption::Validate {
        return Ok(None);
    }
    let Some(active) = store.list(true)?.into_iter().find(|m| m.target_server == target_server && m.option != "Validate") else {
        return Ok(None);
    };
    let next = if runner_alive(store, &active)? {
        format!("wait for it, or stop it with `{}`", cancel_command(&active))
    } else if active.queued_at.is_some() {
        format!("it is queued for a pgferry worker: queue this one too (`--queue`), or stop it with `{}`", cancel_command(&active))
    } else {
        format!("its runner is gone: carry it on with `{}`, or stop it with `{}`", resume_command(&active), cancel_command(&active))
    };
    Ok(Some(format!("migration {:?} is still {} on target {target_server}; {next}", active.name, active.status)))
}

/// A cutover that cannot be asked for now (wrong state, no runner, asked already).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CutoverRefused(String);

/// Records a cutover request for the runner of an online migration waiting for it.
pub fn request_cutover(store: &mut Store, m: &Migration, read_only_source: bool) -> Result<()> {
    let name = &m.name;
    if m.status != Status::WAITING_FOR_CUTOVER {
        return Err(CutoverRefused(format!("migration {name:?} is {}: only an Online migration in WaitingForCutoverTrigger can be cut over", m.status)).into());
    }
    if !runner_alive(store, m)? {
        return Err(CutoverRefused(format!(
            "no runner is following migration {name:?} (its process is gone), so nobody would carry the cutover out; run `{}` first, then ask for the cutover again",
            resume_command(m)
        ))
        .into());
    }
    if !store.request(m.id, crate::store::RequestKind::Cutover, &json!({ "readOnlySource": read_only_source }))? {
        return Err(CutoverRefused(format!("the cutover of migration {name:?} was already requested; follow it with `pgferry migration show --migration-name {name}`")).into());
    }
    Ok(())
}

/// Whether a name is free on a target server, as `check-name-availability` answers.
pub struct Availability {
    pub name: String,
    pub target_server: String,
    /// Why not, when it is not.
    pub reason: Option<String>,
}

impl Availability {
    pub fn json(&self) -> serde_json::Value {
        json!({"name": self.name, "targetServer": self.target_server, "nameAvailable": self.reason.is_none(), "reason": self.reason})
    }
}

/// The name checked as `create` would: its form, then the target (resolved as `create`
/// resolves it) for a migration of that name.
pub fn name_availability(store: &Store, name: &str, target: &str) -> Result<Availability> {
    let spec = parse_endpoint(target)?.params.or(ConnParams::from_env(true)?).resolve(Role::Target, SslMode::Prefer)?;
    let server = format!("{}:{}", spec.host, spec.port);
    let reason = match (validate_name(name), store.name_taken(&server, name)?) {
        (Err(e), _) => Some(format!("{e}")),
        (Ok(()), Some(status)) => Some(format!("a migration of that name exists on {server} ({status})")),
        (Ok(()), None) => None,
    };
    Ok(Availability { name: name.to_string(), target_server: server, reason })
}

/// The source's settings before the adapter has its say: the properties' own keys, over
/// `SourceDBServerResourceId` (a URI included), over the environment.
fn source_params(props: &Properties) -> Result<ConnParams> {
    let given = ConnParams { password: props.source_password.clone(), sslmode: props.ssl_mode, ..Default::default() };
    Ok(given.or(props.source.params.clone()).or(ConnParams::from_env(false)?))
}

/// What the store keeps of the properties: everything but the secrets.
fn stored_properties(p: &Properties, source: &ConnSpec, target: &ConnSpec, moved: Option<&EndpointChange>, option: MigrationOption, mode: MigrationMode) -> serde_json::Value {
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
        "allowAdapterEndpointChange": p.allow_adapter_endpoint_change,
        "adapterEndpointChange": moved,
        // What a resume connects with (libpq's keys, no password).
        "sourceConnection": source.params(),
        "targetConnection": target.params(),
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
    if option == MigrationOption::Migrate {
        // Validation would refuse it; a migration without validation refuses it here.
        let declared = &adapter.description.provider_objects.databases;
        if let Some(db) = props.dbs_to_migrate.iter().find(|db| migrating_data::is_provider_object(declared, db)) {
            bail!("{}; remove it from DBsToMigrate", validation_in_progress::provider_database_message(adapter, db));
        }
    }
    let target = target_spec(&req)?;
    let (source, moved) = performing_prerequisite_steps::apply_adapter(registry, adapter, source_params(props)?, props.allow_adapter_endpoint_change).await?;
    for spec in [&source, &target] {
        // Server-wide work happens there: creating and dropping the migrated databases on
        // the target, ending their sessions on the source at a read-only cutover.
        if props.dbs_to_migrate.contains(&spec.dbname) {
            bail!(
                "the {} is given with database {:?}, which is being migrated; pgferry connects to that database for server-wide work: name another that exists there (postgres, the default) or none in the URI",
                spec.describe(),
                spec.dbname
            );
        }
    }

    let target_server = format!("{}:{}", target.host, target.port);
    if let Some(status) = store.name_taken(&target_server, &req.name)? {
        bail!("migration name {:?} is already taken on target {target_server} (that migration is {status}); pick another name", req.name);
    }
    // Queued, it waits its turn on the target (workers claim one at a time per target).
    if !req.queue
        && let Some(busy) = target_busy(store, &target_server, option)?
    {
        bail!(busy);
    }
    let properties = stored_properties(props, &source, &target, moved.as_ref(), option, mode);
    let migration = store.create(&NewMigration {
        name: &req.name,
        target_server: &target_server,
        source_server: &format!("{}:{}", source.host, source.port),
        source_type: &adapter.description.info.ids[0],
        mode: &format!("{mode:?}"),
        option: &format!("{option:?}"),
        databases: &props.dbs_to_migrate,
        properties: &properties,
        properties_file: req.properties_file.as_deref(),
        queued: req.queue,
    })?;
    if req.queue {
        // A `pgferry worker` claims it; its credentials are the worker's own.
        return Ok(migration);
    }
    let lease = RunnerLease::acquire(store, migration.id, &req.name)?;
    let run = Run { registry, id: migration.id, req: &req, adapter, lease: &lease };
    drive(store, &run, source, target, BTreeMap::new(), observer).await
}

/// Continues a migration whose runner died (kill -9, reboot) or that failed: the databases
/// and tables it finished are kept, the rest is done again. Passwords come from `secrets`
/// (the properties file again) or the environment and ~/.pgpass: the store never held them.
/// Nothing changes in the store until this process holds the migration's lease and has
/// reached both servers with the credentials it found.
pub async fn resume(store: &mut Store, registry: &Registry, name: &str, target: Option<&str>, secrets: Option<Properties>, mut copy: CopyOptions) -> Result<Migration> {
    let observer = copy.observer.take();
    let m = store.find(name, target)?.ok_or_else(|| not_found(store, name))?;
    if m.status == Status::CANCELING {
        bail!("migration {name:?} is being canceled; finish the cancel with `{}`", cancel_command(&m));
    }
    if !m.status.is_active() && m.status != Status::FAILED {
        bail!("migration {name:?} is {}; only one that was interrupted (its runner is gone) or that failed can be resumed", m.status.state);
    }
    let lease = RunnerLease::acquire(store, m.id, name)?;
    let (options, adapter, source, target) = stored_request(registry, &m, secrets, copy).await?;
    check_credentials(&m, &source, &target, "resume").await?;
    let states = resume_states(store, &m)?;
    if m.status == Status::FAILED {
        let failed_step = m.error.as_ref().and_then(|e| e.get("step")).and_then(serde_json::Value::as_str).unwrap_or("");
        let back_to = match failed_step {
            "PerformingPreRequisiteSteps" => Status::CREATED,
            "ValidationInProgress" => Status::VALIDATING,
            _ => Status::MIGRATING,
        };
        store.merge_details(m.id, json!({ "resumedAfter": m.error }))?;
        store.transition(m.id, back_to)?;
    }
    let run = Run { registry, id: m.id, req: &options, adapter, lease: &lease };
    drive(store, &run, source, target, states, observer).await
}

/// The inventory of the servers a properties file names (the source as its adapter turns
/// it, the target as `create` resolves it), as a migration's validation would see it.
pub async fn live_inventory(registry: &Registry, props: &Properties, target: Option<&str>) -> Result<Arc<crate::plugin_host::Inventory>> {
    let adapter = registry.require_adapter(&props.source_type)?;
    let target = target_spec_of(props, target)?;
    let (source, _) = performing_prerequisite_steps::apply_adapter(registry, adapter, source_params(props)?, props.allow_adapter_endpoint_change).await?;
    Ok(performing_prerequisite_steps::run(source, target, &props.dbs_to_migrate, &registry.inventory_settings()).await?.inventory)
}

/// "Test connection" of a wizard: reaches the source a properties body names (through its
/// adapter, with its password) and says what it is: server, version, TLS state and the
/// databases a migration could take, with their sizes (templates left out).
pub async fn source_facts(registry: &Registry, props: &Properties) -> Result<serde_json::Value> {
    let adapter = registry.require_adapter(&props.source_type)?;
    let (source, _) = performing_prerequisite_steps::apply_adapter(registry, adapter, source_params(props)?, props.allow_adapter_endpoint_change).await?;
    let (client, tls) = source.connect(&source.dbname).await?;
    let info = crate::inventory::collect_server(&client, crate::plugin_host::Side::Source, &source.host, source.port, &registry.inventory_settings())
        .await
        .with_context(|| format!("reading what the {} holds", source.describe()))?;
    let provider = &adapter.description.provider_objects.databases;
    let databases: Vec<serde_json::Value> = info
        .databases
        .iter()
        .filter(|d| !d.is_template && !migrating_data::is_provider_object(provider, &d.name))
        .map(|d| json!({"name": d.name, "sizeBytes": d.size_bytes, "allowConnections": d.allow_connections}))
        .collect();
    Ok(json!({
        "server": format!("{}:{}", source.host, source.port),
        "sourceType": adapter.description.info.ids[0],
        "version": info.version,
        "tls": tls,
        "databases": databases,
    }))
}

/// The resume record of a migration. One that does not decode is an error, never "nothing
/// done": a cancel or resume reading it as empty would skip cleanup or redo finished work.
fn resume_states(store: &Store, m: &Migration) -> Result<BTreeMap<String, DatabaseState>> {
    store
        .resume_record(m.id)
        .with_context(|| format!("reading the resume record of migration {:?}", m.name))?
        .into_iter()
        .map(|(db, record)| Ok((db.clone(), DatabaseState::from_record(&db, record)?)))
        .collect()
}

/// The resume record as `show` gives it (`details.copyState`): per database, its stage,
/// the tables done with their digests, and the tables a resume copied again.
pub fn resume_record_json(store: &Store, m: &Migration) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(resume_states(store, m)?)?)
}

/// The replication records as `show` gives them (`details.replication`).
pub fn replication_record_json(store: &Store, m: &Migration) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(store.replication_objects(m.id)?)?)
}

/// The target databases this migration created (recorded once CREATE DATABASE succeeded):
/// the only ones a failure or a cancel may drop.
fn databases_created(store: &Store, m: &Migration) -> Result<Vec<String>> {
    let states = resume_states(store, m)?;
    Ok(m.databases.iter().filter(|db| states.get(*db).is_some_and(|st| st.stage >= Stage::Created)).cloned().collect())
}

/// Reaches both servers with the credentials found, before anything changes: a missing
/// password must never turn a migration that could be resumed or canceled into a dead one.
async fn check_credentials(m: &Migration, source: &ConnSpec, target: &ConnSpec, command: &str) -> Result<()> {
    for spec in [source, target] {
        if let Err(e) = spec.connect(&spec.dbname).await {
            let retry = match command {
                "resume" => resume_command(m),
                _ => cancel_command(m),
            };
            return Err(e.context(format!(
                "migration {:?} was left unchanged: {command} needs to connect to the {} first; give its password with `{retry}`, or set PGFERRY_{}_PASSWORD, PGPASSWORD or ~/.pgpass",
                m.name,
                spec.describe(),
                spec.role.to_string().to_uppercase()
            )));
        }
    }
    Ok(())
}

/// The `resume` command line for `m`, with the properties file it was created from.
pub fn resume_command(m: &Migration) -> String {
    format!("pgferry migration resume --migration-name {}{}", m.name, properties_flag(m))
}

/// The `update --cancel` command line for `m`, with the properties file it was created from.
pub fn cancel_command(m: &Migration) -> String {
    format!("pgferry migration update --migration-name {} --cancel{}", m.name, properties_flag(m))
}

fn properties_flag(m: &Migration) -> String {
    m.properties_file.as_ref().map(|f| format!(" --properties {}", shell_word(&f.display().to_string()))).unwrap_or_default()
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

fn not_found(store: &Store, name: &str) -> anyhow::Error {
    NotFound(format!("no migration named {name:?} in the state store {}", store.describe())).into()
}

/// No migration of that name (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Whether a live runner (this one or another process) holds the migration's lease.
pub fn runner_alive(store: &Store, m: &Migration) -> Result<bool> {
    Ok(store.lease(m.id)?.is_some_and(|l| l.alive()))
}

/// A stored migration's request and connection specs, as `create` had them but for the
/// passwords: those come from `secrets` (the properties file again) or the environment and
/// ~/.pgpass, as the store never held them.
async fn stored_request<'r>(registry: &'r Registry, m: &Migration, secrets: Option<Properties>, copy: CopyOptions) -> Result<(CreateRequest, &'r crate::plugins::AdapterPlugin, ConnSpec, ConnSpec)> {
    let p = &m.properties;
    let text = |k: &str| p.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
    let stored = |connection: &str, server: &str, user: &str| -> Result<ConnParams> {
        match p.get(connection) {
            Some(v) => serde_json::from_value(v.clone()).with_context(|| format!("the stored {connection} of migration {:?} cannot be read", m.name)),
            // Recorded before pgferry stored the whole connection: host, port and user.
            None => {
                let server = text(server).with_context(|| format!("the stored migration {:?} has no {server}", m.name))?;
                Ok(ConnParams { user: text(user), ..parse_endpoint(&server)?.params })
            }
        }
    };
    let properties = Properties {
        source: Endpoint { params: stored("sourceConnection", "sourceServer", "sourceServerUserName")?, spelled: text("sourceDbServerResourceId").unwrap_or_default() },
        source_password: secrets.as_ref().and_then(|s| s.source_password.clone()).or_else(|| role_password("SOURCE")),
        target: Some(Endpoint { params: stored("targetConnection", "targetServer", "targetServerUserName")?, spelled: String::new() }),
        target_user: text("targetServerUserName"),
        target_password: secrets.as_ref().and_then(|s| s.target_password.clone()).or_else(|| role_password("TARGET")),
        dbs_to_migrate: m.databases.clone(),
        overwrite_dbs_in_target: p.get("overwriteDbsInTarget").and_then(serde_json::Value::as_bool).unwrap_or(false),
        set_replica_identity: p.get("setReplicaIdentity").and_then(serde_json::Value::as_bool).unwrap_or(false),
        allow_adapter_endpoint_change: p.get("allowAdapterEndpointChange").and_then(serde_json::Value::as_bool).unwrap_or(false),
        mode: serde_json::from_value(p["migrationMode"].clone()).ok(),
        option: serde_json::from_value(p["migrationOption"].clone()).ok(),
        source_type: m.source_type.clone(),
        ssl_mode: serde_json::from_value(p["sslMode"].clone()).ok(),
        accepted: Default::default(),
        warnings: vec![],
    };
    let options = CreateRequest { name: m.name.clone(), option: properties.option, mode: properties.mode, target: None, properties, properties_file: m.properties_file.clone(), copy, queue: false };
    let adapter = registry.require_adapter(&options.properties.source_type)?;
    let target = target_spec(&options)?;
    let props = &options.properties;
    let (source, _) = performing_prerequisite_steps::apply_adapter(registry, adapter, source_params(props)?, props.allow_adapter_endpoint_change).await?;
    Ok((options, adapter, source, target))
}

/// `PGFERRY_SOURCE_PASSWORD` / `PGFERRY_TARGET_PASSWORD`: one password per server when
/// PGPASSWORD (one for both) does not fit.
pub fn role_password(role: &str) -> Option<crate::properties::Secret> {
    std::env::var(format!("PGFERRY_{role}_PASSWORD")).ok().map(crate::properties::Secret::new)
}

/// How long `update --cancel` waits for a live runner to clean up before saying so.
const CANCEL_WAIT: Duration = Duration::from_secs(120);

/// `update --cancel`. With a live runner: records the cancel (Canceling) and waits for the
/// runner to clean up. With none (killed, or the migration Failed): this process takes the
/// lease and removes what the migration made: slots, publications and replica identities on
/// the source, origins and the databases it created on the target. Canceled only when all
/// of it is gone; otherwise it stays Canceling with the leftovers listed.
pub async fn cancel(store: &mut Store, registry: &Registry, m: &Migration, secrets: Option<Properties>) -> Result<Migration> {
    if !m.status.can_cancel() {
        bail!("migration {:?} is {} already; there is nothing to cancel", m.name, m.status.state);
    }
    if runner_alive(store, m)? {
        store.request_cancel(m.id)?;
        let deadline = std::time::Instant::now() + CANCEL_WAIT;
        loop {
            let current = store.get_by_id(m.id)?;
            if current.status != Status::CANCELING {
                return Ok(current);
            }
            if !runner_alive(store, &current)? {
                // The runner stopped with work left (or died): finish it here.
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("migration {:?} is still Canceling: its runner is cleaning up; follow it with `pgferry migration show --migration-name {}`", m.name, m.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let m = store.get_by_id(m.id)?;
    let created = databases_created(store, &m)?;
    let replicating = waiting_for_cutover_trigger::records(store, m.id)?;
    let work = !created.is_empty() || !replicating.is_empty();
    let servers = if work {
        let copy = CopyOptions { jobs: 1, index_jobs: 1, split_bytes: 0, pg_bin: None, reconnect_timeout: crate::reconnect::DEFAULT_TIMEOUT, observer: None };
        let (_, _, source, target) = stored_request(registry, &m, secrets, copy).await?;
        check_credentials(&m, &source, &target, "cancel").await?;
        Some((source, target))
    } else {
        None
    };
    let _lease = RunnerLease::acquire(store, m.id, &m.name)?;
    store.request_cancel(m.id)?;
    match servers {
        Some((source, target)) => canceled_cleanup(store, m.id, &source, &target).await,
        None => finish_cancel(store, m.id, Vec::new()),
    }
}

/// One run of a recorded migration by this process: what its steps share.
struct Run<'a> {
    registry: &'a Registry,
    id: i64,
    req: &'a CreateRequest,
    adapter: &'a crate::plugins::AdapterPlugin,
    /// Held for the whole run; the store refuses this run's writes once it is lost.
    lease: &'a RunnerLease,
}

/// Runs a recorded migration from its current status to its end: the steps still to do
/// are read from the store (its status and the resume record), so a resumed run picks up
/// where an earlier one stopped.
async fn drive(store: &mut Store, run: &Run<'_>, source: ConnSpec, target: ConnSpec, states: BTreeMap<String, DatabaseState>, observer: Option<Observer>) -> Result<Migration> {
    let Run { registry, id, req, adapter, lease } = *run;
    let props = &req.properties;
    let option = req.option.or(props.option).unwrap_or(MigrationOption::ValidateAndMigrate);
    let mode = req.mode.or(props.mode).unwrap_or(MigrationMode::Offline);
    let prepared = match performing_prerequisite_steps::run(source, target, &props.dbs_to_migrate, &registry.inventory_settings()).await {
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
        if status != Status::VALIDATING && advance(store, id, Status::VALIDATING)?.is_some() {
            return canceled_cleanup(store, id, &prepared.source, &prepared.target).await;
        }
        let services = Arc::new(Services {
            inventory: prepared.inventory.clone(),
            sql: Some(Arc::new(registry.plugin_sql(&prepared.source, &prepared.target))),
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
        // Plugins may take up to their deadlines: a cancel does not wait for them.
        let Some(mut report) = until_canceled(store, id, validation_in_progress::run(registry, adapter, services, &ctx)).await? else {
            return canceled_cleanup(store, id, &prepared.source, &prepared.target).await;
        };
        report.provider_databases(adapter);
        if mode == MigrationMode::Online && props.set_replica_identity {
            report.consent("replica-identity-missing", "SetReplicaIdentity: pgferry gives it one on the source (USING a unique index when one fits, else FULL) and restores it when the migration ends");
        }
        let moved = store.get_by_id(id)?.properties.get("adapterEndpointChange").and_then(|v| serde_json::from_value::<EndpointChange>(v.clone()).ok());
        if let Some(change) = moved {
            report.endpoint_changed(&change);
        }
        store.set_validation(id, &serde_json::to_value(&report)?)?;
        if report.status == CheckState::Failed || option == MigrationOption::Validate {
            let end = if report.status == CheckState::Failed { Status::VALIDATION_FAILED } else { Status::SUCCEEDED };
            if advance(store, id, end)?.is_some() {
                return canceled_cleanup(store, id, &prepared.source, &prepared.target).await;
            }
            return store.get_by_id(id);
        }
    }
    if !validated && advance(store, id, Status::MIGRATING)?.is_some() {
        return canceled_cleanup(store, id, &prepared.source, &prepared.target).await;
    }
    let work_dir = match fresh_work_dir(store, id) {
        Ok(dir) => dir,
        Err(e) => return fail(store, id, "MigratingData", e),
    };
    let progress = Progress::new(observer, states, lease);
    let result = migrate(store, run, &prepared, work_dir.path(), progress, status).await;
    drop(work_dir);
    match result {
        Ok(Some(_)) => canceled_cleanup(store, id, &prepared.source, &prepared.target).await,
        Ok(None) => match advance(store, id, Status::SUCCEEDED)? {
            Some(_) => canceled_cleanup(store, id, &prepared.source, &prepared.target).await,
            None => store.get_by_id(id),
        },
        Err(StepError { step, error: e }) => {
            if lease.lost() || store.check_lease(id).is_err() {
                // Another process runs the migration now: its state and what it made on the
                // servers are not ours to touch.
                return Err(e);
            }
            // An online migration's slots go first: the source must not keep WAL for it.
            // Streaming cannot go on without them, so a resume copies again.
            let m = store.get_by_id(id)?;
            let mut leftovers = waiting_for_cutover_trigger::clean_up(&prepared.source, &prepared.target, &waiting_for_cutover_trigger::records(store, id)?).await;
            if leftovers.is_empty() {
                // Kept otherwise: a cancel tries again from the records.
                waiting_for_cutover_trigger::forget_records(store, id)?;
            }
            // Nothing half-copied may be left looking valid on the target; what could be
            // dropped starts over on resume, what could not (target down) is resumed.
            let created = databases_created(store, &m)?;
            let (dropped, not_dropped) = drop_databases(&prepared.target, &created).await;
            leftovers.extend(not_dropped);
            store.forget_databases(id, &dropped)?;
            store.merge_details(id, json!({ "droppedOnFailure": dropped }))?;
            store.set_leftovers(id, &leftovers)?;
            fail(store, id, step, e)
        }
    }
}

/// A private work dir for this run, recorded so that a resume after a kill removes it;
/// the one an earlier, killed run recorded is removed first.
fn fresh_work_dir(store: &mut Store, id: i64) -> Result<crate::work_dir::WorkDir> {
    use crate::work_dir::{prefix, WorkDir};
    if let Some(stale) = store.get_by_id(id)?.details.get("workDir").and_then(serde_json::Value::as_str)
        && let Err(e) = WorkDir::remove_stale(std::path::Path::new(stale), &prefix(id))
    {
        tracing::warn!("{e:#}");
    }
    let work_dir = WorkDir::create_in_temp(&prefix(id))?;
    store.merge_details(id, json!({ "workDir": work_dir.path() }))?;
    Ok(work_dir)
}

/// An error of the data steps, and the step it happened in.
pub(super) struct StepError {
    step: &'static str,
    error: anyhow::Error,
}

/// Tags an error with its step: `.map_err(at(step))`.
pub(super) fn at(step: &'static str) -> impl FnOnce(anyhow::Error) -> StepError {
    move |error| StepError { step, error }
}

/// MigratingData then CompletingMigration, database by database, each from where the
/// catalog says it got. On error: the step and the error.
/// `from`: the status the run started in (a resumed run may start in CompletingMigration).
async fn migrate(
    store: &mut Store,
    run: &Run<'_>,
    prepared: &performing_prerequisite_steps::Prepared,
    work_dir: &std::path::Path,
    mut progress: Progress,
    from: Status,
) -> Result<Option<Migration>, StepError> {
    let Run { id, req, adapter, .. } = *run;
    let step = "MigratingData";
    let source_major = prepared.inventory.source.version_num / 10000;
    let tools = crate::pg_tools::find(source_major, req.copy.pg_bin.as_deref()).map_err(at(step))?;
    let settings = migrating_data::Settings {
        source: &prepared.source,
        target: &prepared.target,
        inventory: &prepared.inventory,
        provider: &adapter.description.provider_objects,
        overwrite: req.properties.overwrite_dbs_in_target,
        jobs: req.copy.jobs.max(1),
        index_jobs: req.copy.index_jobs.max(1),
        split_bytes: req.copy.split_bytes,
        tools: &tools,
        work_dir: work_dir.to_path_buf(),
        reconnect_timeout: req.copy.reconnect_timeout,
    };
    let roles = migrating_data::create_roles(&settings).await.map_err(at(step))?;
    store.merge_details(id, json!({ "rolesCreated": roles })).map_err(at(step))?;

    let mode = req.mode.or(req.properties.mode).unwrap_or(MigrationMode::Offline);
    if mode == MigrationMode::Online {
        let props = &req.properties;
        let cutover_applied = from == Status::COMPLETING;
        return waiting_for_cutover_trigger::run(store, id, &settings, &props.dbs_to_migrate, props.set_replica_identity, cutover_applied, &mut progress).await;
    }
    let resume = resume_command(&store.get_by_id(id).map_err(at(step))?);
    let mut outages = Outages::new(req.copy.reconnect_timeout, &resume, &prepared.source, &prepared.target);
    let mut copied = Vec::new();
    for db in &req.properties.dbs_to_migrate {
        if progress.states.get(db).is_some_and(|state| state.stage == Stage::Completed) {
            continue;
        }
        match copy_database(store, id, &settings, db, &mut outages, &mut progress).await.map_err(at(step))? {
            Some(database) => copied.push(database),
            None => return canceled_cleanup(store, id, &prepared.source, &prepared.target).await.map(Some).map_err(at(step)),
        }
    }

    if from != Status::COMPLETING
        && advance(store, id, Status::COMPLETING).map_err(at(step))?.is_some() {
            return canceled_cleanup(store, id, &prepared.source, &prepared.target).await.map(Some).map_err(at(step));
        }
    let step = "CompletingMigration";
    let mut verification = Vec::new();
    for mut database in copied {
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let work = unless_silent(&prepared.source, &prepared.target, completing_migration::run_database(&settings, &database, &tx));
            let error = match watched(store, id, work, &mut rx, &mut progress).await {
                Ok(Some(checked)) => {
                    recovered(store, id, &mut outages).map_err(at(step))?;
                    verification.push(checked);
                    progress.record(store, id, migrating_data::Progress::StageReached { database: database.name.clone(), stage: Stage::Completed });
                    break;
                }
                Ok(None) => return canceled_cleanup(store, id, &prepared.source, &prepared.target).await.map(Some).map_err(at(step)),
                Err(e) => e,
            };
            progress.check_lease().map_err(at(step))?;
            ride_out(store, id, &mut outages, error, &format!("completing database {:?}", database.name)).await.map_err(at(step))?;
            end_stale_sessions(&prepared.target, &database.name).await;
            // Its snapshot died with the connection that held it: the copy is checked (and
            // what changed copied again) at a new one, then post-data and verification rerun.
            database = match copy_database(store, id, &settings, &database.name, &mut outages, &mut progress).await.map_err(at(step))? {
                Some(database) => database,
                None => return canceled_cleanup(store, id, &prepared.source, &prepared.target).await.map(Some).map_err(at(step)),
            };
        }
    }
    store.merge_details(id, json!({ "verification": verification })).map_err(at(step))?;
    check_verification(&verification).map_err(at(step))?;
    Ok(None)
}

/// The data step of one database, tried again after each outage from what the catalog
/// says it finished (see `migrating_data::run_database`). `None`: canceled.
async fn copy_database(
    store: &mut Store,
    id: i64,
    settings: &migrating_data::Settings<'_>,
    db: &str,
    outages: &mut Outages<'_>,
    progress: &mut Progress,
) -> Result<Option<migrating_data::CopiedDatabase>> {
    loop {
        let state = progress.states.get(db).cloned().unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let work = unless_silent(settings.source, settings.target, migrating_data::run_database(settings, db, &state, None, &tx));
        let error = match watched(store, id, work, &mut rx, progress).await {
            Ok(copied) => {
                recovered(store, id, outages)?;
                return Ok(copied);
            }
            Err(e) => e,
        };
        progress.check_lease()?;
        ride_out(store, id, outages, error, &format!("copying database {db:?}")).await?;
        end_stale_sessions(settings.target, db).await;
    }
}

/// Ends this runner's sessions in a target database that an outage cut off: a network that
/// black-holed them leaves them open on the server (until its TCP keepalive, hours by
/// default) holding the locks the next attempt needs (a copy's TRUNCATE). Only pgferry's
/// sessions (by application_name) in the database being migrated are ended.
pub(super) async fn end_stale_sessions(target: &ConnSpec, db: &str) {
    let ended = async {
        let (client, _) = target.connect(&target.dbname).await?;
        let rows = client
            .query(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = $2 and pid <> pg_backend_pid()",
                &[&db, &target.application_name],
            )
            .await?;
        anyhow::Ok(rows.len())
    };
    match ended.await {
        Ok(0) => {}
        Ok(n) => tracing::info!("ended {n} session(s) of an earlier attempt in database {db:?} on the {}", target.describe()),
        Err(e) => tracing::debug!("ending the sessions of an earlier attempt in database {db:?} on the {}: {e:#}", target.describe()),
    }
}

/// A step got through: an outage under way is over.
pub(super) fn recovered(store: &mut Store, id: i64, outages: &mut Outages<'_>) -> Result<()> {
    if outages.status().is_some() {
        outages.recovered();
        store.merge_details(id, json!({ "reconnecting": null }))?;
    }
    Ok(())
}

/// After a failed attempt of a repeatable step: when a server was lost, waits (the outage
/// recorded for `show`) and returns to try again; otherwise, or past `--reconnect-timeout`,
/// the error.
pub(super) async fn ride_out(store: &mut Store, id: i64, outages: &mut Outages<'_>, error: anyhow::Error, what: &str) -> Result<()> {
    match outages.next_try(error, what).await {
        Ok(wait) => {
            store.merge_details(id, json!({ "reconnecting": outages.status() }))?;
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Err(e) => {
            store.merge_details(id, json!({ "reconnecting": null }))?;
            Err(e)
        }
    }
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

/// After a cancel: what the migration made on either server is removed (slots,
/// publications, replica identities, origins, the target databases it created), so nothing
/// half-copied is left looking valid. Canceled when all of it is gone; else the migration
/// stays Canceling with the leftovers recorded, and a new cancel tries again.
async fn canceled_cleanup(store: &mut Store, id: i64, source: &ConnSpec, target: &ConnSpec) -> Result<Migration> {
    store.check_lease(id)?;
    let m = store.get_by_id(id)?;
    if m.status == Status::CANCELED {
        return Ok(m);
    }
    let mut leftovers = waiting_for_cutover_trigger::clean_up(source, target, &waiting_for_cutover_trigger::records(store, id)?).await;
    if leftovers.is_empty() {
        waiting_for_cutover_trigger::forget_records(store, id)?;
    }
    let created = databases_created(store, &m)?;
    let (dropped, not_dropped) = drop_databases(target, &created).await;
    leftovers.extend(not_dropped);
    store.forget_databases(id, &dropped)?;
    // The dumps of a runner that was killed.
    if let Some(stale) = m.details.get("workDir").and_then(serde_json::Value::as_str)
        && let Err(e) = crate::work_dir::WorkDir::remove_stale(std::path::Path::new(stale), &crate::work_dir::prefix(id))
    {
        tracing::warn!("{e:#}");
    }
    let mut all_dropped: Vec<String> = m.details.get("droppedOnCancel").and_then(|d| serde_json::from_value(d.clone()).ok()).unwrap_or_default();
    all_dropped.extend(dropped);
    store.merge_details(id, json!({ "droppedOnCancel": all_dropped }))?;
    finish_cancel(store, id, leftovers)
}

/// Records what is left; Canceled when nothing is.
fn finish_cancel(store: &mut Store, id: i64, leftovers: Vec<Leftover>) -> Result<Migration> {
    store.set_leftovers(id, &leftovers)?;
    if leftovers.is_empty() {
        store.transition(id, Status::CANCELED)?;
    }
    store.get_by_id(id)
}

/// Drops what this migration created on the target: the databases dropped, and a leftover
/// for each that could not be.
async fn drop_databases(target: &ConnSpec, names: &[String]) -> (Vec<String>, Vec<Leftover>) {
    if names.is_empty() {
        return (vec![], vec![]);
    }
    let leftover = |name: &String, problem: String| Leftover { server: "target".into(), kind: "database".into(), object: name.clone(), problem };
    let client = match target.connect(&target.dbname).await {
        Ok((client, _)) => client,
        Err(e) => return (vec![], names.iter().map(|n| leftover(n, format!("{e:#}"))).collect()),
    };
    let mut dropped = Vec::new();
    let mut left = Vec::new();
    for name in names {
        let drop = format!("DROP DATABASE IF EXISTS {}", crate::sql_text::quote_ident(name));
        // WITH (FORCE) ends other sessions from PostgreSQL 13 on; older targets get the plain form.
        let result = match client.batch_execute(&format!("{drop} WITH (FORCE)")).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR) => client.batch_execute(&drop).await,
            other => other,
        };
        match result {
            Ok(()) => dropped.push(name.clone()),
            Err(e) => left.push(leftover(name, format!("dropping it on the {}: {}", target.describe(), crate::connect::pg_error(&e)))),
        }
    }
    (dropped, left)
}

/// Runs `work` until it ends, or until the migration is being canceled (looked at every
/// second): `None` then, and the work is dropped (a plugin call in it stops at its next
/// epoch tick).
async fn until_canceled<T>(store: &Store, id: i64, work: impl std::future::Future<Output = T>) -> Result<Option<T>> {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            done = &mut work => return Ok(Some(done)),
            _ = tick.tick() => {
                if store.get_by_id(id)?.status == Status::CANCELING {
                    return Ok(None);
                }
            }
        }
    }
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
            if current.status == Status::CANCELING { Ok(Some(current)) } else { Err(e) }
        }
        Err(e) => Err(e),
    }
}

/// Ends the migration Failed with the error and the step. When a cancel came first, the
/// cancel stands: the cleanup the failure path did is its cleanup.
fn fail(store: &mut Store, id: i64, step: &str, error: anyhow::Error) -> Result<Migration> {
    tracing::debug!("{step}: {error:#}");
    let error = json!({ "step": step, "message": format!("{error:#}") });
    let failed = store.transition_with_error(id, Status::FAILED, &error);
    match settle(store, id, failed)? {
        Some(_canceling) => {
            let leftovers = store.leftovers(id)?;
            finish_cancel(store, id, leftovers)
        }
        None => store.get_by_id(id),
    }
}
