//! Hub: who is connected and who receives what.
//!
//! Owns the session registry (user → sessions, one per device), explicit per-session thread
//! subscriptions and mutes, the per-user realtime switch, and fan-out: given a thread's
//! participants and one pre-serialized frame, it pushes the same bytes into every recipient's
//! bounded queue. Everything here is synchronous: no I/O, no JSON, no awaits; a slow client is
//! closed by its own queue, never waited for. The hub must never deliver a message to a session
//! whose user is not a participant of the thread, and never hold a map guard across an await.
//!
//! Submodules: [`outbox`] (a session's bounded queue and the handle the hub holds: what the
//! router and the hub push into and the session drains), [`ephemeral`] (typing frames gathered
//! per recipient session for one push each) and [`disconnects`] (the recent disconnects the admin
//! page shows).

pub mod clock;
mod disconnects;
mod ephemeral;
mod outbox;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use smallvec::SmallVec;
use uuid::Uuid;

use crate::close::Close;
use crate::config::Limits;
use crate::metrics::Metrics;
pub use disconnects::Disconnects;
pub use ephemeral::EphemeralBatch;
pub use outbox::{Outgoing, SessionHandle, Wake};

/// Why a session could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("server is at its connection limit")]
    ServerFull,
    #[error("too many connections for this user")]
    UserFull,
}

/// Why `subscribe_thread` or `unsubscribe_thread` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many thread subscriptions on this connection (limit {0})")]
    TooMany(usize),
    #[error("too many unsubscribed threads on this connection (limit {0})")]
    TooManyMuted(usize),
}

/// A user's sessions: one, inline, for most users (no allocation of its own).
type UserSessions = SmallVec<[Arc<SessionHandle>; 1]>;

/// The hub. One per gateway, shared behind an `Arc`.
pub struct Hub {
    limits: Limits,
    sessions_by_user: DashMap<Uuid, UserSessions>,
    explicit: DashMap<Uuid, Vec<Arc<SessionHandle>>>,
    realtime_off: DashMap<Uuid, ()>,
    session_count: AtomicUsize,
    next_id: AtomicU64,
    /// For the pushes: frames delivered, slow sessions closed.
    metrics: Arc<Metrics>,
    /// Where the sessions' alarms are measured from ([`clock`]).
    origin: Instant,
    /// Set by [`Hub::close_all`]: a session registered after it is closed at once.
    closing: OnceLock<&'static Close>,
}

impl Hub {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            limits,
            sessions_by_user: DashMap::new(),
            explicit: DashMap::new(),
            realtime_off: DashMap::new(),
            session_count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            metrics,
            origin: Instant::now(),
            closing: OnceLock::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn session_count(&self) -> usize {
        self.session_count.load(Ordering::Relaxed)
    }

    pub fn user_count(&self) -> usize {
        self.sessions_by_user.len()
    }

    /// Whether `user_id` has a session on this instance.
    pub fn is_online(&self, user_id: &Uuid) -> bool {
        self.sessions_by_user.contains_key(user_id)
    }

    /// Every user with a session on this instance (presence for push decisions).
    pub fn online_user_ids(&self) -> std::collections::HashSet<Uuid> {
        self.sessions_by_user.iter().map(|entry| *entry.key()).collect()
    }

