//! History: the ring of recently routed messages and the live resume cursor, shared by the
//! router (which appends under the lock while it fans out) and resuming sessions (which register
//! under the same lock, so every message is either in their snapshot or queued to them live,
//! never both and never neither).
//!
//! Owns the bounded ring (oldest evicted first), its low-water mark (a resume from a cursor at or
//! above it can be served from memory), and the cursor stamped on live frames. Never does I/O.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::session::outbox::Outgoing;

/// One routed message, as it went out.
pub struct Entry {
    pub created_at: DateTime<Utc>,
    pub participants: Arc<HashSet<Uuid>>,
    pub frame: Outgoing,
}

/// The state behind the lock.
pub struct Ring {
    entries: VecDeque<Entry>,
    capacity: usize,
    /// Every message with `created_at` below this may be missing from the ring.
    low_water: DateTime<Utc>,
    /// The cursor stamped on live frames: every message with `created_at` below it was fanned out.
    pub cursor: DateTime<Utc>,
}

impl Ring {
    /// Records a routed message, evicting the oldest when full.
    pub fn push(&mut self, entry: Entry) {
        if self.capacity == 0 {
            self.low_water = self.low_water.max(entry.created_at + Duration::microseconds(1));
            return;
        }
        if self.entries.len() >= self.capacity {
            if let Some(old) = self.entries.pop_front() {
                self.low_water = self.low_water.max(old.created_at + Duration::microseconds(1));
            }
        }
        self.entries.push_back(entry);
    }

    /// Whether a resume from `since` can be served from memory.
    pub fn covers(&self, since: DateTime<Utc>) -> bool {
        since >= self.low_water
    }

    /// The frames a user resuming from `since` must get, in routing order.
    pub fn replay_for(&self, user_id: &Uuid, since: DateTime<Utc>) -> Vec<Outgoing> {
        self.entries
            .iter()
            .filter(|e| e.created_at >= since && e.participants.contains(user_id))
            .map(|e| e.frame.clone())
            .collect()
    }
}

/// The shared ring.
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// An empty ring whose low-water mark and first cursor are `start` (messages before it were
    /// never routed by this process).
    pub fn new(capacity: usize, start: DateTime<Utc>) -> Arc<History> {
        Arc::new(History {
            ring: Mutex::new(Ring { entries: VecDeque::new(), capacity, low_water: start, cursor: start }),
        })
    }

    /// Locks the ring. Poisoning cannot leave it inconsistent (every update is one push), so a
    /// poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: DateTime<Utc>, users: &[Uuid]) -> Entry {
        Entry { created_at: t, participants: Arc::new(users.iter().copied().collect()), frame: Outgoing::notice("m") }
    }

    #[test]
    fn eviction_raises_the_low_water_mark() {
        let start = Utc::now();
        let history = History::new(2, start);
        let user = Uuid::new_v4();
        let mut ring = history.lock();
        assert!(ring.covers(start) && !ring.covers(start - Duration::seconds(1)));
        for i in 1..=3 {
            ring.push(entry(start + Duration::seconds(i), &[user]));
        }
        assert!(!ring.covers(start + Duration::seconds(1)), "the first message was evicted");
        assert!(ring.covers(start + Duration::seconds(2)));
        assert_eq!(ring.replay_for(&user, start + Duration::seconds(2)).len(), 2);
        assert_eq!(ring.replay_for(&Uuid::new_v4(), start).len(), 0, "only the user's threads");
    }
}
