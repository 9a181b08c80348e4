//! `gateway-bench push`: what push to offline recipients costs the live path, and how fast it
//! sends. One stand-in stack and school population; `--offline` participants (parents spread over
//! every class, and the first parent's 1:1 thread) have no session. Two passes on the same data,
//! one gateway process each: push off (no transport: the queue is only drained, as shipped) and
//! push on (`PUSH_WEBHOOK_URL` to a stand-in receiver here that answers 200 at once and records
//! each call). Each pass makes the same real INSERTs and measures the live path (client-side
//! latency from `created_at`, the gateway's `gateway_delivery_latency_seconds` read before and
//! after and interpolated within its buckets, and its CPU per
//! live delivery over the same window, as the whole process and as the live path's threads only:
//! the process without its `push` threads); the push-on pass also measures pushes/s reaching the
//! receiver and `gateway_push_latency_seconds`. Writes `target/bench/push.json`. Owns this
//! scenario only; it must never assert a number (the report states them).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use supabase_standin::Stack;
use uuid::Uuid;
use warp::Filter;

use crate::e2e::end_to_end;
use crate::host::{histogram, histogram_quantile_ms, machine, raise_nofile, thread_cpu_secs};
use crate::pass::{per, start_pass, Window};
use crate::school::{school_stack, session_tokens, Population};

#[derive(clap::Args, Clone)]
pub struct PushArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread); 280 is the standard
    /// population (10,360 sessions when everyone is online).
    #[arg(long, default_value_t = 280)]
    classes: usize,
    /// Participants with no session (parents, spread over the classes).
    #[arg(long, default_value_t = 1000)]
    offline: usize,
    /// Real INSERTs per second, round robin over the threads.
    #[arg(long, default_value_t = 100)]
    inserts_per_sec: u64,
    /// Seconds of INSERTs per pass.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds measured after the INSERTs (pushes go out PUSH_DELAY_MS after each commit, and a
    /// burst to one user and thread collapses into one push 10 s after the previous).
    #[arg(long, default_value_t = 15.0)]
    settle_secs: f64,
    #[arg(long, default_value = "target/bench/push.json")]
    report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

/// One call the stand-in receiver got: when, for whom, about a message created when.
struct Arrival {
    at_us: i64,
    user: String,
    created_at_us: i64,
}

