//! The change feed: what the router reads, whichever backend produces it. This module is the
//! contract both backends share: the typed events ([`UpstreamEvent`]), why a feed was lost
//! ([`Lost`]), the checkpoint semantics ([`UpstreamEvent::Checkpoint`] and the [`Watermark`] the
//! router raises), what a row change means ([`decode_change`]), and the one reconnect loop
//! ([`supervise`]).
//!
//! Two backends, each turning its own wire format into these events at the edge, so the router
//! never sees JSON and never knows which one it reads:
//! - [`realtime`]: our Phoenix channel client to Supabase Realtime (`postgres_changes`);
//! - [`postgres`]: logical decoding of the publication through a durable replication slot.
//!
//! Beside them, [`publication`]: what the feed needs of the database's side (the start-up check
//! of the sync horizon, the pruning of the membership events the feed reads).
//! This module never connects anywhere and never decides who receives what; it uses none of its
//! backends (they use it).

pub mod postgres;
pub mod publication;
pub mod realtime;
pub(crate) mod supervise;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::model::MessageRow;

/// When a change reached this gateway (its upstream frame was read): where the gateway's own
/// delivery latency starts. Its `Debug` leaves the instant out, so that two decodings of the same
/// change print alike.
#[derive(Clone, Copy)]
pub struct Received(pub std::time::Instant);

impl Received {
    pub fn now() -> Received {
        Received(std::time::Instant::now())
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Received")
    }
}

/// An event from the feed, in commit order.
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    /// The feed is live (for Realtime: joined and confirmed "Subscribed to PostgreSQL").
    /// `generation` counts successful subscriptions since start.
    Live { generation: u64 },
    /// The feed is lost; sent once per loss, not once per retry.
    Down { reason: Lost },
    /// A new message; `received`: when its change reached this gateway.
    Message { row: MessageRow, committed: Option<DateTime<Utc>>, received: Received },
    /// A user joined (`present`) or left a thread.
    Membership { thread_id: Uuid, user_id: Uuid, present: bool, committed: Option<DateTime<Utc>> },
    /// A participant's read state changed (`thread_participants` UPDATE).
    ReadState { thread_id: Uuid, user_id: Uuid, last_read_at: String, committed: Option<DateTime<Utc>> },
    /// A user's realtime switch changed in the database.
    RealtimeSwitch { user_id: Uuid, enabled: bool, committed: Option<DateTime<Utc>> },
    /// A change that could not be read in full: the database must fill the gap.
    Unreadable { table: String, reason: String, committed: Option<DateTime<Utc>> },
    /// Only from a feed with durable positions (the PostgreSQL slot): every change before this
    /// position was sent. The router raises the [`Watermark`] to it once all of them are fanned
    /// out, and the feed confirms it to the database then.
    Checkpoint { position: u64 },
}

impl UpstreamEvent {
    /// The change's commit time, for changes.
    pub fn committed(&self) -> Option<DateTime<Utc>> {
        match self {
            UpstreamEvent::Live { .. } | UpstreamEvent::Down { .. } | UpstreamEvent::Checkpoint { .. } => None,
            UpstreamEvent::Message { committed, .. }
            | UpstreamEvent::Membership { committed, .. }
            | UpstreamEvent::ReadState { committed, .. }
            | UpstreamEvent::RealtimeSwitch { committed, .. }
            | UpstreamEvent::Unreadable { committed, .. } => *committed,
        }
    }
}

/// The highest feed position the router has fully fanned out (0: none). Written by the router,
/// read by a feed that must confirm what was delivered (the PostgreSQL slot); unused otherwise.
#[derive(Debug, Default)]
pub struct Watermark(std::sync::atomic::AtomicU64);

