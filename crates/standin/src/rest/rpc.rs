//! RPC calls (`POST`/`GET /rest/v1/rpc/<function>`): named arguments from the JSON body or the
//! query string, the overload they resolve to in the catalog, and the call with each argument of
//! its declared type. Owns calling functions in `public`; it must never call a function by a name
//! or with types the catalog did not give.

use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use warp::http::{Method, StatusCode};
use warp::Reply;

use super::reply::{json_response, single_object, wants_object};
use super::sql::quote_ident;
use super::{Request, Rest, RestError};

/// The overload a call resolves to: its input names and types, in order, and how it returns.
struct Routine {
    inputs: Vec<String>,
    types: Vec<String>,
    retset: bool,
    is_void: bool,
    volatile: String,
}

impl Rest {
    pub(super) async fn rpc(
        &self,
        client: &Client,
        req: &Request,
        function: &str,
        role: &str,
    ) -> Result<warp::reply::Response, RestError> {
        let args = named_args(req)?;
        let routine = resolve(client, function, &args, role).await?;
        if req.method == Method::GET && routine.volatile == "v" {
            return Err(RestError::new(StatusCode::METHOD_NOT_ALLOWED, "PGRST101", "For volatile functions use POST"));
        }
        let (sql, with_args) = call_sql(function, &routine, &args);
        let payload = Value::Object(args).to_string();
        let refs: Vec<&(dyn ToSql + Sync)> = if with_args { vec![&payload] } else { Vec::new() };
        let out = client.query_one(&sql, &refs).await.map_err(|e| RestError::from_db(&e, role))?;
        if routine.is_void {
            return Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response());
        }
        let text: Option<String> = out.get(0);
        let body = text.unwrap_or_else(|| "null".into());
        if routine.retset && wants_object(&req.headers) {
            return single_object(&body);
        }
        Ok(json_response(body, StatusCode::OK, None))
    }
}

/// The call's named arguments: the query string for `GET` (less `apikey`), else the JSON object
/// in the body (an empty body is no arguments).
fn named_args(req: &Request) -> Result<Map<String, Value>, RestError> {
    if req.method == Method::GET {
        return Ok(req
            .params
            .iter()
            .filter(|(k, _)| k != "apikey")
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect());
    }
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", "Expected a JSON object of named arguments")),
        Err(e) => Err(RestError::new(StatusCode::BAD_REQUEST, "PGRST102", format!("Empty or invalid json: {e}"))),
    }
}

/// The first overload of `public.<function>` whose inputs include every given argument and
/// whose required inputs are all given; PGRST202 when there is none.
async fn resolve(client: &Client, function: &str, args: &Map<String, Value>, role: &str) -> Result<Routine, RestError> {
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
            return Ok(Routine { inputs, types, retset: row.get(5), is_void: row.get(6), volatile: row.get(8) });
        }
    }
    let list = given.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let mut e = RestError::new(
        StatusCode::NOT_FOUND,
        "PGRST202",
        format!("Could not find the function public.{function}({list}) in the schema cache"),
    );
    e.hint = Some("Perhaps you meant to call another function, or the arguments do not match.".into());
    Err(e)
}

/// The statement calling `routine`, and whether it takes the arguments as its one parameter.
///
/// As PostgREST: the arguments travel as one JSON parameter and `json_to_record` gives each its
/// declared type (strings through the type's input function, JSON arrays as arrays, objects as
/// json/jsonb or composites). Names and types come from the catalog.
fn call_sql(function: &str, routine: &Routine, args: &Map<String, Value>) -> (String, bool) {
    let given: Vec<(&String, &String)> =
        routine.inputs.iter().zip(routine.types.iter()).filter(|(name, _)| args.contains_key(*name)).collect();
    let call_args =
        given.iter().map(|(name, _)| format!("{q} => _a.{q}", q = quote_ident(name))).collect::<Vec<_>>().join(", ");
    let record = given.iter().map(|(name, ty)| format!("{} {ty}", quote_ident(name))).collect::<Vec<_>>().join(", ");
    let source =
        if given.is_empty() { String::new() } else { format!(" from json_to_record($1::text::json) as _a({record})") };
    let call = format!("public.{}({call_args})", quote_ident(function));
    let sql = if routine.retset {
        let from = if given.is_empty() { " from ".to_string() } else { format!("{source} cross join lateral ") };
        format!("select coalesce(json_agg(_r), '[]'::json)::text{from}{call} _r")
    } else if routine.is_void {
        format!("select {call}::text{source}")
    } else {
        format!("select to_json({call})::text{source}")
    };
    (sql, !given.is_empty())
}
