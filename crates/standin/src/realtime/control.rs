//! Fault and load controls of the Realtime stand-in, for tests and the benchmark.
//!
//! Owns [`RealtimeControl`] (in-process, cheap to clone), the synthetic change injector, and the
//! same controls over HTTP under `/_standin/realtime/...` (service key required as `apikey`, for
//! tests and the benchmark in another process). None of this exists in Supabase; it must never
//! change what a client sees on the wire except through the faults it is asked to cause.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::feed::Change;
use super::Shared;

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

/// Counters and settings, as `GET /_standin/realtime/stats` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RealtimeStats {
    pub sockets: usize,
    pub channels: usize,
    /// Change events written to sockets.
    pub events_sent: u64,
    /// Changes read from PostgreSQL's change feed.
    pub feed_changes: u64,
    /// Synthetic changes injected.
    pub injected: u64,
    /// Sockets dropped because their queue overflowed.
    pub slow_drops: u64,
    pub paused: bool,
    pub refuse_joins: bool,
    /// Joins refused because `refuse_joins` was set.
    #[serde(default)]
    pub joins_refused: u64,
    pub latency_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// Fault and load controls, cheap to clone, usable from tests in-process.
#[derive(Clone)]
pub struct RealtimeControl {
    pub(super) shared: Arc<Shared>,
}

/// Synthetic events are emitted in batches at most this often.
const INJECT_TICK: Duration = Duration::from_millis(1);

impl RealtimeControl {
    /// Drops every socket at once, as a network failure would (no close handshake).
    pub fn drop_all_sockets(&self) {
        for s in self.shared.sockets_snapshot() {
            s.kill.notify_one();
        }
    }

    /// While set, joins are answered with an error ("Realtime was unable to connect to the
    /// project database"); sockets still connect and heartbeat.
    pub fn set_refuse_joins(&self, refuse: bool) {
        self.shared.refuse_joins.store(refuse, Ordering::Relaxed);
    }

