//! An Expo push API stand-in: `POST /--/api/v2/push/send` with a JSON array of up to 100 messages
//! (or one message object), answered like Expo does, one ticket per message. It checks the body's
//! shape (`to` an Expo push token, `title`/`body` strings, `data` an object, `badge` a number) and
//! answers a malformed request with 400 and Expo's `errors` list. A token marked unregistered gets
//! a `DeviceNotRegistered` ticket; statuses can be scripted for the next requests.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use warp::http::StatusCode;
use warp::Filter;

/// Most messages in one request, as Expo documents.
pub const MAX_MESSAGES: usize = 100;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct ExpoRequest {
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The messages, as sent (an object body counts as one).
    pub messages: Vec<Value>,
    /// What the stand-in answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<ExpoRequest>>,
    unregistered: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<u16>>,
}

/// A running Expo push API stand-in; stops when dropped.
pub struct ExpoService {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl ExpoService {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start() -> std::io::Result<ExpoService> {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let route = warp::post()
            .and(warp::path!("--" / "api" / "v2" / "push" / "send"))
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(move |authorization: Option<String>, body: bytes::Bytes| {
                let (status, answer) = shared.answer(authorization, &body);
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                warp::reply::with_status(warp::reply::json(&answer), code)
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = warp::serve(route).incoming(listener).graceful(async move {
            let _ = stopped.await;
        });
        tokio::spawn(server.run());
        Ok(ExpoService { addr, state, _stop: stop })
    }

    /// The push API's URL (for `EXPO_PUSH_URL`).
    pub fn url(&self) -> String {
        format!("http://{}/--/api/v2/push/send", self.addr)
    }

    /// From now on, messages to `token` get a `DeviceNotRegistered` ticket.
    pub fn unregister(&self, token: &str) {
        lock(&self.state.unregistered).insert(token.to_string());
    }

    /// The next HTTP statuses, in order, before the normal answers (e.g. `[503]`).
    pub fn answer_next(&self, statuses: &[u16]) {
        lock(&self.state.script).extend(statuses.iter().copied());
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<ExpoRequest> {
        lock(&self.state.received).clone()
    }
}

impl State {
    fn answer(&self, authorization: Option<String>, body: &[u8]) -> (u16, Value) {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let messages = match parsed {
            Value::Array(list) => list,
            object @ Value::Object(_) => vec![object],
            _ => Vec::new(),
        };
        let (status, answer) = match (lock(&self.script).pop_front(), shape_error(&messages)) {
            (Some(status), _) => {
                (status, json!({"errors": [{"code": "INTERNAL_SERVER_ERROR", "message": "scripted"}]}))
            }
            (None, Some(problem)) => (400, json!({"errors": [{"code": "VALIDATION_ERROR", "message": problem}]})),
            (None, None) => (200, json!({"data": messages.iter().map(|m| self.ticket(m)).collect::<Vec<_>>()})),
        };
        lock(&self.received).push(ExpoRequest { authorization, messages, status });
        (status, answer)
    }

    fn ticket(&self, message: &Value) -> Value {
        let to = message["to"].as_str().unwrap_or_default();
        if lock(&self.unregistered).contains(to) {
            return json!({"status": "error",
                          "message": format!("\"{to}\" is not a registered push notification recipient"),
                          "details": {"error": "DeviceNotRegistered", "expoPushToken": to}});
        }
        json!({"status": "ok", "id": uuid::Uuid::new_v4()})
    }
}

/// What is wrong with a request's messages, as Expo's validation would say.
fn shape_error(messages: &[Value]) -> Option<String> {
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Some(format!("\"value\" must be 1 to {MAX_MESSAGES} push messages"));
    }
    for (i, m) in messages.iter().enumerate() {
        let to_ok = m["to"].as_str().is_some_and(is_expo_token);
        let text_ok = ["title", "body", "sound", "channelId"].iter().all(|k| m.get(*k).is_none_or(Value::is_string));
        let data_ok = m.get("data").is_none_or(Value::is_object);
        let badge_ok = m.get("badge").is_none_or(Value::is_u64);
        if !(to_ok && text_ok && data_ok && badge_ok) {
            return Some(format!("\"[{i}]\" is not a valid push message"));
        }
    }
    None
}

/// `ExponentPushToken[...]` or `ExpoPushToken[...]`.
pub fn is_expo_token(token: &str) -> bool {
    ["ExponentPushToken[", "ExpoPushToken["]
        .iter()
        .any(|p| token.strip_prefix(p).is_some_and(|rest| rest.len() > 1 && rest.ends_with(']')))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
