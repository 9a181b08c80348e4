//! Auth: verification of Supabase user access tokens.
//!
//! Owns the verification keys (the legacy HS256 secret and the project's JWKS, cached and
//! re-fetched, rate-limited, on an unknown `kid`) and the rules: signature, `exp` with a small
//! leeway, `aud = authenticated`, `sub` a uuid, and the algorithm pinned to the key that verifies
//! it (HS256 only with the secret; ES256/RS256 only with a JWKS key of the same family and `kid`;
//! never `none`). This module must never log a token or a secret, and never decide thread access
//! (RLS does, through [`crate::store`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

/// Why a token was refused. The text is safe to show to the client (it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing access token")]
    Missing,
    #[error("malformed access token")]
    Malformed,
    #[error("access token expired")]
    Expired,
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token audience must be 'authenticated'")]
    WrongAudience,
    #[error("access token algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("access token signed with an unknown key")]
    UnknownKey,
    #[error("access token subject is not a user id")]
    NotAUser,
    #[error("signing keys are unavailable; try again later")]
    KeysUnavailable,
}

/// The verified identity of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Uuid,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: Option<String>,
    exp: i64,
}

struct Jwks {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

/// Verifies user tokens. Cheap to share behind an `Arc`.
pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: RwLock<Jwks>,
    refresh_gate: Mutex<()>,
    jwks_url: String,
    apikey: String,
    http: reqwest::Client,
    leeway: Duration,
    refresh_min: Duration,
}

fn family_allows(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::ES256 | Algorithm::RS256)
}

impl Verifier {
    pub fn new(
        jwt_secret: Option<&str>,
        jwks_url: String,
        apikey: String,
        http: reqwest::Client,
        leeway: Duration,
        refresh_min: Duration,
    ) -> Arc<Verifier> {
        Arc::new(Verifier {
            secret: jwt_secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: RwLock::new(Jwks { keys: HashMap::new(), fetched_at: None }),
            refresh_gate: Mutex::new(()),
            jwks_url,
            apikey,
            http,
            leeway,
            refresh_min,
        })
    }

    /// Loads the JWKS once at start-up. A project without asymmetric keys may answer 404: that is
    /// not an error as long as a legacy secret is configured.
    pub async fn prime(&self) -> Result<usize, String> {
        self.refresh_jwks(true).await
    }

    /// Verifies a token and returns who it belongs to.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let declared = declared_alg(token).ok_or(AuthError::Malformed)?;
        if !matches!(declared.as_str(), "HS256" | "ES256" | "RS256") {
            return Err(AuthError::AlgorithmNotAllowed(declared.chars().take(16).collect()));
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => match &self.secret {
                Some(secret) => (secret.clone(), Algorithm::HS256),
                None => return Err(AuthError::AlgorithmNotAllowed("HS256 (no SUPABASE_JWT_SECRET configured)".into())),
            },
            alg if family_allows(alg) => {
                let kid = header.kid.ok_or(AuthError::UnknownKey)?;
                self.jwks_key(&kid, alg).await?
            }
            other => return Err(AuthError::AlgorithmNotAllowed(format!("{other:?}"))),
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_audience(&["authenticated"]);
        validation.leeway = self.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        let data = decode::<TokenClaims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAudience => AuthError::WrongAudience,
                K::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
                K::MissingRequiredClaim(claim) if claim == "sub" => AuthError::NotAUser,
                K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
                _ => AuthError::Malformed,
            }
        })?;
        let user_id = data.claims.sub.as_deref().and_then(|s| Uuid::parse_str(s).ok()).ok_or(AuthError::NotAUser)?;
        Ok(Identity { user_id, exp: data.claims.exp })
    }

    /// Seconds until `exp` (plus leeway) passes; zero or negative means expired.
    pub fn remaining(&self, identity: &Identity) -> Duration {
        let now = chrono::Utc::now().timestamp();
        let left = identity.exp + self.leeway.as_secs() as i64 - now;
        Duration::from_secs(left.max(0) as u64)
    }

    async fn jwks_key(&self, kid: &str, alg: Algorithm) -> Result<(DecodingKey, Algorithm), AuthError> {
        if let Some(found) = self.lookup(kid, alg).await? {
            return Ok(found);
        }
        // Unknown kid: keys may have rotated. Re-fetch, at most once per refresh_min.
        let _ = self.refresh_jwks(false).await;
        self.lookup(kid, alg).await?.ok_or(AuthError::UnknownKey)
    }

    async fn lookup(&self, kid: &str, alg: Algorithm) -> Result<Option<(DecodingKey, Algorithm)>, AuthError> {
        let jwks = self.jwks.read().await;
        match jwks.keys.get(kid) {
            Some((key, key_alg)) if *key_alg == alg => Ok(Some((key.clone(), alg))),
            Some((_, key_alg)) => Err(AuthError::AlgorithmNotAllowed(format!("{alg:?} with a {key_alg:?} key"))),
            None => Ok(None),
        }
    }

    async fn refresh_jwks(&self, force: bool) -> Result<usize, String> {
        let _gate = self.refresh_gate.lock().await;
        if !force {
            let jwks = self.jwks.read().await;
            if jwks.fetched_at.is_some_and(|at| at.elapsed() < self.refresh_min) {
                return Ok(jwks.keys.len());
            }
        }
        let result = self.fetch_jwks().await;
        let mut jwks = self.jwks.write().await;
        jwks.fetched_at = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "loaded signing keys (JWKS)");
                jwks.keys = keys;
                Ok(jwks.keys.len())
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.jwks_url, "could not load signing keys (JWKS)");
                Err(e)
            }
        }
    }

    async fn fetch_jwks(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let response = self
            .http
            .get(&self.jwks_url)
            .header("apikey", &self.apikey)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| format!("not a JWKS: {}", e.without_url()))?;
        Ok(keys_from_set(&set))
    }
}

