//! Router: the one task that consumes the upstream's events in order and turns them into
//! deliveries, exactly once.
//!
//! Owns ordering (per thread, a message waits behind the thread's earlier messages; membership
//! changes never wait: they apply at once, so a message goes to the participants of the moment it
//! is delivered, as RLS would show it), the lookups
//! a message waits for (membership and sender, loaded by the [`Directory`] without ever blocking
//! this loop), deduplication by id over the whole gap-fill window ([`window::Seen`]), gap fill
//! after any loss ([`gap`]: upstream down, an unreadable change, a bound hit), readiness, the live
//! resume cursor (see [`cursor`]), and the ring of recent messages ([`History`]). A message counts
//! as delivered only once it has been fanned out; when a bound is hit the waiting messages are
//! dropped, clients get the upstream-error frame and a gap fill brings them back: never a silent
//! drop. The router never awaits PostgREST: every database call runs in a tracked task. A feed
//! with durable positions (the PostgreSQL slot) sends checkpoints; the router raises the shared
//! [`Watermark`] to one only when everything before it was fanned out, and the feed confirms
//! that position to the database. Read-state changes become `thread_read` pushes to the reader
//! ([`read_state`]) and `read_receipt` frames to the thread's other participants (`receipts`),
//! both handed off without waiting. Resuming sessions hold `sync_complete` back until a probe
//! ([`catchup`]) proves that everything committed before they registered was fanned out.

pub mod catchup;
pub mod cursor;
pub mod gap;
mod read_state;
mod receipts;
mod switches;
pub mod window;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::directory::{Directory, Key};
use crate::feed::{Received, UpstreamEvent, Watermark};
use crate::history::{Entry, History};
use crate::hub::{Hub, Outgoing, SessionHandle};
use crate::metrics::Metrics;
use crate::model::{format_time, MessageRow};
use crate::protocol::{ServerMessage, UPSTREAM_ERROR};
use crate::readiness::Readiness;
use crate::store::Store;
use catchup::{CatchUp, Prober};
use cursor::Cursor;
use gap::GapPage;
use window::{row_cost, Seen, Waiting};

/// Settings of the router (declared with the configuration).
pub use crate::config::RouterConfig;

/// A message waiting in its thread's queue. `received`: when its change reached the gateway
/// (live messages only); its frame carries it to the sockets for the delivery latency. Membership changes never wait here: they apply at
/// once (see [`Router::on_event`]).
enum Waiter {
    Message { row: MessageRow, created_at: DateTime<Utc>, received: Option<Received> },
}

enum GapState {
    Idle,
    /// A gap must be filled from this time, as soon as the upstream is live.
    Needed(DateTime<Utc>),
    /// A fill is reading: its pages not yet fed to the router, and whether it has read the end.
    Running {
        pages: mpsc::Receiver<GapPage>,
        again: Option<DateTime<Utc>>,
        backlog: VecDeque<MessageRow>,
        done: Option<u64>,
    },
}

/// The router and everything it owns.
pub struct Router {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
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
    switches: switches::Switches,
    /// Times a waiting bound (count or bytes) was hit (a gap fill then brings the dropped messages back).
    overflows: u64,
    seen: Seen,
    gap: GapState,
    cursor: Cursor,
    resume_point: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
    live: bool,
    ever_live: bool,
    scratch: Vec<Arc<SessionHandle>>,
    /// The newest feed checkpoint not yet confirmed through `watermark`.
    checkpoint: Option<u64>,
    watermark: Arc<Watermark>,
    read_states: read_state::ReadStates,
    receipts: receipts::Receipts,
    catchup: Arc<CatchUp>,
    prober: Prober,
}

/// Everything the router is built from.
pub struct RouterParts {
    pub hub: Arc<Hub>,
    /// The router's series: routed, duplicates, waiting, latency, gap fills, read-state pushes.
    pub metrics: Arc<Metrics>,
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
    /// Where the router reports how far it has fanned out the feed's checkpoints.
    pub watermark: Arc<Watermark>,
    /// The tickets of resuming sessions waiting to be told they caught up.
    pub catchup: Arc<CatchUp>,
}

