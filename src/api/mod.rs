//! REST API: the guide's `/api/chat/*` endpoints ([`chat`]), plus `/healthz`, `/readyz`,
//! `/metrics` ([`status`]), `/api/openapi.json` (the document `tests/openapi.rs` checks this
//! module against), and the operator page's routes, mounted from [`crate::admin`].
//!
//! Owns request parsing, the bearer-token check, and the one mapping from internal errors
//! ([`crate::auth::AuthError`], [`crate::store::StoreError`]) to the public error shape
//! `{"status":"error","message":...}` with the right HTTP status. Data calls go to PostgREST with
//! the caller's own token so RLS decides; this module never uses the service key and never logs a
//! token.

mod chat;
mod devices;
mod push;
mod read_state;
mod status;
mod threads;

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection, Reply};

use crate::admin::AdminState;
use crate::auth::{Identity, Verifier};
use crate::edge::Peer;
use crate::error::PeerError;
use crate::fair::UserBudgets;
use crate::hub::Hub;
use crate::limit::PerUser;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::Store;
pub use status::Ops;

/// The OpenAPI document of this API (`docs/openapi.json`), served at `GET /api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

#[derive(Debug)]
struct Rejected(PeerError);

impl warp::reject::Reject for Rejected {}

fn error_reply(e: &PeerError) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&e.body()), e.status)
}

fn ok(body: Value) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&body), StatusCode::OK)
}

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub readiness: Arc<Readiness>,
    pub verifier: Arc<Verifier>,
    /// REST calls per user and second (bursts of twice that).
    pub rate: Arc<PerUser>,
    /// Per-user budgets of the WebSocket sessions (their sizes go to /metrics).
    pub budgets: Arc<UserBudgets>,
    /// What `/metrics` reads besides the above: its token, the edge's counters, the slot's lag.
    pub ops: Arc<Ops>,
    /// The operator page's own state (its token, the recent disconnects).
    pub admin: Arc<AdminState>,
    /// The VAPID public key (base64url), when Web Push is configured.
    pub vapid_public_key: Option<String>,
}

/// The caller: verified identity and the raw token to forward to PostgREST.
pub struct Caller {
    pub identity: Identity,
    pub token: String,
}

/// Every request gets a clone of the state (`Arc`s only).
fn with_state(state: ApiState) -> impl Filter<Extract = (ApiState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn with_caller(state: ApiState) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    let request = warp::header::optional::<String>("authorization").and(warp::ext::optional::<Peer>());
    request.and_then(move |header: Option<String>, peer: Option<Peer>| {
        let verifier = state.verifier.clone();
        let rate = state.rate.clone();
        let metrics = state.metrics.clone();
        async move {
            let token = crate::auth::bearer(header.as_deref())
                .ok_or_else(|| {
                    metrics.auth_failed("rest", crate::auth::AuthError::Missing.label());
                    warp::reject::custom(Rejected(PeerError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: missing Authorization: Bearer token",
                    )))
                })?
                .to_string();
            let peer = peer.map(|p| p.0);
            let identity = verifier.verify_from(peer, &token).await.map_err(|e| {
                metrics.auth_failed("rest", e.label());
                warp::reject::custom(Rejected(PeerError::from(e)))
            })?;
            if !rate.allow(identity.user_id) {
                return Err(warp::reject::custom(Rejected(PeerError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests: slow down",
                ))));
            }
            Ok::<_, Rejection>(Caller { identity, token })
        }
    })
}

fn respond(result: Result<WithStatus<Json>, PeerError>) -> WithStatus<Json> {
    result.unwrap_or_else(|e| error_reply(&e))
}

/// All REST routes.
pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let timing = state.metrics.clone();
    let openapi = warp::path("api")
        .and(warp::path("openapi.json"))
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI_JSON, "content-type", "application/json").into_response());
    chat::routes(state.clone())
        .or(threads::routes(state.clone()))
        .unify()
        .or(read_state::routes(state.clone()))
        .unify()
        .or(push::routes(state.clone()))
        .unify()
        .or(status::health())
        .unify()
        .or(status::ready(state.clone()))
        .unify()
        .map(|r: WithStatus<Json>| r.into_response())
        .or(devices::routes(state.clone()))
        .unify()
        .or(read_state::share_route(state.clone()))
        .unify()
        .or(status::metrics(state.clone()))
        .unify()
        .or(openapi)
        .unify()
        .or(crate::admin::routes(state.admin))
        .unify()
        .recover(recover)
        .with(warp::log::custom(move |info: warp::log::Info<'_>| {
            timing.rest_request(route_label(info.path()), info.status().as_u16(), info.elapsed());
        }))
}

/// The route template of a request path, a static label for the latency series (never the
/// path itself: it may hold ids).
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 12] = [
        "/api/chat/subscribe",
        "/api/chat/unsubscribe",
        "/api/chat/offline-messages",
        "/api/chat/unread-count",
        "/api/chat/devices",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/admin",
        "/admin/api/overview",
        "/api/chat/push/vapid-public-key",
    ];
    /// Templates with one id: (prefix, suffix, label).
    const WITH_ID: [(&str, &str, &str); 6] = [
        ("/api/chat/threads/", "/messages", "/api/chat/threads/:thread_id/messages"),
        ("/api/chat/threads/", "/read-state", "/api/chat/threads/:thread_id/read-state"),
        ("/api/chat/mark-read/", "", "/api/chat/mark-read/:thread_id"),
        ("/api/chat/devices/", "", "/api/chat/devices/:device_id"),
        ("/api/chat/threads/", "/mute", "/api/chat/threads/:thread_id/mute"),
        ("/admin/api/users/", "/disconnect", "/admin/api/users/:user_id/disconnect"),
    ];
    let path = path.trim_end_matches('/');
    if let Some(found) = ROUTES.iter().find(|r| **r == path) {
        return found;
    }
    for (prefix, suffix, label) in WITH_ID {
        let id = path.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix));
        if id.is_some_and(|id| !id.is_empty() && !id.contains('/')) {
            return label;
        }
    }
    "other"
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(Rejected(e)) = rejection.find::<Rejected>() {
        e.clone()
    } else if let Some(e) = crate::admin::refusal(&rejection) {
        e
    } else if rejection.is_not_found() {
        PeerError::new(StatusCode::NOT_FOUND, "Not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        PeerError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        PeerError::new(StatusCode::BAD_REQUEST, "Invalid query string")
    } else {
        PeerError::new(StatusCode::BAD_REQUEST, "Bad request")
    };
    Ok(error_reply(&e).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates_never_ids() {
        assert_eq!(route_label("/api/chat/unread-count"), "/api/chat/unread-count");
        assert_eq!(
            route_label("/api/chat/mark-read/b0000000-0000-4000-8000-000000000001"),
            "/api/chat/mark-read/:thread_id"
        );
        assert_eq!(route_label("/admin/api/users/abc/disconnect"), "/admin/api/users/:user_id/disconnect");
        assert_eq!(route_label("/admin/"), "/admin");
        assert_eq!(route_label("/api/chat/devices/abc"), "/api/chat/devices/:device_id");
        assert_eq!(route_label("/api/chat/threads/abc/mute"), "/api/chat/threads/:thread_id/mute");
        assert_eq!(route_label("/api/chat/threads/abc/read-state"), "/api/chat/threads/:thread_id/read-state");
        assert_eq!(route_label("/api/chat/threads/a/b/mute"), "other");
        assert_eq!(route_label("/api/chat/mark-read/a/b"), "other");
        assert_eq!(route_label("/nothing/here"), "other");
    }
}
