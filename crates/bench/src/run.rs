//! `gateway-bench run`, the standard scenario: the school population against the release
//! gateway, its idle memory per session, offered load stepped until it saturates, the real-INSERT
//! pass, then the same sockets and steps against the ceiling server. Owns the order of the
//! phases; the figures are counted in [`crate::step`] and reported by [`crate::report`].

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::keys::Keys;
use supabase_standin::Stack;

use crate::cli::RunArgs;
use crate::clients::{self, Session};
use crate::e2e::end_to_end;
use crate::host::{free_port, proc_rss_kib, raise_nofile, start_gateway, stop_gateway};
use crate::report::{self, header, percentile, print_step, Figures, Idle};
use crate::school::{school_stack, session_tokens, Population};
use crate::step::{step, StepResult};

pub async fn run(args: RunArgs) -> i32 {
    raise_nofile();
    let t0 = Instant::now();
    if !args.gateway_bin.exists() && !build_gateway() {
        return 2;
    }
    eprintln!("starting the stand-in stack...");
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let keys = stack.keys().clone();
    let tokens = session_tokens(&pop, &keys);
    eprintln!("population: {} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), pop.sessions.len());

    let port = free_port();
    let Some(mut gateway) = start_gateway(&args.gateway_bin, &stack, port).await else { return 2 };
    let pid = gateway.id();
    let epoch = chrono::Utc::now().timestamp_micros();
    let (sessions, idle) = connect_idle(port, &tokens, args.connect_rate, epoch, pid).await;

    // Warm the membership and profile caches: one message per thread.
    eprintln!("warming caches and buffers (not measured)...");
    let _ = step(&stack, &pop, &sessions, 0, pop.sessions.len() as u64, 1.0, false, pid, Some(port)).await;
    let _ = step(&stack, &pop, &sessions, 50, 15_500, 2.0, false, pid, Some(port)).await;

    let gateway_steps = until_saturated(&stack, &pop, &sessions, &args, Server::Gateway, pid, Some(port)).await;
    let mut e2e = Value::Null;
    if args.e2e_inserts_per_sec > 0 {
        e2e = end_to_end(&stack, &pop, &sessions, args.e2e_inserts_per_sec, args.step_secs, pid, 999).await;
        println!("end-to-end (real INSERTs): {e2e}");
    }
    let rss_loaded = proc_rss_kib(pid);
    stop_gateway(&mut gateway);
    drop(sessions);
    // Both backends side by side on fresh gateways (the report's top-level `end_to_end`).
    let side_by_side = if args.e2e_inserts_per_sec > 0 {
        let (rate, secs) = (args.e2e_inserts_per_sec, args.step_secs);
        crate::e2e::side_by_side(&stack, &pop, &tokens, rate, secs, &args.gateway_bin).await
    } else {
        None
    };

    let (ceiling_steps, ceiling_json) = if args.no_ceiling {
        (Vec::new(), Value::Null)
    } else {
        ceiling(&stack, &pop, &keys, &tokens, &args, epoch).await
    };
    let figures = Figures { idle, rss_loaded, gateway_steps, e2e, ceiling_steps, ceiling_json };
    let code = report::finish(&args, &pop, figures, t0);
    if let Some(both) = side_by_side {
        crate::e2e::merge_into_report(&args.report, &both);
    }
    code
}

/// Builds the release gateway; false (reported) when the build fails.
fn build_gateway() -> bool {
    eprintln!("building the gateway (release)...");
    let ok = Command::new("cargo")
        .args(["build", "--release", "-p", "realtime-gateway"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("cannot build the gateway");
    }
    ok
}

/// Connects every session to the gateway on `port` and measures its memory once they are idle.
async fn connect_idle(
    port: u16,
    tokens: &[(usize, String)],
    connect_rate: u32,
    epoch: i64,
    pid: u32,
) -> (Vec<Arc<Session>>, Idle) {
    let rss_before = proc_rss_kib(pid);
    let connect_started = Instant::now();
    let (sessions, mut connect_times, failures) =
        clients::connect_all(&format!("ws://127.0.0.1:{port}/"), tokens, connect_rate, epoch).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = proc_rss_kib(pid);
    let per_session_kib = (rss_idle.saturating_sub(rss_before)) as f64 / sessions.len().max(1) as f64;
    println!("\n== gateway: {} sessions ({} failed), RSS {} KiB -> {} KiB = {:.2} KiB per idle session; connect p50 {:.2} ms p99 {:.2} ms ({:.1} s at {}/s)",
        sessions.len(), failures, rss_before, rss_idle, per_session_kib, percentile(&mut connect_times, 0.5), percentile(&mut connect_times, 0.99), connect_secs, connect_rate);
    (sessions, Idle { rss_before, rss_idle, per_session_kib, connect_times, failures })
}

/// The server a series of steps runs against.
#[derive(Clone, Copy)]
enum Server {
    Gateway,
    /// Every session gets every event.
    Ceiling,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Gateway => "gateway",
            Server::Ceiling => "ceiling",
        }
    }

    /// The number of the first measured step (each step's messages carry it).
    fn first_step(self) -> usize {
        match self {
            Server::Gateway => 1,
            Server::Ceiling => 100,
        }
    }
}

/// The offered-load steps, printed as they finish, up to the first that fails or achieves less
/// than 90% of what was offered.
async fn until_saturated(
    stack: &Stack,
    pop: &Population,
    sessions: &[Arc<Session>],
    args: &RunArgs,
    server: Server,
    pid: u32,
    metrics_port: Option<u16>,
) -> Vec<StepResult> {
    let everyone = matches!(server, Server::Ceiling);
    header();
    let mut steps = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate() {
        let number = (server.first_step() + i) as u16;
        let r = step(stack, pop, sessions, number, rate, args.step_secs, everyone, pid, metrics_port).await;
        print_step(server.label(), &r);
        let saturated = !r.ok() || r.achieved < 0.9 * rate as f64;
        steps.push(r);
        if saturated {
            break;
        }
    }
    steps
}

/// The same sessions and steps against the ceiling server, started as a subprocess: its steps
/// and its part of the report.
async fn ceiling(
    stack: &Stack,
    pop: &Population,
    keys: &Keys,
    tokens: &[(usize, String)],
    args: &RunArgs,
    epoch: i64,
) -> (Vec<StepResult>, Value) {
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
        clients::connect_all(&format!("ws://127.0.0.1:{cport}/"), tokens, args.connect_rate, epoch).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let crss = proc_rss_kib(cpid);
    println!(
        "\n== ceiling: {} sessions ({} failed), {:.2} KiB per idle session",
        csessions.len(),
        cfail,
        (crss.saturating_sub(crss0)) as f64 / csessions.len().max(1) as f64
    );
    let _ = step(stack, pop, &csessions, 150, 15_500, 2.0, true, cpid, None).await;
    let ceiling_steps = until_saturated(stack, pop, &csessions, args, Server::Ceiling, cpid, None).await;
    let ceiling_json = json!({"rss_per_idle_session_kib": (crss.saturating_sub(crss0)) as f64 / csessions.len().max(1) as f64,
                              "steps": ceiling_steps.iter().map(StepResult::json).collect::<Vec<_>>()});
    let _ = ceiling.kill();
    let _ = ceiling.wait();
    (ceiling_steps, ceiling_json)
}
