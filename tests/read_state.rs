//! Read state: who has read what, as the school's rules let each viewer see it. Live
//! `read_receipt` frames across two instances, on both backends; `GET .../read-state`; and the
//! rules themselves in SQL (`chat_read_state`, `chat_read_receipt`), including that an app user
//! can no longer read another participant's read state straight from `thread_participants`.

use std::net::SocketAddr;

use reqwest::Method;
use serde_json::{json, Value};
use supabase_standin::seed::{
    Person, ALICE, ALICE_CARLA, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_3B_PUPILS, DAVID, EVA, FARID, HUGO, KAREN,
    STAFF_ROOM,
};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::common::{Backend, Phone, World, ARRIVES};
use crate::push_queue::user;

/// `who` marks `thread` read through the instance at `addr`.
async fn mark_read(world: &World, addr: SocketAddr, who: &Person, thread: Uuid) {
    let url = format!("http://{addr}/api/chat/mark-read/{thread}");
    let answer = world.http.post(url).bearer_auth(world.token(who)).send().await.expect("gateway answers");
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
}

/// The next `read_receipt` of `thread` (receipts of other threads are skipped), valid by
/// `docs/ws-frames.schema.json`.
async fn receipt_of(phone: &mut Phone, thread: Uuid) -> Value {
    let schema: Value = serde_json::from_str(include_str!("../docs/ws-frames.schema.json")).expect("frame schemas");
    let any_frame = jsonschema::validator_for(&schema).expect("frame schemas compile");
    loop {
        let frame = phone.expect("read_receipt").await;
        let errors: Vec<String> = any_frame.iter_errors(&frame).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{frame} is not a documented frame: {errors:?}");
        if frame["thread_id"] == thread.to_string() {
            return frame;
        }
    }
}

/// Every frame up to the answer to a ping (which the session queues after anything already
/// queued for it).
async fn frames_until_pong(phone: &mut Phone) -> Vec<Value> {
    phone.send_json(json!({"type": "ping"})).await;
    let mut frames = Vec::new();
    loop {
        let frame = phone.expect_any().await;
        if frame["type"] == "pong" {
            return frames;
        }
        frames.push(frame);
    }
}

fn no_receipt(frames: &[Value], who: &str) {
    assert!(frames.iter().all(|f| f["type"] != "read_receipt"), "{who} got a read receipt: {frames:?}");
}

fn reader(who: &Person) -> Value {
    json!({"user_id": who.id, "full_name": who.full_name, "role": who.role})
}

/// `who` stops (or starts) sharing their read state of `thread`, as the app would through
/// PostgREST: an UPDATE of their own participant row, under RLS.
async fn share(world: &World, who: &Person, thread: Uuid, on: bool) {
    let db = user(world, who).await;
    let n = db
        .execute(
            "update public.thread_participants set share_read_state = $3 where thread_id = $1 and user_id = $2",
            &[&thread, &who.id, &on],
        )
        .await
        .expect("own row updatable");
    assert_eq!(n, 1);
}

async fn read_state(world: &World, who: &Person, thread: Uuid, query: &str) -> (u16, Value) {
    let path = format!("/api/chat/threads/{thread}/read-state{query}");
    world.rest(Method::GET, &path, Some(&world.token(who))).await
}

fn names(participants: &Value) -> Vec<String> {
    let list = participants.as_array().cloned().unwrap_or_default();
    list.iter().filter_map(|p| p["full_name"].as_str().map(str::to_string)).collect()
}