    /// Stops reading the change feed; changes committed meanwhile follow on resume, in order
    /// (like replication lag).
    pub fn pause_feed(&self) {
        self.shared.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume_feed(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// Delay added to each outgoing change event (committed or injected); zero turns it off.
    /// Replies and other frames are not delayed; the feed itself is never stalled by it.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// A socket that sent nothing for this long is closed (default 60 s).
    pub fn set_heartbeat_timeout(&self, timeout: Duration) {
        self.shared.heartbeat_timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// How many change events a socket connecting from now on may have queued before it is
    /// dropped as too slow (default 16384).
    pub fn set_socket_queue_capacity(&self, events: usize) {
        self.shared.queue_capacity.store(events.max(1), Ordering::Relaxed);
    }

    pub fn socket_count(&self) -> usize {
        self.shared.sockets_snapshot().len()
    }

    pub fn channel_count(&self) -> usize {
        super::channel::channel_count(self.shared.sockets_snapshot().iter())
    }

    /// Change events written to sockets so far.
    pub fn events_sent(&self) -> u64 {
        self.shared.events_sent.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> RealtimeStats {
        let s = &self.shared;
        RealtimeStats {
            sockets: self.socket_count(),
            channels: self.channel_count(),
            events_sent: s.events_sent.load(Ordering::Relaxed),
            feed_changes: s.feed_changes.load(Ordering::Relaxed),
            injected: s.injected.load(Ordering::Relaxed),
            slow_drops: s.slow_drops.load(Ordering::Relaxed),
            paused: s.paused.load(Ordering::Relaxed),
            refuse_joins: s.refuse_joins.load(Ordering::Relaxed),
            joins_refused: s.joins_refused.load(Ordering::Relaxed),
            latency_ms: s.latency_ms.load(Ordering::Relaxed),
            heartbeat_timeout_ms: s.heartbeat_timeout_ms.load(Ordering::Relaxed),
        }
    }

    /// Emits `spec.count` synthetic change events at `spec.rate_per_sec`, not limited by
    /// PostgreSQL, cycling through `spec.rows`; returns how many were emitted. Pacing follows
    /// the wall clock (event `i` is due at `i / rate` seconds), emitted in small batches per
    /// millisecond tick; each event is stamped (`$now`, commit timestamp) just before it is
    /// handed to the sockets.
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
        let mut tick = tokio::time::interval(INJECT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < spec.count {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(spec.count);
            let batch: Vec<Change> = (sent..due)
                .map(|i| synthetic(&spec.schema, &spec.table, kind, &spec.rows[(i as usize) % spec.rows.len()]))
                .collect();
            sent = due;
            self.shared.injected.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.shared.dispatch(&batch);
        }
        sent
    }
}

/// One synthetic change from a template row, stamped now.
fn synthetic(schema: &str, table: &str, kind: &'static str, template: &Value) -> Change {
    let now = Utc::now();
    let stamp = now.to_rfc3339_opts(SecondsFormat::Micros, false);
    let mut record = Map::new();
    let mut columns = Vec::new();
    if let Some(obj) = template.as_object() {
        for (k, v) in obj {
            let value = match v.as_str() {
                Some("$uuid") => Value::String(uuid::Uuid::new_v4().to_string()),
                Some("$now") => Value::String(stamp.clone()),
                _ => v.clone(),
            };
            columns.push((k.clone(), column_type(k, &value).to_string()));
            record.insert(k.clone(), value);
        }
    }
    let keys = if record.contains_key("id") { vec!["id".to_string()] } else { Vec::new() };
    Change {
        schema: schema.into(),
        table: table.into(),
        kind,
        record: (kind != "DELETE").then(|| record.clone()),
        old_record: (kind != "INSERT").then_some(record),
        columns,
        keys,
        commit_timestamp: now.to_rfc3339_opts(SecondsFormat::Micros, true),
        synthetic: true,
    }
}

/// A plausible column type for a synthetic value.
fn column_type(name: &str, value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int8",
        Value::Number(_) => "float8",
        Value::Object(_) | Value::Array(_) => "jsonb",
        _ if name == "id" || name.ends_with("_id") => "uuid",
        _ if name.ends_with("_at") => "timestamptz",
        _ => "text",
    }
}

fn reply(status: StatusCode, body: Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

#[derive(Deserialize)]
struct Refuse {
    refuse: bool,
}

#[derive(Deserialize)]
struct Millis {
    ms: u64,
}

/// `/_standin/realtime/{drop,refuse_joins,pause,resume,latency,heartbeat_timeout,inject,stats}`.
pub fn routes(control: RealtimeControl, service_key: String) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let base = warp::path!("_standin" / "realtime" / String)
        .and(warp::method())
        .and(warp::header::optional::<String>("apikey"))
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::body::bytes());
    base.then(
        move |action: String,
              method: warp::http::Method,
              header: Option<String>,
              query: std::collections::HashMap<String, String>,
              body: bytes::Bytes| {
            let control = control.clone();
            let authorized = header.or_else(|| query.get("apikey").cloned()).as_deref() == Some(service_key.as_str());
            async move {
                if !authorized {
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        json!({"message": "the service role key is required as apikey"}),
                    );
                }
                handle(&control, &action, &method, &body).await
            }
        },
    )
    .boxed()
}

async fn handle(
    control: &RealtimeControl,
    action: &str,
    method: &warp::http::Method,
    body: &[u8],
) -> warp::reply::Response {
    fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<warp::reply::Response>> {
        serde_json::from_slice(body)
            .map_err(|e| Box::new(reply(StatusCode::BAD_REQUEST, json!({"message": format!("bad body: {e}")}))))
    }
    let post = method == warp::http::Method::POST;
    let result = match (action, post) {
        ("stats", false) => Ok(json!(control.stats())),
        ("drop", true) => {
            let sockets = control.socket_count();
            control.drop_all_sockets();
            Ok(json!({"dropped": sockets}))
        }
        ("refuse_joins", true) => parse::<Refuse>(body).map(|b| {
            control.set_refuse_joins(b.refuse);
            json!({"refuse_joins": b.refuse})
        }),
        ("pause", true) => {
            control.pause_feed();
            Ok(json!({"paused": true}))
        }
        ("resume", true) => {
            control.resume_feed();
            Ok(json!({"paused": false}))
        }
        ("latency", true) => parse::<Millis>(body).map(|b| {
            control.set_latency(Duration::from_millis(b.ms));
            json!({"latency_ms": b.ms})
        }),
        ("heartbeat_timeout", true) => parse::<Millis>(body).map(|b| {
            control.set_heartbeat_timeout(Duration::from_millis(b.ms));
            json!({"heartbeat_timeout_ms": b.ms})
        }),
        ("inject", true) => match parse::<InjectSpec>(body) {
            Ok(spec) => Ok(json!({"sent": control.inject(spec).await})),
            Err(e) => Err(e),
        },
        ("stats" | "drop" | "refuse_joins" | "pause" | "resume" | "latency" | "heartbeat_timeout" | "inject", _) => {
            Err(Box::new(reply(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "method not allowed"}))))
        }
        _ => Err(Box::new(reply(StatusCode::NOT_FOUND, json!({"message": format!("no control named {action}")})))),
    };
    match result {
        Ok(body) => reply(StatusCode::OK, body),
        Err(response) => *response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_events_are_stamped_and_fresh() {
        let template = json!({"id": "$uuid", "thread_id": "t", "created_at": "$now", "n": 1, "meta": {"a": 1}});
        let a = synthetic("public", "messages", "INSERT", &template);
        let b = synthetic("public", "messages", "INSERT", &template);
        let (ra, rb) = (a.record.as_ref().expect("record"), b.record.as_ref().expect("record"));
        assert_ne!(ra["id"], rb["id"]);
        assert!(uuid::Uuid::parse_str(ra["id"].as_str().unwrap_or_default()).is_ok());
        let stamp = ra["created_at"].as_str().unwrap_or_default();
        assert!(stamp.ends_with("+00:00") && stamp.len() == "2026-01-01T12:00:00.123456+00:00".len(), "{stamp}");
        let commit = chrono::DateTime::parse_from_rfc3339(&a.commit_timestamp).expect("rfc3339");
        assert_eq!(commit, chrono::DateTime::parse_from_rfc3339(stamp).expect("rfc3339"), "the same instant");
        assert!(a.synthetic && a.old_record.is_none());
        assert_eq!(a.keys, vec!["id".to_string()]);
        let types: Vec<&str> = a.columns.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(a.columns.len(), 5);
        assert!(
            types.contains(&"uuid")
                && types.contains(&"timestamptz")
                && types.contains(&"int8")
                && types.contains(&"jsonb")
        );
        let d = synthetic("public", "messages", "DELETE", &template);
        assert!(d.record.is_none() && d.old_record.is_some());
    }

    #[test]
    fn inject_spec_json_defaults_to_insert() {
        let spec: InjectSpec = serde_json::from_value(json!({
            "schema": "public", "table": "messages", "rows": [{"id": "$uuid"}], "rate_per_sec": 10, "count": 1
        }))
        .expect("spec");
        assert_eq!(spec.change_type, "INSERT");
    }
}
