//! Upstream: the gateway's one subscription to Supabase Realtime, our own Phoenix channel client.
//!
//! Owns the socket to `SUPABASE_URL/realtime/v1/websocket` (apikey and vsn in the query, wss via
//! rustls), the single `phx_join` with `postgres_changes` bindings and the service role key, the
//! check that the server echoed our bindings, heartbeats, and loss detection (socket error or
//! close, a heartbeat reply missing by the next tick, `phx_error`/`phx_close` on our topic, a
//! `system` error, a refused or timed-out join). It reconnects with exponential backoff and
//! jitter and re-joins. Only Realtime's `system` "Subscribed to PostgreSQL" makes the
//! subscription [`UpstreamEvent::Live`]: rows committed before that may be missed, and the hub
//! covers the window by catching up from the database. Events go to the hub in order through a
//! bounded channel. This module never logs the apikey or the token (URLs are logged without their
//! query), and never decides who receives what.

pub mod phoenix;

use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub use phoenix::Vsn;
use phoenix::{decode_any, encode, Frame};

/// One `postgres_changes` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub event: String,
    pub schema: String,
    pub table: Option<String>,
    pub filter: Option<String>,
}

impl Binding {
    fn to_json(&self) -> Value {
        let mut v = json!({"event": self.event, "schema": self.schema});
        if let Some(t) = &self.table {
            v["table"] = json!(t);
        }
        if let Some(f) = &self.filter {
            v["filter"] = json!(f);
        }
        v
    }

    /// Whether the server's echo of this binding matches it key by key (as realtime-js checks).
    fn echoed_by(&self, server: &Value) -> bool {
        let same = |key: &str, ours: Option<&str>| server.get(key).and_then(Value::as_str) == ours;
        same("event", Some(&self.event))
            && same("schema", Some(&self.schema))
            && same("table", self.table.as_deref())
            && same("filter", self.filter.as_deref())
    }
}

/// How to reach and subscribe to Realtime.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub websocket_url: String,
    pub apikey: String,
    pub access_token: String,
    pub vsn: Vsn,
    pub topic: String,
    pub bindings: Vec<Binding>,
    pub heartbeat_interval: Duration,
    /// Covers the join reply and the "Subscribed to PostgreSQL" system message.
    pub join_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// What the upstream tells the hub.
