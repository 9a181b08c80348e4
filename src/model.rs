//! The domain types every layer shares: a message as the database stores it ([`MessageRow`]) and
//! as clients see it ([`ChatMessage`], [`Sender`]), and the one timestamp format of the protocol.
//!
//! Pure data and pure functions: no I/O, no knowledge of sessions, routing or transports.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message's sender as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub full_name: String,
    pub role: String,
}

impl Sender {
    /// Shown when a sender's profile no longer exists (the message stays deliverable).
    pub fn unknown() -> Sender {
        Sender { full_name: "Unknown".into(), role: "unknown".into() }
    }
}

/// A chat message as clients see it, in `new_message` frames and offline sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: Uuid,
    pub thread_id: Uuid,
    pub sender_id: Uuid,
    pub content: String,
    pub message_type: String,
    /// RFC 3339, UTC, microseconds (`2024-01-01T12:00:00.123456Z`).
    pub created_at: String,
    pub sender: Sender,
}

/// A message row as the database returns it (PostgREST, the change feed, SQL functions).
#[derive(Debug, Clone, Deserialize)]
pub struct MessageRow {
    pub id: Uuid,
    pub thread_id: Uuid,
    pub sender_id: Uuid,
    pub content: String,
    #[serde(default = "default_type")]
    pub message_type: String,
    pub created_at: String,
    /// Name and role when the row carries them; `None` when absent or incomplete (for instance
    /// `{"full_name": null, "role": null}` from a profile hidden by RLS).
    #[serde(default, deserialize_with = "lenient_sender")]
    pub sender: Option<Sender>,
}

/// Reads `sender` without failing the row: anything but a name and a role is `None`.
fn lenient_sender<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Sender>, D::Error> {
    #[derive(Deserialize)]
    struct Partial {
        full_name: Option<String>,
        role: Option<String>,
    }
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .and_then(|v| serde_json::from_value::<Partial>(v).ok())
        .and_then(|p| Some(Sender { full_name: p.full_name?, role: p.role? })))
}

fn default_type() -> String {
    "text".into()
}

impl MessageRow {
    /// `created_at` as a time (None if the database sent something unreadable).
    pub fn created(&self) -> Option<DateTime<Utc>> {
        parse_time(&self.created_at)
    }

    /// The protocol's shape, with `created_at` normalized; `sender` must be known.
    pub fn into_chat_message(self, sender: Sender) -> ChatMessage {
        ChatMessage {
            id: self.id,
            thread_id: self.thread_id,
            sender_id: self.sender_id,
            content: self.content,
            message_type: self.message_type,
            created_at: normalize_time(&self.created_at).unwrap_or(self.created_at),
            sender,
        }
    }
}

/// Formats a time as the protocol does.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Normalizes a timestamp from PostgreSQL/PostgREST/Realtime (`2026-01-01T12:00:00.123+00:00`,
/// `2026-01-01 12:00:00.123+00`, ...) to the protocol's format.
pub fn normalize_time(raw: &str) -> Option<String> {
    parse_time(raw).map(format_time)
}

/// Parses the timestamp forms PostgreSQL, PostgREST and Realtime produce.
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    let t = raw.trim().replacen(' ', "T", 1);
    let tail = t.get(10..)?;
    let fixed = match tail.rfind(['+', '-']) {
        // "+00" offset without minutes
        Some(i) if tail.len() - i == 3 => format!("{t}:00"),
        Some(_) => t,
        None if t.ends_with('Z') => t,
        None => format!("{t}Z"),
    };
    DateTime::parse_from_rfc3339(&fixed).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_postgres_timestamps() {
        let want = Some("2026-01-01T12:00:00.123456Z".to_string());
        assert_eq!(normalize_time("2026-01-01T12:00:00.123456+00:00"), want);
        assert_eq!(normalize_time("2026-01-01 12:00:00.123456+00"), want);
        assert_eq!(normalize_time("2026-01-01T14:00:00.123456+02:00"), want);
        assert_eq!(normalize_time("2026-01-01T12:00:00.123456Z"), want);
        assert_eq!(normalize_time("2026-01-01T12:00:00.123456"), want);
        assert_eq!(normalize_time("garbage"), None);
        assert_eq!(normalize_time("2026-01-0"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_times_never_panics(text in ".{0,80}") {
            let _ = parse_time(&text);
        }
    }
}
