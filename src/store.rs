//! Store: every database call the gateway makes, behind one type with two backends: Supabase
//! PostgREST over HTTP ([`Postgrest`], the default) or plain PostgreSQL ([`crate::pg::PgStore`],
//! same calls, same answers, same errors). [`Store`] only dispatches.
//!
//! User-facing data (offline messages, unread counts, mark-read, the thread access check) is read
//! with the user's own token and the anon `apikey`, so row-level security decides; so are the
//! user's realtime switch and its reading. Only the hub's membership and profile lookups, the gap
//! catch-up and a user's unread count for read-state pushes use the service role key. Every call has a
//! timeout; failures are typed ([`StoreError`]) and mapped to HTTP answers once, in [`crate::api`].
//! This module must never log a token and never widen what a user's token can read.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::model::parse_time;
pub use crate::model::MessageRow;

/// What went wrong talking to PostgREST.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database did not answer in time")]
    Timeout,
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// PostgREST answered with an error body `{code, message, details, hint}`.
    #[error("{message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("unexpected answer from the database: {0}")]
    Decode(String),
}

impl StoreError {
    /// A transport failure: timed out, or the backend could not be reached or read.
    fn transport(e: reqwest::Error) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout
        } else {
            StoreError::Unavailable(e.without_url().to_string())
        }
    }
}

/// Whose credentials a call uses.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// The calling user's own access token (RLS applies).
    User(&'a str),
    /// The service role key (bypasses RLS): membership, profiles, catch-up only.
    Service,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    pub id: Uuid,
    pub full_name: String,
    pub role: String,
}

#[derive(Deserialize)]
struct PostgrestError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A PostgREST client for one Supabase project.
#[derive(Clone)]
pub struct Postgrest {
    http: reqwest::Client,
    rest_url: String,
    anon_key: String,
    service_key: String,
    timeout: Duration,
    /// Where each call's latency is recorded (`gateway_postgrest_request_duration_seconds`).
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// The database's sync horizon read together with its clock (see `chat_sync_point()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SyncPoint {
    /// Every transaction that started before this had ended when the reading was taken.
    pub horizon: DateTime<Utc>,
    /// The database's clock at the reading.
    pub db_now: DateTime<Utc>,
}

/// `chat_sync_horizon_check()`: whether `chat_sync_horizon()` sees every session's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HorizonCheck {
    /// The horizon function's owner, quoted as an identifier.
    pub owner: String,
    pub sees_all_sessions: bool,
}

/// One answer of `chat_offline_messages`, decoded row by row so that one odd row cannot fail the
/// page.
#[derive(Debug, Default)]
pub struct OfflineRows {
    /// The rows that decoded, oldest first.
    pub messages: Vec<MessageRow>,
    /// How many rows the database returned, decodable or not.
    pub returned: usize,
    /// The `created_at` of the last row the database returned (the page's boundary).
    pub last_created_at: Option<DateTime<Utc>>,
}

impl OfflineRows {
    pub(crate) fn from_rows(rows: Vec<Value>) -> OfflineRows {
        let returned = rows.len();
        let last_created_at =
            rows.last().and_then(|r| r.get("created_at")).and_then(Value::as_str).and_then(parse_time);
        let messages = rows
            .into_iter()
            .filter_map(|row| match serde_json::from_value::<MessageRow>(row) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "offline sync: undecodable message row skipped");
                    None
                }
            })
            .collect();
        OfflineRows { messages, returned, last_created_at }
    }
}

