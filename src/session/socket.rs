//! The client's socket, as a session uses it: one upgraded WebSocket behind a few verbs, so that
//! the session reads as the protocol (the way mini-redis's handler reads over its `Connection`).
//!
//! Owns the socket's mechanics: what arrived, reduced to what the protocol distinguishes
//! ([`Inbound`]); writes bounded by [`WRITE_TIMEOUT`]; batching (frames fed, then flushed once)
//! with its fast path (a socket that takes the batch at once arms no timer); the keep-alive
//! (server pings, and a client silent for two intervals is dead) with the token's expiry on one
//! alarm the hub's clock rings ([`Heartbeat`]); and close
//! frames. Knows nothing of JSON, threads or users, and never decides to close a session: it
//! reports, and the session decides.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::close::Close;
use crate::hub::Outgoing;

/// A write that makes no progress for this long drops the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames fed to the socket before one flush.
pub const BATCH: usize = 64;
/// How long a close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the client sent, as far as the protocol cares.
pub enum Inbound {
    /// A text frame: a client message.
    Text(Utf8Bytes),
    /// A binary frame: not part of the protocol.
    Binary,
    /// A ping, a pong or a raw frame (tungstenite answers pings itself).
    Control,
    /// A frame over the configured size.
    TooBig,
    /// The client closed, the connection broke, or the stream ended.
    Gone,
}

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The connection is broken or closed.
    Gone,
    /// No progress within [`WRITE_TIMEOUT`]: the client is not reading.
    Stalled,
    /// The session was asked to close while the write waited.
    Interrupted(Close),
}

/// One client's WebSocket.
pub struct ClientSocket<S> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSocket<S> {
    pub fn new(ws: WebSocketStream<S>) -> ClientSocket<S> {
        ClientSocket { ws }
    }

    /// The next frame from the client (cancel-safe: nothing is lost if another branch wins).
    pub async fn recv(&mut self) -> Inbound {
        match self.ws.next().await {
            Some(Ok(Message::Text(text))) => Inbound::Text(text),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Close(_))) => Inbound::Gone,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Control,
            Some(Err(WsError::Capacity(_))) => Inbound::TooBig,
            Some(Err(_)) | None => Inbound::Gone,
        }
    }

    /// Sends one text frame now (written and flushed within [`WRITE_TIMEOUT`]).
    pub async fn send(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), WsError> {
        tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::Text(text.into())))
            .await
            .unwrap_or(Err(WsError::ConnectionClosed))
    }

    /// A server ping, within [`WRITE_TIMEOUT`].
    pub async fn ping(&mut self) -> Result<(), WriteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::Ping(Default::default()))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteError::Gone),
        }
    }

    /// Feeds the frames in order, then flushes once. Fast path: a socket that takes them at once
    /// (the common case) arms no timer. Otherwise the client is not reading fast enough: the wait
    /// is bounded by [`WRITE_TIMEOUT`], and gives way to `interrupt` (a close request).
    pub async fn write_batch(
        &mut self,
        frames: Vec<Outgoing>,
        interrupt: impl Future<Output = Close>,
    ) -> Result<(), WriteError> {
        let ws = &mut self.ws;
        let write = async move {
            for frame in frames {
                ws.feed(Message::Text(frame.text)).await?;
            }
            ws.flush().await
        };
        tokio::pin!(write);
        if let Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
            return result.map_err(|_| WriteError::Gone);
        }
        // The slow path's timer is boxed: the session's future does not carry one inline.
        let deadline = Box::pin(tokio::time::sleep(WRITE_TIMEOUT));
        tokio::select! {
            result = write => result.map_err(|_| WriteError::Gone),
            _ = deadline => Err(WriteError::Stalled),
            reason = interrupt => Err(WriteError::Interrupted(reason)),
        }
    }

    /// Feeds one frame without flushing (a replay writes page by page, then [`Self::flush`]es).
    pub async fn feed(&mut self, text: Utf8Bytes) -> Result<(), WsError> {
        self.ws.feed(Message::Text(text)).await
    }

    /// Flushes what was fed, within [`WRITE_TIMEOUT`].
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// The close frame with the reason's code and text (best effort, briefly bounded).
    pub async fn close(&mut self, reason: &Close) {
        let frame = CloseFrame { code: CloseCode::from(reason.code), reason: reason.reason.into() };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame))).await;
    }
}

/// The session's one alarm: the keep-alive (a server ping every interval; a client silent for two
/// intervals is dead) and the token's expiry, whichever comes first. Plain times: the hub's shared
/// clock rings the session when [`Heartbeat::deadline`] has passed, so an idle session arms no
/// timer of its own.
pub struct Heartbeat {
    every: Duration,
    last_heard: Instant,
    next_ping: Instant,
    expires: Instant,
}

/// What [`Heartbeat::due_at`] found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Time for a ping (the next one is scheduled).
    Ping,
    /// The token expired.
    Expired,
}

/// `now + d`, or about thirty years from now when that overflows.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30))).unwrap_or(now)
}

impl Heartbeat {
    /// The first ping is due one interval from now; the token expires `expires_in` from now.
    pub fn new(every: Duration, expires_in: Duration) -> Heartbeat {
        let now = Instant::now();
        Heartbeat { every, last_heard: now, next_ping: after(now, every), expires: after(now, expires_in) }
    }

    /// What is due at `now`, if anything; a ping schedules the next one.
    pub fn due_at(&mut self, now: Instant) -> Option<Due> {
        if now >= self.expires {
            return Some(Due::Expired);
        }
        if now < self.next_ping {
            return None;
        }
        self.next_ping = after(now, self.every);
        Some(Due::Ping)
    }

    /// When the alarm must ring next.
    pub fn deadline(&self) -> Instant {
        self.next_ping.min(self.expires)
    }

    /// A refreshed token: it now expires `expires_in` from now.
    pub fn expires_in(&mut self, expires_in: Duration) {
        self.expires = after(Instant::now(), expires_in);
    }

    /// Something arrived from the client.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Whether the client has been silent for two intervals: the connection is dead.
    pub fn silent(&self) -> bool {
        self.last_heard.elapsed() > self.every * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alarm_for_the_pings_and_the_expiry() {
        let secs = Duration::from_secs;
        let mut clock = Heartbeat::new(secs(30), secs(100));
        let start = Instant::now();
        assert!(clock.deadline() <= start + secs(30), "the first ping is due before the expiry");
        assert_eq!(clock.due_at(start + secs(10)), None, "nothing due before the deadline");
        for n in 1..=3 {
            let now = start + secs(30 * n);
            assert_eq!(clock.due_at(now), Some(Due::Ping));
            assert_eq!(clock.deadline(), (now + secs(30)).min(clock.expires));
        }
        assert_eq!(clock.deadline(), clock.expires, "the expiry comes before the fourth ping");
        assert_eq!(clock.due_at(clock.expires), Some(Due::Expired));
        clock.expires_in(secs(1000));
        assert_eq!(clock.deadline(), clock.next_ping, "a refreshed token moves the expiry past the next ping");
        let far = Heartbeat::new(secs(1), Duration::MAX);
        assert_eq!(far.deadline(), far.next_ping, "an expiry past the clock's range never comes first");
    }
}
