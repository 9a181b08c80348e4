//! The client-facing WebSocket protocol: every frame type of the messaging guide, exactly.
//!
//! Owns parsing of what clients send (with an error that names the problem, never panicking on
//! any input) and the JSON of what the server sends. The shapes are the public API that existing
//! clients were written against: tests here pin them. This module does no I/O and knows nothing
//! about sessions or routing.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::model::ChatMessage;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SubscribeThread {
        thread_id: Uuid,
    },
    UnsubscribeThread {
        thread_id: Uuid,
    },
    Ping,
    /// Refresh the session's access token (`{"type":"access_token","token":"..."}`).
    AccessToken {
        token: String,
    },
    /// The user is typing in a thread (`{"type":"typing","thread_id":"..."}`).
    Typing {
        thread_id: Uuid,
    },
}

/// Why a client frame was not understood. The text goes back to the client in an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Message must be a JSON object with a \"type\" field")]
    NotAnObject,
    #[error("Missing message type")]
    MissingType,
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    #[error("Missing thread_id")]
    MissingThreadId,
    #[error("Invalid thread_id: must be a UUID")]
    InvalidThreadId,
    #[error("Missing token")]
    MissingToken,
}

/// Parses one text frame from a client.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
    let object = value.as_object().ok_or(ParseError::NotAnObject)?;
    let kind = match object.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) | None => return Err(ParseError::MissingType),
    };
    let thread_id = || -> Result<Uuid, ParseError> {
        match object.get("thread_id") {
            None | Some(Value::Null) => Err(ParseError::MissingThreadId),
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| ParseError::InvalidThreadId),
            Some(_) => Err(ParseError::InvalidThreadId),
        }
    };
    match kind {
        "subscribe_thread" => Ok(ClientMessage::SubscribeThread { thread_id: thread_id()? }),
        "unsubscribe_thread" => Ok(ClientMessage::UnsubscribeThread { thread_id: thread_id()? }),
        "ping" => Ok(ClientMessage::Ping),
        "typing" => Ok(ClientMessage::Typing { thread_id: thread_id()? }),
        "access_token" => match object.get("token").or_else(|| object.get("access_token")) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(ClientMessage::AccessToken { token: s.clone() }),
            _ => Err(ParseError::MissingToken),
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            Err(ParseError::UnknownType(shown))
        }
    }
}

/// A frame to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    ConnectionEstablished {
        user_id: Uuid,
        timestamp: String,
    },
    /// `cursor`: resume from here with `?since=` and nothing is missed (see the router).
    NewMessage {
        data: &'a ChatMessage,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    /// The end of a resume replay: `last_check_time` is the cursor to resume from next.
    SyncComplete {
        last_check_time: &'a str,
        count: usize,
    },
    /// The user's read state changed (on any device or instance).
    ThreadRead {
        thread_id: Uuid,
        last_read_at: &'a str,
        unread_count: i64,
    },
    /// Another participant read the thread. `reader` is null when the rules let this viewer see
    /// only counts, or the reader does not share their read state; `seen_by` of `of` count the
    /// readers of the thread's newest message (`message_id`) other than its sender.
    ReadReceipt {
        thread_id: Uuid,
        reader: Option<&'a crate::store::Reader>,
        last_read_at: &'a str,
        message_id: Uuid,
        seen_by: i64,
        of: i64,
    },
    ThreadSubscribed {
        thread_id: Uuid,
    },
    /// Another participant is typing in the thread (clients show it for 5 s).
    Typing {
        thread_id: Uuid,
        user: &'a TypingUser,
    },
    ThreadUnsubscribed {
        thread_id: Uuid,
    },
    Pong,
    Error {
        message: &'a str,
    },
}

impl ServerMessage<'_> {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"type":"error","message":"internal error"}"#.to_string())
    }
}

/// Who is typing, as a `typing` frame names them: the sender's profile, as `new_message` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypingUser {
    pub user_id: Uuid,
    pub full_name: String,
    pub role: String,
}

