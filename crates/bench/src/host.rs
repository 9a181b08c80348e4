//! The host side of a benchmark: starting the gateway process and waiting until it is ready,
//! free ports, a process's memory and CPU from `/proc`, the machine's description, the open-files
//! limit and the gateway's `/metrics` counters. Owns no scenario logic.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};
use supabase_standin::Stack;

use crate::e2e;

pub fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, seconds.
pub fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn free_port() -> u16 {
    (20000..30000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 32768")
}

pub async fn wait_http(url: &str) -> bool {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The machine the figures come from.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    json!({"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu, "memory": mem, "kernel": kernel})
}

pub fn raise_nofile() {
    // `ulimit -n` for this process: soft limit up to the hard limit.
    let _ = Command::new("sh").arg("-c").arg("true").status();
    #[cfg(target_os = "linux")]
    {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            eprintln!(
                "open files: {}",
                line.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" soft, hard ")
            );
        }
    }
}

/// The gateway's value of one `/metrics` counter (0 when absent).
pub async fn gateway_counter(port: u16, name: &str) -> u64 {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the release gateway on `port` against the Supabase stand-ins and waits until it is
/// ready; `None` (reported) when it cannot start or never becomes ready.
pub async fn start_gateway(bin: &Path, stack: &Stack, port: u16) -> Option<Child> {
    let mut gateway: Child = match e2e::spawn_gateway(bin, stack, e2e::Backend::Supabase, port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", bin.display());
            return None;
        }
    };
    if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
        eprintln!("gateway never became ready");
        let _ = gateway.kill();
        return None;
    }
    Some(gateway)
}

/// Stops a gateway process the way an operator would (SIGTERM) and reaps it.
pub fn stop_gateway(gateway: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(gateway.id().to_string()).status();
    let _ = gateway.wait();
}
