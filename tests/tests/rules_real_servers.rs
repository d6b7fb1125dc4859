//! Every built-in validation rule, and every source-adapter readiness code a plain
//! PostgreSQL server can produce, against real servers: for each code one setup where it
//! fires (exact code, severity and object asserted) and one where it passes (the code is
//! absent). The real `pgferry migration create --migration-option Validate --output json`
//! runs, so the inventory, the sandboxed plugins and the report are all exercised.
//!
//! Scenarios (few clusters, several validation runs each):
//! - [`clean_servers_pass_every_rule_offline_and_online`]: PG 15 → 15 with wal_level logical,
//!   keys everywhere and harmless extras (extensions the target has, built-in collations,
//!   a partitioned table, a non-superuser owner): every rule passes in both modes.
//! - [`dirty_source_and_target`]: PG 15 → 15 with most problems at once (roles, settings,
//!   databases, objects), validated Online, then Offline with overwrite (and an empty
//!   database list, which the runner refuses).
//! - [`locales_and_icu_missing_on_target_then_imported`]: the target's collations are
//!   dropped, then imported again with `pg_import_system_collations`.
//! - [`adapters_on_plain_postgres`]: each source type's readiness, first on a bare server,
//!   then with the provider's roles and settings imitated.
//! - Cross-version: [`source_newer_than_target_pg16_to_pg15`],
//!   [`source_much_older_pg13_to_pg16`], [`tables_with_oids_pg11_to_pg15`] (skipped when
//!   `.ci/run`'s extra PostgreSQL versions are not installed).
//!
//! Coverage, rule → scenario (F = fires, P = passes):
//!
//! | rule | code | F | P |
//! |---|---|---|---|
//! | server-version | source-version-too-old | — (needs < 9.5, see below) | clean |
//! | | target-version-older | pg16→pg15 | clean, pg13→pg16 |
//! | | target-version-newer | pg13→pg16, pg11→pg15 | clean (same major), pg16→pg15 |
//! | database-count | no-databases-to-migrate | — (the runner refuses an empty list first; dirty run 3 shows it) | clean |
//! | | too-many-databases | dirty (run 1: 9) | dirty (run 2: exactly 8), clean |
//! | source-databases | source-database-missing / -is-template / -not-connectable | dirty | clean |
//! | target-database-exists | target-database-exists | dirty (run 1) | clean, dirty (run 2: overwrite) |
//! | | target-database-will-be-replaced | dirty (run 2) | dirty (run 1) |
//! | | target-database-not-droppable | dirty (run 2: `shop`) | dirty (run 2: `app`, owned by the role) |
//! | role-privileges | target-role-cannot-create-databases | dirty (run 1) | dirty (run 2: CREATEDB granted), clean |
//! | | target-role-cannot-create-roles | dirty | clean |
//! | | source-role-cannot-read-all | dirty (run 1, PG 15), pg13→pg16 (pre-14 remediation) | dirty (run 2: pg_read_all_data granted), clean |
//! | lock-table-capacity | lock-table-too-small | dirty | clean |
//! | encoding-locale | sql-ascii-encoding | dirty | clean |
//! | | locale-missing-on-target | locales (run 1) | locales (run 2), clean |
//! | | icu-unavailable-on-target | locales (run 1) | locales (run 2) |
//! | extensions | extension-unavailable-on-target | pg16→pg15 (pltcl) | clean (hstore), pg13→pg16 |
//! | | extension-version-older-on-target | pg16→pg15 (pg_buffercache 1.4 → 1.3) | pg16→pg15 (hstore 1.8 = 1.8) |
//! | | extension-not-allowlisted | dirty (citext) | dirty (hstore, plpgsql), clean (no allow-list) |
//! | | extension-needs-preload | dirty (pg_stat_statements, warning) | clean (target preloads it) |
//! | | extension-in-system-schema | dirty (citext in pg_catalog) | clean, dirty (hstore in public), pg16→pg15 and pg13→pg16 (pltcl, pltclu: their control files put them in pg_catalog) |
//! | collations | collation-missing-on-target | locales (run 1: built-in libc and ICU, user-defined ICU) | locales (run 2), clean ("C", und-x-icu) |
//! | | user-defined-collation | dirty, locales | clean |
//! | user-casts | user-defined-cast | dirty | clean |
//! | tables-with-oids | table-with-oids | pg11→pg15 | pg11→pg15 (table without), clean |
//! | procedural-languages | language-unavailable-on-target | pg16→pg15 (pltcl) | pg13→pg16 (pltcl, trusted) |
//! | | untrusted-language | pg13→pg16 (pltclu) | pg13→pg16 (pltcl), clean |
//! | object-owners | superuser-owner-missing-on-target | dirty (legacy_admin) | dirty + clean (non-superuser owner missing, postgres present) |
//! | generated-columns | generated-columns-recomputed | dirty | clean |
//! | tables-without-primary-key | table-without-primary-key | dirty (run 2) | clean, dirty (partitioned parent; Online) |
//! | wal-level | wal-level-not-logical | adapters (phase 2: Single Server's own parameter on, wal_level replica); else replaced by the adapter's | clean, adapters (phase 3) |
//! | replication-capacity | replication-slots-insufficient | dirty (2 slots, 1 used) | clean |
//! | | wal-senders-insufficient | dirty (max_wal_senders 1) | clean |
//! | | wal-senders-below-slots | dirty | clean (10 = 10) |
//! | replication-privilege | replication-privilege-missing | adapters (phase 3); on AWS and Single Server the adapter owns the code | clean, adapters (REPLICATION role) |
//! | replica-identity | replica-identity-missing | dirty (no key, partition) | dirty (USING INDEX, unlogged, partitioned parent), clean |
//! | | replica-identity-full | dirty | clean |
//! | unreplicated-objects | unlogged-table / large-objects / materialized-view | dirty | clean |
//! | source-transactions | prepared-transactions | dirty | clean |
//! | | long-running-transaction | — (needs a transaction open 600 s, see below) | clean |
//! | replication-settings | slot-wal-unlimited | dirty (default -1), pg13→pg16 | clean (1GB), pg11→pg15 (no such setting) |
//! | | wal-sender-timeout-short | dirty (5s) | clean, adapters (0 = disabled) |
//! | | logical-decoding-work-mem-low | dirty (1MB) | clean (64MB default) |
//! | adapters (all five) | wal-level-not-logical, replication-privilege-missing, admin-privilege-missing | adapters (phase 1), dirty | adapters (phases 2, 3), clean |
//!
//! Not made to fire on a real server here (their native unit tests cover them):
//! - `source-version-too-old` (rules-server `server-version`): needs a source older than
//!   PostgreSQL 9.5; the oldest server installable here is 10. Covered by
//!   `plugins/rules-server/src/tests.rs` (`source_too_old`).
//! - `no-databases-to-migrate` (rules-server `database-count`): `pgferry migration create`
//!   refuses an empty DBsToMigrate (exit 1) before validating, so the rule never sees one
//!   (asserted in [`dirty_source_and_target`]). Covered by rules-server's `no_databases`.
//! - `long-running-transaction` (rules-online `source-transactions`): needs a transaction
//!   open for more than 600 s on the source, and `xact_start` cannot be backdated.
//!   Covered by `plugins/rules-online/src/tests.rs` (`long_running_transaction`).
//! - The `error` form of `extension-needs-preload` (timescaledb, pg_cron) and the
//!   `pg_partman_bgw` case: those extensions are not installed here; the warning form
//!   (pg_stat_statements) runs on real servers below. Covered by rules-schema's tests.
//! - The `builtin` collation provider (PostgreSQL 17+) is not exercised here.