impl Watermark {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Raises the watermark; it never goes back.
    pub fn raise(&self, position: u64) {
        self.0.fetch_max(position, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Why the feed was lost (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("cannot connect to Realtime: {0}")]
    Connect(String),
    #[error("Realtime refused the connection (HTTP {0}): check SUPABASE_ANON_KEY")]
    BadApiKey(u16),
    #[error("Realtime refused the connection (HTTP {0})")]
    Refused(u16),
    #[error("join refused: {0}")]
    JoinRefused(String),
    #[error("join timed out")]
    JoinTimeout,
    #[error("Realtime never confirmed the subscription (no \"Subscribed to PostgreSQL\")")]
    NotConfirmed,
    #[error("mismatch between server and client bindings for postgres changes")]
    BindingMismatch,
    #[error("Realtime system error: {0}")]
    System(String),
    #[error("channel crashed on the server (phx_error)")]
    ChannelCrashed,
    #[error("channel closed by the server (phx_close)")]
    ChannelClosed,
    #[error("heartbeat reply missing")]
    HeartbeatMissing,
    #[error("socket closed by Realtime{0}")]
    Closed(String),
    #[error("socket error: {0}")]
    Socket(String),
    /// The PostgreSQL backend's change feed (replication slot) was lost or could not be read.
    #[error("PostgreSQL change feed: {0}")]
    Database(String),
}

/// The table membership, read-state and switch changes arrive through (see the migration
/// `20261203001000_membership_events.sql`): trigger-fed from `thread_participants` and
/// `chat_realtime_settings`, keyed by a number, readable by the service role only. The two source
/// tables are not published: their DELETE events would tell every subscriber who left which thread.
pub const MEMBERSHIP_EVENTS_TABLE: &str = "chat_membership_events";

/// One row change as a backend read it, before it means anything.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub kind: &'a str,
    /// The new row, column name to value (`null` when there is none).
    pub record: &'a Value,
    pub committed: Option<DateTime<Utc>>,
}

/// What a row change means to the router: a new message or a membership event; nothing for
/// other tables and change types; [`UpstreamEvent::Unreadable`] for a row that cannot be read,
/// so the router fills the gap from the database instead of dropping it.
pub fn decode_change(change: &Change<'_>) -> Option<UpstreamEvent> {
    if change.schema != "public" {
        return None;
    }
    let (table, record, committed) = (change.table, change.record, change.committed);
    let unreadable = |reason: String| UpstreamEvent::Unreadable { table: table.to_string(), reason, committed };
    match (table, change.kind) {
        ("messages", "INSERT") => Some(match serde_json::from_value::<MessageRow>(record.clone()) {
            Ok(row) => UpstreamEvent::Message { row, committed, received: Received::now() },
            Err(e) => unreadable(format!("malformed message record: {e}")),
        }),
        // Pruning deletes old events: nothing to tell the router.
        (MEMBERSHIP_EVENTS_TABLE, "INSERT") => Some(
            membership_event(record, committed)
                .unwrap_or_else(|| unreadable(format!("unreadable membership event: {record}"))),
        ),
        _ => None,
    }
}

fn uuid_at(v: &Value, key: &str) -> Option<Uuid> {
    v.get(key)?.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// One `chat_membership_events` row as the event the router handles.
fn membership_event(record: &Value, committed: Option<DateTime<Utc>>) -> Option<UpstreamEvent> {
    let user_id = uuid_at(record, "user_id")?;
    let thread = || uuid_at(record, "thread_id");
    match record.get("kind")?.as_str()? {
        "join" => Some(UpstreamEvent::Membership { thread_id: thread()?, user_id, present: true, committed }),
        "leave" => Some(UpstreamEvent::Membership { thread_id: thread()?, user_id, present: false, committed }),
        "read" => {
            let last_read_at = record.get("last_read_at")?.as_str()?.to_string();
            Some(UpstreamEvent::ReadState { thread_id: thread()?, user_id, last_read_at, committed })
        }
        "switch" => {
            let enabled = record.get("realtime_enabled")?.as_bool()?;
            Some(UpstreamEvent::RealtimeSwitch { user_id, enabled, committed })
        }
        _ => None,
    }
}
