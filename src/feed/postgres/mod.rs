//! The PostgreSQL backend of the feed: logical decoding (`pgoutput`) of the `supabase_realtime`
//! publication through a DURABLE replication slot, turned into the feed's typed [`UpstreamEvent`]s
//! straight from the decoded rows ([`changes`]), into the same channel the Realtime backend
//! sends to, so the router does not know which it reads.
//!
//! How it reads (`SLOT_READ`): by default [`stream`]s the slot with `START_REPLICATION` over a
//! replication connection (changes arrive as they are committed, no polling); where the server
//! or a pooler refuses replication connections, [`poll`]s it with
//! `pg_logical_slot_peek_binary_changes` on an ordinary connection instead (chosen by
//! configuration, or on its own after a clear refusal, with a warning). Both use one ordinary
//! connection (a login role with REPLICATION) to create the slot if missing and read the lag.
//! Whole transactions come in commit order; each one's events are followed by
//! [`UpstreamEvent::Checkpoint`] with the end of its commit record, and a checkpoint also follows
//! when the server reports a WAL position with no transaction open, so unrelated WAL never stays
//! pinned. The router raises the shared [`Watermark`] to a checkpoint only once everything
//! before it was fanned out; only then is the slot confirmed there (stream: the flush position
//! of the standby status updates; poll: `pg_replication_slot_advance`), and once more when
//! stopping. A restart therefore resumes exactly after the last transaction delivered: the slot
//! is the source of truth across restarts, the router's dedup within a process. A lost
//! connection is one `Down`, then reconnects with backoff and jitter; reading again from the
//! slot re-sends what was not confirmed, and transactions already sent in this process are
//! skipped here (the router drops any other repeat).
//!
//! Owns the slot's lifecycle (create if missing, recreate if PostgreSQL invalidated it) and the
//! lag gauge. Never decides who receives what, never writes to the project's tables, never logs
//! the connection string.

pub mod changes;
mod poll;
pub mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgoutput::{format_lsn, Decoder, Transaction};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::feed::supervise::{self, Attempt, Backoff, Ended};
use crate::feed::{Lost, UpstreamEvent, Watermark};
use crate::pg::SlotRead;

/// The publication the feed decodes (the one Supabase Realtime reads, and the migrations fill).
pub const PUBLICATION: &str = "supabase_realtime";

/// How to run the feed.
#[derive(Clone)]
pub struct FeedConfig {
    pub pg: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    /// Streaming (the default) or peek polling.
    pub read: SlotRead,
    /// Polling: pause between polls when the last one found nothing more.
    pub poll: Duration,
    /// Polling: most rows (pgoutput messages) one poll reads; whole transactions are never split.
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

/// The reconnect loop ([`supervise::supervise`]): one attempt per connection, one `Down` per
/// loss.
pub async fn run(
    config: FeedConfig,
    events: mpsc::Sender<UpstreamEvent>,
    handles: FeedHandles,
    stop: CancellationToken,
) {
    let state = State { read: config.read, generation: 0, sent_upto: 0, advanced: 0, decoder: Decoder::default() };
    let mut feed = Feed { config: &config, events: &events, handles: &handles, stop: &stop, state };
    let backoff = Backoff { min: config.backoff_min, max: config.backoff_max };
    supervise::supervise(&mut feed, backoff, &events, &stop).await;
}

/// The slot's change feed as [`Attempt`]s: one [`stream::serve`] or [`poll::serve`] each,
/// [`State`] kept across them.
struct Feed<'a> {
    config: &'a FeedConfig,
    events: &'a mpsc::Sender<UpstreamEvent>,
    handles: &'a FeedHandles,
    stop: &'a CancellationToken,
    state: State,
}

impl Attempt for Feed<'_> {
    fn attempt(&mut self) -> impl std::future::Future<Output = Ended> + Send {
        attempt(self.config, self.events, self.handles, self.stop, &mut self.state)
    }

    fn log_lost(&self, reason: &Lost, retry_in: Duration) {
        tracing::warn!(slot = %self.config.slot, read = self.state.read.as_str(), reason = %reason, retry_in_ms = retry_in.as_millis() as u64, "PostgreSQL change feed lost");
    }
}

/// One connection in the current way of reading; a stream the server refuses outright switches
/// this process to polling at once.
async fn attempt(
    config: &FeedConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    handles: &FeedHandles,
    stop: &CancellationToken,
    state: &mut State,
) -> Ended {
    if state.read == SlotRead::Stream {
        match stream::serve(config, events, handles, stop, state).await {
            Err(refused) => {
                tracing::warn!(slot = %config.slot, reason = %refused,
                    "the server refuses replication connections: reading the slot by polling from now on \
                     (set SLOT_READ=poll to choose this, or allow replication connections for the role: \
                     a `replication` line in pg_hba.conf, no transaction pooler in between)");
                state.read = SlotRead::Poll;
            }
            Ok(ended) => return ended,
        }
    }
    poll::serve(config, events, handles, stop, state).await
}

