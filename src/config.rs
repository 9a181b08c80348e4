//! Configuration: every setting the gateway reads, declared once by the component that owns it,
//! parsed and validated once at start-up into a tree of typed component settings.
//!
//! Each file under `config/` declares one area's settings as a clap struct (`backend`, `auth`,
//! `edge`, `session`, `delivery`, `server`): the variable, its flag, default, range (the value
//! parser), whether it is secret, and its documentation (the doc comment). [`Args`] flattens them;
//! [`reference`] renders `.env.example` and `docs/configuration.md` from that one declaration (a
//! test fails when the committed files differ), and `--check-config` prints it (see [`check`]).
//! Renamed variables stay accepted under their old names ([`alias`]), with a warning.
//!
//! Sources, lowest to highest precedence: a `.env` file in the working directory (if present), the
//! process environment, command-line flags. A missing or malformed setting stops start-up with a
//! message naming the variable; every problem is reported at once. This module never logs secret
//! values: [`Config`]'s `Debug` redacts them. It reads no other module's state: the components
//! read their settings from it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{FromArgMatches, Parser};

pub mod alias;
mod auth;
mod backend;
pub mod check;
mod delivery;
mod edge;
mod expo;
mod push;
pub mod reference;
mod rules;
mod server;
mod session;
mod webpush;

pub use crate::edge::{EdgeSettings, MIN_HEADER_BYTES};
pub use auth::{AuthRules, AuthSettings};
pub use backend::{Backend, SlotRead, SupabaseProject};
pub use delivery::{CacheSettings, FeedSettings, RealtimeVsn, ResumeBounds, ResumeSettings, RouterConfig};
pub use expo::{ExpoTarget, EXPO_PUSH_URL};
pub use push::{
    decode_webhook_secret, ApnsTarget, FcmTarget, PushSettings, WebhookTarget, APNS_PRODUCTION_URL, APNS_SANDBOX_URL,
    DEFAULT_FCM_API_URL,
};
pub use rules::parse_origins;
pub use server::{LogFormat, LogSettings, OpsSettings, Shutdown};
pub use session::{Fairness, Limits};
pub use webpush::{decode_vapid_key, Vapid};

use rules::{invalid, Problems};

/// Every setting as declared, one flattened struct per component; clap reads them from flags and
/// environment variables.
#[derive(Parser, Clone)]
#[command(
    name = "realtime-gateway",
    version,
    about = "Supabase Realtime gateway for the school chat",
    args_override_self = true
)]
pub struct Args {
    #[command(flatten)]
    pub backend: backend::BackendArgs,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    #[command(flatten)]
    pub listen: server::ListenArgs,
    #[command(flatten)]
    pub edge: edge::EdgeArgs,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub fairness: Fairness,
    #[command(flatten)]
    pub feed: FeedSettings,
    #[command(flatten)]
    pub router: RouterConfig,
    #[command(flatten)]
    pub resume: ResumeSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub shutdown: Shutdown,
    #[command(flatten)]
    pub ops: OpsSettings,
    #[command(flatten)]
    pub push: push::PushArgs,
    /// Print the effective configuration (secrets redacted) and exit: 0 if valid, 2 otherwise.
    #[arg(long, help_heading = "Commands")]
    pub check_config: bool,
    /// Print `.env.example`, generated from these declarations, and exit.
    #[arg(long, help_heading = "Commands")]
    pub print_env_example: bool,
    /// Print `docs/configuration.md`, generated from these declarations, and exit.
    #[arg(long, help_heading = "Commands")]
    pub print_config_reference: bool,
}

/// Validated configuration: one typed part per component.
#[derive(Clone)]
pub struct Config {
    pub backend: Backend,
    /// Timeout of every PostgREST, database and JWKS call (`BACKEND_TIMEOUT_SECS`).
    pub backend_timeout: Duration,
    pub auth: AuthSettings,
    pub listen: SocketAddr,
    pub log: LogSettings,
    pub edge: EdgeSettings,
    pub limits: Limits,
    /// Per-user budgets on the work clients cause.
    pub fairness: Fairness,
    pub feed: FeedSettings,
    pub router: RouterConfig,
    pub resume: ResumeSettings,
    pub cache: CacheSettings,
    pub shutdown: Shutdown,
    pub ops: OpsSettings,
    /// Push to offline recipients.
    pub push: PushSettings,
    /// Deprecated variable names in use, one warning each (logged once logging is set up).
    pub deprecations: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: String, problem: String },
    /// More than one setting is wrong: every one is reported, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// A component's settings at their declared defaults (the environment is not read).
pub(crate) fn declared_defaults<T: clap::Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command.try_get_matches_from(["defaults"]);
    matches.and_then(|m| T::from_arg_matches(&m)).unwrap_or_else(|e| panic!("a declared default is invalid: {e}"))
}

impl Config {
    /// The settings that depend on one another, checked together; every problem is reported.
    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let backend = p.or(backend::backend(&a.backend).map(Some), None);
        let auth = a.auth.resolve(backend.as_ref(), &mut p);
        let drain = p.or(rules::drain_within(a.shutdown.drain, a.shutdown.grace), Duration::ZERO);
        let fallback = a.push.without_transports();
        let push = p.or(a.push.resolve(a.backend.backend_timeout_secs), fallback);
        p.finish()?;
        let backend = backend.ok_or_else(|| invalid("SUPABASE_URL", "missing"))?;
        Ok(Config {
            backend,
            backend_timeout: a.backend.backend_timeout_secs,
            auth,
            listen: SocketAddr::new(a.listen.bind_address, a.listen.port),
            log: a.listen.log,
            edge: a.edge.settings(a.limits.max_connections),
            limits: a.limits,
            fairness: a.fairness,
            feed: a.feed,
            router: a.router,
            resume: a.resume,
            cache: a.cache,
            shutdown: Shutdown { drain, ..a.shutdown },
            ops: a.ops,
            push,
            deprecations: Vec::new(),
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
        check::parse(argv)
    }

    /// A configuration for tests and embedding: the PostgreSQL backend, everything else default.
    pub fn for_postgres(database_url: &str, slot_name: &str, jwt_secret: &str) -> Result<Config, ConfigError> {
        check::parse([
            "realtime-gateway".to_string(),
            format!("--database-url={database_url}"),
            format!("--slot-name={slot_name}"),
            format!("--jwt-secret={jwt_secret}"),
            "--port=0".to_string(),
            "--bind-address=127.0.0.1".to_string(),
        ])
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
            .field("jwks_url", &self.auth.jwks_url)
            .field("jwt_secret", &self.auth.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("listen", &self.listen)
            .field("realtime_vsn", &self.feed.vsn)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
