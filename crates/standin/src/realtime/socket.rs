//! One Realtime client socket: the Phoenix channel protocol state machine.
//!
//! Owns heartbeats and the silent-socket timeout, `phx_join` with `postgres_changes` bindings
//! (token check, publication check, the reply echoing each binding as sent plus its id,
//! `presence_state`, the `system` "Subscribed to PostgreSQL" message), `access_token` refresh and
//! expiry, `phx_leave`, and writing what the feed routes to it. The feed only ever `try_send`s
//! into this socket's bounded queue; a socket whose queue is full is dropped, so it never slows
//! the feed or the other sockets. This module must never block the feed or touch another
//! socket's state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use warp::ws::{Message, WebSocket};

use super::feed::Change;
use super::frame::{decode, encode, encode_push_raw, Frame, Vsn};
use super::rls::{RowCheck, Subscriber};
use super::view::UserView;
use super::Shared;
use crate::keys::{now_secs, Claims, KeyError};

/// Change events a socket may have queued before it counts as too slow and is dropped (default).
pub const CHANGE_QUEUE: usize = 16_384;
/// Replies and system pushes a socket may have queued (a client that floods without reading).
const REPLY_QUEUE: usize = 1_024;
/// Frames written before one flush when the queue is busy.
const WRITE_BATCH: usize = 256;

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

/// A joined channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub topic: String,
    pub join_ref: Option<String>,
    pub bindings: Vec<Binding>,
    /// The access token the channel currently holds, and when it expires (Unix seconds).
    pub token: String,
    pub token_exp: i64,
    /// Who RLS checks run as; `None` for the service role (BYPASSRLS).
    pub subscriber: Option<Arc<Subscriber>>,
}

/// A change event on its way to the socket.
pub struct Outgoing {
    /// Not to be written before this instant (the latency fault control).
    pub due: Option<Instant>,
    pub text: String,
    /// For a user-token channel: the change, shaped for the subscriber's role (column
    /// privileges, RLS) when written; `text` is unused then.
    pub view: Option<Box<UserView>>,
}

