//! `postgres_changes` bindings: what a channel asked for at `phx_join` (event, schema, table
//! and a `col=op.value` filter), checked against the `supabase_realtime` publication, with the
//! stable id Realtime echoes, and whether a change matches one. Pure functions over values; this
//! module must never touch a socket or the database.

use serde_json::{json, Map, Value};

use super::feed::Change;

/// One `postgres_changes` binding of a joined channel.
#[derive(Debug, Clone)]
pub struct Binding {
    pub id: i64,
    pub event: String,
    pub schema: String,
    pub table: Option<String>,
    pub filter: Option<Filter>,
}

/// A binding's `col=op.value` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub op: String,
    pub value: String,
}

/// A binding id that is stable for the same binding, as Realtime's `phash2` of the params is.
fn binding_id(event: &str, schema: &str, table: Option<&str>, filter: Option<&str>) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [event, schema, table.unwrap_or(""), filter.unwrap_or("")] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (h % 134_217_727) as i64
}

/// Parses `col=op.value` with the operators Realtime supports.
pub fn parse_filter(filter: &str) -> Option<Filter> {
    let (column, rest) = filter.split_once('=')?;
    let (op, value) = rest.split_once('.')?;
    if !matches!(op, "eq" | "neq" | "lt" | "lte" | "gt" | "gte" | "in") || column.is_empty() {
        return None;
    }
    if op == "in" && !(value.starts_with('(') && value.ends_with(')')) {
        return None;
    }
    Some(Filter { column: column.into(), op: op.into(), value: value.into() })
}

pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compares a row value with a filter operand as typed values: numbers as numbers, times as
/// instants, anything else as text.
fn compare(actual: &str, want: &str) -> Option<std::cmp::Ordering> {
    if let (Ok(a), Ok(b)) = (actual.parse::<f64>(), want.parse::<f64>()) {
        return a.partial_cmp(&b);
    }
    let time = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .ok()
    };
    if let (Some(a), Some(b)) = (time(actual), time(want)) {
        return Some(a.cmp(&b));
    }
    Some(actual.cmp(want))
}

impl Filter {
    pub fn matches(&self, row: Option<&Map<String, Value>>) -> bool {
        use std::cmp::Ordering::*;
        let Some(value) = row.and_then(|r| r.get(&self.column)) else { return false };
        if value.is_null() {
            return false; // SQL: a comparison with NULL is never true.
        }
        let actual = text_of(value);
        let want = self.value.as_str();
        match self.op.as_str() {
            "eq" => compare(&actual, want) == Some(Equal),
            "neq" => compare(&actual, want) != Some(Equal),
            "lt" => compare(&actual, want) == Some(Less),
            "lte" => matches!(compare(&actual, want), Some(Less | Equal)),
            "gt" => compare(&actual, want) == Some(Greater),
            "gte" => matches!(compare(&actual, want), Some(Greater | Equal)),
            "in" => want
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .any(|v| compare(&actual, v.trim().trim_matches('"')) == Some(Equal)),
            _ => false,
        }
    }
}

impl Binding {
    /// Realtime passes DELETE events through filtered bindings (the deleted row's columns are
    /// not there to filter on unless the table has REPLICA IDENTITY FULL), so filters apply to
    /// INSERT and UPDATE only.
    pub fn matches(&self, change: &Change) -> bool {
        (self.event == "*" || self.event == change.kind)
            && self.schema == change.schema
            && self.table.as_deref().is_none_or(|t| t == change.table)
            && (change.kind == "DELETE" || self.filter.as_ref().is_none_or(|f| f.matches(change.record.as_ref())))
    }
}

/// Validates the requested bindings against the publication: the bindings, and the reply's
/// `postgres_changes` entries (each binding's keys exactly as sent, plus `id`).
pub(super) fn bind(
    requested: &[Value],
    published: &std::collections::HashSet<(String, String)>,
) -> Result<(Vec<Binding>, Vec<Value>), String> {
    let mut bindings = Vec::new();
    let mut echoed = Vec::new();
    for spec in requested {
        let event = spec.get("event").and_then(Value::as_str).unwrap_or("*").to_uppercase();
        let schema = spec.get("schema").and_then(Value::as_str).unwrap_or("public").to_string();
        let table = spec.get("table").and_then(Value::as_str).filter(|t| *t != "*").map(str::to_string);
        let filter_text = spec.get("filter").and_then(Value::as_str).map(str::to_string);
        let filter = filter_text.as_deref().map(parse_filter);
        let table_ok = match &table {
            Some(t) => published.contains(&(schema.clone(), t.clone())),
            None => published.iter().any(|(s, _)| *s == schema),
        };
        let event_ok = matches!(event.as_str(), "INSERT" | "UPDATE" | "DELETE" | "*");
        if !spec.is_object() || !table_ok || !event_ok || matches!(filter, Some(None)) {
            let filters = filter_text.map(|f| format!("[{f}]")).unwrap_or_else(|| "[]".into());
            return Err(format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [schema: {schema}, table: {}, filters: {filters}]",
                table.as_deref().unwrap_or("*")
            ));
        }
        let id = binding_id(&event, &schema, table.as_deref(), filter_text.as_deref());
        let mut echo = spec.as_object().cloned().unwrap_or_default();
        echo.insert("id".into(), json!(id));
        echoed.push(Value::Object(echo));
        bindings.push(Binding { id, event, schema, table, filter: filter.flatten() });
    }
    Ok((bindings, echoed))
}

