//! The Web Push transport: one push message per (message, user, browser subscription), delivered
//! to the subscription's endpoint per RFC 8030, its payload encrypted per RFC 8291 (`aes128gcm`,
//! one record, a fresh server key pair each time) and the request signed per RFC 8292 (VAPID).
//!
//! Owns the payload the service worker shows, the `TTL`, `Urgency` and `Topic` headers, the VAPID
//! token, and what a push service's answer means (404/410: the subscription is gone and deleted).
//! It must never log a subscription's endpoint (a capability URL), its keys, the VAPID key or the
//! payload (a preview of a child's or parent's message).

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::webhook::preview;
use super::Outcome;
use crate::config::Vapid;
use crate::store::PushDelivery;

/// How long a push service keeps a message for a device that is offline.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(12 * 3600);

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A Web Push client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error("VAPID_PRIVATE_KEY cannot be used for signing")]
    Key,
    #[error("cannot build the Web Push HTTP client: {0}")]
    Client(String),
}

/// A device row that is not a usable Web Push subscription.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscriptionError {
    #[error("the subscription has no {0}")]
    Missing(&'static str),
    #[error("the subscription's endpoint is not an http(s) URL")]
    Endpoint,
    #[error("the subscription's p256dh is not a P-256 public key")]
    P256dh,
    #[error("the subscription's auth is not 16 bytes of base64url")]
    Auth,
}

/// A browser's push subscription (`PushSubscription.toJSON()`: endpoint, keys.p256dh, keys.auth).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: reqwest::Url,
    pub p256dh: p256::PublicKey,
    pub auth: web_push_native::Auth,
}

impl Subscription {
    /// From a leased delivery's `device` (`endpoint`, `p256dh`, `auth`).
    pub fn of_device(device: Option<&Value>) -> Result<Subscription, SubscriptionError> {
        let field = |name: &'static str| {
            device
                .and_then(|d| d.get(name))
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .ok_or(SubscriptionError::Missing(name))
        };
        let endpoint = reqwest::Url::parse(field("endpoint")?.trim()).map_err(|_| SubscriptionError::Endpoint)?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
            return Err(SubscriptionError::Endpoint);
        }
        let key = decode_b64url(field("p256dh")?).ok_or(SubscriptionError::P256dh)?;
        let p256dh = p256::PublicKey::from_sec1_bytes(&key).map_err(|_| SubscriptionError::P256dh)?;
        let auth: [u8; 16] =
            decode_b64url(field("auth")?).and_then(|a| a.try_into().ok()).ok_or(SubscriptionError::Auth)?;
        Ok(Subscription { endpoint, p256dh, auth: web_push_native::Auth::from(auth) })
    }
}

/// Base64url as browsers give it, also accepting padding and the standard alphabet.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    let text: String = text.trim().trim_end_matches('=').replace('+', "-").replace('/', "_");
    B64URL.decode(text).ok()
}

/// What the service worker receives (`event.data.json()`).
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The delivery's id: the same on every retry, so a service worker can drop a repeat.
    pub delivery_id: Uuid,
    pub thread_id: Uuid,
    pub message_id: Uuid,
    pub created_at: String,
    pub sender: &'a crate::model::Sender,
    pub preview: String,
    pub unread_count: i64,
    /// Older messages of the same thread this push stands for (a burst collapsed into it).
    pub collapsed: i64,
}

