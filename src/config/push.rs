//! The push component: where notifications to offline recipients go and how hard they are tried
//! (see `docs/push.md`). Declares those settings and validates the webhook's URL and secret once;
//! pure validation, no I/O. Never prints the secret.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use clap::Args;

use super::rules::{at_least, invalid, optional_text, rule, Rule};
use super::ConfigError;

/// Push settings as declared.
#[derive(Args, Clone)]
#[command(next_help_heading = "Push to offline recipients")]
pub struct PushArgs {
    /// Webhook that receives one signed POST per message and offline recipient (Standard Webhooks:
    /// webhook-id, webhook-timestamp, webhook-signature). Empty: no webhook.
    #[arg(long = "push-webhook-url", env = "PUSH_WEBHOOK_URL", default_value = "", value_parser = optional_text())]
    pub webhook_url: ::std::option::Option<String>,
    /// The webhook's signing secret, `whsec_` followed by base64 of at least 24 bytes
    /// (`echo "whsec_$(openssl rand -base64 32)"`). Required with PUSH_WEBHOOK_URL.
    #[arg(long = "push-webhook-secret", env = "PUSH_WEBHOOK_SECRET", default_value = "", hide_env_values = true,
        hide_default_value = true, value_parser = optional_text())]
    pub webhook_secret: ::std::option::Option<String>,
    /// How long after its commit a message is decided for push, in milliseconds (0 to 60000):
    /// presence reports of every instance catch up meanwhile. The name keeps milliseconds, as
    /// published for the push feature.
    #[arg(long = "push-delay-ms", env = "PUSH_DELAY_MS", default_value = "2000", value_parser = millis_up_to(60_000))]
    pub delay: Duration,
    /// Attempts per push before it is dropped; retries wait 2 s doubling to 60 s (longer when the
    /// receiver asks with Retry-After), so 8 attempts span about 3 minutes.
    #[arg(long = "push-max-attempts", env = "PUSH_MAX_ATTEMPTS", default_value = "8", value_parser = at_least(1u32))]
    pub max_attempts: u32,
    /// How long an instance holds the deliveries it is sending, in whole seconds (5 to 3600). If
    /// it dies mid-send, another instance resends them with the same id once this runs out. Must
    /// be longer than BACKEND_TIMEOUT_SECS (the longest one send may take), or a slow send could
    /// be resent while still in flight.
    #[arg(long = "push-lease-secs", env = "PUSH_LEASE_SECS", default_value = "60", value_parser = lease_seconds())]
    pub lease: Duration,
}

/// A validated webhook: where, and the decoded signing key.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub key: Vec<u8>,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget").field("url", &self.url).field("key", &"<redacted>").finish()
    }
}

/// Validated push settings.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub webhook: Option<WebhookTarget>,
    pub delay: Duration,
    pub max_attempts: u32,
    pub lease: Duration,
}

impl PushArgs {
    /// The settings that need no cross-check, with no transport (a fallback while reporting
    /// problems).
    pub(super) fn without_transports(&self) -> PushSettings {
        PushSettings { webhook: None, delay: self.delay, max_attempts: self.max_attempts, lease: self.lease }
    }