/// The gateway's store: the same calls on either backend.
#[derive(Clone)]
pub enum Store {
    Rest(Postgrest),
    Pg(crate::pg::PgStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Rest(s) => s.$method($($arg),*).await,
            Store::Pg(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// A PostgREST store (Supabase).
    pub fn new(
        http: reqwest::Client,
        rest_url: String,
        anon_key: String,
        service_key: String,
        timeout: Duration,
    ) -> Store {
        Store::Rest(Postgrest { http, rest_url, anon_key, service_key, timeout, metrics: None })
    }

    /// Records the latency of every PostgREST call in `metrics`, labelled by [`call_name`].
    pub fn with_metrics(self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Store {
        match self {
            Store::Rest(postgrest) => Store::Rest(Postgrest { metrics: Some(metrics), ..postgrest }),
            other => other,
        }
    }

    /// `chat_offline_messages(p_since, p_limit)` as the user.
    pub async fn offline_messages(&self, token: &str, since: &str, limit: u32) -> Result<OfflineRows, StoreError> {
        dispatch!(self.offline_messages(token, since, limit))
    }
    /// `chat_sync_horizon()` as the user.
    pub async fn sync_horizon(&self, token: &str) -> Result<String, StoreError> {
        dispatch!(self.sync_horizon(token))
    }
    /// `chat_unread_count()` as the user.
    pub async fn unread_count(&self, token: &str) -> Result<i64, StoreError> {
        dispatch!(self.unread_count(token))
    }
    /// `chat_unread_count_of(p_user_id)` with service rights (pushes to that user only).
    pub async fn unread_count_of(&self, user_id: Uuid) -> Result<i64, StoreError> {
        dispatch!(self.unread_count_of(user_id))
    }
    /// `chat_set_realtime(p_enabled)` as the user.
    pub async fn set_realtime(&self, token: &str, enabled: bool) -> Result<bool, StoreError> {
        dispatch!(self.set_realtime(token, enabled))
    }
    /// Every user who switched realtime off (service rights), read in keyset pages.
    pub async fn realtime_off_users(&self) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        const PAGE: u32 = 1000;
        let mut users = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = dispatch!(self.realtime_off_page(after, PAGE))?;
            let full = page.len() >= PAGE as usize;
            after = page.last().copied();
            users.extend(page);
            if !full {
                return Ok(users);
            }
        }
    }
    /// `chat_mark_thread_read(p_thread_id)` as the user.
    pub async fn mark_thread_read(&self, token: &str, thread_id: Uuid) -> Result<(), StoreError> {
        dispatch!(self.mark_thread_read(token, thread_id))
    }
    /// Whether RLS lets the user read the thread.
    pub async fn can_read_thread(&self, token: &str, thread_id: Uuid) -> Result<bool, StoreError> {
        dispatch!(self.can_read_thread(token, thread_id))
    }
    /// Participants of a thread (service rights).
    pub async fn thread_participants(&self, thread_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        dispatch!(self.thread_participants(thread_id))
    }
    /// Profiles by id (service rights).
    pub async fn profiles(&self, ids: &[Uuid]) -> Result<Vec<Profile>, StoreError> {
        dispatch!(self.profiles(ids))
    }
    /// One keyset page of the gap fill (service rights).
    pub async fn messages_page(
        &self,
        since: &str,
        after: Option<(&str, Uuid)>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        dispatch!(self.messages_page(since, after, limit))
    }
    /// `chat_sync_point()` (service rights).
    pub async fn sync_point(&self) -> Result<SyncPoint, StoreError> {
        dispatch!(self.sync_point())
    }
    /// `chat_sync_horizon_check()` (service rights).
    pub async fn sync_horizon_check(&self) -> Result<HorizonCheck, StoreError> {
        dispatch!(self.sync_horizon_check())
    }
    /// `chat_prune_membership_events(p_keep_seconds)` (service rights): how many rows went.
    pub async fn prune_membership_events(&self, keep_secs: i32) -> Result<i64, StoreError> {
        dispatch!(self.prune_membership_events(keep_secs))
    }
}

impl Postgrest {
    async fn call<T: DeserializeOwned>(
        &self,
        who: As<'_>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.call_untimed(who, method, path, query, body).await;
        if let Some(metrics) = &self.metrics {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(StoreError::Timeout) => "timeout",
                Err(StoreError::Unavailable(_)) => "unavailable",
                Err(StoreError::Rejected { .. }) => "rejected",
                Err(StoreError::Decode(_)) => "decode",
            };
            metrics.postgrest_call(call_name(path), outcome, started.elapsed());
        }
        result
    }

