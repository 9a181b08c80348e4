//! The live resume cursor stamped on every `new_message` frame.
//!
//! Safety argument: the database's sync horizon H, read together with the database's clock t, is
//! a time such that every transaction that started before H had ended by t. Changes reach the
//! router in commit order; once it has processed a change committed after t, every message with
//! `created_at < H` has reached the router, so it is either fanned out or still waiting. The
//! stamped cursor is therefore `min(H, oldest waiting created_at)`, it only moves forward, and a
//! loss (upstream down, a gap to fill, a bound hit) discards any candidate read before it.
//!
//! Owns the candidate and the periodic horizon read (a tracked task; the router never awaits it).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::store::{Store, SyncPoint};

/// A horizon read, tagged with the generation it was requested in.
pub struct Reading {
    generation: u64,
    point: Option<SyncPoint>,
}

pub struct Cursor {
    store: Store,
    tasks: TaskTracker,
    interval: Duration,
    tx: mpsc::Sender<Reading>,
    rx: mpsc::Receiver<Reading>,
    current: DateTime<Utc>,
    candidate: Option<SyncPoint>,
    generation: u64,
    requested: bool,
    last_request: Option<Instant>,
    commits_since_request: bool,
}

impl Cursor {
    pub fn new(store: Store, tasks: TaskTracker, interval: Duration, start: DateTime<Utc>) -> Cursor {
        let (tx, rx) = mpsc::channel(1);
        Cursor {
            store,
            tasks,
            interval,
            tx,
            rx,
            current: start,
            candidate: None,
            generation: 0,
            requested: false,
            last_request: None,
            commits_since_request: false,
        }
    }

    /// The next horizon reading (pending forever when none is on its way).
    pub async fn next_point(&mut self) -> Option<Reading> {
        self.rx.recv().await
    }

    /// Takes a reading as the candidate if it is still valid and the router is steady.
    pub fn offer(&mut self, reading: Reading, steady: bool) {
        if reading.generation == self.generation {
            self.requested = false;
            if steady {
                self.candidate = reading.point.filter(|p| p.horizon > self.current);
            }
        }
    }

    /// Reads the horizon again if changes came since the last reading and none is pending.
    pub fn request_if_due(&mut self) {
        if self.requested || self.candidate.is_some() || !self.commits_since_request {
            return;
        }
        if self.last_request.is_some_and(|at| at.elapsed() < self.interval) {
            return;
        }
        self.requested = true;
        self.commits_since_request = false;
        self.last_request = Some(Instant::now());
        let (store, tx, generation) = (self.store.clone(), self.tx.clone(), self.generation);
        self.tasks.spawn(async move {
            let point = match store.sync_point().await {
                Ok(point) => Some(point),
                Err(e) => {
                    tracing::debug!(error = %e, "sync horizon read failed");
                    None
                }
            };
            let _ = tx.send(Reading { generation, point }).await;
        });
    }

    /// A change committed at `committed` is being processed (all earlier ones were).
    pub fn on_commit(&mut self, committed: DateTime<Utc>) {
        self.commits_since_request = true;
        if let Some(candidate) = self.candidate {
            if committed > candidate.db_now {
                self.current = self.current.max(candidate.horizon);
                self.candidate = None;
            }
        }
    }

    /// Discards the candidate and any reading in flight (a loss happened).
    pub fn invalidate(&mut self) {
        self.candidate = None;
        self.generation += 1;
        self.requested = false;
    }

    /// The cursor to stamp, given the oldest message still waiting.
    pub fn stamped(&self, oldest_waiting: Option<DateTime<Utc>>) -> DateTime<Utc> {
        oldest_waiting.map_or(self.current, |w| w.min(self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as Span;

    fn cursor(start: DateTime<Utc>) -> Cursor {
        let store = Store::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/rest/v1".into(),
            "a".into(),
            "s".into(),
            Duration::from_secs(1),
        );
        Cursor::new(store, TaskTracker::new(), Duration::from_secs(1), start)
    }

    #[test]
    fn advances_only_after_a_later_commit_and_never_past_waiting_messages() {
        let t0 = Utc::now();
        let mut c = cursor(t0);
        let point = SyncPoint { horizon: t0 + Span::seconds(10), db_now: t0 + Span::seconds(11) };
        c.offer(Reading { generation: 0, point: Some(point) }, true);
        c.on_commit(t0 + Span::seconds(11));
        assert_eq!(c.stamped(None), t0, "a change committed at t proves nothing");
        c.on_commit(t0 + Span::seconds(12));
        assert_eq!(c.stamped(None), t0 + Span::seconds(10));
        assert_eq!(c.stamped(Some(t0 + Span::seconds(3))), t0 + Span::seconds(3));
    }

    #[test]
    fn a_loss_discards_readings_taken_before_it() {
        let t0 = Utc::now();
        let mut c = cursor(t0);
        let point = SyncPoint { horizon: t0 + Span::seconds(10), db_now: t0 + Span::seconds(11) };
        c.invalidate();
        c.offer(Reading { generation: 0, point: Some(point) }, true);
        c.on_commit(t0 + Span::seconds(12));
        assert_eq!(c.stamped(None), t0);
    }
}
