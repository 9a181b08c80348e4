//! APNs stand-in: `POST /3/device/<token>` over HTTP/2 only (h2c, prior knowledge: an HTTP/1
//! request fails to connect), for one team key generated at run time (TEST-ONLY P-256 key, the
//! .p8 an operator downloads from Apple).
//!
//! Verifies what APNs verifies: the provider token (ES256 against the key's public half, header
//! `kid` = the key id, `iss` = the team, `iat` within the last hour), `apns-topic`,
//! `apns-push-type`, a UUID `apns-id`, `apns-collapse-id` of at most 64 bytes, a hex device token
//! and a JSON payload of at most 4 KB with an alert. Records each accepted request with its
//! `apns-id` and answers 200 or a scripted error. It never accepts a token it cannot verify.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Deserialize;
use serde_json::{json, Value};

/// The stand-in key's id (10 characters, as Apple's).
pub const KEY_ID: &str = "ST4ND1NKEY";
/// The stand-in team.
pub const TEAM_ID: &str = "ST4ND1NTM0";
/// The app's bundle id.
pub const TOPIC: &str = "org.school.chat.standin";

/// An error answer to script for a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 410 `Unregistered`: the app was removed.
    Unregistered,
    /// 400 `BadDeviceToken`.
    BadDeviceToken,
    /// 503 `ServiceUnavailable`.
    Unavailable,
}

/// One request that passed every check.
#[derive(Debug, Clone)]
pub struct Push {
    pub device: String,
    pub apns_id: String,
    pub collapse_id: String,
    pub priority: String,
    pub payload: Value,
    /// The provider token it carried (to see that it is reused).
    pub provider_token: String,
    /// What the stand-in answered.
    pub status: u16,
}

struct State {
    public: DecodingKey,
    pushes: Mutex<Vec<Push>>,
    refused: Mutex<Vec<String>>,
    script: Mutex<HashMap<String, VecDeque<Fault>>>,
}

/// A running APNs stand-in.
pub struct ApnsStandin {
    /// Base URL (`APNS_URL`), `http://`: HTTP/2 without TLS.
    pub url: String,
    /// The team key's PEM, as in Apple's .p8 file (`APNS_KEY_FILE`'s content).
    pub key_pem: String,
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ApnsStandin {
    /// Generates a TEST-ONLY team key and serves HTTP/2 on a free local port.
    pub async fn start() -> ApnsStandin {
        let secret = p256::SecretKey::random(&mut OsRng);
        let key_pem = secret.to_pkcs8_pem(LineEnding::LF).expect("a P-256 key encodes as PKCS#8").to_string();
        let public = secret.public_key().to_public_key_pem(LineEnding::LF).expect("a public key encodes");
        let state = Arc::new(State {
            public: DecodingKey::from_ec_pem(public.as_bytes()).expect("the public key decodes"),
            pushes: Mutex::default(),
            refused: Mutex::default(),
            script: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the APNs stand-in binds");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(serve(listener, state.clone()));
        ApnsStandin { url, key_pem, state }
    }

    /// The next pushes to `device` get these answers, in order; then 200.
    pub fn fail(&self, device: &str, faults: &[Fault]) {
        lock(&self.state.script).entry(device.to_string()).or_default().extend(faults.iter().copied());
    }

    /// Every verified request, in arrival order.
    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.state.pushes).clone()
    }

    /// Why requests were refused.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.state.refused).clone()
    }
}

/// Accepts connections and serves each with HTTP/2 only.
async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that does not speak HTTP/2 gets a protocol error: APNs is HTTP/2 only.
            let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

