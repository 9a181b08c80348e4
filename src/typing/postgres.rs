//! The PostgreSQL backend's typing relay: `LISTEN`/`NOTIFY` on the gateway's own channel
//! [`CHANNEL`], on one dedicated connection per instance (not the pool: a listening session must
//! stay open).
//!
//! Owns that connection: connect (bounded by the connect timeout), `LISTEN`, then send each
//! outgoing signal with `pg_notify` on the same connection and hand every notification to the
//! [`RelayLink`] (validated there). The connection's own notifications come back to it too: the
//! signal names its instance, and delivery skips its own. A lost connection is logged and made
//! again with backoff and jitter; signals queued meanwhile wait in the bounded queue and are
//! dropped once stale. A payload is at most [`MAX_PAYLOAD`] bytes (PostgreSQL's limit is 8000).
//! Never logs the connection string; never touches a table.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{RelayLink, Signal};

/// The notification channel every instance listens on.
pub const CHANNEL: &str = "chat_gateway_typing";

/// The largest payload sent (a signal is about 140 bytes; PostgreSQL refuses 8000 and more).
pub const MAX_PAYLOAD: usize = 1024;

/// Notifications read from the connection and not yet handed to the link.
const NOTIFICATIONS_QUEUE: usize = 256;

/// How to hold the relay's connection.
#[derive(Clone)]
pub struct RelayConfig {
    pub pg: tokio_postgres::Config,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Why one connection of the relay ended.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connect timed out")]
    Timeout,
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("connection closed")]
    Closed,
}

/// Runs the relay until `stop`: one connection at a time, made again after a loss.
pub async fn run(config: RelayConfig, mut link: RelayLink, stop: CancellationToken) {
    let mut delays = backoff(&config);
    while !stop.is_cancelled() {
        match serve(&config, &mut link, &stop).await {
            Ok(()) => return,
            Err((e, was_listening)) => {
                if was_listening {
                    delays = backoff(&config);
                }
                let delay = delays.next().unwrap_or(config.backoff_max);
                tracing::warn!(channel = CHANNEL, error = %e, retry_in_ms = delay.as_millis() as u64, "typing relay (LISTEN/NOTIFY) lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

fn backoff(config: &RelayConfig) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.backoff_min)
        .with_max_delay(config.backoff_max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// One connection: LISTEN, then notify and receive until it is lost (Err, with whether it had
/// been listening) or the gateway stops (Ok).
async fn serve(config: &RelayConfig, link: &mut RelayLink, stop: &CancellationToken) -> Result<(), (RelayError, bool)> {
    let connecting = tokio::time::timeout(config.connect_timeout, config.pg.connect(NoTls));
    let (client, mut connection) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = connecting => match c {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err((RelayError::Connect(e.to_string()), false)),
            Err(_) => return Err((RelayError::Timeout, false)),
        },
    };
    let (notes_tx, mut notes) = mpsc::channel::<String>(NOTIFICATIONS_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let drops = dropped.clone();
    // The connection's driver: every message it reads; notifications go to `notes`. It never
    // waits for them to be read (it also carries the answers to `pg_notify`): a full queue drops
    // the notification, counted with the link's other drops.
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                    if notes_tx.try_send(n.payload().to_string()).is_err() {
                        drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "typing relay connection ended");
                    return;
                }
            }
        }
    });
    let result = listen(&client, link, &mut notes, &dropped, stop).await;
    driver.abort();
    result
}

async fn listen(
    client: &tokio_postgres::Client,
    link: &mut RelayLink,
    notes: &mut mpsc::Receiver<String>,
    dropped: &AtomicU64,
    stop: &CancellationToken,
) -> Result<(), (RelayError, bool)> {
    client.batch_execute(&format!("listen {CHANNEL}")).await.map_err(|e| (RelayError::Db(e), false))?;
    tracing::info!(channel = CHANNEL, "typing relay listening");
    let lost = |e: RelayError| (e, true);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            note = notes.recv() => match note {
                Some(payload) => {
                    link.inbound_dropped(dropped.swap(0, Ordering::Relaxed));
                    link.received(Signal::from_text(&payload));
                }
                None => return Err(lost(RelayError::Closed)),
            },
            signal = link.next_outbound() => {
                let Some(signal) = signal else { return Ok(()) };
                let payload = signal.to_value().to_string();
                if payload.len() <= MAX_PAYLOAD {
                    client.execute("select pg_notify($1, $2)", &[&CHANNEL, &payload]).await.map_err(|e| lost(e.into()))?;
                    link.sent();
                }
            }
        }
    }
}
