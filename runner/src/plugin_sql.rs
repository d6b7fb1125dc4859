//! SQL for plugins granted `sql`: a statement that cannot have side effects, by construction.
//!
//! 1. PostgreSQL's own parser (libpg_query) must find exactly one plain SELECT: no other
//!    statement anywhere (no data-modifying CTE, COPY, utility or transaction statement), no
//!    SELECT INTO, no FOR UPDATE/SHARE.
//! 2. Every function, operator (through its function), cast target and relation it names is
//!    looked up in the server's catalog, every candidate of each name (overloads, schemas),
//!    so no resolution the server makes can escape the check: a volatile function (one that
//!    may change something: signals, slots, locks, sequences, files, settings, large
//!    objects, sleeps) is refused, but for PostgreSQL's own that only read sizes, WAL
//!    positions and the clock (`READ_ONLY_VOLATILE`), and so are the few stable ones that
//!    read what this check cannot see (`DENIED_FUNCTIONS`). Code that is not PostgreSQL's own is judged the same
//!    way, recursively: view definitions, row-level-security policies, the CHECKs of domains
//!    cast to, aggregates' support functions and the bodies of SQL functions; a function in any other language but C (an extension's compiled code,
//!    trusted for its declared volatility) is refused, since a plpgsql function declared
//!    stable can still call a volatile one. Foreign tables (a remote server) and the catalogs
//!    that hold secrets or server files (`DENIED_RELATIONS`) are refused.
//! 3. The statement runs in a READ ONLY transaction that is rolled back, under a statement
//!    timeout equal to what is left of the plugin's deadline, with a row cap and a byte cap
//!    (per row, enforced by the server before a row is sent, and for the whole result).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::connect::{pg_error, ConnSpec};
use crate::plugin_host::{BoxFuture, QueryResult, Side, SqlRunner};

pub const ROW_CAP: usize = 1000;
/// Bytes of a whole result (and so of one row) a plugin may receive.
pub const RESULT_BYTES: usize = 4 << 20;
/// Longest statement text a plugin may send.
pub const SQL_TEXT_BYTES: usize = 64 << 10;
/// Views, functions and policies a statement may reach before it is refused as too much to
/// judge.
const MAX_CODE_OBJECTS: usize = 64;

/// Stable functions that are refused although they change nothing (volatile ones are refused
/// anyway). Found by reading every non-volatile function of PostgreSQL 15's pg_proc for
/// ones that take a relation, schema or query by name or expose the server's files.
const DENIED_FUNCTIONS: &[(&str, &str)] = &[
    ("table_to_xml", "reads a table named at run time, past this check"),
    ("table_to_xmlschema", "reads a table named at run time, past this check"),
    ("table_to_xml_and_xmlschema", "reads a table named at run time, past this check"),
    ("schema_to_xml", "reads every table of a schema, past this check"),
    ("schema_to_xmlschema", "reads every table of a schema, past this check"),
    ("schema_to_xml_and_xmlschema", "reads every table of a schema, past this check"),
    ("database_to_xml", "reads every table of the database, past this check"),
    ("database_to_xmlschema", "reads every table of the database, past this check"),
    ("database_to_xml_and_xmlschema", "reads every table of the database, past this check"),
    ("pg_config", "shows the server's installation paths"),
    ("pg_relation_filepath", "shows the server's data files"),
    ("pg_relation_filenode", "shows the server's data files"),
    ("pg_filenode_relation", "maps the server's data files"),
    ("pg_tablespace_location", "shows the server's directories"),
    ("pg_current_xact_id", "assigns a transaction id"),
    ("txid_current", "assigns a transaction id"),
];

/// PostgreSQL's own volatile functions that only read: sizes, WAL positions, recovery state
/// and the clock. They are volatile because their answer may change within a statement, not
/// because they change anything; validation rules need them (a database's size, a lagging
/// replica). Same-named functions that are not PostgreSQL's own are judged as any other.
const READ_ONLY_VOLATILE: &[&str] = &[
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_tablespace_size",
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_current_wal_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "clock_timestamp",
];

