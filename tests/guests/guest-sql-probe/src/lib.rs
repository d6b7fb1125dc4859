//! Probes the read-only SQL import: reports what a read, a write and a statement that tries
//! to end the read-only transaction did, as findings the host test asserts on.

use pgferry_sdk::*;

#[derive(Default)]
pub struct SqlProbe;

impl Rule for SqlProbe {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("sql-probe", "Probes read-only SQL")
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let read = cx.query(Side::Source, None, "select datname from pg_database where datname = 'app'");
        let mut findings = vec![match read {
            Ok(r) => info("read", format!("columns={:?} rows={:?} truncated={}", r.columns, r.rows, r.truncated)),
            Err(e) => info("read-refused", e),
        }];
        let attempts = [
            ("write", "create table sneaky (i int)"),
            ("escape", "commit; create table sneaky (i int)"),
            ("many-rows", "select g from generate_series(1, 5000) g"),
        ];
        for (what, sql) in attempts {
            findings.push(match cx.query(Side::Source, Some("app"), sql) {
                Ok(r) => info(&format!("{what}-ran"), format!("{} rows, truncated={}", r.rows.len(), r.truncated)),
                Err(e) => info(&format!("{what}-refused"), e),
            });
        }
        Ok(findings)
    }
}

export_rules!(SqlProbe);
