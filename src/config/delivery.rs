//! The delivery components, in the order a change passes them: the change feed ([`FeedSettings`],
//! the upstream Realtime channel or the replication slot), the router ([`RouterConfig`]), the
//! resume ring ([`ResumeSettings`]) and the membership cache ([`CacheSettings`]). Each struct is
//! its own declaration: the flags, variables, defaults and ranges are on its fields.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::rules::{at_least, rule, seconds, seconds_up_to, size_at_least, whole_seconds, Rule};

/// Phoenix serializer of the upstream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RealtimeVsn {
    #[value(name = "1.0.0")]
    V1,
    #[value(name = "2.0.0")]
    V2,
}

/// The change feed: the upstream Realtime channel (Supabase) or the replication slot (PostgreSQL).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Change feed")]
pub struct FeedSettings {
    /// Phoenix serializer for the upstream socket: 2.0.0 (realtime-js default) or 1.0.0.
    #[arg(long = "realtime-vsn", env = "REALTIME_VSN", value_enum, default_value = "2.0.0")]
    pub vsn: RealtimeVsn,
    /// Topic of the one upstream channel (any `realtime:<name>`).
    #[arg(long = "upstream-topic", env = "UPSTREAM_TOPIC", default_value = "realtime:chat-gateway",
        value_parser = topic())]
    pub topic: String,
    /// Upstream heartbeat interval (realtime-js uses 25).
    #[arg(long = "upstream-heartbeat-secs", env = "UPSTREAM_HEARTBEAT_SECS", default_value = "25",
        value_parser = seconds())]
    pub heartbeat: Duration,
    /// Bound on connecting, joining and Realtime's "Subscribed to PostgreSQL" (on PostgreSQL: on
    /// connecting to the database).
    #[arg(long = "upstream-join-timeout-secs", env = "UPSTREAM_JOIN_TIMEOUT_SECS", default_value = "10",
        value_parser = seconds())]
    pub join_timeout: Duration,
    /// First reconnect delay after the feed is lost (doubles, with jitter).
    #[arg(long = "upstream-backoff-min-secs", env = "UPSTREAM_BACKOFF_MIN_SECS", default_value = "0.5",
        value_parser = seconds())]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[arg(long = "upstream-backoff-max-secs", env = "UPSTREAM_BACKOFF_MAX_SECS", default_value = "10",
        value_parser = seconds())]
    pub backoff_max: Duration,
    /// Change events buffered between the feed and the router.
    #[arg(id = "upstream_queue_capacity", long = "upstream-queue-capacity", env = "UPSTREAM_QUEUE_CAPACITY",
        default_value = "65536",
        value_parser = at_least(1usize))]
    pub queue_capacity: usize,
}

fn topic() -> Rule<String> {
    rule(|text| match text.strip_prefix("realtime:") {
        Some(name) if !name.is_empty() => Ok(text.to_string()),
        _ => Err("must look like realtime:<name>".into()),
    })
}

