//! The routes of `/api/v1/`, their checks and their errors (problem+json, with the CLI's
//! messages). `openapi.rs` documents exactly these routes (a test holds them together).

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{token, App};
use crate::lifecycle::Status;
use crate::migration::{self, CutoverRefused};
use crate::properties::Properties;
use crate::report;
use crate::store::{Migration, Store};

type Shared = Arc<App>;

pub(super) fn router(app: Shared) -> Router {
    Router::new()
        .route("/api/v1/migrations", get(list))
        .route("/api/v1/migrations/{name}", get(show).put(create).patch(update))
        .route("/api/v1/migrations/{name}/resume", post(resume))
        .route("/api/v1/migrations/{name}/events", get(events))
        .route("/api/v1/check-name-availability", post(check_name))
        .route("/api/v1/source/test-connection", post(test_source))
        .route("/api/v1/source-types", get(source_types))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
        // The console's assets hold no data: merged after the token layer, which they skip.
        .merge(super::console::router())
}

/// An error as RFC 9457 problem details; `detail` is the message the CLI would print.
pub(super) struct Problem {
    status: StatusCode,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: impl std::fmt::Display) -> Problem {
        Problem { status, detail: detail.to_string() }
    }
    fn bad_request(e: impl std::fmt::Display) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, e)
    }
    fn conflict(e: impl std::fmt::Display) -> Problem {
        Problem::new(StatusCode::CONFLICT, e)
    }
}

/// Anything unexpected (the store, the runner's process): a server error, with the chain.
impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Problem {
        if e.is::<migration::NotFound>() {
            return Problem::new(StatusCode::NOT_FOUND, e);
        }
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

type Answer = Result<Response, Problem>;

/// Every route needs the token: `Authorization: Bearer <token>`, or `?token=<token>`.
async fn require_token(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or_else(|| request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string))));
    let stored = match app.store().and_then(|s| s.api_token_hash()) {
        Ok(stored) => stored,
        Err(e) => return Problem::from(e).into_response(),
    };
    match (stored, given) {
        (Some(stored), Some(given)) if token::matches(&stored, &given) => next.run(request).await,
        _ => {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "this needs the access token: `Authorization: Bearer <token>`, the token `pgferry serve` printed when it made it (`pgferry serve rotate-token` makes a new one)",
            )
            .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header value"));
            response
        }
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such route; the API is described at /api/v1/openapi.json")
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

#[derive(Deserialize)]
struct ListQuery {
    filter: Option<String>,
}

async fn list(State(app): State<Shared>, Query(q): Query<ListQuery>) -> Answer {
    let active = match q.filter.as_deref() {
        None | Some("All") => false,
        Some("Active") => true,
        Some(other) => return Err(Problem::bad_request(format!("filter {other:?} is not known: use All or Active"))),
    };
    let store = app.store()?;
    Ok(Json(report::list_json(&store.list(active)?)).into_response())
}

#[derive(Deserialize)]
struct TargetQuery {
    target: Option<String>,
}

fn find(store: &Store, name: &str, target: Option<&str>) -> Result<Migration, Problem> {
    match store.find(name, target).map_err(Problem::bad_request)? {
        Some(m) => Ok(m),
        None => Err(Problem::new(StatusCode::NOT_FOUND, format!("no migration named {name:?} in the state store {}", store.describe()))),
    }
}

