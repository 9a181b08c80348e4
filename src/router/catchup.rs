//! Catch-up proofs for resuming sessions: `sync_complete` means caught up.
//!
//! A session that replayed from the ring must not say `sync_complete` while a message committed
//! before its upgrade is still on its way to the router (one large transaction committed just
//! before the phone came back arrives at the router after the replay ran). It takes a ticket
//! ([`CatchUp::ask`]) once it is registered and its replay was written, and sends `sync_complete`
//! once the router has proven that ticket.
//!
//! The proof ([`Prober`], run by the router): a probe started after the ticket was handed out
//! reads (service role, keyset pages) the ids of every message with `created_at` at or above the
//! live cursor, from a database snapshot taken after the ticket, hence after the session was
//! registered. Every message below the cursor was fanned out (see [`super::cursor`]); once every
//! id the probe read has been fanned out too, every message committed before the session
//! registered has been queued to it, or was not the user's. One probe answers every ticket handed
//! out before it started, so a reconnect storm costs a few reads, not one per session.
//!
//! Owns the tickets, the probe's read (a tracked task; the router never awaits it) and the ids it
//! still waits for. Never decides who receives a message, and never holds a session back for
//! longer than its timeout (the session's side, see `session::resume`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::store::{keyset_after, Store, StoreError};

/// Rows per probe page.
const PAGE: u32 = 1000;
/// Most pages one probe reads; more means the cursor is far behind (a long-open transaction, a
/// gap fill), and sessions fall back to their timeout instead of the router reading without end.
const MAX_PAGES: usize = 20;
/// Before a failed probe is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// Before a probe that found too many messages is tried again: reading again at once would find
/// as many until the live cursor moves.
const RETRY_TOO_MANY: Duration = Duration::from_secs(5);
/// A probe whose ids have not all been fanned out after this long is read again (an id that will
/// never come, such as a message deleted before a gap fill read it, cannot hold sessions back).
const STALE: Duration = Duration::from_secs(2);

/// What sessions and the router share.
pub struct CatchUp {
    asked: AtomicU64,
    wake: Notify,
    proven: watch::Sender<u64>,
    timeout: Duration,
}

impl CatchUp {
    /// `timeout`: the longest a session holds `sync_complete` back (`RESUME_CATCHUP_TIMEOUT_SECS`).
    pub fn new(timeout: Duration) -> Arc<CatchUp> {
        Arc::new(CatchUp { asked: AtomicU64::new(0), wake: Notify::new(), proven: watch::Sender::new(0), timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A ticket for a session that is registered and has written its replay.
    pub fn ask(&self) -> u64 {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        ticket
    }

    /// Resolves once `ticket` is proven.
    pub async fn proven(&self, ticket: u64) {
        let mut rx = self.proven.subscribe();
        // The sender lives as long as `self`: wait_for only fails if it were dropped.
        let _ = rx.wait_for(|p| *p >= ticket).await;
    }

    /// Resolves when a session asked for a ticket (the router then calls [`Prober::step`]).
    pub async fn asked(&self) {
        self.wake.notified().await;
    }

    fn wanted(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }

    fn prove(&self, covers: u64) {
        self.proven.send_if_modified(|p| {
            let raise = covers > *p;
            if raise {
                *p = covers;
            }
            raise
        });
    }

    fn proven_now(&self) -> u64 {
        *self.proven.borrow()
    }
}

/// Why a probe read failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("more than {0} messages at or above the live cursor")]
    TooMany(usize),
}

/// A finished read: the tickets it answers and the messages at or above the cursor.
pub struct Read {
    covers: u64,
    result: Result<Vec<(Uuid, DateTime<Utc>)>, ProbeError>,
}

enum State {
    Idle { retry_at: Option<Instant> },
    Reading,
    Waiting { covers: u64, ids: HashSet<Uuid>, since: Instant },
}

/// The router's side: at most one probe at a time.
pub struct Prober {
    shared: Arc<CatchUp>,
    store: Store,
    tasks: TaskTracker,
    stop: CancellationToken,
    tx: mpsc::Sender<Read>,
    rx: mpsc::Receiver<Read>,
    state: State,
}

impl Prober {
    pub fn new(shared: Arc<CatchUp>, store: Store, tasks: TaskTracker, stop: CancellationToken) -> Prober {
        let (tx, rx) = mpsc::channel(1);
        Prober { shared, store, tasks, stop, tx, rx, state: State::Idle { retry_at: None } }
    }

    /// The next finished read (pending forever when none is on its way).
    pub async fn next_read(&mut self) -> Option<Read> {
        self.rx.recv().await
    }

    /// When the router must wake up to retry (a failed read, or ids that do not come).
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Idle { retry_at } => *retry_at,
            State::Reading => None,
            State::Waiting { since, .. } => Some(*since + STALE),
        }
    }

