//! Server: wires configuration, auth, store, directory, hub, history, router, typing and upstream; owns
//! the listener, the WebSocket upgrade, and shutdown. The backend (Supabase, or plain PostgreSQL)
//! is chosen once, in [`backend`]: it decides which store and which change feed are built;
//! everything downstream of the two seams is the same. [`start`] is wiring: each component gets
//! its part of the [`Config`].
//!
//! One TCP port serves both the WebSocket (path `/`, token from `?token=` or
//! `Authorization: Bearer`, verified before the upgrade; optional `?since=` to resume) and the REST
//! API (warp, as a hyper service). WebSocket upgrades are handled here directly on hyper +
//! tokio-tungstenite so that the socket's buffer sizes and limits are ours to choose. Shutdown is
//! one [`CancellationToken`]: every spawned task (connections, sessions, upstream, router, lookups)
//! is tracked by one [`TaskTracker`], selects on the token, and is awaited up to the grace period,
//! so in-flight REST calls get their answers. Before that, a drain (see [`Gateway::shutdown`]):
//! `/readyz` answers 503 and new upgrades are refused while sessions stay open, then sessions are
//! closed one by one, paced by `DRAIN_CLOSE_RATE` within the rest of the grace period.

mod backend;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
pub use upgrade::request_token;
use upgrade::{is_websocket_upgrade, upgrade};

use crate::admin::AdminState;
use crate::api::{self, ApiState, Ops};
use crate::auth::{Verifier, VerifierSettings};
use crate::close;
use crate::config::{Config, Limits, Shutdown};
use crate::directory::{Directory, DirectoryParts};
use crate::edge::Edge;
use crate::feed::Watermark;
use crate::history::History;
use crate::hub::{Disconnects, Hub};
use crate::limit::PerUser;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::router::catchup::CatchUp;
use crate::router::{Router, RouterParts};
use crate::session::SessionContext;
use crate::typing::{Typing, TypingParts};
pub use backend::upstream_config;

type Response = warp::reply::Response;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("PostgreSQL backend: {0}")]
    Postgres(#[from] crate::pg::PgSetupError),
    #[error("{0}")]
    SyncHorizon(#[from] crate::feed::publication::HorizonProblem),
    #[error("push: {0}")]
    Push(#[from] crate::push::PushError),
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    slot_lag: Option<Arc<crate::feed::postgres::SlotLag>>,
    drain: Duration,
    /// Sessions closed per second after the drain (`DRAIN_CLOSE_RATE`).
    close_rate: f64,
}

impl Gateway {
    /// PostgreSQL backend: bytes of WAL the server retains for this gateway's replication slot
    /// (`pg_current_wal_lsn() - confirmed_flush_lsn`, refreshed about once a second), for a
    /// `/metrics` gauge. None on the Supabase backend and before the first reading.
    pub fn slot_lag_bytes(&self) -> Option<i64> {
        self.slot_lag.as_ref().and_then(|lag| lag.bytes())
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Graceful shutdown within `SHUTDOWN_GRACE_SECS`: at once `/readyz` answers 503 and new
    /// WebSocket upgrades get 503 (REST keeps being served); after `DRAIN_SECS`, every session is
    /// closed with 1001 "server shutting down", one at a time, `DRAIN_CLOSE_RATE` per second (a
    /// few sessions close right away; many are spread out so that their reconnects do not all land
    /// on the other instances in the same instant, faster than the rate only if the rate would run
    /// past the grace period); then the listener stops, in-flight REST calls finish, the upstream
    /// channel is left, and this returns (at the latest when the grace period is over).
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        // Validated below the grace period; a configuration built in code may not be.
        let drain = self.drain.min(self.grace);
        self.readiness.start_draining();
        tracing::info!(sessions = self.hub.session_count(), drain_secs = drain.as_secs_f64(), "draining");
        tokio::time::sleep(drain).await;
        let window = close_window(self.grace, drain);
        let sessions = self.hub.sessions();
        let schedule = close_schedule(sessions.len(), self.close_rate, window);
        tracing::info!(
            sessions = sessions.len(),
            rate_per_sec = self.close_rate,
            over_secs = schedule.clone().last().unwrap_or_default().as_secs_f64(),
            "closing sessions"
        );
        let start = tokio::time::Instant::now();
        for (session, at) in sessions.iter().zip(schedule) {
            tokio::time::sleep_until(start + at).await;
            session.close(&close::SHUTDOWN);
            self.metrics.shutdown_closed();
        }
        self.hub.close_all(&close::SHUTDOWN);
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!(remaining_tasks = self.tasks.len(), "grace period over; abandoning what is left");
        }
        tracing::info!(remaining_sessions = self.hub.session_count(), "stopped");
    }
}

/// The part of the grace period after the drain within which sessions are closed: all of it but a
/// tail (a fifth, at most 2 s) left for the last closes and in-flight calls to finish.
pub fn close_window(grace: Duration, drain: Duration) -> Duration {
    let rest = grace.saturating_sub(drain);
    rest.saturating_sub((rest / 5).min(Duration::from_secs(2)))
}

/// When each of `n` sessions is closed, from the end of the drain: one every `1 / rate` seconds,
/// the first at once; if that would run past `window`, evenly spread over it instead (faster than
/// the rate, never past the grace period). A rate that is not a positive number closes at once.
pub fn close_schedule(n: usize, rate: f64, window: Duration) -> impl Iterator<Item = Duration> + Clone {
    let paced = if rate.is_finite() && rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    let fits = if n == 0 { Duration::ZERO } else { window / u32::try_from(n).unwrap_or(u32::MAX) };
    let step = paced.min(fits);
    (0..n).map(move |i| step.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)))
}

