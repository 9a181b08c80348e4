//! The PostgreSQL backend's two ways of reading its slot. Streaming (the default): the
//! replication connection dropped mid-stream, twice, loses and repeats nothing, and the slot is
//! confirmed only up to what was fanned out, so a restart afterwards re-reads none of it.
//! Polling (`SLOT_READ=poll`, for where replication connections are not allowed): no
//! replication connection at all, and a blip still loses and repeats nothing.

use std::time::Duration;

use crate::common::{Backend, World, ARRIVES};
use crate::postgres::{terminate_gateway_connections, wait_slot_confirmed_past_now};
use realtime_gateway::config::{Backend as GatewayBackend, SlotRead};
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

/// The gateway's replication connections streaming from its slot (`pg_stat_replication`).
async fn streaming(world: &World) -> i64 {
    let db = world.stack.sql().await;
    let name = format!("realtime-gateway feed gw_{}", world.stack.database().name());
    db.query_one("select count(*) from pg_stat_replication where application_name = $1", &[&name])
        .await
        .expect("pg_stat_replication")
        .get(0)
}

/// Waits until the feed streams again (after a start or a drop).
async fn wait_streaming(world: &World) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while streaming(world).await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the feed never streamed from its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminates only the gateway's walsender (the replication connection), as a network drop would.
async fn drop_replication_connection(world: &World) -> i64 {
    let db = world.stack.sql().await;
    db.query_one(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where backend_type = 'walsender' and usename = 'chat_gateway' and datname = current_database()",
        &[],
    )
    .await
    .expect("terminate")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_connection_dropped_mid_stream_loses_nothing_and_repeats_nothing() {
    // No start-up catch-up: after the restart below only the slot can bring messages back.
    let mut world = World::start_on(Backend::Postgres, |c| c.router.catchup_margin = Duration::ZERO).await;
    wait_streaming(&world).await;
    let mut carla = world.phone(&CARLA).await;
    let first = world.post(&ALICE, CLASS_3B_PARENTS, "before the drops").await;
    carla.receive_until(first).await;

    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("mid-stream {i}")).await);
        if i == 3 || i == 8 {
            // Some of the messages just committed are still in flight on the connection.
            assert_eq!(drop_replication_connection(&world).await, 1, "the feed had its replication connection");
        }
        if i == 4 {
            wait_streaming(&world).await;
        }
    }
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the drops").await;
    let (_, received) = carla.receive_until(after).await;
    let want: Vec<String> = sent.iter().map(Uuid::to_string).collect();
    assert_eq!(received, want, "every message exactly once, in order");
    assert!(world.metric("gateway_upstream_losses_total").await >= 2, "both drops were noticed");

    // The new connection reports what was fanned out: the slot gets past all of it, and a new
    // process starts right after it (it routes only what is new).
    wait_streaming(&world).await;
    wait_slot_confirmed_past_now(&world).await;
    world.stop_gateway().await;
    world.start_gateway().await;
    wait_streaming(&world).await;
    let mut carla = world.phone(&CARLA).await;
    let last = world.post(&ALICE, CLASS_3B_PARENTS, "after the restart").await;
    let (_, received) = carla.receive_until(last).await;
    assert!(received.is_empty(), "nothing from before the restart came again: {received:?}");
    assert_eq!(world.metric("gateway_messages_routed_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polling_fallback_reads_the_slot_without_a_replication_connection() {
    let world = World::start_on(Backend::Postgres, |c| {
        if let GatewayBackend::Postgres(settings) = &mut c.backend {
            settings.slot_read = SlotRead::Poll;
        }
    })
    .await;
    let mut carla = world.phone(&CARLA).await;
    let first = world.post(&ALICE, CLASS_3B_PARENTS, "polled").await;
    carla.receive_until(first).await;
    assert_eq!(streaming(&world).await, 0, "polling opens no replication connection");

    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("around the blip {i}")).await);
    }
    assert!(terminate_gateway_connections(&world).await >= 1);
    for i in 3..6 {
        sent.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("around the blip {i}")).await);
    }
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the blip").await;
    let (_, received) = carla.receive_until(after).await;
    let want: Vec<String> = sent.iter().map(Uuid::to_string).collect();
    assert_eq!(received, want, "every message exactly once, in order");
    // The slot is moved to what was fanned out.
    wait_slot_confirmed_past_now(&world).await;
    assert_eq!(streaming(&world).await, 0);
}
