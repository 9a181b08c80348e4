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
    let world = World::start().await;
    let eva = world.token(&EVA);
    let expected = unread_by_sql(&world, EVA.id).await;
    assert!(expected > 0, "the seed leaves Eva with unread messages");
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&eva)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "success", "data": {"unread_count": expected}}));

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
    assert_eq!(body["data"]["unread_count"], unread_by_sql(&world, EVA.id).await);
    assert_eq!(body["data"]["unread_count"], 0, "Eva is only in 3B");

    // Alice's own message does not count for Alice; David's does.
    let alice = world.token(&ALICE);
    let before = unread_by_sql(&world, ALICE.id).await;
    world.post(&ALICE, CLASS_3B_PARENTS, "mine").await;
    world.post(&DAVID, CLASS_3B_PARENTS, "from David").await;
    let (_, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&alice)).await;
    assert_eq!(body["data"]["unread_count"], before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_refuses_bad_ids_and_strangers() {
    let world = World::start().await;
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
    let world = World::start().await;
    let farid = world.token(&FARID);
    let since = "2020-01-01T00:00:00Z";
    let (status, body) =
        world.rest(Method::GET, &format!("/api/chat/offline-messages?last_check_time={since}"), Some(&farid)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    let messages = body["data"]["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(body["data"]["count"], messages.len());
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
    let world = World::start().await;
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
    let world = World::start().await;
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
