//! Store: every database call the gateway makes, behind one type with two backends: Supabase
//! PostgREST over HTTP ([`postgrest`], the default) or plain PostgreSQL ([`postgres`], same calls,
//! same answers, same errors). [`Store`] only dispatches; what the calls take and answer is in
//! [`types`].
//!
//! User-facing data (offline messages, unread counts, mark-read, the thread access check) is read
//! with the user's own token and the anon `apikey`, so row-level security decides; so are the
//! user's realtime switch and its reading. Only the hub's membership and profile lookups, the gap
//! catch-up, a user's unread count for read-state pushes and the live read receipts (whose rules
//! are decided in SQL, `chat_read_receipt`) use the service role key. Every call has a
//! timeout and its latency recorded by call and outcome; failures are typed ([`StoreError`]) and
//! mapped to HTTP answers once, in [`crate::error`].
//! This module must never log a token and never widen what a user's token can read.

pub mod postgres;
pub mod postgrest;
pub mod types;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::metrics::Metrics;
pub use crate::model::MessageRow;
pub use types::{
    HorizonCheck, NewDevice, OfflineRows, Profile, PushDecided, PushDelivery, PushDevice, PushFinish, PushStats,
    ReadReceipt, ReadState, Reader, StoreError, SyncPoint, ThreadUnread,
};

