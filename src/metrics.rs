//! Metrics an operator scrapes at `/metrics` (Prometheus text format 0.0.4, through the
//! `prometheus-client` crate) and the benchmark and the admin page read: deliveries, routing,
//! dedup, slow-client drops, gap fills, upstream losses, resumes; latencies (delivery, REST,
//! PostgREST, RLS checks, resume replays); disconnects and auth failures by reason; gauges of
//! sessions, users, readiness and the edge, sampled at scrape time; the process's memory and open
//! files; the build.
//!
//! Owns the registry and every series' name (all `gateway_*`, each with `# HELP`). Counters are
//! atomics and histograms without labels are pre-created, so the hot path (one counter bump per
//! recipient, one histogram observation per routed message) never allocates. Labels are static
//! strings or integers only: this module must never hold identities, tokens, or message content,
//! and never take a label value from a client.

mod fairness;
mod resume;

use std::time::Duration;

pub use fairness::{Budget, FairnessMetrics};
use resume::ResumeMetrics;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Buckets for latencies from sub-millisecond to tens of seconds, in seconds.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisconnectLabels {
    code: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    via: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabels {
    limiter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency as fn() -> Histogram)
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

/// The gateway's metrics. One per gateway, shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
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
    unsubscribe_refused: Family<ReasonLabels, Counter>,
    limiter_keys: Family<LimiterLabels, Gauge>,
    read_state_pushes: Counter,
    membership_reapplied: Counter,
    disconnects: Family<DisconnectLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    delivery_latency: Histogram,
    rls_check: Histogram,
    rest: Histograms<RestLabels>,
    postgrest: Histograms<CallLabels>,
    /// The resumes' series.
    resumes: ResumeMetrics,
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
    /// The per-user budgets' series.
    pub fairness: FairnessMetrics,
    shutdown_closes: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("gateway");
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
        let deliveries = counter(&mut r, "deliveries", "Frames queued to client sessions (one per recipient)");
        let messages_routed = counter(&mut r, "messages_routed", "New messages fanned out (once per message)");
        let duplicates_skipped =
            counter(&mut r, "duplicates_skipped", "Messages seen twice (live and gap fill) and sent once");
        let slow_drops = counter(&mut r, "slow_client_drops", "Sessions closed because their queue overflowed");
        let slow_byte_drops = counter(
            &mut r,
            "slow_client_byte_drops",
            "Of those, sessions whose queue hit SESSION_QUEUE_BYTES (also in gateway_slow_client_drops_total)",
        );
        let gap_fill_messages =
            counter(&mut r, "gap_fill_messages", "Messages delivered by gap fill after an upstream loss");
        let gap_fill_failures = counter(&mut r, "gap_fill_failures", "Gap-fill reads that failed and were retried");
        let upstream_losses = counter(&mut r, "upstream_losses", "Times the upstream subscription was lost");
        let router_overflows =
            counter(&mut r, "router_overflows", "Times the router's waiting buffer was full (a gap fill recovers)");
        let router_byte_overflows = counter(
            &mut r,
            "router_byte_overflows",
            "Router overflows caused by ROUTER_BUFFER_BYTES (also counted in gateway_router_overflows_total)",
        );
        let router_waiting =
            gauge(&mut r, "router_waiting_messages", "Messages waiting in the router for lookups or a gap fill");
        let router_waiting_bytes = gauge(
            &mut r,
            "router_waiting_bytes",
            "Bytes held by the messages waiting in the router (bounded by ROUTER_BUFFER_BYTES)",
        );
        let unsubscribe_refused = Family::<ReasonLabels, Counter>::default();
        r.register(
            "unsubscribe_refused",
            "unsubscribe_thread requests refused, by reason (access_denied, too_many, check_failed, over_budget)",
            unsubscribe_refused.clone(),
        );
        let limiter_keys = Family::<LimiterLabels, Gauge>::default();
        r.register(
            "rate_limiter_keys",
            "Keys held by a rate limiter (rest_user, auth_failure_ip, subscribe_check_user, resume_replay_user); idle keys expire, at most RATE_LIMIT_MAX_KEYS",
            limiter_keys.clone(),
        );
        let read_state_pushes = counter(&mut r, "read_state_pushes", "thread_read frames pushed");
        let membership_reapplied = counter(
            &mut r,
            "membership_changes_reapplied",
            "Membership changes that arrived while a member list was being read, applied again on top of it",
        );
        let disconnects = Family::<DisconnectLabels, Counter>::default();
        r.register(
            "disconnects",
            "Client sessions ended, by close code and reason (code 0, reason client_gone: the client or network ended it)",
            disconnects.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        r.register(
            "auth_failures",
            "Refused access tokens, by where (websocket, rest, token_refresh) and reason",
            auth_failures.clone(),
        );
        let delivery_latency = latency();
        r.register(
            "delivery_latency_seconds",
            "From a live message's commit (upstream commit timestamp) to its frame queued to the recipients' sessions",
            delivery_latency.clone(),
        );
        let rls_check = latency();
        r.register(
            "rls_check_duration_seconds",
            "subscribe_thread access checks through PostgREST (row-level security), whatever the outcome",
            rls_check.clone(),
        );
        let rest = histograms();
        r.register(
            "rest_request_duration_seconds",
            "REST requests (not WebSocket upgrades), by route template and HTTP status",
            rest.clone(),
        );
        let postgrest = histograms();
        r.register(
            "postgrest_request_duration_seconds",
            "Calls to PostgREST, by call and outcome (ok, rejected, timeout, unavailable, decode)",
            postgrest.clone(),
        );
        let sessions = gauge(&mut r, "sessions", "Open WebSocket sessions");
        let users = gauge(&mut r, "users", "Users with at least one session");
        let upstream_live = gauge(&mut r, "upstream_live", "1 when the upstream subscription is live");
        let upstream_ready = gauge(&mut r, "upstream_ready", "1 when the upstream is live and no gap is left to fill");
        let ready = gauge(&mut r, "ready", "1 when /readyz answers 200 (upstream ready and not draining)");
        let draining = gauge(&mut r, "draining", "1 while the gateway drains before shutting down");
        let edge_open = gauge(&mut r, "edge_open_connections", "Open TCP connections (sessions, REST, handshakes)");
        let edge_pending =
            gauge(&mut r, "edge_pending_handshakes", "TCP connections that have not sent a complete request head");
        let rss = gauge(&mut r, "process_resident_memory_bytes", "Resident memory of the process (Linux /proc)");
        let open_fds = gauge(&mut r, "process_open_fds", "Open file descriptors of the process (Linux /proc)");
        let slot_lag = gauge(
            &mut r,
            "slot_lag_bytes",
            "PostgreSQL backend: WAL kept for the replication slot (current WAL position minus confirmed); -1 on Supabase",
        );
        let fairness = FairnessMetrics::register(&mut r);
        let resumes = ResumeMetrics::register(&mut r);
        let shutdown_closes = counter(
            &mut r,
            "shutdown_closes",
            "Sessions closed by a shutdown after the drain, paced by DRAIN_CLOSE_RATE",
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        r.register("build_info", "Always 1; the version of the running gateway in its label", build);
        Metrics {
            registry: r,
            deliveries,
            messages_routed,
            duplicates_skipped,
            slow_drops,
            slow_byte_drops,
            gap_fill_messages,
            gap_fill_failures,
            upstream_losses,
            router_overflows,
            router_byte_overflows,
            router_waiting,
            router_waiting_bytes,
            unsubscribe_refused,
            limiter_keys,
            read_state_pushes,
            fairness,
            membership_reapplied,
            disconnects,
            auth_failures,
            delivery_latency,
            rls_check,
            rest,
            postgrest,
            resumes,
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
            shutdown_closes,
        }
    }

    pub fn delivered(&self) {
        self.deliveries.inc();
    }
    /// Frames queued so far (the admin page derives deliveries per second from it).
    pub fn deliveries(&self) -> u64 {
        self.deliveries.get()
    }
    pub fn routed(&self) {
        self.messages_routed.inc();
    }
    pub fn duplicate(&self) {
        self.duplicates_skipped.inc();
    }
    /// A session was closed as too slow; `by_bytes`: its queue's byte bound was hit.
    pub fn slow_drop(&self, by_bytes: bool) {
        self.slow_drops.inc();
        if by_bytes {
            self.slow_byte_drops.inc();
        }
    }
    pub fn gap_filled(&self, n: u64) {
        self.gap_fill_messages.inc_by(n);
    }
    pub fn gap_fill_failed(&self) {
        self.gap_fill_failures.inc();
    }
    pub fn upstream_lost(&self) {
        self.upstream_losses.inc();
    }
    /// The router's waiting buffer overflowed; `by_bytes`: because of its byte bound.
    pub fn router_overflow(&self, by_bytes: bool) {
        self.router_overflows.inc();
        if by_bytes {
            self.router_byte_overflows.inc();
        }
    }
    /// What waits in the router now.
    pub fn router_waiting(&self, messages: usize, bytes: usize) {
        self.router_waiting.set(i64::try_from(messages).unwrap_or(i64::MAX));
        self.router_waiting_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    /// An `unsubscribe_thread` was refused: `access_denied`, `too_many`, `check_failed`, `over_budget`.
    pub fn unsubscribe_refused(&self, reason: &'static str) {
        self.unsubscribe_refused.get_or_create(&ReasonLabels { reason }).inc();
    }
    /// A shutdown closed one more session (paced by `DRAIN_CLOSE_RATE`).
    pub fn shutdown_closed(&self) {
        self.shutdown_closes.inc();
    }
    pub fn membership_reapplied(&self, n: u64) {
        self.membership_reapplied.inc_by(n);
    }
    pub fn read_state_pushed(&self) {
        self.read_state_pushes.inc();
    }
    /// A live message's frame was queued to its recipients `latency` after its commit.
    pub fn delivery_latency(&self, latency: Duration) {
        self.delivery_latency.observe(latency.as_secs_f64());
    }
    /// A session ended: `code` 0 and `reason` `client_gone` when the client or network ended it.
    pub fn disconnected(&self, code: u16, reason: &'static str) {
        self.disconnects.get_or_create(&DisconnectLabels { code, reason }).inc();
    }
    /// A token was refused; `via` is `websocket`, `rest` or `token_refresh`.
    pub fn auth_failed(&self, via: &'static str, reason: &'static str) {
        self.auth_failures.get_or_create(&AuthLabels { via, reason }).inc();
    }
    pub fn rls_checked(&self, took: Duration) {
        self.rls_check.observe(took.as_secs_f64());
    }
    pub fn rest_request(&self, route: &'static str, status: u16, took: Duration) {
        self.rest.get_or_create(&RestLabels { route, status }).observe(took.as_secs_f64());
    }
    pub fn postgrest_call(&self, call: &'static str, outcome: &'static str, took: Duration) {
        self.postgrest.get_or_create(&CallLabels { call, outcome }).observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every series, with the gauges set from `sampled` and
    /// the process's own figures read now.
    pub fn render(&self, sampled: &Sampled) -> String {
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
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

mod process;

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (name plus labels exactly as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[test]
    fn every_series_is_prefixed_and_documented() {
        let m = Metrics::new();
        m.delivered();
        m.disconnected(1001, "shutdown");
        m.auth_failed("rest", "expired");
        m.rest_request("/healthz", 200, Duration::from_millis(1));
        m.postgrest_call("unread_count", "ok", Duration::from_millis(3));
        m.resumed(false, 4, Duration::from_millis(20));
        let text = m.render(&Sampled { sessions: 3, users: 2, ..Sampled::default() });
        let mut names = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("gateway_"), "{line}");
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        for name in &names {
            let documented = text.lines().any(|l| {
                l.strip_prefix("# HELP ")
                    .is_some_and(|h| h.starts_with(&format!("{name} ")) || h.starts_with(&format!("{name}_total ")))
            });
            assert!(documented, "{name} has no # HELP:\n{text}");
        }
        assert_eq!(sample(&text, "gateway_sessions"), Some(3.0));
        assert_eq!(sample(&text, "gateway_deliveries_total"), Some(1.0));
        assert_eq!(sample(&text, "gateway_disconnects_total{code=\"1001\",reason=\"shutdown\"}"), Some(1.0));
        assert_eq!(sample(&text, "gateway_auth_failures_total{via=\"rest\",reason=\"expired\"}"), Some(1.0));
        assert_eq!(sample(&text, "gateway_resumes_from_database_total"), Some(1.0));
        assert_eq!(sample(&text, "gateway_replayed_messages_total"), Some(4.0));
        assert_eq!(sample(&text, "gateway_resume_duration_seconds_count{source=\"database\"}"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "gateway_rest_request_duration_seconds_bucket{route=\"/healthz\",status=\"200\",le=\"0.0025\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("gateway_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
            Some(1.0)
        );
        assert!(text.contains("# TYPE gateway_delivery_latency_seconds histogram"), "{text}");
    }

    #[test]
    fn the_process_figures_come_from_proc() {
        assert_eq!(process::vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        assert_eq!(process::vm_rss("VmRSS: lots"), None);
        if cfg!(target_os = "linux") {
            let text = Metrics::new().render(&Sampled::default());
            let rss = sample(&text, "gateway_process_resident_memory_bytes").unwrap_or(0.0);
            assert!(rss > 1e6, "a running test process uses more than 1 MB: {rss}");
            assert!(sample(&text, "gateway_process_open_fds").unwrap_or(0.0) >= 3.0);
        }
    }
}
