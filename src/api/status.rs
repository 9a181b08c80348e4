//! The gateway's own status over HTTP: `/healthz` (the process answers), `/readyz` (ready to
//! take sessions: upstream live, no gap to fill, not draining) and `/metrics` (the Prometheus
//! text, behind `METRICS_TOKEN` when it is set). All read-only (GET or HEAD); none needs a user.

use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection, Reply};

use super::{error_reply, ok, with_state, ApiState};
use crate::edge::Edge;
use crate::error::PeerError;

/// What `/metrics` reads besides the REST state: its token and the gauges sampled at scrape time.
pub struct Ops {
    pub edge: Arc<Edge>,
    /// `METRICS_TOKEN`: when set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// The PostgreSQL backend's replication-slot lag (None on Supabase).
    pub slot_lag: Option<Arc<crate::feed::postgres::SlotLag>>,
}

/// GET or HEAD: health and metrics never change anything.
fn read_only() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// `/healthz`: always ok while the process serves.
pub(super) fn health() -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    warp::path("healthz").and(warp::path::end()).and(read_only()).map(|| ok(json!({"status": "ok"})))
}

/// `/readyz`: 200 when ready, else 503 with why (draining, or the upstream not ready).
pub(super) fn ready(state: ApiState) -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    warp::path("readyz").and(warp::path::end()).and(read_only()).and(with_state(state)).map(|s: ApiState| {
        if s.readiness.is_ready() {
            ok(json!({"status": "ready", "upstream": "live"}))
        } else {
            // Draining: the instance is shutting down, whatever the upstream's state.
            let (status, upstream) = match (s.readiness.is_draining(), s.readiness.upstream_live()) {
                (true, true) => ("draining", "live"),
                (true, false) => ("draining", "down"),
                (false, _) => ("not_ready", "down"),
            };
            warp::reply::with_status(
                warp::reply::json(&json!({"status": status, "upstream": upstream})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    })
}

/// `/metrics`.
pub(super) fn metrics(state: ApiState) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(read_only())
        .and(with_state(state))
        .and(warp::header::optional::<String>("authorization"))
        .map(|s: ApiState, auth: Option<String>| metrics_reply(&s, auth.as_deref()))
}

/// `/metrics`: the Prometheus text, behind `METRICS_TOKEN` when it is set.
fn metrics_reply(state: &ApiState, authorization: Option<&str>) -> warp::reply::Response {
    if let Some(expected) = &state.ops.metrics_token {
        if !crate::auth::bearer_matches(authorization, expected) {
            let e = PeerError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: metrics need Authorization: Bearer <METRICS_TOKEN>",
            );
            return error_reply(&e).into_response();
        }
    }
    let hub = &state.hub;
    let edge = state.ops.edge.stats();
    let sampled = crate::metrics::Sampled {
        sessions: hub.session_count(),
        users: hub.user_count(),
        upstream_live: state.readiness.upstream_live(),
        upstream_ready: state.readiness.upstream_ready(),
        ready: state.readiness.is_ready(),
        draining: state.readiness.is_draining(),
        edge_open_connections: edge.open_connections,
        edge_pending_handshakes: edge.pending_handshakes,
        slot_lag_bytes: state.ops.slot_lag.as_ref().and_then(|lag| lag.bytes()),
        rest_rate_keys: state.rate.keys(),
        auth_failure_keys: state.verifier.failure_keys(),
        subscribe_check_keys: state.budgets.subscribe_keys(),
        resume_replay_keys: state.budgets.resume_keys(),
    };
    warp::reply::with_header(state.metrics.render(&sampled), "content-type", crate::metrics::CONTENT_TYPE)
        .into_response()
}
