//! Server: wires configuration, auth, store, hub, upstream and router; owns the listener and
//! shutdown.
//!
//! One TCP port serves both the WebSocket (path `/`, token from `?token=` or
//! `Authorization: Bearer`, verified before the upgrade) and the REST API (warp, as a hyper
//! service). WebSocket upgrades are handled here directly on hyper + tokio-tungstenite so that the
//! socket's buffer sizes and limits are ours to choose. Shutdown is one `watch` signal that every
//! task selects on: stop accepting, close clients with "going away", leave the upstream channel,
//! and finish within a bound. Nothing here is detached and forgotten.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tower_service::Service;
use warp::Reply;

use crate::api::{self, ApiState};
use crate::auth::{Verifier, VerifierSettings};
use crate::config::{Config, RealtimeVsn};
use crate::edge::Edge;
use crate::hub::{Hub, Router, CLOSE_SHUTDOWN};
use crate::limit::PerUser;
use crate::session::{self, SessionContext};
use crate::store::Store;
use crate::upstream::{self, Binding, UpstreamConfig, Vsn};

type Response = warp::reply::Response;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Gateway {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Graceful shutdown: stop accepting, close every client with 1001 "going away", leave the
    /// upstream channel; returns within the configured grace period.
    pub async fn shutdown(self) {
        tracing::info!(sessions = self.hub.session_count(), "shutting down");
        let _ = self.shutdown.send(true);
        self.hub.close_all(CLOSE_SHUTDOWN);
        let deadline = tokio::time::Instant::now() + self.grace;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        while self.hub.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(remaining_sessions = self.hub.session_count(), "stopped");
    }
}

/// The upstream subscription the gateway needs: new messages, and membership changes.
pub fn upstream_config(config: &Config) -> UpstreamConfig {
    UpstreamConfig {
        websocket_url: config.realtime_websocket_url(),
        apikey: config.anon_key.clone(),
        access_token: config.service_role_key.clone(),
        vsn: match config.realtime_vsn {
            RealtimeVsn::V1 => Vsn::V1,
            RealtimeVsn::V2 => Vsn::V2,
        },
        topic: "realtime:chat-gateway".into(),
        bindings: vec![
            Binding { event: "INSERT".into(), schema: "public".into(), table: Some("messages".into()), filter: None },
            Binding {
                event: "*".into(),
                schema: "public".into(),
                table: Some("thread_participants".into()),
                filter: None,
            },
        ],
        heartbeat_interval: config.upstream_heartbeat,
        join_timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(10),
    }
}

/// Starts the gateway: binds, connects upstream, serves until [`Gateway::shutdown`].
pub async fn start(config: Config) -> Result<Gateway, StartError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .connect_timeout(config.backend_timeout)
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let verifier = Verifier::new(VerifierSettings::from_config(&config), http.clone());
    if let Err(e) = verifier.prime().await {
        if config.jwt_secret.is_none() {
            tracing::warn!(error = %e, "no SUPABASE_JWT_SECRET and no JWKS yet: tokens are refused until the JWKS loads");
        }
    }
    let store = Store::new(
        http,
        config.rest_url(),
        config.anon_key.clone(),
        config.service_role_key.clone(),
        config.backend_timeout,
    );
    let hub = Hub::new(store, config.limits.clone(), config.cache_ttl, config.cache_max_threads);

    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (events_tx, events_rx) = mpsc::channel(65_536);
    let upstream = upstream::spawn(upstream_config(&config), events_tx, shutdown_rx.clone());
    let router = tokio::spawn(Router::new(hub.clone(), config.catchup_margin).run(events_rx));

    let ctx = SessionContext { hub: hub.clone(), verifier: verifier.clone(), shutdown: shutdown_rx.clone() };
    let rest_rate = Arc::new(PerUser::new(config.rest_rate_per_sec, 100_000));
    let rest = warp::service(api::routes(ApiState { hub: hub.clone(), verifier: verifier.clone(), rate: rest_rate }));
    // Buffer sizes: tungstenite reserves `read_buffer_size` per socket up front (128 KiB by
    // default); client frames are small, so 256 bytes by default (WS_READ_BUFFER_BYTES; it grows for
    // a larger frame). Writes are
    // buffered up to 64 KiB and flushed once per batch (see session::write_batch).
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.limits.read_buffer_bytes)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(config.limits.max_message_bytes))
        .max_frame_size(Some(config.limits.max_message_bytes));
    let edge = Edge::new(&config.edge);
    let accept = tokio::spawn(accept_loop(listener, ctx, rest, ws_config, edge, shutdown_rx));
    tracing::info!(%addr, upstream = %config.realtime_websocket_url(), "gateway listening");
    Ok(Gateway {
        addr,
        hub,
        shutdown: shutdown_tx,
        tasks: vec![accept, upstream, router],
        grace: config.shutdown_grace,
    })
}

