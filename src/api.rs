//! REST API: the guide's `/api/chat/*` endpoints, plus `/healthz`, `/readyz`, `/metrics` and
//! `/api/openapi.json` (the document `tests/openapi.rs` checks this module against).
//!
//! Owns request parsing, the bearer-token check, and the one mapping from internal errors
//! ([`AuthError`], [`StoreError`]) to the public error shape `{"status":"error","message":...}`
//! with the right HTTP status. Data calls go to PostgREST with the caller's own token so RLS
//! decides; this module never uses the service key and never logs a token.

use std::convert::Infallible;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection, Reply};

use crate::auth::{Identity, Verifier};
use crate::edge::Peer;
use crate::error::PeerError;
use crate::hub::Hub;
use crate::limit::PerUser;
use crate::model::{self as protocol, ChatMessage, Sender};
use crate::router::Readiness;
use crate::store::{Store, StoreError};

/// The OpenAPI document of this API (`docs/openapi.json`), served at `GET /api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../docs/openapi.json");

/// Most messages one offline-sync call returns.
pub const OFFLINE_PAGE: u32 = 500;

type ApiError = PeerError;

#[derive(Debug)]
struct Rejected(PeerError);

impl warp::reject::Reject for Rejected {}

fn error_reply(e: &ApiError) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&e.body()), e.status)
}

fn ok(body: Value) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&body), StatusCode::OK)
}

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub readiness: Arc<Readiness>,
    pub verifier: Arc<Verifier>,
    /// REST calls per user and second (bursts of twice that).
    pub rate: Arc<PerUser>,
    /// Per-user budgets of the WebSocket sessions (their sizes go to /metrics).
    pub budgets: Arc<crate::fair::UserBudgets>,
    /// Operator settings: metrics token, admin page, edge counters, recent disconnects.
    pub ops: Arc<crate::admin::Ops>,
}

/// The caller: verified identity and the raw token to forward to PostgREST.
pub struct Caller {
    pub identity: Identity,
    pub token: String,
}

/// Extracts `Bearer <token>` from an Authorization header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn with_caller(state: ApiState) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    let request = warp::header::optional::<String>("authorization").and(warp::ext::optional::<Peer>());
    request.and_then(move |header: Option<String>, peer: Option<Peer>| {
        let verifier = state.verifier.clone();
        let rate = state.rate.clone();
        let metrics = state.hub.metrics.clone();
        async move {
            let token = bearer(header.as_deref())
                .ok_or_else(|| {
                    metrics.auth_failed("rest", crate::auth::AuthError::Missing.label());
                    warp::reject::custom(Rejected(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: missing Authorization: Bearer token",
                    )))
                })?
                .to_string();
            let peer = peer.map(|p| p.0);
            let identity = verifier.verify_from(peer, &token).await.map_err(|e| {
                metrics.auth_failed("rest", e.label());
                warp::reject::custom(Rejected(ApiError::from(e)))
            })?;
            if !rate.allow(identity.user_id) {
                return Err(warp::reject::custom(Rejected(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests: slow down",
                ))));
            }
            Ok::<_, Rejection>(Caller { identity, token })
        }
    })
}

#[derive(Deserialize)]
struct OfflineQuery {
    last_check_time: Option<String>,
}