/// Relations a plugin may not read, whatever the admin may.
const DENIED_RELATIONS: &[(&str, &str)] = &[
    ("pg_authid", "holds role password hashes"),
    ("pg_shadow", "holds role password hashes"),
    ("pg_user_mapping", "holds user-mapping options such as passwords"),
    ("pg_user_mappings", "holds user-mapping options such as passwords"),
    ("pg_subscription", "holds connection strings with passwords"),
    ("pg_hba_file_rules", "reads the server's pg_hba.conf"),
    ("pg_ident_file_mappings", "reads the server's pg_ident.conf"),
    ("pg_file_settings", "reads the server's configuration files"),
    ("pg_config", "shows the server's installation paths"),
];

/// PostgreSQL's FirstNormalObjectId: objects below it come with the server (initdb).
const FIRST_NORMAL_OID: u32 = 16384;

pub struct PluginSql {
    source: ConnSpec,
    target: ConnSpec,
    clients: Mutex<HashMap<(bool, String), Client>>,
}

impl PluginSql {
    pub fn new(source: ConnSpec, target: ConnSpec) -> Self {
        PluginSql { source, target, clients: Mutex::new(HashMap::new()) }
    }

    async fn run(&self, side: Side, database: Option<&str>, sql: &str, time_left: Duration) -> Result<QueryResult, String> {
        if time_left.is_zero() {
            return Err("its deadline has passed; no more SQL in this call".into());
        }
        let statement = Statement::parse(sql)?;
        let spec = if side == Side::Source { &self.source } else { &self.target };
        let db = database.unwrap_or(&spec.dbname).to_string();
        let key = (side == Side::Source, db.clone());
        let mut clients = self.clients.lock().await;
        let work = async {
            if !clients.contains_key(&key) {
                let (client, _) = spec.connect(&db).await.map_err(|e| format!("{e:#}"))?;
                clients.insert(key.clone(), client);
            }
            let client = &clients[&key];
            let timeout_ms = time_left.as_millis().clamp(1, i32::MAX as u128);
            client
                // The server must read the text as the parser did (libpg_query assumes
                // standard_conforming_strings = on).
                .batch_execute(&format!(
                    "begin transaction read only; set local statement_timeout = {timeout_ms}; set local standard_conforming_strings = on"
                ))
                .await
                .map_err(|e| pg_error(&e))?;
            let result = async {
                statement.check_against(client).await?;
                collect(client, &statement.wrapped()).await
            }
            .await;
            let _ = client.batch_execute("rollback").await;
            result
        };
        match tokio::time::timeout(time_left, work).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be mid-statement: drop it, the server ends its transaction.
                clients.remove(&key);
                Err(format!("the query did not finish within the {time_left:?} left of the plugin's deadline"))
            }
        }
    }
}

/// Names a statement uses, each as (schema or "", name).
#[derive(Clone, Default, Debug)]
struct Names {
    functions: BTreeSet<(String, String)>,
    operators: BTreeSet<(String, String)>,
    types: BTreeSet<(String, String)>,
    relations: BTreeSet<(String, String)>,
}

#[derive(Debug)]
struct Statement {
    text: String,
    names: Names,
}

impl Statement {
    /// The parser's judgement: exactly one plain SELECT, and the names it uses.
    fn parse(sql: &str) -> Result<Statement, String> {
        if sql.len() > SQL_TEXT_BYTES {
            return Err(format!("SQL refused: the statement has {} bytes, over the cap of {SQL_TEXT_BYTES}", sql.len()));
        }
        let (text, names) = parse_select(sql)?;
        Ok(Statement { text, names })
    }

