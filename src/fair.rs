//! Fair per user: the budgets that keep one user's clients from multiplying database work.
//!
//! Owns two per-user token buckets shared by all of a user's sessions: `subscribe_thread` access
//! checks (each is one RLS query; `SUBSCRIBE_CHECKS_PER_SEC`, bursts of `SUBSCRIBE_CHECK_BURST`)
//! and database pages read by resume replays (`RESUME_DB_PAGES_PER_MIN`, bursts of as many).
//! Spending is pure bookkeeping ([`crate::limit::PerUser`]): no I/O, no lock across an await.
//! A budget never refuses a connection or a valid token: over the subscribe budget the client
//! gets an error frame and may retry; over the replay budget a resume is answered with one page
//! and sent to offline sync (`GET /api/chat/offline-messages`). Read-state coalescing lives with
//! the router ([`crate::router`]'s `read_state`).

use std::sync::Arc;

use uuid::Uuid;

use crate::config::Fairness;
use crate::limit::PerUser;

/// The text of the error frame of a `subscribe_thread` over the user's budget.
pub const SUBSCRIBE_LIMITED: &str = "Too many thread subscriptions; try again in a few seconds";

/// The text of the error frame of a resume replay cut short by the user's budget.
pub const REPLAY_LIMITED: &str =
    "Too many resumes: the replay stopped early; fetch the rest with offline sync (GET /api/chat/offline-messages)";

pub struct UserBudgets {
    subscribe: PerUser,
    resume_pages: PerUser,
}

impl UserBudgets {
    /// `max_users`: users whose buckets are kept at once (`RATE_LIMIT_MAX_KEYS`; idle ones expire).
    pub fn new(f: &Fairness, max_users: usize) -> Arc<UserBudgets> {
        let pages = f64::from(f.resume_db_pages_per_min.max(1));
        Arc::new(UserBudgets {
            subscribe: PerUser::with_rate(f.subscribe_checks_per_sec, f64::from(f.subscribe_check_burst), max_users),
            resume_pages: PerUser::with_rate(pages / 60.0, pages, max_users),
        })
    }

    /// Spends one `subscribe_thread` check of `user`; false when over the budget.
    pub fn subscribe_check(&self, user: Uuid) -> bool {
        self.subscribe.allow(user)
    }

    /// Users with a `subscribe_thread` bucket now.
    pub fn subscribe_keys(&self) -> usize {
        self.subscribe.keys()
    }

    /// Users with a replay bucket now.
    pub fn resume_keys(&self) -> usize {
        self.resume_pages.keys()
    }

    /// Spends one database page of a resume replay of `user`; false when over the budget.
    pub fn resume_page(&self, user: Uuid) -> bool {
        self.resume_pages.allow(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_per_user() {
        let f = Fairness { subscribe_check_burst: 3, resume_db_pages_per_min: 2, ..Fairness::default() };
        let budgets = UserBudgets::new(&f, 100);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!((0..10).filter(|_| budgets.subscribe_check(a)).count(), 3);
        assert!(budgets.subscribe_check(b), "another user has their own budget");
        assert_eq!((0..10).filter(|_| budgets.resume_page(a)).count(), 2);
        assert!(budgets.resume_page(b));
    }
}
