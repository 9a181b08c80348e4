//! Which backend the gateway talks to: a Supabase project (Realtime and PostgREST) when
//! `SUPABASE_URL` is set, plain PostgreSQL when only `DATABASE_URL` is; and where tokens are
//! verified (`SUPABASE_JWT_SECRET`/`JWT_SECRET`, `JWKS_URL`). Pure validation, no I/O; never
//! prints a secret or a connection string.

use std::time::Duration;

use super::rules::{invalid, positive};
use super::{Args, ConfigError};

/// Which database backend the gateway talks to.
#[derive(Clone)]
pub enum Backend {
    /// Supabase: Realtime for changes, PostgREST for reads (the default).
    Supabase(SupabaseProject),
    /// Plain PostgreSQL: a durable replication slot for changes, a pool for reads.
    Postgres(crate::pg::PgSettings),
}

/// A Supabase project's URL and keys.
#[derive(Clone)]
pub struct SupabaseProject {
    pub url: reqwest::Url,
    pub anon_key: String,
    pub service_role_key: String,
}

impl SupabaseProject {
    /// `ws(s)://.../realtime/v1/websocket` derived from SUPABASE_URL.
    pub fn realtime_websocket_url(&self) -> String {
        let mut url = self.url.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        url.set_query(None);
        let base = url.as_str().trim_end_matches('/');
        format!("{base}/realtime/v1/websocket")
    }

    /// `<SUPABASE_URL>/rest/v1`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest/v1", self.url.as_str().trim_end_matches('/'))
    }
}

/// SUPABASE_URL selects Supabase (and requires its keys); otherwise DATABASE_URL selects
/// PostgreSQL.
pub(super) fn backend(a: &Args) -> Result<Backend, ConfigError> {
    let set = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(url_text) = set(&a.supabase_url) {
        let url = reqwest::Url::parse(&url_text).map_err(|e| invalid("SUPABASE_URL", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid("SUPABASE_URL", "must be an http(s) URL such as https://<ref>.supabase.co"));
        }
        let anon_key = set(&a.supabase_anon_key).ok_or_else(|| invalid("SUPABASE_ANON_KEY", "is required"))?;
        let service_role_key =
            set(&a.supabase_service_role_key).ok_or_else(|| invalid("SUPABASE_SERVICE_ROLE_KEY", "is required"))?;
        return Ok(Backend::Supabase(SupabaseProject { url, anon_key, service_role_key }));
    }
    let Some(database_url) = set(&a.database_url) else {
        return Err(invalid("SUPABASE_URL", "is required (or DATABASE_URL, for plain PostgreSQL)"));
    };
    if !crate::pg::valid_slot_name(&a.slot_name) {
        return Err(invalid("SLOT_NAME", "lower-case letters, digits and underscores, at most 63"));
    }
    let settings = crate::pg::PgSettings {
        database_url,
        slot_name: a.slot_name.clone(),
        pool_size: positive("DATABASE_POOL_SIZE", a.database_pool_size)?,
        poll_interval: Duration::from_millis(positive("SLOT_POLL_MS", a.slot_poll_ms as usize)? as u64),
    };
    crate::pg::connection_config(&settings).map_err(|e| invalid("DATABASE_URL", e.to_string()))?;
    Ok(Backend::Postgres(settings))
}

/// SUPABASE_JWT_SECRET or its alias JWT_SECRET.
pub(super) fn jwt_secret(a: &Args) -> Result<Option<String>, ConfigError> {
    let value = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let (var, secret) = match (value(&a.supabase_jwt_secret), value(&a.jwt_secret)) {
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
pub(super) fn jwks_url(a: &Args, backend: Option<&Backend>) -> Result<Option<String>, ConfigError> {
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
