//! The typing topic on the upstream socket: Supabase Realtime Broadcast between gateway
//! instances, on the same socket as the `postgres_changes` channel.
//!
//! Every instance joins [`typing_topic`] (the feed's topic plus `-typing`) as a **private**
//! channel with `config.broadcast = {"self": false, "ack": false}` and the service role key:
//! Realtime authorizes private channels with RLS on `realtime.messages`, which the service role
//! bypasses and no policy opens to users, so neither an anonymous nor a signed-in client can
//! read who types where or inject a signal. A signal goes out as Realtime's protocol defines a
//! client broadcast: event `broadcast`, payload `{"type":"broadcast","event":"typing","payload":
//! <signal>}`; the other instances receive the same payload under event `broadcast`.
//!
//! Owns the channel's state across one socket ([`TypingChannel`]: joined or not, its join ref,
//! when to join again after Realtime refused or closed it) and the frames' shapes (pure
//! functions, unit-tested). A loss of this channel never loses the feed: messages keep flowing
//! and the channel is joined again after [`REJOIN_AFTER`]; a new socket joins it again with the
//! rest. Never logs the key.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::phoenix::Frame;
use crate::typing::{Signal, SignalError};

/// The Broadcast event name of typing signals.
pub const EVENT: &str = "typing";

/// How long after a refused or closed typing channel it is joined again.
pub const REJOIN_AFTER: Duration = Duration::from_secs(5);

/// The typing topic for the feed's topic (`realtime:chat-gateway` → `realtime:chat-gateway-typing`).
pub fn typing_topic(feed_topic: &str) -> String {
    format!("{feed_topic}-typing")
}

/// The `phx_join` payload of the typing channel.
pub fn join_payload(access_token: &str) -> Value {
    json!({
        "config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                   "postgres_changes": [], "private": true},
        "access_token": access_token,
    })
}

/// The payload of the `broadcast` push carrying a signal.
pub fn push_payload(signal: &Signal) -> Value {
    json!({"type": "broadcast", "event": EVENT, "payload": signal.to_value()})
}

/// The signal of a received `broadcast` payload; None when it is another event.
pub fn received(payload: &Value) -> Option<Result<Signal, SignalError>> {
    if payload.get("type").and_then(Value::as_str) != Some("broadcast")
        || payload.get("event").and_then(Value::as_str) != Some(EVENT)
    {
        return None;
    }
    Some(Signal::from_value(payload.get("payload").unwrap_or(&Value::Null)))
}

/// What a frame on the typing topic means.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Another instance's signal (validated or not).
    Signal(Result<Signal, SignalError>),
    /// The join was answered: joined, or refused with Realtime's reason.
    Joined,
    Refused(String),
    /// Realtime closed or crashed the channel.
    Lost(&'static str),
    Other,
}

/// The typing channel on one socket.
#[derive(Debug)]
pub struct TypingChannel {
    pub topic: String,
    /// The ref of the pending or accepted join.
    pub join_ref: Option<String>,
    pub joined: bool,
    /// When to join again (after a refusal or a loss).
    pub rejoin_at: Option<Instant>,
    /// Refusals in a row (logged at the first and then every [`REFUSALS_LOGGED_EVERY`]th).
    pub refusals: u32,
}

/// A refused typing channel is tried every [`REJOIN_AFTER`]; a refusal that does not change (a
/// key Realtime reads as anonymous) is logged again every 60 attempts, 5 minutes, not every 5 s.
pub const REFUSALS_LOGGED_EVERY: u32 = 60;

impl TypingChannel {
    pub fn new(topic: String) -> TypingChannel {
        TypingChannel { topic, join_ref: None, joined: false, rejoin_at: None, refusals: 0 }
    }

