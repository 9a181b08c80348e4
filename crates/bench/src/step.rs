//! One step of offered load: synthetic INSERTs injected through the Realtime stand-in at a rate
//! that makes `offered` deliveries/s, a drain until deliveries stop growing, and every delivery
//! checked (lost, duplicated, misrouted, dropped sessions) with its latency. Owns the counting;
//! it must never judge the figures (the report does).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use supabase_standin::realtime::InjectSpec;
use supabase_standin::Stack;

use crate::clients::Session;
use crate::host::{histogram, internal_latency, proc_cpu_secs, DELIVERY_LATENCY};
use crate::school::Population;

pub struct StepResult {
    pub offered: u64,
    pub events: u64,
    pub expected: u64,
    pub unique: u64,
    pub duplicated: u64,
    pub misrouted: u64,
    pub lost: u64,
    pub achieved: f64,
    pub hist: Histogram<u64>,
    pub cpu: f64,
    pub loadgen_cpu: f64,
    pub dropped_sessions: usize,
    /// The server's own delivery latency over the step, from its histogram (`null` for a server
    /// without one: the ceiling).
    pub internal_latency: Value,
}

impl StepResult {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.misrouted == 0 && self.dropped_sessions == 0
    }
    /// The server's CPU per delivery over the step, µs.
    pub fn cpu_us_per_delivery(&self) -> f64 {
        if self.achieved > 0.0 {
            self.cpu * 1e6 / self.achieved
        } else {
            0.0
        }
    }
    pub fn q(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn json(&self) -> Value {
        json!({
            "offered_deliveries_per_sec": self.offered, "events": self.events, "expected": self.expected,
            "delivered": self.unique, "lost": self.lost, "duplicated": self.duplicated, "misrouted": self.misrouted,
            "dropped_sessions": self.dropped_sessions, "deliveries_per_sec": self.achieved.round(),
            "latency_ms": {"p50": self.q(0.5), "p90": self.q(0.9), "p99": self.q(0.99), "p99_9": self.q(0.999), "max": self.hist.max() as f64 / 1000.0},
            "internal_latency_ms": self.internal_latency,
            "server_cpu_cores": (self.cpu * 100.0).round() / 100.0,
            "server_cpu_us_per_delivery": (self.cpu_us_per_delivery() * 100.0).round() / 100.0,
            "loadgen_and_standin_cpu_cores": (self.loadgen_cpu * 100.0).round() / 100.0,
        })
    }
}

/// What a step offers: one row per thread, the number of events, and the deliveries they make.
struct Offer {
    rows: Vec<Value>,
    events: u64,
    expected: u64,
}

/// What the sessions received in a step.
struct Tally {
    hist: Histogram<u64>,
    unique: u64,
    duplicated: u64,
    misrouted: u64,
    /// Deliveries per second over the span from the first send to the last receipt.
    achieved: f64,
}

/// Offers one step of load and checks every delivery. `everyone` = the ceiling (every session
/// gets every event). `metrics_port`: the gateway's, whose delivery-latency histogram is read
/// before and after the step.
#[allow(clippy::too_many_arguments)]
pub async fn step(
    stack: &Stack,
    pop: &Population,
    sessions: &[Arc<Session>],
    step_no: u16,
    offered: u64,
    secs: f64,
    everyone: bool,
    server_pid: u32,
    metrics_port: Option<u16>,
) -> StepResult {
    let internal_before = match metrics_port {
        Some(port) => histogram(port, DELIVERY_LATENCY).await,
        None => Vec::new(),
    };
    let live: Vec<&Arc<Session>> =
        sessions.iter().filter(|s| s.connected.load(Ordering::Relaxed) && !s.closed.load(Ordering::Relaxed)).collect();
    let Offer { rows, events, expected } = offer(pop, &live, step_no, offered, secs, everyone);
    let rate = (events as f64 / secs).round().max(1.0) as u64;
    let cpu0 = proc_cpu_secs(server_pid);
    let own0 = proc_cpu_secs(std::process::id());
    let started = Instant::now();
    let spec = InjectSpec {
        schema: "public".into(),
        table: "messages".into(),
        change_type: "INSERT".into(),
        rows,
        rate_per_sec: rate,
        count: events,
    };
    stack.realtime().inject(spec).await;
    drain(&live, step_no, expected, started, secs).await;
    let cpu = (proc_cpu_secs(server_pid) - cpu0) / started.elapsed().as_secs_f64();
    let internal_latency = match metrics_port {
        Some(port) => internal_latency(&internal_before, &histogram(port, DELIVERY_LATENCY).await),
        None => Value::Null,
    };
    let loadgen_cpu = (proc_cpu_secs(std::process::id()) - own0) / started.elapsed().as_secs_f64();
    let Tally { hist, unique, duplicated, misrouted, achieved } = tally(pop, &live, step_no, secs, everyone);
    let dropped_sessions = live.iter().filter(|s| s.closed.load(Ordering::Relaxed)).count();
    StepResult {
        offered,
        events,
        expected,
        unique,
        duplicated,
        misrouted,
        lost: expected.saturating_sub(unique),
        achieved,
        hist,
        cpu,
        loadgen_cpu,
        dropped_sessions,
        internal_latency,
    }
}

