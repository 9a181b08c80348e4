//! The guide's own JavaScript, run under Node against the gateway: its `ChatClient` (with the `ws`
//! package) connects and receives a `new_message`; its app-startup `initializeChat` shows the real
//! unread count, displays the missed messages and stores a cursor the next start accepts; a
//! `typing` frame it does not know changes nothing for it. Fails
//! (never skips) when Node or the npm packages are missing: run `scripts/setup` first.

use std::process::Stdio;

use crate::common::node::{self, Script};
use crate::common::{World, ARRIVES};
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID, EVA};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_chat_client_receives_a_new_message() {
    let js = node::tests_dir();
    node::require(&js, &["node_modules/ws"]);
    let world = World::start().await;
    let mut script = Script::spawn(
        node::command(&js)
            .arg("guide-client.mjs")
            .arg(world.base())
            .arg(world.token(&CARLA))
            .arg(CLASS_3B_PARENTS.to_string()),
    );
    let ready = script.next_json(ARRIVES, "client ready in time").await;
    assert_eq!(ready["event"], "ready", "{ready}");

    // David types in 3B: Carla's guide client gets a typing frame it does not know, ignores it,
    // and goes on. Eva got hers, so Carla's was queued before the message below.
    let mut david = world.phone(&DAVID).await;
    let mut eva = world.phone(&EVA).await;
    david.send_json(serde_json::json!({"type": "typing", "thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(eva.expect("typing").await["user"]["user_id"], DAVID.id.to_string());

    let id = world.post(&ALICE, CLASS_3B_PARENTS, "Hello from the guide test").await;
    let got = script.next_json(ARRIVES, "message in time").await;
    assert_eq!(got["event"], "message", "{got}");
    assert_eq!(got["data"]["id"], id.to_string());
    assert_eq!(got["data"]["content"], "Hello from the guide test");
    assert_eq!(got["data"]["sender"]["full_name"], "Alice Martin");
    assert_eq!(got["data"]["sender"]["role"], "teacher");
    let status = tokio::time::timeout(ARRIVES, script.child.wait()).await.expect("exits").expect("status");
    assert!(status.success());
}

/// One run of the guide's `initializeChat` (tests/node/guide-initialize-chat.js, the guide's code block
/// unchanged) under Node as `token`, with `lastMessageCheck` stored from an earlier run, if any.
async fn initialize_chat(world: &World, token: &str, stored: Option<&str>) -> serde_json::Value {
    let mut command = node::command(&node::tests_dir());
    command.arg("guide-offline-sync.mjs").arg(world.base()).arg(token);
    if let Some(stored) = stored {
        command.arg(stored);
    }
    let run = command.stderr(Stdio::inherit()).output();
    let output = tokio::time::timeout(ARRIVES, run).await.expect("initializeChat ends in time").expect("node runs");
    assert!(output.status.success(), "the guide's initializeChat threw: {}", String::from_utf8_lossy(&output.stdout));
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

fn ids(displayed: &serde_json::Value) -> Vec<String> {
    displayed
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_initialize_chat_shows_the_badge_and_the_missed_messages() {
    node::require(&node::tests_dir(), &["node_modules/ws"]);
    let world = World::start().await;
    let token = world.token(&CARLA);
    let db = world.stack.sql().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[&CARLA.id]).await.expect("count").get::<_, i64>(0) }
    };
    let unread_sql = "select count(*) from public.messages m
                        join public.thread_participants tp on tp.thread_id = m.thread_id and tp.user_id = $1
                       where m.sender_id <> $1 and m.created_at > tp.last_read_at";
    let visible: Vec<String> = db
        .query(
            "select m.id::text from public.messages m
               join public.thread_participants tp on tp.thread_id = m.thread_id and tp.user_id = $1
              where m.created_at >= '2024-01-01T00:00:00Z' order by m.created_at, m.id",
            &[&CARLA.id],
        )
        .await
        .expect("visible")
        .iter()
        .map(|r| r.get(0))
        .collect();

    // First start: no stored cursor, so the guide's default "2024-01-01T00:00:00Z".
    let first = initialize_chat(&world, &token, None).await;
    assert_eq!(first["badge"], count(unread_sql).await, "{first}");
    assert_eq!(ids(&first["displayed"]), visible, "every message Carla missed, oldest first");
    assert!(first["displayed"].as_array().is_some_and(|a| a.iter().all(|m| m["sender"]["full_name"].is_string())));
    assert_eq!(first["connects"], 1);
    let stored = first["lastMessageCheck"].as_str().expect("lastMessageCheck stored").to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&stored).is_ok(), "stored cursor {stored:?} is RFC 3339");

    // Next start from the stored cursor: the new message, none of the old ones again.
    let id = world.post(&ALICE, CLASS_3B_PARENTS, "Sports day is on Friday").await;
    let second = initialize_chat(&world, &token, Some(&stored)).await;
    assert_eq!(second["badge"], count(unread_sql).await);
    let shown = ids(&second["displayed"]);
    assert!(shown.contains(&id.to_string()), "{second}");
    assert!(shown.iter().all(|s| !visible.contains(s)), "already shown before: {shown:?}");
}
