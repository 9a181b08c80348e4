//! The operator page (`/admin`): off without `ADMIN_TOKEN`; in headless Chromium (Debian's
//! `/usr/bin/chromium`, driven by `tests/node/admin.mjs` through playwright-core), a wrong
//! token is refused, the right one shows a connected phone's user, and "Disconnect" closes the
//! phone's socket with 1008 "disconnected by an operator", with no Content-Security-Policy
//! violation. Every `/admin` answer carries a CSP without inline code, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer`. The overview and `/metrics` show the push queue as the gateway
//! last read it, on both backends. Fails (never skips) when Node, the npm
//! packages or Chromium are missing: run `scripts/setup` first.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use supabase_standin::seed::{ALICE, BRUNO, CARLA, CLASS_3B_PARENTS};
use tokio_tungstenite::tungstenite::Message;

use crate::common::node::{self, Script};
use crate::common::{Backend, World, ARRIVES};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_there_is_no_admin_page() {
    let world = World::start().await;
    for (method, path) in [
        (Method::GET, "/admin"),
        (Method::GET, "/admin/api/overview"),
        (Method::POST, "/admin/api/users/a0000000-0000-4000-8000-000000000001/disconnect"),
    ] {
        let (status, body) = world.rest(method, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_forbids_framing_referrers_and_any_inline_or_foreign_code() {
    let world = World::start_with(|c| c.ops.admin_token = Some(ADMIN_TOKEN.into())).await;
    for path in ["/admin", "/admin/page.js", "/admin/page.css", "/admin/api/overview"] {
        let response =
            world.http.get(format!("{}{path}", world.base())).bearer_auth(ADMIN_TOKEN).send().await.expect("answer");
        assert_eq!(response.status(), 200, "{path}");
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} missing from {csp:?}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        if path == "/admin" {
            let html = response.text().await.expect("page");
            assert!(!html.contains("<style"), "no inline styles: the CSP would block them");
            assert!(
                html.match_indices("<script").all(|(i, _)| html[i..].starts_with("<script src=")),
                "no inline scripts: the CSP would block them"
            );
            assert!(!html.contains(" style=") && !html.contains(" onclick="), "no inline attributes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_sees_a_phone_and_disconnects_it_in_chromium() {
    node::require_chromium();
    let world = World::start_with(|c| c.ops.admin_token = Some(ADMIN_TOKEN.into())).await;
    let mut phone = world.phone(&CARLA).await;
    let close = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(ARRIVES * 3, phone.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    });

    let mut script = Script::spawn(
        node::command(&node::tests_dir()).arg("admin.mjs").arg(world.base()).arg(ADMIN_TOKEN).arg(CARLA.id.to_string()),
    );
    let result = script.next_json(ARRIVES * 3, "the browser driver answers in time").await;
    assert!(result["error"].is_null(), "in the browser: {result}");
    assert_eq!(result["wrongTokenError"], "The token was refused.", "{result}");
    assert_eq!(result["dashboardHiddenAfterWrongToken"], true, "{result}");
    assert_eq!(result["sawUser"], true, "{result}");
    assert_eq!(result["sessions"], "1", "{result}");
    assert_eq!(result["upstream"], "live", "{result}");
    assert_eq!(result["ready"], "ready", "{result}");
    assert_eq!(result["storedInSession"], true, "{result}");
    assert!(result["rate"].as_str().and_then(|r| r.parse::<f64>().ok()).is_some(), "{result}");
    assert_eq!(result["listedDisconnect"], "operator", "{result}");
    assert_eq!(result["pushPending"], "0", "the push queue is shown: {result}");
    assert_eq!(result["pushJobsShown"], true, "{result}");
    assert_eq!(result["styled"], true, "{result}");
    assert_eq!(result["cspViolations"], serde_json::json!([]), "{result}");
    for url in result["urls"].as_array().into_iter().flatten() {
        assert!(!url.as_str().unwrap_or_default().contains(ADMIN_TOKEN), "the token went into a URL: {url}");
    }
    let closed = tokio::time::timeout(ARRIVES, close).await.expect("closed in time").expect("reader");
    assert_eq!(closed, Some((1008, "disconnected by an operator".to_string())));
    let status =
        tokio::time::timeout(Duration::from_secs(30), script.child.wait()).await.expect("exits").expect("status");
    assert!(status.success());
}

/// A webhook receiver that refuses Carla's pushes (503: she stays pending, retried) and takes
/// everyone else's.
async fn refusing_carla() -> String {
    use warp::Filter;
    let route = warp::post().and(warp::path("hook")).and(warp::body::bytes()).map(|body: hyper::body::Bytes| {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let status = if body["user_id"] == CARLA.id.to_string() { 503 } else { 200 };
        warp::reply::with_status("", warp::http::StatusCode::from_u16(status).expect("a status"))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the receiver binds");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}/hook")
}

async fn the_admin_api_and_the_metrics_show_the_push_queue(backend: Backend) {
    let url = refusing_carla().await;
    let world = World::start_on(backend, |c| {
        c.ops.admin_token = Some(ADMIN_TOKEN.into());
        crate::push::with_webhook(url)(c);
    })
    .await;
    let _bruno = world.phone(&BRUNO).await;
    let message = world.post(&ALICE, CLASS_3B_PARENTS, "Pick-up moved to 2 pm").await;
    let db = world.stack.sql().await;
    let others: i64 = db
        .query_one(
            "select count(*) from public.thread_participants where thread_id = $1 and user_id not in ($2, $3)",
            &[&CLASS_3B_PARENTS, &ALICE.id, &CARLA.id],
        )
        .await
        .expect("participants")
        .get(0);
    assert!(others >= 1, "parents besides Carla");

    // Read every few seconds by the decision loop: wait for a reading after the sends.
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    let queue = loop {
        let (status, body) = world.rest(Method::GET, "/admin/api/overview", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let queue = body["push_queue"].clone();
        if queue["finished_last_hour"]["sent"].as_i64() == Some(others) && queue["pending"].as_i64() >= Some(1) {
            break queue;
        }
        assert!(tokio::time::Instant::now() < deadline, "the queue never showed the sends: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(queue["pending"], 1, "Carla's push waits for a retry: {queue}");
    assert_eq!(queue["jobs"], 0, "the message was decided: {queue}");
    assert!(queue["oldest_job_at"].is_null(), "{queue}");
    assert!(queue["presence"].as_i64() >= Some(1), "Bruno is online: {queue}");
    assert!(queue["read_at"].as_str().is_some(), "{queue}");
    let carla: String = db
        .query_one(
            "select state from public.chat_push_deliveries where message_id = $1 and user_id = $2",
            &[&message, &CARLA.id],
        )
        .await
        .expect("Carla's delivery")
        .get(0);
    assert_eq!(carla, "pending");

    assert_eq!(
        world.metric(r#"gateway_push_queue_finished_last_hour{state="sent"}"#).await,
        u64::try_from(others).expect("a count")
    );
    assert_eq!(world.metric("gateway_push_queue_pending").await, 1);
    assert_eq!(world.metric("gateway_push_queue_jobs").await, 0);
    assert_eq!(world.metric("gateway_push_queue_oldest_job_seconds").await, 0);
    assert!(world.metric("gateway_push_presence_users").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_metrics_show_the_push_queue_on_supabase() {
    the_admin_api_and_the_metrics_show_the_push_queue(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_metrics_show_the_push_queue_on_postgres() {
    the_admin_api_and_the_metrics_show_the_push_queue(Backend::Postgres).await;
}
