//! The push path's own runtime: one OS thread named `push` running a single-threaded tokio
//! runtime at a lower scheduling priority ([`NICE`]), with its own [`Store`] (its own HTTP client
//! or database pool) opened inside it.
//!
//! Owns that thread's life: it starts with the gateway, runs the push loops until the stop token,
//! waits for them, drops its runtime (and with it every connection it drove) and then tells the
//! gateway's task tracker it is done, so a clean stop still waits for the push path. If the main
//! runtime goes away without a clean stop (its tasks dropped where they stand, as when the process
//! dies), the push runtime is dropped at once too: nothing recorded, nothing cleared. It must never
//! share a connection, pool or HTTP client with the main runtime: a connection driven by a runtime
//! that stops would fail the other side's calls; and nothing of the live path may run here.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PushConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;

/// How much nicer than the gateway the push thread (and any blocking thread its runtime starts)
/// runs: under CPU contention the live path's threads get about ten times its share.
pub const NICE: i32 = 10;
/// The highest niceness Linux allows.
const NICE_MAX: i32 = 19;
/// The push thread's name (what `/proc/<pid>/task/*/comm` shows, so a profile can tell its CPU
/// from the live path's).
pub const THREAD_NAME: &str = "push";

/// Opens the push path's own store; called on the push thread, inside its runtime.
pub type OpenStore = Box<dyn FnOnce() -> Result<Store, String> + Send>;

/// The push runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the push thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the push thread: its runtime runs the presence reporter, the decision loop and the
/// sender on a store from `open` until `stop`. `tasks` (the gateway's) waits for the thread's end.
pub fn start(
    open: OpenStore,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    config: PushConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), RuntimeError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    // Held by a task of the main runtime: dropped with it when that runtime stops.
    let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(move || {
            // The thread starts with the niceness of the thread that spawned it: the gateway's.
            let nice = lowered_nice();
            set_nice(nice);
            run(open, hub, metrics, config, Signals { stop, main_gone: alive_rx }, nice);
            drop(done_tx);
        })
        .map_err(RuntimeError::Thread)?;
    tasks.spawn(async move {
        let _alive = alive_tx;
        // Err when the sender is dropped: the thread ended (cleanly or not).
        let _ = done_rx.await;
    });
    Ok(())
}

/// How the push thread learns to end: `stop` (a clean stop: the loops finish), or `main_gone`
/// resolving (the main runtime dropped its side without a clean stop: abandon everything).
struct Signals {
    stop: CancellationToken,
    main_gone: tokio::sync::oneshot::Receiver<()>,
}

/// The push thread's body: builds the runtime and the store, runs the loops until `stop` and
/// waits for them, or abandons them when the main runtime is gone. The runtime is dropped here,
/// outside any async context, and with it whatever was still running on it.
fn run(open: OpenStore, hub: Arc<Hub>, metrics: Arc<Metrics>, config: PushConfig, signals: Signals, nice: i32) {
    let Signals { stop, main_gone } = signals;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(THREAD_NAME)
        .on_thread_start(move || set_nice(nice))
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push runtime; no push from this instance");
            return;
        }
    };
    runtime.block_on(async move {
        let store = match open() {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the push path's store; no push from this instance");
                return;
            }
        };
        let loops = TaskTracker::new();
        super::spawn_loops(store, hub, metrics, config, &loops, stop);
        loops.close();
        tokio::select! {
            () = loops.wait() => {}
            _ = main_gone => tracing::debug!("the main runtime is gone; push loops abandoned"),
        }
    });
    drop(runtime);
}

/// The calling thread's niceness plus [`NICE`], at most [`NICE_MAX`] (Linux: `getpriority` on
/// the thread's id; elsewhere just [`NICE`]).
fn lowered_nice() -> i32 {
    #[cfg(target_os = "linux")]
    let base = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0);
    #[cfg(not(target_os = "linux"))]
    let base = 0;
    (base + NICE).min(NICE_MAX)
}

/// Sets the calling thread's niceness (Linux: `setpriority` on the thread's id). A refusal is
/// logged and otherwise ignored: push still works, only unshielded.
fn set_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::warn!(error = %e, nice, "cannot lower the push thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
