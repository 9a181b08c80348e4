//! The Expo transport: one message per (message, user, Expo push token), POSTed to Expo's push API
//! (`EXPO_PUSH_URL`) as a one-element array, with `Authorization: Bearer` only when an access
//! token is configured.
//!
//! Owns the message (title = the sender's name, body = the preview, badge = the unread count,
//! data = the ids) and what a ticket means: `ok` is sent, `DeviceNotRegistered` deletes the
//! device, `MessageRateExceeded` is retried, any other error is dropped. Receipts (Expo's later
//! word on delivery) are not polled. It must never log a push token, the access token or the
//! message text: an error ticket's `message` names the token, so only its `details.error` is kept.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::webhook::{preview, retry_after, without_url};
use super::Outcome;
use crate::config::ExpoTarget;
use crate::store::PushDelivery;

/// An Expo client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ExpoError {
    #[error("EXPO_PUSH_URL is not an http(s) URL")]
    Url,
    #[error("cannot build the Expo HTTP client: {0}")]
    Client(String),
}

/// The ids the app reads when the notification is tapped.
#[derive(Debug, Serialize)]
pub struct Data {
    pub thread_id: Uuid,
    pub message_id: Uuid,
    /// The delivery's id: the same on every retry, so the app can drop a repeat.
    pub delivery_id: Uuid,
}

/// One message of Expo's push API.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub to: &'a str,
    pub title: &'a str,
    pub body: String,
    pub data: Data,
    pub badge: i64,
    pub sound: &'static str,
    pub priority: &'static str,
}

impl<'a> Message<'a> {
    /// The message of a delivery to `token`.
    pub fn of(d: &'a PushDelivery, token: &'a str) -> Message<'a> {
        Message {
            to: token,
            title: &d.sender.full_name,
            body: preview(&d.content),
            data: Data { thread_id: d.thread_id, message_id: d.message_id, delivery_id: d.id },
            badge: d.unread_count,
            sound: "default",
            priority: "high",
        }
    }
}

/// What one ticket of Expo's answer means.
pub fn outcome_of_ticket(ticket: &Value) -> Outcome {
    if ticket["status"] == "ok" {
        return Outcome::Sent;
    }
    let error = ticket["details"]["error"].as_str().unwrap_or("no details.error");
    match error {
        "DeviceNotRegistered" => Outcome::Gone("Expo DeviceNotRegistered".into()),
        "MessageRateExceeded" => Outcome::Retry { after: None, reason: "Expo MessageRateExceeded".into() },
        other => Outcome::Dropped(format!("Expo {}", label(other))),
    }
}

/// What a whole answer (status and body) means for the one message sent.
pub fn outcome_of_answer(status: u16, retry_after: Option<Duration>, body: &Value) -> Outcome {
    let request_error =
        body["errors"].as_array().and_then(|e| e.first()).map(|e| label(e["code"].as_str().unwrap_or("")));
    if !(200..300).contains(&status) {
        return match (super::outcome_of_status(status, retry_after, false), request_error) {
            (Outcome::Dropped(reason), Some(code)) => Outcome::Dropped(format!("{reason} {code}")),
            (outcome, _) => outcome,
        };
    }
    if let Some(code) = request_error {
        return Outcome::Dropped(format!("Expo request error {code}"));
    }
    match body["data"].as_array().and_then(|tickets| tickets.first()) {
        Some(ticket) => outcome_of_ticket(ticket),
        None => Outcome::Retry { after: None, reason: "Expo answered without a ticket".into() },
    }
}

/// An error code from Expo, kept only if it looks like one (never a free-text message).
fn label(code: &str) -> String {
    if !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        code.to_string()
    } else {
        "unknown error".into()
    }
}

/// The configured Expo push API.
pub struct Expo {
    url: reqwest::Url,
    access_token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Expo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.access_token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Expo").field("url", &self.url.as_str()).field("access_token", &token).finish()
    }
}

impl Expo {
    /// The client of a validated target; each call times out after `timeout`.
    pub fn new(target: &ExpoTarget, timeout: Duration) -> Result<Expo, ExpoError> {
        let url = reqwest::Url::parse(&target.url).map_err(|_| ExpoError::Url)?;
        let client =
            reqwest::Client::builder().timeout(timeout).build().map_err(|e| ExpoError::Client(e.to_string()))?;
        Ok(Expo { url, access_token: target.access_token.clone(), client })
    }

