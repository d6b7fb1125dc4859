//! ValidationInProgress: every applicable rule of every rule plugin, instance-level once and
//! database-level per migrated database, plus the source adapter's readiness findings. A
//! plugin that fails (deadline, memory, trap, garbage) becomes an error finding naming it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plugin_host::{CheckContext, Finding, Level, Services, Severity};
use crate::plugins::{AdapterPlugin, Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CheckState {
    Succeeded,
    Warning,
    Failed,
}

/// One finding as shown. Codes are the plugin's own: two plugins may use the same code,
/// and `plugin` tells them apart (reports stored before it existed read it as empty).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingReport {
    #[serde(default)]
    pub plugin: String,
    pub severity: String,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub id: String,
    pub title: String,
    pub plugin: String,
    pub state: CheckState,
    pub findings: Vec<FindingReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LevelReport {
    pub state: CheckState,
    pub checks: Vec<CheckReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseReport {
    pub database_name: String,
    #[serde(flatten)]
    pub result: LevelReport,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationReport {
    pub status: CheckState,
    pub started_on: DateTime<Utc>,
    pub ended_on: DateTime<Utc>,
    pub server_level: LevelReport,
    pub db_level: Vec<DatabaseReport>,
}

pub async fn run(registry: &Registry, adapter: &AdapterPlugin, services: Arc<Services>, base: &CheckContext) -> ValidationReport {
    let started_on = Utc::now();
    let source_types: Vec<String> = adapter.description.info.ids.iter().map(|s| s.to_ascii_lowercase()).collect();

    // The adapter's readiness findings refine the generic rules: a rule finding whose code
    // the adapter also reports, or declares its own, gives way to the adapter's verdict.
    let readiness = registry.host.readiness(&adapter.plugin, services.clone(), base).await;
    let readiness_check = check_report(
        "source-readiness",
        &format!("{} readiness", adapter.description.info.display_name),
        &adapter.plugin.name,
        readiness,
    );
    let mut refined: Vec<String> = readiness_check.findings.iter().map(|f| f.code.clone()).collect();
    refined.extend(adapter.description.info.owned_codes.iter().cloned());

    let (mut server_checks, db_checks) = rule_checks(&registry.host, &registry.rules, services, base, &source_types, &refined).await;
    server_checks.insert(0, readiness_check);
    report(started_on, server_checks, db_checks)
}

/// The checks of `rule_plugins`' rules that apply to `base` (its mode and, by `source_types`,
/// its source), instance-level once and database-level per database to migrate. Findings
/// whose codes are in `refined` (the adapter's verdicts) are left out.
pub async fn rule_checks(
    host: &crate::plugin_host::PluginHost,
    rule_plugins: &[crate::plugins::RulePlugin],
    services: Arc<Services>,
    base: &CheckContext,
    source_types: &[String],
    refined: &[String],
) -> (Vec<CheckReport>, Vec<(String, Vec<CheckReport>)>) {
    let mut server_checks = Vec::new();
    let mut db_checks: Vec<(String, Vec<CheckReport>)> = base.dbs_to_migrate.iter().map(|d| (d.clone(), Vec::new())).collect();
    for rule_plugin in rule_plugins {
        for rule in &rule_plugin.rules {
            if !rule.modes.is_empty() && !rule.modes.contains(&base.mode) {
                continue;
            }
            if !rule.source_types.is_empty() && !rule.source_types.iter().any(|t| source_types.contains(&t.to_ascii_lowercase())) {
                continue;
            }
            match rule.level {
                Level::Instance => {
                    let result = host.check_rule(&rule_plugin.plugin, services.clone(), &rule.id, base).await;
                    let mut check = check_report(&rule.id, &rule.title, &rule_plugin.plugin.name, result);
                    check.findings.retain(|f| !refined.contains(&f.code));
                    check.state = state_of(&check.findings);
                    server_checks.push(check);
                }
                Level::Database => {
                    for (database, checks) in &mut db_checks {
                        let ctx = CheckContext { database: Some(database.clone()), ..base.clone() };
                        let result = host.check_rule(&rule_plugin.plugin, services.clone(), &rule.id, &ctx).await;
                        checks.push(check_report(&rule.id, &rule.title, &rule_plugin.plugin.name, result));
                    }
                }
            }
        }
    }
    (server_checks, db_checks)
}

/// The report of these checks, its states rolled up.
pub fn report(started_on: DateTime<Utc>, server_checks: Vec<CheckReport>, db_checks: Vec<(String, Vec<CheckReport>)>) -> ValidationReport {
    let server_level = level_report(server_checks);
    let db_level: Vec<DatabaseReport> =
        db_checks.into_iter().map(|(database_name, checks)| DatabaseReport { database_name, result: level_report(checks) }).collect();
    let status = db_level.iter().map(|d| d.result.state).chain([server_level.state]).max().unwrap_or(CheckState::Succeeded);
    ValidationReport { status, started_on, ended_on: Utc::now(), server_level, db_level }
}

pub fn check_report(id: &str, title: &str, plugin: &str, result: Result<Vec<Finding>, crate::plugin_host::PluginError>) -> CheckReport {
    let findings: Vec<FindingReport> = match result {
        Ok(findings) => findings.into_iter().map(|f| finding_report(plugin, f)).collect(),
        Err(error) => {
            tracing::error!("{error}");
            vec![FindingReport {
                plugin: plugin.into(),
                severity: "error".into(),
                code: "plugin-failed".into(),
                message: format!("rule `{id}` could not run: {error}"),
                object: Some(format!("plugin {plugin}")),
                remediation: Some("fix or remove the plugin from the plugin configuration; the migration cannot be validated without it".into()),
            }]
        }
    };
    CheckReport { id: id.into(), title: title.into(), plugin: plugin.into(), state: state_of(&findings), findings }
}

fn finding_report(plugin: &str, f: Finding) -> FindingReport {
    FindingReport {
        plugin: plugin.into(),
        severity: match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
        .into(),
        code: f.code,
        message: f.message,
        object: f.object,
        remediation: f.remediation,
    }
}

fn state_of(findings: &[FindingReport]) -> CheckState {
    findings
        .iter()
        .map(|f| match f.severity.as_str() {
            "error" => CheckState::Failed,
            "warning" => CheckState::Warning,
            _ => CheckState::Succeeded,
        })
        .max()
        .unwrap_or(CheckState::Succeeded)
}

fn level_report(checks: Vec<CheckReport>) -> LevelReport {
    LevelReport { state: checks.iter().map(|c| c.state).max().unwrap_or(CheckState::Succeeded), checks }
}

impl ValidationReport {
    /// Shows that the source adapter moved the source endpoint (the user allowed it with
    /// `AllowAdapterEndpointChange`): the source password went to the new endpoint.
    pub fn endpoint_changed(&mut self, change: &super::performing_prerequisite_steps::EndpointChange) {
        let finding = FindingReport {
            plugin: change.plugin.clone(),
            severity: "warning".into(),
            code: "adapter-endpoint-change".into(),
            message: format!(
                "source adapter plugin `{}` changed the source endpoint from {} to {}; pgferry connected to {} with the source credentials (allowed by AllowAdapterEndpointChange)",
                change.plugin, change.from, change.to, change.to
            ),
            object: Some(change.to.clone()),
            remediation: Some(format!("if {} is not your source server, remove AllowAdapterEndpointChange from the properties and the plugin from the plugin configuration, and change the source password", change.to)),
        };
        self.server_level.checks.push(CheckReport {
            id: "adapter-endpoint-change".into(),
            title: "Source endpoint set by the source adapter".into(),
            plugin: change.plugin.clone(),
            state: CheckState::Warning,
            findings: vec![finding],
        });
        self.server_level.state = self.server_level.state.max(CheckState::Warning);
        self.status = self.status.max(CheckState::Warning);
    }

    /// Databases the source adapter declares as the provider's own (e.g. `rdsadmin`,
    /// `cloudsqladmin`) must not be migrated: listing one is an error finding on it.
    pub fn provider_databases(&mut self, adapter: &AdapterPlugin) {
        let declared = &adapter.description.provider_objects.databases;
        for db in &mut self.db_level {
            if !super::migrating_data::is_provider_object(declared, &db.database_name) {
                continue;
            }
            let finding = FindingReport {
                plugin: adapter.plugin.name.clone(),
                severity: "error".into(),
                code: "provider-database".into(),
                message: provider_database_message(adapter, &db.database_name),
                object: Some(db.database_name.clone()),
                remediation: Some(format!("remove {:?} from DBsToMigrate", db.database_name)),
            };
            db.result.checks.push(CheckReport {
                id: "provider-database".into(),
                title: "Database owned by the provider".into(),
                plugin: adapter.plugin.name.clone(),
                state: CheckState::Failed,
                findings: vec![finding],
            });
            db.result.state = CheckState::Failed;
            self.status = CheckState::Failed;
        }
    }

    /// The user consented (in the properties) to what `code`'s findings ask for, and the
    /// runner will do it: they become warnings saying so, and the states follow.
    pub fn consent(&mut self, code: &str, note: &str) {
        let levels = std::iter::once(&mut self.server_level).chain(self.db_level.iter_mut().map(|d| &mut d.result));
        for level in levels {
            for check in &mut level.checks {
                for f in check.findings.iter_mut().filter(|f| f.code == code && f.severity == "error") {
                    f.severity = "warning".into();
                    f.message = format!("{} — {note}", f.message);
                }
                check.state = state_of(&check.findings);
            }
            level.state = level.checks.iter().map(|c| c.state).max().unwrap_or(CheckState::Succeeded);
        }
        self.status = self.db_level.iter().map(|d| d.result.state).chain([self.server_level.state]).max().unwrap_or(CheckState::Succeeded);
    }
}

/// Why `database` may not be migrated: the source adapter declares it the provider's own.
pub fn provider_database_message(adapter: &AdapterPlugin, database: &str) -> String {
    format!(
        "database {database:?} is the provider's own (source adapter plugin `{}` declares it for {}): it must not be migrated",
        adapter.plugin.name, adapter.description.info.display_name
    )
}
