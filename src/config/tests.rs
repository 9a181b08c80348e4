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
    Config::from_args(Args::try_parse_from(argv).map_err(|e| invalid("args", e.to_string()))?)
}

#[test]
fn derives_service_urls() {
    let c = parse(&[]).expect("valid");
    let project = c.supabase().expect("the Supabase backend");
    assert_eq!(project.realtime_websocket_url(), "wss://abc.supabase.co/realtime/v1/websocket");
    assert_eq!(project.rest_url(), "https://abc.supabase.co/rest/v1");
    assert_eq!(c.jwks_url.as_deref(), Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json"));
    assert_eq!(c.listen.port(), 3000);
    assert!(c.jwt_secret.is_none());
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
    assert_eq!((c.jwt_secret.as_deref(), c.jwks_url.as_deref()), (Some(secret), None));
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
    assert!(Config::from_args(args).is_ok_and(|c| c.jwks_url.is_some()));
}

#[test]
fn debug_redacts_secrets() {
    let c = parse(&["--supabase-jwt-secret=0123456789abcdef0123"]).expect("valid");
    let text = format!("{c:?}");
    assert!(!text.contains("0123456789abcdef0123") && !text.contains("service\""), "{text}");
}