impl Router {
    pub fn new(parts: RouterParts) -> Router {
        let margin =
            chrono::Duration::from_std(parts.config.catchup_margin).unwrap_or_else(|_| chrono::Duration::seconds(60));
        let cursor =
            Cursor::new(parts.store.clone(), parts.tasks.clone(), parts.config.cursor_interval, parts.started - margin);
        let read_states = read_state::ReadStates::new(
            parts.hub.clone(),
            parts.metrics.clone(),
            parts.store.clone(),
            parts.tasks.clone(),
            parts.stop.clone(),
            parts.config.read_state_window,
        );
        let receipts = receipts::Receipts::new(
            parts.hub.clone(),
            parts.metrics.clone(),
            parts.store.clone(),
            parts.directory.clone(),
            parts.tasks.clone(),
            parts.stop.clone(),
            receipts::Bounds {
                window: parts.config.read_receipt_window,
                max_threads: parts.config.read_receipt_max_threads,
                concurrency: parts.config.read_receipt_concurrency,
            },
        );
        let prober = Prober::new(parts.catchup.clone(), parts.store.clone(), parts.tasks.clone(), parts.stop.clone());
        Router {
            read_states,
            receipts,
            hub: parts.hub,
            metrics: parts.metrics,
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
            overflows: 0,
            switches: switches::Switches::default(),
            seen: Seen::default(),
            gap: GapState::Idle,
            cursor,
            resume_point: None,
            started: parts.started,
            live: false,
            ever_live: false,
            scratch: Vec::new(),
            checkpoint: None,
            watermark: parts.watermark,
            catchup: parts.catchup,
            prober,
        }
    }

