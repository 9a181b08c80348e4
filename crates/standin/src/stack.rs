//! The stand-in stack: one database, the Realtime, PostgREST and Auth stand-ins, served at one
//! base URL like a Supabase project's API gateway.
//!
//! Owns wiring and lifetime: a fresh database (on the process-wide throwaway cluster, or a cluster
//! of its own for the command-line tool), the project's keys, and one HTTP server on 127.0.0.1
//! serving `/rest/v1`, `/realtime/v1/websocket`, `/auth/v1` ([`auth`] and the JWKS) and
//! `/_standin/...`. It must never be exposed beyond loopback in tests; the command-line tool binds
//! where told.

mod auth;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::{Filter, Reply};

use crate::keys::{Alg, Keys};
use crate::pg::{Cluster, Database, PgError};
use crate::realtime::{Realtime, RealtimeControl, RealtimeError};
use crate::rest::Rest;
use crate::seed::Person;

/// The legacy JWT secret the Supabase CLI uses locally; any 32+ character string works.
pub const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("PostgreSQL: {0}")]
    Pg(#[from] PgError),
    #[error("Realtime stand-in: {0}")]
    Realtime(#[from] RealtimeError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, String),
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub jwt_secret: Option<String>,
    pub bind: IpAddr,
    /// 0 = any free port.
    pub port: u16,
    /// A cluster of its own instead of the process-wide shared one.
    pub own_cluster: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions { jwt_secret: None, bind: IpAddr::V4(Ipv4Addr::LOCALHOST), port: 0, own_cluster: false }
    }
}

/// A listener whose accepted sockets inherit TCP_NODELAY (Linux copies it from the listening
/// socket): warp offers no per-connection hook, and Nagle's algorithm would hold back small
/// Realtime frames behind unacknowledged ones.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A running stand-in stack.
pub struct Stack {
    addr: SocketAddr,
    keys: Arc<Keys>,
    // Dropped before `database`: the change feed must stop before its cluster may go away.
    realtime: Realtime,
    database: Database,
    rest_faults: crate::rest::faults::RestFaults,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Stack {
    /// The password every seeded user signs in with at `POST /auth/v1/token?grant_type=password`.
    pub const SEED_PASSWORD: &'static str = auth::PASSWORD;

    /// A fresh database on the shared throwaway cluster, served on a free port.
    pub async fn start() -> Result<Stack, StackError> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Result<Stack, StackError> {
        let cluster = if options.own_cluster { Arc::new(Cluster::start().await?) } else { Cluster::shared().await? };
        let database = cluster.create_database().await?;
        let listener = listen(SocketAddr::new(options.bind, options.port))
            .map_err(|e| StackError::Bind(SocketAddr::new(options.bind, options.port), e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StackError::Bind(SocketAddr::new(options.bind, options.port), e.to_string()))?;
        let host = if addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { addr.ip() };
        let url = format!("http://{}", SocketAddr::new(host, addr.port()));
        let secret = options.jwt_secret.as_deref().unwrap_or(DEFAULT_JWT_SECRET);
        let keys = Arc::new(Keys::generate(secret, &format!("{url}/auth/v1")));
        let realtime = Realtime::start(&database.url(), keys.clone()).await?;
        let rest = Rest::new(database.url(), keys.clone());

        let jwks_keys = keys.clone();
        let jwks = warp::path!("auth" / "v1" / ".well-known" / "jwks.json")
            .and(warp::get())
            .map(move || warp::reply::json(jwks_keys.jwks()).into_response());
        let health = warp::path!("_standin" / "health")
            .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
        let rest_faults = rest.faults();
        let routes = rest
            .routes()
            .or(jwks)
            .unify()
            .or(auth::routes(keys.clone(), database.url()))
            .unify()
            .or(health)
            .unify()
            .or(realtime.routes())
            .unify()
            .with(warp::log("supabase_standin::http"));

        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            warp::serve(routes)
                .incoming(listener)
                .graceful(async {
                    let _ = stopped.await;
                })
                .run()
                .await;
        });
        tracing::info!(%url, database = database.name(), "stand-in stack ready");
        Ok(Stack { addr, keys, database, realtime, rest_faults, stop: Some(stop), server: Some(server) })
    }

    /// `http://127.0.0.1:PORT`: what `SUPABASE_URL` is for the gateway.
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { self.addr.ip() };
        format!("http://{}", SocketAddr::new(host, self.addr.port()))
    }

    pub fn realtime_url(&self) -> String {
        format!("{}/realtime/v1/websocket", self.url().replacen("http", "ws", 1))
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// A superuser connection to the stack's database, driven on the current runtime (for tests).
    ///
    /// # Panics
    /// If the database refuses the connection: the stack is unusable then, and a test should fail.
    pub async fn sql(&self) -> tokio_postgres::Client {
        self.database.connect().await.expect("the stack's database accepts superuser connections")
    }

    pub fn rest_faults(&self) -> crate::rest::faults::RestFaults {
        self.rest_faults.clone()
    }

    pub fn realtime(&self) -> RealtimeControl {
        self.realtime.control()
    }

    /// A one-hour access token of a seeded person.
    pub fn token(&self, who: &Person, alg: Alg) -> String {
        self.keys.user_token(who.id, who.email, alg, 3600)
    }

    /// Stops serving (the database is dropped with the cluster).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
