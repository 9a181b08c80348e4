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
//! - **nothing after a removal** (strict): no connection opened `WINDOW` after its user was
//!   removed from a thread (and not added back by then) received a message of that thread, live
//!   or replayed. Besides the churn, a few parents are removed while every device is away, and
//!   their devices then resume with cursors from before the removal;
//! - **never to outsiders** (strict, no window): no socket received live a message of a thread
//!   whose participants, at the message's commit, definitely did not include its user (the
//!   membership change committed before the message's transaction started, or started after the
//!   message committed); and a user removed before a message and never added back never
//!   received it at all.
//!
//! `scenario_under_chaos` is the short version run by `scripts/test`; `scripts/chaos` runs the same
//! test with more users, threads and time (`CHAOS_*` variables).

mod devices;
mod ledger;
mod school;

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
use devices::*;
use ledger::*;
use school::*;

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
    fn from_env() -> Params {
        let var = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Params {
            seed: seed_from_env(),
            threads: var("CHAOS_THREADS", 4) as usize,
            parents: var("CHAOS_PARENTS", 10) as usize,
            secs: var("CHAOS_SECS", 20),
            write_pause_ms: (var("CHAOS_PAUSE_MIN_MS", 40), var("CHAOS_PAUSE_MAX_MS", 160)),
            window: chrono::Duration::milliseconds(var("CHAOS_WINDOW_MS", 1000) as i64),
            resume_buffer: var("CHAOS_RESUME_BUFFER", 150) as usize,
        }
    }
}

fn seed_from_env() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64)
}

/// The short run by default (about 25 s); `scripts/chaos` sets the `CHAOS_*` variables for the
/// long one. Its "in order" check found that a database replay, which reads ahead of a router
/// still filling a gap, could be followed live by older messages the client already held (see
/// `resume_catchup::what_a_database_replay_sent_ahead_of_the_router_does_not_come_back_live_after_the_next_resume`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_under_chaos() {
    run(Params::from_env()).await;
}

pub async fn run(p: Params) {
    eprintln!("chaos: {p:?} (CHAOS_SEED={} reproduces the schedule)", p.seed);
    let mut rng = Rng(p.seed);
    let resume_buffer = p.resume_buffer;
    let world = World::start_with(|c| {
        c.resume.buffer.messages = resume_buffer;
        c.cache.ttl = Duration::from_secs(3);
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
    let mut changes = churn_task.await.expect("churn task");
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
    // Members removed while every device is away; below, their devices resume with cursors from
    // before the removal (from the ring or the database): none of that thread may reach them.
    let deadline = tokio::time::Instant::now() + crate::common::ARRIVES;
    while world.metric("gateway_sessions").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "devices left");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let removed_away = remove_while_away(world.stack.sql().await, &ids, &mut changes, &mut rng, 3).await;
    tokio::time::sleep((p.window + chrono::Duration::milliseconds(200)).to_std().unwrap_or_default()).await;
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
    assert!(
        removed_away > 0 && report.resumes_after_removal >= removed_away,
        "members removed while away ({removed_away}) must have resumed ({} resumes after a removal)",
        report.resumes_after_removal
    );
    assert_eq!(report.delivered_after_removal, 0, "nothing reaches a removed member after the removal");
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
    let world = World::start_with(|c| c.router.cursor_interval = Duration::from_millis(100)).await;
    let mut carla = world.phone(&CARLA).await;
    for thread in [ALICE_CARLA, CLASS_3B_PARENTS] {
        let warm = world.post(&ALICE, thread, "warm-up").await;
        carla.receive_until(warm).await;
    }
    let (realtime, rest) = (world.stack.realtime(), world.stack.rest_faults());
    // No profile lookup succeeds (David's is not cached yet); the gap fill's first page stalls
    // long enough for a message to arrive from the upstream meanwhile. Member lists still load:
    // a resume from memory checks the user's current membership through them.
    rest.add("profiles", Fault::Fail(503), None);
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