/// The gateway's store: the same calls on either backend.
#[derive(Clone)]
pub enum Store {
    Rest(postgrest::Postgrest),
    Pg(postgres::PgStore),
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
        Store::Rest(postgrest::Postgrest::new(http, rest_url, anon_key, service_key, timeout))
    }

    /// Records the latency of every call in `metrics`, labelled by [`types::call_name`], on
    /// either backend.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Store {
        match self {
            Store::Rest(s) => Store::Rest(s.with_metrics(metrics)),
            Store::Pg(s) => Store::Pg(s.with_metrics(metrics)),
        }
    }

    /// `chat_offline_messages(p_since, p_limit)` as the user.
    pub async fn offline_messages(
        &self,
        token: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        dispatch!(self.offline_messages(token, since, limit))
    }
    /// `chat_sync_horizon()` as the user.
    pub async fn sync_horizon(&self, token: &str) -> Result<DateTime<Utc>, StoreError> {
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
    /// `chat_unread_by_thread()` as the user: each of their threads with its unread count.
    pub async fn unread_by_thread(&self, token: &str) -> Result<Vec<ThreadUnread>, StoreError> {
        dispatch!(self.unread_by_thread(token))
    }
    /// `chat_thread_messages(...)` as the user: up to `limit` messages of the thread strictly before
    /// the keyset position `before`, newest first.
    pub async fn thread_messages(
        &self,
        token: &str,
        thread_id: Uuid,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<OfflineRows, StoreError> {
        dispatch!(self.thread_messages(token, thread_id, before, limit))
    }
    /// `chat_read_state(p_thread_id, p_messages)` as the user: whose read state they may see and
    /// the counts of the newest `messages` messages. Rejected with 403 for a non-participant.
    pub async fn read_state(&self, token: &str, thread_id: Uuid, messages: u32) -> Result<ReadState, StoreError> {
        dispatch!(self.read_state(token, thread_id, messages))
    }
    /// `chat_share_read_state(p_thread_id, p_share)` as the user: the stored setting. Rejected with
    /// 403 for a non-participant.
    pub async fn share_read_state(&self, token: &str, thread_id: Uuid, share: bool) -> Result<bool, StoreError> {
        dispatch!(self.share_read_state(token, thread_id, share))
    }
    /// `chat_read_receipt(p_thread_id, p_reader)` (service rights): a live receipt of the reader's
    /// read state, and who may see it how; none when the reader is not a participant.
    pub async fn read_receipt(&self, thread_id: Uuid, reader: Uuid) -> Result<Option<ReadReceipt>, StoreError> {
        dispatch!(self.read_receipt(thread_id, reader))
    }
    /// `chat_set_realtime(p_enabled)` as the user.
    pub async fn set_realtime(&self, token: &str, enabled: bool) -> Result<bool, StoreError> {
        dispatch!(self.set_realtime(token, enabled))
    }
    /// Every user who switched realtime off (service rights), read in keyset pages.
    pub async fn realtime_off_users(&self) -> Result<HashSet<Uuid>, StoreError> {
        const PAGE: u32 = 1000;
        let mut users = HashSet::new();
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
    /// One keyset page of the gap fill (service rights): messages with `created_at >= since`,
    /// after the keyset position `after` = (created_at, id), oldest first.
    pub async fn messages_page(
        &self,
        since: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
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
    /// `chat_push_decide(...)` (service rights): decides due push jobs into deliveries.
    pub async fn push_decide(
        &self,
        delay_ms: i32,
        limit: i32,
        channels: &[&str],
        max_age_secs: i32,
    ) -> Result<PushDecided, StoreError> {
        dispatch!(self.push_decide(delay_ms, limit, channels, max_age_secs))
    }
    /// `chat_push_claim(...)` (service rights): leases due deliveries on `channels`.
    pub async fn push_claim(
        &self,
        channels: &[&str],
        limit: i32,
        lease_secs: i32,
        gap_secs: i32,
    ) -> Result<Vec<PushDelivery>, StoreError> {
        dispatch!(self.push_claim(channels, limit, lease_secs, gap_secs))
    }
    /// `chat_push_finish_batch(p_outcomes)` (service rights): a leased batch ended or rescheduled
    /// in one call; answers how many were found.
    pub async fn push_finish_batch(&self, outcomes: &[PushFinish]) -> Result<i64, StoreError> {
        dispatch!(self.push_finish_batch(outcomes))
    }
    /// `chat_push_prune(p_keep_hours)` (service rights): finished deliveries deleted.
    pub async fn push_prune(&self, keep_hours: i32) -> Result<i64, StoreError> {
        dispatch!(self.push_prune(keep_hours))
    }
    /// `chat_push_presence_report(...)` (service rights): this instance's users who came and went.
    pub async fn push_presence_report(
        &self,
        instance: Uuid,
        online: &[Uuid],
        offline: &[Uuid],
        ttl_secs: i32,
    ) -> Result<i64, StoreError> {
        dispatch!(self.push_presence_report(instance, online, offline, ttl_secs))
    }
    /// `chat_register_push_device(...)` as the user: the device's id (the same for the same device).
    pub async fn register_push_device(&self, token: &str, device: &NewDevice) -> Result<Uuid, StoreError> {
        dispatch!(self.register_push_device(token, device))
    }
    /// `chat_push_devices()` as the user: their devices.
    pub async fn push_devices(&self, token: &str) -> Result<Vec<PushDevice>, StoreError> {
        dispatch!(self.push_devices(token))
    }
    /// `chat_unregister_push_device(p_id)` as the user: false when they have no such device.
    pub async fn unregister_push_device(&self, token: &str, id: Uuid) -> Result<bool, StoreError> {
        dispatch!(self.unregister_push_device(token, id))
    }
    /// `chat_mute_thread(p_thread_id, p_until)` as the user: the stored `muted_until`.
    pub async fn mute_thread(
        &self,
        token: &str,
        thread_id: Uuid,
        until: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        dispatch!(self.mute_thread(token, thread_id, until))
    }
    /// `chat_push_presence_clear(p_instance)` (service rights): this instance's users offline.
    pub async fn push_presence_clear(&self, instance: Uuid) -> Result<i64, StoreError> {
        dispatch!(self.push_presence_clear(instance))
    }
    /// `chat_push_stats()` (service rights): the queue at a glance, for metrics and `/admin`.
    pub async fn push_stats(&self) -> Result<PushStats, StoreError> {
        dispatch!(self.push_stats())
    }
}

/// The keyset position after a page of messages: the last row whose `created_at` reads as a
/// time (the database renders every one; a row it could not would only be skipped over).
pub fn keyset_after(rows: &[MessageRow]) -> Option<(DateTime<Utc>, Uuid)> {
    rows.iter().rev().find_map(|r| Some((r.created()?, r.id)))
}
