//! Configuration checking: every problem at once, and the effective configuration as text.
//!
//! Owns `--check-config` support: probing each setting on its own (so that one malformed
//! variable does not hide the next), collecting the semantic problems of [`Config::from_args`],
//! and rendering the effective configuration with secrets redacted. It must never print a secret
//! value: keys and the JWT secret appear only as "set" with their length.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser};

use super::{Args, Config, ConfigError};

/// Parses and validates `argv` plus the environment; on failure, every problem found, one per
/// entry, each naming its variable. `--help` and `--version` print and exit as clap does.
pub fn load_from<I, T>(argv: I) -> Result<Config, Vec<String>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    match Args::command().try_get_matches_from(&argv) {
        Ok(matches) => {
            let args = Args::from_arg_matches(&matches).map_err(|e| vec![first_line(&e)])?;
            Config::from_args(args).map_err(|e| flatten(e).collect())
        }
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => Err(every_problem(&argv, &e)),
    }
}

fn flatten(e: ConfigError) -> impl Iterator<Item = String> {
    let all = match e {
        ConfigError::Several(all) => all,
        one => vec![one],
    };
    all.into_iter().map(|e| e.to_string())
}

/// A setting that clap refused or that is missing: reported by name, then replaced by its default
/// (or a placeholder) so that the other settings can still be checked.
struct Patch {
    name: String,
    long: String,
    flag: String,
    problem: String,
}

/// `argv` without the occurrences of `--long` (and their values).
fn without(argv: &[OsString], long: &str) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for item in argv {
        let text = item.to_string_lossy();
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if text == format!("--{long}") {
            skip_value = true;
        } else if !text.starts_with(&format!("--{long}=")) {
            kept.push(item.clone());
        }
    }
    kept
}

fn every_problem(argv: &[OsString], first: &clap::Error) -> Vec<String> {
    let patches = probe_each(argv);
    let mut patched = argv.to_vec();
    for patch in &patches {
        patched = without(&patched, &patch.long);
        patched.push(OsString::from(&patch.flag));
    }
    let mut problems: Vec<String> = patches.iter().map(|p| p.problem.clone()).collect();
    match Args::try_parse_from(&patched) {
        Ok(args) => {
            if let Err(e) = Config::from_args(args) {
                let patched_var = |text: &str| patches.iter().any(|p| text.starts_with(&format!("{}:", p.name)));
                problems.extend(flatten(e).filter(|text| !patched_var(text)));
            }
        }
        Err(_) if !problems.is_empty() => {}
        Err(_) => problems.push(first_line(first)),
    }
    problems
}

/// Each setting parsed on its own, from its flags and its variable: every one that is invalid or
/// missing, with the flag that stands in for it.
fn probe_each(argv: &[OsString]) -> Vec<Patch> {
    let command = Args::command();
    let mut patches = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let mut sub: Vec<OsString> = vec!["probe".into()];
        let mut rest = argv.iter().skip(1);
        while let Some(item) = rest.next() {
            let text = item.to_string_lossy();
            if text == format!("--{long}") {
                sub.push(item.clone());
                if arg.get_action().takes_values() {
                    sub.extend(rest.next().cloned());
                }
            } else if text.starts_with(&format!("--{long}=")) {
                sub.push(item.clone());
            }
        }
        let name = arg.get_env().map(|v| v.to_string_lossy().into_owned()).unwrap_or_else(|| format!("--{long}"));
        let given = sub.len() > 1 || arg.get_env().is_some_and(|var| std::env::var_os(var).is_some());
        let default = arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
        let probe = clap::Command::new("probe").arg(arg.clone().required(false));
        let problem = match probe.try_get_matches_from(sub) {
            Err(e) => format!("{name}: {}", first_line(&e)),
            Ok(_) if arg.is_required_set() && !given => format!("{name}: required (or --{long})"),
            Ok(_) => continue,
        };
        // A placeholder for a required setting; its own checks are skipped (already reported).
        let value = default.unwrap_or_else(|| "http://placeholder.invalid".into());
        patches.push(Patch { name, long: long.to_string(), flag: format!("--{long}={value}"), problem });
    }
    patches
}

fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn secret(value: &str) -> String {
    if value.is_empty() {
        "(empty)".into()
    } else {
        format!("<redacted, {} characters>", value.chars().count())
    }
}