    /// Checks the lease against the send timeout, and the webhook's URL and secret together.
    pub(super) fn resolve(self, send_timeout: Duration) -> Result<PushSettings, ConfigError> {
        if self.lease <= send_timeout {
            return Err(invalid(
                "PUSH_LEASE_SECS",
                format!(
                    "must be longer than BACKEND_TIMEOUT_SECS ({} s), the longest one send may take",
                    send_timeout.as_secs_f64()
                ),
            ));
        }
        let base = self.without_transports();
        let webhook = match (self.webhook_url, self.webhook_secret) {
            (None, None) => None,
            (None, Some(_)) => return Err(invalid("PUSH_WEBHOOK_URL", "missing while PUSH_WEBHOOK_SECRET is set")),
            (Some(_), None) => return Err(invalid("PUSH_WEBHOOK_SECRET", "missing: a webhook is always signed")),
            (Some(url), Some(secret)) => {
                let parsed = reqwest::Url::parse(&url).map_err(|_| invalid("PUSH_WEBHOOK_URL", "not a URL"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(invalid("PUSH_WEBHOOK_URL", "must be an http(s) URL with a host"));
                }
                let key = decode_webhook_secret(&secret).ok_or_else(|| {
                    invalid("PUSH_WEBHOOK_SECRET", "must be `whsec_` followed by base64 of at least 24 bytes")
                })?;
                Some(WebhookTarget { url, key })
            }
        };
        Ok(PushSettings { webhook, ..base })
    }
}

/// Decodes `whsec_<base64>` (the prefix is optional, as in the Standard Webhooks libraries).
pub fn decode_webhook_secret(secret: &str) -> Option<Vec<u8>> {
    let secret = secret.trim();
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    (key.len() >= 24).then_some(key)
}

/// A lease in whole seconds, from 5 to 3600 (what `chat_push_claim` accepts).
fn lease_seconds() -> Rule<Duration> {
    rule(parse_lease)
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let value: u64 = text.trim().parse().map_err(|_| format!("not a whole number of seconds: {text:?}"))?;
    if !(5..=3600).contains(&value) {
        return Err(format!("must be a number of seconds from 5 to 3600, got {value}"));
    }
    Ok(Duration::from_secs(value))
}

/// A duration in whole milliseconds, from 0 to `max`.
fn millis_up_to(max: u64) -> Rule<Duration> {
    rule(move |text| {
        let value: u64 = text.trim().parse().map_err(|_| format!("not a number: {text:?}"))?;
        if value > max {
            return Err(format!("must be a number of milliseconds from 0 to {max}, got {value}"));
        }
        Ok(Duration::from_millis(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, secret: Option<&str>) -> PushArgs {
        PushArgs {
            webhook_url: url.map(Into::into),
            webhook_secret: secret.map(Into::into),
            delay: Duration::from_secs(2),
            max_attempts: 8,
            lease: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_webhook_needs_an_http_url_and_a_long_enough_secret() {
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert!(args(None, None).resolve(Duration::from_secs(5)).expect("no push").webhook.is_none());
        assert!(args(Some("https://hooks.example/push"), Some(good))
            .resolve(Duration::from_secs(5))
            .expect("valid")
            .webhook
            .is_some());
        let var = |e: ConfigError| match e {
            ConfigError::Invalid { var, .. } => var,
            other => panic!("{other}"),
        };
        assert_eq!(
            var(args(Some("https://h.example"), None).resolve(Duration::from_secs(5)).unwrap_err()),
            "PUSH_WEBHOOK_SECRET"
        );
        assert_eq!(var(args(None, Some(good)).resolve(Duration::from_secs(5)).unwrap_err()), "PUSH_WEBHOOK_URL");
        assert_eq!(
            var(args(Some("ftp://h.example"), Some(good)).resolve(Duration::from_secs(5)).unwrap_err()),
            "PUSH_WEBHOOK_URL"
        );
        assert_eq!(
            var(args(Some("https://h.example"), Some("whsec_c2hvcnQ=")).resolve(Duration::from_secs(5)).unwrap_err()),
            "PUSH_WEBHOOK_SECRET"
        );
        assert_eq!(
            var(args(Some("https://h.example"), Some("whsec_!!")).resolve(Duration::from_secs(5)).unwrap_err()),
            "PUSH_WEBHOOK_SECRET"
        );
    }

    #[test]
    fn the_lease_must_outlast_one_send() {
        let lease = |secs| PushArgs { lease: Duration::from_secs(secs), ..args(None, None) };
        assert!(lease(6).resolve(Duration::from_secs(5)).is_ok());
        match lease(5).resolve(Duration::from_secs(5)) {
            Err(ConfigError::Invalid { var, .. }) => assert_eq!(var, "PUSH_LEASE_SECS"),
            other => panic!("{other:?}"),
        }
        assert!(parse_lease("4").is_err() && parse_lease("3601").is_err());
        assert_eq!(parse_lease("5"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn the_debug_form_never_shows_the_key() {
        let settings = args(Some("https://h.example"), Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .resolve(Duration::from_secs(5));
        assert!(!format!("{settings:?}").contains("49, 242"), "no key bytes");
        assert!(format!("{settings:?}").contains("<redacted>"));
    }
}
