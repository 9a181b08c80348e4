//! The schema's behaviour through the PostgREST stand-in over real HTTP, on a throwaway database
//! with the project's migrations and seed: RLS, the chat_* functions, and PostgREST-shaped errors.

use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{
    self, Person, ALICE, BRUNO, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID, EVA, FARID, PEOPLE,
};
use supabase_standin::Stack;
use uuid::Uuid;

mod delivery;
mod postgrest;
mod publication;

struct Api<'a> {
    stack: &'a Stack,
    http: reqwest::Client,
}

impl Api<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        apikey: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/rest/v1/{path}", self.stack.url()));
        if let Some(k) = apikey {
            req = req.header("apikey", k);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("stand-in answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn rpc(&self, who: &Person, function: &str, args: Value) -> (u16, Value) {
        let token = self.stack.token(who, Alg::Hs256);
        self.call(
            reqwest::Method::POST,
            &format!("rpc/{function}"),
            Some(&token),
            Some(&self.stack.keys().anon_key),
            Some(args),
        )
        .await
    }

    async fn get(&self, who: &Person, path: &str) -> (u16, Value) {
        let token = self.stack.token(who, Alg::Es256);
        self.call(reqwest::Method::GET, path, Some(&token), Some(&self.stack.keys().anon_key), None).await
    }
}

async fn start() -> (Stack, reqwest::Client) {
    (Stack::start().await.expect("the stand-in stack (throwaway PostgreSQL) must start"), reqwest::Client::new())
}

