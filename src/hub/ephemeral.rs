//! A batch of ephemeral frames (typing) for one delivery tick: the frames of every thread with a
//! typer in the tick, gathered per recipient session, so that a session gets one push (one lock,
//! one wake-up, and one socket write for all of them) instead of one per frame.
//!
//! Recipients are the hub's, as a message of the thread would go (realtime switch, mutes,
//! explicit subscriptions of participants), minus the typer's own sessions; a frame is never
//! gathered for a session whose user is not a participant. A session whose queue is full skips
//! the frame instead of being closed, and a frame identical to one still queued for the session
//! is not queued twice. Nothing here does I/O, serializes, or awaits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use super::{Hub, Outgoing, SessionHandle};

/// What became of a batch's frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    /// Frames queued to sessions.
    pub queued: usize,
    /// Frames a full session queue skipped.
    pub skipped: usize,
    /// Frames identical to one still queued for that session: not queued again.
    pub coalesced: usize,
}

/// Ephemeral frames gathered per recipient session (kept between ticks for its capacity).
#[derive(Default)]
pub struct EphemeralBatch {
    sessions: HashMap<u64, (Arc<SessionHandle>, Vec<Outgoing>)>,
    scratch: Vec<Arc<SessionHandle>>,
}

impl EphemeralBatch {
    /// Gathers `frames` of `thread_id` (each with the user it is about) for the thread's
    /// recipients, except each frame's own user's sessions.
    pub fn add(&mut self, hub: &Hub, thread_id: Uuid, participants: &HashSet<Uuid>, frames: &[(Uuid, Outgoing)]) {
        hub.recipients(thread_id, participants, &mut self.scratch);
        for session in self.scratch.drain(..) {
            let mut about_others = frames.iter().filter(|(user, _)| *user != session.user_id).peekable();
            if about_others.peek().is_none() {
                continue;
            }
            let (_, list) = self.sessions.entry(session.id).or_insert_with(|| (session.clone(), Vec::new()));
            list.extend(about_others.map(|(_, frame)| frame.clone()));
        }
    }

    /// Offers every session its frames in one push; the batch is empty afterwards.
    pub fn offer(&mut self) -> Offered {
        let mut offered = Offered::default();
        for (_, (session, frames)) in self.sessions.drain() {
            let one = session.offer_all(&frames);
            offered.queued += one.queued;
            offered.skipped += one.skipped;
            offered.coalesced += one.coalesced;
        }
        offered
    }

    /// Sessions with frames gathered.
    #[cfg(test)]
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::test_hub as hub;

    fn drain(session: &SessionHandle) -> Vec<String> {
        std::iter::from_fn(|| session.queue.try_pop()).map(|f| f.text.to_string()).collect()
    }

    #[test]
    fn one_push_per_session_never_to_the_typer_or_a_non_participant() {
        let hub = hub(16);
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let (carla, david, farid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let carla_phone = hub.register(carla).expect("fits");
        let david_phone = hub.register(david).expect("fits");
        let farid_phone = hub.register(farid).expect("fits");
        let both: HashSet<Uuid> = [carla, david].into_iter().collect();
        let mut batch = EphemeralBatch::default();
        let carla_t1 = Outgoing::notice("carla t1");
        let david_t1 = Outgoing::notice("david t1");
        batch.add(&hub, t1, &both, &[(carla, carla_t1), (david, david_t1)]);
        batch.add(&hub, t2, &both, &[(carla, Outgoing::notice("carla t2"))]);
        assert_eq!(batch.sessions(), 2, "Farid is in neither thread");
        assert_eq!(batch.offer(), Offered { queued: 3, skipped: 0, coalesced: 0 });
        assert_eq!(drain(&david_phone), ["carla t1", "carla t2"], "both threads in one push");
        assert_eq!(drain(&carla_phone), ["david t1"], "not her own");
        assert!(drain(&farid_phone).is_empty(), "never a non-participant");
        assert_eq!(batch.sessions(), 0, "offered and emptied");
    }

    #[test]
    fn a_full_queue_skips_without_closing_and_a_queued_frame_is_not_queued_twice() {
        let hub = hub(3);
        let thread = Uuid::new_v4();
        let (carla, david) = (Uuid::new_v4(), Uuid::new_v4());
        let david_phone = hub.register(david).expect("fits");
        let members: HashSet<Uuid> = [carla, david].into_iter().collect();
        let mut batch = EphemeralBatch::default();
        batch.add(&hub, thread, &members, &[(carla, Outgoing::notice("carla"))]);
        assert_eq!(batch.offer().queued, 1);
        batch.add(&hub, thread, &members, &[(carla, Outgoing::notice("carla"))]);
        assert_eq!(batch.offer(), Offered { queued: 0, skipped: 0, coalesced: 1 }, "still queued: coalesced");
        let others: Vec<(Uuid, Outgoing)> = (0..3).map(|i| (carla, Outgoing::notice(format!("other {i}")))).collect();
        batch.add(&hub, thread, &members, &others);
        assert_eq!(batch.offer(), Offered { queued: 2, skipped: 1, coalesced: 0 }, "a queue of 3");
        assert_eq!(david_phone.close_reason(), None, "skipped, not closed");
        assert_eq!(drain(&david_phone), ["carla", "other 0", "other 1"]);
    }
}
