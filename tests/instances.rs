//! Two gateway instances behind one load balancer share nothing but the database: read state and
//! the realtime switch still reach every device of a user, whichever instance it is on, through
//! the change feed every instance receives.

use reqwest::Method;
use serde_json::json;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID};

use crate::common::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_and_the_realtime_switch_cross_instances() {
    let world = World::start().await;
    let second = world.second_instance().await;
    let (a, b) = (world.gateway().local_addr(), second.local_addr());

    // Carla: phone on A, tablet on B. Marking read through A reaches both.
    let mut carla_a = world.phone_at(a, &CARLA).await;
    let mut carla_b = world.phone_at(b, &CARLA).await;
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
    let mut david_b = world.phone_at(b, &DAVID).await;
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
    let mut david_a = world.phone_at(a, &DAVID).await;
    let loud = world.post(&ALICE, CLASS_3B_PARENTS, "David is back").await;
    david_b.receive_until(loud).await;
    david_a.receive_until(loud).await;
    second.shutdown().await;
}
