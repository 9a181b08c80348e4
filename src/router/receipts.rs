//! Live read receipts (`read_receipt`), coalesced per thread.
//!
//! Every instance receives every read-state change. When one of a thread's participants reads
//! it, the thread's other participants with a session on this instance are told, each as the
//! rules let them see it: `chat_read_receipt` (service rights, the same rules as
//! `chat_read_state`) answers the reader's current read state, the counts of the thread's newest
//! message and, per other participant, whether they may see the reader named. The router only
//! hands the change over ([`Receipts::on_read`] never awaits, never blocks): the first change of
//! a thread is read and sent at once by a tracked task; changes that arrive while that runs or
//! within `READ_RECEIPT_COALESCE_SECS` after it wait (the newest reader wins) and go out as one
//! more frame after the window. So at most one frame per thread per window reaches a session.
//! Bounded: at most `READ_RECEIPT_MAX_THREADS` threads pending (a change beyond that sends
//! nothing, and is counted and logged) and `READ_RECEIPT_CONCURRENCY` reads at once. Each
//! distinct frame (named, or counts only) is serialized once and its bytes shared. This module
//! must never send a receipt to anyone the database did not list as a participant allowed to see
//! it, nor to a user the directory knows is no longer a participant.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::directory::Directory;
use crate::hub::{Hub, Outgoing};
use crate::metrics::Metrics;
use crate::model::format_time;
use crate::protocol::ServerMessage;
use crate::store::{ReadReceipt, Store};

/// Per thread with a worker running: the newest reader not yet sent, if any.
type Pending = HashMap<Uuid, Option<Read>>;

/// One reader's change: who, and the `last_read_at` the change carried (if it parsed), which the
/// database's answer must have reached before a receipt goes out.
#[derive(Clone, Copy)]
struct Read {
    reader: Uuid,
    at_least: Option<DateTime<Utc>>,
}

/// A streamed change can reach the gateway before its commit is visible to other connections
/// (the walsender decodes the flushed commit record before the committing backend leaves the
/// proc array): while the answer's `last_read_at` is older than the change's, it is read again,
/// this many times, this far apart, and the receipt is sent with what is read then.
const STALE_READS: u32 = 5;
const STALE_PAUSE: Duration = Duration::from_millis(20);

/// The bounds of the hand-off.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub window: Duration,
    pub max_threads: usize,
    pub concurrency: usize,
}

pub struct Receipts {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
    max_threads: usize,
    /// When a dropped change was last logged (a full map logs at most every 10 s).
    logged: Mutex<Option<Instant>>,
}

/// What every worker uses.
struct Shared {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    store: Store,
    directory: Arc<Directory>,
    pending: Mutex<Pending>,
    reads: Semaphore,
    window: Duration,
}

impl Receipts {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        store: Store,
        directory: Arc<Directory>,
        tasks: TaskTracker,
        stop: CancellationToken,
        bounds: Bounds,
    ) -> Self {
        let shared = Shared {
            hub,
            metrics,
            store,
            directory,
            pending: Mutex::default(),
            reads: Semaphore::new(bounds.concurrency.max(1)),
            window: bounds.window,
        };
        Receipts { shared: Arc::new(shared), tasks, stop, max_threads: bounds.max_threads, logged: Mutex::default() }
    }

    /// `reader`'s read state of `thread_id` moved: a receipt to the thread's other participants
    /// on this instance, now or after the thread's window. Never waits.
    pub fn on_read(&self, thread_id: Uuid, reader: Uuid, last_read_at: &str) {
        let read = Read { reader, at_least: crate::model::parse_time(last_read_at) };
        if !self.anyone_to_tell(&thread_id, &reader) {
            return;
        }
        {
            let mut pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(next) = pending.get_mut(&thread_id) {
                *next = Some(read);
                self.shared.metrics.receipts.coalesced();
                return;
            }
            if pending.len() >= self.max_threads {
                drop(pending);
                self.dropped(thread_id);
                return;
            }
            pending.insert(thread_id, None);
        }
        let worker = Worker { shared: self.shared.clone(), thread_id };
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = worker.run(read) => {}
                _ = stop.cancelled() => {}
            }
        });
    }

    /// False only when the thread's members are known and none but the reader is online here.
    fn anyone_to_tell(&self, thread_id: &Uuid, reader: &Uuid) -> bool {
        match self.shared.directory.members(thread_id) {
            Some(members) => members.iter().any(|u| u != reader && self.shared.hub.is_online(u)),
            None => self.shared.hub.user_count() > 0,
        }
    }

    fn dropped(&self, thread_id: Uuid) {
        let total = self.shared.metrics.receipts.dropped();
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *logged = Some(Instant::now());
            tracing::warn!(
                thread = %thread_id,
                pending = self.max_threads,
                dropped_total = total,
                "read receipt not sent: READ_RECEIPT_MAX_THREADS threads already pending"
            );
        }
    }
}

