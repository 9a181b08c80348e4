//! Realtime stand-in: Supabase Realtime's `postgres_changes` over the Phoenix channel protocol,
//! fed by changes really committed in PostgreSQL.
//!
//! Owns the WebSocket endpoint `/realtime/v1/websocket` (apikey checked before the upgrade, vsn
//! 1.0.0 and 2.0.0), the change feed ([`feed`]: logical decoding with `pgoutput`, see there why),
//! routing each change to the joined channels whose bindings match ([`socket`]), and the fault
//! and load controls tests and the benchmark use ([`RealtimeControl`], also over HTTP under
//! `/_standin/realtime/...` with the service key). It never writes to the database.
//!
//! Not covered (documented limits): RLS per subscriber for user-token channels (every subscriber
//! receives every matching change, as with the service role key), Broadcast and Presence payloads,
//! binary frames, `log_level`, and Realtime's per-tenant quotas.

pub mod feed;
pub mod frame;
pub mod socket;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::keys::Keys;
use feed::{Change, Decoder};
use frame::Vsn;
use socket::SocketHandle;

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// What to inject: rows cycled through at `rate_per_sec` until `count` events were sent.
/// String values "$uuid" and "$now" in a row are replaced by a fresh uuid / the emission time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InjectSpec {
    pub schema: String,
    pub table: String,
    #[serde(rename = "type", default = "default_insert")]
    pub change_type: String,
    pub rows: Vec<Value>,
    pub rate_per_sec: u64,
    pub count: u64,
}

fn default_insert() -> String {
    "INSERT".into()
}

