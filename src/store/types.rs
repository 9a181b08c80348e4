//! What the store's calls take and answer, on either backend: the typed rows, whose credentials a
//! call uses ([`As`]), the one error type ([`StoreError`]) and the labels a call's latency is
//! recorded under ([`call_name`], the same on both backends).
//!
//! Pure types and decoding; never talks to a database. Times are typed here: a backend renders
//! them for its wire and parses what it reads back once, at its edge.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::model::{parse_time, MessageRow};

/// What went wrong talking to the database (PostgREST's answers; the PostgreSQL backend maps
/// its errors to the same).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database did not answer in time")]
    Timeout,
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// PostgREST answered with an error body `{code, message, details, hint}`.
    #[error("{message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("unexpected answer from the database: {0}")]
    Decode(String),
}

impl StoreError {
    /// The `outcome` label of a call's latency.
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Rejected { .. } => "rejected",
            StoreError::Decode(_) => "decode",
        }
    }
}

/// A time the database answered, parsed once here.
pub(crate) fn time_from_db(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_time(raw).ok_or_else(|| StoreError::Decode(format!("not a time: {raw:?}")))
}

/// Whose credentials a call uses.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// The calling user's own access token (RLS applies).
    User(&'a str),
    /// The service role key (bypasses RLS): membership, profiles, catch-up only.
    Service,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    pub id: Uuid,
    pub full_name: String,
    pub role: String,
}

/// The database's sync horizon read together with its clock (see `chat_sync_point()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SyncPoint {
    /// Every transaction that started before this had ended when the reading was taken.
    pub horizon: DateTime<Utc>,
    /// The database's clock at the reading.
    pub db_now: DateTime<Utc>,
}

/// `chat_sync_horizon_check()`: whether `chat_sync_horizon()` sees every session's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HorizonCheck {
    /// The horizon function's owner, quoted as an identifier.
    pub owner: String,
    pub sees_all_sessions: bool,
}

/// One answer of `chat_offline_messages`, decoded row by row so that one odd row cannot fail the
/// page.
#[derive(Debug, Default)]
pub struct OfflineRows {
    /// The rows that decoded, oldest first.
    pub messages: Vec<MessageRow>,
    /// How many rows the database returned, decodable or not.
    pub returned: usize,
    /// The `created_at` of the last row the database returned (the page's boundary).
    pub last_created_at: Option<DateTime<Utc>>,
}

impl OfflineRows {
    pub(crate) fn from_rows(rows: Vec<Value>) -> OfflineRows {
        let returned = rows.len();
        let last_created_at =
            rows.last().and_then(|r| r.get("created_at")).and_then(Value::as_str).and_then(parse_time);
        let messages = rows
            .into_iter()
            .filter_map(|row| match serde_json::from_value::<MessageRow>(row) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "offline sync: undecodable message row skipped");
                    None
                }
            })
            .collect();
        OfflineRows { messages, returned, last_created_at }
    }
}

/// Every call of the store, named by its PostgREST path: the static `call` label of its latency
/// series (`gateway_postgrest_request_duration_seconds`) on both backends.
const CALLS: [&str; 30] = [
    "rpc/chat_share_read_state",
    "rpc/chat_read_state",
    "rpc/chat_read_receipt",
    "rpc/chat_thread_messages",
    "rpc/chat_unread_by_thread",
    "rpc/chat_register_push_device",
    "rpc/chat_push_devices",
    "rpc/chat_unregister_push_device",
    "rpc/chat_mute_thread",
    "rpc/chat_push_decide",
    "rpc/chat_push_stats",
    "rpc/chat_push_claim",
    "rpc/chat_push_finish_batch",
    "rpc/chat_push_prune",
    "rpc/chat_push_presence_report",
    "rpc/chat_push_presence_clear",
    "rpc/chat_offline_messages",
    "rpc/chat_sync_horizon_check",
    "rpc/chat_prune_membership_events",
    "rpc/chat_sync_horizon",
    "rpc/chat_sync_point",
    "rpc/chat_unread_count",
    "rpc/chat_unread_count_of",
    "rpc/chat_set_realtime",
    "chat_realtime_settings",
    "rpc/chat_mark_thread_read",
    "rpc/chat_messages_page",
    "threads",
    "thread_participants",
    "profiles",
];

