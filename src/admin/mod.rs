//! The operator page: `/admin` (static HTML with its script and styles as files, so that its
//! Content-Security-Policy allows no inline code) and its JSON endpoints under `/admin/api/...`.
//! Every answer carries the CSP, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.
//!
//! Off unless `ADMIN_TOKEN` is set: every `/admin` path then answers 404 as if it did not exist.
//! The page itself is public static HTML (a login form); it keeps the token in `sessionStorage`
//! and sends it as `Authorization: Bearer` to the JSON endpoints, which compare it in constant
//! time. Owns: the overview (sessions, users online, deliveries counter, upstream state,
//! readiness, the recent disconnects the sessions record in the hub's [`Disconnects`], the push
//! queue as the push decision loop last read it, never read from here) and
//! disconnecting one user's sessions (close 1008 "disconnected by an operator"). Reads only its
//! own [`AdminState`]: the REST API mounts these routes, and nothing here knows the API. Must
//! never accept the token in a URL, log it, or show message content.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::auth::bearer_matches;
use crate::close;
use crate::error::PeerError;
use crate::hub::{Disconnects, Hub};
use crate::metrics::Metrics;
use crate::model::format_time;
use crate::readiness::Readiness;

/// The page, its script and its styles, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLES: &str = include_str!("page.css");

/// The page's Content-Security-Policy: its own script, styles and API only; no inline code, no
/// framing, no form posts, no other origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers every `/admin` answer carries.
fn secured(mut response: warp::reply::Response) -> warp::reply::Response {
    use warp::http::header::{
        HeaderValue, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// A static file of the page under `/admin/<name>`.
fn asset(
    state: State,
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path("admin")
        .and(warp::path(name))
        .and(warp::path::end())
        .and(warp::get())
        .and(enabled(state))
        .map(move |_| warp::reply::with_header(body, warp::http::header::CONTENT_TYPE, content_type).into_response())
}

/// Most online users listed in one overview.
const ONLINE_LISTED: usize = 500;

/// What the operator page reads and acts on.
pub struct AdminState {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The recent disconnects, as the sessions recorded them.
    pub disconnects: Arc<Disconnects>,
    /// `ADMIN_TOKEN`: when set, `/admin` exists and needs it.
    pub token: Option<String>,
}

/// The state every filter of the page shares.
type State = Arc<AdminState>;

#[derive(Debug)]
struct Refused(PeerError);

impl warp::reject::Reject for Refused {}

/// Turns this module's refusals into their JSON answers (used by the API's recovery).
pub fn refusal(rejection: &Rejection) -> Option<PeerError> {
    rejection.find::<Refused>().map(|r| r.0.clone())
}

/// Passes when the admin page is enabled (else 404), with the configured token.
fn enabled(state: State) -> impl Filter<Extract = (State,), Error = Rejection> + Clone {
    warp::any().and_then(move || {
        let state = state.clone();
        async move {
            if state.token.is_some() {
                Ok(state)
            } else {
                Err(warp::reject::not_found())
            }
        }
    })
}

/// Passes with a correct admin bearer token, else answers 401.
fn operator(state: State) -> impl Filter<Extract = (State,), Error = Rejection> + Clone {
    enabled(state).and(warp::header::optional::<String>("authorization")).and_then(
        |state: State, header: Option<String>| async move {
            let expected = state.token.as_deref().unwrap_or_default();
            if bearer_matches(header.as_deref(), expected) {
                Ok(state)
            } else {
                Err(warp::reject::custom(Refused(PeerError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized: the admin API needs Authorization: Bearer <ADMIN_TOKEN>",
                ))))
            }
        },
    )
}

fn overview(state: &AdminState) -> serde_json::Value {
    let hub = &state.hub;
    let online: Vec<_> = hub
        .online_users(ONLINE_LISTED)
        .into_iter()
        .map(|(user_id, sessions)| json!({"user_id": user_id, "sessions": sessions}))
        .collect();
    let recent: Vec<_> = state
        .disconnects
        .recent()
        .into_iter()
        .map(|d| json!({"at": format_time(d.at), "user_id": d.user_id, "code": d.code, "reason": d.reason}))
        .collect();
    json!({
        "status": "success",
        "sessions": hub.session_count(),
        "users": hub.user_count(),
        "deliveries_total": state.metrics.deliveries(),
        "upstream": if state.readiness.upstream_live() { "live" } else { "down" },
        "ready": state.readiness.is_ready(),
        "draining": state.readiness.is_draining(),
        "online": online,
        "recent_disconnects": recent,
        "push_queue": state.metrics.push.queue(),
    })
}

/// `/admin` (and its `page.js`, `page.css`), `/admin/api/overview`,
/// `/admin/api/users/:user_id/disconnect`; every answer with [`CSP`] and no framing or referrer.
pub fn routes(state: State) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let admin = warp::path("admin");
    let page = admin
        .and(warp::path::end())
        .and(warp::get())
        .and(enabled(state.clone()))
        .map(|_| warp::reply::html(PAGE).into_response());
    let script = asset(state.clone(), "page.js", "text/javascript; charset=utf-8", SCRIPT);
    let styles = asset(state.clone(), "page.css", "text/css; charset=utf-8", STYLES);
    let api = admin.and(warp::path("api"));
    let overview = api
        .and(warp::path("overview"))
        .and(warp::path::end())
        .and(warp::get())
        .and(operator(state.clone()))
        .map(|s: State| warp::reply::json(&overview(&s)).into_response());
    let disconnect = api
        .and(warp::path("users"))
        .and(warp::path::param::<String>())
        .and(warp::path("disconnect"))
        .and(warp::path::end())
        .and(warp::post())
        .and(operator(state))
        .map(|user: String, s: State| {
            let Ok(user_id) = Uuid::parse_str(&user) else {
                let e = PeerError::bad_request("Invalid user_id: must be a UUID");
                return warp::reply::with_status(warp::reply::json(&e.body()), e.status).into_response();
            };
            let closed = s.hub.close_user(&user_id, &close::OPERATOR);
            tracing::info!(user = %user_id, sessions = closed, "disconnected by an operator");
            warp::reply::json(&json!({"status": "success", "user_id": user_id, "closed": closed})).into_response()
        });
    page.or(script).unify().or(styles).unify().or(overview).unify().or(disconnect).unify().map(secured)
}
