//! The push endpoints of the REST API: `GET /api/chat/push/vapid-public-key`, the public half of
//! the gateway's VAPID key, which a web app passes as `applicationServerKey` when it subscribes
//! to Web Push (after sign-in, so behind the same bearer token as the other chat endpoints).
//! Never serves anything of the private key.

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Json, WithStatus};
use warp::{Filter, Rejection};

use super::{ok, respond, with_caller, with_state, ApiState, Caller};
use crate::error::PeerError;

/// `/api/chat/push/vapid-public-key`, for a verified caller only.
pub(super) fn routes(state: ApiState) -> impl Filter<Extract = (WithStatus<Json>,), Error = Rejection> + Clone {
    warp::path!("api" / "chat" / "push" / "vapid-public-key")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(with_caller(state))
        .map(|s: ApiState, _caller: Caller| respond(vapid_public_key(&s)))
}

fn vapid_public_key(state: &ApiState) -> Result<WithStatus<Json>, PeerError> {
    let key = state.vapid_public_key.as_deref().ok_or_else(|| {
        PeerError::new(StatusCode::NOT_FOUND, "Web Push is not configured on this gateway (no VAPID_PRIVATE_KEY)")
    })?;
    // `data` as documented, and `public_key` at the top level like the other chat endpoints.
    Ok(ok(json!({"status": "success", "data": {"public_key": key}, "public_key": key})))
}