/// The metrics label of a call's path: itself when known, `other` otherwise (a label never
/// comes from data).
pub fn call_name(path: &str) -> &'static str {
    CALLS.iter().find(|c| **c == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(id: &str, created_at: &str, sender: Value) -> Value {
        json!({
            "id": id, "thread_id": Uuid::nil(), "sender_id": Uuid::nil(), "content": "hi",
            "message_type": "text", "created_at": created_at, "sender": sender,
        })
    }

    #[test]
    fn a_hidden_sender_leaves_the_row_readable_without_a_name() {
        let id = Uuid::from_u128(1).to_string();
        let page = OfflineRows::from_rows(vec![
            row(&id, "2026-01-01T00:00:00+00:00", json!({"full_name": null, "role": null})),
            row(
                &Uuid::from_u128(2).to_string(),
                "2026-01-01T00:00:01+00:00",
                json!({"full_name": "A", "role": "teacher"}),
            ),
        ]);
        assert_eq!(page.returned, 2);
        assert_eq!(page.messages.len(), 2);
        assert!(page.messages[0].sender.is_none());
        assert_eq!(
            page.messages[1].sender,
            Some(crate::model::Sender { full_name: "A".into(), role: "teacher".into() })
        );
    }

    #[test]
    fn an_undecodable_row_is_left_out_but_still_bounds_the_page() {
        let page = OfflineRows::from_rows(vec![
            row(&Uuid::from_u128(1).to_string(), "2026-01-01T00:00:00+00:00", Value::Null),
            row("not-a-uuid", "2026-01-01T00:00:05+00:00", Value::Null),
        ]);
        assert_eq!((page.returned, page.messages.len()), (2, 1));
        assert_eq!(page.last_created_at, parse_time("2026-01-01T00:00:05Z"));
    }
}

/// The push queue at a glance: defined by the metrics that keep it, read here.
pub use crate::metrics::PushStats;

/// What one `chat_push_decide` call did: jobs decided, deliveries written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct PushDecided {
    pub jobs: i64,
    pub deliveries: i64,
}

/// One thread of the caller with its unread count (`chat_unread_by_thread()`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct ThreadUnread {
    pub thread_id: Uuid,
    pub unread_count: i64,
    pub last_message_at: Option<String>,
}

/// A participant whose read state the caller may see (`chat_read_state`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReaderState {
    pub user_id: Uuid,
    pub full_name: String,
    pub role: String,
    pub last_read_at: DateTime<Utc>,
}

/// How many of a message's possible readers (the participants other than its sender) have read
/// it: `seen_by` of `of`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct MessageSeen {
    pub message_id: Uuid,
    pub seen_by: i64,
    pub of: i64,
}

/// `chat_read_state(p_thread_id, p_messages)` for the caller: the participants they may see,
/// and the counts of the newest messages (newest first).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReadState {
    pub participants: Vec<ReaderState>,
    pub messages: Vec<MessageSeen>,
}

/// Who read, as a live receipt names them.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Reader {
    pub user_id: Uuid,
    pub full_name: String,
    pub role: String,
}

/// Another participant of the thread, and whether the rules let them see the reader named.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ReceiptViewer {
    pub user_id: Uuid,
    pub named: bool,
}

/// `chat_read_receipt(p_thread_id, p_reader)` (service rights): the reader's current read
/// state, the counts of the thread's newest message (`message_id` none: the thread has none) and
/// who may be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReadReceipt {
    pub reader: Reader,
    pub last_read_at: DateTime<Utc>,
    pub message_id: Option<Uuid>,
    pub seen_by: i64,
    pub of: i64,
    pub viewers: Vec<ReceiptViewer>,
}

/// A device to register for push (`chat_register_push_device`): a provider token, or a Web Push
/// subscription (endpoint and keys). Validated by the API before it gets here.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    pub platform: String,
    pub token: Option<String>,
    pub endpoint: Option<String>,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub locale: Option<String>,
}

/// One of the caller's registered devices, as `chat_push_devices()` lists it (never the Web Push
/// keys).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct PushDevice {
    pub id: Uuid,
    pub platform: String,
    pub token: Option<String>,
    pub endpoint: Option<String>,
    pub locale: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// How a leased delivery ended, for `chat_push_finish_batch`: `outcome` is `sent`, `retry` (at
/// `retry_at`), `dropped` or `gone`.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PushFinish {
    pub id: Uuid,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
}

/// A push delivery leased by `chat_push_claim`: what sending it needs. `id` is the idempotency
/// key every attempt carries.
#[derive(Debug, Clone, Deserialize)]
pub struct PushDelivery {
    pub id: Uuid,
    pub attempts: i32,
    pub channel: String,
    pub user_id: Uuid,
    pub thread_id: Uuid,
    pub message_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub content: String,
    pub sender: crate::model::Sender,
    /// Older messages of the thread that collapsed into this one.
    pub collapsed: i64,
    /// The user's unread count across threads (the badge).
    pub unread_count: i64,
    /// The device (platform, token or Web Push subscription); none for the webhook.
    pub device: Option<Value>,
}
