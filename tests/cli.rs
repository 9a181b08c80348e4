//! The `realtime-gateway` binary itself: `--check-config`, text logs without colour codes when
//! stderr is not a terminal (a file, a pipe, the journal), and the start-up warning about an open
//! `/metrics` on a non-loopback address.

use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};

const BINARY: &str = env!("CARGO_BIN_EXE_realtime-gateway");

/// The binary with a minimal valid environment, in an empty directory (no `.env`).
fn gateway(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir)
        .env_clear()
        .env("SUPABASE_URL", "http://127.0.0.1:1")
        .env("SUPABASE_ANON_KEY", "anon-key-not-a-secret-but-long")
        .env("SUPABASE_SERVICE_ROLE_KEY", "service-role-key-value-0123456789")
        .env("SUPABASE_JWT_SECRET", "jwt-secret-value-0123456789abcdef")
        .env("PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1");
    command
}

fn empty_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = empty_dir("valid");
    let output = gateway(&dir)
        .arg("--check-config")
        .env("CORS_ALLOWED_ORIGINS", "https://app.school.example")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{:?}\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("SUPABASE_URL=http://127.0.0.1:1/"), "{stdout}");
    assert!(stdout.contains("CORS_ALLOWED_ORIGINS=https://app.school.example"), "{stdout}");
    assert!(stdout.contains("HANDSHAKE_TIMEOUT_SECS=5"), "{stdout}");
    for secret in ["service-role-key-value-0123456789", "jwt-secret-value-0123456789abcdef", "anon-key-not"] {
        assert!(!stdout.contains(secret), "a secret was printed:\n{stdout}");
    }
}

#[test]
fn check_config_reports_every_bad_variable_and_exits_non_zero() {
    let dir = empty_dir("invalid");
    let output = gateway(&dir)
        .arg("--check-config")
        .env("PORT", "eighty")
        .env("BACKEND_TIMEOUT_MS", "0")
        .env("CORS_ALLOWED_ORIGINS", "app.school.example")
        .env("LOG_LEVEL", "realtime_gateway=loud")
        .env_remove("SUPABASE_SERVICE_ROLE_KEY")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for var in ["PORT", "BACKEND_TIMEOUT_MS", "CORS_ALLOWED_ORIGINS", "LOG_LEVEL", "SUPABASE_SERVICE_ROLE_KEY"] {
        assert!(stderr.contains(var), "{var} not reported:\n{stderr}");
    }
    assert!(!stderr.contains("jwt-secret-value"), "{stderr}");
}

#[test]
fn a_deprecated_variable_name_still_works_and_is_warned_about() {
    let dir = empty_dir("deprecated");
    let output = gateway(&dir).arg("--check-config").env("BACKEND_TIMEOUT_MS", "250").output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("BACKEND_TIMEOUT_SECS=0.25\n"), "{stdout}");
    assert!(stderr.contains("warning: BACKEND_TIMEOUT_MS is deprecated: set BACKEND_TIMEOUT_SECS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let dir = empty_dir("logs");
    let seen = startup_log(gateway(&dir)).await;
    assert!(seen.contains("INFO"), "{seen}");
    assert!(!seen.contains('\u{1b}'), "ANSI escape codes in a non-terminal log:\n{seen:?}");
}

/// The gateway's log lines up to "gateway listening".
async fn startup_log(command: Command) -> String {
    let mut child = tokio::process::Command::from(command)
        .env("LOG_FORMAT", "text")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let read = tokio::time::timeout(crate::common::ARRIVES, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("gateway listening") {
                return;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    assert!(read.is_ok(), "the gateway never logged that it listens:\n{seen}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_metrics_endpoint_on_a_public_address_is_warned_about_at_start_up() {
    let dir = empty_dir("metrics-warning");
    let mut public = gateway(&dir);
    public.env("BIND_ADDRESS", "0.0.0.0");
    let seen = startup_log(public).await;
    let warning =
        seen.lines().find(|l| l.contains("/metrics is open")).unwrap_or_else(|| panic!("no warning:\n{seen}"));
    assert!(warning.contains("WARN") && warning.contains("METRICS_TOKEN"), "{warning}");

    let mut protected = gateway(&dir);
    protected.env("BIND_ADDRESS", "0.0.0.0").env("METRICS_TOKEN", "metrics-token-0123456789abcdef");
    let seen = startup_log(protected).await;
    assert!(!seen.contains("/metrics is open"), "METRICS_TOKEN set:\n{seen}");
    let seen = startup_log(gateway(&dir)).await;
    assert!(!seen.contains("/metrics is open"), "bound to 127.0.0.1:\n{seen}");
}
