//! The PostgreSQL backend of the feed: logical decoding (`pgoutput`) of the `supabase_realtime`
//! publication through a DURABLE replication slot, turned into the feed's typed [`UpstreamEvent`]s
//! straight from the decoded rows ([`changes`]), into the same channel the Realtime backend
//! sends to, so the router does not know which it reads.
//!
//! How it reads: on one dedicated connection (a login role with REPLICATION), it creates the slot
//! if missing, then polls `pg_logical_slot_peek_binary_changes` up to the WAL flush position read
//! just before (peek never consumes). Whole transactions come in commit order; each one's events
//! are followed by [`UpstreamEvent::Checkpoint`] with the end of its commit record. When a poll
//! reached that flush position, a checkpoint at it follows too, so unrelated WAL never stays
//! pinned. The router raises the shared [`Watermark`] to a checkpoint only once everything before
//! it was fanned out; this module then moves the slot there with `pg_replication_slot_advance`
//! (at the next poll, and once more when stopping). A restart therefore resumes exactly after the
//! last transaction delivered: the slot is the source of truth across restarts, the router's
//! dedup within a process. A lost connection is one `Down`, then reconnects with backoff and
//! jitter; peeking again from the slot re-reads what was not confirmed (the router drops repeats).
//!
//! Owns the slot's lifecycle (create if missing, recreate if PostgreSQL invalidated it) and the
//! lag gauge. Never decides who receives what, never writes to the project's tables, never logs
//! the connection string.

pub mod changes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgoutput::{format_lsn, parse_lsn, Decoder};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::feed::supervise::{self, Attempt, Backoff, Ended};
use crate::feed::{Lost, UpstreamEvent, Watermark};

/// The publication the feed decodes (the one Supabase Realtime reads, and the migrations fill).
pub const PUBLICATION: &str = "supabase_realtime";

/// How to run the feed.
#[derive(Clone)]
pub struct FeedConfig {
    pub pg: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    /// Pause between polls when the last one found nothing more.
    pub poll: Duration,
    /// Most rows (pgoutput messages) one poll reads; whole transactions are never split.
    pub batch: i32,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// The slot's lag in bytes of WAL (`pg_current_wal_lsn() - confirmed_flush_lsn`), refreshed by
/// the feed about once a second; -1 until the first reading.
#[derive(Debug)]
pub struct SlotLag(AtomicI64);

impl Default for SlotLag {
    fn default() -> SlotLag {
        SlotLag(AtomicI64::new(-1))
    }
}

impl SlotLag {
    /// Bytes of WAL the server keeps for this gateway; None before the first reading.
    pub fn bytes(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v >= 0)
    }
}

/// What the feed shares with the rest of the gateway.
pub struct FeedHandles {
    pub watermark: Arc<Watermark>,
    pub lag: Arc<SlotLag>,
}

fn lost(what: &str, e: impl std::fmt::Display) -> Lost {
    Lost::Database(format!("{what}: {e}"))
}

/// The reconnect loop ([`supervise::supervise`]): one [`serve`] per connection, one `Down` per
/// loss.
pub async fn run(
    config: FeedConfig,
    events: mpsc::Sender<UpstreamEvent>,
    handles: FeedHandles,
    stop: CancellationToken,
) {
    let state = State { generation: 0, sent_upto: 0, advanced: 0, decoder: Decoder::default() };
    let mut feed = Feed { config: &config, events: &events, handles: &handles, stop: &stop, state };
    let backoff = Backoff { min: config.backoff_min, max: config.backoff_max };
    supervise::supervise(&mut feed, backoff, &events, &stop).await;
}

/// The slot's change feed as [`Attempt`]s: one [`serve`] each, [`State`] kept across them.
struct Feed<'a> {
    config: &'a FeedConfig,
    events: &'a mpsc::Sender<UpstreamEvent>,
    handles: &'a FeedHandles,
    stop: &'a CancellationToken,
    state: State,
}

impl Attempt for Feed<'_> {
    fn attempt(&mut self) -> impl std::future::Future<Output = Ended> + Send {
        serve(self.config, self.events, self.handles, self.stop, &mut self.state)
    }

    fn log_lost(&self, reason: &Lost, retry_in: Duration) {
        tracing::warn!(slot = %self.config.slot, reason = %reason, retry_in_ms = retry_in.as_millis() as u64, "PostgreSQL change feed lost");
    }
}

/// What survives a reconnect.
struct State {
    generation: u64,
    /// Everything up to here was sent to the router (in this process).
    sent_upto: u64,
    /// The slot was advanced to here.
    advanced: u64,
    decoder: Decoder,
}