/// The effective configuration, one `VARIABLE=value` per line, secrets redacted.
pub fn describe(c: &Config) -> String {
    let secs = |d: std::time::Duration| format!("{}", d.as_secs_f64());
    let mut rows: Vec<(&str, String)> = match &c.backend {
        super::Backend::Supabase(p) => vec![
            ("SUPABASE_URL", p.url.to_string()),
            ("SUPABASE_ANON_KEY", secret(&p.anon_key)),
            ("SUPABASE_SERVICE_ROLE_KEY", secret(&p.service_role_key)),
        ],
        super::Backend::Postgres(s) => vec![
            ("DATABASE_URL", "<redacted>".into()),
            ("SLOT_NAME", s.slot_name.clone()),
            ("DATABASE_POOL_SIZE", s.pool_size.to_string()),
        ],
    };
    rows.extend([
        ("JWKS_URL", c.jwks_url.clone().unwrap_or_else(|| "(none: HS256 secret only)".into())),
        ("SUPABASE_JWT_SECRET", c.jwt_secret.as_deref().map(secret).unwrap_or_else(|| "(empty: JWKS only)".into())),
        ("BIND_ADDRESS", c.listen.ip().to_string()),
        ("PORT", c.listen.port().to_string()),
        ("LOG_FORMAT", format!("{:?}", c.log_format).to_lowercase()),
        ("LOG_LEVEL", c.log_level.clone()),
        ("REALTIME_VSN", if c.realtime_vsn == super::RealtimeVsn::V1 { "1.0.0" } else { "2.0.0" }.into()),
        ("UPSTREAM_HEARTBEAT_SECS", secs(c.upstream_heartbeat)),
        ("CATCHUP_MARGIN_SECS", secs(c.catchup_margin)),
        ("JWT_LEEWAY_SECS", secs(c.jwt_leeway)),
        ("JWT_ISSUER", c.jwt_issuer.clone().unwrap_or_else(|| "(not checked)".into())),
        ("ALLOW_ANONYMOUS", c.allow_anonymous.to_string()),
        ("JWKS_REFRESH_MIN_SECS", secs(c.jwks_refresh_min)),
        ("JWKS_MAX_AGE_SECS", secs(c.jwks_max_age)),
        ("AUTH_FAILURES_PER_SEC", c.auth_failures_per_sec.to_string()),
        ("AUTH_FAILURE_BURST", c.auth_failure_burst.to_string()),
        ("BACKEND_TIMEOUT_MS", c.backend_timeout.as_millis().to_string()),
        ("MAX_CONNECTIONS", c.limits.max_connections.to_string()),
        ("MAX_CONNECTIONS_PER_USER", c.limits.max_connections_per_user.to_string()),
        ("MAX_PENDING_HANDSHAKES", c.edge.max_pending_handshakes.to_string()),
        ("MAX_TCP_CONNECTIONS", c.edge.max_tcp_connections.to_string()),
        ("HANDSHAKE_TIMEOUT_SECS", secs(c.edge.handshake_timeout)),
        ("MAX_HEADER_BYTES", c.edge.max_header_bytes.to_string()),
        ("CORS_ALLOWED_ORIGINS", c.edge.cors_allowed_origins.join(",")),
        ("TRUSTED_PROXIES", c.edge.trusted_proxies.nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
        ("TRUSTED_PROXY_HEADER", c.edge.trusted_proxies.header.name().into()),
        ("SUBSCRIBE_CHECKS_PER_SEC", c.fairness.subscribe_checks_per_sec.to_string()),
        ("SUBSCRIBE_CHECK_BURST", c.fairness.subscribe_check_burst.to_string()),
        ("RESUME_DB_PAGES_PER_MIN", c.fairness.resume_db_pages_per_min.to_string()),
        ("READ_STATE_COALESCE_MS", c.fairness.read_state_window.as_millis().to_string()),
        ("WS_MAX_MESSAGE_BYTES", c.limits.max_message_bytes.to_string()),
        ("WS_READ_BUFFER_BYTES", c.limits.read_buffer_bytes.to_string()),
        ("WS_RATE_LIMIT_PER_SEC", c.limits.rate_per_sec.to_string()),
        ("REST_RATE_LIMIT_PER_SEC", c.rest_rate_per_sec.to_string()),
        ("SESSION_QUEUE_CAPACITY", c.limits.queue_capacity.to_string()),
        ("SESSION_QUEUE_BYTES", c.limits.queue_bytes.to_string()),
        ("MAX_THREAD_SUBSCRIPTIONS", c.limits.max_thread_subscriptions.to_string()),
        ("WS_PING_INTERVAL_SECS", secs(c.limits.ping_interval)),
        ("CACHE_TTL_SECS", secs(c.cache_ttl)),
        ("CACHE_MAX_THREADS", c.cache_max_threads.to_string()),
        ("SHUTDOWN_GRACE_SECS", secs(c.shutdown_grace)),
        ("UPSTREAM_TOPIC", c.upstream_topic.clone()),
        ("UPSTREAM_JOIN_TIMEOUT_SECS", secs(c.upstream_join_timeout)),
        ("UPSTREAM_BACKOFF_MIN_MS", c.upstream_backoff_min.as_millis().to_string()),
        ("UPSTREAM_BACKOFF_MAX_SECS", secs(c.upstream_backoff_max)),
        ("UPSTREAM_QUEUE_CAPACITY", c.upstream_channel_capacity.to_string()),
        ("ROUTER_MAX_WAITING", c.router_max_waiting.to_string()),
        ("ROUTER_BUFFER_BYTES", c.router_buffer_bytes.to_string()),
        ("CURSOR_INTERVAL_MS", c.cursor_interval.as_millis().to_string()),
        ("RESUME_BUFFER_MESSAGES", c.resume_buffer.to_string()),
        ("RESUME_BUFFER_BYTES", c.resume_buffer_bytes.to_string()),
        ("RATE_LIMIT_MAX_KEYS", c.rate_limit_max_keys.to_string()),
        ("RESUME_CATCHUP_TIMEOUT_MS", c.resume_catchup_timeout.as_millis().to_string()),
        ("DRAIN_SECS", secs(c.drain)),
        ("DRAIN_CLOSE_RATE", c.drain_close_rate.to_string()),
        ("METRICS_TOKEN", c.metrics_token.as_deref().map(secret).unwrap_or_else(|| "(empty: /metrics open)".into())),
        ("ADMIN_TOKEN", c.admin_token.as_deref().map(secret).unwrap_or_else(|| "(empty: no /admin)".into())),
    ]);
    rows.into_iter().map(|(name, value)| format!("{name}={value}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "gw".into(),
            "--supabase-url=https://abc.supabase.co".into(),
            "--supabase-anon-key=anon-key-value".into(),
            "--supabase-service-role-key=service-key-value".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        // Two values clap cannot parse and two that parse but are invalid: all four named.
        let problems = load_from(argv(&[
            "--port=not-a-port",
            "--max-header-bytes=lots",
            "--ws-ping-interval-secs=0",
            "--cors-allowed-origins=https://ok.example,ftp://nope",
        ]))
        .expect_err("invalid");
        let text = problems.join("\n");
        for var in ["PORT:", "MAX_HEADER_BYTES:", "WS_PING_INTERVAL_SECS:", "CORS_ALLOWED_ORIGINS:"] {
            assert!(text.contains(var), "{var} missing from:\n{text}");
        }
        let missing = load_from(["gw", "--supabase-url=https://abc.supabase.co", "--port=x"]).expect_err("invalid");
        assert!(missing.iter().any(|p| p.starts_with("SUPABASE_ANON_KEY: is required")), "{missing:?}");
        assert!(missing.iter().any(|p| p.starts_with("PORT:")), "{missing:?}");
        let problems =
            load_from(argv(&["--ws-ping-interval-secs=0", "--cors-allowed-origins=ftp://nope"])).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("WS_PING_INTERVAL_SECS:") || problems[1].starts_with("WS_PING_INTERVAL_SECS:"));
        assert!(problems.iter().any(|p| p.starts_with("CORS_ALLOWED_ORIGINS:")), "{problems:?}");
    }

    #[test]
    fn the_drain_must_end_before_the_grace_period_and_tokens_must_be_long() {
        let config = load_from(argv(&[])).expect("valid");
        assert_eq!((config.drain.as_secs(), config.shutdown_grace.as_secs()), (5, 30));
        assert_eq!(config.drain_close_rate, 500.0);
        assert!(describe(&config).contains("DRAIN_CLOSE_RATE=500\n"));
        for bad in ["--drain-close-rate=0", "--drain-close-rate=-3", "--drain-close-rate=NaN"] {
            let problems = load_from(argv(&[bad])).expect_err(bad);
            assert!(problems.iter().any(|p| p.starts_with("DRAIN_CLOSE_RATE:")), "{bad}: {problems:?}");
        }
        assert_eq!((config.metrics_token.as_deref(), config.admin_token.as_deref()), (None, None));
        let problems = load_from(argv(&["--drain-secs=10", "--shutdown-grace-secs=10", "--admin-token=short"]))
            .expect_err("invalid");
        assert!(
            problems.iter().any(|p| p.starts_with("DRAIN_SECS: must be less than SHUTDOWN_GRACE_SECS")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.starts_with("ADMIN_TOKEN:")), "{problems:?}");
        let config = load_from(argv(&["--metrics-token=0123456789abcdef-metrics"])).expect("valid");
        assert!(!describe(&config).contains("0123456789abcdef-metrics"));
    }

    #[test]
    fn description_names_every_variable_and_hides_secrets() {
        let config = load_from(argv(&["--supabase-jwt-secret=0123456789abcdef0123"])).expect("valid");
        let text = describe(&config);
        for needle in ["anon-key-value", "service-key-value", "0123456789abcdef0123"] {
            assert!(!text.contains(needle), "secret {needle} printed:\n{text}");
        }
        assert!(text.contains("SUPABASE_URL=https://abc.supabase.co/"), "{text}");
        assert!(text.contains("MAX_PENDING_HANDSHAKES=1024"), "{text}");
        assert!(text.contains("SUPABASE_ANON_KEY=<redacted, 14 characters>"), "{text}");
    }
}
