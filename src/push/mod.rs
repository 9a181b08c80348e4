//! Push to offline recipients: the gateway's side of the durable queue in the database
//! (`supabase/migrations/*_push.sql`).
//!
//! Owns three loops, each its own task:
//! - [`presence`]: which users have a session on this instance, reported to the database about
//!   once a second (what changed, not one write per connection), cleared at a clean stop;
//! - the decision loop: every [`DECIDE_EVERY`] it asks the database to decide the jobs at least
//!   `delay` old (one job per message, enqueued by a trigger in the message's own transaction). The
//!   database decides each once, whichever instance asks, and writes one delivery per recipient
//!   and configured channel. With no transport configured the jobs are only drained, so the queue
//!   never grows on a gateway that does not push. Every [`QUEUE_STATS_EVERY`] it also reads the
//!   queue's depth for the metrics and `/admin`;
//! - [`sender`]: leases due deliveries, sends them on their transport ([`webhook`], [`webpush`],
//!   [`expo`]), and ends or reschedules each.
//!
//! All three run on the push path's own thread and runtime ([`runtime`]), at a lower priority and
//! with their own store, so that a busy push path takes CPU from the live path only when the live
//! path leaves it idle.
//!
//! It must never run on the router's task or hold up the live path; the database is the buffer.
//! A failed call is logged and tried again on the next tick: a job stays in its table until a
//! decision commits, a delivery until it is finished, and a lease that runs out (an instance died
//! mid-send) gives the delivery to another sender with the same id.

pub mod apns;
pub mod expo;
pub mod fcm;
pub mod presence;
pub mod runtime;
pub mod sender;
pub mod webhook;
pub mod webpush;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::ticker::Ticker;

/// How often the queue is asked for decisions, and due deliveries are leased.
pub const DECIDE_EVERY: Duration = Duration::from_millis(500);
/// Jobs decided per call; a full batch is followed by another call at once.
pub const DECIDE_BATCH: i32 = 1000;
/// A message older than this when its job is decided pushes nobody (imports, long outages).
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Finished deliveries are kept this many hours.
pub const KEEP_HOURS: i32 = 24;
/// How often the decision loop reads the queue's depth for metrics and `/admin`.
pub const QUEUE_STATS_EVERY: Duration = Duration::from_secs(5);
/// How often finished deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Characters of a message in a notification.
pub const PREVIEW_CHARS: usize = 140;
/// Characters of the sender's name in a notification's title.
pub const TITLE_CHARS: usize = 100;

/// What the push path needs to run.
pub struct PushConfig {
    /// This instance, in the presence table.
    pub instance: Uuid,
    /// How long after its commit a message is decided (`PUSH_DELAY_MS`).
    pub delay: Duration,
    /// Attempts per delivery before it is dropped (`PUSH_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// How long a lease on deliveries lasts (`PUSH_LEASE_SECS`): a sender that died is replaced
    /// after this, and its deliveries are resent with the same ids.
    pub lease: Duration,
    /// The webhook, when `PUSH_WEBHOOK_URL` is set.
    pub webhook: Option<webhook::Webhook>,
    /// FCM HTTP v1, when `FCM_SERVICE_ACCOUNT_FILE` is set.
    pub fcm: Option<fcm::Fcm>,
    /// APNs, when its key, key id, team id and topic are set.
    pub apns: Option<apns::Apns>,
    /// Web Push, when `VAPID_PRIVATE_KEY` is set.
    pub webpush: Option<webpush::WebPush>,
    /// Expo's push API, when `PUSH_EXPO=true`.
    pub expo: Option<expo::Expo>,
}

