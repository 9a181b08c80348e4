//! The guide's own JavaScript `ChatClient`, run under Node with the `ws` package, connects to the
//! gateway and receives a `new_message`. Fails (never skips) when Node or the npm packages are
//! missing: run `scripts/setup` first.

use std::path::PathBuf;
use std::process::Stdio;

use crate::common::{World, ARRIVES};
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS};
use tokio::io::{AsyncBufReadExt, BufReader};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_chat_client_receives_a_new_message() {
    let js = js_dir();
    assert!(js.join("node_modules/ws").exists(), "npm packages missing in {}: run scripts/setup", js.display());
    let world = World::start().await;
    let mut child = tokio::process::Command::new("node")
        .arg(js.join("guide-client.mjs"))
        .arg(world.base())
        .arg(world.token(&CARLA))
        .arg(CLASS_3B_PARENTS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(ARRIVES, lines.next_line())
        .await
        .expect("client ready in time")
        .expect("read")
        .expect("a line");
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("json");
    assert_eq!(ready["event"], "ready", "{ready}");

    let id = world.post(&ALICE, CLASS_3B_PARENTS, "Hello from the guide test").await;
    let line = tokio::time::timeout(ARRIVES, lines.next_line())
        .await
        .expect("message in time")
        .expect("read")
        .expect("a line");
    let got: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(got["event"], "message", "{got}");
    assert_eq!(got["data"]["id"], id.to_string());
    assert_eq!(got["data"]["content"], "Hello from the guide test");
    assert_eq!(got["data"]["sender"]["full_name"], "Alice Martin");
    assert_eq!(got["data"]["sender"]["role"], "teacher");
    let status = tokio::time::timeout(ARRIVES, child.wait()).await.expect("exits").expect("status");
    assert!(status.success());
}
