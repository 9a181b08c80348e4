//! The typing signal between gateway instances: `{"thread_id","user_id","instance"}`, the same
//! JSON on both relays (the `payload` of a Realtime Broadcast `typing` event, or a NOTIFY
//! payload). Pure encoding and validated decoding: a signal from the wire is used only when its
//! three ids are UUIDs. It carries no name or role (each instance reads the profile from its own
//! directory) and never any message text.

use serde_json::{json, Value};
use uuid::Uuid;

/// A user typing in a thread, as one instance tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub thread_id: Uuid,
    pub user_id: Uuid,
    /// The instance that accepted the typing frame (a relay that echoes its own sender's
    /// signals, such as NOTIFY, is filtered by it).
    pub instance: Uuid,
}

/// Why a signal from the wire was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("typing signal is not JSON")]
    NotJson,
    #[error("typing signal field {0} is missing or not a UUID")]
    BadField(&'static str),
}

impl Signal {
    pub fn to_value(self) -> Value {
        json!({"thread_id": self.thread_id, "user_id": self.user_id, "instance": self.instance})
    }

    /// Reads a signal, every id checked.
    pub fn from_value(value: &Value) -> Result<Signal, SignalError> {
        let id = |key: &'static str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or(SignalError::BadField(key))
        };
        Ok(Signal { thread_id: id("thread_id")?, user_id: id("user_id")?, instance: id("instance")? })
    }

    /// Reads a signal from JSON text (a NOTIFY payload).
    pub fn from_text(text: &str) -> Result<Signal, SignalError> {
        let value: Value = serde_json::from_str(text).map_err(|_| SignalError::NotJson)?;
        Signal::from_value(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates_every_id() {
        let signal = Signal { thread_id: Uuid::new_v4(), user_id: Uuid::new_v4(), instance: Uuid::new_v4() };
        assert_eq!(Signal::from_text(&signal.to_value().to_string()), Ok(signal));
        let mut forged = signal.to_value();
        forged["user_id"] = json!("'; drop table messages; --");
        assert_eq!(Signal::from_value(&forged), Err(SignalError::BadField("user_id")));
        forged["user_id"] = json!(42);
        assert_eq!(Signal::from_value(&forged), Err(SignalError::BadField("user_id")));
        assert_eq!(Signal::from_value(&json!({"user_id": signal.user_id})), Err(SignalError::BadField("thread_id")));
        assert_eq!(Signal::from_text("[1"), Err(SignalError::NotJson));
        assert_eq!(Signal::from_value(&json!("text")), Err(SignalError::BadField("thread_id")));
    }
}
