//! Directory: who participates in which thread, and who senders are, for the routing path and
//! for replays from memory.
//!
//! Owns the thread-membership cache (thread → participant user ids, kept current by the
//! upstream's membership events, bounded, trusted for `CACHE_TTL_SECS` after a load) and the
//! sender-profile cache, and all of their PostgREST I/O: loads are single-flight per key, run in
//! their own tracked tasks, and are retried with backoff until they succeed (or the gateway
//! stops), so a slow or failing lookup holds up only the messages that need it. When a load
//! completes, the router is told through a channel and replays waiting for it are woken. Also
//! the filter a replay from memory goes through ([`members_only`]): only threads the user is in now.
//!
//! Ordering: a member list read from the database may predate membership changes that reached
//! the gateway while the read was under way. Every change applied while a load of its thread is
//! in flight is logged with that load and applied again on top of the snapshot when it lands, so
//! an older snapshot never undoes a newer change. When changes may have been missed altogether
//! (the upstream reconnected, a bound dropped events: [`Directory::forget_members`]), every load
//! in flight reads again instead of storing what it read before.
//!
//! Lookups from the router never await; the router never waits here. This module never decides
//! who receives a message (the hub does) and never uses a user's token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::Sender;
use crate::store::{Profile, Store};

/// What a load fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Members(Uuid),
    Profile(Uuid),
}

/// The current membership of some threads could not be established in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership of {waiting} thread(s) (first {thread}) not read within {}ms", .within.as_millis())]
pub struct Unchecked {
    pub thread: Uuid,
    pub waiting: usize,
    pub within: Duration,
}

struct Members {
    users: Arc<HashSet<Uuid>>,
    loaded_at: Instant,
}

/// A membership load under way.
#[derive(Default)]
struct MemberLoad {
    /// The last change per user applied since the load started (re-applied on its snapshot).
    changes: HashMap<Uuid, bool>,
    /// Changes may have been missed since the load started: its snapshot must be read again.
    read_again: bool,
}

/// What landing a member-list snapshot did.
#[derive(Debug, PartialEq, Eq)]
enum Landed {
    /// Stored, with this many newer changes applied on top of it.
    Stored { reapplied: usize },
    /// Not stored: the snapshot may predate changes that were missed; read it again.
    ReadAgain,
}

/// The caches, shared with the load tasks.
struct Caches {
    members: DashMap<Uuid, Members>,
    /// Membership loads under way, by thread. Whoever changes `members` holds this lock first,
    /// so a snapshot landing and a change being applied never interleave.
    member_loads: Mutex<HashMap<Uuid, MemberLoad>>,
    /// Wakes replays waiting for member lists.
    members_landed: Notify,
    profiles: DashMap<Uuid, (Sender, Instant)>,
    profiles_in_flight: DashMap<Uuid, ()>,
    max_threads: usize,
}

impl Caches {
    fn new(max_threads: usize) -> Caches {
        Caches {
            members: DashMap::new(),
            member_loads: Mutex::new(HashMap::new()),
            members_landed: Notify::new(),
            profiles: DashMap::new(),
            profiles_in_flight: DashMap::new(),
            max_threads,
        }
    }

    /// The loads lock. Every update under it is complete before it is released, so a poisoned
    /// lock is taken over.
    fn loads(&self) -> MutexGuard<'_, HashMap<Uuid, MemberLoad>> {
        self.member_loads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a load of `thread`; false when one is already under way.
    fn begin_member_load(&self, thread: Uuid) -> bool {
        let mut loads = self.loads();
        if loads.contains_key(&thread) {
            return false;
        }
        loads.insert(thread, MemberLoad::default());
        true
    }

    /// A snapshot of `thread`'s participants, read after its load began.
    fn land_members(&self, thread: Uuid, users: Vec<Uuid>) -> Landed {
        let mut loads = self.loads();
        let load = loads.remove(&thread).unwrap_or_default();
        if load.read_again {
            loads.insert(thread, MemberLoad::default());
            return Landed::ReadAgain;
        }
        let mut users: HashSet<Uuid> = users.into_iter().collect();
        for (user, present) in &load.changes {
            if *present {
                users.insert(*user);
            } else {
                users.remove(user);
            }
        }
        self.evict_if_full();
        self.members.insert(thread, Members { users: Arc::new(users), loaded_at: Instant::now() });
        drop(loads);
        self.members_landed.notify_waiters();
        Landed::Stored { reapplied: load.changes.len() }
    }

