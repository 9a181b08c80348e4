//! Configuration: every setting the gateway reads, parsed and validated once at start-up.
//!
//! Sources, lowest to highest precedence: a `.env` file in the working directory (if present), the
//! process environment, command-line flags. A missing or malformed setting stops start-up with a
//! message naming the variable. `.env.example` at the repository root documents every variable.
//! This module never logs secret values: [`Config`]'s `Debug` redacts them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RealtimeVsn {
    #[value(name = "1.0.0")]
    V1,
    #[value(name = "2.0.0")]
    V2,
}

/// Raw settings as clap reads them from flags and environment variables.
#[derive(Parser, Clone)]
#[command(
    name = "realtime-gateway",
    version,
    about = "Supabase Realtime gateway for the school chat",
    args_override_self = true
)]
pub struct Args {
    /// Base URL of the Supabase project (https://<ref>.supabase.co, or the local stand-in).
    /// Selects the Supabase backend; without it, DATABASE_URL selects plain PostgreSQL.
    #[arg(long, env = "SUPABASE_URL")]
    pub supabase_url: Option<String>,
    /// Publishable/anon API key: sent as `apikey` on every PostgREST call and the Realtime socket.
    #[arg(long, env = "SUPABASE_ANON_KEY", hide_env_values = true)]
    pub supabase_anon_key: Option<String>,
    /// Service role key: joins the upstream channel and reads membership and profiles. Never sent to clients.
    #[arg(long, env = "SUPABASE_SERVICE_ROLE_KEY", hide_env_values = true)]
    pub supabase_service_role_key: Option<String>,
    /// Legacy HS256 JWT secret. Optional when the project signs user tokens with asymmetric keys (JWKS).
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub supabase_jwt_secret: Option<String>,
    /// Same as SUPABASE_JWT_SECRET (for the PostgreSQL backend); set one of the two.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS of the token issuer; default `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`.
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Plain PostgreSQL backend (when SUPABASE_URL is not set): login role with REPLICATION,
    /// member of authenticated and service_role (see supabase/standalone/00_base.sql).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL backend: this instance's durable logical replication slot (one per instance).
    #[arg(long, env = "SLOT_NAME", default_value = "chat_gateway")]
    pub slot_name: String,
    /// PostgreSQL backend: most pooled connections for REST and lookups.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
    /// PostgreSQL backend: pause between two reads of the slot when it had nothing new, ms.
    #[arg(long, env = "SLOT_POLL_MS", default_value_t = 20)]
    pub slot_poll_ms: u64,
    /// TCP port for WebSocket and REST.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `realtime_gateway=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Phoenix serializer version for the upstream socket.
    #[arg(long, env = "REALTIME_VSN", value_enum, default_value = "2.0.0")]
    pub realtime_vsn: RealtimeVsn,
    /// Upstream heartbeat interval, seconds (realtime-js uses 25).
    #[arg(long, env = "UPSTREAM_HEARTBEAT_SECS", default_value_t = 25.0)]
    pub upstream_heartbeat_secs: f64,
    /// How far before the last seen message the catch-up after an upstream gap starts, seconds
    /// (covers transactions that committed late, out of created_at order).
    #[arg(long, env = "CATCHUP_MARGIN_SECS", default_value_t = 60)]
    pub catchup_margin_secs: u64,
    /// Allowed clock skew when checking `exp`, seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 10)]
    pub jwt_leeway_secs: u64,
    /// Minimum time between two JWKS re-fetches triggered by an unknown `kid`, seconds.
    #[arg(long, env = "JWKS_REFRESH_MIN_SECS", default_value_t = 30)]
    pub jwks_refresh_min_secs: u64,
    /// Timeout of every PostgREST / JWKS call, milliseconds.
    #[arg(long, env = "BACKEND_TIMEOUT_MS", default_value_t = 5000)]
    pub backend_timeout_ms: u64,
    /// Maximum concurrent WebSocket sessions.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Maximum concurrent WebSocket sessions of one user (devices).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 10)]
    pub max_connections_per_user: usize,
    /// Largest frame a client may send, bytes.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub ws_max_message_bytes: usize,
    /// Bytes tungstenite reserves per socket for reading client frames (grows for a larger
    /// frame). Its default, 128 KiB, would dominate an idle session's memory.
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 256)]
    pub ws_read_buffer_bytes: usize,
    /// Sustained client messages per second per session (a burst of twice that is allowed).
    #[arg(long, env = "WS_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    pub ws_rate_limit_per_sec: u32,
    /// REST calls per user and second (bursts of twice that); more get 429.
    #[arg(long, env = "REST_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    pub rest_rate_limit_per_sec: u32,
    /// Frames queued for one session before it is dropped as too slow.
    #[arg(long, env = "SESSION_QUEUE_CAPACITY", default_value_t = 1024)]
    pub session_queue_capacity: usize,
    /// Threads one session may subscribe to with `subscribe_thread`.
    #[arg(long, env = "MAX_THREAD_SUBSCRIPTIONS", default_value_t = 200)]
    pub max_thread_subscriptions: usize,
    /// Interval of server WebSocket pings, seconds; a socket silent for two intervals is closed.
    #[arg(long, env = "WS_PING_INTERVAL_SECS", default_value_t = 30.0)]
    pub ws_ping_interval_secs: f64,
    /// How long a cached thread membership or profile is trusted, seconds.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 600)]
    pub cache_ttl_secs: u64,
    /// Most threads whose membership is cached at once.
    #[arg(long, env = "CACHE_MAX_THREADS", default_value_t = 100_000)]
    pub cache_max_threads: usize,
    /// Upper bound on graceful shutdown, seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Topic of the upstream channel (any `realtime:<name>`).
    #[arg(long, env = "UPSTREAM_TOPIC", default_value = "realtime:chat-gateway")]
    pub upstream_topic: String,
    /// Bound on connecting, joining and Realtime's "Subscribed to PostgreSQL", seconds.
    #[arg(long, env = "UPSTREAM_JOIN_TIMEOUT_SECS", default_value_t = 10.0)]
    pub upstream_join_timeout_secs: f64,
    /// First reconnect delay after an upstream loss, milliseconds (doubles, with jitter).
    #[arg(long, env = "UPSTREAM_BACKOFF_MIN_MS", default_value_t = 500)]
    pub upstream_backoff_min_ms: u64,
    /// Longest reconnect delay, seconds.
    #[arg(long, env = "UPSTREAM_BACKOFF_MAX_SECS", default_value_t = 10.0)]
    pub upstream_backoff_max_secs: f64,
    /// Upstream events buffered between the upstream socket and the router.
    #[arg(long, env = "UPSTREAM_QUEUE_CAPACITY", default_value_t = 65_536)]
    pub upstream_queue_capacity: usize,
    /// Messages the router may hold while their lookups or a gap fill run; above it they are
    /// dropped, clients are told, and a gap fill brings them back.
    #[arg(long, env = "ROUTER_MAX_WAITING", default_value_t = 100_000)]
    pub router_max_waiting: usize,
    /// How often the database's sync horizon is read for the resume cursor, milliseconds.
    #[arg(long, env = "CURSOR_INTERVAL_MS", default_value_t = 1000)]
    pub cursor_interval_ms: u64,
    /// Recently routed messages kept in memory to serve resumes (`?since=`) without the database.
    #[arg(long, env = "RESUME_BUFFER_MESSAGES", default_value_t = 20_000)]
    pub resume_buffer_messages: usize,
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

