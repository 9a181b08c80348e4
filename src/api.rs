//! REST API: the guide's `/api/chat/*` endpoints, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Owns request parsing, the bearer-token check, and the one mapping from internal errors
//! ([`AuthError`], [`StoreError`]) to the public error shape `{"status":"error","message":...}`
//! with the right HTTP status. Data calls go to PostgREST with the caller's own token so RLS
//! decides; this module never uses the service key and never logs a token.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection, Reply};

use crate::auth::{AuthError, Identity, Verifier};
use crate::edge::Peer;
use crate::hub::Hub;
use crate::limit::PerUser;
use crate::protocol::{self, ChatMessage, Sender};
use crate::store::StoreError;

/// Most messages one offline-sync call returns.
pub const OFFLINE_PAGE: u32 = 500;

/// A failed request, as clients see it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl warp::reject::Reject for ApiError {}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED), e.public_message())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "The database did not answer in time"),
            StoreError::Unavailable(_) => ApiError::new(StatusCode::BAD_GATEWAY, "The database is unavailable"),
            StoreError::Decode(_) => ApiError::new(StatusCode::BAD_GATEWAY, "Unexpected answer from the database"),
            StoreError::Rejected { status, code, message } => {
                let status = match status {
                    401 => StatusCode::UNAUTHORIZED,
                    403 => StatusCode::FORBIDDEN,
                    400 | 406 | 409 | 422 => StatusCode::BAD_REQUEST,
                    504 => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                let message = if status == StatusCode::BAD_GATEWAY {
                    tracing::error!(%code, %message, "PostgREST error");
                    "The database rejected the request".to_string()
                } else {
                    message
                };
                ApiError::new(status, message)
            }
        }
    }
}

fn error_reply(e: &ApiError) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&json!({"status": "error", "message": e.message})), e.status)
}

fn ok(body: Value) -> WithStatus<Json> {
    warp::reply::with_status(warp::reply::json(&body), StatusCode::OK)
}

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    /// REST calls per user and second (bursts of twice that).
    pub rate: Arc<PerUser>,
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
        async move {
            let token = bearer(header.as_deref())
                .ok_or_else(|| {
                    warp::reject::custom(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: missing Authorization: Bearer token",
                    ))
                })?
                .to_string();
            let peer = peer.map(|p| p.0.ip());
            let identity =
                verifier.verify_from(peer, &token).await.map_err(|e| warp::reject::custom(ApiError::from(e)))?;
            if !rate.allow(identity.user_id) {
                return Err(warp::reject::custom(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests: slow down",
                )));
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
    let store = state.hub.store();
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
    let rows = store.offline_messages(&caller.token, &protocol::format_time(since), OFFLINE_PAGE).await?;
    let full_page = rows.len() as u32 >= OFFLINE_PAGE;
    let newest = rows.last().and_then(|r| protocol::parse_time(&r.created_at));
    let messages: Vec<ChatMessage> = rows
        .into_iter()
        .map(|row| {
            let sender = row.sender.clone().unwrap_or(Sender { full_name: "Unknown".into(), role: "unknown".into() });
            row.into_chat_message(sender)
        })
        .collect();
    // Next cursor: the horizon (never past a transaction still open), or, when the page was cut
    // short, just before the newest returned message so that the rest comes next time.
    let next = match (full_page, newest) {
        (true, Some(newest)) => (newest - chrono::Duration::microseconds(1)).min(horizon),
        _ => horizon,
    };
    let next = next.max(since.min(horizon));
    Ok(ok(json!({
        "status": "success",
        "data": {
            "messages": messages,
            "count": messages.len(),
            "last_check_time": protocol::format_time(next),
            "has_more": full_page,
        }
    })))
}

async fn unread_count(state: ApiState, caller: Caller) -> Result<WithStatus<Json>, ApiError> {
    let count = state.hub.store().unread_count(&caller.token).await?;
    Ok(ok(json!({"status": "success", "data": {"unread_count": count}})))
}

async fn mark_read(state: ApiState, caller: Caller, thread: String) -> Result<WithStatus<Json>, ApiError> {
    let thread_id = Uuid::parse_str(&thread)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Invalid thread_id: must be a UUID"))?;
    match state.hub.store().mark_thread_read(&caller.token, thread_id).await {
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

fn set_realtime(state: &ApiState, caller: &Caller, enabled: bool) -> WithStatus<Json> {
    state.hub.set_realtime(caller.identity.user_id, enabled);
    tracing::info!(user = %caller.identity.user_id, enabled, "real-time delivery switched");
    let message = if enabled { "Subscribed to real-time messages" } else { "Unsubscribed from real-time messages" };
    ok(json!({"status": "success", "message": message, "user_id": caller.identity.user_id}))
}

fn respond(result: Result<WithStatus<Json>, ApiError>) -> WithStatus<Json> {
    result.unwrap_or_else(|e| error_reply(&e))
}

/// All REST routes.
pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let shared = state.clone();
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
        .map(|s: ApiState, c: Caller| set_realtime(&s, &c, true));
    let unsubscribe = chat
        .and(warp::path("unsubscribe"))
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller.clone())
        .map(|s: ApiState, c: Caller| set_realtime(&s, &c, false));
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

    let health = warp::path("healthz").and(warp::path::end()).map(|| ok(json!({"status": "ok"})));
    let ready_state = st();
    let ready = warp::path("readyz").and(warp::path::end()).and(ready_state).map(|s: ApiState| {
        if s.hub.is_ready() {
            ok(json!({"status": "ready", "upstream": "live"}))
        } else {
            warp::reply::with_status(
                warp::reply::json(&json!({"status": "not_ready", "upstream": "down"})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let metrics = warp::path("metrics").and(warp::path::end()).and(st()).map(|s: ApiState| metrics_text(&s.hub));

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
        .or(metrics.map(|r: String| r.into_response()))
        .unify()
        .recover(recover)
}

fn metrics_text(hub: &Hub) -> String {
    let s = &hub.stats;
    let rows = [
        ("gateway_sessions", "gauge", hub.session_count() as u64),
        ("gateway_upstream_ready", "gauge", u64::from(hub.is_ready())),
        ("gateway_deliveries_total", "counter", s.deliveries.load(Ordering::Relaxed)),
        ("gateway_messages_routed_total", "counter", s.messages_routed.load(Ordering::Relaxed)),
        ("gateway_duplicates_skipped_total", "counter", s.duplicates_skipped.load(Ordering::Relaxed)),
        ("gateway_slow_client_drops_total", "counter", s.slow_drops.load(Ordering::Relaxed)),
        ("gateway_catchup_messages_total", "counter", s.catchup_messages.load(Ordering::Relaxed)),
        ("gateway_upstream_losses_total", "counter", s.upstream_losses.load(Ordering::Relaxed)),
        ("gateway_unroutable_messages_total", "counter", s.unroutable.load(Ordering::Relaxed)),
    ];
    let mut out = String::new();
    for (name, kind, value) in rows {
        out.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(e) = rejection.find::<ApiError>() {
        ApiError::new(e.status, e.message.clone())
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