async fn show(State(app): State<Shared>, Path(name): Path<String>, Query(q): Query<TargetQuery>) -> Answer {
    let store = app.store()?;
    let m = find(&store, &name, q.target.as_deref())?;
    Ok(Json(report::show_document_of(&store, &m)?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateQuery {
    target: Option<String>,
    migration_option: Option<String>,
    migration_mode: Option<String>,
}

/// `PUT /migrations/{name}` with the properties body the CLI reads from `--properties`:
/// checked here (name, body, name taken, target busy), then run by a runner process that
/// gets the body (passwords included) on its standard input.
async fn create(State(app): State<Shared>, Path(name): Path<String>, Query(q): Query<CreateQuery>, body: Bytes) -> Answer {
    migration::validate_name(&name).map_err(Problem::bad_request)?;
    let text = std::str::from_utf8(&body).map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
    let properties = Properties::parse(text).map_err(|e| Problem::bad_request(format!("the body: {e:#}")))?;
    let option = q.migration_option.as_deref().map(|o| parse_enum::<crate::properties::MigrationOption>("migrationOption", o)).transpose()?;
    let store = app.store()?;
    let target_server = migration::target_server(&properties, q.target.as_deref()).map_err(Problem::bad_request)?;
    if let Some(status) = store.name_taken(&target_server, &name)? {
        return Err(Problem::conflict(format!("migration name {name:?} is already taken on target {target_server} (that migration is {status}); pick another name")));
    }
    let option = option.or(properties.option).unwrap_or(crate::properties::MigrationOption::ValidateAndMigrate);
    // With a shared store it is queued and waits its turn on the target.
    if !app.store.is_shared()
        && let Some(busy) = migration::target_busy(&store, &target_server, option)?
    {
        return Err(Problem::conflict(busy));
    }
    let mut args = runner_args(&app, &["migration", "create", "--migration-name", &name, "--properties", "-", "--output", "json"]);
    for (flag, value) in [("--target", &q.target), ("--migration-option", &q.migration_option), ("--migration-mode", &q.migration_mode)] {
        if let Some(value) = value {
            args.extend([OsString::from(flag), OsString::from(value)]);
        }
    }
    if app.store.is_shared() {
        // A worker runs it: this server's runners would be one host's.
        args.push(OsString::from("--queue"));
    }
    drop(store);
    let launch = crate::detached::Launch { exe: &app.exe, state_dir: &app.state_dir, store: &app.store, name: &name, args, stdin: Some(body.to_vec()), env: vec![] };
    started(&app, &name, q.target.as_deref(), launch, StatusCode::CREATED).await
}

fn parse_enum<T: clap::ValueEnum>(key: &str, value: &str) -> Result<T, Problem> {
    T::from_str(value, false).map_err(|_| {
        let known: Vec<String> = T::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|v| v.get_name().to_string()).collect();
        Problem::bad_request(format!("{key} {value:?} is not known: use one of {}", known.join(", ")))
    })
}

/// The runner's arguments: the same state directory and plugin configuration as this server.
fn runner_args(app: &App, rest: &[&str]) -> Vec<OsString> {
    let mut args = vec![OsString::from("--state-dir"), app.state_dir.clone().into_os_string()];
    if let Some(plugins) = &app.plugins {
        args.extend([OsString::from("--plugins"), plugins.clone().into_os_string()]);
    }
    args.extend(rest.iter().map(OsString::from));
    args
}

/// Starts a runner and answers once it runs the migration (`status` and the migration), or
/// with what it said when it refused (400).
async fn started(app: &App, name: &str, target: Option<&str>, launch: crate::detached::Launch<'_>, status: StatusCode) -> Answer {
    let mut runner = crate::detached::start(launch)?;
    let outcome = crate::detached::wait_started(&app.store, name, target, &mut runner).await;
    runner.reap_in_background();
    let outcome = outcome?;
    let store = app.store()?;
    match outcome {
        crate::detached::Started::Running(m) => Ok((status, Json(report::show_document_of(&store, &m)?)).into_response()),
        crate::detached::Started::Ended { success: true, .. } => {
            // Done before it could be seen running (a quick Validate): its end state.
            let m = find(&store, name, target)?;
            Ok((status, Json(report::show_document_of(&store, &m)?)).into_response())
        }
        crate::detached::Started::Ended { success: false, output } => Err(Problem::bad_request(crate::detached::error_text(&output))),
    }
}

/// The passwords a body may carry (`SecretParameters.AdminCredentials`, as in `create`):
/// handed to a runner in its environment, never stored.
fn secrets_env(body: &Value) -> Vec<(&'static str, String)> {
    let creds = body.pointer("/properties/SecretParameters/AdminCredentials").or_else(|| body.pointer("/SecretParameters/AdminCredentials"));
    let mut env = Vec::new();
    for (key, var) in [("SourceServerPassword", "PGFERRY_SOURCE_PASSWORD"), ("TargetServerPassword", "PGFERRY_TARGET_PASSWORD")] {
        if let Some(password) = creds.and_then(|c| c.get(key)).and_then(Value::as_str) {
            env.push((var, password.to_string()));
        }
    }
    env
}

/// `"True"` / `true`, as the cloud service's update body spells its switches.
fn switch(body: &Value, key: &str) -> bool {
    match body.pointer(&format!("/properties/{key}")).or_else(|| body.get(key)) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn json_body(body: &Bytes) -> Result<Value, Problem> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))
}