/// The events that make `offered` deliveries/s for `secs` to the live sessions, spread round
/// robin over the threads, and the deliveries they make.
fn offer(pop: &Population, live: &[&Arc<Session>], step_no: u16, offered: u64, secs: f64, everyone: bool) -> Offer {
    let mut sessions_of_user: HashMap<usize, usize> = HashMap::new();
    for s in live {
        *sessions_of_user.entry(s.user).or_default() += 1;
    }
    let recipients: Vec<u64> = pop
        .threads
        .iter()
        .map(|(_, members, _)| {
            if everyone {
                live.len() as u64
            } else {
                members.iter().map(|m| *sessions_of_user.get(m).unwrap_or(&0) as u64).sum()
            }
        })
        .collect();
    let per_round: u64 = recipients.iter().sum();
    let rounds_per_sec = offered as f64 / per_round.max(1) as f64;
    let events = ((rounds_per_sec * pop.threads.len() as f64) * secs).round().max(1.0) as u64;
    let rows: Vec<Value> = pop
        .threads
        .iter()
        .map(|(tid, _, sender)| json!({"id": "$uuid", "thread_id": tid, "sender_id": pop.users[*sender].0, "content": format!("s{step_no}"), "message_type": "text", "created_at": "$now"}))
        .collect();
    let expected: u64 = (0..pop.threads.len())
        .map(|k| {
            (events / pop.threads.len() as u64 + u64::from((k as u64) < events % pop.threads.len() as u64))
                * recipients[k]
        })
        .sum();
    Offer { rows, events, expected }
}

/// Waits until deliveries of the step stop growing (or a deadline well past the step).
async fn drain(live: &[&Arc<Session>], step_no: u16, expected: u64, started: Instant, secs: f64) {
    let count = || -> u64 {
        live.iter()
            .map(|s| s.records.lock().map(|r| r.iter().filter(|x| x.step == step_no).count() as u64).unwrap_or(0))
            .sum()
    };
    let mut last = count();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count();
        if now == last && (now >= expected || started.elapsed() > Duration::from_secs_f64(secs + 3.0)) {
            break;
        }
        last = now;
        if started.elapsed() > Duration::from_secs_f64(secs * 4.0 + 20.0) {
            break;
        }
    }
}

/// Counts what each live session received in the step: duplicates, deliveries to a session of
/// someone outside the thread, and the latency of the rest.
fn tally(pop: &Population, live: &[&Arc<Session>], step_no: u16, secs: f64, everyone: bool) -> Tally {
    let thread_index: HashMap<u128, usize> = pop.threads.iter().enumerate().map(|(i, t)| (t.0.as_u128(), i)).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    let (mut unique, mut duplicated, mut misrouted) = (0u64, 0u64, 0u64);
    let (mut first, mut last_rx) = (u64::MAX, 0u64);
    for s in live {
        let records = s
            .records
            .lock()
            .map(|r| r.iter().filter(|x| x.step == step_no).copied().collect::<Vec<_>>())
            .unwrap_or_default();
        let mut seen = HashSet::with_capacity(records.len());
        for r in records {
            if !seen.insert(r.message) {
                duplicated += 1;
                continue;
            }
            let allowed = everyone || thread_index.get(&r.thread).is_some_and(|&k| pop.threads[k].1.contains(&s.user));
            if !allowed {
                misrouted += 1;
                continue;
            }
            unique += 1;
            let _ = hist.record(r.latency_us.max(1));
            first = first.min(r.received_us.saturating_sub(r.latency_us));
            last_rx = last_rx.max(r.received_us);
        }
    }
    let span = (last_rx.saturating_sub(first) as f64 / 1e6).max(secs);
    Tally { hist, unique, duplicated, misrouted, achieved: unique as f64 / span }
}
