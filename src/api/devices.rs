//! The push endpoints of the REST API: a user's devices (`POST /api/chat/devices`,
//! `GET /api/chat/devices`, `DELETE /api/chat/devices/:device_id`) and muting a thread
//! (`POST /api/chat/threads/:thread_id/mute`).
//!
//! Owns the request shapes and their validation, so that a bad device is refused with a clear 400
//! before it reaches the database (whose checks stay the last word). Every call goes to the store
//! with the caller's own token: row-level security decides whose devices and which threads. It
//! must never log a device token, a Web Push endpoint or its keys: they address one person's
//! phone.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{with_caller, with_state, ApiState, Caller};
use crate::error::PeerError;
use crate::store::{NewDevice, StoreError};

/// Largest request body of these endpoints (a Web Push subscription is well under 1 KiB).
pub const MAX_BODY: u64 = 8 * 1024;
/// Longest provider token accepted (the database's own bound).
const MAX_TOKEN: usize = 4096;
/// Longest Web Push endpoint accepted (the database's own bound).
const MAX_ENDPOINT: usize = 2048;
/// Longest locale tag accepted (BCP 47 tags are far shorter).
const MAX_LOCALE: usize = 35;
/// The platforms a device can be on.
pub const PLATFORMS: [&str; 4] = ["webpush", "fcm", "apns", "expo"];

/// The device and mute routes, each for a verified caller only.
pub(super) fn routes(state: ApiState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let caller = with_caller(state.clone());
    let st = move || with_state(state.clone());
    let devices = warp::path("api").and(warp::path("chat")).and(warp::path("devices"));
    let register = devices
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller.clone())
        .and(bounded_body())
        .then(|s, c, b: Body| async move { answer(async { register(s, c, &b?).await }.await) });
    let list = devices
        .and(warp::path::end())
        .and(warp::get())
        .and(st())
        .and(caller.clone())
        .then(|s, c| async move { answer(list(s, c).await) });
    let remove = devices
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(st())
        .and(caller.clone())
        .then(|id, s, c| async move { answer(unregister(s, c, id).await) });
    let mute = warp::path("api")
        .and(warp::path("chat"))
        .and(warp::path("threads"))
        .and(warp::path::param::<String>())
        .and(warp::path("mute"))
        .and(warp::path::end())
        .and(warp::post())
        .and(st())
        .and(caller)
        .and(bounded_body())
        .then(|thread, s, c, b: Body| async move { answer(async { mute(s, c, thread, &b?).await }.await) });
    register.or(list).unify().or(remove).unify().or(mute).unify()
}

/// A request body, or why it was refused.
pub(super) type Body = Result<hyper::body::Bytes, PeerError>;

/// The body, at most [`MAX_BODY`] bytes. Too large is answered here (413), not left to a
/// rejection that another route's "method not allowed" would outrank.
pub(super) fn bounded_body() -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes()).map(Ok).or_else(|r: Rejection| async move {
        if r.find::<warp::reject::PayloadTooLarge>().is_some() {
            Ok((Err(PeerError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")),))
        } else if r.find::<warp::reject::LengthRequired>().is_some() {
            Ok((Err(PeerError::new(StatusCode::LENGTH_REQUIRED, "Content-Length required")),))
        } else {
            Err(r)
        }
    })
}

pub(super) fn answer(result: Result<Response, PeerError>) -> Response {
    result.unwrap_or_else(|e| e.response())
}

pub(super) fn reply(status: StatusCode, body: Value) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// `POST /api/chat/devices`: `{"platform": "fcm"|"apns"|"expo", "token", "locale"?}` or
/// `{"platform": "webpush", "subscription": <PushSubscription.toJSON()>, "locale"?}`.
#[derive(Deserialize)]
struct Registration {
    platform: Option<String>,
    token: Option<String>,
    subscription: Option<Subscription>,
    locale: Option<String>,
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Deserialize)]
struct Subscription {
    endpoint: Option<String>,
    keys: Option<SubscriptionKeys>,
}

#[derive(Deserialize)]
struct SubscriptionKeys {
    p256dh: Option<String>,
    auth: Option<String>,
}

/// Parses and checks a registration body.
fn parse_registration(body: &[u8]) -> Result<NewDevice, PeerError> {
    let bad = PeerError::bad_request;
    let r: Registration = serde_json::from_slice(body).map_err(|_| {
        bad("Invalid body: expected JSON {\"platform\", \"token\"} or {\"platform\": \"webpush\", \"subscription\"}")
    })?;
    let platform = r.platform.ok_or_else(|| bad("Missing field: platform (webpush, fcm, apns or expo)"))?;
    if !PLATFORMS.contains(&platform.as_str()) {
        return Err(bad("Invalid platform: expected webpush, fcm, apns or expo"));
    }
    let locale = r.locale.filter(|l| !l.trim().is_empty()).map(|l| l.trim().to_string());
    if let Some(l) = &locale {
        if l.len() > MAX_LOCALE || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("Invalid locale: expected a language tag such as en-GB"));
        }
    }
    if platform == "webpush" {
        if r.token.is_some() {
            return Err(bad("A webpush device is a subscription, not a token: send \"subscription\""));
        }
        let s = r.subscription.ok_or_else(|| bad("Missing field: subscription (PushSubscription.toJSON())"))?;
        let endpoint = s.endpoint.ok_or_else(|| bad("Missing field: subscription.endpoint"))?;
        check_endpoint(&endpoint)?;
        let keys = s.keys.ok_or_else(|| bad("Missing field: subscription.keys"))?;
        let p256dh = keys.p256dh.ok_or_else(|| bad("Missing field: subscription.keys.p256dh"))?;
        let auth = keys.auth.ok_or_else(|| bad("Missing field: subscription.keys.auth"))?;
        let p256dh_bytes = decode_base64url(&p256dh);
        if !p256dh_bytes.as_ref().is_some_and(|k| k.len() == 65 && k[0] == 4) {
            return Err(bad("Invalid subscription.keys.p256dh: expected a base64url uncompressed P-256 public key"));
        }
        if decode_base64url(&auth).map(|a| a.len()) != Some(16) {
            return Err(bad("Invalid subscription.keys.auth: expected a base64url 16-byte secret"));
        }
        return Ok(NewDevice {
            platform,
            endpoint: Some(endpoint),
            p256dh: Some(p256dh.trim_end_matches('=').to_string()),
            auth: Some(auth.trim_end_matches('=').to_string()),
            locale,
            ..NewDevice::default()
        });
    }
    if r.subscription.is_some() {
        return Err(bad("Only a webpush device has a subscription: send \"token\""));
    }
    let token = r.token.ok_or_else(|| bad("Missing field: token"))?;
    check_token(&platform, &token)?;
    Ok(NewDevice { platform, token: Some(token), locale, ..NewDevice::default() })
}