async fn offline_messages(state: ApiState, caller: Caller, query: OfflineQuery) -> Result<WithStatus<Json>, ApiError> {
    let raw = query.last_check_time.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "Missing query parameter: last_check_time (RFC 3339 time)")
    })?;
    let since = chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid last_check_time: expected an RFC 3339 time such as 2024-01-01T00:00:00Z",
            )
        })?
        .with_timezone(&chrono::Utc);
    let store = state.store;
    // The horizon is read before the messages: whatever committed before it is in the page.
    let requested_at = chrono::Utc::now();
    let horizon = match store.sync_horizon(&caller.token).await {
        Ok(h) => protocol::parse_time(&h)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "Unexpected answer from the database"))?,
        // A database without the migration's horizon function: fall back to the request time
        // (a transaction committing later with an earlier created_at could then be missed).
        Err(StoreError::Rejected { status: 404, .. }) => {
            tracing::warn!(
                "chat_sync_horizon() is missing: apply supabase/migrations; using the request time as cursor"
            );
            requested_at
        }
        Err(e) => return Err(e.into()),
    };
    let page = store.offline_messages(&caller.token, &protocol::format_time(since), OFFLINE_PAGE).await?;
    let (next, has_more) = next_cursor(since, horizon, page.returned, page.last_created_at);
    let messages: Vec<ChatMessage> = page
        .messages
        .into_iter()
        .map(|row| {
            let sender = row.sender.clone().unwrap_or_else(|| {
                tracing::warn!(message = %row.id, sender = %row.sender_id, "offline sync: sender's name unavailable, placeholder sent");
                unknown_sender()
            });
            row.into_chat_message(sender)
        })
        .collect();
    let count = messages.len();
    let last_check_time = protocol::format_time(next);
    // `data` is the documented shape; the same fields at the top level serve the guide's own
    // `initializeChat`, which destructures them from there.
    Ok(ok(json!({
        "status": "success",
        "data": {
            "messages": messages,
            "count": count,
            "last_check_time": last_check_time,
            "has_more": has_more,
        },
        "messages": messages,
        "count": count,
        "last_check_time": last_check_time,
        "has_more": has_more,
    })))
}

/// The sender shown when the database gave no name (a row that should not exist: the schema
/// names the sender of every message the reader may read).
fn unknown_sender() -> Sender {
    Sender { full_name: "Unknown sender".into(), role: "unknown".into() }
}

/// The next offline-sync cursor and `has_more`, from the request's `since`, the sync horizon read
/// before the page, how many rows the page held and the `created_at` of its last row.
///
/// A short page: the horizon (everything before it has committed and was in this page or an
/// earlier one). A full page: just after its last row (the database never ends a page inside a
/// run of equal `created_at`), unless that is past the horizon: then the horizon and no more, so
/// that a client never spins; what is left comes on its next sync.
fn next_cursor(
    since: chrono::DateTime<chrono::Utc>,
    horizon: chrono::DateTime<chrono::Utc>,
    returned: usize,
    last: Option<chrono::DateTime<chrono::Utc>>,
) -> (chrono::DateTime<chrono::Utc>, bool) {
    match last {
        Some(last) if returned >= OFFLINE_PAGE as usize => {
            let after = last + chrono::Duration::microseconds(1);
            if after <= horizon && after > since {
                (after, true)
            } else {
                (horizon, false)
            }
        }
        _ => (horizon, false),
    }
}

async fn unread_count(state: ApiState, caller: Caller) -> Result<WithStatus<Json>, ApiError> {
    let count = state.store.unread_count(&caller.token).await?;
    // `data` as documented, and `unread_count` at the top level for the guide's `initializeChat`.
    Ok(ok(json!({"status": "success", "data": {"unread_count": count}, "unread_count": count})))
}

