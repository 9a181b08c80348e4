//! Fault controls of the PostgREST stand-in, for tests: requests whose path contains a given text
//! fail with a status (as PostgREST does when its pool or the database is down), stall before
//! being served, or are served and answered late, a given number of times or until cleared. None of this exists in PostgREST; with
//! no rule set, requests are served untouched.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::http::StatusCode;

/// What a matching request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answered with this status and a PostgREST error body, without touching the database.
    Fail(u16),
    /// Held this long, then served normally.
    Stall(Duration),
    /// Served at once (the database is read now), its answer held this long before it is sent:
    /// a slow network on the way back, so the answer is older than what committed meanwhile.
    Delay(Duration),
}

#[derive(Debug, Clone)]
struct Rule {
    path_contains: String,
    fault: Fault,
    /// None: until cleared.
    remaining: Option<u64>,
}

/// Shared, cheap to clone; held by the stand-in's REST routes and by tests.
#[derive(Clone, Default)]
pub struct RestFaults {
    rules: Arc<Mutex<Vec<Rule>>>,
    hits: Arc<std::sync::atomic::AtomicU64>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl RestFaults {
    /// Requests whose path (after `/rest/v1/`) contains `path_contains` get `fault`, `times` times
    /// (None: until [`RestFaults::clear`]).
    pub fn add(&self, path_contains: &str, fault: Fault, times: Option<u64>) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule { path_contains: path_contains.to_string(), fault, remaining: times });
        }
    }

    /// Removes every rule.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
    }

    /// How many requests got a fault so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests reached the PostgREST stand-in so far (faulted or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fault for a request to `path`, consuming one use of the first matching rule. Called
    /// once per request: it also counts requests.
    pub(super) fn take(&self, path: &str) -> Option<Fault> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rules = self.rules.lock().ok()?;
        let index = rules.iter().position(|r| path.contains(&r.path_contains) && r.remaining != Some(0))?;
        let rule = &mut rules[index];
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        let fault = rule.fault;
        rules.retain(|r| r.remaining != Some(0));
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(fault)
    }
}

/// The status of a `Fail` fault, defaulting to 503 for a non-status number.
pub(super) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}
