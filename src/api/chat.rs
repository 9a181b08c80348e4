//! The chat endpoints of the REST API: `GET /api/chat/offline-messages` (one page of what the
//! caller missed, with the next cursor), `GET /api/chat/unread-count`,
//! `POST /api/chat/mark-read/:thread_id` and `POST /api/chat/subscribe|unsubscribe` (the per-user
//! realtime switch). Every data call goes to the store with the caller's own token, so RLS
//! decides; never the service role, never a logged token.

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection};

use super::{ok, respond, with_caller, with_state, ApiState, Caller};
use crate::error::PeerError;
use crate::model::{self, ChatMessage, MessageRow, Sender};
use crate::store::StoreError;

/// Most messages one offline-sync call returns.
pub const OFFLINE_PAGE: u32 = 500;

/// `/api/chat/subscribe`, `unsubscribe`, `offline-messages`, `unread-count` and
/// `mark-read/:thread_id`, each for a verified caller only.
pub(super) fn routes(state: ApiState) -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    let caller = with_caller(state.clone());
    let st = move || with_state(state.clone());
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
        .and(warp::query::<UnreadQuery>().or(warp::any().map(|| UnreadQuery { by_thread: None })).unify())
        .then(|s, c, q| async move { respond(unread_count(s, c, q).await) });
    let mark = chat
        .and(warp::path("mark-read"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller)
        .then(|thread, s, c| async move { respond(mark_read(s, c, thread).await) });
    subscribe.or(unsubscribe).unify().or(offline).unify().or(unread).unify().or(mark).unify()
}

/// The query of `GET /api/chat/offline-messages`.
#[derive(Deserialize)]
struct OfflineQuery {
    last_check_time: Option<String>,
}

async fn offline_messages(state: ApiState, caller: Caller, query: OfflineQuery) -> Result<WithStatus<Json>, PeerError> {
    let raw = query.last_check_time.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        PeerError::new(StatusCode::BAD_REQUEST, "Missing query parameter: last_check_time (RFC 3339 time)")
    })?;
    let since = chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            PeerError::new(
                StatusCode::BAD_REQUEST,
                "Invalid last_check_time: expected an RFC 3339 time such as 2024-01-01T00:00:00Z",
            )
        })?
        .with_timezone(&chrono::Utc);
    let store = state.store;
    // The horizon is read before the messages: whatever committed before it is in the page.
    let requested_at = chrono::Utc::now();
    let horizon = match store.sync_horizon(&caller.token).await {
        Ok(horizon) => horizon,
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
    let page = store.offline_messages(&caller.token, since, OFFLINE_PAGE).await?;
    let (next, has_more) = next_cursor(since, horizon, page.returned, page.last_created_at);
    let messages = chat_messages(page.messages, "offline sync");
    let count = messages.len();
    let last_check_time = model::format_time(next);
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

/// Rows as the public message shape, for a REST answer (`what` names it in the log). A row without
/// its sender's name (one that should not exist: the schema names the sender of every message the
/// reader may read) gets a placeholder sender, logged.
pub(super) fn chat_messages(rows: Vec<MessageRow>, what: &str) -> Vec<ChatMessage> {
    rows.into_iter()
        .map(|row| {
            let sender = row.sender.clone().unwrap_or_else(|| {
                tracing::warn!(message = %row.id, sender = %row.sender_id, "{what}: sender's name unavailable, placeholder sent");
                Sender { full_name: "Unknown sender".into(), role: "unknown".into() }
            });
            row.into_chat_message(sender)
        })
        .collect()
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

/// The query of `GET /api/chat/unread-count`.
#[derive(Deserialize)]
struct UnreadQuery {
    by_thread: Option<String>,
}

async fn unread_count(state: ApiState, caller: Caller, query: UnreadQuery) -> Result<WithStatus<Json>, PeerError> {
    let by_thread = match query.by_thread.as_deref().map(str::trim) {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => return Err(PeerError::bad_request("Invalid by_thread: expected true or false")),
    };
    if by_thread {
        // The total is the sum of the threads' counts: one read, one consistent answer.
        let threads = state.store.unread_by_thread(&caller.token).await?;
        let count: i64 = threads.iter().map(|t| t.unread_count).sum();
        return Ok(ok(json!({
            "status": "success",
            "data": {"unread_count": count, "threads": threads},
            "unread_count": count,
            "threads": threads,
        })));
    }
    let count = state.store.unread_count(&caller.token).await?;
    // `data` as documented, and `unread_count` at the top level for the guide's `initializeChat`.
    Ok(ok(json!({"status": "success", "data": {"unread_count": count}, "unread_count": count})))
}

async fn mark_read(state: ApiState, caller: Caller, thread: String) -> Result<WithStatus<Json>, PeerError> {
    let thread_id = Uuid::parse_str(&thread)
        .map_err(|_| PeerError::new(StatusCode::BAD_REQUEST, "Invalid thread_id: must be a UUID"))?;
    match state.store.mark_thread_read(&caller.token, thread_id).await {
        Ok(()) => {}
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(PeerError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
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
async fn set_realtime(state: ApiState, caller: Caller, enabled: bool) -> Result<WithStatus<Json>, PeerError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        model::parse_time(s).expect("time")
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
