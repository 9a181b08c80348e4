//! Router: the one task that consumes the upstream's events in order and turns them into
//! deliveries, exactly once.
//!
//! Owns ordering (per thread, a message waits behind the thread's earlier messages), the lookups
//! a message waits for (membership and sender, loaded by the [`Directory`] without ever blocking
//! this loop), deduplication by id over the whole gap-fill window ([`window::Seen`]), gap fill
//! after any loss ([`gap`]: upstream down, an unreadable change, a bound hit), readiness, the live
//! resume cursor (see [`cursor`]), and the ring of recent messages ([`History`]). A message counts
//! as delivered only once it has been fanned out; when a bound is hit the waiting messages are
//! dropped, clients get the upstream-error frame and a gap fill brings them back: never a silent
//! drop. The router never awaits PostgREST: every database call runs in a tracked task.

pub mod cursor;
pub mod gap;
pub mod window;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::directory::{Directory, Key};
use crate::history::{Entry, History};
use crate::hub::Hub;
use crate::model::{format_time, MessageRow};
use crate::protocol::{ServerMessage, UPSTREAM_ERROR};
use crate::session::outbox::{Outgoing, SessionHandle};
use crate::store::Store;
use crate::upstream::UpstreamEvent;
use cursor::Cursor;
use gap::GapPage;
use window::{Seen, Waiting};

/// Settings of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How far before the resume point a gap fill starts (transactions that committed late).
    pub catchup_margin: Duration,
    /// Most messages waiting for lookups or for a gap fill to finish.
    pub max_waiting: usize,
    /// How often the sync horizon is read for the live cursor.
    pub cursor_interval: Duration,
}

/// Readiness as `/readyz` reports it: upstream live and no gap left to fill.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    upstream_live: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn upstream_live(&self) -> bool {
        self.upstream_live.load(Ordering::Acquire)
    }
}

/// Something waiting in a thread's queue.
enum Waiter {
    Message { row: MessageRow, created_at: DateTime<Utc> },
    Membership { user_id: Uuid, present: bool },
}

enum GapState {
    Idle,
    /// A gap must be filled from this time, as soon as the upstream is live.
    Needed(DateTime<Utc>),
    Running {
        pages: mpsc::Receiver<GapPage>,
        again: Option<DateTime<Utc>>,
    },
}

/// The router and everything it owns.
pub struct Router {
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    loaded: mpsc::UnboundedReceiver<Key>,
    store: Store,
    history: Arc<History>,
    readiness: Arc<Readiness>,
    config: RouterConfig,
    tasks: TaskTracker,
    stop: CancellationToken,
    threads: HashMap<Uuid, VecDeque<Waiter>>,
    waiting: Waiting,
    held: VecDeque<UpstreamEvent>,
    seen: Seen,
    gap: GapState,
    cursor: Cursor,
    resume_point: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
    live: bool,
    ever_live: bool,
    scratch: Vec<Arc<SessionHandle>>,
}

/// Everything the router is built from.
pub struct RouterParts {
    pub hub: Arc<Hub>,
    pub directory: Arc<Directory>,
    pub loaded: mpsc::UnboundedReceiver<Key>,
    pub store: Store,
    pub history: Arc<History>,
    pub readiness: Arc<Readiness>,
    pub config: RouterConfig,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
    /// When the gateway started: messages before it were never routed here.
    pub started: DateTime<Utc>,
}

impl Router {
    pub fn new(parts: RouterParts) -> Router {
        let margin =
            chrono::Duration::from_std(parts.config.catchup_margin).unwrap_or_else(|_| chrono::Duration::seconds(60));
        let cursor =
            Cursor::new(parts.store.clone(), parts.tasks.clone(), parts.config.cursor_interval, parts.started - margin);
        Router {
            hub: parts.hub,
            directory: parts.directory,
            loaded: parts.loaded,
            store: parts.store,
            history: parts.history,
            readiness: parts.readiness,
            config: parts.config,
            tasks: parts.tasks,
            stop: parts.stop,
            threads: HashMap::new(),
            waiting: Waiting::default(),
            held: VecDeque::new(),
            seen: Seen::default(),
            gap: GapState::Idle,
            cursor,
            resume_point: None,
            started: parts.started,
            live: false,
            ever_live: false,
            scratch: Vec::new(),
        }
    }

