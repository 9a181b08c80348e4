//! The series of resumes (`?since=`): where each was served from, what was replayed or withheld,
//! how long it took, catch-up timeouts, and what the ring of recent messages holds. Static labels
//! only; never a user id.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{histograms, Histograms, Metrics, SourceLabels};

pub(super) struct ResumeMetrics {
    ring_messages: Gauge,
    ring_bytes: Gauge,
    ring_byte_evictions: Counter,
    from_memory: Counter,
    from_database: Counter,
    replayed_messages: Counter,
    replay_withheld: Counter,
    membership_unchecked: Counter,
    catchup_timeouts: Counter,
    durations: Histograms<SourceLabels>,
}

impl ResumeMetrics {
    pub(super) fn register(r: &mut Registry) -> ResumeMetrics {
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let from_memory = counter("resumes_from_memory", "WebSocket resumes served from the recent-message ring");
        let from_database = counter("resumes_from_database", "WebSocket resumes served from the database");
        let replayed_messages = counter("replayed_messages", "Messages replayed to resuming sessions");
        let replay_withheld = counter(
            "replay_withheld_messages",
            "Messages left out of resume replays from memory: the user is no longer a participant of their thread",
        );
        let membership_unchecked = counter(
            "resume_membership_unchecked",
            "Resumes the ring covered but the database replayed: membership could not be checked (upstream down, member list not read within BACKEND_TIMEOUT_SECS)",
        );
        let catchup_timeouts = counter(
            "resume_catchup_timeouts",
            "Memory resumes whose sync_complete went out after RESUME_CATCHUP_TIMEOUT_SECS without proof of being caught up",
        );
        let ring_byte_evictions = counter(
            "resume_buffer_byte_evictions",
            "Messages evicted from the resume ring by RESUME_BUFFER_BYTES (resumes before them go to the database)",
        );
        let ring_messages = Gauge::default();
        r.register(
            "resume_buffer_messages",
            "Messages in the resume ring (bounded by RESUME_BUFFER_MESSAGES)",
            ring_messages.clone(),
        );
        let ring_bytes = Gauge::default();
        r.register(
            "resume_buffer_bytes",
            "Encoded frame bytes in the resume ring plus a fixed overhead per entry (bounded by RESUME_BUFFER_BYTES)",
            ring_bytes.clone(),
        );
        let durations = histograms();
        r.register(
            "resume_duration_seconds",
            "Resume replays (?since=), from the first replayed frame to sync_complete, by source (memory, database)",
            durations.clone(),
        );
        ResumeMetrics {
            ring_messages,
            ring_bytes,
            ring_byte_evictions,
            from_memory,
            from_database,
            replayed_messages,
            replay_withheld,
            membership_unchecked,
            catchup_timeouts,
            durations,
        }
    }
}

impl Metrics {
    /// What the resume ring holds now, and its byte evictions so far.
    pub fn resume_buffer(&self, messages: usize, bytes: usize, evicted_for_bytes: u64) {
        self.resumes.ring_messages.set(i64::try_from(messages).unwrap_or(i64::MAX));
        self.resumes.ring_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let counted = self.resumes.ring_byte_evictions.get();
        self.resumes.ring_byte_evictions.inc_by(evicted_for_bytes.saturating_sub(counted));
    }
    pub fn resumed(&self, from_memory: bool, replayed: u64, took: Duration) {
        (if from_memory { &self.resumes.from_memory } else { &self.resumes.from_database }).inc();
        self.resumes.replayed_messages.inc_by(replayed);
        let source = if from_memory { "memory" } else { "database" };
        self.resumes.durations.get_or_create(&SourceLabels { source }).observe(took.as_secs_f64());
    }
    /// A memory resume's `sync_complete` went out without its catch-up proof (timed out).
    pub fn resume_catchup_timed_out(&self) {
        self.resumes.catchup_timeouts.inc();
    }
    pub fn replay_withheld(&self, n: u64) {
        self.resumes.replay_withheld.inc_by(n);
    }
    pub fn resume_membership_unchecked(&self) {
        self.resumes.membership_unchecked.inc();
    }
}
