//! Hub: who is connected, who may see which thread, and fan-out of new messages.
//!
//! Owns the session registry (user → sessions, one per device), the thread membership cache
//! (thread → participant user ids, loaded with the service key on first use, kept fresh by the
//! upstream `thread_participants` change events, bounded and expiring), the sender profile cache,
//! explicit per-session thread subscriptions and mutes, the per-user realtime switch of the REST
//! subscribe/unsubscribe endpoints, and the router task that turns upstream events into
//! deliveries: deduplicated by message id, caught up through PostgREST after an upstream gap.
//!
//! Fan-out serializes each `new_message` frame once and pushes the same bytes into every
//! recipient's bounded queue with `try_send`; it never awaits a client. A session whose queue is
//! full is closed as too slow. The hub must never deliver a message to a session whose user is
//! not a participant of the thread (or explicitly admitted by RLS), and never hold a map guard
//! across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::config::Limits;
use crate::protocol::{self, ChatMessage, Sender, ServerMessage};
use crate::store::{MessageRow, Store};
use crate::upstream::{Change, ChangeKind, UpstreamEvent};

/// What the hub pushes into a session's queue: a pre-serialized text frame.
pub type Frame = Utf8Bytes;

/// A session's bounded outgoing queue: filled by the hub with `try_push`, drained by the session.
///
/// A `VecDeque` behind a mutex plus a `Notify`, rather than a channel, so that an idle session
/// owns no pre-allocated slots: the buffer grows with a burst and is released when drained.
pub struct Queue {
    frames: Mutex<VecDeque<Frame>>,
    ready: Notify,
    capacity: usize,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    Full,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue { frames: Mutex::new(VecDeque::new()), ready: Notify::new(), capacity }
    }

    /// Queues a frame without waiting; `Full` when the session is too far behind.
    pub fn try_push(&self, frame: &Frame) -> Result<(), PushError> {
        {
            let mut frames = self.frames.lock().map_err(|_| PushError::Full)?;
            if frames.len() >= self.capacity {
                return Err(PushError::Full);
            }
            frames.push_back(frame.clone());
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Takes the next frame if one is queued.
    pub fn try_pop(&self) -> Option<Frame> {
        let mut frames = self.frames.lock().ok()?;
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > 16 {
            // Give a burst's buffer back: idle sessions should cost (almost) nothing.
            frames.shrink_to(0);
        }
        frame
    }

    /// Waits for the next frame.
    pub async fn pop(&self) -> Frame {
        loop {
            if let Some(frame) = self.try_pop() {
                return frame;
            }
            self.ready.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.frames.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a session is being closed; sent to the client as the close frame's code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub const CLOSE_SLOW: CloseReason = CloseReason { code: 4008, reason: "slow client: send queue overflow" };
pub const CLOSE_SHUTDOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };

/// The part of a session the hub shares with the session's own task.
pub struct SessionShared {
    pub id: u64,
    pub user_id: Uuid,
    pub queue: Queue,
    muted: Mutex<HashSet<Uuid>>,
    has_muted: AtomicBool,
    subscriptions: Mutex<HashSet<Uuid>>,
    kill: Notify,
    kill_reason: OnceLock<CloseReason>,
}

impl SessionShared {
    /// Asks the session to close with `reason` (the first reason wins).
    pub fn kill(&self, reason: CloseReason) {
        if self.kill_reason.set(reason).is_ok() {
            self.kill.notify_one();
        }
    }

    /// Resolves once the session was asked to close; returns why.
    pub async fn killed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.kill_reason.get() {
                return reason.clone();
            }
            self.kill.notified().await;
        }
    }

    fn is_muted(&self, thread_id: &Uuid) -> bool {
        self.has_muted.load(Ordering::Relaxed) && self.muted.lock().map(|m| m.contains(thread_id)).unwrap_or(false)
    }

    fn push(&self, frame: &Frame, stats: &Stats) {
        if self.kill_reason.get().is_some() {
            return;
        }
        match self.queue.try_push(frame) {
            Ok(()) => {
                stats.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            Err(PushError::Full) => {
                stats.slow_drops.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session = self.id, user = %self.user_id, "dropping slow client: send queue full");
                self.kill(CLOSE_SLOW);
            }
        }
    }
}

/// Why a session could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("server is at its connection limit")]
    ServerFull,
    #[error("too many connections for this user")]
    UserFull,
}