fn answer(status: u16, apns_id: &str, reason: Option<&str>) -> Response<Full<Bytes>> {
    let body = reason.map(|r| json!({"reason": r}).to_string()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(id) = apns_id.parse() {
        response.headers_mut().insert("apns-id", id);
    }
    response
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let apns_id = header("apns-id");
    let checked = check(state, &parts, &header);
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer(400, &apns_id, Some("BadPayload")),
    };
    let (device, provider_token) = match checked {
        Ok(ok) => ok,
        Err((status, reason, problem)) => {
            lock(&state.refused).push(problem);
            return answer(status, &apns_id, Some(reason));
        }
    };
    let payload = match check_payload(&body) {
        Ok(payload) => payload,
        Err((status, reason)) => {
            lock(&state.refused).push(format!("payload: {reason}"));
            return answer(status, &apns_id, Some(reason));
        }
    };
    let fault = lock(&state.script).get_mut(&device).and_then(VecDeque::pop_front);
    let (status, reason) = match fault {
        None => (200, None),
        Some(Fault::Unregistered) => (410, Some("Unregistered")),
        Some(Fault::BadDeviceToken) => (400, Some("BadDeviceToken")),
        Some(Fault::Unavailable) => (503, Some("ServiceUnavailable")),
    };
    lock(&state.pushes).push(Push {
        device,
        apns_id: apns_id.clone(),
        collapse_id: header("apns-collapse-id"),
        priority: header("apns-priority"),
        payload,
        provider_token,
        status,
    });
    answer(status, &apns_id, reason)
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

type Refusal = (u16, &'static str, String);

/// The request's line and headers; the device token and provider token when they pass.
fn check(
    state: &State,
    req: &http::request::Parts,
    header: &dyn Fn(&str) -> String,
) -> Result<(String, String), Refusal> {
    if req.version != hyper::Version::HTTP_2 || req.method != hyper::Method::POST {
        return Err((405, "MethodNotAllowed", "not an HTTP/2 POST".into()));
    }
    let device = req.uri.path().strip_prefix("/3/device/").unwrap_or_default().to_string();
    if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken", format!("device token {device:?} is not hex")));
    }
    let authorization = header("authorization");
    let Some(jwt) = authorization.strip_prefix("bearer ") else {
        return Err((403, "MissingProviderToken", "no bearer provider token".into()));
    };
    verify_provider_token(state, jwt)?;
    let expect = |name: &str, ok: bool, reason: &'static str| {
        if ok {
            Ok(())
        } else {
            Err((400, reason, format!("{name}: {:?}", header(name))))
        }
    };
    expect("apns-topic", header("apns-topic") == TOPIC, "BadTopic")?;
    expect("apns-push-type", header("apns-push-type") == "alert", "InvalidPushType")?;
    expect("apns-priority", matches!(header("apns-priority").as_str(), "5" | "10"), "BadPriority")?;
    expect("apns-id", uuid::Uuid::parse_str(&header("apns-id")).is_ok(), "BadMessageId")?;
    expect("apns-collapse-id", header("apns-collapse-id").len() <= 64, "BadCollapseId")?;
    expect("apns-expiration", header("apns-expiration").parse::<i64>().is_ok(), "BadExpirationDate")?;
    Ok((device, jwt.to_string()))
}

fn verify_provider_token(state: &State, jwt: &str) -> Result<(), Refusal> {
    let invalid = |problem: String| (403, "InvalidProviderToken", problem);
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| invalid(format!("provider token: {e}")))?;
    if header.kid.as_deref() != Some(KEY_ID) {
        return Err(invalid(format!("provider token kid {:?}", header.kid)));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &state.public, &validation)
        .map_err(|e| invalid(format!("provider token: {e}")))?
        .claims;
    if claims.iss != TEAM_ID {
        return Err(invalid(format!("provider token iss {:?}", claims.iss)));
    }
    let age = crate::keys::now_secs() - claims.iat;
    if age > 3600 {
        return Err((403, "ExpiredProviderToken", format!("provider token issued {age} s ago")));
    }
    if age < -60 {
        return Err(invalid("provider token issued in the future".into()));
    }
    Ok(())
}

/// At most 4 KB of JSON with `aps.alert` (title and body), a numeric badge.
fn check_payload(body: &[u8]) -> Result<Value, (u16, &'static str)> {
    if body.len() > 4096 {
        return Err((413, "PayloadTooLarge"));
    }
    let payload: Value = serde_json::from_slice(body).map_err(|_| (400, "PayloadEmpty"))?;
    let alert = &payload["aps"]["alert"];
    if !alert["title"].is_string() || !alert["body"].is_string() || !payload["aps"]["badge"].is_u64() {
        return Err((400, "PayloadEmpty"));
    }
    Ok(payload)
}
