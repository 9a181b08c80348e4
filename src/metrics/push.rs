//! The push path's series: attempts by channel and outcome, the deliveries and jobs a decision
//! round wrote, and how long after its message a push went out. Static labels only; never a user,
//! a token or a device.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    channel: &'static str,
    outcome: &'static str,
}

/// Seconds from a message's commit to its push: the delay, the decision, the send.
const PUSH_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

pub struct PushMetrics {
    attempts: Family<AttemptLabels, Counter>,
    decided_jobs: Counter,
    decided_deliveries: Counter,
    latency: Histogram,
}

impl PushMetrics {
    pub(super) fn register(r: &mut Registry) -> PushMetrics {
        let attempts = Family::<AttemptLabels, Counter>::default();
        r.register(
            "push_attempts",
            "Push attempts by channel (webhook, webpush, fcm, apns, expo) and outcome (sent; retry: 5xx, 429 or timeout; dropped: refused or out of attempts; gone: device deleted)",
            attempts.clone(),
        );
        let decided_jobs = Counter::default();
        r.register("push_decided_messages", "Messages decided for push (by this instance)", decided_jobs.clone());
        let decided_deliveries = Counter::default();
        r.register(
            "push_decided_deliveries",
            "Push deliveries written by this instance's decisions (one per offline recipient and channel)",
            decided_deliveries.clone(),
        );
        let latency = Histogram::new(PUSH_BUCKETS);
        r.register(
            "push_latency_seconds",
            "From a message's creation to its push being accepted by the provider (includes PUSH_DELAY_MS)",
            latency.clone(),
        );
        PushMetrics { attempts, decided_jobs, decided_deliveries, latency }
    }

    /// One attempt on `channel` came to `outcome`.
    pub fn attempt(&self, channel: &'static str, outcome: &'static str) {
        self.attempts.get_or_create(&AttemptLabels { channel, outcome }).inc();
    }

    /// A decision round: messages decided and deliveries written.
    pub fn decided(&self, jobs: u64, deliveries: u64) {
        self.decided_jobs.inc_by(jobs);
        self.decided_deliveries.inc_by(deliveries);
    }

    /// A push went out `after` its message was created.
    pub fn sent_after(&self, after: Duration) {
        self.latency.observe(after.as_secs_f64());
    }
}
