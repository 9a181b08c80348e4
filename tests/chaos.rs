//! Chaos with a ledger: users with one or two devices in several threads; one writer per thread
//! INSERTs messages continuously (real SQL, some multi-row transactions held open a moment);
//! devices connect, close cleanly or drop abruptly and resume with `since` = the newest cursor
//! they hold; the upstream is dropped every few seconds; PostgREST fails (5xx) or stalls in
//! bursts on the routing, gap-fill, cursor and replay paths; participants are added and removed
//! mid-run. After the faults stop, every device resumes once more and waits for `sync_complete`
//! and the last message of each of its threads. Then the ledger checks, from what the database
//! committed and what every socket received:
//!
//! - **complete**: every (message, device) pair that should have been delivered was, live or
//!   replayed. "Should": the device's user was a participant of the thread from `WINDOW` before
//!   the message's transaction started until `WINDOW` after the device's first completed resume
//!   (`sync_complete`) on a connection opened after the message committed. Messages within the
//!   window of one of that user's membership changes in that thread are left out: around a
//!   change, whether the message was routed with the old or the new membership depends on
//!   commit order and on when the gateway read the membership, and a resume replays under the
//!   membership of that moment (RLS), so either outcome is correct there;
//! - **once per connection**: no socket received a message twice (across connections the resume
//!   contract allows it: counted and reported, deduplicated by id as a client does);
//! - **in order**: on each socket, the messages of a thread came in commit order (replayed and
//!   live frames alike; rows of one transaction share a rank);
//! - **never to outsiders** (strict, no window): no socket received live a message of a thread
//!   whose participants, at the message's commit, definitely did not include its user (the
//!   membership change committed before the message's transaction started, or started after the
//!   message committed); and a user removed before a message and never added back never
//!   received it at all.
//!
//! `scenario_under_chaos` is the short version run by `scripts/test`; `long_chaos_from_env`
//! (ignored, run by `scripts/chaos`) is the same ledger with more users, threads and time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde_json::Value;
use supabase_standin::keys::Alg;
use supabase_standin::rest::faults::Fault;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::World;

/// The size and length of one chaos run.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    /// One thread per teacher; the teacher is its writer and never leaves it.
    pub threads: usize,
    pub parents: usize,
    /// Seconds of chaos (faults, churn, writes).
    pub secs: u64,
    /// Pause between a writer's transactions, milliseconds (uniform in the range).
    pub write_pause_ms: (u64, u64),
    /// Time around a user's membership change within which that user's messages are not judged.
    pub window: chrono::Duration,
    /// The gateway's ring of recent messages: small, so older cursors resume from the database.
    pub resume_buffer: usize,
}

impl Params {
    fn short() -> Params {
        Params {
            seed: seed_from_env(),
            threads: 4,
            parents: 10,
            secs: 20,
            write_pause_ms: (40, 160),
            window: chrono::Duration::seconds(1),
            resume_buffer: 150,
        }
    }

    fn from_env() -> Params {
        let var = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Params {
            seed: seed_from_env(),
            threads: var("CHAOS_THREADS", 12) as usize,
            parents: var("CHAOS_PARENTS", 60) as usize,
            secs: var("CHAOS_SECS", 300),
            write_pause_ms: (var("CHAOS_PAUSE_MIN_MS", 60), var("CHAOS_PAUSE_MAX_MS", 240)),
            window: chrono::Duration::milliseconds(var("CHAOS_WINDOW_MS", 1000) as i64),
            resume_buffer: var("CHAOS_RESUME_BUFFER", 500) as usize,
        }
    }
}

