//! Validation rules of single settings, as clap value parsers, and the collector that lets
//! [`super::Config::from_args`] report every cross-setting problem at once. A rule is named in the
//! setting's declaration (`value_parser = rules::at_least(1)`), so the declaration holds the
//! range too. Pure functions over values: no I/O, and a rule's message never repeats the value of
//! a secret setting.

use std::ffi::OsStr;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use super::ConfigError;

pub(super) fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var: var.to_string(), problem: problem.into() }
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

type Check<T> = dyn Fn(&str) -> Result<T, String> + Send + Sync;

/// A value parser whose refusal is the rule's message alone: the loader puts the variable's name
/// in front (`WS_PING_INTERVAL_SECS: must be ...`).
#[derive(Clone)]
pub struct Rule<T>(Arc<Check<T>>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Rule<T> {
    type Value = T;

    fn parse_ref(&self, _: &clap::Command, _: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let text = value.to_str().ok_or_else(|| clap::Error::raw(ErrorKind::InvalidUtf8, "not UTF-8\n"))?;
        (self.0)(text).map_err(|problem| clap::Error::raw(ErrorKind::ValueValidation, format!("{problem}\n")))
    }
}

pub(super) fn rule<T>(check: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static) -> Rule<T> {
    Rule(Arc::new(check))
}

fn number<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("not a number: {text:?}"))
}

/// A whole number of at least `min`.
pub(super) fn at_least<T>(min: T) -> Rule<T>
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    rule(move |text| {
        let value: T = number(text)?;
        if value < min {
            return Err(format!("must be at least {min}"));
        }
        Ok(value)
    })
}

/// A size of at least `min` (`what` says why, for the message).
pub(super) fn size_at_least(min: usize, what: &'static str) -> Rule<usize> {
    rule(move |text| {
        let value: usize = number(text)?;
        if value < min {
            return Err(format!("must be at least {min} ({what}), got {value}"));
        }
        Ok(value)
    })
}

/// A whole number from `min` to `max`.
pub(super) fn between(min: usize, max: usize) -> Rule<usize> {
    rule(move |text| {
        let value: usize = number(text)?;
        if !(min..=max).contains(&value) {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(value)
    })
}

fn from_seconds(value: f64) -> Duration {
    // Rounded to the nanosecond: `0.02` is 20 ms exactly, not a hair under.
    Duration::from_nanos((value * 1e9).round() as u64)
}

/// A duration in seconds (fractions allowed), above 0 and at most a day.
pub(super) fn seconds() -> Rule<Duration> {
    rule(|text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
            return Err(format!("must be a number of seconds between 0 and 86400, got {value}"));
        }
        Ok(from_seconds(value))
    })
}

/// A duration in seconds (fractions allowed), from 0 to `max`.
pub(super) fn seconds_up_to(max: f64) -> Rule<Duration> {
    rule(move |text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && (0.0..=max).contains(&value)) {
            return Err(format!("must be a number of seconds from 0 to {max}, got {value}"));
        }
        Ok(from_seconds(value))
    })
}

/// A duration in whole seconds, at least `min`.
pub(super) fn whole_seconds(min: u64) -> Rule<Duration> {
    rule(move |text| {
        let value: u64 = number(text)?;
        if value < min {
            return Err(format!("must be at least {min}"));
        }
        Ok(Duration::from_secs(value))
    })
}

/// A rate per second of at least 0 (0 usually disables).
pub(super) fn rate() -> Rule<f64> {
    rule(|text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && value >= 0.0) {
            return Err(format!("must be a rate of at least 0 per second, got {value}"));
        }
        Ok(value)
    })
}

/// A rate per second above 0.
pub(super) fn positive_rate() -> Rule<f64> {
    rule(|text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("must be a rate above 0 per second, got {value}"));
        }
        Ok(value)
    })
}

/// `DRAIN_CLOSE_RATE`: sessions closed per second at shutdown, at least 1 (0 would never close).
pub(super) fn close_rate() -> Rule<f64> {
    rule(|text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && (1.0..=1_000_000.0).contains(&value)) {
            return Err(format!("must be a number of sessions per second from 1 to 1000000, got {value}"));
        }
        Ok(value)
    })
}

/// `DRAIN_SECS`: zero or more seconds (less than the grace period: checked with it).
pub(super) fn drain() -> Rule<Duration> {
    rule(|text| {
        let value: f64 = number(text)?;
        if !(value.is_finite() && value >= 0.0) {
            return Err(format!("must be a number of seconds (0 or more), got {value}"));
        }
        Ok(from_seconds(value.min(86_400.0)))
    })
}

/// The drain is part of the grace period: sessions are closed in the time between them.
pub(super) fn drain_within(drain: Duration, grace: Duration) -> Result<Duration, ConfigError> {
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
pub(super) fn secret_token() -> Rule<Option<String>> {
    rule(|text| {
        let value = text.trim();
        match value.chars().count() {
            0 => Ok(None),
            n if n < 16 => Err("must be at least 16 characters (a long random secret) or empty".into()),
            _ => Ok(Some(value.to_string())),
        }
    })
}

/// Free text; empty (or blank) means unset.
pub(super) fn optional_text() -> Rule<Option<String>> {
    rule(|text| Ok(Some(text.trim().to_string()).filter(|s| !s.is_empty())))
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

pub(super) fn origins() -> Rule<Vec<String>> {
    rule(|text| {
        parse_origins(text).map_err(|e| match e {
            ConfigError::Invalid { problem, .. } => problem,
            other => other.to_string(),
        })
    })
}
