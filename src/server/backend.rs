//! The backend seam, chosen once per start: the store and the change feed a configuration's
//! backend selects (Supabase: PostgREST and the Realtime channel; PostgreSQL: the pool and the
//! replication slot). Builds them from the configuration's parts; the feed starts only when
//! [`Feed::spawn`] is called, once its consumer runs, with typing's relay of the same backend
//! (Realtime Broadcast on the feed's socket, or LISTEN/NOTIFY on a connection of its own).
//! Never logs a key or the connection string.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::StartError;
use crate::auth::Verifier;
use crate::config::{Backend, Config, FeedSettings, RealtimeVsn, SupabaseProject};
use crate::feed::postgres::{self as pg_feed, FeedConfig, FeedHandles, SlotLag};
use crate::feed::realtime::{self, Binding, UpstreamConfig, Vsn};
use crate::feed::{UpstreamEvent, Watermark, MEMBERSHIP_EVENTS_TABLE};
use crate::metrics::Metrics;
use crate::store::postgres::PgStore;
use crate::store::Store;
use crate::typing::postgres::{self as typing_relay, RelayConfig};
use crate::typing::RelayLink;

/// Rows read from the replication slot in one call.
const SLOT_BATCH: i32 = 10_000;

/// The change feed of the backend, not yet started.
pub(super) enum Feed {
    Realtime(UpstreamConfig),
    Postgres(FeedConfig),
}

/// The store and the feed of `config`'s backend.
pub(super) fn open(
    config: &Config,
    http: reqwest::Client,
    verifier: &Arc<Verifier>,
    metrics: &Arc<Metrics>,
) -> Result<(Store, Feed), StartError> {
    let timeout = config.backend_timeout;
    let (store, feed) = match &config.backend {
        Backend::Supabase(project) => {
            let (anon, service) = (project.anon_key.clone(), project.service_role_key.clone());
            let store = Store::new(http, project.rest_url(), anon, service, timeout);
            (store, Feed::Realtime(upstream_config(&config.feed, project)))
        }
        Backend::Postgres(settings) => {
            let store = Store::Pg(PgStore::connect(settings, verifier.clone(), timeout)?);
            let feed = FeedConfig {
                pg: crate::pg::connection_config(settings)?,
                slot: settings.slot_name.clone(),
                publication: pg_feed::PUBLICATION.to_string(),
                read: settings.slot_read,
                poll: settings.poll_interval,
                batch: SLOT_BATCH,
                connect_timeout: config.feed.join_timeout,
                backoff_min: config.feed.backoff_min,
                backoff_max: config.feed.backoff_max,
            };
            (store, Feed::Postgres(feed))
        }
    };
    Ok((store.with_metrics(metrics.clone()), feed))
}

/// A second store of `config`'s backend for the push path, with its own HTTP client (Supabase)
/// or pool (PostgreSQL): called on the push runtime, so that every connection it opens is driven
/// there and none is shared with the main runtime.
pub(super) fn push_store(
    config: &Config,
    verifier: &Arc<Verifier>,
    metrics: &Arc<Metrics>,
) -> Result<Store, StartError> {
    let timeout = config.backend_timeout;
    let store = match &config.backend {
        Backend::Supabase(project) => {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(super::PUSH_HTTP_IDLE_PER_HOST)
                .connect_timeout(timeout)
                .build()
                .map_err(|e| StartError::Http(e.to_string()))?;
            let (anon, service) = (project.anon_key.clone(), project.service_role_key.clone());
            Store::new(http, project.rest_url(), anon, service, timeout)
        }
        Backend::Postgres(settings) => Store::Pg(PgStore::connect(settings, verifier.clone(), timeout)?),
    };
    Ok(store.with_metrics(metrics.clone()))
}

/// The upstream subscription the gateway needs: new messages, and membership, read-state and
/// realtime-switch changes through `chat_membership_events` (INSERTs only: its DELETEs are the
/// pruning of old events).
pub fn upstream_config(feed: &FeedSettings, project: &SupabaseProject) -> UpstreamConfig {
    UpstreamConfig {
        websocket_url: project.realtime_websocket_url(),
        apikey: project.anon_key.clone(),
        access_token: project.service_role_key.clone(),
        vsn: match feed.vsn {
            RealtimeVsn::V1 => Vsn::V1,
            RealtimeVsn::V2 => Vsn::V2,
        },
        topic: feed.topic.clone(),
        bindings: vec![Binding::table("INSERT", "messages"), Binding::table("INSERT", MEMBERSHIP_EVENTS_TABLE)],
        heartbeat_interval: feed.heartbeat,
        join_timeout: feed.join_timeout,
        backoff_min: feed.backoff_min,
        backoff_max: feed.backoff_max,
    }
}

impl Feed {
    /// What the start-up log names as the backend.
    pub(super) fn describe(&self) -> String {
        match self {
            Feed::Realtime(upstream) => format!("supabase upstream={}", upstream.websocket_url),
            Feed::Postgres(feed) => format!("postgres slot={}", feed.slot),
        }
    }

    /// Starts the feed into `events` and typing's relay with `typing`; on PostgreSQL, also
    /// returns the slot's lag for `/metrics`.
    pub(super) fn spawn(
        self,
        events: mpsc::Sender<UpstreamEvent>,
        watermark: Arc<Watermark>,
        typing: RelayLink,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Option<Arc<SlotLag>> {
        match self {
            Feed::Realtime(config) => {
                tasks.spawn(realtime::run(config, events, Some(typing), stop));
                None
            }
            Feed::Postgres(config) => {
                let relay = RelayConfig {
                    pg: config.pg.clone(),
                    connect_timeout: config.connect_timeout,
                    backoff_min: config.backoff_min,
                    backoff_max: config.backoff_max,
                };
                tasks.spawn(typing_relay::run(relay, typing, stop.clone()));
                let lag = Arc::new(SlotLag::default());
                let handles = FeedHandles { watermark, lag: lag.clone() };
                tasks.spawn(pg_feed::run(config, events, handles, stop));
                Some(lag)
            }
        }
    }
}
