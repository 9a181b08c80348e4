//! Two gateway instances behind one load balancer share nothing but the database: read state and
//! the realtime switch still reach every device of a user, whichever instance it is on, through
//! the change feed every instance receives.

use reqwest::Method;
use serde_json::json;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID};

use crate::common::{Phone, World, ARRIVES};

/// A phone of `who` on the instance listening at `addr`.
async fn phone_on(world: &World, addr: std::net::SocketAddr, who: &supabase_standin::seed::Person) -> Phone {
    let mut phone = Phone::connect(&format!("ws://{addr}/?token={}", world.token(who))).await.expect("connects");
    assert_eq!(phone.expect_any().await["type"], "connection_established");
    phone
}

async fn wait_ready(world: &World, addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while world.http.get(format!("http://{addr}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200
    {
        assert!(tokio::time::Instant::now() < deadline, "the second instance became ready");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_and_the_realtime_switch_cross_instances() {
    let world = World::start().await;
    let second = world.another_gateway(|_| {}).await;
    let (a, b) = (world.gateway().local_addr(), second.local_addr());
    wait_ready(&world, b).await;

    // Carla: phone on A, tablet on B. Marking read through A reaches both.
    let mut carla_a = phone_on(&world, a, &CARLA).await;
    let mut carla_b = phone_on(&world, b, &CARLA).await;
    let first = world.post(&ALICE, CLASS_3B_PARENTS, "read me on any device").await;
    carla_a.receive_until(first).await;
    carla_b.receive_until(first).await;
    let (status, body) =
        world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_3B_PARENTS}"), Some(&world.token(&CARLA))).await;
    assert_eq!(status, 200, "{body}");
    for device in [&mut carla_a, &mut carla_b] {
        let read = device.expect("thread_read").await;
        assert_eq!(read["thread_id"], CLASS_3B_PARENTS.to_string(), "{read}");
    }

    // David switches realtime off through A; his phone on B goes quiet. Carla's tablet on B
    // getting the next message proves B processed the switch first (changes arrive in order).
    let mut david_b = phone_on(&world, b, &DAVID).await;
    let (status, _) = world.rest(Method::POST, "/api/chat/unsubscribe", Some(&world.token(&DAVID))).await;
    assert_eq!(status, 200);
    let quiet = world.post(&ALICE, CLASS_3B_PARENTS, "David is off everywhere").await;
    carla_b.receive_until(quiet).await;
    david_b.send_json(json!({"type": "ping"})).await;
    assert_eq!(david_b.expect_any().await["type"], "pong", "no new_message for David on B");

    // Turned on again through B: delivery resumes on B (and A).
    let resp = world
        .http
        .post(format!("http://{b}/api/chat/subscribe"))
        .bearer_auth(world.token(&DAVID))
        .send()
        .await
        .expect("B answers");
    assert_eq!(resp.status().as_u16(), 200);
    let mut david_a = phone_on(&world, a, &DAVID).await;
    let loud = world.post(&ALICE, CLASS_3B_PARENTS, "David is back").await;
    david_b.receive_until(loud).await;
    david_a.receive_until(loud).await;
    second.shutdown().await;
}