use std::cell::Cell;
use std::collections::BTreeSet;

use pgferry_tests::{pg_available, skip, CliOutput, Cluster, Pgferry};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Running a validation and reading its findings
// ---------------------------------------------------------------------------------------

/// One finding of a validation report: where it came from and what it says.
#[derive(Debug, Clone)]
struct Found {
    /// `server` for the server level, else the database name.
    level: String,
    /// The check (rule id, or `source-readiness` for the adapter).
    check: String,
    code: String,
    severity: String,
    object: String,
    message: String,
    remediation: String,
}

/// The outcome of one `pgferry migration create --migration-option Validate`.
struct Outcome {
    exit: i32,
    findings: Vec<Found>,
    /// The checks that ran: level (`server` or database name), id and plugin.
    checks: Vec<(String, String, String)>,
    transcript: String,
}

impl Outcome {
    /// `(level, check, code, severity, object)` of every finding.
    fn rows(&self) -> Vec<(&str, &str, &str, &str, &str)> {
        self.findings
            .iter()
            .map(|f| (f.level.as_str(), f.check.as_str(), f.code.as_str(), f.severity.as_str(), f.object.as_str()))
            .collect()
    }

    fn dump(&self) -> String {
        let mut s = format!("exit {}; findings:\n", self.exit);
        for f in &self.findings {
            s.push_str(&format!(
                "  [{}] {} / {} {} on {:?}: {}\n",
                f.level, f.check, f.severity, f.code, f.object, f.message
            ));
        }
        s
    }

    /// Asserts that exactly one finding has this level, check, code, severity and object,
    /// and returns it.
    #[track_caller]
    fn fires(&self, level: &str, check: &str, code: &str, severity: &str, object: &str) -> &Found {
        let hits: Vec<&Found> = self
            .findings
            .iter()
            .filter(|f| f.level == level && f.check == check && f.code == code && f.object == object)
            .collect();
        assert_eq!(hits.len(), 1, "expected one `{code}` from `{check}` at {level} on {object:?}\n{}", self.dump());
        assert_eq!(hits[0].severity, severity, "severity of `{code}` on {object:?}\n{}", self.dump());
        hits[0]
    }

    /// Asserts that no finding anywhere has this code.
    #[track_caller]
    fn absent(&self, code: &str) {
        let hits: Vec<_> = self.findings.iter().filter(|f| f.code == code).collect();
        assert!(hits.is_empty(), "`{code}` should not fire\n{}", self.dump());
    }

    /// Asserts that no finding with this code names this object.
    #[track_caller]
    fn absent_on(&self, code: &str, object: &str) {
        let hits: Vec<_> = self.findings.iter().filter(|f| f.code == code && f.object == object).collect();
        assert!(hits.is_empty(), "`{code}` should not fire on {object:?}\n{}", self.dump());
    }

    /// Asserts that the findings are exactly these `(level, check, code, severity, object)`
    /// rows, in any order: nothing unexpected fired.
    #[track_caller]
    fn exactly(&self, expected: &[(&str, &str, &str, &str, &str)]) {
        let mut got = self.rows();
        got.sort();
        let mut want = expected.to_vec();
        want.sort();
        assert_eq!(got, want, "\n{}", self.dump());
    }

    fn check_ids(&self, level: &str) -> BTreeSet<&str> {
        self.checks.iter().filter(|(l, ..)| l == level).map(|(_, c, _)| c.as_str()).collect()
    }

    /// The plugin that ran check `id`.
    #[track_caller]
    fn plugin_of(&self, id: &str) -> &str {
        let plugins: BTreeSet<&str> = self.checks.iter().filter(|(_, c, _)| c == id).map(|(.., p)| p.as_str()).collect();
        assert_eq!(plugins.len(), 1, "check {id} ran from {plugins:?}");
        plugins.into_iter().next().unwrap()
    }
}

/// The options of one validation run.
#[derive(Clone)]
struct Run<'a> {
    mode: &'a str,
    source_user: &'a str,
    target_user: &'a str,
    dbs: Vec<&'a str>,
    overwrite: bool,
    source_type: &'a str,
    ssl_mode: &'a str,
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run {
            mode: "Offline",
            source_user: "postgres",
            target_user: "postgres",
            dbs: vec!["app"],
            overwrite: false,
            source_type: "OnPremises",
            ssl_mode: "Prefer",
        }
    }
}

/// A source, a target and one pgferry installation to validate between them.
struct Pair<'a> {
    source: &'a Cluster,
    target: &'a Cluster,
    pf: Pgferry,
    runs: Cell<u32>,
}

