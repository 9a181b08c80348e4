//! The APNs transport: one HTTP/2 POST per (message, device) with token-based authentication.
//!
//! Owns the provider token (an ES256 JWT signed with the team's .p8 key: header `kid`, claims
//! `iss` = team id and `iat`, reused for [`TOKEN_REFRESH`] and never replaced sooner than
//! [`TOKEN_MIN_AGE`], as Apple asks), the request's headers and payload, and what APNs's answers
//! mean. The delivery id is the `apns-id`: the same on every retry and after a crash. It must
//! never log the key, a provider token, a device token or the message's text.
//!
//! Written on reqwest (HTTP/2 only, prior knowledge: ALPN h2 over TLS, h2c for a local `http://`
//! stand-in) rather than the `a2` crate, whose endpoint is Apple's production or sandbox host
//! and cannot point at a local stand-in (see `docs/push.md`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::webhook::{preview, retry_after};
use super::Outcome;
use crate::config::ApnsTarget;
use crate::store::PushDelivery;

/// A provider token is replaced after this long (Apple refuses one older than an hour).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);
/// ... and never sooner than this (Apple answers `TooManyProviderTokenUpdates`).
pub const TOKEN_MIN_AGE: Duration = Duration::from_secs(20 * 60);
/// The largest payload APNs accepts for an alert.
pub const MAX_PAYLOAD: usize = 4096;
/// How long APNs keeps a notification for a device that is off (`apns-expiration`).
const EXPIRATION_SECS: i64 = 86_400;

/// An APNs transport that cannot be built (each names its setting; never shows the key).
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("APNS_KEY_FILE: cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("APNS_KEY_FILE: {path} is not a P-256 private key in PEM (the .p8 file from Apple)")]
    Key { path: String },
    #[error("APNS_URL: not an http(s) URL")]
    Url,
    #[error("cannot build the APNs HTTP/2 client: {0}")]
    Client(String),
}

/// The claims of a provider token.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
}

/// The provider token in use.
struct ProviderToken {
    value: String,
    made: Instant,
    /// APNs called it expired: replaced as soon as [`TOKEN_MIN_AGE`] allows.
    stale: bool,
}

/// The APNs transport of one app (topic).
pub struct Apns {
    base: String,
    topic: String,
    key_id: String,
    team_id: String,
    key: EncodingKey,
    client: reqwest::Client,
    token: Mutex<Option<ProviderToken>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base", &self.base)
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Apns {
    /// Reads and parses the .p8 key now (start-up), so that a bad key stops the gateway with the
    /// variable's name instead of failing every push later.
    pub fn new(target: &ApnsTarget, timeout: Duration) -> Result<Apns, ApnsError> {
        let path = target.key_file.display().to_string();
        let pem = std::fs::read(&target.key_file).map_err(|source| ApnsError::Read { path: path.clone(), source })?;
        Apns::from_key(&pem, &path, target, timeout)
    }

    /// From the key's PEM; `path` only names it in errors.
    pub fn from_key(pem: &[u8], path: &str, target: &ApnsTarget, timeout: Duration) -> Result<Apns, ApnsError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|_| ApnsError::Key { path: path.into() })?;
        let base = reqwest::Url::parse(&target.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or(ApnsError::Url)?;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            // Apple asks providers to keep their connections open rather than reconnect.
            .pool_idle_timeout(Duration::from_secs(3600))
            .timeout(timeout)
            .build()
            .map_err(|e| ApnsError::Client(e.to_string()))?;
        Ok(Apns {
            base: base.as_str().trim_end_matches('/').to_string(),
            topic: target.topic.clone(),
            key_id: target.key_id.clone(),
            team_id: target.team_id.clone(),
            key,
            client,
            token: Mutex::new(None),
        })
    }

