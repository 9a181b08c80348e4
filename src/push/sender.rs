//! The sender: leases due deliveries from the queue, sends each on its channel, and ends or
//! reschedules the whole batch in one call (`chat_push_finish_batch`).
//!
//! Owns the attempt policy: a retryable answer waits [`super::backoff`] and is tried again, up to
//! `PUSH_MAX_ATTEMPTS`; then, or on a refusal, the delivery is dropped, logged and counted; a
//! device its provider reports gone is deleted. It must never log a token, a secret or a message's
//! text, and never send a delivery it has not leased.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{backoff, Outcome, PushConfig, DECIDE_EVERY};
use crate::metrics::Metrics;
use crate::store::{PushDelivery, PushFinish, Store};
use crate::ticker::Ticker;

/// Deliveries leased per round (sent concurrently, then finished in one call).
pub const BATCH: i32 = 200;
/// After a push on a channel, the next for that user and thread waits this long (and collapses).
pub const GAP_SECS: i32 = 10;

/// Starts the send loop until `stop`.
pub fn spawn(
    store: Store,
    metrics: Arc<Metrics>,
    config: Arc<PushConfig>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    let channels = config.channels();
    let lease_secs = i32::try_from(config.lease.as_secs()).unwrap_or(3600);
    tasks.spawn(async move {
        let mut every = Ticker::new(DECIDE_EVERY, stop.clone());
        let mut failures = super::Failures::every(120);
        while every.tick().await {
            loop {
                let leased = match store.push_claim(&channels, BATCH, lease_secs, GAP_SECS).await {
                    Ok(leased) => {
                        failures.ok("push leases");
                        leased
                    }
                    Err(e) => {
                        if failures.failed() {
                            tracing::warn!(error = %e, failures = failures.count, "cannot lease push deliveries; retrying every tick, logged once a minute");
                        }
                        break;
                    }
                };
                let full = leased.len() >= BATCH as usize;
                let outcomes = join_all(leased.iter().map(|d| send_one(&metrics, &config, d))).await;
                finish(&store, &outcomes).await;
                if !full || stop.is_cancelled() {
                    break;
                }
            }
        }
    });
}

/// Records the outcomes of a leased batch in one call. A failure is logged: the leases run out
/// and the deliveries are sent again with the same ids.
async fn finish(store: &Store, outcomes: &[PushFinish]) {
    if outcomes.is_empty() {
        return;
    }
    if let Err(e) = store.push_finish_batch(outcomes).await {
        tracing::warn!(deliveries = outcomes.len(), error = %e, "cannot record push outcomes; the leases run out and they are sent again with the same ids");
    }
}

/// Sends one delivery, counts and logs its outcome, and says how it ended.
async fn send_one(metrics: &Metrics, config: &PushConfig, delivery: &PushDelivery) -> PushFinish {
    let outcome = dispatch(config, delivery).await;
    let attempts = u32::try_from(delivery.attempts).unwrap_or(u32::MAX);
    let (verdict, error, retry_at) = match &outcome {
        Outcome::Sent => ("sent", None, None),
        Outcome::Gone(reason) => ("gone", Some(reason.clone()), None),
        Outcome::Dropped(reason) => ("dropped", Some(reason.clone()), None),
        Outcome::Retry { reason, .. } if attempts >= config.max_attempts => {
            ("dropped", Some(format!("{reason} (after {attempts} attempts)")), None)
        }
        Outcome::Retry { after, reason } => {
            let wait =
                chrono::Duration::from_std(backoff(attempts, *after)).unwrap_or_else(|_| chrono::Duration::seconds(60));
            ("retry", Some(reason.clone()), Some(chrono::Utc::now() + wait))
        }
    };
    metrics.push.attempt(super::channel_label(&delivery.channel), verdict);
    if verdict == "sent" {
        metrics.push.sent_after((chrono::Utc::now() - delivery.created_at).to_std().unwrap_or_default());
    }
    match verdict {
        "sent" => tracing::debug!(delivery = %delivery.id, channel = %delivery.channel, "push sent"),
        "retry" => {
            tracing::info!(delivery = %delivery.id, channel = %delivery.channel, attempts, error = ?error, "push failed; retrying")
        }
        _ => {
            tracing::warn!(delivery = %delivery.id, channel = %delivery.channel, user = %delivery.user_id, outcome = verdict, error = ?error, "push not delivered")
        }
    }
    PushFinish { id: delivery.id, outcome: verdict, error, retry_at }
}

/// Sends a delivery on its channel's transport.
async fn dispatch(config: &PushConfig, delivery: &PushDelivery) -> Outcome {
    let outcome = match delivery.channel.as_str() {
        "webhook" => match &config.webhook {
            Some(hook) => Some(hook.send(delivery).await),
            None => None,
        },
        "fcm" => match &config.fcm {
            Some(fcm) => Some(fcm.send(delivery).await),
            None => None,
        },
        "apns" => match &config.apns {
            Some(apns) => Some(apns.send(delivery).await),
            None => None,
        },
        "webpush" => match &config.webpush {
            Some(webpush) => Some(webpush.send(delivery).await),
            None => None,
        },
        "expo" => match &config.expo {
            Some(expo) => Some(expo.send(delivery).await),
            None => None,
        },
        _ => None,
    };
    // None: never leased, as the claim asks only for this instance's channels.
    outcome.unwrap_or_else(|| Outcome::Dropped(format!("no {} transport on this instance", delivery.channel)))
}
