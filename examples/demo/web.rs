//! `scripts/demo --web`: the example web app (`examples/web`) ready to try in a browser. Starts
//! the Supabase stand-in (a throwaway PostgreSQL cluster of its own, seeded), the gateway binary
//! with the page's origin in `CORS_ALLOWED_ORIGINS`, and `examples/web/serve.mjs`; prints the
//! page's URL and a sign-in token per seeded user; runs until Ctrl-C (SIGINT) or SIGTERM.
//!
//! Stopping never leaves a port behind: the gateway runs with `DRAIN_SECS=0` and a short grace
//! period, and is waited for (a second signal if it lingers) before this exits, so running the
//! command again at once finds its ports free. The database is removed on exit.
//!
//! Options: `--web-port N` (8080), `--gateway-port N` (3000).

use std::process::Stdio;
use std::time::Duration;

use supabase_standin::keys::Alg;
use supabase_standin::seed::PEOPLE;
use supabase_standin::{Stack, StackOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Lifetime of the printed tokens (a day of trying things out).
const TOKEN_TTL_SECS: i64 = 86_400;

fn port_flag(args: &[String], name: &str, default: u16) -> u16 {
    let Some(i) = args.iter().position(|a| a == name) else { return default };
    match args.get(i + 1).and_then(|v| v.parse().ok()) {
        Some(port) => port,
        None => fail(&format!("{name} needs a port number")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("demo --web: {message}");
    std::process::exit(1);
}

/// A port that is already taken ends the demo with what to do, before anything starts.
fn check_free(port: u16, flag: &str) {
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
        fail(&format!("127.0.0.1:{port} is not free ({e}): stop what uses it, or pass {flag} <another port>"));
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn gateway_command(stack: &Stack, port: u16, origin: &str) -> Command {
    let keys = stack.keys();
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current exe: {e}")));
    let Some(bin) = exe.parent().and_then(|examples| examples.parent()).map(|dir| dir.join("realtime-gateway")) else {
        fail("cannot find the target directory");
    };
    let mut command = Command::new(bin);
    command
        .env("SUPABASE_URL", stack.url())
        .env("SUPABASE_ANON_KEY", &keys.anon_key)
        .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
        .env("SUPABASE_JWT_SECRET", &keys.jwt_secret)
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("CORS_ALLOWED_ORIGINS", origin)
        .env("DRAIN_SECS", "0")
        .env("SHUTDOWN_GRACE_SECS", "3")
        .env("LOG_LEVEL", std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

async fn wait_ready(base: &str, gateway: &mut Child) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = gateway.try_wait() {
            fail(&format!("the gateway exited ({status}) before it was ready"));
        }
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            fail("the gateway did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `examples/web/serve.mjs` on `port`, once it says it listens.
async fn start_page_server(gateway: &str, stack: &Stack, port: u16) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/web/serve.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .args(["--gateway", gateway, "--supabase", &stack.url(), "--anon-key", &stack.keys().anon_key])
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start node (Node 20+ is required): {e}")));
    let Some(stdout) = child.stdout.take() else { fail("no stdout from serve.mjs") };
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        Ok(Ok(Some(_))) => {}
        _ => fail("examples/web/serve.mjs did not start"),
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// SIGTERM, then up to 10 s for the exit; a second SIGTERM (immediate stop) if it lingers.
async fn stop_gateway(gateway: &mut Child) {
    for _ in 0..2 {
        if let Some(pid) = gateway.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(Duration::from_secs(10), gateway.wait()).await.is_ok() {
            return;
        }
    }
    let _ = gateway.kill().await;
}

pub async fn run(args: &[String]) {
    let web_port = port_flag(args, "--web-port", 8080);
    let gateway_port = port_flag(args, "--gateway-port", 3000);
    check_free(web_port, "--web-port");
    check_free(gateway_port, "--gateway-port");
    let origin = format!("http://127.0.0.1:{web_port}");
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");

    println!("Starting the local Supabase stand-in (PostgreSQL 15 + Realtime + PostgREST + Auth)...");
    let options = StackOptions { own_cluster: true, ..StackOptions::default() };
    let stack = Stack::start_with(options)
        .await
        .unwrap_or_else(|e| fail(&format!("the stand-in does not start ({e}); run scripts/setup")));
    println!("Starting the gateway on {gateway_url} with CORS_ALLOWED_ORIGINS={origin}...");
    let mut gateway = gateway_command(&stack, gateway_port, &origin)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("the gateway binary does not start ({e}); scripts/demo builds it")));
    wait_ready(&gateway_url, &mut gateway).await;
    let mut page = start_page_server(&gateway_url, &stack, web_port).await;

    println!("\nOpen {origin}/ and sign in with one of these tokens (valid 24 h):");
    let keys = stack.keys();
    for p in PEOPLE.iter() {
        println!("  {:<13} {:<8} {}", p.full_name, p.role, keys.user_token(p.id, p.email, Alg::Hs256, TOKEN_TTL_SECS));
    }
    println!("\nCarla Diaz has unread messages in \"Class 3B parents\". Post as a teacher with SQL:");
    println!(
        "  psql '{}' -c \"insert into messages (thread_id, sender_id, content) values \
         ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'Hello 3B')\"",
        stack.database().url()
    );
    println!("\nRunning until Ctrl-C (the database is removed then).");

    tokio::select! {
        () = wait_for_signal() => {}
        status = gateway.wait() => eprintln!("demo --web: the gateway exited ({status:?})"),
        status = page.wait() => eprintln!("demo --web: serve.mjs exited ({status:?})"),
    }
    println!("\nStopping...");
    stop_gateway(&mut gateway).await;
    let _ = page.kill().await;
    stack.shutdown().await;
    println!("Stopped; the ports are free and the database is removed.");
}
