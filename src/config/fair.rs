//! Settings that keep one address or one user from crowding out the others: which proxies may
//! name the client address, and the per-user budgets on database work a client can cause
//! (`subscribe_thread` checks, resume replays from the database, unread counts of read-state
//! pushes). Parsed with the rest of [`super::Args`] (flattened); validated here.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::rules::{invalid, positive, Problems};
use crate::edge::forwarded::{parse_cidrs, ForwardedHeader, TrustedProxies};

#[derive(ClapArgs, Clone, Debug)]
pub struct FairArgs {
    /// Proxies (comma-separated CIDRs, e.g. 10.0.0.0/8) whose TRUSTED_PROXY_HEADER names the client
    /// address for the per-address budget of refused tokens. Empty: the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// The header the trusted proxies write the client address into.
    #[arg(long, env = "TRUSTED_PROXY_HEADER", value_enum, default_value = "x-forwarded-for")]
    pub trusted_proxy_header: ForwardedHeader,
    /// `subscribe_thread` access checks (one RLS query each) per user and second, over all the
    /// user's sessions; more get an error frame and may retry.
    #[arg(long, env = "SUBSCRIBE_CHECKS_PER_SEC", default_value_t = 5.0)]
    pub subscribe_checks_per_sec: f64,
    /// Burst of `subscribe_thread` checks per user (enough to subscribe to every thread at once).
    #[arg(long, env = "SUBSCRIBE_CHECK_BURST", default_value_t = 100)]
    pub subscribe_check_burst: u32,
    /// Database pages (500 messages each) per user and minute that resume replays may read; past
    /// it a replay sends one page, then an error frame pointing to offline sync.
    #[arg(long, env = "RESUME_DB_PAGES_PER_MIN", default_value_t = 20)]
    pub resume_db_pages_per_min: u32,
    /// Read-state pushes of one user are coalesced over this window: at most one unread-count
    /// read per user per window; the newest state of every thread is always pushed. Milliseconds.
    #[arg(long, env = "READ_STATE_COALESCE_MS", default_value_t = 500)]
    pub read_state_coalesce_ms: u64,
}

/// Validated per-user budgets.
#[derive(Debug, Clone)]
pub struct Fairness {
    pub subscribe_checks_per_sec: f64,
    pub subscribe_check_burst: u32,
    pub resume_db_pages_per_min: u32,
    pub read_state_window: Duration,
}

impl Default for Fairness {
    fn default() -> Fairness {
        Fairness {
            subscribe_checks_per_sec: 5.0,
            subscribe_check_burst: 100,
            resume_db_pages_per_min: 20,
            read_state_window: Duration::from_millis(500),
        }
    }
}

pub(super) fn trusted_proxies(a: &FairArgs, p: &mut Problems) -> TrustedProxies {
    let nets = p.or(parse_cidrs(&a.trusted_proxies).map_err(|e| invalid("TRUSTED_PROXIES", e.to_string())), Vec::new());
    TrustedProxies { nets, header: a.trusted_proxy_header }
}

pub(super) fn fairness(a: &FairArgs, p: &mut Problems) -> Fairness {
    let per_sec = a.subscribe_checks_per_sec;
    if !(per_sec.is_finite() && per_sec > 0.0) {
        p.0.push(invalid("SUBSCRIBE_CHECKS_PER_SEC", format!("must be a rate above 0 per second, got {per_sec}")));
    }
    if a.read_state_coalesce_ms > 60_000 {
        p.0.push(invalid("READ_STATE_COALESCE_MS", "must be at most 60000 (a minute)"));
    }
    Fairness {
        subscribe_checks_per_sec: per_sec,
        subscribe_check_burst: p.or(positive("SUBSCRIBE_CHECK_BURST", a.subscribe_check_burst as usize), 1) as u32,
        resume_db_pages_per_min: p.or(positive("RESUME_DB_PAGES_PER_MIN", a.resume_db_pages_per_min as usize), 1)
            as u32,
        read_state_window: Duration::from_millis(a.read_state_coalesce_ms),
    }
}