/// The webhook stand-in: 200 at once, every call recorded.
async fn receiver() -> (Arc<Mutex<Vec<Arrival>>>, String) {
    let calls: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let record = calls.clone();
    let route = warp::post().and(warp::body::bytes()).map(move |body: hyper::body::Bytes| {
        let at_us = chrono::Utc::now().timestamp_micros();
        let push: Value = serde_json::from_slice(&body).unwrap_or_default();
        let created_at_us = push["created_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp_micros());
        let user = push["user_id"].as_str().unwrap_or_default().to_string();
        if let Ok(mut calls) = record.lock() {
            calls.push(Arrival { at_us, user, created_at_us });
        }
        warp::reply()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the receiver binds");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (calls, format!("http://{addr}/push"))
}

/// The offline users: parents taken across classes (the first parent of every class first, then
/// the second...), so every class thread and every 1:1 thread has some.
fn offline_users(pop: &Population, n: usize) -> HashSet<usize> {
    let classes = pop.threads.iter().filter(|t| t.1.len() > 2).count();
    let mut offline = HashSet::new();
    'fill: for p in 1..=30 {
        for c in 0..classes {
            if offline.len() >= n {
                break 'fill;
            }
            offline.insert(c * 31 + p);
        }
    }
    offline
}

/// Milliseconds at quantile `q` of `values` (microseconds).
fn quantile_ms(values: &mut [i64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[i] as f64 / 1000.0
}

/// The gateway's push runtime threads (named so by the gateway), apart from the live path's.
const PUSH_THREAD: &str = "push";

/// CPU seconds of the push threads of process `pid`.
fn push_thread_cpu(pid: u32) -> f64 {
    thread_cpu_secs(pid).iter().filter(|(name, _)| name.as_str() == PUSH_THREAD).map(|(_, s)| s).sum()
}

/// One pass: a gateway process (push on with `webhook`), the online sessions, the INSERTs, the
/// settle window; the live path's figures, the gateway's CPU (whole process, and without the push
/// threads), and the users who held a session.
async fn pass(
    args: &PushArgs,
    stack: &Stack,
    pop: &Population,
    tokens: &[(usize, String)],
    webhook: Option<&str>,
) -> Option<(Value, HashSet<usize>)> {
    let secret = "whsec_YmVuY2gtb25seS1zZWNyZXQtYmVuY2gtb25seQ==".to_string();
    let extra: Vec<(&str, String)> = match webhook {
        Some(url) => vec![("PUSH_WEBHOOK_URL", url.to_string()), ("PUSH_WEBHOOK_SECRET", secret)],
        None => Vec::new(),
    };
    let pass = start_pass(&args.gateway_bin, stack, tokens, &extra).await?;
    let online: HashSet<usize> = pass
        .sessions
        .iter()
        .filter(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed))
        .map(|s| s.user)
        .collect();
    let window = Window::open(&pass).await;
    let push_cpu0 = push_thread_cpu(pass.pid);
    // Each pass's messages are told apart by their step number (the content), so a message of
    // the first pass seen again in the second is never counted there.
    let step = if webhook.is_some() { 998 } else { 997 };
    let mut live = end_to_end(stack, pop, &pass.sessions, args.inserts_per_sec, args.secs, pass.pid, step).await;
    let rest = Duration::from_secs_f64((args.secs + args.settle_secs - window.elapsed()).max(0.0));
    tokio::time::sleep(rest).await;
    let push_cpu = push_thread_cpu(pass.pid) - push_cpu0;
    window.close(&pass, &mut live, 0).await;
    let cpu = live["gateway_cpu_secs"].as_f64().unwrap_or(0.0);
    let delivered = live["delivered"].as_u64().unwrap_or(0) as f64;
    live["push_threads_cpu_secs"] = json!(push_cpu);
    live["live_threads_cpu_secs"] = json!(cpu - push_cpu);
    live["live_threads_cpu_us_per_live_delivery"] = json!(per((cpu - push_cpu) * 1e6, delivered));
    if webhook.is_some() {
        let push_hist = histogram(pass.port, "gateway_push_latency_seconds").await;
        let q = |q| histogram_quantile_ms(&[], &push_hist, q).map_or(Value::Null, |v| json!(v));
        live["gateway_push_latency_ms"] = json!({"p50": q(0.5), "p99": q(0.99)});
    }
    live["queue"] = queue(stack).await;
    pass.stop();
    Some((live, online))
}

/// The deliveries of the queue by state, and jobs left.
async fn queue(stack: &Stack) -> Value {
    let db = stack.sql().await;
    let rows = db
        .query("select state, count(*) from public.chat_push_deliveries group by state", &[])
        .await
        .unwrap_or_default();
    let jobs: i64 = db.query_one("select count(*) from public.chat_push_jobs", &[]).await.map_or(-1, |r| r.get(0));
    let mut states = serde_json::Map::new();
    for r in rows {
        states.insert(r.get::<_, String>(0), json!(r.get::<_, i64>(1)));
    }
    json!({"deliveries_by_state": states, "jobs_left": jobs})
}

/// Pushes the receiver got: count, wrong recipients (users who held a session, or unknown),
/// rate, latency from `created_at`.
fn pushes(calls: &[Arrival], online: &HashSet<Uuid>) -> Value {
    let wrong = calls.iter().filter(|c| Uuid::parse_str(&c.user).map_or(true, |u| online.contains(&u))).count();
    let (first, last) =
        (calls.iter().map(|c| c.at_us).min().unwrap_or(0), calls.iter().map(|c| c.at_us).max().unwrap_or(0));
    let mut per_second = std::collections::BTreeMap::<i64, u64>::new();
    for c in calls {
        *per_second.entry((c.at_us - first) / 1_000_000).or_default() += 1;
    }
    let mut latency: Vec<i64> = calls.iter().map(|c| c.at_us - c.created_at_us).collect();
    let span = (last - first) as f64 / 1e6;
    json!({
        "received": calls.len(),
        "to_online_or_unknown_users": wrong,
        "first_to_last_secs": span,
        "per_sec_over_span": if span > 0.0 { calls.len() as f64 / span } else { 0.0 },
        "busiest_second": per_second.values().max().copied().unwrap_or(0),
        "per_second": per_second.values().collect::<Vec<_>>(),
        "latency_ms_from_created_at": {"p50": quantile_ms(&mut latency, 0.5), "p99": quantile_ms(&mut latency, 0.99),
                                        "max": quantile_ms(&mut latency, 1.0)},
    })
}

pub async fn run(args: PushArgs) -> i32 {
    raise_nofile();
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let offline = offline_users(&pop, args.offline);
    let all = session_tokens(&pop, stack.keys());
    let tokens: Vec<(usize, String)> = all.into_iter().filter(|(u, _)| !offline.contains(u)).collect();
    eprintln!("{} users, {} offline, {} sessions", pop.users.len(), offline.len(), tokens.len());
    let Some((off, _)) = pass(&args, &stack, &pop, &tokens, None).await else { return 2 };
    eprintln!("push off: {off}");
    let (calls, url) = receiver().await;
    let Some((on, online)) = pass(&args, &stack, &pop, &tokens, Some(&url)).await else { return 2 };
    eprintln!("push on: {on}");
    let online_ids: HashSet<Uuid> = online.iter().map(|&u| pop.users[u].0).collect();
    let pushed = calls.lock().map(|c| pushes(&c, &online_ids)).unwrap_or_default();
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if a > 0.0 => json!(b / a),
        _ => Value::Null,
    };
    let key = |k: &str| ratio(&off[k], &on[k]);
    let client = |q: &str| ratio(&off["latency_ms_from_created_at"][q], &on["latency_ms_from_created_at"][q]);
    let internal = |q: &str| ratio(&off["internal_latency_ms"][q], &on["internal_latency_ms"][q]);
    let report = json!({
        "scenario": "push to offline recipients: live path with push off vs on, and push throughput",
        "classes": args.classes, "users": pop.users.len(), "population_sessions": pop.sessions.len(),
        "offline_users": offline.len(), "online_sessions_offered": tokens.len(),
        "inserts_per_sec": args.inserts_per_sec, "secs": args.secs, "settle_secs": args.settle_secs,
        "push_off": off, "push_on": on, "pushes": pushed,
        "ratios_on_over_off": {"cpu_per_live_delivery": key("gateway_cpu_us_per_live_delivery"),
                               "live_threads_cpu_per_live_delivery": key("live_threads_cpu_us_per_live_delivery"),
                               "internal_p50": internal("p50"), "internal_p99": internal("p99"), "internal_p99_9": internal("p99_9"),
                               "client_p50": client("p50"), "client_p99": client("p99")},
        "targets": {"internal_p99_ratio_max": 1.05, "cpu_per_live_delivery_ratio_max": 1.05},
        "machine": machine(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default());
    let lost = |r: &Value| r["lost"].as_u64().unwrap_or(0) + r["duplicated"].as_u64().unwrap_or(0);
    if lost(&off) + lost(&on) > 0 || report["pushes"]["to_online_or_unknown_users"].as_u64().unwrap_or(0) > 0 {
        eprintln!("LOST OR DUPLICATED LIVE DELIVERIES, OR A PUSH TO AN ONLINE USER");
        return 1;
    }
    0
}
