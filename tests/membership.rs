//! Membership at delivery time, on every path: a participant removed from a thread gets none of
//! its messages afterwards, whether they resume from the ring of recent messages, a member-list
//! refresh read before the removal lands after it, or a message was still waiting for a lookup
//! when the removal came. `GET /api/chat/offline-messages` (RLS) is the reference.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use supabase_standin::rest::faults::Fault;
use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, DAVID};
use uuid::Uuid;

use crate::common::{Backend, World, ARRIVES};

const PARTICIPANTS_OK: &str =
    "gateway_postgrest_request_duration_seconds_count{call=\"thread_participants\",outcome=\"ok\"}";

/// Removes `who` from `thread` (a real DELETE committed in PostgreSQL).
async fn remove(world: &World, thread: Uuid, who: Uuid) {
    let db = world.stack.sql().await;
    let n = db
        .execute("delete from public.thread_participants where thread_id = $1 and user_id = $2", &[&thread, &who])
        .await
        .expect("delete participant");
    assert_eq!(n, 1, "was a participant");
}

/// Waits until `name` reaches `at_least`.
async fn metric_reaches(world: &World, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while world.metric(name).await < at_least {
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Carla goes away holding a cursor; three messages of 3B and one of her 1:1 thread are routed
/// while she is away; she is removed from 3B; she comes back with her old cursor (her token is
/// still valid). The replay from memory carries her 1:1 message and nothing of 3B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_resuming_from_memory_gets_none_of_that_thread() {
    let world = World::start().await;
    let mut carla = world.phone(&CARLA).await;
    let mut david = world.phone(&DAVID).await;
    let seen = world.post(&ALICE, CLASS_3B_PARENTS, "before the trip").await;
    let (frame, _) = carla.receive_until(seen).await;
    let cursor = frame["cursor"].as_str().expect("a cursor").to_string();
    drop(carla);

    let mut missed_3b = Vec::new();
    for i in 0..3 {
        missed_3b.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("while Carla is away {i}")).await);
    }
    let direct = world.post(&ALICE, ALICE_CARLA, "just for Carla").await;
    // Routed (so in the ring) before the removal: David got the last 3B one.
    david.receive_until(missed_3b[2]).await;

    remove(&world, CLASS_3B_PARENTS, CARLA.id).await;
    // The removal reached the gateway: a 3B message committed after it has been routed.
    let marker = world.post(&ALICE, CLASS_3B_PARENTS, "after Carla left").await;
    david.receive_until(marker).await;

    // RLS, the reference: none of 3B for Carla any more.
    let token = world.token(&CARLA);
    let path = format!("/api/chat/offline-messages?last_check_time={}", urlencoding::encode(&cursor));
    let (status, body) = world.rest(Method::GET, &path, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let offline: Vec<&str> = body["data"]["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["thread_id"].as_str()).collect())
        .unwrap_or_default();
    assert!(!offline.contains(&CLASS_3B_PARENTS.to_string().as_str()), "RLS hides 3B: {body}");
    assert!(offline.contains(&ALICE_CARLA.to_string().as_str()), "and shows her 1:1 thread: {body}");

    let mut phone = world.phone_since(&CARLA, &cursor).await;
    let (replayed, done) = phone.replay().await;
    let got: HashSet<Uuid> = replayed.iter().copied().collect();
    for id in missed_3b.iter().chain([&seen, &marker]) {
        assert!(!got.contains(id), "a message of a thread Carla was removed from was replayed: {replayed:?}");
    }
    assert!(got.contains(&direct), "her own thread is still replayed: {replayed:?}");
    assert_eq!(done["count"], replayed.len(), "{done}");
    assert_eq!(world.metric("gateway_resumes_from_memory_total").await, 1, "served from the ring");
    assert!(world.metric("gateway_replay_withheld_messages_total").await >= 3);

    // And live: nothing of 3B, her 1:1 thread still comes.
    world.post(&ALICE, CLASS_3B_PARENTS, "3B, live").await;
    let live = world.post(&ALICE, ALICE_CARLA, "1:1, live").await;
    let (_, before) = phone.receive_until(live).await;
    assert!(before.is_empty(), "3B delivered live after the removal: {before:?}");
}

/// The membership of 3B is refreshed (its cache entry is older than `CACHE_TTL_SECS`); the
/// refresh reads the database while Carla is still a participant, but its answer is slow, and
/// her removal reaches the gateway before it. The older list must not bring her back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_read_before_a_removal_does_not_undo_it() {
    let world = World::start_on(Backend::Supabase, |c| c.cache.ttl = Duration::from_secs(1)).await;
    let faults = world.stack.rest_faults();
    let mut carla = world.phone(&CARLA).await;
    let mut david = world.phone(&DAVID).await;
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "3B is cached now").await;
    carla.receive_until(warm).await;
    david.receive_until(warm).await;
    let direct = world.post(&ALICE, ALICE_CARLA, "1:1 is cached now").await;
    carla.receive_until(direct).await;

    // Past the TTL, the next 3B message refreshes the list; the answer comes 3 s after the read.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let loads = world.metric(PARTICIPANTS_OK).await;
    faults.add("thread_participants", Fault::Delay(Duration::from_secs(3)), Some(1));
    let trigger = world.post(&ALICE, CLASS_3B_PARENTS, "refreshes 3B").await;
    carla.receive_until(trigger).await;
    david.receive_until(trigger).await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while faults.hits() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the refresh never reached PostgREST");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the stand-in read the list (Carla still in it) before she is removed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    remove(&world, CLASS_3B_PARENTS, CARLA.id).await;
    let marker = world.post(&ALICE, CLASS_3B_PARENTS, "after the removal").await;
    david.receive_until(marker).await;
    // The slow answer (read before the removal) lands.
    metric_reaches(&world, PARTICIPANTS_OK, loads + 1).await;

    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the refresh landed").await;
    david.receive_until(after).await;
    let direct = world.post(&ALICE, ALICE_CARLA, "still yours").await;
    let (_, before) = carla.receive_until(direct).await;
    assert!(before.is_empty(), "a removed participant received 3B messages: {before:?}");
    assert!(world.metric("gateway_membership_changes_reapplied_total").await >= 1);
}

/// A 3B message waits for its sender's profile (the lookup stalls); Carla's removal reaches the
/// gateway meanwhile. When the message is delivered, it goes to the participants of that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_a_lookup_goes_to_the_participants_when_delivered() {
    let world = World::start_on(Backend::Supabase, |_| {}).await;
    let faults = world.stack.rest_faults();
    let mut carla = world.phone(&CARLA).await;
    let mut david = world.phone(&DAVID).await;
    let warm = world.post(&ALICE, CLASS_3B_PARENTS, "3B is cached now").await;
    carla.receive_until(warm).await;
    david.receive_until(warm).await;

    // David has not posted yet: his profile is looked up, and that lookup stalls.
    faults.add("profiles", Fault::Stall(Duration::from_secs(3)), Some(1));
    let waiting = world.post(&DAVID, CLASS_3B_PARENTS, "waits for David's profile").await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while faults.hits() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the profile lookup never reached PostgREST");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    remove(&world, CLASS_3B_PARENTS, CARLA.id).await;

    let (frame, _) = david.receive_until(waiting).await;
    assert_eq!(frame["data"]["sender"]["full_name"], "David Chen");
    let direct = world.post(&ALICE, ALICE_CARLA, "still yours").await;
    let (_, before) = carla.receive_until(direct).await;
    assert!(before.is_empty(), "delivered to a participant removed before delivery: {before:?}");
}
