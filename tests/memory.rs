//! Memory bounded in bytes, whatever participants post, and no per-session state for threads a
//! user may not read: a flood of messages that escape to large JSON stays within the configured
//! budgets (measured on a gateway process of its own, through its RSS gauge), and
//! `unsubscribe_thread` is checked as `subscribe_thread` is.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use supabase_standin::realtime::InjectSpec;
use supabase_standin::rest::faults::Fault;
use supabase_standin::seed::{ALICE, ALICE_CARLA, BRUNO_FARID, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID};
use supabase_standin::Stack;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::common::{message_id, World, ARRIVES};

const BINARY: &str = env!("CARGO_BIN_EXE_realtime-gateway");
const MIB: u64 = 1 << 20;

/// Carla may unsubscribe from her own threads. A thread she cannot read (another class's, a 1:1
/// of others, a made-up id) gets the same "Access denied" error as `subscribe_thread` and leaves
/// nothing behind: with room for two muted threads per connection, her own two still fit after
/// the refused three. A thread the session subscribed to is unsubscribed without a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_thread_is_checked_like_subscribe() {
    let world = World::start_with(|c| c.limits.max_thread_subscriptions = 2).await;
    let mut phone = world.phone(&CARLA).await;
    for thread in [CLASS_4A_PARENTS, BRUNO_FARID, Uuid::new_v4()] {
        phone.send_json(json!({"type": "unsubscribe_thread", "thread_id": thread})).await;
        let frame = phone.expect_any().await;
        assert_eq!(frame, json!({"type": "error", "message": format!("Access denied to thread {thread}")}));
    }
    for thread in [CLASS_3B_PARENTS, ALICE_CARLA] {
        phone.send_json(json!({"type": "unsubscribe_thread", "thread_id": thread})).await;
        assert_eq!(phone.expect_any().await, json!({"type": "thread_unsubscribed", "thread_id": thread}));
    }
    assert_eq!(world.metric("gateway_unsubscribe_refused_total{reason=\"access_denied\"}").await, 3);

    // Muted for real: a message of 3B does not come; the 1:1, subscribed again, does.
    phone.send_json(json!({"type": "subscribe_thread", "thread_id": ALICE_CARLA})).await;
    assert_eq!(phone.expect_any().await, json!({"type": "thread_subscribed", "thread_id": ALICE_CARLA}));
    let muted = world.post(&ALICE, CLASS_3B_PARENTS, "while Carla muted 3B").await;
    let direct = world.post(&ALICE, ALICE_CARLA, "to Carla").await;
    let (_, before) = phone.receive_until(direct).await;
    assert!(!before.contains(&muted.to_string()), "a muted thread's message arrived: {before:?}");

    // Subscribed on this connection: unsubscribed at once, no access check counted as refused.
    phone.send_json(json!({"type": "unsubscribe_thread", "thread_id": ALICE_CARLA})).await;
    assert_eq!(phone.expect_any().await, json!({"type": "thread_unsubscribed", "thread_id": ALICE_CARLA}));
    assert_eq!(world.metric("gateway_unsubscribe_refused_total{reason=\"access_denied\"}").await, 3);
}

/// The router's byte bound acts as its count bound: with room for about five messages of 4,000
/// characters while a membership lookup stalls (and no count bound in reach), twelve of them
/// overflow it; Carla is told, and the gap fill brings every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_byte_bound_is_reported_and_filled_from_the_database() {
    let world = World::start_with(|c| c.router.max_waiting_bytes = 24 * 1024).await;
    let mut carla = world.phone(&CARLA).await;
    world.stack.rest_faults().add("thread_participants", Fault::Stall(Duration::from_secs(2)), Some(1));
    let mut posted = Vec::new();
    for i in 0..12 {
        posted.push(world.post(&ALICE, ALICE_CARLA, &format!("{i:02}{}", "x".repeat(3998))).await);
    }
    let error = carla.expect("error").await;
    assert_eq!(error["message"], "Real-time connection error", "the bound is reported, not silent");
    let mut got = Vec::new();
    while got.len() < posted.len() {
        got.push(message_id(&carla.expect("new_message").await));
    }
    assert_eq!(got, posted, "every message once, in order, after the gap fill");
    assert!(world.metric("gateway_router_byte_overflows_total").await >= 1);
    assert_eq!(world.metric("gateway_router_waiting_bytes").await, 0, "nothing waits once delivered");
}

/// A phone that never reads is closed as too slow once its queue holds `SESSION_QUEUE_BYTES` (1
/// MiB here), long before the 4,096 frames of `SESSION_QUEUE_CAPACITY`: 1,500 messages of 3,000
/// control characters (about 18 KB of JSON each, 27 MB in all, more than the socket buffers take)
/// would otherwise pile up in its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_never_reads_is_dropped_by_bytes() {
    const COUNT: u64 = 1500;
    let world = World::start_with(|c| c.limits.queue_bytes = 1 << 20).await;
    let _stuck = world.phone(&DAVID).await;
    let spec = InjectSpec {
        schema: "public".into(),
        table: "messages".into(),
        change_type: "INSERT".into(),
        rows: vec![json!({
            "id": "$uuid", "thread_id": CLASS_3B_PARENTS, "sender_id": ALICE.id,
            "content": "\u{1}".repeat(3000), "message_type": "text", "created_at": "$now"
        })],
        rate_per_sec: 2000,
        count: COUNT,
    };
    assert_eq!(world.stack.realtime().inject(spec).await, COUNT);
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while world.metric("gateway_slow_client_byte_drops_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stuck phone was never dropped by bytes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(world.metric("gateway_slow_client_drops_total").await, 1, "one phone, dropped once");
}

