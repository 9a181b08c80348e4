//! Realtime stand-in: Supabase Realtime's `postgres_changes` over the Phoenix channel protocol,
//! fed by changes really committed in PostgreSQL.
//!
//! Data path: PostgreSQL WAL → the `pgoutput` crate (decoding) → [`feed`] (Realtime's change
//! shape) → [`Shared::dispatch`] (routing to every joined [`channel`] with a matching
//! [`binding`], `data` serialized once per change) → each [`socket`]'s bounded queue → its writer
//! (latency control, [`rls`] check for user tokens) → the client. [`frame`] is the wire format;
//! [`control`] holds the fault and load controls.
//!
//! The change feed, and why: logical decoding with the built-in `pgoutput` plugin, which is what
//! Supabase Realtime itself reads. At start a TEMPORARY logical slot is created on a dedicated
//! connection (`pg_create_logical_replication_slot(<unique>, 'pgoutput', true)`), and that
//! connection polls `pg_logical_slot_get_binary_changes(slot, NULL, NULL, 'proto_version', '1',
//! 'publication_names', 'supabase_realtime')` every ~10 ms (with `timezone` UTC so values come
//! out as Realtime shows them). This yields exactly the changes of the tables in the publication,
//! whole transactions in commit order with their commit timestamps, nothing that rolled back, and
//! needs no trigger, LISTEN/NOTIFY or other change to the project's schema. The slot disappears
//! with its connection. Pausing the feed stops polling, so changes committed meanwhile arrive
//! after resume, as replication lag would deliver them. If the feed connection fails, every
//! joined channel gets a `system` error (as Realtime reports a failed change feed) and a new slot
//! is created; changes committed in between are lost, as they are with Realtime.
//!
//! Owns the WebSocket endpoint `/realtime/v1/websocket` (`apikey` checked before the upgrade:
//! the anon or service key or another valid project JWT, else 401; `vsn` 1.0.0 (default) or
//! 2.0.0, else 400). It never writes to the project's tables: its only database state is the
//! temporary slot, which dies with its connection.
//!
//! Broadcast between the sockets joined to a topic ([`broadcast`]: text and vsn 2.0.0 binary user
//! broadcasts, `self`, `ack`, public and private channels apart). Private channels: Realtime
//! authorizes them with RLS policies on `realtime.messages`; the stand-in models no policy, so
//! the service role (which bypasses RLS) may join one and any other token is refused with
//! Realtime's "Unauthorized: You do not have permissions to read from this Channel topic".
//!
//! Not covered (documented limits): Presence (a presence track is acknowledged and goes nowhere;
//! `presence_state` is always empty), Broadcast from the database (`realtime.send`) and over
//! REST, binary frames other than user broadcasts, `realtime.messages` policies (see above),
//! `log_level`, per-tenant quotas and rate limits, the legacy topic
//! form `realtime:schema:table:filter`, several filters per binding, and `Error 413` (no record
//! is too large here). For user tokens, column privileges and RLS are applied when the change is
//! written to the socket ([`view`]: by primary key, as the subscriber), not at commit time as
//! Realtime does: a row the role may not SELECT becomes `Error 401: Unauthorized` without the
//! row, and DELETEs are sent unchecked and unfiltered, with only the key columns the role may
//! read, as Realtime sends them.

pub mod binding;
pub mod broadcast;
pub mod channel;
pub mod control;
pub mod feed;
pub mod frame;
pub mod rls;
pub mod socket;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgoutput::Decoder;
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::keys::Keys;
use channel::SocketHandle;
use feed::Change;
use frame::Vsn;

pub use control::{InjectSpec, RealtimeControl, RealtimeStats};

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// How often the change feed is polled when it was empty.
const POLL_IDLE: Duration = Duration::from_millis(10);

/// State shared by the feed, the sockets and the controls.
pub struct Shared {
    keys: Arc<Keys>,
    db_url: String,
    sockets: Mutex<HashMap<u64, Arc<SocketHandle>>>,
    next_socket: AtomicU64,
    refuse_joins: AtomicBool,
    joins_refused: AtomicU64,
    paused: AtomicBool,
    latency_ms: AtomicU64,
    heartbeat_timeout_ms: AtomicU64,
    events_sent: AtomicU64,
    feed_changes: AtomicU64,
    injected: AtomicU64,
    slow_drops: AtomicU64,
    queue_capacity: std::sync::atomic::AtomicUsize,
    catalog: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    rls: rls::Rls,
}

