//! Row changes decoded by the [`pgoutput`] crate, turned into the feed's typed events: each
//! change read as a [`Change`] (its row as the decoder built it, the transaction's commit time)
//! and given its meaning by [`decode_change`], the same function the Realtime backend uses, so
//! both backends produce the very same events.
//!
//! Pure: a decoded transaction in, events out. Never touches the database and never decides who
//! sees a change.

use pgoutput::Transaction;
use serde_json::Value;

use crate::feed::{decode_change, Change, UpstreamEvent};

/// The events of a transaction's changes, in the transaction's order (none for a change that
/// means nothing to the router).
pub fn events(transaction: &Transaction) -> Vec<UpstreamEvent> {
    transaction
        .changes
        .iter()
        .filter_map(|change| {
            let record = change.record.clone().map_or(Value::Null, Value::Object);
            decode_change(&Change {
                schema: &change.relation.schema,
                table: &change.relation.table,
                kind: change.kind.as_str(),
                record: &record,
                committed: Some(transaction.committed),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use pgoutput::{to_json, ChangeKind, Column, Relation, Row, RowChange};

    use super::*;
    use crate::feed::realtime::decode_payload;

    fn relation(table: &str, cols: &[(bool, &str, &str)]) -> Arc<Relation> {
        let columns = cols
            .iter()
            .map(|(key, name, ty)| Column { name: name.to_string(), type_name: ty.to_string(), key: *key })
            .collect();
        Arc::new(Relation { schema: "public".into(), table: table.into(), columns })
    }

    /// A row as the decoder builds it: PostgreSQL's text output converted by type.
    fn row(relation: &Relation, cells: &[Option<&str>]) -> Row {
        relation
            .columns
            .iter()
            .zip(cells)
            .map(|(c, cell)| (c.name.clone(), cell.map_or(Value::Null, |t| to_json(&c.type_name, t))))
            .collect()
    }

    fn transaction(changes: Vec<RowChange>) -> Transaction {
        let committed = Utc.timestamp_micros(946_684_801_000_000).single().expect("a time");
        Transaction { commit_lsn: 0, end_lsn: 0x1_0000_0010, committed, xid: 7, changes }
    }

    const T: &str = "b0000000-0000-4000-8000-000000000001";
    const U: &str = "a0000000-0000-4000-8000-000000000001";

    #[test]
    fn a_message_insert_becomes_the_same_event_as_from_realtime() {
        let rel = relation(
            "messages",
            &[
                (true, "id", "uuid"),
                (false, "thread_id", "uuid"),
                (false, "sender_id", "uuid"),
                (false, "content", "text"),
                (false, "message_type", "text"),
                (false, "created_at", "timestamptz"),
            ],
        );
        let record =
            row(&rel, &[Some(T), Some(T), Some(U), Some("hi"), Some("text"), Some("2026-01-01 12:00:00.5+00")]);
        let insert = RowChange { relation: rel, kind: ChangeKind::Insert, record: Some(record), old_record: None };
        let transaction = transaction(vec![insert]);
        let events = events(&transaction);
        match &events[..] {
            [UpstreamEvent::Message { row, committed: Some(committed), .. }] => {
                assert_eq!((row.content.as_str(), row.created_at.as_str()), ("hi", "2026-01-01T12:00:00.5+00:00"));
                assert_eq!(crate::model::format_time(*committed), "2000-01-01T00:00:01.000000Z");
            }
            other => panic!("{other:?}"),
        }
        // Realtime's payload of the same change decodes to the very same event.
        let change = &transaction.changes[0];
        let payload = serde_json::json!({"data": {
            "schema": "public", "table": "messages", "type": "INSERT",
            "commit_timestamp": "2000-01-01T00:00:01.000000Z",
            "record": change.record, "old_record": null, "errors": null,
        }});
        assert_eq!(format!("{:?}", decode_payload(&payload)), format!("{events:?}"));
    }

    #[test]
    fn membership_events_become_the_same_events_as_from_realtime() {
        let rel = relation(
            "chat_membership_events",
            &[
                (true, "id", "int8"),
                (false, "kind", "text"),
                (false, "thread_id", "uuid"),
                (false, "user_id", "uuid"),
                (false, "last_read_at", "timestamptz"),
                (false, "realtime_enabled", "bool"),
                (false, "created_at", "timestamptz"),
            ],
        );
        let at = Some("2026-01-01 12:00:00+00");
        let rows = [
            row(&rel, &[Some("1"), Some("leave"), Some(T), Some(U), None, None, at]),
            row(&rel, &[Some("2"), Some("read"), Some(T), Some(U), at, None, at]),
            row(&rel, &[Some("3"), Some("switch"), None, Some(U), None, Some("f"), at]),
        ];
        let inserts = rows
            .into_iter()
            .map(|r| RowChange { relation: rel.clone(), kind: ChangeKind::Insert, record: Some(r), old_record: None })
            .collect();
        let events = events(&transaction(inserts));
        match &events[..] {
            [UpstreamEvent::Membership { present: false, .. }, UpstreamEvent::ReadState { last_read_at, .. }, UpstreamEvent::RealtimeSwitch { enabled: false, .. }] =>
            {
                assert_eq!(last_read_at, "2026-01-01T12:00:00+00:00");
            }
            other => panic!("{other:?}"),
        }
        // Pruning deletes old events: nothing for the router.
        let key = row(&rel, &[Some("1")]);
        let delete = RowChange { relation: rel, kind: ChangeKind::Delete, record: None, old_record: Some(key) };
        assert!(super::events(&transaction(vec![delete])).is_empty());
    }
}