    /// Starts a probe from `cursor` if a ticket waits and none runs; reads again a probe whose ids
    /// did not all come. Only while the upstream is live (nothing can be proven otherwise).
    pub fn step(&mut self, live: bool, cursor: DateTime<Utc>) {
        let pending = self.shared.wanted() > self.shared.proven_now();
        let now = Instant::now();
        let due = match &self.state {
            State::Idle { retry_at } => retry_at.is_none_or(|at| now >= at),
            State::Reading => false,
            State::Waiting { since, .. } => now >= *since + STALE,
        };
        if !pending || !due || !live {
            return;
        }
        let covers = self.shared.wanted();
        let (store, tx, stop) = (self.store.clone(), self.tx.clone(), self.stop.clone());
        self.state = State::Reading;
        self.tasks.spawn(async move {
            let result = tokio::select! {
                result = read_ids(&store, cursor) => result,
                _ = stop.cancelled() => return,
            };
            let _ = tx.send(Read { covers, result }).await;
        });
    }

    /// A read finished: the ids not yet fanned out (per `delivered`) are waited for.
    pub fn on_read(&mut self, read: Read, delivered: impl Fn(&Uuid, DateTime<Utc>) -> bool) {
        match read.result {
            Ok(rows) => {
                let ids: HashSet<Uuid> =
                    rows.into_iter().filter(|(id, t)| !delivered(id, *t)).map(|(id, _)| id).collect();
                self.state = State::Waiting { covers: read.covers, ids, since: Instant::now() };
                self.settle();
            }
            Err(e) => {
                let delay = if matches!(e, ProbeError::TooMany(_)) { RETRY_TOO_MANY } else { RETRY };
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "catch-up probe failed; resuming sessions wait for it or their timeout");
                self.state = State::Idle { retry_at: Some(Instant::now() + delay) };
            }
        }
    }

    /// A message was fanned out.
    pub fn on_delivered(&mut self, id: &Uuid) {
        if let State::Waiting { ids, .. } = &mut self.state {
            if ids.remove(id) {
                self.settle();
            }
        }
    }

    fn settle(&mut self) {
        if let State::Waiting { covers, ids, .. } = &self.state {
            if ids.is_empty() {
                self.shared.prove(*covers);
                self.state = State::Idle { retry_at: None };
            }
        }
    }
}

/// Ids and `created_at` of every message with `created_at >= since`, oldest first.
async fn read_ids(store: &Store, since: DateTime<Utc>) -> Result<Vec<(Uuid, DateTime<Utc>)>, ProbeError> {
    let mut after = None;
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let rows = store.messages_page(since, after, PAGE).await?;
        let full = rows.len() >= PAGE as usize;
        after = keyset_after(&rows).or(after);
        out.extend(rows.iter().filter_map(|r| r.created().map(|t| (r.id, t))));
        if !full {
            return Ok(out);
        }
    }
    Err(ProbeError::TooMany(MAX_PAGES * PAGE as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober() -> Prober {
        let store = Store::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/rest/v1".into(),
            "a".into(),
            "s".into(),
            Duration::from_secs(1),
        );
        Prober::new(CatchUp::new(Duration::from_secs(5)), store, TaskTracker::new(), CancellationToken::new())
    }

    #[test]
    fn a_ticket_is_proven_once_every_id_the_probe_read_was_fanned_out() {
        let mut p = prober();
        let ticket = p.shared.ask();
        let (done, late_a, late_b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t = Utc::now();
        p.state = State::Reading;
        let read = Read { covers: ticket, result: Ok(vec![(done, t), (late_a, t), (late_b, t)]) };
        p.on_read(read, |id, _| *id == done);
        assert_eq!(p.shared.proven_now(), 0, "two messages are still on their way");
        p.on_delivered(&late_a);
        p.on_delivered(&Uuid::new_v4());
        assert_eq!(p.shared.proven_now(), 0);
        p.on_delivered(&late_b);
        assert_eq!(p.shared.proven_now(), ticket);
        assert!(matches!(p.state, State::Idle { retry_at: None }));
    }

    #[test]
    fn a_failed_read_is_retried_and_proves_nothing() {
        let mut p = prober();
        let ticket = p.shared.ask();
        p.state = State::Reading;
        p.on_read(Read { covers: ticket, result: Err(ProbeError::TooMany(1)) }, |_, _| true);
        assert_eq!(p.shared.proven_now(), 0);
        assert!(p.deadline().is_some_and(|at| at > Instant::now() + RETRY), "a later retry is scheduled");
        // Not live: nothing starts.
        p.state = State::Idle { retry_at: None };
        p.step(false, Utc::now());
        assert!(matches!(p.state, State::Idle { .. }));
    }
}
