//! The catalog's connection to a PostgreSQL control database. The catalog is synchronous
//! (SQLite's way, and what the lease thread and the CLI need), while tokio-postgres is
//! async and may not be blocked on from inside a runtime: so each connection lives on a
//! thread of its own with a one-thread runtime, and calls are handed to it.

use std::sync::mpsc;

use anyhow::{Context, Result};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use super::sql::Value;
use crate::conn_config::ConnSpec;

type Reply<T> = mpsc::SyncSender<Result<T>>;

enum Job {
    Execute(String, Vec<Value>, Reply<u64>),
    Query(String, Vec<Value>, Reply<Vec<Vec<Value>>>),
    Batch(String, Reply<()>),
}

pub struct Client {
    jobs: mpsc::Sender<Job>,
    spec: ConnSpec,
}

impl Client {
    pub fn connect(spec: &ConnSpec) -> Result<Client> {
        let (jobs, received) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::sync_channel::<Result<()>>(1);
        let thread_spec = spec.clone();
        std::thread::Builder::new().name("store-postgres".into()).spawn(move || serve(thread_spec, received, ready))?;
        started.recv().context("the state store's connection thread ended")??;
        Ok(Client { jobs, spec: spec.clone() })
    }

    fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs.send(job(reply)).map_err(|_| anyhow::anyhow!("the connection to the state store {} is gone", self.spec.describe()))?;
        answer.recv().map_err(|_| anyhow::anyhow!("the connection to the state store {} is gone", self.spec.describe()))?
    }

    pub fn execute(&self, sql: String, args: Vec<Value>) -> Result<u64> {
        self.call(|reply| Job::Execute(sql, args, reply))
    }

    pub fn query(&self, sql: String, args: Vec<Value>) -> Result<Vec<Vec<Value>>> {
        self.call(|reply| Job::Query(sql, args, reply))
    }

    pub fn batch(&self, sql: String) -> Result<()> {
        self.call(|reply| Job::Batch(sql, reply))
    }
}

/// The connection's thread: connects, answers calls until the catalog drops the client.
/// A connection the server closed is opened again before the next call (a transaction it
/// was in is lost with it, and that call's caller was told).
fn serve(spec: ConnSpec, jobs: mpsc::Receiver<Job>, ready: mpsc::SyncSender<Result<()>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return drop(ready.send(Err(e.into()))),
    };
    // The catalog's tables are in schema `pgferry`, made by the first upgrade.
    let connect = || {
        runtime.block_on(async {
            let (client, _) = spec.connect(&spec.dbname).await?;
            client.batch_execute("set search_path to pgferry").await?;
            Ok::<_, anyhow::Error>(client)
        })
    };
    let mut client = match connect() {
        Ok(c) => c,
        Err(e) => return drop(ready.send(Err(e))),
    };
    let _ = ready.send(Ok(()));
    // Whether a transaction is open: a statement outside one is tried again on a new
    // connection when the old one turns out dead (a restart of the control database);
    // inside one, the caller is told, as the transaction is lost with the connection.
    let mut in_transaction = false;
    for job in jobs {
        if client.is_closed() {
            match connect() {
                Ok(c) => client = c,
                Err(e) => {
                    in_transaction = false;
                    refuse(job, e);
                    continue;
                }
            }
        }
        // A `begin` is tried again too (nothing is open yet); a `commit` is not.
        let retry = !in_transaction;
        if let Job::Batch(sql, _) = &job {
            match sql.as_str() {
                "begin" => in_transaction = true,
                "commit" | "rollback" => in_transaction = false,
                _ => {}
            }
        }
        let run = |client: &tokio_postgres::Client, job: &Job| -> Answer {
            match job {
                Job::Execute(sql, args, _) => Answer::Count(runtime.block_on(client.execute(sql.as_str(), &params(args)))),
                Job::Query(sql, args, _) => Answer::Rows(runtime.block_on(client.query(sql.as_str(), &params(args)))),
                Job::Batch(sql, _) => Answer::Done(runtime.block_on(client.batch_execute(sql))),
            }
        };
        let mut answer = run(&client, &job);
        if retry
            && answer.lost()
            && client.is_closed()
            && let Ok(fresh) = connect()
        {
            client = fresh;
            answer = run(&client, &job);
        }
        answer.send(job);
    }
}

/// What a call gave, before it is sent back.
enum Answer {
    Count(Result<u64, tokio_postgres::Error>),
    Rows(Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>),
    Done(Result<(), tokio_postgres::Error>),
}

impl Answer {
    /// Failed because the connection is gone.
    fn lost(&self) -> bool {
        let error = match self {
            Answer::Count(r) => r.as_ref().err(),
            Answer::Rows(r) => r.as_ref().err(),
            Answer::Done(r) => r.as_ref().err(),
        };
        error.is_some_and(|e| e.is_closed() || crate::connect::is_lost(e))
    }

    fn send(self, job: Job) {
        match (self, job) {
            (Answer::Count(r), Job::Execute(_, _, reply)) => drop(reply.send(r.map_err(anyhow::Error::from))),
            (Answer::Rows(r), Job::Query(_, _, reply)) => {
                let rows = r.map_err(anyhow::Error::from).and_then(|rows| {
                    rows.iter().map(|row| (0..row.len()).map(|i| row.try_get::<_, Value>(i).map_err(anyhow::Error::from)).collect()).collect()
                });
                drop(reply.send(rows))
            }
            (Answer::Done(r), Job::Batch(_, reply)) => drop(reply.send(r.map_err(anyhow::Error::from))),
            _ => unreachable!("each job gets the answer of its own kind"),
        }
    }
}

fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn refuse(job: Job, e: anyhow::Error) {
    let message = format!("{e:#}");
    match job {
        Job::Execute(_, _, reply) => drop(reply.send(Err(anyhow::anyhow!(message)))),
        Job::Query(_, _, reply) => drop(reply.send(Err(anyhow::anyhow!(message)))),
        Job::Batch(_, reply) => drop(reply.send(Err(anyhow::anyhow!(message)))),
    }
}

/// The catalog's integers go to whatever integer or boolean column the statement has, and
/// text to text: its columns are chosen by the SQL, not by the Rust type of each value.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().to_sql(ty, out),
                _ => Err(format!("the catalog sends no integer as {ty}").into()),
            },
            Value::Text(v) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => v.as_str().to_sql(ty, out),
                _ => Err(format!("the catalog sends no text as {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::VOID => Value::Null,
            _ => Value::Text(<&str>::from_sql(ty, raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::VOID)
    }
}
