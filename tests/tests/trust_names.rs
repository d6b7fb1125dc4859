//! No name is read as a connection string: a source database named like a libpq
//! connection string (`host=… port=…`) or URI (`postgresql://…`) is migrated as a name,
//! and the passwords never go anywhere else. A fake server on loopback records every
//! connection attempt and every byte sent to it: it must see none.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgferry_tests::{Cluster, Pgferry};
use serde_json::json;

/// A listener that plays a PostgreSQL server asking for a cleartext password, recording
/// what each connection sends (startup packet, password message).
struct FakeServer {
    port: u16,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeServer {
    fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = seen.clone();
        // Lives until the test process ends; each connection is answered for at most 2 s.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let index = {
                    let mut seen = record.lock().unwrap();
                    seen.push(Vec::new());
                    seen.len() - 1
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut asked = false;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                    // SSLRequest / GSSENCRequest: refuse encryption, so the startup follows in clear.
                    if n == 8 && buf[4..6] == [0x04, 0xd2] {
                        let _ = stream.write_all(b"N");
                    } else if !asked {
                        // AuthenticationCleartextPassword: lure the password out.
                        let _ = stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                        asked = true;
                    }
                }
            }
        });
        FakeServer { port, seen }
    }

    fn connections(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }
}

/// Migrates source database `odd` (one table with a key, so post-data runs too) with
/// password auth on both sides, and checks that the fake server saw nothing and that the
/// database arrived exactly.
fn migrates_a_name_without_reading_it(odd: &str, fake: &FakeServer) {
    let source = Cluster::builder().password("source-pw-3f9").start().unwrap();
    let target = Cluster::builder().password("target-pw-8c1").start().unwrap();
    source.create_database(odd).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Through tokio-postgres: psql would read the name as a connection string itself.
    let rows = |c: &Cluster| -> Vec<(i32, String)> {
        rt.block_on(async {
            let client = c.client(odd).await.unwrap();
            client.query("select id, v from t order by id", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
        })
    };
    rt.block_on(async {
        let client = source.client(odd).await.unwrap();
        client.batch_execute("create table t (id int primary key, v text); insert into t select g, 'row ' || g from generate_series(1, 500) g;").await.unwrap();
    });

    let pf = Pgferry::new();
    // Written by hand: `Pgferry::properties` names the file after the database.
    let body = json!({"properties": {
        "SourceDBServerResourceId": format!("127.0.0.1:{}@postgres", source.port()),
        "DBsToMigrate": [odd],
        "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "source-pw-3f9", "TargetServerPassword": "target-pw-8c1"}},
    }});
    let props = pf.write("odd.json", body.to_string()).display().to_string();
    let out = pf.run(&["migration", "create", "--migration-name", "odd-name", "--properties", &props, "--target", &format!("127.0.0.1:{}", target.port()), "--jobs", "2", "--output", "json"]);

    assert_eq!(fake.connections(), Vec::<String>::new(), "a connection went to the fake server named by the database name: {}", out.transcript());
    assert_eq!(out.code, 0, "{}", out.transcript());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "Succeeded");
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]));
    let copied = rows(&target);
    assert_eq!(copied.len(), 500);
    assert_eq!(copied, rows(&source));
    // Post-data came through pg_restore into the database of that name.
    let key = rt.block_on(async {
        let client = target.client(odd).await.unwrap();
        client.query_one("select count(*) from pg_constraint where contype = 'p' and conrelid = 't'::regclass", &[]).await.unwrap().get::<_, i64>(0)
    });
    assert_eq!(key, 1, "the primary key was restored");
}

#[test]
fn a_database_named_like_a_connection_string_is_only_a_name() {
    let fake = FakeServer::start();
    let odd = format!("host=127.0.0.1 port={} dbname=x", fake.port);
    assert!(odd.len() <= 63);
    migrates_a_name_without_reading_it(&odd, &fake);
}

#[test]
fn a_database_named_like_a_uri_is_only_a_name() {
    let fake = FakeServer::start();
    let odd = format!("postgresql://127.0.0.1:{}/x", fake.port);
    migrates_a_name_without_reading_it(&odd, &fake);
}

/// The fake server does record what a libpq client sends it: without this, the tests above
/// could pass by a server that hears nothing.
#[test]
fn the_fake_server_hears_a_libpq_client() {
    let fake = FakeServer::start();
    let bin = pgferry_tests::pg_bin_dir(pgferry_tests::DEFAULT_VERSION);
    let _ = std::process::Command::new(bin.join("psql"))
        .args(["-X", "-At", "-c", "select 1", &format!("host=127.0.0.1 port={} user=someone dbname=x sslmode=disable connect_timeout=3", fake.port)])
        .env("PGPASSWORD", "lured-pw")
        .output()
        .unwrap();
    let seen = fake.connections().concat();
    assert!(seen.contains("someone") && seen.contains("lured-pw"), "{seen:?}");
}
