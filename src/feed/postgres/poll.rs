//! Reading the slot by polling (`SLOT_READ=poll`, or after the server refused a replication
//! connection): `pg_logical_slot_peek_binary_changes` up to the WAL flush position read just
//! before (peek never consumes), every `SLOT_POLL_SECS` when there was nothing more, on an
//! ordinary connection; the slot is moved to the router's watermark with
//! `pg_replication_slot_advance`. Works through a session pooler and without a `replication`
//! line in pg_hba.conf, at the cost of up to one poll interval per change.
//!
//! Owns the poll loop only; the slot's lifecycle, decoding and checkpoints are the parent's.
//! Never writes to the project's tables.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgoutput::{format_lsn, parse_lsn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{advance, checkpoint, connect, feed_message, lost, prepare, read_lag, FeedConfig, FeedHandles, State};
use crate::feed::supervise::Ended;
use crate::feed::{Lost, UpstreamEvent};

/// One ordinary connection: prepare the slot, then poll it until lost or stopped.
pub(super) async fn serve(
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    stop: &CancellationToken,
    state: &mut State,
) -> Ended {
    let (client, _driver) = match connect(config, stop).await {
        Ok(pair) => pair,
        Err(ended) => return ended,
    };
    let types = match prepare(&client, config).await {
        Ok(types) => types,
        Err(e) => return Ended::Lost { lost: e, was_live: false },
    };
    state.generation += 1;
    if events.send(UpstreamEvent::Live { generation: state.generation }).await.is_err() {
        return Ended::Stopped;
    }
    tracing::info!(slot = %config.slot, generation = state.generation, read = "poll", "PostgreSQL change feed live");
    let mut last_flush = None;
    let mut last_lag = None::<Instant>;
    loop {
        if stop.is_cancelled() {
            // Let the router confirm what it fanned out (it drops its receiver when done), then
            // move the slot there, so a restart starts right after it.
            let _ = tokio::time::timeout(Duration::from_secs(2), events.closed()).await;
            let _ = advance(&client, config, handles, state).await;
            return Ended::Stopped;
        }
        if let Err(e) = advance(&client, config, handles, state).await {
            return Ended::Lost { lost: e, was_live: true };
        }
        if last_lag.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_lag = Some(Instant::now());
            if let Err(e) = read_lag(&client, config, handles).await {
                return Ended::Lost { lost: e, was_live: true };
            }
        }
        let flush = match client.query_one("select pg_current_wal_flush_lsn()::text", &[]).await {
            Ok(row) => row.try_get::<_, String>(0).ok().as_deref().and_then(parse_lsn).unwrap_or(0),
            Err(e) => return Ended::Lost { lost: lost("reading the WAL position", e), was_live: true },
        };
        let mut more = false;
        if last_flush != Some(flush) {
            match poll(&client, config, events, state, flush, &types).await {
                Ok(Polled::Reached) => last_flush = Some(flush),
                Ok(Polled::More) => more = true,
                Ok(Polled::RouterGone) => {
                    let _ = advance(&client, config, handles, state).await;
                    return Ended::Stopped;
                }
                Err(e) => return Ended::Lost { lost: e, was_live: true },
            }
        }
        if !more {
            tokio::select! {
                _ = tokio::time::sleep(config.poll) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

enum Polled {
    /// Everything up to the flush position was read.
    Reached,
    /// The batch was full: read again at once.
    More,
    RouterGone,
}

async fn poll(
    client: &tokio_postgres::Client,
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    state: &mut State,
    flush: u64,
    types: &HashMap<u32, String>,
) -> Result<Polled, Lost> {
    let rows = client
        .query(
            "select data from pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
             'proto_version', '1', 'publication_names', $4)",
            &[&config.slot, &format_lsn(flush), &config.batch, &config.publication],
        )
        .await
        .map_err(|e| lost("reading the replication slot", e))?;
    let full = rows.len() >= config.batch.max(1) as usize;
    for row in &rows {
        let data: &[u8] = row.try_get(0).map_err(|e| lost("reading a change", e))?;
        if feed_message(events, state, data, types, client).await.is_err() {
            return Ok(Polled::RouterGone);
        }
    }
    if full {
        return Ok(Polled::More);
    }
    if checkpoint(events, state, flush).await.is_err() {
        return Ok(Polled::RouterGone);
    }
    Ok(Polled::Reached)
}
