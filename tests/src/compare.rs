//! Comparing a migrated database with its source by means independent of pgferry's own
//! verification: the schema as pg_dump prints it (owners, ACLs and database-level settings
//! included), the column order of every table, every table's and materialized view's rows,
//! sequence values and large objects.
//!
//! Why independent: pgferry verifies its own copy with row counts and checksums computed by
//! its own queries; a bug shared by the copy and the check would go unnoticed. Here the
//! schema is read by pg_dump, and rows are digested by a different query (sorted text, md5).
//!
//! Every function reads one side; [`differences`] runs them all on both sides and returns
//! every difference found (not only the first), each with a readable line diff, so a failing
//! test says everything that is wrong at once.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::{pg_bin_dir, Cluster, DEFAULT_VERSION, HOST, SUPERUSER};

/// The pg_dump used for both sides of every comparison: the one of the default version (15).
/// Why one binary: pg_dump's own output format changes between versions; dumping both
/// sides with the same binary leaves only differences of the servers themselves. (The npm
/// builds of other versions ship no pg_dump at all.)
pub fn pg_dump_bin() -> PathBuf {
    pg_bin_dir(DEFAULT_VERSION).join("pg_dump")
}

/// `pg_dump --schema-only --create` of `db`, unnormalised. `--create` adds what belongs to
/// the database itself (its owner, encoding and locale, comment, ACL and `ALTER DATABASE …
/// SET` settings), which a plain schema dump leaves out but a migration must carry too.
pub fn raw_schema(cluster: &Cluster, db: &str) -> String {
    let mut cmd = Command::new(pg_dump_bin());
    cmd.args(["--schema-only", "--create", "--no-tablespaces", "-h", HOST, "-p", &cluster.port().to_string(), "-U", SUPERUSER, "-d", db]);
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGSERVICE", "PGPASSFILE"] {
        cmd.env_remove(var);
    }
    if let Some(pw) = cluster.password() {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().expect("running pg_dump");
    assert!(out.status.success(), "pg_dump of {db} on port {}: {}", cluster.port(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("pg_dump output is UTF-8")
}

/// A dump without the lines that differ between any two dumps of the same schema: `--`
/// comments, blank lines and the random key of `\restrict` / `\unrestrict`.
pub fn normalize_schema(dump: &str) -> String {
    let lines: Vec<&str> = dump
        .lines()
        .filter(|l| !l.starts_with("--") && !l.is_empty() && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect();
    sort_inheriting_table_columns(&lines).join("\n")
}

/// The one difference a dump-based migration cannot avoid (pg_dump/pg_restore alike, only
/// `--binary-upgrade` keeps it): a table declared with `INHERITS` gets its inherited
/// columns first, so the column list of such a `CREATE TABLE` is compared as a set.
fn sort_inheriting_table_columns(lines: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        out.push(lines[i].to_string());
        if lines[i].starts_with("CREATE TABLE ") && lines[i].ends_with('(') {
            let end = (i + 1..lines.len()).find(|&j| lines[j].starts_with(')')).unwrap_or(lines.len());
            let mut columns: Vec<String> = lines[i + 1..end].iter().map(|l| l.trim_end_matches(',').to_string()).collect();
            let inherits = lines.get(end + 1).is_some_and(|l| l.starts_with("INHERITS ("));
            if inherits {
                columns.sort();
            }
            out.extend(columns);
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// The normalised schema dump of `db` (see [`raw_schema`] and [`normalize_schema`]).
pub fn schema(cluster: &Cluster, db: &str) -> String {
    normalize_schema(&raw_schema(cluster, db))
}

/// Runs `sql` with `psql -X -q -At -v ON_ERROR_STOP=1` (quiet: no command tags, so a
/// script of several statements prints only its query results), with `search_path` set to
/// `pg_catalog` first: a database's own default search_path (which a migration might not
/// carry, and which is compared through the schema dump) must not change how names print.
/// (pg_restore also runs everything, REFRESH included, with an empty search_path.)
fn query(cluster: &Cluster, db: &str, sql: &str) -> String {
    let mut cmd = cluster.psql_command(db);
    cmd.args(["-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", &format!("set search_path = pg_catalog; {sql}")]);
    let out = cmd.output().expect("running psql");
    assert!(out.status.success(), "psql on {db} (port {}) failed: {}\n{sql}", cluster.port(), String::from_utf8_lossy(&out.stderr));
    let mut text = String::from_utf8(out.stdout).expect("psql output is UTF-8");
    if text.ends_with('\n') {
        text.pop();
    }
    text
}

/// Refreshes the populated materialized views as a restore does: in dependency order, here
/// by repeated passes (5 at most: deeper chains than that are not in the corpus). Why: a
/// dump-based migration (pg_dump/pg_restore, and so pgferry, DESIGN.md "Data pipeline")
/// does not copy a materialized view's rows, it runs REFRESH after the data, so a view that
/// was stale on the source is fresh on the target, by design. Unpopulated ones (`WITH NO
/// DATA`) stay unpopulated, as pg_dump leaves them.
const REFRESH_MATVIEWS: &str = r#"do $$ declare r record; passes int; begin
       select least(count(*), 5) into passes from pg_class where relkind = 'm' and relispopulated;
       for i in 1..passes loop
         for r in select oid::regclass as t from pg_class where relkind = 'm' and relispopulated order by oid loop
           begin execute format('refresh materialized view %s', r.t);
           exception when others then raise warning 'refreshing %: %', r.t, sqlerrm; end;
         end loop;
       end loop; end $$;"#;

/// Digests every table and materialized view into the temp table `digests`.
const DIGEST: &str = r#"do $$ declare r record; cols text; begin
       create temp table digests (tbl text, n bigint, h text);
       for r in select c.oid, c.oid::regclass as t, c.relkind, c.relispopulated, format('%I.%I', n.nspname, c.relname) as label
                  from pg_class c join pg_namespace n on n.oid = c.relnamespace
                 where c.relkind in ('r', 'm') and c.relpersistence <> 't'
                   and n.nspname not in ('pg_catalog', 'information_schema')
                   and n.nspname not like 'pg\_toast%' and n.nspname not like 'pg\_temp%' loop
         if r.relkind = 'm' and not r.relispopulated then
           insert into digests values (r.label, null, 'materialized view not populated');
         else
           select coalesce(string_agg(format('x.%I', attname), ', ' order by attname), '') into cols
             from pg_attribute where attrelid = r.oid and attnum > 0 and not attisdropped;
           execute format('insert into digests select %L, count(*), md5(coalesce(string_agg(row(%s)::text, E''\n'' order by row(%s)::text), '''')) from only %s x',
                          r.label, cols, cols, r.t);
         end if;
       end loop; end $$;
     select coalesce(string_agg(tbl || ' ' || coalesce(n::text, '-') || ' ' || h, E'\n' order by tbl), '') from digests;"#;

/// One line per table and materialized view: `schema.name count md5`, sorted by name. The
/// md5 is of every row's text, sorted; each row is built from its columns in name order,
/// so the digest is about the data alone (the column order is [`columns`]' business).
/// Unpopulated materialized views say so instead (they cannot be read). `ONLY`: an
/// inheritance parent's rows are its own; its children are listed separately.
///
/// With `fresh_matviews`, the materialized views are digested as a restore leaves them
/// (see [`REFRESH_MATVIEWS`]), in a transaction rolled back: the database is not changed.
pub fn table_digests(cluster: &Cluster, db: &str, fresh_matviews: bool) -> String {
    let refresh = if fresh_matviews { REFRESH_MATVIEWS } else { "" };
    query(cluster, db, &format!("begin; {refresh} {DIGEST} rollback;"))
}

/// One line per table: `schema.name: column type, …` in the table's column order.
/// pg_dump prints only a child table's own columns, so a child whose columns end up in
/// another order on the target dumps the same text: this shows it. One exception, a
/// documented limitation shared with pg_dump/pg_restore: a table *inheriting* (not a
/// partition) gets its inherited columns first on restore (only `--binary-upgrade`
/// preserves the order), so for those the columns are compared by name — same names, same
/// types, same data (pgferry copies by column name and checksums in name order).
pub fn columns(cluster: &Cluster, db: &str) -> String {
    query(
        cluster,
        db,
        r#"select coalesce(string_agg(label || ': ' || cols, E'\n' order by label), '') from (
             select format('%I.%I', n.nspname, c.relname) as label,
                    coalesce((select string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                                                order by case when c.relispartition or not exists (select 1 from pg_inherits i where i.inhrelid = c.oid)
                                                              then lpad(a.attnum::text, 6, '0') else a.attname::text end)
                                from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '') as cols
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p') and c.relpersistence <> 't'
                and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\_temp%') t"#,
    )
}

/// `schema.sequence=last_value` (`null` when never called or reset with `is_called = false`).
pub fn sequences(cluster: &Cluster, db: &str) -> String {
    query(
        cluster,
        db,
        r#"select coalesce(string_agg(quote_ident(schemaname) || '.' || quote_ident(sequencename) || '=' || coalesce(last_value::text, 'null'), E'\n'
                                      order by schemaname, sequencename), '')
             from pg_sequences"#,
    )
}

/// `oid:owner:acl:comment:md5` of every large object.
pub fn large_objects(cluster: &Cluster, db: &str) -> String {
    query(
        cluster,
        db,
        r#"select coalesce(string_agg(m.oid || ':' || pg_get_userbyid(m.lomowner) || ':' || coalesce(m.lomacl::text, '') || ':' ||
                  coalesce(obj_description(m.oid, 'pg_largeobject'), '') || ':' || md5(lo_get(m.oid)), E'\n' order by m.oid), '')
             from pg_largeobject_metadata m"#,
    )
}

/// Every aspect compared, of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub schema: String,
    pub columns: String,
    pub tables: String,
    pub sequences: String,
    pub large_objects: String,
}

impl Snapshot {
    /// The source side: materialized views as a restore would leave them (see
    /// [`table_digests`]); the database itself is not changed.
    pub fn source(cluster: &Cluster, db: &str) -> Self {
        Self::take(cluster, db, true)
    }

    /// The target side: everything as stored.
    pub fn target(cluster: &Cluster, db: &str) -> Self {
        Self::take(cluster, db, false)
    }

    pub fn take(cluster: &Cluster, db: &str, fresh_matviews: bool) -> Self {
        Snapshot {
            schema: schema(cluster, db),
            columns: columns(cluster, db),
            tables: table_digests(cluster, db, fresh_matviews),
            sequences: sequences(cluster, db),
            large_objects: large_objects(cluster, db),
        }
    }

    fn aspects(&self) -> [(&'static str, &str); 5] {
        [
            ("schema (pg_dump --schema-only --create)", &self.schema),
            ("column order of tables", &self.columns),
            ("table digests", &self.tables),
            ("sequences", &self.sequences),
            ("large objects", &self.large_objects),
        ]
    }
}

/// The aspects in which `target` differs from `source`, each with a line diff.
pub fn snapshot_differences(source: &Snapshot, target: &Snapshot) -> Vec<String> {
    source
        .aspects()
        .iter()
        .zip(target.aspects().iter())
        .filter(|((_, s), (_, t))| s != t)
        .map(|((name, s), (_, t))| format!("{name} differ:\n{}", line_diff(s, t, 60)))
        .collect()
}

/// Takes both snapshots of `db` and returns the differences (empty when identical).
pub fn differences(source: &Cluster, target: &Cluster, db: &str) -> Vec<String> {
    snapshot_differences(&Snapshot::source(source, db), &Snapshot::target(target, db))
}

/// Panics with every difference between `db` on `source` and on `target`.
pub fn assert_same(source: &Cluster, target: &Cluster, db: &str) {
    let diffs = differences(source, target, db);
    assert!(diffs.is_empty(), "database {db}: the target differs from the source\n\n{}", diffs.join("\n\n"));
}

/// A readable diff of two texts by lines, `-` the source (`a`), `+` the target (`b`): each
/// differing region as a hunk with two lines of context, at most `max` changed lines in
/// all. Why not a dependency: the texts are long (a dump of ~10 000 lines) but differ in
/// few places, so walking both and resynchronising after each difference on the nearest
/// run of 3 equal lines (searched within 400 lines) is fast and small.
pub fn line_diff(a: &str, b: &str, max: usize) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = format!("source {} lines, target {} lines\n", a.len(), b.len());
    let (mut i, mut j, mut shown) = (0, 0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        let (di, dj) = resync(&a, &b, i, j);
        out.push_str(&format!("@@ source line {}, target line {}\n", i + 1, j + 1));
        for l in &a[i.saturating_sub(2)..i] {
            out.push_str(&format!("  {l}\n"));
        }
        for l in &a[i..i + di] {
            out.push_str(&format!("- {l}\n"));
        }
        for l in &b[j..j + dj] {
            out.push_str(&format!("+ {l}\n"));
        }
        shown += di + dj;
        i += di;
        j += dj;
        if shown >= max && (i < a.len() || j < b.len()) {
            out.push_str("… (more differences not shown)\n");
            break;
        }
    }
    out
}

/// The smallest `(di, dj)` after which `a[i + di..]` and `b[j + dj..]` agree again (on 3
/// lines, or to both ends); the rest of both when nothing agrees within the window.
fn resync(a: &[&str], b: &[&str], i: usize, j: usize) -> (usize, usize) {
    const WINDOW: usize = 400;
    let agree = |x: usize, y: usize| {
        if x >= a.len() || y >= b.len() {
            return x >= a.len() && y >= b.len();
        }
        let n = 3.min(a.len() - x).min(b.len() - y);
        (0..n).all(|k| a[x + k] == b[y + k]) && (n == 3 || (x + n == a.len() && y + n == b.len()))
    };
    for d in 1..=2 * WINDOW {
        for di in d.saturating_sub(WINDOW)..=d.min(WINDOW) {
            let dj = d - di;
            if i + di <= a.len() && j + dj <= b.len() && agree(i + di, j + dj) {
                return (di, dj);
            }
        }
    }
    (a.len() - i, b.len() - j)
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diff_shows_each_changed_region_with_context() {
        let a = "x\ny\nCREATE TABLE c (\n    b integer,\n    a integer\n)\nz\nw\nv\nlast";
        let b = "x\ny\nCREATE TABLE c (\n    a integer,\n    b integer\n)\nz\nw\nv\nlast\nextra";
        let d = line_diff(a, b, 60);
        assert!(d.contains("@@ source line 4, target line 4\n  y\n  CREATE TABLE c (\n-     b integer,\n-     a integer\n+     a integer,\n+     b integer\n"), "{d}");
        assert!(d.contains("@@ source line 11, target line 11\n  v\n  last\n+ extra\n"), "{d}");
        assert_eq!(line_diff("same\ntext", "same\ntext", 60), "source 2 lines, target 2 lines\n");
    }
}
