//! One storm session's life (connect and resume, live until the drop, come back after its
//! delay with `since` = the newest cursor it holds) and the storm's summary: lost messages
//! (must be 0) and duplicates on one socket (must be 0) per session, checked against the
//! inserted messages of its threads, and the resume times. Owns one session's sockets; it must
//! never touch another session's state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// What one storm session saw.
#[derive(Default)]
pub struct StormSession {
    pub user: usize,
    /// Message ids received over all connections.
    pub received: Mutex<HashSet<u128>>,
    /// Duplicates within one connection.
    pub duplicates_on_socket: AtomicU64,
    /// Set once the resume after the drop completed: (connect → sync_complete, replayed count,
    /// sync_complete time since the drop).
    pub resumed: Mutex<Option<(Duration, u64, Duration)>>,
    pub failed: AtomicBool,
}

fn cursor_of(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.get(key)?.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

/// One connection: reads until `leave` fires (then drops the socket without a close handshake)
/// or the socket ends. Returns the newest cursor and, when it resumed, (connect → sync_complete,
/// replayed) and when sync_complete came.
async fn connection(
    url: String,
    session: &StormSession,
    cursor: &mut DateTime<Utc>,
    mut leave: watch::Receiver<bool>,
    on_sync: Option<&AtomicU64>,
) -> Result<Option<(Duration, u64, Instant)>, String> {
    let began = Instant::now();
    let since = cursor.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (mut ws, _) =
        tokio::time::timeout(Duration::from_secs(60), tokio_tungstenite::connect_async(format!("{url}&since={since}")))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let mut once = HashSet::new();
    let mut resumed = None;
    let mut replayed = 0u64;
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = leave.changed() => return Ok(resumed),
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        match v["type"].as_str() {
            Some("new_message") => {
                if let Some(id) = v["data"]["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    if !once.insert(id.as_u128()) {
                        session.duplicates_on_socket.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut r) = session.received.lock() {
                        r.insert(id.as_u128());
                    }
                }
                if resumed.is_none() {
                    replayed += 1;
                }
                if let Some(c) = cursor_of(&v, "cursor") {
                    *cursor = (*cursor).max(c);
                }
            }
            Some("sync_complete") => {
                if let Some(c) = cursor_of(&v, "last_check_time") {
                    *cursor = (*cursor).max(c);
                }
                resumed = Some((began.elapsed(), replayed, Instant::now()));
                if let Some(counter) = on_sync {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("error") if v["message"].as_str().is_some_and(|m| m.starts_with("Could not replay")) => {
                return Err("replay failed".into());
            }
            _ => {}
        }
    }
}

/// A session's life in the storm: connect and resume (from `start`), live until the drop, wait
/// its delay, resume again, live until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn session_life(
    url: String,
    session: Arc<StormSession>,
    start: DateTime<Utc>,
    delay: Duration,
    drop_rx: watch::Receiver<bool>,
    stop_rx: watch::Receiver<bool>,
    first_done: Arc<AtomicU64>,
    dropped_at: Arc<Mutex<Option<Instant>>>,
) {
    let mut cursor = start;
    // Before the storm: one resume (nothing missed), then live until the drop.
    let mut drop_wait = drop_rx.clone();
    if connection(url.clone(), &session, &mut cursor, drop_rx.clone(), Some(&first_done)).await.is_err() {
        session.failed.store(true, Ordering::Relaxed);
        first_done.fetch_add(1, Ordering::Relaxed);
    }
    let _ = drop_wait.wait_for(|d| *d).await;
    tokio::time::sleep(delay).await;
    // The storm: come back with the newest cursor; retry a failed replay after a second.
    for _ in 0..30 {
        let result = connection(url.clone(), &session, &mut cursor, stop_rx.clone(), None).await;
        if let Ok(Some((took, replayed, at))) = result {
            let since_drop =
                dropped_at.lock().ok().and_then(|d| *d).map(|d| at.saturating_duration_since(d)).unwrap_or_default();
            if let Ok(mut r) = session.resumed.lock() {
                *r = Some((took, replayed, since_drop));
            }
            return;
        }
        if *stop_rx.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    session.failed.store(true, Ordering::Relaxed);
}

/// Summary of a storm.
pub fn summary(
    sessions: &[Arc<StormSession>],
    expected: &[Vec<u128>],
    rest_requests: u64,
    resumes_memory: u64,
    resumes_database: u64,
    spread_secs: f64,
) -> Value {
    let mut times: Vec<Duration> = Vec::new();
    let mut all_synced_after = Duration::ZERO;
    let mut replayed = 0u64;
    let (mut lost, mut dup, mut unresumed, mut failed) = (0u64, 0u64, 0usize, 0usize);
    let mut lost_sessions = 0usize;
    for (s, want) in sessions.iter().zip(expected) {
        match s.resumed.lock().ok().and_then(|r| *r) {
            Some((took, n, since_drop)) => {
                times.push(took);
                replayed += n;
                all_synced_after = all_synced_after.max(since_drop);
            }
            None => unresumed += 1,
        }
        failed += usize::from(s.failed.load(Ordering::Relaxed));
        dup += s.duplicates_on_socket.load(Ordering::Relaxed);
        let received = s.received.lock().map(|r| r.clone()).unwrap_or_default();
        let missing = want.iter().filter(|id| !received.contains(id)).count() as u64;
        lost += missing;
        lost_sessions += usize::from(missing > 0);
    }
    times.sort();
    let q = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    json!({
        "sessions": sessions.len(),
        "reconnect_spread_secs": spread_secs,
        "resumed": times.len(),
        "not_resumed": unresumed,
        "sessions_with_errors": failed,
        "all_sync_complete_after_drop_secs": all_synced_after.as_secs_f64(),
        "resume_ms": {"p50": q(0.5), "p99": q(0.99), "max": times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)},
        "resumed_within_5s": times.iter().filter(|t| **t <= Duration::from_secs(5)).count(),
        "messages_replayed": replayed,
        "postgrest_requests_during_storm": rest_requests,
        "gateway_resumes_from_memory": resumes_memory,
        "gateway_resumes_from_database": resumes_database,
        "lost": lost,
        "sessions_with_losses": lost_sessions,
        "duplicated_on_one_socket": dup,
    })
}
