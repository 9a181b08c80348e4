//! The FCM HTTP v1 transport: one `messages:send` per (message, device), authorised by the
//! OAuth 2 service-account grant.
//!
//! Owns the grant (an RS256 JWT assertion signed with the service account's key, exchanged at the
//! token endpoint for an access token that is reused until shortly before it expires), the
//! message, and what FCM's answers mean. It must never log the private key, an access token, a
//! device token or the message's text, and never send without a fresh enough access token.
//!
//! The grant is written here on `jsonwebtoken` and `reqwest` (both already used by the gateway)
//! rather than taken from `gcp_auth` or `yup-oauth2`: each brings its own hyper client and TLS
//! stack beside reqwest for what is one signed POST (see `docs/push.md`).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::webhook::{preview, retry_after};
use super::Outcome;
use crate::config::FcmTarget;
use crate::store::PushDelivery;

/// The OAuth scope of FCM HTTP v1.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint when neither `FCM_TOKEN_URL` nor the key file names one.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The grant type of a JWT-bearer assertion (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of an assertion: Google accepts at most an hour.
const ASSERTION_SECS: i64 = 3600;
/// An access token is replaced this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// How long FCM keeps a notification for an Android device that is off.
const ANDROID_TTL: &str = "86400s";

/// An FCM transport that cannot be built (each names its setting; never shows the key).
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("FCM_SERVICE_ACCOUNT_FILE: cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("FCM_SERVICE_ACCOUNT_FILE: {path} is not a Google service-account key: {problem}")]
    Parse { path: String, problem: String },
    #[error("FCM_SERVICE_ACCOUNT_FILE: the private_key of {path} is not an RSA private key in PEM")]
    Key { path: String },
    #[error("{var}: not an http(s) URL")]
    Url { var: &'static str },
    #[error("cannot build the FCM HTTP client: {0}")]
    Client(String),
}

/// The fields of a service-account key file that the grant needs.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// The claims of the grant's assertion.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Assertion {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// A cached access token.
struct AccessToken {
    value: String,
    renew_at: Instant,
}

/// The FCM transport of one Firebase project.
pub struct Fcm {
    send_url: reqwest::Url,
    token_url: reqwest::Url,
    client_email: String,
    key: EncodingKey,
    client: reqwest::Client,
    /// Held across a refresh, so that concurrent sends wait for one grant instead of each asking.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url.as_str())
            .field("client_email", &self.client_email)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Fcm {
    /// Reads and parses the service-account key file now (start-up), so that a bad file stops the
    /// gateway with the variable's name instead of failing every push later.
    pub fn new(target: &FcmTarget, timeout: Duration) -> Result<Fcm, FcmError> {
        let path = target.service_account_file.display().to_string();
        let text = std::fs::read_to_string(&target.service_account_file)
            .map_err(|source| FcmError::Read { path: path.clone(), source })?;
        Fcm::from_key(&text, &path, target, timeout)
    }

    /// From the key file's text; `path` only names it in errors.
    pub fn from_key(text: &str, path: &str, target: &FcmTarget, timeout: Duration) -> Result<Fcm, FcmError> {
        // serde_json's messages name fields and positions; the key is a string, never quoted.
        let file: KeyFile =
            serde_json::from_str(text).map_err(|e| FcmError::Parse { path: path.into(), problem: e.to_string() })?;
        if file.kind.as_deref().is_some_and(|kind| kind != "service_account") {
            let problem = "its type is not service_account".into();
            return Err(FcmError::Parse { path: path.into(), problem });
        }
        if file.project_id.is_empty() || file.client_email.is_empty() {
            return Err(FcmError::Parse { path: path.into(), problem: "project_id or client_email is empty".into() });
        }
        let key =
            EncodingKey::from_rsa_pem(file.private_key.as_bytes()).map_err(|_| FcmError::Key { path: path.into() })?;
        let (token_url, var) = match (&target.token_url, &file.token_uri) {
            (Some(url), _) => (url.clone(), "FCM_TOKEN_URL"),
            (None, Some(uri)) if !uri.is_empty() => (uri.clone(), "FCM_SERVICE_ACCOUNT_FILE (token_uri)"),
            (None, _) => (DEFAULT_TOKEN_URL.to_string(), "FCM_TOKEN_URL"),
        };
        let token_url = http_url(&token_url).ok_or(FcmError::Url { var })?;
        let send = format!("{}/v1/projects/{}/messages:send", target.api_url, urlencoding::encode(&file.project_id));
        let send_url = http_url(&send).ok_or(FcmError::Url { var: "FCM_API_URL" })?;
        let client =
            reqwest::Client::builder().timeout(timeout).build().map_err(|e| FcmError::Client(e.to_string()))?;
        Ok(Fcm {
            send_url,
            token_url,
            client_email: file.client_email,
            key,
            client,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends one delivery to its device. A 401 answer renews the access token and tries once more.
    pub async fn send(&self, delivery: &PushDelivery) -> Outcome {
        let Some(device) = super::device_token(delivery) else {
            return Outcome::Dropped("the delivery names no device token".into());
        };
        let body = message(delivery, device);
        let mut renewed = false;
        loop {
            let access = match self.access_token().await {
                Ok(access) => access,
                Err(outcome) => return outcome,
            };
            let response = match self.client.post(self.send_url.clone()).bearer_auth(&access).json(&body).send().await {
                Ok(response) => response,
                Err(e) => return unreachable(&e),
            };
            let status = response.status().as_u16();
            let later = retry_after(&response);
            let answer = ErrorAnswer::parse(&response.text().await.unwrap_or_default());
            if status == 401 && answer.code.is_none() && !renewed {
                self.forget(&access).await;
                renewed = true;
                continue;
            }
            return outcome_of(status, &answer, later);
        }
    }

    /// The cached access token, or a new one from the grant.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        let fresh = self.grant().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drops `used` from the cache (FCM refused it), unless another send already replaced it.
    async fn forget(&self, used: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == used) {
            *cached = None;
        }
    }

    /// The JWT-bearer grant: a signed assertion for an access token.
    async fn grant(&self) -> Result<AccessToken, Outcome> {
        let assertion = assertion(&self.client_email, self.token_url.as_str(), chrono::Utc::now().timestamp());
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &assertion, &self.key)
            .map_err(|e| Outcome::Retry { after: None, reason: format!("cannot sign the FCM assertion: {e}") })?;
        let sent = self.client.post(self.token_url.clone()).form(&[("grant_type", GRANT_TYPE), ("assertion", &jwt)]);
        let response = sent.send().await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let later = retry_after(&response);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // A refused grant is a configuration problem (a revoked key, a wrong clock), not the
            // message's: retried, so that a fixed key still delivers within the attempts.
            let error = body["error"].as_str().unwrap_or("no error code");
            tracing::warn!(status = status.as_u16(), error, "the FCM token endpoint refused the service-account grant");
            let reason = format!("FCM access token refused: HTTP {} {error}", status.as_u16());
            return Err(Outcome::Retry { after: later, reason });
        }
        let Some(value) = body["access_token"].as_str().filter(|v| !v.is_empty()) else {
            return Err(Outcome::Retry { after: None, reason: "the FCM token endpoint sent no access_token".into() });
        };
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2));
        Ok(AccessToken { value: value.to_string(), renew_at })
    }
}