async fn serve(
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    stop: &CancellationToken,
    state: &mut State,
) -> Ended {
    let connecting = tokio::time::timeout(config.connect_timeout, config.pg.connect(NoTls));
    let (client, connection) = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        c = connecting => match c {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Ended::Lost { lost: lost("cannot connect", e), was_live: false },
            Err(_) => return Ended::Lost { lost: Lost::Database("connect timed out".into()), was_live: false },
        },
    };
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "change feed connection ended");
        }
    });
    let _abort = AbortOnDrop(driver);
    let types = match prepare(&client, config).await {
        Ok(types) => types,
        Err(e) => return Ended::Lost { lost: e, was_live: false },
    };
    state.generation += 1;
    if events.send(UpstreamEvent::Live { generation: state.generation }).await.is_err() {
        return Ended::Stopped;
    }
    tracing::info!(slot = %config.slot, generation = state.generation, "PostgreSQL change feed live");
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

/// Reads how many WAL bytes the slot is behind into the lag gauge (-1 when the slot is missing).
async fn read_lag(client: &tokio_postgres::Client, config: &FeedConfig, handles: &FeedHandles) -> Result<(), Lost> {
    let row = client
        .query_opt(
            "select (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 from pg_replication_slots where slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(|e| lost("reading the slot lag", e))?;
    let bytes = row.and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten()).unwrap_or(-1);
    handles.lag.0.store(bytes, Ordering::Relaxed);
    Ok(())
}

/// Checks the slot (creating or recreating it) and loads the type names.
async fn prepare(client: &tokio_postgres::Client, config: &FeedConfig) -> Result<HashMap<u32, String>, Lost> {
    let row = client
        .query_opt(
            "select plugin, database = current_database(), coalesce(wal_status, '') \
             from pg_replication_slots where slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(|e| lost("reading the replication slot", e))?;
    let create = match row {
        None => true,
        Some(row) => {
            let plugin: Option<String> = row.try_get(0).map_err(|e| lost("slot", e))?;
            let here: Option<bool> = row.try_get(1).map_err(|e| lost("slot", e))?;
            let status: String = row.try_get(2).map_err(|e| lost("slot", e))?;
            if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
                return Err(Lost::Database(format!(
                    "slot {} exists but is not a pgoutput slot of this database; choose another SLOT_NAME",
                    config.slot
                )));
            }
            if status == "lost" {
                tracing::error!(slot = %config.slot, "the replication slot was invalidated (max_slot_wal_keep_size): \
                    recreating it; changes from while it was lost are recovered only within CATCHUP_MARGIN_SECS");
                client
                    .execute("select pg_drop_replication_slot($1)", &[&config.slot])
                    .await
                    .map_err(|e| lost("dropping the invalidated slot", e))?;
                true
            } else {
                false
            }
        }
    };
    if create {
        client
            .execute("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&config.slot])
            .await
            .map_err(|e| lost("creating the replication slot (does the role have REPLICATION?)", e))?;
        tracing::info!(slot = %config.slot, "created the durable replication slot");
    }
    let rows = client
        .query("select oid::int8, typname::text from pg_type", &[])
        .await
        .map_err(|e| lost("reading type names", e))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.try_get::<_, i64>(0).ok()? as u32, r.try_get::<_, String>(1).ok()?)))
        .collect())
}

/// Moves the slot to what the router confirmed, when that moved.
async fn advance(
    client: &tokio_postgres::Client,
    config: &FeedConfig,
    handles: &FeedHandles,
    state: &mut State,
) -> Result<(), Lost> {
    let confirmed = handles.watermark.get();
    if confirmed <= state.advanced {
        return Ok(());
    }
    client
        .execute("select pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&config.slot, &format_lsn(confirmed)])
        .await
        .map_err(|e| lost("advancing the replication slot", e))?;
    state.advanced = confirmed;
    Ok(())
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
        let transaction = match state.decoder.feed(data, types) {
            Ok(Some(transaction)) => transaction,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "undecodable pgoutput message; filling the gap from the database");
                let event = UpstreamEvent::Unreadable { table: "?".into(), reason: e.to_string(), committed: None };
                if events.send(event).await.is_err() {
                    return Ok(Polled::RouterGone);
                }
                continue;
            }
        };
        if transaction.end_lsn <= state.sent_upto {
            continue; // sent before; the router has not confirmed it yet
        }
        for event in changes::events(&transaction) {
            if events.send(event).await.is_err() {
                return Ok(Polled::RouterGone);
            }
        }
        state.sent_upto = transaction.end_lsn;
        if events.send(UpstreamEvent::Checkpoint { position: transaction.end_lsn }).await.is_err() {
            return Ok(Polled::RouterGone);
        }
    }
    if full {
        return Ok(Polled::More);
    }
    if flush > state.sent_upto {
        state.sent_upto = flush;
        if events.send(UpstreamEvent::Checkpoint { position: flush }).await.is_err() {
            return Ok(Polled::RouterGone);
        }
    }
    Ok(Polled::Reached)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
