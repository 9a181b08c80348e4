//! What the upstream tells the router, decoded at the edge from Realtime's `postgres_changes`
//! payloads into typed events: the router never sees JSON.
//!
//! Pure decoding, unit-tested here; unknown tables and change types decode to nothing, and a row
//! that cannot be read becomes [`UpstreamEvent::Unreadable`] so the router fills the gap from the
//! database instead of dropping it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::Lost;
use crate::model::{parse_time, MessageRow};

/// An event from the upstream, in the order Realtime sent it (commit order).
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    /// Joined and Realtime confirmed "Subscribed to PostgreSQL". `generation` counts successful
    /// subscriptions since start.
    Live { generation: u64 },
    /// The subscription is lost; sent once per loss, not once per retry.
    Down { reason: Lost },
    /// A new message.
    Message { row: MessageRow, committed: Option<DateTime<Utc>> },
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

/// The table of the per-user realtime switch.
pub const SWITCH_TABLE: &str = "chat_realtime_settings";

fn uuid_at(v: &Value, key: &str) -> Option<Uuid> {
    v.get(key)?.as_str().and_then(|s| Uuid::parse_str(s).ok())
}

fn pair(v: &Value) -> Option<(Uuid, Uuid)> {
    Some((uuid_at(v, "thread_id")?, uuid_at(v, "user_id")?))
}

/// Decodes the payload of a `postgres_changes` push into zero or more events.
pub fn decode_change(payload: &Value) -> Vec<UpstreamEvent> {
    let Some(data) = payload.get("data") else { return Vec::new() };
    let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
    let committed = data.get("commit_timestamp").and_then(Value::as_str).and_then(parse_time);
    let (schema, table, kind) = (text("schema"), text("table"), text("type"));
    if schema != "public" {
        return Vec::new();
    }
    let null = Value::Null;
    let record = data.get("record").unwrap_or(&null);
    let old = data.get("old_record").unwrap_or(&null);
    let unreadable = |reason: String| UpstreamEvent::Unreadable { table: table.to_string(), reason, committed };
    if let Some(errors) = data.get("errors").filter(|e| !e.is_null()) {
        return vec![unreadable(format!("Realtime could not send the row: {errors}"))];
    }
    match (table, kind) {
        ("messages", "INSERT") => match serde_json::from_value::<MessageRow>(record.clone()) {
            Ok(row) => vec![UpstreamEvent::Message { row, committed }],
            Err(e) => vec![unreadable(format!("malformed message record: {e}"))],
        },
        ("thread_participants", "INSERT") => match pair(record) {
            Some((thread_id, user_id)) => {
                vec![UpstreamEvent::Membership { thread_id, user_id, present: true, committed }]
            }
            None => vec![unreadable("participant record without thread_id/user_id".into())],
        },
        ("thread_participants", "UPDATE") => {
            let Some((thread_id, user_id)) = pair(record) else {
                return vec![unreadable("participant record without thread_id/user_id".into())];
            };
            let mut events = Vec::new();
            if let Some((old_thread, old_user)) = pair(old).filter(|p| *p != (thread_id, user_id)) {
                events.push(UpstreamEvent::Membership {
                    thread_id: old_thread,
                    user_id: old_user,
                    present: false,
                    committed,
                });
                events.push(UpstreamEvent::Membership { thread_id, user_id, present: true, committed });
            }
            if let Some(last_read_at) = record.get("last_read_at").and_then(Value::as_str) {
                let last_read_at = last_read_at.to_string();
                events.push(UpstreamEvent::ReadState { thread_id, user_id, last_read_at, committed });
            }
            events
        }
        ("thread_participants", "DELETE") => match pair(old) {
            Some((thread_id, user_id)) => {
                vec![UpstreamEvent::Membership { thread_id, user_id, present: false, committed }]
            }
            None => vec![unreadable("participant removal without its key".into())],
        },
        (SWITCH_TABLE, "INSERT" | "UPDATE") => {
            let user = uuid_at(record, "user_id");
            let enabled = record.get("realtime_enabled").and_then(Value::as_bool);
            match (user, enabled) {
                (Some(user_id), Some(enabled)) => vec![UpstreamEvent::RealtimeSwitch { user_id, enabled, committed }],
                _ => vec![unreadable("realtime switch record without user_id/realtime_enabled".into())],
            }
        }
        (SWITCH_TABLE, "DELETE") => match uuid_at(old, "user_id") {
            Some(user_id) => vec![UpstreamEvent::RealtimeSwitch { user_id, enabled: true, committed }],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &str = "b0000000-0000-4000-8000-000000000001";
    const U: &str = "a0000000-0000-4000-8000-000000000001";

    fn payload(table: &str, kind: &str, record: Value, old: Value) -> Value {
        json!({"ids": [1], "data": {"schema": "public", "table": table, "type": kind,
            "commit_timestamp": "2026-01-01T00:00:00Z", "record": record, "old_record": old, "errors": null}})
    }

    #[test]
    fn decodes_messages_and_membership() {
        let row = json!({"id": T, "thread_id": T, "sender_id": U, "content": "hi", "message_type": "text",
                         "created_at": "2026-01-01T00:00:00.000001+00:00"});
        let events = decode_change(&payload("messages", "INSERT", row, Value::Null));
        assert!(matches!(&events[..], [UpstreamEvent::Message { row, committed: Some(_) }] if row.content == "hi"));
        let events = decode_change(&payload(
            "thread_participants",
            "DELETE",
            Value::Null,
            json!({"thread_id": T, "user_id": U}),
        ));
        assert!(matches!(&events[..], [UpstreamEvent::Membership { present: false, .. }]));
        let events = decode_change(&payload(
            "thread_participants",
            "UPDATE",
            json!({"thread_id": T, "user_id": U, "last_read_at": "2026-01-01T00:00:00Z"}),
            json!({"thread_id": T, "user_id": U}),
        ));
        assert!(matches!(&events[..], [UpstreamEvent::ReadState { .. }]), "{events:?}");
    }

    #[test]
    fn unreadable_rows_become_gaps_not_silence() {
        let events = decode_change(&payload("messages", "INSERT", json!({"id": "nope"}), Value::Null));
        assert!(matches!(&events[..], [UpstreamEvent::Unreadable { .. }]));
        let mut with_errors = payload("messages", "INSERT", Value::Null, Value::Null);
        with_errors["data"]["errors"] = json!(["Error 413: Payload Too Large"]);
        assert!(matches!(&decode_change(&with_errors)[..], [UpstreamEvent::Unreadable { .. }]));
        assert!(decode_change(&json!({})).is_empty());
        assert!(decode_change(&payload("threads", "INSERT", json!({}), Value::Null)).is_empty());
    }
}