/// What the feed needs to route to a socket.
pub struct SocketHandle {
    pub vsn: Vsn,
    pub channels: Mutex<Vec<Channel>>,
    pub changes: mpsc::Sender<Outgoing>,
    /// Drops the socket at once, without a close handshake (as a network failure would).
    pub kill: Notify,
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

fn text_of(v: &Value) -> String {
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

/// The RLS check of an INSERT or UPDATE for a user-token subscriber: the row by primary key.
pub fn row_check(who: &Arc<Subscriber>, change: &Change) -> RowCheck {
    let record = change.record.as_ref();
    let keys = change
        .keys
        .iter()
        .map(|k| {
            let ty = change.columns.iter().find(|(n, _)| n == k).map_or("text", |(_, t)| t.as_str());
            let value = record.and_then(|r| r.get(k)).map(text_of);
            (k.clone(), ty.to_string(), value)
        })
        .collect();
    RowCheck { schema: change.schema.clone(), table: change.table.clone(), keys, who: who.clone() }
}

/// Routes one change to this socket: one `postgres_changes` push per joined channel with a
/// matching binding. `data_json` is the change's `data` object, serialized once for everyone
/// with the service role; a user-token channel gets the change shaped for its role when it is
/// written ([`UserView`]). Synthetic rows do not exist: they go to everyone as they are.
pub fn route(handle: &SocketHandle, change: &Change, data_json: &str, due: Option<Instant>) -> Vec<Outgoing> {
    let Ok(channels) = handle.channels.lock() else { return Vec::new() };
    let mut out = Vec::new();
    for channel in channels.iter() {
        let ids: Vec<String> =
            channel.bindings.iter().filter(|b| b.matches(change)).map(|b| b.id.to_string()).collect();
        if ids.is_empty() {
            continue;
        }
        let ids = ids.join(",");
        if let Some(who) = channel.subscriber.as_ref().filter(|_| !change.synthetic) {
            let view = UserView {
                change: change.clone(),
                ids,
                join_ref: channel.join_ref.clone(),
                topic: channel.topic.clone(),
                vsn: handle.vsn,
                who: who.clone(),
            };
            out.push(Outgoing { due, text: String::new(), view: Some(Box::new(view)) });
            continue;
        }
        let payload = format!("{{\"ids\":[{ids}],\"data\":{data_json}}}");
        let text =
            encode_push_raw(channel.join_ref.as_deref(), &channel.topic, "postgres_changes", &payload, handle.vsn);
        out.push(Outgoing { due, text, view: None });
    }
    out
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

fn channel_name(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}

/// The `system` error and `phx_close` Realtime sends when it shuts a channel down.
fn shutdown(topic: &str, join_ref: Option<String>, message: String) -> Vec<Frame> {
    vec![
        push(
            topic,
            join_ref.clone(),
            "system",
            json!({"extension": "system", "status": "error", "message": message, "channel": channel_name(topic)}),
        ),
        push(topic, join_ref, "phx_close", json!({})),
    ]
}

/// Realtime's texts for a token it refuses.
fn token_error(token: &str, error: &KeyError) -> String {
    match error {
        KeyError::Expired => {
            let ago = token_exp(token).map_or(0, |exp| (now_secs() - exp).max(0));
            format!("Token has expired {ago} seconds ago")
        }
        KeyError::Invalid(_) if token.split('.').count() != 3 || jsonwebtoken::decode_header(token).is_err() => {
            "The token provided is not a valid JWT".into()
        }
        KeyError::Invalid(_) => "Failed to validate JWT signature".into(),
    }
}

/// `exp` of a token, read without verification (only to word an error).
fn token_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_i64()
}

/// The RLS identity of a verified token: `None` for the service role.
fn subscriber(claims: &Claims) -> Option<Arc<Subscriber>> {
    if claims.role == "service_role" {
        return None;
    }
    let json = serde_json::to_string(claims).unwrap_or_else(|_| "{}".into());
    Some(Arc::new(Subscriber { role: claims.role.clone(), claims: json }))
}

/// Why a socket's service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed or the connection failed.
    Closed,
    /// Nothing heard within the heartbeat timeout.
    Silent,
    /// Dropped by a control or for being too slow: no close handshake.
    Killed,
}

/// Serves one upgraded socket until it closes or is dropped.
pub async fn serve(ws: WebSocket, shared: Arc<Shared>, vsn: Vsn, apikey: String) {
    let capacity = shared.queue_capacity.load(Ordering::Relaxed).max(1);
    let (changes_tx, changes_rx) = mpsc::channel::<Outgoing>(capacity);
    let (reply_tx, reply_rx) = mpsc::channel::<String>(REPLY_QUEUE);
    let handle =
        Arc::new(SocketHandle { vsn, channels: Mutex::new(Vec::new()), changes: changes_tx, kill: Notify::new() });
    let id = shared.register(handle.clone());
    let (mut sink, mut stream) = ws.split();
    let conn = Conn { shared: shared.clone(), handle, apikey, replies: reply_tx };
    let end = tokio::select! {
        end = conn.read_loop(&mut stream) => end,
        end = write_loop(&shared, &mut sink, reply_rx, changes_rx) => end,
    };
    shared.unregister(id);
    match end {
        End::Killed => {} // Dropping both halves closes the TCP connection without a close frame.
        End::Silent | End::Closed => {
            let close = Message::close_with(1000u16, if end == End::Silent { "heartbeat timeout" } else { "" });
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
        }
    }
}

/// Writes replies as soon as they come and change events when due (and visible).
async fn write_loop(
    shared: &Shared,
    sink: &mut SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<String>,
    mut changes: mpsc::Receiver<Outgoing>,
) -> End {
    let mut pending: Option<Outgoing> = None;
    loop {
        let due = pending.as_ref().and_then(|p| p.due).unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        return End::Closed;
                    }
                }
                None => return End::Closed,
            },
            _ = tokio::time::sleep_until(due.into()), if pending.is_some() => {
                let Some(item) = pending.take() else { continue };
                if write_change(shared, sink, item).await.is_err() || sink.flush().await.is_err() {
                    return End::Closed;
                }
            }
            item = changes.recv(), if pending.is_none() => {
                let Some(mut item) = item else { return End::Closed };
                let mut written = 0;
                loop {
                    // A reply queued before this change (a join's ok) goes first.
                    while let Ok(text) = replies.try_recv() {
                        if sink.feed(Message::text(text)).await.is_err() {
                            return End::Closed;
                        }
                    }
                    if item.due.is_some_and(|d| d > Instant::now()) {
                        pending = Some(item);
                        break;
                    }
                    if write_change(shared, sink, item).await.is_err() {
                        return End::Closed;
                    }
                    written += 1;
                    match changes.try_recv() {
                        Ok(next) if written < WRITE_BATCH => item = next,
                        Ok(next) => {
                            pending = Some(next);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

async fn write_change(shared: &Shared, sink: &mut SplitSink<WebSocket, Message>, item: Outgoing) -> Result<(), ()> {
    let text = match &item.view {
        None => item.text,
        Some(view) => match view.render(&shared.rls).await {
            Some(text) => text,
            None => return Ok(()),
        },
    };
    sink.feed(Message::text(text)).await.map_err(|_| ())?;
    shared.events_sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The reading side of one socket and its protocol state.
struct Conn {
    shared: Arc<Shared>,
    handle: Arc<SocketHandle>,
    apikey: String,
    replies: mpsc::Sender<String>,
}

impl Conn {
    /// Queues a frame for the writer; false if the client stopped reading.
    fn send(&self, frame: &Frame) -> bool {
        self.replies.try_send(encode(frame, self.handle.vsn)).is_ok()
    }

    async fn read_loop(&self, stream: &mut SplitStream<WebSocket>) -> End {
        let mut last_heard = Instant::now();
        let mut period = self.tick_period();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.handle.kill.notified() => return End::Killed,
                incoming = stream.next() => {
                    let Some(Ok(message)) = incoming else { return End::Closed };
                    last_heard = Instant::now();
                    if message.is_close() {
                        return End::Closed;
                    }
                    let Ok(text) = message.to_str() else { continue };
                    match decode(text, self.handle.vsn) {
                        Ok(frame) => {
                            for out in self.handle_frame(frame).await {
                                if !self.send(&out) {
                                    return End::Killed;
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "ignoring a malformed frame"),
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > self.heartbeat_timeout() {
                        tracing::info!("closing a silent Realtime socket (no heartbeat)");
                        return End::Silent;
                    }
                    for out in self.expire_tokens() {
                        if !self.send(&out) {
                            return End::Killed;
                        }
                    }
                    if self.tick_period() != period {
                        period = self.tick_period();
                        tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    }
                }
            }
        }
    }

    fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.shared.heartbeat_timeout_ms.load(Ordering::Relaxed))
    }

    /// How often to check the heartbeat deadline and token expiry: often enough to close a
    /// silent socket within a quarter of the timeout, rarely enough to cost nothing idle.
    fn tick_period(&self) -> Duration {
        (self.heartbeat_timeout() / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Channels whose token expired: `system` error and `phx_close`, as Realtime does.
    fn expire_tokens(&self) -> Vec<Frame> {
        let now = now_secs();
        let expired: Vec<Channel> = self
            .handle
            .channels
            .lock()
            .map(|mut chans| {
                let (gone, keep): (Vec<Channel>, Vec<Channel>) = chans.drain(..).partition(|c| c.token_exp <= now);
                *chans = keep;
                gone
            })
            .unwrap_or_default();
        expired
            .into_iter()
            .flat_map(|c| {
                shutdown(&c.topic, c.join_ref, format!("Token has expired {} seconds ago", now - c.token_exp))
            })
            .collect()
    }

    fn joined(&self, topic: &str) -> bool {
        self.handle.channels.lock().map(|c| c.iter().any(|c| c.topic == topic)).unwrap_or(false)
    }

    fn remove(&self, topic: &str) -> Option<Channel> {
        let mut chans = self.handle.channels.lock().ok()?;
        let at = chans.iter().position(|c| c.topic == topic)?;
        Some(chans.remove(at))
    }

    async fn handle_frame(&self, frame: Frame) -> Vec<Frame> {
        let unmatched = || vec![reply(&frame, "error", json!({"reason": "unmatched topic"}))];
        match (frame.topic.as_str(), frame.event.as_str()) {
            ("phoenix", "heartbeat") => vec![reply(&frame, "ok", json!({}))],
            (_, "phx_join") => self.join(&frame).await,
            (topic, "phx_leave") => match self.remove(topic) {
                Some(_) => {
                    vec![reply(&frame, "ok", json!({})), push(topic, frame.join_ref.clone(), "phx_close", json!({}))]
                }
                None => unmatched(),
            },
            (topic, _) if !self.joined(topic) => unmatched(),
            (_, "access_token") => self.refresh_token(&frame),
            // Presence is disabled here: a track is acknowledged and goes nowhere.
            (_, "presence") => vec![reply(&frame, "ok", json!({}))],
            // Realtime answers nothing to other client events (broadcast without ack, ...).
            _ => Vec::new(),
        }
    }

    fn refresh_token(&self, frame: &Frame) -> Vec<Frame> {
        let Some(token) = frame.payload.get("access_token").and_then(Value::as_str) else { return Vec::new() };
        if token.starts_with("sb_") {
            return Vec::new(); // Realtime ignores publishable/secret API keys here.
        }
        match self.shared.keys.verify(token) {
            Ok(claims) => {
                if let Ok(mut chans) = self.handle.channels.lock() {
                    for c in chans.iter_mut().filter(|c| c.topic == frame.topic) {
                        c.token = token.to_string();
                        c.token_exp = claims.exp;
                        c.subscriber = subscriber(&claims);
                    }
                }
                Vec::new()
            }
            Err(e) => match self.remove(&frame.topic) {
                Some(c) => shutdown(&c.topic, c.join_ref, token_error(token, &e)),
                None => Vec::new(),
            },
        }
    }

    async fn join(&self, frame: &Frame) -> Vec<Frame> {
        let error = |reason: String| vec![reply(frame, "error", json!({"reason": reason}))];
        let Some(name) = frame.topic.strip_prefix("realtime:") else {
            return error("unmatched topic".into());
        };
        if name.is_empty() {
            return error("You must provide a topic name".into());
        }
        if self.shared.refuse_joins.load(Ordering::Relaxed) {
            self.shared.joins_refused.fetch_add(1, Ordering::Relaxed);
            return error("Realtime was unable to connect to the project database".into());
        }
        let token = ["access_token", "user_token"]
            .iter()
            .find_map(|k| frame.payload.get(*k).and_then(Value::as_str))
            .filter(|t| !t.starts_with("sb_"))
            .unwrap_or(&self.apikey)
            .to_string();
        let claims = match self.shared.keys.verify(&token) {
            Ok(c) => c,
            Err(e) => return error(token_error(&token, &e)),
        };
        let requested =
            frame.payload.pointer("/config/postgres_changes").and_then(Value::as_array).cloned().unwrap_or_default();
        let (bindings, echoed) = if requested.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let published = match self.shared.published_tables().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the supabase_realtime publication");
                    return error("Realtime was unable to connect to the project database".into());
                }
            };
            match bind(&requested, &published) {
                Ok(b) => b,
                Err(reason) => return error(reason),
            }
        };
        let channel = Channel {
            topic: frame.topic.clone(),
            join_ref: frame.join_ref.clone(),
            bindings,
            token,
            token_exp: claims.exp,
            subscriber: subscriber(&claims),
        };
        let mut out = Vec::new();
        // Phoenix closes an existing channel on the same topic when it is joined again.
        if let Some(old) = self.remove(&frame.topic) {
            out.push(push(&old.topic, old.join_ref, "phx_close", json!({})));
        }
        out.push(reply(frame, "ok", json!({"postgres_changes": echoed})));
        out.push(push(&frame.topic, frame.join_ref.clone(), "presence_state", json!({})));
        if !requested.is_empty() {
            // The change feed is always live, so the subscription is ready as soon as it exists.
            out.push(push(
                &frame.topic,
                frame.join_ref.clone(),
                "system",
                json!({"status": "ok", "extension": "postgres_changes", "message": "Subscribed to PostgreSQL", "channel": name}),
            ));
        }
        // Queue the reply before the feed can route a change to the channel: a client never
        // sees an event for a binding it has not been told the id of.
        for f in &out {
            if !self.send(f) {
                self.handle.kill.notify_one();
                return Vec::new();
            }
        }
        if let Ok(mut chans) = self.handle.channels.lock() {
            chans.push(channel);
        }
        Vec::new()
    }
}

/// Validates the requested bindings against the publication: the bindings, and the reply's
/// `postgres_changes` entries (each binding's keys exactly as sent, plus `id`).
fn bind(
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

/// Joined channels of all sockets, for stats.
pub fn channel_count<'a>(sockets: impl Iterator<Item = &'a Arc<SocketHandle>>) -> usize {
    sockets.map(|s| s.channels.lock().map(|c| c.len()).unwrap_or(0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &'static str, thread: &str) -> Change {
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

    fn binding(event: &str, table: Option<&str>, filter: Option<&str>) -> Binding {
        Binding {
            id: 1,
            event: event.into(),
            schema: "public".into(),
            table: table.map(str::to_string),
            filter: filter.and_then(parse_filter),
        }
    }

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
    fn routes_one_push_per_matching_channel_with_binding_ids() {
        let (tx, _rx) = mpsc::channel(4);
        let channel = |topic: &str, bindings: Vec<Binding>| Channel {
            topic: topic.into(),
            join_ref: Some("1".into()),
            bindings,
            token: String::new(),
            token_exp: i64::MAX,
            subscriber: None,
        };
        let mut a = binding("INSERT", Some("messages"), None);
        a.id = 7;
        let mut b = binding("*", None, Some("thread_id=eq.a"));
        b.id = 8;
        let handle = SocketHandle {
            vsn: Vsn::V2,
            channels: Mutex::new(vec![
                channel("realtime:x", vec![a, b]),
                channel("realtime:y", vec![binding("DELETE", None, None)]),
            ]),
            changes: tx,
            kill: Notify::new(),
        };
        let c = change("INSERT", "a");
        let out = route(&handle, &c, &c.data_json(), None);
        assert_eq!(out.len(), 1);
        assert!(out[0].view.is_none(), "service role: no RLS check");
        let v: Value = serde_json::from_str(&out[0].text).expect("json");
        assert_eq!(v[0], "1");
        assert_eq!(v[1], Value::Null);
        assert_eq!(v[2], "realtime:x");
        assert_eq!(v[3], "postgres_changes");
        assert_eq!(v[4]["ids"], json!([7, 8]));
        assert_eq!(v[4]["data"]["type"], "INSERT");
        assert_eq!(v[4]["data"]["errors"], Value::Null);
    }

    #[test]
    fn user_channels_shape_changes_for_their_role_and_check_by_primary_key() {
        let who = Arc::new(Subscriber { role: "authenticated".into(), claims: "{}".into() });
        let check = row_check(&who, &change("UPDATE", "a"));
        assert_eq!(check.keys, vec![("id".to_string(), "uuid".to_string(), Some("r1".to_string()))]);
        let (tx, _rx) = mpsc::channel(4);
        let channel = Channel {
            topic: "realtime:x".into(),
            join_ref: None,
            bindings: vec![binding("*", None, None)],
            token: String::new(),
            token_exp: i64::MAX,
            subscriber: Some(who),
        };
        let handle =
            SocketHandle { vsn: Vsn::V2, channels: Mutex::new(vec![channel]), changes: tx, kill: Notify::new() };
        for kind in ["INSERT", "DELETE"] {
            let c = change(kind, "a");
            let out = route(&handle, &c, &c.data_json(), None);
            assert!(out.len() == 1 && out[0].view.is_some() && out[0].text.is_empty(), "{kind}: shaped when written");
        }
        let mut synthetic = change("INSERT", "a");
        synthetic.synthetic = true;
        let out = route(&handle, &synthetic, &synthetic.data_json(), None);
        assert!(out[0].view.is_none(), "a synthetic row has nothing to check");
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

    #[test]
    fn token_errors_use_realtimes_words() {
        let keys = crate::keys::Keys::generate("a-secret-that-is-long-enough-for-hs256-xx", "http://x/auth/v1");
        let id = uuid::Uuid::new_v4();
        let expired = keys.user_token(id, "a@b.test", crate::keys::Alg::Hs256, -30);
        let e = keys.verify(&expired).expect_err("expired");
        let text = token_error(&expired, &e);
        assert!(text.starts_with("Token has expired ") && text.ends_with(" seconds ago"), "{text}");
        assert!(text.contains("30") || text.contains("31"), "{text}");
        let other = crate::keys::Keys::generate("another-secret-that-is-long-enough-xxxxxx", "http://x/auth/v1");
        let forged = other.user_token(id, "a@b.test", crate::keys::Alg::Hs256, 60);
        assert_eq!(token_error(&forged, &keys.verify(&forged).expect_err("bad")), "Failed to validate JWT signature");
        assert_eq!(
            token_error("nope", &keys.verify("nope").expect_err("bad")),
            "The token provided is not a valid JWT"
        );
    }
}
