//! `sync_complete` means caught up. A class import of 1,000 messages commits in one transaction
//! just before Carla's phone returns, while Realtime lags behind (the gateway has not routed any
//! of it when the phone registers): every imported message reaches the phone once, all before
//! `sync_complete`, through a replay from memory or from the database, on either instance. When
//! no proof can come in time, `sync_complete` still goes out, with a cursor that does not pass
//! what is still on its way, and is counted.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

use crate::common::{message_id, Phone, World, ARRIVES};

/// Messages in the import.
const IMPORT: i64 = 1000;
/// How far Realtime lags behind the database while the phone returns.
const LAG: Duration = Duration::from_millis(1500);

/// A phone of Carla on the instance at `ws_base` (`ws://host:port/`), resuming from `since`.
async fn phone_since(world: &World, ws_base: &str, since: &str) -> Phone {
    let url = format!("{ws_base}?token={}&since={}", world.token(&CARLA), urlencoding::encode(since));
    let mut phone = Phone::connect(&url).await.expect("connects");
    assert_eq!(phone.expect_any().await["type"], "connection_established");
    phone
}

/// Carla's cursor from a live message on the instance at `ws_base`; her phone then goes away.
async fn cursor_from_a_live_message(world: &World, ws_base: &str) -> String {
    let mut phone = Phone::connect(&format!("{ws_base}?token={}", world.token(&CARLA))).await.expect("connects");
    assert_eq!(phone.expect_any().await["type"], "connection_established");
    let seen = world.post(&ALICE, CLASS_3B_PARENTS, "before the import").await;
    let (frame, _) = phone.receive_until(seen).await;
    frame["cursor"].as_str().expect("a cursor").to_string()
}

