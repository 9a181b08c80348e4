//! One session's outbox and the handle the hub holds: a bounded queue of pre-serialized frames,
//! the session's thread mutes and explicit subscriptions (each set bounded by the caller's
//! limit, allocated only while there are any), and the one-shot close request.
//!
//! Filled by the hub with `try_push` (never waiting), drained by the session's own task. A push
//! into a full queue closes the session as too slow: it never blocks the caller and never grows
//! memory without bound. Nothing here does I/O.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::close::{self, Close};
use crate::metrics::Metrics;

use super::ephemeral::Offered;

/// How many of the last queued frames an ephemeral frame is compared with before it is queued.
pub const COALESCE_SCAN: usize = 64;

/// A pre-serialized text frame, shared by every recipient (reference-counted bytes), with the id
/// and `created_at` of the chat message it carries, if any (used to skip what a resume replay
/// already sent, or what the client's resume cursor already covers).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub text: Utf8Bytes,
    pub message: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    /// A live message's receipt from the upstream: the socket write observes the gateway's
    /// delivery latency from it (`None` for notices and replays).
    pub received: Option<std::time::Instant>,
}

impl Outgoing {
    pub fn notice(text: impl Into<Utf8Bytes>) -> Outgoing {
        Outgoing { text: text.into(), message: None, created_at: None, received: None }
    }

    /// The frame of chat message `id`, created at `created_at`.
    pub fn message(text: impl Into<Utf8Bytes>, id: Uuid, created_at: DateTime<Utc>) -> Outgoing {
        Outgoing { text: text.into(), message: Some(id), created_at: Some(created_at), received: None }
    }
}

/// A session's bounded outgoing queue: at most `capacity` frames and `max_bytes` of their text
/// (a frame always fits an empty queue, so no single frame can make a session undeliverable).
///
/// A `VecDeque` behind a mutex plus a `Notify`, rather than a channel, so that an idle session
/// owns no pre-allocated slots: the buffer grows with a burst and is released when drained.
pub struct Queue {
    frames: Mutex<Frames>,
    /// The session's one wake-up: a frame queued, a close requested, its alarm rung.
    ready: Notify,
    capacity: u32,
    max_bytes: u32,
}

#[derive(Default)]
struct Frames {
    list: VecDeque<Outgoing>,
    bytes: usize,
}

/// The queue is full (`bytes`: its byte bound was hit): the session is too far behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub bytes: bool,
}

impl Queue {
    /// Bounds above `u32::MAX` are held as `u32::MAX` (configuration caps them far below).
    pub fn new(capacity: usize, max_bytes: usize) -> Queue {
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Queue {
            frames: Mutex::new(Frames::default()),
            ready: Notify::new(),
            capacity: bound(capacity),
            max_bytes: bound(max_bytes),
        }
    }

