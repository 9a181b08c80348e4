//! Typing: "Carla is typing…" in a thread, to the thread's other participants on every instance,
//! never stored.
//!
//! Owns the typing path after a session accepted a client's `typing` frame (the session checks
//! the [`Limiter`] and the user's access with RLS first): delivery on this instance, and the
//! exchange of [`Signal`]s with the other instances through the backend's relay
//! ([`RelayLink`]: Supabase Realtime Broadcast on the feed's socket, see
//! `feed/realtime/broadcast.rs`, or LISTEN/NOTIFY, see [`postgres`]). Delivery is decided on the
//! receiving instance at delivery time, on the next [`TICK`] (see [`tick`]): the thread's current
//! participants from the [`Directory`] (the routing path's membership, kept current by the change
//! feed), minus the typer's own sessions, through the hub's recipient rules (realtime switch,
//! mutes), every frame of a tick gathered per session for one push; the frame names the typer
//! with the profile the router uses for messages.
//!
//! Every queue here is bounded and nothing waits on a peer: signals to and from the relay go
//! through bounded channels with `try_send`, signals wait for their tick in a bounded list, those
//! whose thread or profile is not cached wait (without a task each) for the directory's load in
//! another, and a session whose queue is full skips the frame rather than being closed. Each
//! bound hit is counted (`gateway_typing_dropped_total`) and logged (at most one warning per
//! [`WARN_EVERY`]). This module never persists anything, never delivers to a non-participant,
//! and never blocks the router or a session.

pub mod limiter;
pub mod postgres;
pub mod signal;
pub mod tick;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::directory::Directory;
use crate::hub::{EphemeralBatch, Hub};
use crate::metrics::{Metrics, TypingDrop};
pub use limiter::Limiter;
pub use signal::{Signal, SignalError};
use tick::{Held, Pending, Tally, TICK};

/// Signals waiting for the relay (to the other instances).
const OUTBOUND_QUEUE: usize = 256;
/// Signals from the other instances waiting to be delivered here.
const INBOUND_QUEUE: usize = 1024;
/// A signal queued longer than this (the relay was reconnecting) is not sent: clients show typing
/// for 5 s, so it would be stale on arrival.
pub const STALE: Duration = Duration::from_secs(3);
/// At most one warning per bound per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning that is logged at most once per [`WARN_EVERY`], with how many hits it covers.
#[derive(Default)]
pub struct Throttled {
    /// Milliseconds since `origin` of the last warning (0: never).
    last: AtomicU64,
    hits: AtomicU64,
}

impl Throttled {
    /// Counts a bound hit and logs it unless a warning went out recently.
    pub fn hit(&self, metrics: &Metrics, reason: TypingDrop, origin: Instant) {
        self.hits(metrics, reason, 1, origin);
    }

    /// Counts `n` hits of one bound, logged as [`Throttled::hit`] is.
    pub fn hits(&self, metrics: &Metrics, reason: TypingDrop, n: u64, origin: Instant) {
        metrics.typing.dropped(reason, n);
        let hits = self.hits.fetch_add(n, Ordering::Relaxed) + n;
        let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.hits.store(0, Ordering::Relaxed);
            tracing::warn!(reason = reason.label(), hits, "typing signals dropped at a bound");
        }
    }
}

/// A signal on its way to the relay, with when it was queued.
#[derive(Debug, Clone, Copy)]
pub struct Outbound {
    pub signal: Signal,
    pub queued: Instant,
}

impl Outbound {
    /// Whether it is still worth sending (queued less than [`STALE`] ago).
    pub fn fresh(&self) -> bool {
        self.queued.elapsed() < STALE
    }
}

/// The relay's end of typing: the signals to send to the other instances, and where to hand
/// theirs. Owned by the backend's relay task across its reconnects.
pub struct RelayLink {
    pub outbound: mpsc::Receiver<Outbound>,
    inbound: mpsc::Sender<Signal>,
    metrics: Arc<Metrics>,
    warn: Throttled,
    origin: Instant,
}

