//! Edge: what happens to a connection before anyone is authenticated.
//!
//! Owns the admission of TCP connections (a cap on all open connections, `MAX_TCP_CONNECTIONS`,
//! and on those still in handshake, i.e. without a complete first request head,
//! `MAX_PENDING_HANDSHAKES`; over either, the connection is closed at once), the HTTP/1 settings
//! that bound a request head (`MAX_HEADER_BYTES`, answered 431 by hyper; `HANDSHAKE_TIMEOUT_SECS`
//! to send it, also the idle limit between keep-alive requests), and the browser rules: CORS for
//! the REST API (`CORS_ALLOWED_ORIGINS`: preflights answered here, `Access-Control-Allow-Origin`
//! echoed only for allowed origins) and the same list checked against `Origin` on WebSocket
//! upgrades (403 otherwise; clients that send no `Origin`, the phones, are not concerned). It also
//! tags each request with its client address, [`Peer`], for the per-IP budget of refused tokens
//! in [`crate::auth`]: the TCP peer, or behind `TRUSTED_PROXIES` the address they forwarded (see
//! [`forwarded`]). It must never look at tokens or hold a lock across an await.

pub mod forwarded;

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::Reply;

use forwarded::TrustedProxies;

/// hyper's smallest read buffer: a smaller header limit cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Limits applied before authentication (declared in [`crate::config`]).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub max_pending_handshakes: usize,
    pub max_tcp_connections: usize,
    pub handshake_timeout: std::time::Duration,
    pub max_header_bytes: usize,
    /// Serialized origins (`https://host[:port]`) allowed for browsers; empty: none.
    pub cors_allowed_origins: Vec<String>,
    /// `TRUSTED_PROXIES` and the header they write the client address into.
    pub trusted_proxies: TrustedProxies,
}

type Response = warp::reply::Response;

/// Methods and request headers a browser may use on the REST API.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const ALLOW_HEADERS: &str = "authorization, content-type, apikey, x-client-info";

/// The client address of a request (see [`forwarded::TrustedProxies::client`]), in its
/// extensions for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// Connection admission and pre-authentication rules, shared by the accept loop.
pub struct Edge {
    settings: EdgeSettings,
    open: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    cors: Arc<Cors>,
    proxies: Arc<forwarded::TrustedProxies>,
    refused: AtomicU64,
}

/// Counters of the edge, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeStats {
    pub open_connections: usize,
    pub pending_handshakes: usize,
    pub refused_connections: u64,
}

impl Edge {
    pub fn new(settings: &EdgeSettings) -> Arc<Edge> {
        Arc::new(Edge {
            open: Arc::new(Semaphore::new(settings.max_tcp_connections)),
            pending: Arc::new(Semaphore::new(settings.max_pending_handshakes)),
            cors: Arc::new(Cors { origins: settings.cors_allowed_origins.clone() }),
            proxies: Arc::new(settings.trusted_proxies.clone()),
            settings: settings.clone(),
            refused: AtomicU64::new(0),
        })
    }