/// A transport that cannot be built at start-up (each names its setting).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    #[error(transparent)]
    Fcm(#[from] fcm::FcmError),
    #[error(transparent)]
    Apns(#[from] apns::ApnsError),
    #[error(transparent)]
    WebPush(#[from] webpush::WebPushError),
    #[error(transparent)]
    Expo(#[from] expo::ExpoError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}

impl PushConfig {
    /// From the validated settings: a fresh instance id, each configured transport built (key
    /// files read and parsed now, so a bad key stops the start).
    pub fn new(settings: &crate::config::PushSettings, timeout: Duration) -> Result<PushConfig, PushError> {
        let webhook = settings.webhook.as_ref().map(|target| webhook::Webhook::new(target, timeout)).transpose()?;
        let fcm = settings.fcm.as_ref().map(|target| fcm::Fcm::new(target, timeout)).transpose()?;
        let apns = settings.apns.as_ref().map(|target| apns::Apns::new(target, timeout)).transpose()?;
        let roots = settings.webpush_roots.as_deref();
        let webpush = settings.vapid.as_ref().map(|vapid| webpush::WebPush::new(vapid, roots, timeout)).transpose()?;
        let expo = settings.expo.as_ref().map(|target| expo::Expo::new(target, timeout)).transpose()?;
        Ok(PushConfig {
            instance: Uuid::new_v4(),
            delay: settings.delay,
            max_attempts: settings.max_attempts,
            lease: settings.lease,
            webhook,
            fcm,
            apns,
            webpush,
            expo,
        })
    }

    /// The channels this instance sends on; empty: the queue is only drained.
    pub fn channels(&self) -> Vec<&'static str> {
        let mut channels = Vec::new();
        if self.webhook.is_some() {
            channels.push("webhook");
        }
        if self.fcm.is_some() {
            channels.push("fcm");
        }
        if self.apns.is_some() {
            channels.push("apns");
        }
        if self.webpush.is_some() {
            channels.push("webpush");
        }
        if self.expo.is_some() {
            channels.push("expo");
        }
        channels
    }
}

/// What a send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Worth another attempt (5xx, 429, timeout), after `after` if the provider said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (a 4xx other than 429 or "gone").
    Dropped(String),
    /// The device no longer exists at its provider: it is deleted.
    Gone(String),
}

/// Repeated failures of a periodic call, logged on the first and then every `every`-th time (a
/// database without the push migration must not fill the logs twice a second), and the recovery.
pub struct Failures {
    pub count: u64,
    every: u64,
}

impl Failures {
    pub fn every(every: u64) -> Failures {
        Failures { count: 0, every: every.max(1) }
    }

    /// One more failure; true when it should be logged.
    pub fn failed(&mut self) -> bool {
        self.count += 1;
        self.count == 1 || self.count.is_multiple_of(self.every)
    }

    /// A success: logs the recovery of `what` after failures.
    pub fn ok(&mut self, what: &str) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "{what} work again");
            self.count = 0;
        }
    }
}

/// The device token of a delivery to a device (FCM, APNs, Expo); `None` for the webhook.
pub fn device_token(delivery: &crate::store::PushDelivery) -> Option<&str> {
    delivery.device.as_ref()?.get("token")?.as_str().filter(|token| !token.is_empty())
}

/// A notification's title: the sender's name, at most [`TITLE_CHARS`] characters.
pub fn title(sender: &crate::model::Sender) -> String {
    sender.full_name.chars().take(TITLE_CHARS).collect()
}

/// The static label of a channel name from the database.
pub fn channel_label(channel: &str) -> &'static str {
    match channel {
        "webhook" => "webhook",
        "webpush" => "webpush",
        "fcm" => "fcm",
        "apns" => "apns",
        "expo" => "expo",
        _ => "other",
    }
}

/// What an HTTP status means for a delivery; `gone_on_404_410`: the provider reports a removed
/// device that way (Web Push).
pub fn outcome_of_status(status: u16, retry_after: Option<Duration>, gone_on_404_410: bool) -> Outcome {
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 if gone_on_404_410 => Outcome::Gone(format!("HTTP {status}")),
        429 => Outcome::Retry { after: retry_after, reason: "HTTP 429".into() },
        408 | 500..=599 => Outcome::Retry { after: retry_after, reason: format!("HTTP {status}") },
        _ => Outcome::Dropped(format!("HTTP {status}")),
    }
}

/// What a plain HTTP send's result means for a delivery (webhook, Web Push): the answer's status
/// as `outcome_of_status` reads it; a timeout or an unreachable endpoint is retried, its error
/// written without the URL.
pub fn outcome_of_send(sent: Result<reqwest::Response, reqwest::Error>, gone_on_404_410: bool) -> Outcome {
    match sent {
        Ok(response) => outcome_of_status(response.status().as_u16(), webhook::retry_after(&response), gone_on_404_410),
        Err(e) if e.is_timeout() => Outcome::Retry { after: None, reason: "timeout".into() },
        Err(e) => Outcome::Retry { after: None, reason: format!("unreachable: {}", webhook::without_url(&e)) },
    }
}

/// The wait before attempt `attempts + 1`: 2 s doubling up to 60 s, with up to 25 % jitter; a
/// provider's `Retry-After` wins when longer (at most 10 minutes).
pub fn backoff(attempts: u32, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_secs(2).saturating_mul(1u32 << attempts.saturating_sub(1).min(5));
    let base = base.min(Duration::from_secs(60));
    let jitter = base.mul_f64(fastrand::f64() * 0.25);
    let wait = base + jitter;
    match retry_after {
        Some(asked) if asked > wait => asked.min(Duration::from_secs(600)),
        _ => wait,
    }
}

/// Starts the push path on its own thread and runtime ([`runtime`]) with a store from `open`,
/// until `stop`; `tasks` waits for its end.
pub fn start(
    open: runtime::OpenStore,
    hub: std::sync::Arc<Hub>,
    metrics: std::sync::Arc<Metrics>,
    config: PushConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), PushError> {
    Ok(runtime::start(open, hub, metrics, config, tasks, stop)?)
}

