//! Session: one client WebSocket, from `connection_established` to close.
//!
//! Submodules: [`socket`] (the client's WebSocket: batching, write timeouts, the fast path, the
//! keep-alive and close frames), [`resume`] (what a reconnecting client missed: the choice of
//! source and the frames), `replay` (writing that replay to the socket, and the held-back
//! `sync_complete`), `live` (the live loop: what an idle session waits on, and the writes of
//! queued frames) and `client` (the client's frames: access checks, typing, the token's
//! refresh).
//!
//! Owns one connection's protocol state: its verified identity and token expiry, the client
//! frames it accepts (size and rate limited), when the connection counts as dead, and which of
//! the frames the hub queued for it go out (the outbox is the hub's [`SessionHandle`]). Every
//! close carries a code and a human reason. A session never blocks the hub: the hub only ever
//! `try_send`s into its bounded queue, and a session that falls behind is closed by the hub.
//! It must never send a client data of a thread the user may not read (the hub routes; access
//! checks for `subscribe_thread` go to RLS through the store with the user's own token).

mod client;
mod live;
mod replay;
pub mod resume;
mod socket;
mod token;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{Identity, Verifier};
use crate::close::{self, Close};
use crate::directory::Directory;
use crate::history::History;
use crate::hub::{Disconnects, Hub, Outgoing, SessionHandle};
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::model::format_time;
use crate::protocol::{self, ServerMessage};
use crate::readiness::Readiness;
use crate::store::Store;
use resume::{PendingSync, Release, Replay};
use socket::{ClientSocket, WriteError};
pub use token::HeldToken;

/// A held-back `sync_complete`'s wait for the router's proof.
type CatchUpWait = std::pin::Pin<Box<dyn std::future::Future<Output = Release> + Send>>;

/// Everything a session needs from the gateway.
#[derive(Clone)]
pub struct SessionContext {
    pub hub: Arc<Hub>,
    /// The session series: disconnects, access checks, budgets, resumes, pushes.
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub store: Store,
    pub history: Arc<History>,
    /// Thread memberships, as the live path reads them: memory replays are checked against it.
    pub directory: Arc<Directory>,
    /// How long a memory replay waits for member lists it must load (`BACKEND_TIMEOUT_SECS`).
    pub membership_wait: Duration,
    pub readiness: Arc<Readiness>,
    /// Cancelled when the gateway shuts down.
    pub stop: CancellationToken,
    /// The recent disconnects the admin page shows.
    pub disconnects: Arc<Disconnects>,
    /// Per-user budgets on `subscribe_thread` checks and database replays.
    pub budgets: Arc<crate::fair::UserBudgets>,
    /// Catch-up tickets: a memory resume's `sync_complete` waits for the router's proof.
    pub catchup: Arc<crate::router::catchup::CatchUp>,
    /// Typing: the per-user limiter, delivery here and the relay to the other instances.
    pub typing: Arc<crate::typing::Typing>,
}

/// What a session starts from, made at the upgrade and boxed there, so that the session's task
/// holds one pointer to it until the socket is ready instead of a copy of each part.
pub struct Opening {
    pub ctx: Arc<SessionContext>,
    /// The verified token's identity.
    pub identity: Identity,
    /// The verified token, held decoded.
    pub token: HeldToken,
    pub shared: Arc<SessionHandle>,
    pub replay: Option<Replay>,
    /// The socket's buffer sizes and limits.
    pub ws_config: WebSocketConfig,
    pub peer: std::net::SocketAddr,
}

/// One session's state, held once by its task for the session's life (an idle session's
/// memory is mostly this and the socket's).
struct Session<S> {
    socket: ClientSocket<S>,
    ctx: Arc<SessionContext>,
    shared: Arc<SessionHandle>,
    identity: Identity,
    token: HeldToken,
    rate: TokenBucket,
    /// A resume's replay, until the session opens (boxed: most sessions never have one, and every
    /// session would hold its size for life).
    replay: Option<Box<Replay>>,
    /// What a resume leaves for the live loop; None for a session that did not resume or whose
    /// resume left nothing (boxed: most sessions never have any).
    resumed: Option<Box<Resumed>>,
}

/// What a resume leaves for the live loop.
#[derive(Default)]
struct Resumed {
    /// Messages a database replay sent: skipped if they also arrive live.
    replayed: HashSet<Uuid>,
    /// After a database replay: the resume's `since`, clamped to the sync horizon the replay read.
    /// The client holds every message created up to it (that is what its cursor says), so a live
    /// frame of one of them is a duplicate: the router, still behind the database (filling a
    /// gap), routes it only now. Skipped, so that a thread's messages never go back in time on
    /// one socket.
    covered: Option<chrono::DateTime<chrono::Utc>>,
    /// While a memory replay's `sync_complete` is held back: the live chat messages written
    /// meanwhile (they are part of the catch-up, and `sync_complete` counts them).
    held_live: Option<usize>,
}

impl Resumed {
    fn is_empty(&self) -> bool {
        self.replayed.is_empty() && self.covered.is_none() && self.held_live.is_none()
    }
}

enum Flow {
    Continue,
    Close(Close),
    Gone,
}

impl From<WriteError> for Flow {
    fn from(e: WriteError) -> Flow {
        match e {
            WriteError::Gone => Flow::Gone,
            WriteError::Stalled => Flow::Close(close::STALLED),
            WriteError::Interrupted(reason) => Flow::Close(reason),
        }
    }
}

