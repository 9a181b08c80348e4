//! One Realtime client socket: the Phoenix channel protocol state machine.
//!
//! Owns heartbeats, `phx_join` with `postgres_changes` bindings (token check, publication check,
//! the reply echoing bindings with ids, `presence_state`, the `system` "Subscribed to PostgreSQL"
//! message), `access_token` refresh and expiry, `phx_leave`, and writing what the feed routes to
//! it through a bounded queue. A socket that cannot keep up is dropped; it never slows the feed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use warp::ws::{Message, WebSocket};

use super::feed::Change;
use super::frame::{decode, encode, Frame, Vsn};
use super::Shared;
use crate::keys::{now_secs, KeyError};

/// One `postgres_changes` binding of a joined channel.
#[derive(Debug, Clone)]
pub struct Binding {
    pub id: i64,
    pub event: String,
    pub schema: String,
    pub table: Option<String>,
    pub filter: Option<(String, String, String)>,
}

/// A joined channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub topic: String,
    pub join_ref: Option<String>,
    pub bindings: Vec<Binding>,
    pub token_exp: i64,
}

/// What the feed needs to route to a socket.
pub struct SocketHandle {
    pub vsn: Vsn,
    pub channels: Mutex<Vec<Channel>>,
    pub tx: mpsc::Sender<String>,
    pub kill: Notify,
}

fn binding_id(event: &str, schema: &str, table: Option<&str>, filter: Option<&str>) -> i64 {
    // Stable per binding, like Realtime's phash2 of the binding.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [event, schema, table.unwrap_or(""), filter.unwrap_or("")] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (h % 134_217_727) as i64
}

