//! A Web Push service stand-in (RFC 8030): accepts POSTs to `/push/<subscription>` over HTTPS
//! (subscription endpoints are `https://`; its certificate is signed by the test-only [`CA_PEM`],
//! which the gateway under test must trust), records each one (headers and the raw encrypted body,
//! never decrypted here: tests decrypt with an independent implementation), and answers with
//! scripted statuses, then 201 Created.
//!
//! Like a real push service it refuses what cannot be delivered: no `TTL` or no `aes128gcm`
//! encoding (400), no VAPID `Authorization` (401), a `Topic` that is not at most 32 base64url
//! characters (400), a body over 4096 bytes (413). It checks no signature: that is the tests' job.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;

/// The test-only CA that signed the stand-in's certificate (for 127.0.0.1 and localhost).
pub const CA_PEM: &str = include_str!("tls/ca.pem");
const CERT_PEM: &str = include_str!("tls/server.pem");
const KEY_PEM: &str = include_str!("tls/server.key");

/// The largest body a push service must accept (RFC 8030 section 7.2).
pub const MAX_BODY: usize = 4096;

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The subscription: the path segment after `/push/`.
    pub subscription: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The raw (encrypted) body.
    pub body: Vec<u8>,
    /// What the stand-in answered.
    pub status: u16,
}

impl PushRequest {
    /// A header's value (names compared in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<PushRequest>>,
    script: Mutex<VecDeque<u16>>,
}

/// A running Web Push service stand-in; stops when dropped.
pub struct WebPushService {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl WebPushService {
    /// Starts on 127.0.0.1, port 0, serving HTTPS.
    pub async fn start() -> std::io::Result<WebPushService> {
        let state = Arc::new(State::default());
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_config()?));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (tls, state) = (tls.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| serve(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(WebPushService { addr, state, _stop: stop })
    }

    /// The endpoint of a subscription named `name` (what a browser's `PushSubscription.endpoint` is).
    pub fn endpoint(&self, name: &str) -> String {
        format!("https://{}/push/{name}", self.addr)
    }

    /// The next answers, in order, before the default 201 (e.g. `[410]`, `[500, 429]`).
    pub fn answer_next(&self, statuses: &[u16]) {
        lock(&self.state.script).extend(statuses.iter().copied());
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<PushRequest> {
        lock(&self.state.received).clone()
    }
}

impl State {
    fn answer(&self, subscription: String, headers: &HeaderMap, body: Vec<u8>) -> u16 {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let status = if header("ttl").parse::<u64>().is_err() || header("content-encoding") != "aes128gcm" {
            400
        } else if !header("authorization").starts_with("vapid t=") {
            401
        } else if !valid_topic(&header("topic")) {
            400
        } else if body.len() > MAX_BODY {
            413
        } else {
            lock(&self.script).pop_front().unwrap_or(201)
        };
        let headers = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
            .collect();
        lock(&self.received).push(PushRequest { subscription, headers, body, status });
        status
    }
}

/// One request: `POST /push/<subscription>` is answered and recorded, anything else is 404.
async fn serve(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let subscription = parts.uri.path().strip_prefix("/push/").filter(|s| !s.is_empty() && !s.contains('/'));
    let status = match (parts.method == hyper::Method::POST, subscription) {
        (true, Some(subscription)) => {
            let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            state.answer(subscription.to_string(), &parts.headers, body)
        }
        _ => 404,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    Ok(response)
}

/// TLS with the test certificate, HTTP/1.1 only.
fn server_config() -> std::io::Result<rustls::ServerConfig> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let certs = CertificateDer::pem_slice_iter(CERT_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// No topic, or at most 32 characters of the base64url alphabet.
fn valid_topic(topic: &str) -> bool {
    topic.len() <= 32 && topic.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
