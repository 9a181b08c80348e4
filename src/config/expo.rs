//! The Expo transport's settings: the switch, the push API's URL and the optional access token
//! (for projects with Expo's enhanced push security). Pure validation, no I/O; never prints the
//! token.

use std::fmt;

use clap::Args;

use super::rules::{invalid, optional_text};
use super::ConfigError;

/// The Expo push API, as Expo documents it.
pub const EXPO_PUSH_URL: &str = "https://exp.host/--/api/v2/push/send";

/// Expo settings as declared (shown under the push heading).
#[derive(Args, Clone)]
pub struct ExpoArgs {
    /// Push to devices registered with platform `expo` (React Native apps built with Expo),
    /// through Expo's push API: true or false. Expo needs no credentials, so this switch turns it on.
    #[arg(long = "push-expo", env = "PUSH_EXPO", default_value = "false", action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Expo's push API (tests point it at a local stand-in).
    #[arg(long = "expo-push-url", env = "EXPO_PUSH_URL", default_value = EXPO_PUSH_URL)]
    pub url: String,
    /// Expo access token, sent as `Authorization: Bearer` only when set: needed when the Expo
    /// project enables enhanced push security. Requires PUSH_EXPO=true.
    #[arg(long = "expo-access-token", env = "EXPO_ACCESS_TOKEN", default_value = "", hide_env_values = true,
        hide_default_value = true, value_parser = optional_text())]
    pub access_token: ::std::option::Option<String>,
}

/// A validated Expo target.
#[derive(Clone)]
pub struct ExpoTarget {
    pub url: String,
    pub access_token: Option<String>,
}

impl fmt::Debug for ExpoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.access_token.as_ref().map(|_| "<redacted>");
        f.debug_struct("ExpoTarget").field("url", &self.url).field("access_token", &token).finish()
    }
}

impl ExpoArgs {
    /// The target when switched on; a token without the switch is refused (it would be ignored).
    pub(super) fn resolve(self) -> Result<Option<ExpoTarget>, ConfigError> {
        if !self.enabled {
            if self.access_token.is_some() {
                return Err(invalid(
                    "PUSH_EXPO",
                    "is false while EXPO_ACCESS_TOKEN is set: set PUSH_EXPO=true to push through Expo",
                ));
            }
            return Ok(None);
        }
        let parsed = reqwest::Url::parse(self.url.trim()).map_err(|_| invalid("EXPO_PUSH_URL", "not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(invalid("EXPO_PUSH_URL", "must be an http(s) URL with a host"));
        }
        Ok(Some(ExpoTarget { url: self.url.trim().to_string(), access_token: self.access_token }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(enabled: bool, url: &str, token: Option<&str>) -> ExpoArgs {
        ExpoArgs { enabled, url: url.into(), access_token: token.map(Into::into) }
    }

    fn var(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { var, .. } => var,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn expo_is_on_with_the_switch_only() {
        assert!(args(false, EXPO_PUSH_URL, None).resolve().expect("off").is_none());
        let on = args(true, EXPO_PUSH_URL, None).resolve().expect("on").expect("a target");
        assert_eq!((on.url.as_str(), on.access_token), (EXPO_PUSH_URL, None));
        assert!(args(true, EXPO_PUSH_URL, Some("tok")).resolve().expect("on").is_some());
        assert_eq!(var(args(false, EXPO_PUSH_URL, Some("tok")).resolve().unwrap_err()), "PUSH_EXPO");
        assert_eq!(var(args(true, "exp.host/send", None).resolve().unwrap_err()), "EXPO_PUSH_URL");
        assert_eq!(var(args(true, "ftp://exp.host/send", None).resolve().unwrap_err()), "EXPO_PUSH_URL");
    }

    #[test]
    fn the_debug_form_never_shows_the_token() {
        let on = args(true, EXPO_PUSH_URL, Some("secret-token")).resolve().expect("on");
        assert!(!format!("{on:?}").contains("secret-token"));
    }
}
