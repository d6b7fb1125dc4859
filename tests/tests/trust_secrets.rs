//! Secrets are used, never kept or shown: passwords given in the properties, inside a URI,
//! through PGPASSWORD and through a pgpass file, and a migrated role's password hash, are
//! found nowhere in the state dir, the CLI's output at PGFERRY_LOG=debug, `show` (table and
//! JSON) or the command lines of the pg_dump/pg_restore the runner starts.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgferry_tests::{Cluster, Pgferry};
use serde_json::json;

const SOURCE_PW: &str = "src-Secret-4f1a";
const TARGET_PW: &str = "tgt-Secret-9b2c";
const ROLE_PW: &str = "role-Secret-77d0";

/// Samples the command lines of running pg_dump and pg_restore processes until stopped.
struct CmdlineSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CmdlineSampler {
    fn start() -> CmdlineSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let (flag, record) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                    let program = Path::new(&args[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if program == "pg_dump" || program == "pg_restore" {
                        record.lock().unwrap().insert(args.join(" "));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        CmdlineSampler { stop, seen, thread: Some(thread) }
    }

    fn finish(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

fn all_files(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            all_files(&path, out);
        } else {
            out.push((path.display().to_string(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
}

#[test]
fn no_secret_is_stored_logged_shown_or_put_on_a_command_line() {
    let source = Cluster::builder().password(SOURCE_PW).start().unwrap();
    let target = Cluster::builder().password(TARGET_PW).start().unwrap();
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            &format!(
                "create table orders (id bigint primary key, note text); insert into orders select g, 'order ' || g from generate_series(1, 50000) g;
                 create role app_login login password '{ROLE_PW}'; grant select on orders to app_login;"
            ),
        )
        .unwrap();
    let hash = |c: &Cluster| c.psql("postgres", "select rolpassword from pg_authid where rolname = 'app_login'").unwrap();
    let source_hash = hash(&source);
    assert!(source_hash.starts_with("SCRAM-SHA-256$"), "{source_hash}");

    let pf = Pgferry::new();
    let target_arg = format!("127.0.0.1:{}", target.port());
    let plain_source = format!("127.0.0.1:{}@postgres", source.port());
    let properties = |name: &str, source_id: &str, secrets: serde_json::Value| {
        let body = json!({"properties": {
            "SourceDBServerResourceId": source_id, "DBsToMigrate": ["shop"], "OverwriteDBsInTarget": "true", "SecretParameters": secrets,
        }});
        pf.write(&format!("{name}.json"), body.to_string()).display().to_string()
    };
    let target_in_properties = json!({"AdminCredentials": {"TargetServerPassword": TARGET_PW}});
    let runs = [
        // The source's password inside the URI, the target's in the properties.
        ("in-uri", properties("in-uri", &format!("postgres://postgres:{SOURCE_PW}@127.0.0.1:{}/postgres", source.port()), target_in_properties.clone())),
        // The source's from PGPASSWORD.
        ("in-env", properties("in-env", &plain_source, target_in_properties)),
        // Both from ~/.pgpass (HOME is the installation's directory).
        ("in-pgpass", properties("in-pgpass", &plain_source, json!({}))),
    ];
    let mut texts: Vec<(String, String)> = Vec::new();
    let sampler = CmdlineSampler::start();
    for (name, props) in &runs {
        let mut env = vec![("PGFERRY_LOG", "debug")];
        if *name == "in-env" {
            env.push(("PGPASSWORD", SOURCE_PW));
        }
        if *name == "in-pgpass" {
            // Only now: the runs before must get by with what they were given.
            let pgpass = pf.write(".pgpass", format!("127.0.0.1:{}:*:postgres:{SOURCE_PW}\n127.0.0.1:{}:*:postgres:{TARGET_PW}\n", source.port(), target.port()));
            std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        let out = pf.run_with(&["migration", "create", "--migration-name", name, "--properties", props, "--target", &target_arg, "--jobs", "2"], &env);
        assert_eq!(out.code, 0, "{name}: {}", out.transcript());
        assert!(out.stderr.contains("DEBUG"), "{name}: debug logging is on: {}", out.transcript());
        texts.push((format!("{name}: create"), out.transcript()));
        for format in ["table", "json"] {
            let show = pf.run(&["migration", "show", "--migration-name", name, "--output", format]);
            assert_eq!(show.code, 0, "{}", show.transcript());
            texts.push((format!("{name}: show {format}"), show.transcript()));
        }
    }
    let cmdlines = sampler.finish();
    assert!(!cmdlines.is_empty(), "no pg_dump or pg_restore was seen running");
    texts.extend(cmdlines.iter().map(|c| ("a child's command line".to_string(), c.clone())));
    all_files(&pf.dir().join("state"), &mut texts);

    // The role came across with its password: the hash did travel, to the target alone.
    assert_eq!(hash(&target), source_hash);
    let uri_show = pf.show("in-uri");
    assert_eq!(uri_show["properties"]["sourceDbServerResourceId"], format!("postgres://postgres@127.0.0.1:{}/postgres", source.port()));
    let server_key = source_hash.rsplit(':').next().unwrap().to_string();
    for secret in [SOURCE_PW, TARGET_PW, ROLE_PW, &source_hash, &server_key] {
        for (what, text) in &texts {
            assert!(!text.contains(secret), "{secret:?} found in {what}:\n{text}");
        }
    }
}
