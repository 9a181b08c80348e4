//! Thread history and per-thread unread counts through the gateway, on both backends: pages
//! newest first whose boundary may fall inside one transaction's equal `created_at` without a
//! message repeated or skipped, the same message shape as live delivery, row-level security
//! deciding (a removed member gets 403), and per-thread counts that add up to the total.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::Value;
use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS};
use uuid::Uuid;

use crate::common::{Backend, World};

fn path(thread: Uuid, query: &str) -> String {
    format!("/api/chat/threads/{thread}/messages{query}")
}

/// Every message of the thread, newest first, as the database orders them.
async fn all_ids(world: &World, thread: Uuid) -> Vec<String> {
    let db = world.stack.sql().await;
    db.query("select id from public.messages where thread_id = $1 order by created_at desc, id desc", &[&thread])
        .await
        .expect("messages")
        .iter()
        .map(|r| r.get::<_, Uuid>(0).to_string())
        .collect()
}

async fn paging_neither_repeats_nor_skips(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let db = world.stack.sql().await;
    world.post(&ALICE, ALICE_CARLA, "before the burst").await;
    // Seven messages in one statement: one transaction, one created_at.
    db.execute(
        "insert into public.messages (thread_id, sender_id, content) \
         select $1, $2, 'burst ' || g from generate_series(1, 7) g",
        &[&ALICE_CARLA, &ALICE.id],
    )
    .await
    .expect("burst");
    world.post(&CARLA, ALICE_CARLA, "after the burst").await;
    let expected = all_ids(&world, ALICE_CARLA).await;

    let token = world.token(&CARLA);
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for page in 0.. {
        assert!(page <= expected.len(), "paging never ends: {seen:?}");
        let query = match &before {
            Some(cursor) => format!("?limit=3&before={cursor}"),
            None => "?limit=3".to_string(),
        };
        let (status, body) = world.rest(Method::GET, &path(ALICE_CARLA, &query), Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        let messages = body["data"]["messages"].as_array().cloned().unwrap_or_default();
        assert!(messages.len() <= 3);
        seen.extend(messages.iter().map(|m| m["id"].as_str().unwrap_or_default().to_string()));
        match body["data"]["next"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every message once, newest first, across page boundaries in the burst");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_neither_repeat_nor_skip_inside_equal_created_at_on_supabase() {
    paging_neither_repeats_nor_skips(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_neither_repeat_nor_skip_inside_equal_created_at_on_postgres() {
    paging_neither_repeats_nor_skips(Backend::Postgres).await;
}

async fn history_is_what_live_delivery_sends_and_only_for_members(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let mut phone = world.phone(&CARLA).await;
    let id = world.post(&ALICE, CLASS_3B_PARENTS, "Trip forms are due Friday").await;
    let (frame, _) = phone.receive_until(id).await;
    let token = world.token(&CARLA);
    let (status, body) = world.rest(Method::GET, &path(CLASS_3B_PARENTS, "?limit=1"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["messages"][0], frame["data"], "the same shape and values as new_message data");
    assert_eq!(body["data"]["messages"][0]["sender"]["full_name"], "Alice Martin");
    assert_eq!(body["messages"], body["data"]["messages"], "mirrored at the top level");

    let (status, _) = world.rest(Method::GET, &path(CLASS_4A_PARENTS, ""), Some(&token)).await;
    assert_eq!(status, 403, "never a member");
    let db = world.stack.sql().await;
    db.execute(
        "delete from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("Carla removed");
    let (status, body) = world.rest(Method::GET, &path(CLASS_3B_PARENTS, ""), Some(&token)).await;
    assert_eq!(status, 403, "a removed member reads no more history: {body}");
    assert_eq!(body["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_matches_live_delivery_and_a_removed_member_gets_403_on_supabase() {
    history_is_what_live_delivery_sends_and_only_for_members(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_matches_live_delivery_and_a_removed_member_gets_403_on_postgres() {
    history_is_what_live_delivery_sends_and_only_for_members(Backend::Postgres).await;
}

async fn per_thread_counts_add_up(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let token = world.token(&CARLA);
    world.rest(Method::POST, &format!("/api/chat/mark-read/{ALICE_CARLA}"), Some(&token)).await;
    world.post(&ALICE, ALICE_CARLA, "one").await;
    world.post(&ALICE, ALICE_CARLA, "two").await;
    world.post(&CARLA, ALICE_CARLA, "mine does not count").await;
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count?by_thread=true", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let threads = body["data"]["threads"].as_array().cloned().unwrap_or_default();
    let of = |thread: Uuid| threads.iter().find(|t| t["thread_id"] == thread.to_string()).cloned();
    let direct = of(ALICE_CARLA).expect("Carla's 1:1 thread is listed");
    assert_eq!(direct["unread_count"], 2);
    assert!(direct["last_message_at"].is_string());
    assert!(of(CLASS_4A_PARENTS).is_none(), "only the caller's threads");
    let sum: i64 = threads.iter().filter_map(|t| t["unread_count"].as_i64()).sum();
    assert_eq!(body["data"]["unread_count"], sum);
    let (_, total) = world.rest(Method::GET, "/api/chat/unread-count", Some(&token)).await;
    assert_eq!(total["data"]["unread_count"], sum, "the same total as without by_thread");
    assert_eq!(total["data"].get("threads"), None, "the guide's shape without the option");
    assert_eq!(body["threads"], Value::Array(threads));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_thread_unread_counts_add_up_to_the_total_on_supabase() {
    per_thread_counts_add_up(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_thread_unread_counts_add_up_to_the_total_on_postgres() {
    per_thread_counts_add_up(Backend::Postgres).await;
}
