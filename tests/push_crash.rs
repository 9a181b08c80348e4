//! An instance killed mid-send loses no push: instance A leases a message's deliveries and is
//! killed while the webhook receiver still holds every call open (no clean stop: its tasks are
//! dropped with its runtime, no outcome recorded, no presence cleared). Once A's lease runs out,
//! instance B sends each delivery again under the same `webhook-id`, validly signed; every
//! delivery ends `sent` once, and no (message, user) is lost or sent under two ids.
//!
//! The lease is `PUSH_LEASE_SECS` (60 s by default), shortened here to 6 s through the same
//! setting an operator would use, so the test runs the real expiry rather than editing the
//! queue's rows by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use realtime_gateway::config::Config;
use realtime_gateway::server::{self, Gateway};
use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS};
use uuid::Uuid;
use warp::Filter;

use crate::common::{Backend, World, ARRIVES};
use crate::push::{verified_by_python, with_webhook, Call};

/// The lease of the test's instances: longer than one send may take (`BACKEND_TIMEOUT_SECS`, 5 s).
const LEASE: Duration = Duration::from_secs(6);

/// A webhook receiver that, while holding, records each call and never answers it; afterwards it
/// answers 200.
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    holding: Arc<AtomicBool>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver { holding: Arc::new(AtomicBool::new(true)), ..Receiver::default() };
        let state = receiver.clone();
        let route = warp::post()
            .and(warp::path("hook"))
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: warp::http::HeaderMap, body: hyper::body::Bytes| {
                let state = state.clone();
                async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let hold = state.holding.load(Ordering::SeqCst);
                    state.calls.lock().expect("calls").push(Call {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                        status: if hold { 0 } else { 200 },
                    });
                    if hold {
                        std::future::pending::<()>().await;
                    }
                    warp::reply::with_status("", warp::http::StatusCode::OK)
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("the receiver binds");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (receiver, format!("http://{addr}/hook"))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The calls with `status` about `message`, by user; waits until there are `n`.
    async fn until(&self, message: Uuid, status: u16, n: usize) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + ARRIVES * 3;
        loop {
            let calls: Vec<Call> = self
                .calls()
                .into_iter()
                .filter(|c| c.status == status && c.json()["message_id"] == message.to_string())
                .collect();
            if calls.len() >= n {
                return calls;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} calls with {status}: {calls:?}", calls.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A gateway in a runtime of its own, so that it can be killed: its tasks are dropped where they
/// stand, as in a process killed by the kernel (in-flight sends cut, nothing recorded or cleared).
struct Doomed {
    runtime: tokio::runtime::Runtime,
    gateway: Gateway,
}

impl Doomed {
    async fn start(config: Config) -> Doomed {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the doomed instance");
        let gateway = runtime.spawn(server::start(config)).await.expect("joined").expect("instance A starts");
        Doomed { runtime, gateway }
    }

    fn kill(self) {
        self.runtime.shutdown_background();
        drop(self.gateway);
    }
}

/// Who is left to push to about `message`: the thread's participants but the sender.
async fn recipients(world: &World, thread: Uuid) -> BTreeSet<String> {
    let db = world.stack.sql().await;
    let rows = db
        .query(
            "select user_id from public.thread_participants where thread_id = $1 and user_id <> $2",
            &[&thread, &ALICE.id],
        )
        .await
        .expect("participants");
    rows.iter().map(|r| r.get::<_, Uuid>(0).to_string()).collect()
}

/// webhook-id by user; panics if a user appears twice.
fn ids_by_user(calls: &[Call]) -> BTreeMap<String, String> {
    let mut by_user = BTreeMap::new();
    for call in calls {
        let user = call.json()["user_id"].as_str().unwrap_or_default().to_string();
        let before = by_user.insert(user.clone(), call.id.clone());
        assert!(before.is_none(), "{user} got two calls: {calls:?}");
    }
    by_user
}

async fn killing_an_instance_mid_send_loses_nothing(backend: Backend) {
    let (receiver, url) = Receiver::start().await;
    let settings = |url: String| {
        move |c: &mut Config| {
            with_webhook(url)(c);
            c.push.lease = LEASE;
            c.shutdown.drain = Duration::ZERO;
        }
    };
    let mut world = World::start_on(backend, settings(url.clone())).await;
    // The world's own instance leaves cleanly before anything is posted: A sends alone.
    world.stop_gateway().await;
    let mut config = world.config.clone();
    settings(url)(&mut config);
    let a = Doomed::start(config).await;

    let message = world.post(&ALICE, CLASS_3B_PARENTS, "Pick-up moved to 2 pm").await;
    let everyone = recipients(&world, CLASS_3B_PARENTS).await;
    assert!(everyone.len() >= 2, "a class with parents: {everyone:?}");
    let held = receiver.until(message, 0, everyone.len()).await;
    let first_ids = ids_by_user(&held);
    assert_eq!(first_ids.keys().cloned().collect::<BTreeSet<_>>(), everyone, "A sent to every parent");
    a.kill();

    let db = world.stack.sql().await;
    let pending: i64 = db
        .query_one(
            "select count(*) from public.chat_push_deliveries where message_id = $1 and state = 'pending'",
            &[&message],
        )
        .await
        .expect("deliveries")
        .get(0);
    assert_eq!(pending, everyone.len() as i64, "nothing recorded by the killed instance");

    // Instance B: same settings; it can lease A's deliveries only once A's lease has run out.
    receiver.holding.store(false, Ordering::SeqCst);
    world.start_gateway().await;
    let resent = receiver.until(message, 200, everyone.len()).await;
    assert_eq!(ids_by_user(&resent), first_ids, "each resend carries the first attempt's webhook-id");
    for again in &resent {
        let before = held.iter().find(|c| c.id == again.id).expect("a cut call with this id");
        assert_eq!(again.body, before.body, "the same notification");
    }

    // A later message's push arrives after every send about the first is done.
    let later = world.post(&ALICE, ALICE_CARLA, "See you at 2").await;
    receiver.until(later, 200, 1).await;
    let about_first: Vec<Call> =
        receiver.calls().into_iter().filter(|c| c.json()["message_id"] == message.to_string()).collect();
    assert_eq!(about_first.len(), 2 * everyone.len(), "one cut call and one resend per parent: {about_first:?}");
    verified_by_python(&receiver.calls());

    let rows = db
        .query(
            "select user_id, id, state, attempts from public.chat_push_deliveries where message_id = $1 order by user_id",
            &[&message],
        )
        .await
        .expect("deliveries");
    let recorded: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            assert_eq!(
                (r.get::<_, String>(2), r.get::<_, i32>(3)),
                ("sent".to_string(), 2),
                "sent once, on the 2nd attempt"
            );
            (r.get::<_, Uuid>(0).to_string(), format!("msg_{}", r.get::<_, Uuid>(1).simple()))
        })
        .collect();
    assert_eq!(rows.len(), everyone.len(), "one delivery per parent");
    assert_eq!(recorded, first_ids, "the webhook-id is the delivery's id (msg_ and its hex)");
    assert!(recorded.contains_key(&CARLA.id.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_mid_send_loses_nothing_and_resends_under_the_same_id_on_supabase() {
    killing_an_instance_mid_send_loses_nothing(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_mid_send_loses_nothing_and_resends_under_the_same_id_on_postgres() {
    killing_an_instance_mid_send_loses_nothing(Backend::Postgres).await;
}
