//! Session: one client WebSocket, from `connection_established` to close.
//!
//! Owns one connection's protocol state: its verified identity and token expiry, the client
//! frames it accepts (size and rate limited), server pings and dead-socket detection, and writing
//! the frames the hub queued for it (batched: everything queued is fed, then flushed once). Every
//! close carries a code and a human reason. A session never blocks the hub: the hub only ever
//! `try_send`s into its bounded queue, and a session that falls behind is closed by the hub.
//! It must never send a client data of a thread the user may not read (the hub routes; access
//! checks for `subscribe_thread` go to RLS through the store with the user's own token).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::auth::{Identity, Verifier};
use crate::hub::{CloseReason, Frame, Hub, SessionShared, CLOSE_SHUTDOWN};
use crate::limit::TokenBucket;
use crate::protocol::{self, parse_client_message, ClientMessage, ServerMessage};
use crate::store::StoreError;

const CLOSE_EXPIRED: CloseReason = CloseReason { code: 4001, reason: "access token expired" };
const CLOSE_RATE: CloseReason = CloseReason { code: 1008, reason: "rate limit exceeded" };
const CLOSE_TOO_BIG: CloseReason = CloseReason { code: 1009, reason: "message too large" };
const CLOSE_DEAD: CloseReason = CloseReason { code: 1001, reason: "no response to ping" };
const CLOSE_STALLED: CloseReason = CloseReason { code: 4008, reason: "slow client: write stalled" };
const CLOSE_BINARY: CloseReason = CloseReason { code: 1003, reason: "binary frames are not supported" };
/// A write that makes no progress for this long drops the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames fed to the socket before one flush.
const BATCH: usize = 64;

/// Everything a session needs from the gateway.
#[derive(Clone)]
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    pub shutdown: watch::Receiver<bool>,
}

struct Session<S> {
    ws: WebSocketStream<S>,
    ctx: SessionContext,
    shared: Arc<SessionShared>,
    identity: Identity,
    token: String,
    rate: TokenBucket,
}

enum Flow {
    Continue,
    Close(CloseReason),
    Gone,
}

