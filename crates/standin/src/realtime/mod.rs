//! Realtime stand-in (STUB: interface only; being implemented).
//!
//! Public interface the rest of the crate relies on; the implementation fills it in.

use std::sync::Arc;
use std::time::Duration;

use crate::keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A running Realtime stand-in bound to one database.
pub struct Realtime {
    control: RealtimeControl,
}

/// What to inject: rows cycled through at `rate_per_sec` until `count` events were sent.
/// String values "$uuid" and "$now" in a row are replaced by a fresh uuid / the emission time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InjectSpec {
    pub schema: String,
    pub table: String,
    #[serde(rename = "type", default = "default_insert")]
    pub change_type: String,
    pub rows: Vec<serde_json::Value>,
    pub rate_per_sec: u64,
    pub count: u64,
}

fn default_insert() -> String {
    "INSERT".into()
}

/// Fault and load controls, cheap to clone, usable from tests in-process.
#[derive(Clone, Default)]
pub struct RealtimeControl {}

impl RealtimeControl {
    pub fn drop_all_sockets(&self) {}
    pub fn set_refuse_joins(&self, _refuse: bool) {}
    pub fn pause_feed(&self) {}
    pub fn resume_feed(&self) {}
    pub fn set_latency(&self, _latency: Duration) {}
    pub fn set_heartbeat_timeout(&self, _timeout: Duration) {}
    pub fn socket_count(&self) -> usize {
        0
    }
    pub async fn inject(&self, _spec: InjectSpec) -> u64 {
        0
    }
}

impl Realtime {
    pub async fn start(_db_url: &str, _keys: Arc<Keys>) -> Result<Realtime, RealtimeError> {
        Ok(Realtime { control: RealtimeControl::default() })
    }

    pub fn control(&self) -> RealtimeControl {
        self.control.clone()
    }

    /// `/realtime/v1/websocket` and `/_standin/realtime/...`.
    pub fn routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        use warp::{Filter, Reply};
        warp::path!("realtime" / "v1" / "websocket")
            .map(|| warp::http::StatusCode::NOT_IMPLEMENTED.into_response())
            .boxed()
    }
}