fn seed_from_env() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_under_chaos() {
    run(Params::short()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "five minutes; run by scripts/chaos"]
async fn long_chaos_from_env() {
    run(Params::from_env()).await;
}

/// SplitMix64: small, seedable, good enough to schedule chaos reproducibly.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// ---------------------------------------------------------------------------------------------
// The school of the run
// ---------------------------------------------------------------------------------------------

struct User {
    id: Uuid,
    email: String,
    devices: usize,
}

struct School {
    users: Vec<User>,
    /// Thread ids; thread k's writer is user k (a teacher).
    threads: Vec<Uuid>,
    /// (thread index, user index) pairs at the start.
    initial: HashSet<(usize, usize)>,
}

fn school(p: &Params, rng: &mut Rng) -> School {
    let mut users = Vec::new();
    let tag = Uuid::new_v4().simple().to_string();
    for t in 0..p.threads {
        users.push(User {
            id: Uuid::new_v4(),
            email: format!("chaos-teacher{t}-{tag}@school.test"),
            devices: 1 + usize::from(t == 0),
        });
    }
    for i in 0..p.parents {
        users.push(User {
            id: Uuid::new_v4(),
            email: format!("chaos-parent{i}-{tag}@school.test"),
            devices: 1 + usize::from(i % 3 == 0),
        });
    }
    let threads: Vec<Uuid> = (0..p.threads).map(|_| Uuid::new_v4()).collect();
    let mut initial = HashSet::new();
    for t in 0..p.threads {
        initial.insert((t, t));
    }
    for i in 0..p.parents {
        let user = p.threads + i;
        initial.insert((i % p.threads, user));
        if rng.chance(40) {
            initial.insert((rng.below(p.threads as u64) as usize, user));
        }
    }
    School { users, threads, initial }
}

async fn load_school(world: &World, school: &School, threads: usize) {
    let db = world.stack.sql().await;
    for (i, u) in school.users.iter().enumerate() {
        let role = if i < threads { "teacher" } else { "parent" };
        db.execute("insert into auth.users (id, email) values ($1, $2)", &[&u.id, &u.email]).await.expect("auth user");
        let name = u.email.split('@').next().unwrap_or("x").to_string();
        db.execute("insert into public.profiles (id, full_name, role) values ($1, $2, $3)", &[&u.id, &name, &role])
            .await
            .expect("profile");
    }
    for t in &school.threads {
        db.execute("insert into public.threads (id, title) values ($1, 'chaos')", &[t]).await.expect("thread");
    }
    for (t, u) in &school.initial {
        db.execute(
            "insert into public.thread_participants (thread_id, user_id) values ($1, $2)",
            &[&school.threads[*t], &school.users[*u].id],
        )
        .await
        .expect("participant");
    }
}

// ---------------------------------------------------------------------------------------------
// What the database committed
// ---------------------------------------------------------------------------------------------

/// One committed message.
#[derive(Debug, Clone)]
struct Written {
    id: Uuid,
    thread: usize,
    /// The writer's transaction number in its thread: commit order (rows of one transaction share it).
    rank: u64,
    /// The transaction's start (`created_at`, the database's clock) ...
    start: DateTime<Utc>,
    /// ... and a time after its COMMIT returned (same machine, same clock).
    committed: DateTime<Utc>,
}

/// One writer per thread: per-thread commit order is the writer's order.
async fn writer(
    world_sql: tokio_postgres::Client,
    thread: usize,
    thread_id: Uuid,
    sender: Uuid,
    pause: (u64, u64),
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Written>, usize) {
    let mut db = world_sql;
    let mut written = Vec::new();
    let mut transactions = 0usize;
    let mut rank = 0u64;
    loop {
        let last = *stop.borrow();
        rank += 1;
        let rows = if !last && rng.chance(12) { rng.range(2, 4) } else { 1 };
        let tx = db.transaction().await.expect("begin");
        let mut batch = Vec::new();
        for row in 0..rows {
            let content = format!("t{thread} #{rank}.{row}{}", if last { " (last)" } else { "" });
            let r = tx
                .query_one(
                    "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id, created_at",
                    &[&thread_id, &sender, &content],
                )
                .await
                .expect("insert message");
            batch.push((r.get::<_, Uuid>(0), r.get::<_, DateTime<Utc>>(1)));
            if rows > 1 {
                // Held open a moment: commits overtake this transaction's start.
                tokio::time::sleep(Duration::from_millis(rng.range(5, 60))).await;
            }
        }
        tx.commit().await.expect("commit");
        let committed = Utc::now();
        transactions += 1;
        written.extend(batch.into_iter().map(|(id, start)| Written { id, thread, rank, start, committed }));
        if last {
            return (written, transactions);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(rng.range(pause.0, pause.1))) => {}
            _ = stop.changed() => {}
        }
    }
}