    /// Reads a frame of the typing topic.
    pub fn on_frame(&mut self, frame: &Frame) -> Seen {
        match frame.event.as_str() {
            "broadcast" => received(&frame.payload).map_or(Seen::Other, Seen::Signal),
            "phx_reply" if frame.reference.is_some() && frame.reference == self.join_ref && !self.joined => {
                if frame.payload.get("status").and_then(Value::as_str) == Some("ok") {
                    self.joined = true;
                    Seen::Joined
                } else {
                    let reason = frame.payload.pointer("/response/reason").and_then(Value::as_str);
                    self.lost();
                    Seen::Refused(reason.unwrap_or("no reason given").to_string())
                }
            }
            "phx_close" | "phx_error" if frame.join_ref.is_none() || frame.join_ref == self.join_ref => {
                self.lost();
                Seen::Lost(if frame.event == "phx_close" { "closed by Realtime" } else { "crashed on the server" })
            }
            _ => Seen::Other,
        }
    }

    fn lost(&mut self) {
        self.joined = false;
        self.join_ref = None;
        self.rejoin_at = Some(Instant::now() + REJOIN_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn frame(event: &str, reference: Option<&str>, payload: Value) -> Frame {
        Frame {
            join_ref: None,
            reference: reference.map(str::to_string),
            topic: "realtime:chat-gateway-typing".into(),
            event: event.into(),
            payload,
        }
    }

    #[test]
    fn builds_realtimes_broadcast_frames() {
        assert_eq!(typing_topic("realtime:chat-gateway"), "realtime:chat-gateway-typing");
        let join = join_payload("service-key");
        assert_eq!(join["config"]["private"], true);
        assert_eq!(join["config"]["broadcast"], json!({"ack": false, "self": false}));
        assert_eq!(join["access_token"], "service-key");
        let signal = Signal { thread_id: Uuid::new_v4(), user_id: Uuid::new_v4(), instance: Uuid::new_v4() };
        let push = push_payload(&signal);
        assert_eq!(
            push,
            json!({"type": "broadcast", "event": "typing", "payload": {
            "thread_id": signal.thread_id, "user_id": signal.user_id, "instance": signal.instance}})
        );
        assert_eq!(received(&push), Some(Ok(signal)), "what one instance sends, another reads");
    }

    #[test]
    fn reads_only_valid_typing_broadcasts() {
        assert_eq!(received(&json!({"type": "broadcast", "event": "cursor", "payload": {}})), None);
        assert_eq!(received(&json!({"type": "presence", "event": "typing"})), None);
        let forged = json!({"type": "broadcast", "event": "typing", "payload": {"thread_id": "x", "user_id": "y"}});
        assert!(matches!(received(&forged), Some(Err(SignalError::BadField("thread_id")))));
        assert!(matches!(
            received(&json!({"type": "broadcast", "event": "typing"})),
            Some(Err(SignalError::BadField(_)))
        ));
    }

    #[test]
    fn follows_the_join_and_its_loss() {
        let mut channel = TypingChannel::new("realtime:chat-gateway-typing".into());
        channel.join_ref = Some("3".into());
        assert_eq!(channel.on_frame(&frame("phx_reply", Some("2"), json!({"status": "ok"}))), Seen::Other);
        assert_eq!(
            channel.on_frame(&frame("phx_reply", Some("3"), json!({"status": "ok", "response": {}}))),
            Seen::Joined
        );
        assert!(channel.joined && channel.rejoin_at.is_none());
        assert_eq!(channel.on_frame(&frame("phx_close", None, json!({}))), Seen::Lost("closed by Realtime"));
        assert!(!channel.joined && channel.rejoin_at.is_some() && channel.join_ref.is_none());
        channel.join_ref = Some("9".into());
        let refused = json!({"status": "error", "response": {"reason": "Unauthorized: You do not have permissions to read from this Channel topic: chat-gateway-typing"}});
        assert!(
            matches!(channel.on_frame(&frame("phx_reply", Some("9"), refused)), Seen::Refused(r) if r.starts_with("Unauthorized"))
        );
    }
}
