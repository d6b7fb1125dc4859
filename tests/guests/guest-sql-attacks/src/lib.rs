//! Hostile fixture: a plugin granted `sql` that tries to change the server through it. The
//! setting `attack` picks one; `path` (a file the server must not write) and `pid` (a
//! session it must not end) parameterise them. A one-shot attack reports `ran` or `refused`
//! with the host's words; a looping one only returns if the host lets it run out of attempts.

use pgferry_sdk::*;

#[derive(Default)]
pub struct SqlAttacks;

fn one_shot(attack: &str, path: &str, pid: &str) -> Option<String> {
    Some(match attack {
        "copy-to-program" => format!("copy (select 1) to program 'echo owned > {path}'"),
        "copy-to-file" => format!("copy (select 1) to '{path}'"),
        "read-file" => "select pg_read_file('postgresql.auto.conf')".into(),
        "read-file-cte" => "with f as (select pg_read_file('postgresql.auto.conf') as t) select t from f".into(),
        "lo-export" => format!("select lo_export(lo_from_bytea(0, 'owned'), '{path}')"),
        "terminate" => format!("select pg_terminate_backend({pid})"),
        "terminate-via-operator" => format!("select 1 where {pid} operator(public.===) 0"),
        "terminate-via-view" => "select * from public.reaper".into(),
        "terminate-via-sql-function" => format!("select public.reap_stable_sql({pid})"),
        "terminate-via-plpgsql-function" => format!("select public.reap_stable_plpgsql({pid})"),
        "terminate-via-policy" => "select * from public.guarded".into(),
        "terminate-via-domain" => format!("select {pid}::public.reaping"),
        "terminate-via-aggregate" => format!("select public.reap_all(g) from (values ({pid})) as v(g)"),
        "slot" => "select pg_create_logical_replication_slot('pgferry_attack', 'pgoutput')".into(),
        "prepare-transaction" => "prepare transaction 'pgferry_attack'".into(),
        "reload-conf" => "select pg_reload_conf()".into(),
        "set-config" => "select set_config('work_mem', '77MB', false)".into(),
        "advisory-lock" => "select pg_advisory_lock(4242)".into(),
        "read-write" => "set transaction read write".into(),
        "sequence" => "select nextval('public.victim_seq')".into(),
        "select-into" => "select 1 as i into public.sneaky".into(),
        "delete-cte" => "with d as (delete from public.victim returning *) select count(*) from d".into(),
        "for-update" => "select * from public.victim for update".into(),
        "password-hashes" => "select rolname, rolpassword from pg_authid".into(),
        "password-hashes-xml" => "select table_to_xml('pg_catalog.pg_authid', true, false, '')".into(),
        "big-row" => "select repeat('x', 8 * 1024 * 1024)".into(),
        "two-statements" => "select 1; select pg_terminate_backend(0)".into(),
        "catalog-read" => "select datname from pg_database where datname = 'app' and pg_database_size(datname) > 0 \
                           union all select relname::text from pg_class where relname = 'victim' and pg_total_relation_size(oid) >= 0 and not pg_is_in_recovery()"
            .into(),
        _ => return None,
    })
}

impl Rule for SqlAttacks {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("sql-attacks", "Tries to change the server through granted SQL")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let attack = cx.setting("attack").unwrap_or_default();
        let path = cx.setting("path").unwrap_or_default();
        let pid = cx.setting("pid").unwrap_or_else(|| "0".into());
        if attack == "whoami" {
            // Who plugin SQL runs as, and whether that role may read the database's table.
            let queries = ["select current_user::text", "select count(*)::text from public.victim"];
            return Ok(queries
                .iter()
                .map(|sql| match cx.query(Side::Source, Some("app"), sql) {
                    Ok(r) => info("ran", format!("rows={:?} truncated={}", r.rows, r.truncated)),
                    Err(e) => info("refused", e),
                })
                .collect());
        }
        if let Some(sql) = one_shot(&attack, &path, &pid) {
            return Ok(vec![match cx.query(Side::Source, Some("app"), &sql) {
                Ok(r) => info("ran", format!("rows={:?} truncated={}", r.rows, r.truncated)),
                Err(e) => info("refused", e),
            }]);
        }
        // Loops: the host must stop the call at its deadline, host calls included.
        let sql = match attack.as_str() {
            "sleep-loop" => "select pg_sleep(1)",
            "slow-query-loop" => "select count(*) from generate_series(1, 1000000000)",
            "host-call-loop" => "select 1",
            other => return Err(format!("unknown attack {other:?}")),
        };
        let mut last = String::new();
        for _ in 0..1_000_000 {
            last = match cx.query(Side::Source, Some("app"), sql) {
                Ok(_) => "ran".into(),
                Err(e) => e,
            };
        }
        Ok(vec![info("returned", last)])
    }
}

export_rules!(
    SqlAttacks;
    manifest = Manifest::new("Hostile: tries to escape read-only plugin SQL")
        .grant(Grant::Sql)
        .setting(SettingSpec::text("attack", "Which attack to run"))
        .setting(SettingSpec::text("path", "A server file path to try to read"))
        .setting(SettingSpec::text("pid", "A backend pid to try to signal"))
);
