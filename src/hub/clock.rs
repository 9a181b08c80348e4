//! The sessions' shared clock: one task rings every session whose alarm is due, instead of a
//! timer per session (an idle session then holds an atomic, not a timer entry and its wake-up).
//!
//! Owns the tick and the alarms' time base: milliseconds since the hub was made. A session sets
//! its alarm (its next keep-alive ping or its token's expiry, whichever is first) in its handle;
//! the clock walks the registry every [`TICK`] and wakes each session whose alarm is due, once.
//! An alarm rings at most one tick late. Never does I/O and never decides what an alarm means:
//! the session does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::ticker::Ticker;

/// How often the clock looks at the alarms: the keep-alive and expiry's resolution.
pub const TICK: Duration = Duration::from_millis(250);

impl Hub {
    /// Milliseconds on the alarms' clock at `at` (0 before the hub was made).
    pub fn clock_millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Rings every session whose alarm is due at `now` (milliseconds on the clock); returns how
    /// many.
    pub fn ring_due(&self, now: u64) -> usize {
        let mut rung = 0;
        for entry in self.sessions_by_user.iter() {
            rung += entry.value().iter().filter(|session| session.check_alarm(now)).count();
        }
        rung
    }

    /// The clock's task: rings due alarms every [`TICK`] until `stop`.
    pub async fn run_clock(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = Ticker::new(TICK, stop);
        while tick.tick().await {
            self.ring_due(self.clock_millis(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::hub::{test_hub, Wake};

    #[tokio::test]
    async fn a_due_alarm_rings_once_and_a_later_one_waits() {
        let hub = test_hub(4);
        let (soon, later) = (hub.register(Uuid::new_v4()).expect("fits"), hub.register(Uuid::new_v4()).expect("fits"));
        soon.set_alarm(1_000);
        later.set_alarm(5_000);
        assert_eq!(hub.ring_due(999), 0);
        assert_eq!(hub.ring_due(1_000), 1);
        assert_eq!(hub.ring_due(1_250), 0, "rung once, not at every tick");
        assert_eq!(soon.next().await, Wake::Alarm);
        assert_eq!(hub.ring_due(5_000), 1);
        assert_eq!(later.next().await, Wake::Alarm);
    }

    #[test]
    fn the_clock_counts_from_the_hub() {
        let hub = test_hub(4);
        let now = std::time::Instant::now();
        assert!(hub.clock_millis(now + std::time::Duration::from_secs(2)) >= 2_000);
        if let Some(before) = now.checked_sub(std::time::Duration::from_secs(60)) {
            assert_eq!(hub.clock_millis(before), 0);
        }
    }
}
