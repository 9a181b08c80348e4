//! FCM stand-in: Google's OAuth 2 token endpoint and FCM HTTP v1 `messages:send`, for one
//! service account generated at run time (TEST-ONLY RSA key).
//!
//! The token endpoint verifies the JWT-bearer assertion as Google does (RS256 against the
//! account's public key; `iss` = the account's email, `scope` = FCM's, `aud` = this endpoint,
//! `exp` at most an hour after `iat` and not passed) and issues an access token.
//! `messages:send` accepts only a token it issued, checks the message's shape (data values are
//! strings), records it, and answers `{"name": ...}` or a scripted error. It never accepts an
//! assertion it cannot verify.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

/// The Firebase project of the stand-in's service account.
pub const PROJECT: &str = "standin-school-chat";
/// The service account's email.
pub const CLIENT_EMAIL: &str = "push@standin-school-chat.iam.gserviceaccount.com";
/// The OAuth scope FCM HTTP v1 needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An error answer to script for a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 404 `UNREGISTERED`: the app instance is gone.
    Unregistered,
    /// 503 `UNAVAILABLE`.
    Unavailable,
    /// 429 `QUOTA_EXCEEDED` with `Retry-After`.
    Quota { retry_after_secs: u64 },
}

/// One `messages:send` that passed authentication and the shape checks.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `message.token`.
    pub device: String,
    /// The whole `message` object.
    pub message: Value,
    /// What the stand-in answered.
    pub status: u16,
}

struct State {
    token_url: String,
    public: DecodingKey,
    issued: Mutex<HashSet<String>>,
    sent: Mutex<Vec<Sent>>,
    refused: Mutex<Vec<String>>,
    script: Mutex<HashMap<String, VecDeque<Fault>>>,
}

/// A running FCM stand-in.
pub struct FcmStandin {
    /// Base URL: `FCM_API_URL`.
    pub url: String,
    /// The service-account key file's JSON (its `token_uri` is this stand-in's token endpoint).
    pub key_file: String,
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FcmStandin {
    /// Generates a TEST-ONLY service account and serves on a free local port.
    pub async fn start() -> FcmStandin {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("an RSA key generates");
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("an RSA key encodes as PKCS#8");
        let public = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("a public key encodes");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the FCM stand-in binds");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let token_url = format!("{url}/token");
        let key_file = json!({
            "type": "service_account", "project_id": PROJECT, "private_key_id": "standin-test-only",
            "private_key": private.as_str(), "client_email": CLIENT_EMAIL, "client_id": "1",
            "token_uri": token_url,
        })
        .to_string();
        let state = Arc::new(State {
            token_url,
            public: DecodingKey::from_rsa_pem(public.as_bytes()).expect("the public key decodes"),
            issued: Mutex::default(),
            sent: Mutex::default(),
            refused: Mutex::default(),
            script: Mutex::default(),
        });
        tokio::spawn(warp::serve(routes(state.clone())).incoming(listener).run());
        FcmStandin { url, key_file, state }
    }

    /// The token endpoint (`FCM_TOKEN_URL`).
    pub fn token_url(&self) -> &str {
        &self.state.token_url
    }

    /// The next sends to `device` get these answers, in order; then 200.
    pub fn fail(&self, device: &str, faults: &[Fault]) {
        lock(&self.state.script).entry(device.to_string()).or_default().extend(faults.iter().copied());
    }

    /// Every authenticated, well-formed send, in arrival order.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.state.sent).clone()
    }

    /// Why requests were refused (bad assertions, unknown access tokens, malformed messages).
    pub fn refused(&self) -> Vec<String> {
        lock(&self.state.refused).clone()
    }

    /// Access tokens issued so far.
    pub fn grants(&self) -> usize {
        lock(&self.state.issued).len()
    }
}

fn routes(state: Arc<State>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let token_state = state.clone();
    let token = warp::post()
        .and(warp::path!("token"))
        .and(warp::body::form::<HashMap<String, String>>())
        .map(move |form: HashMap<String, String>| grant(&token_state, &form));
    let send = warp::post()
        .and(warp::path!("v1" / "projects" / String / String))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::bytes())
        .map(move |project: String, method: String, auth: Option<String>, body: bytes::Bytes| {
            send(&state, &project, &method, auth.as_deref(), &body)
        });
    token.or(send).unify()
}

fn reply(status: u16, body: Value) -> warp::reply::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

