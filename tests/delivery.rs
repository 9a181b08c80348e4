//! A message travels from a SQL INSERT to exactly the phones allowed to see it.

use crate::common::{Phone, World};
use serde_json::json;
use supabase_standin::seed::{ALICE, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID, FARID, GRACE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_posts_in_3b_both_parents_phones_get_it_and_4a_does_not() {
    scenario_a_teacher_posts_in_3b_both_parents_phones_get_it_and_4a_does_not(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_a_teacher_posts_in_3b_both_parents_phones_get_it_and_4a_does_not(world: &World) {
    let mut carla_phone = world.phone(&CARLA).await;
    let mut carla_tablet = world.phone(&CARLA).await;
    let mut david = world.phone(&DAVID).await;
    let mut farid = world.phone(&FARID).await; // class 4A parent: an outsider to 3B

    let id = world.post(&ALICE, CLASS_3B_PARENTS, "Museum trip moved to Monday").await;
    for phone in [&mut carla_phone, &mut carla_tablet, &mut david] {
        let (frame, before) = phone.receive_until(id).await;
        assert!(before.is_empty(), "unexpected messages first: {before:?}");
        let data = &frame["data"];
        assert_eq!(data["thread_id"], CLASS_3B_PARENTS.to_string());
        assert_eq!(data["sender_id"], ALICE.id.to_string());
        assert_eq!(data["content"], "Museum trip moved to Monday");
        assert_eq!(data["message_type"], "text");
        assert_eq!(data["sender"], json!({"full_name": "Alice Martin", "role": "teacher"}));
        assert!(data["created_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{data}");
        let keys: Vec<&String> = data.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(keys.len(), 7, "exactly the guide's fields: {keys:?}");
    }

    // Farid's next message must be the one from his own class: the 3B message never reached him.
    let own = world.post(&BRUNO, CLASS_4A_PARENTS, "Swimming is cancelled").await;
    let (frame, before) = farid.receive_until(own).await;
    assert!(before.is_empty(), "outsider received {before:?}");
    assert_eq!(frame["data"]["sender"]["full_name"], "Bruno Keller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_thread_is_decided_by_rls_and_errors_keep_the_socket_open() {
    scenario_subscribe_thread_is_decided_by_rls_and_errors_keep_the_socket_open(&World::start().await).await;
}

/// The scenario itself, on whichever backend `world` runs (also run by `tests/postgres.rs`).
pub async fn scenario_subscribe_thread_is_decided_by_rls_and_errors_keep_the_socket_open(world: &World) {
    let mut carla = world.phone(&CARLA).await;

    carla.send_json(json!({"type": "subscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    let ok = carla.expect("thread_subscribed").await;
    assert_eq!(ok, json!({"type": "thread_subscribed", "thread_id": CLASS_3B_PARENTS}));

    carla.send_json(json!({"type": "subscribe_thread", "thread_id": CLASS_4A_PARENTS})).await;
    let refused = carla.next_json().await.expect("an answer");
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(refused["message"].as_str().unwrap_or_default().contains("Access denied"), "{refused}");

    for (frame, expect) in [
        ("{not json", "Invalid JSON"),
        (r#"{"type":"dance"}"#, "Unknown message type"),
        (r#"{"type":"subscribe_thread"}"#, "Missing thread_id"),
        (r#"{"type":"subscribe_thread","thread_id":"42"}"#, "Invalid thread_id"),
        (r#"{"thread_id":"42"}"#, "Missing message type"),
    ] {
        carla.send_text(frame).await;
        let error = carla.next_json().await.expect("an error frame");
        assert_eq!(error["type"], "error");
        assert!(error["message"].as_str().unwrap_or_default().contains(expect), "{frame} -> {error}");
    }
    carla.send_json(json!({"type": "ping"})).await;
    assert_eq!(carla.next_json().await, Some(json!({"type": "pong"})));

    carla.send_json(json!({"type": "unsubscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(carla.expect("thread_unsubscribed").await["thread_id"], CLASS_3B_PARENTS.to_string());

    // Unsubscribed on this connection: a 3B message does not come; her 1:1 thread still does.
    world.post(&ALICE, CLASS_3B_PARENTS, "muted for Carla's phone").await;
    let direct = world.post(&ALICE, supabase_standin::seed::ALICE_CARLA, "Hello Carla").await;
    let (_, before) = carla.receive_until(direct).await;
    assert!(before.is_empty(), "muted thread delivered: {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_the_socket_with_a_reason() {
    let world = World::start().await;
    let mut grace = world.phone(&GRACE).await;
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(64 * 1024));
    let _ = futures_util::SinkExt::send(&mut grace.ws, tokio_tungstenite::tungstenite::Message::text(huge)).await;
    assert_eq!(grace.close_code().await, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_closed_for_its_rate() {
    let world = World::start_with(|c| c.limits.rate_per_sec = 5).await;
    let mut grace = world.phone(&GRACE).await;
    for _ in 0..50 {
        if futures_util::SinkExt::send(
            &mut grace.ws,
            tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    assert_eq!(grace.close_code().await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_header_works_as_well_as_the_query_token() {
    let world = World::start().await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = world.ws_base().into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {}", world.token(&DAVID)).parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("connects with a bearer header");
    let mut phone = Phone { ws };
    assert_eq!(phone.next_json().await.expect("hello")["user_id"], DAVID.id.to_string());
}
