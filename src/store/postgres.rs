//! The store on plain PostgreSQL: the same calls as the PostgREST client ([`super::postgrest`]),
//! made directly through a connection pool, with the same answers, the same errors and the same
//! latency series (labelled by the PostgREST path each call stands for).
//!
//! Every call is one transaction that first does what PostgREST does for a request:
//! `set_config('role', ..., true)` (= `set local role`) and
//! `set_config('request.jwt.claims', <claims json>, true)`, so the project's RLS policies,
//! `auth.uid()` and the `chat_*` functions decide exactly as they do behind PostgREST. A user's
//! call runs as `authenticated` with the claims of the user's token, which this module verifies
//! itself first (as PostgREST does: it never trusts a token it did not check); the routing
//! path's reads run as `service_role` (BYPASSRLS) with the claims `{"role":"service_role"}`.
//! Results are rendered to JSON by PostgreSQL (`json_agg`, `to_json`) as PostgREST renders them.
//! Database errors map to [`StoreError`] with PostgREST's HTTP statuses, so REST answers are the
//! same on both backends. This module must never log a token, a password or claims, and never
//! widen what a user's token can read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, PoolError};
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::types::{
    call_name, time_from_db, As, HorizonCheck, NewDevice, OfflineRows, Profile, PushDecided, PushDelivery, PushDevice,
    PushFinish, ReadReceipt, ReadState, StoreError, SyncPoint, ThreadUnread,
};
use crate::auth::{AuthError, Verifier};
use crate::metrics::Metrics;
use crate::model::{format_time, MessageRow};
use crate::pg::{PgSettings, PgSetupError};

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    verifier: Arc<Verifier>,
    timeout: Duration,
    /// Where each call's latency is recorded (`gateway_postgrest_request_duration_seconds`).
    metrics: Option<Arc<Metrics>>,
}

