//! `gateway-bench e2e`: the end-to-end pass (real INSERTs committed in PostgreSQL to the phones'
//! sockets) on both backends, one after the other, on the same database and population: Supabase
//! (the Realtime and PostgREST stand-ins) and plain PostgreSQL (the durable replication slot and
//! the gateway's own pool). Prints INSERT-to-phone latency side by side and writes
//! `target/bench/e2e.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use supabase_standin::Stack;

use super::{clients, end_to_end, free_port, raise_nofile, school_stack, session_tokens, wait_http};

#[derive(clap::Args, Clone)]
pub struct E2eArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread).
    #[arg(long, default_value_t = 40)]
    classes: usize,
    /// Real INSERTs per second.
    #[arg(long, default_value_t = 200)]
    inserts_per_sec: u64,
    /// Seconds of INSERTs per backend.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value = "target/bench/e2e.json")]
    report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    gateway_bin: PathBuf,
}

/// Which backend a gateway process talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Supabase,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Supabase => "supabase",
            Backend::Postgres => "postgres",
        }
    }
}

/// Starts a release gateway on `port` against the stand-in stack, on `backend`.
pub fn spawn_gateway(bin: &Path, stack: &Stack, backend: Backend, port: u16) -> std::io::Result<Child> {
    let keys = stack.keys();
    let mut command = Command::new(bin);
    match backend {
        Backend::Supabase => command
            .env("SUPABASE_URL", stack.url())
            .env("SUPABASE_ANON_KEY", &keys.anon_key)
            .env("SUPABASE_SERVICE_ROLE_KEY", &keys.service_key)
            .env("SUPABASE_JWT_SECRET", &keys.jwt_secret),
        Backend::Postgres => {
            let db = stack.database();
            command
                .env("DATABASE_URL", format!("postgres://chat_gateway@127.0.0.1:{}/{}", db.port(), db.name()))
                .env("SLOT_NAME", "bench_e2e")
                .env("JWT_SECRET", &keys.jwt_secret)
                .env("JWKS_URL", format!("{}/auth/v1/.well-known/jwks.json", stack.url()))
        }
    };
    command
        .env("PORT", port.to_string())
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("MAX_CONNECTIONS", "100000")
        .env("WS_PING_INTERVAL_SECS", "600")
        .env("DRAIN_SECS", "0")
        .env("SHUTDOWN_GRACE_SECS", "5")
        .stdout(Stdio::null())
        .spawn()
}

pub async fn run(args: E2eArgs) -> i32 {
    raise_nofile();
    let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
    let tokens = session_tokens(&pop, stack.keys());
    let mut results = Vec::new();
    for backend in [Backend::Supabase, Backend::Postgres] {
        let port = free_port();
        let mut child = match spawn_gateway(&args.gateway_bin, &stack, backend, port) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {}: {e}", args.gateway_bin.display());
                return 2;
            }
        };
        if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
            eprintln!("{}: the gateway never became ready", backend.name());
            let _ = child.kill();
            return 2;
        }
        let epoch = chrono::Utc::now().timestamp_micros();
        let (sessions, _, failures) =
            clients::connect_all(&format!("ws://127.0.0.1:{port}/"), &tokens, 2500, epoch).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = child.id();
        let mut result = end_to_end(&stack, &pop, &sessions, args.inserts_per_sec, args.secs, pid).await;
        result["backend"] = json!(backend.name());
        result["sessions"] = json!(sessions.len() - failures);
        eprintln!("{}: {result}", backend.name());
        results.push(result);
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let _ = child.wait();
    }
    print_table(&results);
    let report = json!({"scenario": "end-to-end on both backends", "classes": args.classes, "results": results,
                        "machine": super::machine()});
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default());
    let lost: u64 =
        results.iter().map(|r| r["lost"].as_u64().unwrap_or(0) + r["duplicated"].as_u64().unwrap_or(0)).sum();
    if lost > 0 {
        eprintln!("LOST OR DUPLICATED DELIVERIES: {lost}");
        return 1;
    }
    0
}

fn print_table(results: &[Value]) {
    println!("| backend | sessions | INSERTs/s | deliveries | p50 ms | p99 ms | max ms | lost | duplicated |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let l = &r["latency_ms_from_created_at"];
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            r["sessions"],
            r["inserts_per_sec"],
            r["delivered"],
            l["p50"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
            r["lost"],
            r["duplicated"]
        );
    }
}
