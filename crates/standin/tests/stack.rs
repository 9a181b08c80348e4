//! The stand-in stack as a whole: one URL serving health, the JWKS and Supabase Auth's password
//! sign-in for the seeded users; a fresh database per stack; a stack with its own cluster removes
//! it on shutdown.

use serde_json::{json, Value};
use supabase_standin::keys::Alg;
use supabase_standin::seed::{CARLA, CLASS_3B_PARENTS, FARID};
use supabase_standin::{Stack, StackOptions};

async fn start() -> Stack {
    Stack::start().await.expect("the stand-in stack (throwaway PostgreSQL) must start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_jwks_are_served_at_the_project_url() {
    let stack = start().await;
    let http = reqwest::Client::new();
    let health: Value =
        http.get(format!("{}/_standin/health", stack.url())).send().await.expect("answers").json().await.expect("json");
    assert_eq!(health["status"], "ok");
    let jwks: Value = http
        .get(format!("{}/auth/v1/.well-known/jwks.json", stack.url()))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kid"], json!(stack.keys().kid));
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(
        stack.realtime_url().starts_with("ws://127.0.0.1:") && stack.realtime_url().ends_with("/realtime/v1/websocket")
    );
    let claims = stack.keys().verify(&stack.token(&CARLA, Alg::Es256)).expect("own token verifies");
    assert_eq!(claims.iss.as_deref(), Some(format!("{}/auth/v1", stack.url()).as_str()));
}

/// Long on purpose: one session's life in order (sign in, use the token, refresh once, reuse
/// refused), then the refused sign-ins, on one stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_users_sign_in_with_a_password_and_refresh() {
    let stack = start().await;
    let http = reqwest::Client::new();
    let anon = stack.keys().anon_key.clone();
    let token_url = |grant: &str| format!("{}/auth/v1/token?grant_type={grant}", stack.url());

    let resp = http
        .post(token_url("password"))
        .header("apikey", &anon)
        .json(&json!({"email": CARLA.email, "password": Stack::SEED_PASSWORD, "gotrue_meta_security": {}}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200);
    let session: Value = resp.json().await.expect("json");
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 3600);
    assert_eq!(session["user"]["id"], json!(CARLA.id));
    assert_eq!(session["user"]["email"], CARLA.email);
    let access = session["access_token"].as_str().unwrap_or_default().to_string();
    let claims = stack.keys().verify(&access).expect("a project token");
    assert_eq!((claims.sub, claims.role.as_str()), (Some(CARLA.id.to_string()), "authenticated"));

    // The token works at PostgREST as Carla.
    let threads: Value = http
        .get(format!("{}/rest/v1/threads?select=id&id=eq.{CLASS_3B_PARENTS}", stack.url()))
        .header("apikey", &anon)
        .bearer_auth(&access)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(threads, json!([{"id": CLASS_3B_PARENTS}]));
    let user: Value = http
        .get(format!("{}/auth/v1/user", stack.url()))
        .header("apikey", &anon)
        .bearer_auth(&access)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(user["id"], json!(CARLA.id));

    // Refresh tokens are single use.
    let refresh = session["refresh_token"].clone();
    let renewed = http
        .post(token_url("refresh_token"))
        .header("apikey", &anon)
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .expect("answers");
    assert_eq!(renewed.status().as_u16(), 200);
    assert_eq!(renewed.json::<Value>().await.expect("json")["user"]["id"], json!(CARLA.id));
    let again = http
        .post(token_url("refresh_token"))
        .header("apikey", &anon)
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .expect("answers");
    assert_eq!(again.status().as_u16(), 400);
    assert_eq!(again.json::<Value>().await.expect("json")["error_code"], "refresh_token_not_found");

    // Wrong password, unknown user, no API key.
    for body in [
        json!({"email": FARID.email, "password": "nope"}),
        json!({"email": "nobody@school.test", "password": Stack::SEED_PASSWORD}),
    ] {
        let resp = http.post(token_url("password")).header("apikey", &anon).json(&body).send().await.expect("answers");
        assert_eq!(resp.status().as_u16(), 400);
        let e: Value = resp.json().await.expect("json");
        assert_eq!(
            (e["error_code"].clone(), e["msg"].clone()),
            (json!("invalid_credentials"), json!("Invalid login credentials"))
        );
    }
    let resp = http
        .post(token_url("password"))
        .json(&json!({"email": CARLA.email, "password": Stack::SEED_PASSWORD}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stack_has_a_database_of_its_own() {
    let (one, two) = (start().await, start().await);
    assert_ne!(one.database().name(), two.database().name());
    one.sql().await.execute("insert into public.threads (title) values ('only in one')", &[]).await.expect("insert");
    async fn count(stack: &Stack) -> i64 {
        let sql = stack.sql().await;
        sql.query_one("select count(*) from public.threads where title = 'only in one'", &[])
            .await
            .expect("count")
            .get(0)
    }
    assert_eq!((count(&one).await, count(&two).await), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_with_its_own_cluster_removes_it_on_shutdown() {
    let stack = Stack::start_with(StackOptions { own_cluster: true, ..StackOptions::default() })
        .await
        .expect("a stack with its own PostgreSQL must start");
    let db_url = stack.database().url();
    let url = stack.url();
    assert!(supabase_standin::pg::connect(&db_url).await.is_ok());
    stack.shutdown().await;
    assert!(supabase_standin::pg::connect(&db_url).await.is_err(), "the cluster is stopped");
    assert!(reqwest::get(format!("{url}/_standin/health")).await.is_err(), "nothing listens any more");
}