    /// Sends one delivery to its device; its id is the `apns-id`.
    pub async fn send(&self, delivery: &PushDelivery) -> Outcome {
        let Some(device) = super::device_token(delivery) else {
            return Outcome::Dropped("the delivery names no device token".into());
        };
        if !is_device_token(device) {
            // Never put what is not a hex token into the URL's path; APNs would say BadDeviceToken.
            return Outcome::Gone("not an APNs device token (hex)".into());
        }
        let body = match serde_json::to_vec(&payload(delivery)) {
            Ok(body) if body.len() <= MAX_PAYLOAD => body,
            Ok(body) => return Outcome::Dropped(format!("payload of {} bytes over APNs's 4 KB", body.len())),
            Err(e) => return Outcome::Dropped(format!("unserializable payload: {e}")),
        };
        let provider = match self.provider_token() {
            Ok(token) => token,
            Err(reason) => return Outcome::Retry { after: None, reason },
        };
        let expiration = chrono::Utc::now().timestamp() + EXPIRATION_SECS;
        let sent = self
            .client
            .post(format!("{}/3/device/{device}", self.base))
            .header("authorization", format!("bearer {provider}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", delivery.thread_id.to_string())
            .header("apns-id", delivery.id.to_string())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Outcome::Retry { after: None, reason: "timeout".into() },
            // The URL holds the device token: the error is logged without it.
            Err(e) => return Outcome::Retry { after: None, reason: format!("unreachable: {}", e.without_url()) },
        };
        let status = response.status().as_u16();
        let later = retry_after(&response);
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let reason = answer["reason"].as_str().unwrap_or_default();
        if reason == "ExpiredProviderToken" {
            self.expired(&provider);
        }
        outcome_of(status, reason, later)
    }

    /// The provider token in use, or a new one when it is due.
    fn provider_token(&self) -> Result<String, String> {
        let mut token = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(current) = token.as_ref() {
            let age = current.made.elapsed();
            if age < TOKEN_REFRESH && !(current.stale && age >= TOKEN_MIN_AGE) {
                return Ok(current.value.clone());
            }
        }
        let value = sign(&self.key, &self.key_id, &self.team_id, chrono::Utc::now().timestamp())
            .map_err(|e| format!("cannot sign the APNs provider token: {e}"))?;
        *token = Some(ProviderToken { value: value.clone(), made: Instant::now(), stale: false });
        Ok(value)
    }

    /// APNs called `used` expired (a clock step): replaced once [`TOKEN_MIN_AGE`] allows.
    fn expired(&self, used: &str) {
        let mut token = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(current) = token.as_mut().filter(|t| t.value == used) {
            current.stale = true;
        }
    }
}

/// A provider token: ES256, header `kid`, claims `iss` (team) and `iat` (Unix seconds).
pub fn sign(key: &EncodingKey, key_id: &str, team_id: &str, now: i64) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key_id.to_string());
    jsonwebtoken::encode(&header, &Claims { iss: team_id.to_string(), iat: now }, key)
}

/// The payload of a delivery: the alert, the badge (unread count) and the thread to group by.
pub fn payload(d: &PushDelivery) -> Value {
    let thread = d.thread_id.to_string();
    json!({
        "aps": {
            "alert": {"title": super::title(&d.sender), "body": preview(&d.content)},
            "badge": d.unread_count.max(0),
            "sound": "default",
            "thread-id": thread,
        },
        "thread_id": thread,
        "message_id": d.message_id.to_string(),
        "delivery_id": d.id.to_string(),
    })
}

