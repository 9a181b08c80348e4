//! `gateway-bench typing`: what typing traffic costs the live path. One stand-in stack and school
//! population; four passes on the same data, one gateway process each, with every session
//! online: **idle** (neither), **live only** (real INSERTs, no client sends `typing`), **typing only** (a share of the
//! sessions, 10 % by default, each send `{"type":"typing","thread_id"}` for one of their threads
//! every 2.5 s, the client library's interval; no INSERTs) and **both** at once. Each pass
//! measures the live path (client-side latency from `created_at`, the gateway's
//! `gateway_delivery_latency_seconds` read before and after, interpolated within its buckets),
//! the gateway's CPU, its socket writes (its own counters and `/proc/<pid>/io`) and context
//! switches over the same window, per live delivery and per frame written. The CPU the live
//! deliveries take with typing is the both pass's minus the typing-only pass's, per live
//! delivery, against the live-only pass's minus the idle pass's. Every typing frame
//! is accounted for: the signals the clients sent (accepted, refused, not answered), the
//! accepted ones (fanned out, dropped by reason, waiting), and the frames they should bring
//! (queued, skipped, coalesced, received, in flight). Writes `target/bench/typing.json`. Owns
//! this scenario only; it must never assert a number (the report states them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::Stack;

use crate::clients::Session;
use crate::e2e::end_to_end;
use crate::host::{machine, raise_nofile};
use crate::pass::{per, start_pass, Window};
use crate::school::{school_stack, session_tokens, Population};

#[derive(clap::Args, Clone)]
pub struct TypingArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread); 280 is the standard
    /// population (10,360 sessions).
    #[arg(long, default_value_t = 280)]
    classes: usize,
    /// Share of the sessions that send typing in the typing passes.
    #[arg(long, default_value_t = 0.10)]
    typing_share: f64,
    /// Seconds between one session's typing frames (the client library sends one per thread per
    /// 2.5 s; the gateway accepts one per user and thread per 2 s).
    #[arg(long, default_value_t = 2.5)]
    typing_every_secs: f64,
    /// Real INSERTs per second, round robin over the threads.
    #[arg(long, default_value_t = 100)]
    inserts_per_sec: u64,
    /// Seconds of INSERTs and/or typing per pass.
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

/// What a pass loads: real INSERTs, typing, or both at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Idle,
    Live,
    Typing,
    Both,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Live => "live_only",
            Load::Typing => "typing_only",
            Load::Both => "both",
        }
    }
}

/// One pass: a gateway process, every session, the INSERTs and/or typing, the settle window; the
/// live path's figures, the gateway's CPU and writes, and the typing frames accounted for.
async fn pass(
    args: &TypingArgs,
    stack: &Stack,
    pop: &Population,
    tokens: &[(usize, String)],
    load: Load,
) -> Option<Value> {
    let pass = start_pass(&args.gateway_bin, stack, tokens, &[]).await?;
    let types = matches!(load, Load::Typing | Load::Both);
    let typists = if types { typists(pop, &pass.sessions, args.typing_share) } else { Vec::new() };
    let window = Window::open(&pass).await;
    let until = Instant::now() + Duration::from_secs_f64(args.secs);
    let every = Duration::from_secs_f64(args.typing_every_secs);
    // Each pass's messages are told apart by their step number (the content).
    let step = if load == Load::Both { 996 } else { 995 };
    let inserts = async {
        match load {
            Load::Idle | Load::Typing => json!({"delivered": 0, "lost": 0, "duplicated": 0}),
            _ => end_to_end(stack, pop, &pass.sessions, args.inserts_per_sec, args.secs, pass.pid, step).await,
        }
    };
    let (mut live, (sent, expected)) = tokio::join!(inserts, type_along(&typists, every, until));
    let rest = (args.secs + args.settle_secs - window.elapsed()).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(rest)).await;
    let received = typing_received(&pass.sessions);
    let delta = window.close(&pass, &mut live, received).await;
    if types {
        // A second look a second later tells frames in flight at the window's end from lost ones.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = typing_received(&pass.sessions);
        let errors: u64 = pass.sessions.iter().map(|s| s.errors.load(Ordering::Relaxed)).sum();
        live["typing"] = json!({
            "typing_sessions": typists.len(), "every_secs": args.typing_every_secs, "frames_sent": sent,
            "frames_sent_per_sec": sent as f64 / args.secs, "received_by_other_sessions": received,
            "expected_at_other_sessions": expected, "error_frames": errors,
            "accounting": accounting(&delta, sent, expected, received, later),
        });
    }
    pass.stop();
    Some(live)
}

/// Typing frames the sessions received so far.
fn typing_received(sessions: &[Arc<Session>]) -> u64 {
    sessions.iter().map(|s| s.typing.load(Ordering::Relaxed)).sum()
}

