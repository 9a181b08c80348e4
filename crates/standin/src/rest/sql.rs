//! SQL text helpers shared by reads and writes: quoting identifiers, checking a column against
//! the table's catalog columns, and bind parameters. Identifiers only ever come from the catalog
//! or pass through [`quote_ident`]; values must never be spliced into SQL text.

use tokio_postgres::types::ToSql;
use warp::http::StatusCode;

use super::RestError;

/// Bind parameters collected while a statement is built.
pub(super) type Params<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn column_type<'a>(columns: &'a [(String, String)], name: &str) -> Result<&'a str, RestError> {
    columns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.as_str())
        .ok_or_else(|| RestError::new(StatusCode::BAD_REQUEST, "42703", format!("column \"{name}\" does not exist")))
}

pub(super) fn boxed_refs<'a>(params: &'a Params<'_>) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut out: Vec<&'a (dyn ToSql + Sync)> = Vec::with_capacity(params.len());
    for p in params {
        out.push(p.as_ref());
    }
    out
}
