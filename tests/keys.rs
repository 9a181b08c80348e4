//! Signing keys (JWKS): fetched within the backend timeout, one fetch shared by every request
//! that needs it, a stalled Auth endpoint never hangs start-up or authentication, and keys are
//! re-fetched on a schedule so that a key removed from the JWKS stops verifying.
//!
//! The Auth endpoint here is a tiny real HTTP server on a real socket whose JWKS, `Cache-Control`
//! and behaviour (answer, or accept and never answer) each test controls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use realtime_gateway::auth::jwks::Schedule;
use realtime_gateway::auth::{AuthError, Verifier, VerifierSettings};
use realtime_gateway::config::Config;
use realtime_gateway::server;
use serde_json::{json, Value};
use supabase_standin::keys::{Alg, Keys};
use supabase_standin::seed::CARLA;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::ARRIVES;

/// The per-request timeout the tests configure (`BACKEND_TIMEOUT_SECS`).
const TIMEOUT: Duration = Duration::from_secs(1);
/// "Answered within the timeout plus slack", as opposed to hanging.
const BOUND: Duration = Duration::from_secs(6);

#[derive(Clone)]
struct Behaviour {
    jwks: Value,
    cache_control: Option<String>,
    stall: bool,
}

/// A stand-in Auth endpoint serving `/auth/v1/.well-known/jwks.json`.
struct AuthEndpoint {
    addr: std::net::SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
}

