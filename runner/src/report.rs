//! What users read: the `show` document (JSON, stable) and its table rendering, the `list`
//! grid, and plugin descriptions.

use chrono::{DateTime, Utc};
use comfy_table::{presets::NOTHING, Table};
use serde_json::{json, Value};

use crate::migration::validation_in_progress::{CheckReport, LevelReport, ValidationReport};
use crate::store::{Lease, Leftover, Migration};
use crate::terminal::printable;

/// What `show` says about who runs the migration and what a cancel left.
pub struct Runner {
    pub lease: Option<Lease>,
    pub leftovers: Vec<Leftover>,
    /// The commands that go on from here, as they work when typed.
    pub resume: String,
    pub cancel: String,
}

impl Runner {
    fn alive(&self) -> bool {
        self.lease.as_ref().is_some_and(Lease::alive)
    }

    /// The command to run next when the migration has not ended but no runner works on it.
    fn next(&self, m: &Migration) -> Option<&str> {
        if !m.status.is_active() && m.status != crate::lifecycle::Status::FAILED {
            return None;
        }
        if self.alive() || m.queued_at.is_some() {
            return None;
        }
        Some(if m.status == crate::lifecycle::Status::CANCELING { &self.cancel } else { &self.resume })
    }
}

/// What `list --output json` gives per migration, and `show` starts with.
fn summary(m: &Migration) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "name": m.name,
        "state": m.status.state,
        "substate": m.status.substate,
        "migrationMode": m.mode,
        "migrationOption": m.option,
        "sourceServer": m.source_server,
        "sourceType": m.source_type,
        "targetServer": m.target_server,
        "dbsToMigrate": m.databases,
        "startedOn": m.created_at,
        "endedOn": m.ended_at,
        "durationSeconds": duration(m).num_milliseconds() as f64 / 1000.0,
    }) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The `show --output json` document.
