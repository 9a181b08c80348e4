//! Row-level security and column privileges per subscriber, as Realtime applies them to
//! `postgres_changes`.
//!
//! Owns one database connection used only to ask "which columns may this role SELECT?" (cached
//! for a second per role and table) and "may this subscriber see this row?": the latter in a
//! transaction that is always rolled back, it takes the subscriber's role and JWT claims (the
//! way Realtime and PostgREST do: `set_config('role', ..)`, `set_config('request.jwt.claims', ..)`)
//! and looks the changed row up by its primary key. Checks are serialized on that one connection,
//! which mirrors why Realtime's per-subscriber authorization does not scale. It must never
//! commit anything and never run a check for the service role (BYPASSRLS).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;

/// The identity a user-token channel's checks run as.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    /// The token's `role` claim (`authenticated`, `anon`).
    pub role: String,
    /// The verified token's claims as JSON, for `request.jwt.claims`.
    pub claims: String,
}

/// One row visibility question.
#[derive(Debug, Clone)]
pub struct RowCheck {
    pub schema: String,
    pub table: String,
    /// Primary key columns: (name, type name, value as text; `None` if absent from the record).
    pub keys: Vec<(String, String, Option<String>)>,
    pub who: std::sync::Arc<Subscriber>,
}

#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the table has no primary key to check the row by")]
    NoKey,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The visibility query for a check: `select exists(select 1 from "s"."t" where "k" = $1::text::"type" ...)`.
pub fn visibility_sql(check: &RowCheck) -> Result<String, RlsError> {
    if check.keys.is_empty() || check.keys.iter().any(|(_, _, v)| v.is_none()) {
        return Err(RlsError::NoKey);
    }
    let conditions: Vec<String> = check
        .keys
        .iter()
        .enumerate()
        .map(|(i, (name, ty, _))| format!("{} = cast(${}::text as {})", ident(name), i + 1, ident(ty)))
        .collect();
    Ok(format!(
        "select exists(select 1 from {}.{} where {})",
        ident(&check.schema),
        ident(&check.table),
        conditions.join(" and ")
    ))
}

/// Columns a role may SELECT, by (role, schema, table), with when they were read.
type Privileges = HashMap<(String, String, String), (Instant, Arc<HashSet<String>>)>;

/// How long a role's column privileges are trusted before they are read again.
const PRIVILEGES_TTL: Duration = Duration::from_secs(1);

/// The connection the checks run on, opened on first use and reopened after a failure.
pub struct Rls {
    db_url: String,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    privileges: std::sync::Mutex<Privileges>,
}

impl Rls {
    pub fn new(db_url: &str) -> Rls {
        Rls {
            db_url: db_url.to_string(),
            client: tokio::sync::Mutex::new(None),
            privileges: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The columns of `schema.table` that `role` may SELECT (`has_column_privilege`, as
    /// Realtime asks it); none when they cannot be read (and that is logged).
    pub async fn selectable(&self, role: &str, schema: &str, table: &str) -> Arc<HashSet<String>> {
        let key = (role.to_string(), schema.to_string(), table.to_string());
        if let Ok(cache) = self.privileges.lock() {
            if let Some((_, columns)) = cache.get(&key).filter(|(at, _)| at.elapsed() < PRIVILEGES_TTL) {
                return columns.clone();
            }
        }
        let columns = match self.read_privileges(role, schema, table).await {
            Ok(columns) => Arc::new(columns),
            Err(e) => {
                tracing::warn!(error = %e, table, "column privileges unreadable; the role sees no column");
                return Arc::new(HashSet::new());
            }
        };
        if let Ok(mut cache) = self.privileges.lock() {
            cache.insert(key, (Instant::now(), columns.clone()));
        }
        columns
    }

    async fn read_privileges(&self, role: &str, schema: &str, table: &str) -> Result<HashSet<String>, RlsError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(crate::pg::connect(&self.db_url).await?);
        }
        let Some(client) = guard.as_ref() else { return Ok(HashSet::new()) };
        let rows = client
            .query(
                "select a.attname::text from pg_attribute a \
                  where a.attrelid = (quote_ident($2::text) || '.' || quote_ident($3::text))::regclass \
                    and a.attnum > 0 and not a.attisdropped \
                    and has_column_privilege($1::text, a.attrelid, a.attnum, 'SELECT')",
                &[&role, &schema, &table],
            )
            .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<_, String>(0).ok()).collect())
    }

    /// Whether the subscriber may see the row; any failure counts as "no" (and is logged).
    pub async fn visible(&self, check: &RowCheck) -> bool {
        match self.check(check).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, table = %check.table, "RLS check failed; change not sent");
                false
            }
        }
    }

    async fn check(&self, check: &RowCheck) -> Result<bool, RlsError> {
        let sql = visibility_sql(check)?;
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(crate::pg::connect(&self.db_url).await?);
        }
        let Some(client) = guard.as_mut() else { return Ok(false) };
        let tx = client.transaction().await?;
        tx.execute(
            "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
            &[&check.who.role, &check.who.claims],
        )
        .await?;
        let values: Vec<String> = check.keys.iter().map(|(_, _, v)| v.clone().unwrap_or_default()).collect();
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let visible: bool = tx.query_one(&sql, &params).await?.try_get(0)?;
        tx.rollback().await?;
        Ok(visible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_query_by_primary_key_with_quoted_names() {
        let who = std::sync::Arc::new(Subscriber { role: "authenticated".into(), claims: "{}".into() });
        let check = RowCheck {
            schema: "public".into(),
            table: "thread_participants".into(),
            keys: vec![
                ("thread_id".into(), "uuid".into(), Some("a".into())),
                ("user\"id".into(), "uuid".into(), Some("b".into())),
            ],
            who: who.clone(),
        };
        assert_eq!(
            visibility_sql(&check).expect("sql"),
            r#"select exists(select 1 from "public"."thread_participants" where "thread_id" = cast($1::text as "uuid") and "user""id" = cast($2::text as "uuid"))"#
        );
        let keyless = RowCheck { keys: vec![], ..check.clone() };
        assert!(matches!(visibility_sql(&keyless), Err(RlsError::NoKey)));
        let missing = RowCheck { keys: vec![("id".into(), "uuid".into(), None)], ..check };
        assert!(matches!(visibility_sql(&missing), Err(RlsError::NoKey)));
    }
}
