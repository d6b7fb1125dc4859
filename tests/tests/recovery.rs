//! Recovery when things go wrong, against real servers with password (scram) logins: a
//! runner killed at each step boundary (the `PGFERRY_CRASH_AFTER` hook aborts the process
//! the moment a substate is committed, as a kill -9 there would), then resume or cancel;
//! credentials missing for the command that must clean up; leases between processes; a
//! cancel that cannot finish; a database that was on the target before the migration.

use std::process::{Child, Stdio};
use std::time::Duration;

use pgferry_tests::compare::{self, sequences};
use pgferry_tests::{Cluster, Pgferry};
use serde_json::{json, Value};

const SOURCE_PASSWORD: &str = "source-pw-4a1f";
const TARGET_PASSWORD: &str = "target-pw-77c2";

fn source_cluster() -> Cluster {
    Cluster::builder()
        .password(SOURCE_PASSWORD)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "10")
        .setting("max_wal_senders", "10")
        .start()
        .unwrap()
}

fn target_cluster() -> Cluster {
    // Prepared transactions let a test hold a database the cleanup cannot drop.
    Cluster::builder().password(TARGET_PASSWORD).setting("max_prepared_transactions", "5").start().unwrap()
}

/// A small database with a key, a foreign key, a sequence and a table without a key.
fn load_shop(source: &Cluster, rows: u32) {
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            &format!(
                "create table customers (id serial primary key, name text);
                 insert into customers (name) select 'c' || g from generate_series(1, 500) g;
                 create table orders (id bigserial primary key, customer int references customers, total numeric, note text);
                 insert into orders (customer, total, note) select 1 + g % 500, g, repeat(md5(g::text), 4) from generate_series(1, {rows}) g;
                 create table audit (at timestamptz default now(), what text);
                 alter table audit replica identity full;
                 insert into audit (what) select 'a' || g from generate_series(1, 100) g;"
            ),
        )
        .unwrap();
}

/// Properties with both passwords (the state store must never keep them).
fn properties(pf: &Pgferry, source: &Cluster, target: &Cluster, mode: &str) -> String {
    let body = json!({"properties": {
        "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()),
        "TargetDbServerFullyQualifiedDomainName": format!("127.0.0.1:{}", target.port()),
        "targetServerUserName": "postgres",
        "SecretParameters": {"AdminCredentials": {"SourceServerPassword": SOURCE_PASSWORD, "TargetServerPassword": TARGET_PASSWORD}},
        "DBsToMigrate": ["shop"],
        "sourceType": "OnPremises",
        "MigrationMode": mode,
    }});
    pf.write(&format!("{mode}.json"), body.to_string()).display().to_string()
}

fn create(pf: &Pgferry, name: &str, props: &str, env: &[(&str, &str)]) -> pgferry_tests::CliOutput {
    pf.run_with(&["migration", "create", "--migration-name", name, "--properties", props, "--output", "json"], env)
}

/// Runs a command line as `show` printed it (its words split as a shell would: these
/// have no quotes).
fn run_hint(pf: &Pgferry, hint: &str, extra: &[&str]) -> pgferry_tests::CliOutput {
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], "pgferry", "a hint is a pgferry command: {hint}");
    let mut args: Vec<&str> = words[1..].to_vec();
    args.extend_from_slice(extra);
    pf.run(&args)
}

fn assert_exact(source: &Cluster, target: &Cluster) {
    assert_eq!(compare::table_digests(target, "shop", false), compare::table_digests(source, "shop", false), "table contents differ");
    assert_eq!(sequences(target, "shop"), sequences(source, "shop"), "sequences differ");
}

fn target_has_shop(target: &Cluster) -> bool {
    target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap().trim() == "1"
}

/// Nothing of the migration on either server: no slot or publication on the source, no
/// replica identity changed, no origin on the target.
fn assert_nothing_left_by_replication(source: &Cluster, target: &Cluster) {
    assert_eq!(source.psql("postgres", "select count(*) from pg_replication_slots").unwrap().trim(), "0", "replication slots left on the source");
    assert_eq!(source.psql("shop", "select count(*) from pg_publication").unwrap().trim(), "0", "publications left on the source");
    assert_eq!(
        source.psql("shop", "select string_agg(relname || ':' || relreplident::text, ',' order by relname) from pg_class where relname in ('customers', 'orders', 'audit')").unwrap().trim(),
        "audit:f,customers:d,orders:d",
        "replica identities changed on the source"
    );
    assert_eq!(target.psql("postgres", "select count(*) from pg_replication_origin").unwrap().trim(), "0", "replication origins left on the target");
}

