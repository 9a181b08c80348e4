//! The typing tick: signals to deliver on this instance (accepted here, or from the other
//! instances) wait at most [`TICK`] and then go out together, so that a recipient session gets
//! one wake-up and one socket write for all the typing of a tick rather than one per frame. Each
//! frame is serialized once per signal and its bytes shared by every recipient.
//!
//! Owns the signals between their arrival and their fan-out: [`Pending`] (bounded by
//! [`MAX_PENDING`]; the tick task sleeps while it is empty) and, inside the tick task, the
//! signals whose thread members or typer profile the directory has not cached yet: their loads
//! are requested (single flight, never awaited here) and the signals are tried again on the next
//! ticks, at most [`MAX_WAITING`] of them and for at most [`LOOKUP_WAIT`]. Duplicates (the same
//! user and thread twice in one tick, e.g. from two instances) go out once. Every signal or frame
//! not delivered is counted by reason; nothing is dropped silently. Never awaits a lookup, never
//! blocks a session or the relay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::directory::{Directory, Key};
use crate::hub::{EphemeralBatch, Hub, Outgoing};
use crate::model::Sender;
use crate::protocol::{ServerMessage, TypingUser};

/// How long a signal waits for its tick: well inside the 500 ms the protocol promises.
pub const TICK: Duration = Duration::from_millis(100);
/// Signals waiting for the next tick.
pub const MAX_PENDING: usize = 8192;
/// Signals waiting (over several ticks) for a membership or profile load.
pub const MAX_WAITING: usize = 1024;
/// How long a signal waits for such a load before it is dropped (`lookup_failed`).
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// A signal to deliver here: who typed where, since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub thread_id: Uuid,
    pub user_id: Uuid,
    pub since: Instant,
}

/// The signals waiting for the next tick.
#[derive(Default)]
pub struct Pending {
    signals: Mutex<Vec<Held>>,
    /// Told when the first signal of a tick arrives.
    pub arrived: Notify,
}

impl Pending {
    /// Holds a signal for the next tick; false when [`MAX_PENDING`] are already held.
    pub fn hold(&self, held: Held) -> bool {
        let first = {
            let mut signals = self.signals.lock().unwrap_or_else(PoisonError::into_inner);
            if signals.len() >= MAX_PENDING {
                return false;
            }
            signals.push(held);
            signals.len() == 1
        };
        if first {
            self.arrived.notify_one();
        }
        true
    }

    /// Every signal held, in arrival order.
    pub fn take(&self) -> Vec<Held> {
        std::mem::take(&mut *self.signals.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What one tick did with its signals and frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Signals fanned out to this instance's sessions.
    pub fanned_out: usize,
    /// Signals that repeated one already in the tick (same user and thread).
    pub duplicates: usize,
    /// Signals still waiting for a load.
    pub waiting: usize,
    /// Signals dropped: [`MAX_WAITING`] were already waiting.
    pub lookup_busy: usize,
    /// Signals dropped: their load did not land within [`LOOKUP_WAIT`].
    pub lookup_failed: usize,
    /// Frames queued, skipped by a full session queue, or already queued for that session.
    pub queued: usize,
    pub skipped: usize,
    pub coalesced: usize,
}

/// The frames of one thread in a tick: its members and one frame per typer.
type ThreadFrames = (Arc<HashSet<Uuid>>, Vec<(Uuid, Outgoing)>);

/// One tick: the signals still waiting for a load, then the new ones, fanned out per thread and
/// offered per session in one push each. `waiting` keeps what must wait for another tick.
pub fn deliver(
    hub: &Hub,
    directory: &Directory,
    fresh: Vec<Held>,
    waiting: &mut Vec<Held>,
    batch: &mut EphemeralBatch,
) -> Tally {
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    let mut threads: HashMap<Uuid, ThreadFrames> = HashMap::new();
    let held: Vec<Held> = std::mem::take(waiting).into_iter().chain(fresh).collect();
    for signal in held {
        if !seen.insert((signal.thread_id, signal.user_id)) {
            tally.duplicates += 1;
            continue;
        }
        match (directory.members(&signal.thread_id), directory.profile(&signal.user_id)) {
            (Some(members), Some(sender)) => {
                let frame = frame(signal.thread_id, signal.user_id, sender);
                threads
                    .entry(signal.thread_id)
                    .or_insert_with(|| (members, Vec::new()))
                    .1
                    .push((signal.user_id, frame));
                tally.fanned_out += 1;
            }
            (members, sender) => {
                if members.is_none() {
                    directory.request(Key::Members(signal.thread_id));
                }
                if sender.is_none() {
                    directory.request(Key::Profile(signal.user_id));
                }
                if signal.since.elapsed() >= LOOKUP_WAIT {
                    tally.lookup_failed += 1;
                } else if waiting.len() >= MAX_WAITING {
                    tally.lookup_busy += 1;
                } else {
                    waiting.push(signal);
                }
            }
        }
    }
    tally.waiting = waiting.len();
    for (thread_id, (members, frames)) in &threads {
        batch.add(hub, *thread_id, members, frames);
    }
    let offered = batch.offer();
    (tally.queued, tally.skipped, tally.coalesced) = (offered.queued, offered.skipped, offered.coalesced);
    tally
}

/// The typing frame naming the typer with the profile the router uses for messages.
fn frame(thread_id: Uuid, user_id: Uuid, sender: Sender) -> Outgoing {
    let user = TypingUser { user_id, full_name: sender.full_name, role: sender.role };
    Outgoing::notice(ServerMessage::Typing { thread_id, user: &user }.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_bounded_and_tells_only_of_the_first_signal() {
        let pending = Pending::default();
        let held = Held { thread_id: Uuid::new_v4(), user_id: Uuid::new_v4(), since: Instant::now() };
        for _ in 0..MAX_PENDING {
            assert!(pending.hold(held));
        }
        assert!(!pending.hold(held), "bounded");
        assert_eq!(pending.take().len(), MAX_PENDING);
        assert!(pending.take().is_empty(), "taken once");
        assert!(pending.hold(held), "room again");
    }
}