/// A Web Push endpoint: an https URL with a host, of bounded length.
fn check_endpoint(endpoint: &str) -> Result<(), PeerError> {
    let ok = endpoint.len() <= MAX_ENDPOINT
        && reqwest::Url::parse(endpoint).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(PeerError::bad_request("Invalid subscription.endpoint: expected the push service's https URL"))
    }
}

/// A provider token in the form its platform issues.
fn check_token(platform: &str, token: &str) -> Result<(), PeerError> {
    let printable = !token.is_empty() && token.len() <= MAX_TOKEN && token.chars().all(|c| c.is_ascii_graphic());
    let shaped = match platform {
        // APNs device tokens are hex (32 bytes today; Apple says not to assume the length).
        "apns" => token.len().is_multiple_of(2) && token.chars().all(|c| c.is_ascii_hexdigit()),
        "expo" => {
            (token.starts_with("ExponentPushToken[") || token.starts_with("ExpoPushToken[")) && token.ends_with(']')
        }
        _ => true,
    };
    if printable && shaped {
        return Ok(());
    }
    let expected = match platform {
        "apns" => "the device token in hex",
        "expo" => "an Expo push token, ExponentPushToken[...]",
        _ => "the FCM registration token",
    };
    Err(PeerError::bad_request(format!("Invalid token for {platform}: expected {expected}")))
}

fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim().trim_end_matches('=')).ok()
}

async fn register(state: ApiState, caller: Caller, body: &[u8]) -> Result<Response, PeerError> {
    let device = parse_registration(body)?;
    let id = state.store.register_push_device(&caller.token, &device).await?;
    tracing::info!(user = %caller.identity.user_id, device = %id, platform = %device.platform, "push device registered");
    let data = json!({"id": id, "platform": device.platform});
    Ok(reply(StatusCode::CREATED, json!({"status": "success", "data": data, "id": id, "platform": device.platform})))
}

async fn list(state: ApiState, caller: Caller) -> Result<Response, PeerError> {
    let devices = state.store.push_devices(&caller.token).await?;
    let count = devices.len();
    Ok(reply(
        StatusCode::OK,
        json!({"status": "success", "data": {"devices": devices, "count": count}, "devices": devices, "count": count}),
    ))
}

async fn unregister(state: ApiState, caller: Caller, id: String) -> Result<Response, PeerError> {
    let id = Uuid::parse_str(&id).map_err(|_| PeerError::bad_request("Invalid device id: must be a UUID"))?;
    if !state.store.unregister_push_device(&caller.token, id).await? {
        return Err(PeerError::new(StatusCode::NOT_FOUND, "No such device"));
    }
    tracing::info!(user = %caller.identity.user_id, device = %id, "push device removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/chat/threads/:thread_id/mute`: `{"until": <RFC 3339 time> | null}`.
#[derive(Deserialize)]
struct Mute {
    // `Option<Option<_>>`: a missing `until` is an error, an explicit `null` unmutes.
    #[serde(default, deserialize_with = "present")]
    until: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The mute's end from a body: `Ok(None)` unmutes.
fn parse_mute(body: &[u8]) -> Result<Option<chrono::DateTime<chrono::Utc>>, PeerError> {
    let missing = "Missing field: until (an RFC 3339 time such as 2030-01-01T00:00:00Z, or null to unmute)";
    let m: Mute = serde_json::from_slice(body).map_err(|_| PeerError::bad_request(missing))?;
    let until = m.until.ok_or_else(|| PeerError::bad_request(missing))?;
    until
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| PeerError::bad_request("Invalid until: expected an RFC 3339 time, or null to unmute"))
        })
        .transpose()
}