/// A committed membership change of one (thread, user).
#[derive(Debug, Clone)]
struct Change {
    present: bool,
    start: DateTime<Utc>,
    committed: DateTime<Utc>,
}

/// Adds and removes parents (never a thread's writer) every second or two.
async fn churn(
    db: tokio_postgres::Client,
    school: Arc<SchoolIds>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> HashMap<(usize, usize), Vec<Change>> {
    let mut members = school.initial.clone();
    let mut log: HashMap<(usize, usize), Vec<Change>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(rng.range(600, 1800))) => {}
            _ = stop.changed() => return log,
        }
        let thread = rng.below(school.threads.len() as u64) as usize;
        let user = school.threads.len() + rng.below((school.users.len() - school.threads.len()) as u64) as usize;
        let present = !members.contains(&(thread, user));
        let (t, u) = (school.threads[thread], school.users[user]);
        let sql = if present {
            "insert into public.thread_participants (thread_id, user_id) values ($1, $2) returning now()"
        } else {
            "delete from public.thread_participants where thread_id = $1 and user_id = $2 returning now()"
        };
        let row = db.query_one(sql, &[&t, &u]).await.expect("membership change");
        let start: DateTime<Utc> = row.get(0);
        let committed = Utc::now();
        if present {
            members.insert((thread, user));
        } else {
            members.remove(&(thread, user));
        }
        log.entry((thread, user)).or_default().push(Change { present, start, committed });
    }
}

struct SchoolIds {
    users: Vec<Uuid>,
    threads: Vec<Uuid>,
    initial: HashSet<(usize, usize)>,
}

/// Membership over time, as committed.
struct Membership {
    initial: HashSet<(usize, usize)>,
    changes: HashMap<(usize, usize), Vec<Change>>,
}

impl Membership {
    /// Definitely a participant over the whole of [from, to] (no change overlapping it).
    fn throughout(&self, thread: usize, user: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let mut state = self.initial.contains(&(thread, user));
        for c in self.changes.get(&(thread, user)).map(Vec::as_slice).unwrap_or_default() {
            if c.committed < from {
                state = c.present;
            } else if c.start <= to {
                return false;
            }
        }
        state
    }

    /// Participation at the commit of a transaction that started at `start` and had committed
    /// by `committed`; None when a change may have committed in between.
    fn at_commit(&self, thread: usize, user: usize, start: DateTime<Utc>, committed: DateTime<Utc>) -> Option<bool> {
        let mut state = self.initial.contains(&(thread, user));
        for c in self.changes.get(&(thread, user)).map(Vec::as_slice).unwrap_or_default() {
            if c.committed < start {
                state = c.present;
            } else if c.start > committed {
                break;
            } else {
                return None;
            }
        }
        Some(state)
    }

    /// Whether the user was (possibly) added to the thread after `after`.
    fn added_later(&self, thread: usize, user: usize, after: DateTime<Utc>) -> bool {
        self.changes.get(&(thread, user)).is_some_and(|cs| cs.iter().any(|c| c.present && c.committed >= after))
    }

