//! The test world: a throwaway Supabase stand-in (real PostgreSQL with the project's migrations
//! and seed, Realtime and PostgREST stand-ins) and a real gateway on port 0, driven as phones and
//! apps would drive them. Helpers read like the guide's scenarios.
//!
//! Two backends: [`Backend::Supabase`] (the gateway reads the Realtime and PostgREST stand-ins)
//! and [`Backend::Postgres`] (the gateway reads the same database directly: a durable replication
//! slot and its own pool, as the `chat_gateway` role of `supabase/standalone/00_base.sql`).
//! `World::start()` uses `GATEWAY_TEST_BACKEND` (`supabase`, the default, or `postgres`), so any
//! scenario can be run on either; `tests/postgres.rs` runs the main ones on PostgreSQL always.
#![allow(dead_code)]

pub mod node;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime_gateway::config::Config;
use realtime_gateway::server::{self, Gateway};
use serde_json::Value;
use supabase_standin::keys::Alg;
use supabase_standin::seed::Person;
use supabase_standin::Stack;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// Generous bound for "this must arrive"; never an assertion about speed.
pub const ARRIVES: Duration = Duration::from_secs(20);

pub struct World {
    pub stack: Stack,
    pub gateway: Option<Gateway>,
    pub http: reqwest::Client,
    pub backend: Backend,
    /// The gateway's configuration (a restart starts a gateway with it again).
    pub config: Config,
}

/// Which backend the gateway of a [`World`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Supabase,
    Postgres,
}

impl Backend {
    /// `GATEWAY_TEST_BACKEND=postgres` runs `World::start()` scenarios on PostgreSQL.
    pub fn from_env() -> Backend {
        match std::env::var("GATEWAY_TEST_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres,
            _ => Backend::Supabase,
        }
    }
}

