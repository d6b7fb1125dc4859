//! Tests of the test harness itself, against real PostgreSQL servers.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgferry_tests::{Cluster, test_ca_and_server_cert};

#[tokio::test]
async fn select_one_via_client_and_psql() -> Result<()> {
    let t = Instant::now();
    let pg = Cluster::builder().start()?;
    eprintln!("cluster start took {:?}", t.elapsed());
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.version(), 15);
    assert_eq!(
        pg.uri("postgres"),
        format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg.bin_dir().join("psql").is_file());

    let client = pg.client("postgres").await?;
    let one: i32 = client.query_one("select 1", &[]).await?.get(0);
    assert_eq!(one, 1);

    assert_eq!(pg.psql("postgres", "select 1")?, "1");
    // The harness settings are in effect.
    assert_eq!(pg.psql("postgres", "show fsync")?, "off");
    assert_eq!(pg.psql("postgres", "show listen_addresses")?, "127.0.0.1");
    assert_eq!(pg.psql("postgres", "show server_encoding")?, "UTF8");
    Ok(())
}

#[test]
fn two_clusters_at_once_have_different_ports() -> Result<()> {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Cluster::builder().start());
        let b = s.spawn(|| Cluster::builder().start());
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a?, b?);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("postgres", "create table only_in_a (x int)")?;
    assert_eq!(
        a.psql(
            "postgres",
            "select count(*) from pg_class where relname = 'only_in_a'"
        )?,
        "1"
    );
    assert_eq!(
        b.psql(
            "postgres",
            "select count(*) from pg_class where relname = 'only_in_a'"
        )?,
        "0"
    );
    Ok(())
}

#[test]
fn setting_wal_level_logical() -> Result<()> {
    let pg = Cluster::builder().setting("wal_level", "logical").start()?;
    assert_eq!(pg.psql("postgres", "SHOW wal_level")?, "logical");
    Ok(())
}

#[tokio::test]
async fn password_is_required_over_tcp() -> Result<()> {
    let pg = Cluster::builder().password("secret").start()?;
    assert_eq!(pg.password(), Some("secret"));
    assert!(!pg.uri("postgres").contains("secret"));

    // No password: refused.
    let mut no_pw = tokio_postgres::Config::new();
    no_pw
        .host(pg.host())
        .port(pg.port())
        .user("postgres")
        .dbname("postgres");
    let err = no_pw
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("connecting without a password must fail");
    // The server asked for a password (scram), which the client did not have.
    assert!(
        format!("{err:?}").contains("password missing"),
        "unexpected error: {err:?}"
    );

    // Wrong password: refused by the server.
    let mut wrong = no_pw.clone();
    wrong.password("not-the-secret");
    let err = wrong
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("connecting with a wrong password must fail");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "unexpected error: {err:?}"
    );

    // Right password: accepted, through both the client and psql.
    let client = pg.client("postgres").await?;
    let user: String = client
        .query_one("select current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(user, "postgres");
    assert_eq!(pg.psql("postgres", "select 1")?, "1");
    // Without PGPASSWORD, psql is refused too.
    let out = pg
        .psql_command("postgres")
        .env_remove("PGPASSWORD")
        .args(["-w", "-At", "-c", "select 1"])
        .output()?;
    assert!(!out.status.success(), "psql without password must fail");
    Ok(())
}

#[test]
fn ssl_with_generated_certificates() -> Result<()> {
    let certs = test_ca_and_server_cert(&["localhost", "127.0.0.1"]);
    let pg = Cluster::builder()
        .ssl(&certs.server_cert_pem, &certs.server_key_pem)
        .start()?;
    let query = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(
        pg.psql_with_env("postgres", query, &[("PGSSLMODE", "require")])?,
        "t"
    );
    assert_eq!(
        pg.psql_with_env("postgres", query, &[("PGSSLMODE", "disable")])?,
        "f"
    );

    // The chain verifies against the generated CA, including the IP SAN.
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &certs.ca_pem)?;
    let ca = ca.to_str().unwrap();
    assert_eq!(
        pg.psql_with_env(
            "postgres",
            query,
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)]
        )?,
        "t"
    );
    // ... and a certificate for another name does not.
    let other = test_ca_and_server_cert(&["elsewhere.example"]);
    let pg2 = Cluster::builder()
        .ssl(&other.server_cert_pem, &other.server_key_pem)
        .start()?;
    let other_ca = dir.path().join("other.crt");
    std::fs::write(&other_ca, &other.ca_pem)?;
    let err = pg2
        .psql_with_env(
            "postgres",
            query,
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", other_ca.to_str().unwrap()),
            ],
        )
        .expect_err("verify-full against a certificate for another name must fail");
    assert!(
        err.to_string().contains("does not match host name"),
        "unexpected error: {err:#}"
    );
    Ok(())
}

