//! Configuration: every setting the gateway reads, parsed and validated once at start-up.
//!
//! Sources, lowest to highest precedence: a `.env` file in the working directory (if present), the
//! process environment, command-line flags. A missing or malformed setting stops start-up with a
//! message naming the variable. `.env.example` at the repository root documents every variable.
//! Every problem is reported at once ([`check`] also serves `--check-config`; `rules` holds the
//! checks of single settings). This module never logs secret values: [`Config`]'s `Debug` redacts
//! them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub mod check;
mod fair;
mod rules;

pub use fair::Fairness;

pub use rules::parse_origins;
use rules::{at_least, close_rate, drain, edge_settings, invalid, positive, rate, seconds, secret_token, Problems};

mod backend;
use backend::{backend, jwks_url, jwt_secret};
pub use backend::{Backend, SupabaseProject};

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
    /// Frames queued for one session before it is dropped as too slow (close 4008; the client
    /// resumes with `since`). Room for one large transaction or gap fill; the buffer is released
    /// when drained, so idle sessions do not pay for it.
    #[arg(long, env = "SESSION_QUEUE_CAPACITY", default_value_t = 4096)]
    pub session_queue_capacity: usize,
    /// Bytes of frames queued for one session before it is dropped as too slow (close 4008), at
    /// least 1 MiB: large messages fill a session's queue long before its frame count.
    #[arg(long, env = "SESSION_QUEUE_BYTES", default_value_t = 16 << 20)]
    pub session_queue_bytes: usize,
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
    /// Upper bound on graceful shutdown, seconds (drain, then sessions closed over the rest).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, seconds of answering /readyz 503 with every session still open, before the
    /// sessions are closed (DRAIN_CLOSE_RATE per second) within the rest of SHUTDOWN_GRACE_SECS;
    /// less than it.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 5.0)]
    pub drain_secs: f64,
    /// After the drain, sessions closed per second (a few close at once; many are spread out,
    /// faster only when the rate would run past SHUTDOWN_GRACE_SECS).
    #[arg(long, env = "DRAIN_CLOSE_RATE", default_value_t = 500.0)]
    pub drain_close_rate: f64,
    /// Bearer token /metrics requires (at least 16 characters); empty: /metrics is open.
    #[arg(long, env = "METRICS_TOKEN", default_value = "", hide_env_values = true, hide_default_value = true)]
    pub metrics_token: String,
    /// Bearer token of the operator page /admin (at least 16 characters); empty: no /admin.
    #[arg(long, env = "ADMIN_TOKEN", default_value = "", hide_env_values = true, hide_default_value = true)]
    pub admin_token: String,
    /// Longest time signing keys (JWKS) are trusted before a scheduled re-fetch, seconds; a
    /// shorter `Cache-Control: max-age` from Auth is honoured.
    #[arg(long, env = "JWKS_MAX_AGE_SECS", default_value_t = 600)]
    pub jwks_max_age_secs: u64,
    /// Expected `iss` claim of user tokens (e.g. https://<ref>.supabase.co/auth/v1); empty: not checked.
    #[arg(long, env = "JWT_ISSUER", default_value = "")]
    pub jwt_issuer: String,
    /// Accept tokens of Supabase anonymous users (`is_anonymous: true`).
    #[arg(long, env = "ALLOW_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,
    /// Refused tokens per source IP and second before that IP gets 429 without a signature check
    /// (0 disables; a school's phones often share one address behind NAT).
    #[arg(long, env = "AUTH_FAILURES_PER_SEC", default_value_t = 50.0)]
    pub auth_failures_per_sec: f64,
    /// Burst of refused tokens allowed per source IP before the rate applies.
    #[arg(long, env = "AUTH_FAILURE_BURST", default_value_t = 100)]
    pub auth_failure_burst: u32,
    /// TCP connections that have not yet sent a complete first request; more are closed at once.
    #[arg(long, env = "MAX_PENDING_HANDSHAKES", default_value_t = 1024)]
    pub max_pending_handshakes: usize,
    /// All TCP connections (WebSocket sessions, REST, handshakes); more are closed at once.
    /// Default: MAX_CONNECTIONS + MAX_PENDING_HANDSHAKES + 1024.
    #[arg(long, env = "MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,
    /// Seconds a client has to send a complete request head (and an idle keep-alive connection
    /// its next one); slower connections are closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_SECS", default_value_t = 5.0)]
    pub handshake_timeout_secs: f64,
    /// Largest request head (request line and headers, including `?token=`), bytes; larger gets 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Browser origins allowed to call the REST API and open the WebSocket, comma-separated
    /// (e.g. https://app.school.example). Empty: no browser origin is allowed.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,
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
    /// Bytes those messages may hold (content and fields, plus a fixed overhead each); above it
    /// they are dropped exactly as with ROUTER_MAX_WAITING. At least 1 MiB.
    #[arg(long, env = "ROUTER_BUFFER_BYTES", default_value_t = 32 << 20)]
    pub router_buffer_bytes: usize,
    /// How often the database's sync horizon is read for the resume cursor, milliseconds.
    #[arg(long, env = "CURSOR_INTERVAL_MS", default_value_t = 1000)]
    pub cursor_interval_ms: u64,
    /// Recently routed messages kept in memory to serve resumes (`?since=`) without the database.
    #[arg(long, env = "RESUME_BUFFER_MESSAGES", default_value_t = 20_000)]
    pub resume_buffer_messages: usize,
    /// Bytes the resume ring may hold, counted on the encoded frames plus a fixed overhead per
    /// message; the oldest are evicted first (resumes from before them go to the database).
    #[arg(long, env = "RESUME_BUFFER_BYTES", default_value_t = 64 << 20)]
    pub resume_buffer_bytes: usize,
    /// Most keys (users, addresses) one rate limiter keeps; idle keys also expire with time.
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value_t = 100_000)]
    pub rate_limit_max_keys: usize,
    #[command(flatten)]
    pub fair: fair::FairArgs,
    /// Longest a resume served from memory holds `sync_complete` back, milliseconds, waiting for
    /// proof that every message committed before the phone connected was sent (then it is sent
    /// anyway, with a cursor that is still safe, and counted).
    #[arg(long, env = "RESUME_CATCHUP_TIMEOUT_MS", default_value_t = 5000)]
    pub resume_catchup_timeout_ms: u64,
    /// Print the effective configuration (secrets redacted) and exit: 0 if valid, 2 otherwise.
    #[arg(long)]
    pub check_config: bool,
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
    /// Part of the shutdown grace with /readyz at 503 before sessions are closed.
    pub drain: Duration,
    /// Sessions closed per second after the drain.
    pub drain_close_rate: f64,
    pub metrics_token: Option<String>,
    pub admin_token: Option<String>,
    /// Longest time a fetched JWKS is trusted (a shorter `Cache-Control: max-age` wins).
    pub jwks_max_age: Duration,
    /// Required `iss` of user tokens, if set.
    pub jwt_issuer: Option<String>,
    pub allow_anonymous: bool,
    /// Refused tokens per source IP and second (0: no limit), and the burst.
    pub auth_failures_per_sec: f64,
    pub auth_failure_burst: u32,
    pub edge: EdgeSettings,
    pub upstream_topic: String,
    pub upstream_join_timeout: Duration,
    pub upstream_backoff_min: Duration,
    pub upstream_backoff_max: Duration,
    pub upstream_channel_capacity: usize,
    pub router_max_waiting: usize,
    /// Bytes the router's waiting messages may hold.
    pub router_buffer_bytes: usize,
    pub cursor_interval: Duration,
    /// Most messages in the resume ring.
    pub resume_buffer: usize,
    /// Most bytes in the resume ring (encoded frames plus a fixed overhead each).
    pub resume_buffer_bytes: usize,
    /// Most keys one rate limiter keeps.
    pub rate_limit_max_keys: usize,
    /// Per-user budgets on the database work clients cause.
    pub fairness: Fairness,
    /// Longest a memory resume holds `sync_complete` back for its catch-up proof.
    pub resume_catchup_timeout: Duration,
}

