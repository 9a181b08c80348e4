//! Resume on the socket: a phone that reconnects with `?since=<cursor>` gets what it missed, then
//! `sync_complete`, then live messages: nothing missing, nothing twice on the socket. Served from
//! the ring of recent messages when the cursor is recent, from the database otherwise.
//! `sync_complete` means caught up: a large transaction committed just before the phone returned
//! (not yet routed when the replay ran) arrives before it, on either source and either instance.
//! The catch-up tests are in `resume_catchup.rs`.

use std::collections::HashSet;

use reqwest::Method;
use supabase_standin::seed::{ALICE, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS};
use uuid::Uuid;

use crate::common::{message_id, World};

/// Carla reads one message, goes away, misses three (and one of another class), comes back with
/// the cursor of the last frame she got: the three are replayed once, the other class's never,
/// then `sync_complete`, then a live message exactly once.
async fn a_phone_resumes_from_its_last_cursor(world: &World) {
    let mut phone = world.phone(&CARLA).await;
    let seen = world.post(&ALICE, CLASS_3B_PARENTS, "before the tunnel").await;
    let (frame, _) = phone.receive_until(seen).await;
    let cursor = frame["cursor"].as_str().expect("every new_message carries a cursor").to_string();
    drop(phone);

    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("in the tunnel {i}")).await);
    }
    let foreign = world.post(&BRUNO, CLASS_4A_PARENTS, "another class").await;

    let mut phone = world.phone_since(&CARLA, &cursor).await;
    let (replayed, done) = phone.replay().await;
    let unique: HashSet<Uuid> = replayed.iter().copied().collect();
    assert_eq!(unique.len(), replayed.len(), "nothing twice on one socket: {replayed:?}");
    assert!(!unique.contains(&foreign), "never a message of a thread Carla is not in");
    assert_eq!(done["count"], replayed.len(), "{done}");
    assert!(done["last_check_time"].as_str().is_some_and(|t| t >= cursor.as_str()), "{done}");

    // Everything committed before the phone came back is in before `sync_complete`, routed by
    // then or not: the missed messages, once each, oldest first; then live messages only.
    let tail: Vec<Uuid> = replayed.iter().copied().filter(|id| *id != seen).collect();
    assert_eq!(tail, missed, "the missed messages, once each, oldest first, all before sync_complete");
    let live = world.post(&ALICE, CLASS_3B_PARENTS, "back in the open").await;
    let (_, before) = phone.receive_until(live).await;
    assert!(before.is_empty(), "nothing after sync_complete but the live message: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_cursor_is_served_from_memory() {
    let world = World::start().await;
    a_phone_resumes_from_its_last_cursor(&world).await;
    assert_eq!(world.metric("gateway_resumes_from_memory_total").await, 1);
    assert_eq!(world.metric("gateway_resumes_from_database_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_cursor_is_served_from_the_database() {
    let world = World::start_with(|c| c.resume.buffer.messages = 0).await;
    a_phone_resumes_from_its_last_cursor(&world).await;
    assert_eq!(world.metric("gateway_resumes_from_database_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_sync_cursor_resumes_the_socket_and_bad_cursors_are_refused() {
    let world = World::start().await;
    let carla = world.token(&CARLA);
    let (status, body) =
        world.rest(Method::GET, "/api/chat/offline-messages?last_check_time=2020-01-01T00:00:00Z", Some(&carla)).await;
    assert_eq!(status, 200, "{body}");
    let cursor = body["data"]["last_check_time"].as_str().expect("a cursor").to_string();
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the app's offline sync").await;
    let mut phone = world.phone_since(&CARLA, &cursor).await;
    let (replayed, _) = phone.replay().await;
    if !replayed.contains(&after) {
        // Not routed yet when the phone registered: then it comes live, right after the replay.
        let (_, before) = phone.receive_until(after).await;
        assert!(before.is_empty(), "{before:?}");
    }

    for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-01-01"] {
        let url = format!("{}?token={}&since={}", world.ws_base(), carla, bad);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "since={bad}");
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON error body");
                assert_eq!(body["status"], "error");
            }
            other => panic!("since={bad} must be refused at the upgrade, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_is_paged_without_overflowing_the_session_queue() {
    // 1,500 missed messages against a queue of 64 frames and database pages of 500.
    let world = World::start_with(|c| {
        c.resume.buffer.messages = 0;
        c.limits.queue_capacity = 64;
    })
    .await;
    let cursor = "2020-01-01T00:00:00Z";
    let db = world.stack.sql().await;
    let ids: Vec<Uuid> = db
        .query(
            "insert into public.messages (thread_id, sender_id, content)
             select $1, $2, 'bulk ' || g from generate_series(1, 1500) g returning id",
            &[&CLASS_3B_PARENTS, &ALICE.id],
        )
        .await
        .expect("bulk insert")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Let the router route the import first (nobody is connected): this test is about the replay.
    let deadline = tokio::time::Instant::now() + crate::common::ARRIVES;
    while world.metric("gateway_messages_routed_total").await < 1500 {
        assert!(tokio::time::Instant::now() < deadline, "the import was routed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut phone = world.phone_since(&CARLA, cursor).await;
    let (replayed, done) = phone.replay().await;
    let got: HashSet<Uuid> = replayed.iter().copied().collect();
    assert_eq!(got.len(), replayed.len(), "nothing twice");
    assert!(ids.iter().all(|id| got.contains(id)), "all 1,500 replayed");
    assert_eq!(done["count"], replayed.len());
    let live = world.post(&ALICE, CLASS_3B_PARENTS, "and then live").await;
    let (frame, _) = phone.receive_until(live).await;
    assert_eq!(message_id(&frame), live);
}