/// Validated configuration.
#[derive(Clone)]
pub struct Config {
    pub backend: Backend,
    /// JWKS_URL, or the Supabase project's; None when neither (HS256 secret only).
    pub jwks_url: Option<String>,
    pub jwt_secret: Option<String>,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub realtime_vsn: RealtimeVsn,
    pub upstream_heartbeat: Duration,
    pub catchup_margin: Duration,
    pub jwt_leeway: Duration,
    pub jwks_refresh_min: Duration,
    pub backend_timeout: Duration,
    pub rest_rate_per_sec: u32,
    pub limits: Limits,
    pub cache_ttl: Duration,
    pub cache_max_threads: usize,
    pub shutdown_grace: Duration,
    pub upstream_topic: String,
    pub upstream_join_timeout: Duration,
    pub upstream_backoff_min: Duration,
    pub upstream_backoff_max: Duration,
    pub upstream_channel_capacity: usize,
    pub router_max_waiting: usize,
    pub cursor_interval: Duration,
    pub resume_buffer: usize,
}

/// Limits applied to clients.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_message_bytes: usize,
    pub read_buffer_bytes: usize,
    pub rate_per_sec: u32,
    pub queue_capacity: usize,
    pub max_thread_subscriptions: usize,
    pub ping_interval: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
}

fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, problem: problem.into() }
}

fn seconds(var: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(invalid(var, format!("must be a number of seconds between 0 and 86400, got {value}")));
    }
    Ok(Duration::from_secs_f64(value))
}

fn positive(var: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(var, "must be at least 1"));
    }
    Ok(value)
}

impl Config {
    /// Reads `.env` (if present), the environment and the command line, then validates.
    pub fn load() -> Result<Config, String> {
        let _ = dotenvy::dotenv();
        let args = Args::try_parse().map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let backend = backend(&a)?;
        let jwt_secret = jwt_secret(&a)?;
        let jwks_url = match (a.jwks_url.as_deref().map(str::trim), &backend) {
            (Some(url), _) if !url.is_empty() => {
                reqwest::Url::parse(url).map_err(|e| invalid("JWKS_URL", format!("not a URL ({e})")))?;
                Some(url.to_string())
            }
            (_, Backend::Supabase(p)) => {
                Some(format!("{}/auth/v1/.well-known/jwks.json", p.url.as_str().trim_end_matches('/')))
            }
            (_, Backend::Postgres(_)) => None,
        };
        if jwks_url.is_none() && jwt_secret.is_none() {
            return Err(invalid("JWT_SECRET", "set JWT_SECRET or JWKS_URL: without either no token can be verified"));
        }
        if a.ws_rate_limit_per_sec == 0 {
            return Err(invalid("WS_RATE_LIMIT_PER_SEC", "must be at least 1"));
        }
        if a.ws_max_message_bytes < 256 {
            return Err(invalid("WS_MAX_MESSAGE_BYTES", "must be at least 256"));
        }
        if !(64..=1 << 20).contains(&a.ws_read_buffer_bytes) {
            return Err(invalid("WS_READ_BUFFER_BYTES", "must be between 64 and 1048576"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&a.log_level) {
            return Err(invalid("LOG_LEVEL", format!("not a log filter ({e}); e.g. info or realtime_gateway=debug")));
        }
        if !a.upstream_topic.starts_with("realtime:") || a.upstream_topic.len() <= "realtime:".len() {
            return Err(invalid("UPSTREAM_TOPIC", "must look like realtime:<name>"));
        }
        Ok(Config {
            backend,
            jwks_url,
            jwt_secret,
            listen: SocketAddr::new(a.bind_address, a.port),
            log_format: a.log_format,
            log_level: a.log_level,
            realtime_vsn: a.realtime_vsn,
            upstream_heartbeat: seconds("UPSTREAM_HEARTBEAT_SECS", a.upstream_heartbeat_secs)?,
            catchup_margin: Duration::from_secs(a.catchup_margin_secs),
            jwt_leeway: Duration::from_secs(a.jwt_leeway_secs),
            jwks_refresh_min: Duration::from_secs(a.jwks_refresh_min_secs),
            backend_timeout: Duration::from_millis(
                positive("BACKEND_TIMEOUT_MS", a.backend_timeout_ms as usize)? as u64
            ),
            rest_rate_per_sec: positive("REST_RATE_LIMIT_PER_SEC", a.rest_rate_limit_per_sec as usize)? as u32,
            limits: Limits {
                max_connections: positive("MAX_CONNECTIONS", a.max_connections)?,
                max_connections_per_user: positive("MAX_CONNECTIONS_PER_USER", a.max_connections_per_user)?,
                max_message_bytes: a.ws_max_message_bytes,
                read_buffer_bytes: a.ws_read_buffer_bytes,
                rate_per_sec: a.ws_rate_limit_per_sec,
                queue_capacity: positive("SESSION_QUEUE_CAPACITY", a.session_queue_capacity)?,
                max_thread_subscriptions: positive("MAX_THREAD_SUBSCRIPTIONS", a.max_thread_subscriptions)?,
                ping_interval: seconds("WS_PING_INTERVAL_SECS", a.ws_ping_interval_secs)?,
            },
            cache_ttl: Duration::from_secs(positive("CACHE_TTL_SECS", a.cache_ttl_secs as usize)? as u64),
            cache_max_threads: positive("CACHE_MAX_THREADS", a.cache_max_threads)?,
            shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
            upstream_topic: a.upstream_topic,
            upstream_join_timeout: seconds("UPSTREAM_JOIN_TIMEOUT_SECS", a.upstream_join_timeout_secs)?,
            upstream_backoff_min: Duration::from_millis(positive(
                "UPSTREAM_BACKOFF_MIN_MS",
                a.upstream_backoff_min_ms as usize,
            )? as u64),
            upstream_backoff_max: seconds("UPSTREAM_BACKOFF_MAX_SECS", a.upstream_backoff_max_secs)?,
            upstream_channel_capacity: positive("UPSTREAM_QUEUE_CAPACITY", a.upstream_queue_capacity)?,
            router_max_waiting: positive("ROUTER_MAX_WAITING", a.router_max_waiting)?,
            cursor_interval: Duration::from_millis(
                positive("CURSOR_INTERVAL_MS", a.cursor_interval_ms as usize)? as u64
            ),
            resume_buffer: a.resume_buffer_messages,
        })
    }

    /// A configuration for tests and embedding: the given project, everything else default.
    pub fn for_project(
        supabase_url: &str,
        anon_key: &str,
        service_role_key: &str,
        jwt_secret: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut argv = vec![
            "realtime-gateway".to_string(),
            format!("--supabase-url={supabase_url}"),
            format!("--supabase-anon-key={anon_key}"),
            format!("--supabase-service-role-key={service_role_key}"),
            "--port=0".to_string(),
            "--bind-address=127.0.0.1".to_string(),
        ];
        if let Some(secret) = jwt_secret {
            argv.push(format!("--supabase-jwt-secret={secret}"));
        }
        let args = Args::try_parse_from(argv).map_err(|e| invalid("arguments", e.to_string()))?;
        Config::from_args(args)
    }

    /// A configuration for tests and embedding: the PostgreSQL backend, everything else default.
    pub fn for_postgres(database_url: &str, slot_name: &str, jwt_secret: &str) -> Result<Config, ConfigError> {
        let argv = [
            "realtime-gateway".to_string(),
            format!("--database-url={database_url}"),
            format!("--slot-name={slot_name}"),
            format!("--jwt-secret={jwt_secret}"),
            "--port=0".to_string(),
            "--bind-address=127.0.0.1".to_string(),
        ];
        let args = Args::try_parse_from(argv).map_err(|e| invalid("arguments", e.to_string()))?;
        Config::from_args(args)
    }

    /// The Supabase project, when that is the backend.
    pub fn supabase(&self) -> Option<&SupabaseProject> {
        match &self.backend {
            Backend::Supabase(project) => Some(project),
            Backend::Postgres(_) => None,
        }
    }
}

/// SUPABASE_URL selects Supabase (and requires its keys); otherwise DATABASE_URL selects
/// PostgreSQL.
fn backend(a: &Args) -> Result<Backend, ConfigError> {
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
fn jwt_secret(a: &Args) -> Result<Option<String>, ConfigError> {
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

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "backend",
                &match &self.backend {
                    Backend::Supabase(p) => format!("supabase {}", p.url.as_str()),
                    Backend::Postgres(s) => format!("postgres (slot {})", s.slot_name),
                },
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("listen", &self.listen)
            .field("realtime_vsn", &self.realtime_vsn)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec![
            "gw",
            "--supabase-url=https://abc.supabase.co",
            "--supabase-anon-key=anon",
            "--supabase-service-role-key=service",
        ];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv).map_err(|e| invalid("args", e.to_string()))?)
    }