/// The claims of an assertion made at `now` (Unix seconds).
pub fn assertion(client_email: &str, token_url: &str, now: i64) -> Assertion {
    Assertion {
        iss: client_email.to_string(),
        scope: SCOPE.to_string(),
        aud: token_url.to_string(),
        iat: now,
        exp: now + ASSERTION_SECS,
    }
}

/// The `messages:send` body of a delivery to `device`. Data values are strings, as FCM requires.
/// The delivery id travels in `data.delivery_id` (the same on every retry: the app drops a
/// repeat); the thread is the collapse key on Android and APNs and the Android notification's
/// tag, so a repeat or a newer message of the thread replaces the one shown.
pub fn message(d: &PushDelivery, device: &str) -> Value {
    let thread = d.thread_id.to_string();
    let badge = i32::try_from(d.unread_count.max(0)).unwrap_or(i32::MAX);
    json!({"message": {
        "token": device,
        "notification": {"title": super::title(&d.sender), "body": preview(&d.content)},
        "data": {
            "thread_id": thread,
            "message_id": d.message_id.to_string(),
            "delivery_id": d.id.to_string(),
            "unread_count": d.unread_count.to_string(),
            "collapsed": d.collapsed.to_string(),
        },
        "android": {
            "collapse_key": thread,
            "priority": "high",
            "ttl": ANDROID_TTL,
            "notification": {"tag": thread, "notification_count": badge},
        },
        "apns": {
            "headers": {"apns-collapse-id": thread},
            "payload": {"aps": {"badge": badge, "thread-id": thread, "sound": "default"}},
        },
    }})
}

