//! The Realtime stand-in speaks Supabase Realtime's Phoenix protocol, checked with a raw
//! WebSocket client, fed by rows really committed in PostgreSQL.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, FARID};
use supabase_standin::Stack;
use tokio_tungstenite::tungstenite::Message;

mod controls;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    v2: bool,
    next_ref: u64,
}

impl Client {
    async fn connect(stack: &Stack, v2: bool) -> Client {
        let url = format!(
            "{}?apikey={}&vsn={}",
            stack.realtime_url(),
            stack.keys().anon_key,
            if v2 { "2.0.0" } else { "1.0.0" }
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
        Client { ws, v2, next_ref: 1 }
    }

    async fn send(&mut self, topic: &str, event: &str, payload: Value, join_ref: Option<&str>) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": join_ref}).to_string()
        };
        self.ws.send(Message::text(text)).await.expect("send");
        r
    }

    /// Next frame as (ref, topic, event, payload).
    async fn next(&mut self) -> Option<(Option<String>, String, String, Value)> {
        self.next_within(Duration::from_secs(15)).await
    }

    /// Next frame within `wait`; None on timeout or close.
    async fn next_within(&mut self, wait: Duration) -> Option<(Option<String>, String, String, Value)> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next()).await.ok()??.ok()?;
            let Message::Text(t) = msg else {
                if msg.is_close() {
                    return None;
                }
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("json frame");
            return Some(if self.v2 {
                (v[1].as_str().map(str::to_string), v[2].as_str()?.into(), v[3].as_str()?.into(), v[4].clone())
            } else {
                (
                    v["ref"].as_str().map(str::to_string),
                    v["topic"].as_str()?.into(),
                    v["event"].as_str()?.into(),
                    v["payload"].clone(),
                )
            });
        }
    }

    async fn expect_event(&mut self, event: &str) -> Value {
        loop {
            let (_, _, e, payload) = self.next().await.unwrap_or_else(|| panic!("socket closed waiting for {event}"));
            if e == event {
                return payload;
            }
        }
    }

    async fn join(&mut self, topic: &str, bindings: Value, token: &str) -> Value {
        let payload = json!({"config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                                         "postgres_changes": bindings, "private": false}, "access_token": token});
        self.send(topic, "phx_join", payload, Some("1")).await;
        self.expect_event("phx_reply").await
    }
}

async fn insert(stack: &Stack, thread: uuid::Uuid, content: &str) -> uuid::Uuid {
    let db = stack.sql().await;
    db.query_one(
        "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
        &[&thread, &ALICE.id, &content],
    )
    .await
    .expect("insert")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_receive_committed_inserts_in_both_versions() {
    let stack = Stack::start().await.expect("stack");
    for v2 in [false, true] {
        let mut c = Client::connect(&stack, v2).await;
        let reply = c
            .join(
                "realtime:test",
                json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
                &stack.keys().service_key,
            )
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let bound = &reply["response"]["postgres_changes"][0];
        assert_eq!(
            (bound["event"].clone(), bound["schema"].clone(), bound["table"].clone()),
            (json!("INSERT"), json!("public"), json!("messages"))
        );
        assert!(bound["id"].is_i64());
        assert!(bound.get("filter").is_none(), "only the keys sent are echoed");
        assert_eq!(c.expect_event("presence_state").await, json!({}));
        let system = c.expect_event("system").await;
        assert_eq!(system["message"], "Subscribed to PostgreSQL");
        assert_eq!(system["status"], "ok");

        let id = insert(&stack, CLASS_3B_PARENTS, "hello").await;
        let change = c.expect_event("postgres_changes").await;
        assert_eq!(change["ids"], json!([bound["id"]]));
        let data = &change["data"];
        assert_eq!(
            (data["type"].clone(), data["schema"].clone(), data["table"].clone()),
            (json!("INSERT"), json!("public"), json!("messages"))
        );
        assert_eq!(data["record"]["id"], id.to_string());
        assert_eq!(data["record"]["content"], "hello");
        assert!(
            data["record"]["created_at"].as_str().is_some_and(|t| t.contains('T') && t.ends_with("+00:00")),
            "{data}"
        );
        assert!(data["commit_timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(data["columns"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == &json!({"name": "id", "type": "uuid"}))));
        assert_eq!(data["errors"], Value::Null);

        // Heartbeat and leave.
        let r = c.send("phoenix", "heartbeat", json!({}), None).await;
        loop {
            let (got, topic, event, payload) = c.next().await.expect("reply");
            if got.as_deref() == Some(r.as_str()) {
                assert_eq!(
                    (topic.as_str(), event.as_str(), payload),
                    ("phoenix", "phx_reply", json!({"status": "ok", "response": {}}))
                );
                break;
            }
        }
        c.send("realtime:test", "phx_leave", json!({}), Some("1")).await;
        assert_eq!(c.expect_event("phx_reply").await["status"], "ok");
        c.expect_event("phx_close").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletes_and_filters() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, true).await;
    let filter = format!("thread_id=eq.{CLASS_3B_PARENTS}");
    let reply = c
        .join(
            "realtime:f",
            json!([{"event": "INSERT", "schema": "public", "table": "messages", "filter": filter},
                   {"event": "*", "schema": "public", "table": "chat_membership_events"}]),
            &stack.keys().service_key,
        )
        .await;
    assert_eq!(reply["response"]["postgres_changes"][0]["filter"], json!(filter));
    c.expect_event("system").await;
    insert(&stack, CLASS_4A_PARENTS, "filtered out").await;
    let mine = insert(&stack, CLASS_3B_PARENTS, "filtered in").await;
    let change = c.expect_event("postgres_changes").await;
    assert_eq!(change["data"]["record"]["id"], mine.to_string(), "the 4A row did not pass the filter");

    // A participant's read state goes through the trigger-fed events table (an INSERT there).
    let db = stack.sql().await;
    db.execute(
        "update public.thread_participants set last_read_at = now() where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("update");
    let read = c.expect_event("postgres_changes").await;
    assert_eq!(
        (read["data"]["type"].clone(), read["data"]["record"]["kind"].clone()),
        (json!("INSERT"), json!("read"))
    );
    assert_eq!(read["data"]["record"]["user_id"], json!(CARLA.id));
    let id = read["data"]["record"]["id"].as_i64().expect("a bigint key, as a JSON number");
    db.execute(
        "update public.chat_membership_events set created_at = created_at - interval '1 hour' where id = $1",
        &[&id],
    )
    .await
    .expect("update");
    let update = c.expect_event("postgres_changes").await;
    assert_eq!(update["data"]["type"], "UPDATE");
    assert_eq!(update["data"]["old_record"], json!({"id": id}), "only the key");
    db.execute("select public.chat_prune_membership_events(600)", &[]).await.expect("prune");
    let delete = c.expect_event("postgres_changes").await;
    assert_eq!(delete["data"]["type"], "DELETE");
    assert_eq!(delete["data"]["old_record"], json!({"id": id}));
    assert!(delete["data"].get("record").is_none());
}

/// What a user's token gets of a table its role may not SELECT (the membership events): every
/// INSERT as `Error 401: Unauthorized` without the row, every DELETE with an empty `old_record`,
/// as Realtime sends them; never a user or a thread id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_gets_no_row_of_a_table_it_may_not_read() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, true).await;
    let token = stack.token(&FARID, Alg::Hs256);
    c.join("realtime:u", json!([{"event": "*", "schema": "public", "table": "chat_membership_events"}]), &token).await;
    c.expect_event("system").await;
    let db = stack.sql().await;
    db.execute(
        "delete from public.thread_participants where thread_id = $1 and user_id = $2",
        &[&CLASS_3B_PARENTS, &CARLA.id],
    )
    .await
    .expect("removal");
    let insert = c.expect_event("postgres_changes").await;
    assert_eq!(insert["data"]["type"], "INSERT");
    assert_eq!(insert["data"]["errors"], json!(["Error 401: Unauthorized"]));
    assert_eq!(insert["data"]["record"], json!({}));
    db.execute("update public.chat_membership_events set created_at = created_at - interval '1 hour'", &[])
        .await
        .expect("age");
    // The UPDATEs of the aging come first, each refused the same way.
    let mut seen = vec![insert];
    loop {
        let event = c.expect_event("postgres_changes").await;
        let done = event["data"]["type"] == "UPDATE";
        seen.push(event);
        if done {
            break;
        }
    }
    db.execute("select public.chat_prune_membership_events(600)", &[]).await.expect("prune");
    loop {
        let event = c.expect_event("postgres_changes").await;
        let delete = event["data"]["type"] == "DELETE";
        seen.push(event);
        if delete {
            break;
        }
    }
    let delete = seen.last().cloned().unwrap_or_default();
    assert_eq!(delete["data"]["old_record"], Value::Null, "{delete}");
    let text = serde_json::to_string(&seen).unwrap_or_default();
    assert!(!text.contains(&CARLA.id.to_string()) && !text.contains(&CLASS_3B_PARENTS.to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_happen_where_supabase_refuses() {
    let stack = Stack::start().await.expect("stack");
    let bad = tokio_tungstenite::connect_async(format!("{}?apikey=nope&vsn=1.0.0", stack.realtime_url())).await;
    assert!(matches!(bad, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401));
    let missing = tokio_tungstenite::connect_async(format!("{}?vsn=1.0.0", stack.realtime_url())).await;
    assert!(matches!(missing, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401));

    let mut c = Client::connect(&stack, false).await;
    let expired = stack.keys().user_token(CARLA.id, CARLA.email, Alg::Hs256, -30);
    let reply =
        c.join("realtime:x", json!([{"event": "INSERT", "schema": "public", "table": "messages"}]), &expired).await;
    assert_eq!(reply["status"], "error");
    assert!(reply["response"]["reason"].as_str().unwrap_or_default().contains("expired"), "{reply}");
    let reply = c
        .join(
            "realtime:y",
            json!([{"event": "INSERT", "schema": "public", "table": "profiles"}]),
            &stack.keys().service_key,
        )
        .await;
    assert_eq!(reply["status"], "error");
    assert!(
        reply["response"]["reason"].as_str().unwrap_or_default().starts_with("Unable to subscribe to changes"),
        "{reply}"
    );
    stack.realtime().set_refuse_joins(true);
    let reply = c
        .join(
            "realtime:z",
            json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
            &stack.keys().service_key,
        )
        .await;
    assert_eq!(reply["status"], "error");
    stack.realtime().set_refuse_joins(false);
    c.send("realtime:never-joined", "something", json!({}), None).await;
    assert_eq!(c.expect_event("phx_reply").await["response"]["reason"], "unmatched topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tokens_get_only_rows_their_rls_allows() {
    let stack = Stack::start().await.expect("stack");
    let mut carla = Client::connect(&stack, true).await;
    let token = stack.token(&CARLA, Alg::Es256);
    let reply =
        carla.join("realtime:mine", json!([{"event": "*", "schema": "public", "table": "messages"}]), &token).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    carla.expect_event("system").await;
    let hidden = insert(&stack, CLASS_4A_PARENTS, "not Carla's class").await;
    let mine = insert(&stack, CLASS_3B_PARENTS, "Carla's class").await;
    let change = carla.expect_event("postgres_changes").await;
    assert_eq!(change["data"]["record"]["id"], mine.to_string(), "the 4A row is invisible to Carla under RLS");
    // DELETEs cannot be checked against a row that is gone: Realtime sends them to everyone.
    let db = stack.sql().await;
    db.execute("delete from public.messages where id = $1", &[&hidden]).await.expect("delete");
    let delete = carla.expect_event("postgres_changes").await;
    assert_eq!(delete["data"]["type"], "DELETE");
    assert_eq!(delete["data"]["old_record"], json!({"id": hidden}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_the_channel_and_a_bad_one_closes_it() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, false).await;
    let topic = "realtime:refresh";
    c.join(
        topic,
        json!([{"event": "INSERT", "schema": "public", "table": "messages"}]),
        &stack.token(&CARLA, Alg::Hs256),
    )
    .await;
    c.expect_event("system").await;
    c.send(topic, "access_token", json!({"access_token": stack.token(&CARLA, Alg::Es256)}), Some("1")).await;
    let id = insert(&stack, CLASS_3B_PARENTS, "after refresh").await;
    let (_, _, event, payload) = c.next().await.expect("frame");
    assert_eq!(event, "postgres_changes", "a valid refresh is not answered: {payload}");
    assert_eq!(payload["data"]["record"]["id"], id.to_string());

    let forged = supabase_standin::keys::Keys::generate("some-other-secret-some-other-secret-xx", "http://x/auth/v1")
        .user_token(CARLA.id, CARLA.email, Alg::Hs256, 3600);
    c.send(topic, "access_token", json!({"access_token": forged}), Some("1")).await;
    let system = c.expect_event("system").await;
    assert_eq!(
        system,
        json!({"extension": "system", "status": "error", "message": "Failed to validate JWT signature", "channel": "refresh"})
    );
    c.expect_event("phx_close").await;
    c.send(topic, "access_token", json!({"access_token": "x"}), Some("1")).await;
    assert_eq!(c.expect_event("phx_reply").await["response"]["reason"], "unmatched topic");
    let reply = c.join("realtime:bad", json!([]), "not-a-jwt").await;
    assert_eq!(reply["response"]["reason"], "The token provided is not a valid JWT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_topic_again_closes_the_old_channel() {
    let stack = Stack::start().await.expect("stack");
    let mut c = Client::connect(&stack, true).await;
    let key = stack.keys().service_key.clone();
    c.join("realtime:twice", json!([{"event": "INSERT", "schema": "public", "table": "messages"}]), &key).await;
    c.expect_event("system").await;
    let payload = json!({"config": {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "messages"}]}, "access_token": key});
    c.send("realtime:twice", "phx_join", payload, Some("2")).await;
    let raw = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("json");
        if v[3] == "phx_close" {
            break v;
        }
    };
    assert_eq!(raw[0], "1", "the old join_ref is closed");
    assert_eq!(c.expect_event("phx_reply").await["status"], "ok");
    c.expect_event("system").await;
    let id = insert(&stack, CLASS_3B_PARENTS, "once").await;
    let change = c.expect_event("postgres_changes").await;
    assert_eq!(change["data"]["record"]["id"], id.to_string());
    assert!(c.next_within(Duration::from_millis(300)).await.is_none(), "one channel, one event");
}