#[derive(Deserialize)]
struct Assertion {
    scope: String,
    iat: i64,
    exp: i64,
}

/// The JWT-bearer grant.
fn grant(state: &State, form: &HashMap<String, String>) -> warp::reply::Response {
    if form.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
        lock(&state.refused).push("token: wrong grant_type".into());
        return reply(400, json!({"error": "unsupported_grant_type"}));
    }
    match verify_assertion(state, form.get("assertion").map(String::as_str).unwrap_or_default()) {
        Ok(()) => {
            let token = format!("ya29.standin-{}", uuid::Uuid::new_v4().simple());
            lock(&state.issued).insert(token.clone());
            reply(200, json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
        }
        Err(problem) => {
            lock(&state.refused).push(format!("token: {problem}"));
            reply(400, json!({"error": "invalid_grant", "error_description": problem}))
        }
    }
}

fn verify_assertion(state: &State, jwt: &str) -> Result<(), String> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&state.token_url]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Assertion>(jwt, &state.public, &validation)
        .map_err(|e| format!("invalid assertion: {e}"))?
        .claims;
    if claims.scope.split(' ').all(|s| s != SCOPE) {
        return Err(format!("scope {:?} lacks {SCOPE}", claims.scope));
    }
    if claims.exp - claims.iat > 3600 {
        return Err("exp more than an hour after iat".into());
    }
    Ok(())
}

/// `messages:send`.
fn send(state: &State, project: &str, method: &str, auth: Option<&str>, body: &[u8]) -> warp::reply::Response {
    let refuse = |status: u16, code: &str, problem: String| {
        lock(&state.refused).push(format!("send: {problem}"));
        reply(status, json!({"error": {"code": status, "message": problem, "status": code}}))
    };
    if method != "messages:send" || project != PROJECT {
        return refuse(404, "NOT_FOUND", format!("no such method: projects/{project}/{method}"));
    }
    let bearer = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
    if !lock(&state.issued).contains(bearer) {
        return refuse(401, "UNAUTHENTICATED", "the access token is not one this endpoint issued".into());
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = &body["message"];
    if let Err(problem) = check_message(message) {
        lock(&state.refused).push(format!("send: {problem}"));
        let details = [json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                              "fieldViolations": [{"field": "message", "description": problem}]})];
        return reply(400, json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": details}}));
    }
    let device = message["token"].as_str().unwrap_or_default().to_string();
    let fault = lock(&state.script).get_mut(&device).and_then(VecDeque::pop_front);
    let (status, answer) = match fault {
        None => (200, json!({"name": format!("projects/{PROJECT}/messages/{}", uuid::Uuid::new_v4().simple())})),
        Some(Fault::Unregistered) => (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED")),
        Some(Fault::Unavailable) => (503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE")),
        Some(Fault::Quota { .. }) => (429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")),
    };
    lock(&state.sent).push(Sent { device, message: message.clone(), status });
    let mut response = reply(status, answer);
    if let Some(Fault::Quota { retry_after_secs }) = fault {
        if let Ok(value) = retry_after_secs.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

fn fcm_error(code: u16, status: &str, error_code: &str) -> Value {
    json!({"error": {"code": code, "message": error_code, "status": status, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}})
}

/// What FCM checks of a message this stand-in is sent: a token, a notification, string data,
/// the Android and APNs overrides in their documented shapes.
pub fn check_message(m: &Value) -> Result<(), String> {
    let text =
        |v: &Value, what: &str| v.as_str().filter(|s| !s.is_empty()).map(|_| ()).ok_or(format!("{what} missing"));
    text(&m["token"], "message.token")?;
    text(&m["notification"]["title"], "message.notification.title")?;
    text(&m["notification"]["body"], "message.notification.body")?;
    let data = m["data"].as_object().ok_or("message.data is not an object")?;
    if let Some((key, _)) = data.iter().find(|(_, v)| !v.is_string()) {
        return Err(format!("message.data.{key} is not a string"));
    }
    text(&m["android"]["collapse_key"], "message.android.collapse_key")?;
    if !matches!(m["android"]["priority"].as_str(), Some("normal" | "high")) {
        return Err("message.android.priority must be normal or high".into());
    }
    text(&m["apns"]["headers"]["apns-collapse-id"], "message.apns.headers.apns-collapse-id")?;
    if !m["apns"]["payload"]["aps"]["badge"].is_u64() {
        return Err("message.apns.payload.aps.badge is not a number".into());
    }
    Ok(())
}