/// Serves one upgraded connection as a WebSocket until it closes. The token was verified before
/// the upgrade. The session's state is built here, outside the returned future, which holds it
/// once (an `async fn` would hold its arguments and the state built from them side by side).
// Boxed on purpose: the upgrade's task holds the opening until the socket is ready, one pointer.
#[allow(clippy::boxed_local)]
pub fn run<S>(io: S, opening: Box<Opening>) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opening { ctx, identity, token, shared, replay, ws_config, peer } = *opening;
    // tokio-tungstenite builds the stream on its first poll without any I/O: it is ready at once.
    let Some(ws) = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).now_or_never() else {
        tracing::warn!(%peer, "WebSocket stream not ready at once; connection dropped");
        ctx.hub.unregister(&shared);
        return Either::Right(std::future::ready(()));
    };
    let rate = TokenBucket::new(ctx.hub.limits().rate_per_sec);
    let session = Session {
        socket: ClientSocket::new(ws),
        ctx,
        shared,
        identity,
        token,
        rate,
        replay: replay.map(Box::new),
        resumed: None,
    };
    Either::Left(session.run())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The session's life: served, then unregistered, counted and logged. Not an `async fn`: the
    /// future captures `self` once and works on it in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            let started = Instant::now();
            let shared = self.shared.clone();
            tracing::info!(session = shared.id, user = %shared.user_id, resume = self.replay.is_some(), "client connected");
            let reason = self.serve().await;
            self.ctx.hub.unregister(&shared);
            if !self.ctx.hub.is_online(&shared.user_id) {
                self.ctx.typing.release(&shared.user_id);
            }
            let (code, label) = reason.map_or((0, "client_gone"), |r| (r.code, r.label));
            self.ctx.metrics.disconnected(code, label);
            self.ctx.disconnects.record(shared.user_id, code, label);
            let secs = started.elapsed().as_secs();
            match &reason {
                Some(r) => {
                    tracing::info!(session = shared.id, user = %shared.user_id, code = r.code, reason = r.reason, secs, "client disconnected")
                }
                None => tracing::info!(session = shared.id, user = %shared.user_id, secs, "client disconnected"),
            }
        }
    }

    /// The resume's state, made on first use.
    fn resumed(&mut self) -> &mut Resumed {
        self.resumed.get_or_insert_with(Box::default)
    }

    async fn send_json(&mut self, message: ServerMessage<'_>) -> Result<(), WsError> {
        self.socket.send(message.to_json()).await
    }

    async fn error(&mut self, message: &str) -> Result<(), WsError> {
        self.send_json(ServerMessage::Error { message }).await
    }

    /// The reason's error frame, if it has one, then its close frame.
    async fn close(&mut self, reason: &Close) {
        if let Some(text) = reason.error_frame {
            let _ = self.error(text).await;
        }
        self.socket.close(reason).await;
    }

    /// The session: opened, then live until it ends; returns the close reason (None: the client
    /// went away).
    ///
    /// Opening and closing happen once; their futures (writes of whole frames, the replay's
    /// start) are boxed, so that the task's future, which every idle session holds for its life,
    /// is sized for the live loop's wait.
    async fn serve(&mut self) -> Option<Close> {
        let flow = match Box::pin(self.open()).await {
            // The held sync_complete boxed: the live loop holds it (rarely) for the session's life.
            Ok(pending) => self.live(pending.map(Box::new)).await,
            Err(flow) => flow,
        };
        Box::pin(self.finish(flow)).await
    }

    /// `connection_established`, the replay of a resume, and the upstream-error frame while the
    /// upstream is down; returns a memory replay's `sync_complete`, held back until caught up.
    async fn open(&mut self) -> Result<Option<PendingSync>, Flow> {
        let hello = ServerMessage::ConnectionEstablished {
            user_id: self.shared.user_id,
            timestamp: format_time(chrono::Utc::now()),
        };
        self.send_json(hello).await.map_err(|_| Flow::Gone)?;
        let mut pending = match self.replay.take() {
            Some(replay) => Box::pin(self.replay(*replay)).await?,
            None => None,
        };
        if pending.is_some() {
            self.resumed().held_live = Some(0);
        }
        if !self.ctx.readiness.upstream_live() {
            if let Some(held) = pending.take() {
                // Nothing can be proven: behind what is queued, sync_complete with the safe
                // cursor, then the upstream-error frame.
                let error = Outgoing::notice(ServerMessage::Error { message: protocol::UPSTREAM_ERROR }.to_json());
                let flow = self.release_sync(held, Release::UpstreamDown);
                self.shared.push(&error, &self.ctx.metrics);
                if let Flow::Close(reason) = flow {
                    return Err(Flow::Close(reason));
                }
            } else {
                self.error(protocol::UPSTREAM_ERROR).await.map_err(|_| Flow::Gone)?;
            }
        }
        Ok(pending)
    }

    async fn finish(&mut self, flow: Flow) -> Option<Close> {
        match flow {
            Flow::Continue | Flow::Gone => None,
            Flow::Close(reason) => {
                self.close(&reason).await;
                Some(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The future's type of a two-argument function, without making one.
    fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open session holds its task's future for its whole life, sized for its largest
    /// state: a large future on a rare path (a check, a replay, a refresh) costs every idle
    /// session. Box such futures (as `on_text` and `write_batch` are) rather than raise this
    /// bound. 832 bytes in a debug build now (1,608 before the write of a batch, the opening and
    /// the closing were boxed and the keep-alive moved to the hub's clock; 2,720 before the
    /// session held its context by `Arc`).
    #[test]
    fn an_idle_sessions_future_stays_small() {
        type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
        let size = future_size(run::<Io>);
        eprintln!("the session's future: {size} bytes");
        assert!(size <= 1024, "the session's future is {size} bytes");
    }
}