    /// Registers a new session of `user_id`; returns the handle that holds its queue.
    pub fn register(&self, user_id: Uuid) -> Result<Arc<SessionHandle>, RegisterError> {
        let reserved = self.session_count.fetch_add(1, Ordering::AcqRel);
        if reserved >= self.limits.max_connections {
            self.session_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RegisterError::ServerFull);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(SessionHandle::new(id, user_id, self.limits.queue_capacity, self.limits.queue_bytes));
        let mut entry = self.sessions_by_user.entry(user_id).or_default();
        if entry.len() >= self.limits.max_connections_per_user {
            drop(entry);
            self.session_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RegisterError::UserFull);
        }
        entry.push(handle.clone());
        drop(entry);
        if let Some(reason) = self.closing.get() {
            // Registered while every session is being closed (a shutdown): closed too.
            handle.close(reason);
        }
        Ok(handle)
    }

    /// Removes a session and all its subscriptions.
    pub fn unregister(&self, session: &Arc<SessionHandle>) {
        let mut removed = false;
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) = self.sessions_by_user.entry(session.user_id) {
            let before = entry.get().len();
            entry.get_mut().retain(|s| s.id != session.id);
            removed = entry.get().len() != before;
            if entry.get().is_empty() {
                entry.remove();
            }
        }
        if removed {
            self.session_count.fetch_sub(1, Ordering::AcqRel);
        }
        for thread_id in session.subscriptions() {
            self.remove_explicit(thread_id, session.id);
        }
    }

    /// Adds an explicit thread subscription, after RLS admitted it. Also un-mutes the thread.
    pub fn subscribe_thread(&self, session: &Arc<SessionHandle>, thread_id: Uuid) -> Result<(), SubscribeError> {
        if !session.add_subscription(thread_id, self.limits.max_thread_subscriptions) {
            return Err(SubscribeError::TooMany(self.limits.max_thread_subscriptions));
        }
        session.unmute(&thread_id);
        let mut list = self.explicit.entry(thread_id).or_default();
        if !list.iter().any(|s| s.id == session.id) {
            list.push(session.clone());
        }
        Ok(())
    }

    /// Drops an explicit subscription and mutes the thread for this session, so that a thread
    /// the user participates in stops arriving on this connection until subscribed again. The
    /// caller checked that the user may read the thread (or that the session subscribed to it);
    /// at most `MAX_THREAD_SUBSCRIPTIONS` threads are muted per session.
    pub fn unsubscribe_thread(&self, session: &Arc<SessionHandle>, thread_id: Uuid) -> Result<(), SubscribeError> {
        if !session.mute(thread_id, self.limits.max_thread_subscriptions) {
            return Err(SubscribeError::TooManyMuted(self.limits.max_thread_subscriptions));
        }
        session.remove_subscription(&thread_id);
        self.remove_explicit(thread_id, session.id);
        Ok(())
    }

    /// A participant left a thread: their explicit subscriptions to it are revoked at once.
    pub fn participant_left(&self, thread_id: Uuid, user_id: Uuid) {
        let ids: Vec<u64> = match self.sessions_by_user.get(&user_id) {
            Some(sessions) => sessions.iter().filter(|s| s.remove_subscription(&thread_id)).map(|s| s.id).collect(),
            None => return,
        };
        for id in ids {
            self.remove_explicit(thread_id, id);
        }
    }

    fn remove_explicit(&self, thread_id: Uuid, session_id: u64) {
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) = self.explicit.entry(thread_id) {
            entry.get_mut().retain(|s| s.id != session_id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// The per-user switch of `POST /api/chat/subscribe|unsubscribe`: the user's participant
    /// threads are (not) pushed live to any of their sessions on this instance.
    pub fn set_realtime(&self, user_id: Uuid, enabled: bool) {
        if enabled {
            self.realtime_off.remove(&user_id);
        } else {
            self.realtime_off.insert(user_id, ());
        }
    }

    /// Replaces the whole set of users who switched realtime off (read from the database).
    pub fn replace_realtime_off(&self, off: &std::collections::HashSet<Uuid>) {
        self.realtime_off.retain(|user, _| off.contains(user));
        for user in off {
            self.realtime_off.insert(*user, ());
        }
    }

    /// Sends one frame to every session (upstream status notices).
    pub fn broadcast(&self, frame: &Outgoing) {
        for entry in self.sessions_by_user.iter() {
            for session in entry.value() {
                session.push(frame, &self.metrics);
            }
        }
    }

    /// Sends one frame to every session of one user.
    pub fn send_to_user(&self, user_id: &Uuid, frame: &Outgoing) -> usize {
        let Some(sessions) = self.sessions_by_user.get(user_id) else { return 0 };
        for session in sessions.iter() {
            session.push(frame, &self.metrics);
        }
        sessions.len()
    }

    /// Sends one frame about `thread_id` to every session of one of its participants, as a
    /// message of the thread would go: not if the user turned realtime off, not to a session
    /// that muted the thread. The caller has checked that the user is a participant. Returns how
    /// many sessions got it.
    pub fn send_to_participant(&self, thread_id: &Uuid, user_id: &Uuid, frame: &Outgoing) -> usize {
        if self.realtime_off.contains_key(user_id) {
            return 0;
        }
        let Some(sessions) = self.sessions_by_user.get(user_id) else { return 0 };
        let mut n = 0;
        for session in sessions.iter().filter(|s| !s.is_muted(thread_id)) {
            session.push(frame, &self.metrics);
            n += 1;
        }
        n
    }

    /// Closes every session with `reason`, and every session registered from now on.
    pub fn close_all(&self, reason: &'static Close) {
        let _ = self.closing.set(reason);
        for entry in self.sessions_by_user.iter() {
            for session in entry.value() {
                session.close(reason);
            }
        }
    }

    /// Every open session (for a shutdown that closes them one by one).
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions_by_user.iter().flat_map(|entry| entry.value().clone()).collect()
    }

    /// Closes every session of one user with `reason`; returns how many.
    pub fn close_user(&self, user_id: &Uuid, reason: &'static Close) -> usize {
        let Some(sessions) = self.sessions_by_user.get(user_id) else { return 0 };
        for session in sessions.iter() {
            session.close(reason);
        }
        sessions.len()
    }

    /// Up to `limit` online users with their number of sessions (for the admin page).
    pub fn online_users(&self, limit: usize) -> Vec<(Uuid, usize)> {
        self.sessions_by_user.iter().take(limit).map(|entry| (*entry.key(), entry.value().len())).collect()
    }

    /// Every session that must receive a message of `thread_id`, given the thread's participants:
    /// participants' sessions (unless the user turned realtime off or the session muted the
    /// thread) plus explicit subscribers who are still participants; each at most once.
    pub fn recipients(&self, thread_id: Uuid, participants: &HashSet<Uuid>, out: &mut Vec<Arc<SessionHandle>>) {
        out.clear();
        for user_id in participants {
            if self.realtime_off.contains_key(user_id) {
                continue;
            }
            if let Some(sessions) = self.sessions_by_user.get(user_id) {
                out.extend(sessions.iter().filter(|s| !s.is_muted(&thread_id)).cloned());
            }
        }
        if let Some(explicit) = self.explicit.get(&thread_id) {
            for session in explicit.iter() {
                // Explicit subscribers must still be participants: membership changes revoke.
                if participants.contains(&session.user_id) && !out.iter().any(|s| s.id == session.id) {
                    out.push(session.clone());
                }
            }
        }
    }

    /// Queues the same pre-serialized frame for every recipient; returns how many.
    pub fn fan_out(
        &self,
        frame: &Outgoing,
        thread_id: Uuid,
        participants: &HashSet<Uuid>,
        scratch: &mut Vec<Arc<SessionHandle>>,
    ) -> usize {
        self.recipients(thread_id, participants, scratch);
        for session in scratch.iter() {
            session.push(frame, &self.metrics);
        }
        let n = scratch.len();
        scratch.clear();
        n
    }
}

