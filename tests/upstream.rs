//! The gateway's Phoenix client against the Realtime stand-in: subscribed only after "Subscribed
//! to PostgreSQL", changes in order, losses reported once and healed by re-joining, a clean leave.

use std::time::Duration;

use realtime_gateway::feed::realtime::{self as upstream, Binding, UpstreamConfig, Vsn};
use realtime_gateway::feed::{Lost, UpstreamEvent};
use supabase_standin::seed::{ALICE, CLASS_3B_PARENTS};
use supabase_standin::Stack;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn config(stack: &Stack, vsn: Vsn) -> UpstreamConfig {
    UpstreamConfig {
        websocket_url: stack.realtime_url(),
        apikey: stack.keys().anon_key.clone(),
        access_token: stack.keys().service_key.clone(),
        vsn,
        topic: "realtime:upstream-test".into(),
        bindings: vec![Binding::table("INSERT", "messages"), Binding::table("INSERT", "chat_membership_events")],
        heartbeat_interval: Duration::from_millis(200),
        join_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
    }
}

async fn next(events: &mut mpsc::Receiver<UpstreamEvent>) -> UpstreamEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an upstream event in time")
        .expect("upstream running")
}

async fn insert(stack: &Stack, content: &str) -> uuid::Uuid {
    stack
        .sql()
        .await
        .query_one(
            "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
            &[&CLASS_3B_PARENTS, &ALICE.id, &content],
        )
        .await
        .expect("insert")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_receives_and_heals_in_both_serializers() {
    let stack = Stack::start().await.expect("stand-in stack");
    for vsn in [Vsn::V1, Vsn::V2] {
        let (tx, mut events) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let task = upstream::spawn(config(&stack, vsn), tx, stop.clone());
        assert!(matches!(next(&mut events).await, UpstreamEvent::Live { generation: 1 }));

        let id = insert(&stack, "over the upstream").await;
        match next(&mut events).await {
            UpstreamEvent::Message { row, committed, .. } => {
                assert_eq!(row.id, id);
                assert_eq!(row.content, "over the upstream");
                assert!(committed.is_some(), "the commit time comes with the change");
            }
            other => panic!("expected a change, got {other:?}"),
        }

        // A lost socket is reported once, then healed with a new generation.
        let realtime = stack.realtime();
        realtime.set_refuse_joins(true);
        realtime.drop_all_sockets();
        match next(&mut events).await {
            UpstreamEvent::Down { reason } => assert!(!reason.to_string().is_empty()),
            other => panic!("expected Down, got {other:?}"),
        }
        // Retries are refused a few times without another Down.
        let refused_before = realtime.stats().joins_refused;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while realtime.stats().joins_refused < refused_before + 3 {
            assert!(tokio::time::Instant::now() < deadline, "the upstream kept retrying");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(events.try_recv().is_err(), "refused retries report nothing more: one Down per loss");
        realtime.set_refuse_joins(false);
        assert!(
            matches!(next(&mut events).await, UpstreamEvent::Live { generation: 2 }),
            "one Down per loss, then Live"
        );

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("leaves within a bound")
            .expect("task ends cleanly");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while stack.realtime().channel_count() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the channel was left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_reported_by_name() {
    let stack = Stack::start().await.expect("stand-in stack");
    let mut cfg = config(&stack, Vsn::V2);
    cfg.apikey = "not-a-key".into();
    let (tx, mut events) = mpsc::channel(8);
    let stop = CancellationToken::new();
    let _task = upstream::spawn(cfg, tx, stop.clone());
    match next(&mut events).await {
        UpstreamEvent::Down { reason } => {
            assert!(matches!(reason, Lost::BadApiKey(_)), "{reason:?}");
            assert!(reason.to_string().contains("SUPABASE_ANON_KEY"), "{reason}");
        }
        other => panic!("expected Down, got {other:?}"),
    }
}
