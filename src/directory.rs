//! Directory: who participates in which thread, and who senders are, for the routing path.
//!
//! Owns the thread-membership cache (thread → participant user ids, kept fresh by the upstream's
//! `thread_participants` events, bounded, trusted for `CACHE_TTL_SECS` after a load) and the
//! sender-profile cache, and all of the routing path's PostgREST I/O: loads are single-flight per
//! key, run in their own tracked tasks, and are retried with backoff until they succeed (or the
//! gateway stops), so a slow or failing lookup holds up only the messages that need it. When a
//! load completes, the router is told through a channel. Lookups never await; the router never
//! waits here. This module never decides who receives a message (the hub does) and never uses a
//! user's token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::model::Sender;
use crate::store::{Profile, Store};

/// What a load fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Members(Uuid),
    Profile(Uuid),
}

enum Loaded {
    Members(Vec<Uuid>),
    Profiles(Vec<Profile>),
}

struct Members {
    users: Arc<HashSet<Uuid>>,
    loaded_at: Instant,
}

/// The caches, shared with the load tasks.
struct Caches {
    members: DashMap<Uuid, Members>,
    profiles: DashMap<Uuid, (Sender, Instant)>,
    in_flight: DashMap<Key, ()>,
    max_threads: usize,
}

impl Caches {
    fn store(&self, key: Key, value: Loaded) {
        let now = Instant::now();
        match (key, value) {
            (Key::Members(thread), Loaded::Members(users)) => {
                self.evict_if_full();
                self.members.insert(thread, Members { users: Arc::new(users.into_iter().collect()), loaded_at: now });
            }
            (Key::Profile(user), Loaded::Profiles(list)) => {
                if self.profiles.len() > self.max_threads.saturating_mul(4) {
                    self.profiles.clear();
                }
                // A sender without a profile (deleted account) still gets a name: never wait forever.
                let sender = list
                    .into_iter()
                    .find(|p| p.id == user)
                    .map(|p| Sender { full_name: p.full_name, role: p.role })
                    .unwrap_or_else(Sender::unknown);
                self.profiles.insert(user, (sender, now));
            }
            _ => {}
        }
        self.in_flight.remove(&key);
    }

    fn evict_if_full(&self) {
        if self.members.len() < self.max_threads {
            return;
        }
        // Drop an arbitrary tenth; they reload on demand.
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
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Directory {
    /// A directory and the receiver of "key loaded" notices (for the router).
    pub fn new(
        store: Store,
        ttl: Duration,
        max_threads: usize,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> (Arc<Directory>, mpsc::UnboundedReceiver<Key>) {
        let (loaded, rx) = mpsc::unbounded_channel();
        let caches = Arc::new(Caches {
            members: DashMap::new(),
            profiles: DashMap::new(),
            in_flight: DashMap::new(),
            max_threads,
        });
        (Arc::new(Directory { store, ttl, caches, loaded, tasks, stop }), rx)
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

    /// Applies a membership change from the upstream to a cached thread.
    pub fn apply_membership(&self, thread_id: Uuid, user_id: Uuid, present: bool) {
        if let Some(mut m) = self.caches.members.get_mut(&thread_id) {
            if m.users.contains(&user_id) != present {
                let mut users = (*m.users).clone();
                if present {
                    users.insert(user_id);
                } else {
                    users.remove(&user_id);
                }
                m.users = Arc::new(users);
            }
        }
    }

    /// Forgets every cached membership (membership events may have been missed).
    pub fn forget_members(&self) {
        self.caches.members.clear();
    }

    /// Starts loading `key` unless a load is already running (single flight). The load retries
    /// with backoff until it succeeds; the router hears of it through the "loaded" channel.
    pub fn request(&self, key: Key) {
        if self.caches.in_flight.insert(key, ()).is_some() {
            return;
        }
        let (store, stop, loaded, caches) =
            (self.store.clone(), self.stop.clone(), self.loaded.clone(), self.caches.clone());
        self.tasks.spawn(async move {
            let mut delays = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                let outcome = match key {
                    Key::Members(thread) => store.thread_participants(thread).await.map(Loaded::Members),
                    Key::Profile(user) => store.profiles(&[user]).await.map(Loaded::Profiles),
                };
                match outcome {
                    Ok(value) => {
                        caches.store(key, value);
                        let _ = loaded.send(key);
                        return;
                    }
                    Err(e) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::warn!(?key, error = %e, retry_in_ms = delay.as_millis() as u64, "routing lookup failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
        });
    }
}
