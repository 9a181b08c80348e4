//! Validation rules of single settings, and the collector that lets [`super::Config::from_args`]
//! report every problem at once. Pure functions over values: no I/O, never prints a value of a
//! secret setting.

use std::time::Duration;

use super::{Args, ConfigError, EdgeSettings, MIN_HEADER_BYTES};

pub(super) fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, problem: problem.into() }
}

/// Collects every problem of a configuration instead of stopping at the first.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    /// The value if valid; otherwise records the problem and returns `fallback` so that checking
    /// goes on (the configuration is refused at the end anyway).
    pub(super) fn or<T>(&mut self, result: Result<T, ConfigError>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
    }

    pub(super) fn finish(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }
}

pub(super) fn seconds(var: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(invalid(var, format!("must be a number of seconds between 0 and 86400, got {value}")));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `DRAIN_CLOSE_RATE`: sessions closed per second at shutdown, at least 1 (0 would never close).
pub(super) fn close_rate(value: f64) -> Result<f64, ConfigError> {
    if !(value.is_finite() && (1.0..=1_000_000.0).contains(&value)) {
        return Err(invalid(
            "DRAIN_CLOSE_RATE",
            format!("must be a number of sessions per second from 1 to 1000000, got {value}"),
        ));
    }
    Ok(value)
}

/// `DRAIN_SECS`: zero or more seconds, and less than the shutdown grace it is part of.
pub(super) fn drain(value: f64, grace: Duration) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(invalid("DRAIN_SECS", format!("must be a number of seconds (0 or more), got {value}")));
    }
    let drain = Duration::from_secs_f64(value.min(86_400.0));
    if drain >= grace {
        return Err(invalid(
            "DRAIN_SECS",
            format!(
                "must be less than SHUTDOWN_GRACE_SECS ({}): sessions are closed in the time between them",
                grace.as_secs_f64()
            ),
        ));
    }
    Ok(drain)
}

/// An optional bearer secret (`METRICS_TOKEN`, `ADMIN_TOKEN`): empty means off; otherwise long
/// enough not to be guessed.
pub(super) fn secret_token(var: &'static str, value: &str) -> Result<Option<String>, ConfigError> {
    let value = value.trim();
    match value.chars().count() {
        0 => Ok(None),
        n if n < 16 => Err(invalid(var, "must be at least 16 characters (a long random secret) or empty")),
        _ => Ok(Some(value.to_string())),
    }
}

pub(super) fn positive(var: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(var, "must be at least 1"));
    }
    Ok(value)
}

/// A size that must be at least `min` (`what` says why, for the message).
pub(super) fn at_least(var: &'static str, value: usize, min: usize, what: &str) -> Result<usize, ConfigError> {
    if value < min {
        return Err(invalid(var, format!("must be at least {min} ({what}), got {value}")));
    }
    Ok(value)
}

/// `https://a.example, http://localhost:8081` → serialized origins; each must be scheme://host[:port].
pub fn parse_origins(value: &str) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad =
            || invalid("CORS_ALLOWED_ORIGINS", format!("{item:?} is not an origin such as https://app.example.org"));
        let url = reqwest::Url::parse(item).map_err(|_| bad())?;
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
            return Err(bad());
        }
        origins.push(url.origin().ascii_serialization());
    }
    Ok(origins)
}

pub(super) fn rate(var: &'static str, value: f64) -> Result<f64, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(invalid(var, format!("must be a rate of at least 0 per second, got {value}")));
    }
    Ok(value)
}

pub(super) fn edge_settings(a: &Args, max_connections: usize, p: &mut Problems) -> EdgeSettings {
    let max_pending_handshakes = p.or(positive("MAX_PENDING_HANDSHAKES", a.max_pending_handshakes), 1);
    let derived = max_connections.saturating_add(max_pending_handshakes).saturating_add(1024);
    let max_tcp_connections = p.or(positive("MAX_TCP_CONNECTIONS", a.max_tcp_connections.unwrap_or(derived)), 1);
    if a.max_header_bytes < MIN_HEADER_BYTES {
        p.0.push(invalid("MAX_HEADER_BYTES", format!("must be at least {MIN_HEADER_BYTES}")));
    }
    EdgeSettings {
        max_pending_handshakes,
        max_tcp_connections,
        handshake_timeout: p.or(seconds("HANDSHAKE_TIMEOUT_SECS", a.handshake_timeout_secs), Duration::from_secs(1)),
        max_header_bytes: a.max_header_bytes.max(MIN_HEADER_BYTES),
        cors_allowed_origins: p.or(parse_origins(&a.cors_allowed_origins), Vec::new()),
        trusted_proxies: Default::default(),
    }
}
