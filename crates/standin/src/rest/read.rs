//! Table reads (`GET`/`HEAD /rest/v1/<table>`): filters, `select=` with foreign-key embeds,
//! `order=`, `limit=`/`offset=` and `Prefer: count=exact`; the same select list serves the rows a
//! write returns. Owns building the statement; it must never splice a value into SQL text.

use tokio_postgres::Client;
use warp::http::StatusCode;

use super::query::{self, IsValue, Op, SelectItem};
use super::reply::{json_response, param, prefer, single_object, wants_object};
use super::sql::{boxed_refs, column_type, quote_ident, Params};
use super::{Request, Rest, RestError};

impl Rest {
    /// WHERE clause of the request's filters on alias `t0`.
    pub(super) fn where_clause<'a>(
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

    pub(super) async fn select(
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
    pub(super) fn projection<'s>(
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
}