impl RelayLink {
    /// A signal the relay read: validated, then handed to delivery (dropped and counted when
    /// invalid or when the inbound queue is full).
    pub fn received(&self, signal: Result<Signal, SignalError>) {
        match signal {
            Ok(signal) => {
                self.metrics.typing.received();
                if self.inbound.try_send(signal).is_err() {
                    self.warn.hit(&self.metrics, TypingDrop::InboundFull, self.origin);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an invalid typing signal");
                self.warn.hit(&self.metrics, TypingDrop::Invalid, self.origin);
            }
        }
    }

    /// `n` signals the relay read but could not hold (its own queue was full): counted as
    /// inbound drops.
    pub fn inbound_dropped(&self, n: u64) {
        if n > 0 {
            self.warn.hits(&self.metrics, TypingDrop::InboundFull, n, self.origin);
        }
    }

    /// The next signal to send, skipping (and counting) stale ones; None once typing stopped.
    pub async fn next_outbound(&mut self) -> Option<Signal> {
        loop {
            let out = self.outbound.recv().await?;
            if out.fresh() {
                return Some(out.signal);
            }
            self.warn.hit(&self.metrics, TypingDrop::Stale, self.origin);
        }
    }

    /// A signal went out to the other instances.
    pub fn sent(&self) {
        self.metrics.typing.sent();
    }
}

/// Everything typing is built from.
pub struct TypingParts {
    pub hub: Arc<Hub>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

/// Typing of one gateway instance, shared behind an `Arc` by the sessions.
pub struct Typing {
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    limiter: Limiter,
    /// This instance, as its signals name it.
    instance: Uuid,
    outbound: mpsc::Sender<Outbound>,
    /// Signals waiting for the next tick.
    pending: Pending,
    stop: CancellationToken,
    warn: Throttled,
    origin: Instant,
}

impl Typing {
    /// Typing and the relay's end of it; the tick and the delivery of other instances' signals
    /// run from now until `stop`.
    pub fn new(parts: TypingParts) -> (Arc<Typing>, RelayLink) {
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let origin = Instant::now();
        let typing = Arc::new(Typing {
            hub: parts.hub,
            directory: parts.directory,
            metrics: parts.metrics.clone(),
            limiter: Limiter::default(),
            instance: Uuid::new_v4(),
            outbound: out_tx,
            pending: Pending::default(),
            stop: parts.stop,
            warn: Throttled::default(),
            origin,
        });
        parts.tasks.spawn(typing.clone().deliver_received(in_rx));
        parts.tasks.spawn(typing.clone().run_ticks());
        let link =
            RelayLink { outbound: out_rx, inbound: in_tx, metrics: parts.metrics, warn: Throttled::default(), origin };
        (typing, link)
    }

    /// Whether `user` may send a typing frame for `thread` now (one per thread per window).
    pub fn admit(&self, user: Uuid, thread: Uuid) -> bool {
        self.limiter.admit(user, thread, Instant::now())
    }

    /// Whether the directory's members of the thread, kept current by the change feed as on the
    /// delivery path, include the user. A known member's typing needs no RLS check; anyone else
    /// (a thread not cached, a user removed) is checked with RLS as `subscribe_thread` is.
    pub fn known_member(&self, thread_id: &Uuid, user_id: &Uuid) -> bool {
        self.directory.members(thread_id).is_some_and(|users| users.contains(user_id))
    }

    /// `user`'s last session on this instance ended: their limiter state goes.
    pub fn release(&self, user: &Uuid) {
        self.limiter.release(user);
    }

    /// An accepted typing frame: to this instance's other participants, and to the other
    /// instances through the relay.
    pub fn publish(&self, thread_id: Uuid, user_id: Uuid) {
        self.hold(thread_id, user_id);
        let out = Outbound { signal: Signal { thread_id, user_id, instance: self.instance }, queued: Instant::now() };
        if self.outbound.try_send(out).is_err() {
            self.warn.hit(&self.metrics, TypingDrop::RelayFull, self.origin);
        }
    }

    /// Holds a signal for this instance's next tick (dropped and counted when too many wait).
    fn hold(&self, thread_id: Uuid, user_id: Uuid) {
        if !self.pending.hold(Held { thread_id, user_id, since: Instant::now() }) {
            self.warn.hit(&self.metrics, TypingDrop::PendingFull, self.origin);
        }
    }

    /// Hands the other instances' signals to the tick until the gateway stops.
    async fn deliver_received(self: Arc<Self>, mut inbound: mpsc::Receiver<Signal>) {
        loop {
            let signal = tokio::select! {
                _ = self.stop.cancelled() => return,
                signal = inbound.recv() => match signal {
                    Some(signal) => signal,
                    None => return,
                },
            };
            if signal.instance != self.instance {
                self.hold(signal.thread_id, signal.user_id);
            }
        }
    }

    /// The tick until the gateway stops: asleep while nothing is held or waiting; otherwise every
    /// [`TICK`], the signals held go out to this instance's sessions (see [`tick`]).
    async fn run_ticks(self: Arc<Self>) {
        let mut waiting = Vec::new();
        let mut batch = EphemeralBatch::default();
        loop {
            if waiting.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.pending.arrived.notified() => {}
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let fresh = self.pending.take();
            let tally = tick::deliver(&self.hub, &self.directory, fresh, &mut waiting, &mut batch);
            self.count(&tally);
        }
    }

    /// A tick's outcome in the series; every drop also in the throttled warning.
    fn count(&self, tally: &Tally) {
        let typing = &self.metrics.typing;
        typing.fanned_out(tally.fanned_out as u64);
        typing.delivered(tally.queued as u64);
        for (reason, n) in [
            (TypingDrop::Duplicate, tally.duplicates),
            (TypingDrop::LookupBusy, tally.lookup_busy),
            (TypingDrop::LookupFailed, tally.lookup_failed),
            (TypingDrop::SessionQueueFull, tally.skipped),
            (TypingDrop::Coalesced, tally.coalesced),
        ] {
            if n > 0 {
                self.warn.hits(&self.metrics, reason, n as u64, self.origin);
            }
        }
        if tally.fanned_out > 0 {
            tracing::debug!(
                signals = tally.fanned_out,
                frames = tally.queued,
                waiting = tally.waiting,
                "typing delivered"
            );
        }
    }
}
