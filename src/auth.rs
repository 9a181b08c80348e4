//! Auth: verification of Supabase user access tokens.
//!
//! Owns the rules: signature (HS256 with the legacy secret; ES256/RS256 with a key of the
//! project's JWKS, see [`jwks`], by `kid` and pinned to its algorithm; never `none`), `exp` and
//! `nbf` with the configured leeway, an `iat` in the future refused, `aud = authenticated`, `iss`
//! when `JWT_ISSUER` is set, `sub` a uuid, anonymous users only with `ALLOW_ANONYMOUS`. Also owns
//! the per-source-IP budget of refused tokens: every token is verified first and a valid one is
//! always accepted; an address that keeps presenting bad tokens has its refusals answered 429 and
//! may no longer trigger JWKS re-fetches for unknown `kid`s. This module must never log a token or a secret, and
//! never decide thread access (RLS does, through [`crate::store`]).

mod bearer;
pub mod jwks;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::Config;
use crate::limit::PerIp;
pub use bearer::{bearer, bearer_matches};
use jwks::{FetchError, JwksCache, Lookup, Schedule};

/// Why a token was refused. The text is safe to show to the client (it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing access token")]
    Missing,
    #[error("malformed access token")]
    Malformed,
    #[error("access token expired")]
    Expired,
    #[error("access token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("access token was issued in the future (iat); check the clocks")]
    IssuedInFuture,
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token audience must be 'authenticated'")]
    WrongAudience,
    #[error("access token was not issued by this project's Auth (iss)")]
    WrongIssuer,
    #[error("access token algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("access token signed with an unknown key")]
    UnknownKey,
    #[error("access token subject is not a user id")]
    NotAUser,
    #[error("anonymous users are not allowed; sign in first")]
    Anonymous,
    #[error("signing keys are unavailable; try again later")]
    KeysUnavailable,
    #[error("too many invalid access tokens from this address; try again later")]
    TooManyFailures,
}

impl AuthError {
    /// A short stable name per variant, for metrics (`gateway_auth_failures_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::NotAUser => "not_a_user",
            AuthError::Anonymous => "anonymous",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::TooManyFailures => "too_many_failures",
        }
    }
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
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    is_anonymous: Option<bool>,
}

/// Everything the verifier needs; [`VerifierSettings::from_config`] reads it from [`Config`].
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub jwt_secret: Option<String>,
    pub jwks_url: String,
    /// Sent as `apikey` when fetching the JWKS.
    pub apikey: String,
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub allow_anonymous: bool,
    pub jwks: Schedule,
    /// Refused tokens per source IP and second (0: unlimited), and the burst.
    pub failures_per_sec: f64,
    pub failure_burst: u32,
    /// Most source addresses whose refused tokens are counted (`RATE_LIMIT_MAX_KEYS`).
    pub max_keys: usize,
}

impl VerifierSettings {
    pub fn from_config(c: &Config) -> VerifierSettings {
        let rules = &c.auth.rules;
        VerifierSettings {
            jwt_secret: c.auth.jwt_secret.clone(),
            jwks_url: c.auth.jwks_url.clone().unwrap_or_default(),
            apikey: c.supabase().map(|p| p.anon_key.clone()).unwrap_or_default(),
            leeway: rules.leeway,
            issuer: rules.issuer.clone(),
            allow_anonymous: rules.allow_anonymous,
            jwks: Schedule {
                timeout: c.backend_timeout,
                refresh_min: rules.jwks_refresh_min,
                max_age: rules.jwks_max_age,
            },
            failures_per_sec: rules.failures_per_sec,
            failure_burst: rules.failure_burst,
            max_keys: c.fairness.max_keys,
        }
    }
}

/// Verifies user tokens. Cheap to share behind an `Arc`.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: Arc<JwksCache>,
    leeway: Duration,
    issuer: Option<String>,
    allow_anonymous: bool,
    /// Refused tokens per source IP; `None` when unlimited.
    failures: Option<PerIp>,
}

fn family_allows(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::ES256 | Algorithm::RS256)
}

impl Verifier {
    pub fn new(settings: VerifierSettings, http: reqwest::Client) -> Arc<Verifier> {
        let failures = (settings.failures_per_sec > 0.0).then(|| {
            PerIp::new(settings.failures_per_sec, f64::from(settings.failure_burst.max(1)), settings.max_keys)
        });
        Arc::new(Verifier {
            secret: settings.jwt_secret.as_deref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            keys: JwksCache::new(settings.jwks_url, settings.apikey, http, settings.jwks),
            leeway: settings.leeway,
            issuer: settings.issuer,
            allow_anonymous: settings.allow_anonymous,
            failures,
        })
    }

    /// Source addresses whose refused tokens are being counted now (for `/metrics`).
    pub fn failure_keys(&self) -> usize {
        self.failures.as_ref().map_or(0, PerIp::keys)
    }

