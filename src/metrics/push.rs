//! The push path's series: attempts by channel and outcome, the deliveries and jobs a decision
//! round wrote, how long after its message a push went out, and the queue's depth as the decision
//! loop last read it (`chat_push_stats()`, every few seconds; kept here for `/admin` too). Static
//! labels only; never a user, a token or a device.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;

use serde::{Deserialize, Serialize};

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

/// The push queue at a glance (`chat_push_stats()`): jobs waiting for a decision, the oldest one's
/// creation, deliveries pending and leased now, deliveries finished in the last hour by state, and
/// users online on any instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushStats {
    pub jobs: i64,
    pub oldest_job_at: Option<DateTime<Utc>>,
    pub pending: i64,
    pub leased: i64,
    #[serde(default)]
    pub finished_last_hour: std::collections::BTreeMap<String, i64>,
    pub presence: i64,
}

/// Seconds from a message's commit to its push: the delay, the decision, the send.
const PUSH_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The queue as last read, and when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueSnapshot {
    pub read_at: DateTime<Utc>,
    #[serde(flatten)]
    pub stats: PushStats,
}

/// The queue-depth gauges.
struct QueueGauges {
    jobs: Gauge,
    oldest_job: Gauge,
    pending: Gauge,
    leased: Gauge,
    finished: Family<StateLabels, Gauge>,
    presence: Gauge,
}

impl QueueGauges {
    fn register(r: &mut Registry) -> QueueGauges {
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let jobs = gauge(r, "push_queue_jobs", "Messages waiting for a push decision (chat_push_jobs), as last read");
        let oldest_job = gauge(
            r,
            "push_queue_oldest_job_seconds",
            "Age in seconds of the oldest message waiting for a push decision (0 when none), as last read",
        );
        let pending = gauge(
            r,
            "push_queue_pending",
            "Push deliveries not finished yet (due, waiting to retry or leased), as last read",
        );
        let leased = gauge(r, "push_queue_leased", "Push deliveries leased by a sender now, as last read");
        let presence =
            gauge(r, "push_presence_users", "Users online on any instance in the push presence table, as last read");
        let finished = Family::<StateLabels, Gauge>::default();
        r.register(
            "push_queue_finished_last_hour",
            "Push deliveries finished in the last hour by state (sent; dropped; collapsed into a newer push), all instances, as last read",
            finished.clone(),
        );
        QueueGauges { jobs, oldest_job, pending, leased, finished, presence }
    }
}

pub struct PushMetrics {
    attempts: Family<AttemptLabels, Counter>,
    decided_jobs: Counter,
    decided_deliveries: Counter,
    latency: Histogram,
    queue: QueueGauges,
    snapshot: Mutex<Option<QueueSnapshot>>,
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
        let queue = QueueGauges::register(r);
        PushMetrics { attempts, decided_jobs, decided_deliveries, latency, queue, snapshot: Mutex::new(None) }
    }

    /// The queue as read at `read_at`: the gauges and the snapshot `/admin` shows.
    pub fn queue_read(&self, stats: PushStats, read_at: DateTime<Utc>) {
        let q = &self.queue;
        q.jobs.set(stats.jobs);
        let oldest = stats.oldest_job_at.map_or(0, |at| (read_at - at).num_seconds().max(0));
        q.oldest_job.set(oldest);
        q.pending.set(stats.pending);
        q.leased.set(stats.leased);
        q.presence.set(stats.presence);
        for state in ["sent", "dropped", "collapsed"] {
            q.finished
                .get_or_create(&StateLabels { state })
                .set(stats.finished_last_hour.get(state).copied().unwrap_or(0));
        }
        if let Ok(mut snapshot) = self.snapshot.lock() {
            *snapshot = Some(QueueSnapshot { read_at, stats });
        }
    }

    /// The queue as last read; None before the first reading (or without the push migration).
    pub fn queue(&self) -> Option<QueueSnapshot> {
        self.snapshot.lock().ok().and_then(|s| s.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_reading_sets_the_gauges_and_the_snapshot() {
        let mut registry = Registry::with_prefix("gateway");
        let push = PushMetrics::register(&mut registry);
        assert!(push.queue().is_none(), "nothing before the first reading");
        let read_at = Utc::now();
        let stats = PushStats {
            jobs: 3,
            oldest_job_at: Some(read_at - chrono::Duration::seconds(42)),
            pending: 7,
            leased: 2,
            finished_last_hour: [("sent".to_string(), 5)].into(),
            presence: 4,
        };
        push.queue_read(stats.clone(), read_at);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "gateway_push_queue_jobs 3",
            "gateway_push_queue_oldest_job_seconds 42",
            "gateway_push_queue_pending 7",
            "gateway_push_queue_leased 2",
            "gateway_push_presence_users 4",
            r#"gateway_push_queue_finished_last_hour{state="sent"} 5"#,
            r#"gateway_push_queue_finished_last_hour{state="dropped"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(push.queue().map(|q| q.stats), Some(stats));
    }
}