/// Reads and sends one thread's receipts until no change waits.
struct Worker {
    shared: Arc<Shared>,
    thread_id: Uuid,
}

impl Worker {
    async fn run(self, first: Read) {
        let mut gone = Cleanup { shared: self.shared.clone(), thread_id: self.thread_id, armed: true };
        let mut read = first;
        loop {
            self.send(read).await;
            tokio::time::sleep(self.shared.window).await;
            match self.next() {
                Some(next) => read = next,
                None => break,
            }
        }
        // next() removed the entry; a new worker of the thread may own a new one already.
        gone.armed = false;
    }

    /// The newest reader that waited, or None (and the thread's entry removed) when none did.
    fn next(&self) -> Option<Read> {
        let mut pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(&self.thread_id).and_then(Option::take) {
            Some(read) => Some(read),
            None => {
                pending.remove(&self.thread_id);
                None
            }
        }
    }

    async fn send(&self, read: Read) {
        let Ok(_turn) = self.shared.reads.acquire().await else { return };
        let mut tries = 0;
        let receipt = loop {
            self.shared.metrics.receipts.read();
            match self.shared.store.read_receipt(self.thread_id, read.reader).await {
                Ok(Some(receipt)) => {
                    let stale = read.at_least.is_some_and(|t| receipt.last_read_at < t);
                    if !stale || tries == STALE_READS {
                        break receipt;
                    }
                    tries += 1;
                    tokio::time::sleep(STALE_PAUSE).await;
                }
                // The reader left the thread meanwhile: nothing to tell.
                Ok(None) => return,
                Err(e) => {
                    self.shared.metrics.receipts.failed();
                    tracing::warn!(thread = %self.thread_id, error = %e, "read receipt read failed");
                    return;
                }
            }
        };
        let members = self.shared.directory.members(&self.thread_id);
        let sessions = deliver(&self.shared.hub, members.as_deref(), self.thread_id, &receipt);
        self.shared.metrics.receipts.sent(sessions);
        tracing::debug!(thread = %self.thread_id, sessions, "read receipt sent");
    }
}

/// Sends `receipt` to every viewer it lists who is still a participant (`members`: the thread's
/// participants as the directory knows them now, if it does) and online here: the named frame or
/// the counts-only frame, each serialized at most once. Returns how many sessions got one.
fn deliver(hub: &Hub, members: Option<&HashSet<Uuid>>, thread_id: Uuid, receipt: &ReadReceipt) -> usize {
    let Some(message_id) = receipt.message_id else { return 0 };
    let last_read_at = format_time(receipt.last_read_at);
    let frame = |reader| {
        let frame = ServerMessage::ReadReceipt {
            thread_id,
            reader,
            last_read_at: &last_read_at,
            message_id,
            seen_by: receipt.seen_by,
            of: receipt.of,
        };
        Outgoing::notice(frame.to_json())
    };
    let (mut named, mut counts): (Option<Outgoing>, Option<Outgoing>) = (None, None);
    let mut sessions = 0;
    for viewer in &receipt.viewers {
        let gone = members.is_some_and(|m| !m.contains(&viewer.user_id));
        if viewer.user_id == receipt.reader.user_id || gone || !hub.is_online(&viewer.user_id) {
            continue;
        }
        let out = if viewer.named {
            named.get_or_insert_with(|| frame(Some(&receipt.reader)))
        } else {
            counts.get_or_insert_with(|| frame(None))
        };
        sessions += hub.send_to_participant(&thread_id, &viewer.user_id, out);
    }
    sessions
}