    fn member_at_end(&self, thread: usize, user: usize) -> bool {
        match self.changes.get(&(thread, user)).and_then(|cs| cs.last()) {
            Some(c) => c.present,
            None => self.initial.contains(&(thread, user)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What every socket received
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Phase {
    Chaos,
    /// Stay disconnected.
    Pause,
    /// Resume once more and wait for these messages (the last of each thread, per user).
    Final(Arc<HashMap<Uuid, HashSet<Uuid>>>),
}

#[derive(Debug, Default)]
struct Connection {
    opened: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    /// (message id, live = after sync_complete)
    frames: Vec<(Uuid, bool)>,
    synced: Option<DateTime<Utc>>,
    replay_failed: bool,
    abrupt: bool,
}

/// What a device saw, in order, across all its connections.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// A message, on the device's connection `conn`, live or replayed.
    Message { id: Uuid, conn: usize, live: bool },
    /// The newest cursor held rose to `value` (received at `at`, on connection `conn`, from
    /// `sync_complete` or a `new_message` frame).
    Cursor { value: DateTime<Utc>, at: DateTime<Utc>, conn: usize, sync_complete: bool },
}

#[derive(Debug, Default)]
struct DeviceLog {
    user: usize,
    timeline: Vec<Seen>,
    connections: Vec<Connection>,
    connect_failures: usize,
    final_complete: bool,
}

enum End {
    /// Lifetime over or the phase changed: close cleanly or drop.
    Leave { abrupt: bool },
    /// Final phase: everything expected arrived.
    Done,
    /// The server closed, the socket failed, or the replay failed.
    Lost,
}

fn format_cursor(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_cursor(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

struct Device {
    ws_base: String,
    token: String,
    user_id: Uuid,
    log: DeviceLog,
    cursor: DateTime<Utc>,
    received: HashSet<Uuid>,
    rng: Rng,
}

impl Device {
    /// Keeps the newest cursor: each is a promise that every earlier message of the user's
    /// threads has already reached this device, so the newest is as safe as any.
    fn advance(&mut self, cursor: DateTime<Utc>, sync_complete: bool) {
        if cursor > self.cursor {
            self.cursor = cursor;
            let conn = self.log.connections.len();
            self.log.timeline.push(Seen::Cursor { value: cursor, at: Utc::now(), conn, sync_complete });
        }
    }

    async fn run(mut self, mut phase: watch::Receiver<Phase>) -> DeviceLog {
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
    async fn connect_once(
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
                    conn.frames.push((id, conn.synced.is_some()));
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
const STRICT_JOINS: bool = false;

const REST_PATHS: [&str; 5] =
    ["thread_participants", "profiles", "rpc/chat_offline_messages", "rpc/chat_messages_page", "rpc/chat_sync_point"];

#[derive(Debug, Default)]
struct FaultLog {
    upstream_drops: usize,
    rest_bursts: usize,
}

async fn faults(world_stack: &supabase_standin::Stack, mut rng: Rng, mut stop: watch::Receiver<bool>) -> FaultLog {
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

pub async fn run(p: Params) {
    eprintln!("chaos: {p:?} (CHAOS_SEED={} reproduces the schedule)", p.seed);
    let mut rng = Rng(p.seed);
    let resume_buffer = p.resume_buffer;
    let world = World::start_with(|c| {
        c.resume_buffer = resume_buffer;
        c.cache_ttl = Duration::from_secs(3);
    })
    .await;
    let school = school(&p, &mut rng);
    load_school(&world, &school, p.threads).await;
    let ids = Arc::new(SchoolIds {
        users: school.users.iter().map(|u| u.id).collect(),
        threads: school.threads.clone(),
        initial: school.initial.clone(),
    });
    // Every device starts from a cursor before the first message: each connection is a resume.
    let start_cursor = Utc::now();

    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let mut devices: Vec<JoinHandle<DeviceLog>> = Vec::new();
    for (index, user) in school.users.iter().enumerate() {
        for _ in 0..user.devices {
            let device = Device {
                ws_base: world.ws_base(),
                token: world.stack.keys().user_token(user.id, &user.email, Alg::Hs256, 4 * 3600),
                user_id: user.id,
                log: DeviceLog { user: index, ..DeviceLog::default() },
                cursor: start_cursor,
                received: HashSet::new(),
                rng: rng.fork(),
            };
            devices.push(tokio::spawn(device.run(phase_rx.clone())));
        }
    }
    let (stop_writes, writes_rx) = watch::channel(false);
    let mut writers = Vec::new();
    for t in 0..p.threads {
        let db = world.stack.sql().await;
        writers.push(tokio::spawn(writer(
            db,
            t,
            school.threads[t],
            school.users[t].id,
            p.write_pause_ms,
            rng.fork(),
            writes_rx.clone(),
        )));
    }
    let (stop_chaos, chaos_rx) = watch::channel(false);
    let churn_task = tokio::spawn(churn(world.stack.sql().await, ids.clone(), rng.fork(), chaos_rx.clone()));
    let fault_task = {
        let rng = rng.fork();
        let chaos_rx = chaos_rx.clone();
        async { faults(&world.stack, rng, chaos_rx).await }
    };
    let (fault_log, _) = tokio::join!(fault_task, async {
        tokio::time::sleep(Duration::from_secs(p.secs)).await;
        let _ = stop_chaos.send(true);
    });
    let changes = churn_task.await.expect("churn task");
    world.stack.rest_faults().clear();

    // Quiet: devices leave, writers write their last transaction, the gateway settles.
    let _ = phase_tx.send(Phase::Pause);
    let _ = stop_writes.send(true);
    let mut written: Vec<Written> = Vec::new();
    let mut transactions = 0usize;
    for w in writers {
        let (rows, txs) = w.await.expect("writer");
        written.extend(rows);
        transactions += txs;
    }
    world.wait_ready(true).await;
    let membership = Membership { initial: school.initial.clone(), changes };
    let mut last_of_thread: HashMap<usize, Uuid> = HashMap::new();
    for w in &written {
        last_of_thread.insert(w.thread, w.id);
    }
    let mut expect: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    for (u, user) in school.users.iter().enumerate() {
        let want = (0..p.threads)
            .filter(|t| membership.member_at_end(*t, u))
            .filter_map(|t| last_of_thread.get(&t).copied())
            .collect();
        expect.insert(user.id, want);
    }
    let _ = phase_tx.send(Phase::Final(Arc::new(expect)));
    let mut logs = Vec::new();
    for d in devices {
        logs.push(d.await.expect("device task"));
    }

    let metrics = [
        "gateway_resumes_from_memory_total",
        "gateway_resumes_from_database_total",
        "gateway_replayed_messages_total",
        "gateway_upstream_losses_total",
        "gateway_gap_fill_messages_total",
        "gateway_duplicates_skipped_total",
    ];
    let mut gauges = Vec::new();
    for name in metrics {
        gauges.push((name, world.metric(name).await));
    }
    let faults_hit = world.stack.rest_faults().hits();
    let report = ledger(&p, &written, &membership, &logs);
    eprintln!(
        "chaos: {} messages in {} transactions over {} threads; {} users, {} devices; {} upstream drops; {} PostgREST fault bursts ({} requests faulted); {} membership changes",
        written.len(),
        transactions,
        p.threads,
        school.users.len(),
        logs.len(),
        fault_log.upstream_drops,
        fault_log.rest_bursts,
        faults_hit,
        membership.changes.values().map(Vec::len).sum::<usize>(),
    );
    eprintln!("chaos: {report}");
    eprintln!("chaos: gateway {gauges:?}");
    assert!(fault_log.upstream_drops > 0 && faults_hit > 0, "the run must have had faults to mean anything");
    assert!(report.expected > 0 && report.resumes > 0, "the run must have exercised delivery and resume");
    if !report.violations.is_empty() {
        let mut keys: Vec<_> = membership.changes.keys().copied().collect();
        keys.sort();
        for key in keys {
            let initially = membership.initial.contains(&key);
            let cs: Vec<String> = membership.changes[&key]
                .iter()
                .map(|c| {
                    format!(
                        "{} {}..{}",
                        if c.present { "added" } else { "removed" },
                        format_cursor(c.start),
                        format_cursor(c.committed)
                    )
                })
                .collect();
            eprintln!(
                "chaos: membership (thread, user) {key:?} = ({}, {}): initially {initially}; {}",
                ids.threads[key.0],
                ids.users[key.1],
                cs.join("; ")
            );
        }
    }
    assert!(report.violations.is_empty(), "ledger violations (seed {}):\n{}", p.seed, report.violations.join("\n"));
    assert!(logs.iter().all(|l| l.final_complete), "every device completed its final resume");
}

#[derive(Debug, Default)]
struct Report {
    /// (message, device) pairs a cursor covered while the user was a participant.
    expected: usize,
    delivered: usize,
    /// Of those, delivered before the cursor that covered them.
    delivered_in_time: usize,
    /// Pairs the brief rule counts (participant around the message, a resume after it) that
    /// never arrived and no cursor of a participant covered: the user was removed before the
    /// gateway routed the message (routing follows the membership of that moment, as RLS does).
    undelivered_removed_before_routing: usize,
    /// Pairs not judged: a membership change of that user in that thread within the window.
    excluded_near_changes: usize,
    /// Live frames of messages committed before the user joined the thread (reported).
    live_before_join: usize,
    connections: usize,
    resumes: usize,
    replay_failures: usize,
    abrupt_drops: usize,
    frames: usize,
    replayed_frames: usize,
    duplicates_across_connections: usize,
    violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (message, device) pairs expected, {} delivered ({} before the cursor that covered them), {} left out near membership changes, {} not delivered because the user was removed before the gateway routed them; {} connections ({} completed resumes, {} replays failed and retried, {} abrupt drops); {} frames ({} replayed); {} duplicates across connections (allowed, deduplicated by id); {} live frames of messages committed before the user joined; {} violations",
            self.expected,
            self.delivered,
            self.delivered_in_time,
            self.excluded_near_changes,
            self.undelivered_removed_before_routing,
            self.connections,
            self.resumes,
            self.replay_failures,
            self.abrupt_drops,
            self.frames,
            self.replayed_frames,
            self.duplicates_across_connections,
            self.live_before_join,
            self.violations.len()
        )
    }
}

/// A rise of the device's cursor: timeline index, value, when, connection, from `sync_complete`.
type Mark = (usize, DateTime<Utc>, DateTime<Utc>, usize, bool);

fn ledger(p: &Params, written: &[Written], membership: &Membership, logs: &[DeviceLog]) -> Report {
    let by_id: HashMap<Uuid, &Written> = written.iter().map(|w| (w.id, w)).collect();
    let mut r = Report::default();
    let violation = |r: &mut Report, text: String| {
        if r.violations.len() < 40 {
            r.violations.push(text);
        } else if r.violations.len() == 40 {
            r.violations.push("... (more)".into());
        }
    };
    for (d, log) in logs.iter().enumerate() {
        let user = log.user;
        let mut ever: HashMap<Uuid, usize> = HashMap::new();
        for (c, conn) in log.connections.iter().enumerate() {
            r.connections += 1;
            r.resumes += usize::from(conn.synced.is_some());
            r.replay_failures += usize::from(conn.replay_failed);
            r.abrupt_drops += usize::from(conn.abrupt);
            let mut once: HashSet<Uuid> = HashSet::new();
            let mut last_rank: HashMap<usize, u64> = HashMap::new();
            for (id, live) in &conn.frames {
                r.frames += 1;
                r.replayed_frames += usize::from(!live);
                let Some(m) = by_id.get(id) else {
                    violation(&mut r, format!("device {d} connection {c}: unknown message {id}"));
                    continue;
                };
                if !once.insert(*id) {
                    violation(
                        &mut r,
                        format!(
                            "device {d} connection {c}: message {id} (thread {}, #{}) twice on one socket",
                            m.thread, m.rank
                        ),
                    );
                }
                *ever.entry(*id).or_default() += 1;
                let last = last_rank.entry(m.thread).or_default();
                if m.rank < *last {
                    let how = if *live { "live" } else { "replayed" };
                    violation(
                        &mut r,
                        format!("device {d} connection {c}: thread {} #{} after #{last} ({how})", m.thread, m.rank),
                    );
                }
                *last = (*last).max(m.rank);
                if membership.at_commit(m.thread, user, m.start, m.committed) != Some(false) {
                    continue;
                }
                if !membership.added_later(m.thread, user, m.committed) {
                    violation(&mut r, format!(
                        "device {d} (user {user}) connection {c}: {} message {id} of thread {} #{}, committed after the user was removed and never added back",
                        if *live { "live" } else { "replayed" }, m.thread, m.rank
                    ));
                } else if *live {
                    r.live_before_join += 1;
                    if STRICT_JOINS {
                        violation(&mut r, format!(
                            "device {d} (user {user}) connection {c}: live message {id} of thread {} #{} committed before the user joined",
                            m.thread, m.rank
                        ));
                    }
                }
            }
        }
        r.duplicates_across_connections += ever.values().map(|n| n.saturating_sub(1)).sum::<usize>();
        // Completeness, by the cursor's promise: once the device holds a cursor C, every message
        // of its user's threads with created_at before C has reached it.
        let mut first_seen: HashMap<Uuid, (usize, usize, bool)> = HashMap::new();
        let mut marks: Vec<Mark> = Vec::new();
        for (i, seen) in log.timeline.iter().enumerate() {
            match *seen {
                Seen::Message { id, conn, live } => {
                    first_seen.entry(id).or_insert((i, conn, live));
                }
                Seen::Cursor { value, at, conn, sync_complete } => marks.push((i, value, at, conn, sync_complete)),
            }
        }
        for m in written {
            let covering = marks.partition_point(|mark| mark.1 <= m.start);
            let from = m.start - p.window;
            let brief = log
                .connections
                .iter()
                .filter(|c| c.opened.is_some_and(|o| o > m.committed))
                .find_map(|c| c.synced)
                .is_some_and(|resumed| membership.throughout(m.thread, user, from, resumed + p.window));
            let Some(&(index, value, at, mark_conn, mark_sync)) = marks.get(covering) else {
                r.undelivered_removed_before_routing += usize::from(brief && !ever.contains_key(&m.id));
                continue;
            };
            if !membership.throughout(m.thread, user, from, at + p.window) {
                let at_commit = membership.at_commit(m.thread, user, m.start, m.committed);
                r.excluded_near_changes += usize::from(at_commit != Some(false));
                r.undelivered_removed_before_routing += usize::from(brief && !ever.contains_key(&m.id));
                continue;
            }
            r.expected += 1;
            match first_seen.get(&m.id) {
                Some(&(i, _, _)) if i < index => {
                    r.delivered += 1;
                    r.delivered_in_time += 1;
                }
                Some(&(_, conn, live)) => {
                    r.delivered += 1;
                    let source = if mark_sync { "sync_complete" } else { "a new_message frame" };
                    let since = log.connections.get(mark_conn).and_then(|c| c.since).map(format_cursor).unwrap_or_default();
                    violation(&mut r, format!(
                        "device {d} (user {user}): message {} of thread {} #{} (created {}, committed by {}) arrived ({}, connection {conn}) only after the device held cursor {} (at {}, from {source} on connection {mark_conn} opened with since={since})",
                        m.id, m.thread, m.rank, format_cursor(m.start), format_cursor(m.committed), if live { "live" } else { "replayed" }, format_cursor(value), format_cursor(at)
                    ));
                }
                None => violation(&mut r, format!(
                    "device {d} (user {user}): LOST message {} of thread {} #{} (created {}, committed by {}); the device held cursor {} at {}",
                    m.id, m.thread, m.rank, format_cursor(m.start), format_cursor(m.committed), format_cursor(value), format_cursor(at)
                )),
            }
        }
    }
    r
}

/// Found by `scenario_under_chaos`: a live frame's cursor passed a message that was still on its
/// way. `chat_sync_point()` returned `db_now = now()`, the start of its own transaction, which
/// PostgREST opens (BEGIN, role and claims) before the statement that reads the open
/// transactions. A transaction that committed in between was neither open for the horizon nor
/// before `db_now`, so the router could take the horizon as safe before that transaction's
/// change reached it. `db_now` must be read after the open transactions were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_point_clock_is_read_after_the_open_transactions() {
    let world = World::start().await;
    let (writer, reader) = (world.stack.sql().await, world.stack.sql().await);
    let thread = supabase_standin::seed::CLASS_3B_PARENTS;
    writer.batch_execute("begin").await.expect("begin");
    writer
        .execute(
            "insert into public.messages (thread_id, sender_id, content) values ($1, $2, 'in flight')",
            &[&thread, &supabase_standin::seed::ALICE.id],
        )
        .await
        .expect("insert");
    // The reader's transaction starts while the writer's is open, as PostgREST's does before it
    // runs the function; then the writer commits.
    reader.batch_execute("begin").await.expect("begin");
    writer.batch_execute("commit").await.expect("commit");
    let committed_by: DateTime<Utc> = writer.query_one("select clock_timestamp()", &[]).await.expect("clock").get(0);
    let point: Value = reader.query_one("select public.chat_sync_point()", &[]).await.expect("sync point").get(0);
    reader.batch_execute("commit").await.expect("commit");
    let horizon = parse_cursor(&point["horizon"]).expect("horizon");
    let db_now = parse_cursor(&point["db_now"]).expect("db_now");
    let started: DateTime<Utc> = writer
        .query_one("select created_at from public.messages where content = 'in flight'", &[])
        .await
        .expect("row")
        .get(0);
    assert!(horizon > started, "the committed transaction no longer holds the horizon back: {point}");
    assert!(
        db_now >= committed_by,
        "db_now ({}) must not precede the commit of a transaction that started before the horizon ({})",
        format_cursor(db_now),
        format_cursor(committed_by)
    );
}

/// Found by `scenario_under_chaos`: a message that reached the gateway both from the upstream
/// (held while a gap fill ran) and from the gap fill itself, and then waited for a lookup, was
/// dropped from the router's set of waiting messages when the gap fill ended. Until some other
/// lookup completed, the live cursor (frames of other threads, `sync_complete` of memory resumes)
/// went past it, so a client resuming from such a cursor after a drop never got the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cursor_passes_a_message_held_during_a_gap_fill_and_still_waiting() {
    use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, DAVID};
    let world = World::start_with(|c| c.cursor_interval = Duration::from_millis(100)).await;
    let mut carla = world.phone(&CARLA).await;
    for thread in [ALICE_CARLA, CLASS_3B_PARENTS] {
        let warm = world.post(&ALICE, thread, "warm-up").await;
        carla.receive_until(warm).await;
    }
    let (realtime, rest) = (world.stack.realtime(), world.stack.rest_faults());
    // No routing lookup succeeds (the upstream's return forgets memberships); the gap fill's
    // first page stalls long enough for a message to arrive from the upstream meanwhile.
    rest.add("profiles", Fault::Fail(503), None);
    rest.add("thread_participants", Fault::Fail(503), None);
    rest.add("rpc/chat_messages_page", Fault::Stall(Duration::from_secs(2)), Some(1));
    realtime.drop_all_sockets();
    carla.expect("error").await;
    while realtime.channel_count() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while realtime.channel_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting = world.post(&DAVID, CLASS_3B_PARENTS, "waits for its lookups").await;
    let db = world.stack.sql().await;
    let created: DateTime<Utc> =
        db.query_one("select created_at from public.messages where id = $1", &[&waiting]).await.expect("row").get(0);
    world.wait_ready(true).await;
    // Later commits let the gateway take newer horizons; their messages wait as well.
    for i in 0..5 {
        world.post(&ALICE, ALICE_CARLA, &format!("meanwhile {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let since = format_cursor(created - chrono::Duration::seconds(1));
    let token = world.token(&CARLA);
    let mut tablet = crate::common::Phone::connect(&format!("{}?token={token}&since={since}", world.ws_base()))
        .await
        .expect("connects");
    let done = tablet.expect("sync_complete").await;
    let cursor = parse_cursor(&done["last_check_time"]).expect("cursor");
    assert!(
        cursor <= created,
        "sync_complete's cursor {} passed a message still waiting (created {})",
        format_cursor(cursor),
        format_cursor(created)
    );
    rest.clear();
    for phone in [&mut carla, &mut tablet] {
        let (frame, _) = phone.receive_until(waiting).await;
        assert_eq!(frame["data"]["sender"]["full_name"], "David Chen");
    }
}
