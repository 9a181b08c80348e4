//! The offline cursor cannot degrade silently: a gateway whose database's `chat_sync_horizon()`
//! cannot see other sessions' transactions (an owner that is neither a superuser nor a member of
//! `pg_read_all_stats`) refuses to start and says what to grant, on both backends; once granted,
//! it starts.

use crate::common::{Backend, World};
use realtime_gateway::server::{self, StartError};
use uuid::Uuid;

async fn a_blind_horizon_refuses_to_start_until_granted(backend: Backend) {
    // The normal setup (the migrations applied by a superuser) starts: World::start_on waits for it.
    let mut world = World::start_on(backend, |_| {}).await;
    world.stop_gateway().await;
    let db = world.stack.sql().await;
    let owner = format!("horizon_owner_{}", Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "create role {owner} nologin; alter function public.chat_sync_horizon() owner to {owner};"
    ))
    .await
    .expect("a non-superuser owns the horizon function");

    let refused = server::start(world.config.clone()).await;
    let Err(error) = refused else { panic!("a gateway started with a blind sync horizon") };
    assert!(matches!(error, StartError::SyncHorizon(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains(&format!("GRANT pg_read_all_stats TO {owner};")), "says what to grant: {text}");
    assert!(text.contains("chat_sync_horizon()"), "{text}");

    db.batch_execute(&format!("grant pg_read_all_stats to {owner}")).await.expect("grant");
    world.start_gateway().await;
    world.stop_gateway().await;
    db.batch_execute(&format!("alter function public.chat_sync_horizon() owner to current_user; drop role {owner}"))
        .await
        .expect("clean up the role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_sync_horizon_refuses_to_start_on_supabase() {
    a_blind_horizon_refuses_to_start_until_granted(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_sync_horizon_refuses_to_start_on_postgres() {
    a_blind_horizon_refuses_to_start_until_granted(Backend::Postgres).await;
}
