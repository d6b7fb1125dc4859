//! The runner's lease on a migration: taken atomically in the store before any work, renewed
//! by a thread of its own every [`LEASE_RENEW`] (so a busy runtime cannot let it lapse), and
//! released when the runner is done. `show` reads it to tell a live runner from a dead one;
//! `resume` and a runner-less cancel take it, so two processes never work on one migration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::store::{Holder, Lease, Store, LEASE_RENEW};

pub struct RunnerLease {
    id: i64,
    holder: Holder,
    lost: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    store: Store,
}

impl RunnerLease {
    /// Takes the lease of migration `id` for this process, or says who holds it.
    pub fn acquire(store: &mut Store, id: i64, name: &str) -> Result<RunnerLease> {
        let holder = Holder::this_process();
        if let Some(current) = store.acquire_lease(id, &holder)? {
            bail!("{}", held_elsewhere(name, &current));
        }
        store.fence(id, &holder);
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let mut renewing = store.reopen()?;
        let renewer = std::thread::Builder::new().name(format!("lease-{id}")).spawn({
            let (holder, lost) = (holder.clone(), lost.clone());
            move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LEASE_RENEW) {
                    match renewing.renew_lease(id, &holder) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!("migration {id}: this runner lost its lease (another process took the migration over); stopping");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // A busy store is retried at the next beat; the lease outlives a few.
                        Err(e) => tracing::warn!("migration {id}: renewing the runner's lease: {e:#}"),
                    }
                }
            }
        })?;
        Ok(RunnerLease { id, holder, lost, stop: Some(stop), renewer: Some(renewer), store: store.reopen()? })
    }

    /// Whether another process took the migration over: this one must stop working on it.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag set when the lease is lost, for loops that watch it.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

impl Drop for RunnerLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if !self.lost()
            && let Err(e) = self.store.release_lease(self.id, &self.holder)
        {
            tracing::warn!("migration {}: releasing the runner's lease: {e:#}", self.id);
        }
    }
}

/// Why a second process may not run a migration, and what to do instead.
pub fn held_elsewhere(name: &str, lease: &Lease) -> String {
    format!(
        "migration {name:?} is being run by process {} on {} (its lease is renewed until {}); follow it with `pgferry migration show --migration-name {name}`, or stop it with `pgferry migration update --migration-name {name} --cancel`",
        lease.pid,
        lease.host,
        lease.expires_at.format("%H:%M:%S UTC")
    )
}
