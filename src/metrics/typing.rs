//! The series of typing (see [`crate::typing`]): typing frames by outcome, frames queued to
//! sessions, signals relayed between instances, and every bound that dropped a signal. Static
//! labels only; never a user or thread id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// What became of a client's `typing` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingOutcome {
    Accepted,
    RateLimited,
    Denied,
    CheckFailed,
}

impl TypingOutcome {
    const ALL: [TypingOutcome; 4] =
        [TypingOutcome::Accepted, TypingOutcome::RateLimited, TypingOutcome::Denied, TypingOutcome::CheckFailed];

    fn label(self) -> &'static str {
        match self {
            TypingOutcome::Accepted => "accepted",
            TypingOutcome::RateLimited => "rate_limited",
            TypingOutcome::Denied => "denied",
            TypingOutcome::CheckFailed => "check_failed",
        }
    }
}

/// Where a typing signal was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingDrop {
    /// The queue to the other instances was full (the relay is down or slow).
    RelayFull,
    /// Queued longer than the relay's freshness bound (sent after a reconnect): not sent.
    Stale,
    /// The queue of signals from other instances was full.
    InboundFull,
    /// A signal from another instance that is not a valid typing signal.
    Invalid,
    /// Too many signals already waiting for the next delivery tick.
    PendingFull,
    /// The same user and thread twice in one tick (e.g. from two instances): delivered once.
    Duplicate,
    /// Too many signals already waiting for a membership or profile lookup.
    LookupBusy,
    /// The thread's members or the typer's profile could not be read in time.
    LookupFailed,
    /// A recipient session's queue was full: the frame was skipped for that session.
    SessionQueueFull,
    /// The same frame was still queued for that session: not queued twice.
    Coalesced,
}

impl TypingDrop {
    const ALL: [TypingDrop; 10] = [
        TypingDrop::RelayFull,
        TypingDrop::Stale,
        TypingDrop::InboundFull,
        TypingDrop::Invalid,
        TypingDrop::PendingFull,
        TypingDrop::Duplicate,
        TypingDrop::LookupBusy,
        TypingDrop::LookupFailed,
        TypingDrop::SessionQueueFull,
        TypingDrop::Coalesced,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TypingDrop::RelayFull => "relay_full",
            TypingDrop::Stale => "stale",
            TypingDrop::InboundFull => "inbound_full",
            TypingDrop::Invalid => "invalid",
            TypingDrop::PendingFull => "pending_full",
            TypingDrop::Duplicate => "duplicate",
            TypingDrop::LookupBusy => "lookup_busy",
            TypingDrop::LookupFailed => "lookup_failed",
            TypingDrop::SessionQueueFull => "session_queue_full",
            TypingDrop::Coalesced => "coalesced",
        }
    }
}

pub struct TypingMetrics {
    frames: Family<OutcomeLabels, Counter>,
    delivered: Counter,
    fanned_out: Counter,
    relayed: Family<DirectionLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
}

impl TypingMetrics {
    pub(super) fn register(r: &mut Registry) -> TypingMetrics {
        let frames = Family::<OutcomeLabels, Counter>::default();
        for outcome in TypingOutcome::ALL {
            frames.get_or_create(&OutcomeLabels { outcome: outcome.label() }).inc_by(0);
        }
        r.register(
            "typing_frames",
            "typing frames from clients, by outcome (accepted, rate_limited, denied, check_failed)",
            frames.clone(),
        );
        let delivered = Counter::default();
        r.register("typing_delivered", "typing frames queued to sessions on this instance", delivered.clone());
        let fanned_out = Counter::default();
        r.register(
            "typing_fanned_out",
            "typing signals delivered to this instance's sessions (each to the thread's other participants here)",
            fanned_out.clone(),
        );
        let relayed = Family::<DirectionLabels, Counter>::default();
        for direction in ["sent", "received"] {
            relayed.get_or_create(&DirectionLabels { direction }).inc_by(0);
        }
        r.register(
            "typing_relayed",
            "typing signals exchanged with the other instances (Realtime Broadcast or NOTIFY), by direction",
            relayed.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        for reason in TypingDrop::ALL {
            dropped.get_or_create(&ReasonLabels { reason: reason.label() }).inc_by(0);
        }
        r.register(
            "typing_dropped",
            "typing signals (frames, for session_queue_full and coalesced) not delivered, by reason (relay_full, stale, inbound_full, invalid, pending_full, duplicate, lookup_busy, lookup_failed, session_queue_full, coalesced)",
            dropped.clone(),
        );
        TypingMetrics { frames, delivered, fanned_out, relayed, dropped }
    }

    pub fn frame(&self, outcome: TypingOutcome) {
        self.frames.get_or_create(&OutcomeLabels { outcome: outcome.label() }).inc();
    }
    pub fn delivered(&self, n: u64) {
        self.delivered.inc_by(n);
    }
    pub fn fanned_out(&self, n: u64) {
        self.fanned_out.inc_by(n);
    }
    pub fn sent(&self) {
        self.relayed.get_or_create(&DirectionLabels { direction: "sent" }).inc();
    }
    pub fn received(&self) {
        self.relayed.get_or_create(&DirectionLabels { direction: "received" }).inc();
    }
    pub fn dropped(&self, reason: TypingDrop, n: u64) {
        self.dropped.get_or_create(&ReasonLabels { reason: reason.label() }).inc_by(n);
    }
}