/// Spawns the presence reporter, the decision loop and the sender on the current runtime until
/// `stop` (the push runtime's, see [`start`]).
pub fn spawn_loops(
    store: Store,
    hub: std::sync::Arc<Hub>,
    metrics: std::sync::Arc<Metrics>,
    config: PushConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    let config = std::sync::Arc::new(config);
    presence::spawn(store.clone(), hub, config.instance, tasks, stop.clone());
    let channels = config.channels();
    let sends = !channels.is_empty();
    let delay_ms = i32::try_from(config.delay.as_millis()).unwrap_or(i32::MAX);
    let decider = store.clone();
    let decider_stop = stop.clone();
    let decider_metrics = metrics.clone();
    tasks.spawn(async move {
        let mut every = Ticker::new(DECIDE_EVERY, decider_stop.clone());
        let mut last_prune = tokio::time::Instant::now();
        let mut last_stats: Option<tokio::time::Instant> = None;
        let mut failures = Failures::every(120);
        let mut stats_failures = Failures::every(12);
        while every.tick().await {
            let decided = decide_all(&decider, &decider_metrics, &channels, delay_ms, &decider_stop).await;
            if let Err(e) = decided {
                if failures.failed() {
                    tracing::warn!(error = %e, failures = failures.count, "cannot decide push jobs (is supabase/migrations applied?); retrying every tick, logged once a minute");
                }
            } else {
                failures.ok("push decisions");
            }
            if last_stats.is_none_or(|at| at.elapsed() >= QUEUE_STATS_EVERY) {
                last_stats = Some(tokio::time::Instant::now());
                read_queue(&decider, &decider_metrics, &mut stats_failures).await;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                match decider.push_prune(KEEP_HOURS).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "pruned finished push deliveries"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune chat_push_deliveries; trying again in an hour"),
                }
            }
        }
    });
    if sends {
        sender::spawn(store, metrics, config, tasks, stop);
    }
}

/// Reads the queue's depth into the metrics (and `/admin`'s snapshot); off the live path.
async fn read_queue(store: &Store, metrics: &Metrics, failures: &mut Failures) {
    match store.push_stats().await {
        Ok(stats) => {
            metrics.push.queue_read(stats, chrono::Utc::now());
            failures.ok("push queue readings");
        }
        Err(e) => {
            if failures.failed() {
                tracing::warn!(error = %e, failures = failures.count, "cannot read the push queue's depth; retrying every 5 s, logged once a minute");
            }
        }
    }
}

/// Decides batches until the queue has no due job left (or the gateway stops).
async fn decide_all(
    store: &Store,
    metrics: &Metrics,
    channels: &[&'static str],
    delay_ms: i32,
    stop: &CancellationToken,
) -> Result<(), crate::store::StoreError> {
    let max_age = i32::try_from(MAX_AGE.as_secs()).unwrap_or(i32::MAX);
    loop {
        let decided = store.push_decide(delay_ms, DECIDE_BATCH, channels, max_age).await?;
        metrics.push.decided(decided.jobs.max(0) as u64, decided.deliveries.max(0) as u64);
        if decided.deliveries > 0 {
            tracing::debug!(jobs = decided.jobs, deliveries = decided.deliveries, "push decisions");
        }
        if decided.jobs < i64::from(DECIDE_BATCH) || stop.is_cancelled() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_logged_first_and_then_every_nth_time() {
        let mut failures = Failures::every(3);
        let logged: Vec<bool> = (0..7).map(|_| failures.failed()).collect();
        assert_eq!(logged, [true, false, true, false, false, true, false]);
        failures.ok("test calls");
        assert!(failures.failed(), "a new run of failures is logged again");
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(outcome_of_status(201, None, true), Outcome::Sent);
        assert_eq!(outcome_of_status(410, None, true), Outcome::Gone("HTTP 410".into()));
        assert_eq!(outcome_of_status(410, None, false), Outcome::Dropped("HTTP 410".into()));
        assert_eq!(outcome_of_status(400, None, true), Outcome::Dropped("HTTP 400".into()));
        let later = Some(Duration::from_secs(30));
        assert_eq!(outcome_of_status(429, later, false), Outcome::Retry { after: later, reason: "HTTP 429".into() });
        assert!(matches!(outcome_of_status(503, None, false), Outcome::Retry { .. }));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_and_honours_a_longer_retry_after() {
        let first = backoff(1, None);
        assert!(first >= Duration::from_secs(2) && first < Duration::from_millis(2500), "{first:?}");
        assert!(backoff(3, None) >= Duration::from_secs(8));
        let late = backoff(20, None);
        assert!(late >= Duration::from_secs(60) && late <= Duration::from_secs(75), "{late:?}");
        assert_eq!(backoff(1, Some(Duration::from_secs(120))), Duration::from_secs(120));
        assert_eq!(backoff(1, Some(Duration::from_secs(9999))), Duration::from_secs(600));
    }
}