    fn margin(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.catchup_margin).unwrap_or_else(|_| chrono::Duration::seconds(60))
    }

    /// Consumes upstream events until the upstream closes or the gateway stops.
    pub async fn run(mut self, mut events: mpsc::Receiver<UpstreamEvent>) {
        loop {
            let room = self.waiting.len() < self.config.max_waiting;
            tokio::select! {
                _ = self.stop.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                Some(key) = self.loaded.recv() => self.on_loaded(key),
                page = next_page(&mut self.gap), if room => self.on_gap_page(page),
                Some(point) = self.cursor.next_point() => self.cursor.offer(point, self.live && matches!(self.gap, GapState::Idle)),
            }
            self.after_step();
        }
        tracing::info!("router stopped");
    }

    /// Bookkeeping after every step: start a needed gap fill, readiness, the cursor.
    fn after_step(&mut self) {
        if let GapState::Needed(from) = self.gap {
            if self.live {
                self.start_gap(from);
            }
        }
        let ready = self.live && matches!(self.gap, GapState::Idle);
        self.readiness.ready.store(ready, Ordering::Release);
        self.readiness.upstream_live.store(self.live, Ordering::Release);
        if ready {
            self.cursor.request_if_due();
        }
        let stamped = self.cursor.stamped(self.waiting.oldest());
        let mut ring = self.history.lock();
        if stamped > ring.cursor {
            ring.cursor = stamped;
        }
        drop(ring);
        if let Some(point) = self.resume_point {
            // Ids below the next gap fill's window can never come back.
            self.seen.prune_below(point - self.margin() - chrono::Duration::seconds(60));
        }
    }

    fn on_event(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Live { generation } => self.on_live(generation),
            UpstreamEvent::Down { reason } => self.on_down(&reason.to_string()),
            change => {
                if matches!(self.gap, GapState::Running { .. }) {
                    // Older messages are still being read from the database: keep thread order.
                    self.hold(change);
                } else {
                    self.on_change(change);
                }
            }
        }
    }

    fn on_live(&mut self, generation: u64) {
        tracing::info!(generation, "upstream live");
        self.live = true;
        let from = match (self.ever_live, self.resume_point) {
            // First subscription: cover what committed since start while sessions could connect.
            (false, _) => self.started - self.margin(),
            (true, Some(point)) => point - self.margin(),
            (true, None) => self.started - self.margin(),
        };
        if self.ever_live {
            // Membership events may have been missed too.
            self.directory.forget_members();
        }
        self.ever_live = true;
        self.need_gap(from);
    }

    fn on_down(&mut self, reason: &str) {
        if !self.live {
            return;
        }
        self.live = false;
        self.cursor.invalidate();
        self.hub.metrics.upstream_lost();
        tracing::warn!(%reason, "upstream lost; clients notified");
        self.hub.broadcast(&error_frame());
    }

    fn hold(&mut self, change: UpstreamEvent) {
        if let UpstreamEvent::Message { row, .. } = &change {
            if let Some(t) = row.created() {
                self.waiting.add(row.id, t);
            }
        }
        self.held.push_back(change);
        self.check_bounds();
    }

    fn on_change(&mut self, change: UpstreamEvent) {
        if let Some(committed) = change.committed() {
            self.advance_resume_point(committed);
            self.cursor.on_commit(committed);
        }
        match change {
            UpstreamEvent::Message { row, .. } => self.accept(row),
            UpstreamEvent::Membership { thread_id, user_id, present, .. } => match self.threads.get_mut(&thread_id) {
                Some(queue) => queue.push_back(Waiter::Membership { user_id, present }),
                None => self.apply_membership(thread_id, user_id, present),
            },
            UpstreamEvent::ReadState { thread_id, user_id, last_read_at, .. } => {
                self.push_read_state(thread_id, user_id, last_read_at)
            }
            UpstreamEvent::RealtimeSwitch { user_id, enabled, .. } => self.hub.set_realtime(user_id, enabled),
            UpstreamEvent::Unreadable { table, reason, committed } => {
                tracing::warn!(%table, %reason, "unreadable change from upstream; filling the gap from the database");
                let from = committed.or(self.resume_point).unwrap_or(self.started) - self.margin();
                self.need_gap(from);
            }
            UpstreamEvent::Live { .. } | UpstreamEvent::Down { .. } => {}
        }
    }

    /// The resume point follows what the upstream delivered (commit times), never a row's
    /// `created_at`, and never runs ahead of the clock.
    fn advance_resume_point(&mut self, committed: DateTime<Utc>) {
        let clamped = committed.min(Utc::now() + chrono::Duration::seconds(5));
        if self.resume_point.is_none_or(|p| clamped > p) {
            self.resume_point = Some(clamped);
        }
    }

    /// A new message (live or from a gap fill): deduplicated, then delivered or queued behind
    /// its thread's earlier messages.
    fn accept(&mut self, row: MessageRow) {
        let Some(created_at) = row.created() else {
            tracing::warn!(message = %row.id, "message with an unreadable created_at; filling from the database");
            let from = self.resume_point.unwrap_or(self.started) - self.margin();
            self.need_gap(from);
            return;
        };
        if !self.seen.insert(row.id, created_at) {
            self.hub.metrics.duplicate();
            return;
        }
        let thread_id = row.thread_id;
        if let Some(queue) = self.threads.get_mut(&thread_id) {
            self.waiting.add(row.id, created_at);
            queue.push_back(Waiter::Message { row, created_at });
            self.check_bounds();
            return;
        }
        if let Some(row) = self.try_deliver(row, created_at) {
            self.waiting.add(row.id, created_at);
            self.threads.entry(thread_id).or_default().push_back(Waiter::Message { row, created_at });
            self.check_bounds();
        }
    }

    /// Fans a message out if its thread's members and its sender are known; gives it back if not
    /// (after asking the directory to load what is missing).
    #[must_use]
    fn try_deliver(&mut self, row: MessageRow, created_at: DateTime<Utc>) -> Option<MessageRow> {
        let members = self.directory.members(&row.thread_id);
        let sender = row.sender.clone().or_else(|| self.directory.profile(&row.sender_id));
        let (Some(members), Some(sender)) = (members, sender) else {
            if self.directory.members(&row.thread_id).is_none() {
                self.directory.request(Key::Members(row.thread_id));
            }
            if row.sender.is_none() && self.directory.profile(&row.sender_id).is_none() {
                self.directory.request(Key::Profile(row.sender_id));
            }
            return Some(row);
        };
        let thread_id = row.thread_id;
        let id = row.id;
        let message = row.into_chat_message(sender);
        let oldest_other = self.waiting_without(id, created_at);
        let cursor = format_time(self.cursor.stamped(oldest_other));
        let frame = Outgoing {
            text: ServerMessage::NewMessage { data: &message, cursor: Some(&cursor) }.to_json().into(),
            message: Some(id),
        };
        let mut ring = self.history.lock();
        let n = self.hub.fan_out(&frame, thread_id, &members, &mut self.scratch);
        ring.push(Entry { created_at, participants: members, frame });
        drop(ring);
        self.hub.metrics.routed();
        tracing::debug!(message = %id, thread = %thread_id, recipients = n, "delivered");
        None
    }

    /// The oldest waiting `created_at`, not counting the message being delivered.
    fn waiting_without(&mut self, id: Uuid, created_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.waiting.remove(id, created_at);
        self.waiting.oldest()
    }

    fn apply_membership(&mut self, thread_id: Uuid, user_id: Uuid, present: bool) {
        self.directory.apply_membership(thread_id, user_id, present);
        if !present {
            self.hub.participant_left(thread_id, user_id);
            tracing::info!(thread = %thread_id, user = %user_id, "participant removed");
        }
    }

    /// A lookup finished: deliver what waited for it, in order, thread by thread.
    fn on_loaded(&mut self, _key: Key) {
        let threads: Vec<Uuid> = self.threads.keys().copied().collect();
        for thread_id in threads {
            self.drain(thread_id);
        }
    }

    fn drain(&mut self, thread_id: Uuid) {
        while let Some(front) = self.threads.get_mut(&thread_id).and_then(VecDeque::pop_front) {
            match front {
                Waiter::Membership { user_id, present } => self.apply_membership(thread_id, user_id, present),
                Waiter::Message { row, created_at } => {
                    if let Some(row) = self.try_deliver(row, created_at) {
                        self.waiting.add(row.id, created_at);
                        if let Some(queue) = self.threads.get_mut(&thread_id) {
                            queue.push_front(Waiter::Message { row, created_at });
                        }
                        return;
                    }
                }
            }
        }
        self.threads.remove(&thread_id);
    }

    /// Over the bound: drop what waits (undelivered, so forgotten by dedup), tell clients, and
    /// let a gap fill from the oldest dropped message bring everything back in order.
    fn check_bounds(&mut self) {
        if self.waiting.len() <= self.config.max_waiting {
            return;
        }
        let oldest = self.waiting.oldest().unwrap_or(self.started);
        self.hub.metrics.router_overflow();
        tracing::error!(
            waiting = self.waiting.len(),
            "router waiting buffer full: dropping it and filling the gap from the database"
        );
        for (_, queue) in self.threads.drain() {
            for waiter in queue {
                if let Waiter::Message { row, created_at } = waiter {
                    self.seen.forget(row.id, created_at);
                }
            }
        }
        self.held.clear();
        self.waiting.clear();
        // Membership changes may have been dropped with them.
        self.directory.forget_members();
        self.cursor.invalidate();
        self.hub.broadcast(&error_frame());
        self.need_gap(oldest - self.margin());
    }

    fn need_gap(&mut self, from: DateTime<Utc>) {
        self.cursor.invalidate();
        self.gap = match std::mem::replace(&mut self.gap, GapState::Idle) {
            GapState::Idle => GapState::Needed(from),
            GapState::Needed(earlier) => GapState::Needed(earlier.min(from)),
            GapState::Running { pages, again } => {
                GapState::Running { pages, again: Some(again.map_or(from, |a| a.min(from))) }
            }
        };
    }

    fn start_gap(&mut self, from: DateTime<Utc>) {
        tracing::info!(from = %format_time(from), "filling the gap from the database");
        let (tx, rx) = mpsc::channel(2);
        self.tasks.spawn(gap::fill(self.store.clone(), from, tx, self.hub.metrics.clone(), self.stop.clone()));
        self.gap = GapState::Running { pages: rx, again: None };
    }

    fn on_gap_page(&mut self, page: Option<GapPage>) {
        match page {
            Some(GapPage::Rows(rows)) => {
                let before = self.seen.len();
                for row in rows {
                    self.accept(row);
                }
                self.hub.metrics.gap_filled(self.seen.len().saturating_sub(before) as u64);
            }
            Some(GapPage::Done { scanned }) => {
                tracing::info!(scanned, "gap filled");
                let again = match std::mem::replace(&mut self.gap, GapState::Idle) {
                    GapState::Running { again, .. } => again,
                    _ => None,
                };
                if let Some(from) = again {
                    self.gap = GapState::Needed(from);
                }
                let held: Vec<UpstreamEvent> = self.held.drain(..).collect();
                for event in held {
                    if let UpstreamEvent::Message { row, .. } = &event {
                        if let Some(t) = row.created() {
                            self.waiting.remove(row.id, t);
                        }
                    }
                    self.on_change(event);
                }
                // A held message the gap fill had already accepted was a duplicate above, and its
                // entry was removed although it may still be queued behind a lookup. Nothing is
                // held now, so what waits is exactly what the thread queues hold.
                self.waiting.clear();
                for queue in self.threads.values() {
                    for waiter in queue {
                        if let Waiter::Message { row, created_at } = waiter {
                            self.waiting.add(row.id, *created_at);
                        }
                    }
                }
            }
            // The task ended without Done: only when the gateway stops.
            None => self.gap = GapState::Idle,
        }
    }

    /// `thread_read` to every session of the user, with their unread count after the change.
    fn push_read_state(&self, thread_id: Uuid, user_id: Uuid, last_read_at: String) {
        if !self.hub.is_online(&user_id) {
            return;
        }
        let (hub, store) = (self.hub.clone(), self.store.clone());
        self.tasks.spawn(async move {
            let unread_count = match store.unread_count_of(user_id).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(user = %user_id, error = %e, "unread count for thread_read failed");
                    return;
                }
            };
            let last_read_at = crate::model::normalize_time(&last_read_at).unwrap_or(last_read_at);
            let frame = ServerMessage::ThreadRead { thread_id, last_read_at: &last_read_at, unread_count };
            hub.send_to_user(&user_id, &Outgoing::notice(frame.to_json()));
            hub.metrics.read_state_pushed();
        });
    }
}

fn error_frame() -> Outgoing {
    Outgoing::notice(ServerMessage::Error { message: UPSTREAM_ERROR }.to_json())
}

async fn next_page(gap: &mut GapState) -> Option<GapPage> {
    match gap {
        GapState::Running { pages, .. } => pages.recv().await,
        _ => std::future::pending().await,
    }
}