/// The migration as `show` gives it: the catalog's rows (resume record, replication objects,
/// counters) in its details, and who runs it.
fn shown(store: &crate::store::Store, m: &Migration) -> anyhow::Result<(Migration, Runner)> {
    let mut m = m.clone();
    m.details["copyState"] = crate::migration::resume_record_json(store, &m)?;
    m.details["replication"] = crate::migration::replication_record_json(store, &m)?;
    // The counters live in the store's catalog; `show` gives them where they always were.
    if let Some(mut progress) = store.progress_details(m.id)? {
        if m.status == crate::lifecycle::Status::MIGRATING
            && let Some(since) = store.transitions(m.id)?.iter().rev().find(|(_, s)| *s == crate::lifecycle::Status::MIGRATING).map(|(at, _)| *at)
        {
            add_eta(&mut progress, (Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0);
        }
        m.details["progress"] = progress;
    }
    if let Some(replication) = store.replication_progress_details(m.id)? {
        m.details["replicationProgress"] = replication;
    }
    let runner = Runner { lease: store.lease(m.id)?, leftovers: store.leftovers(m.id)?, resume: crate::migration::resume_command(&m), cancel: crate::migration::cancel_command(&m) };
    Ok((m, runner))
}

/// `etaSeconds` per database still copying (and for all), from the rate of its bytes since
/// the copy started: `elapsed` × what is left / what is done. None before the first bytes.
fn add_eta(progress: &mut Value, elapsed: f64) {
    let Some(dbs) = progress.get_mut("databases").and_then(Value::as_object_mut) else { return };
    let eta = |copied: u64, total: u64| (copied > 0 && total > copied).then(|| (elapsed * (total - copied) as f64 / copied as f64).round());
    let (mut copied, mut total) = (0, 0);
    for p in dbs.values_mut() {
        let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (c, t) = (n("bytesCopied"), n("bytesTotal"));
        copied += c;
        total += t.max(c);
        if let Some(eta) = eta(c, t) {
            p["etaSeconds"] = json!(eta);
        }
    }
    if let Some(eta) = eta(copied, total) {
        progress["etaSeconds"] = json!(eta);
    }
}

/// `show --output json` (and the API's migration document).
pub fn show_document_of(store: &crate::store::Store, m: &Migration) -> anyhow::Result<Value> {
    let (m, runner) = shown(store, m)?;
    Ok(show_document(&m, &store.transitions(m.id)?, &runner))
}

/// `show` as a table.
pub fn show_text_of(store: &crate::store::Store, m: &Migration) -> anyhow::Result<String> {
    let (m, runner) = shown(store, m)?;
    Ok(show_text(&m, &runner))
}

pub fn show_document(m: &Migration, transitions: &[(DateTime<Utc>, crate::lifecycle::Status)], runner: &Runner) -> Value {
    let mut doc = summary(m);
    doc.extend([
        (
            "runner".to_string(),
            json!({
                "alive": runner.alive(),
                "pid": runner.lease.as_ref().map(|l| l.pid),
                "host": runner.lease.as_ref().map(|l| l.host.clone()),
                "leaseExpiresAt": runner.lease.as_ref().map(|l| l.expires_at),
                "queuedAt": m.queued_at,
            }),
        ),
        ("leftovers".to_string(), json!(runner.leftovers)),
        ("next".to_string(), json!(runner.next(m))),
        ("properties".to_string(), m.properties.clone()),
        ("details".to_string(), m.details.clone()),
        ("validation".to_string(), m.validation.clone().unwrap_or(Value::Null)),
        ("error".to_string(), m.error.clone().unwrap_or(Value::Null)),
        (
            "transitions".to_string(),
            transitions.iter().map(|(at, s)| json!({"at": at, "state": s.state, "substate": s.substate})).collect(),
        ),
    ]);
    Value::Object(doc)
}

fn duration(m: &Migration) -> chrono::Duration {
    m.ended_at.unwrap_or_else(Utc::now) - m.created_at
}

fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{}.{:01}s", s, (d.num_milliseconds().max(0) % 1000) / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The `show` (and `create`) table rendering.
pub fn show_text(m: &Migration, runner: &Runner) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<15} {v}\n"));
    line(&mut out, "Migration", &m.name);
    line(&mut out, "Status", &format!("{} ({})", m.status.state, m.status.substate));
    if m.status.is_active() {
        let who = match &runner.lease {
            Some(l) if runner.alive() => format!("process {} on {}", l.pid, l.host),
            _ if m.queued_at.is_some() => "queued: waiting for a pgferry worker".to_string(),
            _ => "not alive".to_string(),
        };
        line(&mut out, "Runner", &who);
    }
    for l in &runner.leftovers {
        line(&mut out, "Leftover", &format!("{} {} on the {}: {}", l.kind, l.object, l.server, l.problem));
    }
    if let Some(next) = runner.next(m) {
        line(&mut out, "Next", next);
    }
    line(&mut out, "Option / mode", &format!("{} / {}", m.option, m.mode));
    let tls = |key: &str| m.details.get(key).and_then(Value::as_str).map(|t| format!(", TLS {t}")).unwrap_or_default();
    let version = |key: &str| m.details.get(key).and_then(Value::as_str).map(|v| format!(", PostgreSQL {}", v.split_whitespace().next().unwrap_or(v))).unwrap_or_default();
    line(&mut out, "Source", &format!("{} ({}{}{})", m.source_server, m.source_type, version("sourceVersion"), tls("sourceTls")));
    line(&mut out, "Target", &format!("{}{}{}", m.target_server, version("targetVersion"), tls("targetTls")));
    line(&mut out, "Databases", &m.databases.join(", "));
    line(&mut out, "Duration", &human_duration(duration(m)));
    if let Some(notes) = m.properties.get("notes").and_then(Value::as_array) {
        for note in notes.iter().filter_map(Value::as_str) {
            line(&mut out, "Note", note);
        }
    }
    if let Some(error) = &m.error {
        let step = error.get("step").and_then(Value::as_str).unwrap_or("?");
        let message = error.get("message").and_then(Value::as_str).unwrap_or("?");
        line(&mut out, "Error", &format!("in {step}: {message}"));
    }
    if let Some(r) = m.details.get("reconnecting").filter(|r| r.is_object()) {
        line(&mut out, "Outage", &reconnecting_text(r));
    }
    if let Some(dbs) = m.details.pointer("/progress/databases").and_then(Value::as_object) {
        for (name, p) in dbs {
            let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            let errored: Vec<&str> = p.get("erroredTables").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let errored = if errored.is_empty() { String::new() } else { format!(", {} errored ({})", errored.len(), errored.join(", ")) };
            line(
                &mut out,
                "Copied",
                &format!("{name}: {}/{} tables, {} rows, {} bytes{errored}{}", n("tablesDone"), n("tablesTotal"), n("rowsCopied"), n("bytesCopied"),
                    p.get("etaSeconds").and_then(Value::as_f64).map(|s| format!(", about {} left", human_duration(chrono::Duration::seconds(s as i64)))).unwrap_or_default()),
            );
        }
    }
    if let Some(dbs) = m.details.get("replicationProgress").and_then(Value::as_object) {
        for (name, r) in dbs {
            let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
            let pending = r.get("walBytesPending").and_then(Value::as_i64).map(|b| format!(", {b} WAL bytes pending")).unwrap_or_default();
            let reconnecting = r.get("reconnecting").filter(|v| v.is_object()).map(|c| format!("; {}", reconnecting_text(c))).unwrap_or_default();
            line(
                &mut out,
                "Replicating",
                &format!(
                    "{name}: {} inserts, {} updates, {} deletes applied ({} transactions), latency {:.1}s{pending}, applied up to {}{reconnecting}",
                    n("inserts"),
                    n("updates"),
                    n("deletes"),
                    n("transactions"),
                    r.get("latencySeconds").and_then(Value::as_f64).unwrap_or(0.0),
                    r.get("appliedLsn").and_then(Value::as_str).unwrap_or("?"),
                ),
            );
        }
    }
    if let Some(c) = m.details.get("cutover") {
        let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let fences: Vec<String> = c.get("fenceLsn").and_then(Value::as_object).map(|f| f.iter().map(|(db, lsn)| format!("{db} at {}", lsn.as_str().unwrap_or("?"))).collect()).unwrap_or_default();
        line(&mut out, "Cutover", &format!("requested {}{}", text("requestedAt"), if c.get("readOnlySource").and_then(Value::as_bool) == Some(true) { ", source made read-only" } else { "" }));
        if !fences.is_empty() {
            line(&mut out, "  fence", &fences.join(", "));
        }
        if c.get("fenceAppliedAt").is_some() {
            line(&mut out, "  applied", &text("fenceAppliedAt"));
        }
        if let Some(n) = c.get("tablesVerified").and_then(Value::as_u64) {
            line(&mut out, "  verified", &format!("{n} tables, {} sequences set, completed {}", c.get("sequencesSet").and_then(Value::as_u64).unwrap_or(0), text("completedAt")));
        }
    }
    if let Some(checks) = m.details.get("verification").and_then(Value::as_array) {
        for v in checks {
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            let mismatches = v.get("mismatches").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            line(
                &mut out,
                "Verified",
                &format!(
                    "{}: {} tables (row counts and checksums), {} mismatches, {} sequences set, {} large objects",
                    v.get("database").and_then(Value::as_str).unwrap_or("?"),
                    n("tablesVerified"),
                    mismatches,
                    n("sequencesSet"),
                    n("largeObjects")
                ),
            );
            if n("tablesRecopied") > 0 {
                let names: Vec<&str> = v.get("recopiedTables").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                line(&mut out, "  re-copied", &format!("{} tables changed since an earlier run copied them: {}", n("tablesRecopied"), names.join(", ")));
            }
        }
    }
    if let Some(v) = &m.validation {
        match serde_json::from_value::<ValidationReport>(v.clone()) {
            Ok(report) => out.push_str(&validation_text(&report)),
            Err(e) => line(&mut out, "Validation", &format!("unreadable ({e})")),
        }
    }
    out
}

