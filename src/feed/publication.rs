//! What the gateway asks of the database's side of delivery, on both backends: at start-up, that
//! the offline cursor cannot degrade silently ([`check_sync_horizon`]); while running, that the
//! trigger-fed `chat_membership_events` table (through which membership, read-state and
//! realtime-switch changes reach the upstream, see `supabase/migrations/20261203001000_*`) does
//! not grow ([`spawn_prune`]).
//!
//! Owns the retention of those events and the wording of the start-up refusal. Never decides who
//! receives what, and never reads an event row itself (the feed decodes them).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Store, StoreError};
use crate::ticker::Ticker;

/// How long a membership event is kept: far longer than Realtime's lag (it reads the row when
/// it sends the change), short enough that the table stays small.
pub const MEMBERSHIP_EVENTS_KEEP: Duration = Duration::from_secs(600);
/// How often each gateway instance prunes older events.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long between start-up check attempts when the database could not be asked.
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// Why the gateway refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HorizonProblem {
    /// The owner cannot read other sessions' `xact_start`: the horizon would be `now()`.
    #[error(
        "chat_sync_horizon() cannot see other sessions' transactions: its owner {owner} is neither a \
         superuser nor a member of pg_read_all_stats, so offline cursors would silently pass messages \
         that are still committing. As a superuser, run: GRANT pg_read_all_stats TO {owner};"
    )]
    Blind { owner: String },
    /// The check function is missing or refused (migrations not applied, rights removed).
    #[error(
        "cannot check chat_sync_horizon(): chat_sync_horizon_check() answered {0}; apply every file of \
         supabase/migrations (20261203001100_sync_horizon_check.sql adds it, for the service role)"
    )]
    Unchecked(String),
}

/// What one attempt at the check found out.
enum Checked {
    Fine(String),
    Problem(HorizonProblem),
    /// The database could not be asked (down, timed out): no answer either way.
    NoAnswer(StoreError),
}

async fn ask(store: &Store) -> Checked {
    match store.sync_horizon_check().await {
        Ok(check) if check.sees_all_sessions => Checked::Fine(check.owner),
        Ok(check) => Checked::Problem(HorizonProblem::Blind { owner: check.owner }),
        Err(e @ (StoreError::Rejected { .. } | StoreError::Decode(_))) => {
            Checked::Problem(HorizonProblem::Unchecked(e.to_string()))
        }
        Err(e) => Checked::NoAnswer(e),
    }
}

/// Start-up: refuses (Err) when `chat_sync_horizon()` cannot see other sessions' transactions or
/// cannot be checked. When the database cannot be reached now, the gateway starts (it serves
/// what it can) and keeps asking in the background until it gets an answer, which is then
/// logged: as an error if the horizon is blind.
pub async fn check_sync_horizon(
    store: &Store,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), HorizonProblem> {
    match ask(store).await {
        Checked::Fine(owner) => {
            tracing::info!(%owner, "the sync horizon sees every session's transactions");
            Ok(())
        }
        Checked::Problem(problem) => Err(problem),
        Checked::NoAnswer(e) => {
            tracing::warn!(error = %e, retry_in_secs = RECHECK_EVERY.as_secs(), "cannot check the sync horizon yet");
            let (store, stop) = (store.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RECHECK_EVERY) => {}
                    }
                    match ask(&store).await {
                        Checked::Fine(owner) => {
                            tracing::info!(%owner, "the sync horizon sees every session's transactions");
                            return;
                        }
                        Checked::Problem(problem) => {
                            tracing::error!(problem = %problem, "offline cursors are not safe");
                            return;
                        }
                        Checked::NoAnswer(e) => tracing::warn!(error = %e, "cannot check the sync horizon yet"),
                    }
                }
            });
            Ok(())
        }
    }
}

/// Prunes `chat_membership_events` every [`PRUNE_EVERY`] (at once first), keeping
/// [`MEMBERSHIP_EVENTS_KEEP`]; a failure is logged and tried again next time.
pub fn spawn_prune(store: Store, tasks: &TaskTracker, stop: CancellationToken) {
    let keep = i32::try_from(MEMBERSHIP_EVENTS_KEEP.as_secs()).unwrap_or(i32::MAX);
    tasks.spawn(async move {
        let mut every = Ticker::new(PRUNE_EVERY, stop);
        while every.tick().await {
            match store.prune_membership_events(keep).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "pruned old membership events"),
                Err(e) => tracing::warn!(error = %e, "cannot prune chat_membership_events; trying again in a minute"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_says_exactly_what_to_grant() {
        let text = HorizonProblem::Blind { owner: "\"Horizon Owner\"".into() }.to_string();
        assert!(text.contains("GRANT pg_read_all_stats TO \"Horizon Owner\";"), "{text}");
        let text = HorizonProblem::Unchecked("404".into()).to_string();
        assert!(text.contains("20261203001100_sync_horizon_check.sql"), "{text}");
    }
}
