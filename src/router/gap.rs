//! Gap fill: reads every message committed since a point in time from the database, with keyset
//! pagination on `(created_at, id)` (no page limit, no total limit), retrying with backoff until
//! it has read to the end. Runs as its own task and hands pages to the router through a bounded
//! channel, so the router keeps reading the upstream meanwhile and takes pages only as fast as it
//! can route them. Never decides who receives a message.

use std::collections::VecDeque;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::window::row_cost;
use super::{error_frame, GapState, Router, Waiter};
use crate::feed::UpstreamEvent;
use crate::metrics::Metrics;
use crate::model::{format_time, MessageRow};
use crate::store::{keyset_after, Store};

/// What the gap-fill task sends the router.
pub enum GapPage {
    Rows(Vec<MessageRow>),
    Done { scanned: u64 },
}

/// Rows per page, at most.
pub const PAGE: u32 = 1000;
/// Rows per page, at least (when rows are large).
const MIN_PAGE: u32 = 20;

/// The next page's row count: as many rows as fit `page_bytes` at the last page's average size.
fn next_limit(rows: &[MessageRow], page_bytes: usize) -> u32 {
    let bytes: usize = rows.iter().map(row_cost).sum();
    let average = (bytes / rows.len().max(1)).max(1);
    u32::try_from(page_bytes / average).unwrap_or(PAGE).clamp(MIN_PAGE, PAGE)
}