/// APNs device tokens are hexadecimal (64 characters today; Apple allows them to grow).
pub fn is_device_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 200 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What an APNs answer means. 410 `Unregistered` and 400 `BadDeviceToken` delete the device: a
/// token that is not valid for this environment never becomes deliverable here, and the app
/// registers its current token at each launch (`docs/push.md` says what a wrong `APNS_SANDBOX`
/// costs). `ExpiredProviderToken` is retried with a new provider token.
pub fn outcome_of(status: u16, reason: &str, retry_after: Option<Duration>) -> Outcome {
    let text = if reason.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status} {reason}") };
    match (status, reason) {
        (200, _) => Outcome::Sent,
        (410, _) | (400, "BadDeviceToken") => Outcome::Gone(text),
        (403, "ExpiredProviderToken") | (408 | 429, _) | (500..=599, _) => {
            Outcome::Retry { after: retry_after, reason: text }
        }
        _ => Outcome::Dropped(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sender;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    fn delivery() -> PushDelivery {
        PushDelivery {
            id: uuid::Uuid::new_v4(),
            attempts: 1,
            channel: "apns".into(),
            user_id: uuid::Uuid::new_v4(),
            thread_id: uuid::Uuid::new_v4(),
            message_id: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            content: "Pick-up moved to 2 pm".into(),
            sender: Sender { full_name: "Alice Martin".into(), role: "teacher".into() },
            collapsed: 0,
            unread_count: 3,
            device: Some(json!({"id": uuid::Uuid::new_v4(), "platform": "apns", "token": "ab12"})),
        }
    }

    fn target() -> ApnsTarget {
        ApnsTarget {
            key_file: "/nonexistent.p8".into(),
            key_id: "KEY1234567".into(),
            team_id: "TEAM123456".into(),
            topic: "org.school.chat".into(),
            url: "http://127.0.0.1:9".into(),
        }
    }

    #[test]
    fn the_provider_token_is_es256_with_the_key_id_and_team_and_is_reused() {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("PEM");
        let public = secret.public_key().to_public_key_pem(LineEnding::LF).expect("public PEM");
        let apns = Apns::from_key(pem.as_bytes(), "key.p8", &target(), Duration::from_secs(1)).expect("valid");
        assert!(!format!("{apns:?}").contains("PRIVATE"));
        let token = apns.provider_token().expect("signed");
        assert_eq!(apns.provider_token().expect("cached"), token, "reused, not signed per push");
        apns.expired(&token);
        assert_eq!(apns.provider_token().expect("cached"), token, "not replaced before 20 minutes");

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::ES256, Some("KEY1234567")));
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let decoding = DecodingKey::from_ec_pem(public.as_bytes()).expect("public key");
        let claims = jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).expect("verifies").claims;
        assert_eq!(claims.iss, "TEAM123456");
        assert!((claims.iat - chrono::Utc::now().timestamp()).abs() < 5);
    }

    #[test]
    fn a_bad_key_names_the_variable() {
        let e = Apns::from_key(
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            "k.p8",
            &target(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("APNS_KEY_FILE"), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"));
        let e = Apns::new(&target(), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("APNS_KEY_FILE: cannot read /nonexistent.p8"), "{e}");
    }

    #[test]
    fn the_payload_has_the_alert_badge_sound_and_thread() {
        let d = delivery();
        let p = payload(&d);
        assert_eq!(p["aps"]["alert"]["title"], "Alice Martin");
        assert_eq!(p["aps"]["alert"]["body"], "Pick-up moved to 2 pm");
        assert_eq!(p["aps"]["badge"], 3);
        assert_eq!(p["aps"]["sound"], "default");
        assert_eq!(p["aps"]["thread-id"], d.thread_id.to_string());
        assert_eq!(p["thread_id"], d.thread_id.to_string());
        assert_eq!(p["message_id"], d.message_id.to_string());
        let longest = PushDelivery { content: "\u{1F600}".repeat(1000), ..delivery() };
        let longest =
            PushDelivery { sender: Sender { full_name: "\u{1F600}".repeat(500), role: "parent".into() }, ..longest };
        assert!(serde_json::to_vec(&payload(&longest)).expect("json").len() <= MAX_PAYLOAD, "always under 4 KB");
    }

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(outcome_of(200, "", None), Outcome::Sent);
        assert_eq!(outcome_of(410, "Unregistered", None), Outcome::Gone("HTTP 410 Unregistered".into()));
        assert!(matches!(outcome_of(400, "BadDeviceToken", None), Outcome::Gone(_)));
        assert!(matches!(outcome_of(400, "BadCollapseId", None), Outcome::Dropped(_)));
        assert!(matches!(outcome_of(403, "ExpiredProviderToken", None), Outcome::Retry { .. }));
        assert_eq!(
            outcome_of(403, "InvalidProviderToken", None),
            Outcome::Dropped("HTTP 403 InvalidProviderToken".into())
        );
        let later = Some(Duration::from_secs(9));
        assert_eq!(
            outcome_of(429, "TooManyRequests", later),
            Outcome::Retry { after: later, reason: "HTTP 429 TooManyRequests".into() }
        );
        assert!(matches!(outcome_of(503, "ServiceUnavailable", None), Outcome::Retry { .. }));
        assert!(is_device_token(&"a1".repeat(32)));
        assert!(!is_device_token("../../3/device/x") && !is_device_token(""));
    }
}