    /// Sends one delivery to its device's Expo push token.
    pub async fn send(&self, delivery: &PushDelivery) -> Outcome {
        let token = delivery.device.as_ref().and_then(|d| d["token"].as_str()).filter(|t| !t.trim().is_empty());
        let Some(token) = token else {
            return Outcome::Dropped("the device has no Expo push token".into());
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .header("accept", "application/json")
            .json(&[Message::of(delivery, token)]);
        if let Some(access) = &self.access_token {
            request = request.bearer_auth(access);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Outcome::Retry { after: None, reason: "timeout".into() },
            Err(e) => return Outcome::Retry { after: None, reason: format!("unreachable: {}", without_url(&e)) },
        };
        let status = response.status().as_u16();
        let wait = retry_after(&response);
        let body = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(e) if (200..300).contains(&status) => {
                return Outcome::Retry { after: None, reason: format!("answer unread: {}", without_url(&e)) }
            }
            Err(_) => Value::Null,
        };
        outcome_of_answer(status, wait, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tickets_map_to_outcomes() {
        assert_eq!(outcome_of_ticket(&json!({"status": "ok", "id": "x"})), Outcome::Sent);
        let error = |e: &str| json!({"status": "error", "message": "\"ExponentPushToken[secret]\" ...", "details": {"error": e}});
        assert_eq!(outcome_of_ticket(&error("DeviceNotRegistered")), Outcome::Gone("Expo DeviceNotRegistered".into()));
        assert!(matches!(outcome_of_ticket(&error("MessageRateExceeded")), Outcome::Retry { .. }));
        assert_eq!(outcome_of_ticket(&error("MessageTooBig")), Outcome::Dropped("Expo MessageTooBig".into()));
        assert_eq!(outcome_of_ticket(&error("InvalidCredentials")), Outcome::Dropped("Expo InvalidCredentials".into()));
        let reason = format!("{:?}", outcome_of_ticket(&error("a message naming ExponentPushToken[secret]")));
        assert!(!reason.contains("secret"), "{reason}");
    }

    #[test]
    fn answers_map_to_outcomes() {
        let ok = json!({"data": [{"status": "ok", "id": "t1"}]});
        assert_eq!(outcome_of_answer(200, None, &ok), Outcome::Sent);
        let later = Some(Duration::from_secs(5));
        assert_eq!(
            outcome_of_answer(429, later, &Value::Null),
            Outcome::Retry { after: later, reason: "HTTP 429".into() }
        );
        assert!(matches!(outcome_of_answer(503, None, &Value::Null), Outcome::Retry { .. }));
        let refused = json!({"errors": [{"code": "VALIDATION_ERROR", "message": "..."}]});
        assert_eq!(outcome_of_answer(400, None, &refused), Outcome::Dropped("HTTP 400 VALIDATION_ERROR".into()));
        assert_eq!(
            outcome_of_answer(200, None, &refused),
            Outcome::Dropped("Expo request error VALIDATION_ERROR".into())
        );
        assert!(matches!(outcome_of_answer(200, None, &json!({"data": []})), Outcome::Retry { .. }));
    }

    #[test]
    fn the_message_has_the_documented_shape() {
        let delivery = PushDelivery {
            id: Uuid::nil(),
            attempts: 1,
            channel: "expo".into(),
            user_id: Uuid::nil(),
            thread_id: Uuid::nil(),
            message_id: Uuid::nil(),
            created_at: chrono::Utc::now(),
            content: "é".repeat(200),
            sender: crate::model::Sender { full_name: "Alice Martin".into(), role: "teacher".into() },
            collapsed: 0,
            unread_count: 3,
            device: Some(json!({"token": "ExponentPushToken[abc]"})),
        };
        let message = serde_json::to_value(Message::of(&delivery, "ExponentPushToken[abc]")).expect("json");
        assert_eq!(message["to"], "ExponentPushToken[abc]");
        assert_eq!(message["title"], "Alice Martin");
        assert_eq!(message["body"].as_str().map(|b| b.chars().count()), Some(140));
        assert_eq!((message["badge"].clone(), message["sound"].clone()), (json!(3), json!("default")));
        let nil = Uuid::nil().to_string();
        assert_eq!(message["data"], json!({"thread_id": nil, "message_id": nil, "delivery_id": nil}));
    }

    #[test]
    fn the_debug_form_never_shows_the_access_token() {
        let target = ExpoTarget { url: "http://127.0.0.1:9/send".into(), access_token: Some("tok-secret".into()) };
        let expo = Expo::new(&target, Duration::from_secs(1)).expect("client");
        assert!(!format!("{expo:?}").contains("tok-secret"));
    }
}
