//! The auth component: where user tokens are verified (`SUPABASE_JWT_SECRET` or its alias
//! `JWT_SECRET`, `JWKS_URL` or the Supabase project's JWKS) and the rules a token must meet.
//! Declares those settings and resolves the secret and the key set's URL; pure validation, no
//! I/O; never prints the secret.

use std::time::Duration;

use clap::Args;

use super::backend::{set, Backend};
use super::rules::{at_least, invalid, optional_text, rate, whole_seconds};
use super::ConfigError;

/// The auth settings as declared (flags and environment variables).
#[derive(Args, Clone)]
#[command(next_help_heading = "Auth")]
pub struct AuthArgs {
    /// Legacy HS256 JWT secret. Leave empty if the project signs user tokens with asymmetric keys
    /// (JWKS), read from <SUPABASE_URL>/auth/v1/.well-known/jwks.json.
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub supabase_jwt_secret: Option<String>,
    /// Same as SUPABASE_JWT_SECRET (for the PostgreSQL backend); set one of the two.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS of the token issuer; default <SUPABASE_URL>/auth/v1/.well-known/jwks.json. Without
    /// Supabase, set JWT_SECRET and/or JWKS_URL.
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,
    #[command(flatten)]
    pub rules: AuthRules,
}

/// What a token must meet, and how often the signing keys are fetched.
#[derive(Args, Clone, Debug)]
pub struct AuthRules {
    /// Allowed clock skew for `exp`, `nbf` and `iat` (a token issued further in the future is
    /// refused).
    #[arg(long = "jwt-leeway-secs", env = "JWT_LEEWAY_SECS", default_value = "10", value_parser = whole_seconds(0))]
    pub leeway: Duration,
    /// Least time between two JWKS re-fetches triggered by an unknown key id (also the retry
    /// delay after a failed fetch).
    #[arg(
        long = "jwks-refresh-min-secs",
        env = "JWKS_REFRESH_MIN_SECS",
        default_value = "30",
        value_parser = whole_seconds(0)
    )]
    pub jwks_refresh_min: Duration,
    /// Longest time fetched signing keys are trusted before a scheduled re-fetch (a shorter
    /// `Cache-Control: max-age` from Auth wins): a key revoked in the dashboard stops verifying
    /// after it. At least 1.
    #[arg(long = "jwks-max-age-secs", env = "JWKS_MAX_AGE_SECS", default_value = "600", value_parser = whole_seconds(1))]
    pub jwks_max_age: Duration,
    /// Expected `iss` claim of user tokens, e.g. https://<ref>.supabase.co/auth/v1; empty: not
    /// checked.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", default_value = "", value_parser = optional_text())]
    pub issuer: ::std::option::Option<String>,
    /// Accept tokens of Supabase anonymous users (`is_anonymous: true`): true or false.
    #[arg(long, env = "ALLOW_ANONYMOUS", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,
    /// Refused tokens per client address and second before that address's bad tokens get 429
    /// without a signature check (and may no longer make the gateway re-fetch the JWKS). Every
    /// token is verified first: a valid one is always served. 0 disables (a school's phones
    /// often share one address behind NAT).
    #[arg(long = "auth-failures-per-sec", env = "AUTH_FAILURES_PER_SEC", default_value = "50", value_parser = rate())]
    pub failures_per_sec: f64,
    /// Burst of refused tokens allowed per client address before the rate applies (at least 1).
    #[arg(long = "auth-failure-burst", env = "AUTH_FAILURE_BURST", default_value = "100", value_parser = at_least(1u32))]
    pub failure_burst: u32,
}

/// Where tokens are verified, resolved, and the rules they must meet.
#[derive(Clone)]
pub struct AuthSettings {
    /// SUPABASE_JWT_SECRET or JWT_SECRET; None: asymmetric keys only.
    pub jwt_secret: Option<String>,
    /// JWKS_URL, or the Supabase project's; None when neither (HS256 secret only).
    pub jwks_url: Option<String>,
    pub rules: AuthRules,
}

/// SUPABASE_JWT_SECRET or its alias JWT_SECRET.
fn jwt_secret(a: &AuthArgs) -> Result<Option<String>, ConfigError> {
    let (var, secret) = match (set(&a.supabase_jwt_secret), set(&a.jwt_secret)) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid("JWT_SECRET", "differs from SUPABASE_JWT_SECRET; set only one of them"))
        }
        (Some(s), _) => ("SUPABASE_JWT_SECRET", s),
        (None, Some(s)) => ("JWT_SECRET", s),
        (None, None) => return Ok(None),
    };
    if secret.len() < 16 {
        return Err(invalid(var, "is too short to be a JWT secret"));
    }
    Ok(Some(secret))
}

/// JWKS_URL, or the Supabase project's own JWKS; None on PostgreSQL without JWKS_URL.
fn jwks_url(a: &AuthArgs, backend: Option<&Backend>) -> Result<Option<String>, ConfigError> {
    match (a.jwks_url.as_deref().map(str::trim), backend) {
        (Some(url), _) if !url.is_empty() => {
            reqwest::Url::parse(url).map_err(|e| invalid("JWKS_URL", format!("not a URL ({e})")))?;
            Ok(Some(url.to_string()))
        }
        (_, Some(Backend::Supabase(p))) => {
            Ok(Some(format!("{}/auth/v1/.well-known/jwks.json", p.url.as_str().trim_end_matches('/'))))
        }
        _ => Ok(None),
    }
}

impl AuthArgs {
    /// The secret and the key set's URL resolved against the backend; every problem into `p`.
    pub(super) fn resolve(self, backend: Option<&Backend>, p: &mut super::rules::Problems) -> AuthSettings {
        let jwt_secret = p.or(jwt_secret(&self), None);
        let jwks_url = p.or(jwks_url(&self, backend), None);
        if jwks_url.is_none() && jwt_secret.is_none() && backend.is_some() {
            p.0.push(invalid("JWT_SECRET", "set JWT_SECRET or JWKS_URL: without either no token can be verified"));
        }
        AuthSettings { jwt_secret, jwks_url, rules: self.rules }
    }
}
