//! Before authentication: connection and handshake caps, the request-head size limit and
//! timeout, CORS for the web build of the app, and `Origin` on the WebSocket upgrade.

use std::time::Duration;

use reqwest::Method;
use supabase_standin::seed::CARLA;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::common::{World, ARRIVES};

const WEB_APP: &str = "https://app.school.example";

/// Reads until the server closes; returns what it sent (empty: closed without an answer), or
/// `None` if it neither answered nor closed within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// A plain `GET /healthz` on a new connection: the status line, or `None` when the connection
/// was closed without an answer.
async fn healthz(world: &World) -> Option<String> {
    let mut stream = TcpStream::connect(world.gateway().local_addr()).await.expect("connect");
    let request = "GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let answer = read_until_closed(&mut stream, ARRIVES).await.expect("the gateway answers or closes");
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().filter(|l| !l.is_empty()).map(str::to_string)
}

/// A WebSocket upgrade of Carla with an `Origin` header (or none).
async fn connect_from(world: &World, origin: Option<&str>) -> Result<(), WsError> {
    let url = format!("{}?token={}", world.ws_base(), world.token(&CARLA));
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().expect("header value"));
    }
    tokio_tungstenite::connect_async(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_larger_than_max_header_bytes_gets_431() {
    let world = World::start_with(|c| c.edge.max_header_bytes = 16 * 1024).await;
    let response = world
        .http
        .get(format!("{}/healthz", world.base()))
        .header("x-padding", "a".repeat(64 * 1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 431);
    let (status, _) = world.rest(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "ordinary requests unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_handshakes_are_closed_after_handshake_timeout_secs() {
    let world = World::start_with(|c| c.edge.handshake_timeout = Duration::from_secs(1)).await;
    // Closed within the 1 s timeout plus slack, not held for the 10 s hyper default or longer.
    let bound = Duration::from_secs(6);
    let mut silent = TcpStream::connect(world.gateway().local_addr()).await.expect("connect");
    let mut slow = TcpStream::connect(world.gateway().local_addr()).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n").await.expect("partial head");
    let (silent, slow) = tokio::join!(read_until_closed(&mut silent, bound), read_until_closed(&mut slow, bound));
    assert!(silent.is_some(), "a connection that sends nothing is closed");
    assert!(slow.is_some(), "a connection that never finishes its request head is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_pending_handshakes_are_closed_at_once() {
    let world = World::start_with(|c| {
        c.edge.max_pending_handshakes = 2;
        c.edge.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(world.gateway().local_addr()).await.expect("connect"));
    }
    // Give the accept loop time to admit both silent connections.
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while healthz(&world).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "a third handshake was still admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One of them finishes: there is room again.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        if let Some(status) = healthz(&world).await {
            assert!(status.contains("200"), "{status}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room after a pending connection left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_tcp_connections_are_closed_at_once() {
    // Three connections in all; idle keep-alive connections (the test's own readiness checks)
    // are closed by the server after the 1 s head timeout.
    let world = World::start_with(|c| {
        c.edge.max_tcp_connections = 3;
        c.edge.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut phones = Vec::new();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while phones.len() < 3 {
        let url = format!("{}?token={}", world.ws_base(), world.token(&CARLA));
        match crate::common::Phone::connect(&url).await {
            Ok(phone) => phones.push(phone),
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "three sessions never fitted"),
        }
    }
    assert_eq!(healthz(&world).await, None, "a fourth connection is closed without an answer");
    drop(phones.pop());
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        if let Some(status) = healthz(&world).await {
            assert!(status.contains("200"), "{status}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room after a session closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_allow_origin_only_for_cors_allowed_origins() {
    let world = World::start_with(|c| c.edge.cors_allowed_origins = vec![WEB_APP.into()]).await;
    let url = format!("{}/api/chat/unread-count", world.base());
    let preflight = |origin: &str| {
        world
            .http
            .request(Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight(WEB_APP).await.expect("answer");
    assert_eq!(allowed.status(), 204);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase()
    };
    assert_eq!(header(&allowed, "access-control-allow-origin"), WEB_APP);
    assert!(header(&allowed, "access-control-allow-methods").contains("post"));
    assert!(header(&allowed, "access-control-allow-headers").contains("authorization"));
    let refused = preflight("https://evil.example").await.expect("answer");
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("access-control-allow-origin").is_none());

    let token = world.token(&CARLA);
    let get = |origin: &str| world.http.get(&url).bearer_auth(&token).header("origin", origin).send();
    let from_app = get(WEB_APP).await.expect("answer");
    assert_eq!(from_app.status(), 200);
    assert_eq!(header(&from_app, "access-control-allow-origin"), WEB_APP);
    let from_elsewhere = get("https://evil.example").await.expect("answer");
    assert!(from_elsewhere.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_from_other_origins_are_refused_with_403() {
    let world = World::start_with(|c| c.edge.cors_allowed_origins = vec![WEB_APP.into()]).await;
    connect_from(&world, None).await.expect("phones send no Origin");
    connect_from(&world, Some(WEB_APP)).await.expect("the web app's origin is allowed");
    match connect_from(&world, Some("https://evil.example")).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON error");
            assert_eq!(body["status"], "error", "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("https://evil.example") && message.contains("CORS_ALLOWED_ORIGINS"),
                "the refusal names the origin and the setting that would allow it: {message}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_browser_origin_may_open_a_websocket() {
    let world = World::start().await;
    connect_from(&world, None).await.expect("phones send no Origin");
    let refused = connect_from(&world, Some(WEB_APP)).await;
    assert!(matches!(refused, Err(WsError::Http(ref r)) if r.status() == 403), "{refused:?}");
}