/// Reads every message with `created_at >= from`, oldest first, into `pages`; a page holds
/// about `page_bytes` (fewer rows when rows are large).
pub async fn fill(
    store: Store,
    from: DateTime<Utc>,
    pages: mpsc::Sender<GapPage>,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
    page_bytes: usize,
) {
    let mut limit = PAGE;
    let mut after = None;
    let mut scanned = 0u64;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let page = tokio::select! {
            page = store.messages_page(from, after, limit) => page,
            _ = stop.cancelled() => return,
        };
        match page {
            Ok(rows) => {
                let n = rows.len();
                scanned += n as u64;
                after = keyset_after(&rows).or(after);
                let asked = limit;
                if n > 0 {
                    limit = next_limit(&rows, page_bytes);
                }
                if n > 0 && pages.send(GapPage::Rows(rows)).await.is_err() {
                    return;
                }
                if n < asked as usize {
                    let _ = pages.send(GapPage::Done { scanned }).await;
                    return;
                }
            }
            Err(e) => {
                metrics.gap_fill_failed();
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "gap fill failed; retrying (not ready until it completes)");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// The router's side of gap fills: when one is needed, starting it, taking its pages, and the
/// bound on what waits (which turns into a gap fill when hit).
impl Router {
    /// Over the bound: drop what waits (undelivered, so forgotten by dedup), tell clients, and
    /// let a gap fill from the oldest dropped message bring everything back in order.
    pub(super) fn check_bounds(&mut self) {
        let over_count = self.waiting.len() > self.config.max_waiting;
        let over_bytes = self.waiting.bytes() > self.config.max_waiting_bytes;
        if !over_count && !over_bytes {
            return;
        }
        let oldest = self.waiting.oldest().unwrap_or(self.started);
        self.metrics.router_overflow(over_bytes && !over_count);
        tracing::error!(
            waiting = self.waiting.len(),
            waiting_bytes = self.waiting.bytes(),
            bound = if over_count { "ROUTER_MAX_WAITING" } else { "ROUTER_BUFFER_BYTES" },
            "router waiting buffer full: dropping it and filling the gap from the database"
        );
        for (_, queue) in self.threads.drain() {
            for waiter in queue {
                let Waiter::Message { row, created_at, .. } = waiter;
                self.seen.forget(row.id, created_at);
            }
        }
        self.held.clear();
        self.waiting.clear();
        self.overflows += 1;
        if let GapState::Running { backlog, .. } = &mut self.gap {
            // The rest of the page comes again with the next fill, after what was dropped.
            backlog.clear();
        }
        // Membership changes may have been dropped with them.
        self.directory.forget_members();
        self.cursor.invalidate();
        self.hub.broadcast(&error_frame());
        self.need_gap(oldest - self.margin());
    }

    pub(super) fn need_gap(&mut self, from: DateTime<Utc>) {
        self.cursor.invalidate();
        self.gap = match std::mem::replace(&mut self.gap, GapState::Idle) {
            GapState::Idle => GapState::Needed(from),
            GapState::Needed(earlier) => GapState::Needed(earlier.min(from)),
            GapState::Running { pages, again, backlog, done } => {
                GapState::Running { pages, again: Some(again.map_or(from, |a| a.min(from))), backlog, done }
            }
        };
    }

    pub(super) fn start_gap(&mut self, from: DateTime<Utc>) {
        tracing::info!(from = %format_time(from), "filling the gap from the database");
        let (tx, rx) = mpsc::channel(1);
        // A page, the one queued and the backlog: together a fraction of the router's byte bound.
        let page_bytes = self.config.max_waiting_bytes / 8;
        let fill = fill(self.store.clone(), from, tx, self.metrics.clone(), self.stop.clone(), page_bytes);
        self.tasks.spawn(fill);
        self.gap = GapState::Running { pages: rx, again: None, backlog: VecDeque::new(), done: None };
    }

    /// A page (or the end) from the fill task: kept in the fill's backlog, fed to the router as
    /// room allows (see [`Router::feed_gap`]).
    pub(super) fn on_gap_page(&mut self, page: Option<GapPage>) {
        match (page, &mut self.gap) {
            (Some(GapPage::Rows(rows)), GapState::Running { backlog, .. }) => backlog.extend(rows),
            (Some(GapPage::Done { scanned }), GapState::Running { done, .. }) => *done = Some(scanned),
            // The task ended without Done: only when the gateway stops.
            (None, _) => self.gap = GapState::Idle,
            _ => {}
        }
    }

    /// Whether the running fill may hand over its next page: the backlog is empty and there is
    /// room to wait for lookups. The backlog is therefore one page at most ([`PAGE`] rows of at
    /// most 4,000 characters each, the schema's limit).
    pub(super) fn gap_wants_page(&self) -> bool {
        matches!(&self.gap, GapState::Running { backlog, done: None, .. } if backlog.is_empty())
            && self.waiting.len() < self.config.max_waiting
            && self.waiting.bytes() < self.config.max_waiting_bytes
    }

    /// Whether a row of `bytes` may wait without hitting either bound.
    fn room_for(&self, bytes: usize) -> bool {
        self.waiting.len() < self.config.max_waiting
            && self.waiting.bytes().saturating_add(bytes) <= self.config.max_waiting_bytes
    }

    /// Feeds backlog rows to the router while there is room to wait for their lookups (so a fill
    /// never overflows a bound by itself), then finishes the fill once it has been read whole.
    pub(super) fn feed_gap(&mut self) {
        loop {
            let GapState::Running { backlog, .. } = &self.gap else { return };
            if !self.room_for(backlog.front().map_or(0, row_cost)) {
                return;
            }
            let GapState::Running { backlog, done, .. } = &mut self.gap else { return };
            match backlog.pop_front() {
                Some(row) => {
                    let before = self.seen.len();
                    self.accept(row, None);
                    self.metrics.gap_filled(self.seen.len().saturating_sub(before) as u64);
                }
                None => {
                    if let Some(scanned) = *done {
                        self.finish_gap(scanned);
                    }
                    return;
                }
            }
        }
    }

    fn finish_gap(&mut self, scanned: u64) {
        tracing::info!(scanned, "gap filled");
        let again = match std::mem::replace(&mut self.gap, GapState::Idle) {
            GapState::Running { again, .. } => again,
            _ => None,
        };
        if let Some(from) = again {
            // Another fill is due (a bound was hit meanwhile): what was held stays held, behind
            // the messages that fill will bring, so each thread keeps its order.
            self.gap = GapState::Needed(from);
            return;
        }
        let overflows = self.overflows;
        let mut held: VecDeque<UpstreamEvent> = std::mem::take(&mut self.held);
        while let Some(event) = held.pop_front() {
            if let UpstreamEvent::Message { row, .. } = &event {
                if let Some(t) = row.created() {
                    self.waiting.remove(row.id, t);
                }
            }
            self.on_change(event);
            if self.overflows != overflows {
                // A bound was hit: the rest stays held behind the next fill, in order.
                self.held = held;
                break;
            }
        }
        self.rebuild_waiting();
    }

    /// What waits is exactly what the thread queues and the held changes hold. A held message the
    /// fill had already accepted was a duplicate above, and taking its held copy out of `waiting`
    /// also took out the copy still queued behind a lookup: rebuilt, the cursor cannot pass it.
    fn rebuild_waiting(&mut self) {
        self.waiting.clear();
        let queued = self
            .threads
            .values()
            .flatten()
            .map(|Waiter::Message { row, created_at, .. }| (row.id, *created_at, row_cost(row)));
        let held = self.held.iter().filter_map(|e| match e {
            UpstreamEvent::Message { row, .. } => row.created().map(|t| (row.id, t, row_cost(row))),
            _ => None,
        });
        for (id, created_at, bytes) in queued.chain(held).collect::<Vec<_>>() {
            self.waiting.add(id, created_at, bytes);
        }
    }
}

/// The next page of a running gap fill (pending forever when none runs).
pub(super) async fn next_page(gap: &mut GapState) -> Option<GapPage> {
    match gap {
        GapState::Running { pages, .. } => pages.recv().await,
        _ => std::future::pending().await,
    }
}