/// The import: `IMPORT` messages to Carla's class in one transaction.
async fn import(world: &World) -> Vec<Uuid> {
    let db = world.stack.sql().await;
    db.query(
        "insert into public.messages (thread_id, sender_id, content)
         select $1, $2, 'import ' || g from generate_series(1, $3::bigint) g returning id",
        &[&CLASS_3B_PARENTS, &ALICE.id, &IMPORT],
    )
    .await
    .expect("the import")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Every `new_message` id up to `sync_complete`, and that frame.
async fn until_sync_complete(phone: &mut Phone) -> (Vec<Uuid>, Value) {
    let mut ids = Vec::new();
    loop {
        let frame = phone.expect_any().await;
        match frame["type"].as_str() {
            Some("new_message") => ids.push(message_id(&frame)),
            Some("sync_complete") => return (ids, frame),
            _ => {}
        }
    }
}

/// The scenario: cursor on `first`, import while Realtime lags, resume on `second` at once.
async fn an_import_just_before_the_phone_returns_arrives_before_sync_complete(
    world: &World,
    first: &str,
    second: &str,
) {
    let cursor = cursor_from_a_live_message(world, first).await;
    world.stack.realtime().set_latency(LAG);
    let imported = import(world).await;
    let mut phone = phone_since(world, second, &cursor).await;
    let (before_sync, done) = until_sync_complete(&mut phone).await;
    world.stack.realtime().set_latency(Duration::ZERO);

    let got: HashSet<Uuid> = before_sync.iter().copied().collect();
    assert_eq!(got.len(), before_sync.len(), "nothing twice before sync_complete");
    let missing = imported.iter().filter(|id| !got.contains(id)).count();
    assert_eq!(missing, 0, "{missing} of {IMPORT} imported messages were not in before sync_complete: {done}");
    assert!(done["last_check_time"].as_str().is_some_and(|t| t >= cursor.as_str()), "{done}");

    // Then live messages only: the import is not sent again.
    let live = world.post(&ALICE, CLASS_3B_PARENTS, "after the import").await;
    let (_, after_sync) = phone.receive_until(live).await;
    assert!(after_sync.is_empty(), "{} frames after sync_complete before the live one", after_sync.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_memory_an_import_just_before_the_phone_returns_arrives_before_sync_complete() {
    let world = World::start().await;
    let base = world.ws_base();
    an_import_just_before_the_phone_returns_arrives_before_sync_complete(&world, &base, &base).await;
    assert_eq!(world.metric("gateway_resumes_from_memory_total").await, 1);
    assert_eq!(world.metric("gateway_resume_catchup_timeouts_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_database_an_import_just_before_the_phone_returns_arrives_before_sync_complete() {
    let world = World::start_with(|c| c.resume.buffer.messages = 0).await;
    let base = world.ws_base();
    an_import_just_before_the_phone_returns_arrives_before_sync_complete(&world, &base, &base).await;
    assert_eq!(world.metric("gateway_resumes_from_database_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_second_instance_an_import_just_before_the_phone_returns_arrives_before_sync_complete() {
    let world = World::start().await;
    let second = world.another_gateway(|_| {}).await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    let ready = format!("http://{}/readyz", second.local_addr());
    while world.http.get(&ready).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the second instance became ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // On B alone (served from B's ring), then with a cursor from A coming back through B (A's
    // cursor may be older than B's ring: then B reads the database).
    let (first, other) = (world.ws_base(), format!("ws://{}/", second.local_addr()));
    an_import_just_before_the_phone_returns_arrives_before_sync_complete(&world, &other, &other).await;
    an_import_just_before_the_phone_returns_arrives_before_sync_complete(&world, &first, &other).await;
    let metrics = world.http.get(format!("http://{}/metrics", second.local_addr())).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    let sample =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    let resumes = text.lines().filter(|l| l.starts_with("gateway_resume")).collect::<Vec<_>>().join("\n");
    let from_memory = sample("gateway_resumes_from_memory_total").unwrap_or_default();
    assert!(from_memory >= 1.0, "served from B's ring at least once:\n{resumes}");
    assert_eq!(sample("gateway_resume_catchup_timeouts_total"), Some(0.0), "proven, not timed out:\n{resumes}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proof_in_time_sync_complete_goes_out_with_a_safe_cursor_and_is_counted() {
    let world = World::start_with(|c| c.resume.catchup_timeout = Duration::from_millis(500)).await;
    let base = world.ws_base();
    let cursor = cursor_from_a_live_message(&world, &base).await;
    // Realtime stops reading the change feed: the import cannot reach the gateway in time.
    world.stack.realtime().pause_feed();
    let imported = import(&world).await;
    let mut phone = phone_since(&world, &base, &cursor).await;
    let (before_sync, done) = until_sync_complete(&mut phone).await;
    assert!(before_sync.iter().all(|id| !imported.contains(id)), "the import cannot have arrived");
    assert_eq!(world.metric("gateway_resume_catchup_timeouts_total").await, 1);
    let last_check: DateTime<Utc> =
        done["last_check_time"].as_str().and_then(|t| t.parse().ok()).expect("a cursor in sync_complete");

    // The feed comes back: every imported message arrives live, once, and the cursor handed out
    // did not pass any of them (a resume from it would have replayed them).
    world.stack.realtime().resume_feed();
    let mut got = HashSet::new();
    while got.len() < imported.len() {
        let frame = phone.expect("new_message").await;
        let created: DateTime<Utc> = frame["data"]["created_at"].as_str().and_then(|t| t.parse().ok()).expect("time");
        assert!(created >= last_check, "sync_complete's cursor {last_check} passed a message still on its way");
        assert!(got.insert(message_id(&frame)), "twice: {frame}");
    }
    assert!(imported.iter().all(|id| got.contains(id)));
}

/// A database replay reads the database, which runs ahead of the router while Realtime is away.
/// Carla's phone gets messages posted during an outage from the database; her next resume
/// starts past them; when the router at last routes them (the gap fill after Realtime is back),
/// none comes again on the new socket: her cursor says she has them, and a thread's messages
/// never go back in time on one socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_database_replay_sent_ahead_of_the_router_does_not_come_back_live_after_the_next_resume() {
    let world = World::start().await;
    let base = world.ws_base();
    let realtime = world.stack.realtime();
    realtime.set_refuse_joins(true);
    realtime.drop_all_sockets();
    world.wait_ready(false).await;
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("during the outage {i}")).await);
    }

    // Before the ring: the first resume reads the database, and gets them.
    let mut first = phone_since(&world, &base, "2000-01-01T00:00:00Z").await;
    let (replayed, done) = until_sync_complete(&mut first).await;
    assert!(during.iter().all(|id| replayed.contains(id)), "the outage's messages come from the database");
    let cursor = done["last_check_time"].as_str().expect("a cursor").to_string();
    drop(first);

    // The next resume starts past them (from the database too: Realtime is still away).
    let mut second = phone_since(&world, &base, &cursor).await;
    let (again, _) = until_sync_complete(&mut second).await;
    assert!(again.iter().all(|id| !during.contains(id)), "the cursor covers them: not replayed again");

    // Realtime is back: the gap fill routes the outage's messages; a marker follows them.
    realtime.set_refuse_joins(false);
    world.wait_ready(true).await;
    let marker = world.post(&ALICE, CLASS_3B_PARENTS, "after the outage").await;
    let (_, before) = second.receive_until(marker).await;
    let during: HashSet<String> = during.iter().map(Uuid::to_string).collect();
    let back: Vec<&String> = before.iter().filter(|id| during.contains(*id)).collect();
    assert!(back.is_empty(), "messages the phone already had came back live after newer ones: {back:?}");
    assert!(world.metric("gateway_gap_fill_messages_total").await >= 5, "the router did route them late");
}