/// Serves one upgraded WebSocket until it closes. The token was verified before the upgrade.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    ctx: SessionContext,
    identity: Identity,
    token: String,
    shared: Arc<SessionShared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let rate = TokenBucket::new(ctx.hub.limits().rate_per_sec);
    let mut session = Session { ws, ctx, shared: shared.clone(), identity, token, rate };
    tracing::info!(session = shared.id, user = %shared.user_id, "client connected");
    let reason = session.serve().await;
    session.ctx.hub.unregister(&shared);
    match &reason {
        Some(r) => {
            tracing::info!(session = shared.id, user = %shared.user_id, code = r.code, reason = r.reason, secs = started.elapsed().as_secs(), "client disconnected")
        }
        None => {
            tracing::info!(session = shared.id, user = %shared.user_id, secs = started.elapsed().as_secs(), "client disconnected")
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn send_json(&mut self, message: ServerMessage<'_>) -> Result<(), WsError> {
        let text = message.to_json();
        tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::text(text)))
            .await
            .unwrap_or(Err(WsError::ConnectionClosed))
    }

    async fn error(&mut self, message: &str) -> Result<(), WsError> {
        self.send_json(ServerMessage::Error { message }).await
    }

    async fn close(&mut self, reason: &CloseReason) {
        let frame = CloseFrame { code: CloseCode::from(reason.code), reason: reason.reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
    }

    /// The session loop; returns the close reason (None: the client went away).
    async fn serve(&mut self) -> Option<CloseReason> {
        let hello = ServerMessage::ConnectionEstablished {
            user_id: self.shared.user_id,
            timestamp: protocol::format_time(chrono::Utc::now()),
        };
        if self.send_json(hello).await.is_err() {
            return None;
        }
        if !self.ctx.hub.is_ready() && self.error(protocol::UPSTREAM_ERROR).await.is_err() {
            return None;
        }
        let ping_every = self.ctx.hub.limits().ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut expiry = Box::pin(tokio::time::sleep(self.ctx.verifier.remaining(&self.identity)));
        let mut shutdown = self.ctx.shutdown.clone();
        let shared = self.shared.clone();
        loop {
            let flow = tokio::select! {
                reason = shared.killed() => Flow::Close(reason),
                _ = shutdown.changed() => Flow::Close(CLOSE_SHUTDOWN),
                frame = shared.queue.pop() => self.write_batch(frame).await,
                incoming = self.ws.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        Some(Ok(message)) => self.on_message(message, &mut expiry).await,
                        Some(Err(WsError::Capacity(_))) => Flow::Close(CLOSE_TOO_BIG),
                        Some(Err(_)) | None => Flow::Gone,
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        Flow::Close(CLOSE_DEAD)
                    } else {
                        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(Message::Ping(Default::default()))).await {
                            Ok(Ok(())) => Flow::Continue,
                            _ => Flow::Gone,
                        }
                    }
                }
                _ = &mut expiry => {
                    let _ = self.error("Access token expired").await;
                    Flow::Close(CLOSE_EXPIRED)
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Gone => return None,
                Flow::Close(reason) => {
                    if reason == CLOSE_TOO_BIG || reason == CLOSE_RATE {
                        let _ = self.error(reason.reason).await;
                    }
                    self.close(&reason).await;
                    return Some(reason);
                }
            }
        }
    }

    /// Feeds the frame and everything else already queued (up to a batch), then flushes once.
    async fn write_batch(&mut self, first: Frame) -> Flow {
        let shared = self.shared.clone();
        let write = async {
            self.ws.feed(Message::Text(first)).await?;
            for _ in 1..BATCH {
                match shared.queue.try_pop() {
                    Some(frame) => self.ws.feed(Message::Text(frame)).await?,
                    None => break,
                }
            }
            self.ws.flush().await
        };
        tokio::pin!(write);
        // Fast path: the socket takes the batch at once (the common case); no timer is armed.
        if let std::task::Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
            return if result.is_ok() { Flow::Continue } else { Flow::Gone };
        }
        // The client is not reading fast enough: bound the wait, and give way to a kill.
        tokio::select! {
            result = tokio::time::timeout(WRITE_TIMEOUT, write) => match result {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(_)) => Flow::Gone,
                Err(_) => Flow::Close(CLOSE_STALLED),
            },
            reason = shared.killed() => Flow::Close(reason),
        }
    }

    async fn on_message(&mut self, message: Message, expiry: &mut std::pin::Pin<Box<tokio::time::Sleep>>) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => return Flow::Close(CLOSE_BINARY),
            Message::Close(_) => return Flow::Gone,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Flow::Continue,
        };
        if !self.rate.allow() {
            tracing::warn!(session = self.shared.id, user = %self.shared.user_id, "client exceeded the message rate limit");
            return Flow::Close(CLOSE_RATE);
        }
        let result = match parse_client_message(text.as_str()) {
            Err(e) => self.error(&e.to_string()).await,
            Ok(ClientMessage::Ping) => self.send_json(ServerMessage::Pong).await,
            // Rare and large futures are boxed so that an idle session's state stays small.
            Ok(ClientMessage::SubscribeThread { thread_id }) => Box::pin(self.subscribe(thread_id)).await,
            Ok(ClientMessage::UnsubscribeThread { thread_id }) => {
                self.ctx.hub.unsubscribe_thread(&self.shared, thread_id);
                self.send_json(ServerMessage::ThreadUnsubscribed { thread_id }).await
            }
            Ok(ClientMessage::AccessToken { token }) => Box::pin(self.refresh_token(token, expiry)).await,
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Gone,
        }
    }

    async fn subscribe(&mut self, thread_id: Uuid) -> Result<(), WsError> {
        let allowed = self.ctx.hub.store().can_read_thread(&self.token, thread_id).await;
        match allowed {
            Ok(true) => match self.ctx.hub.subscribe_thread(&self.shared, thread_id) {
                Ok(()) => {
                    tracing::debug!(session = self.shared.id, thread = %thread_id, "subscribed to thread");
                    self.send_json(ServerMessage::ThreadSubscribed { thread_id }).await
                }
                Err(e) => self.error(&e.to_string()).await,
            },
            Ok(false) => self.error(&format!("Access denied to thread {thread_id}")).await,
            Err(StoreError::Rejected { status: 401, .. }) => self.error("Access token rejected by the database").await,
            Err(e) => {
                tracing::warn!(session = self.shared.id, thread = %thread_id, error = %e, "thread access check failed");
                self.error("Could not check thread access; try again").await
            }
        }
    }

    async fn refresh_token(
        &mut self,
        token: String,
        expiry: &mut std::pin::Pin<Box<tokio::time::Sleep>>,
    ) -> Result<(), WsError> {
        match self.ctx.verifier.verify(&token).await {
            Ok(identity) if identity.user_id == self.shared.user_id => {
                expiry.as_mut().reset(tokio::time::Instant::now() + self.ctx.verifier.remaining(&identity));
                self.identity = identity;
                self.token = token;
                tracing::debug!(session = self.shared.id, "access token refreshed");
                Ok(())
            }
            Ok(_) => self.error("Access token belongs to another user").await,
            Err(e) => self.error(&format!("Invalid access token: {e}")).await,
        }
    }
}
