//! Reading the slot over the streaming replication protocol (`SLOT_READ=stream`, the default):
//! `START_REPLICATION SLOT ... LOGICAL 0/0 (proto_version '1', publication_names ...)` on a
//! replication connection (`replication=database`), through the `pgwire-replication` client,
//! which owns the wire protocol (startup, CopyBoth, XLogData, keepalives and their replies,
//! standby status updates). Changes arrive as the server decodes each commit; nothing polls.
//!
//! The position reported to the server (write, flush and apply alike) is the router's
//! [`Watermark`](crate::feed::Watermark): what was fanned out, never merely received, so the slot
//! is confirmed only after fan-out; it starts at the slot's own confirmed position. A keepalive
//! between transactions carries the server's WAL position: a checkpoint there lets unrelated WAL
//! go. Column values stay in text (as the polling path reads them): pgoutput's `binary` option
//! would need a binary decoder per column type for no gain in latency.
//!
//! Owns the replication connection and the translation of its events into pgoutput messages for
//! the parent's decoder. Never writes to the project's tables; never logs the connection string
//! or the password.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    advance, checkpoint, connect, feed_message, lost, prepare, read_lag, FeedConfig, FeedHandles, RouterGone, State,
};
use crate::feed::supervise::Ended;
use crate::feed::{Lost, UpstreamEvent};

/// How often the position fanned out is reported to the server while it moves (and at most how
/// long a confirmation waits); the server's own keepalive requests are answered at once.
const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// A status update when nothing arrived for this long, well inside `wal_sender_timeout`.
const IDLE_WAKEUP: Duration = Duration::from_secs(10);
/// Events the client reads ahead of the decoder.
const READ_AHEAD: usize = 1024;
/// How often the router's watermark is handed to the client.
const WATERMARK_TICK: Duration = Duration::from_millis(50);

/// The server (or a pooler in front of it) refuses replication connections for this role:
/// polling is the way to read the slot here.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(String);

/// One replication connection (and an ordinary one for the slot and the lag), streamed until
/// lost or stopped; `Err` when the server refuses replication connections outright.
pub(super) async fn serve(
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    stop: &CancellationToken,
    state: &mut State,
) -> Result<Ended, Refused> {
    let (client, _driver) = match connect(config, stop).await {
        Ok(pair) => pair,
        Err(ended) => return Ok(ended),
    };
    let types = match prepare(&client, config).await {
        Ok(types) => types,
        Err(e) => return Ok(Ended::Lost { lost: e, was_live: false }),
    };
    let confirmed = match slot_position(&client, config).await {
        Ok(position) => position,
        Err(e) => return Ok(Ended::Lost { lost: e, was_live: false }),
    };
    // What this process fanned out but could not report before the last connection was lost
    // counts as confirmed too.
    state.advanced = confirmed.max(handles.watermark.get());
    let replication = match replication_config(config, state.advanced) {
        Ok(c) => c,
        Err(e) => return Ok(Ended::Lost { lost: e, was_live: false }),
    };
    let mut stream = match start(replication, config.connect_timeout, stop).await? {
        Ok(stream) => stream,
        Err(ended) => return Ok(ended),
    };
    state.generation += 1;
    if events.send(UpstreamEvent::Live { generation: state.generation }).await.is_err() {
        stream.abort();
        return Ok(Ended::Stopped);
    }
    tracing::info!(slot = %config.slot, generation = state.generation, read = "stream", "PostgreSQL change feed live");
    let ended = pump(&mut stream, &client, config, events, handles, stop, state, &types).await;
    if let Ended::Stopped = ended {
        finish(stream, &client, config, events, handles, state).await;
    } else {
        stream.abort();
    }
    Ok(ended)
}

