//! Table writes (`POST`, `PATCH`, `DELETE /rest/v1/<table>`): inserts with `columns=` and
//! upserts (`Prefer: resolution=...`, `on_conflict=`), updates and deletes under the request's
//! filters, and `Prefer: return=representation`. Owns building the write statement; RLS decides
//! which rows it touches, and it must never widen a write beyond the request's filters.

use serde_json::Value;
use tokio_postgres::Client;
use warp::http::StatusCode;
use warp::Reply;

use super::query;
use super::reply::{json_response, param, prefer, single_object, wants_object};
use super::sql::{boxed_refs, column_type, quote_ident, Params};
use super::{Request, Rest, RestError};

impl Rest {
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

    pub(super) async fn insert(
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

    pub(super) async fn update(
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

    pub(super) async fn delete(
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
