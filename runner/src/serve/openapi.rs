//! The OpenAPI 3.1 document of `/api/v1/`, served at `/api/v1/openapi.json`. Written by hand
//! beside the router; [`OPERATIONS`] is the list both are checked against (a unit test here
//! and the API tests, which call every documented operation and find none unrouted).

use serde_json::{json, Value};

/// Every operation: method, path (OpenAPI's `{param}` form, as axum's), summary.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("get", "/api/v1/migrations", "List migrations, newest first (filter=All|Active)"),
    ("get", "/api/v1/migrations/{name}", "Get one migration: state, validation, progress, runner, leftovers"),
    ("put", "/api/v1/migrations/{name}", "Create a migration from the properties body the CLI takes; a runner process runs it"),
    ("patch", "/api/v1/migrations/{name}", "Update a migration: {\"properties\": {\"triggerCutover\": \"True\"}} or {\"properties\": {\"cancel\": \"True\"}}"),
    ("post", "/api/v1/migrations/{name}/resume", "Resume a migration whose runner is gone or that failed"),
    ("get", "/api/v1/migrations/{name}/events", "Server-sent events: `state` on each state change, `progress` as counters move"),
    ("post", "/api/v1/check-name-availability", "Whether a migration name is free on a target server"),
    ("post", "/api/v1/source/test-connection", "Reach the source a properties body names: its version, TLS state and databases with their sizes"),
    ("get", "/api/v1/source-types", "The source types the loaded source-adapter plugins declare: id, aliases, display name"),
    ("get", "/api/v1/openapi.json", "This document"),
];

fn problem() -> Value {
    json!({"description": "An error (RFC 9457 problem details; `detail` says what was wrong and what to do)",
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn operation(method: &str, path: &str, summary: &str) -> Value {
    let mut parameters = Vec::new();
    if path.contains("{name}") {
        parameters.push(json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"}}));
        parameters.push(json!({"name": "target", "in": "query", "required": false, "description": "Target server (host:port) when several targets have a migration of that name", "schema": {"type": "string"}}));
    }
    if path == "/api/v1/migrations" {
        parameters.push(json!({"name": "filter", "in": "query", "schema": {"type": "string", "enum": ["All", "Active"]}}));
    }
    if method == "put" {
        for (name, values) in [("migrationOption", json!(["Validate", "Migrate", "ValidateAndMigrate"])), ("migrationMode", json!(["Offline", "Online"]))] {
            parameters.push(json!({"name": name, "in": "query", "schema": {"type": "string", "enum": values}}));
        }
    }
    let ok = match (method, path) {
        ("put", _) => ("201", "Recorded and running (or ended already, for a quick validation)"),
        ("patch", _) | ("post", "/api/v1/migrations/{name}/resume") => ("202", "Accepted: the runner carries it out; follow it with GET or the events"),
        (_, "/api/v1/migrations/{name}/events") => ("200", "text/event-stream"),
        _ => ("200", "OK"),
    };
    let mut responses = json!({ ok.0: {"description": ok.1}, "401": problem(), "404": problem() });
    if method != "get" {
        responses["400"] = problem();
        responses["409"] = problem();
    }
    let mut op = json!({"summary": summary, "operationId": format!("{method}:{path}"), "parameters": parameters, "responses": responses});
    if ["put", "patch", "post"].contains(&method) {
        op["requestBody"] = json!({"required": method != "post", "content": {"application/json": {"schema": {"type": "object"}}}});
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in OPERATIONS {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation(method, path, summary);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "pgferry", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Migrations as the cloud service's migrations resource, run by pgferry runners on this host. Every request needs the access token."},
        "servers": [{"url": "/"}],
        "security": [{"token": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_in_the_document_once() {
        let doc = document();
        let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, OPERATIONS.len());
        for (method, path, _) in OPERATIONS {
            assert!(doc["paths"][path][method]["responses"]["401"].is_object(), "{method} {path} documents the token");
        }
    }
}