    /// Loads the JWKS once at start-up, within the backend timeout. A project without asymmetric
    /// keys may answer 404: that is not an error as long as a legacy secret is configured.
    pub async fn prime(&self) -> Result<usize, FetchError> {
        self.keys.refresh_now().await
    }

    /// Verifies a token presented from `peer`. A valid token is always accepted: the address's
    /// budget of refused tokens is spent by refusals only, and once it is spent the address's bad
    /// tokens are answered [`AuthError::TooManyFailures`] and may no longer make the gateway
    /// re-fetch the JWKS for an unknown `kid`.
    pub async fn verify_from(&self, peer: Option<IpAddr>, token: &str) -> Result<Identity, AuthError> {
        let limited = self.failures.as_ref().zip(peer);
        let over_budget = limited.is_some_and(|(failures, ip)| failures.exhausted(ip));
        let error = match self.verify_checked(token, !over_budget).await {
            Ok(identity) => return Ok(identity),
            Err(e) => e,
        };
        match limited {
            Some(_) if over_budget => Err(AuthError::TooManyFailures),
            Some((failures, ip)) if error != AuthError::KeysUnavailable => {
                failures.spend(ip);
                Err(error)
            }
            _ => Err(error),
        }
    }

    /// Verifies a token and returns who it belongs to.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_checked(token, true).await
    }

    /// [`Verifier::verify`]; `may_fetch`: whether an unknown `kid` may cause a JWKS re-fetch.
    async fn verify_checked(&self, token: &str, may_fetch: bool) -> Result<Identity, AuthError> {
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
                self.jwks_key(&kid, alg, may_fetch).await?
            }
            other => return Err(AuthError::AlgorithmNotAllowed(format!("{other:?}"))),
        };
        let claims = decode::<TokenClaims>(token, &key, &self.validation(alg))
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => AuthError::Expired,
                    K::ImmatureSignature => AuthError::NotYetValid,
                    K::InvalidSignature => AuthError::BadSignature,
                    K::InvalidAudience => AuthError::WrongAudience,
                    K::InvalidIssuer => AuthError::WrongIssuer,
                    K::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
                    K::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
                    K::MissingRequiredClaim(claim) if claim == "sub" => AuthError::NotAUser,
                    K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)),
                    _ => AuthError::Malformed,
                }
            })?
            .claims;
        self.check_claims(&claims)?;
        let user_id = claims.sub.as_deref().and_then(|s| Uuid::parse_str(s).ok()).ok_or(AuthError::NotAUser)?;
        Ok(Identity { user_id, exp: claims.exp })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_audience(&["authenticated"]);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            }
            None => validation.set_required_spec_claims(&["exp", "sub", "aud"]),
        }
        validation
    }

    /// Rules the library does not check: `iat` not in the future, anonymous users.
    fn check_claims(&self, claims: &TokenClaims) -> Result<(), AuthError> {
        let now = chrono::Utc::now().timestamp();
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(self.leeway.as_secs() as i64)) {
            return Err(AuthError::IssuedInFuture);
        }
        if claims.is_anonymous == Some(true) && !self.allow_anonymous {
            return Err(AuthError::Anonymous);
        }
        Ok(())
    }

    /// Seconds until `exp` (plus leeway) passes; zero or negative means expired.
    pub fn remaining(&self, identity: &Identity) -> Duration {
        let now = chrono::Utc::now().timestamp();
        let left = identity.exp + self.leeway.as_secs() as i64 - now;
        Duration::from_secs(left.max(0) as u64)
    }

    /// The key for `kid`: from the cache without waiting, or, for an unknown `kid` (keys may have
    /// rotated), after the one shared re-fetch, bounded by the backend timeout and rate-limited.
    async fn jwks_key(
        &self,
        kid: &str,
        alg: Algorithm,
        may_fetch: bool,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        let other_alg = |key_alg| AuthError::AlgorithmNotAllowed(format!("{alg:?} with a {key_alg:?} key"));
        match self.keys.lookup(kid, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::OtherAlgorithm(key_alg) => return Err(other_alg(key_alg)),
            Lookup::Missing => {}
        }
        let unknown = || if self.keys.loaded() { AuthError::UnknownKey } else { AuthError::KeysUnavailable };
        if !may_fetch {
            return Err(unknown());
        }
        match self.keys.refresh_for_unknown().await {
            None => Err(unknown()),
            // A project without signing keys (legacy secret only) answers 404: the kid is unknown.
            Some(Err(FetchError::Status(404))) => Err(AuthError::UnknownKey),
            Some(Err(_)) => Err(AuthError::KeysUnavailable),
            Some(Ok(_)) => match self.keys.lookup(kid, alg) {
                Lookup::Found(key) => Ok(key),
                Lookup::OtherAlgorithm(key_alg) => Err(other_alg(key_alg)),
                Lookup::Missing => Err(unknown()),
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-test-secret-test-secret-1234";

    fn settings(secret: Option<&str>) -> VerifierSettings {
        VerifierSettings {
            jwt_secret: secret.map(str::to_string),
            jwks_url: "http://127.0.0.1:9/auth/v1/.well-known/jwks.json".into(),
            apikey: "anon".into(),
            leeway: Duration::from_secs(5),
            issuer: None,
            allow_anonymous: false,
            jwks: Schedule {
                timeout: Duration::from_secs(1),
                refresh_min: Duration::from_secs(3600),
                max_age: Duration::from_secs(600),
            },
            failures_per_sec: 0.0,
            failure_burst: 1,
            max_keys: 1000,
        }
    }

    fn verifier(secret: Option<&str>) -> Arc<Verifier> {
        Verifier::new(settings(secret), reqwest::Client::new())
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

    #[test]
    fn time_claims_are_enforced_with_the_leeway() {
        let v = verifier(Some(SECRET)); // leeway 5 s
        let rt = rt();
        let now = chrono::Utc::now().timestamp();
        let mut early = claims(3600);
        early["nbf"] = json!(now + 60);
        assert_eq!(rt.block_on(v.verify(&token(early, SECRET))), Err(AuthError::NotYetValid));
        let mut almost = claims(3600);
        almost["nbf"] = json!(now + 2);
        assert!(rt.block_on(v.verify(&token(almost, SECRET))).is_ok(), "nbf within the leeway");
        let mut future = claims(3600);
        future["iat"] = json!(now + 60);
        assert_eq!(rt.block_on(v.verify(&token(future, SECRET))), Err(AuthError::IssuedInFuture));
        let mut skewed = claims(3600);
        skewed["iat"] = json!(now + 2);
        assert!(rt.block_on(v.verify(&token(skewed, SECRET))).is_ok(), "iat within the leeway");
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let issuer = "https://abc.supabase.co/auth/v1";
        let mut with_iss = claims(60);
        with_iss["iss"] = json!(issuer);
        let mut other_iss = claims(60);
        other_iss["iss"] = json!("https://evil.supabase.co/auth/v1");
        let rt = rt();
        assert!(rt.block_on(verifier(Some(SECRET)).verify(&token(other_iss.clone(), SECRET))).is_ok());
        let checking = Verifier::new(
            VerifierSettings { issuer: Some(issuer.into()), ..settings(Some(SECRET)) },
            reqwest::Client::new(),
        );
        assert!(rt.block_on(checking.verify(&token(with_iss, SECRET))).is_ok());
        assert_eq!(rt.block_on(checking.verify(&token(other_iss, SECRET))), Err(AuthError::WrongIssuer));
        assert_eq!(rt.block_on(checking.verify(&token(claims(60), SECRET))), Err(AuthError::WrongIssuer));
    }

    #[test]
    fn anonymous_users_only_when_allowed() {
        let mut anonymous = claims(60);
        anonymous["is_anonymous"] = json!(true);
        let rt = rt();
        let strict = verifier(Some(SECRET));
        assert_eq!(rt.block_on(strict.verify(&token(anonymous.clone(), SECRET))), Err(AuthError::Anonymous));
        let mut signed_in = claims(60);
        signed_in["is_anonymous"] = json!(false);
        assert!(rt.block_on(strict.verify(&token(signed_in, SECRET))).is_ok());
        let lenient =
            Verifier::new(VerifierSettings { allow_anonymous: true, ..settings(Some(SECRET)) }, reqwest::Client::new());
        assert!(rt.block_on(lenient.verify(&token(anonymous, SECRET))).is_ok());
    }

    #[test]
    fn an_address_over_its_failure_budget_gets_429_for_bad_tokens_but_a_valid_token_passes() {
        let limited = Verifier::new(
            VerifierSettings { failures_per_sec: 0.001, failure_burst: 2, ..settings(Some(SECRET)) },
            reqwest::Client::new(),
        );
        let rt = rt();
        let (nat, other): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let good = token(claims(60), SECRET);
        let forged = token(claims(60), "another-secret-another-secret-12345");
        assert!(rt.block_on(limited.verify_from(Some(nat), &good)).is_ok(), "successes cost nothing");
        for _ in 0..2 {
            assert_eq!(rt.block_on(limited.verify_from(Some(nat), &forged)), Err(AuthError::BadSignature));
        }
        for _ in 0..150 {
            assert_eq!(rt.block_on(limited.verify_from(Some(nat), &forged)), Err(AuthError::TooManyFailures));
        }
        assert!(rt.block_on(limited.verify_from(Some(nat), &good)).is_ok(), "a valid token is never locked out");
        assert_eq!(rt.block_on(limited.verify_from(Some(other), &forged)), Err(AuthError::BadSignature));
    }
}