/// An outage under way: `{"server", "since", "attempts", "lastError"}`.
fn reconnecting_text(c: &Value) -> String {
    format!(
        "RECONNECTING to the {} since {} ({} attempts; last error: {})",
        c.get("server").and_then(Value::as_str).unwrap_or("?"),
        c.get("since").and_then(Value::as_str).unwrap_or("?"),
        c.get("attempts").and_then(Value::as_u64).unwrap_or(0),
        c.get("lastError").and_then(Value::as_str).unwrap_or("?")
    )
}

pub fn validation_text(report: &ValidationReport) -> String {
    let mut out = format!("\nValidation: {:?}\n", report.status);
    out.push_str(&level_text("Instance", &report.server_level));
    for db in &report.db_level {
        out.push_str(&level_text(&format!("Database {}", db.database_name), &db.result));
    }
    out
}

fn level_text(title: &str, level: &LevelReport) -> String {
    let mut out = format!("\n{title}: {:?}\n", level.state);
    for check in &level.checks {
        out.push_str(&check_text(check));
    }
    out
}

fn check_text(check: &CheckReport) -> String {
    use crate::migration::validation_in_progress::CheckState::*;
    let mark = match check.state {
        Succeeded => "ok  ",
        Warning => "WARN",
        Failed => "FAIL",
    };
    // Ids, titles and findings may come from a plugin: shown, never obeyed by the terminal.
    let line = |s: &str| printable(s, false);
    let block = |s: &str, indent: &str| printable(s, true).replace('\n', &format!("\n{indent}"));
    // Named after the plugin that ran it: two plugins may use the same ids.
    let mut out = format!("  {mark} {:<48} {}\n", line(&format!("{}/{}", check.plugin, check.id)), line(&check.title));
    for f in &check.findings {
        let object = f.object.as_deref().map(|o| format!(" [{}]", line(o))).unwrap_or_default();
        out.push_str(&format!("       {} {}{}: {}\n", f.severity, line(&f.code), object, block(&f.message, "         ")));
        if let Some(fix) = &f.remediation {
            out.push_str(&format!("         fix: {}\n", block(fix, "              ")));
        }
    }
    out
}