/// The error frame the guide documents for a lost upstream.
pub const UPSTREAM_ERROR: &str = "Real-time connection error";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sender;
    use serde_json::json;

    const T: &str = "b0000000-0000-4000-8000-000000000001";

    #[test]
    fn parses_every_client_frame() {
        let id = Uuid::parse_str(T).expect("uuid");
        assert_eq!(
            parse_client_message(&format!(r#"{{"type":"subscribe_thread","thread_id":"{T}"}}"#)),
            Ok(ClientMessage::SubscribeThread { thread_id: id })
        );
        assert_eq!(
            parse_client_message(&format!(r#"{{"type":"unsubscribe_thread","thread_id":"{T}"}}"#)),
            Ok(ClientMessage::UnsubscribeThread { thread_id: id })
        );
        assert_eq!(parse_client_message(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse_client_message(&format!(r#"{{"type":"typing","thread_id":"{T}"}}"#)),
            Ok(ClientMessage::Typing { thread_id: id })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"access_token","token":"x.y.z"}"#),
            Ok(ClientMessage::AccessToken { token: "x.y.z".into() })
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(matches!(parse_client_message("{nope"), Err(ParseError::InvalidJson(_))));
        assert_eq!(parse_client_message("[1]"), Err(ParseError::NotAnObject));
        assert_eq!(parse_client_message("{}"), Err(ParseError::MissingType));
        assert_eq!(parse_client_message(r#"{"type":5}"#), Err(ParseError::MissingType));
        assert_eq!(parse_client_message(r#"{"type":"dance"}"#), Err(ParseError::UnknownType("dance".into())));
        assert_eq!(parse_client_message(r#"{"type":"subscribe_thread"}"#), Err(ParseError::MissingThreadId));
        assert_eq!(
            parse_client_message(r#"{"type":"subscribe_thread","thread_id":"42"}"#),
            Err(ParseError::InvalidThreadId)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"unsubscribe_thread","thread_id":7}"#),
            Err(ParseError::InvalidThreadId)
        );
        assert_eq!(parse_client_message(r#"{"type":"access_token"}"#), Err(ParseError::MissingToken));
        assert_eq!(parse_client_message(r#"{"type":"typing"}"#), Err(ParseError::MissingThreadId));
        assert_eq!(parse_client_message(r#"{"type":"typing","thread_id":"x"}"#), Err(ParseError::InvalidThreadId));
    }

    #[test]
    fn server_frames_match_the_guide() {
        let user = Uuid::parse_str("a0000000-0000-4000-8000-000000000001").expect("uuid");
        let thread = Uuid::parse_str(T).expect("uuid");
        let v = |m: ServerMessage| serde_json::from_str::<Value>(&m.to_json()).expect("json");
        assert_eq!(
            v(ServerMessage::ConnectionEstablished { user_id: user, timestamp: "2024-01-01T12:00:00Z".into() }),
            json!({"type":"connection_established","user_id":user,"timestamp":"2024-01-01T12:00:00Z"})
        );
        assert_eq!(
            v(ServerMessage::ThreadSubscribed { thread_id: thread }),
            json!({"type":"thread_subscribed","thread_id":T})
        );
        assert_eq!(
            v(ServerMessage::ThreadUnsubscribed { thread_id: thread }),
            json!({"type":"thread_unsubscribed","thread_id":T})
        );
        assert_eq!(v(ServerMessage::Pong), json!({"type":"pong"}));
        let typer = TypingUser { user_id: user, full_name: "John Doe".into(), role: "teacher".into() };
        assert_eq!(
            v(ServerMessage::Typing { thread_id: thread, user: &typer }),
            json!({"type":"typing","thread_id":T,"user":{"user_id":user,"full_name":"John Doe","role":"teacher"}})
        );
        assert_eq!(
            v(ServerMessage::Error { message: UPSTREAM_ERROR }),
            json!({"type":"error","message":"Real-time connection error"})
        );
        let msg = ChatMessage {
            id: thread,
            thread_id: thread,
            sender_id: user,
            content: "Hello!".into(),
            message_type: "text".into(),
            created_at: "2024-01-01T12:00:00.000000Z".into(),
            sender: Sender { full_name: "John Doe".into(), role: "teacher".into() },
        };
        assert_eq!(
            v(ServerMessage::NewMessage { data: &msg, cursor: Some("2024-01-01T12:00:00.000001Z") }),
            json!({"type":"new_message","data":{"id":T,"thread_id":T,"sender_id":user,"content":"Hello!",
                   "message_type":"text","created_at":"2024-01-01T12:00:00.000000Z",
                   "sender":{"full_name":"John Doe","role":"teacher"}},"cursor":"2024-01-01T12:00:00.000001Z"})
        );
    }

    #[test]
    fn a_read_receipt_names_its_reader_or_null() {
        let thread = Uuid::parse_str(T).expect("uuid");
        let reader =
            crate::store::Reader { user_id: Uuid::from_u128(3), full_name: "Carla Diaz".into(), role: "parent".into() };
        let at = "2024-01-01T12:00:00.000000Z";
        let frame = |reader| ServerMessage::ReadReceipt {
            thread_id: thread,
            reader,
            last_read_at: at,
            message_id: thread,
            seen_by: 2,
            of: 3,
        };
        let named: Value = serde_json::from_str(&frame(Some(&reader)).to_json()).expect("json");
        assert_eq!(
            named,
            json!({"type":"read_receipt","thread_id":T,"reader":{"user_id":Uuid::from_u128(3),"full_name":"Carla Diaz",
                   "role":"parent"},"last_read_at":at,"message_id":T,"seen_by":2,"of":3})
        );
        let counted: Value = serde_json::from_str(&frame(None).to_json()).expect("json");
        assert_eq!(counted["reader"], Value::Null);
        assert_eq!((counted["seen_by"].clone(), counted["of"].clone()), (json!(2), json!(3)));
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers (Ok or a named error) and never panics.
        #[test]
        fn parsing_never_panics(text in ".{0,200}") {
            let _ = parse_client_message(&text);
        }

        #[test]
        fn parsing_json_shaped_input_never_panics(kind in "[a-z_]{0,20}", id in ".{0,40}") {
            let frame = serde_json::json!({"type": kind, "thread_id": id}).to_string();
            if let Ok(ClientMessage::SubscribeThread { thread_id }) = parse_client_message(&frame) {
                proptest::prop_assert_eq!(Uuid::parse_str(&id).ok(), Some(thread_id));
            }
        }
    }
}
