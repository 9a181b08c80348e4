//! The WebSocket upgrade: the token (`?token=` or `Authorization: Bearer`, verified before the
//! upgrade), the optional resume cursor (`?since=`), registration (with the replay plan), and the
//! `101 Switching Protocols` answer; every refusal in the public JSON error shape.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;
use warp::Reply;

use super::Response;
use crate::error::PeerError;
use crate::session::{self, resume, HeldToken, Opening, SessionContext};

pub(super) fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
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
/// Borrowed from the request unless it was percent-encoded: the session holds it decoded
/// ([`HeldToken`]), and its text is never kept.
pub fn request_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                if let Ok(decoded) = urlencoding::decode(value) {
                    if !decoded.is_empty() {
                        return Some(decoded);
                    }
                }
            }
        }
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    crate::auth::bearer(auth).map(Cow::Borrowed)
}

/// The `since` of a WebSocket URL: None when absent, Err when malformed.
fn request_since(query: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, PeerError> {
    let Some(raw) = query.into_iter().flat_map(|q| q.split('&')).find_map(|p| p.strip_prefix("since=")) else {
        return Ok(None);
    };
    let decoded =
        urlencoding::decode(raw).map_err(|_| PeerError::bad_request("Invalid since: not URL-encoded text"))?;
    resume::parse_since(&decoded).map(Some).ok_or_else(|| {
        PeerError::bad_request("Invalid since: expected a cursor (an RFC 3339 time such as 2024-01-01T00:00:00Z)")
    })
}

pub(super) async fn upgrade(
    mut req: Request<Incoming>,
    ctx: Arc<SessionContext>,
    ws_config: WebSocketConfig,
    peer: SocketAddr,
    tasks: &TaskTracker,
) -> Response {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return PeerError::bad_request("Missing Sec-WebSocket-Key").response();
    };
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return PeerError::bad_request("Unsupported WebSocket version (13 required)").response();
    }
    if ctx.readiness.is_draining() {
        return PeerError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").response();
    }
    let Some(token) = request_token(req.uri().query(), req.headers()) else {
        ctx.metrics.auth_failed("websocket", crate::auth::AuthError::Missing.label());
        tracing::info!(%peer, "WebSocket refused: no token");
        return PeerError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing token (use ?token= or Authorization: Bearer)",
        )
        .response();
    };
    let since = match request_since(req.uri().query()) {
        Ok(since) => since,
        Err(e) => return e.response(),
    };
    // The client address the edge resolved (behind TRUSTED_PROXIES, the forwarded one).
    let client = req.extensions().get::<crate::edge::Peer>().map_or(peer.ip(), |p| p.0);
    let identity = match ctx.verifier.verify_from(Some(client), &token).await {
        Ok(identity) => identity,
        Err(e) => {
            ctx.metrics.auth_failed("websocket", e.label());
            tracing::info!(%peer, %client, reason = %e, "WebSocket refused: bad token");
            return PeerError::from(e).response();
        }
    };
    let (handle, replay) = match resume::register(&ctx.hub, &ctx.history, identity.user_id, since) {
        Ok(registered) => registered,
        Err(e) => {
            tracing::warn!(%peer, user = %identity.user_id, reason = %e, "WebSocket refused: limit");
            return PeerError::from(e).response();
        }
    };
    // Held decoded, made before the upgrade's own allocations (its text, borrowed from the
    // request, is freed with it).
    let token = HeldToken::new(&token);
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Everything the session starts from, in one allocation: the task's future holds a pointer
    // to it, not a copy of each part for the session's whole life.
    let opening = Box::new(Opening { ctx, identity, token, shared: handle, replay, ws_config, peer });
    tasks.spawn(async move {
        // The upgrade's result is taken apart before the session runs: the task, which an idle
        // session holds for its life, does not keep it beside the session's future.
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(peer = %opening.peer, error = %e, "WebSocket upgrade failed");
                opening.ctx.hub.unregister(&opening.shared);
                return;
            }
        };
        session::run(TokioIo::new(upgraded), opening).await
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
        assert_eq!(request_token(Some("a=1&token=abc.def"), &headers), Some(Cow::Borrowed("abc.def")));
        assert_eq!(request_token(Some("token=a%2Eb"), &headers), Some(Cow::Owned("a.b".into())));
        assert_eq!(request_token(None, &headers), None);
        headers.insert(header::AUTHORIZATION, http::HeaderValue::from_static("Bearer xyz"));
        assert_eq!(request_token(Some("other=1"), &headers), Some(Cow::Borrowed("xyz")));
        assert_eq!(request_token(Some("token="), &headers), Some(Cow::Borrowed("xyz")));
    }

    #[test]
    fn since_is_optional_but_never_malformed() {
        assert_eq!(request_since(Some("token=a")), Ok(None));
        assert!(request_since(Some("token=a&since=2026-01-01T00%3A00%3A00.000001Z")).is_ok_and(|s| s.is_some()));
        assert_eq!(request_since(Some("since=yesterday")).map_err(|e| e.status), Err(StatusCode::BAD_REQUEST));
    }
}