/// A gateway process of its own (so that its RSS is its own, not the test binary's with the
/// stand-ins and other tests), on a stand-in stack, with `env` on top.
struct GatewayProcess {
    _child: tokio::process::Child,
    base: String,
}

impl GatewayProcess {
    async fn start(stack: &Stack, env: &[(&str, &str)]) -> GatewayProcess {
        let keys = stack.keys();
        let mut command = tokio::process::Command::new(BINARY);
        command
            .env_clear()
            .current_dir(std::env::temp_dir())
            .env("SUPABASE_URL", stack.url())
            .env("SUPABASE_ANON_KEY", &keys.anon_key)
            .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
            .env("SUPABASE_JWT_SECRET", &keys.jwt_secret)
            .env("PORT", "0")
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("DRAIN_SECS", "0")
            .env("LOG_LEVEL", "warn,realtime_gateway::server=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the gateway binary starts");
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let addr = tokio::time::timeout(ARRIVES, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")) {
                    return addr.to_string();
                }
            }
            panic!("the gateway ended before it listened");
        })
        .await
        .expect("the gateway logs where it listens");
        // Keep reading its log so that it never blocks on a full pipe; show warnings and errors.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("gateway: {line}");
            }
        });
        GatewayProcess { _child: child, base: format!("http://{addr}") }
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        let text = http.get(format!("{}/metrics", self.base)).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = tokio::time::Instant::now() + ARRIVES;
        loop {
            let ready = http.get(format!("{}/readyz", self.base)).send().await.is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the gateway process never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// 20,000 messages of 4,000 control characters (each escapes to about 24 KB of JSON, 480 MB in
/// all; the count bound alone would keep every one in the resume ring) leave the gateway's RSS
/// below its baseline plus the configured budgets: the resume ring's and the router's bytes, and
/// an allowance for the process's transient buffers (the upstream queue, set to 256 events, upstream
/// frames, allocator slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_stay_within_the_memory_budgets() {
    const RESUME_BYTES: u64 = 8 * MIB;
    const ROUTER_BYTES: u64 = 4 * MIB;
    const TRANSIENT: u64 = 48 * MIB;
    const MESSAGES: i64 = 20_000;
    // The stand-ins alone in this process: the only gateway is the measured one.
    crate::common::init_logs();
    let stack = Stack::start().await.expect("the stand-in stack starts");
    let http = reqwest::Client::new();
    let gateway = GatewayProcess::start(
        &stack,
        &[
            ("RESUME_BUFFER_BYTES", &RESUME_BYTES.to_string()),
            ("ROUTER_BUFFER_BYTES", &ROUTER_BYTES.to_string()),
            // The upstream queue is bounded by count only: 256 decoded rows of 4 KB at most.
            ("UPSTREAM_QUEUE_CAPACITY", "256"),
        ],
    )
    .await;
    gateway.wait_ready(&http).await;
    const RSS: &str = "gateway_process_resident_memory_bytes";
    let baseline = gateway.metric(&http, RSS).await.expect("the RSS gauge (Linux)");

    let db = stack.sql().await;
    for _ in 0..4 {
        db.execute(
            "insert into public.messages (thread_id, sender_id, content) \
             select $1, $2, repeat(chr(1), 4000) from generate_series(1, $3::bigint)",
            &[&CLASS_3B_PARENTS, &ALICE.id, &(MESSAGES / 4)],
        )
        .await
        .expect("one big transaction of large messages");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut peak = baseline;
    loop {
        let routed = gateway.metric(&http, "gateway_messages_routed_total").await.unwrap_or(0);
        peak = peak.max(gateway.metric(&http, RSS).await.unwrap_or(0));
        if routed >= MESSAGES as u64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {routed} of {MESSAGES} messages were routed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak = peak.max(gateway.metric(&http, RSS).await.unwrap_or(0));
    let budget = baseline + RESUME_BYTES + ROUTER_BYTES + TRANSIENT;
    eprintln!("RSS baseline {} MiB, peak {} MiB, budget {} MiB", baseline / MIB, peak / MIB, budget / MIB);
    assert!(peak < budget, "RSS peaked at {} MiB, above {} MiB", peak / MIB, budget / MIB);
    let ring = gateway.metric(&http, "gateway_resume_buffer_bytes").await.expect("ring gauge");
    assert!(ring <= RESUME_BYTES, "the ring holds {ring} bytes");
    let evicted = gateway.metric(&http, "gateway_resume_buffer_byte_evictions_total").await.unwrap_or(0);
    assert!(evicted > 0, "the byte budget, not the count, evicted");
    drop(gateway);
}
