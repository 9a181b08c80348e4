//! Realtime's `postgres_changes` payloads decoded at the edge into the feed's typed events
//! ([`crate::feed::decode_change`] says what a change means): the router never sees JSON.
//!
//! Pure decoding, unit-tested here; unknown tables and change types decode to nothing, and a row
//! Realtime could not send in full (its `errors`) becomes [`UpstreamEvent::Unreadable`] so the
//! router fills the gap from the database instead of dropping it.

use serde_json::Value;

use crate::feed::{decode_change, Change, UpstreamEvent};
use crate::model::parse_time;

/// Decodes the payload of a `postgres_changes` push into zero or more events.
pub fn decode_payload(payload: &Value) -> Vec<UpstreamEvent> {
    let Some(data) = payload.get("data") else { return Vec::new() };
    let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
    let committed = data.get("commit_timestamp").and_then(Value::as_str).and_then(parse_time);
    let (schema, table, kind) = (text("schema"), text("table"), text("type"));
    if schema != "public" {
        return Vec::new();
    }
    if let Some(errors) = data.get("errors").filter(|e| !e.is_null()) {
        let reason = format!("Realtime could not send the row: {errors}");
        return vec![UpstreamEvent::Unreadable { table: table.to_string(), reason, committed }];
    }
    let record = data.get("record").unwrap_or(&Value::Null);
    decode_change(&Change { schema, table, kind, record, committed }).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::MEMBERSHIP_EVENTS_TABLE;
    use serde_json::json;

    const T: &str = "b0000000-0000-4000-8000-000000000001";
    const U: &str = "a0000000-0000-4000-8000-000000000001";

    fn payload(table: &str, kind: &str, record: Value, old: Value) -> Value {
        json!({"ids": [1], "data": {"schema": "public", "table": table, "type": kind,
            "commit_timestamp": "2026-01-01T00:00:00Z", "record": record, "old_record": old, "errors": null}})
    }

    fn event(record: Value) -> Vec<UpstreamEvent> {
        decode_payload(&payload(MEMBERSHIP_EVENTS_TABLE, "INSERT", record, Value::Null))
    }

    #[test]
    fn decodes_messages_and_membership_events() {
        let row = json!({"id": T, "thread_id": T, "sender_id": U, "content": "hi", "message_type": "text",
                         "created_at": "2026-01-01T00:00:00.000001+00:00"});
        let events = decode_payload(&payload("messages", "INSERT", row, Value::Null));
        assert!(matches!(&events[..], [UpstreamEvent::Message { row, committed: Some(_), .. }] if row.content == "hi"));
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
        let pruned = decode_payload(&payload(MEMBERSHIP_EVENTS_TABLE, "DELETE", Value::Null, json!({"id": 1})));
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
        let old = decode_payload(&payload(
            "thread_participants",
            "DELETE",
            Value::Null,
            json!({"thread_id": T, "user_id": U}),
        ));
        assert!(old.is_empty());
    }

    #[test]
    fn unreadable_rows_become_gaps_not_silence() {
        let events = decode_payload(&payload("messages", "INSERT", json!({"id": "nope"}), Value::Null));
        assert!(matches!(&events[..], [UpstreamEvent::Unreadable { .. }]));
        let mut with_errors = payload("messages", "INSERT", Value::Null, Value::Null);
        with_errors["data"]["errors"] = json!(["Error 413: Payload Too Large"]);
        assert!(matches!(&decode_payload(&with_errors)[..], [UpstreamEvent::Unreadable { .. }]));
        assert!(decode_payload(&json!({})).is_empty());
        assert!(decode_payload(&payload("threads", "INSERT", json!({}), Value::Null)).is_empty());
    }
}
