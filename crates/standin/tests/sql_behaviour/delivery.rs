//! The delivery migration through PostgREST: app users cannot forge notices, the realtime switch
//! row is its owner's alone, a user's unread count is the service role's only, and senders are
//! named exactly on the messages a reader may read.

use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{
    Person, ALICE, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID, EVA, FARID, GRACE, PEOPLE,
};

use super::{start, unread_by_hand, Api};

impl Api<'_> {
    async fn as_service(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let service = self.stack.keys().service_key.clone();
        self.call(method, path, Some(&service), Some(&service), body).await
    }

    async fn as_user(&self, who: &Person, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = self.stack.token(who, Alg::Hs256);
        self.call(method, path, Some(&token), Some(&self.stack.keys().anon_key), body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_users_cannot_post_system_notices_the_service_role_can() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let post = reqwest::Method::POST;
    let notice = |sender: uuid::Uuid| json!({"thread_id": CLASS_3B_PARENTS, "sender_id": sender, "content": "School closed tomorrow", "message_type": "system"});

    let (status, e) = api.as_user(&CARLA, post.clone(), "messages", Some(notice(CARLA.id))).await;
    assert_eq!((status, e["code"].clone()), (403, json!("42501")), "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("row-level security"), "{e}");
    // Her ordinary message still goes through.
    let mut text = notice(CARLA.id);
    text["message_type"] = json!("text");
    let (status, e) = api.as_user(&CARLA, post.clone(), "messages", Some(text)).await;
    assert_eq!(status, 201, "{e}");

    let (status, e) = api.as_service(post, "messages", Some(notice(ALICE.id))).await;
    assert_eq!(status, 201, "{e}");
    let n: i64 = stack
        .sql()
        .await
        .query_one(
            "select count(*) from public.messages where message_type = 'system' and sender_id = $1",
            &[&ALICE.id],
        )
        .await
        .expect("count")
        .get(0);
    let forged: i64 = stack
        .sql()
        .await
        .query_one(
            "select count(*) from public.messages where message_type = 'system' and sender_id = $1",
            &[&CARLA.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!((n, forged), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_switch_is_its_owners_alone() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let (status, on) = api.rpc(&CARLA, "chat_realtime_enabled", json!({})).await;
    assert_eq!((status, on), (200, json!(true)), "on without a row");
    let (status, stored) = api.rpc(&CARLA, "chat_set_realtime", json!({"p_enabled": false})).await;
    assert_eq!((status, stored), (200, json!(false)));
    let (_, stored) = api.rpc(&CARLA, "chat_set_realtime", json!({"p_enabled": false})).await;
    assert_eq!(stored, json!(false), "setting twice updates the one row");
    let (_, carla) = api.rpc(&CARLA, "chat_realtime_enabled", json!({})).await;
    let (_, david) = api.rpc(&DAVID, "chat_realtime_enabled", json!({})).await;
    assert_eq!((carla, david), (json!(false), json!(true)));

    let rows = "chat_realtime_settings?select=user_id,realtime_enabled";
    let (_, mine) = api.as_user(&CARLA, reqwest::Method::GET, rows, None).await;
    assert_eq!(mine, json!([{"user_id": CARLA.id, "realtime_enabled": false}]));
    let (status, theirs) = api.as_user(&DAVID, reqwest::Method::GET, rows, None).await;
    assert_eq!((status, theirs), (200, json!([])), "David cannot read Carla's row");

    // David can neither change Carla's row nor create one for her.
    let carlas = format!("chat_realtime_settings?user_id=eq.{}", CARLA.id);
    let (status, _) =
        api.as_user(&DAVID, reqwest::Method::PATCH, &carlas, Some(json!({"realtime_enabled": true}))).await;
    assert!(status == 204 || status == 200, "{status}");
    let (status, e) = api
        .as_user(
            &DAVID,
            reqwest::Method::POST,
            "chat_realtime_settings",
            Some(json!({"user_id": EVA.id, "realtime_enabled": false})),
        )
        .await;
    assert_eq!((status, e["code"].clone()), (403, json!("42501")), "{e}");
    let (status, e) = api.as_user(&CARLA, reqwest::Method::PATCH, &carlas, Some(json!({"user_id": DAVID.id}))).await;
    assert_eq!((status, e["code"].clone()), (403, json!("42501")), "no moving one's row to another user: {e}");
    let db = stack.sql().await;
    let rows = db
        .query("select user_id, realtime_enabled from public.chat_realtime_settings order by user_id", &[])
        .await
        .expect("rows");
    let rows: Vec<(uuid::Uuid, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, [(CARLA.id, false)], "only Carla's own row, unchanged by David");
    let published: i64 = db
        .query_one(
            "select count(*) from pg_publication_tables
              where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'chat_realtime_settings'",
            &[],
        )
        .await
        .expect("publication")
        .get(0);
    assert_eq!(published, 0, "switch changes reach every gateway through chat_membership_events, not this table");

    let (status, e) = api
        .call(
            reqwest::Method::POST,
            "rpc/chat_set_realtime",
            None,
            Some(&stack.keys().anon_key),
            Some(json!({"p_enabled": false})),
        )
        .await;
    assert_eq!(status, 401, "anonymous callers have no switch: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unread_count_of_a_user_is_their_own_count_for_the_service_role_only() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    for who in PEOPLE {
        let (status, own) = api.rpc(&who, "chat_unread_count", json!({})).await;
        assert_eq!(status, 200, "{own}");
        let (status, of) =
            api.as_service(reqwest::Method::POST, "rpc/chat_unread_count_of", Some(json!({"p_user_id": who.id}))).await;
        assert_eq!(status, 200, "{of}");
        assert_eq!(of, own, "{}", who.full_name);
        assert_eq!(of, json!(unread_by_hand(&stack, who.id).await));
    }
    let (status, e) = api.rpc(&CARLA, "chat_unread_count_of", json!({"p_user_id": DAVID.id})).await;
    assert_eq!((status, e["code"].clone()), (403, json!("42501")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_are_named_on_readable_messages_only() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let db = stack.sql().await;
    // Grace leaves class 4A; Farid shares no thread with her any more, so RLS hides her profile.
    db.execute(
        "delete from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&CLASS_4A_PARENTS, &GRACE.id],
    )
    .await
    .expect("remove Grace");
    let (_, profile) = api.get(&FARID, &format!("profiles?id=eq.{}", GRACE.id)).await;
    assert_eq!(profile, json!([]));
    let (status, rows) = api.rpc(&FARID, "chat_offline_messages", json!({"p_since": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(status, 200, "{rows}");
    let graces: Vec<&Value> = rows
        .as_array()
        .map(|a| a.iter().filter(|r| r["sender_id"] == GRACE.id.to_string()).collect())
        .unwrap_or_default();
    assert!(!graces.is_empty());
    assert!(graces.iter().all(|r| r["sender"] == json!({"full_name": "Grace Lee", "role": "parent"})), "{graces:?}");

    // The helper answers for a message only to a reader of its thread.
    let first_of = |thread: uuid::Uuid| {
        let db = &db;
        async move {
            db.query_one("select id from public.messages where thread_id = $1 order by created_at limit 1", &[&thread])
                .await
                .expect("a message")
                .get::<_, uuid::Uuid>(0)
        }
    };
    let in_3b = first_of(CLASS_3B_PARENTS).await;
    let in_4a = first_of(CLASS_4A_PARENTS).await;
    assert_eq!(sender_as(&db, CARLA.id, in_3b).await, Some(json!({"full_name": "Alice Martin", "role": "teacher"})));
    assert_eq!(sender_as(&db, CARLA.id, in_4a).await, None, "no name for a message Carla cannot read");
}

/// `chat_private.message_sender(message)` as `user` would run it (role authenticated, the
/// user's claims), in a transaction rolled back afterwards.
async fn sender_as(db: &tokio_postgres::Client, user: uuid::Uuid, message: uuid::Uuid) -> Option<Value> {
    let claims = json!({"sub": user, "role": "authenticated"}).to_string();
    db.batch_execute("begin; set local role authenticated").await.expect("as authenticated");
    db.execute("select set_config('request.jwt.claims', $1, true)", &[&claims]).await.expect("claims");
    let answer = db.query_one("select chat_private.message_sender($1)", &[&message]).await.expect("callable").get(0);
    db.batch_execute("rollback").await.expect("rollback");
    answer
}
