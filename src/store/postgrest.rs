//! The store on Supabase: every call of [`super::Store`] as a PostgREST request over HTTP, with
//! the user's own token and the anon `apikey` (RLS decides) or the service role key.
//!
//! Owns the HTTP requests, PostgREST's error bodies and the timing of each call; times go out in
//! the protocol's format and come back parsed here. Never logs a token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::types::{
    call_name, time_from_db, As, HorizonCheck, NewDevice, OfflineRows, Profile, PushDecided, PushDelivery, PushDevice,
    PushFinish, ReadReceipt, ReadState, StoreError, SyncPoint, ThreadUnread,
};
use crate::metrics::Metrics;
use crate::model::{format_time, MessageRow};

/// A transport failure: timed out, or the backend could not be reached or read.
fn transport(e: reqwest::Error) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(e.without_url().to_string())
    }
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
    metrics: Option<Arc<Metrics>>,
}

impl Postgrest {
    pub fn new(
        http: reqwest::Client,
        rest_url: String,
        anon_key: String,
        service_key: String,
        timeout: Duration,
    ) -> Self {
        Postgrest { http, rest_url, anon_key, service_key, timeout, metrics: None }
    }

    /// Records the latency of every call in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Postgrest { metrics: Some(metrics), ..self }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        who: As<'_>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = self.call_untimed(who, method, path, query, body).await;
        if let Some(metrics) = &self.metrics {
            let outcome = result.as_ref().map_or_else(StoreError::outcome, |_| "ok");
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
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
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
    pub async fn offline_messages(
        &self,
        token: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        let args = json!({"p_since": format_time(since), "p_limit": limit});
        let rows: Vec<Value> = self.rpc(As::User(token), "chat_offline_messages", args).await?;
        Ok(OfflineRows::from_rows(rows))
    }

    /// `chat_sync_horizon()` as the user: the safe resume point for offline sync.
    pub async fn sync_horizon(&self, token: &str) -> Result<DateTime<Utc>, StoreError> {
        let horizon: String = self.rpc(As::User(token), "chat_sync_horizon", json!({})).await?;
        time_from_db(&horizon)
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

    /// `chat_read_state(p_thread_id, p_messages)` as the user (RLS and the function's rules decide).
    pub async fn read_state(&self, token: &str, thread_id: Uuid, messages: u32) -> Result<ReadState, StoreError> {
        let args = json!({"p_thread_id": thread_id, "p_messages": messages});
        self.rpc(As::User(token), "chat_read_state", args).await
    }

    /// `chat_share_read_state(p_thread_id, p_share)` as the user.
    pub async fn share_read_state(&self, token: &str, thread_id: Uuid, share: bool) -> Result<bool, StoreError> {
        self.rpc(As::User(token), "chat_share_read_state", json!({"p_thread_id": thread_id, "p_share": share})).await
    }

    /// `chat_read_receipt(p_thread_id, p_reader)` with the service key: who may be told of a read,
    /// and how. Never answer a client with it: the router sends each viewer only their part.
    pub async fn read_receipt(&self, thread_id: Uuid, reader: Uuid) -> Result<Option<ReadReceipt>, StoreError> {
        self.rpc(As::Service, "chat_read_receipt", json!({"p_thread_id": thread_id, "p_reader": reader})).await
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
        since: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let since = format_time(since);
        let args = match after {
            Some((created_at, id)) => {
                let created_at = format_time(created_at);
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

    pub async fn push_decide(
        &self,
        delay_ms: i32,
        limit: i32,
        channels: &[&str],
        max_age_secs: i32,
    ) -> Result<PushDecided, StoreError> {
        let args = json!({"p_delay_ms": delay_ms, "p_limit": limit, "p_channels": channels, "p_max_age_seconds": max_age_secs});
        self.rpc(As::Service, "chat_push_decide", args).await
    }

    pub async fn push_claim(
        &self,
        channels: &[&str],
        limit: i32,
        lease_secs: i32,
        gap_secs: i32,
    ) -> Result<Vec<PushDelivery>, StoreError> {
        let args =
            json!({"p_channels": channels, "p_limit": limit, "p_lease_seconds": lease_secs, "p_gap_seconds": gap_secs});
        self.rpc(As::Service, "chat_push_claim", args).await
    }

    pub async fn push_finish_batch(&self, outcomes: &[PushFinish]) -> Result<i64, StoreError> {
        self.rpc(As::Service, "chat_push_finish_batch", json!({"p_outcomes": outcomes})).await
    }

    pub async fn push_prune(&self, keep_hours: i32) -> Result<i64, StoreError> {
        self.rpc(As::Service, "chat_push_prune", json!({"p_keep_hours": keep_hours})).await
    }

    pub async fn push_presence_report(
        &self,
        instance: Uuid,
        online: &[Uuid],
        offline: &[Uuid],
        ttl_secs: i32,
    ) -> Result<i64, StoreError> {
        let args = json!({"p_instance": instance, "p_online": online, "p_offline": offline, "p_ttl_seconds": ttl_secs});
        self.rpc(As::Service, "chat_push_presence_report", args).await
    }

    pub async fn push_presence_clear(&self, instance: Uuid) -> Result<i64, StoreError> {
        self.rpc(As::Service, "chat_push_presence_clear", json!({"p_instance": instance})).await
    }

    pub async fn register_push_device(&self, token: &str, d: &NewDevice) -> Result<Uuid, StoreError> {
        let args = json!({
            "p_platform": d.platform, "p_token": d.token, "p_endpoint": d.endpoint,
            "p_p256dh": d.p256dh, "p_auth": d.auth, "p_locale": d.locale,
        });
        self.rpc(As::User(token), "chat_register_push_device", args).await
    }

    pub async fn push_devices(&self, token: &str) -> Result<Vec<PushDevice>, StoreError> {
        self.rpc(As::User(token), "chat_push_devices", json!({})).await
    }

    pub async fn unregister_push_device(&self, token: &str, id: Uuid) -> Result<bool, StoreError> {
        self.rpc(As::User(token), "chat_unregister_push_device", json!({"p_id": id})).await
    }

    pub async fn mute_thread(
        &self,
        token: &str,
        thread_id: Uuid,
        until: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let args = json!({"p_thread_id": thread_id, "p_until": until.map(format_time)});
        let stored: Option<String> = self.rpc(As::User(token), "chat_mute_thread", args).await?;
        stored.as_deref().map(time_from_db).transpose()
    }

    pub async fn push_stats(&self) -> Result<super::types::PushStats, StoreError> {
        self.rpc(As::Service, "chat_push_stats", json!({})).await
    }

    pub async fn unread_by_thread(&self, token: &str) -> Result<Vec<ThreadUnread>, StoreError> {
        self.rpc(As::User(token), "chat_unread_by_thread", json!({})).await
    }

    pub async fn thread_messages(
        &self,
        token: &str,
        thread_id: Uuid,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        let args = json!({
            "p_thread_id": thread_id,
            "p_before_created_at": before.map(|(t, _)| format_time(t)),
            "p_before_id": before.map(|(_, id)| id),
            "p_limit": limit,
        });
        let rows: Vec<Value> = self.rpc(As::User(token), "chat_thread_messages", args).await?;
        Ok(OfflineRows::from_rows(rows))
    }
}
