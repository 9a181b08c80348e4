//! The replay half of a session: what a reconnecting client (`?since=`) missed, written to its
//! socket before live delivery (from the ring of recent messages, checked against the user's
//! current membership, or from the database as the user), and the `sync_complete` that ends it.
//! The choices and the frames are [`super::resume`]'s; this file does the socket's part. It must
//! never write a frame of a thread the user is not in now, nor write anything unchecked.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use uuid::Uuid;

use super::resume::{self, PendingSync, Release, Replay};
use super::socket::BATCH;
use super::{Flow, Session};
use crate::hub::Outgoing;
use crate::metrics::Budget;
use crate::model::format_time;
use crate::protocol::ServerMessage;
use crate::store::StoreError;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Replays what the client missed (see [`resume`]); Err when the socket must end. A memory
    /// replay's `sync_complete` is returned, held back until the session is caught up.
    pub(super) async fn replay(&mut self, replay: Replay) -> Result<Option<PendingSync>, Flow> {
        let gone = |_| Flow::Gone;
        let started = Instant::now();
        let (count, cursor) = match replay {
            Replay::Memory { frames, cursor, since } => {
                let Some(frames) = self.current_members_only(frames).await else {
                    let Some((count, cursor)) = self.replay_from_database(since).await? else { return Ok(None) };
                    return self.replayed_from_database(count, cursor, started).await;
                };
                for chunk in frames.chunks(BATCH) {
                    for frame in chunk {
                        self.socket.feed(frame.text.clone()).await.map_err(gone)?;
                    }
                    self.socket.flush().await?;
                }
                let ticket = self.ctx.catchup.ask();
                return Ok(Some(PendingSync { ticket, cursor, count: frames.len(), started }));
            }
            Replay::Database { since } => match self.replay_from_database(since).await? {
                Some((count, cursor)) => (count, cursor),
                None => return Ok(None),
            },
        };
        self.replayed_from_database(count, cursor, started).await
    }

    /// Counts a completed database replay and sends its `sync_complete`.
    async fn replayed_from_database(
        &mut self,
        count: usize,
        cursor: String,
        started: Instant,
    ) -> Result<Option<PendingSync>, Flow> {
        self.ctx.metrics.resumed(false, count as u64, started.elapsed());
        tracing::info!(session = self.shared.id, count, from_memory = false, "resume replayed");
        self.send_json(ServerMessage::SyncComplete { last_check_time: &cursor, count })
            .await
            .map_err(|_| Flow::Gone)?;
        Ok(None)
    }

    /// Queues a memory replay's `sync_complete` behind the live frames already queued.
    pub(super) fn release_sync(&mut self, held: PendingSync, release: Release) -> Flow {
        resume::record_release(&self.ctx.metrics, self.shared.id, &held, release);
        let written = self.resumed.as_mut().and_then(|r| r.held_live.take()).unwrap_or(0);
        if self.resumed.as_ref().is_some_and(|r| r.is_empty()) {
            self.resumed = None;
        }
        // The ring's lock is taken before, never under, the queue's lock (the router takes them
        // in that order while it fans out).
        let cursor = resume::sync_cursor(&self.ctx.history, &held);
        self.shared.push_counted(|queued| resume::sync_complete(&cursor, &held, written + queued), &self.ctx.metrics);
        match self.shared.close_reason() {
            Some(reason) => Flow::Close(reason),
            None => Flow::Continue,
        }
    }

    /// The frames of a memory replay of threads the user is in now, by the directory the live
    /// path uses; None when that cannot be known (change feed not live, member lists not read in
    /// time): the resume then goes to the database, where RLS decides. Never unchecked.
    async fn current_members_only(&mut self, frames: Vec<(Uuid, Outgoing)>) -> Option<Vec<Outgoing>> {
        let metrics = &self.ctx.metrics;
        if !self.ctx.readiness.upstream_live() {
            // Membership changes made meanwhile have not reached the directory.
            metrics.resume_membership_unchecked();
            tracing::info!(
                session = self.shared.id,
                "resume from memory while the upstream is down: replaying from the database"
            );
            return None;
        }
        let threads = crate::directory::threads_of(&frames);
        match self.ctx.directory.current_members(&threads, self.ctx.membership_wait).await {
            Ok(members) => {
                let (frames, withheld) = crate::directory::members_only(frames, &self.shared.user_id, &members);
                if withheld > 0 {
                    metrics.replay_withheld(withheld as u64);
                    tracing::info!(session = self.shared.id, user = %self.shared.user_id, withheld, "resume: messages of threads the user has left withheld");
                }
                Some(frames)
            }
            Err(e) => {
                metrics.resume_membership_unchecked();
                tracing::warn!(session = self.shared.id, error = %e, "resume: membership not checked in time; replaying from the database");
                None
            }
        }
    }

    /// Pages the user's messages from `since` (as the user: RLS decides); None when the
    /// database could not be read, or the user's replay budget ran out after a page (the client
    /// is told and falls back to offline sync).
    async fn replay_from_database(
        &mut self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(usize, String)>, Flow> {
        let gone = |_| Flow::Gone;
        let stamp = format_time(since);
        let horizon = match self.ctx.store.sync_point().await {
            Ok(point) => point.horizon,
            Err(e) => return self.replay_failed(e).await,
        };
        self.resumed().covered = Some(since.min(horizon));
        let (mut from, mut count, mut pages) = (since, 0usize, 0usize);
        loop {
            // Past the user's budget, one page per connection, then offline sync.
            if !self.ctx.budgets.resume_page(self.shared.user_id) && pages > 0 {
                return self.replay_limited(count).await;
            }
            pages += 1;
            let rows = match self.ctx.store.offline_messages(&self.token.text(), from, resume::PAGE).await {
                Ok(rows) => rows,
                Err(e) => return self.replay_failed(e).await,
            };
            let full = rows.returned >= resume::PAGE as usize;
            let last = rows.last_created_at;
            for row in rows.messages {
                if !self.resumed().replayed.insert(row.id) {
                    continue;
                }
                let sender = row.sender.clone().unwrap_or_else(crate::model::Sender::unknown);
                let frame = resume::replay_frame(row, sender, &stamp);
                self.socket.feed(frame.text).await.map_err(gone)?;
                count += 1;
            }
            self.socket.flush().await?;
            match last.map(resume::after) {
                Some(next) if full && next > from => from = next,
                _ => break,
            }
        }
        Ok(Some((count, resume::completed_cursor(since, horizon))))
    }

    async fn replay_limited(&mut self, count: usize) -> Result<Option<(usize, String)>, Flow> {
        self.ctx.metrics.fairness.budget_hit(Budget::ResumeReplay);
        tracing::info!(session = self.shared.id, user = %self.shared.user_id, count, "resume replay over the user's budget");
        self.error(crate::fair::REPLAY_LIMITED).await.map_err(|_| Flow::Gone)?;
        Ok(None)
    }

    async fn replay_failed(&mut self, e: StoreError) -> Result<Option<(usize, String)>, Flow> {
        tracing::warn!(session = self.shared.id, error = %e, "resume replay failed");
        self.error("Could not replay missed messages; use offline sync").await.map_err(|_| Flow::Gone)?;
        Ok(None)
    }
}