/// The gateway's connection string and slot name for `db`. Nothing to apply: the stand-in's
/// template database was built with `supabase/standalone/00_base.sql` (role `chat_gateway`).
pub fn prepare_postgres(db: &supabase_standin::pg::Database) -> (String, String) {
    let url = format!("postgres://chat_gateway@127.0.0.1:{}/{}", db.port(), db.name());
    (url, format!("gw_{}", db.name()))
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

impl World {
    /// Stand-in stack + gateway with default settings, upstream live.
    pub async fn start() -> World {
        World::start_with(|_| {}).await
    }

    /// Same, with the gateway's configuration adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        World::start_on(Backend::from_env(), tweak).await
    }

    /// The stack and a gateway on the PostgreSQL backend.
    pub async fn start_postgres() -> World {
        World::start_on(Backend::Postgres, |_| {}).await
    }

    /// The stack and a gateway on `backend`, its configuration adjusted by `tweak`.
    pub async fn start_on(backend: Backend, tweak: impl FnOnce(&mut Config)) -> World {
        let world = World::start_unready_on(backend, tweak).await;
        world.wait_ready(true).await;
        world
    }

    /// The stack and a gateway, without waiting for `/readyz` (for gateways that cannot become
    /// ready, such as one whose every database call times out).
    pub async fn start_unready_with(tweak: impl FnOnce(&mut Config)) -> World {
        World::start_unready_on(Backend::from_env(), tweak).await
    }

    async fn start_unready_on(backend: Backend, tweak: impl FnOnce(&mut Config)) -> World {
        init_logs();
        let stack = Stack::start().await.expect("the stand-in stack (PostgreSQL, Realtime, PostgREST) must start");
        let keys = stack.keys();
        let mut config = match backend {
            Backend::Supabase => {
                Config::for_project(&stack.url(), &keys.anon_key, &keys.service_key, Some(&keys.jwt_secret))
            }
            Backend::Postgres => {
                let (url, slot) = prepare_postgres(stack.database());
                Config::for_postgres(&url, &slot, &keys.jwt_secret)
            }
        }
        .expect("valid test configuration");
        config.feed.heartbeat = Duration::from_millis(500);
        config.auth.rules.jwks_refresh_min = Duration::from_millis(100);
        if backend == Backend::Postgres {
            // The token issuer is the stand-in's Auth (ES256 keys in its JWKS), as JWKS_URL.
            config.auth.jwks_url = Some(format!("{}/auth/v1/.well-known/jwks.json", stack.url()));
            config.feed.backoff_min = Duration::from_millis(100);
            config.feed.backoff_max = Duration::from_secs(1);
        }
        tweak(&mut config);
        let gateway = server::start(config.clone()).await.expect("gateway starts");
        World { stack, gateway: Some(gateway), http: reqwest::Client::new(), backend, config }
    }

    /// Stops the gateway (graceful shutdown).
    pub async fn stop_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    /// Starts a gateway again with the same configuration, and waits until it is ready.
    pub async fn start_gateway(&mut self) {
        let gateway = server::start(self.config.clone()).await.expect("gateway starts again");
        self.gateway = Some(gateway);
        self.wait_ready(true).await;
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.gateway().local_addr())
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}/", self.gateway().local_addr())
    }

    /// A one-hour HS256 access token of a seeded person.
    pub fn token(&self, who: &Person) -> String {
        self.stack.token(who, Alg::Hs256)
    }

    /// Waits until `/readyz` says `ready` (or not).
    pub async fn wait_ready(&self, ready: bool) {
        let deadline = tokio::time::Instant::now() + ARRIVES;
        loop {
            let status =
                self.http.get(format!("{}/readyz", self.base())).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            if (status == 200) == ready {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "gateway never became ready={ready}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A phone of `who` connects with `?token=` and gets `connection_established`.
    pub async fn phone(&self, who: &Person) -> Phone {
        let token = self.token(who);
        let mut phone = Phone::connect(&format!("{}?token={}", self.ws_base(), token)).await.expect("connects");
        let hello = phone.next_json().await.expect("connection_established");
        assert_eq!(hello["type"], "connection_established", "{hello}");
        assert_eq!(hello["user_id"], who.id.to_string());
        phone
    }

    /// A phone of `who` that resumes from `since` (`?since=`); gets `connection_established`.
    pub async fn phone_since(&self, who: &Person, since: &str) -> Phone {
        let url = format!("{}?token={}&since={}", self.ws_base(), self.token(who), urlencoding::encode(since));
        let mut phone = Phone::connect(&url).await.expect("connects");
        let hello = phone.next_json().await.expect("connection_established");
        assert_eq!(hello["type"], "connection_established", "{hello}");
        phone
    }

    /// Another gateway on the same stand-in stack, as a restart or a second instance would be.
    pub async fn another_gateway(&self, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let mut config = self.config.clone();
        tweak(&mut config);
        server::start(config).await.expect("gateway starts")
    }

    /// A second instance on the same stack, ready (`/readyz` 200); on PostgreSQL with its own
    /// replication slot (one per instance), as a second instance behind a load balancer would be.
    pub async fn second_instance(&self) -> Gateway {
        let second = self
            .another_gateway(|c| {
                if let realtime_gateway::config::Backend::Postgres(pg) = &mut c.backend {
                    pg.slot_name.push_str("_b");
                }
            })
            .await;
        let deadline = tokio::time::Instant::now() + ARRIVES;
        let ready = format!("http://{}/readyz", second.local_addr());
        while self.http.get(&ready).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
            assert!(tokio::time::Instant::now() < deadline, "the second instance became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        second
    }

    /// A phone of `who` on the instance listening at `addr`, past `connection_established`.
    pub async fn phone_at(&self, addr: std::net::SocketAddr, who: &Person) -> Phone {
        let mut phone = Phone::connect(&format!("ws://{addr}/?token={}", self.token(who))).await.expect("connects");
        let hello = phone.next_json().await.expect("connection_established");
        assert_eq!(hello["type"], "connection_established", "{hello}");
        phone
    }

    /// `who` posts in `thread` (a real INSERT committed in PostgreSQL); returns the message id.
    pub async fn post(&self, who: &Person, thread: Uuid, content: &str) -> Uuid {
        let db = self.stack.sql().await;
        let row = db
            .query_one(
                "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
                &[&thread, &who.id, &content],
            )
            .await
            .expect("insert message");
        row.get(0)
    }

    /// The value of one gauge of `/metrics` that may be negative.
    pub async fn metric_signed(&self, name: &str) -> i64 {
        let text = self.http.get(format!("{}/metrics", self.base())).send().await.expect("metrics");
        let text = text.text().await.expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {name} in /metrics"))
    }

    /// The value of one series of `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let value = self.metric_signed(name).await;
        u64::try_from(value).unwrap_or_else(|_| panic!("{name} is negative: {value}"))
    }

    /// A REST call with `Authorization: Bearer <token>`; returns (status, JSON body).
    pub async fn rest(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> (u16, Value) {
        self.rest_with(method, path, token, None).await
    }

    /// A REST call with a JSON body (`Some`); returns (status, JSON body or `Null`).
    pub async fn rest_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{}", self.base(), path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// The id of a `new_message` frame.
pub fn message_id(frame: &Value) -> Uuid {
    frame["data"]["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("no message id in {frame}"))
}

pub struct Phone {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Phone {
    pub async fn connect(url: &str) -> Result<Phone, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Phone { ws })
    }

    /// The next JSON text frame (pings answered by the library), or None when closed / timed out.
    pub async fn next_json(&mut self) -> Option<Value> {
        self.next_json_within(ARRIVES).await
    }

    pub async fn next_json_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match frame {
                Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame, whatever its type; panics on close or timeout.
    pub async fn expect_any(&mut self) -> Value {
        self.next_json().await.unwrap_or_else(|| panic!("expected a frame, the socket closed or stayed silent"))
    }

    /// Reads frames until one of type `kind`; panics on close or timeout.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .next_json()
                .await
                .unwrap_or_else(|| panic!("expected a {kind} frame, the socket closed or stayed silent"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads a resume replay: every `new_message` up to `sync_complete`; returns their ids in order
    /// and the `sync_complete` frame.
    pub async fn replay(&mut self) -> (Vec<Uuid>, Value) {
        let mut ids = Vec::new();
        loop {
            let frame = self.expect_any().await;
            match frame["type"].as_str() {
                Some("new_message") => ids.push(message_id(&frame)),
                Some("sync_complete") => return (ids, frame),
                _ => {}
            }
        }
    }

    /// Reads `new_message` frames until `id` arrives; returns every message id seen before it.
    pub async fn receive_until(&mut self, id: Uuid) -> (Value, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let frame = self.expect("new_message").await;
            let got = frame["data"]["id"].as_str().unwrap_or_default().to_string();
            if got == id.to_string() {
                return (frame, before);
            }
            before.push(got);
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws.send(Message::text(value.to_string())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.expect("send");
    }

    /// Reads until the server closes; returns the close code (None if no close frame came).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(ARRIVES, self.ws.next()).await.ok()? {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}
