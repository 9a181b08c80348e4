//! The backend component: which database the gateway talks to, a Supabase project (Realtime and
//! PostgREST) when `SUPABASE_URL` is set, plain PostgreSQL when only `DATABASE_URL` is, and how
//! long a call to it may take. Declares those settings and selects the backend; pure validation,
//! no I/O; never prints a secret or a connection string.

use std::time::Duration;

use clap::Args;

use super::rules::{at_least, invalid, seconds};
use super::ConfigError;
pub use crate::pg::SlotRead;

/// The backend's settings as declared (flags and environment variables).
#[derive(Args, Clone)]
#[command(next_help_heading = "Backend")]
pub struct BackendArgs {
    /// Base URL of the Supabase project (https://<ref>.supabase.co, or the local stand-in).
    /// Selects the Supabase backend; required unless DATABASE_URL is set.
    #[arg(long, env = "SUPABASE_URL")]
    pub supabase_url: Option<String>,
    /// Publishable/anon API key: sent as `apikey` on every PostgREST call and the Realtime socket.
    /// Required with SUPABASE_URL.
    #[arg(long, env = "SUPABASE_ANON_KEY", hide_env_values = true)]
    pub supabase_anon_key: Option<String>,
    /// Service role key: joins the upstream channel and reads membership and profiles. Never sent
    /// to clients. Required with SUPABASE_URL.
    #[arg(long, env = "SUPABASE_SERVICE_ROLE_KEY", hide_env_values = true)]
    pub supabase_service_role_key: Option<String>,
    /// Plain PostgreSQL backend, used when SUPABASE_URL is not set: a login role with REPLICATION,
    /// member of authenticated and service_role (supabase/standalone/00_base.sql creates
    /// chat_gateway), e.g. postgres://chat_gateway:password@db-host:5432/postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL backend: this instance's durable logical replication slot (one per instance;
    /// created if missing): lower-case letters, digits and underscores, at most 63.
    #[arg(long, env = "SLOT_NAME", default_value = "chat_gateway")]
    pub slot_name: String,
    /// PostgreSQL backend: most pooled connections for REST and lookups (at least 1).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value = "16", value_parser = at_least(1usize))]
    pub database_pool_size: usize,
    /// PostgreSQL backend: how the slot is read. `stream`: START_REPLICATION over a replication
    /// connection (needs a `replication` line in pg_hba.conf and no pooler in between); falls
    /// back to `poll` on its own, with a warning, when the server or a pooler refuses
    /// replication connections. `poll`: pg_logical_slot_peek_binary_changes every
    /// SLOT_POLL_SECS on an ordinary connection.
    #[arg(long, env = "SLOT_READ", value_enum, default_value = "stream")]
    pub slot_read: SlotRead,
    /// PostgreSQL backend, SLOT_READ=poll: pause between two reads of the slot when it had
    /// nothing new.
    #[arg(long, env = "SLOT_POLL_SECS", default_value = "0.02", value_parser = seconds())]
    pub slot_poll_secs: Duration,
    /// Whole-request timeout (connect to last byte) of every PostgREST, database and JWKS call;
    /// also bounds the JWKS fetch at start-up.
    #[arg(long, env = "BACKEND_TIMEOUT_SECS", default_value = "5", value_parser = seconds())]
    pub backend_timeout_secs: Duration,
}

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

/// A text setting that is set and not blank, trimmed.
pub(super) fn set(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// SUPABASE_URL selects Supabase (and requires its keys); otherwise DATABASE_URL selects
/// PostgreSQL.
pub(super) fn backend(a: &BackendArgs) -> Result<Backend, ConfigError> {
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
        pool_size: a.database_pool_size,
        poll_interval: a.slot_poll_secs,
        slot_read: a.slot_read,
    };
    crate::pg::connection_config(&settings).map_err(|e| invalid("DATABASE_URL", e.to_string()))?;
    Ok(Backend::Postgres(settings))
}
