//! The client library (`clients/js`, TypeScript built to `clients/js/dist` by `scripts/setup`) under
//! Node: its unit tests (`test/*.test.mjs`), and a ledger test against the real gateway and
//! stand-in. Messages are posted continuously while the test expires the client's token, drops the upstream, pauses and
//! resumes the client, cuts its socket and restarts the gateway; at the end every message of the
//! user's threads arrived exactly once, in order per thread, and nothing else. Fails (never skips)
//! when Node, the npm packages or the build are missing: run `scripts/setup` first.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use realtime_gateway::config::Config;
use realtime_gateway::server;
use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{Person, ALICE, ALICE_CARLA, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS};
use supabase_standin::Stack;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::common::node::{self, Script};
use crate::common::World;

/// The gateway implements resume (`?since=`, `cursor`, `sync_complete`): every catch-up must be a
/// resume replay, none the client's REST fallback. Set to false against a gateway without resume:
/// the ledger then holds through the REST fallback (checked before resume landed) and the test only
/// prints which path was taken.
const RESUME_IN_GATEWAY: bool = true;

/// Bound for each phase of the scenario (never an assertion about speed).
const PHASE: Duration = Duration::from_secs(40);

fn assert_built() -> PathBuf {
    let dir = node::library_dir();
    node::require(&dir, &["node_modules/ws", "node_modules/typescript", "dist/index.js"]);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_librarys_unit_tests_pass_under_node() {
    let dir = assert_built();
    let output = node::command(&dir)
        .args(["--test", "test/unit.test.mjs", "test/signals.test.mjs"])
        .output()
        .await
        .expect("node must be installed");
    assert!(
        output.status.success(),
        "node --test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The gateway configuration of `World::start` with no leeway on token expiry (so a short token
/// really expires when it says), listening on `listen`.
fn config(stack: &Stack, listen: Option<std::net::SocketAddr>) -> Config {
    let keys = stack.keys();
    let mut config = Config::for_project(&stack.url(), &keys.anon_key, &keys.service_key, Some(&keys.jwt_secret))
        .expect("valid test configuration");
    config.feed.heartbeat = Duration::from_millis(500);
    config.auth.rules.jwks_refresh_min = Duration::from_millis(100);
    config.auth.rules.leeway = Duration::ZERO;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config
}

/// What the Node driver reported, in order, and the messages among it.
struct Driver {
    events: mpsc::UnboundedReceiver<Value>,
    commands: mpsc::UnboundedSender<Value>,
    received: Vec<(String, String)>,
    log: Vec<Value>,
}

impl Driver {
    fn command(&self, cmd: Value) {
        self.commands.send(cmd).expect("driver alive");
    }

    /// Consumes events until one matches `pred` (recording messages); panics after PHASE.
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PHASE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; recent events: {:#?}", self.recent()))
                .unwrap_or_else(|| panic!("the Node driver ended while waiting for {what}: {:#?}", self.recent()));
            self.record(&event);
            if pred(&event) {
                return event;
            }
        }
    }

    async fn live(&mut self, after: &str) {
        self.until(&format!("status live after {after}"), |e| e["event"] == "status" && e["status"] == "live").await;
    }

    fn record(&mut self, event: &Value) {
        if event["event"] == "message" {
            let id = event["id"].as_str().unwrap_or_default().to_string();
            let thread = event["thread_id"].as_str().unwrap_or_default().to_string();
            self.received.push((thread, id));
        } else {
            self.log.push(event.clone());
        }
    }

    fn recent(&self) -> &[Value] {
        &self.log[self.log.len().saturating_sub(25)..]
    }

    /// Drains what is already there, then waits `quiet` for stragglers (late duplicates).
    async fn settle(&mut self, quiet: Duration) {
        while let Ok(Some(event)) = tokio::time::timeout(quiet, self.events.recv()).await {
            self.record(&event);
        }
    }
}

/// Answers the driver's `need_token` requests: the scenario starts with a 12 s token; the first
/// early refresh gets another 12 s token (pushed on the open socket with `access_token`); later
/// refreshes get that same token again, so the socket really expires (error + 4001); once the
/// 4001 was seen, one-hour tokens.
struct TokenPolicy {
    stack_keys: Arc<supabase_standin::keys::Keys>,
    who: Person,
    second: Option<String>,
    saw_4001: bool,
    requests: Vec<String>,
}

impl TokenPolicy {
    fn answer(&mut self, reason: &str) -> String {
        self.requests.push(reason.to_string());
        if self.saw_4001 || reason != "expiring" {
            return self.stack_keys.user_token(self.who.id, self.who.email, Alg::Hs256, 3600);
        }
        let keys = self.stack_keys.clone();
        let who = self.who;
        self.second.get_or_insert_with(|| keys.user_token(who.id, who.email, Alg::Hs256, 12)).clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_loses_nothing_through_expiry_upstream_loss_pause_socket_loss_and_restart() {
    let dir = assert_built();
    let mut world = World::start_with(|c| c.auth.rules.leeway = Duration::ZERO).await;
    let first_token = world.stack.keys().user_token(CARLA.id, CARLA.email, Alg::Hs256, 12);

    let Script { mut child, mut lines } = Script::spawn(
        node::command(&dir)
            .arg("e2e/ledger.mjs")
            .arg(world.base())
            .arg(&first_token)
            .arg(CLASS_3B_PARENTS.to_string())
            .stdin(Stdio::piped()),
    );

    // Commands to the driver's stdin.
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Value>();
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            if stdin.write_all(format!("{cmd}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    // Events from its stdout; token requests answered right here, in order with the events.
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Value>();
    let policy = Arc::new(Mutex::new(TokenPolicy {
        stack_keys: world.stack.keys().clone(),
        who: CARLA,
        second: None,
        saw_4001: false,
        requests: Vec::new(),
    }));
    {
        let policy = policy.clone();
        let cmd_tx = cmd_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"event":"junk","line":line}));
                if event["event"] == "disconnect" && event["code"] == 4001 {
                    policy.lock().expect("policy").saw_4001 = true;
                }
                if event["event"] == "need_token" {
                    let token = policy.lock().expect("policy").answer(event["reason"].as_str().unwrap_or_default());
                    let _ = cmd_tx.send(json!({"cmd": "token", "token": token}));
                }
                if ev_tx.send(event).is_err() {
                    break;
                }
            }
        });
    }
    let mut driver = Driver { events: ev_rx, commands: cmd_tx, received: Vec::new(), log: Vec::new() };
    driver.live("start").await;

    // Messages posted continuously, in Carla's two threads (by Alice and by Carla herself) and in
    // a thread she is not in (must never arrive). One connection: commits in posting order.
    let posted: Arc<Mutex<Vec<(Uuid, Uuid)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let db = world.stack.sql().await;
        let posted = posted.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let plan: [(Uuid, Person); 4] =
                [(CLASS_3B_PARENTS, ALICE), (ALICE_CARLA, ALICE), (CLASS_4A_PARENTS, BRUNO), (ALICE_CARLA, CARLA)];
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (thread, who) = plan[n % plan.len()];
                let row = db
                    .query_one(
                        "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
                        &[&thread, &who.id, &format!("ledger {n}")],
                    )
                    .await
                    .expect("insert message");
                posted.lock().expect("ledger").push((thread, row.get(0)));
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    // 1. The token: refreshed once on the open socket, then left to expire: the gateway closes
    //    with 4001 and the client fetches a fresh token through getToken and resumes.
    driver.until("a 4001 close (token expired)", |e| e["event"] == "disconnect" && e["code"] == 4001).await;
    driver.live("the token expired").await;

    // 2. The gateway loses Supabase Realtime; the client keeps its socket.
    world.stack.realtime().drop_all_sockets();
    driver.until("the upstream error frame", |e| e["event"] == "error" && e["kind"] == "upstream").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The app goes to the background and comes back.
    driver.command(json!({"cmd": "pause"}));
    driver.until("offline after pause", |e| e["event"] == "status" && e["status"] == "offline").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    driver.command(json!({"cmd": "resume"}));
    driver.live("resume").await;

    // 4. The network drops the socket (no close frame).
    driver.command(json!({"cmd": "kill"}));
    driver.until("the socket loss", |e| e["event"] == "disconnect").await;
    driver.live("the socket loss").await;

    // 5. The gateway process restarts on the same address while messages keep coming.
    let old = world.gateway.take().expect("gateway running");
    let addr = old.local_addr();
    old.shutdown().await;
    driver.until("the shutdown close (1001)", |e| e["event"] == "disconnect" && e["code"] == 1001).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restarted = None;
    for _ in 0..100 {
        match server::start(config(&world.stack, Some(addr))).await {
            Ok(gateway) => {
                restarted = Some(gateway);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    world.gateway = Some(restarted.expect("the gateway restarts on the same address"));
    driver.live("the gateway restart").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The ledger: stop posting, then wait until every expected message arrived.
    stop.store(true, Ordering::SeqCst);
    poster.await.expect("poster");
    let posted = posted.lock().expect("ledger").clone();
    let mine: HashSet<Uuid> = [CLASS_3B_PARENTS, ALICE_CARLA].into_iter().collect();
    let expected: Vec<(String, String)> =
        posted.iter().filter(|(t, _)| mine.contains(t)).map(|(t, id)| (t.to_string(), id.to_string())).collect();
    let expected_ids: HashSet<&String> = expected.iter().map(|(_, id)| id).collect();
    let deadline = tokio::time::Instant::now() + PHASE;
    loop {
        let got: HashSet<&String> = driver.received.iter().map(|(_, id)| id).collect();
        if expected_ids.iter().all(|id| got.contains(id)) {
            break;
        }
        let missing = expected_ids.iter().filter(|id| !got.contains(*id)).count();
        let event = tokio::time::timeout_at(deadline, driver.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{missing} of {} messages never arrived", expected.len()))
            .expect("driver alive");
        driver.record(&event);
    }
    driver.settle(Duration::from_secs(2)).await;
    driver.command(json!({"cmd": "stop"}));
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;

    // Exactly once, in order per thread, nothing from other threads.
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for (_, id) in &driver.received {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "delivered more than once: {duplicated:?}");
    let foreign: Vec<_> = driver.received.iter().filter(|(_, id)| !expected_ids.contains(id)).collect();
    assert!(foreign.is_empty(), "messages of threads Carla is not in, or never posted: {foreign:?}");
    for thread in &mine {
        let thread = thread.to_string();
        let want: Vec<&String> = expected.iter().filter(|(t, _)| *t == thread).map(|(_, id)| id).collect();
        let got: Vec<&String> = driver.received.iter().filter(|(t, _)| *t == thread).map(|(_, id)| id).collect();
        assert_eq!(got, want, "order in thread {thread}");
    }
    assert!(expected.len() > 100, "the scenario posted too little to mean anything: {}", expected.len());

    // The token path: an early refresh, then a fresh token after the 4001.
    let requests = policy.lock().expect("policy").requests.clone();
    assert_eq!(requests.first().map(String::as_str), Some("expiring"), "token requests: {requests:?}");
    assert!(requests.iter().any(|r| r == "rejected"), "no fresh token asked after the 4001: {requests:?}");

    let syncs: Vec<&Value> = driver.log.iter().filter(|e| e["event"] == "sync").collect();
    let by_rest = syncs.iter().filter(|e| e["via"] == "rest").count();
    eprintln!(
        "ledger: {} messages delivered exactly once in order; {} catch-ups ({} by resume, {} by REST fallback); token requests {:?}",
        expected.len(),
        syncs.len(),
        syncs.len() - by_rest,
        by_rest,
        requests
    );
    assert!(syncs.len() >= 4, "a catch-up after each reconnect: {syncs:?}");
    if RESUME_IN_GATEWAY {
        assert_eq!(by_rest, 0, "every catch-up should be a resume replay once the gateway has it: {syncs:?}");
    }
}
