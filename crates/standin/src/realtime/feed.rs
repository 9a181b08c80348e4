//! The change feed: committed row changes of the `supabase_realtime` publication, read from
//! PostgreSQL's write-ahead log.
//!
//! Why logical decoding: it is what Supabase Realtime itself does. The built-in `pgoutput` plugin,
//! read through the SQL interface (`pg_logical_slot_get_binary_changes` on a TEMPORARY slot, polled
//! every few milliseconds on a dedicated connection), yields exactly the changes of the tables in
//! the publication, in commit order, each transaction whole, with its commit timestamp, and
//! nothing that rolled back. No triggers are added to the project's schema. The slot goes away
//! with its connection. This module owns parsing pgoutput's binary messages (pure, unit-tested)
//! and converting text values to JSON the way Realtime does; it never writes to the database.

use std::collections::HashMap;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Number, Value};

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
        let columns: Vec<Value> = self.columns.iter().map(|(n, t)| serde_json::json!({"name": n, "type": t})).collect();
        let mut data = Map::new();
        data.insert("schema".into(), Value::from(self.schema.as_str()));
        data.insert("table".into(), Value::from(self.table.as_str()));
        data.insert("commit_timestamp".into(), Value::from(self.commit_timestamp.as_str()));
        data.insert("type".into(), Value::from(self.kind));
        data.insert("columns".into(), Value::Array(columns));
        if let Some(record) = &self.record {
            data.insert("record".into(), Value::Object(record.clone()));
        }
        if let Some(old) = &self.old_record {
            data.insert("old_record".into(), Value::Object(old.clone()));
        }
        data.insert("errors".into(), Value::Null);
        Value::Object(data).to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message truncated")]
    Truncated,
    #[error("unknown pgoutput message type {0:?}")]
    UnknownMessage(char),
    #[error("unknown tuple kind {0:?}")]
    UnknownTuple(char),
    #[error("change for unknown relation {0}")]
    UnknownRelation(u32),
    #[error("invalid UTF-8 in a string")]
    Utf8,
}

#[derive(Debug, Clone)]
struct Column {
    key: bool,
    name: String,
    type_oid: u32,
}

#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    table: String,
    columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Unchanged,
    Text(String),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).ok_or(DecodeError::Truncated)?;
        let nul = rest.iter().position(|&b| b == 0).ok_or(DecodeError::Truncated)?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::Utf8)?.to_string();
        self.pos += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, DecodeError> {
        let n = self.i16()?.max(0) as usize;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?.max(0) as usize;
                    let bytes = self.take(len)?;
                    Cell::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                other => return Err(DecodeError::UnknownTuple(other as char)),
            });
        }
        Ok(cells)
    }
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn commit_time(pg_micros: i64) -> String {
    let unix = pg_micros.saturating_add(PG_EPOCH_MICROS);
    Utc.timestamp_micros(unix).single().unwrap_or_else(Utc::now).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A row change of the open transaction, kept until its Commit.
struct Pending {
    relid: u32,
    kind: &'static str,
    new: Option<Vec<Cell>>,
    /// The old tuple and its kind: `K` (key columns only) or `O` (the whole row).
    old: Option<(u8, Vec<Cell>)>,
}

/// Turns a stream of pgoutput messages into whole committed transactions' changes.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    pending: Vec<Pending>,
    commit_ts: i64,
}