/// Why `subscribe_thread` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many thread subscriptions on this connection (limit {0})")]
    TooMany(usize),
}

/// Counters for logs, `/metrics` and the benchmark.
#[derive(Default)]
pub struct Stats {
    pub deliveries: AtomicU64,
    pub messages_routed: AtomicU64,
    pub duplicates_skipped: AtomicU64,
    pub slow_drops: AtomicU64,
    pub catchup_messages: AtomicU64,
    pub upstream_losses: AtomicU64,
    pub unroutable: AtomicU64,
}

struct Members {
    users: Arc<HashSet<Uuid>>,
    loaded_at: Instant,
}

/// The hub. One per gateway, shared behind an `Arc`.
pub struct Hub {
    store: Store,
    limits: Limits,
    cache_ttl: Duration,
    cache_max_threads: usize,
    sessions_by_user: DashMap<Uuid, Vec<Arc<SessionShared>>>,
    explicit: DashMap<Uuid, Vec<Arc<SessionShared>>>,
    members: DashMap<Uuid, Members>,
    profiles: DashMap<Uuid, (Sender, Instant)>,
    realtime_off: DashMap<Uuid, ()>,
    ready: AtomicBool,
    session_count: AtomicUsize,
    next_id: AtomicU64,
    pub stats: Stats,
}

impl Hub {
    pub fn new(store: Store, limits: Limits, cache_ttl: Duration, cache_max_threads: usize) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            limits,
            cache_ttl,
            cache_max_threads,
            sessions_by_user: DashMap::new(),
            explicit: DashMap::new(),
            members: DashMap::new(),
            profiles: DashMap::new(),
            realtime_off: DashMap::new(),
            ready: AtomicBool::new(false),
            session_count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the upstream subscription is live.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn session_count(&self) -> usize {
        self.session_count.load(Ordering::Relaxed)
    }

    // ----- sessions -------------------------------------------------------------------------

