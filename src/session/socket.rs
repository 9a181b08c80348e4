//! The client's socket, as a session uses it: one upgraded WebSocket behind a few verbs, so that
//! the session reads as the protocol (the way mini-redis's handler reads over its `Connection`).
//!
//! Owns the socket's mechanics: what arrived, reduced to what the protocol distinguishes
//! ([`Inbound`]); writes bounded by [`WRITE_TIMEOUT`]; batching (frames fed, then flushed once)
//! with its fast path (a socket that takes the batch at once arms no timer); the keep-alive
//! (server pings, and a client silent for two intervals is dead: [`Heartbeat`]); and close
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
        tokio::select! {
            result = tokio::time::timeout(WRITE_TIMEOUT, write) => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(WriteError::Gone),
                Err(_) => Err(WriteError::Stalled),
            },
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

/// The keep-alive's clock: a ping every interval, and when the client was last heard from.
pub struct Heartbeat {
    every: Duration,
    ping: tokio::time::Interval,
    last_heard: Instant,
}

impl Heartbeat {
    /// The first ping is due one interval from now.
    pub fn new(every: Duration) -> Heartbeat {
        let ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        Heartbeat { every, ping, last_heard: Instant::now() }
    }

    /// Resolves when the next ping is due.
    pub async fn due(&mut self) {
        self.ping.tick().await;
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
