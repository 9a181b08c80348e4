//! `gateway-bench`: the load generator (and, as a subcommand, the ceiling server).
//!
//! One invocation starts the local Supabase stand-in (its own throwaway PostgreSQL), creates a
//! school-shaped population, starts a release build of the gateway as a separate process, opens N
//! WebSocket sessions with real signed tokens (HS256 and ES256 alternately), and steps the offered
//! load in deliveries/s using the Realtime stand-in's synthetic events (so PostgreSQL does not cap
//! the rate). Every delivery is checked: lost, duplicated and misrouted counts (any non-zero is a
//! failure). Then the same sockets and the same steps run against the ceiling server, a minimal
//! fan-out server, and an end-to-end pass uses real INSERTs. It prints a table and writes
//! `target/bench/report.json`. Numbers are never asserted in tests; they live here.

mod ceiling;
mod clients;
mod e2e;
mod storm;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::realtime::InjectSpec;
use supabase_standin::{Stack, StackOptions};
use uuid::Uuid;

use clients::Session;

#[derive(Parser)]
#[command(name = "gateway-bench", about = "Load generator and ceiling server for the realtime gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (default: the standard scenario).
    Run(RunArgs),
    /// The reconnect storm: all sessions dropped at once and resuming with `since` over a window
    /// while INSERTs continue.
    Storm(StormArgs),
    /// The end-to-end pass (real INSERTs) on both backends, latency side by side.
    E2e(e2e::E2eArgs),
    /// Serve as the ceiling server (used by `run` as a subprocess).
    Ceiling {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        realtime_url: String,
        #[arg(long)]
        apikey: String,
        #[arg(long)]
        service_key: String,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread).
    #[arg(long, default_value_t = 280)]
    classes: usize,
    /// Offered load steps, deliveries per second.
    #[arg(long, value_delimiter = ',', default_value = "15500,31000,62000,93000,124000,200000,300000")]
    rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 4.0)]
    step_secs: f64,
    /// New sessions per second while connecting.
    #[arg(long, default_value_t = 2500)]
    connect_rate: u32,
    /// Skip the ceiling server.
    #[arg(long)]
    no_ceiling: bool,
    /// End-to-end pass: real INSERTs per second (0 = skip).
    #[arg(long, default_value_t = 200)]
    e2e_inserts_per_sec: u64,
    /// Worker threads of the load generator's runtime (clients and the Realtime stand-in). With
    /// one, the generator itself becomes the bottleneck on this 2-core machine (measured).
    #[arg(long, default_value_t = 2)]
    gen_threads: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/report.json")]
    report: PathBuf,
    /// Gateway binary (built with `cargo build --release -p realtime-gateway` if missing).
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

#[derive(clap::Args, Clone)]
struct StormArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread): 280 gives 10,360 sessions.
    #[arg(long, default_value_t = 280)]
    classes: usize,
    /// Reconnects spread uniformly over this many seconds after the drop.
    #[arg(long, default_value_t = 10.0)]
    spread_secs: f64,
    /// Real INSERTs per second during the whole storm.
    #[arg(long, default_value_t = 100)]
    inserts_per_sec: u64,
    /// New sessions per second while connecting before the storm.
    #[arg(long, default_value_t = 2500)]
    connect_rate: u32,
    #[arg(long, default_value_t = 2)]
    gen_threads: usize,
    #[arg(long, default_value = "target/bench/storm.json")]
    report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

struct Population {
    users: Vec<(Uuid, String)>,
    /// thread id, participant user indexes, sender user index
    threads: Vec<(Uuid, Vec<usize>, usize)>,
    /// user index per session
    sessions: Vec<usize>,
}