/// Parses `col=op.value`.
fn parse_filter(filter: &str) -> Option<(String, String, String)> {
    let (col, rest) = filter.split_once('=')?;
    let (op, value) = rest.split_once('.')?;
    if !matches!(op, "eq" | "neq" | "lt" | "lte" | "gt" | "gte" | "in") || col.is_empty() {
        return None;
    }
    Some((col.to_string(), op.to_string(), value.to_string()))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn filter_matches(filter: &(String, String, String), row: Option<&Map<String, Value>>) -> bool {
    let Some(row) = row else { return false };
    let Some(value) = row.get(&filter.0) else { return false };
    let actual = text_of(value);
    let want = &filter.2;
    let cmp = || match (actual.parse::<f64>(), want.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(actual.as_str().cmp(want.as_str())),
    };
    match filter.1.as_str() {
        "eq" => &actual == want,
        "neq" => &actual != want,
        "lt" => cmp() == Some(std::cmp::Ordering::Less),
        "lte" => matches!(cmp(), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
        "gt" => cmp() == Some(std::cmp::Ordering::Greater),
        "gte" => matches!(cmp(), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
        "in" => want
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .any(|v| v.trim().trim_matches('"') == actual),
        _ => false,
    }
}

impl Binding {
    pub fn matches(&self, change: &Change) -> bool {
        (self.event == "*" || self.event == change.kind)
            && self.schema == change.schema
            && self.table.as_deref().is_none_or(|t| t == change.table)
            && self.filter.as_ref().is_none_or(|f| {
                let row = if change.kind == "DELETE" { change.old_record.as_ref() } else { change.record.as_ref() };
                filter_matches(f, row)
            })
    }
}

/// The `postgres_changes` push of a change to one channel, or None if no binding matches.
pub fn change_frame(channel: &Channel, change: &Change, vsn: Vsn) -> Option<String> {
    let ids: Vec<i64> = channel.bindings.iter().filter(|b| b.matches(change)).map(|b| b.id).collect();
    if ids.is_empty() {
        return None;
    }
    let columns: Vec<Value> = change.columns.iter().map(|(n, t)| json!({"name": n, "type": t})).collect();
    let mut data = json!({
        "schema": change.schema, "table": change.table, "commit_timestamp": change.commit_timestamp,
        "type": change.kind, "columns": columns, "errors": null,
    });
    if let Some(record) = &change.record {
        data["record"] = Value::Object(record.clone());
    }
    if let Some(old) = &change.old_record {
        data["old_record"] = Value::Object(old.clone());
    }
    let frame = Frame {
        join_ref: channel.join_ref.clone(),
        reference: None,
        topic: channel.topic.clone(),
        event: "postgres_changes".into(),
        payload: json!({"ids": ids, "data": data}),
    };
    Some(encode(&frame, vsn))
}

fn reply(frame: &Frame, status: &str, response: Value) -> Frame {
    Frame {
        join_ref: frame.join_ref.clone(),
        reference: frame.reference.clone(),
        topic: frame.topic.clone(),
        event: "phx_reply".into(),
        payload: json!({"status": status, "response": response}),
    }
}

fn push(topic: &str, join_ref: Option<String>, event: &str, payload: Value) -> Frame {
    Frame { join_ref, reference: None, topic: topic.into(), event: event.into(), payload }
}

/// Serves one upgraded socket until it closes or is dropped.
pub async fn serve(ws: WebSocket, shared: Arc<Shared>, vsn: Vsn, apikey: String) {
    let (tx, mut rx) = mpsc::channel::<String>(16_384);
    let handle = Arc::new(SocketHandle { vsn, channels: Mutex::new(Vec::new()), tx: tx.clone(), kill: Notify::new() });
    let id = shared.next_socket.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut sockets) = shared.sockets.lock() {
        sockets.insert(id, handle.clone());
    }
    let (mut sink, mut stream) = ws.split();
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = handle.kill.notified() => break,
            out = rx.recv() => match out {
                Some(text) => {
                    if sink.feed(Message::text(text)).await.is_err() { break; }
                    let mut more = 0;
                    while more < 256 {
                        match rx.try_recv() {
                            Ok(text) => { if sink.feed(Message::text(text)).await.is_err() { break; } more += 1; }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() { break; }
                }
                None => break,
            },
            incoming = stream.next() => match incoming {
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    if message.is_close() { break; }
                    let Ok(text) = message.to_str() else { continue };
                    match decode(text, vsn) {
                        Ok(frame) => {
                            for out in handle_frame(&shared, &handle, frame, &apikey).await {
                                if sink.send(Message::text(encode(&out, vsn))).await.is_err() { break; }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "ignoring malformed frame"),
                    }
                }
                Some(Err(_)) | None => break,
            },
            _ = tick.tick() => {
                let timeout = Duration::from_millis(shared.heartbeat_timeout_ms.load(Ordering::Relaxed));
                if last_heard.elapsed() > timeout {
                    tracing::info!("closing a silent socket (no heartbeat)");
                    break;
                }
                let now = now_secs();
                let expired: Vec<Channel> = handle.channels.lock().map(|mut chans| {
                    let (gone, keep): (Vec<Channel>, Vec<Channel>) = chans.drain(..).partition(|c| c.token_exp <= now);
                    *chans = keep;
                    gone
                }).unwrap_or_default();
                for channel in expired {
                    let seconds = now - channel.token_exp;
                    let system = push(&channel.topic, channel.join_ref.clone(), "system", json!({
                        "message": format!("Token has expired {seconds} seconds ago"), "status": "error",
                        "extension": "system", "channel": channel.topic.trim_start_matches("realtime:"),
                    }));
                    let close = push(&channel.topic, channel.join_ref.clone(), "phx_close", json!({}));
                    let _ = sink.send(Message::text(encode(&system, vsn))).await;
                    let _ = sink.send(Message::text(encode(&close, vsn))).await;
                }
            }
        }
    }
    if let Ok(mut sockets) = shared.sockets.lock() {
        sockets.remove(&id);
    }
    let _ = sink.close().await;
}

async fn handle_frame(shared: &Arc<Shared>, handle: &Arc<SocketHandle>, frame: Frame, apikey: &str) -> Vec<Frame> {
    match (frame.topic.as_str(), frame.event.as_str()) {
        ("phoenix", "heartbeat") => vec![reply(&frame, "ok", json!({}))],
        (_, "phx_join") => join(shared, handle, &frame, apikey).await,
        (_, "phx_leave") => {
            let removed = handle
                .channels
                .lock()
                .map(|mut chans| {
                    let before = chans.len();
                    chans.retain(|c| c.topic != frame.topic);
                    before != chans.len()
                })
                .unwrap_or(false);
            if removed {
                vec![reply(&frame, "ok", json!({})), push(&frame.topic, frame.join_ref.clone(), "phx_close", json!({}))]
            } else {
                vec![reply(&frame, "error", json!({"reason": "unmatched topic"}))]
            }
        }
        (_, "access_token") => {
            let token = frame.payload.get("access_token").and_then(Value::as_str).unwrap_or_default().to_string();
            match shared.keys.verify(&token) {
                Ok(claims) => {
                    if let Ok(mut chans) = handle.channels.lock() {
                        for c in chans.iter_mut().filter(|c| c.topic == frame.topic) {
                            c.token_exp = claims.exp;
                        }
                    }
                    Vec::new()
                }
                Err(e) => {
                    let removed = handle
                        .channels
                        .lock()
                        .map(|mut chans| {
                            let before = chans.len();
                            chans.retain(|c| c.topic != frame.topic);
                            before != chans.len()
                        })
                        .unwrap_or(false);
                    if !removed {
                        return Vec::new();
                    }
                    let message = match e {
                        KeyError::Expired => "Token has expired".to_string(),
                        KeyError::Invalid(m) => format!("Invalid token: {m}"),
                    };
                    vec![
                        push(&frame.topic, frame.join_ref.clone(), "system", json!({"message": message, "status": "error", "extension": "system", "channel": frame.topic.trim_start_matches("realtime:")})),
                        push(&frame.topic, frame.join_ref.clone(), "phx_close", json!({})),
                    ]
                }
            }
        }
        _ => {
            let joined = handle.channels.lock().map(|c| c.iter().any(|c| c.topic == frame.topic)).unwrap_or(false);
            if joined {
                // Broadcast and presence are not part of this stand-in: acknowledge and ignore.
                vec![reply(&frame, "ok", json!({}))]
            } else {
                vec![reply(&frame, "error", json!({"reason": "unmatched topic"}))]
            }
        }
    }
}

async fn join(shared: &Arc<Shared>, handle: &Arc<SocketHandle>, frame: &Frame, apikey: &str) -> Vec<Frame> {
    let error = |reason: String| vec![reply(frame, "error", json!({"reason": reason}))];
    if !frame.topic.starts_with("realtime:") {
        return error("unmatched topic".into());
    }
    if shared.refuse_joins.load(Ordering::Relaxed) {
        return error("Realtime was unable to connect to the project database".into());
    }
    let token = frame.payload.get("access_token").and_then(Value::as_str).unwrap_or(apikey);
    let claims = match shared.keys.verify(token) {
        Ok(c) => c,
        Err(KeyError::Expired) => return error("Token has expired 0 seconds ago".into()),
        Err(KeyError::Invalid(m)) => return error(format!("Invalid JWT: {m}")),
    };
    let requested = frame
        .payload
        .pointer("/config/postgres_changes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let published = match shared.published_tables().await {
        Ok(p) => p,
        Err(e) => return error(format!("Realtime was unable to connect to the project database: {e}")),
    };
    let mut bindings = Vec::new();
    let mut echoed = Vec::new();
    for spec in &requested {
        let event = spec.get("event").and_then(Value::as_str).unwrap_or("*").to_uppercase();
        let schema = spec.get("schema").and_then(Value::as_str).unwrap_or("public").to_string();
        let table = spec.get("table").and_then(Value::as_str).map(str::to_string);
        let filter_text = spec.get("filter").and_then(Value::as_str).map(str::to_string);
        let filter = filter_text.as_deref().map(parse_filter);
        let table_ok = match &table {
            Some(t) if t != "*" => published.contains(&(schema.clone(), t.clone())),
            _ => published.iter().any(|(s, _)| *s == schema),
        };
        if !table_ok || matches!(filter, Some(None)) || !matches!(event.as_str(), "INSERT" | "UPDATE" | "DELETE" | "*") {
            let filters = filter_text.map(|f| format!("[{f}]")).unwrap_or_else(|| "[]".into());
            return error(format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [schema: {schema}, table: {}, filters: {filters}]",
                table.as_deref().unwrap_or("*")
            ));
        }
        let id = binding_id(&event, &schema, table.as_deref(), filter_text.as_deref());
        let mut echo = spec.as_object().cloned().unwrap_or_default();
        echo.insert("id".into(), json!(id));
        echoed.push(Value::Object(echo));
        bindings.push(Binding {
            id,
            event,
            schema,
            table: table.filter(|t| t != "*"),
            filter: filter.flatten(),
        });
    }
    let channel = Channel { topic: frame.topic.clone(), join_ref: frame.join_ref.clone(), bindings, token_exp: claims.exp };
    if let Ok(mut chans) = handle.channels.lock() {
        chans.retain(|c| c.topic != frame.topic);
        chans.push(channel);
    }
    let name = frame.topic.trim_start_matches("realtime:").to_string();
    let mut out = vec![
        reply(frame, "ok", json!({"postgres_changes": echoed})),
        push(&frame.topic, frame.join_ref.clone(), "presence_state", json!({})),
    ];
    if !requested.is_empty() {
        out.push(push(
            &frame.topic,
            frame.join_ref.clone(),
            "system",
            json!({"status": "ok", "extension": "postgres_changes", "message": "Subscribed to PostgreSQL", "channel": name}),
        ));
    }
    out
}

/// Joined channels of all sockets, for tests and stats.
pub fn channel_count(sockets: &HashMap<u64, Arc<SocketHandle>>) -> usize {
    sockets.values().map(|s| s.channels.lock().map(|c| c.len()).unwrap_or(0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &'static str, thread: &str) -> Change {
        let mut record = Map::new();
        record.insert("thread_id".into(), json!(thread));
        record.insert("n".into(), json!(5));
        Change {
            schema: "public".into(),
            table: "messages".into(),
            kind,
            record: Some(record.clone()),
            old_record: Some(record),
            columns: vec![("thread_id".into(), "uuid".into())],
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn bindings_match_event_table_and_filter() {
        let b = |event: &str, table: Option<&str>, filter: Option<&str>| Binding {
            id: 1,
            event: event.into(),
            schema: "public".into(),
            table: table.map(str::to_string),
            filter: filter.and_then(parse_filter),
        };
        assert!(b("INSERT", Some("messages"), None).matches(&change("INSERT", "a")));
        assert!(!b("INSERT", Some("messages"), None).matches(&change("DELETE", "a")));
        assert!(b("*", None, None).matches(&change("UPDATE", "a")));
        assert!(!b("*", Some("threads"), None).matches(&change("UPDATE", "a")));
        assert!(b("INSERT", Some("messages"), Some("thread_id=eq.a")).matches(&change("INSERT", "a")));
        assert!(!b("INSERT", Some("messages"), Some("thread_id=eq.a")).matches(&change("INSERT", "b")));
        assert!(b("INSERT", Some("messages"), Some("thread_id=in.(b,a)")).matches(&change("INSERT", "a")));
        assert!(b("INSERT", Some("messages"), Some("n=gt.4")).matches(&change("INSERT", "a")));
        assert!(!b("INSERT", Some("messages"), Some("n=lt.5")).matches(&change("INSERT", "a")));
        assert_eq!(parse_filter("thread_id=like.x"), None);
    }

    #[test]
    fn push_frame_carries_ids_and_data() {
        let channel = Channel {
            topic: "realtime:x".into(),
            join_ref: Some("1".into()),
            bindings: vec![Binding { id: 7, event: "INSERT".into(), schema: "public".into(), table: None, filter: None }],
            token_exp: i64::MAX,
        };
        let text = change_frame(&channel, &change("INSERT", "a"), Vsn::V2).expect("matches");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v[3], "postgres_changes");
        assert_eq!(v[4]["ids"], json!([7]));
        assert_eq!(v[4]["data"]["type"], "INSERT");
        assert_eq!(v[4]["data"]["errors"], Value::Null);
    }
}