async fn mark_read(state: ApiState, caller: Caller, thread: String) -> Result<WithStatus<Json>, ApiError> {
    let thread_id = Uuid::parse_str(&thread)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Invalid thread_id: must be a UUID"))?;
    match state.store.mark_thread_read(&caller.token, thread_id).await {
        Ok(()) => {}
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::debug!(user = %caller.identity.user_id, thread = %thread_id, "marked read");
    Ok(ok(json!({
        "status": "success",
        "message": "Messages marked as read",
        "thread_id": thread_id,
        "user_id": caller.identity.user_id,
    })))
}

/// Stores the user's switch in the database (every instance and every later session sees it),
/// then applies it on this instance at once.
async fn set_realtime(state: ApiState, caller: Caller, enabled: bool) -> Result<WithStatus<Json>, ApiError> {
    match state.store.set_realtime(&caller.token, enabled).await {
        Ok(_) => {}
        // A database without the delivery migration: the switch holds on this instance only.
        Err(StoreError::Rejected { status: 404, .. }) => {
            tracing::warn!("chat_set_realtime() is missing: apply supabase/migrations; switch kept in memory only");
        }
        Err(e) => return Err(e.into()),
    }
    state.hub.set_realtime(caller.identity.user_id, enabled);
    tracing::info!(user = %caller.identity.user_id, enabled, "real-time delivery switched");
    let message = if enabled { "Subscribed to real-time messages" } else { "Unsubscribed from real-time messages" };
    Ok(ok(json!({"status": "success", "message": message, "user_id": caller.identity.user_id})))
}

fn respond(result: Result<WithStatus<Json>, ApiError>) -> WithStatus<Json> {
    result.unwrap_or_else(|e| error_reply(&e))
}

/// GET or HEAD: health and metrics never change anything.
fn read_only() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// All REST routes.
pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let shared = state.clone();
    let shared_for_admin = state.clone();
    let state_metrics = state.hub.metrics.clone();
    let st = move || {
        let s = shared.clone();
        warp::any().map(move || s.clone())
    };
    let caller = with_caller(state);
    let chat = warp::path("api").and(warp::path("chat"));

    let subscribe = chat
        .and(warp::path("subscribe"))
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller.clone())
        .then(|s, c| async move { respond(set_realtime(s, c, true).await) });
    let unsubscribe = chat
        .and(warp::path("unsubscribe"))
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller.clone())
        .then(|s, c| async move { respond(set_realtime(s, c, false).await) });
    let offline = chat
        .and(warp::path("offline-messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(st())
        .and(caller.clone())
        .and(warp::query::<OfflineQuery>().or(warp::any().map(|| OfflineQuery { last_check_time: None })).unify())
        .then(|s, c, q| async move { respond(offline_messages(s, c, q).await) });
    let unread = chat
        .and(warp::path("unread-count"))
        .and(warp::path::end())
        .and(warp::get())
        .and(st())
        .and(caller.clone())
        .then(|s, c| async move { respond(unread_count(s, c).await) });
    let mark = chat
        .and(warp::path("mark-read"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller)
        .then(|thread, s, c| async move { respond(mark_read(s, c, thread).await) });

    let health = warp::path("healthz").and(warp::path::end()).and(read_only()).map(|| ok(json!({"status": "ok"})));
    let ready_state = st();
    let ready = warp::path("readyz").and(warp::path::end()).and(read_only()).and(ready_state).map(|s: ApiState| {
        if s.readiness.is_ready() {
            ok(json!({"status": "ready", "upstream": "live"}))
        } else {
            // Draining: the instance is shutting down, whatever the upstream's state.
            let (status, upstream) = match (s.readiness.is_draining(), s.readiness.upstream_live()) {
                (true, true) => ("draining", "live"),
                (true, false) => ("draining", "down"),
                (false, _) => ("not_ready", "down"),
            };
            warp::reply::with_status(
                warp::reply::json(&json!({"status": status, "upstream": upstream})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(read_only())
        .and(st())
        .and(warp::header::optional::<String>("authorization"))
        .map(|s: ApiState, auth: Option<String>| metrics_reply(&s, auth.as_deref()));
    let admin = crate::admin::routes(shared_for_admin);
    let timing = state_metrics.clone();
    let openapi = warp::path("api")
        .and(warp::path("openapi.json"))
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::with_header(OPENAPI_JSON, "content-type", "application/json").into_response());

    subscribe
        .or(unsubscribe)
        .unify()
        .or(offline)
        .unify()
        .or(unread)
        .unify()
        .or(mark)
        .unify()
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .map(|r: WithStatus<Json>| r.into_response())
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .or(admin)
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
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/admin",
        "/admin/api/overview",
        "/api/chat/mark-read/:thread_id",
        "/admin/api/users/:user_id/disconnect",
    ];
    let path = path.trim_end_matches('/');
    if let Some(found) = ROUTES[..10].iter().find(|r| **r == path) {
        return found;
    }
    if path.strip_prefix("/api/chat/mark-read/").is_some_and(|rest| !rest.is_empty() && !rest.contains('/')) {
        return ROUTES[10];
    }
    let user = path.strip_prefix("/admin/api/users/").and_then(|rest| rest.strip_suffix("/disconnect"));
    if user.is_some_and(|id| !id.is_empty() && !id.contains('/')) {
        return ROUTES[11];
    }
    "other"
}

/// `/metrics`: the Prometheus text, behind `METRICS_TOKEN` when it is set.
fn metrics_reply(state: &ApiState, authorization: Option<&str>) -> warp::reply::Response {
    if let Some(expected) = &state.ops.metrics_token {
        if !crate::admin::bearer_matches(authorization, expected) {
            let e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: metrics need Authorization: Bearer <METRICS_TOKEN>",
            );
            return error_reply(&e).into_response();
        }
    }
    let hub: &Hub = &state.hub;
    let edge = state.ops.edge.stats();
    let sampled = crate::metrics::Sampled {
        sessions: hub.session_count(),
        users: hub.user_count(),
        upstream_live: state.readiness.upstream_live(),
        upstream_ready: state.readiness.upstream_ready(),
        ready: state.readiness.is_ready(),
        draining: state.readiness.is_draining(),
        edge_open_connections: edge.open_connections,
        edge_pending_handshakes: edge.pending_handshakes,
        slot_lag_bytes: state.ops.slot_lag.as_ref().and_then(|lag| lag.bytes()),
        rest_rate_keys: state.rate.keys(),
        auth_failure_keys: state.verifier.failure_keys(),
        subscribe_check_keys: state.budgets.subscribe_keys(),
        resume_replay_keys: state.budgets.resume_keys(),
    };
    warp::reply::with_header(hub.metrics.render(&sampled), "content-type", crate::metrics::CONTENT_TYPE).into_response()
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(Rejected(e)) = rejection.find::<Rejected>() {
        e.clone()
    } else if let Some(e) = crate::admin::refusal(&rejection) {
        e
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "Not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::new(StatusCode::BAD_REQUEST, "Invalid query string")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "Bad request")
    };
    Ok(error_reply(&e).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        protocol::parse_time(s).expect("time")
    }

    #[test]
    fn route_labels_are_templates_never_ids() {
        assert_eq!(route_label("/api/chat/unread-count"), "/api/chat/unread-count");
        assert_eq!(
            route_label("/api/chat/mark-read/b0000000-0000-4000-8000-000000000001"),
            "/api/chat/mark-read/:thread_id"
        );
        assert_eq!(route_label("/admin/api/users/abc/disconnect"), "/admin/api/users/:user_id/disconnect");
        assert_eq!(route_label("/admin/"), "/admin");
        assert_eq!(route_label("/api/chat/mark-read/a/b"), "other");
        assert_eq!(route_label("/nothing/here"), "other");
    }

    #[test]
    fn a_short_page_resumes_from_the_horizon() {
        let (next, more) =
            next_cursor(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), 3, Some(t("2026-01-01T12:00:00Z")));
        assert_eq!((next, more), (t("2026-01-02T00:00:00Z"), false));
        let (next, more) = next_cursor(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), 0, None);
        assert_eq!((next, more), (t("2026-01-02T00:00:00Z"), false));
    }

    #[test]
    fn a_full_page_resumes_just_after_its_last_row() {
        let last = t("2026-01-01T12:00:00Z");
        let (next, more) = next_cursor(t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), 1200, Some(last));
        assert_eq!((next, more), (last + Duration::microseconds(1), true));
    }

    #[test]
    fn a_full_page_past_the_horizon_stops_at_the_horizon() {
        let horizon = t("2026-01-01T12:00:00Z");
        let (next, more) = next_cursor(t("2026-01-01T00:00:00Z"), horizon, 500, Some(horizon));
        assert_eq!((next, more), (horizon, false));
    }
}
