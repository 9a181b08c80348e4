//! The push component: where notifications to offline recipients go and how hard they are tried
//! (see `docs/push.md`). Declares those settings and validates them once: the webhook's URL and
//! secret, which FCM and APNs settings go together, and every provider URL. Pure validation, no
//! I/O: the key files are read when the transports are built at start-up. Never prints a secret.

use std::fmt;
use std::path::PathBuf;
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
    /// Google service-account key file (the JSON downloaded from the Firebase console: project_id,
    /// client_email, private_key, token_uri) for FCM HTTP v1. Empty: no FCM.
    #[arg(long = "fcm-service-account-file", env = "FCM_SERVICE_ACCOUNT_FILE", default_value = "", value_parser = optional_text())]
    pub fcm_service_account_file: ::std::option::Option<String>,
    /// Base URL of the FCM HTTP v1 API (messages are POSTed to {url}/v1/projects/{project_id}/messages:send).
    #[arg(long = "fcm-api-url", env = "FCM_API_URL", default_value = DEFAULT_FCM_API_URL, value_parser = http_url())]
    pub fcm_api_url: String,
    /// OAuth 2 token endpoint of the service-account grant. Empty: the key file's token_uri, else
    /// https://oauth2.googleapis.com/token.
    #[arg(long = "fcm-token-url", env = "FCM_TOKEN_URL", default_value = "", value_parser = optional_http_url())]
    pub fcm_token_url: ::std::option::Option<String>,
    /// APNs signing key (the .p8 file from Apple's developer account, PEM). With APNS_KEY_ID,
    /// APNS_TEAM_ID and APNS_TOPIC; all four empty: no APNs.
    #[arg(long = "apns-key-file", env = "APNS_KEY_FILE", default_value = "", value_parser = optional_text())]
    pub apns_key_file: ::std::option::Option<String>,
    /// The APNs key's 10-character key id (the kid of the provider token).
    #[arg(long = "apns-key-id", env = "APNS_KEY_ID", default_value = "", value_parser = optional_text())]
    pub apns_key_id: ::std::option::Option<String>,
    /// The Apple developer team id (the iss of the provider token).
    #[arg(long = "apns-team-id", env = "APNS_TEAM_ID", default_value = "", value_parser = optional_text())]
    pub apns_team_id: ::std::option::Option<String>,
    /// The iOS app's bundle id (apns-topic).
    #[arg(long = "apns-topic", env = "APNS_TOPIC", default_value = "", value_parser = optional_text())]
    pub apns_topic: ::std::option::Option<String>,
    /// true: APNs development environment (api.sandbox.push.apple.com), for apps built with a
    /// development provisioning profile; false: production (api.push.apple.com).
    #[arg(long = "apns-sandbox", env = "APNS_SANDBOX", default_value = "false", action = clap::ArgAction::Set)]
    pub apns_sandbox: bool,
    /// Base URL of APNs, overriding APNS_SANDBOX (tests; http:// speaks HTTP/2 without TLS).
    #[arg(long = "apns-url", env = "APNS_URL", default_value = "", value_parser = optional_http_url())]
    pub apns_url: ::std::option::Option<String>,
    #[command(flatten)]
    pub webpush: super::webpush::WebPushArgs,
    #[command(flatten)]
    pub expo: super::expo::ExpoArgs,
}

/// FCM's API when `FCM_API_URL` is not set.
pub const DEFAULT_FCM_API_URL: &str = "https://fcm.googleapis.com";
/// APNs production and development environments.
pub const APNS_PRODUCTION_URL: &str = "https://api.push.apple.com";
pub const APNS_SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// A validated FCM configuration: the key file is read when the transport is built.
#[derive(Debug, Clone)]
pub struct FcmTarget {
    pub service_account_file: PathBuf,
    pub api_url: String,
    /// `FCM_TOKEN_URL`; `None`: the key file's `token_uri`.
    pub token_url: Option<String>,
}

/// A validated APNs configuration: the key file is read when the transport is built.
#[derive(Debug, Clone)]
pub struct ApnsTarget {
    pub key_file: PathBuf,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    /// `APNS_URL`, or the environment `APNS_SANDBOX` chose.
    pub url: String,
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
    pub fcm: Option<FcmTarget>,
    pub apns: Option<ApnsTarget>,
    /// Web Push's VAPID identity, when `VAPID_PRIVATE_KEY` is set.
    pub vapid: Option<super::webpush::Vapid>,
    /// Expo's push API, when `PUSH_EXPO=true`.
    pub expo: Option<super::expo::ExpoTarget>,
    /// Root certificates (PEM) trusted for Web Push endpoints besides the public ones. Not a
    /// setting: for tests and embedding, whose push service stand-in has a CA of its own.
    pub webpush_roots: Option<String>,
}

impl PushArgs {
    /// The settings that need no cross-check, with no transport (a fallback while reporting
    /// problems).
    pub(super) fn without_transports(&self) -> PushSettings {
        PushSettings {
            webhook: None,
            delay: self.delay,
            max_attempts: self.max_attempts,
            lease: self.lease,
            fcm: None,
            apns: None,
            vapid: None,
            expo: None,
            webpush_roots: None,
        }
    }

