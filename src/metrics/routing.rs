//! The series of the data path, from the feed to the sessions' queues: messages routed and
//! deduplicated, frames queued (one per recipient), slow sessions dropped, gap fills, upstream
//! losses, what waits in the router, membership changes re-applied, read-state pushes, and the
//! delivery latency. Static labels only; never a user id.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Metrics;

/// Bounds of `gateway_delivery_latency_seconds`: from 25 µs, fine enough below a millisecond to
/// tell 0.5 ms from 1 ms (a reader interpolates within a bucket).
const DELIVERY_LATENCY_BUCKETS: [f64; 20] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub(super) struct RoutingMetrics {
    deliveries: Counter,
    messages_routed: Counter,
    duplicates_skipped: Counter,
    slow_drops: Counter,
    slow_byte_drops: Counter,
    gap_fill_messages: Counter,
    gap_fill_failures: Counter,
    upstream_losses: Counter,
    router_overflows: Counter,
    router_byte_overflows: Counter,
    router_waiting: Gauge,
    router_waiting_bytes: Gauge,
    read_state_pushes: Counter,
    membership_reapplied: Counter,
    delivery_latency: Histogram,
    socket_writes: Counter,
    frames_written: Counter,
}

impl RoutingMetrics {
    pub(super) fn register(r: &mut Registry) -> RoutingMetrics {
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        RoutingMetrics {
            deliveries: counter(r, "deliveries", "Frames queued to client sessions (one per recipient)"),
            messages_routed: counter(r, "messages_routed", "New messages fanned out (once per message)"),
            duplicates_skipped: counter(
                r,
                "duplicates_skipped",
                "Messages seen twice (live and gap fill) and sent once",
            ),
            slow_drops: counter(r, "slow_client_drops", "Sessions closed because their queue overflowed"),
            slow_byte_drops: counter(
                r,
                "slow_client_byte_drops",
                "Of those, sessions whose queue hit SESSION_QUEUE_BYTES (also in gateway_slow_client_drops_total)",
            ),
            gap_fill_messages: counter(r, "gap_fill_messages", "Messages delivered by gap fill after an upstream loss"),
            gap_fill_failures: counter(r, "gap_fill_failures", "Gap-fill reads that failed and were retried"),
            upstream_losses: counter(r, "upstream_losses", "Times the upstream subscription was lost"),
            router_overflows: counter(
                r,
                "router_overflows",
                "Times the router's waiting buffer was full (a gap fill recovers)",
            ),
            router_byte_overflows: counter(
                r,
                "router_byte_overflows",
                "Router overflows caused by ROUTER_BUFFER_BYTES (also counted in gateway_router_overflows_total)",
            ),
            router_waiting: gauge(
                r,
                "router_waiting_messages",
                "Messages waiting in the router for lookups or a gap fill",
            ),
            router_waiting_bytes: gauge(
                r,
                "router_waiting_bytes",
                "Bytes held by the messages waiting in the router (bounded by ROUTER_BUFFER_BYTES)",
            ),
            read_state_pushes: counter(r, "read_state_pushes", "thread_read frames pushed"),
            membership_reapplied: counter(
                r,
                "membership_changes_reapplied",
                "Membership changes that arrived while a member list was being read, applied again on top of it",
            ),
            socket_writes: counter(
                r,
                "socket_writes",
                "Writes to client sockets by the live sessions: one flush of the frames a session found queued",
            ),
            frames_written: counter(
                r,
                "frames_written",
                "Frames (messages, notices, typing) written to client sockets by those writes",
            ),
            delivery_latency: {
                let h = Histogram::new(DELIVERY_LATENCY_BUCKETS);
                r.register(
                    "delivery_latency_seconds",
                    "From a live message's receipt from the upstream to its frame written to a recipient's socket (one observation per recipient)",
                    h.clone(),
                );
                h
            },
        }
    }
}

impl Metrics {
    pub fn delivered(&self) {
        self.routing.deliveries.inc();
    }
    /// Frames queued so far (the admin page derives deliveries per second from it).
    pub fn deliveries(&self) -> u64 {
        self.routing.deliveries.get()
    }
    pub fn routed(&self) {
        self.routing.messages_routed.inc();
    }
    pub fn duplicate(&self) {
        self.routing.duplicates_skipped.inc();
    }
    /// A session was closed as too slow; `by_bytes`: its queue's byte bound was hit.
    pub fn slow_drop(&self, by_bytes: bool) {
        self.routing.slow_drops.inc();
        if by_bytes {
            self.routing.slow_byte_drops.inc();
        }
    }
    pub fn gap_filled(&self, n: u64) {
        self.routing.gap_fill_messages.inc_by(n);
    }
    pub fn gap_fill_failed(&self) {
        self.routing.gap_fill_failures.inc();
    }
    pub fn upstream_lost(&self) {
        self.routing.upstream_losses.inc();
    }
    /// The router's waiting buffer overflowed; `by_bytes`: because of its byte bound.
    pub fn router_overflow(&self, by_bytes: bool) {
        self.routing.router_overflows.inc();
        if by_bytes {
            self.routing.router_byte_overflows.inc();
        }
    }
    /// What waits in the router now.
    pub fn router_waiting(&self, messages: usize, bytes: usize) {
        self.routing.router_waiting.set(i64::try_from(messages).unwrap_or(i64::MAX));
        self.routing.router_waiting_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    pub fn membership_reapplied(&self, n: u64) {
        self.routing.membership_reapplied.inc_by(n);
    }
    pub fn read_state_pushed(&self) {
        self.routing.read_state_pushes.inc();
    }
    /// A live message's frame was written to a recipient's socket `latency` after its receipt.
    pub fn delivery_latency(&self, latency: Duration) {
        self.routing.delivery_latency.observe(latency.as_secs_f64());
    }
    /// A live session wrote `frames` queued frames to its socket in one flush.
    pub fn socket_written(&self, frames: usize) {
        self.routing.socket_writes.inc();
        self.routing.frames_written.inc_by(frames as u64);
    }
}
