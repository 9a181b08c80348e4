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

/// The table membership, read-state and switch changes arrive through (see the migration
/// `20261203001000_membership_events.sql`): trigger-fed from `thread_participants` and
/// `chat_realtime_settings`, keyed by a number, readable by the service role only. The two source
/// tables are not published: their DELETE events would tell every subscriber who left which thread.
pub const MEMBERSHIP_EVENTS_TABLE: &str = "chat_membership_events";

fn uuid_at(v: &Value, key: &str) -> Option<Uuid> {
    v.get(key)?.as_str().and_then(|s| Uuid::parse_str(s).ok())
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
    let unreadable = |reason: String| UpstreamEvent::Unreadable { table: table.to_string(), reason, committed };
    if let Some(errors) = data.get("errors").filter(|e| !e.is_null()) {
        return vec![unreadable(format!("Realtime could not send the row: {errors}"))];
    }
    match (table, kind) {
        ("messages", "INSERT") => match serde_json::from_value::<MessageRow>(record.clone()) {
            Ok(row) => vec![UpstreamEvent::Message { row, committed }],
            Err(e) => vec![unreadable(format!("malformed message record: {e}"))],
        },
        // Pruning deletes old events: nothing to tell the router.
        (MEMBERSHIP_EVENTS_TABLE, "INSERT") => match membership_event(record, committed) {
            Some(event) => vec![event],
            None => vec![unreadable(format!("unreadable membership event: {record}"))],
        },
        _ => Vec::new(),
    }
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

    fn event(record: Value) -> Vec<UpstreamEvent> {
        decode_change(&payload(MEMBERSHIP_EVENTS_TABLE, "INSERT", record, Value::Null))
    }

    #[test]
    fn decodes_messages_and_membership_events() {
        let row = json!({"id": T, "thread_id": T, "sender_id": U, "content": "hi", "message_type": "text",
                         "created_at": "2026-01-01T00:00:00.000001+00:00"});
        let events = decode_change(&payload("messages", "INSERT", row, Value::Null));
        assert!(matches!(&events[..], [UpstreamEvent::Message { row, committed: Some(_) }] if row.content == "hi"));
        let e = event(json!({"id": 1, "kind": "join", "thread_id": T, "user_id": U}));
        assert!(matches!(&e[..], [UpstreamEvent::Membership { present: true, committed: Some(_), .. }]), "{e:?}");
        let e = event(json!({"id": 2, "kind": "leave", "thread_id": T, "user_id": U}));
        assert!(matches!(&e[..], [UpstreamEvent::Membership { present: false, .. }]), "{e:?}");
        let e = event(json!({"id": 3, "kind": "read", "thread_id": T, "user_id": U,
                             "last_read_at": "2026-01-01T00:00:00+00:00"}));
        assert!(matches!(&e[..], [UpstreamEvent::ReadState { last_read_at, .. }] if last_read_at.starts_with("2026")));
        let e = event(json!({"id": 4, "kind": "switch", "thread_id": null, "user_id": U, "realtime_enabled": false}));
        assert!(matches!(&e[..], [UpstreamEvent::RealtimeSwitch { enabled: false, .. }]), "{e:?}");
        // Pruning: old events deleted (an empty old_record, as Realtime sends it) mean nothing.
        let pruned = decode_change(&payload(MEMBERSHIP_EVENTS_TABLE, "DELETE", Value::Null, json!({"id": 1})));
        assert!(pruned.is_empty());
    }

    #[test]
    fn an_incomplete_membership_event_is_a_gap_not_a_guess() {
        for bad in [
            json!({"id": 1, "kind": "join", "user_id": U}),
            json!({"id": 1, "kind": "read", "thread_id": T, "user_id": U}),
            json!({"id": 1, "kind": "switch", "user_id": U}),
            json!({"id": 1, "kind": "promote", "thread_id": T, "user_id": U}),
            json!({"id": 1, "kind": "leave", "thread_id": T, "user_id": "nope"}),
        ] {
            assert!(matches!(&event(bad.clone())[..], [UpstreamEvent::Unreadable { .. }]), "{bad}");
        }
        // The tables themselves are not published any more: their changes decode to nothing.
        let old = decode_change(&payload(
            "thread_participants",
            "DELETE",
            Value::Null,
            json!({"thread_id": T, "user_id": U}),
        ));
        assert!(old.is_empty());
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
