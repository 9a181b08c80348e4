//! Read-state pushes (`thread_read`), coalesced per user.
//!
//! Each change of a participant's `last_read_at` needs the user's unread count, one service-role
//! read. Owns the per-user batching that bounds those reads: the first change of a user is read
//! and pushed at once; changes that arrive while that read runs, or within `READ_STATE_COALESCE_SECS`
//! after it, wait in the user's batch (per thread, the newest wins) and go out together after one
//! more read. So at most one unread-count read per user per window, and the last change of a
//! burst is always pushed. The batch map only holds users with a worker running, and every
//! worker is a tracked task that ends on shutdown. Never awaits while holding the map's lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::hub::{Hub, Outgoing};
use crate::metrics::Metrics;
use crate::protocol::ServerMessage;
use crate::store::Store;

/// Per user with a worker running: thread → newest `last_read_at` not yet pushed.
type Batches = HashMap<Uuid, HashMap<Uuid, String>>;

pub struct ReadStates {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    store: Store,
    tasks: TaskTracker,
    stop: CancellationToken,
    window: Duration,
    batches: Arc<Mutex<Batches>>,
}

impl ReadStates {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        store: Store,
        tasks: TaskTracker,
        stop: CancellationToken,
        window: Duration,
    ) -> Self {
        ReadStates { hub, metrics, store, tasks, stop, window, batches: Arc::default() }
    }

    /// `thread_read` to every session of the user, with their unread count after the change.
    pub fn push(&self, thread_id: Uuid, user_id: Uuid, last_read_at: String) {
        if !self.hub.is_online(&user_id) {
            return;
        }
        {
            let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(batch) = batches.get_mut(&user_id) {
                batch.insert(thread_id, last_read_at);
                self.metrics.fairness.read_state_coalesced();
                return;
            }
            batches.insert(user_id, HashMap::from([(thread_id, last_read_at)]));
        }
        let worker = Worker {
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            batches: self.batches.clone(),
            user_id,
            window: self.window,
        };
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = worker.run() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Reads and pushes one user's batches until none is left.
struct Worker {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    store: Store,
    batches: Arc<Mutex<Batches>>,
    user_id: Uuid,
    window: Duration,
}

impl Worker {
    /// The changes waiting, or None (and the user's entry removed) when there are none.
    fn take(&self) -> Option<HashMap<Uuid, String>> {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        match batches.get_mut(&self.user_id) {
            Some(batch) if !batch.is_empty() => Some(std::mem::take(batch)),
            _ => {
                batches.remove(&self.user_id);
                None
            }
        }
    }

    async fn run(self) {
        let _gone = Cleanup { batches: self.batches.clone(), user_id: self.user_id };
        while let Some(batch) = self.take() {
            self.push(batch).await;
            tokio::time::sleep(self.window).await;
        }
    }

    async fn push(&self, batch: HashMap<Uuid, String>) {
        self.metrics.fairness.read_state_read();
        let unread_count = match self.store.unread_count_of(self.user_id).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(user = %self.user_id, error = %e, "unread count for thread_read failed");
                return;
            }
        };
        for (thread_id, last_read_at) in batch {
            let last_read_at = crate::model::normalize_time(&last_read_at).unwrap_or(last_read_at);
            let frame = ServerMessage::ThreadRead { thread_id, last_read_at: &last_read_at, unread_count };
            self.hub.send_to_user(&self.user_id, &Outgoing::notice(frame.to_json()));
            self.metrics.read_state_pushed();
        }
    }
}

/// Removes the user's entry if the worker ends early (shutdown), so the map never keeps it.
struct Cleanup {
    batches: Arc<Mutex<Batches>>,
    user_id: Uuid,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.user_id);
    }
}
