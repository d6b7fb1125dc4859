//! The per-call sandbox: a fresh store with WASI granting nothing, a memory cap over all of a
//! call's memories and tables together, and a wall-clock deadline that counts host calls
//! too (host SQL gets what is left of it as its timeout).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How much of a guest's stdout and stderr one call keeps (for the log, and a panic's
/// message); the rest is accepted and dropped, so a chatty guest is never failed for it.
const OUTPUT_CAPTURE: usize = 16 * 1024;

use super::services::Services;

/// Limits applied to every plugin call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { deadline: Duration::from_secs(2), memory_bytes: 64 << 20 }
    }
}

/// How often the engine's epoch advances; the deadline is checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct StoreState {
    wasi: WasiCtx,
    /// The guest's stdout and stderr, kept in memory (capped): logged under the plugin's
    /// name after the call, and a panic message names the cause of a trap.
    stdout: CappedOutput,
    stderr: CappedOutput,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) plugin: Arc<str>,
    pub(super) services: Arc<Services>,
    pub(super) settings: Arc<Vec<(String, String)>>,
    pub(super) sql_granted: bool,
    started: Instant,
    deadline: Duration,
    pub(super) deadline_hit: bool,
    /// Log bytes this call has written so far (see `services::LOG_BYTES_PER_CALL`).
    pub(super) log_bytes: usize,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StoreState {
    pub fn memory_hit(&self) -> Option<usize> {
        self.limiter.hit
    }

    /// What is left of this call's deadline (zero once it has passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }

    /// The last words the guest wrote to stderr (a Rust panic: "panicked at …" and its
    /// message), without the backtrace advice.
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note: ")).collect();
        lines[lines.len().saturating_sub(2)..].join(" ").chars().take(500).collect()
    }

    /// Logs what the guest printed in this call (`println!`, `eprintln!`), a line each,
    /// under the plugin's name; made printable first (a plugin's text never drives the
    /// terminal).
    pub fn log_output(&self) {
        let plugin = &*self.plugin;
        for (stream, output) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = output.contents();
            for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
                let line = crate::terminal::printable(line, false);
                match stream {
                    "stdout" => tracing::info!(plugin, "{stream}: {line}"),
                    _ => tracing::warn!(plugin, "{stream}: {line}"),
                }
            }
            let dropped = output.dropped();
            if dropped > 0 {
                tracing::warn!(plugin, "plugin `{plugin}` wrote {dropped} more bytes to its {stream} in one call than are kept ({OUTPUT_CAPTURE})");
            }
        }
    }
}

/// A guest's stdout or stderr: keeps the first [`OUTPUT_CAPTURE`] bytes of a call, counts
/// the rest and drops it. Every write succeeds.
#[derive(Clone, Default)]
struct CappedOutput {
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl CappedOutput {
    fn contents(&self) -> Vec<u8> {
        self.kept.lock().unwrap().clone()
    }

    fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let mut kept = self.kept.lock().unwrap();
        let room = OUTPUT_CAPTURE.saturating_sub(kept.len()).min(buf.len());
        kept.extend_from_slice(&buf[..room]);
        self.dropped.fetch_add(buf.len() - room, std::sync::atomic::Ordering::Relaxed);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

pub(super) struct CallSetup {
    pub plugin: Arc<str>,
    pub services: Arc<Services>,
    pub settings: Arc<Vec<(String, String)>>,
    pub sql_granted: bool,
    pub limits: Limits,
}

pub(super) fn new_store(engine: &wasmtime::Engine, setup: CallSetup) -> Store<StoreState> {
    // Nothing is granted: no preopened dirs, no env, no args, no sockets, no name lookup.
    let (stdout, stderr) = (CappedOutput::default(), CappedOutput::default());
    let wasi = WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .build();
    let state = StoreState {
        wasi,
        stdout,
        stderr,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { max: setup.limits.memory_bytes, used: 0, hit: None },
        plugin: setup.plugin,
        services: setup.services,
        settings: setup.settings,
        sql_granted: setup.sql_granted,
        started: Instant::now(),
        deadline: setup.limits.deadline,
        deadline_hit: false,
        log_bytes: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        // Wall time: a plugin that spends its call in host functions is stopped as well.
        if s.time_left().is_zero() {
            s.deadline_hit = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        // Yield so that a busy plugin does not starve the runner's other tasks.
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// What one table element is charged against the memory cap (wasmtime keeps a pointer-sized
/// slot per element, more for some element kinds).
const TABLE_ELEMENT_BYTES: usize = 16;

/// Caps the sum of all linear memories and tables of a call (each is created by a growth
/// from zero, so every byte passes through here) and records the request that went over,
/// so the error can say so (a Rust guest that cannot grow just hits `unreachable`, which
/// reads like a panic).
struct MemoryLimiter {
    max: usize,
    used: usize,
    hit: Option<usize>,
}

impl MemoryLimiter {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.max {
            self.hit = Some(total);
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    // The bytes above are the limit; these counts only keep bookkeeping small, with room
    // for componentize-py components (several modules each).
    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_and_table_together() {
        let mut limiter = MemoryLimiter { max: 10 << 20, used: 0, hit: None };
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap());
        // A second memory of 6 MiB is within a per-memory cap but not within the total.
        assert!(!limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert_eq!(limiter.hit, Some(12 << 20));
        assert!(limiter.memory_growing(6 << 20, 8 << 20, None).unwrap());
        // Tables count too: 8 MiB of memory plus 4 MiB of table elements is over 10 MiB.
        assert!(!limiter.table_growing(0, (4 << 20) / TABLE_ELEMENT_BYTES, None).unwrap());
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert_eq!(limiter.used, (8 << 20) + 1000 * TABLE_ELEMENT_BYTES);
    }
}