/// The parts of an FCM error answer that decide the outcome.
#[derive(Debug, Default, PartialEq)]
pub struct ErrorAnswer {
    /// `details[].errorCode` of the `google.firebase.fcm.v1.FcmError` detail.
    pub code: Option<String>,
    /// `error.status` (`INVALID_ARGUMENT`, `UNAVAILABLE`, ...).
    pub status: Option<String>,
    /// A `google.rpc.BadRequest` detail: a field of the request was wrong, not the token.
    pub bad_request: bool,
}

impl ErrorAnswer {
    pub fn parse(body: &str) -> ErrorAnswer {
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return ErrorAnswer::default();
        };
        let error = &value["error"];
        let details = error["details"].as_array().map(Vec::as_slice).unwrap_or_default();
        let of_type = |suffix: &'static str| {
            details.iter().filter(move |d| d["@type"].as_str().is_some_and(|t| t.ends_with(suffix)))
        };
        ErrorAnswer {
            code: of_type("google.firebase.fcm.v1.FcmError").find_map(|d| d["errorCode"].as_str()).map(Into::into),
            status: error["status"].as_str().map(Into::into),
            bad_request: of_type("google.rpc.BadRequest").next().is_some(),
        }
    }

    fn reason(&self, status: u16) -> String {
        match self.code.as_deref().or(self.status.as_deref()) {
            Some(code) => format!("HTTP {status} {code}"),
            None => format!("HTTP {status}"),
        }
    }
}

/// What an FCM answer means. `UNREGISTERED` is a removed app instance; `INVALID_ARGUMENT` with an
/// FCM error detail and no field violation is a token FCM does not know (our message is fixed
/// and small, so nothing else of it can be invalid): both delete the device.
pub fn outcome_of(status: u16, answer: &ErrorAnswer, retry_after: Option<Duration>) -> Outcome {
    let reason = answer.reason(status);
    match (status, answer.code.as_deref()) {
        (200..=299, _) => Outcome::Sent,
        (_, Some("UNREGISTERED")) => Outcome::Gone(reason),
        (400, Some("INVALID_ARGUMENT")) if !answer.bad_request => Outcome::Gone(reason),
        // An access token refused twice (FCM's own 401 carries no FCM error code).
        (401, None) | (408 | 429, _) | (500..=599, _) => Outcome::Retry { after: retry_after, reason },
        _ => Outcome::Dropped(reason),
    }
}

/// A send that got no answer: retried.
fn unreachable(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::Retry { after: None, reason: "timeout".into() };
    }
    // The URLs hold no secret, but a device token must not reach the logs: none of them has one.
    Outcome::Retry { after: None, reason: format!("unreachable: {e}") }
}