    async fn call_untimed<T: DeserializeOwned>(
        &self,
        who: As<'_>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<T, StoreError> {
        let (apikey, bearer) = match who {
            As::User(token) => (&self.anon_key, token),
            As::Service => (&self.service_key, self.service_key.as_str()),
        };
        let mut request = self
            .http
            .request(method, format!("{}/{}", self.rest_url, path))
            .header("apikey", apikey)
            .bearer_auth(bearer)
            .header("Accept", "application/json")
            .timeout(self.timeout)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(StoreError::transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(StoreError::transport)?;
        if !status.is_success() {
            let parsed: Option<PostgrestError> = serde_json::from_slice(&bytes).ok();
            let (code, message) = match parsed {
                Some(p) => (p.code.unwrap_or_default(), p.message.unwrap_or_else(|| status.to_string())),
                None => (String::new(), status.to_string()),
            };
            return Err(StoreError::Rejected { status: status.as_u16(), code, message });
        }
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return serde_json::from_value(Value::Null).map_err(|e| StoreError::Decode(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Decode(e.to_string()))
    }

    async fn rpc<T: DeserializeOwned>(&self, who: As<'_>, function: &str, args: Value) -> Result<T, StoreError> {
        self.call(who, Method::POST, &format!("rpc/{function}"), &[], Some(args)).await
    }

    /// `chat_offline_messages(p_since, p_limit)` as the user: at least `limit` rows when that
    /// many remain (more when the last ones share a `created_at`), decoded row by row.
    pub async fn offline_messages(&self, token: &str, since: &str, limit: u32) -> Result<OfflineRows, StoreError> {
        let rows: Vec<Value> =
            self.rpc(As::User(token), "chat_offline_messages", json!({"p_since": since, "p_limit": limit})).await?;
        Ok(OfflineRows::from_rows(rows))
    }

    /// `chat_sync_horizon()` as the user: the safe resume point for offline sync.
    pub async fn sync_horizon(&self, token: &str) -> Result<String, StoreError> {
        self.rpc(As::User(token), "chat_sync_horizon", json!({})).await
    }

    /// `chat_unread_count()` as the user.
    pub async fn unread_count(&self, token: &str) -> Result<i64, StoreError> {
        self.rpc(As::User(token), "chat_unread_count", json!({})).await
    }

    /// `chat_unread_count_of(p_user_id)` with the service key: a user's unread count for a push
    /// to their other devices. Never answer a client with it for anyone but that user.
    pub async fn unread_count_of(&self, user_id: Uuid) -> Result<i64, StoreError> {
        self.rpc(As::Service, "chat_unread_count_of", json!({"p_user_id": user_id})).await
    }

    /// `chat_set_realtime(p_enabled)` as the user: stores the user's realtime switch (shared by
    /// every gateway instance); returns the stored value.
    pub async fn set_realtime(&self, token: &str, enabled: bool) -> Result<bool, StoreError> {
        self.rpc(As::User(token), "chat_set_realtime", json!({"p_enabled": enabled})).await
    }

    /// One keyset page of the users who switched realtime off (service role).
    pub async fn realtime_off_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            user_id: Uuid,
        }
        let mut query = vec![
            ("select", "user_id".to_string()),
            ("realtime_enabled", "eq.false".into()),
            ("order", "user_id.asc".into()),
            ("limit", limit.to_string()),
        ];
        if let Some(after) = after {
            query.push(("user_id", format!("gt.{after}")));
        }
        let rows: Vec<Row> = self.call(As::Service, Method::GET, "chat_realtime_settings", &query, None).await?;
        Ok(rows.into_iter().map(|r| r.user_id).collect())
    }

    /// `chat_mark_thread_read(p_thread_id)` as the user.
    pub async fn mark_thread_read(&self, token: &str, thread_id: Uuid) -> Result<(), StoreError> {
        let _: Value = self.rpc(As::User(token), "chat_mark_thread_read", json!({"p_thread_id": thread_id})).await?;
        Ok(())
    }

    /// Whether RLS lets the user read the thread.
    pub async fn can_read_thread(&self, token: &str, thread_id: Uuid) -> Result<bool, StoreError> {
        let rows: Vec<Value> = self
            .call(
                As::User(token),
                Method::GET,
                "threads",
                &[("select", "id".into()), ("id", format!("eq.{thread_id}"))],
                None,
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Participants of a thread (service role).
    pub async fn thread_participants(&self, thread_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            user_id: Uuid,
        }
        let rows: Vec<Row> = self
            .call(
                As::Service,
                Method::GET,
                "thread_participants",
                &[("select", "user_id".into()), ("thread_id", format!("eq.{thread_id}"))],
                None,
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.user_id).collect())
    }

