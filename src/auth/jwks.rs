//! Signing keys: the project's JWKS, fetched from Supabase Auth, cached and re-fetched.
//!
//! Owns the key set by `kid` (each pinned to one algorithm), the schedule of refreshes (the
//! response's `Cache-Control: max-age`, capped by `JWKS_MAX_AGE_SECS`; after a failure, again
//! after `JWKS_REFRESH_MIN_SECS`), and the single-flight fetch: at most one request to Auth is in
//! flight, every caller that needs it awaits that same request, bounded by `BACKEND_TIMEOUT_SECS`.
//! Lookups of known keys take a short synchronous lock and never wait for a fetch. A failed
//! refresh keeps the previous keys (an Auth outage must not lock every user out); a successful one
//! replaces them, so a revoked key stops verifying. This module must never log key material or
//! block a caller on Auth for longer than the timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A verification key and the one algorithm it may verify.
pub type Key = (DecodingKey, Algorithm);

/// Why the JWKS could not be loaded. Never contains a token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("not a JWKS: {0}")]
    NotJwks(String),
    #[error("the fetch was cancelled")]
    Cancelled,
}

type Outcome = Result<usize, FetchError>;
type Flight = Shared<BoxFuture<'static, Outcome>>;

/// What the cache knows of a `kid`.
pub enum Lookup {
    Found(Key),
    /// The `kid` exists but is pinned to another algorithm.
    OtherAlgorithm(Algorithm),
    Missing,
}

/// How long a fetched key set is trusted, and how often Auth may be asked.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Timeout of one fetch, connection to last body byte.
    pub timeout: Duration,
    /// Least time between two fetches caused by unknown `kid`s, and the retry delay after a failure.
    pub refresh_min: Duration,
    /// Longest time a key set is used before a scheduled refresh.
    pub max_age: Duration,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Key>,
    /// A key set was loaded at least once.
    loaded: bool,
    last_attempt: Option<Instant>,
    refresh_due: Option<Instant>,
}

pub struct JwksCache {
    url: String,
    apikey: String,
    http: reqwest::Client,
    schedule: Schedule,
    state: RwLock<State>,
    inflight: Mutex<Option<Flight>>,
}

impl JwksCache {
    pub fn new(url: String, apikey: String, http: reqwest::Client, schedule: Schedule) -> Arc<JwksCache> {
        Arc::new(JwksCache {
            url,
            apikey,
            http,
            schedule,
            state: RwLock::new(State::default()),
            inflight: Mutex::new(None),
        })
    }

