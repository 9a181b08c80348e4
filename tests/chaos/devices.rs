//! The devices of a chaos run: each connects, reads, drops and resumes with its newest cursor,
//! logging every frame; and the PostgREST faults.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Connection {
    pub(super) opened: Option<DateTime<Utc>>,
    pub(super) since: Option<DateTime<Utc>>,
    /// (message id, live = after sync_complete, received at)
    pub(super) frames: Vec<(Uuid, bool, DateTime<Utc>)>,
    pub(super) synced: Option<DateTime<Utc>>,
    pub(super) replay_failed: bool,
    pub(super) abrupt: bool,
}

/// What a device saw, in order, across all its connections.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen {
    /// A message, on the device's connection `conn`, live or replayed.
    Message { id: Uuid, conn: usize, live: bool },
    /// The newest cursor held rose to `value` (received at `at`, on connection `conn`, from
    /// `sync_complete` or a `new_message` frame).
    Cursor { value: DateTime<Utc>, at: DateTime<Utc>, conn: usize, sync_complete: bool },
}

#[derive(Debug, Default)]
pub(super) struct DeviceLog {
    pub(super) user: usize,
    pub(super) timeline: Vec<Seen>,
    pub(super) connections: Vec<Connection>,
    pub(super) connect_failures: usize,
    pub(super) final_complete: bool,
}

pub(super) enum End {
    /// Lifetime over or the phase changed: close cleanly or drop.
    Leave { abrupt: bool },
    /// Final phase: everything expected arrived.
    Done,
    /// The server closed, the socket failed, or the replay failed.
    Lost,
}

