//! The whole thing, locally, in one command (`scripts/demo`): a throwaway Supabase stand-in
//! (PostgreSQL with the project's migrations and a small seeded school, Realtime, PostgREST,
//! Auth), the real `realtime-gateway` binary configured by environment variables, and a short
//! scripted conversation: a teacher posts in class 3B with a SQL INSERT; two parents' phones get
//! it, a parent of class 4A does not, and the parent whose app is closed gets a push through the
//! signed webhook (`PUSH_WEBHOOK_URL`) to a small receiver in this program, which checks the
//! Standard Webhooks signature before printing it; then the REST calls a phone makes when the app
//! reopens.
//!
//! `--postgres` (`scripts/demo --postgres`): the same conversation with the gateway on its
//! PostgreSQL backend: `DATABASE_URL` (the `chat_gateway` role of
//! `supabase/standalone/00_base.sql`) and `JWT_SECRET` instead of `SUPABASE_*`; Realtime and
//! PostgREST stand-ins are not used by the gateway then.
//!
//! `--web` (`scripts/demo --web`): the example web app to try in a browser instead (see
//! `demo/web.rs`).

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use supabase_standin::keys::Alg;
use supabase_standin::seed::{self, Person};
use supabase_standin::Stack;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use warp::Filter;

/// The webhook's signing secret (a demo value: generate yours with `openssl rand -base64 32`).
const WEBHOOK_SECRET: &str = "whsec_ZGVtby1vbmx5LXNlY3JldC1kby1ub3QtdXNlLWl0LWFueXdoZXJl";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn free_port() -> u16 {
    // A port below the ephemeral range, so it cannot collide with client sockets.
    for port in 23000..24000 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 23000..24000");
}

async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn phone(base: &str, stack: &Stack, who: &Person, device: &str) -> Ws {
    let url = format!("{base}?token={}", stack.token(who, Alg::Hs256));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("phone connects");
    let hello = next_frame(&mut ws, Duration::from_secs(5)).await.expect("connection_established");
    println!("  {:<13} {:<7} connected: {}", who.full_name, device, hello);
    ws
}

/// Checks a call per the Standard Webhooks specification: `webhook-signature` holds
/// `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">` under the secret's key,
/// and the timestamp is within 5 minutes. What a receiver (an Edge Function) does first.
fn verify(headers: &warp::http::HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).ok_or("a webhook header is missing");
    let (id, timestamp, signatures) =
        (header("webhook-id")?, header("webhook-timestamp")?, header("webhook-signature")?);
    let sent: i64 = timestamp.parse().map_err(|_| "bad webhook-timestamp")?;
    if (chrono::Utc::now().timestamp() - sent).abs() > 300 {
        return Err("webhook-timestamp too far from now");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(WEBHOOK_SECRET.trim_start_matches("whsec_")).map_err(|_| "bad secret")?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|_| "bad key")?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    // Several space-separated signatures may come (key rotation); one valid is enough. The
    // comparison is in constant time (`verify_slice`).
    let valid = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| b64.decode(s).ok())
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    valid.then_some(()).ok_or("signature does not match")
}