fn http_url(text: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(text).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sender;
    use jsonwebtoken::{DecodingKey, Validation};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    fn delivery() -> PushDelivery {
        PushDelivery {
            id: uuid::Uuid::new_v4(),
            attempts: 1,
            channel: "fcm".into(),
            user_id: uuid::Uuid::new_v4(),
            thread_id: uuid::Uuid::new_v4(),
            message_id: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            content: "x".repeat(300),
            sender: Sender { full_name: "Alice Martin".into(), role: "teacher".into() },
            collapsed: 2,
            unread_count: 7,
            device: Some(json!({"id": uuid::Uuid::new_v4(), "platform": "fcm", "token": "device-token-1"})),
        }
    }

    fn target(token_url: Option<&str>) -> FcmTarget {
        FcmTarget {
            service_account_file: "/nonexistent".into(),
            api_url: "http://127.0.0.1:9".into(),
            token_url: token_url.map(Into::into),
        }
    }

    #[test]
    fn the_message_carries_the_preview_the_thread_the_delivery_id_and_the_badge() {
        let d = delivery();
        let body = message(&d, "device-token-1");
        let m = &body["message"];
        assert_eq!(m["token"], "device-token-1");
        assert_eq!(m["notification"]["title"], "Alice Martin");
        assert_eq!(m["notification"]["body"].as_str().map(|b| b.chars().count()), Some(140));
        assert_eq!(m["data"]["thread_id"], d.thread_id.to_string());
        assert_eq!(m["data"]["delivery_id"], d.id.to_string());
        assert_eq!(m["data"]["unread_count"], "7");
        assert!(m["data"].as_object().expect("data").values().all(Value::is_string), "FCM data is strings only");
        assert_eq!(m["android"]["collapse_key"], d.thread_id.to_string());
        assert_eq!(m["android"]["priority"], "high");
        assert_eq!(m["apns"]["headers"]["apns-collapse-id"], d.thread_id.to_string());
        assert_eq!(m["apns"]["payload"]["aps"]["badge"], 7);
    }

    #[test]
    fn the_assertion_is_rs256_for_the_token_url_with_the_messaging_scope_for_an_hour() {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM");
        let public = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("public PEM");
        let file = json!({"type": "service_account", "project_id": "school-chat", "private_key": pem.as_str(),
            "client_email": "push@school-chat.iam.gserviceaccount.com", "token_uri": "https://oauth2.example/token"});
        let fcm = Fcm::from_key(&file.to_string(), "sa.json", &target(None), Duration::from_secs(1)).expect("valid");
        assert_eq!(fcm.token_url.as_str(), "https://oauth2.example/token", "the key file's token_uri by default");
        assert_eq!(fcm.send_url.as_str(), "http://127.0.0.1:9/v1/projects/school-chat/messages:send");
        assert!(!format!("{fcm:?}").contains("PRIVATE"), "the key never shows");
        let overridden = Fcm::from_key(
            &file.to_string(),
            "sa.json",
            &target(Some("http://127.0.0.1:9/token")),
            Duration::from_secs(1),
        );
        assert_eq!(overridden.expect("valid").token_url.as_str(), "http://127.0.0.1:9/token");

        let claims = assertion(&fcm.client_email, fcm.token_url.as_str(), 1_700_000_000);
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &fcm.key).expect("signed");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://oauth2.example/token"]);
        validation.validate_exp = false;
        let decoding = DecodingKey::from_rsa_pem(public.as_bytes()).expect("public key");
        let verified = jsonwebtoken::decode::<Assertion>(&jwt, &decoding, &validation).expect("verifies").claims;
        assert_eq!(verified.iss, "push@school-chat.iam.gserviceaccount.com");
        assert_eq!(verified.scope, SCOPE);
        assert_eq!(verified.exp - verified.iat, 3600);
    }

    #[test]
    fn a_bad_key_file_names_the_variable_and_never_shows_the_key() {
        let no_key = json!({"project_id": "p", "client_email": "e@x", "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"});
        let e = Fcm::from_key(&no_key.to_string(), "sa.json", &target(None), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("FCM_SERVICE_ACCOUNT_FILE"), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let e = Fcm::from_key("{\"project_id\": \"p\"}", "sa.json", &target(None), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
        let e = Fcm::new(&target(None), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("FCM_SERVICE_ACCOUNT_FILE: cannot read /nonexistent"), "{e}");
    }

    #[test]
    fn answers_map_to_outcomes() {
        let unregistered = ErrorAnswer::parse(
            r#"{"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}"#,
        );
        assert_eq!(outcome_of(404, &unregistered, None), Outcome::Gone("HTTP 404 UNREGISTERED".into()));
        let bad_token = ErrorAnswer::parse(
            r#"{"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}}"#,
        );
        assert!(matches!(outcome_of(400, &bad_token, None), Outcome::Gone(_)));
        let bad_field = ErrorAnswer::parse(
            r#"{"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": []}]}}"#,
        );
        assert_eq!(outcome_of(400, &bad_field, None), Outcome::Dropped("HTTP 400 INVALID_ARGUMENT".into()));
        let not_found = ErrorAnswer::parse(r#"{"error": {"code": 404, "status": "NOT_FOUND"}}"#);
        assert!(matches!(outcome_of(404, &not_found, None), Outcome::Dropped(_)), "a wrong project deletes nothing");
        let later = Some(Duration::from_secs(30));
        let quota = ErrorAnswer::parse(
            r#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}}"#,
        );
        assert_eq!(
            outcome_of(429, &quota, later),
            Outcome::Retry { after: later, reason: "HTTP 429 QUOTA_EXCEEDED".into() }
        );
        assert!(matches!(outcome_of(503, &ErrorAnswer::parse("<html>"), None), Outcome::Retry { .. }));
        assert!(matches!(outcome_of(401, &ErrorAnswer::default(), None), Outcome::Retry { .. }));
        let mismatch = ErrorAnswer { code: Some("SENDER_ID_MISMATCH".into()), ..Default::default() };
        assert!(matches!(outcome_of(403, &mismatch, None), Outcome::Dropped(_)));
        assert_eq!(outcome_of(200, &ErrorAnswer::default(), None), Outcome::Sent);
    }
}