/// What survives a reconnect.
struct State {
    read: SlotRead,
    generation: u64,
    /// Everything up to here was sent to the router (in this process).
    sent_upto: u64,
    /// The slot was confirmed up to here.
    advanced: u64,
    decoder: Decoder,
}

/// An ordinary connection (slot lifecycle, lag, polling), its driver aborted when dropped.
async fn connect(
    config: &FeedConfig,
    stop: &CancellationToken,
) -> Result<(tokio_postgres::Client, AbortOnDrop), Ended> {
    let connecting = tokio::time::timeout(config.connect_timeout, config.pg.connect(NoTls));
    let (client, connection) = tokio::select! {
        _ = stop.cancelled() => return Err(Ended::Stopped),
        c = connecting => match c {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(Ended::Lost { lost: lost("cannot connect", e), was_live: false }),
            Err(_) => return Err(Ended::Lost { lost: Lost::Database("connect timed out".into()), was_live: false }),
        },
    };
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "change feed connection ended");
        }
    });
    Ok((client, AbortOnDrop(driver)))
}

/// The router went away (the gateway is stopping).
struct RouterGone;

/// Decodes one pgoutput message; a whole transaction not sent before goes to the router with its
/// checkpoint.
async fn feed_message(
    events: &mpsc::Sender<UpstreamEvent>,
    state: &mut State,
    data: &[u8],
    types: &HashMap<u32, String>,
    client: &tokio_postgres::Client,
) -> Result<(), RouterGone> {
    match state.decoder.feed(data, types) {
        Ok(Some(transaction)) => deliver(events, state, &transaction, client).await,
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "undecodable pgoutput message; filling the gap from the database");
            let event = UpstreamEvent::Unreadable { table: "?".into(), reason: e.to_string(), committed: None };
            events.send(event).await.map_err(|_| RouterGone)
        }
    }
}

async fn deliver(
    events: &mpsc::Sender<UpstreamEvent>,
    state: &mut State,
    transaction: &Transaction,
    client: &tokio_postgres::Client,
) -> Result<(), RouterGone> {
    if transaction.end_lsn <= state.sent_upto {
        return Ok(()); // sent before; the router has not confirmed it yet
    }
    if transaction.changes.iter().any(|c| c.relation.table != "messages") {
        wait_visible(client, transaction.xid).await;
    }
    for event in changes::events(transaction) {
        events.send(event).await.map_err(|_| RouterGone)?;
    }
    checkpoint(events, state, transaction.end_lsn).await
}

/// Whether a transaction (by its 32-bit id) is visible to a snapshot taken now: its full id is
/// the one with those low bits at or below the snapshot's `xmax`.
const VISIBLE_SQL: &str = "select pg_visible_in_snapshot( \
     (m - ((((m & 4294967295) - $1) % 4294967296) + 4294967296) % 4294967296)::text::xid8, s) \
     from (select s, pg_snapshot_xmax(s)::text::bigint as m from pg_current_snapshot() s) q";
/// How long a transaction's events wait at most for it to become visible.
const VISIBLE_WAIT: Duration = Duration::from_secs(1);

/// Holds a transaction's events until other connections can see it. Logical decoding sends a
/// commit once its record is flushed, a moment before the committing backend leaves the
/// process array; a reader that queries the database on an event (a membership refresh, a read
/// receipt's counts, a realtime switch) could otherwise read the state before it. A message
/// carries its whole row and is not held; a transaction touching anything else is checked,
/// which costs one query for each such (rare) transaction. Gives up after [`VISIBLE_WAIT`], or
/// on an error, with a warning: the events then go as they are.
async fn wait_visible(client: &tokio_postgres::Client, xid: u32) {
    let started = std::time::Instant::now();
    loop {
        match client.query_one(VISIBLE_SQL, &[&i64::from(xid)]).await.and_then(|row| row.try_get::<_, bool>(0)) {
            Ok(true) => return,
            Ok(false) if started.elapsed() < VISIBLE_WAIT => tokio::time::sleep(Duration::from_millis(1)).await,
            Ok(false) => {
                tracing::warn!(xid, "a decoded transaction is still not visible after 1 s; sending its changes");
                return;
            }
            Err(e) => {
                tracing::warn!(xid, error = %e, "could not check a decoded transaction's visibility; sending its changes");
                return;
            }
        }
    }
}

/// Everything before `position` was sent: tell the router, once.
async fn checkpoint(events: &mpsc::Sender<UpstreamEvent>, state: &mut State, position: u64) -> Result<(), RouterGone> {
    if position <= state.sent_upto {
        return Ok(());
    }
    state.sent_upto = position;
    events.send(UpstreamEvent::Checkpoint { position }).await.map_err(|_| RouterGone)
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
