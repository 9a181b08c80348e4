//! The Web Push transport's settings: the VAPID key pair's private half and the contact sent in
//! every VAPID token (RFC 8292). Declares them, decodes the key once at start-up and checks the
//! subject; pure validation, no I/O. Never prints the key, not even in an error.

use std::fmt;

use base64::Engine;
use clap::Args;
use p256::pkcs8::DecodePrivateKey;

use super::rules::{invalid, optional_text};
use super::ConfigError;

/// Web Push settings as declared (shown under the push heading).
#[derive(Args, Clone)]
pub struct WebPushArgs {
    /// The VAPID private key that signs Web Push requests: base64url of the raw 32-byte P-256 key,
    /// as `npx web-push generate-vapid-keys` prints it (a PEM key is accepted too). The web app
    /// subscribes with its public half, served at GET /api/chat/push/vapid-public-key. Empty: no
    /// Web Push.
    #[arg(long = "vapid-private-key", env = "VAPID_PRIVATE_KEY", default_value = "", hide_env_values = true,
        hide_default_value = true, value_parser = optional_text())]
    pub vapid_private_key: ::std::option::Option<String>,
    /// Who push services contact about this sender, `mailto:` or `https:` (for example
    /// mailto:it@school.example). Required with VAPID_PRIVATE_KEY.
    #[arg(long = "vapid-subject", env = "VAPID_SUBJECT", default_value = "", value_parser = optional_text())]
    pub vapid_subject: ::std::option::Option<String>,
}

/// A validated VAPID identity: the signing key and the contact.
#[derive(Clone)]
pub struct Vapid {
    pub key: p256::SecretKey,
    pub subject: String,
}

impl fmt::Debug for Vapid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vapid").field("key", &"<redacted>").field("subject", &self.subject).finish()
    }
}

impl WebPushArgs {
    /// Both or neither: a key without a subject, or a subject without a key, is refused.
    pub(super) fn resolve(self) -> Result<Option<Vapid>, ConfigError> {
        match (self.vapid_private_key, self.vapid_subject) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(invalid("VAPID_PRIVATE_KEY", "missing while VAPID_SUBJECT is set")),
            (Some(_), None) => {
                Err(invalid("VAPID_SUBJECT", "missing: push services require a mailto: or https: contact"))
            }
            (Some(key), Some(subject)) => {
                let key = decode_vapid_key(&key).ok_or_else(|| {
                    invalid(
                        "VAPID_PRIVATE_KEY",
                        "must be base64url of a 32-byte P-256 private key (npx web-push generate-vapid-keys) or a PEM EC key",
                    )
                })?;
                if !valid_subject(&subject) {
                    return Err(invalid("VAPID_SUBJECT", "must be a mailto: or https: URL"));
                }
                Ok(Some(Vapid { key, subject }))
            }
        }
    }
}

/// A P-256 private key from base64url (padded or not) of its 32 raw bytes, or from a PEM (SEC1
/// `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
pub fn decode_vapid_key(text: &str) -> Option<p256::SecretKey> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return p256::SecretKey::from_sec1_pem(text).ok().or_else(|| p256::SecretKey::from_pkcs8_pem(text).ok());
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    if raw.len() != 32 {
        return None;
    }
    p256::SecretKey::from_slice(&raw).ok()
}

/// `mailto:someone@host` or `https://host/...`.
fn valid_subject(subject: &str) -> bool {
    match subject.split_once(':') {
        Some(("mailto", address)) => address.contains('@') && !address.contains(char::is_whitespace),
        Some(("https", _)) => reqwest::Url::parse(subject).is_ok_and(|u| u.host().is_some()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test-only private key, encoded as `npx web-push generate-vapid-keys` prints one.
    const KEY: &str = "8K0tY1TO0eV1Wg0nw8PDh28dnO7r0oOM7TbXhTvBhgQ";

    fn args(key: Option<&str>, subject: Option<&str>) -> WebPushArgs {
        WebPushArgs { vapid_private_key: key.map(Into::into), vapid_subject: subject.map(Into::into) }
    }

    fn var(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { var, .. } => var,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_key_needs_a_subject_and_both_must_be_well_formed() {
        assert!(args(None, None).resolve().expect("off").is_none());
        assert!(args(Some(KEY), Some("mailto:it@school.example")).resolve().expect("valid").is_some());
        assert!(args(Some(KEY), Some("https://school.example/contact")).resolve().expect("valid").is_some());
        assert_eq!(var(args(Some(KEY), None).resolve().unwrap_err()), "VAPID_SUBJECT");
        assert_eq!(var(args(None, Some("mailto:a@b.example")).resolve().unwrap_err()), "VAPID_PRIVATE_KEY");
        assert_eq!(var(args(Some("c2hvcnQ"), Some("mailto:a@b.example")).resolve().unwrap_err()), "VAPID_PRIVATE_KEY");
        assert_eq!(var(args(Some(KEY), Some("it@school.example")).resolve().unwrap_err()), "VAPID_SUBJECT");
        assert_eq!(var(args(Some(KEY), Some("http://school.example")).resolve().unwrap_err()), "VAPID_SUBJECT");
    }

    #[test]
    fn the_error_and_the_debug_form_never_show_the_key() {
        let e = args(Some("not-a-key-but-secret"), Some("mailto:a@b.example")).resolve().unwrap_err();
        assert!(!e.to_string().contains("not-a-key-but-secret"), "{e}");
        let vapid = args(Some(KEY), Some("mailto:a@b.example")).resolve().expect("valid");
        assert!(format!("{vapid:?}").contains("<redacted>"));
    }

    #[test]
    fn a_pem_key_is_the_same_key() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let key = decode_vapid_key(KEY).expect("raw key");
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        assert_eq!(decode_vapid_key(&pem).expect("pkcs8 pem"), key);
        let sec1 = key.to_sec1_pem(LineEnding::LF).expect("sec1 pem");
        assert_eq!(decode_vapid_key(&sec1).expect("sec1 pem"), key);
    }
}
