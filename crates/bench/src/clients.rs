//! Load clients: many WebSocket sessions in one process, each recording what it receives.
//!
//! Reading is kept cheap (the generator shares two cores with the server it measures): a
//! `new_message` frame is not parsed as JSON; its `id`, `thread_id`, `created_at` and the step
//! tag in `content` are located by their keys. Every delivery becomes one [`Record`]; `typing`
//! and `error` frames are only counted. A session can also send frames (its `outbox`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// One delivery as a client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub message: u128,
    pub thread: u128,
    /// Step tag from the message content (`"content":"s<step>"`).
    pub step: u16,
    /// Receipt minus the event's emission time (`created_at`), microseconds.
    pub latency_us: u64,
    /// Receipt time, microseconds since the run's epoch.
    pub received_us: u64,
}

/// What one session recorded.
pub struct Session {
    pub user: usize,
    pub records: Mutex<Vec<Record>>,
    /// Set once `connection_established` arrived.
    pub connected: std::sync::atomic::AtomicBool,
    /// Set when the server closed the socket (e.g. dropped it as too slow).
    pub closed: std::sync::atomic::AtomicBool,
    /// `typing` frames received.
    pub typing: AtomicU64,
    /// `error` frames received.
    pub errors: AtomicU64,
    /// Text frames to send on this socket (sent between reads).
    pub outbox: mpsc::UnboundedSender<String>,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

fn uuid_bits(s: &str) -> Option<u128> {
    uuid::Uuid::parse_str(s).ok().map(|u| u.as_u128())
}

/// Extracts a record from a `new_message` frame.
pub fn parse(text: &str, now_unix_us: i64, epoch_unix_us: i64) -> Option<Record> {
    if !text.contains("\"new_message\"") {
        return None;
    }
    let message = uuid_bits(field(text, "\"id\":\"")?)?;
    let thread = uuid_bits(field(text, "\"thread_id\":\"")?)?;
    let created = field(text, "\"created_at\":\"")?;
    let created_us = chrono::DateTime::parse_from_rfc3339(created).ok()?.timestamp_micros();
    let step = field(text, "\"content\":\"s").and_then(|s| s.parse::<u16>().ok()).unwrap_or(u16::MAX);
    Some(Record {
        message,
        thread,
        step,
        latency_us: (now_unix_us - created_us).max(0) as u64,
        received_us: (now_unix_us - epoch_unix_us).max(0) as u64,
    })
}

/// Records a delivery, or counts a `typing` or `error` frame.
fn record(session: &Session, text: &str, epoch_unix_us: i64) {
    let now = chrono::Utc::now().timestamp_micros();
    if let Some(r) = parse(text, now, epoch_unix_us) {
        if let Ok(mut records) = session.records.lock() {
            records.push(r);
        }
    } else if text.starts_with("{\"type\":\"typing\"") {
        session.typing.fetch_add(1, Ordering::Relaxed);
    } else if text.starts_with("{\"type\":\"error\"") {
        session.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens `tokens.len()` sessions to `url` at `rate` per second; returns the sessions and each
/// connect time. Sessions keep reading in the background until the process ends or the server
/// closes them.
pub async fn connect_all(
    url: &str,
    tokens: &[(usize, String)],
    rate: u32,
    epoch_unix_us: i64,
) -> (Vec<Arc<Session>>, Vec<Duration>, usize) {
    let failures = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(tokens.len());
    let mut sessions = Vec::with_capacity(tokens.len());
    let start = Instant::now();
    for (i, (user, token)) in tokens.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<String>();
        let session = Arc::new(Session {
            user: *user,
            records: Mutex::new(Vec::new()),
            connected: false.into(),
            closed: false.into(),
            typing: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outbox,
        });
        sessions.push(session.clone());
        let url = format!("{url}?token={token}");
        let failures = failures.clone();
        let s = session.clone();
        handles.push(tokio::spawn(async move {
            let began = Instant::now();
            let connected = tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(url)).await;
            let Ok(Ok((mut ws, _))) = connected else {
                failures.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            // connection_established
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => {}
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
            let took = began.elapsed();
            s.connected.store(true, Ordering::Relaxed);
            let reader = s.clone();
            tokio::spawn(async move {
                loop {
                    let frame = tokio::select! {
                        frame = ws.next() => frame,
                        Some(text) = outgoing.recv() => {
                            if ws.send(Message::Text(text.into())).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    };
                    match frame {
                        Some(Ok(Message::Text(text))) => record(&reader, text.as_str(), epoch_unix_us),
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    }
                }
                reader.closed.store(true, Ordering::Relaxed);
            });
            Some(took)
        }));
        if handles.len() % 1000 == 0 {
            eprintln!("  {} sessions opening...", handles.len());
        }
    }
    let mut times = Vec::new();
    for h in handles {
        if let Ok(Some(t)) = h.await {
            times.push(t);
        }
    }
    (sessions, times, failures.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_gateway_frame_without_json() {
        let text = r#"{"type":"new_message","data":{"id":"c0000000-0000-4000-8000-000000000001","thread_id":"b0000000-0000-4000-8000-000000000001","sender_id":"a0000000-0000-4000-8000-000000000001","content":"s3","message_type":"text","created_at":"2026-01-01T00:00:00.000100Z","sender":{"full_name":"A","role":"teacher"}}}"#;
        let epoch = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("t").timestamp_micros();
        let r = parse(text, epoch + 1100, epoch).expect("record");
        assert_eq!(r.step, 3);
        assert_eq!(r.latency_us, 1000);
        assert_eq!(r.received_us, 1100);
        assert!(parse(r#"{"type":"pong"}"#, 0, 0).is_none());
    }
}
