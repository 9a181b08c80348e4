//! PostgREST stand-in at `/rest/v1`: the subset the gateway and supabase-js use, with PostgREST's
//! semantics.
//!
//! Owns request authentication (the `apikey` must be a project key; the bearer JWT — or the apikey
//! when there is none — is verified and its `role` becomes the database role), running each
//! request in ONE transaction as that role with `request.jwt.claims` set (so RLS and `auth.uid()`
//! behave as on Supabase), RPC calls with named arguments, table reads with filters, ordering and
//! foreign-key embedding, inserts, updates and deletes, and PostgREST's error bodies
//! `{code, message, details, hint}` with its status codes. Identifiers come only from the
//! catalog; values always travel as bind parameters. It must never run a query as a role the
//! token does not name.
//!
//! Not covered (PostgREST has them): schemas other than `public` (`Accept-Profile`), `or=`/`and=`
//! and filters on embedded resources, `!inner` embeds, full-text and array/range operators,
//! `Range` headers, `Prefer: missing=default`,
//! `params=single-object`, CSV and other media types, aggregates, computed relationships, the
//! per-role `statement_timeout` Supabase sets, and a schema cache (the catalog is read per request).
//!
//! Here: routing, authentication and the per-request transaction. Beside it, by role: `error`
//! (PostgREST's error answers), `pool` (connections), `rpc` (function calls), `read` and `write`
//! (table requests), `catalog` (columns and foreign keys), `sql` and `reply` (SQL text and HTTP
//! helpers), [`query`] (parsing PostgREST's query syntax) and [`faults`] (test-only faults).

pub mod faults;
pub mod query;

mod catalog;
mod error;
mod pool;
mod read;
mod reply;
mod rpc;
mod sql;
mod write;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio_postgres::Client;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

use crate::keys::{KeyError, Keys};
pub use error::{status_for_sqlstate, RestError};
pub use pool::Pool;
use reply::url_params;

/// Everything a request needs.
#[derive(Clone)]
pub struct Rest {
    pool: Arc<Pool>,
    keys: Arc<Keys>,
    faults: faults::RestFaults,
}

struct Request {
    method: Method,
    path: String,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Rest {
    pub fn new(db_url: String, keys: Arc<Keys>) -> Rest {
        Rest { pool: Pool::new(db_url, 16), keys, faults: faults::RestFaults::default() }
    }

    /// The fault controls (for tests).
    pub fn faults(&self) -> faults::RestFaults {
        self.faults.clone()
    }

    /// `/rest/v1/...`
    pub fn routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        let rest = self.clone();
        warp::path("rest")
            .and(warp::path("v1"))
            .and(warp::path::tail())
            .and(warp::method())
            .and(warp::header::headers_cloned())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::body::bytes())
            .then(move |tail: warp::path::Tail, method: Method, headers: HeaderMap, raw_query: String, body: Bytes| {
                let rest = rest.clone();
                async move {
                    if body.len() > 1 << 20 {
                        return RestError::new(StatusCode::PAYLOAD_TOO_LARGE, "PGRST413", "Request body too large")
                            .reply();
                    }
                    let mut late = None;
                    match rest.faults.take(tail.as_str()) {
                        Some(faults::Fault::Fail(code)) => {
                            return RestError::new(
                                faults::status(code),
                                "PGRST000",
                                "Injected fault: the database is unavailable",
                            )
                            .reply();
                        }
                        Some(faults::Fault::Stall(duration)) => tokio::time::sleep(duration).await,
                        Some(faults::Fault::Delay(duration)) => late = Some(duration),
                        None => {}
                    }
                    let params = url_params(&raw_query);
                    let request = Request { method, path: tail.as_str().to_string(), params, headers, body };
                    let response = match rest.handle(request).await {
                        Ok(response) => response,
                        Err(e) => e.reply(),
                    };
                    if let Some(duration) = late {
                        tokio::time::sleep(duration).await;
                    }
                    response
                }
            })
            .boxed()
    }

    fn authenticate(&self, req: &Request) -> Result<Value, RestError> {
        let apikey = req
            .headers
            .get("apikey")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.params.iter().find(|(k, _)| k == "apikey").map(|(_, v)| v.clone()));
        let Some(apikey) = apikey else {
            return Err(RestError::api_gateway(
                "No API key found in request",
                "No `apikey` request header or url param was found.",
            ));
        };
        if apikey != self.keys.anon_key && apikey != self.keys.service_key {
            return Err(RestError::api_gateway(
                "Invalid API key",
                "Double check your Supabase `anon` or `service_role` API key.",
            ));
        }
        let bearer = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .unwrap_or(apikey.as_str())
            .to_string();
        let claims = self.keys.verify(&bearer).map_err(|e| match e {
            KeyError::Expired => RestError::jwt("JWT expired"),
            KeyError::Invalid(m) => RestError::jwt(format!("JWSError {m}")),
        })?;
        if !matches!(claims.role.as_str(), "anon" | "authenticated" | "service_role") {
            return Err(RestError::jwt(format!("role \"{}\" does not exist", claims.role)));
        }
        serde_json::to_value(&claims)
            .map_err(|e| RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "PGRST000", e.to_string()))
    }

    async fn handle(&self, req: Request) -> Result<warp::reply::Response, RestError> {
        let claims = self.authenticate(&req)?;
        let role = claims["role"].as_str().unwrap_or("anon").to_string();
        let mut conn = self.pool.get().await?;
        let client = conn.client();
        client.batch_execute("begin").await.map_err(|e| RestError::from_db(&e, &role))?;
        let result = self.in_transaction(client, &req, &claims, &role).await;
        let end = if result.is_ok() { "commit" } else { "rollback" };
        match client.batch_execute(end).await {
            Ok(()) => conn.idle = true,
            Err(e) if result.is_ok() => return Err(RestError::from_db(&e, &role)),
            Err(_) => {}
        }
        result
    }

    async fn in_transaction(
        &self,
        client: &Client,
        req: &Request,
        claims: &Value,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let db = |e: tokio_postgres::Error| RestError::from_db(&e, role);
        client
            .execute(
                "select set_config('request.jwt.claims', $1, true), set_config('request.jwt.claim.sub', $2, true), set_config('request.jwt.claim.role', $3, true), set_config('role', $3, true)",
                &[&claims.to_string(), &claims["sub"].as_str().unwrap_or(""), &role],
            )
            .await
            .map_err(db)?;
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        match (segments.as_slice(), &req.method) {
            (["rpc", function], &Method::POST) | (["rpc", function], &Method::GET) => {
                self.rpc(client, req, function, role).await
            }
            ([table], m) if *m == Method::GET || *m == Method::HEAD => self.select(client, req, table, role).await,
            ([table], &Method::POST) => self.insert(client, req, table, role).await,
            ([table], &Method::PATCH) => self.update(client, req, table, role).await,
            ([table], &Method::DELETE) => self.delete(client, req, table, role).await,
            _ => Err(RestError::new(
                StatusCode::NOT_FOUND,
                "PGRST125",
                format!("Invalid path specified in request URL: /{}", req.path),
            )),
        }
    }
}