async fn receipts_follow_the_rules_across_instances(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let second = world.second_instance().await;
    let (a, b) = (world.gateway().local_addr(), second.local_addr());

    let mut alice_a = world.phone_at(a, &ALICE).await;
    let mut alice_b = world.phone_at(b, &ALICE).await;
    let mut david_a = world.phone_at(a, &DAVID).await;
    let mut carla_b = world.phone_at(b, &CARLA).await;
    let mut farid_a = world.phone_at(a, &FARID).await;
    let mut farid_b = world.phone_at(b, &FARID).await;
    let notice = world.post(&ALICE, CLASS_3B_PARENTS, "Bring a signed form tomorrow").await;
    for phone in [&mut alice_a, &mut alice_b, &mut david_a, &mut carla_b] {
        phone.receive_until(notice).await;
    }

    // Carla (parent) reads on B. Alice (teacher) sees her named on both instances; David
    // (another parent) sees only the counts.
    mark_read(&world, b, &CARLA, CLASS_3B_PARENTS).await;
    let counts = json!({"thread_id": CLASS_3B_PARENTS, "message_id": notice, "seen_by": 1, "of": 3});
    for alice in [&mut alice_a, &mut alice_b] {
        let receipt = receipt_of(alice, CLASS_3B_PARENTS).await;
        assert_eq!(receipt["reader"], reader(&CARLA), "{receipt}");
        for (key, want) in counts.as_object().expect("object") {
            assert_eq!(&receipt[key], want, "{key}: {receipt}");
        }
        assert!(receipt["last_read_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{receipt}");
    }
    let receipt = receipt_of(&mut david_a, CLASS_3B_PARENTS).await;
    assert_eq!(receipt["reader"], Value::Null, "a parent sees no other parent's reading: {receipt}");
    assert_eq!((&receipt["seen_by"], &receipt["of"]), (&json!(1), &json!(3)), "{receipt}");
    // Neither the reader herself nor a non-member got one (on either instance): the frames queued
    // before a pong hold none.
    no_receipt(&frames_until_pong(&mut carla_b).await, "the reader");
    no_receipt(&frames_until_pong(&mut farid_a).await, "a non-member on A");
    no_receipt(&frames_until_pong(&mut farid_b).await, "a non-member on B");

    // Eva stops sharing (through the gateway), then reads: counted, named to nobody, not even the
    // teacher.
    let path = format!("/api/chat/threads/{CLASS_3B_PARENTS}/read-state");
    let (status, body) =
        world.rest_with(Method::POST, &path, Some(&world.token(&EVA)), Some(&json!({"share": false}))).await;
    assert_eq!((status, &body["share_read_state"]), (200, &json!(false)), "{body}");
    mark_read(&world, a, &EVA, CLASS_3B_PARENTS).await;
    for alice in [&mut alice_a, &mut alice_b] {
        let receipt = receipt_of(alice, CLASS_3B_PARENTS).await;
        assert_eq!(receipt["reader"], Value::Null, "{receipt}");
        assert_eq!((&receipt["seen_by"], &receipt["of"]), (&json!(2), &json!(3)), "{receipt}");
    }

    // The same through REST: Alice sees Carla and David (not Eva), David sees nobody; both the counts.
    let (status, body) = read_state(&world, &ALICE, CLASS_3B_PARENTS, "?messages=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body["data"]["participants"]), ["Carla Diaz", "David Chen"], "{body}");
    assert_eq!(body["participants"], body["data"]["participants"]);
    assert_eq!(body["data"]["messages"], json!([{"message_id": notice, "seen_by": 2, "of": 3}]));
    assert_eq!(body["messages"], body["data"]["messages"]);
    let (status, body) = read_state(&world, &DAVID, CLASS_3B_PARENTS, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["participants"], json!([]), "{body}");
    assert_eq!(body["data"]["messages"][0], json!({"message_id": notice, "seen_by": 2, "of": 3}));
    let (status, body) = read_state(&world, &FARID, CLASS_3B_PARENTS, "").await;
    assert_eq!((status, &body["status"]), (403, &json!("error")), "{body}");
    for bad in ["?messages=0", "?messages=101", "?messages=some"] {
        let (status, body) = read_state(&world, &ALICE, CLASS_3B_PARENTS, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // 1:1: each sees the other, live and through REST.
    let question = world.post(&CARLA, ALICE_CARLA, "Is the trip on Friday?").await;
    alice_a.receive_until(question).await;
    mark_read(&world, a, &ALICE, ALICE_CARLA).await;
    let receipt = receipt_of(&mut carla_b, ALICE_CARLA).await;
    assert_eq!(receipt["reader"], reader(&ALICE), "{receipt}");
    assert_eq!((&receipt["message_id"], &receipt["seen_by"], &receipt["of"]), (&json!(question), &json!(1), &json!(1)));
    let (status, body) = read_state(&world, &CARLA, ALICE_CARLA, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body["participants"]), ["Alice Martin"], "{body}");
    no_receipt(&frames_until_pong(&mut farid_b).await, "a non-member on B");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_follow_the_rules_across_instances_on_supabase() {
    receipts_follow_the_rules_across_instances(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_follow_the_rules_across_instances_on_postgres() {
    receipts_follow_the_rules_across_instances(Backend::Postgres).await;
}

/// `chat_read_state(thread, n)` as `who`.
async fn sql_read_state(db: &Client, thread: Uuid, n: i32) -> Result<Value, tokio_postgres::Error> {
    db.query_one("select public.chat_read_state($1, $2)", &[&thread, &n]).await.map(|row| row.get(0))
}

async fn seen_by(world: &World, who: &Person, thread: Uuid) -> Vec<String> {
    let state = sql_read_state(&user(world, who).await, thread, 20).await.expect("participant");
    names(&state["participants"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_read_state_names_whom_the_rules_allow_and_counts_everyone() {
    let world = World::start().await;
    // Staff see everyone else; a parent or a student in a group sees nobody; 1:1 sees the other.
    assert_eq!(seen_by(&world, &ALICE, CLASS_3B_PARENTS).await, ["Carla Diaz", "David Chen", "Eva Novak"]);
    assert_eq!(seen_by(&world, &KAREN, STAFF_ROOM).await, ["Alice Martin", "Bruno Keller"]);
    assert_eq!(seen_by(&world, &CARLA, CLASS_3B_PARENTS).await, Vec::<String>::new());
    assert_eq!(seen_by(&world, &HUGO, CLASS_3B_PUPILS).await, Vec::<String>::new());
    assert_eq!(seen_by(&world, &CARLA, ALICE_CARLA).await, ["Alice Martin"]);
    assert_eq!(seen_by(&world, &ALICE, ALICE_CARLA).await, ["Carla Diaz"]);

    // Not sharing: named to nobody, also in 1:1 and to staff.
    share(&world, &DAVID, CLASS_3B_PARENTS, false).await;
    share(&world, &CARLA, ALICE_CARLA, false).await;
    assert_eq!(seen_by(&world, &ALICE, CLASS_3B_PARENTS).await, ["Carla Diaz", "Eva Novak"]);
    assert_eq!(seen_by(&world, &ALICE, ALICE_CARLA).await, Vec::<String>::new());

    // Counts: of = everyone but the sender, seen_by = those who read at or after it; newest first.
    let first = world.post(&ALICE, CLASS_3B_PARENTS, "first").await;
    let second = world.post(&CARLA, CLASS_3B_PARENTS, "second").await;
    let db = world.stack.sql().await;
    db.execute(
        "update public.thread_participants set last_read_at = (select created_at from public.messages where id = $2)
          where thread_id = $1 and user_id = $3",
        &[&CLASS_3B_PARENTS, &first, &DAVID.id],
    )
    .await
    .expect("David read the first");
    let state = sql_read_state(&user(&world, &EVA).await, CLASS_3B_PARENTS, 2).await.expect("participant");
    assert_eq!(
        state["messages"],
        json!([{"message_id": second, "seen_by": 0, "of": 3}, {"message_id": first, "seen_by": 1, "of": 3}]),
        "David (not sharing) is counted"
    );
    // N is clamped to 1..100.
    let one = sql_read_state(&user(&world, &EVA).await, CLASS_3B_PARENTS, 0).await.expect("participant");
    assert_eq!(one["messages"].as_array().map(Vec::len), Some(1));

    // A non-participant gets 42501 (PostgREST: 403), never an empty answer.
    let refused = sql_read_state(&user(&world, &FARID).await, CLASS_3B_PARENTS, 20).await.expect_err("refused");
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_read_receipt_is_for_the_gateway_only_and_says_who_may_see_the_reader() {
    let world = World::start().await;
    let message = world.post(&ALICE, CLASS_3B_PARENTS, "hello").await;
    let db = world.stack.sql().await;
    db.batch_execute("set role service_role").await.expect("service role");
    let receipt: Value = db
        .query_one("select public.chat_read_receipt($1, $2)", &[&CLASS_3B_PARENTS, &CARLA.id])
        .await
        .expect("receipt")
        .get(0);
    assert_eq!(receipt["reader"], reader(&CARLA));
    assert_eq!((&receipt["message_id"], &receipt["seen_by"], &receipt["of"]), (&json!(message), &json!(0), &json!(3)));
    let mut viewers: Vec<(String, bool)> = receipt["viewers"]
        .as_array()
        .expect("viewers")
        .iter()
        .map(|v| (v["user_id"].as_str().unwrap_or_default().to_string(), v["named"] == true))
        .collect();
    viewers.sort();
    let mut want = vec![(ALICE.id.to_string(), true), (DAVID.id.to_string(), false), (EVA.id.to_string(), false)];
    want.sort();
    assert_eq!(viewers, want, "the teacher may see Carla named, the other parents may not");
    let none: Option<Value> = db
        .query_one("select public.chat_read_receipt($1, $2)", &[&CLASS_3B_PARENTS, &BRUNO.id])
        .await
        .expect("answers")
        .get(0);
    assert_eq!(none, None, "not a participant: no receipt");

    let app = user(&world, &CARLA).await;
    let refused =
        app.query_one("select public.chat_read_receipt($1, $2)", &[&CLASS_3B_PARENTS, &CARLA.id]).await.expect_err("");
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
}

/// Before, RLS let every member select every member's participant row. A parent now reads only
/// her own row through PostgREST (and may still change her own sharing), never another
/// parent's `last_read_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_cannot_read_another_parents_read_state_through_postgrest() {
    let world = World::start().await;
    let rest = format!("{}/rest/v1/thread_participants", world.stack.url());
    let get = |query: String| {
        world
            .http
            .get(format!("{rest}?{query}"))
            .header("apikey", &world.stack.keys().anon_key)
            .bearer_auth(world.token(&CARLA))
    };
    let all = format!("thread_id=eq.{CLASS_3B_PARENTS}&select=user_id,last_read_at,share_read_state,muted_until");
    let rows: Value = get(all).send().await.expect("PostgREST").json().await.expect("json");
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "only her own row: {rows:?}");
    assert_eq!(rows[0]["user_id"], CARLA.id.to_string());
    assert!(rows[0]["last_read_at"].is_string(), "her own read state stays readable: {rows:?}");
    let davids = format!("thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}&select=last_read_at", DAVID.id);
    let rows: Value = get(davids).send().await.expect("PostgREST").json().await.expect("json");
    assert_eq!(rows, json!([]), "David's read state is not Carla's to read");

    // Her own sharing switch is hers to set, through PostgREST; nobody else's.
    let patch = |who: &Person| {
        world
            .http
            .patch(format!("{rest}?thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}", who.id))
            .header("apikey", &world.stack.keys().anon_key)
            .header("Prefer", "return=representation")
            .bearer_auth(world.token(&CARLA))
            .json(&json!({"share_read_state": false}))
    };
    let mine: Value = patch(&CARLA).send().await.expect("PostgREST").json().await.expect("json");
    assert_eq!(mine[0]["share_read_state"], false, "{mine}");
    let davids: Value = patch(&DAVID).send().await.expect("PostgREST").json().await.expect("json");
    assert_eq!(davids, json!([]));
}

/// With a long window, a thread's second read waits (coalesced: no second frame yet), and a read
/// in another thread beyond READ_RECEIPT_MAX_THREADS sends nothing but is counted, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_wait_out_their_window_and_a_full_hand_off_is_counted() {
    let world = World::start_with(|c| {
        c.router.read_receipt_window = std::time::Duration::from_secs(60);
        c.router.read_receipt_max_threads = 1;
    })
    .await;
    let a = world.gateway().local_addr();
    let mut alice = world.phone_at(a, &ALICE).await;
    let notice = world.post(&ALICE, CLASS_3B_PARENTS, "Trip forms due Friday").await;
    let question = world.post(&CARLA, ALICE_CARLA, "Which form?").await;
    alice.receive_until(question).await;

    mark_read(&world, a, &CARLA, CLASS_3B_PARENTS).await;
    let receipt = receipt_of(&mut alice, CLASS_3B_PARENTS).await;
    assert_eq!((&receipt["reader"], &receipt["message_id"]), (&reader(&CARLA), &json!(notice)));

    // Inside the window: David's read is folded into the next frame, which waits for the window.
    mark_read(&world, a, &DAVID, CLASS_3B_PARENTS).await;
    wait_metric(&world, "gateway_read_receipts_coalesced_total", 1).await;
    no_receipt(&frames_until_pong(&mut alice).await, "Alice, inside the window");

    // The one pending thread is taken: Carla's read of the 1:1 sends nothing, and says so.
    mark_read(&world, a, &CARLA, ALICE_CARLA).await;
    wait_metric(&world, "gateway_read_receipts_dropped_total", 1).await;
    no_receipt(&frames_until_pong(&mut alice).await, "Alice, over the bound");
}

/// Waits until the counter `name` of `/metrics` reaches `want`.
async fn wait_metric(world: &World, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while world.metric(name).await < want {
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {want}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
