//! One pass of a live-path scenario (`push`, `typing`): a gateway process with every session of
//! the population online ([`start_pass`]), and the window the pass measures ([`Window`]): the
//! gateway's CPU, its internal delivery latency, its writes to client sockets (its own counters,
//! `syscw` of `/proc/<pid>/io`, and the write system calls `perf stat` counts when perf is
//! installed: sockets are written with `send`, which `syscw` does not count), its context
//! switches, over the same span. Owns
//! the set-up and the figures every such pass shares; the scenarios own what they load and what
//! they compare.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::Stack;

use crate::clients::{self, Session};
use crate::host::{
    free_port, histogram, internal_latency, proc_cpu_secs, start_gateway_with, stop_gateway, DELIVERY_LATENCY,
};

/// A gateway process and its sessions.
pub struct Pass {
    pub child: Child,
    pub port: u16,
    pub pid: u32,
    pub sessions: Vec<Arc<Session>>,
    pub failures: usize,
}

/// Starts the gateway at `bin` (with `extra` environment variables) against the stand-ins, waits
/// until it is ready, opens every session of `tokens` (2,500 per second) and waits 3 s more
/// (presence is reported once a second: every online user is known before the load starts).
pub async fn start_pass(
    bin: &Path,
    stack: &Stack,
    tokens: &[(usize, String)],
    extra: &[(&str, String)],
) -> Option<Pass> {
    let port = free_port();
    let child = start_gateway_with(bin, stack, port, extra).await?;
    let epoch = chrono::Utc::now().timestamp_micros();
    let (sessions, _, failures) = clients::connect_all(&format!("ws://127.0.0.1:{port}/"), tokens, 2500, epoch).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id();
    Some(Pass { child, port, pid, sessions, failures })
}

impl Pass {
    /// Stops the gateway (SIGTERM, reaped), then drops the sessions.
    pub fn stop(mut self) {
        stop_gateway(&mut self.child);
    }
}

/// Write system calls of process `pid` so far (`syscw` of `/proc/<pid>/io`: `write`, `writev`
/// and the like; `send`/`sendto` are not counted there).
fn write_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Context switches (voluntary and not) of every thread of process `pid` so far: a worker
/// parks and is woken once per voluntary switch.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .sum::<u64>();
    }
    total
}

/// The write system calls `perf stat` counts on the syscall tracepoints.
const WRITE_SYSCALLS: [&str; 4] = ["sendto", "sendmsg", "write", "writev"];

/// `perf stat` counting the write system calls of process `pid` until it is stopped; None when
/// perf is not installed (the figures are then left out).
fn count_syscalls(pid: u32) -> Option<Child> {
    let events: Vec<String> = WRITE_SYSCALLS.iter().map(|c| format!("syscalls:sys_enter_{c}")).collect();
    Command::new("perf")
        .args(["stat", "-x", ",", "-e", &events.join(","), "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// Stops `perf stat` (SIGINT: it prints its counts) and reads them; None without counts.
fn syscall_counts(perf: Option<Child>) -> Option<BTreeMap<String, u64>> {
    let perf = perf?;
    let _ = Command::new("kill").arg("-INT").arg(perf.id().to_string()).status();
    let output = perf.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let counts: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            let call = fields.get(2)?.strip_prefix("syscalls:sys_enter_")?;
            Some((call.to_string(), fields.first()?.parse().ok()?))
        })
        .collect();
    (!counts.is_empty()).then_some(counts)
}

/// Every series of the gateway's `/metrics` (name with its labels → value).
pub async fn gateway_series(port: u16) -> BTreeMap<String, f64> {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, v)| Some((name.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// The gateway's counters when a measured window opened.
pub struct Window {
    started: Instant,
    perf: Option<Child>,
    cpu: f64,
    syscw: u64,
    switches: u64,
    latency: Vec<(f64, u64)>,
    series: BTreeMap<String, f64>,
}

/// `a / b`, 0 when `b` is 0.
pub fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Window {
    pub async fn open(pass: &Pass) -> Window {
        let latency = histogram(pass.port, DELIVERY_LATENCY).await;
        let series = gateway_series(pass.port).await;
        let perf = count_syscalls(pass.pid);
        // perf attaches to every thread before the window opens.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (cpu, syscw, switches) = (proc_cpu_secs(pass.pid), write_syscalls(pass.pid), context_switches(pass.pid));
        Window { started: Instant::now(), perf, cpu, syscw, switches, latency, series }
    }

    /// Seconds since the window opened.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Closes the window into `live` (the pass's figures, with the live deliveries the clients
    /// saw as `delivered`): sessions, window, the gateway's CPU (total and per live delivery),
    /// internal latency, socket writes and frames written (the gateway's counters), write
    /// syscalls and context switches. `extra_frames`: frames the clients received that the live
    /// deliveries do not count (typing). Returns the window's series deltas.
    pub async fn close(self, pass: &Pass, live: &mut Value, extra_frames: u64) -> BTreeMap<String, f64> {
        let window = self.elapsed();
        let cpu = proc_cpu_secs(pass.pid) - self.cpu;
        let syscw = write_syscalls(pass.pid).saturating_sub(self.syscw);
        let switches = context_switches(pass.pid).saturating_sub(self.switches);
        let syscalls = syscall_counts(self.perf);
        let latency = histogram(pass.port, DELIVERY_LATENCY).await;
        let after = gateway_series(pass.port).await;
        let delta: BTreeMap<String, f64> =
            after.iter().map(|(k, v)| (k.clone(), v - self.series.get(k).copied().unwrap_or(0.0))).collect();
        let delivered = live["delivered"].as_u64().unwrap_or(0);
        let frames = (delivered + extra_frames) as f64;
        let writes = delta.get("gateway_socket_writes_total").copied().unwrap_or(0.0);
        let written = delta.get("gateway_frames_written_total").copied().unwrap_or(0.0);
        live["sessions"] = json!(pass.sessions.len() - pass.failures);
        live["window_secs"] = json!(window);
        live["gateway_cpu_secs"] = json!(cpu);
        live["gateway_cpu_us_per_live_delivery"] = json!(per(cpu * 1e6, delivered as f64));
        live["frames_received_by_clients"] = json!(frames);
        live["gateway_cpu_us_per_frame_written"] = json!(per(cpu * 1e6, frames));
        live["internal_latency_ms"] = internal_latency(&self.latency, &latency);
        live["writes"] = json!({
            "gateway_socket_writes": writes, "gateway_frames_written": written,
            "frames_per_socket_write": per(written, writes),
            "proc_io_syscw": syscw, "proc_io_syscw_per_frame": per(syscw as f64, frames),
            "context_switches": switches, "context_switches_per_frame": per(switches as f64, frames),
        });
        if let Some(counts) = syscalls {
            let total: u64 = counts.values().sum();
            live["writes"]["perf_write_syscalls"] = json!(counts);
            live["writes"]["perf_write_syscalls_per_frame"] = json!(per(total as f64, frames));
        }
        delta
    }
}