/// Every typing signal and frame of a pass, from the clients' counts and the gateway's series
/// over the window: the signals the clients sent (accepted, refused by outcome, not answered),
/// the accepted ones (fanned out, dropped by reason, still waiting), and the frames they should
/// bring (queued, skipped by a full queue, coalesced, not addressed; of those queued: received,
/// in flight at the window's end, never received).
fn accounting(delta: &BTreeMap<String, f64>, sent: u64, expected: u64, received: u64, later: u64) -> Value {
    let get = |k: &str| delta.get(k).copied().unwrap_or(0.0).round() as i64;
    let outcome = |o: &str| get(&format!("gateway_typing_frames_total{{outcome=\"{o}\"}}"));
    let dropped = |r: &str| get(&format!("gateway_typing_dropped_total{{reason=\"{r}\"}}"));
    let (accepted, limited, denied, failed) =
        (outcome("accepted"), outcome("rate_limited"), outcome("denied"), outcome("check_failed"));
    let signal_reasons =
        ["relay_full", "stale", "inbound_full", "pending_full", "duplicate", "lookup_busy", "lookup_failed"];
    let signal_drops: serde_json::Map<String, Value> =
        signal_reasons.into_iter().map(|r| (r.to_string(), json!(dropped(r)))).collect();
    // Signals relayed to other instances are dropped there, not here: relay_full and stale
    // concern the relay, not this instance's delivery.
    let local_drops: i64 = ["pending_full", "duplicate", "lookup_busy", "lookup_failed"].into_iter().map(dropped).sum();
    let fanned_out = get("gateway_typing_fanned_out_total");
    let (queued, skipped, coalesced) =
        (get("gateway_typing_delivered_total"), dropped("session_queue_full"), dropped("coalesced"));
    let (expected, received, later) = (expected as i64, received as i64, later as i64);
    let not_answered = sent as i64 - accepted - limited - denied - failed;
    json!({
        "signals": {
            "sent_by_clients": sent, "accepted": accepted, "rate_limited": limited, "denied": denied,
            "check_failed": failed, "not_answered": not_answered,
            "fanned_out": fanned_out, "dropped": signal_drops,
            "still_waiting": accepted - fanned_out - local_drops,
            "relayed_sent": get("gateway_typing_relayed_total{direction=\"sent\"}"),
        },
        "frames": {
            "expected": expected, "queued": queued, "skipped_full_queue": skipped, "coalesced": coalesced,
            "not_addressed": expected - queued - skipped - coalesced,
            "received_at_window_end": received, "in_flight_at_window_end": queued - received,
            "received_1s_later": later, "never_received": queued - later,
        },
    })
}

/// The load average (1, 5, 15 minutes) now.
fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect();
    json!(v)
}

/// The live path's figures with typing against without: latency ratios, and the CPU the live
/// deliveries take per live delivery, with typing (the both pass's CPU minus the typing-only
/// pass's) and without (the live-only pass's minus the idle pass's: the sessions' keep-alive and
/// timers are in both subtrahends).
fn live_path(idle: &Value, live: &Value, typing: &Value, both: &Value) -> Value {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if a > 0.0 => json!(b / a),
        _ => Value::Null,
    };
    let frames = |v: &Value| v["typing"]["received_by_other_sessions"].as_f64().unwrap_or(0.0);
    let cpu = |v: &Value| f(v, "gateway_cpu_secs");
    let with_typing = per((cpu(both) - cpu(typing)) * 1e6, f(both, "delivered"));
    let alone = per((cpu(live) - cpu(idle)) * 1e6, f(live, "delivered"));
    let internal = |q: &str| ratio(&live["internal_latency_ms"][q], &both["internal_latency_ms"][q]);
    let client = |q: &str| ratio(&live["latency_ms_from_created_at"][q], &both["latency_ms_from_created_at"][q]);
    json!({
        "cpu_us_per_live_delivery_without_typing": alone,
        "cpu_us_per_live_delivery_with_typing": with_typing,
        "cpu_per_live_delivery_ratio": per(with_typing, alone),
        "all_cpu_per_live_delivery_ratio": per(f(both, "gateway_cpu_us_per_live_delivery"), f(live, "gateway_cpu_us_per_live_delivery")),
        "typing_frames_written": {"typing_only": frames(typing), "both": frames(both)},
        "cpu_us_per_typing_frame": per((cpu(typing) - cpu(idle)) * 1e6, frames(typing)),
        "internal_p50": internal("p50"), "internal_p99": internal("p99"), "internal_p99_9": internal("p99_9"),
        "client_p50": client("p50"), "client_p99": client("p99"),
    })
}

pub async fn run(args: TypingArgs) -> i32 {
    raise_nofile();
    let load_before = load_average();
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let tokens = session_tokens(&pop, stack.keys());
    eprintln!("{} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), tokens.len());
    let mut passes = serde_json::Map::new();
    for load in [Load::Idle, Load::Live, Load::Typing, Load::Both] {
        let Some(figures) = pass(&args, &stack, &pop, &tokens, load).await else { return 2 };
        eprintln!("{}: {figures}", load.name());
        passes.insert(load.name().to_string(), figures);
    }
    let (idle, live, typing, both) = (&passes["idle"], &passes["live_only"], &passes["typing_only"], &passes["both"]);
    let report = json!({
        "scenario": "typing: idle, the live path alone, typing alone (no INSERTs), and both at once, one gateway process each",
        "classes": args.classes, "users": pop.users.len(), "sessions": tokens.len(),
        "typing_share": args.typing_share, "inserts_per_sec": args.inserts_per_sec, "secs": args.secs,
        "settle_secs": args.settle_secs, "passes": passes, "live_path": live_path(idle, live, typing, both),
        "targets": {"internal_p99_ratio_max": 1.05, "cpu_per_live_delivery_ratio_max": 1.05},
        "load_average": {"before": load_before, "after": load_average()},
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
    if bad(live) + bad(typing) + bad(both) > 0 {
        eprintln!("LOST OR DUPLICATED LIVE DELIVERIES, OR ERROR FRAMES");
        return 1;
    }
    0
}