async fn mute(state: ApiState, caller: Caller, thread: String, body: &[u8]) -> Result<Response, PeerError> {
    let thread_id =
        Uuid::parse_str(&thread).map_err(|_| PeerError::bad_request("Invalid thread_id: must be a UUID"))?;
    let until = parse_mute(body)?;
    let stored = match state.store.mute_thread(&caller.token, thread_id, until).await {
        Ok(stored) => stored,
        Err(StoreError::Rejected { status: 403, .. }) => {
            return Err(PeerError::new(StatusCode::FORBIDDEN, "Not a participant of this thread"));
        }
        Err(e) => return Err(e.into()),
    };
    let muted_until = stored.map(crate::model::format_time);
    tracing::debug!(user = %caller.identity.user_id, thread = %thread_id, muted = muted_until.is_some(), "thread mute set");
    let data = json!({"thread_id": thread_id, "muted_until": muted_until});
    Ok(reply(
        StatusCode::OK,
        json!({"status": "success", "data": data, "thread_id": thread_id, "muted_until": muted_until}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

    fn message(body: &str) -> String {
        parse_registration(body.as_bytes()).err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn provider_tokens_are_checked_by_platform() {
        let d = parse_registration(br#"{"platform":"fcm","token":"fGx:APA91b-x_1","locale":"en-GB"}"#).expect("fcm");
        assert_eq!(
            (d.platform.as_str(), d.token.as_deref(), d.locale.as_deref()),
            ("fcm", Some("fGx:APA91b-x_1"), Some("en-GB"))
        );
        assert!(parse_registration(br#"{"platform":"apns","token":"a1b2c3d4"}"#).is_ok());
        assert!(message(r#"{"platform":"apns","token":"not hex"}"#).contains("hex"));
        assert!(parse_registration(br#"{"platform":"expo","token":"ExponentPushToken[xxxx]"}"#).is_ok());
        assert!(message(r#"{"platform":"expo","token":"xxxx"}"#).contains("ExponentPushToken"));
        assert!(message(r#"{"platform":"fcm","token":"a b"}"#).contains("Invalid token"));
        assert!(message(r#"{"platform":"fcm"}"#).contains("Missing field: token"));
        assert!(message(r#"{"platform":"sms","token":"x"}"#).contains("Invalid platform"));
        assert!(message(r#"{"token":"x"}"#).contains("Missing field: platform"));
        assert!(message("not json").contains("Invalid body"));
        assert!(message(r#"{"platform":"fcm","token":"x","locale":"en GB"}"#).contains("locale"));
    }

    #[test]
    fn a_web_push_subscription_needs_an_https_endpoint_and_well_formed_keys() {
        let good = format!(
            r#"{{"platform":"webpush","subscription":{{"endpoint":"https://push.example/s/1","expirationTime":null,"keys":{{"p256dh":"{P256DH}","auth":"{AUTH}"}}}}}}"#
        );
        let d = parse_registration(good.as_bytes()).expect("webpush");
        assert_eq!(d.endpoint.as_deref(), Some("https://push.example/s/1"));
        assert_eq!((d.p256dh.as_deref(), d.auth.as_deref(), d.token), (Some(P256DH), Some(AUTH), None));
        assert!(message(&good.replace("https://", "http://")).contains("endpoint"));
        assert!(message(&good.replace(AUTH, "c2hvcnQ")).contains("keys.auth"));
        assert!(message(&good.replace(P256DH, AUTH)).contains("keys.p256dh"));
        assert!(message(r#"{"platform":"webpush","token":"x"}"#).contains("subscription"));
        assert!(message(r#"{"platform":"fcm","subscription":{}}"#).contains("Only a webpush"));
    }

    #[test]
    fn a_mute_needs_until_and_null_unmutes() {
        let until = parse_mute(br#"{"until":"2030-01-01T00:00:00+01:00"}"#).expect("a time");
        assert_eq!(until.map(crate::model::format_time).as_deref(), Some("2029-12-31T23:00:00.000000Z"));
        assert_eq!(parse_mute(br#"{"until":null}"#).expect("unmute"), None);
        assert!(parse_mute(b"{}").unwrap_err().message.contains("Missing field: until"));
        assert!(parse_mute(br#"{"until":"tomorrow"}"#).unwrap_err().message.contains("Invalid until"));
        assert!(parse_mute(b"").is_err());
    }
}
