//! History: the ring of recently routed messages and the live resume cursor, shared by the
//! router (which appends under the lock while it fans out) and resuming sessions (which register
//! under the same lock, so every message is either in their snapshot or queued to them live,
//! never both and never neither).
//!
//! Owns the bounded ring (oldest evicted first when either its message count or its byte budget,
//! counted on the encoded frames, would be exceeded), its low-water mark (a resume from a cursor
//! at or above it can be served from memory; below it the resume goes to the database, so an
//! eviction never loses anything), and the cursor stamped on live frames. Never does I/O.
//! A replay snapshot carries each frame's thread: the resuming session checks the user's current
//! membership of it before sending anything (the recipients recorded here are those of routing
//! time, and a participant may have been removed since).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::hub::Outgoing;

/// One routed message, as it went out.
pub struct Entry {
    pub created_at: DateTime<Utc>,
    pub thread_id: Uuid,
    pub participants: Arc<HashSet<Uuid>>,
    pub frame: Outgoing,
}

/// What one entry costs besides its frame's text: the entry itself, the frame's shared-bytes
/// header, the `VecDeque` slot and the allocator's rounding (about 170 bytes with the entry's
/// thread id, the frame's `created_at` and its receipt stamp for the latency histogram), rounded up.
pub const ENTRY_OVERHEAD: usize = 176;

/// The ring's bounds: whichever is hit first evicts the oldest entries (declared with the resume
/// settings: `RESUME_BUFFER_MESSAGES`, and `RESUME_BUFFER_BYTES` counting the frames' text plus
/// [`ENTRY_OVERHEAD`] each).
pub use crate::config::ResumeBounds as Bounds;

impl Entry {
    /// What this entry counts against [`Bounds::bytes`].
    pub fn cost(&self) -> usize {
        self.frame.text.len() + ENTRY_OVERHEAD
    }
}

/// The state behind the lock.
pub struct Ring {
    entries: VecDeque<Entry>,
    bounds: Bounds,
    /// Sum of the entries' [`Entry::cost`].
    bytes: usize,
    /// Entries evicted so far because of the byte budget (the count bound alone would have kept them).
    evicted_for_bytes: u64,
    /// Every message with `created_at` below this may be missing from the ring.
    low_water: DateTime<Utc>,
    /// The cursor stamped on live frames: every message with `created_at` below it was fanned out.
    pub cursor: DateTime<Utc>,
}

impl Ring {
    /// Records a routed message, evicting the oldest while either bound is exceeded (an entry
    /// larger than the whole byte budget is evicted at once: its resume goes to the database).
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.entries.len() > self.bounds.messages || self.bytes > self.bounds.bytes {
            let over_bytes = self.entries.len() <= self.bounds.messages;
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.cost();
            self.evicted_for_bytes += u64::from(over_bytes);
            self.low_water = self.low_water.max(old.created_at + Duration::microseconds(1));
        }
    }

    /// Entries held, bytes they count, and evictions forced by the byte budget so far.
    pub fn usage(&self) -> Usage {
        Usage { messages: self.entries.len(), bytes: self.bytes, evicted_for_bytes: self.evicted_for_bytes }
    }

    /// Whether a resume from `since` can be served from memory.
    pub fn covers(&self, since: DateTime<Utc>) -> bool {
        since >= self.low_water
    }

    /// The frames a user resuming from `since` was routed, in routing order, each with its
    /// thread: to be checked against the user's current membership before they are sent.
    pub fn replay_for(&self, user_id: &Uuid, since: DateTime<Utc>) -> Vec<(Uuid, Outgoing)> {
        self.entries
            .iter()
            .filter(|e| e.created_at >= since && e.participants.contains(user_id))
            .map(|e| (e.thread_id, e.frame.clone()))
            .collect()
    }
}

/// What the ring holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: usize,
    pub bytes: usize,
    pub evicted_for_bytes: u64,
}

/// The shared ring.
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// An empty ring whose low-water mark and first cursor are `start` (messages before it were
    /// never routed by this process).
    pub fn new(bounds: Bounds, start: DateTime<Utc>) -> Arc<History> {
        let ring =
            Ring { entries: VecDeque::new(), bounds, bytes: 0, evicted_for_bytes: 0, low_water: start, cursor: start };
        Arc::new(History { ring: Mutex::new(ring) })
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
        Entry {
            created_at: t,
            thread_id: Uuid::nil(),
            participants: Arc::new(users.iter().copied().collect()),
            frame: Outgoing::notice("m"),
        }
    }

    #[test]
    fn the_overhead_covers_an_entry() {
        // The entry's own slot plus a shared-bytes header (32) and an allocator header (16).
        assert!(std::mem::size_of::<Entry>() + 48 <= ENTRY_OVERHEAD, "{}", std::mem::size_of::<Entry>());
    }

    #[test]
    fn eviction_raises_the_low_water_mark() {
        let start = Utc::now();
        let history = History::new(Bounds { messages: 2, bytes: usize::MAX }, start);
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

    fn sized(t: DateTime<Utc>, user: Uuid, text_bytes: usize) -> Entry {
        Entry {
            created_at: t,
            thread_id: Uuid::nil(),
            participants: Arc::new([user].into_iter().collect()),
            frame: Outgoing::notice("x".repeat(text_bytes)),
        }
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_and_raises_the_low_water_mark() {
        let start = Utc::now();
        let user = Uuid::new_v4();
        let cost = 1000 + ENTRY_OVERHEAD;
        // Room for 1,000 messages by count, for three of these by bytes.
        let history = History::new(Bounds { messages: 1000, bytes: 3 * cost }, start);
        let mut ring = history.lock();
        for i in 1..=5 {
            ring.push(sized(start + Duration::seconds(i), user, 1000));
        }
        assert_eq!(ring.usage(), Usage { messages: 3, bytes: 3 * cost, evicted_for_bytes: 2 });
        assert!(!ring.covers(start + Duration::seconds(2)), "the second message was evicted: resume from the database");
        assert!(ring.covers(start + Duration::seconds(3)));
        assert_eq!(ring.replay_for(&user, start + Duration::seconds(3)).len(), 3);

        // One frame larger than the whole budget empties the ring and is not kept itself.
        ring.push(sized(start + Duration::seconds(6), user, 4 * cost));
        assert_eq!(ring.usage().messages, 0);
        assert_eq!(ring.usage().bytes, 0);
        assert!(!ring.covers(start + Duration::seconds(6)) && ring.covers(start + Duration::seconds(7)));

        // The count bound still applies when frames are small.
        let history = History::new(Bounds { messages: 2, bytes: 1 << 30 }, start);
        let mut ring = history.lock();
        for i in 1..=4 {
            ring.push(sized(start + Duration::seconds(i), user, 10));
        }
        assert_eq!(ring.usage(), Usage { messages: 2, bytes: 2 * (10 + ENTRY_OVERHEAD), evicted_for_bytes: 0 });
    }
}