impl AuthEndpoint {
    async fn start(jwks: Value, cache_control: Option<&str>) -> AuthEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let behaviour =
            Arc::new(Mutex::new(Behaviour { jwks, cache_control: cache_control.map(str::to_string), stall: false }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (b, r) = (behaviour.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let now = b.lock().expect("behaviour").clone();
                    if now.stall {
                        // Accepts, reads the request, never answers, keeps the socket open.
                        std::future::pending::<()>().await;
                    }
                    let body = now.jwks.to_string();
                    let cache = now.cache_control.map(|c| format!("Cache-Control: {c}\r\n")).unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{cache}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        AuthEndpoint { addr, behaviour, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().expect("behaviour"));
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn jwks_of(keys: &[&Keys]) -> Value {
    let all: Vec<Value> = keys.iter().flat_map(|k| k.jwks()["keys"].as_array().cloned().unwrap_or_default()).collect();
    json!({ "keys": all })
}

fn keys(name: &str) -> Keys {
    Keys::generate(&format!("{name}-secret-of-sufficient-length-0123456789"), "http://auth.test/auth/v1")
}

fn verifier(endpoint: &AuthEndpoint, refresh_min: Duration, max_age: Duration) -> Arc<Verifier> {
    let settings = VerifierSettings {
        jwt_secret: None,
        jwks_url: format!("{}/auth/v1/.well-known/jwks.json", endpoint.url()),
        apikey: "anon".into(),
        leeway: Duration::from_secs(10),
        issuer: None,
        allow_anonymous: false,
        jwks: Schedule { timeout: TIMEOUT, refresh_min, max_age },
        failures_per_sec: 0.0,
        failure_burst: 1,
        max_keys: 1000,
    };
    Verifier::new(settings, reqwest::Client::new())
}

fn es256(keys: &Keys) -> String {
    keys.user_token(CARLA.id, CARLA.email, Alg::Es256, 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_auth_endpoint_does_not_hang_start_up_or_authentication() {
    let known = keys("known");
    let auth = AuthEndpoint::start(jwks_of(&[&known]), None).await;
    auth.set(|b| b.stall = true);

    let alone = verifier(&auth, Duration::from_secs(30), Duration::from_secs(600));
    let primed = tokio::time::timeout(BOUND, alone.prime()).await.expect("prime returns, not hung");
    assert!(primed.is_err(), "a stalled endpoint is an error: {primed:?}");

    // The whole gateway: start-up returns, and a token that needs the keys gets 503 in time.
    let mut config =
        Config::for_project(&auth.url(), "anon", "service", Some("legacy-secret-0123456789abcdef")).expect("config");
    config.backend_timeout = TIMEOUT;
    config.shutdown.grace = Duration::from_secs(1);
    let gateway = tokio::time::timeout(BOUND, server::start(config)).await.expect("start-up not hung").expect("starts");
    let url = format!("http://{}/api/chat/unread-count", gateway.local_addr());
    let call = reqwest::Client::new().get(&url).bearer_auth(es256(&known)).send();
    let response = tokio::time::timeout(BOUND, call).await.expect("answered, not hung").expect("HTTP answer");
    assert_eq!(response.status(), 503, "keys unavailable");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_bounded_fetch_while_known_keys_verify() {
    let (known, rotated) = (keys("known"), keys("rotated"));
    let auth = AuthEndpoint::start(jwks_of(&[&known]), Some("max-age=600")).await;
    let v = verifier(&auth, Duration::from_millis(100), Duration::from_secs(600));
    assert_eq!(v.prime().await, Ok(1));
    assert_eq!(auth.requests(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;

    auth.set(|b| b.stall = true);
    let started = tokio::time::Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (v, token) = (v.clone(), es256(&rotated));
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    // While the fetch hangs, a token of a known key verifies without waiting for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quick = tokio::time::timeout(BOUND, v.verify(&es256(&known))).await.expect("not hung");
    assert!(quick.is_ok(), "{quick:?}");
    assert!(waiters.iter().all(|w| !w.is_finished()), "the known key did not wait for the fetch");
    for waiter in waiters {
        let answer = tokio::time::timeout(BOUND, waiter).await.expect("answered, not hung").expect("task");
        assert_eq!(answer, Err(AuthError::KeysUnavailable));
    }
    assert!(started.elapsed() < BOUND);
    assert_eq!(auth.requests(), 2, "twenty unknown kids, one fetch");

    // Auth answers again; the rate limit on unknown kids stays: no new fetch right away.
    auth.set(|b| b.stall = false);
    let v = verifier(&auth, Duration::from_secs(2), Duration::from_secs(600));
    assert_eq!(v.prime().await, Ok(1));
    let before = auth.requests();
    assert_eq!(v.verify(&es256(&rotated)).await, Err(AuthError::UnknownKey));
    assert_eq!(auth.requests(), before, "no re-fetch right after the last one");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(v.verify(&es256(&rotated)).await, Err(AuthError::UnknownKey));
    assert_eq!(v.verify(&es256(&keys("another"))).await, Err(AuthError::UnknownKey));
    assert_eq!(auth.requests(), before + 1, "one re-fetch per JWKS_REFRESH_MIN_SECS");
}

/// Serves `first` and `second`, verifies both, removes `second`: it stops verifying once the
/// scheduled refresh ran, `first` keeps verifying.
async fn removed_key_stops_verifying(cache_control: Option<&str>, max_age: Duration) {
    let (first, second) = (keys("first"), keys("second"));
    let auth = AuthEndpoint::start(jwks_of(&[&first, &second]), cache_control).await;
    let v = verifier(&auth, Duration::from_millis(100), max_age);
    assert_eq!(v.prime().await, Ok(2));
    assert!(v.verify(&es256(&second)).await.is_ok());

    auth.set(|b| b.jwks = jwks_of(&[&first]));
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        match v.verify(&es256(&second)).await {
            Err(AuthError::UnknownKey) => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the removed key is still accepted"),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(v.verify(&es256(&first)).await.is_ok(), "the remaining key still verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_stops_verifying_after_the_cache_control_max_age() {
    removed_key_stops_verifying(Some("public, max-age=1"), Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_stops_verifying_after_jwks_max_age_secs() {
    removed_key_stops_verifying(Some("max-age=3600"), Duration::from_secs(1)).await;
}
