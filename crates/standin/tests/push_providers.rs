//! The FCM and APNs stand-ins refuse what the real providers refuse: an assertion or provider
//! token signed with another key, a wrong scope, key id or team, an assertion living over an
//! hour, an access token they did not issue, data that is not strings, and HTTP/1 on APNs.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};
use supabase_standin::keys::now_secs;
use supabase_standin::push::apns::{self, ApnsStandin};
use supabase_standin::push::fcm::{self, FcmStandin};

fn assertion(key: &EncodingKey, aud: &str, scope: &str, lifetime: i64) -> String {
    let now = now_secs();
    let claims = json!({"iss": fcm::CLIENT_EMAIL, "scope": scope, "aud": aud, "iat": now, "exp": now + lifetime});
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key).expect("signed")
}

async fn grant(client: &reqwest::Client, standin: &FcmStandin, jwt: &str) -> (u16, Value) {
    let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", jwt)];
    let response = client.post(standin.token_url()).form(&form).send().await.expect("answered");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fcm_stand_in_verifies_the_assertion_and_the_access_token() {
    let standin = FcmStandin::start().await;
    let file: Value = serde_json::from_str(&standin.key_file).expect("a key file");
    let key = EncodingKey::from_rsa_pem(file["private_key"].as_str().unwrap_or_default().as_bytes()).expect("key");
    let client = reqwest::Client::new();
    let aud = standin.token_url().to_string();

    let other = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key");
    let other_pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&other, LineEnding::LF).expect("pem");
    let other = EncodingKey::from_rsa_pem(other_pem.as_bytes()).expect("key");
    assert_eq!(grant(&client, &standin, &assertion(&other, &aud, fcm::SCOPE, 3600)).await.0, 400, "another key");
    let wrong_scope = assertion(&key, &aud, "https://www.googleapis.com/auth/cloud-platform", 3600);
    assert_eq!(grant(&client, &standin, &wrong_scope).await.0, 400, "another scope");
    assert_eq!(grant(&client, &standin, &assertion(&key, "https://x.example/token", fcm::SCOPE, 3600)).await.0, 400);
    assert_eq!(grant(&client, &standin, &assertion(&key, &aud, fcm::SCOPE, 7200)).await.0, 400, "over an hour");
    assert_eq!(standin.grants(), 0);

    let (status, token) = grant(&client, &standin, &assertion(&key, &aud, fcm::SCOPE, 3600)).await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().expect("an access token");
    let send = format!("{}/v1/projects/{}/messages:send", standin.url, fcm::PROJECT);
    let message = |count: Value| {
        json!({"message": {"token": "t1", "notification": {"title": "A", "body": "B"},
            "data": {"thread_id": "x", "unread_count": count},
            "android": {"collapse_key": "x", "priority": "high"},
            "apns": {"headers": {"apns-collapse-id": "x"}, "payload": {"aps": {"badge": 1}}}}})
    };
    let post = |bearer: &str, body: Value| client.post(&send).bearer_auth(bearer).json(&body).send();
    assert_eq!(post("ya29.forged", message(json!("1"))).await.expect("answered").status(), 401);
    assert_eq!(post(access, message(json!(1))).await.expect("answered").status(), 400, "data values are strings");
    let ok = post(access, message(json!("1"))).await.expect("answered");
    assert_eq!(ok.status(), 200);
    let name: Value = ok.json().await.expect("json");
    assert!(name["name"].as_str().is_some_and(|n| n.starts_with("projects/standin-school-chat/messages/")));
    assert_eq!(standin.sent().len(), 1);
}

fn provider_token(key: &EncodingKey, kid: &str, team: &str, iat: i64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &json!({"iss": team, "iat": iat}), key).expect("signed")
}

#[tokio::test]
async fn the_apns_stand_in_verifies_the_provider_token_over_http2_only() {
    let standin = ApnsStandin::start().await;
    let key = EncodingKey::from_ec_pem(standin.key_pem.as_bytes()).expect("key");
    let other = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let other = EncodingKey::from_ec_pem(other.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes()).expect("key");
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let device = "0a1b2c3d";
    let push = |client: &reqwest::Client, token: String| {
        client
            .post(format!("{}/3/device/{device}", standin.url))
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", apns::TOPIC)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", "0")
            .header("apns-id", "4f3b1c2e-8d7a-4b6c-9e5f-1a2b3c4d5e6f")
            .body(r#"{"aps": {"alert": {"title": "A", "body": "B"}, "badge": 1}}"#)
            .send()
    };
    let now = now_secs();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(push(&h2, provider_token(&other, apns::KEY_ID, apns::TEAM_ID, now)).await.map(status).ok(), Some(403));
    assert_eq!(push(&h2, provider_token(&key, "OTHERKEY00", apns::TEAM_ID, now)).await.map(status).ok(), Some(403));
    assert_eq!(push(&h2, provider_token(&key, apns::KEY_ID, "OTHERTEAM0", now)).await.map(status).ok(), Some(403));
    let old = push(&h2, provider_token(&key, apns::KEY_ID, apns::TEAM_ID, now - 7200)).await.expect("answered");
    assert_eq!(old.status(), 403);
    assert_eq!(old.json::<Value>().await.expect("json")["reason"], "ExpiredProviderToken");
    assert!(standin.pushes().is_empty());

    let http1 = reqwest::Client::builder().http1_only().build().expect("client");
    assert!(push(&http1, provider_token(&key, apns::KEY_ID, apns::TEAM_ID, now)).await.is_err(), "HTTP/2 only");
    let ok = push(&h2, provider_token(&key, apns::KEY_ID, apns::TEAM_ID, now)).await.expect("answered");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers().get("apns-id").and_then(|v| v.to_str().ok()), Some("4f3b1c2e-8d7a-4b6c-9e5f-1a2b3c4d5e6f"));
    assert_eq!(standin.pushes().len(), 1);
}
