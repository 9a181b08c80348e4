//! Presence across instances: which users have a session on this instance, written to
//! `chat_push_presence` so that any instance deciding a push knows who is online anywhere.
//!
//! Owns the report loop: about once a second, the users who came or went since the last report
//! (one call, whatever the number of connections), which also moves this instance's heartbeat
//! (one row, never a row per user); users count as online while their instance's heartbeat is
//! younger than [`TTL`], so a dead instance's users count as offline soon. When the database
//! holds a different number of this instance's users than it has (its rows were removed after a
//! long silence), every user is reported again.
//! At a clean stop the instance's rows are cleared. It must never be called per connection, and a
//! failed report is retried in full (nothing is assumed written).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::hub::Hub;
use crate::store::Store;
use crate::ticker::Ticker;

/// How often presence is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a row lives without a report.
pub const TTL: Duration = Duration::from_secs(30);

/// Starts the report loop until `stop`, then clears this instance's rows.
pub fn spawn(store: Store, hub: Arc<Hub>, instance: Uuid, tasks: &TaskTracker, stop: CancellationToken) {
    tasks.spawn(async move {
        let mut reported: HashSet<Uuid> = HashSet::new();
        let mut every = Ticker::new(REPORT_EVERY, stop);
        let ttl = i32::try_from(TTL.as_secs()).unwrap_or(30);
        let mut failures = super::Failures::every(60);
        while every.tick().await {
            let now = hub.online_user_ids();
            let online: Vec<Uuid> = now.difference(&reported).copied().collect();
            let offline: Vec<Uuid> = reported.difference(&now).copied().collect();
            match store.push_presence_report(instance, &online, &offline, ttl).await {
                Ok(rows) if usize::try_from(rows).ok() == Some(now.len()) => {
                    reported = now;
                    failures.ok("presence reports");
                }
                Ok(rows) => {
                    // Our rows were removed (this instance was silent for a minute) or changed
                    // under us: all of this instance's users again at the next report.
                    tracing::warn!(rows, online = now.len(), "presence in the database differs from this instance's sessions; reporting every user again");
                    reported.clear();
                }
                Err(e) => {
                    if failures.failed() {
                        tracing::warn!(error = %e, failures = failures.count, "cannot report presence for push; retrying every second, logged once a minute");
                    }
                }
            }
        }
        if let Err(e) = store.push_presence_clear(instance).await {
            tracing::warn!(error = %e, "cannot clear this instance's presence; its rows expire on their own");
        }
    });
}
