//! Rate limits: a token bucket for one client's frames, a keyed set of buckets for REST calls
//! per user, and one for refused tokens per source IP. Pure bookkeeping over `Instant`s: no I/O,
//! no locks held across awaits.

use std::net::IpAddr;
use std::time::Instant;

use dashmap::DashMap;
use uuid::Uuid;

/// A token bucket: `per_sec` sustained, bursts of twice that.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: u32) -> TokenBucket {
        let capacity = f64::from(per_sec.max(1)) * 2.0;
        TokenBucket { tokens: capacity, capacity, per_sec: f64::from(per_sec.max(1)), last: Instant::now() }
    }

    /// `per_sec` sustained (may be fractional), bursts of `burst`.
    pub fn with_rate(per_sec: f64, burst: f64) -> TokenBucket {
        let capacity = burst.max(1.0);
        TokenBucket { tokens: capacity, capacity, per_sec: per_sec.max(0.0), last: Instant::now() }
    }

    /// Whether a token is available at `now`, without taking it.
    pub fn has_token_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.per_sec).min(self.capacity) >= 1.0
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One bucket per user, bounded: idle buckets are forgotten when the map grows large.
pub struct PerUser {
    buckets: DashMap<Uuid, TokenBucket>,
    per_sec: u32,
    max_users: usize,
}

impl PerUser {
    pub fn new(per_sec: u32, max_users: usize) -> PerUser {
        PerUser { buckets: DashMap::new(), per_sec, max_users }
    }

    pub fn allow(&self, user: Uuid) -> bool {
        if self.buckets.len() >= self.max_users {
            // Full buckets belong to users idle for a while: forgetting them changes nothing.
            let capacity = f64::from(self.per_sec) * 2.0;
            let now = Instant::now();
            self.buckets.retain(|_, b| {
                let mut probe = b.clone();
                probe.allow_at(now);
                probe.tokens + 1.0 < capacity
            });
            if self.buckets.len() >= self.max_users {
                // Everyone is active: start afresh rather than grow without bound.
                self.buckets.clear();
            }
        }
        self.buckets.entry(user).or_insert_with(|| TokenBucket::new(self.per_sec)).allow()
    }
}

/// One bucket per source IP, spent by refused tokens; bounded like [`PerUser`].
pub struct PerIp {
    buckets: DashMap<IpAddr, TokenBucket>,
    per_sec: f64,
    burst: f64,
    max_ips: usize,
}

impl PerIp {
    pub fn new(per_sec: f64, burst: f64, max_ips: usize) -> PerIp {
        PerIp { buckets: DashMap::new(), per_sec, burst, max_ips }
    }

    /// Whether `ip` has no budget left (it is not spent by asking).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        self.buckets.get(&ip).is_some_and(|b| !b.has_token_at(Instant::now()))
    }

    /// Spends one unit of `ip`'s budget.
    pub fn spend(&self, ip: IpAddr) {
        if self.buckets.len() >= self.max_ips && !self.buckets.contains_key(&ip) {
            let now = Instant::now();
            // Buckets that refilled completely belong to addresses that behave: forget them.
            self.buckets.retain(|_, b| {
                let mut probe = b.clone();
                probe.allow_at(now);
                probe.tokens + 1.0 < probe.capacity
            });
            if self.buckets.len() >= self.max_ips {
                self.buckets.clear();
            }
        }
        self.buckets.entry(ip).or_insert_with(|| TokenBucket::with_rate(self.per_sec, self.burst)).allow();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(5);
        let allowed = (0..20).filter(|_| b.allow_at(start)).count();
        assert_eq!(allowed, 10);
        assert!(!b.allow_at(start));
        assert!(b.allow_at(start + Duration::from_millis(250)));
    }

    #[test]
    fn per_user_is_per_user_and_bounded() {
        let limits = PerUser::new(1, 4);
        let a = Uuid::new_v4();
        assert!(limits.allow(a) && limits.allow(a));
        assert!(!limits.allow(a));
        assert!(limits.allow(Uuid::new_v4()));
        for _ in 0..10 {
            limits.allow(Uuid::new_v4());
        }
        assert!(limits.buckets.len() <= 5);
    }

    #[test]
    fn per_ip_budget_is_spent_by_failures_only_and_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::with_rate(0.5, 3.0);
        assert!(b.has_token_at(start));
        assert_eq!((0..10).filter(|_| b.allow_at(start)).count(), 3);
        assert!(!b.has_token_at(start));
        assert!(b.has_token_at(start + Duration::from_secs(2)), "0.5/s: one token after 2 s");
        let ips = PerIp::new(1.0, 2.0, 2);
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(!ips.exhausted(ip));
        ips.spend(ip);
        ips.spend(ip);
        assert!(ips.exhausted(ip));
        assert!(!ips.exhausted([192, 0, 2, 2].into()));
        for i in 0..10u8 {
            ips.spend([198, 51, 100, i].into());
        }
        assert!(ips.buckets.len() <= 3);
    }
}
