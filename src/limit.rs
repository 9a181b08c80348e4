//! Rate limits: a token bucket for one client's frames, a keyed set of buckets for REST calls
//! per user, and one for refused tokens per source IP. Pure bookkeeping over `Instant`s: no I/O,
//! no locks held across awaits.
//!
//! Keyed sets never grow without bound: a key whose bucket has refilled completely is idle and
//! forgetting it changes nothing, so such keys are swept out every [`SWEEP_EVERY`] (on the next
//! use after it), and when a set reaches its maximum size. Forgetting a key only ever gives it a
//! full budget back, so no sweep can lock anyone out.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// Whether the bucket has refilled completely by `now` (its key is idle).
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.per_sec >= self.capacity
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

/// How often keyed limiters forget their idle keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Buckets by key, swept of idle keys with time and bounded in size.
struct Keyed<K: Eq + Hash> {
    buckets: DashMap<K, TokenBucket>,
    max_keys: usize,
    last_sweep: Mutex<Instant>,
}

impl<K: Eq + Hash + Clone> Keyed<K> {
    fn new(max_keys: usize) -> Keyed<K> {
        Keyed { buckets: DashMap::new(), max_keys: max_keys.max(1), last_sweep: Mutex::new(Instant::now()) }
    }

    /// Forgets idle keys when a sweep is due, or when `key` is new and the set is full (then,
    /// if every key is active, starts afresh rather than grow without bound).
    fn make_room(&self, key: &K, now: Instant) {
        let due = self.last_sweep.lock().is_ok_and(|mut last| {
            let due = now.saturating_duration_since(*last) >= SWEEP_EVERY;
            if due {
                *last = now;
            }
            due
        });
        let full = self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key);
        if due || full {
            self.buckets.retain(|_, b| !b.is_full_at(now));
        }
        if full && self.buckets.len() >= self.max_keys {
            self.buckets.clear();
        }
    }

    /// Takes a token from `key`'s bucket (created by `fresh` if missing).
    fn allow(&self, key: K, now: Instant, fresh: impl FnOnce() -> TokenBucket) -> bool {
        self.make_room(&key, now);
        self.buckets.entry(key).or_insert_with(fresh).allow_at(now)
    }

    fn has_token(&self, key: &K, now: Instant) -> bool {
        self.buckets.get(key).is_none_or(|b| b.has_token_at(now))
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// One bucket per user, bounded: idle buckets expire (see the module documentation).
pub struct PerUser {
    buckets: Keyed<Uuid>,
    per_sec: f64,
    burst: f64,
}

impl PerUser {
    /// `per_sec` sustained, bursts of twice that.
    pub fn new(per_sec: u32, max_users: usize) -> PerUser {
        let per_sec = f64::from(per_sec.max(1));
        PerUser::with_rate(per_sec, per_sec * 2.0, max_users)
    }

    /// `per_sec` sustained (may be fractional), bursts of `burst`.
    pub fn with_rate(per_sec: f64, burst: f64, max_users: usize) -> PerUser {
        PerUser { buckets: Keyed::new(max_users), per_sec, burst }
    }

    pub fn allow(&self, user: Uuid) -> bool {
        self.allow_at(user, Instant::now())
    }

    pub fn allow_at(&self, user: Uuid, now: Instant) -> bool {
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets.allow(user, now, || TokenBucket::with_rate(per_sec, burst))
    }

    /// Users with a bucket now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

/// One bucket per source IP, spent by refused tokens; bounded and expiring like [`PerUser`].
pub struct PerIp {
    buckets: Keyed<IpAddr>,
    per_sec: f64,
    burst: f64,
}

impl PerIp {
    pub fn new(per_sec: f64, burst: f64, max_ips: usize) -> PerIp {
        PerIp { buckets: Keyed::new(max_ips), per_sec, burst }
    }

    /// Whether `ip` has no budget left (it is not spent by asking).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        !self.buckets.has_token(&ip, Instant::now())
    }

    /// Spends one unit of `ip`'s budget.
    pub fn spend(&self, ip: IpAddr) {
        self.spend_at(ip, Instant::now());
    }

    pub fn spend_at(&self, ip: IpAddr, now: Instant) {
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets.allow(ip, now, || TokenBucket::with_rate(per_sec, burst));
    }

    /// Addresses with a budget now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
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
        assert!(limits.keys() <= 5);
    }

    #[test]
    fn idle_keys_expire_with_time_not_only_when_full() {
        let start = Instant::now();
        let users = PerUser::new(10, 1000);
        let (idle, busy) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(users.allow_at(idle, start));
        for _ in 0..20 {
            users.allow_at(busy, start);
        }
        assert_eq!(users.keys(), 2);
        // Before a sweep is due nothing is forgotten.
        users.allow_at(Uuid::new_v4(), start + Duration::from_secs(1));
        assert_eq!(users.keys(), 3);
        // After SWEEP_EVERY every refilled bucket is gone; the next use creates a fresh one.
        let later = start + SWEEP_EVERY + Duration::from_secs(1);
        let newcomer = Uuid::new_v4();
        assert!(users.allow_at(newcomer, later));
        assert_eq!(users.keys(), 1, "only the newcomer's bucket is left");
        // A key still spending keeps its bucket (its budget is not handed back early).
        let ips = PerIp::new(0.01, 2.0, 1000);
        let (noisy, quiet): (IpAddr, IpAddr) = ([203, 0, 113, 1].into(), [203, 0, 113, 2].into());
        ips.spend_at(noisy, start);
        ips.spend_at(noisy, start);
        ips.spend_at(quiet, start);
        let swept = start + SWEEP_EVERY + Duration::from_secs(1);
        ips.spend_at([203, 0, 113, 3].into(), swept);
        assert_eq!(ips.keys(), 3, "at 0.01/s nothing has refilled in 31 s: the sweep forgets nobody");
        assert!(ips.exhausted(noisy));
        let much_later = swept + SWEEP_EVERY + Duration::from_secs(1000);
        ips.spend_at([203, 0, 113, 4].into(), much_later);
        assert_eq!(ips.keys(), 1, "refilled buckets expire");
        assert!(!ips.exhausted(noisy));
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
        assert!(ips.keys() <= 3);
    }
}