    fn margin(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.catchup_margin).unwrap_or_else(|_| chrono::Duration::seconds(60))
    }

    /// Consumes upstream events until the upstream closes or the gateway stops.
    pub async fn run(mut self, mut events: mpsc::Receiver<UpstreamEvent>) {
        let catchup = self.catchup.clone();
        loop {
            let wants_page = self.gap_wants_page();
            let retry = self.prober.deadline();
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.confirm_on_stop(&mut events);
                    break;
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                Some(key) = self.loaded.recv() => self.on_loaded(key),
                page = gap::next_page(&mut self.gap), if wants_page => self.on_gap_page(page),
                Some(off) = self.switches.rx.recv() => self.on_switches_read(off),
                Some(point) = self.cursor.next_point() => self.cursor.offer(point, self.live && matches!(self.gap, GapState::Idle)),
                // A session asked to be told it caught up, or a probe is due again: see after_step.
                _ = catchup.asked() => {}
                _ = tokio::time::sleep_until(retry.map_or_else(tokio::time::Instant::now, Into::into)), if retry.is_some() => {}
                Some(read) = self.prober.next_read() => {
                    let (seen, waiting) = (&self.seen, &self.waiting);
                    self.prober.on_read(read, |id, t| seen.contains(id) && !waiting.contains(*id, t));
                }
            }
            self.after_step();
        }
        tracing::info!("router stopped");
    }

    /// Bookkeeping after every step: start a needed gap fill, readiness, the cursor.
    fn after_step(&mut self) {
        self.feed_gap();
        if let GapState::Needed(from) = self.gap {
            if self.live {
                self.start_gap(from);
            }
        }
        let ready = self.live && matches!(self.gap, GapState::Idle) && self.switches.loaded();
        self.readiness.set(ready, self.live);
        if ready {
            self.cursor.request_if_due();
        }
        self.confirm_checkpoint();
        self.metrics.router_waiting(self.waiting.len(), self.waiting.bytes());
        let stamped = self.cursor.stamped(self.waiting.oldest());
        self.prober.step(self.live, stamped);
        let mut ring = self.history.lock();
        if stamped > ring.cursor {
            ring.cursor = stamped;
        }
        let usage = ring.usage();
        drop(ring);
        self.metrics.resume_buffer(usage.messages, usage.bytes, usage.evicted_for_bytes);
        if let Some(point) = self.resume_point {
            // Ids below the next gap fill's window can never come back.
            self.seen.prune_below(point - self.margin() - chrono::Duration::seconds(60));
        }
    }

    /// A feed checkpoint is confirmed once nothing before it waits: no lookup, no held change, no
    /// gap to fill (what was dropped on a bound comes back through the gap fill first).
    fn confirm_checkpoint(&mut self) {
        if let Some(position) = self.checkpoint {
            if matches!(self.gap, GapState::Idle) && self.held.is_empty() && self.threads.is_empty() {
                self.watermark.raise(position);
                self.checkpoint = None;
            }
        }
    }

    /// At shutdown: checkpoints queued right behind what was already fanned out are confirmed,
    /// so a restart does not fan those transactions out again. Anything else still queued was
    /// never delivered and stays unconfirmed.
    fn confirm_on_stop(&mut self, events: &mut mpsc::Receiver<UpstreamEvent>) {
        while let Ok(UpstreamEvent::Checkpoint { position }) = events.try_recv() {
            self.checkpoint = Some(self.checkpoint.map_or(position, |c| c.max(position)));
        }
        self.confirm_checkpoint();
    }

    fn on_event(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Live { generation } => self.on_live(generation),
            UpstreamEvent::Down { reason } => self.on_down(&reason.to_string()),
            UpstreamEvent::Checkpoint { position } => {
                self.checkpoint = Some(self.checkpoint.map_or(position, |c| c.max(position)));
            }
            UpstreamEvent::Membership { thread_id, user_id, present, .. } if !matches!(self.gap, GapState::Idle) => {
                // Membership is decided at delivery time: a change applies at once, ahead of the
                // held messages (a removed user gets none of them; RLS would show them none).
                self.apply_membership(thread_id, user_id, present);
            }
            change => {
                if !matches!(self.gap, GapState::Idle) {
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
        self.read_switches();
    }

    fn on_down(&mut self, reason: &str) {
        if !self.live {
            return;
        }
        self.live = false;
        self.cursor.invalidate();
        self.metrics.upstream_lost();
        tracing::warn!(%reason, "upstream lost; clients notified");
        self.hub.broadcast(&error_frame());
    }

    fn hold(&mut self, change: UpstreamEvent) {
        if let UpstreamEvent::Message { row, .. } = &change {
            if let Some(t) = row.created() {
                self.waiting.add(row.id, t, row_cost(row));
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
            UpstreamEvent::Message { row, received, .. } => self.accept(row, Some(received)),
            // At once, even when messages of the thread wait for lookups: they go to whoever is a
            // participant when they are delivered.
            UpstreamEvent::Membership { thread_id, user_id, present, .. } => {
                self.apply_membership(thread_id, user_id, present)
            }
            UpstreamEvent::ReadState { thread_id, user_id, last_read_at, .. } => {
                self.receipts.on_read(thread_id, user_id, &last_read_at);
                self.read_states.push(thread_id, user_id, last_read_at)
            }
            UpstreamEvent::RealtimeSwitch { user_id, enabled, .. } => self.on_switch(user_id, enabled),
            UpstreamEvent::Unreadable { table, reason, committed } => {
                tracing::warn!(%table, %reason, "unreadable change from upstream; filling the gap from the database");
                let from = committed.or(self.resume_point).unwrap_or(self.started) - self.margin();
                self.need_gap(from);
            }
            UpstreamEvent::Live { .. } | UpstreamEvent::Down { .. } | UpstreamEvent::Checkpoint { .. } => {}
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
    fn accept(&mut self, row: MessageRow, received: Option<Received>) {
        let Some(created_at) = row.created() else {
            tracing::warn!(message = %row.id, "message with an unreadable created_at; filling from the database");
            let from = self.resume_point.unwrap_or(self.started) - self.margin();
            self.need_gap(from);
            return;
        };
        if !self.seen.insert(row.id, created_at) {
            self.metrics.duplicate();
            return;
        }
        let thread_id = row.thread_id;
        if let Some(queue) = self.threads.get_mut(&thread_id) {
            self.waiting.add(row.id, created_at, row_cost(&row));
            queue.push_back(Waiter::Message { row, created_at, received });
            self.check_bounds();
            return;
        }
        if let Some(row) = self.try_deliver(row, created_at, received) {
            self.waiting.add(row.id, created_at, row_cost(&row));
            self.threads.entry(thread_id).or_default().push_back(Waiter::Message { row, created_at, received });
            self.check_bounds();
        }
    }

    /// Fans a message out if its thread's members and its sender are known; gives it back if not
    /// (after asking the directory to load what is missing).
    #[must_use]
    fn try_deliver(
        &mut self,
        row: MessageRow,
        created_at: DateTime<Utc>,
        received: Option<Received>,
    ) -> Option<MessageRow> {
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
        let mut text = ServerMessage::NewMessage { data: &message, cursor: Some(&cursor) }.to_json();
        // The ring counts the frame's length against RESUME_BUFFER_BYTES: hold no spare capacity.
        text.shrink_to_fit();
        let mut frame = Outgoing::message(text, id, created_at);
        frame.received = received.map(|r| r.0);
        let mut ring = self.history.lock();
        let n = self.hub.fan_out(&frame, thread_id, &members, &mut self.scratch);
        // A replay writes the ring's copy: it is no live delivery, so it carries no receipt time.
        frame.received = None;
        ring.push(Entry { created_at, thread_id, participants: members, frame });
        drop(ring);
        self.prober.on_delivered(&id);
        self.metrics.routed();
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
            let Waiter::Message { row, created_at, received } = front;
            if let Some(row) = self.try_deliver(row, created_at, received) {
                self.waiting.add(row.id, created_at, row_cost(&row));
                if let Some(queue) = self.threads.get_mut(&thread_id) {
                    queue.push_front(Waiter::Message { row, created_at, received });
                }
                return;
            }
        }
        self.threads.remove(&thread_id);
    }
}

fn error_frame() -> Outgoing {
    Outgoing::notice(ServerMessage::Error { message: UPSTREAM_ERROR }.to_json())
}
