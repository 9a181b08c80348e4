//! The recent disconnects: a bounded record of the last sessions that ended (when, whose, with
//! which close code and label), written by each session as it ends and read by the admin page.
//!
//! Never holds more than [`RECENT`] entries, never records a token or message content, and never
//! does I/O.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How many disconnects are kept.
pub const RECENT: usize = 100;

/// One ended session, as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub at: DateTime<Utc>,
    pub user_id: Uuid,
    pub code: u16,
    pub reason: &'static str,
}

/// The last [`RECENT`] disconnects, newest last.
#[derive(Default)]
pub struct Disconnects {
    ring: Mutex<VecDeque<Disconnect>>,
}

impl Disconnects {
    pub fn record(&self, user_id: Uuid, code: u16, reason: &'static str) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= RECENT {
            ring.pop_front();
        }
        ring.push_back(Disconnect { at: Utc::now(), user_id, code, reason });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Disconnect> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_hundred_newest_first() {
        let ring = Disconnects::default();
        let users: Vec<Uuid> = (0..150).map(|_| Uuid::new_v4()).collect();
        for user in &users {
            ring.record(*user, 1001, "shutdown");
        }
        let recent = ring.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].user_id, users[149]);
        assert_eq!(recent[RECENT - 1].user_id, users[50]);
    }
}