/// State shared by the feed, the sockets and the controls.
pub struct Shared {
    keys: Arc<Keys>,
    db_url: String,
    sockets: Mutex<HashMap<u64, Arc<SocketHandle>>>,
    next_socket: AtomicU64,
    refuse_joins: AtomicBool,
    paused: AtomicBool,
    latency_ms: AtomicU64,
    heartbeat_timeout_ms: AtomicU64,
    events_sent: AtomicU64,
    catalog: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Shared {
    /// (schema, table) of every table in the `supabase_realtime` publication.
    async fn published_tables(&self) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
        let mut guard = self.catalog.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(crate::pg::connect(&self.db_url).await?);
        }
        let Some(client) = guard.as_ref() else { return Ok(HashSet::new()) };
        let rows = client
            .query("select schemaname::text, tablename::text from pg_publication_tables where pubname = 'supabase_realtime'", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Routes one change to every joined channel with a matching binding.
    fn dispatch(&self, change: &Change) {
        let sockets: Vec<Arc<SocketHandle>> = match self.sockets.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for socket in sockets {
            let frames: Vec<String> = match socket.channels.lock() {
                Ok(chans) => chans.iter().filter_map(|c| socket::change_frame(c, change, socket.vsn)).collect(),
                Err(_) => continue,
            };
            for text in frames {
                match socket.tx.try_send(text) {
                    Ok(()) => {
                        self.events_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!("dropping a Realtime socket that cannot keep up");
                        socket.kill.notify_one();
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Fault and load controls, cheap to clone, usable from tests in-process.
#[derive(Clone)]
pub struct RealtimeControl {
    shared: Arc<Shared>,
}

impl RealtimeControl {
    /// Drops every socket at once, as a network failure would (no close handshake).
    pub fn drop_all_sockets(&self) {
        if let Ok(sockets) = self.shared.sockets.lock() {
            for s in sockets.values() {
                s.kill.notify_one();
            }
        }
    }

    /// Joins are answered with an error while set.
    pub fn set_refuse_joins(&self, refuse: bool) {
        self.shared.refuse_joins.store(refuse, Ordering::Relaxed);
    }

    /// Stops reading the change feed; changes committed meanwhile follow on resume (like lag).
    pub fn pause_feed(&self) {
        self.shared.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume_feed(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// Delay added before each batch of changes is sent.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// A socket silent for this long is closed (default 60 s).
    pub fn set_heartbeat_timeout(&self, timeout: Duration) {
        self.shared.heartbeat_timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn socket_count(&self) -> usize {
        self.shared.sockets.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn channel_count(&self) -> usize {
        self.shared.sockets.lock().map(|s| socket::channel_count(&s)).unwrap_or(0)
    }

    /// Change events written to sockets so far.
    pub fn events_sent(&self) -> u64 {
        self.shared.events_sent.load(Ordering::Relaxed)
    }

    /// Emits synthetic change events at the spec's rate; returns how many were emitted.
    pub async fn inject(&self, spec: InjectSpec) -> u64 {
        if spec.rows.is_empty() || spec.count == 0 {
            return 0;
        }
        let kind: &'static str = match spec.change_type.to_uppercase().as_str() {
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            _ => "INSERT",
        };
        let rate = spec.rate_per_sec.max(1) as f64;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < spec.count {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(spec.count);
            while sent < due {
                let template = &spec.rows[(sent as usize) % spec.rows.len()];
                let change = synthetic(&spec.schema, &spec.table, kind, template);
                self.shared.dispatch(&change);
                sent += 1;
            }
            if sent < spec.count {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        sent
    }
}

fn synthetic(schema: &str, table: &str, kind: &'static str, template: &Value) -> Change {
    let now = feed::now_micros();
    let mut record = Map::new();
    let mut columns = Vec::new();
    if let Some(obj) = template.as_object() {
        for (k, v) in obj {
            let value = match v.as_str() {
                Some("$uuid") => Value::String(uuid::Uuid::new_v4().to_string()),
                Some("$now") => Value::String(now.clone()),
                _ => v.clone(),
            };
            let ty = if k == "id" || k.ends_with("_id") {
                "uuid"
            } else if k.ends_with("_at") {
                "timestamptz"
            } else {
                "text"
            };
            columns.push((k.clone(), ty.to_string()));
            record.insert(k.clone(), value);
        }
    }
    let commit = feed::parse_time(&now)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or(now);
    Change {
        schema: schema.into(),
        table: table.into(),
        kind,
        record: (kind != "DELETE").then(|| record.clone()),
        old_record: (kind != "INSERT").then_some(record),
        columns,
        commit_timestamp: commit,
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
        if let Ok(sockets) = self.shared.sockets.lock() {
            for s in sockets.values() {
                s.kill.notify_one();
            }
        }
    }
}

async fn type_names(client: &tokio_postgres::Client) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client.query("select oid::int8, typname::text from pg_type", &[]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, String>(1))).collect())
}

async fn run_feed(shared: Arc<Shared>, client: tokio_postgres::Client, slot: String) {
    let mut types = type_names(&client).await.unwrap_or_default();
    let mut decoder = Decoder::default();
    let query = "select data from pg_logical_slot_get_binary_changes($1, null, null, 'proto_version', '1', 'publication_names', 'supabase_realtime')";
    loop {
        if shared.paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let rows = match client.query(query, &[&slot]).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "Realtime stand-in change feed stopped");
                return;
            }
        };
        if rows.iter().any(|r| r.get::<_, &[u8]>(0).first() == Some(&b'R')) {
            if let Ok(t) = type_names(&client).await {
                types = t;
            }
        }
        let lookup = |oid: u32| types.get(&oid).cloned().unwrap_or_else(|| "text".into());
        let mut changes = Vec::new();
        for row in &rows {
            let data: &[u8] = row.get(0);
            match decoder.feed(data, &lookup) {
                Ok(mut c) => changes.append(&mut c),
                Err(e) => tracing::error!(error = %e, "undecodable pgoutput message"),
            }
        }
        if !changes.is_empty() {
            let latency = shared.latency_ms.load(Ordering::Relaxed);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            for change in &changes {
                shared.dispatch(change);
            }
        }
        let pause = if rows.is_empty() { 10 } else { 1 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

#[derive(Deserialize)]
struct WsParams {
    apikey: Option<String>,
    vsn: Option<String>,
}

fn status_json(status: StatusCode, body: Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

impl Realtime {
    /// Starts the change feed on `db_url` (a temporary logical slot on a dedicated connection).
    pub async fn start(db_url: &str, keys: Arc<Keys>) -> Result<Realtime, RealtimeError> {
        let client = crate::pg::connect(db_url).await?;
        client.batch_execute("set timezone to 'UTC'").await?;
        let slot = format!("standin_{}", uuid::Uuid::new_v4().simple());
        client.query_one("select pg_create_logical_replication_slot($1, 'pgoutput', true)::text", &[&slot]).await?;
        let shared = Arc::new(Shared {
            keys,
            db_url: db_url.to_string(),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
            refuse_joins: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            heartbeat_timeout_ms: AtomicU64::new(60_000),
            events_sent: AtomicU64::new(0),
            catalog: tokio::sync::Mutex::new(None),
        });
        let feed = tokio::spawn(run_feed(shared.clone(), client, slot));
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
                    return status_json(StatusCode::UNAUTHORIZED, json!({"message": "No API key found in request"}));
                };
                if apikey != shared.keys.anon_key && apikey != shared.keys.service_key && shared.keys.verify(&apikey).is_err() {
                    return status_json(StatusCode::UNAUTHORIZED, json!({"message": "Invalid API key"}));
                }
                let Some(vsn) = Vsn::parse(params.vsn.as_deref()) else {
                    return status_json(StatusCode::BAD_REQUEST, json!({"message": "unsupported vsn"}));
                };
                let shared = shared.clone();
                ws.max_message_size(1 << 20)
                    .on_upgrade(move |socket| socket::serve(socket, shared, vsn, apikey))
                    .into_response()
            });
        websocket.or(self.control_routes()).unify().boxed()
    }

    fn control_routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        let control = self.control();
        let service_key = self.shared.keys.service_key.clone();
        let authorized = warp::header::optional::<String>("apikey").and_then(move |key: Option<String>| {
            let ok = key.as_deref() == Some(service_key.as_str());
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        });
        let base = warp::path("_standin").and(warp::path("realtime")).and(authorized).untuple_one();
        let c = control.clone();
        let drop = base.clone().and(warp::path!("drop")).and(warp::post()).map(move || {
            c.drop_all_sockets();
            status_json(StatusCode::OK, json!({"dropped": true}))
        });
        let c = control.clone();
        let refuse = base.clone().and(warp::path!("refuse_joins")).and(warp::post()).and(warp::body::json()).map(move |b: Value| {
            c.set_refuse_joins(b["refuse"].as_bool().unwrap_or(true));
            status_json(StatusCode::OK, json!({"refuse_joins": b["refuse"]}))
        });
        let c = control.clone();
        let pause = base.clone().and(warp::path!("pause")).and(warp::post()).map(move || {
            c.pause_feed();
            status_json(StatusCode::OK, json!({"paused": true}))
        });
        let c = control.clone();
        let resume = base.clone().and(warp::path!("resume")).and(warp::post()).map(move || {
            c.resume_feed();
            status_json(StatusCode::OK, json!({"paused": false}))
        });
        let c = control.clone();
        let latency = base.clone().and(warp::path!("latency")).and(warp::post()).and(warp::body::json()).map(move |b: Value| {
            c.set_latency(Duration::from_millis(b["ms"].as_u64().unwrap_or(0)));
            status_json(StatusCode::OK, json!({"latency_ms": b["ms"]}))
        });
        let c = control.clone();
        let heartbeat = base.clone().and(warp::path!("heartbeat_timeout")).and(warp::post()).and(warp::body::json()).map(move |b: Value| {
            c.set_heartbeat_timeout(Duration::from_millis(b["ms"].as_u64().unwrap_or(60_000)));
            status_json(StatusCode::OK, json!({"heartbeat_timeout_ms": b["ms"]}))
        });
        let c = control.clone();
        let inject = base.clone().and(warp::path!("inject")).and(warp::post()).and(warp::body::json()).then(move |spec: InjectSpec| {
            let c = c.clone();
            async move { status_json(StatusCode::OK, json!({"sent": c.inject(spec).await})) }
        });
        let c = control;
        let stats = base.and(warp::path!("stats")).and(warp::get()).map(move || {
            status_json(StatusCode::OK, json!({"sockets": c.socket_count(), "channels": c.channel_count(), "events_sent": c.events_sent()}))
        });
        drop.or(refuse)
            .unify()
            .or(pause)
            .unify()
            .or(resume)
            .unify()
            .or(latency)
            .unify()
            .or(heartbeat)
            .unify()
            .or(inject)
            .unify()
            .or(stats)
            .unify()
            .boxed()
    }
}
