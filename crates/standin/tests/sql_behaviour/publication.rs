//! The membership-events migration: the `supabase_realtime` publication carries no table whose
//! primary key names a person or a thread; participant and switch changes are copied into
//! `chat_membership_events`, which no app user can read or prune and the service role can; the
//! sync-horizon check answers the service role only.

use serde_json::{json, Value};
use supabase_standin::seed::{CARLA, CLASS_3B_PARENTS, FARID};
use uuid::Uuid;

use super::{start, Api};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_published_primary_key_names_a_person_or_a_thread() {
    let (stack, _) = start().await;
    let db = stack.sql().await;
    let published: Vec<String> = db
        .query("select tablename::text from pg_publication_tables where pubname = 'supabase_realtime' order by 1", &[])
        .await
        .expect("publication")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["chat_membership_events", "messages"]);
    // Every primary-key column of every published table: none references a user, profile or
    // thread, none is a uuid naming one.
    let keys = db
        .query(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                    exists(select 1 from pg_constraint f
                            where f.contype = 'f' and f.conrelid = c.oid and a.attnum = any(f.conkey))
               from pg_publication_tables p
               join pg_class c on c.oid = format('%I.%I', p.schemaname, p.tablename)::regclass
               join pg_constraint k on k.conrelid = c.oid and k.contype = 'p'
               join pg_attribute a on a.attrelid = c.oid and a.attnum = any(k.conkey)
              where p.pubname = 'supabase_realtime' order by 1, 2",
            &[],
        )
        .await
        .expect("keys");
    let keys: Vec<(String, String, String, bool)> =
        keys.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        keys,
        [
            ("chat_membership_events".into(), "id".into(), "bigint".into(), false),
            ("messages".into(), "id".into(), "uuid".into(), false),
        ]
    );
}

/// Long on purpose: one sequence of changes on one stack whose events are checked in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_switch_changes_become_events_only_the_service_role_reads() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let db = stack.sql().await;
    let service = stack.keys().service_key.clone();
    // The seed's own join events may be older than a minute (the template database is reused).
    db.execute("delete from public.chat_membership_events", &[]).await.expect("a clean slate");
    db.execute(
        "update public.thread_participants set last_read_at = now() where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("read");
    db.execute(
        "delete from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("removal");
    let (status, set) = api.rpc(&CARLA, "chat_set_realtime", json!({"p_enabled": false})).await;
    assert_eq!(status, 200, "{set}");
    db.execute("delete from public.chat_realtime_settings where user_id = $1", &[&CARLA.id]).await.expect("unset");

    let rows = db
        .query(
            "select kind, thread_id, realtime_enabled, last_read_at is not null from public.chat_membership_events
              where user_id = $1 order by id",
            &[&CARLA.id],
        )
        .await
        .expect("events");
    let rows: Vec<(String, Option<Uuid>, Option<bool>, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let three_b = Some(CLASS_3B_PARENTS);
    assert_eq!(
        rows.iter().filter(|r| r.0 != "join").cloned().collect::<Vec<_>>(),
        [
            ("read".to_string(), three_b, None, true),
            ("leave".to_string(), three_b, None, false),
            ("switch".to_string(), None, Some(false), false),
            ("switch".to_string(), None, Some(true), false),
        ],
        "a removed switch row means realtime on"
    );

    // No app user reads or prunes the events, not even their own; the service role does.
    for who in [&CARLA, &FARID] {
        let (status, body) = api.get(who, "chat_membership_events?select=id,user_id").await;
        assert!(status == 401 || status == 403, "{status} {body}");
        assert_eq!(body["code"], "42501", "{body}");
        let (status, body) = api.rpc(who, "chat_prune_membership_events", json!({"p_keep_seconds": 0})).await;
        assert!(status == 401 || status == 403 || status == 404, "{status} {body}");
        let (status, body) = api.rpc(who, "chat_sync_horizon_check", json!({})).await;
        assert!(status == 401 || status == 403 || status == 404, "{status} {body}");
    }
    let (status, body) =
        api.call(reqwest::Method::GET, "chat_membership_events?select=id", Some(&service), Some(&service), None).await;
    assert_eq!(status, 200, "{body}");
    let before = body.as_array().map(Vec::len).unwrap_or(0);
    assert!(before >= rows.len(), "{body}");

    // Pruning keeps recent events (at least a minute, whatever is asked) and removes old ones.
    let prune = |keep: i64| {
        let (api, service) = (&api, &service);
        async move {
            let args = Some(json!({"p_keep_seconds": keep}));
            api.call(reqwest::Method::POST, "rpc/chat_prune_membership_events", Some(service), Some(service), args)
                .await
        }
    };
    assert_eq!(prune(0).await, (200, json!(0)), "nothing older than a minute yet");
    db.execute("update public.chat_membership_events set created_at = created_at - interval '11 minutes'", &[])
        .await
        .expect("age");
    assert_eq!(prune(600).await, (200, Value::from(before)));
    let left: i64 =
        db.query_one("select count(*) from public.chat_membership_events", &[]).await.expect("count").get(0);
    assert_eq!(left, 0);

    let (status, check) = api
        .call(reqwest::Method::POST, "rpc/chat_sync_horizon_check", Some(&service), Some(&service), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["sees_all_sessions"], true, "the migrations' owner is a superuser here: {check}");
    assert!(check["owner"].as_str().is_some_and(|o| !o.is_empty()), "{check}");
}
