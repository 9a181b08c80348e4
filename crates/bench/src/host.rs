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
    start_gateway_with(bin, stack, port, &[]).await
}

/// The same, with `extra` environment variables (the push scenario's webhook).
pub async fn start_gateway_with(bin: &Path, stack: &Stack, port: u16, extra: &[(&str, String)]) -> Option<Child> {
    let mut gateway: Child = match e2e::spawn_gateway_with(bin, stack, e2e::Backend::Supabase, port, extra) {
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

/// A histogram of the gateway's `/metrics`: (upper bound in seconds, cumulative count) per bucket;
/// empty when the server has no such series (the ceiling).
pub async fn histogram(port: u16, name: &str) -> Vec<(f64, u64)> {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Quantile `q` in ms of the observations between two readings of a histogram, interpolated
/// linearly within the bucket it falls in (as Prometheus' `histogram_quantile` does: the true
/// value lies somewhere in that bucket); `None` without observations. In the open last bucket
/// the answer is its lower bound.
pub fn histogram_quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n.saturating_sub(before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m))))
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for (le, cumulative) in delta {
        if cumulative as f64 >= rank && cumulative > below {
            if le.is_infinite() {
                return Some(lower * 1000.0);
            }
            let within = (rank - below as f64) / (cumulative - below) as f64;
            return Some((lower + (le - lower) * within.clamp(0.0, 1.0)) * 1000.0);
        }
        (lower, below) = (le, cumulative);
    }
    Some(lower * 1000.0)
}

/// `{p50, p99, p99_9}` in ms of the gateway's delivery latency between two readings (interpolated
/// within buckets), `null` each without observations.
pub fn internal_latency(before: &[(f64, u64)], after: &[(f64, u64)]) -> Value {
    let q = |q| histogram_quantile_ms(before, after, q).map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0));
    json!({"p50": q(0.5), "p99": q(0.99), "p99_9": q(0.999), "observations": after.last().map_or(0, |(_, n)| *n).saturating_sub(before.last().map_or(0, |(_, n)| *n))})
}

/// The gateway's delivery-latency histogram (receipt from the upstream to the socket write).
pub const DELIVERY_LATENCY: &str = "gateway_delivery_latency_seconds";

/// CPU seconds (utime + stime) of each thread of process `pid`, by thread name
/// (`/proc/<pid>/task/*/comm`): the push runtime's threads are named `push`.
pub fn thread_cpu_secs(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *by_name.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    by_name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_step() {
        let before = [(0.0005, 10), (0.001, 10), (f64::INFINITY, 10)];
        // 100 observations in the step: 50 at or below 0.5 ms, 50 in (0.5 ms, 1 ms].
        let after = [(0.0005, 60), (0.001, 110), (f64::INFINITY, 110)];
        let p50 = histogram_quantile_ms(&before, &after, 0.5).expect("observations");
        assert!((p50 - 0.5).abs() < 1e-9, "{p50}");
        let p99 = histogram_quantile_ms(&before, &after, 0.99).expect("observations");
        assert!((p99 - 0.99).abs() < 1e-9, "{p99}");
        let p25 = histogram_quantile_ms(&before, &after, 0.25).expect("observations");
        assert!((p25 - 0.25).abs() < 1e-9, "{p25}");
        assert_eq!(histogram_quantile_ms(&after, &after, 0.5), None);
        let open = [(0.0005, 0), (0.001, 0), (f64::INFINITY, 5)];
        assert_eq!(histogram_quantile_ms(&[], &open, 0.5), Some(1.0), "the open bucket answers its lower bound");
    }
}