pub(super) fn format_cursor(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn parse_cursor(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

pub(super) struct Device {
    pub(super) ws_base: String,
    pub(super) token: String,
    pub(super) user_id: Uuid,
    pub(super) log: DeviceLog,
    pub(super) cursor: DateTime<Utc>,
    pub(super) received: HashSet<Uuid>,
    pub(super) rng: Rng,
}

impl Device {
    /// Keeps the newest cursor: each is a promise that every earlier message of the user's
    /// threads has already reached this device, so the newest is as safe as any.
    pub(super) fn advance(&mut self, cursor: DateTime<Utc>, sync_complete: bool) {
        if cursor > self.cursor {
            self.cursor = cursor;
            let conn = self.log.connections.len();
            self.log.timeline.push(Seen::Cursor { value: cursor, at: Utc::now(), conn, sync_complete });
        }
    }

    pub(super) async fn run(mut self, mut phase: watch::Receiver<Phase>) -> DeviceLog {
        loop {
            let current = phase.borrow_and_update().clone();
            match current {
                Phase::Chaos => {
                    let lifetime = Duration::from_millis(self.rng.range(150, 3000));
                    self.connect_once(Some(lifetime), None, &mut phase).await;
                    let offline = if self.rng.chance(15) { self.rng.range(1500, 4000) } else { self.rng.range(0, 700) };
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(offline)) => {}
                        _ = phase.changed() => {}
                    }
                }
                Phase::Pause => {
                    if phase.changed().await.is_err() {
                        return self.log;
                    }
                }
                Phase::Final(expect) => {
                    let want = expect.get(&self.user_id).cloned().unwrap_or_default();
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    while tokio::time::Instant::now() < deadline {
                        if self.connect_once(None, Some(&want), &mut phase).await {
                            self.log.final_complete = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    return self.log;
                }
            }
        }
    }

    /// One connection with `since` = the newest cursor held. Returns true when `want` was
    /// satisfied (final phase) after `sync_complete`.
    pub(super) async fn connect_once(
        &mut self,
        lifetime: Option<Duration>,
        want: Option<&HashSet<Uuid>>,
        phase: &mut watch::Receiver<Phase>,
    ) -> bool {
        let since = self.cursor;
        let url = format!("{}?token={}&since={}", self.ws_base, self.token, format_cursor(since));
        let opened = Utc::now();
        let mut ws = match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                self.log.connect_failures += 1;
                return false;
            }
        };
        let mut conn = Connection { opened: Some(opened), since: Some(since), ..Connection::default() };
        let until = lifetime.map(|l| tokio::time::Instant::now() + l);
        let end = loop {
            if let (Some(want), Some(_)) = (want, conn.synced) {
                if want.iter().all(|id| self.received.contains(id)) {
                    break End::Done;
                }
            }
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = async { match until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    break End::Leave { abrupt: self.rng.chance(50) };
                }
                _ = phase.changed(), if want.is_none() => break End::Leave { abrupt: self.rng.chance(50) },
                _ = tokio::time::sleep(Duration::from_secs(30)), if want.is_some() => break End::Lost,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::Lost,
                Some(Ok(_)) => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            match v["type"].as_str() {
                Some("new_message") => {
                    let Some(id) = v["data"]["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else { continue };
                    conn.frames.push((id, conn.synced.is_some(), Utc::now()));
                    self.received.insert(id);
                    let conn_index = self.log.connections.len();
                    self.log.timeline.push(Seen::Message { id, conn: conn_index, live: conn.synced.is_some() });
                    if let Some(c) = parse_cursor(&v["cursor"]) {
                        self.advance(c, false);
                    }
                }
                Some("sync_complete") => {
                    conn.synced = Some(Utc::now());
                    if let Some(c) = parse_cursor(&v["last_check_time"]) {
                        self.advance(c, true);
                    }
                }
                Some("error") if v["message"].as_str().is_some_and(|m| m.starts_with("Could not replay")) => {
                    // No sync_complete will come: what this socket delivers live does not
                    // cover what was missed. Leave and resume again from the same cursor.
                    conn.replay_failed = true;
                    break End::Leave { abrupt: false };
                }
                _ => {}
            }
        };
        let done = matches!(end, End::Done);
        match end {
            End::Leave { abrupt: true } => {
                conn.abrupt = true;
                drop(ws);
            }
            End::Leave { abrupt: false } | End::Done => {
                let _ = ws.close(None).await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
            }
            End::Lost => {}
        }
        self.log.connections.push(conn);
        done
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// Whether a live frame of a message committed before its user joined the thread fails the run.
/// The gateway routes with the membership it knows when it routes: a message held back (gap fill
/// after an upstream loss, a membership lookup retried through PostgREST faults) goes to whoever
/// is a participant by then, including someone who joined after it was written. RLS lets that
/// user read the message anyway (participants read the thread's history), so this is reported,
/// not failed; the removal side (never to someone removed before the message) is strict.
pub(super) const STRICT_JOINS: bool = false;

pub(super) const REST_PATHS: [&str; 5] =
    ["thread_participants", "profiles", "rpc/chat_offline_messages", "rpc/chat_messages_page", "rpc/chat_sync_point"];

#[derive(Debug, Default)]
pub(super) struct FaultLog {
    pub(super) upstream_drops: usize,
    pub(super) rest_bursts: usize,
}

pub(super) async fn faults(
    world_stack: &supabase_standin::Stack,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> FaultLog {
    let realtime = world_stack.realtime();
    let rest = world_stack.rest_faults();
    let mut log = FaultLog::default();
    let mut next_drop = tokio::time::Instant::now() + Duration::from_millis(rng.range(1500, 4000));
    let mut next_rest = tokio::time::Instant::now() + Duration::from_millis(rng.range(300, 1500));
    let mut clear_at: Option<tokio::time::Instant> = None;
    loop {
        let wake = clear_at.map_or(next_drop.min(next_rest), |c| c.min(next_drop).min(next_rest));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {
                rest.clear();
                return log;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= next_drop {
            realtime.drop_all_sockets();
            log.upstream_drops += 1;
            next_drop = now + Duration::from_millis(rng.range(1500, 4000));
        }
        if clear_at.is_some_and(|c| now >= c) {
            rest.clear();
            clear_at = None;
        }
        if now >= next_rest {
            let path = REST_PATHS[rng.below(REST_PATHS.len() as u64) as usize];
            match rng.below(3) {
                0 => rest.add(
                    path,
                    Fault::Fail(*[500, 502, 503, 504].get(rng.below(4) as usize).unwrap_or(&503)),
                    Some(rng.range(1, 8)),
                ),
                1 => rest.add(path, Fault::Stall(Duration::from_millis(rng.range(200, 2500))), Some(rng.range(1, 4))),
                _ => {
                    // An outage of the path until cleared.
                    rest.add(path, Fault::Fail(503), None);
                    clear_at = Some(now + Duration::from_millis(rng.range(300, 2000)));
                }
            }
            log.rest_bursts += 1;
            next_rest = now + Duration::from_millis(rng.range(400, 2000));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run and the ledger
// ---------------------------------------------------------------------------------------------
