//! The push endpoints through the gateway, on both backends: devices registered, listed and
//! removed as their owner (row-level security decides), at most a bounded number per user without
//! ever refusing a new one, and a thread muted through REST or PostgREST, nothing else changed.

use reqwest::Method;
use serde_json::{json, Value};
use supabase_standin::seed::{Person, ALICE, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID};
use uuid::Uuid;

use crate::common::{Backend, World};

const DEVICES: &str = "/api/chat/devices";
const P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

async fn register(world: &World, who: &Person, device: Value) -> Uuid {
    let (status, body) = world.rest_with(Method::POST, DEVICES, Some(&world.token(who)), Some(&device)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["id"], body["id"], "data mirrored at the top level");
    body["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()).expect("a device id")
}

async fn devices(world: &World, who: &Person) -> Vec<Value> {
    let (status, body) = world.rest(Method::GET, DEVICES, Some(&world.token(who))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], body["data"]["devices"].as_array().map_or(0, Vec::len));
    body["data"]["devices"].as_array().cloned().unwrap_or_default()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|d| d["id"].as_str().unwrap_or_default().to_string()).collect()
}

async fn one_device_one_row_owned_by_whoever_registered_it_last(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let phone = json!({"platform": "fcm", "token": "fcm-token-shared-phone", "locale": "en-GB"});
    let first = register(&world, &CARLA, phone.clone()).await;
    let again = register(&world, &CARLA, json!({"platform": "fcm", "token": "fcm-token-shared-phone"})).await;
    assert_eq!(first, again, "the same token registered twice is one device");
    let browser = json!({"platform": "webpush", "subscription": {
        "endpoint": "https://push.example/send/carla", "expirationTime": null,
        "keys": {"p256dh": P256DH, "auth": AUTH}}});
    let web = register(&world, &CARLA, browser).await;
    let listed = devices(&world, &CARLA).await;
    assert_eq!(ids(&listed), [web.to_string(), first.to_string()], "newest first");
    assert_eq!(listed[1]["locale"], "en-GB", "a re-registration without a locale keeps it");
    assert_eq!(listed[0]["endpoint"], "https://push.example/send/carla");
    let text = serde_json::to_string(&listed).expect("json");
    assert!(!text.contains(P256DH) && !text.contains(AUTH), "the subscription's keys are never listed: {text}");

    // David signs in on Carla's old phone: the token is his now, and Carla's list loses it.
    let moved = register(&world, &DAVID, phone).await;
    assert_eq!(moved, first);
    assert_eq!(ids(&devices(&world, &DAVID).await), [first.to_string()]);
    assert_eq!(ids(&devices(&world, &CARLA).await), [web.to_string()]);
    let db = world.stack.sql().await;
    let rows: i64 = db
        .query_one("select count(*) from public.push_devices where token = 'fcm-token-shared-phone'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_is_one_row_owned_by_whoever_registered_it_last_on_supabase() {
    one_device_one_row_owned_by_whoever_registered_it_last(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_is_one_row_owned_by_whoever_registered_it_last_on_postgres() {
    one_device_one_row_owned_by_whoever_registered_it_last(Backend::Postgres).await;
}

async fn only_own_devices_are_removed(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let carlas = register(&world, &CARLA, json!({"platform": "apns", "token": "a1b2c3d4e5f60718"})).await;
    let davids = register(&world, &DAVID, json!({"platform": "expo", "token": "ExponentPushToken[david]"})).await;
    let carla = world.token(&CARLA);
    let (status, body) = world.rest(Method::DELETE, &format!("{DEVICES}/{davids}"), Some(&carla)).await;
    assert_eq!(status, 404, "another user's device reads as absent: {body}");
    assert_eq!(body["status"], "error");
    assert_eq!(ids(&devices(&world, &DAVID).await), [davids.to_string()], "and stays");
    let (status, body) = world.rest(Method::DELETE, &format!("{DEVICES}/{carlas}"), Some(&carla)).await;
    assert_eq!((status, body), (204, Value::Null), "removed, no body");
    assert!(devices(&world, &CARLA).await.is_empty());
    let (status, _) = world.rest(Method::DELETE, &format!("{DEVICES}/{carlas}"), Some(&carla)).await;
    assert_eq!(status, 404, "removing twice: gone already");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removes_only_their_own_devices_on_supabase() {
    only_own_devices_are_removed(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removes_only_their_own_devices_on_postgres() {
    only_own_devices_are_removed(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_keeps_at_most_twenty_devices_and_a_new_registration_always_succeeds() {
    let world = World::start().await;
    let mut registered = Vec::new();
    for n in 0..23 {
        registered.push(register(&world, &CARLA, json!({"platform": "fcm", "token": format!("token-{n:02}")})).await);
    }
    let kept = devices(&world, &CARLA).await;
    assert_eq!(kept.len(), 20);
    let kept = ids(&kept);
    for gone in &registered[..3] {
        assert!(!kept.contains(&gone.to_string()), "the three registered longest ago were removed");
    }
    assert!(kept.contains(&registered[22].to_string()), "the newest is kept");
    // Registering the oldest kept device again makes it the newest: the next new one evicts the
    // stalest other device instead.
    let refreshed = register(&world, &CARLA, json!({"platform": "fcm", "token": "token-03"})).await;
    assert_eq!(refreshed, registered[3]);
    register(&world, &CARLA, json!({"platform": "fcm", "token": "token-23"})).await;
    let kept = ids(&devices(&world, &CARLA).await);
    assert_eq!(kept.len(), 20);
    assert!(kept.contains(&registered[3].to_string()));
    assert!(!kept.contains(&registered[4].to_string()));
}

async fn muted_until(world: &World, who: &Person, thread: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    let db = world.stack.sql().await;
    db.query_one(
        "select muted_until from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&thread, &who.id],
    )
    .await
    .expect("a participant")
    .get(0)
}

async fn mute_through_rest(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let path = format!("/api/chat/threads/{CLASS_3B_PARENTS}/mute");
    let carla = world.token(&CARLA);
    let (status, body) =
        world.rest_with(Method::POST, &path, Some(&carla), Some(&json!({"until": "2030-01-01T08:00:00+01:00"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["muted_until"], "2030-01-01T07:00:00.000000Z");
    assert_eq!(body["muted_until"], body["data"]["muted_until"]);
    let stored = muted_until(&world, &CARLA, CLASS_3B_PARENTS).await.expect("muted");
    assert_eq!(stored.to_rfc3339(), "2030-01-01T07:00:00+00:00");
    assert_eq!(muted_until(&world, &ALICE, CLASS_3B_PARENTS).await, None, "only the caller's row");

    let (status, body) = world.rest_with(Method::POST, &path, Some(&carla), Some(&json!({"until": null}))).await;
    assert_eq!((status, &body["data"]["muted_until"]), (200, &Value::Null), "{body}");
    assert_eq!(muted_until(&world, &CARLA, CLASS_3B_PARENTS).await, None);

    let other = format!("/api/chat/threads/{CLASS_4A_PARENTS}/mute");
    let (status, body) = world.rest_with(Method::POST, &other, Some(&carla), Some(&json!({"until": null}))).await;
    assert_eq!(status, 403, "not a participant: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_is_muted_and_unmuted_through_rest_on_supabase() {
    mute_through_rest(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_is_muted_and_unmuted_through_rest_on_postgres() {
    mute_through_rest(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_lets_a_participant_set_their_own_mute_and_nothing_more() {
    let world = World::start().await;
    let rest = format!("{}/rest/v1/thread_participants", world.stack.url());
    let patch = |query: String, body: Value| {
        world
            .http
            .patch(format!("{rest}?{query}"))
            .header("apikey", &world.stack.keys().anon_key)
            .bearer_auth(world.token(&CARLA))
            .header("Prefer", "return=representation")
            .json(&body)
    };
    let own = format!("thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}", CARLA.id);
    let answer = patch(own.clone(), json!({"muted_until": "2031-05-01T00:00:00Z"})).send().await.expect("PostgREST");
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
    assert!(muted_until(&world, &CARLA, CLASS_3B_PARENTS).await.is_some());

    // Someone else's row: row-level security hides it, nothing changes.
    let alices = format!("thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}", ALICE.id);
    let answer = patch(alices, json!({"muted_until": "2031-05-01T00:00:00Z"})).send().await.expect("PostgREST");
    let rows: Value = answer.json().await.expect("json");
    assert_eq!(rows, json!([]), "no row of another user is updated");
    assert_eq!(muted_until(&world, &ALICE, CLASS_3B_PARENTS).await, None);

    // A column the user may not update stays as it is.
    let answer = patch(own, json!({"joined_at": "2000-01-01T00:00:00Z"})).send().await.expect("PostgREST");
    assert!(matches!(answer.status().as_u16(), 401 | 403), "joined_at is not the user's to set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_registers_lists_mutes_and_removes_devices() {
    let dir = crate::common::node::library_dir();
    crate::common::node::require(&dir, &["dist/index.js"]);
    let world = World::start().await;
    let output = crate::common::node::command(&dir)
        .arg("e2e/devices.mjs")
        .arg(world.base())
        .arg(world.token(&CARLA))
        .arg(CLASS_3B_PARENTS.to_string())
        .output()
        .await
        .expect("node must be installed");
    assert!(output.status.success(), "e2e/devices.mjs failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let got: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(got["fcm"], got["fcmAgain"], "registering again keeps the id: {got}");
    assert_eq!(got["listed"], json!([got["web"], got["fcm"]]), "newest first: {got}");
    assert_eq!(got["muted"], "2030-06-01T00:00:00.000000Z");
    assert_eq!(got["unmuted"], Value::Null);
    assert_eq!(got["after"], json!([got["web"]]), "the FCM device is gone: {got}");
    assert_eq!(got["refused"]["name"], "ChatRestError");
    assert_eq!(got["refused"]["status"], 400);
    assert!(got["refused"]["message"].as_str().is_some_and(|m| m.contains("hex")), "{got}");
    let db = world.stack.sql().await;
    let row = db
        .query_one("select count(*), min(endpoint) from public.push_devices where user_id = $1", &[&CARLA.id])
        .await
        .expect("devices");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("https://push.example/send/library"));
}
