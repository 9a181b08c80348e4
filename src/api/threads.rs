//! A thread's history: `GET /api/chat/threads/:thread_id/messages?before=<cursor>&limit=<n>`,
//! newest first, one page at a time, read as the user so that row-level security decides.
//!
//! Owns the page cursor: opaque to clients, it is the keyset position (created_at, id) of the
//! page's oldest message, so a page boundary inside a run of equal `created_at` (one transaction's
//! messages) neither repeats nor skips a message. It must never read with service rights, and
//! never answer an empty page for a thread the caller may not read (that is a 403).

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection};

use super::{ok, respond, with_caller, with_state, ApiState, Caller};
use crate::error::PeerError;
use crate::model;
use crate::store::StoreError;

/// Messages per page unless `limit` says otherwise.
pub const DEFAULT_PAGE: u32 = 50;
/// Most messages per page.
pub const MAX_PAGE: u32 = 100;

/// `GET /api/chat/threads/:thread_id/messages`, for a verified caller only.
pub(super) fn routes(state: ApiState) -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    let caller = with_caller(state.clone());
    warp::path("api")
        .and(warp::path("chat"))
        .and(warp::path("threads"))
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(caller)
        .and(warp::query::<PageQuery>().or(warp::any().map(PageQuery::default)).unify())
        .then(|thread, s, c, q| async move { respond(history(s, c, thread, q).await) })
}

/// The query of a history page.
#[derive(Deserialize, Default)]
struct PageQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// A page cursor: `base64url("<created_at RFC 3339 with microseconds>|<id>")`.
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    let raw = format!("{}|{id}", model::format_time(created_at));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The keyset position of a cursor made by [`encode_cursor`]; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (at, id) = raw.split_once('|')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, Uuid::parse_str(id).ok()?))
}

/// `limit`: absent is [`DEFAULT_PAGE`]; otherwise 1 to [`MAX_PAGE`].
fn parse_limit(limit: Option<&str>) -> Result<u32, PeerError> {
    let Some(text) = limit.filter(|l| !l.trim().is_empty()) else {
        return Ok(DEFAULT_PAGE);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(PeerError::bad_request(format!("Invalid limit: expected a number from 1 to {MAX_PAGE}"))),
    }
}

async fn history(
    state: ApiState,
    caller: Caller,
    thread: String,
    query: PageQuery,
) -> Result<WithStatus<Json>, PeerError> {
    let thread_id =
        Uuid::parse_str(&thread).map_err(|_| PeerError::bad_request("Invalid thread_id: must be a UUID"))?;
    let limit = parse_limit(query.limit.as_deref())?;
    let before =
        match query.before.as_deref().filter(|b| !b.trim().is_empty()) {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
                PeerError::bad_request("Invalid before: expected the `next` cursor of a previous page")
            })?),
        };
    // One row more than the page: whether an older page exists, without another call.
    let rows = match state.store.thread_messages(&caller.token, thread_id, before, limit + 1).await {
        Ok(rows) => rows,
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(PeerError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
        }
        Err(e) => return Err(e.into()),
    };
    let more = rows.returned > limit as usize;
    let mut page = rows.messages;
    page.truncate(limit as usize);
    let next = if more { page.last().and_then(|m| Some(encode_cursor(m.created()?, m.id))) } else { None };
    let messages = super::chat::chat_messages(page, "thread history");
    Ok(ok(json!({
        "status": "success",
        "data": {"messages": messages, "next": next},
        "messages": messages,
        "next": next,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_to_the_microsecond_and_junk_is_refused() {
        let at = model::parse_time("2026-03-01T08:15:30.123456Z").expect("time");
        let id = Uuid::from_u128(42);
        let cursor = encode_cursor(at, id);
        assert!(cursor.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "URL-safe: {cursor}");
        assert_eq!(decode_cursor(&cursor), Some((at, id)));
        for junk in ["", "not a cursor", "MjAyNg", &encode_cursor(at, id)[..10]] {
            assert_eq!(decode_cursor(junk), None, "{junk:?}");
        }
        let no_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("2026-03-01T08:15:30Z|x");
        assert_eq!(decode_cursor(&no_id), None);
    }

    #[test]
    fn a_limit_is_one_to_a_hundred_and_fifty_by_default() {
        assert_eq!(parse_limit(None).expect("default"), DEFAULT_PAGE);
        assert_eq!(parse_limit(Some("")).expect("empty"), DEFAULT_PAGE);
        assert_eq!(parse_limit(Some("100")).expect("max"), 100);
        assert_eq!(parse_limit(Some("1")).expect("min"), 1);
        for bad in ["0", "101", "-1", "ten", "1.5"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