/// Values the tests of bindings and of routing share.
#[cfg(test)]
pub(super) mod fixtures {
    use serde_json::{json, Map, Value};

    use super::{parse_filter, Binding, Change};

    pub(in crate::realtime) fn change(kind: &'static str, thread: &str) -> Change {
        let mut record = Map::new();
        record.insert("id".into(), json!("r1"));
        record.insert("thread_id".into(), json!(thread));
        record.insert("n".into(), json!(5));
        record.insert("at".into(), json!("2026-01-01T12:00:00.5+00:00"));
        record.insert("gone".into(), Value::Null);
        Change {
            schema: "public".into(),
            table: "messages".into(),
            kind,
            record: (kind != "DELETE").then(|| record.clone()),
            old_record: (kind != "INSERT").then_some(record),
            columns: vec![("id".into(), "uuid".into()), ("thread_id".into(), "uuid".into())],
            keys: vec!["id".into()],
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
            synthetic: false,
        }
    }

    pub(in crate::realtime) fn binding(event: &str, table: Option<&str>, filter: Option<&str>) -> Binding {
        Binding {
            id: 1,
            event: event.into(),
            schema: "public".into(),
            table: table.map(str::to_string),
            filter: filter.and_then(parse_filter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{binding, change};
    use super::*;

    #[test]
    fn bindings_match_event_schema_and_table() {
        assert!(binding("INSERT", Some("messages"), None).matches(&change("INSERT", "a")));
        assert!(!binding("INSERT", Some("messages"), None).matches(&change("DELETE", "a")));
        assert!(binding("*", None, None).matches(&change("UPDATE", "a")));
        assert!(!binding("*", Some("threads"), None).matches(&change("UPDATE", "a")));
        let mut other_schema = binding("*", None, None);
        other_schema.schema = "auth".into();
        assert!(!other_schema.matches(&change("INSERT", "a")));
    }

    #[test]
    fn filters_compare_typed_values() {
        let m = |f: &str, kind: &'static str| binding("*", Some("messages"), Some(f)).matches(&change(kind, "a"));
        assert!(m("thread_id=eq.a", "INSERT"));
        assert!(!m("thread_id=eq.b", "INSERT"));
        assert!(m("thread_id=neq.b", "UPDATE"));
        assert!(!m("thread_id=neq.a", "UPDATE"));
        assert!(m("thread_id=in.(b,a)", "INSERT"));
        assert!(m(r#"thread_id=in.("b","a")"#, "INSERT"));
        assert!(!m("thread_id=in.(b,c)", "INSERT"));
        assert!(m("n=gt.4", "INSERT") && m("n=gte.5", "INSERT") && m("n=lte.5", "INSERT") && m("n=eq.5.0", "INSERT"));
        assert!(!m("n=lt.5", "INSERT") && !m("n=gt.10", "INSERT"));
        assert!(m("n=lt.10", "INSERT"), "numeric, not text, order");
        assert!(m("at=eq.2026-01-01 12:00:00.5+00", "INSERT"), "timestamps compare as instants");
        assert!(m("at=gt.2026-01-01T11:00:00Z", "INSERT"));
        assert!(!m("gone=eq.null", "INSERT") && !m("gone=neq.x", "INSERT"), "NULL never matches");
        assert!(!m("missing=eq.a", "INSERT"));
        assert!(m("thread_id=eq.b", "DELETE"), "DELETE passes through filters as in Realtime");
    }

    #[test]
    fn filter_syntax() {
        assert_eq!(
            parse_filter("thread_id=eq.a.b"),
            Some(Filter { column: "thread_id".into(), op: "eq".into(), value: "a.b".into() })
        );
        for bad in ["thread_id=like.x", "=eq.x", "thread_id", "thread_id=eq", "n=in.1,2"] {
            assert_eq!(parse_filter(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_bindings_echo_what_was_sent() {
        let published: std::collections::HashSet<(String, String)> =
            [("public".to_string(), "messages".to_string())].into_iter().collect();
        let sent = vec![
            json!({"event": "INSERT", "schema": "public", "table": "messages"}),
            json!({"event": "*", "schema": "public", "table": "messages", "filter": "thread_id=eq.x"}),
            json!({"event": "INSERT", "schema": "public", "table": "messages"}),
        ];
        let (bindings, echoed) = bind(&sent, &published).expect("ok");
        assert_eq!(bindings.len(), 3);
        for (e, s) in echoed.iter().zip(&sent) {
            let mut without_id = e.as_object().cloned().expect("object");
            assert!(without_id.remove("id").is_some_and(|id| id.is_i64()));
            assert_eq!(&Value::Object(without_id), s);
        }
        assert_eq!(echoed[0]["id"], echoed[2]["id"], "same binding, same id");
        assert_ne!(echoed[0]["id"], echoed[1]["id"]);
        let refused = bind(&[json!({"event": "INSERT", "schema": "public", "table": "profiles"})], &published);
        assert_eq!(
            refused.err().as_deref(),
            Some("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [schema: public, table: profiles, filters: []]")
        );
        assert!(bind(
            &[json!({"event": "INSERT", "schema": "public", "table": "messages", "filter": "x=like.y"})],
            &published
        )
        .is_err());
        assert!(bind(&[json!({"event": "TRUNCATE", "schema": "public"})], &published).is_err());
        assert!(bind(&[json!({"event": "*", "schema": "public"})], &published).is_ok());
    }
}