async fn unread_by_hand(stack: &Stack, user: Uuid) -> i64 {
    stack
        .sql()
        .await
        .query_one(
            "select count(*) from public.messages m join public.thread_participants tp on tp.thread_id = m.thread_id
              where tp.user_id = $1 and m.sender_id <> $1 and m.created_at > tp.last_read_at",
            &[&user],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_is_who_src_seed_says() {
    let (stack, _) = start().await;
    let db = stack.sql().await;
    for p in PEOPLE {
        let row = db
            .query_one("select full_name, role from public.profiles where id = $1", &[&p.id])
            .await
            .expect("profile exists");
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (p.full_name.to_string(), p.role.to_string()));
    }
    let n: i64 = db.query_one("select count(*) from public.threads", &[]).await.expect("count").get(0);
    assert_eq!(n, 7);
    let _ = seed::STAFF_ROOM;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_never_sees_another_classs_thread_or_messages() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let (status, threads) = api.get(&FARID, "threads?select=id,title").await;
    assert_eq!(status, 200, "{threads}");
    let ids: Vec<&str> =
        threads.as_array().map(|a| a.iter().filter_map(|t| t["id"].as_str()).collect()).unwrap_or_default();
    assert!(ids.contains(&CLASS_4A_PARENTS.to_string().as_str()));
    assert!(!ids.contains(&CLASS_3B_PARENTS.to_string().as_str()), "{threads}");
    let (_, messages) = api.get(&FARID, &format!("messages?thread_id=eq.{CLASS_3B_PARENTS}")).await;
    assert_eq!(messages, json!([]));
    let (_, participants) = api.get(&FARID, &format!("thread_participants?thread_id=eq.{CLASS_3B_PARENTS}")).await;
    assert_eq!(participants, json!([]));
    let (_, profile) = api.get(&FARID, &format!("profiles?id=eq.{}", CARLA.id)).await;
    assert_eq!(profile, json!([]), "profiles of people sharing no thread are hidden");
    let (_, profile) = api.get(&FARID, &format!("profiles?id=eq.{}&select=full_name,role", BRUNO.id)).await;
    assert_eq!(profile, json!([{"full_name": "Bruno Keller", "role": "teacher"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_with_an_embedded_sender() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let (status, rows) = api
        .get(&CARLA, &format!("messages?select=id,content,sender:profiles(full_name,role)&thread_id=eq.{CLASS_3B_PARENTS}&order=created_at.asc&limit=2"))
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    assert_eq!(rows[0]["sender"], json!({"full_name": "Alice Martin", "role": "teacher"}));
    assert_eq!(rows[1]["sender"], json!({"full_name": "David Chen", "role": "parent"}));
    let (status, one) = api
        .http
        .get(format!(
            "{}/rest/v1/threads?id=eq.{CLASS_3B_PARENTS}&select=title,thread_participants(user_id)",
            stack.url()
        ))
        .header("apikey", &stack.keys().anon_key)
        .bearer_auth(stack.token(&CARLA, Alg::Hs256))
        .header("accept", "application/vnd.pgrst.object+json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .expect("answers");
    assert_eq!(status, 200);
    let one: Value = one.json().await.expect("json");
    assert_eq!(one["title"], "Class 3B parents");
    // An app user reads only her own participant row (the others' read state is not hers to see).
    assert_eq!(one["thread_participants"], json!([{"user_id": CARLA.id}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_and_mark_read_across_users() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    for who in [&CARLA, &DAVID, &EVA, &ALICE] {
        let (status, n) = api.rpc(who, "chat_unread_count", json!({})).await;
        assert_eq!(status, 200, "{n}");
        assert_eq!(n, json!(unread_by_hand(&stack, who.id).await), "{}", who.full_name);
    }
    // Alice posts twice: parents' counts go up by two, hers does not.
    let db = stack.sql().await;
    for text in ["one", "two"] {
        db.execute(
            "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3)",
            &[&CLASS_3B_PARENTS, &ALICE.id, &text],
        )
        .await
        .expect("insert");
    }
    let (_, before_eva) = api.rpc(&EVA, "chat_unread_count", json!({})).await;
    assert_eq!(before_eva, json!(unread_by_hand(&stack, EVA.id).await));
    let (_, alice) = api.rpc(&ALICE, "chat_unread_count", json!({})).await;
    assert_eq!(alice, json!(unread_by_hand(&stack, ALICE.id).await));
    let (status, read_at) = api.rpc(&EVA, "chat_mark_thread_read", json!({"p_thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(status, 200, "{read_at}");
    assert!(read_at.is_string());
    let (_, eva) = api.rpc(&EVA, "chat_unread_count", json!({})).await;
    assert_eq!(eva, json!(0));
    let (_, david) = api.rpc(&DAVID, "chat_unread_count", json!({})).await;
    assert_eq!(david, json!(unread_by_hand(&stack, DAVID.id).await));
    assert!(david.as_i64().unwrap_or_default() >= 2, "David's count is his own, untouched by Eva");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_carry_senders_and_only_visible_threads() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let (status, rows) = api.rpc(&CARLA, "chat_offline_messages", json!({"p_since": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty());
    let mut last = String::new();
    for r in &rows {
        let thread = r["thread_id"].as_str().unwrap_or_default();
        assert!(thread == CLASS_3B_PARENTS.to_string() || thread == seed::ALICE_CARLA.to_string(), "{r}");
        assert!(r["sender"]["full_name"].is_string() && r["sender"]["role"].is_string(), "{r}");
        let created = r["created_at"].as_str().unwrap_or_default().to_string();
        assert!(created >= last);
        last = created;
    }
    let (_, limited) =
        api.rpc(&CARLA, "chat_offline_messages", json!({"p_since": "2020-01-01T00:00:00Z", "p_limit": 2})).await;
    assert_eq!(limited.as_array().map(Vec::len), Some(2));
    let (status, horizon) = api.rpc(&CARLA, "chat_sync_horizon", json!({})).await;
    assert_eq!(status, 200);
    assert!(horizon.is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_postgrest_shaped_errors() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let (status, e) = api.rpc(&CARLA, "chat_mark_thread_read", json!({"p_thread_id": "not-a-uuid"})).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["code"], "22P02");
    for key in ["code", "message", "details", "hint"] {
        assert!(e.get(key).is_some(), "{key} in {e}");
    }
    let (status, e) = api.rpc(&CARLA, "chat_mark_thread_read", json!({"p_thread_id": CLASS_4A_PARENTS})).await;
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["code"], "42501");
    assert!(e["message"].as_str().unwrap_or_default().contains("not a participant"));
    let (status, e) = api.rpc(&CARLA, "chat_no_such_function", json!({})).await;
    assert_eq!((status, e["code"].clone()), (404, json!("PGRST202")));
    let (status, e) = api.rpc(&CARLA, "chat_offline_messages", json!({"p_since": "not a time"})).await;
    assert_eq!(status, 400, "{e}");

    let (status, e) = api.call(reqwest::Method::GET, "messages", None, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(e["message"], "No API key found in request");
    let expired = stack.keys().user_token(CARLA.id, CARLA.email, Alg::Hs256, -60);
    let (status, e) =
        api.call(reqwest::Method::GET, "messages", Some(&expired), Some(&stack.keys().anon_key), None).await;
    assert_eq!((status, e["code"].clone(), e["message"].clone()), (401, json!("PGRST301"), json!("JWT expired")));
    // Anonymous callers may not run the chat functions.
    let (status, e) = api
        .call(reqwest::Method::POST, "rpc/chat_unread_count", None, Some(&stack.keys().anon_key), Some(json!({})))
        .await;
    assert_eq!(status, 401, "{e}");
    assert_eq!(e["code"], "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_post_only_as_themselves_into_their_threads() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let token = stack.token(&CARLA, Alg::Hs256);
    let anon = stack.keys().anon_key.clone();
    let post = |thread: Uuid, sender: Uuid| json!({"thread_id": thread, "sender_id": sender, "content": "hi", "created_at": "2001-01-01T00:00:00Z"});
    let (status, rows) = api
        .call(
            reqwest::Method::POST,
            "messages?select=id",
            Some(&token),
            Some(&anon),
            Some(post(CLASS_3B_PARENTS, CARLA.id)),
        )
        .await;
    assert_eq!(status, 403, "created_at is not writable by users: {rows}");
    let mut ok = post(CLASS_3B_PARENTS, CARLA.id);
    ok.as_object_mut().map(|o| o.remove("created_at"));
    let resp = api
        .http
        .post(format!("{}/rest/v1/messages", stack.url()))
        .header("apikey", &anon)
        .header("prefer", "return=representation")
        .bearer_auth(&token)
        .json(&ok)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created[0]["sender_id"], CARLA.id.to_string());
    let mut as_alice = ok.clone();
    as_alice["sender_id"] = json!(ALICE.id);
    let (status, _) = api.call(reqwest::Method::POST, "messages", Some(&token), Some(&anon), Some(as_alice)).await;
    assert_eq!(status, 403);
    let mut elsewhere = ok.clone();
    elsewhere["thread_id"] = json!(CLASS_4A_PARENTS);
    let (status, _) = api.call(reqwest::Method::POST, "messages", Some(&token), Some(&anon), Some(elsewhere)).await;
    assert_eq!(status, 403);
}

/// On Supabase every table the project creates in `public` starts fully granted to
/// `authenticated`; the schema must still let a user change nothing but their own read time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_change_only_their_own_read_time() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let token = stack.token(&CARLA, Alg::Hs256);
    let anon = stack.keys().anon_key.clone();
    let patch = reqwest::Method::PATCH;
    let mine = format!("thread_participants?thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}", CARLA.id);

    // Moving her own membership into another class's thread would let her read it.
    let (status, e) =
        api.call(patch.clone(), &mine, Some(&token), Some(&anon), Some(json!({"thread_id": CLASS_4A_PARENTS}))).await;
    assert_eq!((status, e["code"].clone()), (403, json!("42501")), "{e}");
    let (status, e) = api
        .call(patch.clone(), &mine, Some(&token), Some(&anon), Some(json!({"joined_at": "2001-01-01T00:00:00Z"})))
        .await;
    assert_eq!(status, 403, "{e}");
    let (_, visible) = api.get(&CARLA, &format!("messages?select=id&thread_id=eq.{CLASS_4A_PARENTS}")).await;
    assert_eq!(visible, json!([]));

    // Her own read time: yes, and only hers.
    let resp = api
        .http
        .patch(format!("{}/rest/v1/{mine}", stack.url()))
        .header("apikey", &anon)
        .header("prefer", "return=representation")
        .bearer_auth(&token)
        .json(&json!({"last_read_at": "2030-01-01T00:00:00Z"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200);
    let rows: Value = resp.json().await.expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let evas = format!("thread_participants?thread_id=eq.{CLASS_3B_PARENTS}&user_id=eq.{}", EVA.id);
    let resp = api
        .http
        .patch(format!("{}/rest/v1/{evas}", stack.url()))
        .header("apikey", &anon)
        .header("prefer", "return=representation")
        .bearer_auth(&token)
        .json(&json!({"last_read_at": "2030-01-01T00:00:00Z"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.json::<Value>().await.expect("json"), json!([]), "Eva's row is not Carla's to change");

    // No deleting, no joining, no renaming, no editing messages.
    for (method, path, body) in [
        (reqwest::Method::DELETE, format!("messages?thread_id=eq.{CLASS_3B_PARENTS}"), None),
        (reqwest::Method::DELETE, mine.clone(), None),
        (
            reqwest::Method::POST,
            "thread_participants".to_string(),
            Some(json!({"thread_id": CLASS_4A_PARENTS, "user_id": CARLA.id})),
        ),
        (patch.clone(), format!("threads?id=eq.{CLASS_3B_PARENTS}"), Some(json!({"title": "mine now"}))),
        (patch.clone(), format!("messages?thread_id=eq.{CLASS_3B_PARENTS}"), Some(json!({"content": "edited"}))),
        (patch.clone(), format!("profiles?id=eq.{}", CARLA.id), Some(json!({"role": "admin"}))),
    ] {
        let (status, e) = api.call(method.clone(), &path, Some(&token), Some(&anon), body).await;
        assert_eq!((status, e["code"].clone()), (403, json!("42501")), "{method} {path}: {e}");
    }
    let db = stack.sql().await;
    let n: i64 = db
        .query_one(
            "select count(*) from public.messages where thread_id = $1 and content = 'edited'",
            &[&CLASS_3B_PARENTS],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
}