impl Shared {
    fn register(&self, handle: Arc<SocketHandle>) -> u64 {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.insert(id, handle);
        }
        id
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.remove(&id);
        }
    }

    fn sockets_snapshot(&self) -> Vec<Arc<SocketHandle>> {
        self.sockets.lock().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// (schema, table) of every table in the `supabase_realtime` publication.
    async fn published_tables(&self) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
        let mut guard = self.catalog.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(crate::pg::connect(&self.db_url).await?);
        }
        let Some(client) = guard.as_ref() else { return Ok(HashSet::new()) };
        let rows = client
            .query(
                "select schemaname::text, tablename::text from pg_publication_tables where pubname = 'supabase_realtime'",
                &[],
            )
            .await?;
        Ok(rows.iter().filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?))).collect())
    }

    /// Routes changes, in order, to every joined channel with a matching binding. Never waits:
    /// a socket whose queue is full is dropped as too slow.
    fn dispatch(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let latency = self.latency_ms.load(Ordering::Relaxed);
        let due = (latency > 0).then(|| Instant::now() + Duration::from_millis(latency));
        let sockets = self.sockets_snapshot();
        for change in changes {
            let data = change.data_json();
            for socket in &sockets {
                for out in channel::route(socket, change, &data, due) {
                    match socket.changes.try_send(out) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!("dropping a Realtime socket that cannot keep up");
                            self.slow_drops.fetch_add(1, Ordering::Relaxed);
                            socket.kill.notify_one();
                            break;
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
    }

    /// Tells every joined channel that the change feed failed.
    fn feed_failed(&self, message: &str) {
        for socket in self.sockets_snapshot() {
            let Ok(channels) = socket.channels.lock() else { continue };
            for c in channels.iter() {
                let name = c.topic.strip_prefix("realtime:").unwrap_or(&c.topic);
                let payload =
                    json!({"extension": "postgres_changes", "status": "error", "message": message, "channel": name});
                let text =
                    frame::encode_push_raw(c.join_ref.as_deref(), &c.topic, "system", &payload.to_string(), socket.vsn);
                let _ = socket.changes.try_send(channel::Outgoing { due: None, text, view: None, binary: None });
            }
        }
    }
}

/// A running Realtime stand-in bound to one database.
pub struct Realtime {
    shared: Arc<Shared>,
    feed: tokio::task::JoinHandle<()>,
}

impl Drop for Realtime {
    fn drop(&mut self) {
        self.feed.abort();
        for s in self.shared.sockets_snapshot() {
            s.kill.notify_one();
        }
    }
}

/// The dedicated feed connection with its temporary slot.
struct FeedConn {
    client: tokio_postgres::Client,
    slot: String,
}

async fn open_feed(db_url: &str) -> Result<FeedConn, tokio_postgres::Error> {
    let client = crate::pg::connect(db_url).await?;
    client.batch_execute("set timezone to 'UTC'").await?;
    let slot = format!("standin_{}", uuid::Uuid::new_v4().simple());
    client.query_one("select pg_create_logical_replication_slot($1, 'pgoutput', true)::text", &[&slot]).await?;
    Ok(FeedConn { client, slot })
}

async fn type_names(client: &tokio_postgres::Client) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client.query("select oid::int8, typname::text from pg_type", &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.try_get::<_, i64>(0).ok()? as u32, r.try_get::<_, String>(1).ok()?)))
        .collect())
}

