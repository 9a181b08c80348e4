//! Resume: what a reconnecting client (`?since=<cursor>`) missed, replayed on its new socket
//! before live delivery, then `sync_complete` with the cursor to resume from next time.
//!
//! Owns the choice between the ring of recently routed messages (the session registers under the
//! ring's lock, so every message is in the snapshot or queued live, never both, never neither)
//! and the database (the session registers first, then pages `chat_offline_messages` as the user,
//! so RLS decides; what also arrives live is skipped by id). Replays are written straight to the
//! socket page by page, so any length fits without touching the session's bounded queue. Never
//! replays a message of a thread the user is not in: a memory replay is filtered by the user's
//! current membership of each thread, read from the directory the live path uses (a change feed
//! that is not live, or a member list that cannot be read in time, sends the resume to the
//! database instead, where RLS decides).
//!
//! `sync_complete` means caught up: everything committed before the session registered was sent
//! before it, or is not the user's. A database replay reads after the registration, so it has
//! seen all of it. A memory replay holds `sync_complete` back ([`PendingSync`]) until the router
//! proves that whatever it had not routed yet when the ring was read has been fanned out
//! (`router::catchup`); meanwhile live frames flow, and `sync_complete` is queued behind them. If
//! that proof does not come within `RESUME_CATCHUP_TIMEOUT_SECS` (or the upstream is down), it is
//! sent anyway with a cursor that is still safe, counted and logged.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::history::History;
use crate::hub::{Hub, Outgoing, RegisterError, SessionHandle};
use crate::model::{format_time, parse_time, Sender};
use crate::protocol::ServerMessage;
use crate::router::catchup::CatchUp;

/// Messages per database page.
pub const PAGE: u32 = 500;

/// How a session catches up before going live.
pub enum Replay {
    /// From the ring: these frames (each with its thread), in routing order, once checked
    /// against the user's current membership, then `sync_complete` once caught up (with a cursor
    /// at or above `cursor`). `since` is the client's, for a database replay when the membership
    /// cannot be checked.
    Memory { frames: Vec<(Uuid, Outgoing)>, cursor: DateTime<Utc>, since: DateTime<Utc> },
    /// From the database, starting at `since`.
    Database { since: DateTime<Utc> },
}

/// A memory replay's `sync_complete`, held back until the session is proven caught up.
pub struct PendingSync {
    /// The session's catch-up ticket, taken once it was registered and its replay written.
    pub ticket: u64,
    /// The cursor when the ring was read (at or above the resume's `since`).
    pub cursor: DateTime<Utc>,
    /// Messages replayed.
    pub count: usize,
    pub started: Instant,
}

/// How a held-back `sync_complete` was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Everything committed before the session registered was queued before it.
    CaughtUp,
    /// No proof within the timeout.
    TimedOut,
    /// The upstream is down: nothing can be proven; the upstream-error frame follows.
    UpstreamDown,
}

/// Waits for the router's proof of `ticket`, at most the configured timeout.
pub async fn caught_up(catchup: Arc<CatchUp>, ticket: u64) -> Release {
    match tokio::time::timeout(catchup.timeout(), catchup.proven(ticket)).await {
        Ok(()) => Release::CaughtUp,
        Err(_) => Release::TimedOut,
    }
}

/// Counts and logs how a memory replay's `sync_complete` was released.
pub fn record_release(metrics: &crate::metrics::Metrics, session: u64, held: &PendingSync, release: Release) {
    metrics.resumed(true, held.count as u64, held.started.elapsed());
    let (count, waited_ms) = (held.count, held.started.elapsed().as_millis() as u64);
    match release {
        Release::CaughtUp => tracing::info!(session, count, waited_ms, from_memory = true, "resume replayed"),
        Release::TimedOut => {
            metrics.resume_catchup_timed_out();
            tracing::warn!(
                session,
                count,
                waited_ms,
                "resume: no proof of being caught up within RESUME_CATCHUP_TIMEOUT_SECS; sync_complete sent with the safe cursor"
            );
        }
        Release::UpstreamDown => tracing::warn!(
            session,
            count,
            "resume: upstream down; sync_complete sent with the safe cursor, then the upstream error"
        ),
    }
}

/// The `sync_complete` of a memory replay, to queue behind the live frames already queued. Its
/// cursor is the live cursor now: every message below it was fanned out, so it is in the replay or
/// queued to this session before this frame. Never before the resume's `since`. Its count is every
/// `new_message` of the catch-up: the replay's and the `live` ones sent or queued before it.
///
/// The cursor is read here, before the frame is built under the session queue's lock (see
/// [`sync_complete`]): the router holds the ring's lock while it pushes into queues, so taking the
/// ring's lock under a queue's lock would invert that order and deadlock. A cursor read earlier
/// is still safe: what was fanned out by then is queued ahead of this frame.
pub fn sync_cursor(history: &History, pending: &PendingSync) -> String {
    format_time(history.lock().cursor.max(pending.cursor))
}

/// The `sync_complete` frame itself, with the cursor of [`sync_cursor`]. Takes no lock.
pub fn sync_complete(cursor: &str, pending: &PendingSync, live: usize) -> Outgoing {
    Outgoing::notice(ServerMessage::SyncComplete { last_check_time: cursor, count: pending.count + live }.to_json())
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
    user_id: Uuid,
    since: Option<DateTime<Utc>>,
) -> Result<(Arc<SessionHandle>, Option<Replay>), RegisterError> {
    let Some(since) = since else { return Ok((hub.register(user_id)?, None)) };
    let ring = history.lock();
    if ring.covers(since) {
        let handle = hub.register(user_id)?;
        let frames = ring.replay_for(&user_id, since);
        let cursor = ring.cursor.max(since);
        return Ok((handle, Some(Replay::Memory { frames, cursor, since })));
    }
    drop(ring);
    Ok((hub.register(user_id)?, Some(Replay::Database { since })))
}

/// The frame of a replayed database row, stamped with the resume's own `since` (safe: nothing
/// before it is claimed).
pub fn replay_frame(row: crate::model::MessageRow, sender: Sender, since: &str) -> Outgoing {
    let (id, created_at) = (row.id, row.created());
    let message = row.into_chat_message(sender);
    Outgoing {
        text: ServerMessage::NewMessage { data: &message, cursor: Some(since) }.to_json().into(),
        message: Some(id),
        created_at,
        received: None,
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
