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

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
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
    /// RFC 3339, milliseconds, `Z`.
    pub commit_timestamp: String,
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
    Utc.timestamp_micros(unix)
        .single()
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Turns a stream of pgoutput messages into whole committed transactions' changes.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    pending: Vec<(u32, &'static str, Option<Vec<Cell>>, Option<(u8, Vec<Cell>)>)>,
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
                for (relid, kind, new, old) in pending {
                    out.push(self.change(relid, kind, new, old, &ts, type_name)?);
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
                self.pending.push((relid, "INSERT", Some(new), None));
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
                self.pending.push((relid, "UPDATE", Some(new), old));
            }
            b'D' => {
                let relid = r.i32()? as u32;
                let marker = r.u8()?;
                let old = r.tuple()?;
                self.pending.push((relid, "DELETE", None, Some((marker, old))));
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
            commit_timestamp: ts.to_string(),
        })
    }
}

/// Converts PostgreSQL's text output of a value of type `ty` to JSON as Realtime does.
pub fn to_json(ty: &str, text: &str) -> Value {
    match ty {
        "int2" | "int4" | "int8" | "oid" => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.into())),
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
        _ => Value::String(text.into()),
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

/// The current time as `$now` placeholders and synthetic commit timestamps show it.
pub fn now_micros() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
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
        tuple(&mut insert, &[Some("c0000000-0000-4000-8000-000000000001"), Some("42"), Some("2026-01-01 12:00:00.5+00")]);
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
        assert_eq!(to_json("timestamptz", "2026-01-01 12:00:00.123456+00"), Value::from("2026-01-01T12:00:00.123456+00:00"));
        assert_eq!(to_json("timestamptz", "2026-01-01 12:00:00+05:30"), Value::from("2026-01-01T12:00:00+05:30"));
        assert_eq!(to_json("text", "hi"), Value::from("hi"));
    }
}