/// Polls the slot until the connection fails.
async fn poll_feed(shared: &Shared, conn: &FeedConn) -> Result<(), tokio_postgres::Error> {
    let mut types = type_names(&conn.client).await?;
    let mut decoder = Decoder::default();
    let query = conn
        .client
        .prepare(
            "select data from pg_logical_slot_get_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', 'supabase_realtime')",
        )
        .await?;
    loop {
        if shared.paused.load(Ordering::Relaxed) {
            tokio::time::sleep(POLL_IDLE).await;
            continue;
        }
        let rows = conn.client.query(&query, &[&conn.slot]).await?;
        // A Relation message may name a type created since the last look-up.
        if rows.iter().any(|r| r.try_get::<_, &[u8]>(0).ok().and_then(|d| d.first().copied()) == Some(b'R')) {
            types = type_names(&conn.client).await?;
        }
        let mut changes = Vec::new();
        for row in &rows {
            let Ok(data) = row.try_get::<_, &[u8]>(0) else { continue };
            match decoder.feed(data, &types) {
                Ok(Some(transaction)) => changes.extend(Change::committed(&transaction)),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "undecodable pgoutput message"),
            }
        }
        shared.feed_changes.fetch_add(changes.len() as u64, Ordering::Relaxed);
        shared.dispatch(&changes);
        if rows.is_empty() {
            tokio::time::sleep(POLL_IDLE).await;
        }
    }
}

async fn run_feed(shared: Arc<Shared>, mut conn: FeedConn) {
    loop {
        if let Err(e) = poll_feed(&shared, &conn).await {
            tracing::error!(error = %e, "Realtime stand-in change feed failed; reopening");
            shared.feed_failed("Realtime lost the connection to the project database");
        }
        conn = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match open_feed(&shared.db_url).await {
                Ok(c) => break c,
                Err(e) => tracing::warn!(error = %e, "cannot reopen the change feed yet"),
            }
        };
    }
}

#[derive(Deserialize)]
struct WsParams {
    apikey: Option<String>,
    vsn: Option<String>,
}

fn status_json(status: StatusCode, message: &str) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&json!({"message": message})), status).into_response()
}

impl Realtime {
    /// Starts the change feed on `db_url` (a temporary logical slot on a dedicated connection).
    pub async fn start(db_url: &str, keys: Arc<Keys>) -> Result<Realtime, RealtimeError> {
        let conn = open_feed(db_url).await?;
        let shared = Arc::new(Shared {
            keys,
            db_url: db_url.to_string(),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
            refuse_joins: AtomicBool::new(false),
            joins_refused: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            heartbeat_timeout_ms: AtomicU64::new(60_000),
            events_sent: AtomicU64::new(0),
            feed_changes: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            slow_drops: AtomicU64::new(0),
            queue_capacity: std::sync::atomic::AtomicUsize::new(socket::CHANGE_QUEUE),
            catalog: tokio::sync::Mutex::new(None),
            rls: rls::Rls::new(db_url),
        });
        let feed = tokio::spawn(run_feed(shared.clone(), conn));
        Ok(Realtime { shared, feed })
    }

    pub fn control(&self) -> RealtimeControl {
        RealtimeControl { shared: self.shared.clone() }
    }

    /// `/realtime/v1/websocket` and `/_standin/realtime/...`.
    pub fn routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        let shared = self.shared.clone();
        let websocket = warp::path!("realtime" / "v1" / "websocket")
            .and(warp::query::<WsParams>())
            .and(warp::header::optional::<String>("apikey"))
            .and(warp::ws())
            .map(move |params: WsParams, header_key: Option<String>, ws: warp::ws::Ws| {
                let Some(apikey) = params.apikey.or(header_key) else {
                    return status_json(StatusCode::UNAUTHORIZED, "No API key found in request");
                };
                let keys = &shared.keys;
                if apikey != keys.anon_key && apikey != keys.service_key && keys.verify(&apikey).is_err() {
                    return status_json(StatusCode::UNAUTHORIZED, "Invalid API key");
                }
                let Some(vsn) = Vsn::parse(params.vsn.as_deref()) else {
                    return status_json(StatusCode::BAD_REQUEST, "Unsupported serializer version (vsn)");
                };
                let shared = shared.clone();
                ws.max_message_size(1 << 20)
                    .on_upgrade(move |socket| socket::serve(socket, shared, vsn, apikey))
                    .into_response()
            });
        let controls = control::routes(self.control(), self.shared.keys.service_key.clone());
        websocket.or(controls).unify().boxed()
    }
}