    /// Admits a freshly accepted connection, or returns `None` (and drops it, closing it) when
    /// the gateway already holds as many connections, or handshakes, as allowed.
    pub fn admit<T>(&self, stream: T, peer: SocketAddr) -> Option<(Guarded<T>, Handshake)> {
        let permits = self.open.clone().try_acquire_owned().ok().zip(self.pending.clone().try_acquire_owned().ok());
        let Some((open, pending)) = permits else {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection refused: too many connections or handshakes");
            } else {
                tracing::debug!(%peer, "connection refused: too many connections or handshakes");
            }
            return None;
        };
        let handshake = Handshake { pending, peer, cors: self.cors.clone(), proxies: self.proxies.clone() };
        Some((Guarded { inner: stream, _open: open }, handshake))
    }

    /// The HTTP/1 connection settings: head size limit and head timeout.
    pub fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.handshake_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(MIN_HEADER_BYTES));
        builder
    }

    pub fn stats(&self) -> EdgeStats {
        EdgeStats {
            open_connections: self.settings.max_tcp_connections - self.open.available_permits(),
            pending_handshakes: self.settings.max_pending_handshakes - self.pending.available_permits(),
            refused_connections: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// A connection's stream holding its place in `MAX_TCP_CONNECTIONS` until it is dropped, which
/// is after the WebSocket session when the connection is upgraded.
pub struct Guarded<T> {
    inner: T,
    _open: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's place in `MAX_PENDING_HANDSHAKES`, given back when its first request head is
/// complete (or the connection ends).
pub struct Handshake {
    pending: OwnedSemaphorePermit,
    peer: SocketAddr,
    cors: Arc<Cors>,
    proxies: Arc<forwarded::TrustedProxies>,
}

impl Handshake {
    /// Wraps the connection's service: ends the handshake on the first request, tags requests
    /// with [`Peer`], answers CORS preflights and refuses WebSocket upgrades from other origins.
    pub fn service<S>(self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            pending: Mutex::new(Some(self.pending)),
            peer: self.peer,
            cors: self.cors,
            proxies: self.proxies,
        }
    }
}

pub struct EdgeService<S> {
    inner: S,
    pending: Mutex<Option<OwnedSemaphorePermit>>,
    peer: SocketAddr,
    cors: Arc<Cors>,
    proxies: Arc<forwarded::TrustedProxies>,
}

impl<S, B> hyper::service::Service<Request<B>> for EdgeService<S>
where
    S: hyper::service::Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        drop(self.pending.lock().unwrap_or_else(PoisonError::into_inner).take());
        let client = self.proxies.client(self.peer.ip(), req.headers());
        req.extensions_mut().insert(Peer(client));
        let origin = req.headers().get(header::ORIGIN).cloned();
        if let Some(origin) = &origin {
            if let Some(answer) = self.cors.preflight(&req, origin) {
                return futures_util::future::ready(Ok(answer)).boxed();
            }
            if is_websocket_upgrade(&req) && !self.cors.allows(origin) {
                let shown = shown_origin(origin);
                tracing::info!(peer = %self.peer, origin = %shown, "WebSocket refused: origin not allowed (not in CORS_ALLOWED_ORIGINS)");
                let refused = json_error(StatusCode::FORBIDDEN, &origin_refusal(&shown));
                return futures_util::future::ready(Ok(refused)).boxed();
            }
        }
        let answer = self.inner.call(req);
        let cors = self.cors.clone();
        async move {
            let mut response = answer.await?;
            if let Some(origin) = origin {
                cors.decorate(&origin, &mut response);
            }
            Ok(response)
        }
        .boxed()
    }
}

/// An `Origin` header as logs and answers show it: text, at most 200 characters.
fn shown_origin(origin: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(origin.as_bytes());
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The refusal of a browser origin, naming the setting that would allow it.
fn origin_refusal(origin: &str) -> String {
    format!("Forbidden: origin not allowed: {origin} is not in the gateway's CORS_ALLOWED_ORIGINS")
}

/// The browser origins allowed by `CORS_ALLOWED_ORIGINS`.
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: Vec<String>) -> Cors {
        Cors { origins }
    }

    /// Exact match of the serialized origin, as browsers send it.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|o| self.origins.iter().any(|allowed| allowed == o))
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`), or `None`
    /// for any other request.
    pub fn preflight<B>(&self, req: &Request<B>, origin: &HeaderValue) -> Option<Response> {
        if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        if !self.allows(origin) {
            return Some(json_error(StatusCode::FORBIDDEN, &origin_refusal(&shown_origin(origin))));
        }
        let mut response = warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        self.decorate(origin, &mut response);
        Some(response)
    }

    /// Echoes an allowed origin in `Access-Control-Allow-Origin`; other origins get nothing.
    pub fn decorate(&self, origin: &HeaderValue, response: &mut Response) {
        let headers = response.headers_mut();
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.allows(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
}

fn json_error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({"status": "error", "message": message})), status).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(vec!["https://app.school.example".into()])
    }

    fn request(method: Method, origin: &str, preflight: bool) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/api/chat/unread-count").header("origin", origin);
        if preflight {
            builder = builder.header("access-control-request-method", "GET");
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn preflight_is_answered_for_allowed_origins_only() {
        let allowed = HeaderValue::from_static("https://app.school.example");
        let answer = cors()
            .preflight(&request(Method::OPTIONS, "https://app.school.example", true), &allowed)
            .expect("a preflight");
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.school.example");
        let other = HeaderValue::from_static("https://evil.example");
        let refused =
            cors().preflight(&request(Method::OPTIONS, "https://evil.example", true), &other).expect("a preflight");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(!refused.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(cors().preflight(&request(Method::OPTIONS, "https://evil.example", false), &other).is_none());
        assert!(cors().preflight(&request(Method::GET, "https://app.school.example", true), &allowed).is_none());
    }

    #[test]
    fn origins_match_exactly() {
        let c = cors();
        assert!(c.allows(&HeaderValue::from_static("https://app.school.example")));
        assert!(!c.allows(&HeaderValue::from_static("http://app.school.example")));
        assert!(!c.allows(&HeaderValue::from_static("https://app.school.example.evil.example")));
        assert!(!Cors::new(Vec::new()).allows(&HeaderValue::from_static("https://app.school.example")));
    }
}
