//! pgoutput: PostgreSQL's logical replication protocol messages (protocol version 1), decoded into
//! whole committed transactions whose changes are shaped like Supabase Realtime's
//! `postgres_changes` payloads, so [`crate::upstream::decode_change`] turns them into the very
//! same events the Supabase upstream produces.
//!
//! Pure and unit-tested: bytes in, transactions out. A malformed or truncated message is an
//! error, never a panic. Owns the relation cache (pgoutput sends a Relation message before the
//! first change of a table in every decoding session) and the text-to-JSON conversion of values
//! (as Realtime converts them). Never touches the database and never decides who sees a change.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Number, Value};

/// Why a pgoutput message could not be decoded.
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

/// One committed transaction of the publication.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The end of the commit record: confirming this position skips this transaction next time.
    pub end_lsn: u64,
    pub committed: DateTime<Utc>,
    /// `{"data": {schema, table, type, commit_timestamp, record, old_record, errors}}` per change,
    /// in the transaction's order.
    pub payloads: Vec<Value>,
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
        self.take(1)?.first().copied().ok_or(DecodeError::Truncated)
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
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
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
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => return Err(DecodeError::UnknownTuple(other as char)),
            });
        }
        Ok(cells)
    }
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn commit_time(pg_micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(pg_micros.saturating_add(PG_EPOCH_MICROS)).single().unwrap_or_else(Utc::now)
}

/// A row change of the open transaction, kept until its Commit.
struct Pending {
    relid: u32,
    kind: &'static str,
    new: Option<Vec<Cell>>,
    /// The old tuple and its kind: `K` (key columns only) or `O` (the whole row).
    old: Option<(u8, Vec<Cell>)>,
}

/// Turns a stream of pgoutput messages into whole committed transactions.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    pending: Vec<Pending>,
}

impl Decoder {
    /// Feeds one message; returns the transaction when it is a Commit. `types` maps type oids
    /// to names (e.g. 2950 → "uuid"); unknown oids read as text.
    pub fn feed(&mut self, message: &[u8], types: &HashMap<u32, String>) -> Result<Option<Transaction>, DecodeError> {
        let mut r = Reader { buf: message, pos: 0 };
        match r.u8()? {
            b'B' => {
                let _final_lsn = r.i64()?;
                let _commit_ts = r.i64()?;
                let _xid = r.i32()?;
                self.pending.clear();
            }
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.i64()?;
                let end_lsn = r.i64()? as u64;
                let committed = commit_time(r.i64()?);
                let ts = committed.to_rfc3339_opts(SecondsFormat::Micros, true);
                let pending = std::mem::take(&mut self.pending);
                let mut payloads = Vec::with_capacity(pending.len());
                for p in pending {
                    payloads.push(self.payload(p, &ts, types)?);
                }
                return Ok(Some(Transaction { end_lsn, committed, payloads }));
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
                let _new_marker = r.u8()?;
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
            // Type, Origin, Truncate, logical Message: nothing the gateway routes.
            b'Y' | b'O' | b'T' | b'M' => {}
            other => return Err(DecodeError::UnknownMessage(other as char)),
        }
        Ok(None)
    }

