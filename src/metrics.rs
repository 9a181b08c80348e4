//! Counters and gauges an operator scrapes at `/metrics` (Prometheus text format) and the
//! benchmark reads: deliveries, routing, dedup, slow-client drops, gap fills, upstream losses,
//! resumes.
//!
//! Lock-free atomics, bumped on the hot path without allocation. Never holds identities or
//! message content.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The gateway's counters. One per gateway, shared behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    deliveries: AtomicU64,
    messages_routed: AtomicU64,
    duplicates_skipped: AtomicU64,
    slow_drops: AtomicU64,
    gap_fill_messages: AtomicU64,
    gap_fill_failures: AtomicU64,
    upstream_losses: AtomicU64,
    router_overflows: AtomicU64,
    resumes_from_memory: AtomicU64,
    resumes_from_database: AtomicU64,
    replayed_messages: AtomicU64,
    read_state_pushes: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn delivered(&self) {
        bump(&self.deliveries, 1);
    }
    pub fn routed(&self) {
        bump(&self.messages_routed, 1);
    }
    pub fn duplicate(&self) {
        bump(&self.duplicates_skipped, 1);
    }
    pub fn slow_drop(&self) {
        bump(&self.slow_drops, 1);
    }
    pub fn gap_filled(&self, n: u64) {
        bump(&self.gap_fill_messages, n);
    }
    pub fn gap_fill_failed(&self) {
        bump(&self.gap_fill_failures, 1);
    }
    pub fn upstream_lost(&self) {
        bump(&self.upstream_losses, 1);
    }
    pub fn router_overflow(&self) {
        bump(&self.router_overflows, 1);
    }
    pub fn resumed(&self, from_memory: bool, replayed: u64) {
        bump(if from_memory { &self.resumes_from_memory } else { &self.resumes_from_database }, 1);
        bump(&self.replayed_messages, replayed);
    }
    pub fn read_state_pushed(&self) {
        bump(&self.read_state_pushes, 1);
    }

    /// The Prometheus text exposition of every counter plus the given gauges.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let counters: [(&str, &str, &AtomicU64); 12] = [
            ("gateway_deliveries_total", "Frames queued to client sessions (one per recipient)", &self.deliveries),
            ("gateway_messages_routed_total", "New messages fanned out", &self.messages_routed),
            (
                "gateway_duplicates_skipped_total",
                "Messages seen twice (live and gap fill) and sent once",
                &self.duplicates_skipped,
            ),
            ("gateway_slow_client_drops_total", "Sessions closed because their queue overflowed", &self.slow_drops),
            (
                "gateway_gap_fill_messages_total",
                "Messages delivered by gap fill after an upstream loss",
                &self.gap_fill_messages,
            ),
            (
                "gateway_gap_fill_failures_total",
                "Gap-fill attempts that failed and were retried",
                &self.gap_fill_failures,
            ),
            ("gateway_upstream_losses_total", "Times the upstream subscription was lost", &self.upstream_losses),
            (
                "gateway_router_overflows_total",
                "Times the router's waiting buffer was full (a gap fill recovers)",
                &self.router_overflows,
            ),
            (
                "gateway_resumes_from_memory_total",
                "WebSocket resumes served from the recent-message ring",
                &self.resumes_from_memory,
            ),
            (
                "gateway_resumes_from_database_total",
                "WebSocket resumes served from the database",
                &self.resumes_from_database,
            ),
            ("gateway_replayed_messages_total", "Messages replayed to resuming sessions", &self.replayed_messages),
            ("gateway_read_state_pushes_total", "thread_read frames pushed", &self.read_state_pushes),
        ];
        let mut out = String::new();
        for (name, help, kind, value) in gauges
            .iter()
            .map(|(n, h, v)| (*n, *h, "gauge", *v))
            .chain(counters.iter().map(|(n, h, c)| (*n, *h, "counter", c.load(Ordering::Relaxed))))
        {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
        out
    }
}
