//! The configuration's reference, rendered from the declarations ([`super::Args`]): the
//! `.env.example` at the repository root and `docs/configuration.md`. `realtime-gateway
//! --print-env-example` and `--print-config-reference` print them (`scripts/config-reference`
//! writes both); a unit test fails when the committed files differ from what the declarations
//! render. Pure text: never reads a value, so it never prints a secret.

use clap::{Arg, CommandFactory};

use super::alias::ALIASES;
use super::Args;

/// One declared setting, as the reference shows it.
struct Setting {
    var: String,
    heading: String,
    doc: String,
    default: Option<String>,
    secret: bool,
}

impl Setting {
    fn of(arg: &Arg) -> Option<Setting> {
        let var = arg.get_env()?.to_string_lossy().into_owned();
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        let mut doc = help.split_whitespace().collect::<Vec<_>>().join(" ");
        // clap drops the full stop of a one-sentence doc comment.
        if !doc.ends_with(['.', ':']) {
            doc.push('.');
        }
        let default = arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
        Some(Setting {
            var,
            heading: arg.get_help_heading().unwrap_or("Other").to_string(),
            doc,
            default,
            secret: arg.is_hide_env_values_set(),
        })
    }

    fn unit(&self) -> &'static str {
        [
            ("_SECS", "seconds"),
            ("_MS", "milliseconds"),
            ("_BYTES", "bytes"),
            ("_PER_SEC", "per second"),
            ("_PER_MIN", "per minute"),
        ]
        .iter()
        .find(|(suffix, _)| self.var.ends_with(suffix))
        .map_or("", |(_, unit)| unit)
    }
}

/// Every declared setting, in declaration order, grouped by component (heading).
fn sections() -> Vec<(String, Vec<Setting>)> {
    let command = Args::command();
    let mut sections: Vec<(String, Vec<Setting>)> = Vec::new();
    for setting in command.get_arguments().filter_map(Setting::of) {
        match sections.iter_mut().find(|(heading, _)| *heading == setting.heading) {
            Some((_, settings)) => settings.push(setting),
            None => sections.push((setting.heading.clone(), vec![setting])),
        }
    }
    sections
}

/// `text` as `# ` comment lines of at most 100 characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// `.env.example`.
pub fn env_example() -> String {
    let mut out = comment(
        "Realtime gateway configuration. Copy to .env (read at start-up) or set in the environment; \
         command-line flags (--supabase-url, --port, ...) override both. Generated from the \
         settings' declarations in src/config/ by `realtime-gateway --print-env-example` \
         (scripts/config-reference): do not edit by hand. docs/configuration.md has the same \
         reference as a table.",
    );
    for (heading, settings) in sections() {
        out.push_str(&format!("\n# --- {heading} {}\n", "-".repeat(93usize.saturating_sub(heading.len()))));
        for s in settings {
            let unit = match s.unit() {
                "" => String::new(),
                unit => format!(" Unit: {unit}."),
            };
            let secret = if s.secret { " Secret." } else { "" };
            out.push_str(&comment(&format!("{}{unit}{secret}", s.doc)));
            match (&s.default, s.secret) {
                (Some(_), true) => out.push_str(&format!("{}=\n", s.var)),
                (Some(value), false) => out.push_str(&format!("{}={value}\n", s.var)),
                (None, _) => out.push_str(&format!("# {}=\n", s.var)),
            }
        }
    }
    out
}

/// `text` for a table cell: `|` escaped, and `<` outside code spans (it would open an HTML tag).
fn cell(text: &str) -> String {
    let parts = text.split('`').enumerate();
    let escaped = parts.map(|(i, part)| if i % 2 == 0 { part.replace('<', "\\<") } else { part.to_string() });
    escaped.collect::<Vec<_>>().join("`").replace('|', "\\|")
}

/// `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from the settings' declarations in `src/config/` by `realtime-gateway \
         --print-config-reference` (`scripts/config-reference` rewrites this file and \
         `.env.example`); do not edit by hand: a unit test fails when this file and the \
         declarations differ.\n\n\
         Every setting is an environment variable (a `.env` file in the working directory is read \
         if present) or the flag of the same name (`PORT` is `--port`); flags override the \
         environment. `realtime-gateway --help` lists them; `realtime-gateway --check-config` \
         prints the effective configuration with secrets redacted and exits 2 listing every bad \
         setting. A missing or malformed setting stops start-up with a message naming it.\n\n\
         Units are in the names: durations in seconds (`_SECS`, fractions allowed), sizes in \
         bytes (`_BYTES`), rates per second or minute (`_PER_SEC`, `_PER_MIN`). Secret settings \
         are never printed.\n",
    );
    for (heading, settings) in sections() {
        out.push_str(&format!("\n## {heading}\n\n| variable | default | unit | meaning |\n|---|---|---|---|\n"));
        for s in settings {
            let default = match (&s.default, s.secret) {
                (Some(value), false) if !value.is_empty() => format!("`{}`", cell(value)),
                (Some(_), _) => "empty".to_string(),
                (None, _) => "unset".to_string(),
            };
            let secret = if s.secret { " **Secret.**" } else { "" };
            out.push_str(&format!("| `{}` | {default} | {} | {}{secret} |\n", s.var, s.unit(), cell(&s.doc)));
        }
    }
    out.push_str(
        "\n## Deprecated names\n\nStill accepted, as a variable or a flag, with a warning at start-up; \
         the value is read in milliseconds, as before.\n\n| old name (milliseconds) | use instead (seconds) |\n|---|---|\n",
    );
    for alias in ALIASES {
        out.push_str(&format!("| `{}` | `{}` |\n", alias.old, alias.new));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(path: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_committed_reference_is_what_the_declarations_render() {
        let hint = "regenerate with scripts/config-reference";
        assert!(committed(".env.example") == env_example(), ".env.example is stale: {hint}");
        assert!(committed("docs/configuration.md") == markdown(), "docs/configuration.md is stale: {hint}");
    }

    #[test]
    fn every_setting_has_a_flag_of_its_name_a_doc_and_a_unit_in_seconds() {
        for arg in Args::command().get_arguments() {
            let Some(setting) = Setting::of(arg) else { continue };
            assert_eq!(arg.get_long().map(str::to_string), Some(super::super::alias::flag(&setting.var)));
            assert!(setting.doc.len() > 10, "{} has no documentation", setting.var);
            // Durations are in seconds, except where the name was published in milliseconds.
            let published_in_ms = ["PUSH_DELAY_MS"];
            assert!(
                !setting.var.ends_with("_MS") || published_in_ms.contains(&setting.var.as_str()),
                "{}: durations are in seconds (_SECS)",
                setting.var
            );
        }
    }
}
