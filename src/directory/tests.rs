//! The directory's ordering of member-list snapshots against membership changes, and what a
//! replay from memory filtered by it lets through.

use super::*;
use crate::history::{Entry, History};
use crate::hub::Outgoing;
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(600);

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

fn set(users: &[Uuid]) -> HashSet<Uuid> {
    users.iter().copied().collect()
}

#[test]
fn a_snapshot_read_before_a_removal_does_not_undo_it() {
    let caches = Caches::new(100);
    let (thread, [carla, david]) = (Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()]);
    caches.members.insert(thread, Members { users: Arc::new(set(&[carla, david])), loaded_at: Instant::now() });
    // A refresh starts and reads Carla as a participant; her removal arrives before it lands.
    assert!(caches.begin_member_load(thread));
    assert!(!caches.begin_member_load(thread), "single flight");
    let snapshot = vec![carla, david];
    caches.apply_membership(thread, carla, false);
    assert_eq!(caches.land_members(thread, snapshot), Landed::Stored { reapplied: 1 });
    assert_eq!(*caches.fresh_members(&thread, TTL).expect("stored"), set(&[david]));
}

#[test]
fn a_snapshot_read_before_events_were_missed_is_read_again() {
    let caches = Caches::new(100);
    let (thread, carla) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(caches.begin_member_load(thread));
    let snapshot = vec![carla];
    // The upstream reconnects: Carla's removal may have been missed while it was down.
    caches.forget_members();
    assert_eq!(caches.land_members(thread, snapshot), Landed::ReadAgain);
    assert!(caches.fresh_members(&thread, TTL).is_none());
    assert_eq!(caches.land_members(thread, vec![]), Landed::Stored { reapplied: 0 });
    assert!(caches.fresh_members(&thread, TTL).expect("stored").is_empty());
}

#[test]
fn a_stale_entry_is_not_fresh() {
    let caches = Caches::new(100);
    let thread = Uuid::new_v4();
    caches.begin_member_load(thread);
    caches.land_members(thread, vec![Uuid::new_v4()]);
    assert!(caches.fresh_members(&thread, TTL).is_some());
    assert!(caches.fresh_members(&thread, Duration::ZERO).is_none(), "older than CACHE_TTL_SECS: load again");
}

/// One step of the model: the database, the feed (changes delivered in commit order, possibly
/// late, possibly lost), loads (read at any time after they start, landing later), messages
/// routed with the cached membership, and resumes filtered by it.
#[derive(Debug, Clone)]
enum Op {
    /// A membership change committed in the database.
    Commit { thread: usize, user: usize, present: bool },
    /// The feed delivers its oldest undelivered change.
    Deliver,
    /// The feed is lost: undelivered changes are never delivered; the directory forgets.
    Lose,
    /// A load of the thread starts (a stale entry, a miss).
    Request { thread: usize },
    /// A started load reads the database now.
    Read { thread: usize },
    /// A load that has read lands.
    Land { thread: usize },
    /// A message is routed in the thread (if its members are cached).
    Post { thread: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..4usize, any::<bool>()).prop_map(|(thread, user, present)| Op::Commit { thread, user, present }),
        Just(Op::Deliver),
        Just(Op::Deliver),
        Just(Op::Lose),
        (0..3usize).prop_map(|thread| Op::Request { thread }),
        (0..3usize).prop_map(|thread| Op::Read { thread }),
        (0..3usize).prop_map(|thread| Op::Land { thread }),
        (0..3usize).prop_map(|thread| Op::Post { thread }),
    ]
}

enum LoadState {
    Started,
    Read(Vec<Uuid>),
}