/// Settings of the router.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Router")]
pub struct RouterConfig {
    /// How far before the last seen message the catch-up after a feed gap starts (covers
    /// transactions that committed late, out of created_at order); duplicates are dropped by id.
    #[arg(long = "catchup-margin-secs", env = "CATCHUP_MARGIN_SECS", default_value = "60",
        value_parser = whole_seconds(0))]
    pub catchup_margin: Duration,
    /// Messages the router may hold while their lookups or a gap fill run; above it they are
    /// dropped, clients get the "Real-time connection error" frame, and a gap fill brings them
    /// back.
    #[arg(long = "router-max-waiting", env = "ROUTER_MAX_WAITING", default_value = "100000",
        value_parser = at_least(1usize))]
    pub max_waiting: usize,
    /// Bytes those messages may hold (content and fields, plus a fixed overhead each), at least
    /// 1 MiB; above it they are dropped exactly as with ROUTER_MAX_WAITING.
    #[arg(long = "router-buffer-bytes", env = "ROUTER_BUFFER_BYTES", default_value = "33554432",
        value_parser = size_at_least(1 << 20, "room for many rows of 4,000 characters"))]
    pub max_waiting_bytes: usize,
    /// How often the database's sync horizon is read for the cursor of live frames.
    #[arg(long = "cursor-interval-secs", env = "CURSOR_INTERVAL_SECS", default_value = "1",
        value_parser = seconds())]
    pub cursor_interval: Duration,
    /// `thread_read` pushes of one user are coalesced over this window: at most one unread-count
    /// read per user per window; the newest read state of every thread is always pushed. At most
    /// 60.
    #[arg(long = "read-state-coalesce-secs", env = "READ_STATE_COALESCE_SECS", default_value = "0.5",
        value_parser = seconds_up_to(60.0))]
    pub read_state_window: Duration,
    /// `read_receipt` frames of one thread are coalesced over this window: at most one per thread
    /// per window to a session, naming the newest reader, with counts read after the window.
    /// At most 60.
    #[arg(long = "read-receipt-coalesce-secs", env = "READ_RECEIPT_COALESCE_SECS", default_value = "0.5",
        value_parser = seconds_up_to(60.0))]
    pub read_receipt_window: Duration,
    /// Threads whose read receipts may be pending at once; a read in another thread beyond it
    /// sends no receipt, and is counted in gateway_read_receipts_dropped_total and logged.
    #[arg(long = "read-receipt-max-threads", env = "READ_RECEIPT_MAX_THREADS", default_value = "10000",
        value_parser = at_least(1usize))]
    pub read_receipt_max_threads: usize,
    /// Read-receipt database reads (`chat_read_receipt`) running at once; the rest wait their turn.
    #[arg(long = "read-receipt-concurrency", env = "READ_RECEIPT_CONCURRENCY", default_value = "4",
        value_parser = at_least(1usize))]
    pub read_receipt_concurrency: usize,
}

/// Bounds of the resume ring (see [`crate::history`]).
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
#[command(next_help_heading = "Resume")]
pub struct ResumeBounds {
    /// Recently routed messages kept in memory to serve resumes (`?since=`) without the
    /// database; older cursors read the database.
    #[arg(long = "resume-buffer-messages", env = "RESUME_BUFFER_MESSAGES", default_value = "20000")]
    pub messages: usize,
    /// Bytes the resume ring may hold, counted on the encoded frames plus a fixed overhead per
    /// message; the oldest are evicted first (resumes from before them read the database).
    #[arg(long = "resume-buffer-bytes", env = "RESUME_BUFFER_BYTES", default_value = "67108864")]
    pub bytes: usize,
}

/// Resumes served from memory.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Resume")]
pub struct ResumeSettings {
    #[command(flatten)]
    pub buffer: ResumeBounds,
    /// Longest a resume served from memory holds `sync_complete` back, waiting for proof that
    /// every message committed before the phone connected was sent; then it goes out anyway
    /// with a cursor that is still safe, counted in gateway_resume_catchup_timeouts_total.
    #[arg(long = "resume-catchup-timeout-secs", env = "RESUME_CATCHUP_TIMEOUT_SECS", default_value = "5",
        value_parser = seconds())]
    pub catchup_timeout: Duration,
}

/// The cache of thread membership and profiles (see [`crate::directory`]).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Caches")]
pub struct CacheSettings {
    /// How long a cached thread membership or profile is trusted (at least 1).
    #[arg(long = "cache-ttl-secs", env = "CACHE_TTL_SECS", default_value = "600", value_parser = whole_seconds(1))]
    pub ttl: Duration,
    /// Most threads whose membership is cached at once.
    #[arg(long = "cache-max-threads", env = "CACHE_MAX_THREADS", default_value = "100000",
        value_parser = at_least(1usize))]
    pub max_threads: usize,
}