/// Idle connections the HTTP client (PostgREST, JWKS) keeps per host.
const HTTP_IDLE_PER_HOST: usize = 64;
/// Idle connections the push path's own HTTP client (PostgREST) keeps per host.
const PUSH_HTTP_IDLE_PER_HOST: usize = 8;
/// Bytes of outgoing frames buffered per socket before a write goes out; flushed once per batch.
const WS_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes of outgoing frames buffered per socket while the peer does not read.
const WS_MAX_WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The socket settings of every session. tungstenite reserves `read_buffer_size` per socket up
/// front (128 KiB by default); client frames are small, so `WS_READ_BUFFER_BYTES` is small too
/// (it grows for a larger frame).
fn websocket_config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
}

/// Starts the gateway: binds, connects upstream, serves until [`Gateway::shutdown`].
///
/// Longer than our ~80-line rule on purpose: it is wiring only (each component built from its own
/// settings, in dependency order, no logic), and reading the construction order top to bottom in
/// one place is the point.
pub async fn start(config: Config) -> Result<Gateway, StartError> {
    // Microseconds, as every cursor the gateway hands out: a cursor equal to the start is covered.
    let started = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(HTTP_IDLE_PER_HOST)
        .connect_timeout(config.backend_timeout)
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let verifier = Verifier::new(VerifierSettings::from_config(&config), http.clone());
    if config.auth.jwks_url.is_some() {
        if let Err(e) = verifier.prime().await {
            if config.auth.jwt_secret.is_none() {
                tracing::warn!(error = %e, "no SUPABASE_JWT_SECRET and no JWKS yet: tokens are refused until the JWKS loads");
            }
        }
    }
    let metrics = Arc::new(Metrics::default());
    let (store, feed) = backend::open(&config, http, &verifier, &metrics)?;
    crate::feed::publication::check_sync_horizon(&store, &tasks, &stop).await?;
    crate::feed::publication::spawn_prune(store.clone(), &tasks, stop.clone());
    let hub = Hub::new(config.limits.clone(), metrics.clone());
    // The sessions' keep-alive and token expiry: one clock for all of them.
    tasks.spawn(hub.clone().run_clock(stop.clone()));
    let push = crate::push::PushConfig::new(&config.push, config.backend_timeout)?;
    let open_push_store: crate::push::runtime::OpenStore = {
        let (config, verifier, metrics) = (config.clone(), verifier.clone(), metrics.clone());
        Box::new(move || backend::push_store(&config, &verifier, &metrics).map_err(|e| e.to_string()))
    };
    crate::push::start(open_push_store, hub.clone(), metrics.clone(), push, &tasks, stop.clone())?;
    let (directory, loaded) = Directory::new(DirectoryParts {
        store: store.clone(),
        ttl: config.cache.ttl,
        max_threads: config.cache.max_threads,
        metrics: metrics.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
    });
    let history = History::new(config.resume.buffer, resume_floor(started, config.router.catchup_margin));
    let readiness = Arc::new(Readiness::default());

    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;

    let (events_tx, events_rx) = mpsc::channel(config.feed.queue_capacity);
    let watermark = Arc::new(Watermark::default());
    let catchup = CatchUp::new(config.resume.catchup_timeout);
    let router = Router::new(RouterParts {
        hub: hub.clone(),
        metrics: metrics.clone(),
        directory: directory.clone(),
        loaded,
        store: store.clone(),
        history: history.clone(),
        readiness: readiness.clone(),
        config: config.router.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
        started,
        watermark: watermark.clone(),
        catchup: catchup.clone(),
    });
    tasks.spawn(router.run(events_rx));
    let (typing, typing_relay) = Typing::new(TypingParts {
        hub: hub.clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
    });
    let backend_name = feed.describe();
    let slot_lag = feed.spawn(events_tx, watermark, typing_relay, &tasks, stop.clone());

    let disconnects = Arc::new(Disconnects::default());
    let edge = Edge::new(&config.edge);
    let ops = Arc::new(Ops {
        edge: edge.clone(),
        metrics_token: config.ops.metrics_token.clone(),
        slot_lag: slot_lag.clone(),
    });
    let admin = Arc::new(AdminState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        disconnects: disconnects.clone(),
        token: config.ops.admin_token.clone(),
    });
    let budgets = crate::fair::UserBudgets::new(&config.fairness, config.fairness.max_keys);
    let ctx = Arc::new(SessionContext {
        hub: hub.clone(),
        metrics: metrics.clone(),
        verifier: verifier.clone(),
        store: store.clone(),
        history,
        directory,
        membership_wait: config.backend_timeout,
        readiness: readiness.clone(),
        stop: stop.clone(),
        disconnects: disconnects.clone(),
        budgets: budgets.clone(),
        catchup,
        typing,
    });
    let rest_rate = Arc::new(PerUser::new(config.fairness.rest_rate_per_sec, config.fairness.max_keys));
    let rest = warp::service(api::routes(ApiState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        store,
        readiness: readiness.clone(),
        verifier,
        rate: rest_rate,
        budgets,
        ops,
        admin,
        vapid_public_key: config.push.vapid.as_ref().map(|v| crate::push::webpush::public_key(&v.key)),
    }));
    let ws_config = websocket_config(&config.limits);
    let listener_ctx = Listener { ctx, rest, ws_config, edge, tasks: tasks.clone() };
    tasks.spawn(listener_ctx.accept_loop(listener));
    if config.ops.metrics_token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "/metrics is open to anyone who can reach this address: set METRICS_TOKEN, or bind to 127.0.0.1 behind a proxy"
        );
    }
    tracing::info!(%addr, backend = %backend_name, "gateway listening");
    let Shutdown { grace, drain, close_rate } = config.shutdown;
    Ok(Gateway { addr, hub, metrics, readiness, stop, tasks, grace, drain, close_rate, slot_lag })
}