    /// A load that ended without a snapshot (the gateway stops).
    fn abandon_member_load(&self, thread: Uuid) {
        self.loads().remove(&thread);
    }

    fn apply_membership(&self, thread: Uuid, user: Uuid, present: bool) {
        let mut loads = self.loads();
        if let Some(load) = loads.get_mut(&thread) {
            load.changes.insert(user, present);
        }
        if let Some(mut m) = self.members.get_mut(&thread) {
            if m.users.contains(&user) != present {
                let mut users = (*m.users).clone();
                if present {
                    users.insert(user);
                } else {
                    users.remove(&user);
                }
                m.users = Arc::new(users);
            }
        }
        drop(loads);
    }

    fn forget_members(&self) {
        let mut loads = self.loads();
        for load in loads.values_mut() {
            load.changes.clear();
            load.read_again = true;
        }
        self.members.clear();
        drop(loads);
    }

    /// A member list loaded less than `ttl` ago (and kept current by the change feed since).
    fn fresh_members(&self, thread: &Uuid, ttl: Duration) -> Option<Arc<HashSet<Uuid>>> {
        let entry = self.members.get(thread)?;
        (entry.loaded_at.elapsed() < ttl).then(|| entry.users.clone())
    }

    fn store_profile(&self, user: Uuid, list: Vec<Profile>) {
        if self.profiles.len() > self.max_threads.saturating_mul(4) {
            self.profiles.clear();
        }
        // A sender without a profile (deleted account) still gets a name: never wait forever.
        let sender = list
            .into_iter()
            .find(|p| p.id == user)
            .map(|p| Sender { full_name: p.full_name, role: p.role })
            .unwrap_or_else(Sender::unknown);
        self.profiles.insert(user, (sender, Instant::now()));
        self.profiles_in_flight.remove(&user);
    }

    fn evict_if_full(&self) {
        if self.members.len() < self.max_threads {
            return;
        }
        // Drop an arbitrary tenth; they reload on demand (a reload reads the current list).
        let victims: Vec<Uuid> = self.members.iter().take(self.max_threads / 10 + 1).map(|e| *e.key()).collect();
        for id in victims {
            self.members.remove(&id);
        }
    }
}

/// Membership and profile caches. One per gateway, shared behind an `Arc`.
pub struct Directory {
    store: Store,
    ttl: Duration,
    caches: Arc<Caches>,
    loaded: mpsc::UnboundedSender<Key>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// What [`Directory::new`] is built from.
pub struct DirectoryParts {
    pub store: Store,
    pub ttl: Duration,
    pub max_threads: usize,
    pub metrics: Arc<Metrics>,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

impl Directory {
    /// A directory and the receiver of "key loaded" notices (for the router).
    pub fn new(parts: DirectoryParts) -> (Arc<Directory>, mpsc::UnboundedReceiver<Key>) {
        let (loaded, rx) = mpsc::unbounded_channel();
        let DirectoryParts { store, ttl, max_threads, metrics, tasks, stop } = parts;
        let caches = Arc::new(Caches::new(max_threads));
        (Arc::new(Directory { store, ttl, caches, loaded, metrics, tasks, stop }), rx)
    }

    /// Participants of a thread if cached. A stale entry is still answered (the change feed keeps
    /// it current) and refreshed in the background.
    pub fn members(&self, thread_id: &Uuid) -> Option<Arc<HashSet<Uuid>>> {
        let entry = self.caches.members.get(thread_id)?;
        let users = entry.users.clone();
        let stale = entry.loaded_at.elapsed() >= self.ttl;
        drop(entry);
        if stale {
            self.request(Key::Members(*thread_id));
        }
        Some(users)
    }

