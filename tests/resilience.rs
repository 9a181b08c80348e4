//! Losing the upstream, slow clients and shutdown: nothing lost, nothing duplicated, nobody
//! stalled.

use std::time::Duration;

use crate::common::World;
use reqwest::Method;
use supabase_standin::realtime::InjectSpec;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_posted_while_the_upstream_is_down_arrive_once_after_reconnect() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let before_gap = world.post(&ALICE, CLASS_3B_PARENTS, "before the gap").await;
    carla.receive_until(before_gap).await;

    let realtime = world.stack.realtime();
    realtime.set_refuse_joins(true);
    realtime.drop_all_sockets();
    let error = carla.expect("error").await;
    assert_eq!(error["message"], "Real-time connection error");
    world.wait_ready(false).await;
    let (status, _) = world.rest(Method::GET, "/readyz", None).await;
    assert_eq!(status, 503);

    let mut gap = Vec::new();
    for i in 0..5 {
        gap.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("during the gap {i}")).await);
    }
    realtime.set_refuse_joins(false);
    world.wait_ready(true).await;
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the gap").await;

    let (_, received) = carla.receive_until(after).await;
    let want: Vec<String> = gap.iter().map(|id| id.to_string()).collect();
    assert_eq!(received, want, "every gap message exactly once, in order, before the next live one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    let world = World::start_with(|c| c.limits.queue_capacity = 1024).await;
    // The stuck phone connects and then never reads a byte again.
    let stuck = world.phone(&DAVID).await;
    let mut carla = world.phone(&CARLA).await;
    // Warm the routing caches first: this test is about a stuck reader, not a cold start.
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "warm-up").await;
    carla.receive_until(warm).await;

    let content = "x".repeat(3000);
    let spec = InjectSpec {
        schema: "public".into(),
        table: "messages".into(),
        change_type: "INSERT".into(),
        rows: vec![serde_json::json!({
            "id": "$uuid", "thread_id": CLASS_3B_PARENTS, "sender_id": ALICE.id,
            "content": content, "message_type": "text", "created_at": "$now"
        })],
        rate_per_sec: 2000,
        count: 6000,
    };
    // Carla reads while the burst is emitted; David's phone reads nothing at all.
    let control = world.stack.realtime();
    let burst = tokio::spawn(async move { control.inject(spec).await });
    let mut received = 0usize;
    while received < 6000 {
        carla.expect("new_message").await;
        received += 1;
    }
    // The bound: by the time Carla has all 6,000, the stuck phone has already been dropped (its
    // 1,024-frame queue overflowed long before), so it never held her delivery up.
    assert!(world.metric("gateway_slow_client_drops_total").await >= 1, "the stuck phone was dropped while Carla read");
    assert_eq!(burst.await.expect("inject"), 6000);
    let last = world.post(&ALICE, CLASS_3B_PARENTS, "the end").await;
    let (_, before) = carla.receive_until(last).await;
    assert!(before.is_empty(), "Carla got every message, in order, although David's phone is stuck");
    // Its socket is closed (the 4008 close frame itself usually cannot get through the full
    // buffers of a phone that reads nothing; a phone that reads late finds the connection gone).
    let mut stuck = stuck;
    loop {
        let frame = tokio::time::timeout(crate::common::ARRIVES, futures_util::StreamExt::next(&mut stuck.ws))
            .await
            .expect("the stuck phone's connection ends instead of staying open");
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4008));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_going_away() {
    let mut world = World::start_with(|c| c.shutdown.grace = Duration::from_secs(5)).await;
    let mut carla = world.phone(&CARLA).await;
    let gateway = world.gateway.take().expect("running");
    let closing = tokio::spawn(gateway.shutdown());
    assert_eq!(carla.close_code().await, Some(1001));
    closing.await.expect("shutdown completes");
}
