//! The router's bookkeeping of message ids: which messages were already fanned out (exact
//! deduplication over the whole gap-fill window) and the `created_at` and size of every message
//! still waiting (so the live cursor never passes a message not yet delivered, and what waits is
//! bounded in bytes as well as in count).
//!
//! Pure data structures, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::MessageRow;

/// Ids of messages seen (delivered or waiting), pruned by `created_at` below the gap-fill window.
#[derive(Default)]
pub struct Seen {
    ids: HashSet<Uuid>,
    by_time: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Seen {
    /// Records `id`; false if it was already seen.
    pub fn insert(&mut self, id: Uuid, created_at: DateTime<Utc>) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.by_time.insert((created_at, id));
        true
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    /// Forgets a message that was dropped before delivery (a gap fill will bring it again).
    pub fn forget(&mut self, id: Uuid, created_at: DateTime<Utc>) {
        self.ids.remove(&id);
        self.by_time.remove(&(created_at, id));
    }

    /// Forgets every id with `created_at` below `floor`: no gap fill will read them again.
    pub fn prune_below(&mut self, floor: DateTime<Utc>) {
        while let Some(first) = self.by_time.first().copied() {
            if first.0 >= floor {
                break;
            }
            self.by_time.pop_first();
            self.ids.remove(&first.1);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What a waiting row counts against the router's byte budget besides its strings: the row and
/// its sender, the queue slot and the bookkeeping entries (about 200 bytes), rounded up.
pub const ROW_OVERHEAD: usize = 256;

/// The bytes a waiting message holds: its strings plus [`ROW_OVERHEAD`].
pub fn row_cost(row: &MessageRow) -> usize {
    let sender = row.sender.as_ref().map_or(0, |s| s.full_name.len() + s.role.len());
    row.content.len() + row.message_type.len() + row.created_at.len() + sender + ROW_OVERHEAD
}

/// `created_at` and size of every message accepted but not yet fanned out.
#[derive(Default)]
pub struct Waiting {
    times: BTreeMap<(DateTime<Utc>, Uuid), usize>,
    bytes: usize,
}

impl Waiting {
    pub fn add(&mut self, id: Uuid, created_at: DateTime<Utc>, bytes: usize) {
        if let Some(old) = self.times.insert((created_at, id), bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    pub fn remove(&mut self, id: Uuid, created_at: DateTime<Utc>) {
        if let Some(bytes) = self.times.remove(&(created_at, id)) {
            self.bytes -= bytes;
        }
    }

    pub fn contains(&self, id: Uuid, created_at: DateTime<Utc>) -> bool {
        self.times.contains_key(&(created_at, id))
    }

    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.times.first_key_value().map(|(t, _)| t.0)
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// The bytes the waiting messages hold (see [`row_cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.times.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn seen_is_exact_until_pruned_and_prunes_by_time_not_arrival() {
        let t0 = Utc::now();
        let mut seen = Seen::default();
        let (future, old, recent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(seen.insert(future, t0 + Duration::days(365)));
        assert!(seen.insert(old, t0 - Duration::seconds(120)));
        assert!(seen.insert(recent, t0));
        assert!(!seen.insert(recent, t0), "twice is refused");
        seen.prune_below(t0 - Duration::seconds(60));
        assert!(!seen.contains(&old) && seen.contains(&recent) && seen.contains(&future));
        seen.forget(recent, t0);
        assert!(seen.insert(recent, t0), "a forgotten id can come again");
    }

    #[test]
    fn waiting_reports_the_oldest() {
        let t0 = Utc::now();
        let mut w = Waiting::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        w.add(a, t0 + Duration::seconds(5), 100);
        w.add(b, t0, 30);
        w.add(b, t0, 30);
        assert_eq!(w.oldest(), Some(t0));
        assert_eq!((w.len(), w.bytes()), (2, 130), "the same message twice counts once");
        w.remove(b, t0);
        w.remove(b, t0);
        assert_eq!(w.oldest(), Some(t0 + Duration::seconds(5)));
        assert_eq!(w.bytes(), 100);
        w.clear();
        assert_eq!((w.len(), w.bytes()), (0, 0));
    }
}
