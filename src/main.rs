//! `realtime-gateway`: reads the configuration, starts the gateway, stops on SIGTERM/SIGINT.

use realtime_gateway::config::{Config, LogFormat};
use realtime_gateway::server;

fn init_logging(config: &Config) {
    // Config::load validated the filter: a bad LOG_LEVEL never gets here.
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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
    let config = match Config::load() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("realtime-gateway: configuration error: {message}");
            std::process::exit(2);
        }
    };
    init_logging(&config);
    tracing::info!(config = ?config, "starting");
    let gateway = match server::start(config).await {
        Ok(gateway) => gateway,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            std::process::exit(1);
        }
    };
    wait_for_signal().await;
    gateway.shutdown().await;
}
