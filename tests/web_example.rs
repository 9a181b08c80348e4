//! The example web app (`examples/web`) in headless Chromium (Debian's `/usr/bin/chromium`,
//! driven by `tests/node/browser.mjs` through playwright-core): the page, served from its own
//! origin by `examples/web/serve.mjs` with the built client library, signs in, shows live messages
//! and the unread badge. The gateway admits the page's origin through `CORS_ALLOWED_ORIGINS`.
//! Fails (never skips) when Node, the npm packages, the library build or Chromium are missing: run
//! `scripts/setup` first.

use std::time::Duration;

use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

use crate::common::node::{self, Script};
use crate::common::World;

/// Bound for each step of the scenario (never an assertion about speed).
const PHASE: Duration = Duration::from_secs(40);

/// The example web app (`examples/web`, served with the built library by `examples/web/serve.mjs`)
/// in headless Chromium: signed in as Carla with thread 3B open, a message inserted with SQL in 3B
/// appears on the page; one in her 1:1 thread raises the unread badge by one, and opening that
/// thread brings it down to the server's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_web_app_shows_a_live_message_and_the_unread_badge_in_chromium() {
    node::require(&node::library_dir(), &["dist/index.js"]);
    node::require_chromium();
    // The page is served from its own origin; the gateway admits exactly that browser origin.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let origin = format!("http://127.0.0.1:{port}");
    let world = World::start_with(|c| c.edge.cors_allowed_origins = vec![origin.clone()]).await;
    let nonce = Uuid::new_v4().simple().to_string();
    let text_a = format!("Parents' evening moved to Thursday {}", &nonce[..8]);
    let text_b = format!("Can we talk about the trip? {}", &nonce[..8]);
    let mut script = Script::spawn(
        node::command(&node::tests_dir())
            .arg("browser.mjs")
            .arg(world.base())
            .arg(world.stack.url())
            .arg(&world.stack.keys().anon_key)
            .arg(world.token(&CARLA))
            .arg(CLASS_3B_PARENTS.to_string())
            .arg(ALICE_CARLA.to_string())
            .arg(&text_a)
            .arg(&text_b)
            .arg(port.to_string()),
    );
    let ready = script.next_json(PHASE, "the browser driver answers in time").await;
    assert_eq!(ready["event"], "ready", "{ready}");
    let badge = ready["badge"].as_i64().expect("a badge number");

    world.post(&ALICE, CLASS_3B_PARENTS, &text_a).await;
    world.post(&ALICE, ALICE_CARLA, &text_b).await;
    let result = script.next_json(PHASE, "the browser driver answers in time").await;
    assert_eq!(result["event"], "result", "{result}");
    assert!(result["error"].is_null(), "in the browser: {result}");
    assert_eq!(result["sawA"], true, "{result}");
    assert_eq!(result["senderA"], "Alice Martin", "{result}");
    assert_eq!(result["badgeAfter"], badge + 1, "{result}");
    assert_eq!(result["threadBUnread"], "1", "{result}");
    assert_eq!(result["sawB"], true, "{result}");
    let (_, unread) = world.rest(reqwest::Method::GET, "/api/chat/unread-count", Some(&world.token(&CARLA))).await;
    assert_eq!(
        result["badgeAfterReading"], unread["data"]["unread_count"],
        "the badge shows the server's count: {result}"
    );
    assert!(result["badgeAfterReading"].as_i64() <= Some(badge), "{result}");
    assert_eq!(result["status"], "live", "{result}");
    let status = tokio::time::timeout(PHASE, script.child.wait()).await.expect("exits").expect("status");
    assert!(status.success());
}
