//! The live session: what its task waits for once it is open, and the writes of queued frames.
//!
//! Owns the live loop (queued frames out in batches, client frames in, the keep-alive and the
//! token's expiry when the hub's clock rings, the close request, the held-back `sync_complete`)
//! and the skipping of frames a resume already sent. An idle session waits here: what it holds
//! while it waits is what an idle session costs, so the work is done after the wait's futures are
//! gone, and rare work is boxed.
//! It never decides access (the hub routed what is queued).

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use super::resume::{self, PendingSync, Release};
use super::socket::{Due, Heartbeat, Inbound, BATCH};
use super::{CatchUpWait, Flow, Session};
use crate::close;
use crate::hub::{Outgoing, Wake};

/// What woke a live session.
enum Event {
    /// The handle's: a close request, a queued frame, or the alarm.
    Wake(Wake),
    Inbound(Inbound),
    CaughtUp(Release),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Live until the session ends: queued frames out, client frames in, the keep-alive, the
    /// token's expiry, and the held-back `sync_complete` once the router proves the catch-up.
    pub(super) async fn live(&mut self, mut pending: Option<Box<PendingSync>>) -> Flow {
        let mut catch_up: Option<CatchUpWait> =
            pending.as_ref().map(|held| Box::pin(resume::caught_up(self.ctx.catchup.clone(), held.ticket)) as _);
        let remaining = self.ctx.verifier.remaining(&self.identity);
        let mut heartbeat = Heartbeat::new(self.ctx.hub.limits().ping_interval, remaining);
        self.set_alarm(&heartbeat);
        let shared = self.shared.clone();
        loop {
            // The select only says what happened; the work is done after it, once its futures
            // are gone, so that the task's future holds the waits or the work, never both.
            let event = tokio::select! {
                wake = shared.next() => Event::Wake(wake),
                incoming = self.socket.recv() => Event::Inbound(incoming),
                release = wait_caught_up(&mut catch_up) => Event::CaughtUp(release),
            };
            let flow = match event {
                Event::Wake(Wake::Close(reason)) => Flow::Close(*reason),
                // Boxed: a write's future (the batch, the socket's sink, the slow path's timer and
                // close wait) is larger than the idle wait, and an idle session would hold its size
                // for life; one short-lived allocation per batch instead.
                Event::Wake(Wake::Frames) => Box::pin(self.write_batch()).await,
                Event::Wake(Wake::Alarm) => self.on_alarm(&mut heartbeat).await,
                Event::Inbound(incoming) => {
                    heartbeat.heard();
                    // Client frames are rare: their (larger) future is boxed.
                    let flow = Box::pin(self.on_inbound(incoming, &mut heartbeat)).await;
                    // A refreshed token moved the expiry.
                    self.set_alarm(&heartbeat);
                    flow
                }
                Event::CaughtUp(release) => {
                    catch_up = None;
                    match pending.take() {
                        Some(held) => self.release_sync(*held, release),
                        None => Flow::Continue,
                    }
                }
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
    }

    /// The hub's clock rang: the token expired, the client is dead, or a ping is due (or nothing
    /// yet: the alarm moved since it was set); the alarm is set again.
    async fn on_alarm(&mut self, heartbeat: &mut Heartbeat) -> Flow {
        let flow = match heartbeat.due_at(Instant::now()) {
            None => Flow::Continue,
            Some(Due::Expired) => Flow::Close(close::EXPIRED),
            Some(Due::Ping) if heartbeat.silent() => Flow::Close(close::DEAD),
            Some(Due::Ping) => Box::pin(self.socket.ping()).await.map_or_else(Flow::from, |()| Flow::Continue),
        };
        self.set_alarm(heartbeat);
        flow
    }

    /// Asks the hub's clock to ring when the heartbeat's deadline has passed.
    fn set_alarm(&self, heartbeat: &Heartbeat) {
        self.shared.set_alarm(self.ctx.hub.clock_millis(heartbeat.deadline()));
    }

    /// Whether a queued frame must go out (not already sent by a database replay).
    fn wanted(&self, frame: &Outgoing) -> bool {
        let (Some(id), Some(resumed)) = (frame.message, &self.resumed) else { return true };
        if resumed.replayed.contains(&id) {
            return false;
        }
        let covered = matches!((resumed.covered, frame.created_at), (Some(c), Some(t)) if t <= c);
        if covered {
            self.ctx.metrics.duplicate();
        }
        !covered
    }

    /// Writes what is queued (up to a batch) in one flush.
    async fn write_batch(&mut self) -> Flow {
        let shared = self.shared.clone();
        let mut batch = Vec::with_capacity(4);
        while batch.len() < BATCH {
            match shared.queue.try_pop() {
                Some(frame) if self.wanted(&frame) => batch.push(frame),
                Some(_) => {}
                None => break,
            }
        }
        if batch.is_empty() {
            return Flow::Continue;
        }
        if let Some(n) = self.resumed.as_mut().and_then(|r| r.held_live.as_mut()) {
            // Live chat messages written while sync_complete is held back: it counts them.
            *n += batch.iter().filter(|frame| frame.message.is_some()).count();
        }
        // Receipt times of the live messages in the batch (no allocation for a batch of none).
        let received: Vec<std::time::Instant> = batch.iter().filter_map(|frame| frame.received).collect();
        let frames = batch.len();
        match self.socket.write_batch(batch, shared.closed()).await {
            Ok(()) => {
                self.ctx.metrics.socket_written(frames);
                let written = std::time::Instant::now();
                for at in received {
                    self.ctx.metrics.delivery_latency(written.saturating_duration_since(at));
                }
                Flow::Continue
            }
            Err(e) => Flow::from(e),
        }
    }
}

/// The held-back `sync_complete`'s wait (pending forever when there is none).
async fn wait_caught_up(wait: &mut Option<CatchUpWait>) -> Release {
    match wait {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}
