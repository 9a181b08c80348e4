//! Row changes decoded by the [`pgoutput`] crate, shaped like Supabase Realtime's
//! `postgres_changes` payloads, so [`crate::upstream::decode_change`] turns them into the very
//! same events the Supabase upstream produces.
//!
//! Pure: a decoded transaction in, JSON payloads out. Never touches the database and never
//! decides who sees a change.

use chrono::SecondsFormat;
use pgoutput::Transaction;
use serde_json::{json, Value};

/// `{"data": {schema, table, type, commit_timestamp, record, old_record, errors}}` per change,
/// in the transaction's order; the commit time in microseconds.
pub fn payloads(transaction: &Transaction) -> Vec<Value> {
    let ts = transaction.committed.to_rfc3339_opts(SecondsFormat::Micros, true);
    transaction
        .changes
        .iter()
        .map(|change| {
            json!({"data": {
                "schema": change.relation.schema, "table": change.relation.table,
                "type": change.kind.as_str(), "commit_timestamp": ts,
                "record": change.record, "old_record": change.old_record, "errors": null,
            }})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use pgoutput::{to_json, ChangeKind, Column, Relation, Row, RowChange};

    use super::*;
    use crate::upstream::{decode_change, UpstreamEvent};

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
        Transaction { commit_lsn: 0, end_lsn: 0x1_0000_0010, committed, changes }
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
        let payloads = payloads(&transaction(vec![insert]));
        assert_eq!(payloads[0]["data"]["commit_timestamp"], "2000-01-01T00:00:01.000000Z");
        assert_eq!(payloads[0]["data"]["old_record"], Value::Null);
        let events = decode_change(&payloads[0]);
        match &events[..] {
            [UpstreamEvent::Message { row, committed: Some(_) }] => {
                assert_eq!((row.content.as_str(), row.created_at.as_str()), ("hi", "2026-01-01T12:00:00.5+00:00"));
            }
            other => panic!("{other:?}"),
        }
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
        let events: Vec<UpstreamEvent> = payloads(&transaction(inserts)).iter().flat_map(decode_change).collect();
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
        assert!(decode_change(&payloads(&transaction(vec![delete]))[0]).is_empty());
    }
}
