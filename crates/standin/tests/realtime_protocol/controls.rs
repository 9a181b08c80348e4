//! The stand-in's fault and load controls and its limits, over the same raw client: dropped
//! sockets, expired tokens, injected events and their pace, a paused feed, added latency, the
//! heartbeat timeout, a socket that never reads, and a lost change feed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::realtime::InjectSpec;
use supabase_standin::seed::{CARLA, CLASS_3B_PARENTS};
use supabase_standin::Stack;

use super::{insert, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_drop_sockets_expire_tokens_and_inject_events() {
    let stack = Stack::start().await.expect("stack");
    let control = stack.realtime();
    let mut c = Client::connect(&stack, true).await;
    c.join(
        "realtime:i",
        json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
        &stack.keys().service_key,
    )
    .await;
    c.expect_event("system").await;
    let sent = control
        .inject(InjectSpec {
            schema: "public".into(),
            table: "messages".into(),
            change_type: "INSERT".into(),
            rows: vec![
                json!({"id": "$uuid", "thread_id": CLASS_3B_PARENTS, "content": "synthetic", "created_at": "$now"}),
            ],
            rate_per_sec: 20_000,
            count: 2_000,
        })
        .await;
    assert_eq!(sent, 2_000);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..2_000 {
        let change = c.expect_event("postgres_changes").await;
        assert!(
            ids.insert(change["data"]["record"]["id"].as_str().unwrap_or_default().to_string()),
            "fresh uuid per event"
        );
    }

    // A user token that expires closes the channel with a system error.
    let mut short = Client::connect(&stack, false).await;
    let token = stack.keys().user_token(CARLA.id, CARLA.email, Alg::Es256, 1);
    short.join("realtime:short", json!([{"event": "INSERT", "schema": "public", "table": "messages"}]), &token).await;
    let system = loop {
        let s = short.expect_event("system").await;
        if s["status"] == "error" {
            break s;
        }
    };
    assert!(system["message"].as_str().unwrap_or_default().contains("expired"), "{system}");
    short.expect_event("phx_close").await;

    assert!(control.socket_count() >= 2);
    control.drop_all_sockets();
    assert!(c.next().await.is_none(), "dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_latency_and_heartbeat_timeout() {
    let stack = Stack::start().await.expect("stack");
    let control = stack.realtime();
    let mut c = Client::connect(&stack, true).await;
    c.join(
        "realtime:p",
        json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
        &stack.keys().service_key,
    )
    .await;
    c.expect_event("system").await;

    control.pause_feed();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = insert(&stack, CLASS_3B_PARENTS, "while paused 1").await;
    let second = insert(&stack, CLASS_3B_PARENTS, "while paused 2").await;
    assert!(c.next_within(Duration::from_millis(400)).await.is_none(), "nothing while paused");
    control.resume_feed();
    for id in [first, second] {
        assert_eq!(c.expect_event("postgres_changes").await["data"]["record"]["id"], id.to_string(), "in commit order");
    }

    control.set_latency(Duration::from_millis(400));
    let started = Instant::now();
    insert(&stack, CLASS_3B_PARENTS, "late").await;
    let r = c.send("phoenix", "heartbeat", json!({}), None).await;
    let (got, _, event, _) = c.next().await.expect("frame");
    assert_eq!((got.as_deref(), event.as_str()), (Some(r.as_str()), "phx_reply"), "replies are not delayed");
    c.expect_event("postgres_changes").await;
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    control.set_latency(Duration::ZERO);

    control.set_heartbeat_timeout(Duration::from_millis(300));
    let mut silent = Client::connect(&stack, false).await;
    let started = Instant::now();
    assert!(silent.next_within(Duration::from_secs(5)).await.is_none(), "closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_controls_need_the_service_key() {
    let stack = Stack::start().await.expect("stack");
    let http = reqwest::Client::new();
    let url = |action: &str| format!("{}/_standin/realtime/{action}", stack.url());
    let keys = stack.keys();
    let refused = http.get(url("stats")).header("apikey", &keys.anon_key).send().await.expect("http");
    assert_eq!(refused.status(), 401);
    let bad_vsn =
        tokio_tungstenite::connect_async(format!("{}?apikey={}&vsn=3.0.0", stack.realtime_url(), keys.anon_key)).await;
    assert!(matches!(bad_vsn, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 400));

    let mut c = Client::connect(&stack, false).await;
    c.join("realtime:h", json!([{"event": "*", "schema": "public", "table": "messages"}]), &keys.service_key).await;
    c.expect_event("system").await;
    let stats: Value = http
        .get(url("stats"))
        .header("apikey", &keys.service_key)
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!((stats["sockets"].clone(), stats["channels"].clone()), (json!(1), json!(1)), "{stats}");

    let spec = json!({"schema": "public", "table": "messages", "rows": [{"id": "$uuid", "content": "a"}, {"id": "$uuid", "content": "b"}],
                      "rate_per_sec": 5000, "count": 500});
    let sent: Value = http
        .post(url("inject"))
        .header("apikey", &keys.service_key)
        .json(&spec)
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(sent, json!({"sent": 500}));
    for i in 0..500 {
        let change = c.expect_event("postgres_changes").await;
        assert_eq!(change["data"]["record"]["content"], if i % 2 == 0 { "a" } else { "b" }, "rows are cycled");
    }

    let post =
        |action: &str, body: Value| http.post(url(action)).header("apikey", &keys.service_key).json(&body).send();
    assert_eq!(post("refuse_joins", json!({"refuse": true})).await.expect("http").status(), 200);
    let reply = c.join("realtime:h2", json!([]), &keys.service_key).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(post("refuse_joins", json!({"refuse": false})).await.expect("http").status(), 200);
    assert_eq!(post("latency", json!({"ms": "x"})).await.expect("http").status(), 400);
    assert_eq!(post("drop", json!({})).await.expect("http").status(), 200);
    assert!(c.next().await.is_none(), "dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_paces_events_at_the_requested_rate() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, true).await;
    c.join(
        "realtime:rate",
        json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
        &stack.keys().service_key,
    )
    .await;
    c.expect_event("system").await;
    let control = stack.realtime();
    let spec = InjectSpec {
        schema: "public".into(),
        table: "messages".into(),
        change_type: "INSERT".into(),
        rows: vec![json!({"id": "$uuid", "thread_id": CLASS_3B_PARENTS, "content": "paced", "created_at": "$now"})],
        rate_per_sec: 10_000,
        count: 5_000,
    };
    let started = Instant::now();
    let inject = tokio::spawn(async move { control.inject(spec).await });
    let mut last_stamp = String::new();
    for _ in 0..5_000 {
        let change = c.expect_event("postgres_changes").await;
        let data = &change["data"];
        let created = data["record"]["created_at"].as_str().unwrap_or_default().to_string();
        let commit = chrono::DateTime::parse_from_rfc3339(data["commit_timestamp"].as_str().unwrap_or_default())
            .expect("commit ts");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(&created).expect("created_at"),
            commit,
            "$now is the commit timestamp"
        );
        assert!(created >= last_stamp, "emission order");
        last_stamp = created;
    }
    assert_eq!(inject.await.expect("inject"), 5_000);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "5000 at 10k/s took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_dropped_without_slowing_the_others() {
    let stack = Stack::start().await.expect("stack");
    let control = stack.realtime();
    let key = stack.keys().service_key.clone();
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "messages"}]);
    control.set_socket_queue_capacity(64);
    let mut stuck = Client::connect(&stack, true).await;
    stuck.join("realtime:stuck", bindings.clone(), &key).await;
    stuck.expect_event("system").await;
    control.set_socket_queue_capacity(16_384);
    let mut reader = Client::connect(&stack, false).await;
    reader.join("realtime:reader", bindings, &key).await;
    reader.expect_event("system").await;

    // 3000 events of 16 KiB: far more than the stuck socket's queue and kernel buffers hold.
    let spec = InjectSpec {
        schema: "public".into(),
        table: "messages".into(),
        change_type: "INSERT".into(),
        rows: vec![json!({"id": "$uuid", "content": "x".repeat(16 * 1024), "created_at": "$now"})],
        rate_per_sec: 20_000,
        count: 3_000,
    };
    let injector = control.clone();
    let started = Instant::now();
    let inject = tokio::spawn(async move { injector.inject(spec).await });
    for _ in 0..3_000 {
        reader.expect_event("postgres_changes").await;
    }
    assert_eq!(inject.await.expect("inject"), 3_000);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(control.stats().slow_drops >= 1, "{:?}", control.stats());
    let deadline = Instant::now() + Duration::from_secs(5);
    while control.socket_count() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(control.socket_count(), 1, "the stuck socket is gone, the reader stays");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_change_feed_is_reported_and_reopened() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, false).await;
    c.join(
        "realtime:feed",
        json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
        &stack.keys().service_key,
    )
    .await;
    c.expect_event("system").await;
    let db = stack.sql().await;
    let killed: i64 = db
        .query_one(
            "select count(pg_terminate_backend(active_pid)) from pg_replication_slots \
             where database = current_database() and slot_name like 'standin_%' and active_pid is not null",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "one feed connection with its temporary slot");
    let system = c.expect_event("system").await;
    assert_eq!(
        (system["status"].clone(), system["extension"].clone()),
        (json!("error"), json!("postgres_changes")),
        "{system}"
    );
    // A new slot is created; changes committed after that flow again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = insert(&stack, CLASS_3B_PARENTS, "after the feed came back").await;
        if let Some((_, _, event, payload)) = c.next_within(Duration::from_millis(1500)).await {
            assert_eq!(event, "postgres_changes");
            assert_eq!(payload["data"]["record"]["id"], id.to_string());
            break;
        }
        assert!(Instant::now() < deadline, "the feed did not come back");
    }
}
