//! What the standard scenario prints and writes: the step table, the summary lines, and
//! `report.json` with the parameters, the machine, both servers' steps and the ratios between
//! them. Owns judging the figures (nothing lost at or below 62,000 deliveries/s); it must never
//! offer load.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::RunArgs;
use crate::host::machine;
use crate::school::Population;
use crate::step::StepResult;

/// The gateway's memory and connect figures with every session idle.
pub struct Idle {
    pub rss_before: u64,
    pub rss_idle: u64,
    pub per_session_kib: f64,
    pub connect_times: Vec<Duration>,
    pub failures: usize,
}

/// Everything the standard scenario measured.
pub struct Figures {
    pub idle: Idle,
    /// The gateway's RSS after the load steps, KiB.
    pub rss_loaded: u64,
    pub gateway_steps: Vec<StepResult>,
    pub e2e: Value,
    pub ceiling_steps: Vec<StepResult>,
    pub ceiling_json: Value,
}

/// Prints the summary, writes the report and answers the exit code: 1 when a delivery was lost,
/// duplicated or misrouted at or below 62,000 deliveries/s.
pub fn finish(args: &RunArgs, pop: &Population, figures: Figures, t0: Instant) -> i32 {
    let Figures { idle, rss_loaded, gateway_steps, e2e, ceiling_steps, ceiling_json } = figures;
    let Idle { rss_before, rss_idle, per_session_kib, mut connect_times, failures } = idle;
    let sustained = |steps: &[StepResult]| {
        steps.iter().filter(|s| s.ok() && s.q(0.99) <= 50.0).map(|s| s.achieved).fold(0.0, f64::max)
    };
    let throughput = |steps: &[StepResult]| steps.iter().filter(|s| s.ok()).map(|s| s.achieved).fold(0.0, f64::max);
    let g_max = sustained(&gateway_steps);
    let (g_tp, c_tp) = (throughput(&gateway_steps), throughput(&ceiling_steps));
    let at_62k = gateway_steps.iter().find(|s| s.offered == 62_000).map(StepResult::json);
    // At every offered rate both servers ran: deliveries, client p99 and CPU per delivery,
    // gateway over ceiling.
    let ratios: Vec<Value> = gateway_steps
        .iter()
        .filter_map(|g| ceiling_steps.iter().find(|c| c.offered == g.offered).map(|c| (g, c)))
        .map(|(g, c)| {
            let cpu_ratio = if c.cpu_us_per_delivery() > 0.0 {
                json!(g.cpu_us_per_delivery() / c.cpu_us_per_delivery())
            } else {
                Value::Null
            };
            json!({"offered": g.offered, "deliveries_ratio": g.achieved / c.achieved.max(1.0), "p99_ratio": g.q(0.99) / c.q(0.99).max(0.001),
                   "gateway_cpu_us_per_delivery": g.cpu_us_per_delivery(), "ceiling_cpu_us_per_delivery": c.cpu_us_per_delivery(),
                   "cpu_per_delivery_ratio": cpu_ratio})
        })
        .collect();
    let any_failure = gateway_steps.iter().filter(|s| s.offered <= 62_000).any(|s| !s.ok());
    println!("\nmax sustained (p99 <= 50 ms, nothing lost): gateway {g_max:.0} deliveries/s");
    println!(
        "max throughput (nothing lost, any latency): gateway {g_tp:.0}/s, ceiling {c_tp:.0}/s, gateway/ceiling {:.2}",
        g_tp / c_tp.max(1.0)
    );
    println!(
        "RSS per idle session: {per_session_kib:.2} KiB; gateway RSS under load {rss_loaded} KiB; total time {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let report = json!({
        "parameters": {"gen_threads": args.gen_threads, "classes": args.classes, "users": pop.users.len(), "threads": pop.threads.len(), "sessions": pop.sessions.len(),
                        "rates": args.rates, "step_secs": args.step_secs, "connect_rate": args.connect_rate, "tokens": "HS256 and ES256 alternately",
                        "mode": "gateway-only (Realtime stand-in synthetic events) + end-to-end (real INSERTs)"},
        "machine": machine(),
        "gateway": {
            "sessions_connected": sessions_len(&gateway_steps, pop.sessions.len(), failures),
            "connect_failures": failures,
            "connect_ms": {"p50": percentile(&mut connect_times, 0.5), "p99": percentile(&mut connect_times, 0.99)},
            "rss_kib": {"before_sessions": rss_before, "idle_with_sessions": rss_idle, "after_load": rss_loaded},
            "rss_per_idle_session_kib": per_session_kib,
            "steps": gateway_steps.iter().map(StepResult::json).collect::<Vec<_>>(),
            "at_62000_offered": at_62k,
            "max_sustained_deliveries_per_sec": g_max,
            "end_to_end": e2e,
        },
        "ceiling": ceiling_json,
        "ratios": {"max_throughput_gateway_over_ceiling": g_tp / c_tp.max(1.0), "gateway_max_throughput": g_tp, "ceiling_max_throughput": c_tp, "per_step": ratios},
        "targets": {"rss_per_idle_session_kib_max": 5.0, "p99_ms_at_62000_max": 5.0, "internal_p99_ms_at_62000_max": 1.0, "cpu_per_delivery_ratio_max": 1.0, "max_sustained_min": 200_000, "ceiling_ratio_min": 0.7},
        "total_secs": t0.elapsed().as_secs_f64(),
    });
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        Ok(()) => println!("report: {}", args.report.display()),
        Err(e) => eprintln!("cannot write {}: {e}", args.report.display()),
    }
    if any_failure {
        println!("\n!!!!! FAILURE: messages were lost, duplicated or misrouted at or below 62,000 deliveries/s !!!!!");
        return 1;
    }
    0
}

fn sessions_len(_steps: &[StepResult], total: usize, failures: usize) -> usize {
    total - failures
}

pub fn print_step(label: &str, r: &StepResult) {
    println!(
        "{label:<9} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>6.2} {:>6.2} {:>6} {:>5} {:>5} {:>5} {}",
        r.offered,
        r.achieved,
        r.q(0.5),
        r.q(0.9),
        r.q(0.99),
        r.q(0.999),
        r.hist.max() as f64 / 1000.0,
        internal(&r.internal_latency["p50"]),
        internal(&r.internal_latency["p99"]),
        r.cpu,
        r.loadgen_cpu,
        r.lost,
        r.duplicated,
        r.misrouted,
        r.dropped_sessions,
        if r.ok() { "" } else { "  <<< FAILURE: lost/duplicated/misrouted/dropped" }
    );
}

/// An internal-latency figure for the table (`-` when the server has none).
fn internal(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms:.3}"))
}

pub fn header() {
    println!(
        "{:<9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5}",
        "server",
        "offered/s",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "int p50",
        "int p99",
        "cpu",
        "gencpu",
        "lost",
        "dup",
        "misr",
        "drop"
    );
}

pub fn percentile(times: &mut [Duration], q: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    times.sort();
    let i = ((times.len() as f64 * q) as usize).min(times.len() - 1);
    times[i].as_secs_f64() * 1000.0
}