#[test]
fn drop_stops_the_server_and_removes_the_dir() -> Result<()> {
    let pg = Cluster::builder().start()?;
    let dir = pg.data_dir().to_path_buf();
    let port = pg.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(pg);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err(),
        "port {port} still accepts connections"
    );
    Ok(())
}

#[tokio::test]
async fn restart_and_stop_keep_data_and_settings() -> Result<()> {
    let pg = Cluster::builder().setting("work_mem", "7MB").start()?;
    pg.create_database("app db")?;
    pg.psql(
        "app db",
        "create table t (x int); insert into t values (42)",
    )?;
    let before = pg.psql("postgres", "select pg_postmaster_start_time()")?;
    pg.restart()?;
    assert!(pg.is_running());
    assert_ne!(
        pg.psql("postgres", "select pg_postmaster_start_time()")?,
        before
    );
    assert_eq!(pg.psql("app db", "select x from t")?, "42");
    assert_eq!(pg.psql("postgres", "show work_mem")?, "7MB");
    let client = pg.client("app db").await?;
    let x: i32 = client.query_one("select x from t", &[]).await?.get(0);
    assert_eq!(x, 42);
    drop(client);

    pg.stop()?;
    assert!(!pg.is_running());
    assert!(pg.psql("postgres", "select 1").is_err());
    pg.restart()?;
    assert_eq!(pg.psql("app db", "select x from t")?, "42");
    Ok(())
}

#[test]
fn psql_errors_carry_stderr_and_files_run() -> Result<()> {
    let pg = Cluster::builder().start()?;
    let err = pg
        .psql("postgres", "select * from no_such_table")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("relation \"no_such_table\" does not exist"),
        "unexpected error: {err:#}"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("script.sql");
    std::fs::write(
        &file,
        "create table a (x int);\nselect * from missing;\ncreate table b (x int);\n",
    )?;
    let err = pg.psql_file("postgres", &file, true).unwrap_err();
    assert!(
        err.to_string().contains("missing"),
        "unexpected error: {err:#}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "select count(*) from pg_class where relname in ('a','b')"
        )?,
        "1"
    );

    pg.create_database("second")?;
    let out = pg.psql_file("second", &file, false)?;
    assert!(
        out.stderr.contains("relation \"missing\" does not exist"),
        "stderr: {}",
        out.stderr
    );
    assert_eq!(
        pg.psql(
            "second",
            "select count(*) from pg_class where relname in ('a','b')"
        )?,
        "2"
    );
    Ok(())
}

#[test]
fn start_failure_reports_the_server_log() {
    let err = Cluster::builder()
        .setting("shared_buffers", "not-a-size")
        .start()
        .expect_err("a bad setting must make the start fail");
    let msg = format!("{err:#}");
    eprintln!("{msg}");
    assert!(
        msg.contains("shared_buffers"),
        "error lacks the log tail: {msg}"
    );
}

#[test]
fn skip_macro_returns_early() {
    fn unit() {
        pgferry_tests::skip!("nothing to see ({})", 42);
        #[allow(unreachable_code)]
        {
            panic!("skip! did not return");
        }
    }
    fn result() -> Result<()> {
        let _v: u32 = pgferry_tests::require!(None::<u32>, "value absent");
        panic!("require! did not return");
    }
    unit();
    result().unwrap();
    // corpus_dir is Some exactly when the directory exists.
    if let Some(c) = pgferry_tests::corpus_dir() {
        assert!(c.is_dir());
    }
}

#[test]
fn postgis_extension_when_installed() -> Result<()> {
    let pg = Cluster::builder().start()?;
    let available = pg.psql(
        "postgres",
        "select count(*) from pg_available_extensions where name = 'postgis'",
    )?;
    if available != "1" {
        pgferry_tests::skip!("PostGIS is not installed for PostgreSQL {}", pg.version());
    }
    pg.psql("postgres", "create extension postgis")?;
    assert_eq!(
        pg.psql("postgres", "select ST_AsText(ST_MakePoint(1, 2))")?,
        "POINT(1 2)"
    );
    Ok(())
}

#[test]
fn orphans_of_dead_test_processes_are_reaped() -> Result<()> {
    let pg = Cluster::builder().start()?;
    let port = pg.port();
    // Pretend the owning test process died without dropping the cluster.
    let mut child = std::process::Command::new("true").spawn()?;
    let dead_pid = child.id();
    child.wait()?;
    std::fs::write(pg.dir().join("owner.pid"), dead_pid.to_string())?;
    pgferry_tests::cluster::reap_orphans();
    assert!(!pg.dir().exists(), "{} was not reaped", pg.dir().display());
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err(),
        "port {port} still accepts connections"
    );
    drop(pg); // must not complain about the missing dir
    Ok(())
}
