//! The school-shaped population every scenario uses: users, class and 1:1 threads, sessions per
//! device, loaded into a stand-in stack on a cluster of its own, and a signed token per session.
//! Owns the data set; it must never measure anything.

use supabase_standin::keys::Alg;
use supabase_standin::{Stack, StackOptions};
use uuid::Uuid;

/// Who is in the school: users, threads with their members, and one user index per session.
pub struct Population {
    pub users: Vec<(Uuid, String)>,
    /// thread id, participant user indexes, sender user index
    pub threads: Vec<(Uuid, Vec<usize>, usize)>,
    /// user index per session
    pub sessions: Vec<usize>,
}

/// `classes` classes of 1 teacher (phone and laptop) and 30 parents (1 to 3 devices), each
/// with its class thread and one 1:1 thread with the first parent.
fn population(classes: usize) -> Population {
    let mut users = Vec::new();
    let mut threads = Vec::new();
    let mut sessions = Vec::new();
    for c in 0..classes {
        let teacher = users.len();
        users.push((Uuid::new_v4(), format!("teacher{c}@bench.test")));
        sessions.extend([teacher, teacher]); // phone + laptop
        let mut members = vec![teacher];
        for p in 0..30 {
            let parent = users.len();
            users.push((Uuid::new_v4(), format!("parent{c}-{p}@bench.test")));
            let devices = 1 + usize::from(p % 10 == 0) + usize::from(p % 20 == 0);
            sessions.extend(std::iter::repeat_n(parent, devices));
            members.push(parent);
        }
        threads.push((Uuid::new_v4(), members.clone(), teacher));
        threads.push((Uuid::new_v4(), vec![teacher, members[1]], teacher));
    }
    Population { users, threads, sessions }
}

async fn load_population(stack: &Stack, pop: &Population) {
    let db = stack.sql().await;
    let ids: Vec<Uuid> = pop.users.iter().map(|u| u.0).collect();
    let emails: Vec<String> = pop.users.iter().map(|u| u.1.clone()).collect();
    let names: Vec<String> = pop.users.iter().map(|u| u.1.split('@').next().unwrap_or("x").to_string()).collect();
    let roles: Vec<String> =
        pop.users.iter().map(|u| if u.1.starts_with("teacher") { "teacher" } else { "parent" }.to_string()).collect();
    db.execute("insert into auth.users (id, email) select * from unnest($1::uuid[], $2::text[])", &[&ids, &emails])
        .await
        .expect("users");
    db.execute(
        "insert into public.profiles (id, full_name, role) select * from unnest($1::uuid[], $2::text[], $3::text[])",
        &[&ids, &names, &roles],
    )
    .await
    .expect("profiles");
    let tids: Vec<Uuid> = pop.threads.iter().map(|t| t.0).collect();
    db.execute("insert into public.threads (id, title) select id, 'bench' from unnest($1::uuid[]) id", &[&tids])
        .await
        .expect("threads");
    let (mut pt, mut pu) = (Vec::new(), Vec::new());
    for (tid, members, _) in &pop.threads {
        for m in members {
            pt.push(*tid);
            pu.push(pop.users[*m].0);
        }
    }
    db.execute(
        "insert into public.thread_participants (thread_id, user_id) select * from unnest($1::uuid[], $2::uuid[])",
        &[&pt, &pu],
    )
    .await
    .expect("participants");
}

/// A stand-in stack on a cluster of its own, loaded with the school-shaped population of
/// `classes` classes (None, reported, when the stack cannot start).
pub async fn school_stack(classes: usize) -> Option<(Stack, Population)> {
    let stack = match Stack::start_with(StackOptions { own_cluster: true, ..Default::default() }).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stand-in stack: {e}");
            return None;
        }
    };
    let pop = population(classes);
    load_population(&stack, &pop).await;
    settle_slots(&stack).await;
    Some((stack, pop))
}

/// Waits (at most 30 s) until the replication slots' restart points are past the population's
/// rows. Until a running-transactions record after them is decoded and confirmed, every read of
/// the Realtime stand-in's slot decodes those megabytes of WAL again from the slot's restart
/// point (measured: a quarter to two thirds of a core of PostgreSQL during the first steps); a
/// checkpoint writes such a record at once instead of within bgwriter's 15 s.
async fn settle_slots(stack: &Stack) {
    let db = stack.sql().await;
    if let Err(e) = db.batch_execute("checkpoint").await {
        eprintln!("checkpoint after loading the population: {e}");
        return;
    }
    let behind = "select coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint \
                  from pg_replication_slots";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let bytes: i64 = match db.query_one(behind, &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                eprintln!("reading the slots' restart points: {e}");
                return;
            }
        };
        if bytes < 1 << 20 {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("the replication slots still restart {bytes} bytes of WAL back; the first steps pay for it");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A four-hour token per session, HS256 and ES256 alternately.
pub fn session_tokens(pop: &Population, keys: &supabase_standin::keys::Keys) -> Vec<(usize, String)> {
    pop.sessions
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let alg = if i % 2 == 0 { Alg::Hs256 } else { Alg::Es256 };
            (u, keys.user_token(pop.users[u].0, &pop.users[u].1, alg, 4 * 3600))
        })
        .collect()
}