/// Starts the stream; the outer `Err` is a refusal, the inner one any other failure.
async fn start(
    replication: ReplicationConfig,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Result<ReplicationClient, Ended>, Refused> {
    let failed = |lost: Lost| Ok(Err(Ended::Lost { lost, was_live: false }));
    let mut stream = match ReplicationClient::connect(replication).await {
        Ok(stream) => stream,
        Err(e) => return failed(lost("cannot start replication", e)),
    };
    let started = tokio::select! {
        _ = stop.cancelled() => {
            stream.abort();
            return Ok(Err(Ended::Stopped));
        }
        started = tokio::time::timeout(timeout, stream.wait_started()) => started,
    };
    match started {
        Ok(Ok(())) => Ok(Ok(stream)),
        Ok(Err(e)) if refused(&e) => Err(Refused(e.to_string())),
        Ok(Err(e)) => failed(lost("cannot start replication", e)),
        Err(_) => {
            stream.abort();
            failed(Lost::Database("starting replication timed out".into()))
        }
    }
}

/// Reads the stream into the decoder until it is lost or the gateway stops.
#[allow(clippy::too_many_arguments)]
async fn pump(
    stream: &mut ReplicationClient,
    client: &tokio_postgres::Client,
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    stop: &CancellationToken,
    state: &mut State,
    types: &HashMap<u32, String>,
) -> Ended {
    let mut in_transaction = false;
    let mut tick = tokio::time::interval(WATERMARK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_lag = None::<Instant>;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Stopped,
            // Before the stream, so a busy stream never holds the confirmation back.
            _ = tick.tick() => {
                report(stream, handles, state);
                if last_lag.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    last_lag = Some(Instant::now());
                    if let Err(e) = read_lag(client, config, handles).await {
                        return Ended::Lost { lost: e, was_live: true };
                    }
                }
                continue;
            }
            event = stream.recv() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Ended::Lost { lost: Lost::Database("the replication stream ended".into()), was_live: true }
            }
            Err(e) => return Ended::Lost { lost: lost("replication stream", e), was_live: true },
        };
        let sent = match event {
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                in_transaction = true;
                let begin = encode_begin(final_lsn.as_u64(), commit_time_micros, xid);
                feed_message(events, state, &begin, types, client).await
            }
            ReplicationEvent::XLogData { data, .. } => feed_message(events, state, &data, types, client).await,
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                in_transaction = false;
                let commit = encode_commit(lsn.as_u64(), end_lsn.as_u64(), commit_time_micros);
                feed_message(events, state, &commit, types, client).await
            }
            ReplicationEvent::KeepAlive { wal_end, .. } if !in_transaction => {
                checkpoint(events, state, wal_end.as_u64()).await
            }
            _ => Ok(()),
        };
        if let Err(RouterGone) = sent {
            return Ended::Stopped;
        }
    }
}

/// Hands what the router fanned out to the client, which reports it to the server.
fn report(stream: &ReplicationClient, handles: &FeedHandles, state: &mut State) {
    let fanned_out = handles.watermark.get();
    if fanned_out > state.advanced {
        stream.update_applied_lsn(Lsn::from_u64(fanned_out));
        state.advanced = fanned_out;
    }
}

/// Stopping: lets the router confirm what it fanned out (it drops its receiver when done),
/// reports that, then ends the stream; if the report was not seen to go out, moves the slot
/// there once the server released it.
async fn finish(
    mut stream: ReplicationClient,
    client: &tokio_postgres::Client,
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    state: &mut State,
) {
    let _ = tokio::time::timeout(Duration::from_secs(2), events.closed()).await;
    report(&stream, handles, state);
    let target = state.advanced;
    let metrics = stream.metrics();
    let reported = tokio::time::timeout(STATUS_INTERVAL * 4, async {
        while metrics.last_applied_lsn().as_u64() < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    if reported {
        return;
    }
    // The walsender lets the slot go a moment after the stream ends.
    state.advanced = metrics.last_applied_lsn().as_u64();
    for _ in 0..20 {
        if advance(client, config, handles, state).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(slot = %config.slot, "could not confirm the last fanned-out position on stopping; \
        the next start re-reads from the previous one (the router drops what it already delivered)");
}

/// The slot's confirmed position (where the server resumes streaming).
async fn slot_position(client: &tokio_postgres::Client, config: &FeedConfig) -> Result<u64, Lost> {
    let row = client
        .query_one(
            "select coalesce(confirmed_flush_lsn::text, '0/0') from pg_replication_slots where slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(|e| lost("reading the slot's position", e))?;
    let text: String = row.try_get(0).map_err(|e| lost("reading the slot's position", e))?;
    Ok(pgoutput::parse_lsn(&text).unwrap_or(0))
}

/// The replication connection's settings from the gateway's connection settings (same host,
/// port, role, password, database, options; no TLS, as every connection of this backend).
fn replication_config(config: &FeedConfig, acknowledged: u64) -> Result<ReplicationConfig, Lost> {
    let pg = &config.pg;
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = match pg.get_password() {
        Some(bytes) => String::from_utf8(bytes.to_vec())
            .map_err(|_| Lost::Database("the database password is not UTF-8".into()))?,
        None => String::new(),
    };
    let database = pg.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
    let publication = config.publication.clone();
    let replication = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            ReplicationConfig::new(host.clone(), user, password, database, config.slot.clone(), publication)
                .with_port(port)
        }
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            config.slot.clone(),
            publication,
        ),
        None => return Err(Lost::Database("DATABASE_URL names no host".into())),
    };
    let mut replication = replication
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::ZERO)
        .with_ack_lsn(Lsn::from_u64(acknowledged))
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(IDLE_WAKEUP)
        .with_buffer_size(READ_AHEAD)
        .with_application_name(format!("realtime-gateway feed {}", config.slot));
    if let Some(options) = pg.get_options() {
        replication = replication.with_options(options);
    }
    Ok(replication)
}

