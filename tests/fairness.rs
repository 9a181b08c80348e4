//! Fair per user: one user's clients cannot multiply database work. `subscribe_thread` checks
//! (one RLS query each) have a per-user budget shared by all the user's sockets; a user who
//! resumes again and again from an ancient `since` gets one page and an error frame pointing to
//! offline sync; a burst of read-state changes costs one unread-count read per window, and the
//! newest state is always pushed. None of it locks the user out.

use reqwest::Method;
use serde_json::json;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, DAVID};

use crate::common::{World, ARRIVES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_thread_checks_have_a_budget_per_user_across_sockets() {
    let world = World::start_with(|c| {
        c.fairness.subscribe_checks_per_sec = 0.001;
        c.fairness.subscribe_check_burst = 3;
    })
    .await;
    let mut phone = world.phone(&CARLA).await;
    let mut tablet = world.phone(&CARLA).await;
    let subscribe = json!({"type": "subscribe_thread", "thread_id": CLASS_3B_PARENTS});
    for _ in 0..3 {
        phone.send_json(subscribe.clone()).await;
        assert_eq!(phone.expect_any().await["type"], "thread_subscribed");
    }
    // The tablet shares Carla's budget: refused with a frame that says to retry, socket open.
    tablet.send_json(subscribe.clone()).await;
    let refused = tablet.expect_any().await;
    assert_eq!(refused["type"], "error", "{refused}");
    let text = refused["message"].as_str().unwrap_or_default();
    assert!(text.contains("Too many thread subscriptions") && text.contains(&CLASS_3B_PARENTS.to_string()), "{text}");
    tablet.send_json(json!({"type": "ping"})).await;
    assert_eq!(tablet.expect_any().await, json!({"type": "pong"}));
    // Live delivery is untouched, and another user has a budget of their own.
    let live = world.post(&ALICE, CLASS_3B_PARENTS, "still delivered").await;
    tablet.receive_until(live).await;
    let mut david = world.phone(&DAVID).await;
    david.send_json(subscribe).await;
    assert_eq!(david.expect_any().await["type"], "thread_subscribed");
    assert_eq!(world.metric("gateway_user_budget_hits_total{budget=\"subscribe_check\"}").await, 1);
    assert_eq!(world.metric("gateway_rate_limiter_keys{limiter=\"subscribe_check_user\"}").await, 2, "Carla and David");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_again_and_again_from_an_ancient_since_gets_one_page_then_offline_sync() {
    let world = World::start_with(|c| {
        c.resume.buffer.messages = 0;
        c.fairness.resume_db_pages_per_min = 1;
    })
    .await;
    world
        .stack
        .sql()
        .await
        .execute(
            "insert into public.messages (thread_id, sender_id, content, created_at)
             select $1, $2, 'old ' || g, now() - interval '1 hour' + g * interval '1 millisecond'
             from generate_series(1, 700) g",
            &[&CLASS_3B_PARENTS, &ALICE.id],
        )
        .await
        .expect("insert history");
    for attempt in 0..2 {
        let mut phone = world.phone_since(&CARLA, "1970-01-01T00:00:00Z").await;
        let mut replayed = 0;
        let error = loop {
            let frame = phone.expect_any().await;
            match frame["type"].as_str() {
                Some("new_message") => replayed += 1,
                Some("error") => break frame,
                _ => panic!("attempt {attempt}: expected new_message or error, got {frame}"),
            }
        };
        assert_eq!(replayed, 500, "attempt {attempt}: one database page, then the error");
        let text = error["message"].as_str().unwrap_or_default();
        assert!(text.contains("offline sync") && text.contains("/api/chat/offline-messages"), "{text}");
        // The socket stays live.
        let live = world.post(&ALICE, CLASS_3B_PARENTS, &format!("live {attempt}")).await;
        phone.receive_until(live).await;
    }
    assert_eq!(world.metric("gateway_user_budget_hits_total{budget=\"resume_replay\"}").await, 2);
    // The fallback the frame names works.
    let (status, body) = world
        .rest(
            Method::GET,
            "/api/chat/offline-messages?last_check_time=1970-01-01T00:00:00Z",
            Some(&world.token(&CARLA)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_read_state_changes_costs_one_unread_count_read_per_window_and_the_last_is_pushed() {
    let world = World::start_with(|c| c.router.read_state_window = std::time::Duration::from_secs(10)).await;
    let mut phone = world.phone(&CARLA).await;
    let carla = world.token(&CARLA);
    for _ in 0..20 {
        let (status, body) =
            world.rest(Method::POST, &format!("/api/chat/mark-read/{CLASS_3B_PARENTS}"), Some(&carla)).await;
        assert_eq!(status, 200, "{body}");
    }
    let newest: String = world
        .stack
        .sql()
        .await
        .query_one(
            "select to_char(last_read_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             from public.thread_participants where thread_id = $1 and user_id = $2",
            &[&CLASS_3B_PARENTS, &CARLA.id],
        )
        .await
        .expect("Carla's read state")
        .get(0);
    let mut pushed = 0;
    loop {
        let frame = phone.next_json_within(ARRIVES).await.expect("thread_read frames until the newest state");
        if frame["type"] != "thread_read" {
            continue;
        }
        pushed += 1;
        assert_eq!(frame["thread_id"], CLASS_3B_PARENTS.to_string());
        if frame["last_read_at"] == newest.as_str() {
            break;
        }
    }
    // The first change is read at once; the rest of the burst waits for one more read (or joins
    // the first, if it came before that read started).
    let reads = world.metric("gateway_read_state_reads_total").await;
    assert!((1..=2).contains(&reads), "{reads} unread-count reads for a burst of 20 changes");
    assert_eq!(pushed, reads, "one thread_read per read for the one thread");
    assert_eq!(world.metric("gateway_read_state_coalesced_total").await, 19);
}
