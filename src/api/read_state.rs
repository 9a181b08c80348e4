//! Who has read a thread: `GET /api/chat/threads/:thread_id/read-state?messages=<n>`, read as the
//! user through `chat_read_state`, whose rules (in SQL, the same on both backends) decide whose
//! read state the caller may see by name; everyone else is only counted. And whether the caller
//! shares their own: `POST /api/chat/threads/:thread_id/read-state` with `{"share": bool}`
//! (`chat_share_read_state`, as the user).
//!
//! Owns the query's and the body's validation and the answers' shapes. It must never read with service rights,
//! and never answer anything but a 403 for a thread the caller may not read.

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Json, Response, WithStatus};
use warp::{Filter, Rejection};

use super::devices::{answer, bounded_body, reply, Body};
use super::{ok, respond, with_caller, with_state, ApiState, Caller};
use crate::error::PeerError;
use crate::model::format_time;
use crate::store::{ReadState, StoreError};

/// Messages counted unless `messages` says otherwise.
pub const DEFAULT_MESSAGES: u32 = 20;
/// Most messages counted in one answer.
pub const MAX_MESSAGES: u32 = 100;

/// `/api/chat/threads/:thread_id/read-state`: the thread id as sent.
fn path() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("chat"))
        .and(warp::path("threads"))
        .and(warp::path::param::<String>())
        .and(warp::path("read-state"))
        .and(warp::path::end())
}

/// `GET /api/chat/threads/:thread_id/read-state`, for a verified caller only.
pub(super) fn routes(state: ApiState) -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    let caller = with_caller(state.clone());
    path()
        .and(warp::get())
        .and(with_state(state))
        .and(caller)
        .and(warp::query::<ReadStateQuery>().or(warp::any().map(ReadStateQuery::default)).unify())
        .then(|thread, s, c, q| async move { respond(read_state(s, c, thread, q).await) })
}

/// `POST /api/chat/threads/:thread_id/read-state`, for a verified caller only.
pub(super) fn share_route(state: ApiState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let caller = with_caller(state.clone());
    path()
        .and(warp::post())
        .and(with_state(state))
        .and(caller)
        .and(bounded_body())
        .then(|thread, s, c, b: Body| async move { answer(async { share(s, c, thread, &b?).await }.await) })
}

/// The body of `POST .../read-state`.
#[derive(Deserialize)]
struct Share {
    share: Option<bool>,
}

fn parse_share(body: &[u8]) -> Result<bool, PeerError> {
    let missing = "Missing field: share (true to share your read state of this thread, false to stop)";
    let s: Share = serde_json::from_slice(body).map_err(|_| PeerError::bad_request(missing))?;
    s.share.ok_or_else(|| PeerError::bad_request(missing))
}

async fn share(state: ApiState, caller: Caller, thread: String, body: &[u8]) -> Result<Response, PeerError> {
    let thread_id =
        Uuid::parse_str(&thread).map_err(|_| PeerError::bad_request("Invalid thread_id: must be a UUID"))?;
    let share = parse_share(body)?;
    let stored = match state.store.share_read_state(&caller.token, thread_id, share).await {
        Ok(stored) => stored,
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(PeerError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
        }
        Err(e) => return Err(e.into()),
    };
    let data = json!({"thread_id": thread_id, "share_read_state": stored});
    Ok(reply(
        StatusCode::OK,
        json!({"status": "success", "data": data, "thread_id": thread_id, "share_read_state": stored}),
    ))
}

#[derive(Deserialize, Default)]
struct ReadStateQuery {
    messages: Option<String>,
}

/// `messages`: absent is [`DEFAULT_MESSAGES`]; otherwise 1 to [`MAX_MESSAGES`].
fn parse_messages(messages: Option<&str>) -> Result<u32, PeerError> {
    let Some(text) = messages.filter(|m| !m.trim().is_empty()) else {
        return Ok(DEFAULT_MESSAGES);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_MESSAGES).contains(&n) => Ok(n),
        _ => Err(PeerError::bad_request(format!("Invalid messages: expected a number from 1 to {MAX_MESSAGES}"))),
    }
}

async fn read_state(
    state: ApiState,
    caller: Caller,
    thread: String,
    query: ReadStateQuery,
) -> Result<WithStatus<Json>, PeerError> {
    let thread_id =
        Uuid::parse_str(&thread).map_err(|_| PeerError::bad_request("Invalid thread_id: must be a UUID"))?;
    let messages = parse_messages(query.messages.as_deref())?;
    let answer = match state.store.read_state(&caller.token, thread_id, messages).await {
        Ok(answer) => answer,
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(PeerError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
        }
        Err(e) => return Err(e.into()),
    };
    let (participants, messages) = body(&answer);
    Ok(ok(json!({
        "status": "success",
        "data": {"participants": participants, "messages": messages},
        "participants": participants,
        "messages": messages,
    })))
}

/// The answer's `participants` and `messages`, times in the protocol's format.
fn body(answer: &ReadState) -> (Value, Value) {
    let participants = answer
        .participants
        .iter()
        .map(|p| {
            json!({
                "user_id": p.user_id,
                "full_name": p.full_name,
                "role": p.role,
                "last_read_at": format_time(p.last_read_at),
            })
        })
        .collect();
    let messages =
        answer.messages.iter().map(|m| json!({"message_id": m.message_id, "seen_by": m.seen_by, "of": m.of})).collect();
    (Value::Array(participants), Value::Array(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{MessageSeen, ReaderState};

    #[test]
    fn messages_is_one_to_a_hundred_and_twenty_by_default() {
        assert_eq!(parse_messages(None).expect("default"), DEFAULT_MESSAGES);
        assert_eq!(parse_messages(Some(" ")).expect("empty"), DEFAULT_MESSAGES);
        assert_eq!(parse_messages(Some("1")).expect("min"), 1);
        assert_eq!(parse_messages(Some("100")).expect("max"), 100);
        for bad in ["0", "101", "-3", "all", "2.5"] {
            assert!(parse_messages(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn sharing_needs_a_boolean() {
        assert!(parse_share(br#"{"share": false}"#).is_ok_and(|s| !s));
        assert!(parse_share(br#"{"share": true}"#).is_ok_and(|s| s));
        for bad in [&br#"{}"#[..], br#"{"share": null}"#, br#"{"share": "no"}"#, b"share", b""] {
            assert!(parse_share(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_body_renders_times_in_the_protocol_format() {
        let at = crate::model::parse_time("2026-03-01T08:15:30.5+00:00").expect("time");
        let answer = ReadState {
            participants: vec![ReaderState {
                user_id: Uuid::from_u128(1),
                full_name: "Alice Martin".into(),
                role: "teacher".into(),
                last_read_at: at,
            }],
            messages: vec![MessageSeen { message_id: Uuid::from_u128(2), seen_by: 3, of: 4 }],
        };
        let (participants, messages) = body(&answer);
        assert_eq!(participants[0]["last_read_at"], "2026-03-01T08:15:30.500000Z");
        assert_eq!(participants[0]["role"], "teacher");
        assert_eq!(messages, json!([{"message_id": Uuid::from_u128(2), "seen_by": 3, "of": 4}]));
    }
}