/// A foreground `create` with one copy worker, returned once it copies (the big table).
fn start_copying(pf: &Pgferry, name: &str, props: &str) -> Child {
    let runner = pf
        .command()
        .args(["migration", "create", "--migration-name", name, "--properties", props, "--jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pf.wait_for(name, "the copy", Duration::from_secs(60), |d| d["details"]["progress"]["databases"]["shop"]["tablesLoading"] == 1);
    runner
}

/// Cancels a migration whose runner crashed at `step`: Canceled, the database gone.
fn cancel_after_crash(pf: &Pgferry, name: &str, props: &str, step: &str, target: &Cluster) {
    let out = pf.run(&["migration", "update", "--migration-name", name, "--cancel", "--properties", props]);
    assert_eq!(out.code, 0, "cancel after a crash at {step}: {}", out.transcript());
    assert_eq!(pf.show(name)["state"], "Canceled");
    assert!(!target_has_shop(target), "cancel after a crash at {step} left the database");
}

fn crashed(out: &pgferry_tests::CliOutput) {
    assert!(out.stderr.contains("PGFERRY_CRASH_AFTER"), "the runner was to abort at the step boundary: {}", out.transcript());
    assert_ne!(out.code, 0, "{}", out.transcript());
}

#[test]
fn cancel_after_a_crash_without_passwords_changes_nothing_then_cleans_up_with_them() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 2000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    crashed(&create(&pf, "crashy", &props, &[("PGFERRY_CRASH_AFTER", "CompletingMigration")]));
    assert!(target_has_shop(&target), "the copy reached the target before the crash");

    let before = pf.show("crashy");
    assert_eq!((before["state"].as_str(), before["substate"].as_str()), (Some("InProgress"), Some("CompletingMigration")));
    assert_eq!(before["runner"]["alive"], false, "{before:#}");
    let resume_hint = before["next"].as_str().expect("show says what to run").to_string();
    assert!(resume_hint.contains(&format!("--properties {props}")), "the hint names the properties file with the passwords: {resume_hint}");

    // No password anywhere: refused before anything changes, naming the server and the fix.
    let cancel = pf.run(&["migration", "update", "--migration-name", "crashy", "--cancel"]);
    assert_eq!(cancel.code, 1, "{}", cancel.transcript());
    assert!(cancel.stderr.contains("was left unchanged"), "{}", cancel.transcript());
    assert!(cancel.stderr.contains(&format!("--cancel --properties {props}")), "{}", cancel.transcript());
    assert!(cancel.stderr.contains("PGFERRY_SOURCE_PASSWORD") || cancel.stderr.contains("PGFERRY_TARGET_PASSWORD"), "{}", cancel.transcript());
    let after = pf.show("crashy");
    assert_eq!(after["state"], "InProgress", "a refused cancel leaves the migration as it was: {after:#}");
    assert_eq!(after["transitions"], before["transitions"]);
    assert!(target_has_shop(&target));

    // The passwords from the environment variables the README documents.
    let cancel = pf.run_with(
        &["migration", "update", "--migration-name", "crashy", "--cancel", "--output", "json"],
        &[("PGFERRY_SOURCE_PASSWORD", SOURCE_PASSWORD), ("PGFERRY_TARGET_PASSWORD", TARGET_PASSWORD)],
    );
    assert_eq!(cancel.code, 0, "{}", cancel.transcript());
    let doc: Value = serde_json::from_str(&cancel.stdout).unwrap();
    assert_eq!(doc["state"], "Canceled");
    assert_eq!(doc["leftovers"], json!([]));
    assert_eq!(doc["details"]["droppedOnCancel"], json!(["shop"]));
    assert!(!target_has_shop(&target), "the canceled migration's database is still on the target");
    let again = pf.run(&["migration", "update", "--migration-name", "crashy", "--cancel"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("Canceled already"), "{}", again.transcript());
}

#[test]
fn the_resume_hint_works_as_printed_and_a_second_resume_is_refused_while_it_runs() {
    let (source, target) = (source_cluster(), target_cluster());
    // Big enough that the resumed copy is still running when the second resume comes.
    load_shop(&source, 400_000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    crashed(&create(&pf, "again", &props, &[("PGFERRY_CRASH_AFTER", "MigratingData")]));
    let doc = pf.show("again");
    assert_eq!(doc["substate"], "MigratingData");
    let hint = doc["next"].as_str().unwrap().to_string();
    assert_eq!(hint, format!("pgferry migration resume --migration-name again --properties {props}"));
    let table = pf.run(&["migration", "show", "--migration-name", "again"]);
    assert!(table.stdout.contains("Runner          not alive"), "{}", table.stdout);
    assert!(table.stdout.contains(&format!("Next            {hint}")), "{}", table.stdout);

    let words: Vec<String> = hint.split_whitespace().skip(1).map(str::to_string).collect();
    let first: Child = pf.command().args(&words).args(["--jobs", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let running = pf.wait_for("again", "the resumed runner", Duration::from_secs(60), |d| d["runner"]["alive"] == true);
    let second = run_hint(&pf, &hint, &[]);
    assert_eq!(second.code, 1, "{}", second.transcript());
    assert!(
        second.stderr.contains(&format!("is being run by process {}", running["runner"]["pid"])),
        "the second resume names the runner: {}",
        second.transcript()
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    let done = pf.show("again");
    assert_eq!(done["state"], "Succeeded");
    assert_eq!(done["runner"]["alive"], false, "the lease is released at the end");
    assert_exact(&source, &target);
}

#[test]
fn a_database_that_was_on_the_target_before_is_never_dropped() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 100);
    target.create_database("shop").unwrap();
    target.psql("shop", "create table precious (v text); insert into precious values ('keep me')").unwrap();
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    // Migrate skips validation, which would have refused the existing database.
    let out = pf.run(&["migration", "create", "--migration-name", "clash", "--properties", &props, "--migration-option", "Migrate", "--output", "json"]);
    assert_eq!(out.code, 5, "{}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(doc["error"]["message"].as_str().unwrap().contains("already exists"), "{doc:#}");
    assert_eq!(target.psql("shop", "select v from precious").unwrap().trim(), "keep me", "the failure dropped a database it did not create");
    // A Failed migration can be canceled; the user's database stays.
    let cancel = pf.run(&["migration", "update", "--migration-name", "clash", "--cancel", "--output", "json"]);
    assert_eq!(cancel.code, 0, "{}", cancel.transcript());
    assert_eq!(serde_json::from_str::<Value>(&cancel.stdout).unwrap()["state"], "Canceled");
    assert_eq!(target.psql("shop", "select v from precious").unwrap().trim(), "keep me", "the cancel dropped a database it did not create");
}

#[test]
fn a_cancel_that_cannot_drop_the_database_stays_canceling_and_finishes_when_asked_again() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 1000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    crashed(&create(&pf, "stuck", &props, &[("PGFERRY_CRASH_AFTER", "CompletingMigration")]));
    // A prepared transaction in the copied database: DROP DATABASE refuses, even WITH (FORCE).
    target.psql("shop", "begin; create table pin (i int); prepare transaction 'pin';").unwrap();

    let cancel = pf.run(&["migration", "update", "--migration-name", "stuck", "--cancel", "--properties", &props, "--output", "json"]);
    assert_eq!(cancel.code, 7, "a cancel with work left exits 7: {}", cancel.transcript());
    let doc: Value = serde_json::from_str(&cancel.stdout).unwrap();
    assert_eq!((doc["state"].as_str(), doc["substate"].as_str()), (Some("Canceling"), Some("CancelingRequestedDBMigrations")));
    let leftover = &doc["leftovers"][0];
    assert_eq!((leftover["server"].as_str(), leftover["kind"].as_str(), leftover["object"].as_str()), (Some("target"), Some("database"), Some("shop")), "{doc:#}");
    assert!(leftover["problem"].as_str().unwrap().contains("prepared transaction"), "{doc:#}");
    let next = doc["next"].as_str().unwrap().to_string();
    assert_eq!(next, format!("pgferry migration update --migration-name stuck --cancel --properties {props}"));
    let table = pf.run(&["migration", "show", "--migration-name", "stuck"]);
    assert!(table.stdout.contains("Leftover        database shop on the target"), "{}", table.stdout);
    // Resuming a migration being canceled is refused, naming the command that finishes it.
    let resume = pf.run(&["migration", "resume", "--migration-name", "stuck", "--properties", &props]);
    assert_eq!(resume.code, 1);
    assert!(resume.stderr.contains(&next), "{}", resume.transcript());

    target.psql("shop", "rollback prepared 'pin'").unwrap();
    let finish = run_hint(&pf, &next, &["--output", "json"]);
    assert_eq!(finish.code, 0, "{}", finish.transcript());
    let doc: Value = serde_json::from_str(&finish.stdout).unwrap();
    assert_eq!(doc["state"], "Canceled");
    assert_eq!(doc["leftovers"], json!([]));
    assert!(!target_has_shop(&target));
}

#[test]
fn a_cutover_with_no_runner_is_refused_and_works_after_resume() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 1000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Online");
    let create_args = ["migration", "create", "--migration-name", "live", "--properties", &props, "--migration-option", "Migrate"];
    crashed(&pf.run_with(&create_args, &[("PGFERRY_CRASH_AFTER", "WaitingForCutoverTrigger")]));
    source.psql("shop", "insert into orders (customer, total) values (1, 42); update customers set name = 'renamed' where id = 7").unwrap();

    let cutover = pf.run(&["migration", "update", "--migration-name", "live", "--cutover"]);
    assert_eq!(cutover.code, 1, "{}", cutover.transcript());
    let resume = format!("pgferry migration resume --migration-name live --properties {props}");
    assert!(cutover.stderr.contains("no runner is following") && cutover.stderr.contains(&resume), "{}", cutover.transcript());
    let doc = pf.show("live");
    assert_eq!(doc["runner"]["alive"], false);
    assert_eq!(doc["next"], resume.as_str());

    let words: Vec<String> = resume.split_whitespace().skip(1).map(str::to_string).collect();
    let runner = pf.command().args(&words).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    pf.wait_for("live", "the resumed runner waiting", Duration::from_secs(60), |d| d["runner"]["alive"] == true && d["substate"] == "WaitingForCutoverTrigger");
    let cutover = pf.run(&["migration", "update", "--migration-name", "live", "--cutover", "--output", "json"]);
    assert_eq!(cutover.code, 0, "{}", cutover.transcript());
    let out = runner.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pf.show("live")["state"], "Succeeded");
    assert_exact(&source, &target);
    assert_nothing_left_by_replication(&source, &target);
}

/// Every step boundary of an offline migration: crash there, then resume (ends exact) or
/// cancel (leaves nothing), alternately.
#[test]
fn a_crash_at_each_offline_step_boundary_then_resume_or_cancel() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 2000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    let steps = ["PerformingPreRequisiteSteps", "ValidationInProgress", "MigratingData", "CompletingMigration"];
    for (i, step) in steps.iter().enumerate() {
        let name = format!("offline-{i}");
        crashed(&create(&pf, &name, &props, &[("PGFERRY_CRASH_AFTER", step)]));
        assert_eq!(pf.show(&name)["substate"], *step);
        if i % 2 == 0 {
            let out = pf.run(&["migration", "resume", "--migration-name", &name, "--properties", &props]);
            assert_eq!(out.code, 0, "resume after a crash at {step}: {}", out.transcript());
            assert_exact(&source, &target);
            target.psql("postgres", "drop database shop").unwrap();
        } else {
            cancel_after_crash(&pf, &name, &props, step, &target);
        }
    }
}

/// Every step boundary of an online migration, the cutover's included.
#[test]
fn a_crash_at_each_online_step_boundary_then_resume_or_cancel() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 2000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Online");
    for (i, step) in ["MigratingData", "WaitingForCutoverTrigger", "CompletingMigration"].iter().enumerate() {
        let name = format!("online-{i}");
        let args = ["migration", "create", "--migration-name", &name, "--properties", &props, "--migration-option", "Migrate"];
        if *step == "CompletingMigration" {
            // The crash comes with the cutover: the runner must be waiting for it first.
            let mut runner = pf.command().args(args).env("PGFERRY_CRASH_AFTER", step).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            pf.wait_for(&name, "WaitingForCutoverTrigger", Duration::from_secs(60), |d| d["substate"] == "WaitingForCutoverTrigger");
            source.psql("shop", "insert into orders (customer, total) values (2, 7)").unwrap();
            let cutover = pf.run(&["migration", "update", "--migration-name", &name, "--cutover"]);
            assert_ne!(cutover.code, 0, "the runner died during the cutover: {}", cutover.transcript());
            assert!(!runner.wait().unwrap().success());
        } else {
            crashed(&pf.run_with(&args, &[("PGFERRY_CRASH_AFTER", step)]));
        }
        assert_eq!(pf.show(&name)["substate"], *step);
        if i % 2 == 0 {
            let mut runner = pf.command().args(["migration", "resume", "--migration-name", &name, "--properties", &props]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            if *step != "CompletingMigration" {
                pf.wait_for(&name, "waiting again", Duration::from_secs(60), |d| d["substate"] == "WaitingForCutoverTrigger");
                source.psql("shop", "update orders set total = total + 1 where id < 50").unwrap();
                let cutover = pf.run(&["migration", "update", "--migration-name", &name, "--cutover"]);
                assert_eq!(cutover.code, 0, "{}", cutover.transcript());
            }
            assert!(runner.wait().unwrap().success(), "resume after a crash at {step}");
            assert_eq!(pf.show(&name)["state"], "Succeeded");
            assert_exact(&source, &target);
            target.psql("postgres", "drop database shop").unwrap();
        } else {
            cancel_after_crash(&pf, &name, &props, step, &target);
        }
        assert_nothing_left_by_replication(&source, &target);
    }
}

/// Ctrl-C on a foreground `create`: the runner stops at once (its children with it), says
/// how to go on, exits 130, and `resume` finishes the migration.
#[test]
fn ctrl_c_stops_the_runner_with_a_message_and_resume_finishes() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 600_000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    let runner = start_copying(&pf, "interrupted", &props);
    // The bytes move while the one big table streams, not only when it ends.
    let streaming = pf.wait_for("interrupted", "bytes of the table being copied", Duration::from_secs(60), |d| d["details"]["progress"]["databases"]["shop"]["bytesCopied"].as_u64() > Some(0));
    assert_eq!(streaming["details"]["progress"]["databases"]["shop"]["tablesDone"], 0, "{streaming:#}");
    // SAFETY: signals a child process this test started.
    assert_eq!(unsafe { libc::kill(runner.id() as i32, libc::SIGINT) }, 0);
    let out = runner.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let resume = format!("pgferry migration resume --migration-name interrupted --properties {props}");
    assert!(stderr.contains("interrupted: migration \"interrupted\" is left InProgress/MigratingData with no runner") && stderr.contains(&resume), "{stderr}");
    let doc = pf.show("interrupted");
    assert_eq!(doc["runner"]["alive"], false, "the lease is released at once: {doc:#}");
    assert_eq!(doc["next"], resume.as_str());
    // Its backends end as soon as they read the closed connection (a moment, on a busy machine).
    let copying = || target.psql("postgres", "select count(*) from pg_stat_activity where datname = 'shop' and query ilike 'copy%'").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while copying().trim() != "0" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(copying().trim(), "0", "a copy into the target outlived the runner by 5 s");

    let out = run_hint(&pf, &resume, &[]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    assert_exact(&source, &target);
}

/// A runner that stalls past its lease (SIGSTOP) is taken over by `resume`; when it wakes up
/// it finds the lease lost and stops without writing to the store or touching the servers.
#[test]
fn a_runner_that_stalls_past_its_lease_is_taken_over_and_stands_down() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 600_000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    let stale = start_copying(&pf, "stalled", &props);
    let pid = stale.id() as i32;
    // SAFETY: signals a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);

    // While its lease lasts, the stalled runner still counts as alive.
    let early = pf.run(&["migration", "resume", "--migration-name", "stalled", "--properties", &props]);
    assert_eq!(early.code, 1, "{}", early.transcript());
    assert!(early.stderr.contains(&format!("is being run by process {pid}")), "{}", early.transcript());
    pf.wait_for("stalled", "the lease to expire", Duration::from_secs(20), |d| d["runner"]["alive"] == false);

    let taker = pf.command().args(["migration", "resume", "--migration-name", "stalled", "--properties", &props]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let taken = pf.wait_for("stalled", "the take-over", Duration::from_secs(30), |d| d["runner"]["alive"] == true);
    assert_eq!(taken["runner"]["pid"], taker.id(), "{taken:#}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let woken = stale.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&woken.stderr);
    assert_eq!(woken.status.code(), Some(1), "the stalled runner stands down: {stderr}");
    assert!(stderr.contains("lost its lease"), "{stderr}");

    let taker = taker.wait_with_output().unwrap();
    assert_eq!(taker.status.code(), Some(0), "{}", String::from_utf8_lossy(&taker.stderr));
    let doc = pf.show("stalled");
    assert_eq!(doc["state"], "Succeeded", "{doc:#}");
    assert_eq!(doc["error"], Value::Null, "the stalled runner wrote no error: {doc:#}");
    assert_exact(&source, &target);
}

/// A target written to behind the migration's back: the cutover's verification finds it,
/// the migration ends Failed naming the table, and nothing of the migration stays on the source.
#[test]
fn a_target_changed_behind_the_migration_fails_the_cutover_verification_naming_the_table() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 1000);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Online");
    let runner = pf
        .command()
        .args(["migration", "create", "--migration-name", "diverged", "--properties", &props, "--migration-option", "Migrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    pf.wait_for("diverged", "WaitingForCutoverTrigger", Duration::from_secs(60), |d| d["substate"] == "WaitingForCutoverTrigger");
    target.psql("shop", "update customers set name = 'changed on the target' where id = 3").unwrap();
    let cutover = pf.run(&["migration", "update", "--migration-name", "diverged", "--cutover", "--output", "json"]);
    assert_eq!(cutover.code, 5, "{}", cutover.transcript());
    let doc: Value = serde_json::from_str(&cutover.stdout).unwrap();
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("verification failed") && message.contains("public.customers") && message.contains("contents differ"), "{doc:#}");
    assert!(!message.contains("public.orders"), "only the changed table is named: {message}");
    let mut runner = runner;
    assert!(!runner.wait().unwrap().success());
    assert_nothing_left_by_replication(&source, &target);
}

/// A cancel during validation does not wait for slow plugins: a rule that loops until its
/// (long) deadline is stopped, and the migration is Canceled within seconds.
#[test]
fn a_cancel_stops_a_runner_busy_in_validation_within_seconds() {
    let (source, target) = (source_cluster(), target_cluster());
    load_shop(&source, 100);
    let pf = Pgferry::new();
    let props = properties(&pf, &source, &target, "Offline");
    let looping = pgferry_tests::workspace_root().join("tests/guests/dist/guest-infinite-loop.wasm");
    let pin = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&looping).unwrap()))
    };
    let plugins = pf.write("slow.toml", format!("[[plugin]]\npath = {:?}\nsha256 = {pin:?}\ndeadline_ms = 60000\n", looping.display().to_string()));
    let runner = pf
        .command()
        .args(["--plugins", &plugins.display().to_string(), "migration", "create", "--migration-name", "slow", "--properties", &props])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pf.wait_for("slow", "validation", Duration::from_secs(60), |d| d["substate"] == "ValidationInProgress");
    let asked = std::time::Instant::now();
    let cancel = pf.run(&["migration", "update", "--migration-name", "slow", "--cancel"]);
    assert_eq!(cancel.code, 0, "{}", cancel.transcript());
    let out = runner.wait_with_output().unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(15), "the cancel waited {took:?} for a plugin with a 60 s deadline");
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pf.show("slow")["state"], "Canceled");
    assert!(!target_has_shop(&target));
}
