//! `pgferry worker`: takes migrations off a shared store, on any number of hosts. A worker
//! claims the oldest active migration that no live runner holds (queued by `create
//! --queue` or `serve`, or left by a runner that died), under the same lease every runner
//! takes, and carries it on as `resume` would. (A cancel whose runner is gone is finished
//! by `update --cancel`, which the API's cancel runs.) A worker killed
//! mid-copy leaves its lease to expire ([`crate::store::LEASE_TTL`]); another worker then
//! claims the migration and resumes it from what the catalog says was finished.
//!
//! Credentials are the worker's own (`PGFERRY_SOURCE_PASSWORD`/`PGFERRY_TARGET_PASSWORD`,
//! `PGPASSWORD`, `~/.pgpass`): the store never holds a password, so a queued migration
//! carries none.

use std::time::Duration;

use anyhow::Result;

use crate::lifecycle::Status;
use crate::migration::{self, CopyOptions};
use crate::plugins::Registry;
use crate::store::{Holder, Location, Store};

pub struct Options<'a> {
    /// Migrations this worker runs at once.
    pub concurrency: usize,
    /// How often an idle worker looks for work.
    pub poll: Duration,
    /// Stop once there is no work left (instead of waiting for more).
    pub until_idle: bool,
    /// How each migration's data moves.
    pub copy: Box<dyn Fn() -> CopyOptions + Send + Sync + 'a>,
}

/// Runs until `stop` resolves (or, with `until_idle`, until no work is left).
pub async fn run(location: &Location, registry: &Registry, options: &Options<'_>, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    // Fail at once on a store that cannot be opened (a bad URI, a refused login).
    Store::open_at(location)?;
    let slots = (0..options.concurrency.max(1)).map(|slot| work(location, registry, options, slot));
    tokio::select! {
        result = futures_util::future::try_join_all(slots) => result.map(drop),
        () = stop => {
            // Runs in flight are dropped with this process; their leases expire and another
            // worker (or this one, started again) resumes them.
            eprintln!("worker {}: stopping; migrations it was running are resumed by a worker once their leases expire", Holder::this_process().id);
            Ok(())
        }
    }
}

/// One slot: claim, run, repeat.
async fn work(location: &Location, registry: &Registry, options: &Options<'_>, slot: usize) -> Result<()> {
    let holder = Holder::this_process();
    let mut store = Store::open_at(location)?;
    loop {
        let claimed = match store.claim(&holder) {
            Ok(claimed) => claimed,
            // A store that is away (a restart of the control database) is tried again.
            Err(e) => {
                tracing::warn!("worker slot {slot}: claiming from {}: {e:#}", location.describe());
                None
            }
        };
        let Some(m) = claimed else {
            if options.until_idle && store.unclaimed().is_ok_and(|n| n == 0) {
                return Ok(());
            }
            tokio::time::sleep(options.poll).await;
            continue;
        };
        eprintln!("worker {} slot {slot}: claimed migration {:?} ({}, target {})", holder.id, m.name, m.status, m.target_server);
        match migration::resume(&mut store, registry, &m.name, Some(&m.target_server), None, (options.copy)()).await {
            Ok(done) => eprintln!("worker {} slot {slot}: migration {:?} is {}", holder.id, done.name, done.status),
            Err(e) => {
                eprintln!("worker {} slot {slot}: migration {:?}: {e:#}", holder.id, m.name);
                if let Err(record) = fail_unstarted(&mut store, &holder, m.id, e) {
                    tracing::warn!("worker slot {slot}: recording the failure of migration {:?}: {record:#}", m.name);
                }
            }
        }
    }
}

/// A run that could not start (no credentials for a server, a server that refused) fails
/// the migration with its error, as a run that started records its own failures: else the
/// next claim would take it again at once, and the user would see nothing. Left alone
/// when another runner holds it by now.
fn fail_unstarted(store: &mut Store, holder: &Holder, id: i64, error: anyhow::Error) -> Result<()> {
    if store.acquire_lease(id, holder)?.is_some() {
        return Ok(());
    }
    let m = store.get_by_id(id)?;
    if m.status.is_active() && m.status != Status::CANCELING {
        let error = serde_json::json!({ "step": m.status.substate.to_string(), "message": format!("{error:#}") });
        store.transition_with_error(id, Status::FAILED, &error)?;
    }
    store.release_lease(id, holder)
}