async fn accept_loop<R>(
    listener: TcpListener,
    ctx: SessionContext,
    rest: R,
    ws_config: WebSocketConfig,
    edge: Arc<Edge>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    R::Future: Send,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some((stream, handshake)) = edge.admit(stream, peer) else { continue };
        let http1 = edge.http1();
        let ctx = ctx.clone();
        let rest = rest.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = handshake.service(service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                let mut rest = rest.clone();
                async move {
                    if is_websocket_upgrade(&req) && req.uri().path() == "/" {
                        Ok::<_, Infallible>(upgrade(req, ctx, ws_config, peer).await)
                    } else {
                        rest.call(req).await
                    }
                }
            }));
            let conn = http1.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// The token of a WebSocket request: `?token=` first, then `Authorization: Bearer`.
pub fn request_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                if let Ok(decoded) = urlencoding::decode(value) {
                    if !decoded.is_empty() {
                        return Some(decoded.into_owned());
                    }
                }
            }
        }
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    api::bearer(auth).map(str::to_string)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({"status": "error", "message": message})), status).into_response()
}

async fn upgrade(
    mut req: Request<Incoming>,
    ctx: SessionContext,
    ws_config: WebSocketConfig,
    peer: SocketAddr,
) -> Response {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return json_error(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key");
    };
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return json_error(StatusCode::BAD_REQUEST, "Unsupported WebSocket version (13 required)");
    }
    let Some(token) = request_token(req.uri().query(), req.headers()) else {
        tracing::info!(%peer, "WebSocket refused: no token");
        return json_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing token (use ?token= or Authorization: Bearer)",
        );
    };
    let identity = match ctx.verifier.verify_from(Some(peer.ip()), &token).await {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(%peer, reason = %e, "WebSocket refused: bad token");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            return json_error(status, &e.public_message());
        }
    };
    let shared = match ctx.hub.register(identity.user_id) {
        Ok(shared) => shared,
        Err(e) => {
            tracing::warn!(%peer, user = %identity.user_id, reason = %e, "WebSocket refused: limit");
            let status = match e {
                crate::hub::RegisterError::UserFull => StatusCode::TOO_MANY_REQUESTS,
                crate::hub::RegisterError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
            };
            return json_error(status, &e.to_string());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config)).await;
                session::run(ws, ctx, identity, token, shared).await;
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "WebSocket upgrade failed");
                ctx.hub.unregister(&shared);
            }
        }
    });
    let mut response = warp::reply().into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(value) = http::HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_query_or_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_token(Some("a=1&token=abc.def"), &headers), Some("abc.def".into()));
        assert_eq!(request_token(Some("token=a%2Eb"), &headers), Some("a.b".into()));
        assert_eq!(request_token(None, &headers), None);
        headers.insert(header::AUTHORIZATION, http::HeaderValue::from_static("Bearer xyz"));
        assert_eq!(request_token(Some("other=1"), &headers), Some("xyz".into()));
        assert_eq!(request_token(Some("token="), &headers), Some("xyz".into()));
    }
}
