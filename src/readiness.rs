//! Readiness as `/readyz` reports it: upstream live, no gap left to fill, and not draining.
//!
//! Owns three flags: the router sets the first two after every step; the server sets `draining`
//! once, when shutdown begins, and it is never cleared. Read by the REST API (`/readyz`, `/metrics`),
//! the admin page, the WebSocket upgrade and the sessions. Lock-free; never blocks.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    upstream_live: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// What `/readyz` answers: upstream ready and the gateway not draining.
    pub fn is_ready(&self) -> bool {
        self.upstream_ready() && !self.is_draining()
    }
    /// Upstream live and no gap left to fill, draining or not.
    pub fn upstream_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn upstream_live(&self) -> bool {
        self.upstream_live.load(Ordering::Acquire)
    }
    /// Shutdown has begun: `/readyz` answers 503 and new WebSocket upgrades are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// The router's view after a step (only the router calls this).
    pub fn set(&self, ready: bool, upstream_live: bool) {
        self.ready.store(ready, Ordering::Release);
        self.upstream_live.store(upstream_live, Ordering::Release);
    }
}
