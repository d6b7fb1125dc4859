//! A plugin granted `sql` against a real PostgreSQL 15 superuser session: every statement
//! that could change something is refused with an error naming the plugin, the server shows
//! no effect afterwards, loops on host calls stop at the plugin's deadline, and catalog reads
//! still work. The hostile guest is `guest-sql-attacks` (tests/guests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgferry::conn_config::{ConnParams, Role, SslMode};
use pgferry::plugin_host::*;
use pgferry::plugin_sql::{PluginSql, RESULT_BYTES};
use pgferry_tests::{pg_available, skip, workspace_root, Cluster, Pgferry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PLUGIN: &str = "guest-sql-attacks";
const DEADLINE: Duration = Duration::from_millis(1500);
/// Scheduling slack on a busy 2-core machine.
const MARGIN: Duration = Duration::from_millis(1000);

struct Attacker {
    host: PluginHost,
    services: Arc<Services>,
    bytes: Vec<u8>,
}

impl Attacker {
    fn new(cluster: &Cluster) -> Attacker {
        let spec = |role| {
            let params = ConnParams {
                host: Some(cluster.host().into()),
                port: Some(cluster.port()),
                user: Some(cluster.user().into()),
                sslmode: Some(SslMode::Disable),
                ..Default::default()
            };
            params.resolve(role, SslMode::Disable).unwrap()
        };
        let sql = PluginSql::new(spec(Role::Source), spec(Role::Target));
        let services = Arc::new(Services { inventory: Arc::new(Inventory::empty()), sql: Some(Arc::new(sql)) });
        let path = workspace_root().join("tests/guests/dist").join(format!("{PLUGIN}.wasm"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build-plugins`", path.display()));
        Attacker { host: PluginHost::new(None).unwrap(), services, bytes }
    }

    /// Runs one attack; returns the call's outcome and how long it took.
    async fn attack(&self, attack: &str, settings: &[(&str, &str)]) -> (Result<Vec<Finding>, PluginError>, Duration) {
        let mut all = vec![("attack".to_string(), attack.to_string())];
        all.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let limits = Limits { deadline: DEADLINE, memory_bytes: 64 << 20 };
        let plugin = self.host.load(PLUGIN, Origin::BuiltIn, &self.bytes, Grants { sql: true }, all, limits).unwrap();
        let ctx = CheckContext {
            migration_name: "attacks".into(),
            mode: MigrationMode::Offline,
            migration_option: MigrationOption::Validate,
            source_type: "OnPremises".into(),
            database: None,
            dbs_to_migrate: vec!["app".into()],
            overwrite_dbs_in_target: false,
        };
        let started = Instant::now();
        let outcome = self.host.check_rule(&plugin, self.services.clone(), "sql-attacks", &ctx).await;
        (outcome, started.elapsed())
    }

    /// The attack's single finding, which must say the host refused it, naming the plugin.
    async fn refused(&self, attack: &str, settings: &[(&str, &str)]) -> String {
        let (outcome, elapsed) = self.attack(attack, settings).await;
        let findings = outcome.unwrap_or_else(|e| panic!("{attack}: {e}"));
        assert_eq!(findings.len(), 1, "{attack}: {findings:?}");
        let message = findings[0].message.clone();
        eprintln!("{attack} ({elapsed:?}): {message}");
        assert_eq!(findings[0].code, "refused", "{attack} was not refused: {message}");
        assert!(message.starts_with(&format!("plugin `{PLUGIN}`: ")), "{attack}: the refusal does not name the plugin: {message}");
        assert!(elapsed < DEADLINE + MARGIN, "{attack} took {elapsed:?}");
        message
    }
}

fn psql(cluster: &Cluster, db: &str, sql: &str) -> String {
    cluster.psql(db, sql).unwrap_or_else(|e| panic!("{sql}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_sql_cannot_change_the_server() {
    let cluster = Cluster::start().unwrap();
    cluster.create_database("app").unwrap();
    psql(&cluster, "app", "create sequence public.victim_seq; create table public.victim (i int); insert into public.victim values (1)");
    // Written to postgresql.auto.conf but not loaded: only pg_reload_conf() would load it.
    psql(&cluster, "postgres", "alter system set work_mem = '77MB'");
    let victim = cluster.client("app").await.unwrap();
    let pid: i32 = victim.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let pid = pid.to_string();
    // A volatile function reached through an operator, a view, functions that claim to be
    // stable, a row-level-security policy, a domain's CHECK and an aggregate's step.
    psql(
        &cluster,
        "app",
        &format!(
            "create function public.reap(int, int) returns bool language sql volatile as 'select pg_terminate_backend($1)';
             create operator public.=== (leftarg = int, rightarg = int, function = public.reap);
             create view public.reaper as select pg_terminate_backend({pid}) as done;
             create function public.reap_stable_sql(int) returns bool language sql stable as 'select pg_terminate_backend($1)';
             create function public.reap_stable_plpgsql(int) returns bool language plpgsql stable
                 as $$ begin perform pg_terminate_backend($1); return true; end $$;
             create table public.guarded (i int);
             alter table public.guarded enable row level security;
             create policy reap on public.guarded using (pg_terminate_backend({pid}));
             create domain public.reaping as int check (pg_terminate_backend(value));
             create function public.reap_step(int, int) returns int language sql stable
                 as 'select case when pg_terminate_backend($2) then 1 else 0 end';
             create aggregate public.reap_all(int) (sfunc = public.reap_step, stype = int)"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    // The server runs as `postgres`: give it a directory it could write to, so only the
    // refusal keeps the file from appearing.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let file = dir.path().join("owned");
    let path = file.display().to_string();
    let settings = [("path", path.as_str()), ("pid", pid.as_str())];

    let attacker = Attacker::new(&cluster);
    let expectations = [
        ("copy-to-program", "it is a CopyStmt"),
        ("copy-to-file", "it is a CopyStmt"),
        ("read-file", "pg_read_file"),
        ("read-file-cte", "pg_read_file"),
        ("lo-export", "volatile"),
        ("terminate", "pg_terminate_backend"),
        ("terminate-via-operator", "through operator ==="),
        ("terminate-via-view", "(in the definition of view public.reaper)"),
        ("terminate-via-sql-function", "(in the body of function reap_stable_sql(integer))"),
        ("terminate-via-plpgsql-function", "written in plpgsql, whose body this check cannot read"),
        ("terminate-via-policy", "(in policy reap on public.guarded)"),
        ("terminate-via-domain", "(in constraint reaping_check of domain public.reaping)"),
        ("terminate-via-aggregate", "(in the body of function reap_step(integer,integer))"),
        ("slot", "pg_create_logical_replication_slot"),
        ("prepare-transaction", "it is a TransactionStmt"),
        ("reload-conf", "pg_reload_conf"),
        ("set-config", "set_config"),
        ("advisory-lock", "pg_advisory_lock"),
        ("read-write", "it is a VariableSetStmt"),
        ("sequence", "nextval"),
        ("select-into", "SELECT INTO"),
        ("delete-cte", "DeleteStmt"),
        ("for-update", "FOR UPDATE/SHARE"),
        ("password-hashes", "pg_authid, which holds role password hashes"),
        ("password-hashes-xml", "table_to_xml"),
        ("two-statements", "2 statements"),
    ];
    for (attack, expected) in expectations {
        let message = attacker.refused(attack, &settings).await;
        assert!(message.contains("SQL refused: "), "{attack}: {message}");
        assert!(message.contains(expected), "{attack}: expected {expected:?} in {message}");
    }
    // The code behind a name is judged by what it calls.
    for attack in ["terminate-via-view", "terminate-via-sql-function", "terminate-via-policy", "terminate-via-domain", "terminate-via-aggregate"] {
        assert!(attacker.refused(attack, &settings).await.contains("it may call pg_terminate_backend(integer,bigint)"), "{attack}");
    }

    // The server shows no effect.
    assert!(!file.exists(), "the server wrote {path}");
    assert_eq!(victim.query_one("select 1", &[]).await.map(|r| r.get::<_, i32>(0)).ok(), Some(1), "the victim session was ended");
    assert_eq!(psql(&cluster, "app", "select count(*) from pg_replication_slots"), "0");
    assert_eq!(psql(&cluster, "app", "select count(*) from pg_prepared_xacts"), "0");
    assert_eq!(psql(&cluster, "app", "select count(*) from pg_largeobject_metadata"), "0");
    assert_eq!(psql(&cluster, "app", "select count(*) from pg_locks where locktype = 'advisory'"), "0");
    assert_eq!(psql(&cluster, "app", "select last_value || ' ' || is_called from public.victim_seq"), "1 false");
    assert_eq!(psql(&cluster, "app", "select count(*) from public.victim"), "1");
    assert_eq!(psql(&cluster, "app", "select count(*) from pg_class where relname = 'sneaky'"), "0");
    assert_eq!(psql(&cluster, "app", "show work_mem"), "4MB", "postgresql.auto.conf was loaded (pg_reload_conf ran)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_sql_loops_stop_at_the_deadline() {
    let cluster = Cluster::start().unwrap();
    cluster.create_database("app").unwrap();
    let attacker = Attacker::new(&cluster);
    for attack in ["sleep-loop", "slow-query-loop", "host-call-loop"] {
        let (outcome, elapsed) = attacker.attack(attack, &[]).await;
        let err = outcome.expect_err(attack);
        let shown = err.to_string();
        eprintln!("{attack} stopped after {elapsed:?}: {shown}");
        assert!(shown.starts_with(&format!("plugin `{PLUGIN}`: ")), "{shown}");
        assert!(matches!(err.kind, PluginErrorKind::Deadline { function: "check", deadline } if deadline == DEADLINE), "{attack}: {shown}");
        assert!(elapsed >= DEADLINE, "{attack} stopped after {elapsed:?}, before its deadline");
        assert!(elapsed < DEADLINE + MARGIN, "{attack} stopped only after {elapsed:?}");
    }
    // The slow statement was canceled on the server, not left running.
    let running = psql(&cluster, "postgres", "select count(*) from pg_stat_activity where query like '%generate_series(1, 1000000000)%' and pid <> pg_backend_pid()");
    assert_eq!(running, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_sql_still_reads_the_catalog_within_its_byte_cap() {
    let cluster = Cluster::start().unwrap();
    cluster.create_database("app").unwrap();
    psql(&cluster, "app", "create table public.victim (i int)");
    let attacker = Attacker::new(&cluster);
    let (outcome, _) = attacker.attack("catalog-read", &[]).await;
    let findings = outcome.unwrap();
    assert_eq!(findings[0].code, "ran", "{findings:?}");
    assert_eq!(findings[0].message, r#"rows=[[Some("app")], [Some("victim")]] truncated=false"#);

    let message = attacker.refused("big-row", &[]).await;
    // The row as the server measures it: its text form, `(` value `)`.
    assert!(message.contains(&format!("a result row of {} bytes is over the cap of {RESULT_BYTES} bytes", (8 << 20) + 2)), "{message}");
}

/// The judgement's catalog queries work on the oldest and newest servers the harness has:
/// a catalog read runs, a call through a policy and a plain volatile call are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_sql_is_judged_on_other_server_versions() {
    let versions: Vec<u32> = [11, 13, 16].into_iter().filter(|v| pg_available(*v)).collect();
    if versions.is_empty() {
        skip!("no PostgreSQL 11, 13 or 16 is installed (see .ci/run)");
    }
    for version in versions {
        let cluster = Cluster::builder().version(version).start().unwrap();
        cluster.create_database("app").unwrap();
        psql(
            &cluster,
            "app",
            "create table public.victim (i int);
             create table public.guarded (i int);
             alter table public.guarded enable row level security;
             create policy reap on public.guarded using (pg_terminate_backend(0))",
        );
        let attacker = Attacker::new(&cluster);
        let (outcome, _) = attacker.attack("catalog-read", &[]).await;
        let findings = outcome.unwrap_or_else(|e| panic!("PostgreSQL {version}: {e}"));
        assert_eq!(findings[0].message, r#"rows=[[Some("app")], [Some("victim")]] truncated=false"#, "PostgreSQL {version}");
        assert!(attacker.refused("terminate", &[("pid", "0")]).await.contains("pg_terminate_backend"), "PostgreSQL {version}");
        assert!(attacker.refused("terminate-via-policy", &[]).await.contains("(in policy reap on public.guarded)"), "PostgreSQL {version}");
    }
}

/// With `[sql] user` in the plugin configuration, plugin SQL logs in as that role, not as the
/// migration's admin: the server's own privileges then bound what a plugin can read.
#[test]
fn plugin_sql_logs_in_as_the_configured_role() {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    psql(&source, "app", "create table public.victim (i int); create role plugin_reader login");
    let pf = Pgferry::new();
    let guest = workspace_root().join("tests/guests/dist").join(format!("{PLUGIN}.wasm"));
    let props = pf
        .write(
            "p.json",
            json!({"properties": {"SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()), "DBsToMigrate": ["app"], "sourceType": "OnPremises"}})
                .to_string(),
        )
        .display()
        .to_string();
    let target_arg = format!("127.0.0.1:{}", target.port());
    let findings = |name: &str, login: &str| -> Vec<(String, String)> {
        let config = pf.write(
            &format!("{name}.toml"),
            format!(
                "{login}[[plugin]]\npath = {:?}\nsha256 = {:?}\ngrants = [\"sql\"]\n[plugin.settings]\nattack = \"whoami\"\n",
                guest.display().to_string(),
                hex::encode(Sha256::digest(std::fs::read(&guest).unwrap()))
            ),
        );
        let out = pf.run(&["--plugins", &config.display().to_string(), "migration", "create", "--migration-name", name, "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--output", "json"]);
        assert_eq!(out.code, 0, "{}", out.transcript());
        let doc: Value = serde_json::from_str(&out.stdout).unwrap();
        let check = doc["validation"]["serverLevel"]["checks"].as_array().unwrap().iter().find(|c| c["id"] == "sql-attacks").unwrap().clone();
        check["findings"].as_array().unwrap().iter().map(|f| (f["code"].as_str().unwrap().to_string(), f["message"].as_str().unwrap().to_string())).collect()
    };

    let as_admin = findings("as-admin", "");
    assert_eq!(as_admin[0], ("ran".to_string(), r#"rows=[[Some("postgres")]] truncated=false"#.to_string()), "{as_admin:?}");
    assert_eq!(as_admin[1], ("ran".to_string(), r#"rows=[[Some("0")]] truncated=false"#.to_string()), "{as_admin:?}");

    let as_reader = findings("as-reader", "[sql]\nuser = \"plugin_reader\"\n");
    assert_eq!(as_reader[0], ("ran".to_string(), r#"rows=[[Some("plugin_reader")]] truncated=false"#.to_string()), "{as_reader:?}");
    assert_eq!(as_reader[1].0, "refused", "{as_reader:?}");
    assert!(as_reader[1].1.contains("permission denied for table victim"), "{as_reader:?}");
}
