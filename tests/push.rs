//! Push through the signed webhook, end to end: two gateway instances on one stand-in stack, a
//! local receiver that records every call. Offline participants get exactly one call per message,
//! a participant online on the other instance gets none, nor do the muted or the sender; a
//! receiver failing first gets the same `webhook-id` again; every signature is checked by a
//! second implementation (Python's `hmac`), not by the gateway's own code.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use supabase_standin::seed::{Person, ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, DAVID, EVA};
use uuid::Uuid;
use warp::Filter;

use crate::common::{Backend, Phone, World, ARRIVES};

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One call the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver on port 0: answers with the scripted statuses first, then 200.
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver.script.lock().expect("script").extend(script.iter().copied());
        let state = receiver.clone();
        let route =
            warp::post().and(warp::path("hook")).and(warp::header::headers_cloned()).and(warp::body::bytes()).map(
                move |headers: warp::http::HeaderMap, body: hyper::body::Bytes| {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let status = state.script.lock().expect("script").pop_front().unwrap_or(200);
                    state.calls.lock().expect("calls").push(Call {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                        status,
                    });
                    warp::reply::with_status("", warp::http::StatusCode::from_u16(status).expect("status"))
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the receiver binds");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (receiver, format!("http://{addr}/hook"))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// Waits for a call about `message` to `user`.
    async fn until(&self, message: Uuid, user: Uuid) -> Call {
        let deadline = tokio::time::Instant::now() + ARRIVES * 3;
        loop {
            let found = self.calls().into_iter().find(|c| {
                let body = c.json();
                body["message_id"] == message.to_string() && body["user_id"] == user.to_string() && c.status == 200
            });
            if let Some(call) = found {
                return call;
            }
            assert!(tokio::time::Instant::now() < deadline, "no push for {user} about {message}: {:?}", self.calls());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks every call's signature with Python's hmac (a second implementation of the spec).
pub(crate) fn verified_by_python(calls: &[Call]) {
    use base64::Engine;
    let list: Vec<Value> = calls
        .iter()
        .map(|c| {
            serde_json::json!({"id": c.id, "ts": c.timestamp, "sig": c.signature,
                               "body": base64::engine::general_purpose::STANDARD.encode(&c.body)})
        })
        .collect();
    let script = r#"
import base64, hashlib, hmac, json, sys
key = base64.b64decode(sys.argv[1].split("_", 1)[1])
bad = 0
for c in json.load(sys.stdin):
    signed = c["id"].encode() + b"." + c["ts"].encode() + b"." + base64.b64decode(c["body"])
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if want not in c["sig"].split(" "):
        bad += 1
print("bad", bad)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, SECRET])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(serde_json::to_string(&list).expect("json").as_bytes()).expect("written");
    }
    let out = child.wait_with_output().expect("python3 ends");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bad 0", "every signature verifies");
}

pub(crate) fn with_webhook(url: String) -> impl FnOnce(&mut realtime_gateway::config::Config) {
    move |c| {
        let key = realtime_gateway::config::decode_webhook_secret(SECRET).expect("a valid secret");
        c.push.webhook = Some(realtime_gateway::config::WebhookTarget { url, key });
        c.push.delay = Duration::from_millis(300);
    }
}

async fn mute(world: &World, who: &Person, thread: Uuid) {
    let db = crate::push_queue::user(world, who).await;
    db.execute("select public.chat_mute_thread($1, now() + interval '1 hour')", &[&thread]).await.expect("muted");
}

/// Waits until `who` is online in the presence table (reported by some instance).
/// The delivery of `message` to `user` on `channel` once its sender has recorded the outcome
/// (`id`, `state`, `attempts`). A provider or receiver sees a request before the sender records
/// it (a leased batch is finished in one call after its sends), so a test that saw the request
/// waits here for the record instead of reading it while it is still `pending`.
pub(crate) async fn finished_delivery(world: &World, message: Uuid, user: Uuid, channel: &str) -> (Uuid, String, i32) {
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let row = db
            .query_one(
                "select id, state, attempts from public.chat_push_deliveries
                  where message_id = $1 and user_id = $2 and channel = $3",
                &[&message, &user, &channel],
            )
            .await
            .expect("one delivery");
        let state: String = row.get(1);
        if state != "pending" {
            return (row.get(0), state, row.get(2));
        }
        assert!(tokio::time::Instant::now() < deadline, "the {channel} delivery of {message} stayed pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn reported_online(world: &World, who: &Person) {
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let n: i64 = db
            .query_one(
                "select count(*) from public.chat_push_presence where user_id = $1 and expires_at > now()",
                &[&who.id],
            )
            .await
            .expect("presence")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never reported online", who.full_name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn offline_participants_get_one_push_each_and_nobody_else_gets_one(backend: Backend) {
    let (receiver, url) = Receiver::start(&[]).await;
    let world = World::start_on(backend, with_webhook(url.clone())).await;
    let second = world.another_gateway(with_webhook(url)).await;
    // David has the app open, on the second instance; Eva muted the class; Carla is away.
    let _david = Phone::connect(&format!("ws://{}/?token={}", second.local_addr(), world.token(&DAVID)))
        .await
        .expect("David connects");
    reported_online(&world, &DAVID).await;
    mute(&world, &EVA, CLASS_3B_PARENTS).await;

    let message = world.post(&ALICE, CLASS_3B_PARENTS, "Pick-up moved to 2 pm").await;
    let call = receiver.until(message, CARLA.id).await;
    let body = call.json();
    assert_eq!(body["type"], "offline_message");
    assert_eq!(body["thread_id"], CLASS_3B_PARENTS.to_string());
    assert_eq!(body["preview"], "Pick-up moved to 2 pm");
    assert_eq!(body["sender"]["full_name"], "Alice Martin");
    assert_eq!(body["sender"]["role"], "teacher");
    assert!(body["unread_count"].as_i64().is_some_and(|n| n >= 1), "{body}");

    // A later message decided after the first: by the time its push arrives, every decision
    // about the first was made and sent.
    let later = world.post(&ALICE, ALICE_CARLA, "See you at 2").await;
    receiver.until(later, CARLA.id).await;
    let about_first: Vec<Call> =
        receiver.calls().into_iter().filter(|c| c.json()["message_id"] == message.to_string()).collect();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for c in &about_first {
        *per_user.entry(c.json()["user_id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    assert_eq!(
        per_user,
        HashMap::from([(CARLA.id.to_string(), 1)]),
        "Carla once; not David (online on the other instance), Eva (muted) or Alice (sender)"
    );
    verified_by_python(&receiver.calls());
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_participants_get_one_webhook_call_each_and_nobody_else_on_supabase() {
    offline_participants_get_one_push_each_and_nobody_else_gets_one(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_participants_get_one_webhook_call_each_and_nobody_else_on_postgres() {
    offline_participants_get_one_push_each_and_nobody_else_gets_one(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_first_gets_the_same_webhook_id_again_and_one_delivery() {
    let (receiver, url) = Receiver::start(&[500]).await;
    let world = World::start_with(with_webhook(url)).await;
    let message = world.post(&ALICE, ALICE_CARLA, "Did you get the form?").await;
    let delivered = receiver.until(message, CARLA.id).await;
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "one failure, one success: {calls:?}");
    assert_eq!(calls[0].status, 500);
    assert_eq!(calls[0].id, delivered.id, "the retry carries the same webhook-id");
    assert_eq!(calls[0].body, delivered.body, "and the same body");
    verified_by_python(&calls);
    let (_, state, attempts) = finished_delivery(&world, message, CARLA.id, "webhook").await;
    assert_eq!((state.as_str(), attempts), ("sent", 2));
    let series = |outcome: &str| format!(r#"gateway_push_attempts_total{{channel="webhook",outcome="{outcome}"}}"#);
    assert_eq!(world.metric(&series("retry")).await, 1, "the failure is counted");
    assert_eq!(world.metric(&series("sent")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transport_the_queue_is_drained_and_nothing_is_sent() {
    let world = World::start().await;
    world.post(&ALICE, CLASS_3B_PARENTS, "Nobody configured push").await;
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    loop {
        let jobs: i64 = db.query_one("select count(*) from public.chat_push_jobs", &[]).await.expect("jobs").get(0);
        if jobs == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{jobs} jobs never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries: i64 =
        db.query_one("select count(*) from public.chat_push_deliveries", &[]).await.expect("deliveries").get(0);
    assert_eq!(deliveries, 0);
}
