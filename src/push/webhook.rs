//! The webhook transport: one signed POST per (message, user), per the Standard Webhooks
//! specification, for teams that send from a Supabase Edge Function or a provider of their own.
//!
//! Owns the body, the signature and what an answer means. It must never log the secret or the
//! body (a preview of a child's or parent's message), and never send without a signature.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{Outcome, PREVIEW_CHARS};
use crate::config::WebhookTarget;
use crate::store::PushDelivery;

/// A webhook client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("PUSH_WEBHOOK_URL is not an http(s) URL")]
    Url,
    #[error("cannot build the webhook's HTTP client: {0}")]
    Client(String),
}

/// The configured webhook: where, signed with what.
pub struct Webhook {
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url.as_str()).field("key", &"<redacted>").finish()
    }
}

/// The body of one call.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: uuid::Uuid,
    pub thread_id: uuid::Uuid,
    pub message_id: uuid::Uuid,
    pub created_at: String,
    pub sender: &'a crate::model::Sender,
    pub preview: String,
    pub unread_count: i64,
    /// Older messages of the same thread this call stands for (a burst collapsed into it).
    pub collapsed: i64,
}

impl<'a> Body<'a> {
    pub fn of(d: &'a PushDelivery) -> Body<'a> {
        Body {
            kind: "offline_message",
            user_id: d.user_id,
            thread_id: d.thread_id,
            message_id: d.message_id,
            created_at: crate::model::format_time(d.created_at),
            sender: &d.sender,
            preview: preview(&d.content),
            unread_count: d.unread_count,
            collapsed: d.collapsed,
        }
    }
}

/// The first [`PREVIEW_CHARS`] characters of a message.
pub fn preview(content: &str) -> String {
    content.chars().take(PREVIEW_CHARS).collect()
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC accepts keys of any length; unreachable, but never panic on configuration.
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// The webhook of a validated configuration; each call times out after `timeout`.
    pub fn new(target: &WebhookTarget, timeout: Duration) -> Result<Webhook, WebhookError> {
        let url = reqwest::Url::parse(&target.url).map_err(|_| WebhookError::Url)?;
        let client =
            reqwest::Client::builder().timeout(timeout).build().map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Webhook { url, key: target.key.clone(), client })
    }

    /// Sends one delivery. The delivery's id is the `webhook-id`: the same on every retry.
    pub async fn send(&self, delivery: &PushDelivery) -> Outcome {
        let body = match serde_json::to_vec(&Body::of(delivery)) {
            Ok(body) => body,
            Err(e) => return Outcome::Dropped(format!("unserializable body: {e}")),
        };
        let id = format!("msg_{}", delivery.id.simple());
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature(&self.key, &id, timestamp, &body);
        let sent = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        super::outcome_of_send(sent, false)
    }
}

/// `Retry-After` in seconds, if the answer has one.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A transport error without its URL (a webhook URL may carry a token in its query, a Web Push
/// endpoint is itself a capability).
pub(super) fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let key = crate::config::decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_preview_is_140_characters_not_bytes() {
        let long = "é".repeat(300);
        assert_eq!(preview(&long).chars().count(), 140);
        assert_eq!(preview("short"), "short");
    }

    #[test]
    fn the_debug_form_never_shows_the_key() {
        let key = crate::config::decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let target = WebhookTarget { url: "http://127.0.0.1:9/hook".into(), key };
        let hook = Webhook::new(&target, Duration::from_secs(1)).expect("webhook");
        assert!(format!("{hook:?}").contains("<redacted>"));
    }
}
