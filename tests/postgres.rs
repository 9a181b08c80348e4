//! The gateway on plain PostgreSQL (no Realtime, no PostgREST): the main scenarios of the other
//! modules run unchanged on the PostgreSQL backend, and what only this backend has is tested
//! here: the standalone base on a fresh database, a database blip (every gateway connection
//! terminated) and a gateway restart resumed from the durable replication slot.

use std::collections::HashMap;

use crate::common::{self, Backend, Phone, World, ARRIVES};
use crate::{delivery, rest};
use realtime_gateway::config::Config;
use realtime_gateway::server;
use reqwest::Method;
use supabase_standin::keys::Alg;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;

macro_rules! on_postgres {
    ($($module:ident :: $name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let world = World::start_postgres().await;
            $module::$name(&world).await;
        }
    )*};
}

on_postgres!(
    delivery::scenario_a_teacher_posts_in_3b_both_parents_phones_get_it_and_4a_does_not,
    delivery::scenario_subscribe_thread_is_decided_by_rls_and_errors_keep_the_socket_open,
    rest::scenario_unread_count_and_mark_read,
    rest::scenario_mark_read_refuses_bad_ids_and_strangers,
    rest::scenario_offline_messages_only_of_visible_threads_with_senders_and_a_safe_cursor,
    rest::scenario_offline_messages_validates_last_check_time,
    rest::scenario_rest_unsubscribe_stops_live_delivery_until_subscribe,
    rest::scenario_a_sender_who_left_the_thread_keeps_name_and_role_in_offline_sync,
    rest::scenario_marking_read_on_one_device_tells_every_device_with_the_new_unread_count,
);

/// Terminates every connection the gateway holds (feed and pool), as a failover or an
/// administrator would.
pub(crate) async fn terminate_gateway_connections(world: &World) -> i64 {
    let db = world.stack.sql().await;
    let row = db
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where usename = 'chat_gateway' and datname = current_database()",
            &[],
        )
        .await
        .expect("terminate");
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_connection_terminated_loses_and_duplicates_nothing() {
    let world = World::start_postgres().await;
    let mut carla = world.phone(&CARLA).await;
    let before = world.post(&ALICE, CLASS_3B_PARENTS, "before the blip").await;
    carla.receive_until(before).await;
    // A REST call so the pool holds a connection to terminate too.
    let (status, _) = world.rest(Method::GET, "/api/chat/unread-count", Some(&world.token(&CARLA))).await;
    assert_eq!(status, 200);

    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("around the blip {i}")).await);
    }
    assert!(terminate_gateway_connections(&world).await >= 1, "the gateway's connections were there to terminate");
    for i in 3..6 {
        sent.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("around the blip {i}")).await);
    }
    let after = world.post(&ALICE, CLASS_3B_PARENTS, "after the blip").await;

    let (_, received) = carla.receive_until(after).await;
    let want: Vec<String> = sent.iter().map(Uuid::to_string).collect();
    assert_eq!(received, want, "every message exactly once, in order");
    assert!(world.metric("gateway_upstream_losses_total").await >= 1, "the loss was noticed");
    // The pool recovered: REST answers again with the user's rights.
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&world.token(&CARLA))).await;
    assert_eq!(status, 200, "{body}");
}