impl<'a> Pair<'a> {
    fn new(source: &'a Cluster, target: &'a Cluster) -> Self {
        Pair { source, target, pf: Pgferry::new(), runs: Cell::new(0) }
    }

    fn target_address(&self) -> String {
        format!("127.0.0.1:{}", self.target.port())
    }

    fn source_address(&self) -> String {
        format!("127.0.0.1:{}", self.source.port())
    }

    /// Runs the validation and collects its findings. Every run must end Succeeded (exit
    /// 0) or ValidationFailed (exit 4, exactly when an error finding exists), and no plugin
    /// may have failed.
    fn validate(&self, run: Run) -> Outcome {
        let out = self.create(run);
        let transcript = out.transcript();
        let doc: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("create printed no JSON document ({e}):\n{transcript}"));
        let validation = &doc["validation"];
        assert!(validation.is_object(), "no validation report:\n{transcript}");

        let mut findings = vec![];
        let mut checks = vec![];
        let mut collect = |level: &str, level_doc: &Value| {
            for check in level_doc["checks"].as_array().unwrap_or_else(|| panic!("no checks:\n{transcript}")) {
                let id = check["id"].as_str().unwrap().to_string();
                checks.push((level.to_string(), id.clone(), check["plugin"].as_str().unwrap_or("").to_string()));
                for f in check["findings"].as_array().unwrap() {
                    let text = |k: &str| f[k].as_str().unwrap_or("").to_string();
                    findings.push(Found {
                        level: level.to_string(),
                        check: id.clone(),
                        code: text("code"),
                        severity: text("severity"),
                        object: text("object"),
                        message: text("message"),
                        remediation: text("remediation"),
                    });
                }
            }
        };
        collect("server", &validation["serverLevel"]);
        for db in validation["dbLevel"].as_array().unwrap() {
            collect(db["databaseName"].as_str().unwrap(), db);
        }
        let outcome = Outcome { exit: out.code, findings, checks, transcript };
        let failed: Vec<_> = outcome.findings.iter().filter(|f| f.code == "plugin-failed").collect();
        assert!(failed.is_empty(), "a plugin failed:\n{}\n{}", outcome.dump(), outcome.transcript);
        let errors = outcome.findings.iter().any(|f| f.severity == "error");
        let expected_exit = if errors { 4 } else { 0 };
        assert_eq!(outcome.exit, expected_exit, "exit code vs findings:\n{}\n{}", outcome.dump(), outcome.transcript);
        outcome
    }

    /// Runs `pgferry migration create --migration-option Validate --output json` as is.
    fn create(&self, run: Run) -> CliOutput {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        // Trust authentication: the passwords are never asked for. The user goes in its
        // own key, since a Single Server login contains `@`.
        let body = json!({"properties": {
            "SourceDBServerResourceId": format!("127.0.0.1:{}", self.source.port()),
            "sourceServerUserName": run.source_user,
            "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "unused", "TargetServerPassword": "unused"}},
            "targetServerUserName": run.target_user,
            "DBsToMigrate": run.dbs,
            "OverwriteDBsInTarget": if run.overwrite { "true" } else { "false" },
            "MigrationMode": run.mode,
            "sourceType": run.source_type,
            "sslMode": run.ssl_mode,
        }});
        let props = self.pf.write(&format!("run-{n}.json"), body.to_string()).display().to_string();
        let name = format!("rules-{n}");
        let target = self.target_address();
        self.pf.run(&[
            "migration", "create", "--migration-name", &name, "--properties", &props, "--target", &target,
            "--migration-option", "Validate", "--output", "json",
        ])
    }
}

