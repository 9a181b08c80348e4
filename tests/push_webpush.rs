//! Web Push end to end: two gateway instances with a VAPID key, the Web Push service stand-in,
//! and a browser subscription registered for Carla, who has no app open. She gets exactly one
//! push per message; each push's VAPID token is verified and its payload decrypted by Node's own
//! crypto from the RFCs (`tests/node/webpush-receive.mjs`), never by the gateway's code. A push
//! service answering 410 makes the gateway delete the subscription.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use supabase_standin::push::webpush::{PushRequest, WebPushService};
use supabase_standin::seed::{Person, ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

use crate::common::{Backend, World, ARRIVES};

/// A test-only VAPID key pair (base64url, as `npx web-push generate-vapid-keys` prints it).
const VAPID_PRIVATE: &str = "8K0tY1TO0eV1Wg0nw8PDh28dnO7r0oOM7TbXhTvBhgQ";
const VAPID_PUBLIC: &str = "BP7FkbjA2lZfpVx7rL-mKogAbH2Sjb6RWYDFvzrg1Jj9NWyL5W5DNIORhD66o8T_07h3CFSjUMBarSN3iT3MI9w";
const VAPID_SUBJECT: &str = "mailto:it@school.example";
/// The browser's side: RFC 8291's example receiver key pair and auth secret.
const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
const UA_PUBLIC: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const UA_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

/// Web Push on, with the test VAPID key, trusting the push service stand-in's CA, and a short
/// decision delay.
pub(crate) fn with_vapid(c: &mut realtime_gateway::config::Config) {
    let key = realtime_gateway::config::decode_vapid_key(VAPID_PRIVATE).expect("the test key");
    c.push.vapid = Some(realtime_gateway::config::Vapid { key, subject: VAPID_SUBJECT.into() });
    c.push.webpush_roots = Some(supabase_standin::push::webpush::CA_PEM.into());
    c.push.delay = Duration::from_millis(300);
}

/// Registers a device of `who` through the database function, as that user; returns its id.
pub(crate) async fn register(
    world: &World,
    who: &Person,
    platform: &str,
    token: Option<&str>,
    endpoint: Option<&str>,
) -> Uuid {
    let db = crate::push_queue::user(world, who).await;
    let (p256dh, auth) = if platform == "webpush" { (Some(UA_PUBLIC), Some(UA_AUTH)) } else { (None, None) };
    db.query_one(
        "select public.chat_register_push_device($1, $2, $3, $4, $5, 'en')",
        &[&platform, &token, &endpoint, &p256dh, &auth],
    )
    .await
    .expect("a device registered")
    .get(0)
}

/// Waits until the device row is gone (the provider reported it gone).
pub(crate) async fn until_deleted(world: &World, device: Uuid) {
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    loop {
        let n: i64 = db
            .query_one("select count(*) from public.push_devices where id = $1", &[&device])
            .await
            .expect("devices")
            .get(0);
        if n == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "device {device} was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the service has accepted `count` pushes.
async fn until_accepted(service: &WebPushService, count: usize) -> Vec<PushRequest> {
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    loop {
        let accepted: Vec<PushRequest> = service.received().into_iter().filter(|r| r.status == 201).collect();
        if accepted.len() >= count {
            return accepted;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} pushes, wanted {count}: {:?}", accepted.len(), accepted);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each request checked and decrypted by `tests/node/webpush-receive.mjs`: its payloads.
async fn decrypted_by_node(endpoint: &str, requests: &[PushRequest]) -> Vec<Value> {
    use tokio::io::AsyncWriteExt;
    let job = json!({
        "ua_private": UA_PRIVATE, "ua_public": UA_PUBLIC, "auth": UA_AUTH, "vapid_public": VAPID_PUBLIC,
        "requests": requests.iter().map(|r| json!({
            "endpoint": endpoint,
            "authorization": r.header("authorization"),
            "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
        })).collect::<Vec<_>>(),
    });
    let dir = crate::common::node::tests_dir();
    let mut child = crate::common::node::command(&dir)
        .arg("webpush-receive.mjs")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(job.to_string().as_bytes()).await.expect("written");
    drop(stdin);
    let out = child.wait_with_output().await.expect("node ends");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), requests.len(), "one verdict per request: {lines:?}");
    lines
        .into_iter()
        .map(|line| {
            assert_eq!(line["ok"], true, "Node refused a push: {line}");
            line["payload"].clone()
        })
        .collect()
}

async fn an_offline_subscriber_gets_one_push_per_message_decrypted_by_node(backend: Backend) {
    let service = WebPushService::start().await.expect("the push service starts");
    let world = World::start_on(backend, with_vapid).await;
    let second = world.another_gateway(with_vapid).await;
    let endpoint = service.endpoint("carla-laptop");
    register(&world, &CARLA, "webpush", None, Some(&endpoint)).await;

    let first = world.post(&ALICE, ALICE_CARLA, "Pick-up moved to 2 pm").await;
    until_accepted(&service, 1).await;
    let later = world.post(&ALICE, CLASS_3B_PARENTS, "Bring a coat tomorrow").await;
    let accepted = until_accepted(&service, 2).await;

    let payloads = decrypted_by_node(&endpoint, &accepted).await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for p in &payloads {
        *per_message.entry(p["message_id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    assert_eq!(
        per_message,
        HashMap::from([(first.to_string(), 1), (later.to_string(), 1)]),
        "one push per message across both instances: {payloads:?}"
    );
    let push = payloads.iter().find(|p| p["message_id"] == first.to_string()).expect("the first push");
    assert_eq!(push["type"], "offline_message");
    assert_eq!(push["thread_id"], ALICE_CARLA.to_string());
    assert_eq!(push["preview"], "Pick-up moved to 2 pm");
    assert_eq!(push["sender"], json!({"full_name": "Alice Martin", "role": "teacher"}));
    assert!(push["unread_count"].as_i64().is_some_and(|n| n >= 1), "{push}");
    assert!(push["delivery_id"].as_str().is_some_and(|id| Uuid::parse_str(id).is_ok()), "{push}");

    let request = &accepted[0];
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(request.header("urgency"), Some("high"));
    assert!(request.header("ttl").and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t > 0));
    let topics: Vec<Option<&str>> = accepted.iter().map(|r| r.header("topic")).collect();
    assert!(topics.iter().all(|t| t.is_some_and(|t| !t.is_empty() && t.len() <= 32)), "{topics:?}");
    assert_ne!(topics[0], topics[1], "one topic per thread");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_subscriber_gets_one_web_push_per_message_decrypted_by_node_on_supabase() {
    an_offline_subscriber_gets_one_push_per_message_decrypted_by_node(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_subscriber_gets_one_web_push_per_message_decrypted_by_node_on_postgres() {
    an_offline_subscriber_gets_one_push_per_message_decrypted_by_node(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_push_service_reports_gone_is_deleted() {
    let service = WebPushService::start().await.expect("the push service starts");
    service.answer_next(&[410]);
    let world = World::start_with(with_vapid).await;
    let device = register(&world, &CARLA, "webpush", None, Some(&service.endpoint("carla-old-browser"))).await;
    world.post(&ALICE, ALICE_CARLA, "Did you get the form?").await;
    until_deleted(&world, device).await;
    let received = service.received();
    assert_eq!(received.iter().map(|r| r.status).collect::<Vec<_>>(), [410], "one try, not retried: {received:?}");
    let gone = r#"gateway_push_attempts_total{channel="webpush",outcome="gone"}"#;
    assert_eq!(world.metric(gone).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vapid_public_key_is_served_to_signed_in_users_only_when_configured() {
    let world = World::start_with(with_vapid).await;
    let token = world.token(&CARLA);
    let path = "/api/chat/push/vapid-public-key";
    let (status, body) = world.rest(reqwest::Method::GET, path, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "success", "data": {"public_key": VAPID_PUBLIC}, "public_key": VAPID_PUBLIC}));
    assert_eq!(world.rest(reqwest::Method::GET, path, None).await.0, 401);

    let off = World::start().await;
    let (status, body) = off.rest(reqwest::Method::GET, path, Some(&off.token(&CARLA))).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["status"], "error");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("Web Push")), "{body}");
}