    /// Registers a new session of `user_id`; returns its shared half (which holds its queue).
    pub fn register(&self, user_id: Uuid) -> Result<Arc<SessionShared>, RegisterError> {
        let reserved = self.session_count.fetch_add(1, Ordering::AcqRel);
        if reserved >= self.limits.max_connections {
            self.session_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RegisterError::ServerFull);
        }
        let shared = Arc::new(SessionShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id,
            queue: Queue::new(self.limits.queue_capacity),
            muted: Mutex::new(HashSet::new()),
            has_muted: AtomicBool::new(false),
            subscriptions: Mutex::new(HashSet::new()),
            kill: Notify::new(),
            kill_reason: OnceLock::new(),
        });
        let mut entry = self.sessions_by_user.entry(user_id).or_default();
        if entry.len() >= self.limits.max_connections_per_user {
            drop(entry);
            self.session_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RegisterError::UserFull);
        }
        entry.push(shared.clone());
        Ok(shared)
    }

    /// Removes a session and all its subscriptions.
    pub fn unregister(&self, session: &Arc<SessionShared>) {
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
        let threads: Vec<Uuid> = session.subscriptions.lock().map(|s| s.iter().copied().collect()).unwrap_or_default();
        for thread_id in threads {
            self.remove_explicit(thread_id, session.id);
        }
    }

    /// Adds an explicit thread subscription, after RLS admitted it. Also un-mutes the thread.
    pub fn subscribe_thread(&self, session: &Arc<SessionShared>, thread_id: Uuid) -> Result<(), SubscribeError> {
        {
            let mut subs = session.subscriptions.lock().map_err(|_| SubscribeError::TooMany(0))?;
            if !subs.contains(&thread_id) && subs.len() >= self.limits.max_thread_subscriptions {
                return Err(SubscribeError::TooMany(self.limits.max_thread_subscriptions));
            }
            subs.insert(thread_id);
        }
        if let Ok(mut muted) = session.muted.lock() {
            muted.remove(&thread_id);
            session.has_muted.store(!muted.is_empty(), Ordering::Relaxed);
        }
        let mut list = self.explicit.entry(thread_id).or_default();
        if !list.iter().any(|s| s.id == session.id) {
            list.push(session.clone());
        }
        Ok(())
    }

    /// Drops an explicit subscription and mutes the thread for this session, so that a thread
    /// the user participates in stops arriving on this connection until subscribed again.
    pub fn unsubscribe_thread(&self, session: &Arc<SessionShared>, thread_id: Uuid) {
        if let Ok(mut subs) = session.subscriptions.lock() {
            subs.remove(&thread_id);
        }
        if let Ok(mut muted) = session.muted.lock() {
            if muted.len() < self.limits.max_thread_subscriptions.max(64) * 4 {
                muted.insert(thread_id);
            }
            session.has_muted.store(!muted.is_empty(), Ordering::Relaxed);
        }
        self.remove_explicit(thread_id, session.id);
    }

    fn remove_explicit(&self, thread_id: Uuid, session_id: u64) {
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) = self.explicit.entry(thread_id) {
            entry.get_mut().retain(|s| s.id != session_id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// REST `subscribe` / `unsubscribe`: the user's participant threads are (not) pushed live.
    pub fn set_realtime(&self, user_id: Uuid, enabled: bool) {
        if enabled {
            self.realtime_off.remove(&user_id);
        } else {
            self.realtime_off.insert(user_id, ());
        }
    }

    pub fn realtime_enabled(&self, user_id: &Uuid) -> bool {
        !self.realtime_off.contains_key(user_id)
    }

    /// Sends one frame to every session (upstream status, shutdown notices).
    pub fn broadcast(&self, frame: &Frame) {
        for entry in self.sessions_by_user.iter() {
            for session in entry.value() {
                session.push(frame, &self.stats);
            }
        }
    }

    /// Closes every session with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        for entry in self.sessions_by_user.iter() {
            for session in entry.value() {
                session.kill(reason.clone());
            }
        }
    }

    // ----- routing --------------------------------------------------------------------------

    /// Every session that must receive a message of `thread_id`, given the thread's participants.
    /// Participants' sessions (unless the user turned realtime off or the session muted the
    /// thread) plus sessions that subscribed explicitly; each at most once.
    pub fn recipients(&self, thread_id: Uuid, participants: &HashSet<Uuid>, out: &mut Vec<Arc<SessionShared>>) {
        out.clear();
        for user_id in participants {
            if self.realtime_off.contains_key(user_id) {
                continue;
            }
            if let Some(sessions) = self.sessions_by_user.get(user_id) {
                for session in sessions.iter() {
                    if !session.is_muted(&thread_id) {
                        out.push(session.clone());
                    }
                }
            }
        }
        if let Some(explicit) = self.explicit.get(&thread_id) {
            for session in explicit.iter() {
                // Explicit subscribers must still be participants: membership changes revoke.
                if !participants.contains(&session.user_id) {
                    continue;
                }
                if !out.iter().any(|s| s.id == session.id) {
                    out.push(session.clone());
                }
            }
        }
    }

    /// Serializes a message once and queues the same bytes for every recipient.
    pub fn fan_out(
        &self,
        message: &ChatMessage,
        participants: &HashSet<Uuid>,
        scratch: &mut Vec<Arc<SessionShared>>,
    ) -> usize {
        self.recipients(message.thread_id, participants, scratch);
        if scratch.is_empty() {
            return 0;
        }
        let frame: Frame = ServerMessage::NewMessage { data: message }.to_json().into();
        for session in scratch.iter() {
            session.push(&frame, &self.stats);
        }
        let n = scratch.len();
        scratch.clear();
        n
    }

    /// Participants of a thread: from the cache, or loaded with the service key.
    async fn participants(&self, thread_id: Uuid) -> Option<Arc<HashSet<Uuid>>> {
        if let Some(m) = self.members.get(&thread_id) {
            if m.loaded_at.elapsed() < self.cache_ttl {
                return Some(m.users.clone());
            }
        }
        for attempt in 1..=3u32 {
            match self.store.thread_participants(thread_id).await {
                Ok(users) => {
                    let users: Arc<HashSet<Uuid>> = Arc::new(users.into_iter().collect());
                    self.evict_if_full();
                    self.members.insert(thread_id, Members { users: users.clone(), loaded_at: Instant::now() });
                    return Some(users);
                }
                Err(e) => {
                    tracing::warn!(thread = %thread_id, attempt, error = %e, "could not load thread participants");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        None
    }

    fn evict_if_full(&self) {
        if self.members.len() < self.cache_max_threads {
            return;
        }
        let ttl = self.cache_ttl;
        self.members.retain(|_, m| m.loaded_at.elapsed() < ttl);
        if self.members.len() >= self.cache_max_threads {
            // Still full of fresh entries: drop an arbitrary tenth; they reload on demand.
            let victims: Vec<Uuid> =
                self.members.iter().take(self.cache_max_threads / 10 + 1).map(|e| *e.key()).collect();
            for id in victims {
                self.members.remove(&id);
            }
        }
    }

    /// Applies a `thread_participants` change to the membership cache (and revokes explicit
    /// subscriptions of a removed participant).
    fn apply_membership(&self, change: &Change) {
        let pair = |v: &serde_json::Value| -> Option<(Uuid, Uuid)> {
            let thread = v.get("thread_id")?.as_str().and_then(|s| Uuid::parse_str(s).ok())?;
            let user = v.get("user_id")?.as_str().and_then(|s| Uuid::parse_str(s).ok())?;
            Some((thread, user))
        };
        let update = |thread_id: Uuid, user_id: Uuid, present: bool| {
            if let Some(mut m) = self.members.get_mut(&thread_id) {
                let mut users = (*m.users).clone();
                if present {
                    users.insert(user_id);
                } else {
                    users.remove(&user_id);
                }
                m.users = Arc::new(users);
            }
            if !present {
                if let Some(sessions) = self.sessions_by_user.get(&user_id) {
                    let ids: Vec<u64> = sessions.iter().map(|s| s.id).collect();
                    for s in sessions.iter() {
                        if let Ok(mut subs) = s.subscriptions.lock() {
                            subs.remove(&thread_id);
                        }
                    }
                    drop(sessions);
                    for id in ids {
                        self.remove_explicit(thread_id, id);
                    }
                }
                tracing::info!(thread = %thread_id, user = %user_id, "participant removed");
            }
        };
        match change.kind {
            ChangeKind::Insert => {
                if let Some((t, u)) = pair(&change.record) {
                    update(t, u, true);
                }
            }
            ChangeKind::Update => {
                let old = pair(&change.old_record);
                let new = pair(&change.record);
                if let (Some(old), Some(new)) = (old, new) {
                    if old != new {
                        update(old.0, old.1, false);
                    }
                }
                if let Some((t, u)) = new {
                    update(t, u, true);
                }
            }
            ChangeKind::Delete => match pair(&change.old_record) {
                Some((t, u)) => update(t, u, false),
                // Without the key we cannot tell who left: forget the whole cache to be safe.
                None => self.members.clear(),
            },
        }
    }

    /// The sender's name and role (cached; loaded with the service key).
    async fn sender(&self, sender_id: Uuid) -> Sender {
        if let Some(entry) = self.profiles.get(&sender_id) {
            if entry.1.elapsed() < self.cache_ttl {
                return entry.0.clone();
            }
        }
        self.load_profiles(&[sender_id]).await;
        self.profiles
            .get(&sender_id)
            .map(|e| e.0.clone())
            .unwrap_or_else(|| Sender { full_name: "Unknown".into(), role: "unknown".into() })
    }

    async fn load_profiles(&self, ids: &[Uuid]) {
        if self.profiles.len() > self.cache_max_threads.saturating_mul(4) {
            self.profiles.clear();
        }
        for chunk in ids.chunks(100) {
            match self.store.profiles(chunk).await {
                Ok(list) => {
                    for p in list {
                        self.profiles.insert(p.id, (Sender { full_name: p.full_name, role: p.role }, Instant::now()));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not load sender profiles"),
            }
        }
    }
}

/// The router: the one task that consumes upstream events in order.
pub struct Router {
    hub: Arc<Hub>,
    catchup_margin: Duration,
    seen: HashSet<Uuid>,
    seen_order: VecDeque<Uuid>,
    seen_capacity: usize,
    last_seen: Option<DateTime<Utc>>,
    live_since: Option<DateTime<Utc>>,
    scratch: Vec<Arc<SessionShared>>,
    down: bool,
}

const CATCHUP_PAGE: u32 = 1000;
const CATCHUP_MAX: usize = 100_000;

impl Router {
    pub fn new(hub: Arc<Hub>, catchup_margin: Duration) -> Router {
        Router {
            hub,
            catchup_margin,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            seen_capacity: 200_000,
            last_seen: None,
            live_since: None,
            scratch: Vec::new(),
            down: true,
        }
    }

    /// Consumes upstream events until the channel closes.
    pub async fn run(mut self, mut events: mpsc::Receiver<UpstreamEvent>) {
        while let Some(event) = events.recv().await {
            self.handle(event).await;
        }
        tracing::info!("router stopped: upstream closed");
    }

    pub async fn handle(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Live { generation } => {
                tracing::info!(generation, "upstream live");
                let was_down = self.down;
                self.down = false;
                if self.live_since.is_none() {
                    self.live_since = Some(Utc::now());
                }
                if generation > 1 || was_down && self.last_seen.is_some() {
                    // Membership events may have been missed too.
                    self.hub.members.clear();
                    self.catch_up().await;
                }
                self.hub.ready.store(true, Ordering::Release);
            }
            UpstreamEvent::Down { reason } => {
                self.hub.ready.store(false, Ordering::Release);
                if !self.down {
                    self.down = true;
                    self.hub.stats.upstream_losses.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%reason, "upstream lost; clients notified");
                    let frame: Frame = ServerMessage::Error { message: protocol::UPSTREAM_ERROR }.to_json().into();
                    self.hub.broadcast(&frame);
                }
            }
            UpstreamEvent::Change(change) => self.change(change).await,
        }
    }

    async fn change(&mut self, change: Change) {
        if change.schema != "public" {
            return;
        }
        match change.table.as_str() {
            "thread_participants" => self.hub.apply_membership(&change),
            "messages" if change.kind == ChangeKind::Insert => {
                if change.errors.as_ref().is_some_and(|e| !e.is_null()) {
                    tracing::warn!(errors = %change.errors.as_ref().map(|e| e.to_string()).unwrap_or_default(), "upstream could not send a row; filling the gap from the database");
                    self.catch_up().await;
                    return;
                }
                match serde_json::from_value::<MessageRow>(change.record) {
                    Ok(row) => self.deliver(row).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed message record from upstream; filling the gap from the database");
                        self.catch_up().await;
                    }
                }
            }
            _ => {}
        }
    }

    fn remember(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > self.seen_capacity {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    async fn deliver(&mut self, row: MessageRow) {
        if !self.remember(row.id) {
            self.hub.stats.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(t) = protocol::parse_time(&row.created_at) {
            if self.last_seen.is_none_or(|last| t > last) {
                self.last_seen = Some(t);
            }
        }
        let Some(participants) = self.hub.participants(row.thread_id).await else {
            self.hub.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(message = %row.id, thread = %row.thread_id, "membership unavailable: message not pushed live (clients get it from offline sync)");
            return;
        };
        let sender = match row.sender.clone() {
            Some(s) => s,
            None => self.hub.sender(row.sender_id).await,
        };
        let message = row.into_chat_message(sender);
        let n = self.hub.fan_out(&message, &participants, &mut self.scratch);
        self.hub.stats.messages_routed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(message = %message.id, thread = %message.thread_id, recipients = n, "delivered");
    }

    /// Fetches messages committed while the upstream could not tell us, and delivers those not
    /// already delivered, oldest first.
    async fn catch_up(&mut self) {
        let Some(from) = self.last_seen.or(self.live_since) else { return };
        let margin = chrono::Duration::from_std(self.catchup_margin).unwrap_or_else(|_| chrono::Duration::seconds(60));
        let mut since = protocol::format_time(from - margin);
        let mut total = 0usize;
        let mut delivered = 0usize;
        loop {
            let page = match self.hub.store.messages_since(&since, CATCHUP_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "catch-up after upstream gap failed; clients recover through offline sync");
                    return;
                }
            };
            let n = page.len();
            total += n;
            let unknown: Vec<Uuid> = {
                let mut ids: Vec<Uuid> =
                    page.iter().filter(|r| !self.seen.contains(&r.id)).map(|r| r.sender_id).collect();
                ids.sort();
                ids.dedup();
                ids.retain(|id| !self.hub.profiles.contains_key(id));
                ids
            };
            self.hub.load_profiles(&unknown).await;
            let mut next_since = None;
            for row in page {
                next_since = Some(row.created_at.clone());
                if self.seen.contains(&row.id) {
                    continue;
                }
                delivered += 1;
                self.deliver(row).await;
            }
            if n < CATCHUP_PAGE as usize || total >= CATCHUP_MAX {
                break;
            }
            match next_since {
                // `gte` on the last page's newest time: rows sharing it are seen again and skipped.
                Some(s) if s != since => since = s,
                _ => break,
            }
        }
        self.hub.stats.catchup_messages.fetch_add(delivered as u64, Ordering::Relaxed);
        tracing::info!(scanned = total, delivered, "caught up after upstream gap");
    }
}

/// Builds the participant sets used by tests and the property test below.
#[doc(hidden)]
pub fn participants_of(pairs: &[(Uuid, Uuid)]) -> HashMap<Uuid, HashSet<Uuid>> {
    let mut map: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for (thread, user) in pairs {
        map.entry(*thread).or_default().insert(*user);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hub() -> Arc<Hub> {
        let store = Store::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/rest/v1".into(),
            "a".into(),
            "s".into(),
            Duration::from_secs(1),
        );
        let limits = Limits {
            max_connections: 1000,
            max_connections_per_user: 3,
            max_message_bytes: 4096,
            read_buffer_bytes: 512,
            rate_per_sec: 10,
            queue_capacity: 4,
            max_thread_subscriptions: 8,
            ping_interval: Duration::from_secs(30),
        };
        Hub::new(store, limits, Duration::from_secs(60), 100)
    }

    fn msg(thread_id: Uuid) -> ChatMessage {
        ChatMessage {
            id: Uuid::new_v4(),
            thread_id,
            sender_id: Uuid::new_v4(),
            content: "hi".into(),
            message_type: "text".into(),
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            sender: Sender { full_name: "A".into(), role: "teacher".into() },
        }
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
    fn slow_session_is_killed_not_waited_for() {
        let hub = hub();
        let thread = Uuid::new_v4();
        let (slow_user, fast_user) = (Uuid::new_v4(), Uuid::new_v4());
        let slow = hub.register(slow_user).expect("fits");
        let fast = hub.register(fast_user).expect("fits");
        let participants: HashSet<Uuid> = [slow_user, fast_user].into_iter().collect();
        let mut scratch = Vec::new();
        for _ in 0..6 {
            hub.fan_out(&msg(thread), &participants, &mut scratch);
            while fast.queue.try_pop().is_some() {}
        }
        assert_eq!(slow.kill_reason.get(), Some(&CLOSE_SLOW));
        assert!(hub.stats.slow_drops.load(Ordering::Relaxed) >= 1);
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
        hub.unsubscribe_thread(&s, thread);
        hub.recipients(thread, &participants, &mut out);
        assert!(out.is_empty());
        hub.subscribe_thread(&s, thread).expect("ok");
        hub.recipients(thread, &participants, &mut out);
        assert_eq!(out.len(), 1, "explicit + participant counted once");
        hub.set_realtime(user, false);
        hub.recipients(thread, &participants, &mut out);
        assert_eq!(out.len(), 1, "explicit subscription survives the user-level switch");
        hub.unsubscribe_thread(&s, thread);
        hub.recipients(thread, &participants, &mut out);
        assert!(out.is_empty());
    }

    proptest! {
        /// Nobody receives a message of a thread their user does not participate in, whatever
        /// the memberships, explicit subscriptions and mutes.
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
            let sessions: Vec<Arc<SessionShared>> = (0..20)
                .filter_map(|i| hub.register(users[i % 10]).ok())
                .collect();
            for (t, s) in subscriptions {
                if let Some(s) = sessions.get(s as usize) { let _ = hub.subscribe_thread(s, threads[t as usize]); }
            }
            for (t, s) in mutes {
                if let Some(s) = sessions.get(s as usize) { hub.unsubscribe_thread(s, threads[t as usize]); }
            }
            let pairs: Vec<(Uuid, Uuid)> = membership.iter().map(|(t, u)| (threads[*t as usize], users[*u as usize])).collect();
            let all = participants_of(&pairs);
            let empty = HashSet::new();
            let participants = all.get(&threads[thread as usize]).unwrap_or(&empty);
            let mut out = Vec::new();
            hub.recipients(threads[thread as usize], participants, &mut out);
            let mut ids = HashSet::new();
            for s in &out {
                prop_assert!(participants.contains(&s.user_id));
                prop_assert!(ids.insert(s.id), "a session received a message twice");
                prop_assert!(!s.is_muted(&threads[thread as usize]));
            }
        }
    }
}