    /// The server's judgement: every function, operator, cast and relation the statement
    /// may reach is harmless, and so is the code behind them that is not PostgreSQL's own
    /// (view definitions, SQL function bodies, aggregates' support functions,
    /// row-level-security policies, domain constraints), recursively.
    async fn check_against(&self, client: &Client) -> Result<(), String> {
        // Each entry: names to check, and the object whose code they come from.
        let mut pending = vec![(self.names.clone(), None::<String>)];
        let mut seen = BTreeSet::new();
        while let Some((names, within)) = pending.pop() {
            let within_it = |e: String| match &within {
                Some(object) => format!("{e} (in {object})"),
                None => e,
            };
            let mut reached = check_functions(client, &names).await.map_err(within_it)?;
            reached.extend(check_relations(client, &names).await.map_err(within_it)?);
            reached.extend(check_domains(client, &names).await.map_err(within_it)?);
            for code in reached {
                if !seen.insert(code.oid) {
                    continue;
                }
                if seen.len() > MAX_CODE_OBJECTS {
                    return Err(format!("SQL refused: it reaches more than {MAX_CODE_OBJECTS} views, functions and policies"));
                }
                let inner = parse_selects(&code.text).map_err(|e| format!("{e} (in {})", code.object))?;
                pending.push((inner, Some(code.object)));
            }
        }
        Ok(())
    }

    /// The statement inside a query that makes the server refuse any row over the byte cap
    /// before sending it (the client library buffers whole rows). The cast of a text to int
    /// fails only when reached, naming the row's size.
    fn wrapped(&self) -> String {
        format!(
            "select q.* from (\n{}\n) as q where case when pg_catalog.octet_length(q::pg_catalog.text) > {RESULT_BYTES} \
             then ('pgferry: a row of ' operator(pg_catalog.||) pg_catalog.octet_length(q::pg_catalog.text) operator(pg_catalog.||) ' bytes')::pg_catalog.int4 operator(pg_catalog.=) 0 else true end",
            self.text
        )
    }
}

/// Parses `sql`, insists on one plain SELECT and returns its text (without a trailing
/// semicolon) and the names it uses.
fn parse_select(sql: &str) -> Result<(String, Names), String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| format!("SQL refused: it does not parse: {e}"))?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err(format!("SQL refused: it holds {} statements; send exactly one SELECT", parsed.protobuf.stmts.len()));
    };
    let mut names = Names::default();
    judge(raw, &mut names)?;
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let text = match usize::try_from(raw.stmt_len) {
        Ok(len) if len > 0 => &sql[start..start + len],
        _ => &sql[start..],
    };
    Ok((text.to_string(), names))
}

/// The names used by code the statement reaches (a SQL function's body may hold several
/// statements), each of which must be a plain SELECT as well.
fn parse_selects(sql: &str) -> Result<Names, String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| format!("SQL refused: it does not parse: {e}"))?;
    let mut names = Names::default();
    for raw in &parsed.protobuf.stmts {
        judge(raw, &mut names)?;
    }
    Ok(names)
}

/// Insists that one parsed statement is a plain SELECT and adds the names it uses.
fn judge(raw: &pg_query::protobuf::RawStmt, names: &mut Names) -> Result<(), String> {
    let tree = serde_json::to_value(raw).map_err(|e| format!("SQL refused: its parse tree cannot be read: {e}"))?;
    if tree.pointer("/stmt/node/SelectStmt").is_none() {
        let kind = tree.pointer("/stmt/node").and_then(Value::as_object).and_then(|o| o.keys().next().cloned()).unwrap_or_default();
        return Err(format!("SQL refused: it is a {kind}; only a single SELECT may run"));
    }
    let mut problems = Vec::new();
    walk(&tree, names, &mut problems);
    match problems.into_iter().next() {
        Some(problem) => Err(format!("SQL refused: {problem}")),
        None => Ok(()),
    }
}