/// Limits applied before authentication (see [`crate::edge`]).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub max_pending_handshakes: usize,
    pub max_tcp_connections: usize,
    pub handshake_timeout: Duration,
    pub max_header_bytes: usize,
    /// Serialized origins (`https://host[:port]`) allowed for browsers; empty: none.
    pub cors_allowed_origins: Vec<String>,
    /// `TRUSTED_PROXIES` and the header they write the client address into.
    pub trusted_proxies: crate::edge::forwarded::TrustedProxies,
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
    /// Bytes of frames one session's queue may hold.
    pub queue_bytes: usize,
    pub max_thread_subscriptions: usize,
    pub ping_interval: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    /// More than one setting is wrong: every one is reported, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// hyper's smallest read buffer: a smaller header limit cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    /// Reads `.env` (if present), the environment and the command line, then validates; every
    /// problem is reported, one per line.
    pub fn load() -> Result<Config, String> {
        let _ = dotenvy::dotenv();
        check::load_from(std::env::args_os()).map_err(|problems| problems.join("\n"))
    }

    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let backend = p.or(backend(&a).map(Some), None);
        let jwt_secret = p.or(jwt_secret(&a), None);
        let jwks_url = p.or(jwks_url(&a, backend.as_ref()), None);
        if jwks_url.is_none() && jwt_secret.is_none() && backend.is_some() {
            p.0.push(invalid("JWT_SECRET", "set JWT_SECRET or JWKS_URL: without either no token can be verified"));
        }
        if a.ws_rate_limit_per_sec == 0 {
            p.0.push(invalid("WS_RATE_LIMIT_PER_SEC", "must be at least 1"));
        }
        if a.ws_max_message_bytes < 256 {
            p.0.push(invalid("WS_MAX_MESSAGE_BYTES", "must be at least 256"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&a.log_level) {
            p.0.push(invalid("LOG_LEVEL", format!("not a tracing filter ({e})")));
        }
        if !(64..=1 << 20).contains(&a.ws_read_buffer_bytes) {
            p.0.push(invalid("WS_READ_BUFFER_BYTES", "must be between 64 and 1048576"));
        }
        if !a.upstream_topic.starts_with("realtime:") || a.upstream_topic.len() <= "realtime:".len() {
            p.0.push(invalid("UPSTREAM_TOPIC", "must look like realtime:<name>"));
        }
        let second = Duration::from_secs(1);
        let limits = Limits {
            max_connections: p.or(positive("MAX_CONNECTIONS", a.max_connections), 1),
            max_connections_per_user: p.or(positive("MAX_CONNECTIONS_PER_USER", a.max_connections_per_user), 1),
            max_message_bytes: a.ws_max_message_bytes,
            read_buffer_bytes: a.ws_read_buffer_bytes,
            rate_per_sec: a.ws_rate_limit_per_sec,
            queue_capacity: p.or(positive("SESSION_QUEUE_CAPACITY", a.session_queue_capacity), 1),
            queue_bytes: p
                .or(at_least("SESSION_QUEUE_BYTES", a.session_queue_bytes, 1 << 20, "room for a burst"), 1 << 20),
            max_thread_subscriptions: p.or(positive("MAX_THREAD_SUBSCRIPTIONS", a.max_thread_subscriptions), 1),
            ping_interval: p.or(seconds("WS_PING_INTERVAL_SECS", a.ws_ping_interval_secs), second),
        };
        let mut edge = edge_settings(&a, limits.max_connections, &mut p);
        edge.trusted_proxies = fair::trusted_proxies(&a.fair, &mut p);
        let fairness = fair::fairness(&a.fair, &mut p);
        let upstream_heartbeat = p.or(seconds("UPSTREAM_HEARTBEAT_SECS", a.upstream_heartbeat_secs), second);
        let backend_timeout_ms = p.or(positive("BACKEND_TIMEOUT_MS", a.backend_timeout_ms as usize), 1) as u64;
        let rest_rate_per_sec = p.or(positive("REST_RATE_LIMIT_PER_SEC", a.rest_rate_limit_per_sec as usize), 1);
        let cache_ttl_secs = p.or(positive("CACHE_TTL_SECS", a.cache_ttl_secs as usize), 1) as u64;
        let cache_max_threads = p.or(positive("CACHE_MAX_THREADS", a.cache_max_threads), 1);
        let jwks_max_age_secs = p.or(positive("JWKS_MAX_AGE_SECS", a.jwks_max_age_secs as usize), 1) as u64;
        let auth_failures_per_sec = p.or(rate("AUTH_FAILURES_PER_SEC", a.auth_failures_per_sec), 0.0);
        let auth_failure_burst = p.or(positive("AUTH_FAILURE_BURST", a.auth_failure_burst as usize), 1) as u32;
        let upstream_join_timeout = p.or(seconds("UPSTREAM_JOIN_TIMEOUT_SECS", a.upstream_join_timeout_secs), second);
        let backoff_min_ms = p.or(positive("UPSTREAM_BACKOFF_MIN_MS", a.upstream_backoff_min_ms as usize), 1) as u64;
        let upstream_backoff_max = p.or(seconds("UPSTREAM_BACKOFF_MAX_SECS", a.upstream_backoff_max_secs), second);
        let upstream_channel_capacity = p.or(positive("UPSTREAM_QUEUE_CAPACITY", a.upstream_queue_capacity), 1);
        let router_max_waiting = p.or(positive("ROUTER_MAX_WAITING", a.router_max_waiting), 1);
        let router_buffer_bytes = p.or(
            at_least("ROUTER_BUFFER_BYTES", a.router_buffer_bytes, 1 << 20, "room for many rows of 4,000 characters"),
            1 << 20,
        );
        let rate_limit_max_keys = p.or(positive("RATE_LIMIT_MAX_KEYS", a.rate_limit_max_keys), 1);
        let cursor_interval_ms = p.or(positive("CURSOR_INTERVAL_MS", a.cursor_interval_ms as usize), 1) as u64;
        let catchup_timeout_ms =
            p.or(positive("RESUME_CATCHUP_TIMEOUT_MS", a.resume_catchup_timeout_ms as usize), 1) as u64;
        let shutdown_grace = Duration::from_secs(a.shutdown_grace_secs);
        let drain = p.or(drain(a.drain_secs, shutdown_grace), Duration::ZERO);
        let drain_close_rate = p.or(close_rate(a.drain_close_rate), 500.0);
        let metrics_token = p.or(secret_token("METRICS_TOKEN", &a.metrics_token), None);
        let admin_token = p.or(secret_token("ADMIN_TOKEN", &a.admin_token), None);
        p.finish()?;
        let backend = backend.ok_or_else(|| invalid("SUPABASE_URL", "missing"))?;
        Ok(Config {
            backend,
            jwks_url,
            jwt_secret,
            listen: SocketAddr::new(a.bind_address, a.port),
            log_format: a.log_format,
            log_level: a.log_level,
            realtime_vsn: a.realtime_vsn,
            upstream_heartbeat,
            catchup_margin: Duration::from_secs(a.catchup_margin_secs),
            jwt_leeway: Duration::from_secs(a.jwt_leeway_secs),
            jwks_refresh_min: Duration::from_secs(a.jwks_refresh_min_secs),
            backend_timeout: Duration::from_millis(backend_timeout_ms),
            rest_rate_per_sec: rest_rate_per_sec as u32,
            limits,
            cache_ttl: Duration::from_secs(cache_ttl_secs),
            cache_max_threads,
            shutdown_grace,
            drain,
            drain_close_rate,
            metrics_token,
            admin_token,
            jwks_max_age: Duration::from_secs(jwks_max_age_secs),
            jwt_issuer: Some(a.jwt_issuer.trim().to_string()).filter(|s| !s.is_empty()),
            allow_anonymous: a.allow_anonymous,
            auth_failures_per_sec,
            auth_failure_burst,
            edge,
            upstream_topic: a.upstream_topic,
            upstream_join_timeout,
            upstream_backoff_min: Duration::from_millis(backoff_min_ms),
            upstream_backoff_max,
            upstream_channel_capacity,
            router_max_waiting,
            router_buffer_bytes,
            cursor_interval: Duration::from_millis(cursor_interval_ms),
            resume_buffer: a.resume_buffer_messages,
            resume_buffer_bytes: a.resume_buffer_bytes,
            rate_limit_max_keys,
            fairness,
            resume_catchup_timeout: Duration::from_millis(catchup_timeout_ms),
        })
    }

    /// A configuration for tests and embedding: the given project, everything else default but
    /// no drain (no load balancer watches an embedded gateway's `/readyz`).
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
            "--drain-secs=0".to_string(),
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
mod tests;