/// Runs SQL on a cluster, panicking with psql's message.
#[track_caller]
fn sql(cluster: &Cluster, db: &str, statements: &str) -> String {
    cluster.psql(db, statements).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every rule id of the built-in rule plugins, and the modes they run in.
const OFFLINE_AND_ONLINE_RULES: &[&str] = &[
    // rules-server
    "server-version",
    "database-count",
    "source-databases",
    "target-database-exists",
    "role-privileges",
    "lock-table-capacity",
    "encoding-locale",
];
const DATABASE_RULES_ALL_MODES: &[&str] = &[
    // rules-schema
    "extensions",
    "collations",
    "user-casts",
    "tables-with-oids",
    "procedural-languages",
    "object-owners",
    "generated-columns",
];
const OFFLINE_ONLY_DATABASE_RULES: &[&str] = &["tables-without-primary-key"];
const ONLINE_ONLY_SERVER_RULES: &[&str] = &[
    // rules-online
    "wal-level",
    "replication-capacity",
    "replication-privilege",
    "source-transactions",
    "replication-settings",
];
const ONLINE_ONLY_DATABASE_RULES: &[&str] = &["replica-identity", "unreplicated-objects"];

// ---------------------------------------------------------------------------------------
// The harness runs the extra versions .ci/run installs
// ---------------------------------------------------------------------------------------

#[test]
fn harness_starts_pg11_pg13_and_pg16() {
    let mut ran = 0;
    for major in [11, 13, 16] {
        if !pg_available(major) {
            eprintln!("SKIPPED (part): PostgreSQL {major} is not installed (bash .ci/run installs it)");
            continue;
        }
        let pg = Cluster::builder().version(major).setting("wal_level", "logical").start().unwrap();
        assert_eq!(pg.version(), major);
        assert_eq!(sql(&pg, "postgres", "select current_setting('server_version_num')::int / 10000"), major.to_string());
        assert_eq!(sql(&pg, "postgres", "show wal_level"), "logical");
        pg.create_database("scratch").unwrap();
        sql(&pg, "scratch", "create table t (id int primary key); insert into t values (1)");
        assert_eq!(sql(&pg, "scratch", "select count(*) from t"), "1");
        ran += 1;
    }
    if ran == 0 {
        skip!("none of PostgreSQL 11, 13, 16 is installed (bash .ci/run installs them)");
    }
}

// ---------------------------------------------------------------------------------------
// A clean pair: every rule passes, offline and online
// ---------------------------------------------------------------------------------------

#[test]
fn clean_servers_pass_every_rule_offline_and_online() {
    // max_slot_wal_keep_size: its default (-1) is reported on purpose (slot-wal-unlimited,
    // info), so a clean source caps it.
    let source = Cluster::builder()
        .setting("wal_level", "logical")
        .setting("max_slot_wal_keep_size", "1GB")
        .start()
        .unwrap();
    let target = Cluster::builder().setting("shared_preload_libraries", "pg_stat_statements").start().unwrap();
    for db in ["app", "shop"] {
        source.create_database(db).unwrap();
    }
    sql(
        &source,
        "app",
        r#"
        create role app_owner nologin;
        create extension hstore;
        create extension pg_stat_statements;
        create table public.customers (id int generated always as identity primary key, name text collate "C", tags hstore);
        create table public.orders (id bigserial primary key, customer int references public.customers, note text collate "und-x-icu");
        create table public.events (id int, at date, primary key (id, at)) partition by range (at);
        create table public.events_2024 partition of public.events for values from ('2024-01-01') to ('2025-01-01');
        create table public.settings (k text primary key, v text);
        alter table public.settings owner to app_owner;
        create view public.big_orders as select * from public.orders where id > 100;
        create function public.touch() returns trigger language plpgsql as $$ begin return new; end $$;
        "#,
    );
    sql(&source, "shop", "create table public.items (sku text primary key, price numeric)");

    let pair = Pair::new(&source, &target);
    let dbs = vec!["app", "shop"];

    let offline = pair.validate(Run { dbs: dbs.clone(), ..Run::default() });
    offline.exactly(&[]);
    let mut server: BTreeSet<&str> = OFFLINE_AND_ONLINE_RULES.iter().copied().collect();
    server.insert("source-readiness");
    assert_eq!(offline.check_ids("server"), server);
    let database: BTreeSet<&str> = DATABASE_RULES_ALL_MODES.iter().chain(OFFLINE_ONLY_DATABASE_RULES).copied().collect();
    assert_eq!(offline.check_ids("app"), database);
    assert_eq!(offline.check_ids("shop"), database);

    let online = pair.validate(Run { mode: "Online", dbs, ..Run::default() });
    online.exactly(&[]);
    server.extend(ONLINE_ONLY_SERVER_RULES);
    assert_eq!(online.check_ids("server"), server);
    let database: BTreeSet<&str> = DATABASE_RULES_ALL_MODES.iter().chain(ONLINE_ONLY_DATABASE_RULES).copied().collect();
    assert_eq!(online.check_ids("app"), database);
    // 7 + 8 + 7 rules, of which one runs offline only, from the three built-in rule plugins.
    assert_eq!(offline.check_ids("server").len() - 1 + offline.check_ids("app").len(), 15);
    assert_eq!(online.check_ids("server").len() - 1 + online.check_ids("app").len(), 21);
    for (plugin, rules) in [
        ("rules-server", OFFLINE_AND_ONLINE_RULES),
        ("rules-schema", DATABASE_RULES_ALL_MODES),
        ("rules-online", ONLINE_ONLY_SERVER_RULES),
        ("rules-online", ONLINE_ONLY_DATABASE_RULES),
    ] {
        for rule in rules {
            assert_eq!(online.plugin_of(rule), plugin, "{rule}");
        }
    }
    assert_eq!(offline.plugin_of("tables-without-primary-key"), "rules-schema");
    assert_eq!(online.plugin_of("source-readiness"), "adapter-on-premises");
}

// ---------------------------------------------------------------------------------------
// A dirty pair: most codes at once
// ---------------------------------------------------------------------------------------

/// The source: a non-superuser migration role, too few slots and senders, a used slot, a
/// prepared transaction, short timeouts; databases missing, template, closed, SQL_ASCII;
/// and in `app` every kind of object the rules report.
fn dirty_source() -> Cluster {
    let source = Cluster::builder()
        .setting("max_replication_slots", "2")
        .setting("max_wal_senders", "1")
        .setting("max_prepared_transactions", "2")
        .setting("wal_sender_timeout", "5s")
        .setting("logical_decoding_work_mem", "1MB")
        .start()
        .unwrap();
    for db in ["app", "shop", "tpl", "closed", "extra1", "extra2", "extra3"] {
        source.create_database(db).unwrap();
    }
    sql(&source, "postgres", "create database legacy_ascii encoding 'SQL_ASCII' lc_collate 'C' lc_ctype 'C' template template0");
    sql(
        &source,
        "postgres",
        "create role migrator login;
         create role legacy_admin superuser nologin;
         create role app_owner nologin;
         alter database tpl is_template true;
         alter database closed allow_connections false;
         select 1 from pg_create_physical_replication_slot('standby_a');",
    );
    sql(
        &source,
        "app",
        r#"
        create extension hstore;
        create extension citext schema pg_catalog;
        create extension pg_stat_statements;
        create table public.no_pk (a int, b text);
        create table public.full_ri (id int primary key, v text);
        alter table public.full_ri replica identity full;
        create table public.by_index (code text not null, v text);
        create unique index by_index_code on public.by_index (code);
        alter table public.by_index replica identity using index by_index_code;
        create unlogged table public.scratch (k text, v text);
        create table public.events (at date, what text) partition by range (at);
        create table public.events_2024 partition of public.events for values from ('2024-01-01') to ('2025-01-01');
        create materialized view public.order_totals as select 1 as n;
        create table public.measures (id int primary key, celsius numeric, fahrenheit numeric generated always as (celsius * 1.8 + 32) stored);
        create type public.mood as enum ('sad', 'ok', 'happy');
        create function public.mood_rank(public.mood) returns integer language sql immutable
            as $$ select case $1 when 'sad' then 0 when 'ok' then 1 else 2 end $$;
        create cast (public.mood as integer) with function public.mood_rank(public.mood);
        create collation public.german_ci (provider = icu, locale = 'de-u-ks-level2', deterministic = false);
        create table public.people (id int primary key, name text collate public.german_ci);
        create table public.old_audit (id int primary key, line text);
        alter table public.old_audit owner to legacy_admin;
        create table public.settings (k text primary key, v text);
        alter table public.settings owner to app_owner;
        select lo_from_bytea(0, 'x') > 0;
        create schema filler;
        do $$ begin
            for i in 1..60 loop
                execute format('create table filler.t%s (id int primary key)', i);
            end loop;
        end $$;
        "#,
    );
    sql(&source, "shop", "create table public.orders (id int primary key, total numeric)");
    // Last, so that nothing above waits for it: a prepared transaction holding a row lock.
    sql(&source, "shop", "begin; insert into public.orders values (1, 10); prepare transaction 'pending_1';");
    source
}

#[test]
fn dirty_source_and_target() {
    let source = dirty_source();
    let target = Cluster::builder()
        .setting("max_connections", "10")
        .setting("max_locks_per_transaction", "10")
        .setting("azure.extensions", "hstore,pg_stat_statements")
        .start()
        .unwrap();
    sql(
        &target,
        "postgres",
        "create role target_migrator login",
    );
    sql(&target, "postgres", "create database app owner target_migrator");
    target.create_database("shop").unwrap();
    let pair = Pair::new(&source, &target);
    let source_address = pair.source_address();
    let nine = vec!["app", "shop", "App", "tpl", "closed", "legacy_ascii", "extra1", "extra2", "extra3"];

    // --- Run 1: Online, OverwriteDBsInTarget false, nine databases ----------------------
    let run1 = pair.validate(Run {
        mode: "Online",
        source_user: "migrator",
        target_user: "target_migrator",
        dbs: nine.clone(),
        ..Run::default()
    });
    let r = &run1;
    // The adapter (OnPremises) reports wal-level-not-logical and replication-privilege-missing
    // in its own words; the runner drops the rules' findings with those codes.
    r.fires("server", "source-readiness", "wal-level-not-logical", "error", "wal_level");
    r.fires("server", "source-readiness", "replication-privilege-missing", "error", "migrator");
    r.fires("server", "source-readiness", "admin-privilege-missing", "warning", "migrator");
    // rules-server
    let f = r.fires("server", "database-count", "too-many-databases", "warning", "DBsToMigrate");
    assert!(f.message.contains("9 databases"), "{}", f.message);
    let f = r.fires("server", "source-databases", "source-database-missing", "error", "App");
    assert!(f.message.contains("did you mean `app`"), "{}", f.message);
    r.fires("server", "source-databases", "source-database-is-template", "error", "tpl");
    r.fires("server", "source-databases", "source-database-not-connectable", "error", "closed");
    r.fires("server", "target-database-exists", "target-database-exists", "error", "app");
    r.fires("server", "target-database-exists", "target-database-exists", "error", "shop");
    r.fires("server", "role-privileges", "target-role-cannot-create-databases", "error", "target_migrator");
    r.fires("server", "role-privileges", "target-role-cannot-create-roles", "error", "target_migrator");
    let f = r.fires("server", "role-privileges", "source-role-cannot-read-all", "warning", "migrator");
    assert!(f.remediation.contains("GRANT pg_read_all_data TO migrator"), "{}", f.remediation);
    let f = r.fires("server", "lock-table-capacity", "lock-table-too-small", "warning", "max_locks_per_transaction");
    assert!(f.message.contains("holds about 100 locks"), "{}", f.message);
    r.fires("server", "encoding-locale", "sql-ascii-encoding", "warning", "legacy_ascii");
    // rules-online, server level
    let f = r.fires("server", "replication-capacity", "replication-slots-insufficient", "error", "max_replication_slots");
    assert!(f.message.contains("1 free replication slots (max_replication_slots 2, 1 in use) for 9 databases"), "{}", f.message);
    r.fires("server", "replication-capacity", "wal-senders-insufficient", "error", "max_wal_senders");
    r.fires("server", "replication-capacity", "wal-senders-below-slots", "warning", "max_wal_senders");
    let f = r.fires("server", "source-transactions", "prepared-transactions", "error", &source_address);
    assert!(f.message.starts_with("1 prepared transactions"), "{}", f.message);
    r.fires("server", "replication-settings", "slot-wal-unlimited", "info", "max_slot_wal_keep_size");
    let f = r.fires("server", "replication-settings", "wal-sender-timeout-short", "warning", "wal_sender_timeout");
    assert!(f.message.contains("5000 ms"), "{}", f.message);
    let f = r.fires("server", "replication-settings", "logical-decoding-work-mem-low", "info", "logical_decoding_work_mem");
    assert!(f.message.contains("1024 kB"), "{}", f.message);
    // rules-schema, database app
    r.fires("app", "extensions", "extension-not-allowlisted", "error", "citext");
    r.fires("app", "extensions", "extension-in-system-schema", "warning", "citext");
    r.fires("app", "extensions", "extension-needs-preload", "warning", "pg_stat_statements");
    r.fires("app", "collations", "user-defined-collation", "info", "public.german_ci");
    r.fires("app", "user-casts", "user-defined-cast", "warning", "CAST (mood AS integer)");
    r.fires("app", "object-owners", "superuser-owner-missing-on-target", "info", "legacy_admin");
    let f = r.fires("app", "generated-columns", "generated-columns-recomputed", "info", "public.measures");
    assert!(f.message.contains("(fahrenheit)"), "{}", f.message);
    // rules-online, database app
    r.fires("app", "replica-identity", "replica-identity-missing", "error", "public.no_pk");
    r.fires("app", "replica-identity", "replica-identity-missing", "error", "public.events_2024");
    r.fires("app", "replica-identity", "replica-identity-full", "info", "public.full_ri");
    r.fires("app", "unreplicated-objects", "unlogged-table", "warning", "public.scratch");
    r.fires("app", "unreplicated-objects", "large-objects", "warning", "app");
    r.fires("app", "unreplicated-objects", "materialized-view", "info", "public.order_totals");
    // ... and nothing else (34 = the findings asserted above).
    assert_eq!(r.findings.len(), 34, "{}", r.dump());
    // Passes in the same run:
    r.absent_on("extension-not-allowlisted", "hstore"); // allow-listed
    r.absent_on("extension-not-allowlisted", "plpgsql"); // exempt
    r.absent_on("extension-in-system-schema", "hstore"); // in public
    r.absent_on("replica-identity-missing", "public.by_index"); // USING INDEX
    r.absent_on("replica-identity-missing", "public.scratch"); // unlogged: not published
    r.absent_on("replica-identity-missing", "public.events"); // partitioned parent
    r.absent_on("superuser-owner-missing-on-target", "app_owner"); // not a superuser
    r.absent("collation-missing-on-target"); // the target has ICU
    r.absent("table-without-primary-key"); // Offline only
    for check in ["wal-level", "replication-privilege"] {
        assert!(r.findings.iter().all(|f| f.check != check), "replaced by the adapter's:\n{}", r.dump());
    }
    for db in ["shop", "tpl", "legacy_ascii", "extra1", "extra2", "extra3", "closed", "App"] {
        assert!(r.findings.iter().all(|f| f.level != db), "no database-level finding for {db}:\n{}", r.dump());
    }

    // --- Run 2: Offline, OverwriteDBsInTarget true, eight databases, better roles --------
    sql(&source, "postgres", "grant pg_read_all_data to migrator");
    sql(&target, "postgres", "alter role target_migrator createdb");
    let eight: Vec<&str> = nine[..8].to_vec();
    let run2 = pair.validate(Run {
        source_user: "migrator",
        target_user: "target_migrator",
        dbs: eight,
        overwrite: true,
        ..Run::default()
    });
    let r = &run2;
    r.absent("too-many-databases"); // 8 is the default limit
    r.absent("source-role-cannot-read-all"); // member of pg_read_all_data
    r.absent("target-role-cannot-create-databases"); // CREATEDB
    r.fires("server", "role-privileges", "target-role-cannot-create-roles", "error", "target_migrator");
    r.fires("server", "source-readiness", "admin-privilege-missing", "warning", "migrator");
    r.absent("target-database-exists");
    r.fires("server", "target-database-exists", "target-database-will-be-replaced", "warning", "app");
    r.fires("server", "target-database-exists", "target-database-will-be-replaced", "warning", "shop");
    let f = r.fires("server", "target-database-exists", "target-database-not-droppable", "error", "shop");
    assert!(f.message.contains("owned by `postgres`"), "{}", f.message);
    r.absent_on("target-database-not-droppable", "app"); // owned by target_migrator
    // Offline: table-without-primary-key for tables, not for the partitioned parent, the
    // materialized view or keyed tables.
    for t in ["public.no_pk", "public.by_index", "public.scratch", "public.events_2024"] {
        r.fires("app", "tables-without-primary-key", "table-without-primary-key", "info", t);
    }
    r.absent_on("table-without-primary-key", "public.events");
    r.absent_on("table-without-primary-key", "public.order_totals");
    r.absent_on("table-without-primary-key", "public.full_ri");
    // No online rule runs offline.
    for code in [
        "replication-privilege-missing",
        "wal-level-not-logical",
        "replication-slots-insufficient",
        "prepared-transactions",
        "slot-wal-unlimited",
        "replica-identity-missing",
        "unlogged-table",
        "large-objects",
        "materialized-view",
    ] {
        r.absent(code);
    }

    // --- Run 3: no databases at all ------------------------------------------------------
    // The runner refuses an empty DBsToMigrate before anything runs, so rules-server's
    // `no-databases-to-migrate` cannot fire through the CLI (its unit test `no_databases`
    // covers the rule itself).
    let out = pair.create(Run { dbs: vec![], ..Run::default() });
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("`DBsToMigrate` is empty"), "{}", out.transcript());
}

