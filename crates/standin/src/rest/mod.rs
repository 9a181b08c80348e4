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

pub mod faults;
pub mod query;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::{Filter, Reply};

use crate::keys::{KeyError, Keys};
use query::{IsValue, Op, SelectItem};

/// A PostgREST-shaped error, or (for a missing or unknown `apikey`) the API gateway's.
#[derive(Debug, Clone)]
pub struct RestError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    /// Answered by Supabase's API gateway in front of PostgREST: body `{message, hint}` only.
    pub from_api_gateway: bool,
    /// A JWT problem: PostgREST adds `WWW-Authenticate: Bearer error="invalid_token", ...`.
    pub invalid_token: bool,
}

/// PostgREST's HTTP status for a SQLSTATE (its documented table, `references/errors`), where
/// `anon` says whether the request ran as the anonymous role (42501 is then 401, else 403).
pub fn status_for_sqlstate(code: &str, message: &str, anon: bool) -> StatusCode {
    let status = |n: u16| StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code {
        "23503" | "23505" => return StatusCode::CONFLICT,
        "25006" => return StatusCode::METHOD_NOT_ALLOWED,
        "53400" => return StatusCode::INTERNAL_SERVER_ERROR,
        "21000" if message.ends_with("requires a WHERE clause") => return StatusCode::BAD_REQUEST,
        "21000" => return StatusCode::INTERNAL_SERVER_ERROR,
        "42883" | "42P01" => return StatusCode::NOT_FOUND,
        "42P17" => return StatusCode::INTERNAL_SERVER_ERROR,
        "42501" if anon => return StatusCode::UNAUTHORIZED,
        "42501" => return StatusCode::FORBIDDEN,
        "P0001" => return StatusCode::BAD_REQUEST,
        _ => {}
    }
    if let Some(n) = code.strip_prefix("PT") {
        // `raise sqlstate 'PT402'`: the function chooses the status.
        return n
            .parse::<u16>()
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    match code.get(..2).unwrap_or_default() {
        "08" | "53" => status(503),
        "0L" | "0P" | "28" => status(403),
        "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58" | "F0" | "HV" | "P0" | "XX" => {
            status(500)
        }
        _ => status(400),
    }
}

impl RestError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> RestError {
        RestError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            hint: None,
            from_api_gateway: false,
            invalid_token: false,
        }
    }

    /// A JWT PostgREST refuses: 401 PGRST301 with a `WWW-Authenticate` challenge.
    fn jwt(message: impl Into<String>) -> RestError {
        RestError { invalid_token: true, ..RestError::new(StatusCode::UNAUTHORIZED, "PGRST301", message) }
    }

    /// What Supabase's API gateway answers before a request reaches PostgREST.
    fn api_gateway(message: &str, hint: &str) -> RestError {
        RestError {
            hint: Some(hint.into()),
            from_api_gateway: true,
            ..RestError::new(StatusCode::UNAUTHORIZED, "", message)
        }
    }

    fn reply(&self) -> warp::reply::Response {
        let body = if self.from_api_gateway {
            json!({"message": self.message, "hint": self.hint})
        } else {
            json!({"code": self.code, "message": self.message, "details": self.details, "hint": self.hint})
        };
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.invalid_token {
            let challenge =
                format!("Bearer error=\"invalid_token\", error_description=\"{}\"", self.message.replace('"', "'"));
            if let Ok(value) = warp::http::HeaderValue::from_str(&challenge) {
                response.headers_mut().insert("www-authenticate", value);
            }
        }
        response
    }

    fn from_db(e: &tokio_postgres::Error, role: &str) -> RestError {
        let Some(db) = e.as_db_error() else {
            return RestError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "PGRST000",
                format!("Database connection error: {e}"),
            );
        };
        let code = db.code().code();
        RestError {
            details: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            ..RestError::new(status_for_sqlstate(code, db.message(), role == "anon"), code, db.message())
        }
    }
}

/// A small pool of superuser connections; each request switches role inside its transaction.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection lent to one request. It goes back to the pool only when the request marked it
/// idle (its transaction ended with COMMIT or ROLLBACK); a request abandoned halfway (the client
/// hung up and the future was dropped) closes it instead, so no later request ever runs inside
/// its open transaction or under its role.
struct Pooled<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    idle: bool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pool {
    pub fn new(url: String, size: usize) -> Arc<Pool> {
        Arc::new(Pool { url, idle: Mutex::new(Vec::new()), permits: Semaphore::new(size) })
    }

