//! Deprecated variable names: settings renamed to the one unit convention (durations in
//! seconds, `_SECS`, fractions allowed) stay accepted under their old names, as a variable or a
//! flag, converted to the new unit, with a warning. Owns the table of old names and the
//! rewriting of the command line; reads the environment only through the function it is given.

use std::ffi::OsString;

/// A renamed setting whose old value was in milliseconds.
#[derive(Debug, PartialEq, Eq)]
pub struct Alias {
    /// The old name (`BACKEND_TIMEOUT_MS`), in milliseconds.
    pub old: &'static str,
    /// The declared name (`BACKEND_TIMEOUT_SECS`), in seconds.
    pub new: &'static str,
}

/// Every deprecated name.
pub const ALIASES: &[Alias] = &[
    Alias { old: "BACKEND_TIMEOUT_MS", new: "BACKEND_TIMEOUT_SECS" },
    Alias { old: "SLOT_POLL_MS", new: "SLOT_POLL_SECS" },
    Alias { old: "UPSTREAM_BACKOFF_MIN_MS", new: "UPSTREAM_BACKOFF_MIN_SECS" },
    Alias { old: "CURSOR_INTERVAL_MS", new: "CURSOR_INTERVAL_SECS" },
    Alias { old: "READ_STATE_COALESCE_MS", new: "READ_STATE_COALESCE_SECS" },
    Alias { old: "RESUME_CATCHUP_TIMEOUT_MS", new: "RESUME_CATCHUP_TIMEOUT_SECS" },
];

/// `BACKEND_TIMEOUT_SECS` → `backend-timeout-secs`.
pub fn flag(var: &str) -> String {
    var.to_ascii_lowercase().replace('_', "-")
}

/// Milliseconds as seconds (`250` → `0.25`); text that is not a whole number is left as it is,
/// for the new setting's check to refuse.
fn to_seconds(value: &str) -> String {
    match value.trim().parse::<u64>() {
        Ok(ms) => format!("{}", ms as f64 / 1000.0),
        Err(_) => value.to_string(),
    }
}

impl Alias {
    fn warning(&self, given: &str) -> String {
        format!(
            "{} is deprecated: set {} (seconds) instead; {given} ms read as {} s",
            self.old,
            self.new,
            to_seconds(given)
        )
    }
}

/// `argv` with every deprecated flag replaced by its declared one, and every deprecated variable
/// of `env` that is set (and whose new name is not) added as its declared flag right after the
/// program name, so that explicit flags still win; plus one warning per deprecated name in use.
pub fn rewrite(argv: Vec<OsString>, env: impl Fn(&str) -> Option<OsString>) -> (Vec<OsString>, Vec<String>) {
    let mut items = argv.into_iter();
    let mut out: Vec<OsString> = items.next().into_iter().collect();
    let mut warnings = Vec::new();
    for alias in ALIASES {
        let Some(value) = env(alias.old) else { continue };
        let value = value.to_string_lossy().into_owned();
        warnings.push(alias.warning(&value));
        if env(alias.new).is_none() {
            out.push(format!("--{}={}", flag(alias.new), to_seconds(&value)).into());
        }
    }
    while let Some(item) = items.next() {
        let text = item.to_string_lossy().into_owned();
        let found = ALIASES.iter().find_map(|alias| {
            let old = format!("--{}", flag(alias.old));
            if text == old {
                Some((alias, None))
            } else {
                text.strip_prefix(&format!("{old}=")).map(|value| (alias, Some(value.to_string())))
            }
        });
        match found {
            Some((alias, value)) => {
                let value =
                    value.or_else(|| items.next().map(|v| v.to_string_lossy().into_owned())).unwrap_or_default();
                warnings.push(alias.warning(&value));
                out.push(format!("--{}={}", flag(alias.new), to_seconds(&value)).into());
            }
            None => out.push(item),
        }
    }
    (out, warnings)
}

/// A problem found in a setting given under its old name names the old name too.
pub fn rename_problem(problem: String, warnings: &[String]) -> String {
    for alias in ALIASES {
        let used = warnings.iter().any(|w| w.starts_with(&format!("{} ", alias.old)));
        if let Some(rest) = problem.strip_prefix(&format!("{}:", alias.new)).filter(|_| used) {
            return format!("{} (deprecated name of {}, now in seconds):{rest}", alias.old, alias.new);
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_names_become_the_declared_flags_in_seconds() {
        let argv: Vec<OsString> = ["gw", "--slot-poll-ms", "20", "--port=1"].map(OsString::from).into();
        let env = |name: &str| (name == "BACKEND_TIMEOUT_MS").then(|| OsString::from("250"));
        let (argv, warnings) = rewrite(argv, env);
        assert_eq!(
            argv,
            ["gw", "--backend-timeout-secs=0.25", "--slot-poll-secs=0.02", "--port=1"].map(OsString::from)
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("BACKEND_TIMEOUT_MS is deprecated: set BACKEND_TIMEOUT_SECS"));
        let renamed = rename_problem("BACKEND_TIMEOUT_SECS: must be ...".into(), &warnings);
        assert!(renamed.starts_with("BACKEND_TIMEOUT_MS (deprecated name of BACKEND_TIMEOUT_SECS"), "{renamed}");
    }

    #[test]
    fn the_new_name_wins_over_the_old_one() {
        let env = |name: &str| match name {
            "CURSOR_INTERVAL_MS" => Some(OsString::from("100")),
            "CURSOR_INTERVAL_SECS" => Some(OsString::from("2")),
            _ => None,
        };
        let (argv, warnings) = rewrite(vec!["gw".into()], env);
        assert_eq!(argv, [OsString::from("gw")]);
        assert_eq!(warnings.len(), 1);
    }
}