/// Visits every node of the parse tree (serialised generically, so no node kind is
/// skipped) and collects what the server will resolve.
fn walk(value: &Value, names: &mut Names, problems: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk(v, names, problems)),
        Value::Object(map) => {
            for (key, inner) in map {
                match key.as_str() {
                    "FuncCall" => {
                        names.functions.insert(qualified(&inner["funcname"]));
                    }
                    "RangeTableSample" => {
                        names.functions.insert(qualified(&inner["method"]));
                    }
                    "AExpr" => {
                        let name = qualified(&inner["name"]);
                        // BETWEEN is spelled as its name but runs `>=` and `<=`.
                        if name.1.contains("BETWEEN") {
                            names.operators.insert((String::new(), ">=".into()));
                            names.operators.insert((String::new(), "<=".into()));
                        } else {
                            names.operators.insert(name);
                        }
                    }
                    "SubLink" if inner["oper_name"].as_array().is_some_and(|a| !a.is_empty()) => {
                        names.operators.insert(qualified(&inner["oper_name"]));
                    }
                    "SortBy" if inner["use_op"].as_array().is_some_and(|a| !a.is_empty()) => {
                        names.operators.insert(qualified(&inner["use_op"]));
                    }
                    "TypeCast" => {
                        names.types.insert(qualified(&inner["type_name"]["names"]));
                    }
                    "ColumnRef" => {
                        // `t.f` may call the function f(t) when t has no column f.
                        let fields = strings(&inner["fields"]);
                        if fields.len() >= 2 {
                            names.functions.insert((String::new(), fields[fields.len() - 1].clone()));
                        }
                    }
                    "AIndirection" => {
                        // `(x).f` may call f(x) the same way.
                        if let Some(field) = strings(&inner["indirection"]).pop() {
                            names.functions.insert((String::new(), field));
                        }
                    }
                    "RangeVar" => {
                        let schema = inner["schemaname"].as_str().unwrap_or_default().to_string();
                        let relation = inner["relname"].as_str().unwrap_or_default().to_string();
                        names.relations.insert((schema, relation));
                    }
                    // A typed field, not a node: non-null only for SELECT INTO.
                    "into_clause" if !inner.is_null() => problems.push("SELECT INTO creates a table; only a plain SELECT may run".into()),
                    "IntoClause" => problems.push("SELECT INTO creates a table; only a plain SELECT may run".into()),
                    "LockingClause" => problems.push("FOR UPDATE/SHARE locks rows; only a plain SELECT may run".into()),
                    kind if kind.ends_with("Stmt") && kind != "SelectStmt" => {
                        problems.push(format!("it holds a {kind}; only a plain SELECT may run"));
                    }
                    _ => {}
                }
                walk(inner, names, problems);
            }
        }
        _ => {}
    }
}

/// The strings of a parser name list (`[{"node":{"String":{"sval":"pg_catalog"}}}, …]`).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| i.pointer("/node/String/sval").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default()
}

/// (schema or "", name) of a possibly qualified name list, or of a bare string.
fn qualified(list: &Value) -> (String, String) {
    if let Some(name) = list.as_str() {
        return (String::new(), name.to_string());
    }
    let mut parts = strings(list);
    let name = parts.pop().unwrap_or_default();
    (parts.pop().unwrap_or_default(), name)
}

fn split(names: &BTreeSet<(String, String)>) -> (Vec<String>, Vec<String>) {
    names.iter().cloned().unzip()
}

/// Code that is not PostgreSQL's own, reached by a statement, to be judged in turn.
struct Code {
    oid: u32,
    /// As users call it: "view public.v", "function f(integer)", "policy p on public.t".
    object: String,
    /// SQL whose statements must all be plain SELECTs using harmless names.
    text: String,
}

