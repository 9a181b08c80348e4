//! `supabase-standin`: the local Supabase stand-in stack in one command.
//!
//! Starts a throwaway PostgreSQL 15 (schema, RLS, functions and seed applied), the Realtime,
//! PostgREST and Auth stand-ins at one URL, prints the URLs, keys and ready-to-use tokens for the
//! seeded users (or one JSON line with `--json`), optionally writes a `.env` for the gateway, and
//! runs until SIGINT/SIGTERM, then removes everything.

use std::net::IpAddr;

use clap::Parser;
use serde_json::json;
use supabase_standin::keys::Alg;
use supabase_standin::seed::PEOPLE;
use supabase_standin::{Stack, StackOptions};

#[derive(Parser)]
#[command(name = "supabase-standin", about = "Local stand-in for Supabase (PostgreSQL, Realtime, PostgREST, Auth)")]
struct Args {
    /// Port for the API (Realtime, PostgREST, Auth). Keep it below 32768.
    #[arg(long, default_value_t = 24321)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Legacy JWT secret (HS256).
    #[arg(long, env = "SUPABASE_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Print one JSON line instead of the human-readable summary.
    #[arg(long)]
    json: bool,
    /// Write SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET here.
    #[arg(long)]
    env_file: Option<std::path::PathBuf>,
    /// Lifetime of the printed user tokens, seconds.
    #[arg(long, default_value_t = 86_400)]
    token_ttl: i64,
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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.port >= 32768 {
        eprintln!(
            "supabase-standin: --port {} is in the ephemeral range; use a port below 32768 (or 0 for any)",
            args.port
        );
        std::process::exit(2);
    }
    let options =
        StackOptions { jwt_secret: args.jwt_secret.clone(), bind: args.bind, port: args.port, own_cluster: true };
    let stack = match Stack::start_with(options).await {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("supabase-standin: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let summary = summary(&stack, args.token_ttl);
    if let Some(path) = &args.env_file {
        if let Err(e) = write_env_file(&stack, path) {
            eprintln!("supabase-standin: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if args.json {
        println!("{summary}");
    } else {
        print_human(&stack, &args, &summary);
    }
    wait_for_signal().await;
    stack.shutdown().await;
}

/// The endpoints, keys and the seeded users with their tokens (valid `token_ttl` seconds).
fn summary(stack: &Stack, token_ttl: i64) -> serde_json::Value {
    let keys = stack.keys();
    let users: Vec<_> = PEOPLE
        .iter()
        .map(|p| {
            json!({
                "id": p.id, "email": p.email, "full_name": p.full_name, "role": p.role,
                "token_hs256": keys.user_token(p.id, p.email, Alg::Hs256, token_ttl),
                "token_es256": keys.user_token(p.id, p.email, Alg::Es256, token_ttl),
            })
        })
        .collect();
    json!({
        "url": stack.url(),
        "rest_url": format!("{}/rest/v1", stack.url()),
        "realtime_url": stack.realtime_url(),
        "jwks_url": format!("{}/auth/v1/.well-known/jwks.json", stack.url()),
        "db_url": stack.database().url(),
        "anon_key": keys.anon_key,
        "service_role_key": keys.service_key,
        "jwt_secret": keys.jwt_secret,
        "kid": keys.kid,
        "password": Stack::SEED_PASSWORD,
        "users": users,
    })
}

/// The four variables the gateway needs, as a `.env` file.
fn write_env_file(stack: &Stack, path: &std::path::Path) -> std::io::Result<()> {
    let keys = stack.keys();
    let env = format!(
        "SUPABASE_URL={}\nSUPABASE_ANON_KEY={}\nSUPABASE_SERVICE_ROLE_KEY={}\nSUPABASE_JWT_SECRET={}\n",
        stack.url(),
        keys.anon_key,
        keys.service_key,
        keys.jwt_secret
    );
    std::fs::write(path, env)
}

/// What a person reads at the terminal: the endpoints, the keys and each seeded user's token.
fn print_human(stack: &Stack, args: &Args, summary: &serde_json::Value) {
    let keys = stack.keys();
    println!("Supabase stand-in is running (Ctrl-C to stop and remove the database)\n");
    println!("  SUPABASE_URL               {}", stack.url());
    println!("  PostgREST                  {}/rest/v1", stack.url());
    println!("  Realtime                   {}", stack.realtime_url());
    println!("  JWKS                       {}/auth/v1/.well-known/jwks.json", stack.url());
    println!("  PostgreSQL (superuser)     {}", stack.database().url());
    println!("  SUPABASE_ANON_KEY          {}", keys.anon_key);
    println!("  SUPABASE_SERVICE_ROLE_KEY  {}", keys.service_key);
    println!("  SUPABASE_JWT_SECRET        {}", keys.jwt_secret);
    if let Some(path) = &args.env_file {
        println!("  (written to {})", path.display());
    }
    println!(
        "\nSeeded users sign in with their email and the password `{}` (POST /auth/v1/token?grant_type=password).",
        Stack::SEED_PASSWORD
    );
    println!("Access tokens of the seeded school (HS256; ES256 with --json):");
    for (p, u) in PEOPLE.iter().zip(summary["users"].as_array().into_iter().flatten()) {
        println!("  {:<13} {:<8} {}\n    {}", p.full_name, p.role, p.id, u["token_hs256"].as_str().unwrap_or_default());
    }
}