/// A refusal that retrying will not change: no `replication` line in pg_hba.conf for the role
/// (28000), a role the server does not let start a walsender (42501), or a pooler that does
/// not pass the `replication` startup parameter on.
fn refused(e: &PgWireError) -> bool {
    let text = e.to_string();
    let hba = text.contains("SQLSTATE 28000") && text.contains("replication");
    hba || text.contains("SQLSTATE 42501") || text.contains("unsupported startup parameter")
}

/// The pgoutput Begin message the client parsed into [`ReplicationEvent::Begin`].
fn encode_begin(final_lsn: u64, commit_time_micros: i64, xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(21);
    out.push(b'B');
    out.extend_from_slice(&final_lsn.to_be_bytes());
    out.extend_from_slice(&commit_time_micros.to_be_bytes());
    out.extend_from_slice(&xid.to_be_bytes());
    out
}

/// The pgoutput Commit message the client parsed into [`ReplicationEvent::Commit`] (its flags
/// are always 0).
fn encode_commit(commit_lsn: u64, end_lsn: u64, commit_time_micros: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    out.push(b'C');
    out.push(0);
    out.extend_from_slice(&commit_lsn.to_be_bytes());
    out.extend_from_slice(&end_lsn.to_be_bytes());
    out.extend_from_slice(&commit_time_micros.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_and_commit_are_rebuilt_byte_for_byte_for_the_decoder() {
        let types = HashMap::new();
        let mut decoder = pgoutput::Decoder::default();
        let begin = encode_begin(0x1_0000_0010, 1_000_000, 7);
        assert_eq!(begin.len(), 21);
        assert_eq!(decoder.feed(&begin, &types), Ok(None));
        let commit = encode_commit(0x1_0000_0010, 0x1_0000_0040, 1_000_000);
        assert_eq!(commit.len(), 26);
        let transaction = decoder.feed(&commit, &types).ok().flatten().expect("a transaction");
        assert_eq!((transaction.commit_lsn, transaction.end_lsn), (0x1_0000_0010, 0x1_0000_0040));
        // 1 s after 2000-01-01 (PostgreSQL's epoch).
        assert_eq!(transaction.committed.timestamp(), 946_684_801);
        assert!(transaction.changes.is_empty());
    }

    #[test]
    fn only_clear_refusals_switch_to_polling() {
        let server = |m: &str| PgWireError::Server(m.to_string());
        assert!(refused(&server(
            "no pg_hba.conf entry for replication connection from host \"10.0.0.1\", user \"chat_gateway\" (SQLSTATE 28000)"
        )));
        assert!(refused(&server("must be superuser or replication role to start walsender (SQLSTATE 42501)")));
        assert!(refused(&server("unsupported startup parameter: replication (SQLSTATE 08P01)")));
        // Passing trouble: retried on the stream.
        assert!(!refused(&server("password authentication failed for user \"chat_gateway\" (SQLSTATE 28P01)")));
        assert!(!refused(&server("number of requested standby connections exceeds max_wal_senders (SQLSTATE 53300)")));
        assert!(!refused(&server("replication slot \"gw\" is active for PID 42 (SQLSTATE 55006)")));
        assert!(!refused(&PgWireError::Io(std::sync::Arc::new(std::io::Error::other("reset")))));
    }

    #[test]
    fn the_replication_connection_keeps_host_role_database_and_options() {
        let mut pg: tokio_postgres::Config = "postgres://chat_gateway:pw@db.example:6543/app".parse().expect("url");
        pg.options("-c TimeZone=UTC");
        let config = FeedConfig {
            pg,
            slot: "gw_1".into(),
            publication: "supabase_realtime".into(),
            read: crate::pg::SlotRead::Stream,
            poll: Duration::from_millis(20),
            batch: 10,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        };
        let r = replication_config(&config, 0x20).expect("config");
        assert_eq!(
            (r.host.as_str(), r.port, r.user.as_str(), r.password.as_str()),
            ("db.example", 6543, "chat_gateway", "pw")
        );
        assert_eq!((r.database.as_str(), r.slot.as_str()), ("app", "gw_1"));
        assert_eq!(r.options.as_deref(), Some("-c TimeZone=UTC"));
        assert_eq!((r.start_lsn, r.ack_lsn), (Lsn::ZERO, Some(Lsn::from_u64(0x20))));
        assert!(!r.tls.mode.requires_tls());
    }
}