impl Decoder {
    /// Feeds one message; returns the transaction's changes when it is a Commit.
    /// `type_name` resolves a type oid to its name (e.g. 2950 → "uuid").
    pub fn feed(&mut self, message: &[u8], type_name: &dyn Fn(u32) -> String) -> Result<Vec<Change>, DecodeError> {
        let mut r = Reader { buf: message, pos: 0 };
        match r.u8()? {
            b'B' => {
                let _final_lsn = r.i64()?;
                self.commit_ts = r.i64()?;
                let _xid = r.i32()?;
                self.pending.clear();
            }
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.i64()?;
                let _end_lsn = r.i64()?;
                self.commit_ts = r.i64()?;
                let pending = std::mem::take(&mut self.pending);
                let ts = commit_time(self.commit_ts);
                let mut out = Vec::with_capacity(pending.len());
                for p in pending {
                    out.push(self.change(p.relid, p.kind, p.new, p.old, &ts, type_name)?);
                }
                return Ok(out);
            }
            b'R' => {
                let relid = r.i32()? as u32;
                let schema = r.cstring()?;
                let table = r.cstring()?;
                let _identity = r.u8()?;
                let n = r.i16()?.max(0) as usize;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    let flags = r.u8()?;
                    let name = r.cstring()?;
                    let type_oid = r.i32()? as u32;
                    let _typmod = r.i32()?;
                    columns.push(Column { key: flags & 1 == 1, name, type_oid });
                }
                self.relations.insert(relid, Relation { schema, table, columns });
            }
            b'I' => {
                let relid = r.i32()? as u32;
                let _n = r.u8()?;
                let new = r.tuple()?;
                self.pending.push(Pending { relid, kind: "INSERT", new: Some(new), old: None });
            }
            b'U' => {
                let relid = r.i32()? as u32;
                let mut marker = r.u8()?;
                let mut old = None;
                if marker == b'K' || marker == b'O' {
                    old = Some((marker, r.tuple()?));
                    marker = r.u8()?;
                }
                if marker != b'N' {
                    return Err(DecodeError::UnknownTuple(marker as char));
                }
                let new = r.tuple()?;
                self.pending.push(Pending { relid, kind: "UPDATE", new: Some(new), old });
            }
            b'D' => {
                let relid = r.i32()? as u32;
                let marker = r.u8()?;
                let old = r.tuple()?;
                self.pending.push(Pending { relid, kind: "DELETE", new: None, old: Some((marker, old)) });
            }
            b'Y' | b'O' | b'T' | b'M' => {}
            other => return Err(DecodeError::UnknownMessage(other as char)),
        }
        Ok(Vec::new())
    }

    fn change(
        &self,
        relid: u32,
        kind: &'static str,
        new: Option<Vec<Cell>>,
        old: Option<(u8, Vec<Cell>)>,
        ts: &str,
        type_name: &dyn Fn(u32) -> String,
    ) -> Result<Change, DecodeError> {
        let rel = self.relations.get(&relid).ok_or(DecodeError::UnknownRelation(relid))?;
        let types: Vec<String> = rel.columns.iter().map(|c| type_name(c.type_oid)).collect();
        let to_map = |cells: &[Cell], only_keys: bool| -> Map<String, Value> {
            let mut map = Map::new();
            for ((col, ty), cell) in rel.columns.iter().zip(types.iter()).zip(cells.iter()) {
                if only_keys && !col.key {
                    continue;
                }
                match cell {
                    Cell::Null => {
                        map.insert(col.name.clone(), Value::Null);
                    }
                    Cell::Unchanged => {}
                    Cell::Text(t) => {
                        map.insert(col.name.clone(), to_json(ty, t));
                    }
                }
            }
            map
        };
        let record = new.as_ref().map(|cells| to_map(cells, false));
        let old_record = match (&old, kind) {
            (Some((b'O', cells)), _) => Some(to_map(cells, false)),
            (Some((_, cells)), _) => Some(to_map(cells, true)),
            // UPDATE without a changed key: Realtime still names the row by its key.
            (None, "UPDATE") => new.as_ref().map(|cells| to_map(cells, true)),
            (None, _) => None,
        };
        Ok(Change {
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            kind,
            record,
            old_record,
            columns: rel.columns.iter().zip(types).map(|(c, t)| (c.name.clone(), t)).collect(),
            keys: rel.columns.iter().filter(|c| c.key).map(|c| c.name.clone()).collect(),
            commit_timestamp: ts.to_string(),
            synthetic: false,
        })
    }
}

/// Converts PostgreSQL's text output of a value of type `ty` to JSON as Realtime does.
pub fn to_json(ty: &str, text: &str) -> Value {
    match ty {
        "int2" | "int4" | "int8" | "oid" => {
            text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into()))
        }
        "float4" | "float8" | "numeric" => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.into())),
        "bool" => Value::Bool(text == "t" || text == "true"),
        "json" | "jsonb" => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        "timestamptz" => Value::String(timestamptz(text)),
        "timestamp" => Value::String(text.replacen(' ', "T", 1)),
        array if array.starts_with('_') => match parse_array(text) {
            Some(items) => {
                Value::Array(items.into_iter().map(|i| i.map_or(Value::Null, |t| to_json(&array[1..], &t))).collect())
            }
            None => Value::String(text.into()),
        },
        _ => Value::String(text.into()),
    }
}