/// The oldest time a resume from memory covers: the start less the catch-up margin (as far back
/// as time goes, for a margin beyond chrono's range).
fn resume_floor(started: DateTime<Utc>, margin: Duration) -> DateTime<Utc> {
    let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
    started.checked_sub_signed(margin).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The accept loop and what every connection needs.
struct Listener<R> {
    /// Shared by every session (each holds the `Arc`, not a copy).
    ctx: Arc<SessionContext>,
    rest: R,
    ws_config: WebSocketConfig,
    edge: Arc<Edge>,
    tasks: TaskTracker,
}

impl<R> Listener<R>
where
    R: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    R::Future: Send,
{
    async fn accept_loop(self, listener: TcpListener) {
        let stop = self.ctx.stop.clone();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            // Bounds before authentication: connection caps, handshake deadline, header size.
            let Some((stream, handshake)) = self.edge.admit(stream, peer) else { continue };
            self.tasks.spawn(self.serve_connection(stream, handshake, peer));
        }
    }

    fn serve_connection(
        &self,
        stream: crate::edge::Guarded<tokio::net::TcpStream>,
        handshake: crate::edge::Handshake,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> {
        let (ctx, rest, ws_config, tasks) = (self.ctx.clone(), self.rest.clone(), self.ws_config, self.tasks.clone());
        let http1 = self.edge.http1();
        let stop = ctx.stop.clone();
        async move {
            let service = handshake.service(service_fn(move |req: Request<Incoming>| {
                let (ctx, tasks) = (ctx.clone(), tasks.clone());
                let mut rest = rest.clone();
                async move {
                    if is_websocket_upgrade(&req) && req.uri().path() == "/" {
                        Ok::<_, Infallible>(upgrade(req, ctx, ws_config, peer, &tasks).await)
                    } else {
                        rest.call(req).await
                    }
                }
            }));
            let conn = http1.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // Let an in-flight request finish; idle keep-alive connections close now.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_sessions_close_at_once_and_many_are_paced_within_the_window() {
        let window = close_window(Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(window, Duration::from_secs(23), "25 s after the drain, less a 2 s tail");
        assert_eq!(close_window(Duration::from_secs(4), Duration::from_secs(1)), Duration::from_millis(2400));
        // Two sessions at the default rate: both within a few milliseconds of the drain's end.
        let two: Vec<Duration> = close_schedule(2, 500.0, window).collect();
        assert_eq!(two, [Duration::ZERO, Duration::from_millis(2)]);
        // 10,000 at 500/s: paced over 20 s, inside the 23 s window.
        let many: Vec<Duration> = close_schedule(10_000, 500.0, window).collect();
        assert_eq!(many.len(), 10_000);
        assert_eq!(many[1], Duration::from_millis(2));
        assert_eq!(many[9_999], Duration::from_millis(19_998));
        assert!(many.windows(2).all(|w| w[1] > w[0]), "one at a time, in order");
        // 10,000 at 100/s would take 100 s: evenly spread over the window instead, never past it.
        let squeezed: Vec<Duration> = close_schedule(10_000, 100.0, window).collect();
        assert_eq!(squeezed[1], Duration::from_micros(2_300));
        assert!(*squeezed.last().expect("10,000") < window);
        assert_eq!(close_schedule(0, 500.0, window).count(), 0);
        assert!(close_schedule(3, 0.0, window).all(|at| at == Duration::ZERO), "no rate: all at once");
    }
}
