//! Phoenix channel frames, as the gateway's upstream client reads and writes them.
//!
//! vsn 1.0.0: JSON object `{"topic","event","payload","ref","join_ref"}`; vsn 2.0.0: JSON array
//! `[join_ref, ref, topic, event, payload]`. Pure functions over text with their own error type;
//! never panics on anything a server sends.

use serde_json::{json, Value};

/// Serializer version of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

/// One Phoenix message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not JSON: {0}")]
    Json(String),
    #[error("frame has the wrong shape: {0}")]
    Shape(&'static str),
}

fn opt_string(v: Option<&Value>) -> Result<Option<String>, FrameError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(FrameError::Shape("ref is neither a string nor null")),
    }
}

fn req_string(v: Option<&Value>, what: &'static str) -> Result<String, FrameError> {
    v.and_then(Value::as_str).map(str::to_string).ok_or(FrameError::Shape(what))
}

fn from_value(value: Value) -> Result<Frame, FrameError> {
    match value {
        Value::Object(o) => Ok(Frame {
            join_ref: opt_string(o.get("join_ref"))?,
            reference: opt_string(o.get("ref"))?,
            topic: req_string(o.get("topic"), "topic missing")?,
            event: req_string(o.get("event"), "event missing")?,
            payload: o.get("payload").cloned().unwrap_or(Value::Null),
        }),
        Value::Array(a) if a.len() == 5 => Ok(Frame {
            join_ref: opt_string(a.first())?,
            reference: opt_string(a.get(1))?,
            topic: req_string(a.get(2), "topic missing")?,
            event: req_string(a.get(3), "event missing")?,
            payload: a.get(4).cloned().unwrap_or(Value::Null),
        }),
        _ => Err(FrameError::Shape("neither a vsn 1.0.0 object nor a vsn 2.0.0 array")),
    }
}

/// Decodes a text frame of either serializer version.
pub fn decode_any(text: &str) -> Result<Frame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    from_value(value)
}

/// Encodes a frame for the socket's serializer version.
pub fn encode(frame: &Frame, vsn: Vsn) -> String {
    match vsn {
        Vsn::V1 => json!({"topic": frame.topic, "event": frame.event, "payload": frame.payload, "ref": frame.reference, "join_ref": frame.join_ref}).to_string(),
        Vsn::V2 => json!([frame.join_ref, frame.reference, frame.topic, frame.event, frame.payload]).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = Frame {
            join_ref: Some("3".into()),
            reference: Some("4".into()),
            topic: "realtime:chat".into(),
            event: "phx_join".into(),
            payload: json!({"config": {}}),
        };
        for vsn in [Vsn::V1, Vsn::V2] {
            assert_eq!(decode_any(&encode(&f, vsn)), Ok(f.clone()));
        }
    }

    #[test]
    fn decodes_a_realtime_change_push() {
        let text = r#"["1",null,"realtime:chat-gateway","postgres_changes",{"ids":[38606455],"data":{"columns":[{"name":"id","type":"uuid"}],"commit_timestamp":"2026-01-01T12:00:00.123Z","errors":null,"record":{"id":"c0000000-0000-4000-8000-000000000001","content":"hi"},"schema":"public","table":"messages","type":"INSERT"}}]"#;
        let f = decode_any(text).expect("valid");
        assert_eq!(f.event, "postgres_changes");
        assert_eq!(f.reference, None);
        assert_eq!(f.payload["data"]["record"]["content"], "hi");
    }

    #[test]
    fn refuses_malformed_frames() {
        assert!(decode_any("").is_err());
        assert!(decode_any("[1,2]").is_err());
        assert!(decode_any(r#"{"topic":"t"}"#).is_err());
        assert!(decode_any(r#"[null,null,5,"e",{}]"#).is_err());
        assert!(decode_any(r#"{"topic":"t","event":"e","ref":[1]}"#).is_err());
    }
}
