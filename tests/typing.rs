//! Typing across two gateway instances, on both backends: Carla types in class 3B on instance A;
//! David (on B) and Eva (on A) see "Carla Diaz is typing", Carla's own tablet on B does not, and
//! Farid (class 4A, on both instances) never does. A typing frame for a thread the user may not
//! read, or a second one within 2 s, is answered with an error frame and the socket stays open.
//! Silence is proven without a clock: a message committed after the typing frame reached the
//! others arrives on the silent sockets with no typing frame before it.

use serde_json::{json, Value};
use supabase_standin::seed::{
    Person, ALICE, ALICE_CARLA, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID, EVA, FARID,
};
use uuid::Uuid;

use crate::common::{Backend, Phone, World, ARRIVES};

/// Every frame up to the `new_message` of `id`, which is not included.
async fn frames_until(phone: &mut Phone, id: Uuid) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let frame = phone.expect_any().await;
        if frame["type"] == "new_message" && frame["data"]["id"] == id.to_string() {
            return before;
        }
        before.push(frame);
    }
}

fn typing(thread: Uuid) -> Value {
    json!({"type": "typing", "thread_id": thread})
}

fn assert_typing_of(frame: &Value, thread: Uuid, who: &Person) {
    assert_eq!(
        frame,
        &json!({"type": "typing", "thread_id": thread, "user": {"user_id": who.id, "full_name": who.full_name, "role": who.role}}),
    );
}

/// The socket is still open and answering.
async fn still_open(phone: &mut Phone) {
    phone.send_json(json!({"type": "ping"})).await;
    assert_eq!(phone.expect("pong").await["type"], "pong");
}

async fn typing_reaches_the_other_participants_on_every_instance(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let second = world.second_instance().await;
    let (a, b) = (world.gateway().local_addr(), second.local_addr());

    let mut carla_a = world.phone_at(a, &CARLA).await;
    let mut carla_b = world.phone_at(b, &CARLA).await;
    let mut david_b = world.phone_at(b, &DAVID).await;
    let mut eva_a = world.phone_at(a, &EVA).await;
    let mut farid_a = world.phone_at(a, &FARID).await;
    let mut farid_b = world.phone_at(b, &FARID).await;

    carla_a.send_json(typing(CLASS_3B_PARENTS)).await;
    assert_typing_of(&david_b.expect("typing").await, CLASS_3B_PARENTS, &CARLA);
    assert_typing_of(&eva_a.expect("typing").await, CLASS_3B_PARENTS, &CARLA);

    // Both instances have delivered it: messages committed now come after it on every socket.
    let marker_3b = world.post(&ALICE, CLASS_3B_PARENTS, "after Carla typed").await;
    let marker_4a = world.post(&BRUNO, CLASS_4A_PARENTS, "for 4A").await;
    for carla in [&mut carla_a, &mut carla_b] {
        let before = frames_until(carla, marker_3b).await;
        assert!(before.iter().all(|f| f["type"] != "typing"), "the typer's own sessions: {before:?}");
    }
    for farid in [&mut farid_a, &mut farid_b] {
        let before = frames_until(farid, marker_4a).await;
        assert!(before.iter().all(|f| f["type"] != "typing"), "a non-member: {before:?}");
    }

    // A thread Farid may not read: refused, socket open, nobody told.
    farid_a.send_json(typing(CLASS_3B_PARENTS)).await;
    let refused = farid_a.expect("error").await;
    assert_eq!(refused["message"], format!("Access denied to thread {CLASS_3B_PARENTS}"));
    still_open(&mut farid_a).await;

    // Two at once in Carla's 1:1 thread: the second is over the limit; Alice (on B) sees one.
    let mut alice_b = world.phone_at(b, &ALICE).await;
    carla_b.send_json(typing(ALICE_CARLA)).await;
    carla_b.send_json(typing(ALICE_CARLA)).await;
    let limited = carla_b.expect("error").await;
    assert_eq!(
        limited["message"],
        format!("Too many typing frames: at most one per thread every 2 seconds (thread {ALICE_CARLA})")
    );
    still_open(&mut carla_b).await;
    assert_typing_of(&alice_b.expect("typing").await, ALICE_CARLA, &CARLA);
    let marker_1to1 = world.post(&ALICE, ALICE_CARLA, "after the typing").await;
    let before = frames_until(&mut alice_b, marker_1to1).await;
    assert!(before.iter().all(|f| f["type"] != "typing"), "one typing frame for two sent: {before:?}");
    assert!(before.iter().all(|f| f["thread_id"] != CLASS_3B_PARENTS.to_string()), "{before:?}");
    let metrics = world.http.get(format!("http://{b}/metrics")).send().await.expect("B's metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(metrics.lines().any(|l| l == "gateway_typing_frames_total{outcome=\"rate_limited\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("gateway_typing_relayed_total{direction=\"received\"} ")));
    second.shutdown().await;
}

/// Sends `typing` from `from` until `to` gets it (a relay may still be joining or listening after
/// a reconnect; each try waits out the 2 s limit); panics if it never arrives.
async fn typing_until_received(from: &mut Phone, to: &mut Phone, thread: Uuid, who: &Person) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        from.send_json(typing(thread)).await;
        let wait = tokio::time::Instant::now() + std::time::Duration::from_millis(2100);
        while let Ok(Some(frame)) = tokio::time::timeout_at(wait, to.next_json()).await {
            if frame["type"] == "typing" {
                assert_typing_of(&frame, thread, who);
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "typing never crossed the instances again");
    }
}

/// Both instances lose their relay (Realtime drops every socket; PostgreSQL terminates every
/// gateway connection) and make it again: typing crosses the instances again, through the typing
/// channel joined again with the feed, or a new LISTEN.
async fn typing_crosses_again_after_the_relay_is_lost(backend: Backend) {
    let world = World::start_on(backend, |_| {}).await;
    let second = world.second_instance().await;
    let (a, b) = (world.gateway().local_addr(), second.local_addr());
    let mut carla_a = world.phone_at(a, &CARLA).await;
    let mut david_b = world.phone_at(b, &DAVID).await;
    typing_until_received(&mut carla_a, &mut david_b, CLASS_3B_PARENTS, &CARLA).await;

    match backend {
        Backend::Supabase => world.stack.realtime().drop_all_sockets(),
        Backend::Postgres => {
            let db = world.stack.sql().await;
            db.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'realtime-gateway'",
                &[],
            )
            .await
            .expect("terminate the gateways' connections");
        }
    }
    typing_until_received(&mut carla_a, &mut david_b, CLASS_3B_PARENTS, &CARLA).await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_again_after_a_relay_loss_on_supabase() {
    typing_crosses_again_after_the_relay_is_lost(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_again_after_a_relay_loss_on_postgres() {
    typing_crosses_again_after_the_relay_is_lost(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_instances_on_supabase() {
    typing_reaches_the_other_participants_on_every_instance(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_instances_on_postgres() {
    typing_reaches_the_other_participants_on_every_instance(Backend::Postgres).await;
}
