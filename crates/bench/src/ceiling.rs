//! The ceiling server: what this machine can do with the same sockets and the same events when
//! nothing but fan-out is done.
//!
//! Accepts WebSocket clients on any path without checking their token, holds one upstream
//! Phoenix connection to the Realtime stand-in (vsn 1.0.0, one `postgres_changes` INSERT binding
//! on `public.messages`, service key), and forwards every change event to EVERY client: the
//! record is wrapped into a `new_message`-shaped frame once per event and the same bytes are
//! queued to each client's bounded queue. No auth, no routing, no membership, no enrichment. The
//! gateway's deliveries/s divided by this server's is what the gateway's design costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Clients = Arc<Mutex<HashMap<u64, mpsc::Sender<Utf8Bytes>>>>;

/// Runs the ceiling server until the process is killed.
pub async fn run(port: u16, realtime_url: String, apikey: String, service_key: String) -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| format!("bind {port}: {e}"))?;
    let clients: Clients = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(AtomicU64::new(1));
    tokio::spawn(upstream(realtime_url, apikey, service_key, clients.clone()));
    let config = WebSocketConfig::default().read_buffer_size(512).write_buffer_size(64 * 1024);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let clients = clients.clone();
        let id = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
            let hello = json!({"type": "connection_established", "user_id": null, "timestamp": chrono::Utc::now().to_rfc3339()});
            if ws.send(Message::text(hello.to_string())).await.is_err() {
                return;
            }
            let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(1024);
            if let Ok(mut c) = clients.lock() {
                c.insert(id, tx);
            }
            loop {
                tokio::select! {
                    frame = rx.recv() => match frame {
                        Some(frame) => {
                            if ws.feed(Message::Text(frame)).await.is_err() { break; }
                            let mut n = 1;
                            while n < 64 {
                                match rx.try_recv() {
                                    Ok(f) => { if ws.feed(Message::Text(f)).await.is_err() { break; } n += 1; }
                                    Err(_) => break,
                                }
                            }
                            if ws.flush().await.is_err() { break; }
                        }
                        None => break,
                    },
                    incoming = ws.next() => match incoming {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        _ => {}
                    },
                }
            }
            if let Ok(mut c) = clients.lock() {
                c.remove(&id);
            }
        });
    }
}

async fn upstream(realtime_url: String, apikey: String, service_key: String, clients: Clients) {
    loop {
        let url = format!("{realtime_url}?apikey={apikey}&vsn=1.0.0");
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let join = json!({"topic": "realtime:ceiling", "event": "phx_join", "ref": "1", "join_ref": "1", "payload": {
            "config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
                       "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "messages"}], "private": false},
            "access_token": service_key}});
        if ws.send(Message::text(join.to_string())).await.is_err() {
            continue;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
        let mut n = 1u64;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    n += 1;
                    let hb = json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": n.to_string()});
                    if ws.send(Message::text(hb.to_string())).await.is_err() { break; }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => forward(text.as_str(), &clients),
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
    }
}

fn forward(text: &str, clients: &Clients) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else { return };
    if frame["event"] != "postgres_changes" {
        return;
    }
    let record = &frame["payload"]["data"]["record"];
    let bytes: Utf8Bytes = json!({"type": "new_message", "data": record}).to_string().into();
    let senders: Vec<mpsc::Sender<Utf8Bytes>> = match clients.lock() {
        Ok(c) => c.values().cloned().collect(),
        Err(_) => return,
    };
    for tx in senders {
        let _ = tx.try_send(bytes.clone());
    }
}
