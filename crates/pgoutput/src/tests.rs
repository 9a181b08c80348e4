//! The decoder against hand-built pgoutput messages.

use chrono::SecondsFormat;

use super::*;

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn types() -> HashMap<u32, String> {
    [(2950, "uuid"), (23, "int4"), (25, "text"), (1184, "timestamptz")]
        .into_iter()
        .map(|(o, n)| (o, n.to_string()))
        .collect()
}

fn relation_of(relid: i32, table: &str, cols: &[(u8, &str, i32)]) -> Vec<u8> {
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

/// `public.messages (id uuid key, n int4, at timestamptz)` as relation 16384.
fn relation() -> Vec<u8> {
    relation_of(16384, "messages", &[(1, "id", 2950), (0, "n", 23), (0, "at", 1184)])
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

fn commit(commit_lsn: i64, end_lsn: i64, ts: i64) -> Vec<u8> {
    let mut c = vec![b'C', 0];
    c.extend_from_slice(&commit_lsn.to_be_bytes());
    c.extend_from_slice(&end_lsn.to_be_bytes());
    c.extend_from_slice(&ts.to_be_bytes());
    c
}

fn millis(tx: &Transaction) -> String {
    tx.committed.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[test]
fn decodes_a_transaction() {
    let mut d = Decoder::default();
    let mut begin = vec![b'B'];
    begin.extend_from_slice(&0i64.to_be_bytes());
    begin.extend_from_slice(&0i64.to_be_bytes());
    begin.extend_from_slice(&7i32.to_be_bytes());
    assert!(d.feed(&begin, &types()).expect("begin").is_none());
    assert!(d.feed(&relation(), &types()).expect("rel").is_none());
    let mut insert = vec![b'I'];
    insert.extend_from_slice(&16384i32.to_be_bytes());
    insert.push(b'N');
    tuple(&mut insert, &[Some("c0000000-0000-4000-8000-000000000001"), Some("42"), Some("2026-01-01 12:00:00.5+00")]);
    assert_eq!(d.feed(&insert, &types()), Ok(None));
    let mut delete = vec![b'D'];
    delete.extend_from_slice(&16384i32.to_be_bytes());
    delete.push(b'K');
    tuple(&mut delete, &[Some("c0000000-0000-4000-8000-000000000002"), None, None]);
    d.feed(&delete, &types()).expect("delete");
    let tx =
        d.feed(&commit(0x1_0000_0000, 0x1_0000_0010, 1_000_000), &types()).expect("commit").expect("a transaction");
    assert_eq!((tx.commit_lsn, tx.end_lsn), (0x1_0000_0000, 0x1_0000_0010));
    assert_eq!(tx.xid, 7, "the Begin's transaction id");
    assert_eq!(tx.committed.timestamp(), 946_684_801);
    assert_eq!(millis(&tx), "2000-01-01T00:00:01.000Z");
    let changes = &tx.changes;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].kind.as_str(), "INSERT");
    assert_eq!((changes[0].relation.schema.as_str(), changes[0].relation.table.as_str()), ("public", "messages"));
    let rec = changes[0].record.as_ref().expect("record");
    assert_eq!(rec["n"], Value::from(42));
    assert_eq!(rec["at"], Value::from("2026-01-01T12:00:00.5+00:00"));
    assert_eq!(changes[0].old_record, None);
    assert_eq!(changes[1].kind, ChangeKind::Delete);
    assert_eq!(changes[1].record, None);
    let old = changes[1].old_record.as_ref().expect("old");
    assert_eq!(old.len(), 1, "key columns only");
    let id = &changes[0].relation.columns[0];
    assert_eq!((id.name.as_str(), id.type_name.as_str(), id.key), ("id", "uuid", true));
}

#[test]
fn unknown_type_oids_read_as_text() {
    let mut d = Decoder::default();
    d.feed(&relation_of(9, "t", &[(0, "x", 999_999)]), &types()).expect("rel");
    let mut insert = vec![b'I'];
    insert.extend_from_slice(&9i32.to_be_bytes());
    insert.push(b'N');
    tuple(&mut insert, &[Some("42")]);
    d.feed(&insert, &types()).expect("insert");
    let tx = d.feed(&commit(0, 1, 0), &types()).expect("commit").expect("a transaction");
    assert_eq!(tx.changes[0].relation.columns[0].type_name, "text");
    assert_eq!(tx.changes[0].record.as_ref().map(|r| r["x"].clone()), Some(Value::from("42")));
}

#[test]
fn refuses_truncated_and_unknown_input() {
    let mut d = Decoder::default();
    assert_eq!(d.feed(&[], &types()), Err(DecodeError::Truncated));
    assert_eq!(d.feed(b"B\0\0", &types()), Err(DecodeError::Truncated));
    assert_eq!(d.feed(b"Z", &types()), Err(DecodeError::UnknownMessage('Z')));
    let mut insert = vec![b'I'];
    insert.extend_from_slice(&99i32.to_be_bytes());
    insert.push(b'N');
    tuple(&mut insert, &[Some("x")]);
    for cut in 1..insert.len() {
        assert!(d.feed(&insert[..cut], &types()).is_err(), "cut at {cut}");
    }
    d.feed(&insert, &types()).expect("buffered until commit");
    assert_eq!(d.feed(&commit(0, 1, 0), &types()), Err(DecodeError::UnknownRelation(99)));
    let mut commit = vec![b'C', 0];
    commit.extend_from_slice(&[0u8; 24]);
    assert_eq!(
        d.feed(&commit, &types()),
        Ok(Some(Transaction { commit_lsn: 0, end_lsn: 0, committed: commit_time(0), xid: 0, changes: Vec::new() }))
    );
}

#[test]
fn decodes_updates_with_old_tuples_and_unchanged_toast() {
    let mut d = Decoder::default();
    d.feed(&relation(), &types()).expect("rel");
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
    d.feed(&update, &types()).expect("update K/N");
    // UPDATE under REPLICA IDENTITY FULL (O) and one without an old tuple at all.
    let mut full = vec![b'U'];
    full.extend_from_slice(&16384i32.to_be_bytes());
    full.push(b'O');
    tuple(&mut full, &[Some("x"), Some("1"), None]);
    full.push(b'N');
    tuple(&mut full, &[Some("x"), Some("2"), None]);
    d.feed(&full, &types()).expect("update O/N");
    let mut plain = vec![b'U'];
    plain.extend_from_slice(&16384i32.to_be_bytes());
    plain.push(b'N');
    tuple(&mut plain, &[Some("y"), Some("3"), None]);
    d.feed(&plain, &types()).expect("update N");
    // Truncate, Origin and Type messages are ignored.
    d.feed(b"T\0\0\0\0", &types()).expect("truncate ignored");
    d.feed(b"O\0", &types()).expect("origin ignored");
    let tx = d.feed(&commit(0, 0, -1_000_000), &types()).expect("commit").expect("a transaction");
    let changes = &tx.changes;
    assert_eq!(changes.len(), 3);
    assert_eq!(millis(&tx), "1999-12-31T23:59:59.000Z");
    let new = changes[0].record.as_ref().expect("record");
    assert_eq!(new.get("n"), None, "unchanged TOAST is omitted");
    assert_eq!(new["at"], Value::Null);
    assert_eq!(changes[0].old_record.as_ref().map(|o| o.len()), Some(1));
    let keys: Vec<&str> = changes[0].relation.columns.iter().filter(|c| c.key).map(|c| c.name.as_str()).collect();
    assert_eq!(keys, vec!["id"]);
    let old = changes[1].old_record.as_ref().expect("old");
    assert_eq!((old["id"].clone(), old["n"].clone()), (Value::from("x"), Value::from(1)));
    let old = changes[2].old_record.as_ref().expect("old from the key of the new tuple");
    assert_eq!(old.len(), 1);
    assert_eq!(old["id"], Value::from("y"));
    // A message cut short anywhere is an error, never a panic.
    let mut bad = vec![b'U'];
    bad.extend_from_slice(&16384i32.to_be_bytes());
    bad.push(b'X');
    assert_eq!(d.feed(&bad, &types()), Err(DecodeError::UnknownTuple('X')));
    for cut in 1..update.len() {
        assert!(d.feed(&update[..cut], &types()).is_err(), "cut at {cut}");
    }
}

#[test]
fn lsn_text_round_trips() {
    assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    assert_eq!(parse_lsn("0/0"), Some(0));
    assert_eq!(parse_lsn("nope"), None);
}
