//! The ledger: what the database committed against what every socket received.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Report {
    /// (message, device) pairs a cursor covered while the user was a participant.
    pub(super) expected: usize,
    pub(super) delivered: usize,
    /// Of those, delivered before the cursor that covered them.
    pub(super) delivered_in_time: usize,
    /// Pairs the brief rule counts (participant around the message, a resume after it) that
    /// never arrived and no cursor of a participant covered: the user was removed before the
    /// gateway routed the message (routing follows the membership of that moment, as RLS does).
    pub(super) undelivered_removed_before_routing: usize,
    /// Pairs not judged: a membership change of that user in that thread within the window.
    pub(super) excluded_near_changes: usize,
    /// Live frames of messages committed before the user joined the thread (reported).
    pub(super) live_before_join: usize,
    pub(super) connections: usize,
    pub(super) resumes: usize,
    pub(super) replay_failures: usize,
    pub(super) abrupt_drops: usize,
    pub(super) frames: usize,
    pub(super) replayed_frames: usize,
    pub(super) duplicates_across_connections: usize,
    /// Connections of a user opened after their removal from a thread (and no re-add since):
    /// each a resume that must not carry that thread.
    pub(super) resumes_after_removal: usize,
    /// Messages of a thread that reached a user on a connection opened after their removal from
    /// it (live or replayed, not re-added by then). Must be 0.
    pub(super) delivered_after_removal: usize,
    pub(super) violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (message, device) pairs expected, {} delivered ({} before the cursor that covered them), {} left out near membership changes, {} not delivered because the user was removed before the gateway routed them; {} connections ({} completed resumes, {} replays failed and retried, {} abrupt drops); {} frames ({} replayed); {} duplicates across connections (allowed, deduplicated by id); {} live frames of messages committed before the user joined; {} resumes after a removal, {} messages delivered to a removed user after the removal; {} violations",
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
            self.resumes_after_removal,
            self.delivered_after_removal,
            self.violations.len()
        )
    }
}

/// A rise of the device's cursor: timeline index, value, when, connection, from `sync_complete`.
pub(super) type Mark = (usize, DateTime<Utc>, DateTime<Utc>, usize, bool);

pub(super) fn ledger(p: &Params, written: &[Written], membership: &Membership, logs: &[DeviceLog]) -> Report {
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
            let opened = conn.opened.unwrap_or_default();
            r.resumes_after_removal += usize::from(
                conn.synced.is_some()
                    && (0..p.threads).any(|t| membership.removed_between(t, user, opened, opened, p.window).is_some()),
            );
            let mut once: HashSet<Uuid> = HashSet::new();
            let mut last_rank: HashMap<usize, u64> = HashMap::new();
            for (id, live, at) in &conn.frames {
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
                if let Some(removed) = membership.removed_between(m.thread, user, opened, *at, p.window) {
                    r.delivered_after_removal += 1;
                    violation(&mut r, format!(
                        "device {d} (user {user}) connection {c}: {} message {id} of thread {} #{} on a connection opened {} after the user's removal ({})",
                        if *live { "live" } else { "replayed" }, m.thread, m.rank, format_cursor(opened), format_cursor(removed)
                    ));
                }
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