/// The `alg` a token's header declares, read before any library parsing so that `none` and
/// unsupported algorithms are refused by name.
fn declared_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_string)
}

/// Usable verification keys of a JWKS, by `kid`, each pinned to one algorithm.
fn keys_from_set(set: &JwkSet) -> HashMap<String, (DecodingKey, Algorithm)> {
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
                (jsonwebtoken::jwk::KeyAlgorithm::ES256, Algorithm::ES256)
                    | (jsonwebtoken::jwk::KeyAlgorithm::RS256, Algorithm::RS256)
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
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-test-secret-test-secret-1234";

    fn verifier(secret: Option<&str>) -> Arc<Verifier> {
        Verifier::new(
            secret,
            "http://127.0.0.1:9/auth/v1/.well-known/jwks.json".into(),
            "anon".into(),
            reqwest::Client::new(),
            Duration::from_secs(5),
            Duration::from_secs(3600),
        )
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
    }

    fn claims(exp_in: i64) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        json!({"sub": "a0000000-0000-4000-8000-000000000003", "aud": "authenticated", "role": "authenticated", "exp": now + exp_in, "iat": now})
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn accepts_a_good_hs256_token() {
        let v = verifier(Some(SECRET));
        let id = rt().block_on(v.verify(&token(claims(60), SECRET))).expect("valid");
        assert_eq!(id.user_id.to_string(), "a0000000-0000-4000-8000-000000000003");
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let v = verifier(Some(SECRET));
        let rt = rt();
        assert_eq!(rt.block_on(v.verify("")), Err(AuthError::Missing));
        assert_eq!(rt.block_on(v.verify("abc.def")), Err(AuthError::Malformed));
        assert_eq!(rt.block_on(v.verify(&token(claims(-60), SECRET))), Err(AuthError::Expired));
        assert_eq!(
            rt.block_on(v.verify(&token(claims(60), "another-secret-another-secret-12345"))),
            Err(AuthError::BadSignature)
        );
        let mut wrong_aud = claims(60);
        wrong_aud["aud"] = json!("anon");
        assert_eq!(rt.block_on(v.verify(&token(wrong_aud, SECRET))), Err(AuthError::WrongAudience));
        let mut no_aud = claims(60);
        no_aud.as_object_mut().map(|o| o.remove("aud"));
        assert_eq!(rt.block_on(v.verify(&token(no_aud, SECRET))), Err(AuthError::WrongAudience));
        let mut bad_sub = claims(60);
        bad_sub["sub"] = json!("not-a-uuid");
        assert_eq!(rt.block_on(v.verify(&token(bad_sub, SECRET))), Err(AuthError::NotAUser));
    }

    #[test]
    fn refuses_alg_none_and_unconfigured_hs256() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64.encode(claims(60).to_string());
        let unsigned = format!("{header}.{payload}.");
        let rt = rt();
        assert!(matches!(
            rt.block_on(verifier(Some(SECRET)).verify(&unsigned)),
            Err(AuthError::AlgorithmNotAllowed(_))
        ));
        assert!(matches!(
            rt.block_on(verifier(None).verify(&token(claims(60), SECRET))),
            Err(AuthError::AlgorithmNotAllowed(_))
        ));
    }
}
