//! The push queue in SQL (`supabase/migrations/*_push.sql`), driven as the gateway's service role
//! and as app users would drive it, on the real database: who a message pushes, exactly once
//! whichever instance decides; leases that survive a crash with the same id; bursts that
//! collapse; devices that only their owner sees; a mute that is not a read.

use std::collections::HashSet;

use supabase_standin::seed::{Person, ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, DAVID, EVA};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::common::World;

/// The stack with a gateway whose own decision loop waits a full minute before deciding a job:
/// these tests decide themselves, as two instances would, and nothing else may take the jobs.
async fn quiet_world() -> World {
    World::start_with(|c| c.push.delay = std::time::Duration::from_secs(60)).await
}

/// A connection acting as the gateway (service role).
async fn service(world: &World) -> Client {
    let db = world.stack.sql().await;
    db.batch_execute("set role service_role").await.expect("service role");
    db
}

/// A connection acting as `who` (authenticated, RLS applies).
pub(crate) async fn user(world: &World, who: &Person) -> Client {
    let db = world.stack.sql().await;
    let claims = format!(r#"{{"sub":"{}","role":"authenticated"}}"#, who.id);
    db.batch_execute(&format!("set role authenticated; set request.jwt.claims = '{claims}'")).await.expect("user");
    db
}

async fn post(world: &World, who: &Person, thread: Uuid, content: &str) -> Uuid {
    let db = user(world, who).await;
    db.query_one(
        "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
        &[&thread, &who.id, &content],
    )
    .await
    .expect("posted")
    .get(0)
}

/// Decides every due job; returns the deliveries written.
async fn decide(db: &Client, channels: &[&str]) -> i64 {
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    let decided: serde_json::Value =
        db.query_one("select public.chat_push_decide(0, 1000, $1)", &[&channels]).await.expect("decide").get(0);
    decided["deliveries"].as_i64().expect("deliveries")
}

/// (delivery id, channel, user, message, content, collapsed, attempts) of a claim.
type Claimed = (Uuid, String, Uuid, Uuid, String, i32, i32);

async fn claim(db: &Client, gap_seconds: i32) -> Vec<Claimed> {
    let all: Vec<String> = ["webhook", "webpush", "fcm", "apns", "expo"].iter().map(|c| c.to_string()).collect();
    db.query("select * from public.chat_push_claim($1, 100, 60, $2)", &[&all, &gap_seconds])
        .await
        .expect("claim")
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("channel"),
                r.get("user_id"),
                r.get("message_id"),
                r.get("content"),
                r.get("collapsed"),
                r.get("attempts"),
            )
        })
        .collect()
}

async fn finish(db: &Client, id: Uuid, outcome: &str) -> bool {
    db.query_one("select public.chat_push_finish($1, $2, null, null)", &[&id, &outcome]).await.expect("finish").get(0)
}

/// Seed messages enqueued jobs too: drained without deliveries, so each test starts empty.
async fn drained(world: &World) -> Client {
    let db = service(world).await;
    decide(&db, &[]).await;
    db
}