/// Refuses when any candidate of a function, operator or cast name is volatile or denied,
/// or is not PostgreSQL's own and written in a language other than C (an extension's
/// compiled code, trusted for its volatility) or SQL (whose body is returned, to be judged).
async fn check_functions(client: &Client, names: &Names) -> Result<Vec<Code>, String> {
    let denied: Vec<String> = DENIED_FUNCTIONS.iter().map(|(n, _)| n.to_string()).collect();
    let read_only_volatile: Vec<String> = READ_ONLY_VOLATILE.iter().map(|n| n.to_string()).collect();
    let (fs, fn_) = split(&names.functions);
    let (os, on) = split(&names.operators);
    let (ts, tn) = split(&names.types);
    // Each row: what the statement wrote, and a function it may reach that needs a look.
    let rows = client
        .query(
            "with wanted_f as (select * from unnest($1::text[], $2::text[]) as w(schema, name)),
                  wanted_o as (select * from unnest($3::text[], $4::text[]) as w(schema, name)),
                  wanted_t as (select * from unnest($5::text[], $6::text[]) as w(schema, name)),
                  reached as (
                    select 'function ' || w.name as what, p.oid
                      from wanted_f w join pg_catalog.pg_proc p on p.proname = w.name
                      join pg_catalog.pg_namespace n on n.oid = p.pronamespace and (w.schema = '' or n.nspname = w.schema)
                    union all
                    select 'operator ' || w.name, o.oprcode::oid
                      from wanted_o w join pg_catalog.pg_operator o on o.oprname = w.name
                      join pg_catalog.pg_namespace n on n.oid = o.oprnamespace and (w.schema = '' or n.nspname = w.schema)
                    union all
                    select 'cast to ' || w.name, f.oid
                      from wanted_t w join pg_catalog.pg_type t on t.typname = w.name
                      join pg_catalog.pg_namespace n on n.oid = t.typnamespace and (w.schema = '' or n.nspname = w.schema)
                      join pg_catalog.pg_proc f on f.oid = t.typinput
                        or f.oid in (select c.castfunc from pg_catalog.pg_cast c where c.casttarget = t.oid)),
                  -- An aggregate runs its support functions (recorded as its dependencies).
                  reached_all as (
                    select * from reached
                    union all
                    select r.what, d.refobjid
                      from reached r join pg_catalog.pg_depend d
                        on d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass and d.objid = r.oid
                       and d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass)
             select * from (
               select r.what, p.oid::pg_catalog.regprocedure::text as function,
                      p.provolatile = 'v' and not (p.oid < $8 and p.proname = any($9::text[])) as volatile,
                      p.proname::text, p.proname = any($7::text[]) as denied, p.oid, l.lanname::text, p.prosrc
                 from reached_all r join pg_catalog.pg_proc p on p.oid = r.oid
                 join pg_catalog.pg_language l on l.oid = p.prolang) f
              where f.volatile or f.denied or (f.oid >= $8 and f.lanname not in ('c', 'internal'))
              order by f.volatile desc, f.denied desc, 1, 2",
            &[&fs, &fn_, &os, &on, &ts, &tn, &denied, &FIRST_NORMAL_OID, &read_only_volatile],
        )
        .await
        .map_err(|e| format!("cannot check the statement against the server's catalog: {}", pg_error(&e)))?;
    let mut bodies = Vec::new();
    for row in rows {
        let (what, function, volatile, proname, denied): (String, String, bool, String, bool) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let via = if what == format!("function {proname}") { String::new() } else { format!(" (through {what})") };
        if volatile {
            return Err(format!(
                "SQL refused: it may call {function}{via}, which is volatile (it can change something); plugin SQL may call only immutable and stable functions"
            ));
        }
        if denied {
            let why = DENIED_FUNCTIONS.iter().find(|(n, _)| *n == proname).map(|(_, why)| *why).unwrap_or_default();
            return Err(format!("SQL refused: it may call {function}{via}, which {why}"));
        }
        let (oid, language, body): (u32, String, String) = (row.get(5), row.get(6), row.get(7));
        if language != "sql" || body.trim().is_empty() {
            return Err(format!(
                "SQL refused: it may call {function}{via}, written in {language}, whose body this check cannot read (a function declared stable may still change something); plugin SQL may call PostgreSQL's own functions, extensions' C functions and SQL functions"
            ));
        }
        bodies.push(Code { oid, object: format!("the body of function {function}"), text: body });
    }
    Ok(bodies)
}

