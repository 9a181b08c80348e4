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
//!
//! Submodules, one per part of the gateway: [`routing`] (the data path), [`resume`], [`fairness`]
//! (per-user budgets), [`receipts`] (live read receipts), [`typing`], [`sampled`] (gauges set at
//! scrape time) and `process` (`/proc` figures).

mod fairness;
mod process;
mod push;
mod receipts;
mod resume;
mod routing;
mod sampled;
mod typing;

use std::time::Duration;

pub use fairness::{Budget, FairnessMetrics};
pub use push::{PushMetrics, PushStats};
pub use receipts::ReceiptMetrics;
use resume::ResumeMetrics;
use routing::RoutingMetrics;
pub use sampled::Sampled;
use sampled::SampledGauges;
pub use typing::{TypingDrop, TypingMetrics, TypingOutcome};

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

/// The gateway's metrics. One per gateway, shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// The data path's series, from the feed to the sessions' queues.
    routing: RoutingMetrics,
    unsubscribe_refused: Family<ReasonLabels, Counter>,
    disconnects: Family<DisconnectLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    rls_check: Histogram,
    rest: Histograms<RestLabels>,
    postgrest: Histograms<CallLabels>,
    /// The gauges set at scrape time.
    sampled: SampledGauges,
    /// The resumes' series.
    resumes: ResumeMetrics,
    /// The per-user budgets' series.
    pub fairness: FairnessMetrics,
    /// The push path's series.
    pub push: PushMetrics,
    /// The live read receipts' series.
    pub receipts: ReceiptMetrics,
    /// Typing's series.
    pub typing: TypingMetrics,
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
        let routing = RoutingMetrics::register(&mut r);
        let unsubscribe_refused = Family::<ReasonLabels, Counter>::default();
        r.register(
            "unsubscribe_refused",
            "unsubscribe_thread requests refused, by reason (access_denied, too_many, check_failed, over_budget)",
            unsubscribe_refused.clone(),
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
        let rls_check = latency();
        r.register(
            "rls_check_duration_seconds",
            "subscribe_thread and typing access checks through PostgREST (row-level security), whatever the outcome",
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
        let sampled = SampledGauges::register(&mut r);
        let fairness = FairnessMetrics::register(&mut r);
        let push = PushMetrics::register(&mut r);
        let receipts = ReceiptMetrics::register(&mut r);
        let typing = TypingMetrics::register(&mut r);
        let resumes = ResumeMetrics::register(&mut r);
        let shutdown_closes = Counter::default();
        r.register(
            "shutdown_closes",
            "Sessions closed by a shutdown after the drain, paced by DRAIN_CLOSE_RATE",
            shutdown_closes.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        r.register("build_info", "Always 1; the version of the running gateway in its label", build);
        Metrics {
            registry: r,
            routing,
            unsubscribe_refused,
            disconnects,
            auth_failures,
            rls_check,
            rest,
            postgrest,
            sampled,
            resumes,
            fairness,
            push,
            receipts,
            typing,
            shutdown_closes,
        }
    }

    /// An `unsubscribe_thread` was refused: `access_denied`, `too_many`, `check_failed`, `over_budget`.
    pub fn unsubscribe_refused(&self, reason: &'static str) {
        self.unsubscribe_refused.get_or_create(&ReasonLabels { reason }).inc();
    }
    /// A shutdown closed one more session (paced by `DRAIN_CLOSE_RATE`).
    pub fn shutdown_closed(&self) {
        self.shutdown_closes.inc();
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
        self.sampled.set(sampled);
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

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
