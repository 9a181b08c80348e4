//! The change feed: committed row changes of the `supabase_realtime` publication, read from
//! PostgreSQL's write-ahead log, as Realtime describes them.
//!
//! Why logical decoding: it is what Supabase Realtime itself does. The built-in `pgoutput` plugin,
//! read through the SQL interface (`pg_logical_slot_get_binary_changes` on a TEMPORARY slot, polled
//! every few milliseconds on a dedicated connection), yields exactly the changes of the tables in
//! the publication, in commit order, each transaction whole, with its commit timestamp, and
//! nothing that rolled back. No triggers are added to the project's schema. The slot goes away
//! with its connection. The `pgoutput` crate decodes the binary messages and converts values to
//! JSON; this module owns the [`Change`] the sockets route and its `data` object. It never writes
//! to the database.

use chrono::SecondsFormat;
use serde_json::{Map, Value};

/// A committed row change, as Realtime describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    /// INSERT, UPDATE or DELETE.
    pub kind: &'static str,
    pub record: Option<Map<String, Value>>,
    pub old_record: Option<Map<String, Value>>,
    pub columns: Vec<(String, String)>,
    /// Replica identity (primary key) column names, used to check a row's visibility under RLS.
    pub keys: Vec<String>,
    /// RFC 3339 in UTC with `Z`: milliseconds for committed changes (as Realtime formats them),
    /// microseconds for injected ones.
    pub commit_timestamp: String,
    /// Injected by the load control rather than committed: there is no row to check RLS against.
    pub synthetic: bool,
}

impl Change {
    /// The `data` object of a `postgres_changes` push, serialized once for every recipient.
    pub fn data_json(&self) -> String {
        self.data(&|_| true, false)
    }

    /// The `data` object as Realtime shapes it for a role that may SELECT only the columns
    /// `selectable` accepts: other columns are left out of `columns`, `record` and `old_record`,
    /// and an `old_record` with no column left is null (a DELETE on a table the role may not
    /// read names nothing).
    pub fn data_json_for(&self, selectable: &dyn Fn(&str) -> bool) -> String {
        self.data(selectable, true)
    }

    fn data(&self, keep: &dyn Fn(&str) -> bool, null_if_empty: bool) -> String {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
            .collect();
        let only = |row: &Map<String, Value>| {
            let kept: Map<String, Value> =
                row.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
            if kept.is_empty() && null_if_empty {
                Value::Null
            } else {
                Value::Object(kept)
            }
        };
        let mut data = Map::new();
        data.insert("schema".into(), Value::from(self.schema.as_str()));
        data.insert("table".into(), Value::from(self.table.as_str()));
        data.insert("commit_timestamp".into(), Value::from(self.commit_timestamp.as_str()));
        data.insert("type".into(), Value::from(self.kind));
        data.insert("columns".into(), Value::Array(columns));
        if let Some(record) = &self.record {
            data.insert("record".into(), only(record));
        }
        if let Some(old) = &self.old_record {
            data.insert("old_record".into(), only(old));
        }
        data.insert("errors".into(), Value::Null);
        Value::Object(data).to_string()
    }

    /// What Realtime sends instead of an INSERT or UPDATE the subscriber's role may not read
    /// (`Error 401: Unauthorized`: no SELECT on the primary key) or cannot check (`Error 400`:
    /// no primary key): the table and the change type, no row.
    pub fn refused_json(&self, error: &str) -> String {
        let mut data = Map::new();
        data.insert("schema".into(), Value::from(self.schema.as_str()));
        data.insert("table".into(), Value::from(self.table.as_str()));
        data.insert("commit_timestamp".into(), Value::Null);
        data.insert("type".into(), Value::from(self.kind));
        data.insert("columns".into(), Value::Array(Vec::new()));
        data.insert("record".into(), Value::Object(Map::new()));
        if self.kind == "UPDATE" {
            data.insert("old_record".into(), Value::Object(Map::new()));
        }
        data.insert("errors".into(), Value::Array(vec![Value::from(error)]));
        Value::Object(data).to_string()
    }

