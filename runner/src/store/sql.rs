//! One connection to the catalog, on SQLite (the embedded default) or PostgreSQL (a control
//! database that many runners share), behind the few calls the catalog makes: statements
//! with `?N` parameters, rows of integers and text, and transactions. The catalog's SQL is
//! written once, in the subset both engines run; what differs (the schema's version, a
//! JSON merge, row locks) is asked of [`Dialect`].

use anyhow::{Context, Result};

/// A parameter or a column: the catalog stores integers and text only (booleans as 0/1,
/// times as RFC 3339 text, documents as JSON text).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// `args![a, b, …]`: a statement's parameters, `?1`, `?2`, … in order.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One row of a result.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn int(&self, i: usize) -> Result<i64> {
        match &self.0[i] {
            Value::Int(v) => Ok(*v),
            other => anyhow::bail!("catalog column {i} holds {other:?}, not an integer"),
        }
    }
    /// A count or a size: never negative.
    pub fn count(&self, i: usize) -> Result<u64> {
        Ok(self.int(i)?.max(0) as u64)
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match &self.0[i] {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
    pub fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)? != 0)
    }
    pub fn text(&self, i: usize) -> Result<String> {
        match &self.0[i] {
            Value::Text(v) => Ok(v.clone()),
            other => anyhow::bail!("catalog column {i} holds {other:?}, not text"),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match &self.0[i] {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(super::postgres::Client),
}

impl Conn {
    pub fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement; how many rows it changed.
    pub fn execute(&self, sql: &str, args: &[Value]) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            Conn::Postgres(c) => c.execute(postgres_placeholders(sql), args.to_vec()),
        }
    }

    pub fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    (0..width)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Value::Null,
                                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                                rusqlite::types::ValueRef::Real(v) => Value::Int(v as i64),
                                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(Row)
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            }
            Conn::Postgres(c) => Ok(c.query(postgres_placeholders(sql), args.to_vec())?.into_iter().map(Row).collect()),
        }
    }

    pub fn query_opt(&self, sql: &str, args: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    pub fn query_one(&self, sql: &str, args: &[Value]) -> Result<Row> {
        self.query_opt(sql, args)?.with_context(|| format!("the catalog returned no row for: {}", sql.split_whitespace().collect::<Vec<_>>().join(" ")))
    }

    /// Several statements without parameters (schema upgrades).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => c.batch(sql.to_string()),
        }
    }

    /// A transaction that writes. On SQLite it takes the write lock at once (BEGIN
    /// IMMEDIATE), so a read-then-write in it sees what it overwrites; on PostgreSQL the
    /// same is had by locking migration `lock`'s row (every write is about one migration),
    /// which also keeps a worker's claim from taking a migration in the middle of it.
    pub fn write(&self, lock: Option<i64>) -> Result<Tx<'_>> {
        match self {
            Conn::Sqlite(c) => c.execute_batch("begin immediate")?,
            Conn::Postgres(_) => {
                self.batch("begin")?;
                if let Some(id) = lock {
                    self.query("select id from migration where id = ?1 for update", args![id])?;
                }
            }
        }
        Ok(Tx { conn: self, open: true })
    }

    /// Whether `e` is a unique constraint refusing a row.
    pub fn is_unique_violation(e: &anyhow::Error) -> bool {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>() {
            return f.code == rusqlite::ErrorCode::ConstraintViolation;
        }
        e.downcast_ref::<tokio_postgres::Error>().and_then(tokio_postgres::Error::code) == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    }
}

/// An open transaction: rolled back unless committed.
pub struct Tx<'c> {
    conn: &'c Conn,
    open: bool,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        self.conn.batch("commit")
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.batch("rollback");
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

/// `?N` (SQLite's numbered parameters) as `$N`, outside quoted text.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars_outside_quotes() {
        assert_eq!(postgres_placeholders("select ?1, '?2', ?12 where x = ?3"), "select $1, '?2', $12 where x = $3");
    }
}