// ---------------------------------------------------------------------------------------
// Locales and ICU: missing on the target, then imported
// ---------------------------------------------------------------------------------------

#[test]
fn locales_and_icu_missing_on_target_then_imported() {
    let has_en_us = std::process::Command::new("locale")
        .arg("-a")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim().eq_ignore_ascii_case("en_US.utf8")))
        .unwrap_or(false);
    if !has_en_us {
        skip!("the OS has no locale en_US.UTF-8 (bash .ci/run generates it)");
    }
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    sql(&source, "postgres", "create database enus lc_collate 'en_US.UTF-8' lc_ctype 'en_US.UTF-8' template template0");
    sql(&source, "postgres", "create database icudb locale_provider icu icu_locale 'de-DE' template template0");
    // The cached cluster template may predate the locale: import it (pg_collation is per
    // database).
    sql(&source, "enus", "select pg_import_system_collations('pg_catalog')");
    sql(&source, "enus", r#"create table public.names (id int primary key, n text collate "en_US")"#);
    sql(
        &source,
        "icudb",
        r#"create collation public.french (provider = icu, locale = 'fr');
           create table public.words (id int primary key, w text collate "de-x-icu", f text collate public.french)"#,
    );
    // A target whose operating system lacks en_US and whose build lacks ICU, as the rules
    // see it: pg_collation (of the database the runner connects to) without them.
    sql(
        &target,
        "postgres",
        r#"do $$ declare c record; begin
             for c in select collname from pg_collation
                      where collnamespace = 'pg_catalog'::regnamespace
                        and (collprovider = 'i' or collname ilike 'en\_US%')
             loop execute format('drop collation pg_catalog.%I', c.collname); end loop;
           end $$"#,
    );
    let pair = Pair::new(&source, &target);
    let dbs = vec!["enus", "icudb"];

    let run1 = pair.validate(Run { dbs: dbs.clone(), ..Run::default() });
    let f = run1.fires("server", "encoding-locale", "locale-missing-on-target", "warning", "enus");
    assert!(f.message.contains("LC_COLLATE `en_US.UTF-8`"), "{}", f.message);
    run1.fires("server", "encoding-locale", "icu-unavailable-on-target", "error", "icudb");
    run1.fires("enus", "collations", "collation-missing-on-target", "error", r#"pg_catalog."en_US""#);
    run1.fires("icudb", "collations", "collation-missing-on-target", "error", r#"pg_catalog."de-x-icu""#);
    run1.fires("icudb", "collations", "collation-missing-on-target", "error", "public.french");
    run1.fires("icudb", "collations", "user-defined-collation", "info", "public.french");
    assert_eq!(run1.findings.len(), 6, "{}", run1.dump());

    // What the remediation says: import the system's collations (libc and ICU) on the target.
    sql(&target, "postgres", "select pg_import_system_collations('pg_catalog')");
    let run2 = pair.validate(Run { dbs, ..Run::default() });
    run2.exactly(&[("icudb", "collations", "user-defined-collation", "info", "public.french")]);
}

// ---------------------------------------------------------------------------------------
// Source adapters on a plain server
// ---------------------------------------------------------------------------------------

#[test]
fn adapters_on_plain_postgres() {
    // Single Server accepts only encrypted connections, and sslMode applies to both
    // servers: both speak TLS.
    let certs = pgferry_tests::test_ca_and_server_cert(&["localhost"]);
    let source = Cluster::builder()
        .ssl(&certs.server_cert_pem, &certs.server_key_pem)
        .setting("max_slot_wal_keep_size", "1GB")
        .setting("wal_sender_timeout", "0")
        .start()
        .unwrap();
    let target = Cluster::builder().ssl(&certs.server_cert_pem, &certs.server_key_pem).start().unwrap();
    source.create_database("app").unwrap();
    sql(&source, "app", "create table public.t (id int primary key)");
    // Single Server logins name the server (`user@server`); the adapter keeps such a login.
    sql(&source, "postgres", r#"create role migrator login; create role "migrator@pgsrc" login;"#);
    let pair = Pair::new(&source, &target);
    let online = |source_type: &'static str, user: &'static str| {
        pair.validate(Run { mode: "Online", source_type, source_user: user, ssl_mode: "Require", ..Run::default() })
    };
    let readiness = |o: &Outcome| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = o
            .findings
            .iter()
            .filter(|f| f.check == "source-readiness")
            .map(|f| (f.code.clone(), f.severity.clone(), f.object.clone()))
            .collect();
        v.sort();
        v
    };
    let triple = |code: &str, severity: &str, object: &str| (code.to_string(), severity.to_string(), object.to_string());

    // Phase 1: wal_level replica, no provider roles or settings, a role without REPLICATION.
    let cases = [
        ("OnPremises", "adapter-on-premises", "migrator", "wal_level", "superuser"),
        ("AzureVM", "adapter-azure-vm", "migrator", "wal_level", "superuser"),
        ("AWS_RDS", "adapter-aws-rds", "migrator", "rds.logical_replication", "rds_superuser"),
        ("AWS_AURORA", "adapter-aws-aurora", "migrator", "rds.logical_replication", "rds_superuser"),
        ("PostgreSQLSingleServer", "adapter-azure-single-server", "migrator@pgsrc", "azure.replication_support", "azure_pg_admin"),
    ];
    for (source_type, adapter, user, wal_object, admin) in cases {
        let o = online(source_type, user);
        assert_eq!(o.plugin_of("source-readiness"), adapter);
        assert_eq!(
            readiness(&o),
            vec![
                triple("admin-privilege-missing", "warning", user),
                triple("replication-privilege-missing", "error", user),
                triple("wal-level-not-logical", "error", wal_object),
            ],
            "{source_type}\n{}",
            o.dump()
        );
        let admin_msg = &o.findings.iter().find(|f| f.code == "admin-privilege-missing").unwrap().message;
        assert!(admin_msg.contains(admin), "{source_type}: {admin_msg}");
        // The rules' findings with the adapter's codes are replaced by the adapter's.
        for check in ["wal-level", "replication-privilege"] {
            assert!(o.findings.iter().all(|f| f.check != check), "{source_type}\n{}", o.dump());
        }
        o.absent("wal-sender-timeout-short"); // 0 disables the timeout
    }

    // Phase 2: the providers' own roles and parameters imitated on the plain server
    // (placeholders, so a reload suffices); wal_level is still replica.
    sql(
        &source,
        "postgres",
        r#"create role rds_replication nologin;
           create role rds_superuser nologin in role rds_replication;
           create role azure_pg_admin nologin;
           grant rds_superuser to migrator;
           grant azure_pg_admin to "migrator@pgsrc";
           alter role "migrator@pgsrc" replication;
           grant pg_read_all_data to migrator, "migrator@pgsrc";"#,
    );
    // ALTER SYSTEM accepts a custom setting once this session has a placeholder for it.
    let script = pair.pf.write(
        "provider-settings.sql",
        r#"set "rds.logical_replication" = 'on';
           alter system set "rds.logical_replication" = 'on';
           set "azure.replication_support" = 'logical';
           alter system set "azure.replication_support" = 'logical';
           select pg_reload_conf();"#,
    );
    source.psql_file("postgres", &script, true).unwrap();
    // A role with REPLICATION: no replication-privilege-missing from adapter or rule.
    let o = online("AzureVM", "migrator@pgsrc");
    assert_eq!(
        readiness(&o),
        vec![triple("admin-privilege-missing", "warning", "migrator@pgsrc"), triple("wal-level-not-logical", "error", "wal_level")],
        "{}",
        o.dump()
    );
    o.absent("replication-privilege-missing");
    // Single Server judges by azure.replication_support, now logical: the adapter is
    // satisfied, and it owns `wal-level-not-logical`, so the generic `wal-level` rule (which
    // would look at wal_level, still `replica` in this imitation) gives way. On a real Single
    // Server the parameter sets wal_level.
    let o = online("PostgreSQLSingleServer", "migrator@pgsrc");
    assert!(readiness(&o).is_empty(), "{}", o.dump());
    o.exactly(&[]);

    // Phase 3: wal_level logical.
    sql(&source, "postgres", "alter system set wal_level = logical");
    source.restart().unwrap();

    // Self-managed: the role is still neither superuser nor REPLICATION.
    let o = online("OnPremises", "migrator");
    assert_eq!(
        readiness(&o),
        vec![triple("admin-privilege-missing", "warning", "migrator"), triple("replication-privilege-missing", "error", "migrator")],
        "{}",
        o.dump()
    );
    o.absent("wal-level-not-logical");

    // Single Server: replication support on, REPLICATION, azure_pg_admin: all ready.
    let o = online("PostgreSQLSingleServer", "migrator@pgsrc");
    o.exactly(&[]);

    // RDS and Aurora: rds.logical_replication on, rds_superuser (hence rds_replication):
    // the adapters are satisfied...
    for source_type in ["AWS_RDS", "AWS_AURORA"] {
        let o = online(source_type, "migrator");
        assert!(readiness(&o).is_empty(), "{source_type}\n{}", o.dump());
        // ...and so is the runner: the adapters own `replication-privilege-missing` (their
        // `owned-codes`), so the generic rule, which knows nothing of rds_replication, does
        // not fail a role that RDS lets replicate.
        o.exactly(&[]);
    }
}

// ---------------------------------------------------------------------------------------
// Across versions (servers from .ci/run's npm install)
// ---------------------------------------------------------------------------------------

/// Creates an extension, or says why it cannot (pltcl needs the OS's libtcl8.6).
fn try_extension(cluster: &Cluster, db: &str, name: &str) -> Result<(), String> {
    cluster.psql(db, &format!("create extension {name}")).map(|_| ()).map_err(|e| format!("{e:#}"))
}

#[test]
fn source_newer_than_target_pg16_to_pg15() {
    if !pg_available(16) {
        skip!("PostgreSQL 16 is not installed (bash .ci/run installs it under /opt/pgferry-pg/16)");
    }
    let source = Cluster::builder().version(16).start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    if let Err(e) = try_extension(&source, "app", "pltcl") {
        skip!("pltcl cannot be created on PostgreSQL 16 (libtcl8.6 missing? bash .ci/run installs it): {e}");
    }
    sql(
        &source,
        "app",
        "create extension pg_buffercache;
         create extension hstore;
         create function public.hello() returns text language pltcl as $$ return hello $$;
         create table public.t (id int primary key, h hstore);",
    );
    let pair = Pair::new(&source, &target);
    let o = pair.validate(Run::default());
    let f = o.fires("server", "server-version", "target-version-older", "error", &pair.target_address());
    assert!(f.message.contains("the target runs PostgreSQL 15 and the source 16"), "{}", f.message);
    let f = o.fires("app", "extensions", "extension-version-older-on-target", "warning", "pg_buffercache");
    assert!(f.message.contains("1.4") && f.message.contains("1.3"), "{}", f.message);
    o.fires("app", "extensions", "extension-unavailable-on-target", "error", "pltcl");
    o.fires("app", "procedural-languages", "language-unavailable-on-target", "error", "pltcl");
    o.absent_on("extension-version-older-on-target", "hstore"); // 1.8 on both
    // pltcl's control file puts it in pg_catalog: not the user's doing (this was a false
    // positive, fixed in rules-schema).
    o.absent("extension-in-system-schema");
    o.absent("target-version-newer");
    assert_eq!(o.findings.len(), 4, "{}", o.dump());
}

#[test]
fn source_much_older_pg13_to_pg16() {
    if !pg_available(13) || !pg_available(16) {
        skip!("PostgreSQL 13 and 16 are not both installed (bash .ci/run installs them under /opt/pgferry-pg)");
    }
    let source = Cluster::builder().version(13).setting("wal_level", "logical").start().unwrap();
    let target = Cluster::builder().version(16).start().unwrap();
    source.create_database("app").unwrap();
    if let Err(e) = try_extension(&source, "app", "pltcl") {
        skip!("pltcl cannot be created on PostgreSQL 13 (libtcl8.6 missing? bash .ci/run installs it): {e}");
    }
    sql(
        &source,
        "app",
        "create extension pltclu;
         create table public.t (id int primary key);
         create role reader login;",
    );
    let pair = Pair::new(&source, &target);

    let o = pair.validate(Run { mode: "Online", ..Run::default() });
    let f = o.fires("server", "server-version", "target-version-newer", "info", &pair.target_address());
    assert!(f.message.contains("3 major versions above the source (13)"), "{}", f.message);
    o.fires("app", "procedural-languages", "untrusted-language", "warning", "pltclu");
    o.absent_on("untrusted-language", "pltcl"); // trusted
    o.absent("extension-in-system-schema"); // pltcl and pltclu belong in pg_catalog
    o.absent("language-unavailable-on-target"); // both exist on the target
    o.absent("extension-unavailable-on-target");
    o.absent("target-version-older");
    // PostgreSQL 13 has max_slot_wal_keep_size, default -1.
    o.fires("server", "replication-settings", "slot-wal-unlimited", "info", "max_slot_wal_keep_size");
    assert_eq!(o.findings.len(), 3, "{}", o.dump());

    // Before 14 there is no pg_read_all_data: the remediation asks for grants.
    let o = pair.validate(Run { source_user: "reader", ..Run::default() });
    let f = o.fires("server", "role-privileges", "source-role-cannot-read-all", "warning", "reader");
    assert!(f.remediation.contains("GRANT SELECT ON ALL TABLES IN SCHEMA"), "{}", f.remediation);
    assert!(!f.remediation.contains("pg_read_all_data"), "{}", f.remediation);
}

#[test]
fn tables_with_oids_pg11_to_pg15() {
    if !pg_available(11) {
        skip!("PostgreSQL 11 is not installed (bash .ci/run installs it under /opt/pgferry-pg/11)");
    }
    let source = Cluster::builder().version(11).setting("wal_level", "logical").start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    sql(
        &source,
        "app",
        "create table public.legacy (id int primary key, v text) with oids;
         create table public.modern (id int primary key, v text);",
    );
    let pair = Pair::new(&source, &target);
    let o = pair.validate(Run { mode: "Online", ..Run::default() });
    o.exactly(&[
        ("server", "server-version", "target-version-newer", "info", &pair.target_address()),
        ("app", "tables-with-oids", "table-with-oids", "error", "public.legacy"),
    ]);
    // PostgreSQL 11 has neither max_slot_wal_keep_size nor logical_decoding_work_mem:
    // nothing to report about them (retention is unlimited there anyway).
    o.absent("slot-wal-unlimited");
    o.absent("logical-decoding-work-mem-low");
}
