//! The Realtime backend of the feed: the gateway's one subscription to Supabase Realtime, our own
//! Phoenix channel client.
//!
//! Owns the socket to `SUPABASE_URL/realtime/v1/websocket` (apikey and vsn in the query, wss via
//! rustls), the single `phx_join` with `postgres_changes` bindings and the service role key,
//! heartbeats, loss detection, and reconnecting through the feed's one loop
//! ([`crate::feed::supervise`]). The channel goes through phases ([`channel`]): connect, join, wait
//! for Realtime's "Subscribed to PostgreSQL" (only that makes the subscription
//! [`UpstreamEvent::Live`]), pump. Changes are decoded at the edge ([`event`]) into the feed's
//! typed events and sent to the router in order through a bounded channel. The same socket
//! carries typing between instances ([`broadcast`]: a private Broadcast channel beside the
//! feed's, joined again with it after every reconnect).
//! This module never logs the apikey or the token (URLs are logged without their query), and
//! never decides who receives what.

pub mod broadcast;
mod channel;
pub mod event;
pub mod phoenix;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use event::decode_payload;
pub use phoenix::Vsn;

use crate::feed::supervise;
use crate::feed::{Lost, UpstreamEvent};
use crate::typing::RelayLink;

/// One `postgres_changes` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub event: String,
    pub schema: String,
    pub table: Option<String>,
    pub filter: Option<String>,
}

impl Binding {
    /// A binding on a table of `public`, without a filter.
    pub fn table(event: &str, table: &str) -> Binding {
        Binding { event: event.into(), schema: "public".into(), table: Some(table.into()), filter: None }
    }

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
    /// Covers connecting, the join reply and the "Subscribed to PostgreSQL" system message.
    pub join_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Starts the upstream task; it runs until `stop` is cancelled or the router goes away.
pub fn spawn(
    config: UpstreamConfig,
    events: mpsc::Sender<UpstreamEvent>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::spawn(run(config, events, None, stop))
}

/// The Realtime channel as [`supervise::Attempt`]s: one [`channel::serve`] each.
struct Realtime<'a> {
    config: &'a UpstreamConfig,
    events: &'a mpsc::Sender<UpstreamEvent>,
    stop: &'a CancellationToken,
    generation: u64,
    /// The socket URL without its query (which holds the apikey).
    shown_url: String,
    /// Typing's relay on this socket, if the gateway relays typing through Realtime.
    typing: Option<RelayLink>,
}

impl supervise::Attempt for Realtime<'_> {
    fn attempt(&mut self) -> impl std::future::Future<Output = supervise::Ended> + Send {
        channel::serve(self.config, self.events, self.stop, &mut self.generation, self.typing.as_mut())
    }

    fn log_lost(&self, reason: &Lost, retry_in: Duration) {
        tracing::warn!(url = %self.shown_url, reason = %reason, retry_in_ms = retry_in.as_millis() as u64, "upstream Realtime subscription lost");
    }
}

/// The reconnect loop ([`supervise::supervise`]): one [`channel::serve`] per attempt, one `Down`
/// per loss; with `typing`, each attempt also joins the typing channel and relays its signals.
pub async fn run(
    config: UpstreamConfig,
    events: mpsc::Sender<UpstreamEvent>,
    typing: Option<RelayLink>,
    stop: CancellationToken,
) {
    let shown_url = config.websocket_url.split('?').next().unwrap_or_default().to_string();
    let mut realtime = Realtime { config: &config, events: &events, stop: &stop, generation: 0, shown_url, typing };
    let backoff = supervise::Backoff { min: config.backoff_min, max: config.backoff_max };
    supervise::supervise(&mut realtime, backoff, &events, &stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_serialize_only_set_keys_and_match_echoes() {
        let b = Binding::table("INSERT", "messages");
        assert_eq!(b.to_json(), json!({"event": "INSERT", "schema": "public", "table": "messages"}));
        assert!(b.echoed_by(&json!({"id": 1, "event": "INSERT", "schema": "public", "table": "messages"})));
        assert!(!b.echoed_by(&json!({"id": 1, "event": "INSERT", "schema": "public", "table": "threads"})));
        assert!(!b.echoed_by(
            &json!({"id": 1, "event": "INSERT", "schema": "public", "table": "messages", "filter": "x=eq.1"})
        ));
    }
}
