//! A future run on a thread of its own, by a one-thread tokio runtime.
//!
//! For the copy's and the pipeline's workers: each drives two connections and a stream of
//! small COPY messages. On the shared multi-thread runtime, a connection's task and the loop
//! reading from it would often run on different threads, and every message batch would
//! cost a cross-thread wake-up (futex, epoll): measured, most of the copy's client CPU. On
//! its own thread, a worker's connections and loop wake each other without a syscall.

use std::future::Future;

use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

/// Runs `make()`'s future on a new thread named `name` and resolves to its output. Dropping
/// the returned future (an aborted JoinSet task) drops the worker's future on its thread,
/// connections and all, as aborting a task would.
pub fn run<F, Fut, T>(name: &str, make: F) -> impl Future<Output = Result<T>> + Send + 'static
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    let (done, result) = oneshot::channel();
    let (cancel, canceled) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = done.send(Err(anyhow!("starting a runtime for a worker thread: {e}")));
                return;
            }
        };
        runtime.block_on(async move {
            tokio::select! {
                output = make() => {
                    let _ = done.send(output);
                }
                // The sender is dropped with the caller's future: stop.
                _ = canceled => {}
            }
        });
    });
    async move {
        // Held until the result is in: dropping this future drops it, which stops the thread.
        let _cancel = cancel;
        spawned.map_err(|e| anyhow!("starting a worker thread: {e}"))?;
        result.await.map_err(|_| anyhow!("a worker thread panicked"))?
    }
}
