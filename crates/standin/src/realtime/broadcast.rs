//! Broadcast, as Realtime relays it between the sockets joined to one topic.
//!
//! A client sends event `broadcast` on a joined channel: as a text frame whose payload is
//! `{"type":"broadcast","event":E,"payload":P}` (vsn 1.0.0, and anyone writing JSON), or, with
//! realtime-js on vsn 2.0.0, as a binary "user broadcast push" (kind 3: join ref, ref, topic,
//! event, metadata, payload encoding, payload). Realtime hands it to every channel joined to the
//! same topic (public and private channels of one name are different topics), except the
//! sender's own unless it joined with `config.broadcast.self`; with `config.broadcast.ack` the
//! sender gets a `phx_reply` `ok`. A text broadcast arrives as a text push `broadcast` with the
//! same payload and null refs; a binary one arrives on vsn 2.0.0 as a binary "user broadcast"
//! (kind 4: topic, event, metadata, encoding, payload), and on vsn 1.0.0 as the JSON form (a
//! binary-encoded payload cannot be, and is not sent there).
//!
//! Owns those frames (pure decoding and encoding, unit-tested) and the relay, which only ever
//! `try_send`s into the recipients' queues (a full one drops that socket, as for changes).
//! Private channels: Realtime authorizes them with RLS policies on `realtime.messages`; the
//! stand-in models no policy, so only the service role (which bypasses RLS) may join one.

use std::sync::Arc;

use serde_json::{json, Value};

use super::channel::{Outgoing, SocketHandle};
use super::frame::{encode_push_raw, Vsn};
use super::Shared;

const USER_BROADCAST_PUSH: u8 = 3;
const USER_BROADCAST: u8 = 4;
const JSON_ENCODING: u8 = 1;

/// One broadcast on its way to the other channels of its topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Broadcast {
    /// Sent as JSON text: the payload `{"type":"broadcast","event","payload"}` as the client sent it.
    Json(Value),
    /// Sent as a binary user broadcast push.
    User { event: String, json: bool, metadata: String, payload: Vec<u8> },
}

/// A binary user broadcast push, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPush {
    pub join_ref: String,
    pub reference: String,
    pub topic: String,
    pub broadcast: Broadcast,
}

/// Decodes a binary frame; None unless it is a well-formed user broadcast push.
pub fn decode_user_push(bytes: &[u8]) -> Option<UserPush> {
    let (&kind, rest) = bytes.split_first()?;
    if kind != USER_BROADCAST_PUSH || rest.len() < 6 {
        return None;
    }
    let sizes: Vec<usize> = rest[..5].iter().map(|b| usize::from(*b)).collect();
    let encoding = rest[5];
    let mut at = 6;
    let mut field = |len: usize| -> Option<String> {
        let text = std::str::from_utf8(rest.get(at..at + len)?).ok()?.to_string();
        at += len;
        Some(text)
    };
    let (join_ref, reference, topic, event, metadata) =
        (field(sizes[0])?, field(sizes[1])?, field(sizes[2])?, field(sizes[3])?, field(sizes[4])?);
    let payload = rest.get(at..)?.to_vec();
    let json = encoding == JSON_ENCODING;
    if json && serde_json::from_slice::<Value>(&payload).is_err() {
        return None;
    }
    Some(UserPush { join_ref, reference, topic, broadcast: Broadcast::User { event, json, metadata, payload } })
}

/// The frame a socket of `vsn` gets for `broadcast` on `topic` (None: it cannot be shown there).
pub fn encode_for(broadcast: &Broadcast, topic: &str, vsn: Vsn) -> Option<Outgoing> {
    let text = |payload: &Value| Outgoing {
        due: None,
        text: encode_push_raw(None, topic, "broadcast", &payload.to_string(), vsn),
        view: None,
        binary: None,
    };
    match (broadcast, vsn) {
        (Broadcast::Json(payload), _) => Some(text(payload)),
        (Broadcast::User { event, json, metadata, payload }, Vsn::V2) => {
            let (topic, event, metadata) = (topic.as_bytes(), event.as_bytes(), metadata.as_bytes());
            let mut bin = vec![USER_BROADCAST, len8(topic)?, len8(event)?, len8(metadata)?, u8::from(*json)];
            for part in [topic, event, metadata, payload.as_slice()] {
                bin.extend_from_slice(part);
            }
            Some(Outgoing { due: None, text: String::new(), view: None, binary: Some(bin) })
        }
        (Broadcast::User { event, json: true, metadata, payload }, Vsn::V1) => {
            let payload: Value = serde_json::from_slice(payload).ok()?;
            let mut body = json!({"type": "broadcast", "event": event, "payload": payload});
            if !metadata.is_empty() {
                body["meta"] = serde_json::from_str(metadata).ok()?;
            }
            Some(text(&body))
        }
        (Broadcast::User { json: false, .. }, Vsn::V1) => None,
    }
}

