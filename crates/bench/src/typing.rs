//! `gateway-bench typing`: what typing traffic costs the live path. One stand-in stack and school
//! population; two passes on the same data, one gateway process each, with every session online:
//! typing off (no client sends `typing`) and typing on (a share of the sessions, 10 % by default,
//! each send `{"type":"typing","thread_id"}` for one of their threads every 2.5 s, the client
//! library's interval, while the live load runs). Each pass makes the same real INSERTs and
//! measures the live path: client-side latency from `created_at`, the gateway's
//! `gateway_delivery_latency_seconds` read before and after (interpolated within its buckets), and
//! the gateway's CPU per live delivery over the same window. The typing pass also counts the
//! typing frames sent, the typing frames the other participants' sessions received (and how many
//! they should have), and every `error` frame. Writes `target/bench/typing.json`. Owns this
//! scenario only; it must never assert a number (the report states them).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::Stack;

use crate::clients::{self, Session};
use crate::e2e::{end_to_end, spawn_gateway_with, Backend};
use crate::host::{
    free_port, histogram, internal_latency, machine, proc_cpu_secs, raise_nofile, stop_gateway, wait_http,
    DELIVERY_LATENCY,
};
use crate::school::{school_stack, session_tokens, Population};

#[derive(clap::Args, Clone)]
pub struct TypingArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread); 280 is the standard
    /// population (10,360 sessions).
    #[arg(long, default_value_t = 280)]
    classes: usize,
    /// Share of the sessions that send typing in the typing-on pass.
    #[arg(long, default_value_t = 0.10)]
    typing_share: f64,
    /// Seconds between one session's typing frames (the client library sends one per thread per
    /// 2.5 s; the gateway accepts one per user and thread per 2 s).
    #[arg(long, default_value_t = 2.5)]
    typing_every_secs: f64,
    /// Real INSERTs per second, round robin over the threads.
    #[arg(long, default_value_t = 100)]
    inserts_per_sec: u64,
    /// Seconds of INSERTs (and typing) per pass.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Seconds measured after the INSERTs (the last deliveries and typing frames arrive).
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    #[arg(long, default_value = "target/bench/typing.json")]
    report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

/// A session that types: its frame, and how many other sessions should receive each one.
struct Typist {
    session: Arc<Session>,
    frame: String,
    receivers: u64,
}

/// The typing sessions: `share` of the connected sessions, each with one of its user's threads,
/// no two on the same user and thread (the gateway limits typing per user and thread, so two
/// devices of one user typing in one thread would be refused). Every tenth session first, then
/// the others, so parents with one device and teachers are all among them.
fn typists(pop: &Population, sessions: &[Arc<Session>], share: f64) -> Vec<Typist> {
    let live: Vec<&Arc<Session>> = sessions.iter().filter(|s| s.connected.load(Ordering::Relaxed)).collect();
    let mut per_user: HashMap<usize, u64> = HashMap::new();
    for s in &live {
        *per_user.entry(s.user).or_default() += 1;
    }
    let mut threads_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, (_, members, _)) in pop.threads.iter().enumerate() {
        for m in members {
            threads_of.entry(*m).or_default().push(k);
        }
    }
    let want = (live.len() as f64 * share).round() as usize;
    let order = (0..live.len()).filter(|i| i % 10 == 0).chain((0..live.len()).filter(|i| i % 10 != 0));
    let mut taken = HashSet::new();
    let mut chosen = Vec::with_capacity(want);
    for i in order {
        if chosen.len() >= want {
            break;
        }
        let s = live[i];
        let Some(threads) = threads_of.get(&s.user) else { continue };
        let pick =
            (0..threads.len()).map(|j| threads[(i / 10 + j) % threads.len()]).find(|k| !taken.contains(&(s.user, *k)));
        let Some(k) = pick else { continue };
        taken.insert((s.user, k));
        let (tid, members, _) = &pop.threads[k];
        let receivers = members.iter().filter(|m| **m != s.user).map(|m| per_user.get(m).copied().unwrap_or(0)).sum();
        chosen.push(Typist {
            session: s.clone(),
            frame: json!({"type": "typing", "thread_id": tid}).to_string(),
            receivers,
        });
    }
    chosen
}

/// Sends each typist's frame every `every`, the typists spread evenly over the interval, until
/// `until`; the frames sent and the typing frames they should bring to other sessions.
async fn type_along(typists: &[Typist], every: Duration, until: Instant) -> (u64, u64) {
    let (mut sent, mut expected) = (0u64, 0u64);
    if typists.is_empty() {
        return (0, 0);
    }
    let start = Instant::now();
    let slot = every.as_secs_f64() / typists.len() as f64;
    for round in 0u32.. {
        for (j, t) in typists.iter().enumerate() {
            let due = start + every * round + Duration::from_secs_f64(slot * j as f64);
            if due >= until {
                return (sent, expected);
            }
            tokio::time::sleep_until(due.into()).await;
            if t.session.outbox.send(t.frame.clone()).is_ok() {
                sent += 1;
                expected += t.receivers;
            }
        }
    }
    (sent, expected)
}