    /// The key for `kid`, without waiting. When the key set is due for its scheduled refresh, one
    /// is started in the background and this lookup answers from the current set.
    pub fn lookup(self: &Arc<Self>, kid: &str, alg: Algorithm) -> Lookup {
        let (found, due) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            let due = state.refresh_due.is_some_and(|at| Instant::now() >= at);
            let found = match state.keys.get(kid) {
                Some((key, key_alg)) if *key_alg == alg => Lookup::Found((key.clone(), alg)),
                Some((_, key_alg)) => Lookup::OtherAlgorithm(*key_alg),
                None => Lookup::Missing,
            };
            (found, due)
        };
        if due {
            drop(self.flight(false));
        }
        found
    }

    /// Whether a key set has ever been loaded.
    pub fn loaded(&self) -> bool {
        self.state.read().unwrap_or_else(PoisonError::into_inner).loaded
    }

    /// Fetches now (joining a fetch already in flight) and waits for it, within the timeout.
    pub async fn refresh_now(self: &Arc<Self>) -> Outcome {
        match self.flight(true) {
            Some(flight) => self.await_flight(flight).await,
            None => Err(FetchError::Cancelled),
        }
    }

    /// For an unknown `kid`: joins the fetch in flight or starts one unless one was started less
    /// than `refresh_min` ago. `None`: rate-limited, the current set is all there is.
    pub async fn refresh_for_unknown(self: &Arc<Self>) -> Option<Outcome> {
        let flight = self.flight(false)?;
        Some(self.await_flight(flight).await)
    }

    async fn await_flight(&self, flight: Flight) -> Outcome {
        // The fetch is bounded by the request timeout; this bound is a second line of defence.
        let bound = self.schedule.timeout + Duration::from_millis(250);
        tokio::time::timeout(bound, flight).await.unwrap_or(Err(FetchError::Timeout(self.schedule.timeout)))
    }

    /// The fetch in flight, or a new one (`force`, or none attempted within `refresh_min`).
    fn flight(self: &Arc<Self>, force: bool) -> Option<Flight> {
        let mut slot = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = slot.as_ref() {
            return Some(flight.clone());
        }
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let recent = state.last_attempt.is_some_and(|at| at.elapsed() < self.schedule.refresh_min);
            if recent && !force {
                return None;
            }
            state.last_attempt = Some(Instant::now());
        }
        let this = self.clone();
        // Spawned so that it completes (and updates the cache) even if every waiter goes away.
        let task = tokio::spawn(async move {
            let outcome = this.fetch_and_store().await;
            *this.inflight.lock().unwrap_or_else(PoisonError::into_inner) = None;
            outcome
        });
        let flight = task.map(|joined| joined.unwrap_or(Err(FetchError::Cancelled))).boxed().shared();
        *slot = Some(flight.clone());
        Some(flight)
    }

    async fn fetch_and_store(&self) -> Outcome {
        let timeout = self.schedule.timeout;
        let fetched = tokio::time::timeout(timeout, self.fetch()).await.unwrap_or(Err(FetchError::Timeout(timeout)));
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok((keys, max_age)) => {
                let interval = refresh_interval(max_age, self.schedule.refresh_min, self.schedule.max_age);
                state.refresh_due = Some(Instant::now() + interval);
                let changed = !state.loaded
                    || state.keys.len() != keys.len()
                    || keys.keys().any(|kid| !state.keys.contains_key(kid));
                if changed {
                    tracing::info!(keys = keys.len(), refresh_in = ?interval, "loaded signing keys (JWKS)");
                }
                state.keys = keys;
                state.loaded = true;
                Ok(state.keys.len())
            }
            Err(e) => {
                state.refresh_due = Some(Instant::now() + self.schedule.refresh_min);
                tracing::warn!(error = %e, url = %self.url, kept = state.keys.len(), "could not load signing keys (JWKS)");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Key>, Option<Duration>), FetchError> {
        let timeout = self.schedule.timeout;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout(timeout)
            } else {
                FetchError::Request(e.without_url().to_string())
            }
        };
        let response =
            self.http.get(&self.url).header("apikey", &self.apikey).timeout(timeout).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let max_age =
            response.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(cache_max_age);
        let body = response.bytes().await.map_err(failed)?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| FetchError::NotJwks(e.to_string()))?;
        Ok((keys_from_set(&set), max_age))
    }
}

/// `max-age` of a `Cache-Control` value (`no-cache` / `no-store` count as zero).
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut found = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            found = secs.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    found
}

/// When to re-fetch: the server's `max-age` (or `cap` without one), never later than `cap` and,
/// unless `cap` is smaller, never sooner than `floor`.
pub fn refresh_interval(max_age: Option<Duration>, floor: Duration, cap: Duration) -> Duration {
    max_age.unwrap_or(cap).min(cap).max(floor.min(cap))
}

/// Usable verification keys of a JWKS, by `kid`, each pinned to one algorithm.
pub fn keys_from_set(set: &JwkSet) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let matches = matches!(
                (declared, alg),
                (KeyAlgorithm::ES256, Algorithm::ES256) | (KeyAlgorithm::RS256, Algorithm::RS256)
            );
            if !matches {
                continue;
            }
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, (key, alg));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(cache_max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(cache_max_age("Max-Age=30, must-revalidate"), Some(Duration::from_secs(30)));
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }

    #[test]
    fn refresh_interval_honours_max_age_within_floor_and_cap() {
        let s = Duration::from_secs;
        assert_eq!(refresh_interval(Some(s(60)), s(30), s(600)), s(60));
        assert_eq!(refresh_interval(Some(s(3600)), s(30), s(600)), s(600), "capped");
        assert_eq!(refresh_interval(None, s(30), s(600)), s(600), "no header: the cap");
        assert_eq!(refresh_interval(Some(s(0)), s(30), s(600)), s(30), "no-store: not more often than the floor");
        assert_eq!(refresh_interval(Some(s(60)), s(30), s(10)), s(10), "a cap below the floor wins");
    }
}
