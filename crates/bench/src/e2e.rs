//! `gateway-bench e2e`: the end-to-end pass (real INSERTs committed in PostgreSQL to the phones'
//! sockets) on both backends, one after the other, on the same database and population: Supabase
//! (the Realtime and PostgREST stand-ins) and plain PostgreSQL (the durable replication slot and
//! the gateway's own pool). Prints INSERT-to-phone latency side by side and writes
//! `target/bench/e2e.json`, and the same figures as `end_to_end` in `target/bench/report.json`
//! (the standard scenario writes them there too, [`side_by_side`]). The real-INSERT pass itself ([`end_to_end`]) also closes the
//! standard scenario. Owns measuring real INSERTs; it must never inject synthetic events.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use supabase_standin::Stack;

use crate::clients::{self, Session};
use crate::host::{free_port, machine, proc_cpu_secs, raise_nofile, wait_http};
use crate::school::{school_stack, session_tokens, Population};

#[derive(clap::Args, Clone)]
pub struct E2eArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread).
    #[arg(long, default_value_t = 40)]
    classes: usize,
    /// Real INSERTs per second.
    #[arg(long, default_value_t = 200)]
    inserts_per_sec: u64,
    /// Seconds of INSERTs per backend.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value = "target/bench/e2e.json")]
    report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

/// Which backend a gateway process talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Supabase,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Supabase => "supabase",
            Backend::Postgres => "postgres",
        }
    }
}

/// Starts a release gateway on `port` against the stand-in stack, on `backend`.
pub fn spawn_gateway(bin: &Path, stack: &Stack, backend: Backend, port: u16) -> std::io::Result<Child> {
    spawn_gateway_with(bin, stack, backend, port, &[])
}

/// The same, with `extra` environment variables (the push scenario's webhook).
pub fn spawn_gateway_with(
    bin: &Path,
    stack: &Stack,
    backend: Backend,
    port: u16,
    extra: &[(&str, String)],
) -> std::io::Result<Child> {
    let keys = stack.keys();
    let mut command = Command::new(bin);
    match backend {
        Backend::Supabase => command
            .env("SUPABASE_URL", stack.url())
            .env("SUPABASE_ANON_KEY", &keys.anon_key)
            .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
            .env("SUPABASE_JWT_SECRET", &keys.jwt_secret),
        Backend::Postgres => {
            let db = stack.database();
            command
                .env("DATABASE_URL", format!("postgres://chat_gateway@127.0.0.1:{}/{}", db.port(), db.name()))
                .env("SLOT_NAME", "bench_e2e")
                .env("JWT_SECRET", &keys.jwt_secret)
                .env("JWKS_URL", format!("{}/auth/v1/.well-known/jwks.json", stack.url()))
        }
    };
    command
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("MAX_CONNECTIONS", "100000")
        .env("WS_PING_INTERVAL_SECS", "600")
        .env("DRAIN_SECS", "0")
        .env("SHUTDOWN_GRACE_SECS", "5")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .spawn()
}

pub async fn run(args: E2eArgs) -> i32 {
    raise_nofile();
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let tokens = session_tokens(&pop, stack.keys());
    let Some(both) = side_by_side(&stack, &pop, &tokens, args.inserts_per_sec, args.secs, &args.gateway_bin).await
    else {
        return 2;
    };
    let report = json!({"scenario": "end-to-end on both backends", "classes": args.classes, "end_to_end": both,
                        "machine": machine()});
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default());
    merge_into_report(Path::new(REPORT), &both);
    let lost: u64 = [&both["supabase"], &both["postgres"]]
        .iter()
        .map(|r| r["lost"].as_u64().unwrap_or(0) + r["duplicated"].as_u64().unwrap_or(0))
        .sum();
    if lost > 0 {
        eprintln!("LOST OR DUPLICATED DELIVERIES: {lost}");
        return 1;
    }
    0
}

/// The standard report, which carries the side-by-side figures as `end_to_end`.
pub const REPORT: &str = "target/bench/report.json";

/// How each backend's gateway learns of a commit, stated beside the figures.
const PATHS: &str = "supabase: INSERT -> WAL -> the Realtime stand-in, which polls \
    pg_logical_slot_get_binary_changes on a temporary slot (every 10 ms when idle, so up to 10 ms of \
    each figure is its polling) -> Phoenix frame -> gateway -> phone; postgres: INSERT -> WAL -> the \
    gateway's own slot streamed with START_REPLICATION (SLOT_READ=stream, no polling) -> phone";