proptest! {
    /// Once the feed has delivered every committed change, a cached member list is the
    /// database's, whatever loads read and landed around the changes; and a replay filtered by
    /// the directory never carries a message of a thread its user is not in now.
    #[test]
    fn no_user_receives_a_message_of_a_thread_they_are_not_in(
        initial in proptest::collection::hash_set((0..3usize, 0..4usize), 0..12),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let (threads, users) = (ids(3), ids(4));
        let caches = Caches::new(100);
        let history = History::new(crate::history::Bounds { messages: 10_000, bytes: usize::MAX }, chrono::Utc::now() - chrono::Duration::seconds(1));
        let mut truth: Vec<HashSet<Uuid>> = (0..3)
            .map(|t| initial.iter().filter(|(tt, _)| *tt == t).map(|(_, u)| users[*u]).collect())
            .collect();
        let mut feed: std::collections::VecDeque<(usize, Uuid, bool)> = Default::default();
        let mut loads: HashMap<usize, LoadState> = HashMap::new();
        let check = |caches: &Caches, truth: &[HashSet<Uuid>], feed_empty: bool| -> Result<(), TestCaseError> {
            if !feed_empty {
                return Ok(());
            }
            for t in 0..3 {
                if let Some(cached) = caches.fresh_members(&threads[t], TTL) {
                    prop_assert_eq!(&*cached, &truth[t], "thread {} cached differs from the database", t);
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Commit { thread, user, present } => {
                    let changed = if present { truth[thread].insert(users[user]) } else { truth[thread].remove(&users[user]) };
                    if changed {
                        feed.push_back((thread, users[user], present));
                    }
                }
                Op::Deliver => {
                    if let Some((thread, user, present)) = feed.pop_front() {
                        caches.apply_membership(threads[thread], user, present);
                    }
                }
                Op::Lose => {
                    feed.clear();
                    caches.forget_members();
                }
                Op::Request { thread } => {
                    if caches.begin_member_load(threads[thread]) {
                        loads.insert(thread, LoadState::Started);
                    }
                }
                Op::Read { thread } => {
                    if let Some(state) = loads.get_mut(&thread) {
                        *state = LoadState::Read(truth[thread].iter().copied().collect());
                    }
                }
                Op::Land { thread } => {
                    if let Some(LoadState::Read(snapshot)) = loads.remove(&thread) {
                        if caches.land_members(threads[thread], snapshot) == Landed::ReadAgain {
                            loads.insert(thread, LoadState::Started);
                        }
                    }
                }
                Op::Post { thread } => {
                    if let Some(members) = caches.members.get(&threads[thread]).map(|m| m.users.clone()) {
                        history.lock().push(Entry {
                            created_at: chrono::Utc::now(),
                            thread_id: threads[thread],
                            participants: members,
                            frame: Outgoing::notice(format!("{thread}")),
                        });
                    }
                }
            }
            check(&caches, &truth, feed.is_empty())?;
        }
        // Quiet: the feed delivers everything, every load reads and lands.
        while let Some((thread, user, present)) = feed.pop_front() {
            caches.apply_membership(threads[thread], user, present);
        }
        for (thread, _) in std::mem::take(&mut loads) {
            let read = || truth[thread].iter().copied().collect::<Vec<Uuid>>();
            while caches.land_members(threads[thread], read()) == Landed::ReadAgain {}
        }
        check(&caches, &truth, true)?;
        replays_reach_participants_only(&caches, &history, &threads, &users, &truth)?;
    }
}

/// Resumes from the start of the ring, filtered as a session does (a thread not cached is
/// loaded: the database's list): every frame kept is of a thread its user is in (`truth`).
fn replays_reach_participants_only(
    caches: &Caches,
    history: &History,
    threads: &[Uuid],
    users: &[Uuid],
    truth: &[HashSet<Uuid>],
) -> Result<(), TestCaseError> {
    let members: HashMap<Uuid, Arc<HashSet<Uuid>>> = (0..threads.len())
        .map(|t| (threads[t], caches.fresh_members(&threads[t], TTL).unwrap_or_else(|| Arc::new(truth[t].clone()))))
        .collect();
    for user in users {
        let frames = history.lock().replay_for(user, chrono::Utc::now() - chrono::Duration::seconds(1));
        let (kept, _) = members_only(frames, user, &members);
        for frame in kept {
            let t: usize = frame.text.as_str().parse().expect("thread index");
            prop_assert!(truth[t].contains(user), "a replay carried thread {}'s message to a non-participant", t);
        }
    }
    Ok(())
}

#[test]
fn a_memory_replay_keeps_only_the_threads_the_user_is_in_now() {
    let (user, kept, left, unknown) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let frames: Vec<(Uuid, Outgoing)> = [kept, left, kept, unknown, left]
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, Outgoing::notice(i.to_string())))
        .collect();
    assert_eq!(threads_of(&frames), vec![kept, left, unknown]);
    let members: HashMap<Uuid, Arc<HashSet<Uuid>>> =
        [(kept, Arc::new([user].into_iter().collect())), (left, Arc::new([Uuid::new_v4()].into_iter().collect()))]
            .into_iter()
            .collect();
    let (out, withheld) = members_only(frames, &user, &members);
    let texts: Vec<&str> = out.iter().map(|f| f.text.as_str()).collect();
    assert_eq!(texts, ["0", "2"], "in order, only the thread the user is still in");
    assert_eq!(withheld, 3, "a thread missing from the check counts as not the user's");
}