/// Elements of a one-dimensional PostgreSQL array literal (`{a,"b c",NULL}`); `None` for anything
/// else (nested arrays, explicit bounds, malformed input), which then stays a string.
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                item.push(c);
                chars.next();
            }
        }
        items.push(if !quoted && item == "NULL" { None } else { Some(item) });
        match chars.next() {
            None => return Some(items),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// `2026-01-01 12:00:00.123456+00` → `2026-01-01T12:00:00.123456+00:00`.
fn timestamptz(text: &str) -> String {
    let t = text.replacen(' ', "T", 1);
    if let Some(i) = t.get(10..).and_then(|tail| tail.rfind(['+', '-'])).map(|i| i + 10) {
        if t.len() - i == 3 {
            return format!("{t}:00");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384i32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "messages");
        m.push(b'd');
        m.extend_from_slice(&3i16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 2950i32), (0, "n", 23), (0, "at", 1184)] {
            m.push(flags);
            cstr(&mut m, name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(out: &mut Vec<u8>, cells: &[Option<&str>]) {
        out.extend_from_slice(&(cells.len() as i16).to_be_bytes());
        for c in cells {
            match c {
                None => out.push(b'n'),
                Some(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    fn types(oid: u32) -> String {
        match oid {
            2950 => "uuid",
            23 => "int4",
            1184 => "timestamptz",
            _ => "text",
        }
        .into()
    }

    #[test]
    fn decodes_a_transaction() {
        let mut d = Decoder::default();
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0i64.to_be_bytes());
        begin.extend_from_slice(&0i64.to_be_bytes());
        begin.extend_from_slice(&7i32.to_be_bytes());
        assert!(d.feed(&begin, &types).expect("begin").is_empty());
        assert!(d.feed(&relation(), &types).expect("rel").is_empty());
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384i32.to_be_bytes());
        insert.push(b'N');
        tuple(
            &mut insert,
            &[Some("c0000000-0000-4000-8000-000000000001"), Some("42"), Some("2026-01-01 12:00:00.5+00")],
        );
        d.feed(&insert, &types).expect("insert");
        let mut delete = vec![b'D'];
        delete.extend_from_slice(&16384i32.to_be_bytes());
        delete.push(b'K');
        tuple(&mut delete, &[Some("c0000000-0000-4000-8000-000000000002"), None, None]);
        d.feed(&delete, &types).expect("delete");
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&0i64.to_be_bytes());
        commit.extend_from_slice(&0i64.to_be_bytes());
        commit.extend_from_slice(&1_000_000i64.to_be_bytes());
        let changes = d.feed(&commit, &types).expect("commit");
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].kind, "INSERT");
        assert_eq!(changes[0].commit_timestamp, "2000-01-01T00:00:01.000Z");
        let rec = changes[0].record.as_ref().expect("record");
        assert_eq!(rec["n"], Value::from(42));
        assert_eq!(rec["at"], Value::from("2026-01-01T12:00:00.5+00:00"));
        assert_eq!(changes[1].kind, "DELETE");
        let old = changes[1].old_record.as_ref().expect("old");
        assert_eq!(old.len(), 1, "key columns only");
        assert_eq!(changes[0].columns[0], ("id".into(), "uuid".into()));
    }

    #[test]
    fn refuses_truncated_and_unknown_input() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(&[], &types), Err(DecodeError::Truncated));
        assert_eq!(d.feed(b"B\0\0", &types), Err(DecodeError::Truncated));
        assert_eq!(d.feed(b"Z", &types), Err(DecodeError::UnknownMessage('Z')));
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&99i32.to_be_bytes());
        insert.push(b'N');
        tuple(&mut insert, &[Some("x")]);
        d.feed(&insert, &types).expect("buffered");
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&[0u8; 24]);
        assert_eq!(d.feed(&commit, &types), Err(DecodeError::UnknownRelation(99)));
    }

    #[test]
    fn converts_values() {
        assert_eq!(to_json("int8", "12"), Value::from(12));
        assert_eq!(to_json("bool", "t"), Value::Bool(true));
        assert_eq!(to_json("jsonb", r#"{"a":1}"#), serde_json::json!({"a":1}));
        assert_eq!(
            to_json("timestamptz", "2026-01-01 12:00:00.123456+00"),
            Value::from("2026-01-01T12:00:00.123456+00:00")
        );
        assert_eq!(to_json("timestamptz", "2026-01-01 12:00:00+05:30"), Value::from("2026-01-01T12:00:00+05:30"));
        assert_eq!(to_json("text", "hi"), Value::from("hi"));
        assert_eq!(to_json("timestamp", "2026-01-01 12:00:00.25"), Value::from("2026-01-01T12:00:00.25"));
        assert_eq!(to_json("numeric", "12.5"), serde_json::json!(12.5));
        assert_eq!(to_json("float8", "NaN"), Value::from("NaN"));
        assert_eq!(to_json("int4", "x"), Value::from("x"));
        assert_eq!(to_json("json", "[1,"), Value::from("[1,"));
        assert_eq!(to_json("_int4", "{1,NULL,3}"), serde_json::json!([1, null, 3]));
        assert_eq!(to_json("_text", r#"{a,"b,c","d\"e","NULL"}"#), serde_json::json!(["a", "b,c", "d\"e", "NULL"]));
        assert_eq!(to_json("_text", "{}"), serde_json::json!([]));
        assert_eq!(to_json("_int4", "{{1,2},{3,4}}"), Value::from("{{1,2},{3,4}}"));
        assert_eq!(to_json("_text", r#"{"open"#), Value::from(r#"{"open"#));
    }

    #[test]
    fn decodes_updates_with_old_tuples_and_unchanged_toast() {
        let mut d = Decoder::default();
        d.feed(&relation(), &types).expect("rel");
        // UPDATE with the old key (K) and an unchanged TOASTed value in the new tuple.
        let mut update = vec![b'U'];
        update.extend_from_slice(&16384i32.to_be_bytes());
        update.push(b'K');
        tuple(&mut update, &[Some("c0000000-0000-4000-8000-000000000001"), None, None]);
        update.push(b'N');
        update.extend_from_slice(&3i16.to_be_bytes());
        update.push(b't');
        update.extend_from_slice(&4i32.to_be_bytes());
        update.extend_from_slice(b"abcd");
        update.push(b'u');
        update.push(b'n');
        d.feed(&update, &types).expect("update K/N");
        // UPDATE under REPLICA IDENTITY FULL (O) and one without an old tuple at all.
        let mut full = vec![b'U'];
        full.extend_from_slice(&16384i32.to_be_bytes());
        full.push(b'O');
        tuple(&mut full, &[Some("x"), Some("1"), None]);
        full.push(b'N');
        tuple(&mut full, &[Some("x"), Some("2"), None]);
        d.feed(&full, &types).expect("update O/N");
        let mut plain = vec![b'U'];
        plain.extend_from_slice(&16384i32.to_be_bytes());
        plain.push(b'N');
        tuple(&mut plain, &[Some("y"), Some("3"), None]);
        d.feed(&plain, &types).expect("update N");
        // Truncate, Origin and Type messages are ignored.
        d.feed(b"T\0\0\0\0", &types).expect("truncate ignored");
        d.feed(b"O\0", &types).expect("origin ignored");
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&[0u8; 16]);
        commit.extend_from_slice(&(-1_000_000i64).to_be_bytes());
        let changes = d.feed(&commit, &types).expect("commit");
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].commit_timestamp, "1999-12-31T23:59:59.000Z");
        let new = changes[0].record.as_ref().expect("record");
        assert_eq!(new.get("n"), None, "unchanged TOAST is omitted");
        assert_eq!(new["at"], Value::Null);
        assert_eq!(changes[0].old_record.as_ref().map(|o| o.len()), Some(1));
        assert_eq!(changes[0].keys, vec!["id".to_string()]);
        let old = changes[1].old_record.as_ref().expect("old");
        assert_eq!((old["id"].clone(), old["n"].clone()), (Value::from("x"), Value::from(1)));
        let old = changes[2].old_record.as_ref().expect("old from the key of the new tuple");
        assert_eq!(old.len(), 1);
        assert_eq!(old["id"], Value::from("y"));
        // A message cut short anywhere is an error, never a panic.
        let mut bad = vec![b'U'];
        bad.extend_from_slice(&16384i32.to_be_bytes());
        bad.push(b'X');
        assert_eq!(d.feed(&bad, &types), Err(DecodeError::UnknownTuple('X')));
        for cut in 1..update.len() {
            assert!(d.feed(&update[..cut], &types).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn serializes_the_data_object_once() {
        let mut d = Decoder::default();
        d.feed(&relation(), &types).expect("rel");
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384i32.to_be_bytes());
        insert.push(b'N');
        tuple(&mut insert, &[Some("a"), Some("1"), None]);
        d.feed(&insert, &types).expect("insert");
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&[0u8; 24]);
        let changes = d.feed(&commit, &types).expect("commit");
        let data: Value = serde_json::from_str(&changes[0].data_json()).expect("json");
        assert_eq!(data["type"], "INSERT");
        assert_eq!(data["record"], serde_json::json!({"id": "a", "n": 1, "at": null}));
        assert_eq!(data["columns"][2], serde_json::json!({"name": "at", "type": "timestamptz"}));
        assert_eq!(data["errors"], Value::Null);
        assert!(data.get("old_record").is_none(), "INSERT has no old_record");
    }
}