/// Resumes with `?since=`: the replayed and then live `new_message` ids until `until` arrives.
async fn resume_until(world: &World, since: &str, until_post: &str) -> (Vec<String>, String) {
    let url = format!("{}?token={}&since={}", world.ws_base(), world.token(&CARLA), urlencoding::encode(since));
    let mut phone = Phone::connect(&url).await.expect("resumes");
    assert_eq!(phone.expect_any().await["type"], "connection_established");
    let mut ids = Vec::new();
    loop {
        let frame = phone.expect_any().await;
        match frame["type"].as_str() {
            Some("new_message") => ids.push(frame["data"]["id"].as_str().unwrap_or_default().to_string()),
            Some("sync_complete") => break,
            _ => {}
        }
    }
    let last = world.post(&ALICE, CLASS_3B_PARENTS, until_post).await;
    let (_, live) = phone.receive_until(last).await;
    ids.extend(live);
    ids.push(last.to_string());
    (ids, last.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_delivers_what_was_committed_while_it_was_down_exactly_once() {
    // No catch-up margin: the new process's own start-up catch-up cannot reach the messages
    // committed while it was down, so only the durable slot can bring them to the router.
    let mut world = World::start_on(Backend::Postgres, |c| c.router.catchup_margin = std::time::Duration::ZERO).await;
    let mut carla = world.phone(&CARLA).await;
    let first = world.post(&ALICE, CLASS_3B_PARENTS, "before the restart").await;
    let (frame, _) = carla.receive_until(first).await;
    let cursor = frame["cursor"].as_str().expect("a cursor").to_string();
    // The slot confirms what the router fanned out (checked, not assumed, before stopping).
    wait_slot_confirmed_past_now(&world).await;

    world.stop_gateway().await;
    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(world.post(&ALICE, CLASS_3B_PARENTS, &format!("while the gateway is down {i}")).await);
    }
    world.start_gateway().await;

    let (ids, last) = resume_until(&world, &cursor, "after the restart").await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    for id in &missed {
        assert_eq!(counts.get(id.to_string().as_str()), Some(&1), "{id} exactly once in {ids:?}");
    }
    assert!(counts.get(first.to_string().as_str()).copied().unwrap_or(0) <= 1, "{ids:?}");
    assert_eq!(ids.last(), Some(&last));
    let missed: Vec<String> = missed.iter().map(Uuid::to_string).collect();
    let order: Vec<String> = ids.iter().filter(|id| missed.contains(id)).cloned().collect();
    assert_eq!(order, missed, "in commit order");
    // The new process routed exactly the five from the slot and the live one: the message
    // confirmed before the stop did not come back.
    assert_eq!(world.metric("gateway_messages_routed_total").await, 6);
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while world.gateway().slot_lag_bytes().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the slot lag gauge never got a reading");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let scraped = world.metric_signed("gateway_slot_lag_bytes").await;
    assert!(scraped >= 0, "/metrics shows the slot's lag (-1 means no reading): {scraped}");
}

/// Waits until the gateway's slot has confirmed every change committed before this call.
pub(crate) async fn wait_slot_confirmed_past_now(world: &World) {
    let db = world.stack.sql().await;
    let now: String = db.query_one("select pg_current_wal_lsn()::text", &[]).await.expect("lsn").get(0);
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let done: bool = db
            .query_one(
                "select coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false) \
                 from pg_replication_slots where slot_name like 'gw\\_%' and database = current_database()",
                &[&now],
            )
            .await
            .expect("slot")
            .get(0);
        if done {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot never confirmed {now}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_postgresql_needs_only_the_standalone_base_and_the_migrations() {
    common::init_logs();
    // A stand-in stack only for its signing keys; the gateway's database is a new, empty one.
    let stack = supabase_standin::Stack::start().await.expect("stack");
    let cluster = supabase_standin::pg::Cluster::shared().await.expect("cluster");
    let name = format!("fresh_{}", Uuid::new_v4().simple());
    let admin = supabase_standin::pg::connect(&cluster.url("postgres")).await.expect("admin");
    admin.batch_execute(&format!("create database {name} template template0")).await.expect("create database");
    let db = supabase_standin::pg::connect(&cluster.url(&name)).await.expect("connect");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/supabase/standalone/00_base.sql")];
    let mut migrations: Vec<String> = std::fs::read_dir(format!("{root}/supabase/migrations"))
        .expect("migrations")
        .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
        .filter(|p| p.ends_with(".sql"))
        .collect();
    migrations.sort();
    files.extend(migrations);
    files.push(format!("{root}/supabase/seed.sql"));
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("sql file");
        db.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }

    let url = format!("postgres://chat_gateway@127.0.0.1:{}/{name}", cluster.port());
    let config = Config::for_postgres(&url, &format!("gw_{name}"), &stack.keys().jwt_secret).expect("config");
    let gateway = server::start(config).await.expect("gateway starts");
    let base = format!("http://{}", gateway.local_addr());
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let token = stack.token(&CARLA, Alg::Hs256);
    let mut carla = Phone::connect(&format!("ws://{}/?token={token}", gateway.local_addr())).await.expect("phone");
    assert_eq!(carla.expect_any().await["type"], "connection_established");
    let id: Uuid = db
        .query_one(
            "insert into public.messages (thread_id, sender_id, content) values ($1, $2, 'fresh') returning id",
            &[&CLASS_3B_PARENTS, &ALICE.id],
        )
        .await
        .expect("insert")
        .get(0);
    let (frame, _) = carla.receive_until(id).await;
    assert_eq!(frame["data"]["sender"]["full_name"], "Alice Martin");
    let unread = http.get(format!("{base}/api/chat/unread-count")).bearer_auth(&token).send().await.expect("rest");
    assert_eq!(unread.status().as_u16(), 200);
    gateway.shutdown().await;
}
