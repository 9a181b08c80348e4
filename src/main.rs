//! `realtime-gateway`: reads the configuration, starts the gateway, stops on SIGTERM/SIGINT
//! (gracefully; a second signal stops at once).
//! With `--check-config`: prints the effective configuration (secrets redacted) and exits, 0 if
//! it is valid, 2 with every problem listed otherwise.
//! Built with the `dhat-heap` feature (profiling only), the process's heap is profiled from the
//! start and the profile is written (to `DHAT_HEAP_FILE`, default `dhat-heap.json`) at the first
//! signal, before the drain, so that it shows the heap of the sessions still open.

use std::io::IsTerminal as _;

use realtime_gateway::config::{check, reference, Config, LogFormat};
use realtime_gateway::server;

fn init_logging(config: &Config) {
    // The configuration validated the filter: a bad LOG_LEVEL never gets here.
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    // Colour only on a terminal: files and journals must not get escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The heap profiler of a `dhat-heap` build; written when dropped.
#[cfg(feature = "dhat-heap")]
fn heap_profiler() -> dhat::Profiler {
    let file = std::env::var("DHAT_HEAP_FILE").unwrap_or_else(|_| "dhat-heap.json".into());
    dhat::Profiler::builder().file_name(file).trim_backtraces(Some(40)).build()
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() {
    #[cfg(feature = "dhat-heap")]
    let profiler = heap_profiler();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let check_only = argv.iter().any(|a| a == "--check-config");
    if argv.iter().any(|a| a == "--print-env-example") {
        print!("{}", reference::env_example());
        return;
    }
    if argv.iter().any(|a| a == "--print-config-reference") {
        print!("{}", reference::markdown());
        return;
    }
    let _ = dotenvy::dotenv();
    let config = match check::load_from(argv) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("realtime-gateway: configuration error ({} problem(s)):", problems.len());
            for problem in problems {
                eprintln!("  {problem}");
            }
            std::process::exit(2);
        }
    };
    if check_only {
        for warning in &config.deprecations {
            eprintln!("realtime-gateway: warning: {warning}");
        }
        print!("{}", check::describe(&config));
        println!("# configuration is valid");
        return;
    }
    init_logging(&config);
    for warning in &config.deprecations {
        tracing::warn!("{warning}");
    }
    tracing::info!(config = ?config, "starting");
    let gateway = match server::start(config).await {
        Ok(gateway) => gateway,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            std::process::exit(1);
        }
    };
    wait_for_signal().await;
    #[cfg(feature = "dhat-heap")]
    drop(profiler);
    // A second SIGTERM/SIGINT during the drain (Ctrl-C pressed again) stops at once: the listener
    // and every socket close as the process exits, so the port is free for a restart right away.
    tokio::select! {
        () = gateway.shutdown() => {}
        () = wait_for_signal() => tracing::warn!("second signal: stopping now, without the rest of the drain"),
    }
}