    async fn get(&self) -> Result<Pooled<'_>, RestError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RestError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST003", "pool closed"))?;
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop()).filter(|c| !c.is_closed());
        let client = match reused {
            Some(c) => c,
            None => crate::pg::connect(&self.url).await.map_err(|e| {
                RestError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST000", format!("Database connection error: {e}"))
            })?,
        };
        Ok(Pooled { client: Some(client), pool: self, idle: false, _permit: permit })
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.idle && !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}

impl Pooled<'_> {
    fn client(&self) -> &Client {
        // Present from construction until drop.
        self.client.as_ref().expect("pooled client present until drop")
    }
}

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

type Params<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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

    // ----- RPC --------------------------------------------------------------------------------

    async fn rpc(
        &self,
        client: &Client,
        req: &Request,
        function: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let args: serde_json::Map<String, Value> = if req.method == Method::GET {
            req.params
                .iter()
                .filter(|(k, _)| k != "apikey")
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect()
        } else if req.body.iter().all(u8::is_ascii_whitespace) {
            Default::default()
        } else {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(RestError::new(
                        StatusCode::BAD_REQUEST,
                        "PGRST102",
                        "Expected a JSON object of named arguments",
                    ))
                }
                Err(e) => {
                    return Err(RestError::new(
                        StatusCode::BAD_REQUEST,
                        "PGRST102",
                        format!("Empty or invalid json: {e}"),
                    ))
                }
            }
        };
        let candidates = client
            .query(
                "select p.oid::int8, coalesce(p.proargnames, '{}')::text[], coalesce(p.proargmodes::text[], '{}'), p.pronargs::int4, p.pronargdefaults::int4,
                        p.proretset, (p.prorettype = 'void'::regtype), array(select format_type(t, null) from unnest(p.proargtypes) t)::text[], p.provolatile::text
                   from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                  where n.nspname = 'public' and p.proname = $1",
                &[&function],
            )
            .await
            .map_err(|e| RestError::from_db(&e, role))?;
        let given: Vec<&String> = args.keys().collect();
        let mut chosen = None;
        for row in &candidates {
            let names: Vec<String> = row.get(1);
            let modes: Vec<String> = row.get(2);
            let nargs: i32 = row.get(3);
            let ndefaults: i32 = row.get(4);
            let types: Vec<String> = row.get(7);
            let inputs: Vec<String> = if modes.is_empty() {
                names.iter().take(nargs as usize).cloned().collect()
            } else {
                names
                    .iter()
                    .zip(modes.iter())
                    .filter(|(_, m)| matches!(m.as_str(), "i" | "b" | "v"))
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            if inputs.len() != types.len() {
                continue;
            }
            let required = inputs.len().saturating_sub(ndefaults.max(0) as usize);
            let all_known = given.iter().all(|g| inputs.contains(g));
            let required_given = inputs.iter().take(required).all(|i| args.contains_key(i));
            if all_known && required_given {
                chosen = Some((row, inputs, types));
                break;
            }
        }
        let Some((row, inputs, types)) = chosen else {
            let list = given.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            let mut e = RestError::new(
                StatusCode::NOT_FOUND,
                "PGRST202",
                format!("Could not find the function public.{function}({list}) in the schema cache"),
            );
            e.hint = Some("Perhaps you meant to call another function, or the arguments do not match.".into());
            return Err(e);
        };
        let retset: bool = row.get(5);
        let is_void: bool = row.get(6);
        let volatile: String = row.get(8);
        if req.method == Method::GET && volatile == "v" {
            return Err(RestError::new(StatusCode::METHOD_NOT_ALLOWED, "PGRST101", "For volatile functions use POST"));
        }
        // As PostgREST: the arguments travel as one JSON parameter and `json_to_record` gives
        // each its declared type (strings through the type's input function, JSON arrays as
        // arrays, objects as json/jsonb or composites). Names and types come from the catalog.
        let given: Vec<(&String, &String)> =
            inputs.iter().zip(types.iter()).filter(|(name, _)| args.contains_key(*name)).collect();
        let call_args = given
            .iter()
            .map(|(name, _)| format!("{q} => _a.{q}", q = quote_ident(name)))
            .collect::<Vec<_>>()
            .join(", ");
        let record =
            given.iter().map(|(name, ty)| format!("{} {ty}", quote_ident(name))).collect::<Vec<_>>().join(", ");
        let source = if given.is_empty() {
            String::new()
        } else {
            format!(" from json_to_record($1::text::json) as _a({record})")
        };
        let call = format!("public.{}({call_args})", quote_ident(function));
        let sql = if retset {
            let from = if given.is_empty() { " from ".to_string() } else { format!("{source} cross join lateral ") };
            format!("select coalesce(json_agg(_r), '[]'::json)::text{from}{call} _r")
        } else if is_void {
            format!("select {call}::text{source}")
        } else {
            format!("select to_json({call})::text{source}")
        };
        let payload = Value::Object(args.clone()).to_string();
        let refs: Vec<&(dyn ToSql + Sync)> = if given.is_empty() { Vec::new() } else { vec![&payload] };
        let out = client.query_one(&sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
        if is_void {
            return Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response());
        }
        let text: Option<String> = out.get(0);
        let body = text.unwrap_or_else(|| "null".into());
        if retset && wants_object(&req.headers) {
            return single_object(&body);
        }
        Ok(json_response(body, StatusCode::OK, None))
    }

    // ----- tables -----------------------------------------------------------------------------

    async fn table_columns(
        &self,
        client: &Client,
        table: &str,
        role: &str,
    ) -> Result<Vec<(String, String)>, RestError> {
        let rows = client
            .query(
                "select a.attname::text, format_type(a.atttypid, a.atttypmod)
                   from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = 'public' and c.relname = $1 and c.relkind in ('r','v','m','p','f')
                    and a.attnum > 0 and not a.attisdropped order by a.attnum",
                &[&table],
            )
            .await
            .map_err(|e| RestError::from_db(&e, role))?;
        if rows.is_empty() {
            return Err(RestError::new(
                StatusCode::NOT_FOUND,
                "PGRST205",
                format!("Could not find the table 'public.{table}' in the schema cache"),
            ));
        }
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// WHERE clause of the request's filters on alias `t0`.
    fn where_clause<'a>(
        &self,
        req: &'a Request,
        columns: &[(String, String)],
        params: &mut Params<'a>,
    ) -> Result<String, RestError> {
        let reserved = ["select", "order", "limit", "offset", "apikey", "on_conflict", "columns"];
        let mut conds = Vec::new();
        for (key, value) in &req.params {
            if reserved.contains(&key.as_str()) {
                continue;
            }
            if key == "or" || key == "and" {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    "PGRST100",
                    "or/and filters are not supported by this stand-in",
                ));
            }
            let filter = query::parse_filter(key, value)
                .map_err(|e| RestError::new(StatusCode::BAD_REQUEST, "PGRST100", e.0))?;
            let ty = column_type(columns, &filter.column)?;
            let col = format!("t0.{}", quote_ident(&filter.column));
            let cond = match filter.op {
                Op::Cmp(op, v) => {
                    params.push(Box::new(v));
                    format!("{col} {op} ${}::text::{ty}", params.len())
                }
                Op::Like { insensitive, pattern } => {
                    params.push(Box::new(pattern));
                    format!("{col}::text {} ${}", if insensitive { "ilike" } else { "like" }, params.len())
                }
                Op::In(values) if values.is_empty() => "false".to_string(),
                Op::In(values) => {
                    let mut list = Vec::new();
                    for v in values {
                        params.push(Box::new(v));
                        list.push(format!("${}::text::{ty}", params.len()));
                    }
                    format!("{col} in ({})", list.join(", "))
                }
                Op::Is(v) => format!(
                    "{col} is {}",
                    match v {
                        IsValue::Null => "null",
                        IsValue::True => "true",
                        IsValue::False => "false",
                        IsValue::Unknown => "unknown",
                    }
                ),
            };
            conds.push(if filter.negated { format!("not ({cond})") } else { cond });
        }
        Ok(if conds.is_empty() { "true".into() } else { conds.join(" and ") })
    }

    async fn select(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let columns = self.table_columns(client, table, role).await?;
        let select = param(req, "select").unwrap_or("*");
        let items =
            query::parse_select(select).map_err(|e| RestError::new(StatusCode::BAD_REQUEST, "PGRST100", e.0))?;
        let mut counter = 0usize;
        let projection = self.projection(client, table, "t0", &columns, &items, role, &mut counter).await?;
        let mut params: Params = Vec::new();
        let filter = self.where_clause(req, &columns, &mut params)?;
        let mut tail = String::new();
        if let Some(order) = param(req, "order") {
            let items =
                query::parse_order(order).map_err(|e| RestError::new(StatusCode::BAD_REQUEST, "PGRST100", e.0))?;
            let mut parts = Vec::new();
            for o in items {
                column_type(&columns, &o.column)?;
                let nulls = match o.nulls_first {
                    Some(true) => " nulls first",
                    Some(false) => " nulls last",
                    None => "",
                };
                parts.push(format!(
                    "t0.{} {}{nulls}",
                    quote_ident(&o.column),
                    if o.descending { "desc" } else { "asc" }
                ));
            }
            if !parts.is_empty() {
                tail.push_str(&format!(" order by {}", parts.join(", ")));
            }
        }
        for key in ["limit", "offset"] {
            if let Some(v) = param(req, key) {
                let n: u64 = v.parse().map_err(|_| {
                    RestError::new(StatusCode::BAD_REQUEST, "PGRST100", format!("{key} must be a number"))
                })?;
                tail.push_str(&format!(" {key} {n}"));
            }
        }
        let sql = format!(
            "select coalesce(json_agg(_r), '[]'::json)::text, count(*) from (select {projection} from public.{} t0 where {filter}{tail}) _r",
            quote_ident(table)
        );
        let refs = boxed_refs(&params);
        let row = client.query_one(&sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
        let body: String = row.get(0);
        let n: i64 = row.get(1);
        let mut total = "*".to_string();
        if prefer(&req.headers).contains("count=exact") {
            let count_sql = format!("select count(*) from public.{} t0 where {filter}", quote_ident(table));
            let c = client.query_one(&count_sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
            total = c.get::<_, i64>(0).to_string();
        }
        if wants_object(&req.headers) {
            return single_object(&body);
        }
        let range = if n == 0 { format!("*/{total}") } else { format!("0-{}/{total}", n - 1) };
        Ok(json_response(body, StatusCode::OK, Some(range)))
    }

    /// The select list for `table` aliased `alias`, with embedded resources as subqueries.
    #[allow(clippy::too_many_arguments)]
    fn projection<'s>(
        &'s self,
        client: &'s Client,
        table: &'s str,
        alias: &'s str,
        columns: &'s [(String, String)],
        items: &'s [SelectItem],
        role: &'s str,
        counter: &'s mut usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, RestError>> + Send + 's>> {
        Box::pin(async move {
            let mut parts = Vec::new();
            for item in items {
                match item {
                    SelectItem::Star => parts.push(format!("{alias}.*")),
                    SelectItem::Column { name, alias: as_name } => {
                        column_type(columns, name)?;
                        parts.push(format!(
                            "{alias}.{} as {}",
                            quote_ident(name),
                            quote_ident(as_name.as_deref().unwrap_or(name))
                        ));
                    }
                    SelectItem::Embed { target, alias: as_name, hint, items } => {
                        *counter += 1;
                        let inner = format!("t{}", *counter);
                        let target_columns = self.table_columns(client, target, role).await?;
                        let (join, many) =
                            self.relationship(client, table, target, hint.as_deref(), alias, &inner, role).await?;
                        let inner_projection =
                            self.projection(client, target, &inner, &target_columns, items, role, counter).await?;
                        let sub = if many {
                            format!("coalesce((select json_agg(_e) from (select {inner_projection} from public.{} {inner} where {join}) _e), '[]'::json)", quote_ident(target))
                        } else {
                            format!("(select row_to_json(_e) from (select {inner_projection} from public.{} {inner} where {join} limit 1) _e)", quote_ident(target))
                        };
                        parts.push(format!("{sub} as {}", quote_ident(as_name.as_deref().unwrap_or(target))));
                    }
                }
            }
            Ok(parts.join(", "))
        })
    }

    /// Join condition between `outer` (table) and `inner` (target) following a foreign key, and
    /// whether the target side is "many".
    #[allow(clippy::too_many_arguments)]
    async fn relationship(
        &self,
        client: &Client,
        table: &str,
        target: &str,
        hint: Option<&str>,
        outer: &str,
        inner: &str,
        role: &str,
    ) -> Result<(String, bool), RestError> {
        let rows = client
            .query(
                "select con.conname::text, src.relname::text, dst.relname::text,
                        array(select a.attname::text from unnest(con.conkey) with ordinality k(n, i) join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n order by k.i),
                        array(select a.attname::text from unnest(con.confkey) with ordinality k(n, i) join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n order by k.i)
                   from pg_constraint con
                   join pg_class src on src.oid = con.conrelid join pg_namespace sn on sn.oid = src.relnamespace
                   join pg_class dst on dst.oid = con.confrelid join pg_namespace dn on dn.oid = dst.relnamespace
                  where con.contype = 'f' and sn.nspname = 'public' and dn.nspname = 'public'
                    and ((src.relname = $1 and dst.relname = $2) or (src.relname = $2 and dst.relname = $1))",
                &[&table, &target],
            )
            .await
            .map_err(|e| RestError::from_db(&e, role))?;
        let mut matches = Vec::new();
        for row in &rows {
            let name: String = row.get(0);
            let src: String = row.get(1);
            let from_cols: Vec<String> = row.get(3);
            let to_cols: Vec<String> = row.get(4);
            if let Some(h) = hint {
                if h != name && !from_cols.iter().any(|c| c == h) {
                    continue;
                }
            }
            matches.push((src == table, from_cols, to_cols));
        }
        match matches.len() {
            1 => {
                let (many_to_one, from_cols, to_cols) = &matches[0];
                let (outer_cols, inner_cols) = if *many_to_one { (from_cols, to_cols) } else { (to_cols, from_cols) };
                let join = outer_cols
                    .iter()
                    .zip(inner_cols.iter())
                    .map(|(o, i)| format!("{inner}.{} = {outer}.{}", quote_ident(i), quote_ident(o)))
                    .collect::<Vec<_>>()
                    .join(" and ");
                Ok((join, !many_to_one))
            }
            0 => Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "PGRST200",
                format!("Could not find a relationship between '{table}' and '{target}' in the schema cache"),
            )),
            _ => {
                let mut e = RestError::new(
                    StatusCode::MULTIPLE_CHOICES,
                    "PGRST201",
                    format!(
                        "Could not embed because more than one relationship was found for '{table}' and '{target}'"
                    ),
                );
                e.hint =
                    Some(format!("Try changing '{target}' to one of the foreign keys, e.g. '{target}!<constraint>'"));
                Err(e)
            }
        }
    }

    fn body_rows(req: &Request) -> Result<Vec<serde_json::Map<String, Value>>, RestError> {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(o)) => Ok(vec![o]),
            Ok(Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    Value::Object(o) => Ok(o),
                    _ => Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", "All object keys must match")),
                })
                .collect(),
            Ok(_) | Err(_) => Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json")),
        }
    }

    /// The select list applied to written rows (CTE `t0`) for `Prefer: return=representation`:
    /// `select=` as for reads, embeddings included; `*` without it.
    async fn returned(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        columns: &[(String, String)],
        role: &str,
    ) -> Result<String, RestError> {
        if !prefer(&req.headers).contains("return=representation") {
            return Ok("t0.*".into());
        }
        let items = query::parse_select(param(req, "select").unwrap_or("*"))
            .map_err(|e| RestError::new(StatusCode::BAD_REQUEST, "PGRST100", e.0))?;
        let mut counter = 0usize;
        self.projection(client, table, "t0", columns, &items, role, &mut counter).await
    }

    async fn insert(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let columns = self.table_columns(client, table, role).await?;
        let rows = Self::body_rows(req)?;
        // As PostgREST: `columns=` names the inserted columns (keys a row lacks become null);
        // without it every object must have the same keys.
        let names: Vec<String> = match param(req, "columns") {
            Some(list) => list.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
            None => {
                let first: Vec<String> = rows.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
                if rows.iter().any(|r| r.len() != first.len() || !first.iter().all(|k| r.contains_key(k))) {
                    return Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", "All object keys must match"));
                }
                first
            }
        };
        for name in &names {
            column_type(&columns, name)?;
        }
        if rows.is_empty() {
            return self.write_response(req, "[]".into(), StatusCode::CREATED);
        }
        if names.is_empty() {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "PGRST102",
                "Empty or invalid json: no columns to insert",
            ));
        }
        let returned = self.returned(client, req, table, &columns, role).await?;
        let conflict = self.on_conflict(client, req, table, &columns, &names, role).await?;
        let body = Value::Array(rows.into_iter().map(Value::Object).collect()).to_string();
        let cols = names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "with t0 as (insert into public.{t} as t0 ({cols}) select {cols} from json_populate_recordset(null::public.{t}, $1::text::json){conflict} returning t0.*)
             select coalesce(json_agg(_r), '[]'::json)::text from (select {returned} from t0) _r",
            t = quote_ident(table)
        );
        let row = client.query_one(&sql, &[&body]).await.map_err(|e| RestError::from_db(&e, role))?;
        self.write_response(req, row.get(0), StatusCode::CREATED)
    }

    /// The `on conflict` clause of an upsert (`Prefer: resolution=merge-duplicates` or
    /// `ignore-duplicates`), on the `on_conflict=` columns or else the primary key; empty for a
    /// plain insert.
    async fn on_conflict(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        columns: &[(String, String)],
        names: &[String],
        role: &str,
    ) -> Result<String, RestError> {
        let prefer = prefer(&req.headers);
        let merge = prefer.contains("resolution=merge-duplicates");
        if !merge && !prefer.contains("resolution=ignore-duplicates") {
            return Ok(String::new());
        }
        let target: Vec<String> = match param(req, "on_conflict") {
            Some(list) => list.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
            None => client
                .query(
                    "select a.attname::text from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                      where i.indrelid = to_regclass(format('public.%I', $1::text)) and i.indisprimary order by a.attnum",
                    &[&table],
                )
                .await
                .map_err(|e| RestError::from_db(&e, role))?
                .iter()
                .filter_map(|r| r.try_get::<_, String>(0).ok())
                .collect(),
        };
        if target.is_empty() {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "PGRST100",
                "an upsert needs on_conflict columns or a primary key",
            ));
        }
        for c in &target {
            column_type(columns, c)?;
        }
        let target = target.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        if !merge {
            return Ok(format!(" on conflict ({target}) do nothing"));
        }
        let sets =
            names.iter().map(|c| format!("{q} = excluded.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(", ");
        Ok(format!(" on conflict ({target}) do update set {sets}"))
    }

    async fn update(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let columns = self.table_columns(client, table, role).await?;
        let rows = Self::body_rows(req)?;
        let [patch] = rows.as_slice() else {
            return Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", "PATCH expects one JSON object"));
        };
        for key in patch.keys() {
            column_type(&columns, key)?;
        }
        if patch.is_empty() {
            // PostgREST answers an empty patch without touching the table.
            return self.write_response(req, "[]".into(), StatusCode::NO_CONTENT);
        }
        let returned = self.returned(client, req, table, &columns, role).await?;
        let mut params: Params = vec![Box::new(Value::Object(patch.clone()).to_string())];
        let filter = self.where_clause(req, &columns, &mut params)?;
        let sets = patch.keys().map(|k| format!("{c} = _p.{c}", c = quote_ident(k))).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "with t0 as (update public.{t} t0 set {sets} from (select * from json_populate_record(null::public.{t}, $1::text::json)) _p where {filter} returning t0.*)
             select coalesce(json_agg(_r), '[]'::json)::text from (select {returned} from t0) _r",
            t = quote_ident(table)
        );
        let refs = boxed_refs(&params);
        let row = client.query_one(&sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
        self.write_response(req, row.get(0), StatusCode::NO_CONTENT)
    }

    async fn delete(
        &self,
        client: &Client,
        req: &Request,
        table: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let columns = self.table_columns(client, table, role).await?;
        let returned = self.returned(client, req, table, &columns, role).await?;
        let mut params: Params = Vec::new();
        let filter = self.where_clause(req, &columns, &mut params)?;
        let sql = format!(
            "with t0 as (delete from public.{} t0 where {filter} returning t0.*)
             select coalesce(json_agg(_r), '[]'::json)::text from (select {returned} from t0) _r",
            quote_ident(table)
        );
        let refs = boxed_refs(&params);
        let row = client.query_one(&sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
        self.write_response(req, row.get(0), StatusCode::NO_CONTENT)
    }

    fn write_response(
        &self,
        req: &Request,
        body: String,
        minimal_status: StatusCode,
    ) -> Result<warp::reply::Response, RestError> {
        if prefer(&req.headers).contains("return=representation") {
            if wants_object(&req.headers) {
                return single_object(&body);
            }
            let status = if minimal_status == StatusCode::CREATED { StatusCode::CREATED } else { StatusCode::OK };
            return Ok(json_response(body, status, None));
        }
        Ok(warp::reply::with_status(warp::reply(), minimal_status).into_response())
    }
}

fn column_type<'a>(columns: &'a [(String, String)], name: &str) -> Result<&'a str, RestError> {
    columns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.as_str())
        .ok_or_else(|| RestError::new(StatusCode::BAD_REQUEST, "42703", format!("column \"{name}\" does not exist")))
}

