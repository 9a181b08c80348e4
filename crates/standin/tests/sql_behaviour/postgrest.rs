//! PostgREST's protocol as the stand-in speaks it: `Prefer` and `Accept` headers, exact counts,
//! single objects and representations, RPC arguments and results, upserts, and a request
//! abandoned halfway that must not poison the next ones.

use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{CARLA, CLASS_3B_PARENTS, FARID};

use super::{start, Api};

/// Long on purpose: one walk through PostgREST's header variants on one stack (a stack per case
/// would cost more than the length does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_headers_counts_single_objects_and_representations() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    let anon = stack.keys().anon_key.clone();
    let service = stack.keys().service_key.clone();
    let token = stack.token(&CARLA, Alg::Hs256);
    let url = |path: &str| format!("{}/rest/v1/{path}", stack.url());

    // The API gateway's refusals come before PostgREST: `{message, hint}` only.
    let (status, e) = api.call(reqwest::Method::GET, "messages", Some(&token), Some("not-a-key"), None).await;
    assert_eq!(status, 401);
    assert_eq!(e["message"], "Invalid API key");
    assert!(e.get("code").is_none() && e["hint"].is_string(), "{e}");
    let resp = api
        .http
        .get(url("messages"))
        .query(&[("apikey", anon.as_str())])
        .bearer_auth(&token)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200, "apikey as a URL parameter");

    // Content-Range, with and without an exact count.
    let resp = api
        .http
        .get(url(&format!("messages?select=id&thread_id=eq.{CLASS_3B_PARENTS}&order=created_at.desc&limit=2")))
        .header("apikey", &service)
        .bearer_auth(&service)
        .header("prefer", "count=exact")
        .send()
        .await
        .expect("answers");
    let range = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let total: i64 = stack
        .sql()
        .await
        .query_one("select count(*) from public.messages where thread_id = $1", &[&CLASS_3B_PARENTS])
        .await
        .expect("count")
        .get(0);
    assert_eq!(range, format!("0-1/{total}"));

    // A single object asked for, two rows found: 406 PGRST116.
    let resp = api
        .http
        .get(url(&format!("messages?select=id&thread_id=eq.{CLASS_3B_PARENTS}")))
        .header("apikey", &anon)
        .bearer_auth(&token)
        .header("accept", "application/vnd.pgrst.object+json")
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 406);
    assert_eq!(resp.json::<Value>().await.expect("json")["code"], "PGRST116");

    // Insert returning the row as `select=` shapes it, with the sender embedded.
    let resp = api
        .http
        .post(url("messages?select=content,sender:profiles(full_name)"))
        .header("apikey", &anon)
        .header("prefer", "return=representation")
        .header("accept", "application/vnd.pgrst.object+json")
        .bearer_auth(&token)
        .json(&json!({"thread_id": CLASS_3B_PARENTS, "sender_id": CARLA.id, "content": "shaped"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200, "a single object is asked for");
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"content": "shaped", "sender": {"full_name": "Carla Diaz"}})
    );

    // Bulk inserts need the same keys in every object; a constraint violation is 400 23514.
    let rows = json!([{"thread_id": CLASS_3B_PARENTS, "sender_id": CARLA.id, "content": "a"}, {"thread_id": CLASS_3B_PARENTS, "content": "b"}]);
    let (status, e) = api.call(reqwest::Method::POST, "messages", Some(&token), Some(&anon), Some(rows)).await;
    assert_eq!(
        (status, e["code"].clone(), e["message"].clone()),
        (400, json!("PGRST102"), json!("All object keys must match"))
    );
    let empty = json!({"thread_id": CLASS_3B_PARENTS, "sender_id": CARLA.id, "content": ""});
    let (status, e) = api.call(reqwest::Method::POST, "messages", Some(&token), Some(&anon), Some(empty)).await;
    assert_eq!((status, e["code"].clone()), (400, json!("23514")), "{e}");
    let (status, e) = api.call(reqwest::Method::GET, "no_such_table", Some(&token), Some(&anon), None).await;
    assert_eq!((status, e["code"].clone()), (404, json!("PGRST205")), "{e}");
    let (status, e) = api.call(reqwest::Method::GET, "messages?nope=eq.1", Some(&token), Some(&anon), None).await;
    assert_eq!((status, e["code"].clone()), (400, json!("42703")), "{e}");

    // The service role deletes and sees what it deleted.
    let resp = api
        .http
        .delete(url("messages?content=eq.shaped&select=content"))
        .header("apikey", &service)
        .bearer_auth(&service)
        .header("prefer", "return=representation")
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!([{"content": "shaped"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_arguments_and_results_as_postgrest_gives_them() {
    let (stack, http) = start().await;
    let api = Api { stack: &stack, http };
    stack
        .sql()
        .await
        .batch_execute(
            "create function public.t_echo(p_ids uuid[], p_meta jsonb default '{}', p_n integer default 1) returns jsonb
               language sql stable as $$ select jsonb_build_object('ids', to_jsonb(p_ids), 'meta', p_meta, 'n', p_n) $$;
             create function public.t_void(p_x text) returns void language plpgsql volatile as $$ begin end $$;
             create function public.t_pay() returns integer language plpgsql stable
               as $$ begin raise sqlstate 'PT402' using message = 'Payment required'; end $$;
             create function public.t_set(p_n integer) returns setof integer language sql stable as $$ select generate_series(1, p_n) $$;",
        )
        .await
        .expect("test functions");
    let (status, out) = api.rpc(&CARLA, "t_echo", json!({"p_ids": [CARLA.id, FARID.id], "p_meta": {"a": [1]}})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, json!({"ids": [CARLA.id, FARID.id], "meta": {"a": [1]}, "n": 1}));
    let (status, out) = api.get(&CARLA, &format!("rpc/t_echo?p_ids=%7B{}%7D&p_n=3", CARLA.id)).await;
    assert_eq!((status, out["ids"].clone(), out["n"].clone()), (200, json!([CARLA.id]), json!(3)), "{out}");
    let (status, _) = api.rpc(&CARLA, "t_void", json!({"p_x": "x"})).await;
    assert_eq!(status, 204);
    let (status, e) = api.get(&CARLA, "rpc/t_void?p_x=x").await;
    assert_eq!(status, 405, "volatile functions only by POST: {e}");
    let (status, e) = api.rpc(&CARLA, "t_pay", json!({})).await;
    assert_eq!((status, e["code"].clone(), e["message"].clone()), (402, json!("PT402"), json!("Payment required")));
    let (status, out) = api.rpc(&CARLA, "t_set", json!({"p_n": 3})).await;
    assert_eq!((status, out), (200, json!([1, 2, 3])));
    let (status, e) = api.rpc(&CARLA, "t_echo", json!({"p_unknown": 1})).await;
    assert_eq!(status, 404);
    assert_eq!(e["message"], "Could not find the function public.t_echo(p_unknown) in the schema cache");
}

/// A client that hangs up mid-request must not leave its open (and failing) transaction on a
/// pooled connection for the next request to run in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_does_not_poison_the_next_ones() {
    let (stack, http) = start().await;
    stack
        .sql()
        .await
        .batch_execute(
            "create function public.t_slow_failure() returns integer language plpgsql volatile
               as $$ begin perform pg_sleep(0.4); raise exception 'too late'; end $$;",
        )
        .await
        .expect("test function");
    let token = stack.token(&CARLA, Alg::Hs256);
    let anon = stack.keys().anon_key.clone();
    let abandoned = http
        .post(format!("{}/rest/v1/rpc/t_slow_failure", stack.url()))
        .header("apikey", &anon)
        .bearer_auth(&token)
        .json(&json!({}))
        .timeout(std::time::Duration::from_millis(100))
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let api = Api { stack: &stack, http };
    for _ in 0..20 {
        let (status, n) = api.rpc(&CARLA, "chat_unread_count", json!({})).await;
        assert_eq!(status, 200, "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_merge_or_ignore_duplicates() {
    let (stack, http) = start().await;
    let service = stack.keys().service_key.clone();
    let upsert = |resolution: &'static str, query: &'static str, body: Value| {
        http.post(format!("{}/rest/v1/thread_participants{query}", stack.url()))
            .header("apikey", &service)
            .bearer_auth(&service)
            .header("prefer", format!("resolution={resolution},return=representation"))
            .json(&body)
            .send()
    };
    let row = |at: &str| json!({"thread_id": CLASS_3B_PARENTS, "user_id": CARLA.id, "last_read_at": at});
    let resp = upsert("ignore-duplicates", "", row("2031-01-01T00:00:00+00:00")).await.expect("answers");
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!([]), "the existing row is kept");
    let resp = upsert(
        "merge-duplicates",
        "?on_conflict=thread_id,user_id&select=last_read_at",
        row("2031-01-01T00:00:00+00:00"),
    )
    .await
    .expect("answers");
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!([{"last_read_at": "2031-01-01T00:00:00+00:00"}]));
    let resp =
        upsert("merge-duplicates", "?on_conflict=nope", row("2031-01-01T00:00:00+00:00")).await.expect("answers");
    assert_eq!(resp.status().as_u16(), 400);
}
