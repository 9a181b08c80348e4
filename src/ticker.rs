//! The tick of the gateway's periodic tasks (the sessions' clock, push presence, decisions and
//! sends, the membership-event prune): an interval whose missed ticks delay the next one (a
//! stalled task never catches up in a burst), ended by the gateway's stop token.
//!
//! Owns only the timing; never decides what a tick does.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A periodic task's tick until `stop`. The first tick is at once.
pub struct Ticker {
    interval: Interval,
    stop: CancellationToken,
}

impl Ticker {
    pub fn new(period: Duration, stop: CancellationToken) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, stop }
    }

    /// Waits for the next tick: true, or false once the task must stop.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_until_stopped() {
        let stop = CancellationToken::new();
        let mut ticker = Ticker::new(Duration::from_millis(1), stop.clone());
        assert!(ticker.tick().await, "the first tick is at once");
        assert!(ticker.tick().await, "and the next one a period later");
        // A period long enough that no tick is due when the stop comes (with both ready, either
        // may be taken, as in any unbiased select).
        let mut slow = Ticker::new(Duration::from_secs(3600), stop.clone());
        assert!(slow.tick().await, "the first tick is at once");
        stop.cancel();
        assert!(!slow.tick().await, "stopped");
    }
}