    /// The current participants of each of `threads`, for a replay from memory: an entry loaded
    /// within `CACHE_TTL_SECS` and kept current by the change feed since; anything else is loaded
    /// (single flight, shared with the router) and waited for, up to `within` in all.
    pub async fn current_members(
        &self,
        threads: &[Uuid],
        within: Duration,
    ) -> Result<HashMap<Uuid, Arc<HashSet<Uuid>>>, Unchecked> {
        let deadline = tokio::time::Instant::now() + within;
        let mut found = HashMap::with_capacity(threads.len());
        let mut missing: Vec<Uuid> = threads.to_vec();
        loop {
            // Armed before looking, so a load landing in between still wakes this wait.
            let landed = self.caches.members_landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            missing.retain(|thread| match self.caches.fresh_members(thread, self.ttl) {
                Some(users) => {
                    found.insert(*thread, users);
                    false
                }
                None => true,
            });
            let Some(first) = missing.first().copied() else { return Ok(found) };
            for thread in &missing {
                self.request(Key::Members(*thread));
            }
            if tokio::time::timeout_at(deadline, landed).await.is_err() {
                return Err(Unchecked { thread: first, waiting: missing.len(), within });
            }
        }
    }

    /// A sender's name and role if cached.
    pub fn profile(&self, user_id: &Uuid) -> Option<Sender> {
        let entry = self.caches.profiles.get(user_id)?;
        let sender = entry.0.clone();
        let stale = entry.1.elapsed() >= self.ttl;
        drop(entry);
        if stale {
            self.request(Key::Profile(*user_id));
        }
        Some(sender)
    }

    /// Applies a membership change from the upstream: to the cached thread, and to any load of it
    /// under way (see the module's ordering note).
    pub fn apply_membership(&self, thread_id: Uuid, user_id: Uuid, present: bool) {
        self.caches.apply_membership(thread_id, user_id, present);
    }

    /// Forgets every cached membership (membership events may have been missed); loads under way
    /// read again.
    pub fn forget_members(&self) {
        self.caches.forget_members();
    }

    /// Starts loading `key` unless a load is already running (single flight). The load retries
    /// with backoff until it succeeds; the router hears of it through the "loaded" channel.
    pub fn request(&self, key: Key) {
        let new = match key {
            Key::Members(thread) => self.caches.begin_member_load(thread),
            Key::Profile(user) => self.caches.profiles_in_flight.insert(user, ()).is_none(),
        };
        if !new {
            return;
        }
        let (store, stop, loaded, caches, metrics) =
            (self.store.clone(), self.stop.clone(), self.loaded.clone(), self.caches.clone(), self.metrics.clone());
        self.tasks.spawn(async move {
            let mut delays = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                let outcome = match key {
                    Key::Members(thread) => store.thread_participants(thread).await.map(|users| {
                        match caches.land_members(thread, users) {
                            Landed::Stored { reapplied } => {
                                if reapplied > 0 {
                                    metrics.membership_reapplied(reapplied as u64);
                                    tracing::info!(thread = %thread, reapplied, "member list read before newer membership changes: changes applied on top");
                                }
                                true
                            }
                            Landed::ReadAgain => false,
                        }
                    }),
                    Key::Profile(user) => store.profiles(&[user]).await.map(|list| {
                        caches.store_profile(user, list);
                        true
                    }),
                };
                let delay = match outcome {
                    Ok(true) => {
                        let _ = loaded.send(key);
                        return;
                    }
                    // Membership events were missed while it was read: read it again at once.
                    Ok(false) => Duration::ZERO,
                    Err(e) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::warn!(?key, error = %e, retry_in_ms = delay.as_millis() as u64, "routing lookup failed; retrying");
                        delay
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {
                        if let Key::Members(thread) = key {
                            caches.abandon_member_load(thread);
                        }
                        return;
                    }
                }
            }
        });
    }
}

/// The threads of a replay from memory (frames with their thread), each once, in order.
pub fn threads_of<T>(frames: &[(Uuid, T)]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    frames.iter().map(|(thread, _)| *thread).filter(|thread| seen.insert(*thread)).collect()
}

/// The frames of a replay from memory whose thread `user_id` currently participates in (`members`:
/// the current participants by thread; a thread missing from it counts as not the user's), in
/// order; and how many were withheld.
pub fn members_only<T>(
    frames: Vec<(Uuid, T)>,
    user_id: &Uuid,
    members: &HashMap<Uuid, Arc<HashSet<Uuid>>>,
) -> (Vec<T>, usize) {
    let total = frames.len();
    let kept: Vec<T> = frames
        .into_iter()
        .filter(|(thread, _)| members.get(thread).is_some_and(|users| users.contains(user_id)))
        .map(|(_, frame)| frame)
        .collect();
    let withheld = total - kept.len();
    (kept, withheld)
}

#[cfg(test)]
mod tests;
