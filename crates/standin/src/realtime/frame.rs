//! Phoenix channel frames as Supabase Realtime speaks them: vsn 1.0.0 JSON objects
//! `{"topic","event","payload","ref","join_ref"}` and vsn 2.0.0 JSON arrays
//! `[join_ref, ref, topic, event, payload]`. Pure parsing and encoding; never panics on input.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    pub fn parse(s: Option<&str>) -> Option<Vsn> {
        match s {
            None | Some("1.0.0") => Some(Vsn::V1),
            Some("2.0.0") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

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
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a Phoenix frame: {0}")]
    Shape(&'static str),
}

fn opt_string(v: Option<&Value>) -> Result<Option<String>, FrameError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(FrameError::Shape("ref must be a string or null")),
    }
}

fn string(v: Option<&Value>, what: &'static str) -> Result<String, FrameError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(FrameError::Shape(what)),
    }
}

/// Parses a text frame in the socket's serializer version.
pub fn decode(text: &str, vsn: Vsn) -> Result<Frame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    match (vsn, value) {
        (Vsn::V1, Value::Object(o)) => Ok(Frame {
            join_ref: opt_string(o.get("join_ref"))?,
            reference: opt_string(o.get("ref"))?,
            topic: string(o.get("topic"), "topic must be a string")?,
            event: string(o.get("event"), "event must be a string")?,
            payload: o.get("payload").cloned().unwrap_or(Value::Null),
        }),
        (Vsn::V2, Value::Array(a)) if a.len() == 5 => Ok(Frame {
            join_ref: opt_string(a.first())?,
            reference: opt_string(a.get(1))?,
            topic: string(a.get(2), "topic must be a string")?,
            event: string(a.get(3), "event must be a string")?,
            payload: a.get(4).cloned().unwrap_or(Value::Null),
        }),
        (Vsn::V1, _) => Err(FrameError::Shape("vsn 1.0.0 frames are JSON objects")),
        (Vsn::V2, _) => Err(FrameError::Shape("vsn 2.0.0 frames are 5-element JSON arrays")),
    }
}

/// Encodes a frame in the socket's serializer version.
pub fn encode(frame: &Frame, vsn: Vsn) -> String {
    match vsn {
        Vsn::V1 => json!({
            "topic": frame.topic, "event": frame.event, "payload": frame.payload,
            "ref": frame.reference, "join_ref": frame.join_ref,
        })
        .to_string(),
        Vsn::V2 => json!([frame.join_ref, frame.reference, frame.topic, frame.event, frame.payload]).to_string(),
    }
}

/// Encodes a server push (`ref` null) whose payload is already serialized JSON, so that one
/// serialization of a change serves every recipient.
pub fn encode_push_raw(join_ref: Option<&str>, topic: &str, event: &str, payload_json: &str, vsn: Vsn) -> String {
    let quote = |s: &str| Value::from(s).to_string();
    let join_ref = join_ref.map_or_else(|| "null".to_string(), quote);
    let mut out = String::with_capacity(payload_json.len() + topic.len() + event.len() + 64);
    match vsn {
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            out.push_str(&quote(topic));
            out.push_str(",\"event\":");
            out.push_str(&quote(event));
            out.push_str(",\"payload\":");
            out.push_str(payload_json);
            out.push_str(",\"ref\":null,\"join_ref\":");
            out.push_str(&join_ref);
            out.push('}');
        }
        Vsn::V2 => {
            out.push('[');
            out.push_str(&join_ref);
            out.push_str(",null,");
            out.push_str(&quote(topic));
            out.push(',');
            out.push_str(&quote(event));
            out.push(',');
            out.push_str(payload_json);
            out.push(']');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_versions() {
        let f = Frame {
            join_ref: Some("1".into()),
            reference: Some("2".into()),
            topic: "realtime:x".into(),
            event: "phx_join".into(),
            payload: json!({"a": 1}),
        };
        for vsn in [Vsn::V1, Vsn::V2] {
            assert_eq!(decode(&encode(&f, vsn), vsn), Ok(f.clone()));
        }
        assert_eq!(encode(&f, Vsn::V2), r#"["1","2","realtime:x","phx_join",{"a":1}]"#);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode("nope", Vsn::V1).is_err());
        assert!(decode("[1,2,3]", Vsn::V2).is_err());
        assert!(decode(r#"{"topic":1,"event":"x"}"#, Vsn::V1).is_err());
        assert!(decode(r#"["1","2","t","e",{}]"#, Vsn::V1).is_err());
        let f = decode(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"5"}"#, Vsn::V1).expect("ok");
        assert_eq!((f.join_ref, f.reference.as_deref()), (None, Some("5")));
        assert_eq!(Vsn::parse(Some("3.0.0")), None);
        assert_eq!(Vsn::parse(None), Some(Vsn::V1));
        assert!(decode(r#"{"topic":"t","event":"e","payload":{},"ref":[1]}"#, Vsn::V1).is_err());
        let numeric = decode(r#"[1,2,"t","e",null]"#, Vsn::V2).expect("numeric refs are accepted");
        assert_eq!((numeric.join_ref.as_deref(), numeric.reference.as_deref()), (Some("1"), Some("2")));
    }

    #[test]
    fn raw_pushes_equal_structured_ones() {
        let payload = json!({"ids": [1], "data": {"q": "a\"b"}});
        for (vsn, join_ref) in [(Vsn::V1, Some("3")), (Vsn::V2, Some("3")), (Vsn::V1, None), (Vsn::V2, None)] {
            let raw = encode_push_raw(join_ref, "realtime:\"x\"", "postgres_changes", &payload.to_string(), vsn);
            let expected = Frame {
                join_ref: join_ref.map(str::to_string),
                reference: None,
                topic: "realtime:\"x\"".into(),
                event: "postgres_changes".into(),
                payload: payload.clone(),
            };
            assert_eq!(decode(&raw, vsn), Ok(expected.clone()));
            let a: Value = serde_json::from_str(&raw).expect("json");
            let b: Value = serde_json::from_str(&encode(&expected, vsn)).expect("json");
            assert_eq!(a, b);
        }
        assert_eq!(
            encode_push_raw(Some("1"), "realtime:x", "postgres_changes", "{}", Vsn::V2),
            r#"["1",null,"realtime:x","postgres_changes",{}]"#
        );
    }
}