    /// Whether `frames` has no room for `len` more bytes of text, or for another frame.
    fn full(&self, frames: &Frames, len: usize) -> Option<Full> {
        if frames.list.len() >= self.capacity as usize {
            return Some(Full { bytes: false });
        }
        if !frames.list.is_empty() && frames.bytes + len > self.max_bytes as usize {
            return Some(Full { bytes: true });
        }
        None
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, frame: &Outgoing) -> Result<(), Full> {
        {
            let mut frames = self.frames.lock().map_err(|_| Full { bytes: false })?;
            if let Some(full) = self.full(&frames, frame.text.len()) {
                return Err(full);
            }
            frames.bytes += frame.text.len();
            frames.list.push_back(frame.clone());
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues the frame `build` makes from the number of chat-message frames queued ahead of it,
    /// counted and pushed under one lock, so nothing slips in between. `build` runs under the
    /// queue's lock: it must take no other lock (the router holds the ring's lock while it pushes).
    pub fn try_push_counted(&self, build: impl FnOnce(usize) -> Outgoing) -> Result<(), Full> {
        {
            let mut frames = self.frames.lock().map_err(|_| Full { bytes: false })?;
            if frames.list.len() >= self.capacity as usize {
                return Err(Full { bytes: false });
            }
            let frame = build(frames.list.iter().filter(|f| f.message.is_some()).count());
            if let Some(full) = self.full(&frames, frame.text.len()) {
                return Err(full);
            }
            frames.bytes += frame.text.len();
            frames.list.push_back(frame);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues ephemeral frames without waiting, under one lock and with one wake-up: a frame
    /// that does not fit is skipped, and a frame identical to one still queued (among the last
    /// [`COALESCE_SCAN`]) is not queued again.
    pub fn try_offer_all(&self, offered: &[Outgoing]) -> Offered {
        let mut outcome = Offered::default();
        {
            let Ok(mut frames) = self.frames.lock() else {
                outcome.skipped = offered.len();
                return outcome;
            };
            for frame in offered {
                let queued = frames.list.iter().rev().take(COALESCE_SCAN);
                if queued.filter(|q| q.message.is_none()).any(|q| q.text == frame.text) {
                    outcome.coalesced += 1;
                } else if self.full(&frames, frame.text.len()).is_some() {
                    outcome.skipped += 1;
                } else {
                    frames.bytes += frame.text.len();
                    frames.list.push_back(frame.clone());
                    outcome.queued += 1;
                }
            }
        }
        if outcome.queued > 0 {
            self.ready.notify_one();
        }
        outcome
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.lock().map_or(true, |frames| frames.list.is_empty())
    }

    /// Takes the next frame if one is queued.
    pub fn try_pop(&self) -> Option<Outgoing> {
        let mut frames = self.frames.lock().ok()?;
        let frame = frames.list.pop_front();
        if let Some(frame) = &frame {
            frames.bytes -= frame.text.len();
        }
        if frames.list.is_empty() && frames.list.capacity() > 16 {
            // Give a burst's buffer back: idle sessions should cost (almost) nothing.
            frames.list.shrink_to(0);
        }
        frame
    }
}

/// The part of a session the hub shares with the session's own task.
pub struct SessionHandle {
    pub id: u64,
    pub user_id: Uuid,
    pub queue: Queue,
    /// Muted threads and explicit subscriptions, allocated only while the session has any
    /// (most sessions never do): an idle session pays one pointer for them.
    threads: Mutex<Option<Box<Threads>>>,
    has_muted: AtomicBool,
    close_reason: OnceLock<&'static Close>,
    /// When the session's alarm is due (milliseconds on the hub's clock; `NO_ALARM`: none).
    alarm: AtomicU64,
    /// The hub's clock rang the alarm; the session has not seen it yet.
    rang: AtomicBool,
}

/// No alarm set.
const NO_ALARM: u64 = u64::MAX;

/// What woke a session, in the order it is taken: a close request first, then queued frames
/// (left in the queue for the session to take), then the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Close(&'static Close),
    Frames,
    Alarm,
}

/// A session's thread mutes and explicit subscriptions.
#[derive(Default)]
struct Threads {
    muted: HashSet<Uuid>,
    subscribed: HashSet<Uuid>,
}

impl SessionHandle {
    /// A handle whose queue holds at most `capacity` frames and `max_bytes` of their text.
    pub fn new(id: u64, user_id: Uuid, capacity: usize, max_bytes: usize) -> SessionHandle {
        SessionHandle {
            id,
            user_id,
            queue: Queue::new(capacity, max_bytes),
            threads: Mutex::new(None),
            has_muted: AtomicBool::new(false),
            close_reason: OnceLock::new(),
            alarm: AtomicU64::new(NO_ALARM),
            rang: AtomicBool::new(false),
        }
    }

    /// Asks the session to close with `reason` (the first reason wins).
    pub fn close(&self, reason: &'static Close) {
        if self.close_reason.set(reason).is_ok() {
            self.queue.ready.notify_one();
        }
    }

    /// Why the session was asked to close, if it was.
    pub fn close_reason(&self) -> Option<Close> {
        self.close_reason.get().map(|reason| **reason)
    }

    /// Resolves once the session was asked to close; returns why. Queued frames and the alarm
    /// are left for [`Self::next`].
    pub async fn closed(&self) -> Close {
        loop {
            if let Some(reason) = self.close_reason.get() {
                return **reason;
            }
            // A frame's or the alarm's wake-up may be taken here: nothing is lost, [`Self::next`]
            // looks at the queue and the alarm before it waits.
            self.queue.ready.notified().await;
        }
    }

    /// The session's next event: a close request, a queued frame, or its alarm (in that order).
    pub async fn next(&self) -> Wake {
        loop {
            if let Some(reason) = self.close_reason.get() {
                return Wake::Close(reason);
            }
            if !self.queue.is_empty() {
                return Wake::Frames;
            }
            if self.rang.swap(false, Ordering::AcqRel) {
                return Wake::Alarm;
            }
            self.queue.ready.notified().await;
        }
    }

    /// Sets the session's alarm to `at` (milliseconds on the hub's clock), replacing any other.
    pub fn set_alarm(&self, at: u64) {
        self.rang.store(false, Ordering::Release);
        self.alarm.store(at, Ordering::Release);
    }

    /// The hub's clock: rings the alarm if it is due at `now` (once: a rung alarm is cleared).
    pub fn check_alarm(&self, now: u64) -> bool {
        let at = self.alarm.load(Ordering::Acquire);
        if at > now || self.alarm.compare_exchange(at, NO_ALARM, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.rang.store(true, Ordering::Release);
        self.queue.ready.notify_one();
        true
    }

    /// Reads the thread sets (None: the session has none).
    fn read<T>(&self, f: impl FnOnce(Option<&Threads>) -> T) -> T {
        let guard = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        f(guard.as_deref())
    }

    /// Changes the thread sets (allocated on first use, released once both are empty).
    fn change<T>(&self, f: impl FnOnce(&mut Threads) -> T) -> T {
        let mut guard = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        let threads = guard.get_or_insert_with(Box::default);
        let out = f(threads);
        self.has_muted.store(!threads.muted.is_empty(), Ordering::Relaxed);
        if threads.muted.is_empty() && threads.subscribed.is_empty() {
            *guard = None;
        }
        out
    }

    pub fn is_muted(&self, thread_id: &Uuid) -> bool {
        self.has_muted.load(Ordering::Relaxed) && self.read(|t| t.is_some_and(|t| t.muted.contains(thread_id)))
    }

    /// Mutes a thread on this connection; false when `limit` other threads are muted already.
    pub fn mute(&self, thread_id: Uuid, limit: usize) -> bool {
        self.change(|t| {
            if !t.muted.contains(&thread_id) && t.muted.len() >= limit {
                return false;
            }
            t.muted.insert(thread_id);
            true
        })
    }

    /// Un-mutes a thread on this connection.
    pub fn unmute(&self, thread_id: &Uuid) {
        if self.has_muted.load(Ordering::Relaxed) {
            self.change(|t| t.muted.remove(thread_id));
        }
    }

    /// Whether this session holds an explicit subscription to `thread_id`.
    pub fn is_subscribed(&self, thread_id: &Uuid) -> bool {
        self.read(|t| t.is_some_and(|t| t.subscribed.contains(thread_id)))
    }

    /// Records an explicit subscription; false when the session already holds `limit` others.
    pub fn add_subscription(&self, thread_id: Uuid, limit: usize) -> bool {
        self.change(|t| {
            if !t.subscribed.contains(&thread_id) && t.subscribed.len() >= limit {
                return false;
            }
            t.subscribed.insert(thread_id);
            true
        })
    }

    /// Forgets an explicit subscription; true if there was one.
    pub fn remove_subscription(&self, thread_id: &Uuid) -> bool {
        if !self.is_subscribed(thread_id) {
            return false;
        }
        self.change(|t| t.subscribed.remove(thread_id))
    }

    pub fn subscriptions(&self) -> Vec<Uuid> {
        self.read(|t| t.map(|t| t.subscribed.iter().copied().collect()).unwrap_or_default())
    }

    /// Queues ephemeral frames where there is room (the session is left open either way; see
    /// [`Queue::try_offer_all`]); a closing session takes none.
    pub fn offer_all(&self, frames: &[Outgoing]) -> Offered {
        if self.close_reason.get().is_some() {
            return Offered { skipped: frames.len(), ..Offered::default() };
        }
        self.queue.try_offer_all(frames)
    }

    /// Queues a frame, or closes the session as too slow when its queue is full.
    pub fn push(&self, frame: &Outgoing, metrics: &Metrics) {
        self.push_with(|| self.queue.try_push(frame), metrics);
    }

    /// Queues the frame `build` makes from the number of chat messages queued ahead of it (a held
    /// `sync_complete` counts the live messages that go out before it).
    pub fn push_counted(&self, build: impl FnOnce(usize) -> Outgoing, metrics: &Metrics) {
        self.push_with(|| self.queue.try_push_counted(build), metrics);
    }

    fn push_with(&self, push: impl FnOnce() -> Result<(), Full>, metrics: &Metrics) {
        if self.close_reason.get().is_some() {
            return;
        }
        match push() {
            Ok(()) => metrics.delivered(),
            Err(Full { bytes }) => {
                metrics.slow_drop(bytes);
                tracing::warn!(session = self.id, user = %self.user_id, by_bytes = bytes, "dropping slow client: send queue full");
                self.close(&close::SLOW);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_closes_the_session_instead_of_growing() {
        let metrics = Metrics::default();
        let handle = SessionHandle::new(1, Uuid::new_v4(), 2, 1 << 20);
        let frame = Outgoing::notice("x");
        for _ in 0..3 {
            handle.push(&frame, &metrics);
        }
        assert_eq!(handle.close_reason(), Some(close::SLOW));
        assert!(handle.queue.try_pop().is_some() && handle.queue.try_pop().is_some());
        assert!(handle.queue.try_pop().is_none(), "the third frame was refused, not queued");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let metrics = Metrics::default();
        let handle = SessionHandle::new(1, Uuid::new_v4(), 100, 2500);
        let big = Outgoing::notice("x".repeat(1000));
        handle.push(&big, &metrics);
        handle.push(&big, &metrics);
        assert_eq!(handle.close_reason(), None, "2,000 bytes fit");
        assert!(handle.queue.try_pop().is_some(), "popping gives the bytes back");
        handle.push(&big, &metrics);
        assert_eq!(handle.close_reason(), None, "2,000 bytes again");
        handle.push(&big, &metrics);
        assert_eq!(handle.close_reason(), Some(close::SLOW), "3,000 bytes would not");
        let alone = SessionHandle::new(2, Uuid::new_v4(), 100, 10);
        alone.push(&big, &metrics);
        assert_eq!(alone.close_reason(), None, "one frame always fits an empty queue");
    }

    #[test]
    fn thread_sets_exist_only_while_they_hold_something() {
        let handle = SessionHandle::new(1, Uuid::new_v4(), 10, 1 << 20);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(handle.read(|t| t.is_none()), "nothing allocated for a new session");
        assert!(handle.mute(a, 1) && !handle.mute(b, 1), "bounded by the limit");
        assert!(handle.add_subscription(b, 1));
        assert!(handle.is_muted(&a) && handle.is_subscribed(&b) && !handle.is_muted(&b));
        handle.unmute(&a);
        assert!(!handle.is_muted(&a) && handle.read(|t| t.is_some()), "the subscription keeps them");
        assert!(handle.remove_subscription(&b) && !handle.remove_subscription(&b));
        assert!(handle.read(|t| t.is_none()), "released once empty");
        assert!(handle.subscriptions().is_empty());
    }

    #[test]
    fn a_counted_push_counts_the_chat_messages_queued_ahead_of_it() {
        let metrics = Metrics::default();
        let handle = SessionHandle::new(1, Uuid::new_v4(), 10, 1 << 20);
        let message = Outgoing::message("m", Uuid::new_v4(), Utc::now());
        handle.push(&message, &metrics);
        handle.push(&Outgoing::notice("n"), &metrics);
        handle.push(&message, &metrics);
        handle.push_counted(|ahead| Outgoing::notice(format!("sync {ahead}")), &metrics);
        let texts: Vec<String> = std::iter::from_fn(|| handle.queue.try_pop()).map(|f| f.text.to_string()).collect();
        assert_eq!(texts, ["m", "n", "m", "sync 2"], "notices are not counted; the frame goes last");
    }

    #[tokio::test]
    async fn one_wake_up_serves_the_close_request_the_frames_and_the_alarm_in_that_order() {
        let metrics = Metrics::default();
        let handle = SessionHandle::new(1, Uuid::new_v4(), 10, 1 << 20);
        handle.set_alarm(100);
        assert!(!handle.check_alarm(99), "not due yet");
        handle.push(&Outgoing::notice("a"), &metrics);
        assert!(handle.check_alarm(100) && !handle.check_alarm(101), "rung once");
        assert_eq!(handle.next().await, Wake::Frames, "frames before the alarm");
        assert_eq!(handle.next().await, Wake::Frames, "left queued until taken");
        assert!(handle.queue.try_pop().is_some_and(|f| f.text == "a"));
        assert_eq!(handle.next().await, Wake::Alarm);
        handle.push(&Outgoing::notice("b"), &metrics);
        handle.close(&close::SLOW);
        handle.close(&close::RATE);
        assert!(
            matches!(handle.next().await, Wake::Close(r) if *r == close::SLOW),
            "the first close wins, before frames"
        );
        assert_eq!(handle.closed().await, close::SLOW);
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_a_frame_pushed_later() {
        let handle = std::sync::Arc::new(SessionHandle::new(1, Uuid::new_v4(), 10, 1 << 20));
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move { handle.next().await }
        });
        tokio::task::yield_now().await;
        handle.push(&Outgoing::notice("late"), &Metrics::default());
        assert_eq!(waiter.await.expect("the waiter ran"), Wake::Frames);
        assert!(handle.queue.try_pop().is_some_and(|f| f.text == "late"));
    }
}