    /// The changes of a committed transaction, stamped with its commit time in milliseconds.
    pub fn committed(transaction: &pgoutput::Transaction) -> impl Iterator<Item = Change> + '_ {
        let ts = transaction.committed.to_rfc3339_opts(SecondsFormat::Millis, true);
        transaction.changes.iter().map(move |c| Change {
            schema: c.relation.schema.clone(),
            table: c.relation.table.clone(),
            kind: c.kind.as_str(),
            record: c.record.clone(),
            old_record: c.old_record.clone(),
            columns: c.relation.columns.iter().map(|col| (col.name.clone(), col.type_name.clone())).collect(),
            keys: c.relation.columns.iter().filter(|col| col.key).map(|col| col.name.clone()).collect(),
            commit_timestamp: ts.clone(),
            synthetic: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use pgoutput::{ChangeKind, Column, Relation, RowChange, Transaction};

    use super::*;

    fn transaction(kind: ChangeKind, record: Value) -> Transaction {
        let columns = [("id", "uuid", true), ("n", "int4", false), ("at", "timestamptz", false)]
            .into_iter()
            .map(|(name, ty, key)| Column { name: name.into(), type_name: ty.into(), key })
            .collect();
        let relation = Arc::new(Relation { schema: "public".into(), table: "messages".into(), columns });
        let record = record.as_object().cloned();
        let change = RowChange { relation, kind, record, old_record: None };
        let committed = Utc.timestamp_micros(946_684_801_000_000).single().expect("a time");
        Transaction { commit_lsn: 0, end_lsn: 0, committed, xid: 7, changes: vec![change] }
    }

    #[test]
    fn committed_changes_carry_columns_keys_and_a_millisecond_stamp() {
        let tx = transaction(ChangeKind::Insert, serde_json::json!({"id": "a", "n": 1, "at": null}));
        let changes: Vec<Change> = Change::committed(&tx).collect();
        assert_eq!(changes[0].kind, "INSERT");
        assert_eq!(changes[0].commit_timestamp, "2000-01-01T00:00:01.000Z");
        assert_eq!(changes[0].columns[0], ("id".into(), "uuid".into()));
        assert_eq!(changes[0].keys, vec!["id".to_string()]);
        assert!(!changes[0].synthetic);
    }

    #[test]
    fn serializes_the_data_object_once() {
        let tx = transaction(ChangeKind::Insert, serde_json::json!({"id": "a", "n": 1, "at": null}));
        let changes: Vec<Change> = Change::committed(&tx).collect();
        let data: Value = serde_json::from_str(&changes[0].data_json()).expect("json");
        assert_eq!(data["type"], "INSERT");
        assert_eq!(data["record"], serde_json::json!({"id": "a", "n": 1, "at": null}));
        assert_eq!(data["columns"][2], serde_json::json!({"name": "at", "type": "timestamptz"}));
        assert_eq!(data["errors"], Value::Null);
        assert!(data.get("old_record").is_none(), "INSERT has no old_record");
    }

    #[test]
    fn a_role_sees_only_the_columns_it_may_select() {
        let tx = transaction(ChangeKind::Delete, Value::Null);
        let mut change: Change = Change::committed(&tx).next().expect("a change");
        change.old_record = serde_json::json!({"id": "a"}).as_object().cloned();
        let hidden: Value = serde_json::from_str(&change.data_json_for(&|_| false)).expect("json");
        assert_eq!(hidden["old_record"], Value::Null);
        assert_eq!(hidden["columns"], serde_json::json!([]));
        let seen: Value = serde_json::from_str(&change.data_json_for(&|c| c == "id")).expect("json");
        assert_eq!(seen["old_record"], serde_json::json!({"id": "a"}));
        let refused: Value = serde_json::from_str(&change.refused_json("Error 401: Unauthorized")).expect("json");
        assert_eq!(refused["errors"], serde_json::json!(["Error 401: Unauthorized"]));
        assert_eq!(refused["record"], serde_json::json!({}));
    }
}
