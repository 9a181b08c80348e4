//! The session components: limits applied to each client socket ([`Limits`], read by the hub and
//! the sessions) and the per-user budgets that keep one user from crowding out the others
//! ([`Fairness`]: REST calls, `subscribe_thread` checks, resume replays from the database). Each
//! struct is its own declaration: the flags, variables, defaults and ranges are on its fields.

use std::time::Duration;

use clap::Args;

use super::rules::{at_least, between, positive_rate, seconds, size_at_least};

/// Limits applied to clients.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Client limits")]
pub struct Limits {
    /// Maximum concurrent WebSocket sessions.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "50000", value_parser = at_least(1usize))]
    pub max_connections: usize,
    /// Maximum concurrent WebSocket sessions of one user (devices).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value = "10", value_parser = at_least(1usize))]
    pub max_connections_per_user: usize,
    /// Largest frame a client may send; larger closes the socket with 1009. At least 256.
    #[arg(long = "ws-max-message-bytes", env = "WS_MAX_MESSAGE_BYTES", default_value = "16384",
        value_parser = at_least(256usize))]
    pub max_message_bytes: usize,
    /// Bytes tungstenite reserves per socket for reading client frames (grows for a larger
    /// frame), from 64 to 1048576. Its default, 128 KiB, would dominate an idle session's memory.
    #[arg(long = "ws-read-buffer-bytes", env = "WS_READ_BUFFER_BYTES", default_value = "64",
        value_parser = between(64, 1 << 20))]
    pub read_buffer_bytes: usize,
    /// Sustained client messages per second per socket (a burst of twice that is allowed); more
    /// closes with 1008.
    #[arg(long = "ws-rate-limit-per-sec", env = "WS_RATE_LIMIT_PER_SEC", default_value = "20",
        value_parser = at_least(1u32))]
    pub rate_per_sec: u32,
    /// Frames queued for one socket before it is dropped as too slow (close 4008; the client
    /// resumes with `since`). Room for one large transaction or gap fill; the buffer is released
    /// when drained, so idle sessions do not pay for it.
    #[arg(long = "session-queue-capacity", env = "SESSION_QUEUE_CAPACITY", default_value = "4096",
        value_parser = at_least(1usize))]
    pub queue_capacity: usize,
    /// Bytes of frames queued for one socket before the same close, at least 1 MiB: large
    /// messages fill a queue long before its frame count.
    #[arg(long = "session-queue-bytes", env = "SESSION_QUEUE_BYTES", default_value = "16777216",
        value_parser = size_at_least(1 << 20, "room for a burst"))]
    pub queue_bytes: usize,
    /// Threads one socket may subscribe to with `subscribe_thread`, and mute with
    /// `unsubscribe_thread`.
    #[arg(long, env = "MAX_THREAD_SUBSCRIPTIONS", default_value = "200", value_parser = at_least(1usize))]
    pub max_thread_subscriptions: usize,
    /// Interval of server WebSocket pings; a socket silent for two intervals is closed.
    #[arg(long = "ws-ping-interval-secs", env = "WS_PING_INTERVAL_SECS", default_value = "30",
        value_parser = seconds())]
    pub ping_interval: Duration,
}

/// Per-user budgets on the work clients cause.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Per-user budgets")]
pub struct Fairness {
    /// REST calls per user and second (bursts of twice that); more get 429.
    #[arg(long = "rest-rate-limit-per-sec", env = "REST_RATE_LIMIT_PER_SEC", default_value = "20",
        value_parser = at_least(1u32))]
    pub rest_rate_per_sec: u32,
    /// `subscribe_thread` access checks (one RLS query each) per user and second, over all the
    /// user's sockets; more get an error frame ("Too many thread subscriptions ...") and may retry.
    #[arg(long, env = "SUBSCRIBE_CHECKS_PER_SEC", default_value = "5", value_parser = positive_rate())]
    pub subscribe_checks_per_sec: f64,
    /// Burst of `subscribe_thread` checks per user (enough to subscribe to every thread at once).
    #[arg(long, env = "SUBSCRIBE_CHECK_BURST", default_value = "100", value_parser = at_least(1u32))]
    pub subscribe_check_burst: u32,
    /// Database pages (500 messages each) per user and minute that resume replays (`?since=`
    /// older than the memory) may read; past it a replay sends one page, then an error frame
    /// sending the client to offline sync (GET /api/chat/offline-messages).
    #[arg(long, env = "RESUME_DB_PAGES_PER_MIN", default_value = "20", value_parser = at_least(1u32))]
    pub resume_db_pages_per_min: u32,
    /// Most keys (users, addresses) one rate limiter keeps; idle keys also expire once their
    /// budget has refilled.
    #[arg(long = "rate-limit-max-keys", env = "RATE_LIMIT_MAX_KEYS", default_value = "100000",
        value_parser = at_least(1usize))]
    pub max_keys: usize,
}

impl Default for Fairness {
    /// The declared defaults.
    fn default() -> Fairness {
        super::declared_defaults()
    }
}