    fn payload(&self, p: Pending, ts: &str, types: &HashMap<u32, String>) -> Result<Value, DecodeError> {
        let rel = self.relations.get(&p.relid).ok_or(DecodeError::UnknownRelation(p.relid))?;
        let to_map = |cells: &[Cell], only_keys: bool| -> Value {
            let mut map = Map::new();
            for (col, cell) in rel.columns.iter().zip(cells.iter()) {
                if only_keys && !col.key {
                    continue;
                }
                let ty = types.get(&col.type_oid).map_or("text", String::as_str);
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
            Value::Object(map)
        };
        let record = p.new.as_deref().map_or(Value::Null, |cells| to_map(cells, false));
        let old_record = match (&p.old, p.kind) {
            (Some((b'O', cells)), _) => to_map(cells, false),
            (Some((_, cells)), _) => to_map(cells, true),
            // UPDATE without a changed key: Realtime still names the row by its key.
            (None, "UPDATE") => p.new.as_deref().map_or(Value::Null, |cells| to_map(cells, true)),
            (None, _) => Value::Null,
        };
        Ok(json!({"data": {
            "schema": rel.schema, "table": rel.table, "type": p.kind, "commit_timestamp": ts,
            "record": record, "old_record": old_record, "errors": null,
        }}))
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

/// `16/B374D848` → its 64-bit position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A 64-bit position as PostgreSQL writes a `pg_lsn`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{decode_change, UpstreamEvent};

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn types() -> HashMap<u32, String> {
        [(2950, "uuid"), (25, "text"), (1184, "timestamptz")].into_iter().map(|(o, n)| (o, n.to_string())).collect()
    }

    fn relation(relid: i32, table: &str, cols: &[(u8, &str, i32)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&relid.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, table);
        m.push(b'd');
        m.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (flags, name, oid) in cols {
            m.push(*flags);
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

    fn commit(end_lsn: i64, ts: i64) -> Vec<u8> {
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&0i64.to_be_bytes());
        c.extend_from_slice(&end_lsn.to_be_bytes());
        c.extend_from_slice(&ts.to_be_bytes());
        c
    }

    const T: &str = "b0000000-0000-4000-8000-000000000001";
    const U: &str = "a0000000-0000-4000-8000-000000000001";

    #[test]
    fn a_message_insert_becomes_the_same_event_as_from_realtime() {
        let mut d = Decoder::default();
        let cols = [
            (1, "id", 2950),
            (0, "thread_id", 2950),
            (0, "sender_id", 2950),
            (0, "content", 25),
            (0, "message_type", 25),
            (0, "created_at", 1184),
        ];
        d.feed(&relation(7, "messages", &cols), &types()).expect("relation");
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&7i32.to_be_bytes());
        insert.push(b'N');
        tuple(&mut insert, &[Some(T), Some(T), Some(U), Some("hi"), Some("text"), Some("2026-01-01 12:00:00.5+00")]);
        assert_eq!(d.feed(&insert, &types()), Ok(None));
        let tx = d.feed(&commit(0x1_0000_0010, 1_000_000), &types()).expect("commit").expect("a transaction");
        assert_eq!(tx.end_lsn, 0x1_0000_0010);
        assert_eq!(tx.committed.timestamp(), 946_684_801);
        let events = decode_change(&tx.payloads[0]);
        match &events[..] {
            [UpstreamEvent::Message { row, committed: Some(_) }] => {
                assert_eq!((row.content.as_str(), row.created_at.as_str()), ("hi", "2026-01-01T12:00:00.5+00:00"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_participant_removal_names_its_key() {
        let mut d = Decoder::default();
        d.feed(
            &relation(8, "thread_participants", &[(1, "thread_id", 2950), (1, "user_id", 2950), (0, "x", 25)]),
            &types(),
        )
        .expect("relation");
        let mut delete = vec![b'D'];
        delete.extend_from_slice(&8i32.to_be_bytes());
        delete.push(b'K');
        tuple(&mut delete, &[Some(T), Some(U), None]);
        d.feed(&delete, &types()).expect("delete");
        let tx = d.feed(&commit(5, 0), &types()).expect("commit").expect("a transaction");
        assert!(matches!(&decode_change(&tx.payloads[0])[..], [UpstreamEvent::Membership { present: false, .. }]));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(&[], &types()), Err(DecodeError::Truncated));
        assert_eq!(d.feed(b"Z", &types()), Err(DecodeError::UnknownMessage('Z')));
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&99i32.to_be_bytes());
        insert.push(b'N');
        tuple(&mut insert, &[Some("x")]);
        for cut in 1..insert.len() {
            assert!(d.feed(&insert[..cut], &types()).is_err(), "cut at {cut}");
        }
        d.feed(&insert, &types()).expect("buffered until commit");
        assert_eq!(d.feed(&commit(1, 0), &types()), Err(DecodeError::UnknownRelation(99)));
    }

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