/// `PATCH /migrations/{name}`: `{"properties": {"triggerCutover": "True"}}` (with
/// `"readOnlySource"`) or `{"properties": {"cancel": "True"}}`, as the cloud service's update.
async fn update(State(app): State<Shared>, Path(name): Path<String>, Query(q): Query<TargetQuery>, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let mut store = app.store()?;
    let m = find(&store, &name, q.target.as_deref())?;
    match (switch(&body, "triggerCutover"), switch(&body, "cancel")) {
        (true, true) => Err(Problem::bad_request("ask for either triggerCutover or cancel, not both")),
        (false, false) => Err(Problem::bad_request("the body asks for nothing: send {\"properties\": {\"triggerCutover\": \"True\"}} or {\"properties\": {\"cancel\": \"True\"}}")),
        (true, false) => {
            migration::request_cutover(&mut store, &m, switch(&body, "readOnlySource")).map_err(|e| match e.downcast_ref::<CutoverRefused>() {
                Some(_) => Problem::conflict(e),
                None => Problem::from(e),
            })?;
            Ok((StatusCode::ACCEPTED, Json(report::show_document_of(&store, &store.get_by_id(m.id)?)?)).into_response())
        }
        (false, true) => {
            if !m.status.can_cancel() {
                return Err(Problem::conflict(format!("migration {name:?} is {} already; there is nothing to cancel", m.status.state)));
            }
            if migration::runner_alive(&store, &m)? {
                // Its runner sees the request within a second and cleans up.
                store.request_cancel(m.id)?;
                return Ok((StatusCode::ACCEPTED, Json(report::show_document_of(&store, &store.get_by_id(m.id)?)?)).into_response());
            }
            // No runner: one is started to clean up, with the passwords of the body.
            let mut args = runner_args(&app, &["migration", "update", "--migration-name", &name, "--cancel"]);
            if let Some(target) = &q.target {
                args.extend([OsString::from("--target"), OsString::from(target)]);
            }
            let launch = crate::detached::Launch { exe: &app.exe, state_dir: &app.state_dir, store: &app.store, name: &name, args, stdin: None, env: secrets_env(&body) };
            let mut runner = crate::detached::start(launch)?;
            // A cleanup takes seconds: answer when it is under way (Canceling) or refused.
            let answer: Answer = loop {
                let current = match store.get_by_id(m.id) {
                    Ok(current) => current,
                    Err(e) => break Err(e.into()),
                };
                if current.status == Status::CANCELING || current.status == Status::CANCELED {
                    break accepted(&store, &current);
                }
                match runner.child.try_wait() {
                    Ok(Some(exit)) => {
                        let output = std::fs::read_to_string(&runner.log).unwrap_or_default();
                        break match store.get_by_id(m.id) {
                            Ok(current) if exit.success() || current.status != m.status => accepted(&store, &current),
                            Ok(_) => Err(Problem::conflict(crate::detached::error_text(&output))),
                            Err(e) => Err(e.into()),
                        };
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => break Err(anyhow::Error::from(e).into()),
                }
            };
            runner.reap_in_background();
            answer
        }
    }
}

/// 202 with the migration's document.
fn accepted(store: &Store, m: &Migration) -> Answer {
    Ok((StatusCode::ACCEPTED, Json(report::show_document_of(store, m)?)).into_response())
}

/// `POST /migrations/{name}/resume`, with the passwords in the body when the environment
/// of this server has none.
async fn resume(State(app): State<Shared>, Path(name): Path<String>, Query(q): Query<TargetQuery>, body: Bytes) -> Answer {
    let body = json_body(&body)?;
    let store = app.store()?;
    let m = find(&store, &name, q.target.as_deref())?;
    if migration::runner_alive(&store, &m)? {
        return Err(Problem::conflict(format!("migration {name:?} has a live runner already; follow it with GET /api/v1/migrations/{name}")));
    }
    let mut args = runner_args(&app, &["migration", "resume", "--migration-name", &name, "--output", "json"]);
    if let Some(target) = &q.target {
        args.extend([OsString::from("--target"), OsString::from(target)]);
    }
    drop(store);
    let launch = crate::detached::Launch { exe: &app.exe, state_dir: &app.state_dir, store: &app.store, name: &name, args, stdin: None, env: secrets_env(&body) };
    started(&app, &name, q.target.as_deref(), launch, StatusCode::ACCEPTED).await.map_err(|p| if p.status == StatusCode::BAD_REQUEST { Problem::conflict(p.detail) } else { p })
}

/// `POST /source/test-connection` with a properties body (the source part is enough, its
/// password under `SecretParameters`): the source's version, TLS state and databases with
/// their sizes, for a wizard; 400 with the connection's error when it cannot be reached.
async fn test_source(State(app): State<Shared>, body: Bytes) -> Answer {
    let text = std::str::from_utf8(&body).map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
    let properties = Properties::parse(text).map_err(|e| Problem::bad_request(format!("the body: {e:#}")))?;
    let facts = migration::source_facts(app.registry().await?, &properties).await.map_err(|e| Problem::bad_request(format!("{e:#}")))?;
    Ok(Json(facts).into_response())
}

/// `GET /source-types`: the source types the loaded adapters serve, for the wizard.
async fn source_types(State(app): State<Shared>) -> Answer {
    let registry = app.registry().await?;
    let types: Vec<Value> = registry
        .adapters
        .iter()
        .map(|a| json!({ "id": a.description.info.ids[0], "ids": a.description.info.ids, "displayName": a.description.info.display_name, "plugin": a.plugin.name }))
        .collect();
    Ok(Json(json!({ "sourceTypes": types })).into_response())
}

#[derive(Deserialize)]
struct NameCheck {
    name: String,
    target: String,
}

/// `POST /check-name-availability` `{"name", "target"}`, as the cloud service's.
async fn check_name(State(app): State<Shared>, body: Bytes) -> Answer {
    let check: NameCheck = serde_json::from_slice(&body).map_err(|e| Problem::bad_request(format!("the body must be {{\"name\": …, \"target\": \"host:port\"}}: {e}")))?;
    let store = app.store()?;
    let availability = migration::name_availability(&store, &check.name, &check.target).map_err(Problem::bad_request)?;
    Ok(Json(availability.json()).into_response())
}

fn state_event(m: &Migration) -> Event {
    let data = json!({"name": m.name, "state": m.status.state, "substate": m.status.substate, "at": chrono::Utc::now().to_rfc3339()});
    Event::default().event("state").data(data.to_string())
}

/// `GET /migrations/{name}/events`: server-sent events, `state` on each change of state or
/// substate and `progress` when the counters move (the migration's summary, as `list` has
/// it), ending after the end state.
async fn events(State(app): State<Shared>, Path(name): Path<String>, Query(q): Query<TargetQuery>) -> Answer {
    let store = app.store()?;
    let m = find(&store, &name, q.target.as_deref())?;
    struct Follow {
        store: Store,
        id: i64,
        last_status: Option<Status>,
        last_progress: Option<Value>,
        ended: bool,
    }
    let start = Follow { store, id: m.id, last_status: None, last_progress: None, ended: false };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        if f.ended {
            return None;
        }
        loop {
            let m = match f.store.get_by_id(f.id) {
                Ok(m) => m,
                Err(e) => {
                    f.ended = true;
                    return Some((Ok::<_, std::convert::Infallible>(Event::default().event("error").data(format!("{e:#}"))), f));
                }
            };
            let changed = f.last_status != Some(m.status);
            let ending = !m.status.is_active() && m.status != Status::CANCELING;
            // The last counters go out before the end state that closes the stream: a
            // migration quicker than one poll still shows what it copied.
            if changed && !ending {
                f.last_status = Some(m.status);
                return Some((Ok(state_event(&m)), f));
            }
            let progress = f.store.progress_details(f.id).ok().flatten();
            if progress.is_some() && progress != f.last_progress {
                f.last_progress = progress.clone();
                let data = json!({"name": m.name, "progress": progress});
                return Some((Ok(Event::default().event("progress").data(data.to_string())), f));
            }
            if changed {
                f.last_status = Some(m.status);
                f.ended = true;
                return Some((Ok(state_event(&m)), f));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
