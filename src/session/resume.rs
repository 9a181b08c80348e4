//! Resume: what a reconnecting client (`?since=<cursor>`) missed, replayed on its new socket
//! before live delivery, then `sync_complete` with the cursor to resume from next time.
//!
//! Owns the choice between the ring of recently routed messages (the session registers under the
//! ring's lock, so every message is in the snapshot or queued live, never both, never neither)
//! and the database (the session registers first, then pages `chat_offline_messages` as the user,
//! so RLS decides; what also arrives live is skipped by id). Replays are written straight to the
//! socket page by page, so any length fits without touching the session's bounded queue. Never
//! replays a message of a thread the user is not in.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::outbox::{Outgoing, SessionHandle};
use crate::history::History;
use crate::hub::{Hub, RegisterError};
use crate::model::{format_time, parse_time, Sender};
use crate::protocol::ServerMessage;

/// Messages per database page.
pub const PAGE: u32 = 500;

/// How a session catches up before going live.
pub enum Replay {
    /// From the ring: these frames, in routing order, then `sync_complete` with `cursor`.
    Memory { frames: Vec<Outgoing>, cursor: DateTime<Utc> },
    /// From the database, starting at `since`.
    Database { since: DateTime<Utc> },
}

/// Parses the `since` of a WebSocket URL (an RFC 3339 time, as any cursor the gateway hands out).
pub fn parse_since(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| parse_time(raw).filter(|_| raw.len() >= 19))
}

/// Registers a session of `user_id`, with its replay when it resumes from `since`.
pub fn register(
    hub: &Hub,
    history: &History,
    user_id: uuid::Uuid,
    since: Option<DateTime<Utc>>,
) -> Result<(Arc<SessionHandle>, Option<Replay>), RegisterError> {
    let Some(since) = since else { return Ok((hub.register(user_id)?, None)) };
    let ring = history.lock();
    if ring.covers(since) {
        let handle = hub.register(user_id)?;
        let frames = ring.replay_for(&user_id, since);
        let cursor = ring.cursor.max(since);
        return Ok((handle, Some(Replay::Memory { frames, cursor })));
    }
    drop(ring);
    Ok((hub.register(user_id)?, Some(Replay::Database { since })))
}

/// The frame of a replayed database row, stamped with the resume's own `since` (safe: nothing
/// before it is claimed).
pub fn replay_frame(row: crate::model::MessageRow, sender: Sender, since: &str) -> Outgoing {
    let id = row.id;
    let message = row.into_chat_message(sender);
    Outgoing {
        text: ServerMessage::NewMessage { data: &message, cursor: Some(since) }.to_json().into(),
        message: Some(id),
    }
}

/// The next page's `since` after a full page ending at `last` (the page holds the whole run of
/// rows sharing `last`'s `created_at`).
pub fn after(last: DateTime<Utc>) -> DateTime<Utc> {
    last + Duration::microseconds(1)
}

/// `sync_complete`'s cursor: never before `since`.
pub fn completed_cursor(since: DateTime<Utc>, horizon: DateTime<Utc>) -> String {
    format_time(since.max(horizon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_must_be_a_full_time() {
        assert!(parse_since("2026-01-01T00:00:00Z").is_some());
        assert!(parse_since("2026-01-01T00:00:00.123456+02:00").is_some());
        assert!(parse_since("2026-01-01").is_none());
        assert!(parse_since("yesterday").is_none());
        assert!(parse_since("").is_none());
    }
}
