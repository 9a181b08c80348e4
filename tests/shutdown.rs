//! Shutdown of the `realtime-gateway` process itself: SIGTERM with a few sessions open exits soon
//! after `DRAIN_SECS` with the default configuration (closes are paced by `DRAIN_CLOSE_RATE`, not
//! spread over the whole grace period whatever their number); a second signal exits at once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use supabase_standin::seed::{CARLA, DAVID};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Phone, World, ARRIVES};

const BINARY: &str = env!("CARGO_BIN_EXE_realtime-gateway");
/// The default `DRAIN_SECS`.
const DRAIN: Duration = Duration::from_secs(5);

/// The code of the close frame a phone gets (pings and other frames skipped).
async fn close_code(mut phone: Phone) -> Option<u16> {
    loop {
        match tokio::time::timeout(ARRIVES * 3, phone.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// The `realtime-gateway` process with the default settings (SHUTDOWN_GRACE_SECS 30, DRAIN_SECS 5,
/// DRAIN_CLOSE_RATE 500), in an empty directory so that no `.env` is read; ready, with its address.
async fn spawn_gateway(world: &World) -> (tokio::process::Child, String) {
    let keys = world.stack.keys();
    let dir = std::env::temp_dir().join(format!("gateway-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = tokio::process::Command::new(BINARY)
        .current_dir(&dir)
        .env_clear()
        .env("SUPABASE_URL", world.stack.url())
        .env("SUPABASE_ANON_KEY", &keys.anon_key)
        .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
        .env("SUPABASE_JWT_SECRET", &keys.jwt_secret)
        .env("PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("LOG_FORMAT", "text")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let addr = tokio::time::timeout(ARRIVES, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("gateway listening") {
                let addr = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next());
                return addr.map(str::to_string);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the gateway logs the address it listens on");
    // Keep reading its log, so that a full pipe never blocks the process.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while http.get(format!("http://{addr}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "the gateway process never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_two_sessions_exits_within_the_drain_plus_two_seconds() {
    let world = World::start().await;
    let (mut child, addr) = spawn_gateway(&world).await;
    let mut phones = Vec::new();
    for who in [&CARLA, &DAVID] {
        let url = format!("ws://{addr}/?token={}", world.token(who));
        let mut phone = Phone::connect(&url).await.expect("connects");
        assert_eq!(phone.next_json().await.expect("hello")["type"], "connection_established");
        phones.push(tokio::spawn(close_code(phone)));
    }

    let pid = child.id().expect("running").to_string();
    let sent = Instant::now();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(kill.success(), "SIGTERM sent");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the gateway exits well within its 30 s grace period")
        .expect("wait");
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    for phone in phones {
        assert_eq!(phone.await.expect("reader"), Some(1001), "closed with 1001 going away");
    }
    // The bound: two sessions close right after the drain, then the process is gone.
    assert!(took <= DRAIN + Duration::from_secs(2), "exited {took:?} after SIGTERM; the bound is DRAIN_SECS + 2 s");
    assert!(took >= DRAIN, "sessions stay open for the whole drain ({took:?})");
}

/// Ctrl-C pressed twice (a second signal during the drain) stops at once: the process is gone long
/// before the drain would end, and its port can be bound again right away (a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once_and_frees_the_port() {
    let world = World::start().await;
    let (mut child, addr) = spawn_gateway(&world).await;
    let url = format!("ws://{addr}/?token={}", world.token(&CARLA));
    let mut phone = Phone::connect(&url).await.expect("connects");
    assert_eq!(phone.next_json().await.expect("hello")["type"], "connection_established");
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill runs").success());
    // Draining: /readyz answers 503 (the first signal was handled) before the second one is sent.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while http.get(format!("http://{addr}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(503) {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never started draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill runs").success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status:?}");
    // Gone within the drain: the session never got the drain's 1001, the socket just ended.
    assert_eq!(close_code(phone).await, None, "no 1001: the process left before the drain ended");
    std::net::TcpListener::bind(&addr).expect("the port is free for a restart right away");
}