impl<'a> Payload<'a> {
    pub fn of(d: &'a PushDelivery) -> Payload<'a> {
        Payload {
            kind: "offline_message",
            delivery_id: d.id,
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

/// The `Topic` of a thread's pushes: base64url of the thread id's 16 bytes (22 characters, within
/// RFC 8030's 32), so a push service replaces an undelivered push of the same thread.
pub fn topic(thread: Uuid) -> String {
    B64URL.encode(thread.as_bytes())
}

/// The VAPID `aud`: the endpoint's origin, `scheme://host[:port]`.
pub fn audience(endpoint: &reqwest::Url) -> String {
    endpoint.origin().ascii_serialization()
}

/// The public key of a VAPID key, base64url of its uncompressed point (the web app's
/// `applicationServerKey`, and `k=` of every request).
pub fn public_key(key: &p256::SecretKey) -> String {
    B64URL.encode(key.public_key().to_encoded_point(false).as_bytes())
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: i64,
    sub: &'a str,
}

/// The configured Web Push sender.
pub struct WebPush {
    signing: EncodingKey,
    public_key: String,
    subject: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush").field("public_key", &self.public_key).field("subject", &self.subject).finish()
    }
}

impl WebPush {
    /// The sender of a validated VAPID identity, trusting `roots` (PEM) besides the public roots;
    /// each request times out after `timeout`.
    pub fn new(vapid: &Vapid, roots: Option<&str>, timeout: Duration) -> Result<WebPush, WebPushError> {
        let der = vapid.key.to_pkcs8_der().map_err(|_| WebPushError::Key)?;
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(pem) = roots {
            let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| WebPushError::Client(format!("extra root certificates: {e}")))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| WebPushError::Client(e.to_string()))?;
        Ok(WebPush {
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: public_key(&vapid.key),
            subject: vapid.subject.clone(),
            client,
        })
    }

    /// The `Authorization` header for `endpoint`: `vapid t=<ES256 JWT>, k=<public key>`.
    pub fn authorization(&self, endpoint: &reqwest::Url, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
        let aud = audience(endpoint);
        let exp = now.timestamp() + TOKEN_VALIDITY.as_secs() as i64;
        let claims = Claims { aud: &aud, exp, sub: &self.subject };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing).ok()?;
        Some(format!("vapid t={token}, k={}", self.public_key))
    }

    /// Sends one delivery to its subscription.
    pub async fn send(&self, delivery: &PushDelivery) -> Outcome {
        let subscription = match Subscription::of_device(delivery.device.as_ref()) {
            Ok(subscription) => subscription,
            Err(e) => return Outcome::Dropped(e.to_string()),
        };
        let payload = match serde_json::to_vec(&Payload::of(delivery)) {
            Ok(payload) => payload,
            Err(e) => return Outcome::Dropped(format!("unserializable payload: {e}")),
        };
        let body = match web_push_native::encrypt(payload, &subscription.p256dh, &subscription.auth) {
            Ok(body) => body,
            Err(e) => return Outcome::Dropped(format!("cannot encrypt the payload: {e}")),
        };
        let Some(authorization) = self.authorization(&subscription.endpoint, chrono::Utc::now()) else {
            return Outcome::Dropped("cannot sign the VAPID token".into());
        };
        let sent = self
            .client
            .post(subscription.endpoint)
            .header("authorization", authorization)
            .header("content-type", "application/octet-stream")
            .header("content-encoding", "aes128gcm")
            .header("ttl", TTL.as_secs().to_string())
            .header("urgency", "high")
            .header("topic", topic(delivery.thread_id))
            .body(body)
            .send()
            .await;
        // 404/410: gone; 413: too large (dropped); 429 and 5xx: retried.
        super::outcome_of_send(sent, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 8291's example receiver (section 5): its private key, public key and auth secret.
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const UA_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    /// A test-only VAPID key pair.
    const VAPID_PRIVATE: &str = "8K0tY1TO0eV1Wg0nw8PDh28dnO7r0oOM7TbXhTvBhgQ";
    const VAPID_PUBLIC: &str =
        "BP7FkbjA2lZfpVx7rL-mKogAbH2Sjb6RWYDFvzrg1Jj9NWyL5W5DNIORhD66o8T_07h3CFSjUMBarSN3iT3MI9w";

    fn device() -> Value {
        json!({"id": Uuid::nil(), "platform": "webpush", "endpoint": "https://push.example:8443/w/abc?x=1",
               "p256dh": UA_PUBLIC, "auth": UA_AUTH})
    }

    fn sender() -> WebPush {
        let vapid = Vapid {
            key: crate::config::decode_vapid_key(VAPID_PRIVATE).expect("key"),
            subject: "mailto:it@school.example".into(),
        };
        WebPush::new(&vapid, None, Duration::from_secs(1)).expect("sender")
    }

    #[test]
    fn a_subscription_is_read_from_the_device_row() {
        let sub = Subscription::of_device(Some(&device())).expect("valid");
        assert_eq!(audience(&sub.endpoint), "https://push.example:8443");
        let mut bad = device();
        bad["auth"] = json!("c2hvcnQ");
        assert_eq!(Subscription::of_device(Some(&bad)).unwrap_err(), SubscriptionError::Auth);
        bad = device();
        bad["p256dh"] = json!("BAAA");
        assert_eq!(Subscription::of_device(Some(&bad)).unwrap_err(), SubscriptionError::P256dh);
        bad = device();
        bad["endpoint"] = json!("mailto:x@y.example");
        assert_eq!(Subscription::of_device(Some(&bad)).unwrap_err(), SubscriptionError::Endpoint);
        assert_eq!(Subscription::of_device(None).unwrap_err(), SubscriptionError::Missing("endpoint"));
    }

    #[test]
    fn the_topic_is_a_short_base64url_collapse_key_per_thread() {
        let thread = Uuid::parse_str("b0000000-0000-4000-8000-000000000001").expect("uuid");
        let t = topic(thread);
        assert_eq!(t.len(), 22);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{t}");
        assert_eq!(t, topic(thread));
        assert_ne!(t, topic(Uuid::nil()));
    }

    #[test]
    fn the_vapid_header_carries_the_public_key_and_a_verifiable_es256_token() {
        let push = sender();
        assert_eq!(push.public_key, VAPID_PUBLIC);
        let endpoint = reqwest::Url::parse("https://push.example:8443/w/abc").expect("url");
        let now = chrono::Utc::now();
        let header = push.authorization(&endpoint, now).expect("signed");
        let (token, k) = header.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")).expect("t and k");
        assert_eq!(k, VAPID_PUBLIC);
        let point = B64URL.decode(k).expect("k");
        let (x, y) = (B64URL.encode(&point[1..33]), B64URL.encode(&point[33..]));
        let key = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).expect("key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://push.example:8443"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies").claims;
        assert_eq!(claims["sub"], "mailto:it@school.example");
        let exp = claims["exp"].as_i64().expect("exp");
        assert!(exp > now.timestamp() && exp <= now.timestamp() + 24 * 3600, "{exp}");
    }

    #[test]
    fn the_payload_decrypts_with_the_subscriptions_private_key() {
        let sub = Subscription::of_device(Some(&device())).expect("valid");
        let body = web_push_native::encrypt(b"{\"hello\":1}".to_vec(), &sub.p256dh, &sub.auth).expect("encrypted");
        // One aes128gcm record: salt, record size, key id length, the 65-byte server key.
        assert_eq!(body[20], 65);
        let private = p256::SecretKey::from_slice(&B64URL.decode(UA_PRIVATE).expect("b64")).expect("key");
        let plain = web_push_native::decrypt(body, &private, &sub.auth).expect("decrypts");
        assert_eq!(plain, b"{\"hello\":1}");
    }

    #[test]
    fn the_payload_is_what_the_service_worker_shows() {
        let sender = crate::model::Sender { full_name: "Alice Martin".into(), role: "teacher".into() };
        let delivery = PushDelivery {
            id: Uuid::nil(),
            attempts: 1,
            channel: "webpush".into(),
            user_id: Uuid::nil(),
            thread_id: Uuid::nil(),
            message_id: Uuid::nil(),
            created_at: chrono::Utc::now(),
            content: "x".repeat(500),
            sender,
            collapsed: 2,
            unread_count: 7,
            device: Some(device()),
        };
        let payload = serde_json::to_value(Payload::of(&delivery)).expect("json");
        assert_eq!(payload["type"], "offline_message");
        assert_eq!(payload["preview"].as_str().map(str::len), Some(140));
        assert_eq!((payload["unread_count"].clone(), payload["collapsed"].clone()), (json!(7), json!(2)));
        assert_eq!(payload["sender"], json!({"full_name": "Alice Martin", "role": "teacher"}));
        assert_eq!(payload["delivery_id"], Uuid::nil().to_string());
        assert!(payload.get("user_id").is_none());
    }

    #[test]
    fn the_debug_form_never_shows_the_key() {
        assert!(!format!("{:?}", sender()).contains(VAPID_PRIVATE));
    }
}