/// The `list` grid, newest first.
pub fn list_text(migrations: &[Migration]) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header(["Name", "Status", "Migration mode", "Migration type", "Source server", "Source server type", "Databases", "Duration", "Start time"]);
    for m in migrations {
        table.add_row([
            m.name.clone(),
            m.status.state.to_string(),
            m.mode.clone(),
            m.option.clone(),
            m.source_server.clone(),
            m.source_type.clone(),
            m.databases.len().to_string(),
            human_duration(duration(m)),
            m.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ]);
    }
    format!("{table}\n")
}

pub fn list_json(migrations: &[Migration]) -> Value {
    Value::Array(migrations.iter().map(|m| Value::Object(summary(m))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_the_time_left_at_the_rate_so_far() {
        let mut progress = json!({"databases": {
            "a": {"bytesCopied": 250, "bytesTotal": 1000},
            "b": {"bytesCopied": 0, "bytesTotal": 1000},
            "c": {"bytesCopied": 500, "bytesTotal": 500},
        }});
        add_eta(&mut progress, 10.0);
        assert_eq!(progress["databases"]["a"]["etaSeconds"], json!(30.0), "a quarter in 10 s: 30 s left");
        assert!(progress["databases"]["b"].get("etaSeconds").is_none(), "no rate before the first bytes");
        assert!(progress["databases"]["c"].get("etaSeconds").is_none(), "done");
        assert_eq!(progress["etaSeconds"], json!(23.0), "750 of 2500 in 10 s: 1750 left at 75 per s");
    }
}