    /// Checks the lease against the send timeout, the webhook's URL and secret together, the
    /// APNs settings together, then Web Push's and Expo's settings.
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
        let fcm = self.fcm_service_account_file.clone().map(|file| FcmTarget {
            service_account_file: PathBuf::from(file),
            api_url: self.fcm_api_url.trim_end_matches('/').to_string(),
            token_url: self.fcm_token_url.clone(),
        });
        let apns = self.apns()?;
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
        let vapid = self.webpush.resolve()?;
        let expo = self.expo.resolve()?;
        Ok(PushSettings { webhook, fcm, apns, vapid, expo, ..base })
    }

    /// APNs: the key file, key id, team id and topic all set, or none of them.
    fn apns(&self) -> Result<Option<ApnsTarget>, ConfigError> {
        let parts = [
            ("APNS_KEY_FILE", &self.apns_key_file),
            ("APNS_KEY_ID", &self.apns_key_id),
            ("APNS_TEAM_ID", &self.apns_team_id),
            ("APNS_TOPIC", &self.apns_topic),
        ];
        let (set, unset): (Vec<_>, Vec<_>) = parts.iter().partition(|(_, value)| value.is_some());
        if set.is_empty() {
            return Ok(None);
        }
        if let Some((var, _)) = unset.first() {
            let given: Vec<&str> = set.iter().map(|(var, _)| *var).collect();
            return Err(invalid(var, format!("missing while {} is set: APNs needs all four", given.join(", "))));
        }
        let value = |v: &Option<String>| v.clone().unwrap_or_default();
        let url = match &self.apns_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if self.apns_sandbox => APNS_SANDBOX_URL.to_string(),
            None => APNS_PRODUCTION_URL.to_string(),
        };
        Ok(Some(ApnsTarget {
            key_file: PathBuf::from(value(&self.apns_key_file)),
            key_id: value(&self.apns_key_id),
            team_id: value(&self.apns_team_id),
            topic: value(&self.apns_topic),
            url,
        }))
    }
}

/// An http(s) URL with a host.
fn check_http_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let parsed = reqwest::Url::parse(text).map_err(|_| format!("not a URL: {text:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    Ok(text.to_string())
}

fn http_url() -> Rule<String> {
    rule(check_http_url)
}

/// An http(s) URL, or empty for unset.
fn optional_http_url() -> Rule<Option<String>> {
    rule(|text| match text.trim() {
        "" => Ok(None),
        url => check_http_url(url).map(Some),
    })
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
            fcm_service_account_file: None,
            fcm_api_url: DEFAULT_FCM_API_URL.into(),
            fcm_token_url: None,
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            apns_sandbox: false,
            apns_url: None,
            webpush: super::super::webpush::WebPushArgs { vapid_private_key: None, vapid_subject: None },
            expo: super::super::expo::ExpoArgs {
                enabled: false,
                url: super::super::expo::EXPO_PUSH_URL.into(),
                access_token: None,
            },
        }
    }

    fn var(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { var, .. } => var,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn apns_needs_its_four_settings_together_and_picks_the_environment() {
        assert!(args(None, None).resolve(Duration::from_secs(5)).expect("no push").apns.is_none());
        let mut partial = args(None, None);
        partial.apns_key_file = Some("/run/secrets/apns.p8".into());
        partial.apns_team_id = Some("TEAM123456".into());
        assert_eq!(var(partial.clone().resolve(Duration::from_secs(5)).unwrap_err()), "APNS_KEY_ID");
        partial.apns_key_id = Some("KEY1234567".into());
        assert_eq!(var(partial.clone().resolve(Duration::from_secs(5)).unwrap_err()), "APNS_TOPIC");
        partial.apns_topic = Some("org.school.chat".into());
        assert_eq!(
            partial.clone().resolve(Duration::from_secs(5)).expect("valid").apns.expect("apns").url,
            APNS_PRODUCTION_URL
        );
        partial.apns_sandbox = true;
        assert_eq!(
            partial.clone().resolve(Duration::from_secs(5)).expect("valid").apns.expect("apns").url,
            APNS_SANDBOX_URL
        );
        partial.apns_url = Some("http://127.0.0.1:9/".into());
        assert_eq!(
            partial.resolve(Duration::from_secs(5)).expect("valid").apns.expect("apns").url,
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn fcm_is_on_with_its_key_file_and_provider_urls_must_be_http() {
        let mut fcm = args(None, None);
        fcm.fcm_service_account_file = Some("/run/secrets/fcm.json".into());
        let target = fcm.resolve(Duration::from_secs(5)).expect("valid").fcm.expect("fcm");
        assert_eq!(target.api_url, DEFAULT_FCM_API_URL);
        assert_eq!(target.token_url, None);
        assert!(check_http_url("ftp://x.example").is_err());
        assert!(check_http_url("fcm.googleapis.com").is_err());
        assert_eq!(check_http_url(" http://127.0.0.1:9 ").as_deref(), Ok("http://127.0.0.1:9"));
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
