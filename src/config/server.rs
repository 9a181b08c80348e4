//! The process's own components: the listener and the logs, graceful shutdown, and the operator
//! endpoints' tokens. Each struct is its own declaration: the flags, variables, defaults and
//! ranges are on its fields. Never prints a token.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::rules::{close_rate, drain, rule, secret_token, whole_seconds, Rule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the gateway listens.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Listener and logs")]
pub struct ListenArgs {
    /// TCP port for WebSocket (at `/`) and REST (under /api/chat).
    #[arg(long, env = "PORT", default_value = "3000")]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    #[command(flatten)]
    pub log: LogSettings,
}

/// The logs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Listener and logs")]
pub struct LogSettings {
    /// Log format: text, or json for log shippers.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `realtime_gateway=debug`.
    #[arg(long = "log-level", env = "LOG_LEVEL", default_value = "info", value_parser = filter())]
    pub level: String,
}

fn filter() -> Rule<String> {
    rule(|text| match tracing_subscriber::EnvFilter::try_new(text) {
        Ok(_) => Ok(text.to_string()),
        Err(e) => Err(format!("not a tracing filter ({e})")),
    })
}

/// Graceful shutdown (see [`crate::server::Gateway::shutdown`]).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Shutdown")]
pub struct Shutdown {
    /// Upper bound on graceful shutdown: drain, then sessions closed over the rest. The process
    /// exits soon after the last close, at the latest within it: give the orchestrator a longer
    /// stop timeout (terminationGracePeriodSeconds, TimeoutStopSec).
    #[arg(long = "shutdown-grace-secs", env = "SHUTDOWN_GRACE_SECS", default_value = "30",
        value_parser = whole_seconds(0))]
    pub grace: Duration,
    /// On SIGTERM, time of answering /readyz 503 (and new WebSocket upgrades 503) with every
    /// session still open and REST served, before the sessions are closed with 1001
    /// (DRAIN_CLOSE_RATE per second) within the rest of SHUTDOWN_GRACE_SECS; less than it.
    #[arg(long = "drain-secs", env = "DRAIN_SECS", default_value = "5", value_parser = drain())]
    pub drain: Duration,
    /// After the drain, sessions closed per second, from 1 to 1000000 (a few close at once;
    /// 10,000 take 20 s at 500/s, so that reconnects do not stampede the other instances; faster
    /// only when the rate would run past SHUTDOWN_GRACE_SECS).
    #[arg(long = "drain-close-rate", env = "DRAIN_CLOSE_RATE", default_value = "500", value_parser = close_rate())]
    pub close_rate: f64,
}

/// Tokens of the operator endpoints.
#[derive(Args, Clone)]
#[command(next_help_heading = "Operators")]
pub struct OpsSettings {
    /// Bearer token /metrics requires (`Authorization: Bearer <METRICS_TOKEN>`), at least 16
    /// characters. Empty: /metrics is open (keep the port private then; the gateway warns at
    /// start-up when it listens on a non-loopback address without it).
    #[arg(long, env = "METRICS_TOKEN", default_value = "", hide_env_values = true, hide_default_value = true,
        value_parser = secret_token())]
    pub metrics_token: ::std::option::Option<String>,
    /// Token of the operator page /admin (sessions, users online, deliveries/s, upstream, recent
    /// disconnects, disconnecting a user), at least 16 characters. Empty: /admin does not exist
    /// (404).
    #[arg(long, env = "ADMIN_TOKEN", default_value = "", hide_env_values = true, hide_default_value = true,
        value_parser = secret_token())]
    pub admin_token: ::std::option::Option<String>,
}
