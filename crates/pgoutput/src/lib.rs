//! pgoutput: PostgreSQL's logical replication messages (protocol version 1), as returned by
//! `pg_logical_slot_get_binary_changes` / `pg_logical_slot_peek_binary_changes`, decoded into
//! whole committed transactions (Begin, Relation, Insert, Update, Delete, Commit) with their commit
//! time, commit LSN and end LSN, each row as column name → JSON value ([`to_json`]).
//!
//! Shared by the gateway's PostgreSQL backend (`src/feed/postgres/`) and the Realtime stand-in's
//! change feed, which shape the rows as each needs. Pure and small: bytes in, transactions out,
//! no I/O, no async runtime. A malformed or truncated message is an error, never a panic. Owns
//! the relation cache (pgoutput sends a Relation message before the first change of a table in
//! every decoding session) and the text-to-JSON conversion of values. Never touches the database
//! and never decides who sees a change.

mod value;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

pub use value::to_json;

/// A row: column name → value converted to JSON.
pub type Row = Map<String, Value>;

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

/// A table as its latest Relation message described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's name (`uuid`, `int4`, `_text`...); `text` when the oid was not known.
    pub type_name: String,
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    /// `INSERT`, `UPDATE` or `DELETE`, as Realtime names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// One row change of a committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub relation: Arc<Relation>,
    pub kind: ChangeKind,
    /// The new row (INSERT, UPDATE); unchanged TOASTed values are left out.
    pub record: Option<Row>,
    /// DELETE and UPDATE: the whole old row under REPLICA IDENTITY FULL, else its key columns
    /// (for an UPDATE that did not change the key, the key of the new row, as Realtime names it).
    pub old_record: Option<Row>,
}

/// One committed transaction of the publication.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The position of the commit record.
    pub commit_lsn: u64,
    /// The end of the commit record: confirming this position skips this transaction next time.
    pub end_lsn: u64,
    pub committed: DateTime<Utc>,
    /// The transaction's id (32 bits, as pgoutput's Begin carries it).
    pub xid: u32,
    /// In the transaction's order.
    pub changes: Vec<RowChange>,
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
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
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
    kind: ChangeKind,
    new: Option<Vec<Cell>>,
    /// The old tuple and its kind: `K` (key columns only) or `O` (the whole row).
    old: Option<(u8, Vec<Cell>)>,
}

/// Turns a stream of pgoutput messages into whole committed transactions.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    pending: Vec<Pending>,
    xid: u32,
}

impl Decoder {
    /// Feeds one message; returns the transaction when it is a Commit. `types` maps type oids
    /// to names (e.g. 2950 → "uuid"), read when a Relation message arrives; unknown oids read
    /// as text.
    pub fn feed(&mut self, message: &[u8], types: &HashMap<u32, String>) -> Result<Option<Transaction>, DecodeError> {
        let mut r = Reader { buf: message, pos: 0 };
        match r.u8()? {
            b'B' => {
                let _final_lsn = r.i64()?;
                let _commit_ts = r.i64()?;
                self.xid = r.i32()? as u32;
                self.pending.clear();
            }
            b'C' => {
                let _flags = r.u8()?;
                let commit_lsn = r.i64()? as u64;
                let end_lsn = r.i64()? as u64;
                let committed = commit_time(r.i64()?);
                let pending = std::mem::take(&mut self.pending);
                let changes = pending.into_iter().map(|p| self.change(p)).collect::<Result<_, _>>()?;
                return Ok(Some(Transaction { commit_lsn, end_lsn, committed, xid: self.xid, changes }));
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
                    let type_name = types.get(&type_oid).cloned().unwrap_or_else(|| "text".into());
                    columns.push(Column { name, type_name, key: flags & 1 == 1 });
                }
                self.relations.insert(relid, Arc::new(Relation { schema, table, columns }));
            }
            b'I' => {
                let relid = r.i32()? as u32;
                let _new_marker = r.u8()?;
                let new = r.tuple()?;
                self.pending.push(Pending { relid, kind: ChangeKind::Insert, new: Some(new), old: None });
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
                self.pending.push(Pending { relid, kind: ChangeKind::Update, new: Some(new), old });
            }
            b'D' => {
                let relid = r.i32()? as u32;
                let marker = r.u8()?;
                let old = r.tuple()?;
                self.pending.push(Pending { relid, kind: ChangeKind::Delete, new: None, old: Some((marker, old)) });
            }
            // Type, Origin, Truncate, logical Message: no row change to report.
            b'Y' | b'O' | b'T' | b'M' => {}
            other => return Err(DecodeError::UnknownMessage(other as char)),
        }
        Ok(None)
    }

    fn change(&self, p: Pending) -> Result<RowChange, DecodeError> {
        let relation = self.relations.get(&p.relid).ok_or(DecodeError::UnknownRelation(p.relid))?;
        let to_row = |cells: &[Cell], only_keys: bool| -> Row {
            let mut row = Map::new();
            for (col, cell) in relation.columns.iter().zip(cells.iter()) {
                if only_keys && !col.key {
                    continue;
                }
                match cell {
                    Cell::Null => {
                        row.insert(col.name.clone(), Value::Null);
                    }
                    Cell::Unchanged => {}
                    Cell::Text(t) => {
                        row.insert(col.name.clone(), to_json(&col.type_name, t));
                    }
                }
            }
            row
        };
        let record = p.new.as_deref().map(|cells| to_row(cells, false));
        let old_record = match (&p.old, p.kind) {
            (Some((b'O', cells)), _) => Some(to_row(cells, false)),
            (Some((_, cells)), _) => Some(to_row(cells, true)),
            // UPDATE without a changed key: Realtime still names the row by its key.
            (None, ChangeKind::Update) => p.new.as_deref().map(|cells| to_row(cells, true)),
            (None, _) => None,
        };
        Ok(RowChange { relation: Arc::clone(relation), kind: p.kind, record, old_record })
    }
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
mod tests;
