//! Unit tests of the configuration rules.
use super::*;

fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec![
        "gw",
        "--supabase-url=https://abc.supabase.co",
        "--supabase-anon-key=anon",
        "--supabase-service-role-key=service",
    ];
    argv.extend_from_slice(extra);
    check::parse(argv)
}

#[test]
fn derives_service_urls() {
    let c = parse(&[]).expect("valid");
    let project = c.supabase().expect("the Supabase backend");
    assert_eq!(project.realtime_websocket_url(), "wss://abc.supabase.co/realtime/v1/websocket");
    assert_eq!(project.rest_url(), "https://abc.supabase.co/rest/v1");
    assert_eq!(c.auth.jwks_url.as_deref(), Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json"));
    assert_eq!(c.listen.port(), 3000);
    assert!(c.auth.jwt_secret.is_none());
}

#[test]
fn local_http_maps_to_ws() {
    let c = parse(&["--supabase-url=http://127.0.0.1:54321/"]).expect("valid");
    let url = c.supabase().map(SupabaseProject::realtime_websocket_url);
    assert_eq!(url.as_deref(), Some("ws://127.0.0.1:54321/realtime/v1/websocket"));
}

#[test]
fn bad_values_name_the_variable() {
    let e = parse(&["--supabase-url=not a url"]).expect_err("invalid");
    assert!(e.to_string().starts_with("SUPABASE_URL:"), "{e}");
    let e = parse(&["--supabase-url=ftp://x"]).expect_err("invalid");
    assert!(e.to_string().starts_with("SUPABASE_URL:"), "{e}");
    let e = parse(&["--supabase-jwt-secret=short"]).expect_err("invalid");
    assert!(e.to_string().starts_with("SUPABASE_JWT_SECRET:"), "{e}");
    let e = parse(&["--ws-ping-interval-secs=0"]).expect_err("invalid");
    assert!(e.to_string().starts_with("WS_PING_INTERVAL_SECS:"), "{e}");
    let e = parse(&["--ws-read-buffer-bytes=10"]).expect_err("refused, not clamped");
    assert!(e.to_string().starts_with("WS_READ_BUFFER_BYTES:"), "{e}");
    let e = parse(&["--upstream-topic=chat"]).expect_err("invalid");
    assert!(e.to_string().starts_with("UPSTREAM_TOPIC:"), "{e}");
}

#[test]
fn missing_setting_is_named() {
    let args = Args::try_parse_from(["gw", "--supabase-url=https://x.supabase.co"]).expect("parses");
    let text = Config::from_args(args).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("SUPABASE_ANON_KEY:"), "{text}");
    let args = Args::try_parse_from(["gw"]).expect("parses");
    let text = Config::from_args(args).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("SUPABASE_URL:") && text.contains("DATABASE_URL"), "{text}");
}

#[test]
fn database_url_without_supabase_selects_postgres() {
    let secret = "0123456789abcdef0123";
    let c = Config::for_postgres("postgres://gw:pw@db.example/chat", "gw_1", secret).expect("valid");
    assert!(matches!(&c.backend, Backend::Postgres(s) if s.slot_name == "gw_1"));
    assert_eq!((c.auth.jwt_secret.as_deref(), c.auth.jwks_url.as_deref()), (Some(secret), None));
    let text = format!("{c:?}");
    assert!(!text.contains("pw@") && !text.contains(secret), "{text}");
    let e = Config::for_postgres("postgres://gw@db/chat", "Bad-Slot", secret).expect_err("invalid slot");
    assert!(e.to_string().starts_with("SLOT_NAME:"), "{e}");
    let args = Args::try_parse_from(["gw", "--database-url=postgres://gw@db/chat"]).expect("parses");
    let e = Config::from_args(args).expect_err("no way to verify tokens");
    assert!(e.to_string().starts_with("JWT_SECRET:"), "{e}");
    let args = Args::try_parse_from([
        "gw",
        "--database-url=postgres://gw@db/chat",
        "--jwks-url=https://auth.example/jwks.json",
    ])
    .expect("parses");
    assert!(Config::from_args(args).is_ok_and(|c| c.auth.jwks_url.is_some()));
}

#[test]
fn debug_redacts_secrets() {
    let c = parse(&["--supabase-jwt-secret=0123456789abcdef0123"]).expect("valid");
    let text = format!("{c:?}");
    assert!(!text.contains("0123456789abcdef0123") && !text.contains("service\""), "{text}");
}

