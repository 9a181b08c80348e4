//! The router never blocks, never drops: a slow or failing lookup holds up only its own thread and
//! is retried until it succeeds; a bound that is hit is reported and filled from the database; a
//! gap after an upstream loss is filled without limits, even past a row from the future, and
//! `/readyz` stays 503 until the fill has completed.

use std::time::Duration;

use reqwest::Method;
use supabase_standin::rest::faults::Fault;
use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

use crate::common::{message_id, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_membership_lookup_holds_up_only_its_own_thread() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "3B is cached now").await;
    carla.receive_until(warm).await;

    // The next membership lookup (for the 1:1 thread, not cached yet) stalls for a while.
    world.stack.rest_faults().add("thread_participants", Fault::Stall(Duration::from_secs(4)), Some(1));
    let waiting = world.post(&ALICE, ALICE_CARLA, "1:1, posted first").await;
    let flowing = world.post(&ALICE, CLASS_3B_PARENTS, "3B, posted second").await;

    let first = message_id(&carla.expect("new_message").await);
    let second = message_id(&carla.expect("new_message").await);
    assert_eq!((first, second), (flowing, waiting), "3B went on while the 1:1 thread waited for its lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lookup_is_retried_until_the_message_is_delivered() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let faults = world.stack.rest_faults();
    faults.add("thread_participants", Fault::Fail(503), Some(6));
    let id = world.post(&ALICE, ALICE_CARLA, "delivered despite six failed lookups").await;
    let (frame, before) = carla.receive_until(id).await;
    assert!(before.is_empty());
    assert_eq!(frame["data"]["sender"]["full_name"], ALICE.full_name);
    assert!(faults.hits() >= 6, "the lookups really failed first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiting_buffer_is_reported_and_filled_from_the_database() {
    let world = World::start_with(|c| c.router.max_waiting = 5).await;
    let mut carla = world.phone(&CARLA).await;
    world.stack.rest_faults().add("thread_participants", Fault::Stall(Duration::from_secs(2)), Some(1));
    let mut posted = Vec::new();
    for i in 0..12 {
        posted.push(world.post(&ALICE, ALICE_CARLA, &format!("burst {i}")).await);
    }
    let error = carla.expect("error").await;
    assert_eq!(error["message"], "Real-time connection error", "the bound is reported, not silent");
    let mut got = Vec::new();
    while got.len() < posted.len() {
        got.push(message_id(&carla.expect("new_message").await));
    }
    assert_eq!(got, posted, "every message once, in order, after the gap fill");
    assert!(world.metric("gateway_router_overflows_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_of_1200_messages_during_an_outage_arrives_whole() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "before").await;
    carla.receive_until(warm).await;
    let realtime = world.stack.realtime();
    realtime.set_refuse_joins(true);
    realtime.drop_all_sockets();
    world.wait_ready(false).await;
    let db = world.stack.sql().await;
    let ids: Vec<Uuid> = db
        .query(
            "insert into public.messages (thread_id, sender_id, content)
             select $1, $2, 'import ' || g from generate_series(1, 1200) g order by g returning id",
            &[&CLASS_3B_PARENTS, &ALICE.id],
        )
        .await
        .expect("one transaction")
        .iter()
        .map(|r| r.get(0))
        .collect();
    realtime.set_refuse_joins(false);
    world.wait_ready(true).await;
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after").await;
    let (_, received) = carla.receive_until(after).await;
    let mut got: Vec<Uuid> = received.iter().map(|s| Uuid::parse_str(s).expect("uuid")).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "all 1,200 rows sharing one created_at, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_from_the_future_does_not_hide_later_gaps() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    // A service-role import may set created_at: one row a day ahead.
    let db = world.stack.sql().await;
    let future: Uuid = db
        .query_one(
            "insert into public.messages (thread_id, sender_id, content, created_at)
             values ($1, $2, 'from the future', now() + interval '1 day') returning id",
            &[&CLASS_3B_PARENTS, &ALICE.id],
        )
        .await
        .expect("insert")
        .get(0);
    carla.receive_until(future).await;
    let realtime = world.stack.realtime();
    realtime.set_refuse_joins(true);
    realtime.drop_all_sockets();
    world.wait_ready(false).await;
    let gap = world.post(&ALICE, CLASS_3B_PARENTS, "during the outage").await;
    realtime.set_refuse_joins(false);
    world.wait_ready(true).await;
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after").await;
    let (_, received) = carla.receive_until(after).await;
    assert_eq!(received, vec![gap.to_string()], "the gap was filled although a row is dated tomorrow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gap_fill_is_retried_and_the_gateway_is_not_ready_until_it_completes() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "before").await;
    carla.receive_until(warm).await;
    let faults = world.stack.rest_faults();
    let realtime = world.stack.realtime();
    realtime.set_refuse_joins(true);
    realtime.drop_all_sockets();
    world.wait_ready(false).await;
    let gap = world.post(&ALICE, CLASS_3B_PARENTS, "during the outage").await;
    faults.add("rpc/chat_messages_page", Fault::Fail(503), Some(4));
    realtime.set_refuse_joins(false);
    // While the fill keeps failing, the upstream is live again but the gateway is not ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while faults.hits() < 4 {
        let (status, _) = world.rest(Method::GET, "/readyz", None).await;
        if faults.hits() < 4 {
            assert_eq!(status, 503, "ready before the gap was filled");
        }
        assert!(tokio::time::Instant::now() < deadline, "the gap fill was retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.wait_ready(true).await;
    let (_, received) = carla.receive_until(world.post(&ALICE, CLASS_3B_PARENTS, "after").await).await;
    assert_eq!(received, vec![gap.to_string()]);
    assert!(world.metric("gateway_gap_fill_failures_total").await >= 4);
}
