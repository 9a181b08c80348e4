//! Tokens: good ones in, every kind of bad one out, on the WebSocket and on REST, for the legacy
//! HS256 secret and for ES256 signing keys published as a JWKS; the optional issuer check,
//! anonymous users, and the per-address budget of refused tokens (a valid token always passes;
//! behind `TRUSTED_PROXIES` the forwarded client address is the one that counts).

use crate::common::{Phone, World};
use base64::Engine as _;
use reqwest::Method;
use supabase_standin::keys::{Alg, Keys};
use supabase_standin::seed::CARLA;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Bad tokens for Carla, each with a name.
fn bad_tokens(keys: &Keys) -> Vec<(&'static str, String)> {
    let other = Keys::generate("a-completely-different-secret-of-enough-length", &keys.issuer);
    let mut wrong_aud = keys.user_claims(CARLA.id, CARLA.email, 3600);
    wrong_aud.aud = Some("anon".into());
    let mut no_sub = keys.user_claims(CARLA.id, CARLA.email, 3600);
    no_sub.sub = Some("not-a-uuid".into());
    let claims_json = serde_json::to_vec(&keys.user_claims(CARLA.id, CARLA.email, 3600)).expect("claims");
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&claims_json));
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &keys.user_claims(CARLA.id, CARLA.email, 3600),
        &jsonwebtoken::EncodingKey::from_secret(keys.jwt_secret.as_bytes()),
    )
    .expect("sign");
    // Algorithm confusion: an ES256 header with this project's kid, but an HMAC signature.
    let es_header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, keys.kid);
    let signing_input = format!("{}.{}", b64(es_header.as_bytes()), b64(&claims_json));
    let hmac = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(keys.jwt_secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("hmac");
    let confused = format!("{signing_input}.{hmac}");
    let now = supabase_standin::keys::now_secs();
    let mut not_yet = keys.user_claims(CARLA.id, CARLA.email, 3600);
    not_yet.extra.insert("nbf".into(), serde_json::json!(now + 600));
    let mut from_the_future = keys.user_claims(CARLA.id, CARLA.email, 3600);
    from_the_future.iat = now + 600;
    let mut anonymous = keys.user_claims(CARLA.id, CARLA.email, 3600);
    anonymous.extra.insert("is_anonymous".into(), serde_json::json!(true));
    vec![
        ("expired", keys.user_token(CARLA.id, CARLA.email, Alg::Hs256, -3600)),
        ("expired es256", keys.user_token(CARLA.id, CARLA.email, Alg::Es256, -3600)),
        ("forged hs256", other.user_token(CARLA.id, CARLA.email, Alg::Hs256, 3600)),
        ("unknown es256 key", other.user_token(CARLA.id, CARLA.email, Alg::Es256, 3600)),
        ("wrong audience", keys.sign(&wrong_aud, Alg::Hs256)),
        ("anon api key", keys.anon_key.clone()),
        ("service role key", keys.service_key.clone()),
        ("subject not a uuid", keys.sign(&no_sub, Alg::Hs256)),
        ("alg none", none),
        ("hs384", hs384),
        ("es256 header with hmac signature", confused),
        ("garbage", "not.a.jwt".into()),
        ("not valid yet (nbf)", keys.sign(&not_yet, Alg::Hs256)),
        ("not valid yet (nbf) es256", keys.sign(&not_yet, Alg::Es256)),
        ("issued in the future (iat)", keys.sign(&from_the_future, Alg::Hs256)),
        ("anonymous user", keys.sign(&anonymous, Alg::Es256)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_on_websocket_and_rest() {
    let world = World::start().await;
    for (name, token) in bad_tokens(world.stack.keys()) {
        let ws = Phone::connect(&format!("{}?token={}", world.ws_base(), token)).await;
        match ws {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401, "{name}"),
            Err(e) => panic!("{name}: unexpected error {e}"),
            Ok(_) => panic!("{name}: WebSocket accepted a bad token"),
        }
        let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["status"], "error", "{name}");
    }
    let missing = Phone::connect(&world.ws_base()).await;
    assert!(matches!(missing, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_of_both_algorithms_are_accepted() {
    let world = World::start().await;
    for alg in [Alg::Hs256, Alg::Es256] {
        let token = world.stack.token(&CARLA, alg);
        let mut phone = Phone::connect(&format!("{}?token={}", world.ws_base(), token)).await.expect("accepted");
        assert_eq!(phone.next_json().await.expect("hello")["type"], "connection_established");
        let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&token)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_with_only_signing_keys_refuses_hs256() {
    let world = World::start_with(|c| c.auth.jwt_secret = None).await;
    let es = world.stack.token(&CARLA, Alg::Es256);
    let (status, _) = world.rest(Method::GET, "/api/chat/unread-count", Some(&es)).await;
    assert_eq!(status, 200);
    let hs = world.stack.token(&CARLA, Alg::Hs256);
    let (status, _) = world.rest(Method::GET, "/api/chat/unread-count", Some(&hs)).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_socket_is_told_and_closed_unless_refreshed() {
    let world = World::start_with(|c| c.auth.rules.leeway = std::time::Duration::ZERO).await;
    let keys = world.stack.keys();
    // Refreshed in time: stays open past the first token's expiry.
    let short = keys.user_token(CARLA.id, CARLA.email, Alg::Hs256, 2);
    let mut kept = Phone::connect(&format!("{}?token={}", world.ws_base(), short)).await.expect("connects");
    kept.expect("connection_established").await;
    kept.send_json(
        serde_json::json!({"type": "access_token", "token": keys.user_token(CARLA.id, CARLA.email, Alg::Es256, 3600)}),
    )
    .await;
    // Not refreshed: an error frame, then close 4001.
    let mut lapsed =
        Phone::connect(&format!("{}?token={}", world.ws_base(), keys.user_token(CARLA.id, CARLA.email, Alg::Hs256, 2)))
            .await
            .expect("connects");
    lapsed.expect("connection_established").await;
    let error = lapsed.expect("error").await;
    assert!(error["message"].as_str().unwrap_or_default().contains("expired"), "{error}");
    assert_eq!(lapsed.close_code().await, Some(4001));
    // The refreshed socket still answers.
    kept.send_json(serde_json::json!({"type": "ping"})).await;
    assert_eq!(kept.expect("pong").await, serde_json::json!({"type": "pong"}));
    // A token of someone else is refused and the socket keeps its own identity.
    let other = world.stack.token(&supabase_standin::seed::DAVID, Alg::Hs256);
    kept.send_json(serde_json::json!({"type": "access_token", "token": other})).await;
    assert!(kept.expect("error").await["message"].as_str().unwrap_or_default().contains("another user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_issuer_is_checked_when_set_and_allow_anonymous_admits_anonymous_users() {
    let world = World::start_with(|c| {
        c.auth.rules.issuer = c.supabase().map(|p| format!("{}/auth/v1", p.url.as_str().trim_end_matches('/')));
        c.auth.rules.allow_anonymous = true;
    })
    .await;
    let keys = world.stack.keys();
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&world.token(&CARLA))).await;
    assert_eq!(status, 200, "this project's issuer: {body}");
    let mut foreign = keys.user_claims(CARLA.id, CARLA.email, 3600);
    foreign.iss = Some("https://another-project.supabase.co/auth/v1".into());
    let (status, body) =
        world.rest(Method::GET, "/api/chat/unread-count", Some(&keys.sign(&foreign, Alg::Hs256))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("iss"), "{body}");
    let mut anonymous = keys.user_claims(CARLA.id, CARLA.email, 3600);
    anonymous.extra.insert("is_anonymous".into(), serde_json::json!(true));
    let token = keys.sign(&anonymous, Alg::Es256);
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&token)).await;
    assert_eq!(status, 200, "ALLOW_ANONYMOUS=true: {body}");
}

/// What the WebSocket upgrade answers: 101, or the HTTP status of the refusal.
async fn upgrade_status(world: &World, token: &str, forwarded_for: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}?token={}", world.ws_base(), token).into_client_request().expect("request");
    if let Some(address) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", address.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

fn forged_token(world: &World) -> String {
    let keys = world.stack.keys();
    Keys::generate("a-completely-different-secret-of-enough-length", &keys.issuer).user_token(
        CARLA.id,
        CARLA.email,
        Alg::Hs256,
        3600,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_150_refused_tokens_a_valid_token_from_the_same_address_is_served_on_rest_and_websocket() {
    let world = World::start_with(|c| {
        c.auth.rules.failures_per_sec = 0.01;
        c.auth.rules.failure_burst = 3;
    })
    .await;
    let forged = forged_token(&world);
    let mut statuses = Vec::new();
    for i in 0..150 {
        if i % 2 == 0 {
            statuses.push(world.rest(Method::GET, "/api/chat/unread-count", Some(&forged)).await.0);
        } else {
            statuses.push(upgrade_status(&world, &forged, None).await);
        }
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "the budget of three refusals");
    assert!(statuses[3..].iter().all(|s| *s == 429), "then 429: {statuses:?}");
    // A valid token from the same address is always served.
    let good = world.token(&CARLA);
    let (status, body) = world.rest(Method::GET, "/api/chat/unread-count", Some(&good)).await;
    assert_eq!(status, 200, "{body}");
    let mut phone = Phone::connect(&format!("{}?token={}", world.ws_base(), good)).await.expect("upgraded");
    assert_eq!(phone.expect_any().await["type"], "connection_established");
    // And the address's bad tokens still get 429.
    assert_eq!(world.rest(Method::GET, "/api/chat/unread-count", Some(&forged)).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_each_forwarded_client_has_its_own_budget() {
    use realtime_gateway::edge::forwarded::{parse_cidrs, ForwardedHeader, TrustedProxies};
    let world = World::start_with(|c| {
        c.auth.rules.failures_per_sec = 0.01;
        c.auth.rules.failure_burst = 3;
        c.edge.trusted_proxies =
            TrustedProxies { nets: parse_cidrs("127.0.0.0/8").expect("cidr"), header: ForwardedHeader::XForwardedFor };
    })
    .await;
    let forged = forged_token(&world);
    let through_proxy = |address: &'static str| {
        let request = world.http.get(format!("{}/api/chat/unread-count", world.base())).bearer_auth(&forged);
        async move { request.header("x-forwarded-for", address).send().await.expect("answer").status().as_u16() }
    };
    for _ in 0..3 {
        assert_eq!(through_proxy("203.0.113.5").await, 401);
    }
    assert_eq!(through_proxy("203.0.113.5").await, 429, "that phone's budget is spent");
    // A client that prepends a made-up hop is still known by the hop the proxy appended.
    assert_eq!(through_proxy("198.51.100.77, 203.0.113.5").await, 429);
    assert_eq!(upgrade_status(&world, &forged, Some("203.0.113.5")).await, 429);
    // Another phone behind the same proxy (or NAT) is not concerned.
    assert_eq!(through_proxy("203.0.113.6").await, 401, "another client has its own budget");
    assert_eq!(upgrade_status(&world, &forged, Some("203.0.113.7")).await, 401);
    assert_eq!(upgrade_status(&world, &world.token(&CARLA), Some("203.0.113.5")).await, 101);
}
