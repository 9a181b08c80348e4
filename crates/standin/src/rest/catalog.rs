//! What the catalog says, read per request as PostgREST reads its schema cache: a table's
//! columns with their types, and the foreign key that joins two tables for an embed. Owns the
//! catalog queries only; it must never read or write rows.

use tokio_postgres::Client;
use warp::http::StatusCode;

use super::sql::quote_ident;
use super::{Rest, RestError};

impl Rest {
    pub(super) async fn table_columns(
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

    /// Join condition between `outer` (table) and `inner` (target) following a foreign key, and
    /// whether the target side is "many".
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relationship(
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
}
