//! The gauges set at scrape time: what `/metrics` samples from the rest of the gateway
//! ([`Sampled`]: sessions, users, readiness, the edge, the slot's lag, the rate limiters' keys)
//! and the process's own figures (resident memory, open files, from Linux `/proc`). Static labels
//! only; never a user id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabels {
    limiter: &'static str,
}

/// What `/metrics` samples at scrape time from the rest of the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sampled {
    pub sessions: usize,
    pub users: usize,
    pub upstream_live: bool,
    /// Upstream live and no gap left to fill (what `/readyz` said before draining existed).
    pub upstream_ready: bool,
    /// What `/readyz` answers: upstream ready and not draining.
    pub ready: bool,
    pub draining: bool,
    pub edge_open_connections: usize,
    pub edge_pending_handshakes: usize,
    /// WAL retained by the PostgreSQL backend's slot, bytes (None: Supabase, or not read yet).
    pub slot_lag_bytes: Option<i64>,
    /// Users with a REST rate-limit bucket.
    pub rest_rate_keys: usize,
    /// Source addresses with a refused-token budget.
    pub auth_failure_keys: usize,
    /// Users in the per-user budgets of `subscribe_thread` checks and of database replays.
    pub subscribe_check_keys: usize,
    pub resume_replay_keys: usize,
}

pub(super) struct SampledGauges {
    sessions: Gauge,
    users: Gauge,
    upstream_live: Gauge,
    upstream_ready: Gauge,
    ready: Gauge,
    draining: Gauge,
    edge_open: Gauge,
    edge_pending: Gauge,
    rss: Gauge,
    open_fds: Gauge,
    slot_lag: Gauge,
    limiter_keys: Family<LimiterLabels, Gauge>,
}

impl SampledGauges {
    pub(super) fn register(r: &mut Registry) -> SampledGauges {
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let sessions = gauge("sessions", "Open WebSocket sessions");
        let users = gauge("users", "Users with at least one session");
        let upstream_live = gauge("upstream_live", "1 when the upstream subscription is live");
        let upstream_ready = gauge("upstream_ready", "1 when the upstream is live and no gap is left to fill");
        let ready = gauge("ready", "1 when /readyz answers 200 (upstream ready and not draining)");
        let draining = gauge("draining", "1 while the gateway drains before shutting down");
        let edge_open = gauge("edge_open_connections", "Open TCP connections (sessions, REST, handshakes)");
        let edge_pending =
            gauge("edge_pending_handshakes", "TCP connections that have not sent a complete request head");
        let rss = gauge("process_resident_memory_bytes", "Resident memory of the process (Linux /proc)");
        let open_fds = gauge("process_open_fds", "Open file descriptors of the process (Linux /proc)");
        let slot_lag = gauge(
            "slot_lag_bytes",
            "PostgreSQL backend: WAL kept for the replication slot (current WAL position minus confirmed); -1 on Supabase",
        );
        let limiter_keys = Family::<LimiterLabels, Gauge>::default();
        r.register(
            "rate_limiter_keys",
            "Keys held by a rate limiter (rest_user, auth_failure_ip, subscribe_check_user, resume_replay_user); idle keys expire, at most RATE_LIMIT_MAX_KEYS",
            limiter_keys.clone(),
        );
        SampledGauges {
            sessions,
            users,
            upstream_live,
            upstream_ready,
            ready,
            draining,
            edge_open,
            edge_pending,
            rss,
            open_fds,
            slot_lag,
            limiter_keys,
        }
    }

    /// Sets every gauge from `sampled` and the process's figures read now.
    pub(super) fn set(&self, sampled: &Sampled) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.sessions.set(as_i64(sampled.sessions));
        self.users.set(as_i64(sampled.users));
        self.upstream_live.set(i64::from(sampled.upstream_live));
        self.upstream_ready.set(i64::from(sampled.upstream_ready));
        self.ready.set(i64::from(sampled.ready));
        self.draining.set(i64::from(sampled.draining));
        self.edge_open.set(as_i64(sampled.edge_open_connections));
        self.edge_pending.set(as_i64(sampled.edge_pending_handshakes));
        let process = process::read();
        if let Some(rss) = process.resident_bytes {
            self.rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        self.slot_lag.set(sampled.slot_lag_bytes.unwrap_or(-1));
        self.limiter_keys.get_or_create(&LimiterLabels { limiter: "rest_user" }).set(as_i64(sampled.rest_rate_keys));
        self.limiter_keys
            .get_or_create(&LimiterLabels { limiter: "auth_failure_ip" })
            .set(as_i64(sampled.auth_failure_keys));
        for (limiter, keys) in
            [("subscribe_check_user", sampled.subscribe_check_keys), ("resume_replay_user", sampled.resume_replay_keys)]
        {
            self.limiter_keys.get_or_create(&LimiterLabels { limiter }).set(as_i64(keys));
        }
        if let Some(fds) = process.open_fds {
            self.open_fds.set(as_i64(fds));
        }
    }
}
