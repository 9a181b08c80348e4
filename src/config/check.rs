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

/// Parses and validates `argv` plus the environment, deprecated names included (see
/// [`super::alias`]); on failure, every problem found, one per entry, each naming its variable.
/// `--help` and `--version` print and exit as clap does.
pub fn load_from<I, T>(argv: I) -> Result<Config, Vec<String>>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let (argv, deprecations) = super::alias::rewrite(argv, |name| std::env::var_os(name));
    let rename = |problems: Vec<String>| -> Vec<String> {
        problems.into_iter().map(|p| super::alias::rename_problem(p, &deprecations)).collect()
    };
    let config = match Args::command().try_get_matches_from(&argv) {
        Ok(matches) => {
            let args = Args::from_arg_matches(&matches).map_err(|e| vec![first_line(&e)])?;
            Config::from_args(args).map_err(|e| rename(flatten(e).collect()))?
        }
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => return Err(rename(every_problem(&argv, &e))),
    };
    Ok(Config { deprecations, ..config })
}

/// [`load_from`] for code that builds a configuration: the problems as one [`ConfigError`].
pub(super) fn parse<I, T>(argv: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_from(argv).map_err(|problems| {
        let mut all: Vec<ConfigError> = problems
            .into_iter()
            .map(|text| match text.split_once(": ") {
                Some((var, problem)) => ConfigError::Invalid { var: var.to_string(), problem: problem.to_string() },
                None => ConfigError::Invalid { var: "arguments".into(), problem: text },
            })
            .collect();
        if all.len() == 1 {
            all.remove(0)
        } else {
            ConfigError::Several(all)
        }
    })
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

/// The effective configuration, one `VARIABLE=value` per line, secrets redacted. Every declared
/// variable of the backend in use appears (a test holds this list to the declarations). Long
/// because it is a table, one row per variable.
pub fn describe(c: &Config) -> String {
    let secs = |d: std::time::Duration| format!("{}", d.as_secs_f64());
    let mut rows: Vec<(&str, String)> = match &c.backend {
        super::Backend::Supabase(p) => vec![
            ("SUPABASE_URL", p.url.to_string()),
            ("SUPABASE_ANON_KEY", secret(&p.anon_key)),
            ("SUPABASE_SERVICE_ROLE_KEY", secret(&p.service_role_key)),
            (
                "SUPABASE_JWT_SECRET",
                c.auth.jwt_secret.as_deref().map(secret).unwrap_or_else(|| "(empty: JWKS only)".into()),
            ),
        ],
        super::Backend::Postgres(s) => vec![
            ("DATABASE_URL", "<redacted>".into()),
            ("SLOT_NAME", s.slot_name.clone()),
            ("DATABASE_POOL_SIZE", s.pool_size.to_string()),
            ("SLOT_READ", s.slot_read.as_str().into()),
            ("SLOT_POLL_SECS", secs(s.poll_interval)),
            ("JWT_SECRET", c.auth.jwt_secret.as_deref().map(secret).unwrap_or_else(|| "(empty: JWKS only)".into())),
        ],
    };
    let (auth, edge, limits, fair, feed, router) = (&c.auth.rules, &c.edge, &c.limits, &c.fairness, &c.feed, &c.router);
    rows.extend([
        ("BACKEND_TIMEOUT_SECS", secs(c.backend_timeout)),
        ("JWKS_URL", c.auth.jwks_url.clone().unwrap_or_else(|| "(none: HS256 secret only)".into())),
        ("JWT_LEEWAY_SECS", secs(auth.leeway)),
        ("JWKS_REFRESH_MIN_SECS", secs(auth.jwks_refresh_min)),
        ("JWKS_MAX_AGE_SECS", secs(auth.jwks_max_age)),
        ("JWT_ISSUER", auth.issuer.clone().unwrap_or_else(|| "(not checked)".into())),
        ("ALLOW_ANONYMOUS", auth.allow_anonymous.to_string()),
        ("AUTH_FAILURES_PER_SEC", auth.failures_per_sec.to_string()),
        ("AUTH_FAILURE_BURST", auth.failure_burst.to_string()),
        ("PORT", c.listen.port().to_string()),
        ("BIND_ADDRESS", c.listen.ip().to_string()),
        ("LOG_FORMAT", format!("{:?}", c.log.format).to_lowercase()),
        ("LOG_LEVEL", c.log.level.clone()),
        ("MAX_PENDING_HANDSHAKES", edge.max_pending_handshakes.to_string()),
        ("MAX_TCP_CONNECTIONS", edge.max_tcp_connections.to_string()),
        ("HANDSHAKE_TIMEOUT_SECS", secs(edge.handshake_timeout)),
        ("MAX_HEADER_BYTES", edge.max_header_bytes.to_string()),
        ("CORS_ALLOWED_ORIGINS", edge.cors_allowed_origins.join(",")),
        ("TRUSTED_PROXIES", edge.trusted_proxies.nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
        ("TRUSTED_PROXY_HEADER", edge.trusted_proxies.header.name().into()),
        ("MAX_CONNECTIONS", limits.max_connections.to_string()),
        ("MAX_CONNECTIONS_PER_USER", limits.max_connections_per_user.to_string()),
        ("WS_MAX_MESSAGE_BYTES", limits.max_message_bytes.to_string()),
        ("WS_READ_BUFFER_BYTES", limits.read_buffer_bytes.to_string()),
        ("WS_RATE_LIMIT_PER_SEC", limits.rate_per_sec.to_string()),
        ("SESSION_QUEUE_CAPACITY", limits.queue_capacity.to_string()),
        ("SESSION_QUEUE_BYTES", limits.queue_bytes.to_string()),
        ("MAX_THREAD_SUBSCRIPTIONS", limits.max_thread_subscriptions.to_string()),
        ("WS_PING_INTERVAL_SECS", secs(limits.ping_interval)),
        ("REST_RATE_LIMIT_PER_SEC", fair.rest_rate_per_sec.to_string()),
        ("SUBSCRIBE_CHECKS_PER_SEC", fair.subscribe_checks_per_sec.to_string()),
        ("SUBSCRIBE_CHECK_BURST", fair.subscribe_check_burst.to_string()),
        ("RESUME_DB_PAGES_PER_MIN", fair.resume_db_pages_per_min.to_string()),
        ("RATE_LIMIT_MAX_KEYS", fair.max_keys.to_string()),
        ("REALTIME_VSN", if feed.vsn == super::RealtimeVsn::V1 { "1.0.0" } else { "2.0.0" }.into()),
        ("UPSTREAM_TOPIC", feed.topic.clone()),
        ("UPSTREAM_HEARTBEAT_SECS", secs(feed.heartbeat)),
        ("UPSTREAM_JOIN_TIMEOUT_SECS", secs(feed.join_timeout)),
        ("UPSTREAM_BACKOFF_MIN_SECS", secs(feed.backoff_min)),
        ("UPSTREAM_BACKOFF_MAX_SECS", secs(feed.backoff_max)),
        ("UPSTREAM_QUEUE_CAPACITY", feed.queue_capacity.to_string()),
        ("CATCHUP_MARGIN_SECS", secs(router.catchup_margin)),
        ("ROUTER_MAX_WAITING", router.max_waiting.to_string()),
        ("ROUTER_BUFFER_BYTES", router.max_waiting_bytes.to_string()),
        ("CURSOR_INTERVAL_SECS", secs(router.cursor_interval)),
        ("READ_STATE_COALESCE_SECS", secs(router.read_state_window)),
        ("READ_RECEIPT_COALESCE_SECS", secs(router.read_receipt_window)),
        ("READ_RECEIPT_MAX_THREADS", router.read_receipt_max_threads.to_string()),
        ("READ_RECEIPT_CONCURRENCY", router.read_receipt_concurrency.to_string()),
        ("RESUME_BUFFER_MESSAGES", c.resume.buffer.messages.to_string()),
        ("RESUME_BUFFER_BYTES", c.resume.buffer.bytes.to_string()),
        ("RESUME_CATCHUP_TIMEOUT_SECS", secs(c.resume.catchup_timeout)),
        ("CACHE_TTL_SECS", secs(c.cache.ttl)),
        ("CACHE_MAX_THREADS", c.cache.max_threads.to_string()),
        ("SHUTDOWN_GRACE_SECS", secs(c.shutdown.grace)),
        ("DRAIN_SECS", secs(c.shutdown.drain)),
        ("DRAIN_CLOSE_RATE", c.shutdown.close_rate.to_string()),
        (
            "METRICS_TOKEN",
            c.ops.metrics_token.as_deref().map(secret).unwrap_or_else(|| "(empty: /metrics open)".into()),
        ),
        ("ADMIN_TOKEN", c.ops.admin_token.as_deref().map(secret).unwrap_or_else(|| "(empty: no /admin)".into())),
        (
            "PUSH_WEBHOOK_URL",
            c.push.webhook.as_ref().map_or_else(
                || "(empty: no webhook)".into(),
                |w| {
                    // A query may carry a receiver's token: shown without it.
                    w.url.split('?').next().unwrap_or_default().to_string()
                },
            ),
        ),
        ("PUSH_WEBHOOK_SECRET", c.push.webhook.as_ref().map_or_else(|| "(empty)".into(), |_| "<redacted>".into())),
        ("PUSH_DELAY_MS", c.push.delay.as_millis().to_string()),
        ("PUSH_MAX_ATTEMPTS", c.push.max_attempts.to_string()),
        ("PUSH_LEASE_SECS", c.push.lease.as_secs().to_string()),
        (
            "VAPID_PRIVATE_KEY",
            c.push.vapid.as_ref().map_or_else(|| "(empty: no Web Push)".into(), |_| "<redacted>".into()),
        ),
        ("VAPID_SUBJECT", c.push.vapid.as_ref().map_or_else(|| "(empty)".into(), |v| v.subject.clone())),
        ("PUSH_EXPO", c.push.expo.is_some().to_string()),
        ("EXPO_PUSH_URL", c.push.expo.as_ref().map_or_else(|| "(Expo off)".into(), |e| e.url.clone())),
        (
            "EXPO_ACCESS_TOKEN",
            c.push
                .expo
                .as_ref()
                .and_then(|e| e.access_token.as_deref())
                .map(secret)
                .unwrap_or_else(|| "(empty)".into()),
        ),
    ]);
    rows.extend(mobile_push_rows(&c.push));
    rows.into_iter().map(|(name, value)| format!("{name}={value}\n")).collect()
}

/// FCM and APNs: file paths and ids are not secrets (the files are); off shows as "(empty)".
fn mobile_push_rows(push: &super::PushSettings) -> Vec<(&'static str, String)> {
    let off = |what: &str| format!("(empty: no {what})");
    let fcm = push.fcm.as_ref();
    let apns = push.apns.as_ref();
    let apns_value = |f: fn(&super::ApnsTarget) -> String| apns.map_or_else(|| off("APNs"), f);
    vec![
        ("FCM_SERVICE_ACCOUNT_FILE", fcm.map_or_else(|| off("FCM"), |f| f.service_account_file.display().to_string())),
        ("FCM_API_URL", fcm.map_or_else(|| off("FCM"), |f| f.api_url.clone())),
        (
            "FCM_TOKEN_URL",
            fcm.map_or_else(
                || off("FCM"),
                |f| f.token_url.clone().unwrap_or_else(|| "(the key file's token_uri)".into()),
            ),
        ),
        ("APNS_KEY_FILE", apns_value(|a| a.key_file.display().to_string())),
        ("APNS_KEY_ID", apns_value(|a| a.key_id.clone())),
        ("APNS_TEAM_ID", apns_value(|a| a.team_id.clone())),
        ("APNS_TOPIC", apns_value(|a| a.topic.clone())),
        ("APNS_SANDBOX", apns_value(|a| (a.url == super::APNS_SANDBOX_URL).to_string())),
        ("APNS_URL", apns_value(|a| a.url.clone())),
    ]
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
        assert_eq!((config.shutdown.drain.as_secs(), config.shutdown.grace.as_secs()), (5, 30));
        assert_eq!(config.shutdown.close_rate, 500.0);
        assert!(describe(&config).contains("DRAIN_CLOSE_RATE=500\n"));
        for bad in ["--drain-close-rate=0", "--drain-close-rate=-3", "--drain-close-rate=NaN"] {
            let problems = load_from(argv(&[bad])).expect_err(bad);
            assert!(problems.iter().any(|p| p.starts_with("DRAIN_CLOSE_RATE:")), "{bad}: {problems:?}");
        }
        assert_eq!((config.ops.metrics_token.as_deref(), config.ops.admin_token.as_deref()), (None, None));
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
