//! The change stream of one database: a small trait of our own, so the apply loop does not
//! depend on the transport, and its implementation over `pgwire-replication`.

use anyhow::{Context, Result};
use futures_util::FutureExt;
use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationEvent};

use super::pgoutput::{self, Message};
use super::Lsn;

#[derive(Debug)]
pub enum Event {
    Message(Message),
    /// The server's heartbeat: everything it had to send up to `wal_end` was sent.
    KeepAlive { wal_end: Lsn, server_time: i64 },
}

pub trait ChangeStream: Send {
    /// The next event; `None` when the stream ended normally.
    fn recv(&mut self) -> impl std::future::Future<Output = Result<Option<Event>>> + Send;
    /// The next event if one is already waiting (never blocks): lets the apply loop batch
    /// what arrived together without delaying what did not.
    fn ready(&mut self) -> Option<Result<Option<Event>>>;
    /// Tells the source that everything up to `lsn` is safely on the target.
    fn acknowledge(&self, lsn: Lsn);
    /// The highest position reported to the source so far.
    fn acknowledged(&self) -> Lsn;
}

/// pgoutput over a replication connection.
pub struct PgOutputStream {
    client: ReplicationClient,
    /// Names the stream in errors: slot and database.
    what: String,
}

impl PgOutputStream {
    /// Starts streaming on a gated session (fresh, or the one that created the slot).
    pub async fn start(mut client: ReplicationClient, what: String) -> Result<PgOutputStream> {
        client.start().await.with_context(|| format!("starting replication from {what}"))?;
        client.wait_started().await.with_context(|| format!("starting replication from {what}"))?;
        Ok(PgOutputStream { client, what })
    }

    fn convert(&self, event: Option<ReplicationEvent>) -> Result<Option<Event>> {
        let Some(event) = event else { return Ok(None) };
        Ok(Some(match event {
            ReplicationEvent::KeepAlive { wal_end, server_time_micros, .. } => Event::KeepAlive { wal_end: wal_end.0, server_time: server_time_micros },
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => Event::Message(Message::Begin { final_lsn: final_lsn.0, commit_time: commit_time_micros, xid }),
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                Event::Message(Message::Commit { flags: 0, commit_lsn: lsn.0, end_lsn: end_lsn.0, commit_time: commit_time_micros })
            }
            ReplicationEvent::Message { transactional, lsn, prefix, content } => Event::Message(Message::Message { transactional, lsn: lsn.0, prefix, content }),
            ReplicationEvent::XLogData { data, .. } => {
                Event::Message(pgoutput::decode(&data).with_context(|| format!("decoding a change from {}", self.what))?)
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(None),
        }))
    }
}

impl ChangeStream for PgOutputStream {
    async fn recv(&mut self) -> Result<Option<Event>> {
        let event = self.client.recv().await.with_context(|| format!("receiving changes from {}", self.what))?;
        self.convert(event)
    }

    fn ready(&mut self) -> Option<Result<Option<Event>>> {
        // recv is cancel-safe (a channel receive): polling it once loses nothing.
        let event = self.client.recv().now_or_never()?;
        Some(event.with_context(|| format!("receiving changes from {}", self.what)).and_then(|e| self.convert(e)))
    }

    fn acknowledge(&self, lsn: Lsn) {
        self.client.update_applied_lsn(WireLsn(lsn));
    }

    fn acknowledged(&self) -> Lsn {
        self.client.metrics().last_applied_lsn().0
    }
}