    /// Profiles by id (service role).
    pub async fn profiles(&self, ids: &[Uuid]) -> Result<Vec<Profile>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
        self.call(
            As::Service,
            Method::GET,
            "profiles",
            &[("select", "id,full_name,role".into()), ("id", format!("in.({list})"))],
            None,
        )
        .await
    }

    /// One page of the gap fill (service role): messages with `created_at >= since`, after the
    /// keyset position `after` = (created_at, id), oldest first.
    pub async fn messages_page(
        &self,
        since: &str,
        after: Option<(&str, Uuid)>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let args = match after {
            Some((created_at, id)) => {
                json!({"p_since": since, "p_after_created_at": created_at, "p_after_id": id, "p_limit": limit})
            }
            None => json!({"p_since": since, "p_limit": limit}),
        };
        self.rpc(As::Service, "chat_messages_page", args).await
    }

    /// `chat_sync_point()` (service role): the sync horizon and the database's clock.
    pub async fn sync_point(&self) -> Result<SyncPoint, StoreError> {
        self.rpc(As::Service, "chat_sync_point", json!({})).await
    }

    pub async fn sync_horizon_check(&self) -> Result<HorizonCheck, StoreError> {
        self.rpc(As::Service, "chat_sync_horizon_check", json!({})).await
    }

    pub async fn prune_membership_events(&self, keep_secs: i32) -> Result<i64, StoreError> {
        self.rpc(As::Service, "chat_prune_membership_events", json!({"p_keep_seconds": keep_secs})).await
    }
}

/// Every PostgREST path the store calls, as the static label of its latency series.
const CALLS: [&str; 14] = [
    "rpc/chat_offline_messages",
    "rpc/chat_sync_horizon_check",
    "rpc/chat_prune_membership_events",
    "rpc/chat_sync_horizon",
    "rpc/chat_sync_point",
    "rpc/chat_unread_count",
    "rpc/chat_unread_count_of",
    "rpc/chat_set_realtime",
    "chat_realtime_settings",
    "rpc/chat_mark_thread_read",
    "rpc/chat_messages_page",
    "threads",
    "thread_participants",
    "profiles",
];

/// The metrics label of a call's path: itself when known, `other` otherwise (a label never
/// comes from data).
pub fn call_name(path: &str) -> &'static str {
    CALLS.iter().find(|c| **c == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, created_at: &str, sender: Value) -> Value {
        json!({
            "id": id, "thread_id": Uuid::nil(), "sender_id": Uuid::nil(), "content": "hi",
            "message_type": "text", "created_at": created_at, "sender": sender,
        })
    }

    #[test]
    fn a_hidden_sender_leaves_the_row_readable_without_a_name() {
        let id = Uuid::from_u128(1).to_string();
        let page = OfflineRows::from_rows(vec![
            row(&id, "2026-01-01T00:00:00+00:00", json!({"full_name": null, "role": null})),
            row(
                &Uuid::from_u128(2).to_string(),
                "2026-01-01T00:00:01+00:00",
                json!({"full_name": "A", "role": "teacher"}),
            ),
        ]);
        assert_eq!(page.returned, 2);
        assert_eq!(page.messages.len(), 2);
        assert!(page.messages[0].sender.is_none());
        assert_eq!(
            page.messages[1].sender,
            Some(crate::model::Sender { full_name: "A".into(), role: "teacher".into() })
        );
    }

    #[test]
    fn an_undecodable_row_is_left_out_but_still_bounds_the_page() {
        let page = OfflineRows::from_rows(vec![
            row(&Uuid::from_u128(1).to_string(), "2026-01-01T00:00:00+00:00", Value::Null),
            row("not-a-uuid", "2026-01-01T00:00:05+00:00", Value::Null),
        ]);
        assert_eq!((page.returned, page.messages.len()), (2, 1));
        assert_eq!(page.last_created_at, parse_time("2026-01-01T00:00:05Z"));
    }
}
