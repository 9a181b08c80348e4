//! `gateway-bench storm`, the reconnect storm: every session connected and resumed once, then all
//! dropped at once (as a network outage or a gateway restart does) and coming back with `since` =
//! the newest cursor they hold, spread over a window (realtime-js reconnects after 1 s, 2 s, 5 s,
//! 10 s; here a uniform spread over `spread_secs`), while real INSERTs keep coming. Measured: time
//! until every session has its `sync_complete`, per-session resume time (connect to
//! `sync_complete`), messages replayed, PostgREST requests during the storm (the stand-in's
//! counter) and the gateway's resume counters; checked per session against the inserted messages
//! of its threads: lost (must be 0) and duplicated on one socket (must be 0).
//!
//! Here: the phases in order and the report; one session's life is in [`session`].

mod session;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::keys::{Alg, Keys};
use supabase_standin::Stack;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::cli::StormArgs;
use crate::host::{free_port, gateway_counter, machine, raise_nofile, start_gateway, stop_gateway};
use crate::school::{school_stack, Population};
use session::StormSession;

/// The signals every storm session shares.
struct Signals {
    drop_tx: watch::Sender<bool>,
    drop_rx: watch::Receiver<bool>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    /// Sessions done with their first resume (or failed at it).
    first_done: Arc<AtomicU64>,
    dropped_at: Arc<Mutex<Option<Instant>>>,
}

/// PostgREST requests and the gateway's resume counters at one moment.
struct Counters {
    rest: u64,
    memory: u64,
    database: u64,
}

impl Counters {
    async fn read(stack: &Stack, port: u16) -> Counters {
        let rest = stack.rest_faults().requests();
        let memory = gateway_counter(port, "gateway_resumes_from_memory_total").await;
        let database = gateway_counter(port, "gateway_resumes_from_database_total").await;
        Counters { rest, memory, database }
    }
}

pub async fn run(args: StormArgs) -> i32 {
    raise_nofile();
    let t0 = Instant::now();
    if !args.gateway_bin.exists() {
        eprintln!("build the gateway first: cargo build --release -p realtime-gateway");
        return 2;
    }
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let keys = stack.keys().clone();
    let port = free_port();
    let Some(mut gateway) = start_gateway(&args.gateway_bin, &stack, port).await else { return 2 };
    eprintln!("storm: {} users, {} threads, {} sessions", pop.users.len(), pop.threads.len(), pop.sessions.len());
    let start = chrono::Utc::now();
    let (drop_tx, drop_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = Signals {
        drop_tx,
        drop_rx,
        stop_tx,
        stop_rx,
        first_done: Arc::new(AtomicU64::new(0)),
        dropped_at: Arc::new(Mutex::new(None)),
    };
    let connect_start = Instant::now();
    let (sessions, tasks) = connect(&pop, &keys, port, &args, &signals, start, connect_start).await;
    // Real INSERTs, round robin over the threads, for the whole storm.
    let (insert_stop, insert_stop_rx) = watch::channel(false);
    let inserter = insert(&stack, &pop, args.inserts_per_sec.max(1), insert_stop_rx).await;
    while signals.first_done.load(Ordering::Relaxed) < sessions.len() as u64
        && connect_start.elapsed() < Duration::from_secs(180)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("storm: {} sessions connected and live; live traffic for 3 s", sessions.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = Counters::read(&stack, port).await;
    drop_all(&sessions, &signals, args.spread_secs).await;
    let after = Counters::read(&stack, port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = insert_stop.send(true);
    let inserted = inserter.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = signals.stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut report = summary(&pop, &sessions, &inserted, &before, &after, &args);
    report["machine"] = machine();
    report["total_secs"] = json!(t0.elapsed().as_secs_f64());
    stop_gateway(&mut gateway);
    finish(&args, &report)
}

/// Connects every session at `connect_rate` per second, each with its own reconnect delay
/// (uniform over `spread_secs`) and a task living its life.
async fn connect(
    pop: &Population,
    keys: &Keys,
    port: u16,
    args: &StormArgs,
    signals: &Signals,
    start: chrono::DateTime<chrono::Utc>,
    connect_start: Instant,
) -> (Vec<Arc<StormSession>>, Vec<JoinHandle<()>>) {
    let mut sessions = Vec::with_capacity(pop.sessions.len());
    let mut tasks = Vec::with_capacity(pop.sessions.len());
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
        let session = Arc::new(StormSession { user: u, ..Default::default() });
        sessions.push(session.clone());
        tasks.push(tokio::spawn(session::session_life(
            format!("ws://127.0.0.1:{port}/?token={token}"),
            session,
            start,
            delay,
            signals.drop_rx.clone(),
            signals.stop_rx.clone(),
            signals.first_done.clone(),
            signals.dropped_at.clone(),
        )));
    }
    (sessions, tasks)
}

/// Inserts `per_sec` real messages a second, round robin over the threads, until `stop`; the
/// task answers the inserted ids with their thread indexes.
async fn insert(
    stack: &Stack,
    pop: &Population,
    per_sec: u64,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<(u128, usize)>> {
    let db = stack.sql().await;
    let threads: Vec<(Uuid, Uuid)> = pop.threads.iter().map(|(t, _, s)| (*t, pop.users[*s].0)).collect();
    tokio::spawn(async move {
        let mut inserted: Vec<(u128, usize)> = Vec::new();
        let began = Instant::now();
        for i in 0.. {
            let due = began + Duration::from_secs_f64(i as f64 / per_sec as f64);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.changed() => break,
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
    })
}

/// Drops every session at once and waits until each has resumed or failed (or a deadline).
async fn drop_all(sessions: &[Arc<StormSession>], signals: &Signals, spread_secs: f64) {
    if let Ok(mut d) = signals.dropped_at.lock() {
        *d = Some(Instant::now());
    }
    let _ = signals.drop_tx.send(true);
    eprintln!("storm: every session dropped; they come back over {} s", spread_secs);
    let storm_started = Instant::now();
    let settled = |s: &Arc<StormSession>| {
        s.resumed.lock().map(|r| r.is_some()).unwrap_or(false) || s.failed.load(Ordering::Relaxed)
    };
    while !sessions.iter().all(settled) && storm_started.elapsed() < Duration::from_secs_f64(spread_secs + 90.0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The storm's report: each session checked against the inserted messages of its threads.
fn summary(
    pop: &Population,
    sessions: &[Arc<StormSession>],
    inserted: &[(u128, usize)],
    before: &Counters,
    after: &Counters,
    args: &StormArgs,
) -> Value {
    let members: Vec<HashSet<usize>> = pop.threads.iter().map(|(_, m, _)| m.iter().copied().collect()).collect();
    let expected: Vec<Vec<u128>> = sessions
        .iter()
        .map(|s| inserted.iter().filter(|(_, k)| members[*k].contains(&s.user)).map(|(id, _)| *id).collect())
        .collect();
    let mut report = session::summary(
        sessions,
        &expected,
        after.rest - before.rest,
        after.memory - before.memory,
        after.database - before.database,
        args.spread_secs,
    );
    report["inserted"] = json!(inserted.len());
    report["inserts_per_sec"] = json!(args.inserts_per_sec);
    report["users"] = json!(pop.users.len());
    report
}

/// Prints and writes the report; 1 when the storm lost or duplicated messages, or sessions
/// never resumed.
fn finish(args: &StormArgs, report: &Value) -> i32 {
    println!("\n== reconnect storm\n{}", serde_json::to_string_pretty(report).unwrap_or_default());
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.report, serde_json::to_string_pretty(report).unwrap_or_default()) {
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
