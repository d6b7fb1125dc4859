//! The per-table pipeline of an offline copy: a table's indexes and keys are built as soon
//! as its data is in, and a foreign key as soon as both its tables are done, while other
//! tables still copy; the restore after the copy leaves them alone (built once).

use std::time::{Duration, Instant};

use pgferry_tests::{compare, Cluster, Pgferry};
use serde_json::{json, Value};

#[test]
fn a_small_tables_indexes_and_foreign_keys_are_built_while_a_big_one_still_copies_and_not_again_after() {
    let (source, target) = (Cluster::start().unwrap(), Cluster::start().unwrap());
    source.create_database("shop").unwrap();
    source
        .psql(
            "shop",
            "create table big (id bigint primary key, payload text); insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 1500000) g;
             create table small (id int primary key, code text unique, note text); insert into small select g, 'c' || g, md5(g::text) from generate_series(1, 2000) g;
             create index small_note on small (lower(note)) where note > 'a';
             alter index small_note alter column 1 set statistics 300;
             create table child (id int primary key, small_id int references small); insert into child select g, g from generate_series(1, 2000) g;",
        )
        .unwrap();
    let pf = Pgferry::new();
    let props = pf.properties(&source, "shop", json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let out = pf.run(&["migration", "create", "--migration-name", "pipe", "--properties", &props, "--target", &target_arg, "--jobs", "2", "--index-jobs", "1", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.transcript());

    // While big streams, small's indexes and keys are on the target already.
    let indexes_of_small = "select string_agg(indexrelid::regclass::text || '=' || indexrelid::oid::text, ',' order by indexrelid::regclass::text)
                              from pg_index where indrelid = 'public.small'::regclass";
    let foreign_key = "select conname || '=' || oid::text from pg_constraint where contype = 'f'";
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen_mid_copy = loop {
        let doc = pf.show("pipe");
        let done: Vec<&str> = doc["details"]["copyState"]["shop"]["tablesDone"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let big_streaming = !done.contains(&"public.big") && doc["substate"] == "MigratingData";
        if big_streaming && done.contains(&"public.small") {
            let indexes = target.psql("shop", indexes_of_small).unwrap_or_default();
            let fk = target.psql("shop", foreign_key).unwrap_or_default();
            if indexes.contains("small_pkey") && indexes.contains("small_code_key") && indexes.contains("small_note") && fk.starts_with("child_small_id_fkey=") {
                break (indexes.trim().to_string(), fk.trim().to_string());
            }
        }
        assert!(done.len() < 3 || !done.contains(&"public.big"), "big finished before small's indexes and child's foreign key were seen: {doc:#}");
        assert!(Instant::now() < deadline, "small's indexes or child's foreign key never showed up mid-copy: {doc:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let doc = pf.wait_for("pipe", "Succeeded", Duration::from_secs(240), |d| d["state"] == "Succeeded");
    assert_eq!(doc["details"]["verification"][0]["mismatches"], json!([]), "{doc:#}");
    compare::assert_same(&source, &target, "shop");
    // The same index objects: the restore after the copy did not drop and make them again.
    assert_eq!(target.psql("shop", indexes_of_small).unwrap().trim(), seen_mid_copy.0);
    assert_eq!(target.psql("shop", foreign_key).unwrap().trim(), seen_mid_copy.1);
    let stats = target.psql("shop", "select attstattarget from pg_attribute where attrelid = 'public.small_note'::regclass and attnum = 1").unwrap();
    assert_eq!(stats.trim(), "300", "the index entry's ALTER INDEX … SET STATISTICS ran with it");
}