/// The CHECK constraints of the domains a statement casts to (and of the domains under them),
/// which the cast evaluates.
async fn check_domains(client: &Client, names: &Names) -> Result<Vec<Code>, String> {
    let (schemas, types) = split(&names.types);
    let rows = client
        .query(
            "with recursive domains as (
                select t.oid, pg_catalog.format('%I.%I', n.nspname, t.typname) as name
                  from unnest($1::text[], $2::text[]) as w(schema, name)
                  join pg_catalog.pg_type t on t.typname = w.name and t.typtype = 'd'
                  join pg_catalog.pg_namespace n on n.oid = t.typnamespace and (w.schema = '' or n.nspname = w.schema)
                union
                select b.oid, pg_catalog.format('%I.%I', n.nspname, b.typname)
                  from domains d join pg_catalog.pg_type t on t.oid = d.oid
                  join pg_catalog.pg_type b on b.oid = t.typbasetype and b.typtype = 'd'
                  join pg_catalog.pg_namespace n on n.oid = b.typnamespace)
             select c.oid, pg_catalog.format('constraint %I of domain %s', c.conname, d.name),
                    'select ' || pg_catalog.pg_get_expr(c.conbin, 0)
               from domains d join pg_catalog.pg_constraint c on c.contypid = d.oid and c.contype = 'c'",
            &[&schemas, &types],
        )
        .await
        .map_err(|e| format!("cannot check the statement against the server's catalog: {}", pg_error(&e)))?;
    Ok(rows.iter().map(|row| Code { oid: row.get(0), object: row.get(1), text: row.get(2) }).collect())
}

/// Refuses foreign tables and denied catalogs; returns the code behind the relations that is
/// not PostgreSQL's own: view definitions and row-level-security policies.
async fn check_relations(client: &Client, names: &Names) -> Result<Vec<Code>, String> {
    for (_, relation) in &names.relations {
        if let Some((_, why)) = DENIED_RELATIONS.iter().find(|(n, _)| n == relation) {
            return Err(format!("SQL refused: it reads {relation}, which {why}"));
        }
    }
    let (schemas, relations) = split(&names.relations);
    let rows = client
        .query(
            "with wanted as (
                select c.oid, c.relkind, c.relrowsecurity, pg_catalog.format('%I.%I', n.nspname, c.relname) as name
                  from unnest($1::text[], $2::text[]) as w(schema, name)
                  join pg_catalog.pg_class c on c.relname = w.name
                  join pg_catalog.pg_namespace n on n.oid = c.relnamespace and (w.schema = '' or n.nspname = w.schema))
             select w.oid, w.name, w.relkind::text, case when w.relkind = 'v' and w.oid >= $3 then pg_catalog.pg_get_viewdef(w.oid) end
               from wanted w where w.relkind in ('v', 'f')
             union all
             select p.oid, pg_catalog.format('policy %I on %s', p.polname, w.name), 'policy',
                    'select ' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'true')
               from wanted w join pg_catalog.pg_policy p on p.polrelid = w.oid
              where w.relrowsecurity",
            &[&schemas, &relations, &FIRST_NORMAL_OID],
        )
        .await
        .map_err(|e| format!("cannot check the statement against the server's catalog: {}", pg_error(&e)))?;
    let mut code = Vec::new();
    for row in rows {
        let (oid, name, kind, text): (u32, String, String, Option<String>) = (row.get(0), row.get(1), row.get(2), row.get(3));
        match (kind.as_str(), text) {
            ("f", _) => return Err(format!("SQL refused: it reads {name}, a foreign table (a query to another server)")),
            ("policy", Some(text)) => code.push(Code { oid, object: name, text }),
            (_, Some(text)) => code.push(Code { oid, object: format!("the definition of view {name}"), text }),
            _ => {}
        }
    }
    Ok(code)
}