fn population(classes: usize) -> Population {
    let mut users = Vec::new();
    let mut threads = Vec::new();
    let mut sessions = Vec::new();
    for c in 0..classes {
        let teacher = users.len();
        users.push((Uuid::new_v4(), format!("teacher{c}@bench.test")));
        sessions.extend([teacher, teacher]); // phone + laptop
        let mut members = vec![teacher];
        for p in 0..30 {
            let parent = users.len();
            users.push((Uuid::new_v4(), format!("parent{c}-{p}@bench.test")));
            let devices = 1 + usize::from(p % 10 == 0) + usize::from(p % 20 == 0);
            sessions.extend(std::iter::repeat_n(parent, devices));
            members.push(parent);
        }
        threads.push((Uuid::new_v4(), members.clone(), teacher));
        threads.push((Uuid::new_v4(), vec![teacher, members[1]], teacher));
    }
    Population { users, threads, sessions }
}

async fn load_population(stack: &Stack, pop: &Population) {
    let db = stack.sql().await;
    let ids: Vec<Uuid> = pop.users.iter().map(|u| u.0).collect();
    let emails: Vec<String> = pop.users.iter().map(|u| u.1.clone()).collect();
    let names: Vec<String> = pop.users.iter().map(|u| u.1.split('@').next().unwrap_or("x").to_string()).collect();
    let roles: Vec<String> =
        pop.users.iter().map(|u| if u.1.starts_with("teacher") { "teacher" } else { "parent" }.to_string()).collect();
    db.execute("insert into auth.users (id, email) select * from unnest($1::uuid[], $2::text[])", &[&ids, &emails])
        .await
        .expect("users");
    db.execute(
        "insert into public.profiles (id, full_name, role) select * from unnest($1::uuid[], $2::text[], $3::text[])",
        &[&ids, &names, &roles],
    )
    .await
    .expect("profiles");
    let tids: Vec<Uuid> = pop.threads.iter().map(|t| t.0).collect();
    db.execute("insert into public.threads (id, title) select id, 'bench' from unnest($1::uuid[]) id", &[&tids])
        .await
        .expect("threads");
    let (mut pt, mut pu) = (Vec::new(), Vec::new());
    for (tid, members, _) in &pop.threads {
        for m in members {
            pt.push(*tid);
            pu.push(pop.users[*m].0);
        }
    }
    db.execute(
        "insert into public.thread_participants (thread_id, user_id) select * from unnest($1::uuid[], $2::uuid[])",
        &[&pt, &pu],
    )
    .await
    .expect("participants");
}

fn proc_rss_kib(pid: u32) -> u64 {
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
fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A stand-in stack on a cluster of its own, loaded with the school-shaped population of
/// `classes` classes (None, reported, when the stack cannot start).
async fn school_stack(classes: usize) -> Option<(Stack, Population)> {
    let stack = match Stack::start_with(StackOptions { own_cluster: true, ..Default::default() }).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stand-in stack: {e}");
            return None;
        }
    };
    let pop = population(classes);
    load_population(&stack, &pop).await;
    Some((stack, pop))
}

/// A four-hour token per session, HS256 and ES256 alternately.
fn session_tokens(pop: &Population, keys: &supabase_standin::keys::Keys) -> Vec<(usize, String)> {
    pop.sessions
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let alg = if i % 2 == 0 { Alg::Hs256 } else { Alg::Es256 };
            (u, keys.user_token(pop.users[u].0, &pop.users[u].1, alg, 4 * 3600))
        })
        .collect()
}

