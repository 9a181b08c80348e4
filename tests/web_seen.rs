//! "Seen by" and typing in the example web app across two gateway instances, in headless Chromium
//! (`/usr/bin/chromium` through playwright-core, driver `tests/node/browser-seen.mjs`): a teacher's
//! page served against instance A, a parent's page against instance B, on both backends. Fails
//! (never skips) when Node, the npm packages, the library build or Chromium are missing: run
//! `scripts/setup` first.

use std::time::Duration;

use serde_json::json;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

use crate::common::node::{self, Script};
use crate::common::{Backend, World};

/// Bound for each step (never an assertion about speed).
const PHASE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Alice (teacher) posts in "Class 3B parents" and opens it on instance A: "seen by N of M" shows
/// under her message. Carla (parent) opens the thread on instance B, which marks it read: Alice's
/// count rises and names Carla on hover. Carla types in the message box on B: Alice's page says
/// "Carla Diaz is typing…" (Carla's own page does not), and the line goes once she stops.
async fn seen_by_and_typing_cross_instances(backend: Backend) {
    node::require(&node::library_dir(), &["dist/index.js"]);
    node::require_chromium();
    let (port_a, port_b) = (free_port(), free_port());
    let origins = vec![format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}")];
    let world = World::start_on(backend, |c| c.edge.cors_allowed_origins = origins).await;
    let second = world.second_instance().await;
    let gateway_b = format!("http://{}", second.local_addr());
    let text = format!("Please bring the signed form tomorrow {}", &Uuid::new_v4().simple().to_string()[..8]);
    world.post(&ALICE, CLASS_3B_PARENTS, &text).await;

    let args = json!({
        "supabase": world.stack.url(),
        "anonKey": world.stack.keys().anon_key,
        "gatewayA": world.base(),
        "gatewayB": gateway_b,
        "portA": port_a,
        "portB": port_b,
        "teacherToken": world.token(&ALICE),
        "parentToken": world.token(&CARLA),
        "thread": CLASS_3B_PARENTS,
        "text": text,
    });
    let mut script = Script::spawn(node::command(&node::tests_dir()).arg("browser-seen.mjs").arg(args.to_string()));

    let teacher = script.next_json(PHASE, "Alice's page shows who has seen her message").await;
    assert_eq!(teacher["event"], "teacher", "{teacher}");
    let before = seen_count(&teacher["seen"]);
    assert_eq!(before.1, 3, "Carla, David and Eva besides Alice: {teacher}");

    let seen = script.next_json(PHASE, "Carla's read on B reaches Alice's page on A").await;
    assert_eq!(seen["event"], "seen", "{seen}");
    let after = seen_count(&seen["seen"]);
    assert!(after.0 > before.0 && after.1 == before.1, "seen by rose from {before:?}: {seen}");
    assert!(seen["names"].as_str().is_some_and(|n| n.contains(CARLA.full_name)), "the teacher sees who: {seen}");

    let typing = script.next_json(PHASE, "Carla's typing on B shows on Alice's page").await;
    assert_eq!(typing["event"], "typing", "{typing}");
    assert_eq!(typing["text"], format!("{} is typing…", CARLA.full_name), "{typing}");
    assert_eq!(typing["parentLine"], "", "Carla's own page shows no typing line: {typing}");
    let over = script.next_json(PHASE, "the typing line goes").await;
    assert_eq!(over["event"], "typing-over", "{over}");

    let status = tokio::time::timeout(PHASE, script.child.wait()).await.expect("exits").expect("status");
    assert!(status.success());
    second.shutdown().await;
}

/// (N, M) of "seen by N of M".
fn seen_count(seen: &serde_json::Value) -> (u64, u64) {
    let text = seen.as_str().unwrap_or_else(|| panic!("a seen-by line: {seen}"));
    let numbers: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match numbers[..] {
        [n, m] => (n, m),
        _ => panic!("not \"seen by N of M\": {text}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_shows_seen_by_and_typing_across_instances_on_supabase() {
    seen_by_and_typing_cross_instances(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_shows_seen_by_and_typing_across_instances_on_postgres() {
    seen_by_and_typing_cross_instances(Backend::Postgres).await;
}