#[derive(Debug, Clone)]
pub enum UpstreamEvent {
    /// Joined and Realtime confirmed "Subscribed to PostgreSQL". `generation` counts successful
    /// subscriptions since start: above 1, the hub must catch up the gap.
    Live {
        generation: u64,
    },
    /// The subscription is lost; sent once per loss, not once per retry.
    Down {
        reason: String,
    },
    Change(Change),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// A `postgres_changes` event.
#[derive(Debug, Clone)]
pub struct Change {
    pub schema: String,
    pub table: String,
    pub kind: ChangeKind,
    pub commit_timestamp: Option<String>,
    pub record: Value,
    pub old_record: Value,
    pub errors: Option<Value>,
    pub ids: Vec<i64>,
}

impl Change {
    /// Reads the payload of a `postgres_changes` push.
    pub fn from_payload(payload: &Value) -> Option<Change> {
        let data = payload.get("data")?;
        let kind = match data.get("type")?.as_str()? {
            "INSERT" => ChangeKind::Insert,
            "UPDATE" => ChangeKind::Update,
            "DELETE" => ChangeKind::Delete,
            _ => return None,
        };
        Some(Change {
            schema: data.get("schema")?.as_str()?.to_string(),
            table: data.get("table")?.as_str()?.to_string(),
            kind,
            commit_timestamp: data.get("commit_timestamp").and_then(Value::as_str).map(str::to_string),
            record: data.get("record").cloned().unwrap_or(Value::Null),
            old_record: data.get("old_record").cloned().unwrap_or(Value::Null),
            errors: data.get("errors").cloned().filter(|e| !e.is_null()),
            ids: payload
                .get("ids")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default(),
        })
    }
}

enum Outcome {
    Shutdown,
    Lost { reason: String, was_live: bool },
}

/// Starts the upstream task.
pub fn spawn(
    config: UpstreamConfig,
    events: mpsc::Sender<UpstreamEvent>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::spawn(run(config, events, shutdown))
}

fn backoff(config: &UpstreamConfig) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.backoff_min)
        .with_max_delay(config.backoff_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(config: UpstreamConfig, events: mpsc::Sender<UpstreamEvent>, mut shutdown: watch::Receiver<bool>) {
    let mut generation = 0u64;
    let mut delays = backoff(&config);
    let mut reported = false;
    let shown_url = config.websocket_url.split('?').next().unwrap_or_default().to_string();
    loop {
        if *shutdown.borrow() {
            return;
        }
        match connect_and_serve(&config, &events, &mut shutdown, &mut generation).await {
            Outcome::Shutdown => return,
            Outcome::Lost { reason, was_live } => {
                if was_live {
                    delays = backoff(&config);
                    reported = false;
                }
                if !reported {
                    reported = true;
                    if events.send(UpstreamEvent::Down { reason: reason.clone() }).await.is_err() {
                        return;
                    }
                }
                let delay = delays.next().unwrap_or(config.backoff_max);
                tracing::warn!(url = %shown_url, %reason, retry_in_ms = delay.as_millis() as u64, "upstream Realtime subscription lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Conn {
    ws: Socket,
    vsn: Vsn,
    next_ref: u64,
}

impl Conn {
    fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn push(
        &mut self,
        join_ref: Option<String>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<String, String> {
        let reference = self.next_ref();
        let frame =
            Frame { join_ref, reference: Some(reference.clone()), topic: topic.into(), event: event.into(), payload };
        self.ws.send(Message::text(encode(&frame, self.vsn))).await.map_err(|e| format!("send failed: {e}"))?;
        Ok(reference)
    }

    /// The next Phoenix frame; Err with a reason when the socket is gone.
    async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => match decode_any(text.as_str()) {
                    Ok(frame) => return Ok(frame),
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable upstream frame"),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => format!("socket closed by Realtime ({} {})", u16::from(f.code), f.reason),
                        None => "socket closed by Realtime".into(),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("socket error: {e}")),
                None => return Err("socket closed".into()),
            }
        }
    }
}

fn connect_error(e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(response) if matches!(response.status().as_u16(), 401 | 403) => {
            format!("Realtime refused the connection (HTTP {}): check SUPABASE_ANON_KEY", response.status().as_u16())
        }
        E::Http(response) => format!("Realtime refused the connection (HTTP {})", response.status().as_u16()),
        other => format!("cannot connect to Realtime: {other}"),
    }
}

async fn connect_and_serve(
    config: &UpstreamConfig,
    events: &mpsc::Sender<UpstreamEvent>,
    shutdown: &mut watch::Receiver<bool>,
    generation: &mut u64,
) -> Outcome {
    let lost = |reason: String, was_live: bool| Outcome::Lost { reason, was_live };
    let url =
        format!("{}?apikey={}&vsn={}", config.websocket_url, urlencoding::encode(&config.apikey), config.vsn.as_str());
    // disable_nagle: heartbeats and leaves are small writes that must not wait for an ACK.
    let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
    let ws = tokio::select! {
        r = tokio::time::timeout(config.join_timeout, connecting) => match r {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return lost(connect_error(e), false),
            Err(_) => return lost("timed out connecting to Realtime".into(), false),
        },
        _ = shutdown.changed() => return Outcome::Shutdown,
    };
    let mut conn = Conn { ws, vsn: config.vsn, next_ref: 0 };
    let bindings: Vec<Value> = config.bindings.iter().map(Binding::to_json).collect();
    let join_payload = json!({
        "config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                   "postgres_changes": bindings, "private": false},
        "access_token": config.access_token,
    });
    let join_ref = match conn.push(None, &config.topic, "phx_join", join_payload).await {
        Ok(r) => r,
        Err(e) => return lost(e, false),
    };
    // phx_join carries its own ref as join_ref in Phoenix; later pushes name it.
    let join_ref = Some(join_ref);

    // Wait for the ok reply, then for "Subscribed to PostgreSQL".
    let deadline = tokio::time::Instant::now() + config.join_timeout;
    let mut joined = false;
    loop {
        let frame = tokio::select! {
            r = tokio::time::timeout_at(deadline, conn.next_frame()) => match r {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return lost(e, false),
                Err(_) => return lost(if joined { "Realtime never confirmed the subscription (no \"Subscribed to PostgreSQL\")".into() } else { "join timed out".into() }, false),
            },
            _ = shutdown.changed() => return Outcome::Shutdown,
        };
        if frame.topic != config.topic {
            continue;
        }
        match frame.event.as_str() {
            "phx_reply" if frame.reference == join_ref => {
                let status = frame.payload.get("status").and_then(Value::as_str).unwrap_or_default();
                if status != "ok" {
                    let reason =
                        frame.payload.pointer("/response/reason").and_then(Value::as_str).unwrap_or("no reason given");
                    return lost(format!("join refused: {reason}"), false);
                }
                let echoed = frame
                    .payload
                    .pointer("/response/postgres_changes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let matches = echoed.len() == config.bindings.len()
                    && config.bindings.iter().zip(echoed.iter()).all(|(b, s)| b.echoed_by(s));
                if !matches {
                    return lost("mismatch between server and client bindings for postgres changes".into(), false);
                }
                joined = true;
            }
            "system" => {
                let status = frame.payload.get("status").and_then(Value::as_str).unwrap_or_default();
                let message = frame.payload.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
                if status == "error" {
                    return lost(format!("Realtime system error: {message}"), false);
                }
                if joined && frame.payload.get("extension").and_then(Value::as_str) == Some("postgres_changes") {
                    break;
                }
            }
            "phx_error" | "phx_close" => return lost(format!("channel {} during join", frame.event), false),
            _ => {}
        }
    }
    *generation += 1;
    tracing::info!(generation = *generation, topic = %config.topic, "upstream subscribed to PostgreSQL changes");
    if events.send(UpstreamEvent::Live { generation: *generation }).await.is_err() {
        return Outcome::Shutdown;
    }

    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + config.heartbeat_interval, config.heartbeat_interval);
    let mut pending: Option<String> = None;
    loop {
        let frame = tokio::select! {
            _ = shutdown.changed() => {
                leave(&mut conn, config, join_ref.clone()).await;
                return Outcome::Shutdown;
            }
            _ = heartbeat.tick() => {
                if pending.is_some() {
                    return lost("heartbeat reply missing".into(), true);
                }
                match conn.push(None, "phoenix", "heartbeat", json!({})).await {
                    Ok(r) => pending = Some(r),
                    Err(e) => return lost(e, true),
                }
                continue;
            }
            frame = conn.next_frame() => match frame {
                Ok(f) => f,
                Err(e) => return lost(e, true),
            },
        };
        if frame.topic == "phoenix" {
            if frame.event == "phx_reply" && frame.reference.is_some() && frame.reference == pending {
                pending = None;
            }
            continue;
        }
        if frame.topic != config.topic {
            continue;
        }
        match frame.event.as_str() {
            "postgres_changes" => match Change::from_payload(&frame.payload) {
                Some(change) => {
                    if events.send(UpstreamEvent::Change(change)).await.is_err() {
                        return Outcome::Shutdown;
                    }
                }
                None => tracing::warn!("ignoring a postgres_changes push without a readable data object"),
            },
            "phx_error" => return lost("channel crashed on the server (phx_error)".into(), true),
            "phx_close" => return lost("channel closed by the server (phx_close)".into(), true),
            "system" if frame.payload.get("status").and_then(Value::as_str) == Some("error") => {
                let message = frame.payload.get("message").and_then(Value::as_str).unwrap_or("unknown");
                return lost(format!("Realtime system error: {message}"), true);
            }
            _ => {}
        }
    }
}

async fn leave(conn: &mut Conn, config: &UpstreamConfig, join_ref: Option<String>) {
    let Ok(reference) = conn.push(join_ref, &config.topic, "phx_leave", json!({})).await else { return };
    let wait = async {
        while let Ok(frame) = conn.next_frame().await {
            if frame.event == "phx_reply" && frame.reference.as_deref() == Some(reference.as_str()) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
    let _ = conn.ws.close(None).await;
    tracing::info!(topic = %config.topic, "left the upstream channel");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_serialize_only_set_keys_and_match_echoes() {
        let b =
            Binding { event: "INSERT".into(), schema: "public".into(), table: Some("messages".into()), filter: None };
        assert_eq!(b.to_json(), json!({"event": "INSERT", "schema": "public", "table": "messages"}));
        assert!(b.echoed_by(&json!({"id": 1, "event": "INSERT", "schema": "public", "table": "messages"})));
        assert!(!b.echoed_by(&json!({"id": 1, "event": "INSERT", "schema": "public", "table": "threads"})));
        assert!(!b.echoed_by(
            &json!({"id": 1, "event": "INSERT", "schema": "public", "table": "messages", "filter": "x=eq.1"})
        ));
    }

    #[test]
    fn reads_change_payloads() {
        let payload = json!({"ids": [5], "data": {"schema": "public", "table": "thread_participants", "type": "DELETE",
            "commit_timestamp": "2026-01-01T00:00:00Z", "old_record": {"thread_id": "t", "user_id": "u"}, "errors": null}});
        let c = Change::from_payload(&payload).expect("valid");
        assert_eq!(c.kind, ChangeKind::Delete);
        assert_eq!(c.ids, vec![5]);
        assert!(c.record.is_null());
        assert!(c.errors.is_none());
        assert!(Change::from_payload(&json!({"data": {"type": "TRUNCATE"}})).is_none());
        assert!(Change::from_payload(&json!({})).is_none());
    }
}