/// A local webhook receiver on port 0: verifies each call and hands a line for it to `lines`.
async fn push_receiver(lines: mpsc::UnboundedSender<String>) -> String {
    let route = warp::post().and(warp::header::headers_cloned()).and(warp::body::bytes()).map(
        move |headers: warp::http::HeaderMap, body: hyper::body::Bytes| {
            if let Err(problem) = verify(&headers, &body) {
                let _ = lines.send(format!("refused a call: {problem}"));
                return warp::http::StatusCode::UNAUTHORIZED;
            }
            let push: Value = serde_json::from_slice(&body).unwrap_or_default();
            let user = push["user_id"].as_str().unwrap_or_default();
            let name = seed::PEOPLE.iter().find(|p| p.id.to_string() == user).map_or(user, |p| p.full_name);
            let _ = lines.send(format!(
                "push to {name}: {} (unread {}) [signature verified, webhook-id {}]",
                push["preview"],
                push["unread_count"],
                headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default()
            ));
            warp::http::StatusCode::NO_CONTENT
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the push receiver binds");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}/push")
}

#[path = "demo/web.rs"]
mod web;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--web") {
        web::run(&args).await;
        return;
    }
    println!("Starting the local Supabase stand-in (PostgreSQL 15 + Realtime + PostgREST + Auth)...");
    let stack = Stack::start().await.expect("the stand-in stack starts (is PostgreSQL installed? run scripts/setup)");
    let keys = stack.keys();
    println!("  SUPABASE_URL = {}", stack.url());

    let postgres = std::env::args().any(|a| a == "--postgres");
    let port = free_port();
    let exe = std::env::current_exe().expect("current exe");
    let gateway_bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("realtime-gateway"))
        .expect("target dir");
    println!("Starting {} on port {port}...", gateway_bin.display());
    let mut command = tokio::process::Command::new(&gateway_bin);
    if postgres {
        let db = stack.database();
        // The stand-in's database already has supabase/standalone/00_base.sql (role chat_gateway).
        let url = format!("postgres://chat_gateway@127.0.0.1:{}/{}", db.port(), db.name());
        println!("  Backend: plain PostgreSQL, DATABASE_URL = {url} (durable slot demo_gateway)");
        command
            .env_remove("SUPABASE_URL")
            .env("DATABASE_URL", url)
            .env("SLOT_NAME", "demo_gateway")
            .env("JWT_SECRET", &keys.jwt_secret)
            .env("JWKS_URL", format!("{}/auth/v1/.well-known/jwks.json", stack.url()));
    } else {
        command
            .env("SUPABASE_URL", stack.url())
            .env("SUPABASE_ANON_KEY", &keys.anon_key)
            .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
            .env("SUPABASE_JWT_SECRET", &keys.jwt_secret);
    }
    let (push_lines, mut pushes) = mpsc::unbounded_channel();
    let receiver = push_receiver(push_lines).await;
    println!("  Push: PUSH_WEBHOOK_URL = {receiver} (a receiver in this program), signed with PUSH_WEBHOOK_SECRET");
    let mut gateway = command
        .env("PUSH_WEBHOOK_URL", &receiver)
        .env("PUSH_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("LOG_LEVEL", std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into()))
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary exists (scripts/demo builds it)");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if postgres {
        println!("Gateway ready: its replication slot on PostgreSQL is live.\n");
    } else {
        println!("Gateway ready: upstream Realtime subscription is live.\n");
    }

    let ws_base = format!("ws://127.0.0.1:{port}/");
    println!("Phones connect:");
    let mut carla_phone = phone(&ws_base, &stack, &seed::CARLA, "phone").await;
    let mut carla_tablet = phone(&ws_base, &stack, &seed::CARLA, "tablet").await;
    let mut david = phone(&ws_base, &stack, &seed::DAVID, "phone").await;
    let mut farid = phone(&ws_base, &stack, &seed::FARID, "phone").await;

    println!("\nAlice Martin (teacher, 3B) posts in \"Class 3B parents\" with a SQL INSERT:");
    let db = stack.sql().await;
    let content = "Reminder: museum trip on Friday, bring a packed lunch!";
    db.execute(
        "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3)",
        &[&seed::CLASS_3B_PARENTS, &seed::ALICE.id, &content],
    )
    .await
    .expect("insert");
    for (name, ws) in
        [("Carla/phone", &mut carla_phone), ("Carla/tablet", &mut carla_tablet), ("David/phone", &mut david)]
    {
        match next_frame(ws, Duration::from_secs(10)).await {
            Some(frame) => println!("  {name:<13} received: {frame}"),
            None => println!("  {name:<13} received NOTHING (unexpected)"),
        }
    }
    match next_frame(&mut farid, Duration::from_secs(1)).await {
        None => println!("  Farid/phone   (class 4A) received nothing, as he must not."),
        Some(frame) => println!("  Farid/phone   received {frame} (A LEAK: this must not happen)"),
    }

    println!("\nEva (3B parent) has the app closed: a push goes to her through the webhook (after PUSH_DELAY_MS):");
    match tokio::time::timeout(Duration::from_secs(15), pushes.recv()).await {
        Ok(Some(line)) => println!("  {line}"),
        _ => println!("  no push arrived (unexpected)"),
    }
    // Carla and David were online, Alice sent it, Farid is not in the thread: nobody else.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(line) = pushes.try_recv() {
        println!("  {line} (UNEXPECTED: only Eva was offline)");
    }

    println!("\nEva (3B parent, was offline) reopens the app: REST calls with her own token:");
    let eva = stack.token(&seed::EVA, Alg::Hs256);
    for (method, path) in [
        ("GET", "/api/chat/unread-count".to_string()),
        ("GET", "/api/chat/offline-messages?last_check_time=2020-01-01T00:00:00Z".to_string()),
        ("POST", format!("/api/chat/mark-read/{}", seed::CLASS_3B_PARENTS)),
        ("GET", "/api/chat/unread-count".to_string()),
        ("POST", format!("/api/chat/mark-read/{}", seed::CLASS_4A_PARENTS)),
    ] {
        let request =
            if method == "GET" { http.get(format!("{base}{path}")) } else { http.post(format!("{base}{path}")) };
        let response = request.bearer_auth(&eva).send().await.expect("gateway answers");
        let status = response.status();
        let mut body: Value = response.json().await.unwrap_or(Value::Null);
        // The documented `data.messages`, shortened; its top-level mirror (for the guide's
        // `initializeChat`) is the same list and is left out of the printout.
        if body.pointer("/data/messages").is_some() {
            if let Some(top) = body.as_object_mut() {
                top.remove("messages");
            }
        }
        if let Some(messages) = body.pointer_mut("/data/messages").and_then(Value::as_array_mut) {
            let n = messages.len();
            messages.truncate(2);
            if n > 2 {
                messages.push(Value::String(format!("... {} more", n - 2)));
            }
        }
        println!("  {method} {path}\n    -> {status} {body}");
    }

    println!("\nStopping the gateway (SIGTERM: clients are told 'going away')...");
    if let Some(pid) = gateway.id() {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    }
    if let Some(frame) = next_frame(&mut carla_phone, Duration::from_secs(5)).await {
        println!("  Carla/phone got {frame}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), gateway.wait()).await;
    println!("Done. The throwaway database is removed on exit.");
}
