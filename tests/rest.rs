//! The guide's REST endpoints with good and bad input, answered through PostgREST with the
//! caller's own token.

use crate::common::World;
use reqwest::Method;
use serde_json::json;
use supabase_standin::seed::{ALICE, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID, EVA, FARID};
use uuid::Uuid;

async fn unread_by_sql(world: &World, user: Uuid) -> i64 {
    let db = world.stack.sql().await;
    db.query_one(
        "select count(*) from public.messages m
           join public.thread_participants tp on tp.thread_id = m.thread_id and tp.user_id = $1
          where m.sender_id <> $1 and m.created_at > tp.last_read_at",
        &[&user],
    )
    .await
    .expect("count")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_count_and_mark_read() {
    scenario_unread_count_and_mark_read(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_unread_count_and_mark_read(world: &World) {
    let eva = world.token(&EVA);
    let expected = unread_by_sql(world, EVA.id).await;
    assert!(expected > 0, "the seed leaves Eva with unread messages");
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&eva)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "success", "data": {"unread_count": expected}, "unread_count": expected}));

    world.post(&ALICE, CLASS_3B_PARENTS, "one more").await;
    let (_, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&eva)).await;
    assert_eq!(body["data"]["unread_count"], expected + 1);

    let (status, body) = world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_3B_PARENTS}"), Some(&eva)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "message": "Messages marked as read", "thread_id": CLASS_3B_PARENTS, "user_id": EVA.id})
    );
    let (_, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&eva)).await;
    assert_eq!(body["data"]["unread_count"], unread_by_sql(world, EVA.id).await);
    assert_eq!(body["data"]["unread_count"], 0, "Eva is only in 3B");

    // Alice's own message does not count for Alice; David's does.
    let alice = world.token(&ALICE);
    let before = unread_by_sql(world, ALICE.id).await;
    world.post(&ALICE, CLASS_3B_PARENTS, "mine").await;
    world.post(&DAVID, CLASS_3B_PARENTS, "from David").await;
    let (_, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&alice)).await;
    assert_eq!(body["data"]["unread_count"], before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_refuses_bad_ids_and_strangers() {
    scenario_mark_read_refuses_bad_ids_and_strangers(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_mark_read_refuses_bad_ids_and_strangers(world: &World) {
    let carla = world.token(&CARLA);
    let (status, body) = world.rest(Method::POST, "/api/chat/mark-read/not-a-uuid", Some(&carla)).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
    assert!(body["message"].as_str().unwrap_or_default().contains("thread_id"), "{body}");

    let (status, body) =
        world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_4A_PARENTS}"), Some(&carla)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["status"], "error");

    let (status, _) = world.rest(Method::POST, &format!("/api/chat/mark-read/{}", Uuid::new_v4()), Some(&carla)).await;
    assert_eq!(status, 403, "an unknown thread is not one Carla participates in");

    let (status, body) = world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_3B_PARENTS}"), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_only_of_visible_threads_with_senders_and_a_safe_cursor() {
    scenario_offline_messages_only_of_visible_threads_with_senders_and_a_safe_cursor(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_offline_messages_only_of_visible_threads_with_senders_and_a_safe_cursor(world: &World) {
    let farid = world.token(&FARID);
    let since = "2020-01-01T00:00:00Z";
    let (status, body) =
        world.rest(Method::GET, &format!("/api/chat/offline-messages?last_check_time={since}"), Some(&farid)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let messages = body["data"]["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(body["data"]["count"], messages.len());
    for field in ["messages", "count", "last_check_time", "has_more"] {
        assert_eq!(body[field], body["data"][field], "{field} mirrored at the top level for the guide's code");
    }
    assert!(!messages.is_empty());
    let visible = [CLASS_4A_PARENTS.to_string(), supabase_standin::seed::BRUNO_FARID.to_string()];
    let mut last = String::new();
    for m in &messages {
        assert!(visible.contains(&m["thread_id"].as_str().unwrap_or_default().to_string()), "leak: {m}");
        assert!(m["sender"]["full_name"].is_string() && m["sender"]["role"].is_string(), "{m}");
        let created = m["created_at"].as_str().unwrap_or_default().to_string();
        assert!(created >= last, "oldest first");
        last = created;
    }

    // The cursor is usable next time and nothing committed after it is missed.
    let cursor = body["data"]["last_check_time"].as_str().expect("last_check_time").to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&cursor).is_ok());
    let id = world.post(&BRUNO, CLASS_4A_PARENTS, "after the cursor").await;
    let (_, body) =
        world.rest(Method::GET, &format!("/api/chat/offline-messages?last_check_time={cursor}"), Some(&farid)).await;
    let ids: Vec<&str> = body["data"]["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(ids.contains(&id.to_string().as_str()), "{body}");
    let again = body["data"]["messages"]
        .as_array()
        .map(|a| a.iter().find(|m| m["id"] == id.to_string()).cloned())
        .unwrap_or_default();
    assert_eq!(again.map(|m| m["sender"].clone()), Some(json!({"full_name": "Bruno Keller", "role": "teacher"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_validates_last_check_time() {
    scenario_offline_messages_validates_last_check_time(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_offline_messages_validates_last_check_time(world: &World) {
    let carla = world.token(&CARLA);
    for path in [
        "/api/chat/offline-messages",
        "/api/chat/offline-messages?last_check_time=",
        "/api/chat/offline-messages?last_check_time=yesterday",
        "/api/chat/offline-messages?last_check_time=2024-13-45T00:00:00Z",
    ] {
        let (status, body) = world.rest(Method::GET, path, Some(&carla)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["status"], "error");
        assert!(body["message"].as_str().unwrap_or_default().contains("last_check_time"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_unsubscribe_stops_live_delivery_until_subscribe() {
    scenario_rest_unsubscribe_stops_live_delivery_until_subscribe(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_rest_unsubscribe_stops_live_delivery_until_subscribe(world: &World) {
    let token = world.token(&DAVID);
    let mut david = world.phone(&DAVID).await;
    // Carla is in the same thread and stays subscribed: once her phone has a message, the gateway
    // has routed it for everyone.
    let mut witness = world.phone(&CARLA).await;

    let (status, body) = world.rest(Method::POST, "/api/chat/unsubscribe", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "success", "message": "Unsubscribed from real-time messages", "user_id": DAVID.id})
    );
    let muted = world.post(&ALICE, CLASS_3B_PARENTS, "while unsubscribed").await;
    witness.receive_until(muted).await;

    let (status, body) = world.rest(Method::POST, "/api/chat/subscribe", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "success", "message": "Subscribed to real-time messages", "user_id": DAVID.id}));
    let id = world.post(&ALICE, CLASS_3B_PARENTS, "after subscribing again").await;
    let (_, before) = david.receive_until(id).await;
    assert!(before.is_empty(), "delivered while unsubscribed: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_routes() {
    let world = World::start().await;
    let (status, _) = world.rest(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, body) = world.rest(Method::GET, "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = world.rest(Method::GET, "/api/chat/nope", Some(&world.token(&CARLA))).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], "error");
}

/// One offline-sync call of `who`'s token from `since`: (messages, last_check_time, has_more).
async fn sync_page(world: &World, token: &str, since: &str) -> (Vec<serde_json::Value>, String, bool) {
    let (status, body) =
        world.rest(Method::GET, &format!("/api/chat/offline-messages?last_check_time={since}"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let messages = body["data"]["messages"].as_array().cloned().unwrap_or_default();
    let cursor = body["data"]["last_check_time"].as_str().expect("last_check_time").to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&cursor).is_ok(), "{cursor}");
    (messages, cursor, body["data"]["has_more"].as_bool().expect("has_more"))
}

fn position(messages: &[serde_json::Value], id: Uuid) -> Option<&serde_json::Value> {
    messages.iter().find(|m| m["id"] == id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_who_left_the_thread_keeps_name_and_role_in_offline_sync() {
    scenario_a_sender_who_left_the_thread_keeps_name_and_role_in_offline_sync(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_a_sender_who_left_the_thread_keeps_name_and_role_in_offline_sync(world: &World) {
    let grace = supabase_standin::seed::GRACE;
    let id = world.post(&grace, CLASS_4A_PARENTS, "Thank you all, we are moving away").await;
    // Grace leaves class 4A: she now shares no thread with Farid, and RLS hides her profile.
    let db = world.stack.sql().await;
    let removed = db
        .execute(
            "delete from public.thread_participants where thread_id = $1 and user_id = $2",
            &[&CLASS_4A_PARENTS, &grace.id],
        )
        .await
        .expect("remove Grace");
    assert_eq!(removed, 1);

    let (messages, _, _) = sync_page(world, &world.token(&FARID), "2020-01-01T00:00:00Z").await;
    let got = position(&messages, id).expect("Grace's message is still Farid's to read");
    assert_eq!(got["sender"], json!({"full_name": "Grace Lee", "role": "parent"}));
    assert!(messages.iter().all(|m| m["sender"]["full_name"] != "Unknown sender"), "{messages:?}");

    // Nobody outside the thread learns anything: Carla (3B) gets neither the message nor Grace.
    let (messages, _, _) = sync_page(world, &world.token(&CARLA), "2020-01-01T00:00:00Z").await;
    assert!(position(&messages, id).is_none());
    assert!(messages.iter().all(|m| m["sender"]["full_name"] != "Grace Lee"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_when_the_cursor_is_taken_comes_next_time() {
    let world = World::start().await;
    let farid = world.token(&FARID);
    let (_, start, _) = sync_page(&world, &farid, "2020-01-01T00:00:00Z").await;

    let mut db = world.stack.sql().await;
    let tx = db.transaction().await.expect("begin");
    let row = tx
        .query_one(
            "insert into public.messages (thread_id, sender_id, content) values ($1, $2, 'late commit')
             returning id, created_at",
            &[&CLASS_4A_PARENTS, &BRUNO.id],
        )
        .await
        .expect("insert");
    let (id, created_at): (Uuid, chrono::DateTime<chrono::Utc>) = (row.get(0), row.get(1));

    // The cursor handed out while the transaction is open stays at or before its created_at.
    let (messages, cursor, _) = sync_page(&world, &farid, &start).await;
    assert!(position(&messages, id).is_none(), "not committed yet");
    let cursor_time = chrono::DateTime::parse_from_rfc3339(&cursor).expect("rfc 3339");
    assert!(cursor_time <= created_at, "cursor {cursor} is past the open transaction's message ({created_at})");

    tx.commit().await.expect("commit");
    let (messages, _, _) = sync_page(&world, &farid, &cursor).await;
    let got = position(&messages, id).expect("the late commit is returned from the cursor");
    assert_eq!(got["sender"], json!({"full_name": "Bruno Keller", "role": "teacher"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_transaction_is_synced_across_pages_exactly_once() {
    let world = World::start().await;
    let db = world.stack.sql().await;
    // Two transactions: 1,200 messages sharing one created_at, then 600 sharing a later one.
    let mut expected = Vec::new();
    for n in [1200_i32, 600] {
        let rows = db
            .query(
                "insert into public.messages (thread_id, sender_id, content)
                 select $1, $2, 'bulk ' || g from generate_series(1, $3) g returning id",
                &[&CLASS_4A_PARENTS, &BRUNO.id, &n],
            )
            .await
            .expect("bulk insert");
        expected.extend(rows.iter().map(|r| r.get::<_, Uuid>(0).to_string()));
    }

    let farid = world.token(&FARID);
    let mut since = "2020-01-01T00:00:00Z".to_string();
    let mut cursors = vec![since.clone()];
    let mut more = Vec::new();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    loop {
        assert!(more.len() < 10, "offline sync does not end: has_more {more:?}, cursors {cursors:?}");
        let (messages, cursor, has_more) = sync_page(&world, &farid, &since).await;
        for m in &messages {
            *seen.entry(m["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        more.push(has_more);
        assert!(!cursors.contains(&cursor), "cursor {cursor} handed out twice: {cursors:?}");
        cursors.push(cursor.clone());
        since = cursor;
        if !has_more {
            break;
        }
    }
    assert_eq!(more, [true, true, false], "two full pages, then the end");
    for id in &expected {
        assert_eq!(seen.get(id), Some(&1), "message {id} returned {:?} times", seen.get(id));
    }
    assert!(seen.values().all(|&n| n == 1), "nothing returned twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_switch_is_stored_and_a_restarted_gateway_applies_it() {
    let mut world = World::start().await;
    let david = world.token(&DAVID);
    let (status, body) = world.rest(Method::POST, "/api/chat/unsubscribe", Some(&david)).await;
    assert_eq!(status, 200, "{body}");
    if let Some(gateway) = world.gateway.take() {
        gateway.shutdown().await;
    }
    world.gateway = Some(world.another_gateway(|_| {}).await);
    world.wait_ready(true).await;

    // After the restart David's phone stays silent, Carla's (same thread) does not.
    let mut phone = world.phone(&DAVID).await;
    let mut carla = world.phone(&CARLA).await;
    let quiet = world.post(&ALICE, CLASS_3B_PARENTS, "while David is switched off").await;
    carla.receive_until(quiet).await;
    phone.send_json(serde_json::json!({"type": "ping"})).await;
    assert_eq!(phone.expect_any().await["type"], "pong", "no new_message reached David's switched-off phone");

    let (status, body) = world.rest(Method::POST, "/api/chat/subscribe", Some(&david)).await;
    assert_eq!(status, 200, "{body}");
    let loud = world.post(&ALICE, CLASS_3B_PARENTS, "David is back").await;
    phone.receive_until(loud).await;
    let stored: bool = world
        .stack
        .sql()
        .await
        .query_one("select realtime_enabled from public.chat_realtime_settings where user_id = $1", &[&DAVID.id])
        .await
        .expect("David's row")
        .get(0);
    assert!(stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_read_on_one_device_tells_every_device_with_the_new_unread_count() {
    scenario_marking_read_on_one_device_tells_every_device_with_the_new_unread_count(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_marking_read_on_one_device_tells_every_device_with_the_new_unread_count(world: &World) {
    let mut phone = world.phone(&CARLA).await;
    let mut tablet = world.phone(&CARLA).await;
    let unread = world.post(&ALICE, CLASS_3B_PARENTS, "please read me").await;
    phone.receive_until(unread).await;
    tablet.receive_until(unread).await;
    let carla = world.token(&CARLA);
    let (status, body) =
        world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_3B_PARENTS}"), Some(&carla)).await;
    assert_eq!(status, 200, "{body}");
    let want = unread_by_sql(world, CARLA.id).await;
    for device in [&mut phone, &mut tablet] {
        let read = device.expect("thread_read").await;
        assert_eq!(read["thread_id"], CLASS_3B_PARENTS.to_string());
        assert_eq!(read["unread_count"], want, "{read}");
        assert!(read["last_read_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{read}");
    }
}
