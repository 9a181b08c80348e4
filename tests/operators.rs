//! What operators rely on: the `/metrics` series (through real deliveries, REST calls, RLS
//! checks, refused tokens and disconnects), `METRICS_TOKEN`, and the drain on shutdown (readiness
//! off at once while sessions stay open, new upgrades refused, REST still served, sessions closed
//! with 1001 spread over the window, an in-flight REST call answered).

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use supabase_standin::rest::faults::Fault;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::common::{Phone, World, ARRIVES};

/// The sample lines of `/metrics` (name with labels → value).
async fn scrape(world: &World) -> (String, Vec<(String, f64)>) {
    let text = world.http.get(format!("{}/metrics", world.base())).send().await.expect("metrics");
    let text = text.text().await.expect("metrics text");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(series, v)| Some((series.to_string(), v.parse().ok()?))))
        .collect();
    (text, samples)
}

/// Waits until the series reaches `at_least` (effects recorded by other tasks land a moment
/// later); returns its value. Panics after [`ARRIVES`].
async fn reaches(world: &World, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + ARRIVES;
    loop {
        let (text, samples) = scrape(world).await;
        let value = samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        if value.is_some_and(|v| v >= at_least) {
            return value.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "{series} never reached {at_least} (is {value:?}):\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_deliveries_rest_rls_refused_tokens_and_disconnects() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let id = world.post(&ALICE, CLASS_3B_PARENTS, "measured").await;
    carla.receive_until(id).await;
    reaches(&world, "gateway_delivery_latency_seconds_count", 1.0).await;

    carla.send_json(json!({"type": "subscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    carla.expect("thread_subscribed").await;
    reaches(&world, "gateway_rls_check_duration_seconds_count", 1.0).await;
    reaches(&world, "gateway_postgrest_request_duration_seconds_count{call=\"threads\",outcome=\"ok\"}", 1.0).await;

    let (status, _) = world.rest(Method::GET, "/api/chat/unread-count", Some(&world.token(&CARLA))).await;
    assert_eq!(status, 200);
    reaches(
        &world,
        "gateway_rest_request_duration_seconds_count{route=\"/api/chat/unread-count\",status=\"200\"}",
        1.0,
    )
    .await;
    reaches(
        &world,
        "gateway_postgrest_request_duration_seconds_count{call=\"rpc/chat_unread_count\",outcome=\"ok\"}",
        1.0,
    )
    .await;
    let path = format!("/api/chat/mark-read/{CLASS_3B_PARENTS}");
    let (status, _) = world.rest(Method::POST, &path, None).await;
    assert_eq!(status, 401);
    reaches(
        &world,
        "gateway_rest_request_duration_seconds_count{route=\"/api/chat/mark-read/:thread_id\",status=\"401\"}",
        1.0,
    )
    .await;
    reaches(&world, "gateway_auth_failures_total{via=\"rest\",reason=\"missing\"}", 1.0).await;
    let forged = format!("{}x", world.token(&DAVID));
    let (status, _) = world.rest(Method::GET, "/api/chat/unread-count", Some(&forged)).await;
    assert_eq!(status, 401);
    reaches(&world, "gateway_auth_failures_total{via=\"rest\",reason=\"bad_signature\"}", 1.0).await;
    let refused = Phone::connect(&format!("{}?token={forged}", world.ws_base())).await;
    assert!(refused.is_err(), "a forged token is refused at the upgrade");
    reaches(&world, "gateway_auth_failures_total{via=\"websocket\",reason=\"bad_signature\"}", 1.0).await;

    carla.ws.close(None).await.expect("close");
    reaches(&world, "gateway_disconnects_total{code=\"0\",reason=\"client_gone\"}", 1.0).await;
    reaches(&world, "gateway_sessions", 0.0).await;

    let (text, samples) = scrape(&world).await;
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert!(value("gateway_process_resident_memory_bytes").is_some_and(|v| v > 1e6), "{text}");
    assert!(value("gateway_process_open_fds").is_some_and(|v| v >= 3.0), "{text}");
    assert_eq!(value(&format!("gateway_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), Some(1.0));
    assert_eq!(value("gateway_ready"), Some(1.0));
    assert_eq!(value("gateway_upstream_ready"), Some(1.0), "the old name still works");
    assert!(value("gateway_edge_open_connections").is_some_and(|v| v >= 1.0), "this scrape's own connection");
    // Every series is the gateway's and documented.
    for (series, _) in &samples {
        assert!(series.starts_with("gateway_"), "{series}");
        let family = series.split('{').next().unwrap_or_default();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| family.strip_suffix(s)).unwrap_or(family);
        assert!(text.contains(&format!("# HELP {base} ")), "{base} has no # HELP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    const TOKEN: &str = "metrics-token-0123456789";
    let world = World::start_with(|c| c.ops.metrics_token = Some(TOKEN.into())).await;
    let url = format!("{}/metrics", world.base());
    for refused in [world.http.get(&url), world.http.get(&url).bearer_auth("metrics-token-wrong-0000")] {
        let response = refused.send().await.expect("answer");
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.expect("JSON error");
        assert_eq!(body["status"], "error", "{body}");
    }
    let response = world.http.get(&url).bearer_auth(TOKEN).send().await.expect("answer");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.expect("text").contains("gateway_sessions "));
}

/// A phone's close, as (when it arrived, code, reason).
async fn closed(mut phone: Phone) -> (Instant, u16, String) {
    loop {
        match tokio::time::timeout(ARRIVES * 2, phone.ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (Instant::now(), u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes_sessions_spread_over_the_window() {
    // Drain 1.5 s; grace 6 s: sessions are closed within 3.6 s (4.5 s less a 0.9 s tail).
    let (drain, grace) = (Duration::from_millis(1500), Duration::from_secs(6));
    let window = realtime_gateway::server::close_window(grace, drain);
    let mut world = World::start_with(|c| {
        c.shutdown.drain = drain;
        c.shutdown.grace = grace;
        // 10 per second: 20 sessions take 1.9 s (the default 500/s would close them in 40 ms).
        c.shutdown.close_rate = 10.0;
        c.backend_timeout = Duration::from_secs(20);
    })
    .await;
    let mut phones = Vec::new();
    for i in 0..20 {
        phones.push(world.phone(if i % 2 == 0 { &CARLA } else { &DAVID }).await);
    }
    // A REST call held by the database across the drain.
    let faults = world.stack.rest_faults();
    faults.add("chat_unread_count", Fault::Stall(Duration::from_millis(5500)), Some(1));
    let request = world.http.get(format!("{}/api/chat/unread-count", world.base())).bearer_auth(world.token(&CARLA));
    let in_flight = tokio::spawn(request.send());
    let deadline = Instant::now() + ARRIVES;
    while faults.hits() == 0 {
        assert!(Instant::now() < deadline, "the REST call never reached the database");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let gateway = world.gateway.take().expect("running");
    let (base, ws_base) = (format!("http://{}", gateway.local_addr()), format!("ws://{}/", gateway.local_addr()));
    let closing = tokio::spawn(gateway.shutdown());
    // Not ready at once...
    let deadline = Instant::now() + ARRIVES;
    let readyz = loop {
        let answer = world.http.get(format!("{base}/readyz")).send().await.expect("still listening");
        if answer.status() == 503 {
            break answer.json::<serde_json::Value>().await.expect("JSON");
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
    };
    assert_eq!(readyz["status"], "draining", "{readyz}");
    // ...while the open sessions stay open and served,
    phones[0].send_json(json!({"type": "ping"})).await;
    phones[0].expect("pong").await;
    // new WebSocket upgrades are refused (another instance takes them),
    match Phone::connect(&format!("{ws_base}?token={}", world.token(&CARLA))).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("an upgrade during the drain must get 503, got {:?}", other.map(|_| "a socket")),
    }
    // and REST is still served.
    let answer = world.http.get(format!("{base}/api/chat/unread-count")).bearer_auth(world.token(&DAVID)).send();
    assert_eq!(answer.await.expect("answered").status(), 200);

    let closes: Vec<_> = phones.into_iter().map(|phone| tokio::spawn(closed(phone))).collect();
    let mut times = Vec::new();
    for close in closes {
        let (at, code, reason) = close.await.expect("reader");
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        times.push(at);
    }
    let (first, last) = (times.iter().min().copied(), times.iter().max().copied());
    let spread = last.zip(first).map(|(l, f)| l - f).unwrap_or_default();
    assert!(
        spread > window / 10,
        "20 closes over a {window:?} window must not all come within its first tenth (spread {spread:?})"
    );

    let answer = in_flight.await.expect("task").expect("the in-flight REST call is answered");
    assert_eq!(answer.status(), 200, "the call started before the shutdown gets its answer");
    closing.await.expect("shutdown completes");
}