fn len8(part: &[u8]) -> Option<u8> {
    u8::try_from(part.len()).ok()
}

/// Relays a broadcast of the sender's joined channel `topic` (its privacy and `self` as it
/// joined); whether the sender asked for an acknowledgement (false if it has not joined `topic`).
pub fn relay_from(shared: &Shared, from: &Arc<SocketHandle>, topic: &str, b: &Broadcast) -> bool {
    let channel = from.channels.lock().ok().and_then(|chans| {
        chans.iter().find(|c| c.topic == topic).map(|c| (c.private, c.broadcast_self, c.broadcast_ack))
    });
    let Some((private, to_self, ack)) = channel else { return false };
    relay(shared, from, topic, private, to_self, b);
    ack
}

/// Hands `broadcast` to every channel joined to `topic` with the same privacy, except the
/// sender's own unless `to_self`.
pub fn relay(shared: &Shared, from: &Arc<SocketHandle>, topic: &str, private: bool, to_self: bool, b: &Broadcast) {
    for socket in shared.sockets_snapshot() {
        if Arc::ptr_eq(&socket, from) && !to_self {
            continue;
        }
        let joined =
            socket.channels.lock().map(|c| c.iter().any(|c| c.topic == topic && c.private == private)).unwrap_or(false);
        if !joined {
            continue;
        }
        let Some(out) = encode_for(b, topic, socket.vsn) else { continue };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = socket.changes.try_send(out) {
            tracing::warn!("dropping a Realtime socket that cannot keep up");
            socket.kill.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_bytes(join_ref: &str, reference: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![3, join_ref.len() as u8, reference.len() as u8, topic.len() as u8, event.len() as u8, 0, 1];
        for part in [join_ref.as_bytes(), reference.as_bytes(), topic.as_bytes(), event.as_bytes(), payload] {
            b.extend_from_slice(part);
        }
        b
    }

    #[test]
    fn decodes_realtime_js_user_broadcast_pushes() {
        let bytes = push_bytes("1", "2", "realtime:room", "typing", br#"{"x":1}"#);
        let push = decode_user_push(&bytes).expect("a user broadcast push");
        assert_eq!((push.join_ref.as_str(), push.reference.as_str(), push.topic.as_str()), ("1", "2", "realtime:room"));
        assert_eq!(
            push.broadcast,
            Broadcast::User {
                event: "typing".into(),
                json: true,
                metadata: String::new(),
                payload: br#"{"x":1}"#.to_vec()
            }
        );
        assert_eq!(decode_user_push(&bytes[..8]), None, "truncated");
        assert_eq!(decode_user_push(&push_bytes("1", "2", "t", "e", b"{nope")), None, "JSON encoding, not JSON");
        assert_eq!(decode_user_push(&[4, 0, 0, 0, 0, 0, 0]), None, "not a push");
    }

    #[test]
    fn encodes_what_each_serializer_version_receives() {
        let user = Broadcast::User {
            event: "typing".into(),
            json: true,
            metadata: String::new(),
            payload: br#"{"x":1}"#.to_vec(),
        };
        let v2 = encode_for(&user, "realtime:room", Vsn::V2).expect("v2").binary.expect("binary");
        assert_eq!(&v2[..5], &[4, 13, 6, 0, 1]);
        assert_eq!(&v2[5..], br#"realtime:roomtyping{"x":1}"#.as_slice());
        let v1 = encode_for(&user, "realtime:room", Vsn::V1).expect("v1");
        let v: Value = serde_json::from_str(&v1.text).expect("json");
        assert_eq!(v["event"], "broadcast");
        assert_eq!(v["payload"], json!({"type": "broadcast", "event": "typing", "payload": {"x": 1}}));
        let raw = Broadcast::User { event: "e".into(), json: false, metadata: String::new(), payload: vec![0, 1] };
        assert!(encode_for(&raw, "realtime:room", Vsn::V1).is_none(), "binary payloads do not exist in vsn 1.0.0");
        let text = Broadcast::Json(json!({"type": "broadcast", "event": "typing", "payload": {"x": 1}}));
        let out = encode_for(&text, "realtime:room", Vsn::V2).expect("v2");
        assert!(out.binary.is_none());
        let v: Value = serde_json::from_str(&out.text).expect("json");
        assert_eq!(
            v,
            json!([null, null, "realtime:room", "broadcast", {"type": "broadcast", "event": "typing", "payload": {"x": 1}}])
        );
    }
}