    #[test]
    fn derives_service_urls() {
        let c = parse(&[]).expect("valid");
        let project = c.supabase().expect("the Supabase backend");
        assert_eq!(project.realtime_websocket_url(), "wss://abc.supabase.co/realtime/v1/websocket");
        assert_eq!(project.rest_url(), "https://abc.supabase.co/rest/v1");
        assert_eq!(c.jwks_url.as_deref(), Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json"));
        assert_eq!(c.listen.port(), 3000);
        assert!(c.jwt_secret.is_none());
    }

    #[test]
    fn local_http_maps_to_ws() {
        let c = parse(&["--supabase-url=http://127.0.0.1:54321/"]).expect("valid");
        let url = c.supabase().map(SupabaseProject::realtime_websocket_url);
        assert_eq!(url.as_deref(), Some("ws://127.0.0.1:54321/realtime/v1/websocket"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = parse(&["--supabase-url=not a url"]).expect_err("invalid");
        assert!(e.to_string().starts_with("SUPABASE_URL:"), "{e}");
        let e = parse(&["--supabase-url=ftp://x"]).expect_err("invalid");
        assert!(e.to_string().starts_with("SUPABASE_URL:"), "{e}");
        let e = parse(&["--supabase-jwt-secret=short"]).expect_err("invalid");
        assert!(e.to_string().starts_with("SUPABASE_JWT_SECRET:"), "{e}");
        let e = parse(&["--ws-ping-interval-secs=0"]).expect_err("invalid");
        assert!(e.to_string().starts_with("WS_PING_INTERVAL_SECS:"), "{e}");
        let e = parse(&["--ws-read-buffer-bytes=10"]).expect_err("refused, not clamped");
        assert!(e.to_string().starts_with("WS_READ_BUFFER_BYTES:"), "{e}");
        let e = parse(&["--log-level=[[["]).expect_err("a bad filter stops start-up");
        assert!(e.to_string().starts_with("LOG_LEVEL:"), "{e}");
    }

    #[test]
    fn missing_setting_is_named() {
        let args = Args::try_parse_from(["gw", "--supabase-url=https://x.supabase.co"]).expect("parses");
        let text = Config::from_args(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.starts_with("SUPABASE_ANON_KEY:"), "{text}");
        let args = Args::try_parse_from(["gw"]).expect("parses");
        let text = Config::from_args(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.starts_with("SUPABASE_URL:") && text.contains("DATABASE_URL"), "{text}");
    }

    #[test]
    fn database_url_without_supabase_selects_postgres() {
        let secret = "0123456789abcdef0123";
        let c = Config::for_postgres("postgres://gw:pw@db.example/chat", "gw_1", secret).expect("valid");
        assert!(matches!(&c.backend, Backend::Postgres(s) if s.slot_name == "gw_1"));
        assert_eq!((c.jwt_secret.as_deref(), c.jwks_url.as_deref()), (Some(secret), None));
        let text = format!("{c:?}");
        assert!(!text.contains("pw@") && !text.contains(secret), "{text}");
        let e = Config::for_postgres("postgres://gw@db/chat", "Bad-Slot", secret).expect_err("invalid slot");
        assert!(e.to_string().starts_with("SLOT_NAME:"), "{e}");
        let args = Args::try_parse_from(["gw", "--database-url=postgres://gw@db/chat"]).expect("parses");
        let e = Config::from_args(args).expect_err("no way to verify tokens");
        assert!(e.to_string().starts_with("JWT_SECRET:"), "{e}");
        let args = Args::try_parse_from([
            "gw",
            "--database-url=postgres://gw@db/chat",
            "--jwks-url=https://auth.example/jwks.json",
        ])
        .expect("parses");
        assert!(Config::from_args(args).is_ok_and(|c| c.jwks_url.is_some()));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = parse(&["--supabase-jwt-secret=0123456789abcdef0123"]).expect("valid");
        let text = format!("{c:?}");
        assert!(!text.contains("0123456789abcdef0123") && !text.contains("service\""), "{text}");
    }
}