async fn collect(client: &Client, sql: &str) -> Result<QueryResult, String> {
    let stream = client.simple_query_raw(sql).await.map_err(|e| explain(&e))?;
    futures_util::pin_mut!(stream);
    let mut out = QueryResult { columns: vec![], rows: vec![], truncated: false };
    let mut bytes = 0usize;
    while let Some(message) = stream.next().await {
        match message.map_err(|e| explain(&e))? {
            SimpleQueryMessage::RowDescription(cols) => out.columns = cols.iter().map(|c| c.name().to_string()).collect(),
            SimpleQueryMessage::Row(row) => {
                if out.rows.len() == ROW_CAP {
                    out.truncated = true;
                    break;
                }
                let values: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i).map(str::to_string)).collect();
                bytes += values.iter().map(|v| v.as_ref().map_or(0, String::len) + 4).sum::<usize>();
                if bytes > RESULT_BYTES {
                    return Err(format!("the result is over the cap of {RESULT_BYTES} bytes; select fewer or smaller rows"));
                }
                out.rows.push(values);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The server's error, with the byte cap's own refusal said plainly.
fn explain(e: &tokio_postgres::Error) -> String {
    let text = pg_error(e);
    match text.split_once("\"pgferry: a row of ").and_then(|(_, rest)| rest.split_once(" bytes")) {
        Some((size, _)) => format!("a result row of {size} bytes is over the cap of {RESULT_BYTES} bytes"),
        None if text.contains("SQLSTATE 57014") => format!("{text} (the statement timeout is what was left of the plugin's deadline)"),
        None => text,
    }
}

impl SqlRunner for PluginSql {
    fn query<'a>(&'a self, side: Side, database: Option<&'a str>, sql: &'a str, time_left: Duration) -> BoxFuture<'a, Result<QueryResult, String>> {
        Box::pin(self.run(side, database, sql, time_left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        Statement::parse(sql).expect_err(sql)
    }

    #[test]
    fn only_one_plain_select_passes_the_parser() {
        for sql in [
            "copy pg_class to program 'touch /tmp/x'",
            "copy pg_class to '/tmp/x'",
            "prepare transaction 'x'",
            "set transaction read write",
            "select 1; select 2",
            "with d as (delete from t returning *) select * from d",
            "select * into t2 from pg_class",
            "select * from pg_class for update",
            "explain analyze select 1",
            "create table t (i int)",
        ] {
            let e = refused(sql);
            assert!(e.starts_with("SQL refused: "), "{sql}: {e}");
        }
        assert!(refused("select * from pg_class for share").contains("FOR UPDATE/SHARE"));
        assert!(refused("select 1 into t").contains("SELECT INTO"));
        assert!(refused("with d as (insert into t values (1) returning *) select * from d").contains("InsertStmt"));
        assert!(refused("select 1; select 2").contains("2 statements"));
    }

    #[test]
    fn deeply_nested_statements_are_judged_or_refused_never_a_crash() {
        for (open, close) in [("(", ")"), ("(select ", ")"), ("1 + (", ")"), ("lower(", ")")] {
            for depth in [200, 3000, (SQL_TEXT_BYTES - 16) / (open.len() + close.len())] {
                let sql = format!("select {}1{}", open.repeat(depth), close.repeat(depth));
                match Statement::parse(&sql) {
                    Ok(s) => assert!(open == "(" || depth == 200, "{open}…{depth} passed: {:?}", s.names),
                    // Nested nodes hit the grammar's own stack or the decoder's recursion limit.
                    Err(e) => assert!(e.starts_with("SQL refused: it does not parse: "), "{open}…{depth}: {}", &e[..e.len().min(200)]),
                }
            }
        }
    }

    #[test]
    fn every_name_the_server_will_resolve_is_collected() {
        let s = Statement::parse(
            "select pg_catalog.lower(a.relname), x.f, b is distinct from c, d between 1 and 2, '1'::myschema.mytype \
             from pg_class a, s.t x where a.oid = any(select 1) order by 1 using > ;",
        )
        .unwrap();
        assert!(s.names.functions.contains(&("pg_catalog".into(), "lower".into())), "{:?}", s.names);
        assert!(s.names.functions.contains(&(String::new(), "f".into())), "{:?}", s.names);
        assert!(s.names.operators.contains(&(String::new(), "<=".into())), "{:?}", s.names);
        assert!(s.names.operators.contains(&(String::new(), ">".into())), "{:?}", s.names);
        assert!(s.names.types.contains(&("myschema".into(), "mytype".into())), "{:?}", s.names);
        assert!(s.names.relations.contains(&("s".into(), "t".into())), "{:?}", s.names);
        assert!(!s.text.ends_with(';'), "{}", s.text);
    }
}