fn param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn prefer(headers: &HeaderMap) -> String {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",")
}

fn wants_object(headers: &HeaderMap) -> bool {
    headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/vnd.pgrst.object+json"))
}

fn single_object(array_text: &str) -> Result<warp::reply::Response, RestError> {
    let rows: Vec<Value> = serde_json::from_str(array_text).unwrap_or_default();
    if rows.len() != 1 {
        let mut e = RestError::new(
            StatusCode::NOT_ACCEPTABLE,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
        );
        e.details = Some(format!("The result contains {} rows", rows.len()));
        return Err(e);
    }
    Ok(json_response(rows[0].to_string(), StatusCode::OK, None))
}

fn json_response(body: String, status: StatusCode, range: Option<String>) -> warp::reply::Response {
    let mut response = warp::reply::with_status(body, status).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", warp::http::HeaderValue::from_static("application/json; charset=utf-8"));
    if let Some(range) = range.and_then(|r| warp::http::HeaderValue::from_str(&r).ok()) {
        headers.insert("content-range", range);
    }
    response
}

fn url_params(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string())
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn boxed_refs<'a>(params: &'a Params<'_>) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut out: Vec<&'a (dyn ToSql + Sync)> = Vec::with_capacity(params.len());
    for p in params {
        out.push(p.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_postgrests_statuses() {
        let s = |code: &str, anon: bool| status_for_sqlstate(code, "", anon).as_u16();
        assert_eq!(s("42501", true), 401);
        assert_eq!(s("42501", false), 403);
        assert_eq!(
            (s("22P02", false), s("23502", false), s("23514", false), s("P0001", false), s("42703", false)),
            (400, 400, 400, 400, 400)
        );
        assert_eq!((s("23505", false), s("23503", false)), (409, 409));
        assert_eq!((s("42883", false), s("42P01", false)), (404, 404));
        assert_eq!((s("08006", false), s("53300", false), s("53400", false)), (503, 503, 500));
        assert_eq!((s("57014", false), s("40001", false), s("P0002", false), s("XX000", false)), (500, 500, 500, 500));
        assert_eq!((s("25006", false), s("28000", false)), (405, 403));
        assert_eq!((s("PT402", false), s("PTabc", false)), (402, 500));
        assert_eq!(status_for_sqlstate("21000", "UPDATE requires a WHERE clause", false).as_u16(), 400);
        assert_eq!(s("21000", false), 500);
    }

    #[test]
    fn url_params_decode_percent_and_plus() {
        let p = url_params(
            "select=id,sender:profiles(full_name)&created_at=gte.2024-01-01T00%3A00%3A00%2B00%3A00&title=eq.a+b&flag",
        );
        assert_eq!(p[0], ("select".into(), "id,sender:profiles(full_name)".into()));
        assert_eq!(p[1].1, "gte.2024-01-01T00:00:00+00:00");
        assert_eq!(p[2].1, "eq.a b");
        assert_eq!(p[3], ("flag".into(), String::new()));
    }

    #[test]
    fn api_gateway_errors_have_only_message_and_hint() {
        let r =
            RestError::api_gateway("No API key found in request", "No `apikey` request header or url param was found.")
                .reply();
        assert_eq!(r.status().as_u16(), 401);
        let jwt = RestError::jwt("JWT expired").reply();
        assert!(jwt.headers().get("www-authenticate").is_some());
    }
}
