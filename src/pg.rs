//! The PostgreSQL backend's connection: the gateway without Supabase's servers, on any PostgreSQL
//! 15+ that has the project's migrations (and `supabase/standalone/00_base.sql` when it is not a
//! Supabase database). Selected when `DATABASE_URL` is set and `SUPABASE_URL` is not.
//!
//! The backend has two halves, each under the role it plays: [`crate::feed::postgres`] (the change
//! feed from a durable logical replication slot) and [`crate::store::postgres`] (every database
//! call of the store, with RLS applied exactly as PostgREST applies it). This module is what both
//! share, below them and below the configuration that checks it: the connection settings, their
//! validation and the pool. It never logs the connection string (it holds the password) and never
//! connects as a superuser on its own initiative: the role in `DATABASE_URL` needs LOGIN,
//! REPLICATION and membership in `authenticated` and `service_role`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// Settings of the PostgreSQL backend.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/db`; secret (holds the password).
    pub database_url: String,
    /// The durable replication slot of this instance (one per instance).
    pub slot_name: String,
    pub pool_size: usize,
    pub poll_interval: Duration,
    pub slot_read: SlotRead,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("database_url", &"<redacted>")
            .field("slot_name", &self.slot_name)
            .field("pool_size", &self.pool_size)
            .field("poll_interval", &self.poll_interval)
            .field("slot_read", &self.slot_read)
            .finish()
    }
}

/// How the PostgreSQL backend reads its replication slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotRead {
    /// The streaming replication protocol (`START_REPLICATION ... LOGICAL`).
    Stream,
    /// Peek polling on an ordinary connection.
    Poll,
}

impl SlotRead {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotRead::Stream => "stream",
            SlotRead::Poll => "poll",
        }
    }
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    /// The text of the URL is never repeated: it may hold a password.
    #[error("DATABASE_URL is not a PostgreSQL connection string")]
    BadUrl,
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
}

/// Whether a slot name is one PostgreSQL accepts (lower-case letters, digits, underscores).
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The parsed connection settings, with what every connection of the gateway sets.
pub fn connection_config(settings: &PgSettings) -> Result<tokio_postgres::Config, PgSetupError> {
    let mut pg = tokio_postgres::Config::from_str(&settings.database_url).map_err(|_| PgSetupError::BadUrl)?;
    pg.application_name("realtime-gateway");
    // Times render as PostgREST renders them on Supabase (UTC).
    pg.options("-c TimeZone=UTC");
    Ok(pg)
}

/// The pool every store call draws from. Connections are made lazily.
pub fn pool(settings: &PgSettings, timeout: Duration) -> Result<Pool, PgSetupError> {
    let pg = connection_config(settings)?;
    let manager =
        Manager::from_config(pg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| PgSetupError::Pool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_and_urls_are_checked_without_echoing_secrets() {
        assert!(valid_slot_name("chat_gateway_1"));
        assert!(!valid_slot_name("Chat-Gateway") && !valid_slot_name(""));
        let settings = PgSettings {
            database_url: "not a url with secret-password".into(),
            slot_name: "s".into(),
            pool_size: 1,
            poll_interval: Duration::from_millis(10),
            slot_read: SlotRead::Stream,
        };
        let e = connection_config(&settings).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.is_empty() && !e.contains("secret-password"), "{e}");
        assert!(!format!("{settings:?}").contains("secret-password"));
    }
}
