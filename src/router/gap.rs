//! Gap fill: reads every message committed since a point in time from the database, with keyset
//! pagination on `(created_at, id)` (no page limit, no total limit), retrying with backoff until
//! it has read to the end. Runs as its own task and hands pages to the router through a bounded
//! channel, so the router keeps reading the upstream meanwhile and takes pages only as fast as it
//! can route them. Never decides who receives a message.

use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::{format_time, MessageRow};
use crate::store::Store;

/// What the gap-fill task sends the router.
pub enum GapPage {
    Rows(Vec<MessageRow>),
    Done { scanned: u64 },
}

/// Rows per page.
pub const PAGE: u32 = 1000;

/// Reads every message with `created_at >= from`, oldest first, into `pages`.
pub async fn fill(
    store: Store,
    from: DateTime<Utc>,
    pages: mpsc::Sender<GapPage>,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    let since = format_time(from);
    let mut after: Option<(String, Uuid)> = None;
    let mut scanned = 0u64;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let page = tokio::select! {
            page = store.messages_page(&since, after.as_ref().map(|(t, id)| (t.as_str(), *id)), PAGE) => page,
            _ = stop.cancelled() => return,
        };
        match page {
            Ok(rows) => {
                let n = rows.len();
                scanned += n as u64;
                after = rows.last().map(|r| (r.created_at.clone(), r.id)).or(after);
                if n > 0 && pages.send(GapPage::Rows(rows)).await.is_err() {
                    return;
                }
                if n < PAGE as usize {
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