/// The real-INSERT pass on each backend in turn, on the same stack and sessions' tokens:
/// `{"supabase": {...}, "postgres": {...}, "paths": ...}`, each with `latency_ms_from_created_at`.
/// None when a gateway could not be started.
pub async fn side_by_side(
    stack: &Stack,
    pop: &Population,
    tokens: &[(usize, String)],
    inserts_per_sec: u64,
    secs: f64,
    bin: &Path,
) -> Option<Value> {
    let mut both = json!({"paths": PATHS});
    let mut results = Vec::new();
    // Each pass tags its messages with its own step (997, 998; the standard pass has 999): the
    // sessions of a later pass also receive earlier passes' messages (catch-up with `since`),
    // which must not count as this pass's deliveries or latency.
    for (step, backend) in [(997u16, Backend::Supabase), (998, Backend::Postgres)] {
        let port = free_port();
        let mut child = match spawn_gateway(bin, stack, backend, port) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {}: {e}", bin.display());
                return None;
            }
        };
        if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
            eprintln!("{}: the gateway never became ready", backend.name());
            let _ = child.kill();
            return None;
        }
        let epoch = chrono::Utc::now().timestamp_micros();
        let (sessions, _, failures) =
            clients::connect_all(&format!("ws://127.0.0.1:{port}/"), tokens, 2500, epoch).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = child.id();
        let mut result = end_to_end(stack, pop, &sessions, inserts_per_sec, secs, pid, step).await;
        result["backend"] = json!(backend.name());
        result["sessions"] = json!(sessions.len() - failures);
        eprintln!("{}: {result}", backend.name());
        both[backend.name()] = result.clone();
        results.push(result);
        drop(sessions);
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let _ = child.wait();
    }
    print_table(&results);
    Some(both)
}

/// Sets `end_to_end` in the report at `path` (a new one when there is none).
pub fn merge_into_report(path: &Path, both: &Value) {
    let mut report = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    report["end_to_end"] = both.clone();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        Ok(()) => println!("end_to_end written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

fn print_table(results: &[Value]) {
    println!("| backend | sessions | INSERTs/s | deliveries | p50 ms | p99 ms | max ms | lost | duplicated |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let l = &r["latency_ms_from_created_at"];
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            r["sessions"],
            r["inserts_per_sec"],
            r["delivered"],
            l["p50"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
            r["lost"],
            r["duplicated"]
        );
    }
}

/// Real INSERTs at `per_sec` for `secs`, round robin over the threads, to the connected
/// sessions: deliveries, losses, duplicates and latency from `created_at`.
pub async fn end_to_end(
    stack: &Stack,
    pop: &Population,
    sessions: &[Arc<Session>],
    per_sec: u64,
    secs: f64,
    pid: u32,
    step_no: u16,
) -> Value {
    let db = stack.sql().await;
    let count = (per_sec as f64 * secs) as usize;
    let cpu0 = proc_cpu_secs(pid);
    let started = Instant::now();
    let mut expected = 0u64;
    let live: Vec<&Arc<Session>> =
        sessions.iter().filter(|s| s.connected.load(Ordering::Relaxed) && !s.closed.load(Ordering::Relaxed)).collect();
    let mut per_user: HashMap<usize, u64> = HashMap::new();
    for s in &live {
        *per_user.entry(s.user).or_default() += 1;
    }
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / per_sec as f64);
        tokio::time::sleep_until(due.into()).await;
        let (tid, members, sender) = &pop.threads[i % pop.threads.len()];
        expected += members.iter().map(|m| per_user.get(m).copied().unwrap_or(0)).sum::<u64>();
        let content = format!("s{step_no}");
        if let Err(e) = db
            .execute(
                "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3)",
                &[tid, &pop.users[*sender].0, &content],
            )
            .await
        {
            eprintln!("insert failed: {e}");
        }
    }
    let got = || -> u64 {
        live.iter()
            .map(|s| s.records.lock().map(|r| r.iter().filter(|x| x.step == step_no).count() as u64).unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while got() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = (proc_cpu_secs(pid) - cpu0) / started.elapsed().as_secs_f64();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    let mut dup = 0u64;
    let mut unique = 0u64;
    for s in &live {
        let mut seen = HashSet::new();
        if let Ok(r) = s.records.lock() {
            for x in r.iter().filter(|x| x.step == step_no) {
                if seen.insert(x.message) {
                    unique += 1;
                    let _ = hist.record(x.latency_us.max(1));
                } else {
                    dup += 1;
                }
            }
        }
    }
    let q = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    json!({"inserts": count, "inserts_per_sec": per_sec, "expected": expected, "delivered": unique, "lost": expected.saturating_sub(unique), "duplicated": dup,
           "latency_ms_from_created_at": {"p50": q(0.5), "p99": q(0.99), "max": hist.max() as f64 / 1000.0},
           "note": "latency from the row's created_at (its transaction's start) to the phone: includes the commit",
           "server_cpu_cores": cpu})
}
