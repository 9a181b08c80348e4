//! The stand-in's connection pool: a few superuser connections lent one per request. Owns
//! lending and taking back; a connection whose request did not end its transaction is closed,
//! never reused, so no request ever runs inside another's transaction or under its role.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_postgres::Client;
use warp::http::StatusCode;

use super::RestError;

/// A small pool of superuser connections; each request switches role inside its transaction.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection lent to one request. It goes back to the pool only when the request marked it
/// idle (its transaction ended with COMMIT or ROLLBACK); a request abandoned halfway (the client
/// hung up and the future was dropped) closes it instead, so no later request ever runs inside
/// its open transaction or under its role.
pub(super) struct Pooled<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    pub(super) idle: bool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pool {
    pub fn new(url: String, size: usize) -> Arc<Pool> {
        Arc::new(Pool { url, idle: Mutex::new(Vec::new()), permits: Semaphore::new(size) })
    }

    pub(super) async fn get(&self) -> Result<Pooled<'_>, RestError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RestError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST003", "pool closed"))?;
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop()).filter(|c| !c.is_closed());
        let client = match reused {
            Some(c) => c,
            None => crate::pg::connect(&self.url).await.map_err(|e| {
                RestError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST000", format!("Database connection error: {e}"))
            })?,
        };
        Ok(Pooled { client: Some(client), pool: self, idle: false, _permit: permit })
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.idle && !client.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}

impl Pooled<'_> {
    pub(super) fn client(&self) -> &Client {
        // Present from construction until drop.
        self.client.as_ref().expect("pooled client present until drop")
    }
}
