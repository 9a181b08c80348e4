//! One Realtime client socket: the Phoenix channel protocol state machine.
//!
//! Owns heartbeats and the silent-socket timeout, `phx_join` with `postgres_changes` bindings
//! (token check, publication check, the reply echoing each binding as sent plus its id,
//! `presence_state`, the `system` "Subscribed to PostgreSQL" message; private channels for the
//! service role only), `access_token` refresh and expiry, `phx_leave`, broadcasts (handed to
//! [`super::broadcast`], acknowledged when asked), and writing what the feed routes to it. The feed only ever `try_send`s
//! into this socket's bounded queue; a socket whose queue is full is dropped, so it never slows
//! the feed or the other sockets. This module must never block the feed or touch another
//! socket's state. What a binding matches is in [`super::binding`]; the handle the feed routes
//! through, in [`super::channel`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use warp::ws::{Message, WebSocket};

use super::binding::bind;
use super::broadcast::{self, Broadcast};
use super::channel::{Channel, Outgoing, SocketHandle};
use super::frame::{decode, encode, Frame, Vsn};
use super::rls::Subscriber;
use super::Shared;
use crate::keys::{now_secs, Claims, KeyError};

/// Change events a socket may have queued before it counts as too slow and is dropped (default).
pub const CHANGE_QUEUE: usize = 16_384;
/// Replies and system pushes a socket may have queued (a client that floods without reading).
const REPLY_QUEUE: usize = 1_024;
/// Frames written before one flush when the queue is busy.
const WRITE_BATCH: usize = 256;

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
    if let Some(bytes) = item.binary {
        return sink.feed(Message::binary(bytes)).await.map_err(|_| ());
    }
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
                    if message.is_binary() {
                        if let Some(reply) = self.user_broadcast(message.as_bytes()) {
                            if !self.send(&reply) {
                                return End::Killed;
                            }
                        }
                        continue;
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
            (topic, "broadcast") => {
                let ack =
                    broadcast::relay_from(&self.shared, &self.handle, topic, &Broadcast::Json(frame.payload.clone()));
                if ack {
                    vec![reply(&frame, "ok", json!({}))]
                } else {
                    Vec::new()
                }
            }
            // Realtime answers nothing to other client events (broadcast without ack, ...).
            _ => Vec::new(),
        }
    }

    /// A binary frame: a user broadcast push of a joined channel is relayed (and acknowledged
    /// when the channel asked); anything else is ignored, as an unmatched topic is answered.
    fn user_broadcast(&self, bytes: &[u8]) -> Option<Frame> {
        let push = broadcast::decode_user_push(bytes)?;
        let as_frame = Frame {
            join_ref: Some(push.join_ref.clone()).filter(|r| !r.is_empty()),
            reference: Some(push.reference.clone()).filter(|r| !r.is_empty()),
            topic: push.topic.clone(),
            event: "broadcast".into(),
            payload: Value::Null,
        };
        if !self.joined(&push.topic) {
            return Some(reply(&as_frame, "error", json!({"reason": "unmatched topic"})));
        }
        broadcast::relay_from(&self.shared, &self.handle, &push.topic, &push.broadcast)
            .then(|| reply(&as_frame, "ok", json!({})))
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
        let config = |pointer: &str| frame.payload.pointer(pointer).and_then(Value::as_bool).unwrap_or(false);
        let private = config("/config/private");
        if private && subscriber(&claims).is_some() {
            // No realtime.messages policy is modelled: only the service role (BYPASSRLS) may read.
            return error(format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}"));
        }
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
            private,
            broadcast_self: config("/config/broadcast/self"),
            broadcast_ack: config("/config/broadcast/ack"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