/// The HTTP status PostgREST answers for a SQLSTATE (its documented table; anything not listed
/// is 400). `42501` is 403 because user calls always run as `authenticated`.
pub fn postgrest_status(code: &str) -> u16 {
    match code {
        "42501" => 403,
        "23503" | "23505" => 409,
        "25006" => 405,
        "P0001" => 400,
        "42883" | "42P01" => 404,
        "42P17" => 500,
        c if c.starts_with("08") || c.starts_with("53") || c == "57P01" => 503,
        c if c.starts_with("28") || c.starts_with("0L") || c.starts_with("0P") => 403,
        c if ["09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "P0", "XX"]
            .iter()
            .any(|p| c.starts_with(p)) =>
        {
            500
        }
        _ => 400,
    }
}

/// A database error as PostgREST would have reported it.
pub fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        // The statement timeout is the backend timeout: the same answer as a timed-out request.
        Some(db) if db.code().code() == "57014" => StoreError::Timeout,
        Some(db) => StoreError::Rejected {
            status: postgrest_status(db.code().code()),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        },
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::Timeout,
        PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn jwt_rejected(message: String) -> StoreError {
    StoreError::Rejected { status: 401, code: "PGRST301".into(), message }
}

impl PgStore {
    pub fn new(pool: Pool, verifier: Arc<Verifier>, timeout: Duration) -> PgStore {
        PgStore { pool, verifier, timeout, metrics: None }
    }

    /// The store of this backend, on its own pool (connections are made lazily).
    pub fn connect(settings: &PgSettings, verifier: Arc<Verifier>, timeout: Duration) -> Result<PgStore, PgSetupError> {
        Ok(PgStore::new(crate::pg::pool(settings, timeout)?, verifier, timeout))
    }

    /// Records the latency of every call in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> PgStore {
        PgStore { metrics: Some(metrics), ..self }
    }

    /// The claims of a token, verified here (signature, expiry, audience, subject), as JSON.
    async fn claims(&self, token: &str) -> Result<String, StoreError> {
        match self.verifier.verify(token).await {
            Ok(_) => {}
            Err(AuthError::KeysUnavailable) => return Err(StoreError::Unavailable("signing keys unavailable".into())),
            Err(AuthError::Expired) => return Err(jwt_rejected("JWT expired".into())),
            Err(e) => return Err(jwt_rejected(e.to_string())),
        }
        // Verified above: the payload segment is the signed claim set.
        let payload = token.trim().split('.').nth(1).ok_or_else(|| jwt_rejected("malformed JWT".into()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| jwt_rejected("malformed JWT".into()))?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|_| jwt_rejected("malformed JWT claims".into()))?;
        Ok(serde_json::Value::Object(claims).to_string())
    }

    /// [`Self::json_untimed`], its latency recorded as the PostgREST call `call` would be.
    async fn json<T: DeserializeOwned>(
        &self,
        call: &str,
        who: As<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = self.json_untimed(who, sql, params).await;
        if let Some(metrics) = &self.metrics {
            let outcome = result.as_ref().map_or_else(StoreError::outcome, |_| "ok");
            metrics.postgrest_call(call_name(call), outcome, started.elapsed());
        }
        result
    }

    /// Runs `sql` (one row, one column: JSON text) in a transaction with `who`'s role and claims.
    async fn json_untimed<T: DeserializeOwned>(
        &self,
        who: As<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<T, StoreError> {
        let (role, claims) = match who {
            As::User(token) => ("authenticated", self.claims(token).await?),
            As::Service => ("service_role", r#"{"role":"service_role"}"#.to_string()),
        };
        let timeout_ms = self.timeout.as_millis().to_string();
        let attempt = || async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await?;
            let setup = tx
                .prepare_cached(
                    "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
                     set_config('statement_timeout', $3, true)",
                )
                .await?;
            tx.execute(&setup, &[&role, &claims, &timeout_ms]).await?;
            let statement = tx.prepare_cached(sql).await?;
            let row = tx.query_one(&statement, params).await?;
            let text: Option<String> = row.try_get(0)?;
            tx.commit().await?;
            Ok::<_, Attempt>(text)
        };
        let run = async {
            match attempt().await {
                // A pooled connection the server had already closed (restart, terminated
                // backend): once more on a fresh one. Every call here is idempotent.
                Err(Attempt::Db(e)) if e.is_closed() => attempt().await,
                other => other,
            }
        };
        let text = match tokio::time::timeout(self.timeout, run).await {
            Err(_) => return Err(StoreError::Timeout),
            Ok(Err(Attempt::Db(e))) => return Err(db_error(e)),
            Ok(Err(Attempt::Store(e))) => return Err(e),
            Ok(Ok(text)) => text,
        };
        serde_json::from_str(text.as_deref().unwrap_or("null")).map_err(|e| StoreError::Decode(e.to_string()))
    }

    pub async fn offline_messages(
        &self,
        token: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        let (since, limit) = (format_time(since), limit as i32);
        let rows: Vec<serde_json::Value> = self
            .json(
            "rpc/chat_offline_messages",
                As::User(token),
                "select coalesce(json_agg(t), '[]')::text from public.chat_offline_messages($1::text::timestamptz, $2) t",
                &[&since, &limit],
            )
            .await?;
        Ok(OfflineRows::from_rows(rows))
    }

    pub async fn sync_horizon(&self, token: &str) -> Result<DateTime<Utc>, StoreError> {
        let horizon: String = self
            .json("rpc/chat_sync_horizon", As::User(token), "select to_json(public.chat_sync_horizon())::text", &[])
            .await?;
        time_from_db(&horizon)
    }

    pub async fn unread_count(&self, token: &str) -> Result<i64, StoreError> {
        self.json("rpc/chat_unread_count", As::User(token), "select to_json(public.chat_unread_count())::text", &[])
            .await
    }

    pub async fn unread_count_of(&self, user_id: Uuid) -> Result<i64, StoreError> {
        self.json(
            "rpc/chat_unread_count_of",
            As::Service,
            "select to_json(public.chat_unread_count_of($1))::text",
            &[&user_id],
        )
        .await
    }

    pub async fn read_state(&self, token: &str, thread_id: Uuid, messages: u32) -> Result<ReadState, StoreError> {
        let sql = "select public.chat_read_state($1, $2)::text";
        let messages = i32::try_from(messages).unwrap_or(i32::MAX);
        self.json("rpc/chat_read_state", As::User(token), sql, &[&thread_id, &messages]).await
    }

    pub async fn share_read_state(&self, token: &str, thread_id: Uuid, share: bool) -> Result<bool, StoreError> {
        let sql = "select to_json(public.chat_share_read_state($1, $2))::text";
        self.json("rpc/chat_share_read_state", As::User(token), sql, &[&thread_id, &share]).await
    }

    pub async fn read_receipt(&self, thread_id: Uuid, reader: Uuid) -> Result<Option<ReadReceipt>, StoreError> {
        let sql = "select public.chat_read_receipt($1, $2)::text";
        self.json("rpc/chat_read_receipt", As::Service, sql, &[&thread_id, &reader]).await
    }

    pub async fn set_realtime(&self, token: &str, enabled: bool) -> Result<bool, StoreError> {
        self.json(
            "rpc/chat_set_realtime",
            As::User(token),
            "select to_json(public.chat_set_realtime($1))::text",
            &[&enabled],
        )
        .await
    }

    pub async fn realtime_off_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        self.json(
            "chat_realtime_settings",
            As::Service,
            "select coalesce(json_agg(user_id), '[]')::text from (select user_id \
               from public.chat_realtime_settings \
              where not realtime_enabled and ($1::uuid is null or user_id > $1) \
              order by user_id limit $2) s",
            &[&after, &i64::from(limit)],
        )
        .await
    }

    pub async fn mark_thread_read(&self, token: &str, thread_id: Uuid) -> Result<(), StoreError> {
        let _: serde_json::Value = self
            .json(
                "rpc/chat_mark_thread_read",
                As::User(token),
                "select to_json(public.chat_mark_thread_read($1))::text",
                &[&thread_id],
            )
            .await?;
        Ok(())
    }

    pub async fn can_read_thread(&self, token: &str, thread_id: Uuid) -> Result<bool, StoreError> {
        self.json(
            "threads",
            As::User(token),
            "select to_json(exists(select 1 from public.threads where id = $1))::text",
            &[&thread_id],
        )
        .await
    }

    pub async fn sync_horizon_check(&self) -> Result<HorizonCheck, StoreError> {
        self.json("rpc/chat_sync_horizon_check", As::Service, "select public.chat_sync_horizon_check()::text", &[])
            .await
    }

    pub async fn prune_membership_events(&self, keep_secs: i32) -> Result<i64, StoreError> {
        self.json(
            "rpc/chat_prune_membership_events",
            As::Service,
            "select to_json(public.chat_prune_membership_events($1))::text",
            &[&keep_secs],
        )
        .await
    }

    pub async fn push_decide(
        &self,
        delay_ms: i32,
        limit: i32,
        channels: &[&str],
        max_age_secs: i32,
    ) -> Result<PushDecided, StoreError> {
        let sql = "select public.chat_push_decide($1, $2, $3, $4)::text";
        self.json("rpc/chat_push_decide", As::Service, sql, &[&delay_ms, &limit, &channels, &max_age_secs]).await
    }

    pub async fn push_claim(
        &self,
        channels: &[&str],
        limit: i32,
        lease_secs: i32,
        gap_secs: i32,
    ) -> Result<Vec<PushDelivery>, StoreError> {
        let sql = "select coalesce(json_agg(c), '[]')::text from public.chat_push_claim($1, $2, $3, $4) c";
        self.json("rpc/chat_push_claim", As::Service, sql, &[&channels, &limit, &lease_secs, &gap_secs]).await
    }

    pub async fn push_finish_batch(&self, outcomes: &[PushFinish]) -> Result<i64, StoreError> {
        let outcomes = serde_json::to_value(outcomes).map_err(|e| StoreError::Decode(e.to_string()))?;
        let sql = "select to_json(public.chat_push_finish_batch($1))::text";
        self.json("rpc/chat_push_finish_batch", As::Service, sql, &[&outcomes]).await
    }

    pub async fn push_prune(&self, keep_hours: i32) -> Result<i64, StoreError> {
        let sql = "select to_json(public.chat_push_prune($1))::text";
        self.json("rpc/chat_push_prune", As::Service, sql, &[&keep_hours]).await
    }

    pub async fn push_presence_report(
        &self,
        instance: Uuid,
        online: &[Uuid],
        offline: &[Uuid],
        ttl_secs: i32,
    ) -> Result<i64, StoreError> {
        let sql = "select to_json(public.chat_push_presence_report($1, $2, $3, $4))::text";
        self.json("rpc/chat_push_presence_report", As::Service, sql, &[&instance, &online, &offline, &ttl_secs]).await
    }

    pub async fn unread_by_thread(&self, token: &str) -> Result<Vec<ThreadUnread>, StoreError> {
        let sql = "select public.chat_unread_by_thread()::text";
        self.json("rpc/chat_unread_by_thread", As::User(token), sql, &[]).await
    }

    pub async fn thread_messages(
        &self,
        token: &str,
        thread_id: Uuid,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        let sql = "select coalesce(json_agg(row_to_json(r)), '[]')::text \
                     from public.chat_thread_messages($1, $2, $3, $4) r";
        let (at, id) = (before.map(|(t, _)| t), before.map(|(_, id)| id));
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<serde_json::Value> =
            self.json("rpc/chat_thread_messages", As::User(token), sql, &[&thread_id, &at, &id, &limit]).await?;
        Ok(OfflineRows::from_rows(rows))
    }

    pub async fn register_push_device(&self, token: &str, d: &NewDevice) -> Result<Uuid, StoreError> {
        let sql = "select to_json(public.chat_register_push_device($1, $2, $3, $4, $5, $6))::text";
        let params: [&(dyn ToSql + Sync); 6] = [&d.platform, &d.token, &d.endpoint, &d.p256dh, &d.auth, &d.locale];
        self.json("rpc/chat_register_push_device", As::User(token), sql, &params).await
    }

    pub async fn push_devices(&self, token: &str) -> Result<Vec<PushDevice>, StoreError> {
        let sql = "select public.chat_push_devices()::text";
        self.json("rpc/chat_push_devices", As::User(token), sql, &[]).await
    }

    pub async fn unregister_push_device(&self, token: &str, id: Uuid) -> Result<bool, StoreError> {
        let sql = "select to_json(public.chat_unregister_push_device($1))::text";
        self.json("rpc/chat_unregister_push_device", As::User(token), sql, &[&id]).await
    }

    pub async fn mute_thread(
        &self,
        token: &str,
        thread_id: Uuid,
        until: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = "select to_json(public.chat_mute_thread($1, $2))::text";
        let stored: Option<String> =
            self.json("rpc/chat_mute_thread", As::User(token), sql, &[&thread_id, &until]).await?;
        stored.as_deref().map(time_from_db).transpose()
    }

    pub async fn push_presence_clear(&self, instance: Uuid) -> Result<i64, StoreError> {
        let sql = "select to_json(public.chat_push_presence_clear($1))::text";
        self.json("rpc/chat_push_presence_clear", As::Service, sql, &[&instance]).await
    }

    pub async fn push_stats(&self) -> Result<super::types::PushStats, StoreError> {
        let sql = "select public.chat_push_stats()::text";
        self.json("rpc/chat_push_stats", As::Service, sql, &[]).await
    }

    pub async fn thread_participants(&self, thread_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        self.json(
            "thread_participants",
            As::Service,
            "select coalesce(json_agg(user_id), '[]')::text from public.thread_participants where thread_id = $1",
            &[&thread_id],
        )
        .await
    }

    pub async fn profiles(&self, ids: &[Uuid]) -> Result<Vec<Profile>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.json(
            "profiles",
            As::Service,
            "select coalesce(json_agg(t), '[]')::text from \
             (select id, full_name, role from public.profiles where id = any($1)) t",
            &[&ids],
        )
        .await
    }

    pub async fn messages_page(
        &self,
        since: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let since = format_time(since);
        let (after_at, after_id) = (after.map(|(t, _)| format_time(t)), after.map(|(_, id)| id));
        let limit = limit as i32;
        self.json(
            "rpc/chat_messages_page",
            As::Service,
            "select coalesce(json_agg(t), '[]')::text from public.chat_messages_page(\
             $1::text::timestamptz, $2::text::timestamptz, $3, $4) t",
            &[&since, &after_at, &after_id, &limit],
        )
        .await
    }

    pub async fn sync_point(&self) -> Result<SyncPoint, StoreError> {
        self.json("rpc/chat_sync_point", As::Service, "select public.chat_sync_point()::text", &[]).await
    }
}

/// What one attempt can fail with.
enum Attempt {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Attempt {
        Attempt::Db(e)
    }
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Attempt {
        Attempt::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_postgrest() {
        assert_eq!(postgrest_status("42501"), 403);
        assert_eq!(postgrest_status("22P02"), 400);
        assert_eq!(postgrest_status("22007"), 400);
        assert_eq!(postgrest_status("P0001"), 400);
        assert_eq!(postgrest_status("23505"), 409);
        assert_eq!(postgrest_status("42883"), 404);
        assert_eq!(postgrest_status("08006"), 503);
        assert_eq!(postgrest_status("XX000"), 500);
    }
}