/// One pass: a gateway process, every session, the INSERTs (with typing when `typing`), the
/// settle window; the live path's figures, the gateway's CPU, and the typing counts.
async fn pass(
    args: &TypingArgs,
    stack: &Stack,
    pop: &Population,
    tokens: &[(usize, String)],
    typing: bool,
) -> Option<Value> {
    let port = free_port();
    let mut child = spawn_gateway_with(&args.gateway_bin, stack, Backend::Supabase, port, &[]).ok()?;
    if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
        eprintln!("the gateway never became ready");
        let _ = child.kill();
        return None;
    }
    let epoch = chrono::Utc::now().timestamp_micros();
    let (sessions, _, failures) = clients::connect_all(&format!("ws://127.0.0.1:{port}/"), tokens, 2500, epoch).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let typists = if typing { typists(pop, &sessions, args.typing_share) } else { Vec::new() };
    let pid = child.id();
    let live_before = histogram(port, DELIVERY_LATENCY).await;
    let cpu0 = proc_cpu_secs(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.secs);
    let every = Duration::from_secs_f64(args.typing_every_secs);
    // Each pass's messages are told apart by their step number (the content).
    let step = if typing { 996 } else { 995 };
    let (mut live, (sent, expected)) = tokio::join!(
        end_to_end(stack, pop, &sessions, args.inserts_per_sec, args.secs, pid, step),
        type_along(&typists, every, until)
    );
    let rest = Duration::from_secs_f64(args.secs + args.settle_secs).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    let window = started.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(pid) - cpu0;
    let live_after = histogram(port, DELIVERY_LATENCY).await;
    let delivered = live["delivered"].as_u64().unwrap_or(0);
    live["sessions"] = json!(sessions.len() - failures);
    live["window_secs"] = json!(window);
    live["gateway_cpu_secs"] = json!(cpu);
    live["gateway_cpu_us_per_live_delivery"] = json!(if delivered > 0 { cpu * 1e6 / delivered as f64 } else { 0.0 });
    live["internal_latency_ms"] = internal_latency(&live_before, &live_after);
    let received: u64 = sessions.iter().map(|s| s.typing.load(Ordering::Relaxed)).sum();
    let errors: u64 = sessions.iter().map(|s| s.errors.load(Ordering::Relaxed)).sum();
    // Context: the CPU over every frame written to a session (live deliveries and typing).
    let frames = delivered + received;
    live["gateway_cpu_us_per_frame_written"] = json!(if frames > 0 { cpu * 1e6 / frames as f64 } else { 0.0 });
    live["typing"] = json!({
        "typing_sessions": typists.len(), "every_secs": args.typing_every_secs, "frames_sent": sent,
        "frames_sent_per_sec": sent as f64 / args.secs, "received_by_other_sessions": received,
        "expected_at_other_sessions": expected, "error_frames": errors,
    });
    stop_gateway(&mut child);
    drop(sessions);
    Some(live)
}

pub async fn run(args: TypingArgs) -> i32 {
    raise_nofile();
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let tokens = session_tokens(&pop, stack.keys());
    eprintln!("{} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), tokens.len());
    let Some(off) = pass(&args, &stack, &pop, &tokens, false).await else { return 2 };
    eprintln!("typing off: {off}");
    let Some(on) = pass(&args, &stack, &pop, &tokens, true).await else { return 2 };
    eprintln!("typing on: {on}");
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if a > 0.0 => json!(b / a),
        _ => Value::Null,
    };
    let internal = |q: &str| ratio(&off["internal_latency_ms"][q], &on["internal_latency_ms"][q]);
    let client = |q: &str| ratio(&off["latency_ms_from_created_at"][q], &on["latency_ms_from_created_at"][q]);
    let report = json!({
        "scenario": "typing: the live path with typing off vs on (a share of the sessions typing) in one run",
        "classes": args.classes, "users": pop.users.len(), "sessions": tokens.len(),
        "typing_share": args.typing_share, "inserts_per_sec": args.inserts_per_sec, "secs": args.secs,
        "settle_secs": args.settle_secs, "typing_off": off, "typing_on": on,
        "ratios_on_over_off": {"cpu_per_live_delivery": ratio(&off["gateway_cpu_us_per_live_delivery"], &on["gateway_cpu_us_per_live_delivery"]),
                               "internal_p50": internal("p50"), "internal_p99": internal("p99"), "internal_p99_9": internal("p99_9"),
                               "client_p50": client("p50"), "client_p99": client("p99")},
        "targets": {"internal_p99_ratio_max": 1.05, "cpu_per_live_delivery_ratio_max": 1.05},
        "machine": machine(),
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&args.report, text);
    let bad = |r: &Value| {
        r["lost"].as_u64().unwrap_or(0)
            + r["duplicated"].as_u64().unwrap_or(0)
            + r["typing"]["error_frames"].as_u64().unwrap_or(0)
    };
    if bad(&off) + bad(&on) > 0 {
        eprintln!("LOST OR DUPLICATED LIVE DELIVERIES, OR ERROR FRAMES");
        return 1;
    }
    0
}