#[test]
fn a_deprecated_name_still_works_and_warns() {
    let c = check::load_from(
        ["gw", "--supabase-url=https://abc.supabase.co", "--supabase-anon-key=anon"].into_iter().chain([
            "--supabase-service-role-key=service",
            "--backend-timeout-ms=250",
            "--cursor-interval-ms",
            "100",
        ]),
    )
    .expect("valid");
    assert_eq!((c.backend_timeout, c.router.cursor_interval), (Duration::from_millis(250), Duration::from_millis(100)));
    assert_eq!(c.deprecations.len(), 2, "{:?}", c.deprecations);
    assert!(c.deprecations[0].starts_with("BACKEND_TIMEOUT_MS is deprecated: set BACKEND_TIMEOUT_SECS"));
    let e = parse(&["--backend-timeout-ms=0"]).expect_err("invalid");
    assert!(e.to_string().starts_with("BACKEND_TIMEOUT_MS (deprecated name of BACKEND_TIMEOUT_SECS"), "{e}");
}

#[test]
fn check_config_describes_every_declared_variable() {
    use clap::CommandFactory;
    let declared: std::collections::BTreeSet<String> = Args::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|v| v.to_string_lossy().into_owned()))
        .collect();
    let supabase = check::describe(&parse(&[]).expect("valid"));
    let postgres =
        check::describe(&Config::for_postgres("postgres://gw@db/chat", "gw_1", "0123456789abcdef0123").expect("valid"));
    let described: std::collections::BTreeSet<String> = supabase
        .lines()
        .chain(postgres.lines())
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.to_string()))
        .collect();
    assert_eq!(described, declared);
}

#[test]
fn the_push_webhook_is_set_from_its_flags_and_variables() {
    // `::std::option::Option` with an empty default, as every optional text setting: clap's own
    // `Option` handling would expect a `String` from the value parser and panic at start.
    let c = parse(&[
        "--push-webhook-url=http://127.0.0.1:9/push",
        "--push-webhook-secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "--push-lease-secs=30",
    ])
    .expect("valid");
    assert_eq!(c.push.webhook.as_ref().map(|w| w.url.as_str()), Some("http://127.0.0.1:9/push"));
    assert_eq!(c.push.lease, std::time::Duration::from_secs(30));
    assert!(parse(&[]).expect("valid").push.webhook.is_none(), "no webhook by default");
}

#[test]
fn fcm_and_apns_are_set_from_their_flags() {
    let c = parse(&[
        "--fcm-service-account-file=/run/secrets/fcm.json",
        "--fcm-token-url=http://127.0.0.1:9/token",
        "--apns-key-file=/run/secrets/apns.p8",
        "--apns-key-id=KEY1234567",
        "--apns-team-id=TEAM123456",
        "--apns-topic=org.school.chat",
        "--apns-sandbox=true",
    ])
    .expect("valid");
    let fcm = c.push.fcm.as_ref().expect("FCM on");
    assert_eq!(fcm.token_url.as_deref(), Some("http://127.0.0.1:9/token"));
    assert_eq!(fcm.api_url, super::DEFAULT_FCM_API_URL);
    let apns = c.push.apns.as_ref().expect("APNs on");
    assert_eq!((apns.key_id.as_str(), apns.url.as_str()), ("KEY1234567", super::APNS_SANDBOX_URL));
    let none = parse(&[]).expect("valid");
    assert!(none.push.fcm.is_none() && none.push.apns.is_none(), "neither by default");
    assert!(parse(&["--apns-topic=org.school.chat"]).is_err(), "APNs needs its four settings");
}

#[test]
fn web_push_and_expo_are_set_from_their_flags() {
    let c = parse(&[
        "--vapid-private-key=8K0tY1TO0eV1Wg0nw8PDh28dnO7r0oOM7TbXhTvBhgQ",
        "--vapid-subject=mailto:it@school.example",
        "--push-expo=true",
        "--expo-access-token=expo-token",
    ])
    .expect("valid");
    assert_eq!(c.push.vapid.as_ref().map(|v| v.subject.as_str()), Some("mailto:it@school.example"));
    let expo = c.push.expo.as_ref().expect("Expo on");
    assert_eq!((expo.url.as_str(), expo.access_token.as_deref()), (super::EXPO_PUSH_URL, Some("expo-token")));
    let off = parse(&[]).expect("valid");
    assert!(off.push.vapid.is_none() && off.push.expo.is_none(), "both off by default");
}
