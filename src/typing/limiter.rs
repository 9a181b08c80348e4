//! The typing limiter: at most one accepted `typing` frame per user and thread per window (2 s),
//! whichever of the user's sockets on this instance sent it.
//!
//! Owns the per-user state: the threads a user typed in during the last window, at most
//! [`MAX_THREADS`] of them (a user typing in more threads at once is refused too). Entries older
//! than the window are pruned on every use, and a user's whole entry is released when their last
//! session on this instance ends ([`Limiter::release`]), so the state is bounded by the online
//! users and never outlives them. Pure bookkeeping over `Instant`s: no I/O, no lock across an
//! await. It never decides access (RLS does) and never sees a message's text.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use uuid::Uuid;

/// The window: one typing frame per user and thread within it.
pub const WINDOW: Duration = Duration::from_secs(2);

/// The text of the error frame of a typing frame over the limit (the thread follows).
pub const LIMITED: &str = "Too many typing frames: at most one per thread every 2 seconds";

/// Threads one user may type in within one window.
pub const MAX_THREADS: usize = 16;

/// Per-user typing windows.
pub struct Limiter {
    users: DashMap<Uuid, Vec<(Uuid, Instant)>>,
    window: Duration,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new(WINDOW)
    }
}

impl Limiter {
    pub fn new(window: Duration) -> Limiter {
        Limiter { users: DashMap::new(), window }
    }

    /// Whether `user` may type in `thread` at `now`; an admitted frame opens the thread's window.
    pub fn admit(&self, user: Uuid, thread: Uuid, now: Instant) -> bool {
        let mut recent = self.users.entry(user).or_default();
        recent.retain(|(_, at)| now.saturating_duration_since(*at) < self.window);
        if recent.len() >= MAX_THREADS || recent.iter().any(|(t, _)| *t == thread) {
            return false;
        }
        recent.push((thread, now));
        true
    }

    /// Forgets `user` (their last session on this instance ended).
    pub fn release(&self, user: &Uuid) {
        self.users.remove(user);
    }

    /// Users with limiter state now.
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_user_and_thread_per_window() {
        let limiter = Limiter::default();
        let (carla, david) = (Uuid::new_v4(), Uuid::new_v4());
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        assert!(limiter.admit(carla, t1, t0));
        assert!(!limiter.admit(carla, t1, t0 + Duration::from_millis(1999)), "the second within 2 s");
        assert!(limiter.admit(carla, t2, t0), "another thread has its own window");
        assert!(limiter.admit(david, t1, t0), "another user has their own window");
        assert!(limiter.admit(carla, t1, t0 + WINDOW), "the window is over");
        assert!(!limiter.admit(carla, t1, t0 + WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn state_is_bounded_and_released_with_the_last_session() {
        let limiter = Limiter::default();
        let user = Uuid::new_v4();
        let t0 = Instant::now();
        let admitted = (0..MAX_THREADS + 5).filter(|_| limiter.admit(user, Uuid::new_v4(), t0)).count();
        assert_eq!(admitted, MAX_THREADS, "at most this many threads per window");
        assert!(limiter.admit(user, Uuid::new_v4(), t0 + WINDOW), "old windows are pruned on use");
        assert_eq!(limiter.users.get(&user).map(|r| r.len()), Some(1));
        limiter.release(&user);
        assert_eq!(limiter.users(), 0);
    }
}
