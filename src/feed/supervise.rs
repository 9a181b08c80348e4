//! The reconnect loop both backends share: attempts one after another until the gateway stops,
//! one [`UpstreamEvent::Down`] per loss (not one per failed retry), exponential backoff with
//! jitter between attempts, reset after an attempt that was live, a warning per retry.
//!
//! A backend supplies only [`Attempt`]: one connection (connect, subscribe or prepare, serve
//! until lost), which sends its own `Live` and events and tells how it ended. This module owns
//! the retry schedule and the `Down` events; it never connects anywhere itself, never decides
//! who receives what, and stops waiting at once when `stop` is cancelled.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Lost, UpstreamEvent};

/// How one attempt ended.
pub(crate) enum Ended {
    /// The gateway is stopping (or the router went away): no retry.
    Stopped,
    /// The connection failed or was lost; `was_live` when it had sent `Live` first.
    Lost { lost: Lost, was_live: bool },
}

/// One backend's way to hold its upstream.
pub(crate) trait Attempt {
    /// Connects and serves until the connection is lost or `stop` is cancelled.
    fn attempt(&mut self) -> impl Future<Output = Ended> + Send;
    /// The warning for a loss; the next attempt follows after `retry_in`.
    fn log_lost(&self, reason: &Lost, retry_in: Duration);
}

/// Delays between attempts: from `min`, doubling, jittered, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    fn delays(self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Runs attempts until `stop` is cancelled, an attempt ends [`Ended::Stopped`], or the router
/// stops listening.
pub(crate) async fn supervise(
    upstream: &mut impl Attempt,
    backoff: Backoff,
    events: &mpsc::Sender<UpstreamEvent>,
    stop: &CancellationToken,
) {
    let mut delays = backoff.delays();
    let mut reported = false;
    while !stop.is_cancelled() {
        let (lost, was_live) = match upstream.attempt().await {
            Ended::Stopped => return,
            Ended::Lost { lost, was_live } => (lost, was_live),
        };
        if was_live {
            delays = backoff.delays();
            reported = false;
        }
        if !reported {
            reported = true;
            if events.send(UpstreamEvent::Down { reason: lost.clone() }).await.is_err() {
                return;
            }
        }
        let delay = delays.next().unwrap_or(backoff.max);
        upstream.log_lost(&lost, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;

    use super::*;

    /// Ends each attempt as scripted; `Stopped` once the script is done.
    struct Scripted {
        script: VecDeque<Option<bool>>,
        logged: Cell<usize>,
    }

    impl Attempt for Scripted {
        fn attempt(&mut self) -> impl Future<Output = Ended> + Send {
            let next = self.script.pop_front().flatten();
            async move {
                match next {
                    Some(was_live) => Ended::Lost { lost: Lost::Socket("gone".into()), was_live },
                    None => Ended::Stopped,
                }
            }
        }

        fn log_lost(&self, _reason: &Lost, _retry_in: Duration) {
            self.logged.set(self.logged.get() + 1);
        }
    }

    impl Scripted {
        fn new(script: &[bool]) -> Scripted {
            Scripted { script: script.iter().map(|live| Some(*live)).collect(), logged: Cell::new(0) }
        }
    }

    const FAST: Backoff = Backoff { min: Duration::from_millis(1), max: Duration::from_millis(2) };

    #[tokio::test]
    async fn one_down_per_loss_not_per_failed_retry() {
        let (tx, mut rx) = mpsc::channel(16);
        // Lost, two failed retries, live again then lost, one failed retry, stopped.
        let mut upstream = Scripted::new(&[false, false, false, true, false]);
        supervise(&mut upstream, FAST, &tx, &CancellationToken::new()).await;
        drop(tx);
        let mut downs = 0;
        while let Some(event) = rx.recv().await {
            assert!(matches!(event, UpstreamEvent::Down { reason: Lost::Socket(_) }), "{event:?}");
            downs += 1;
        }
        assert_eq!(downs, 2);
        assert!(upstream.script.is_empty(), "every attempt was made");
        assert_eq!(upstream.logged.get(), 5, "a warning per loss");
    }

    #[tokio::test]
    async fn stops_while_waiting_to_retry() {
        let (tx, _rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let mut upstream = Scripted::new(&[false, false]);
        let slow = Backoff { min: Duration::from_secs(3600), max: Duration::from_secs(3600) };
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stopper.cancel();
        });
        tokio::time::timeout(Duration::from_secs(10), supervise(&mut upstream, slow, &tx, &stop))
            .await
            .expect("returns once stopped");
        assert_eq!(upstream.script.len(), 1, "no attempt after the stop");
    }

    #[tokio::test]
    async fn ends_when_the_router_is_gone() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let mut upstream = Scripted::new(&[false, false]);
        supervise(&mut upstream, FAST, &tx, &CancellationToken::new()).await;
        assert_eq!(upstream.script.len(), 1, "the Down could not be sent: no retry");
    }
}