/// A hub for unit tests (here and in the modules that fan out through it): 1,000 sessions, 3 per
/// user, `queue_capacity` frames per session.
#[cfg(test)]
pub(crate) fn test_hub(queue_capacity: usize) -> Arc<Hub> {
    let limits = Limits {
        max_connections: 1000,
        max_connections_per_user: 3,
        max_message_bytes: 4096,
        read_buffer_bytes: 512,
        rate_per_sec: 10,
        queue_capacity,
        queue_bytes: 1 << 20,
        max_thread_subscriptions: 8,
        ping_interval: std::time::Duration::from_secs(30),
    };
    Hub::new(limits, Arc::new(Metrics::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close;
    use proptest::prelude::*;

    fn hub() -> Arc<Hub> {
        test_hub(4)
    }

    #[test]
    fn per_user_and_global_limits() {
        let hub = hub();
        let user = Uuid::new_v4();
        let sessions: Vec<_> = (0..3).map(|_| hub.register(user).expect("fits")).collect();
        assert_eq!(hub.register(user).err(), Some(RegisterError::UserFull));
        assert_eq!(hub.session_count(), 3);
        for s in &sessions {
            hub.unregister(s);
        }
        assert_eq!(hub.session_count(), 0);
    }

    #[test]
    fn a_session_registered_after_close_all_is_closed_at_once() {
        let hub = hub();
        let before = hub.register(Uuid::new_v4()).expect("fits");
        hub.close_all(&close::SHUTDOWN);
        let after = hub.register(Uuid::new_v4()).expect("fits");
        assert_eq!(before.close_reason(), Some(close::SHUTDOWN));
        assert_eq!(after.close_reason(), Some(close::SHUTDOWN), "no session escapes a shutdown");
    }

    #[test]
    fn slow_session_is_closed_not_waited_for() {
        let hub = hub();
        let thread = Uuid::new_v4();
        let (slow_user, fast_user) = (Uuid::new_v4(), Uuid::new_v4());
        let slow = hub.register(slow_user).expect("fits");
        let fast = hub.register(fast_user).expect("fits");
        let participants: HashSet<Uuid> = [slow_user, fast_user].into_iter().collect();
        let mut scratch = Vec::new();
        let frame = Outgoing::notice("m");
        for _ in 0..6 {
            assert_eq!(hub.fan_out(&frame, thread, &participants, &mut scratch), 2);
            while fast.queue.try_pop().is_some() {}
        }
        assert_eq!(slow.close_reason(), Some(close::SLOW));
        assert_eq!(fast.close_reason(), None);
    }

    #[test]
    fn muted_threads_and_realtime_switch() {
        let hub = hub();
        let thread = Uuid::new_v4();
        let user = Uuid::new_v4();
        let s = hub.register(user).expect("fits");
        let participants: HashSet<Uuid> = [user].into_iter().collect();
        let mut out = Vec::new();
        hub.recipients(thread, &participants, &mut out);
        assert_eq!(out.len(), 1);
        hub.unsubscribe_thread(&s, thread).expect("room to mute");
        hub.recipients(thread, &participants, &mut out);
        assert!(out.is_empty());
        hub.subscribe_thread(&s, thread).expect("ok");
        hub.recipients(thread, &participants, &mut out);
        assert_eq!(out.len(), 1, "explicit + participant counted once");
        hub.set_realtime(user, false);
        hub.recipients(thread, &participants, &mut out);
        assert_eq!(out.len(), 1, "explicit subscription survives the user-level switch");
        hub.participant_left(thread, user);
        hub.recipients(thread, &participants, &mut out);
        assert!(out.is_empty(), "leaving revokes the explicit subscription");
    }

    #[test]
    fn muted_threads_are_bounded_per_session() {
        let hub = hub();
        let s = hub.register(Uuid::new_v4()).expect("fits");
        let threads: Vec<Uuid> = (0..9).map(|_| Uuid::new_v4()).collect();
        for t in &threads[..8] {
            hub.unsubscribe_thread(&s, *t).expect("within the limit of 8");
        }
        assert_eq!(hub.unsubscribe_thread(&s, threads[8]), Err(SubscribeError::TooManyMuted(8)));
        assert!(!s.is_muted(&threads[8]), "a refused unsubscribe leaves nothing behind");
        hub.unsubscribe_thread(&s, threads[0]).expect("muting a muted thread again is fine");
        hub.subscribe_thread(&s, threads[0]).expect("subscribing un-mutes");
        hub.unsubscribe_thread(&s, threads[8]).expect("room again");
    }

    proptest! {
        /// Nobody receives a message of a thread their user does not participate in, whatever
        /// the memberships, explicit subscriptions and mutes; nobody receives it twice.
        #[test]
        fn nobody_receives_another_threads_message(
            membership in proptest::collection::vec((0u8..6, 0u8..10), 0..40),
            subscriptions in proptest::collection::vec((0u8..6, 0u8..20), 0..30),
            mutes in proptest::collection::vec((0u8..6, 0u8..20), 0..10),
            thread in 0u8..6,
        ) {
            let hub = hub();
            let users: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
            let threads: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
            let sessions: Vec<Arc<SessionHandle>> = (0..20).filter_map(|i| hub.register(users[i % 10]).ok()).collect();
            for (t, s) in subscriptions {
                if let Some(s) = sessions.get(s as usize) { let _ = hub.subscribe_thread(s, threads[t as usize]); }
            }
            for (t, s) in mutes {
                if let Some(s) = sessions.get(s as usize) { let _ = hub.unsubscribe_thread(s, threads[t as usize]); }
            }
            let target = threads[thread as usize];
            let participants: HashSet<Uuid> = membership.iter()
                .filter(|(t, _)| threads[*t as usize] == target)
                .map(|(_, u)| users[*u as usize]).collect();
            let mut out = Vec::new();
            hub.recipients(target, &participants, &mut out);
            let mut ids = HashSet::new();
            for s in &out {
                prop_assert!(participants.contains(&s.user_id));
                prop_assert!(ids.insert(s.id), "a session received a message twice");
                prop_assert!(!s.is_muted(&target));
            }
        }
    }
}