async fn register_fcm(world: &World, who: &Person, token: &str) -> Uuid {
    let db = user(world, who).await;
    db.query_one("select public.chat_register_push_device('fcm', $1)", &[&token]).await.expect("registered").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pushes_each_offline_unmuted_participant_once_but_not_the_sender_or_those_online() {
    let world = quiet_world().await;
    let db = drained(&world).await;
    let instance = Uuid::new_v4();
    db.execute("select public.chat_push_presence_report($1, $2, '{}', 30)", &[&instance, &vec![DAVID.id]])
        .await
        .expect("David is online on an instance");
    user(&world, &EVA)
        .await
        .execute("select public.chat_mute_thread($1, now() + interval '1 hour')", &[&CLASS_3B_PARENTS])
        .await
        .expect("Eva mutes the class");
    let device = register_fcm(&world, &CARLA, "carla-phone").await;

    let message = post(&world, &ALICE, CLASS_3B_PARENTS, "Pick-up moved to 2 pm").await;
    assert_eq!(decide(&db, &["webhook", "fcm"]).await, 2, "Carla: the webhook and her phone");
    assert_eq!(decide(&db, &["webhook", "fcm"]).await, 0, "decided once: the job is gone");
    let got = claim(&db, 0).await;
    let people: HashSet<Uuid> = got.iter().map(|c| c.2).collect();
    assert_eq!(people, HashSet::from([CARLA.id]), "not Alice (sender), David (online), Eva (muted)");
    assert!(got.iter().all(|c| c.3 == message && c.4 == "Pick-up moved to 2 pm" && c.6 == 1));
    let channels: HashSet<&str> = got.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(channels, HashSet::from(["webhook", "fcm"]));
    assert!(claim(&db, 0).await.is_empty(), "leased: nobody else takes them");

    // David's instance stops: he is offline for the next message. Eva unmutes.
    db.execute("select public.chat_push_presence_clear($1)", &[&instance]).await.expect("cleared");
    user(&world, &EVA)
        .await
        .execute("select public.chat_mute_thread($1, null)", &[&CLASS_3B_PARENTS])
        .await
        .expect("Eva unmutes");
    for c in &got {
        assert!(finish(&db, c.0, "sent").await);
    }
    post(&world, &ALICE, CLASS_3B_PARENTS, "Bring a coat").await;
    assert_eq!(decide(&db, &["webhook"]).await, 3, "Carla, David and Eva by webhook");
    let last_used: Option<chrono::DateTime<chrono::Utc>> = db
        .query_one("select last_used_at from public.push_devices where id = $1", &[&device])
        .await
        .expect("device")
        .get(0);
    assert!(last_used.is_some(), "a sent push marks the device used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deciding_at_once_write_each_delivery_once() {
    let world = quiet_world().await;
    let first = drained(&world).await;
    let second = service(&world).await;
    let mut messages = Vec::new();
    for i in 0..40 {
        messages.push(post(&world, &ALICE, CLASS_3B_PARENTS, &format!("note {i}")).await);
    }
    let (a, b) = tokio::join!(decide(&first, &["webhook"]), decide(&second, &["webhook"]));
    assert_eq!(a + b, 40 * 3, "three parents each, once, split between the instances");
    let rows: i64 = first
        .query_one("select count(*) from public.chat_push_deliveries where message_id = any($1)", &[&messages])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_gives_the_same_delivery_again_and_a_gone_device_is_deleted() {
    let world = quiet_world().await;
    let db = drained(&world).await;
    let device = register_fcm(&world, &CARLA, "carla-old-phone").await;
    post(&world, &ALICE, ALICE_CARLA, "Are you coming?").await;
    assert_eq!(decide(&db, &["fcm"]).await, 1);
    let first = claim(&db, 0).await;
    assert_eq!(first.len(), 1);
    // The instance dies mid-send: its lease runs out.
    db.execute("update public.chat_push_deliveries set leased_until = now() - interval '1 second'", &[])
        .await
        .expect("lease ran out");
    let again = claim(&db, 0).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, first[0].0, "the same delivery id: the receiver's idempotency key");
    assert_eq!(again[0].6, 2, "second attempt");

    // A retry is not due before its time.
    db.execute("select public.chat_push_finish($1, 'retry', 'HTTP 503', now() + interval '1 hour')", &[&again[0].0])
        .await
        .expect("retry later");
    assert!(claim(&db, 0).await.is_empty());
    db.execute("update public.chat_push_deliveries set next_attempt_at = now()", &[]).await.expect("due now");
    let third = claim(&db, 0).await;
    assert_eq!(third[0].0, first[0].0);
    assert!(finish(&db, third[0].0, "gone").await, "FCM: UNREGISTERED");
    let left: i64 =
        db.query_one("select count(*) from public.push_devices where id = $1", &[&device]).await.expect("count").get(0);
    assert_eq!(left, 0, "a device the provider reports gone is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_in_one_thread_is_one_push_with_the_newest_preview_and_the_next_waits_for_the_gap() {
    let world = quiet_world().await;
    let db = drained(&world).await;
    for text in ["one", "two", "three"] {
        post(&world, &ALICE, ALICE_CARLA, text).await;
    }
    assert_eq!(decide(&db, &["webhook"]).await, 3);
    let got = claim(&db, 10).await;
    assert_eq!(got.len(), 1, "collapsed: {got:?}");
    assert_eq!((got[0].4.as_str(), got[0].5), ("three", 2), "the newest, standing for two more");
    assert!(finish(&db, got[0].0, "sent").await);

    post(&world, &ALICE, ALICE_CARLA, "four").await;
    decide(&db, &["webhook"]).await;
    assert!(claim(&db, 3600).await.is_empty(), "within the gap after a push: it waits");
    let later = claim(&db, 0).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].4, "four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_seen_only_by_their_owner_and_a_token_registered_again_is_one_row() {
    let world = quiet_world().await;
    let first = register_fcm(&world, &CARLA, "shared-tablet").await;
    assert_eq!(register_fcm(&world, &CARLA, "shared-tablet").await, first, "same device, same row");
    let visible = |who: &'static Person| {
        let world = &world;
        async move { user(world, who).await.query("select id from public.push_devices", &[]).await.expect("select").len() }
    };
    assert_eq!(visible(&CARLA).await, 1);
    assert_eq!(visible(&DAVID).await, 0, "another user's device is invisible");
    let deleted = user(&world, &DAVID)
        .await
        .execute("delete from public.push_devices where id = $1", &[&first])
        .await
        .expect("delete runs");
    assert_eq!(deleted, 0, "and cannot be deleted by them");
    // David signs in on the same tablet: the device is his now.
    assert_eq!(register_fcm(&world, &DAVID, "shared-tablet").await, first);
    assert_eq!((visible(&CARLA).await, visible(&DAVID).await), (0, 1));
    let secrets = user(&world, &DAVID).await.query("select p256dh from public.push_devices", &[]).await;
    assert!(secrets.is_err(), "Web Push keys are not readable back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muting_is_not_a_read_and_only_a_participant_can_mute() {
    let world = quiet_world().await;
    let db = service(&world).await;
    let reads = || async {
        let n: i64 = db
            .query_one("select count(*) from public.chat_membership_events where kind = 'read'", &[])
            .await
            .expect("count")
            .get(0);
        n
    };
    let before = reads().await;
    user(&world, &CARLA)
        .await
        .execute("select public.chat_mute_thread($1, now() + interval '1 day')", &[&CLASS_3B_PARENTS])
        .await
        .expect("muted");
    assert_eq!(reads().await, before, "no read-state event for a mute");
    let refused = user(&world, &CARLA)
        .await
        .execute("select public.chat_mute_thread($1, null)", &[&supabase_standin::seed::STAFF_ROOM])
        .await
        .expect_err("not her thread");
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_removed_after_the_decision_is_not_sent_the_push() {
    let world = quiet_world().await;
    let db = drained(&world).await;
    post(&world, &ALICE, CLASS_3B_PARENTS, "Parents' evening on Thursday").await;
    assert!(decide(&db, &["webhook"]).await >= 2, "Carla and others decided while members");
    db.execute(
        "delete from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("Carla removed before the send");
    let got = claim(&db, 0).await;
    assert!(!got.is_empty(), "the other members' pushes go out");
    assert!(got.iter().all(|c| c.2 != CARLA.id), "nothing for Carla once removed: {got:?}");
    let row = db
        .query_one("select state, last_error from public.chat_push_deliveries where user_id = $1", &[&CARLA.id])
        .await
        .expect("Carla's delivery is kept, dropped");
    assert_eq!(row.get::<_, String>(0), "dropped");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("no longer a participant of the thread"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_report_moves_one_heartbeat_and_rewrites_no_users_row() {
    let world = quiet_world().await;
    let db = service(&world).await;
    let (instance, other) = (Uuid::new_v4(), Uuid::new_v4());
    let report = "select public.chat_push_presence_report($1, $2, $3, 30)";
    let online = vec![DAVID.id, EVA.id, CARLA.id];
    let none: Vec<Uuid> = Vec::new();
    let rows: i32 = db.query_one(report, &[&instance, &online, &none]).await.expect("first report").get(0);
    assert_eq!(rows, 3);
    let versions = "select user_id, xmin::text from public.chat_push_online where instance_id = $1 order by user_id";
    let before: Vec<(Uuid, String)> =
        db.query(versions, &[&instance]).await.expect("rows").iter().map(|r| (r.get(0), r.get(1))).collect();
    let beat = "select expires_at from public.chat_push_instances where instance_id = $1";
    let first: chrono::DateTime<chrono::Utc> = db.query_one(beat, &[&instance]).await.expect("heartbeat").get(0);

    // The next reports carry only who came or went: the users' rows stay as written.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let rows: i32 = db.query_one(report, &[&instance, &none, &none]).await.expect("a quiet report").get(0);
    assert_eq!(rows, 3);
    let after: Vec<(Uuid, String)> =
        db.query(versions, &[&instance]).await.expect("rows").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(before, after, "no user's row was rewritten");
    let second: chrono::DateTime<chrono::Utc> = db.query_one(beat, &[&instance]).await.expect("heartbeat").get(0);
    assert!(second > first, "the heartbeat moved: {first} -> {second}");
    let rows: i32 = db.query_one(report, &[&instance, &none, &vec![EVA.id]]).await.expect("Eva left").get(0);
    assert_eq!(rows, 2);
    let present = "select count(*) from public.chat_push_presence where user_id = $1 and expires_at > now()";
    let david: i64 = db.query_one(present, &[&DAVID.id]).await.expect("presence").get(0);
    let eva: i64 = db.query_one(present, &[&EVA.id]).await.expect("presence").get(0);
    assert_eq!((david, eva), (1, 0), "the readers' view: David online, Eva not");

    // Silent for over a minute: the next report of any instance removes its users, and its own
    // next report answers a count that tells it to report everyone again.
    db.execute(
        "update public.chat_push_instances set expires_at = now() - interval '2 minutes' where instance_id = $1",
        &[&instance],
    )
    .await
    .expect("silence");
    let david: i64 = db.query_one(present, &[&DAVID.id]).await.expect("presence").get(0);
    assert_eq!(david, 0, "an expired heartbeat: offline at once for the readers");
    db.query_one(report, &[&other, &vec![ALICE.id], &none]).await.expect("another instance reports");
    let rows: i32 = db.query_one(report, &[&instance, &none, &none]).await.expect("back").get(0);
    assert_eq!(rows, 0, "its users were removed: the gateway sees 0 where it holds 2 and reports all again");
    let rows: i32 = db.query_one(report, &[&instance, &vec![DAVID.id, CARLA.id], &none]).await.expect("again").get(0);
    assert_eq!(rows, 2);
    let cleared: i32 =
        db.query_one("select public.chat_push_presence_clear($1)", &[&instance]).await.expect("clear").get(0);
    assert_eq!(cleared, 2);
    let david: i64 = db.query_one(present, &[&DAVID.id]).await.expect("presence").get(0);
    assert_eq!(david, 0, "a clean stop takes its users offline");
}