/// Removes the thread's entry if the worker ends early (shutdown), so the map never keeps it.
struct Cleanup {
    shared: Arc<Shared>,
    thread_id: Uuid,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.thread_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::ReceiptViewer;

    fn hub() -> Arc<Hub> {
        crate::hub::test_hub(8)
    }

    fn receipt(reader: Uuid, viewers: &[(Uuid, bool)]) -> ReadReceipt {
        ReadReceipt {
            reader: crate::store::Reader { user_id: reader, full_name: "Carla Diaz".into(), role: "parent".into() },
            last_read_at: crate::model::parse_time("2026-03-01T08:00:00Z").expect("time"),
            message_id: Some(Uuid::from_u128(99)),
            seen_by: 1,
            of: 3,
            viewers: viewers.iter().map(|&(user_id, named)| ReceiptViewer { user_id, named }).collect(),
        }
    }

    #[test]
    fn each_viewer_gets_the_frame_the_rules_allow_serialized_once() {
        let hub = hub();
        let thread = Uuid::from_u128(1);
        let [carla, alice, david, eva, gone] = [2, 3, 4, 5, 6].map(Uuid::from_u128);
        let sessions: Vec<_> =
            [carla, alice, alice, david, gone].iter().map(|u| hub.register(*u).expect("fits")).collect();
        let members: HashSet<Uuid> = [carla, alice, david, eva].into();
        // Eva is offline; `gone` left the thread after the database answered.
        let r = receipt(carla, &[(alice, true), (david, false), (eva, false), (gone, true), (carla, true)]);
        assert_eq!(deliver(&hub, Some(&members), thread, &r), 3, "Alice's two sessions and David's");

        let frame = |i: usize| sessions[i].queue.try_pop();
        assert!(frame(0).is_none(), "never the reader");
        assert!(frame(4).is_none(), "never someone the directory knows left");
        let (alice_1, alice_2, david_f) =
            (frame(1).expect("alice"), frame(2).expect("alice again"), frame(3).expect("david"));
        let named: serde_json::Value = serde_json::from_str(alice_1.text.as_str()).expect("json");
        assert_eq!(named["reader"]["full_name"], "Carla Diaz");
        assert_eq!((named["seen_by"].clone(), named["of"].clone()), (1.into(), 3.into()));
        let counts: serde_json::Value = serde_json::from_str(david_f.text.as_str()).expect("json");
        assert_eq!(counts["reader"], serde_json::Value::Null);
        assert_eq!(counts["message_id"], named["message_id"]);
        assert_eq!(alice_1.text.as_str().as_ptr(), alice_2.text.as_str().as_ptr(), "one serialization, shared");
    }

    #[test]
    fn no_message_no_receipt_and_without_a_member_list_the_database_decides() {
        let hub = hub();
        let thread = Uuid::from_u128(1);
        let [carla, alice] = [2, 3].map(Uuid::from_u128);
        let session = hub.register(alice).expect("fits");
        let mut empty = receipt(carla, &[(alice, true)]);
        empty.message_id = None;
        assert_eq!(deliver(&hub, None, thread, &empty), 0);
        assert_eq!(deliver(&hub, None, thread, &receipt(carla, &[(alice, true)])), 1);
        assert!(session.queue.try_pop().is_some());
    }
}