fn free_port() -> u16 {
    (20000..30000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 32768")
}

async fn wait_http(url: &str) -> bool {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

struct StepResult {
    offered: u64,
    events: u64,
    expected: u64,
    unique: u64,
    duplicated: u64,
    misrouted: u64,
    lost: u64,
    achieved: f64,
    hist: Histogram<u64>,
    cpu: f64,
    loadgen_cpu: f64,
    dropped_sessions: usize,
}

impl StepResult {
    fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.misrouted == 0 && self.dropped_sessions == 0
    }
    fn q(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn json(&self) -> Value {
        json!({
            "offered_deliveries_per_sec": self.offered, "events": self.events, "expected": self.expected,
            "delivered": self.unique, "lost": self.lost, "duplicated": self.duplicated, "misrouted": self.misrouted,
            "dropped_sessions": self.dropped_sessions, "deliveries_per_sec": self.achieved.round(),
            "latency_ms": {"p50": self.q(0.5), "p90": self.q(0.9), "p99": self.q(0.99), "p99_9": self.q(0.999), "max": self.hist.max() as f64 / 1000.0},
            "server_cpu_cores": (self.cpu * 100.0).round() / 100.0,
            "loadgen_and_standin_cpu_cores": (self.loadgen_cpu * 100.0).round() / 100.0,
        })
    }
}

/// Offers one step of load and checks every delivery. `everyone` = the ceiling (every session
/// gets every event).
#[allow(clippy::too_many_arguments)]
async fn step(
    stack: &Stack,
    pop: &Population,
    sessions: &[Arc<Session>],
    step_no: u16,
    offered: u64,
    secs: f64,
    everyone: bool,
    server_pid: u32,
) -> StepResult {
    let live: Vec<&Arc<Session>> =
        sessions.iter().filter(|s| s.connected.load(Ordering::Relaxed) && !s.closed.load(Ordering::Relaxed)).collect();
    let mut sessions_of_user: HashMap<usize, usize> = HashMap::new();
    for s in &live {
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
    // Drain: wait until deliveries stop growing.
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
    let cpu = (proc_cpu_secs(server_pid) - cpu0) / started.elapsed().as_secs_f64();
    let loadgen_cpu = (proc_cpu_secs(std::process::id()) - own0) / started.elapsed().as_secs_f64();
    let thread_index: HashMap<u128, usize> = pop.threads.iter().enumerate().map(|(i, t)| (t.0.as_u128(), i)).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    let (mut unique, mut duplicated, mut misrouted) = (0u64, 0u64, 0u64);
    let (mut first, mut last_rx) = (u64::MAX, 0u64);
    for s in &live {
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
    let dropped_sessions = live.iter().filter(|s| s.closed.load(Ordering::Relaxed)).count();
    StepResult {
        offered,
        events,
        expected,
        unique,
        duplicated,
        misrouted,
        lost: expected.saturating_sub(unique),
        achieved: unique as f64 / span,
        hist,
        cpu,
        loadgen_cpu,
        dropped_sessions,
    }
}

fn print_step(label: &str, r: &StepResult) {
    println!(
        "{label:<9} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>6.2} {:>6} {:>5} {:>5} {:>5} {}",
        r.offered,
        r.achieved,
        r.q(0.5),
        r.q(0.9),
        r.q(0.99),
        r.q(0.999),
        r.hist.max() as f64 / 1000.0,
        r.cpu,
        r.loadgen_cpu,
        r.lost,
        r.duplicated,
        r.misrouted,
        r.dropped_sessions,
        if r.ok() { "" } else { "  <<< FAILURE: lost/duplicated/misrouted/dropped" }
    );
}

fn header() {
    println!(
        "{:<9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5}",
        "server",
        "offered/s",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "cpu",
        "gencpu",
        "lost",
        "dup",
        "misr",
        "drop"
    );
}

fn machine() -> Value {
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

fn percentile(times: &mut [Duration], q: f64) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    times.sort();
    let i = ((times.len() as f64 * q) as usize).min(times.len() - 1);
    times[i].as_secs_f64() * 1000.0
}

fn raise_nofile() {
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

async fn run(args: RunArgs) -> i32 {
    raise_nofile();
    let t0 = Instant::now();
    if !args.gateway_bin.exists() {
        eprintln!("building the gateway (release)...");
        let ok = Command::new("cargo")
            .args(["build", "--release", "-p", "realtime-gateway"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("cannot build the gateway");
            return 2;
        }
    }
    eprintln!("starting the stand-in stack...");
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let keys = stack.keys().clone();
    let tokens = session_tokens(&pop, &keys);
    eprintln!("population: {} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), pop.sessions.len());

    let port = free_port();
    let mut gateway: Child = match e2e::spawn_gateway(&args.gateway_bin, &stack, e2e::Backend::Supabase, port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", args.gateway_bin.display());
            return 2;
        }
    };
    let pid = gateway.id();
    if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
        eprintln!("gateway never became ready");
        let _ = gateway.kill();
        return 2;
    }
    let rss_before = proc_rss_kib(pid);
    let epoch = chrono::Utc::now().timestamp_micros();
    let connect_started = Instant::now();
    let (sessions, mut connect_times, failures) =
        clients::connect_all(&format!("ws://127.0.0.1:{port}/"), &tokens, args.connect_rate, epoch).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = proc_rss_kib(pid);
    let per_session_kib = (rss_idle.saturating_sub(rss_before)) as f64 / sessions.len().max(1) as f64;
    println!("\n== gateway: {} sessions ({} failed), RSS {} KiB -> {} KiB = {:.2} KiB per idle session; connect p50 {:.2} ms p99 {:.2} ms ({:.1} s at {}/s)",
        sessions.len(), failures, rss_before, rss_idle, per_session_kib, percentile(&mut connect_times, 0.5), percentile(&mut connect_times, 0.99), connect_secs, args.connect_rate);

    // Warm the membership and profile caches: one message per thread.
    eprintln!("warming caches and buffers (not measured)...");
    let _ = step(&stack, &pop, &sessions, 0, pop.sessions.len() as u64, 1.0, false, pid).await;
    let _ = step(&stack, &pop, &sessions, 50, 15_500, 2.0, false, pid).await;

    header();
    let mut gateway_steps = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate() {
        let r = step(&stack, &pop, &sessions, (i + 1) as u16, rate, args.step_secs, false, pid).await;
        print_step("gateway", &r);
        let saturated = !r.ok() || r.achieved < 0.9 * rate as f64;
        gateway_steps.push(r);
        if saturated {
            break;
        }
    }
    let mut e2e = Value::Null;
    if args.e2e_inserts_per_sec > 0 {
        e2e = end_to_end(&stack, &pop, &sessions, args.e2e_inserts_per_sec, args.step_secs, pid).await;
        println!("end-to-end (real INSERTs): {e2e}");
    }
    let rss_loaded = proc_rss_kib(pid);
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = gateway.wait();
    drop(sessions);

    let mut ceiling_steps = Vec::new();
    let mut ceiling_json = Value::Null;
    if !args.no_ceiling {
        let cport = free_port();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gateway-bench"));
        let mut ceiling = Command::new(exe)
            .args([
                "ceiling",
                "--port",
                &cport.to_string(),
                "--realtime-url",
                &stack.realtime_url(),
                "--apikey",
                &keys.anon_key,
                "--service-key",
                &keys.service_key,
            ])
            .spawn()
            .expect("ceiling server starts");
        let cpid = ceiling.id();
        while stack.realtime().channel_count() < 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let crss0 = proc_rss_kib(cpid);
        let (csessions, _, cfail) =
            clients::connect_all(&format!("ws://127.0.0.1:{cport}/"), &tokens, args.connect_rate, epoch).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let crss = proc_rss_kib(cpid);
        println!(
            "\n== ceiling: {} sessions ({} failed), {:.2} KiB per idle session",
            csessions.len(),
            cfail,
            (crss.saturating_sub(crss0)) as f64 / csessions.len().max(1) as f64
        );
        let _ = step(&stack, &pop, &csessions, 150, 15_500, 2.0, true, cpid).await;
        header();
        for (i, &rate) in args.rates.iter().enumerate() {
            let r = step(&stack, &pop, &csessions, (100 + i) as u16, rate, args.step_secs, true, cpid).await;
            print_step("ceiling", &r);
            let saturated = !r.ok() || r.achieved < 0.9 * rate as f64;
            ceiling_steps.push(r);
            if saturated {
                break;
            }
        }
        ceiling_json = json!({"rss_per_idle_session_kib": (crss.saturating_sub(crss0)) as f64 / csessions.len().max(1) as f64,
                              "steps": ceiling_steps.iter().map(StepResult::json).collect::<Vec<_>>()});
        let _ = ceiling.kill();
        let _ = ceiling.wait();
    }

    let sustained = |steps: &[StepResult]| {
        steps.iter().filter(|s| s.ok() && s.q(0.99) <= 50.0).map(|s| s.achieved).fold(0.0, f64::max)
    };
    let throughput = |steps: &[StepResult]| steps.iter().filter(|s| s.ok()).map(|s| s.achieved).fold(0.0, f64::max);
    let g_max = sustained(&gateway_steps);
    let (g_tp, c_tp) = (throughput(&gateway_steps), throughput(&ceiling_steps));
    let at_62k = gateway_steps.iter().find(|s| s.offered == 62_000).map(StepResult::json);
    let ratios: Vec<Value> = gateway_steps
        .iter()
        .zip(ceiling_steps.iter())
        .map(|(g, c)| json!({"offered": g.offered, "deliveries_ratio": g.achieved / c.achieved.max(1.0), "p99_ratio": g.q(0.99) / c.q(0.99).max(0.001)}))
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
        "targets": {"rss_per_idle_session_kib_max": 5.0, "p99_ms_at_62000_max": 5.0, "max_sustained_min": 200_000, "ceiling_ratio_min": 0.7},
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

async fn end_to_end(
    stack: &Stack,
    pop: &Population,
    sessions: &[Arc<Session>],
    per_sec: u64,
    secs: f64,
    pid: u32,
) -> Value {
    let db = stack.sql().await;
    let step_no = 999u16;
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
           "note": "latency here includes the stand-in's WAL polling interval (up to 10 ms) and PostgreSQL commit",
           "server_cpu_cores": cpu})
}

/// The gateway's value of one `/metrics` counter (0 when absent).
async fn gateway_counter(port: u16, name: &str) -> u64 {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn run_storm(args: StormArgs) -> i32 {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    use tokio::sync::watch;
    raise_nofile();
    let t0 = Instant::now();
    if !args.gateway_bin.exists() {
        eprintln!("build the gateway first: cargo build --release -p realtime-gateway");
        return 2;
    }
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let keys = stack.keys().clone();
    let port = free_port();
    let mut gateway: Child = match e2e::spawn_gateway(&args.gateway_bin, &stack, e2e::Backend::Supabase, port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", args.gateway_bin.display());
            return 2;
        }
    };
    if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
        eprintln!("gateway never became ready");
        let _ = gateway.kill();
        return 2;
    }
    eprintln!("storm: {} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), pop.sessions.len());
    let start = chrono::Utc::now();
    let (drop_tx, drop_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let first_done = Arc::new(AtomicU64::new(0));
    let dropped_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut sessions = Vec::with_capacity(pop.sessions.len());
    let mut tasks = Vec::with_capacity(pop.sessions.len());
    let connect_start = Instant::now();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for (i, &u) in pop.sessions.iter().enumerate() {
        let due = connect_start + Duration::from_secs_f64(i as f64 / f64::from(args.connect_rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_secs_f64(args.spread_secs * (seed % 1_000_000) as f64 / 1_000_000.0);
        let token = keys.user_token(
            pop.users[u].0,
            &pop.users[u].1,
            if i % 2 == 0 { Alg::Hs256 } else { Alg::Es256 },
            4 * 3600,
        );
        let session = Arc::new(storm::StormSession { user: u, ..Default::default() });
        sessions.push(session.clone());
        tasks.push(tokio::spawn(storm::session_life(
            format!("ws://127.0.0.1:{port}/?token={token}"),
            session,
            start,
            delay,
            drop_rx.clone(),
            stop_rx.clone(),
            first_done.clone(),
            dropped_at.clone(),
        )));
    }
    // Real INSERTs, round robin over the threads, for the whole storm.
    let (insert_stop, mut insert_stop_rx) = watch::channel(false);
    let db = stack.sql().await;
    let threads: Vec<(Uuid, Uuid)> = pop.threads.iter().map(|(t, _, s)| (*t, pop.users[*s].0)).collect();
    let per_sec = args.inserts_per_sec.max(1);
    let inserter = tokio::spawn(async move {
        let mut inserted: Vec<(u128, usize)> = Vec::new();
        let began = Instant::now();
        for i in 0.. {
            let due = began + Duration::from_secs_f64(i as f64 / per_sec as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = insert_stop_rx.changed() => break,
            }
            let k = i % threads.len();
            let (thread, sender) = threads[k];
            match db
                .query_one(
                    "insert into public.messages (thread_id, sender_id, content) values ($1, $2, 'storm') returning id",
                    &[&thread, &sender],
                )
                .await
            {
                Ok(row) => inserted.push((row.get::<_, Uuid>(0).as_u128(), k)),
                Err(e) => eprintln!("insert failed: {e}"),
            }
        }
        inserted
    });
    while first_done.load(Ordering::Relaxed) < sessions.len() as u64
        && connect_start.elapsed() < Duration::from_secs(180)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("storm: {} sessions connected and live; live traffic for 3 s", sessions.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rest0 = stack.rest_faults().requests();
    let mem0 = gateway_counter(port, "gateway_resumes_from_memory_total").await;
    let db0 = gateway_counter(port, "gateway_resumes_from_database_total").await;
    if let Ok(mut d) = dropped_at.lock() {
        *d = Some(Instant::now());
    }
    let _ = drop_tx.send(true);
    eprintln!("storm: every session dropped; they come back over {} s", args.spread_secs);
    let storm_started = Instant::now();
    let settled = |s: &Arc<storm::StormSession>| {
        s.resumed.lock().map(|r| r.is_some()).unwrap_or(false) || s.failed.load(Ordering::Relaxed)
    };
    while !sessions.iter().all(settled) && storm_started.elapsed() < Duration::from_secs_f64(args.spread_secs + 90.0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest1 = stack.rest_faults().requests();
    let mem1 = gateway_counter(port, "gateway_resumes_from_memory_total").await;
    let db1 = gateway_counter(port, "gateway_resumes_from_database_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = insert_stop.send(true);
    let inserted = inserter.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let members: Vec<HashSet<usize>> = pop.threads.iter().map(|(_, m, _)| m.iter().copied().collect()).collect();
    let expected: Vec<Vec<u128>> = sessions
        .iter()
        .map(|s| inserted.iter().filter(|(_, k)| members[*k].contains(&s.user)).map(|(id, _)| *id).collect())
        .collect();
    let mut report = storm::summary(&sessions, &expected, rest1 - rest0, mem1 - mem0, db1 - db0, args.spread_secs);
    report["inserted"] = json!(inserted.len());
    report["inserts_per_sec"] = json!(args.inserts_per_sec);
    report["users"] = json!(pop.users.len());
    report["machine"] = machine();
    report["total_secs"] = json!(t0.elapsed().as_secs_f64());
    let _ = Command::new("kill").arg("-TERM").arg(gateway.id().to_string()).status();
    let _ = gateway.wait();
    println!("\n== reconnect storm\n{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        eprintln!("cannot write {}: {e}", args.report.display());
    }
    let failed = report["lost"] != json!(0)
        || report["duplicated_on_one_socket"] != json!(0)
        || report["not_resumed"] != json!(0);
    if failed {
        println!("\n!!!!! FAILURE: the storm lost or duplicated messages, or sessions never resumed !!!!!");
        return 1;
    }
    0
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Some(Cmd::Run(a)) => a.gen_threads.max(1),
        Some(Cmd::Storm(a)) => a.gen_threads.max(1),
        Some(Cmd::E2e(_)) => 2,
        Some(Cmd::Ceiling { .. }) => 2,
        None => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match cli.command {
        Some(Cmd::Ceiling { port, realtime_url, apikey, service_key }) => {
            match runtime.block_on(ceiling::run(port, realtime_url, apikey, service_key)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ceiling: {e}");
                    2
                }
            }
        }
        Some(Cmd::Run(args)) => runtime.block_on(run(args)),
        Some(Cmd::Storm(args)) => runtime.block_on(run_storm(args)),
        Some(Cmd::E2e(args)) => runtime.block_on(e2e::run(args)),
        None => match Cli::parse_from(["gateway-bench", "run"]).command {
            Some(Cmd::Run(args)) => runtime.block_on(run(args)),
            _ => 2,
        },
    };
    std::process::exit(code);
}
