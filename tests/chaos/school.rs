//! The school of a chaos run: users, threads, the writers and the membership churn, and the
//! membership history the ledger judges against.

use super::*;

/// SplitMix64: small, seedable, good enough to schedule chaos reproducibly.
#[derive(Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(super) fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// ---------------------------------------------------------------------------------------------
// The school of the run
// ---------------------------------------------------------------------------------------------

pub(super) struct User {
    pub(super) id: Uuid,
    pub(super) email: String,
    pub(super) devices: usize,
}

pub(super) struct School {
    pub(super) users: Vec<User>,
    /// Thread ids; thread k's writer is user k (a teacher).
    pub(super) threads: Vec<Uuid>,
    /// (thread index, user index) pairs at the start.
    pub(super) initial: HashSet<(usize, usize)>,
}

pub(super) fn school(p: &Params, rng: &mut Rng) -> School {
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

pub(super) async fn load_school(world: &World, school: &School, threads: usize) {
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
pub(super) struct Written {
    pub(super) id: Uuid,
    pub(super) thread: usize,
    /// The writer's transaction number in its thread: commit order (rows of one transaction share it).
    pub(super) rank: u64,
    /// The transaction's start (`created_at`, the database's clock) ...
    pub(super) start: DateTime<Utc>,
    /// ... and a time after its COMMIT returned (same machine, same clock).
    pub(super) committed: DateTime<Utc>,
}

/// One writer per thread: per-thread commit order is the writer's order.
pub(super) async fn writer(
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
pub(super) struct Change {
    pub(super) present: bool,
    pub(super) start: DateTime<Utc>,
    pub(super) committed: DateTime<Utc>,
}

/// Adds and removes parents (never a thread's writer) every second or two.
pub(super) async fn churn(
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

/// Removes up to `n` parents from threads they are in while every device is away (the caller
/// made sure of it), logging each change; returns how many were removed.
pub(super) async fn remove_while_away(
    db: tokio_postgres::Client,
    school: &SchoolIds,
    log: &mut HashMap<(usize, usize), Vec<Change>>,
    rng: &mut Rng,
    n: usize,
) -> usize {
    let mut members: Vec<(usize, usize)> = school
        .initial
        .iter()
        .chain(log.keys())
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|&(t, u)| {
            u >= school.threads.len()
                && log.get(&(t, u)).and_then(|cs| cs.last()).map_or(school.initial.contains(&(t, u)), |c| c.present)
        })
        .collect();
    members.sort_unstable();
    let mut removed = 0;
    while removed < n && !members.is_empty() {
        let (t, u) = members.swap_remove(rng.below(members.len() as u64) as usize);
        let row = db
            .query_one(
                "delete from public.thread_participants where thread_id = $1 and user_id = $2 returning now()",
                &[&school.threads[t], &school.users[u]],
            )
            .await
            .expect("membership removal");
        let start: DateTime<Utc> = row.get(0);
        log.entry((t, u)).or_default().push(Change { present: false, start, committed: Utc::now() });
        removed += 1;
    }
    removed
}

pub(super) struct SchoolIds {
    pub(super) users: Vec<Uuid>,
    pub(super) threads: Vec<Uuid>,
    pub(super) initial: HashSet<(usize, usize)>,
}

/// Membership over time, as committed.
pub(super) struct Membership {
    pub(super) initial: HashSet<(usize, usize)>,
    pub(super) changes: HashMap<(usize, usize), Vec<Change>>,
}

impl Membership {
    /// Definitely a participant over the whole of [from, to] (no change overlapping it).
    pub(super) fn throughout(&self, thread: usize, user: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
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
    pub(super) fn at_commit(
        &self,
        thread: usize,
        user: usize,
        start: DateTime<Utc>,
        committed: DateTime<Utc>,
    ) -> Option<bool> {
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

    /// The commit of a removal of the user from the thread before `before` (with `window` to
    /// reach the gateway) that no re-add started after, up to `until`: from then on, nothing of
    /// that thread may reach the user.
    pub(super) fn removed_between(
        &self,
        thread: usize,
        user: usize,
        before: DateTime<Utc>,
        until: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let changes = self.changes.get(&(thread, user)).map(Vec::as_slice).unwrap_or_default();
        let removal = changes.iter().rev().find(|c| !c.present && c.committed + window < before)?;
        let readded = changes.iter().any(|c| c.present && c.start >= removal.committed && c.start <= until);
        (!readded).then_some(removal.committed)
    }

    /// Whether the user was (possibly) added to the thread after `after`.
    pub(super) fn added_later(&self, thread: usize, user: usize, after: DateTime<Utc>) -> bool {
        self.changes.get(&(thread, user)).is_some_and(|cs| cs.iter().any(|c| c.present && c.committed >= after))
    }

    pub(super) fn member_at_end(&self, thread: usize, user: usize) -> bool {
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
pub(super) enum Phase {
    Chaos,
    /// Stay disconnected.
    Pause,
    /// Resume once more and wait for these messages (the last of each thread, per user).
    Final(Arc<HashMap<Uuid, HashSet<Uuid>>>),
}
