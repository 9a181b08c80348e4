//! Push to phones through FCM HTTP v1 and APNs, end to end: two gateway instances on one stand-in
//! stack, the FCM and APNs stand-ins (`supabase_standin::push`) verifying every signed token the
//! gateway presents (the service-account assertion, the access token, the ES256 provider token)
//! with keys generated for the test. An offline parent with an Android and an iPhone gets one
//! notification on each per message; a provider failing first gets the same idempotency key
//! again (`apns-id`, FCM `data.delivery_id`); a token the provider calls gone is deleted.

use std::time::Duration;

use supabase_standin::push::apns::{self, ApnsStandin};
use supabase_standin::push::fcm::{self, FcmStandin};
use supabase_standin::seed::{Person, ALICE, ALICE_CARLA, CARLA, CLASS_3B_PARENTS, DAVID};
use uuid::Uuid;

use crate::common::{Backend, Phone, World, ARRIVES};

const CARLA_ANDROID: &str = "fcm-token-carla-android-1";
const CARLA_IPHONE: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";
const DAVID_ANDROID: &str = "fcm-token-david-android-1";
const DAVID_IPHONE: &str = "d0d1d2d3d4d5d6d7d8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

/// Both providers' stand-ins and the key files the gateway reads.
struct Providers {
    fcm: FcmStandin,
    apns: ApnsStandin,
    fcm_key: std::path::PathBuf,
    apns_key: std::path::PathBuf,
}

impl Providers {
    async fn start() -> Providers {
        let fcm = FcmStandin::start().await;
        let apns = ApnsStandin::start().await;
        let dir = std::env::temp_dir();
        let fcm_key = dir.join(format!("standin-fcm-{}.json", Uuid::new_v4().simple()));
        let apns_key = dir.join(format!("standin-apns-{}.p8", Uuid::new_v4().simple()));
        std::fs::write(&fcm_key, &fcm.key_file).expect("the service-account file is written");
        std::fs::write(&apns_key, &apns.key_pem).expect("the .p8 file is written");
        Providers { fcm, apns, fcm_key, apns_key }
    }

    fn configure(&self) -> impl FnOnce(&mut realtime_gateway::config::Config) {
        let fcm = realtime_gateway::config::FcmTarget {
            service_account_file: self.fcm_key.clone(),
            api_url: self.fcm.url.clone(),
            // The key file's token_uri names the stand-in's token endpoint.
            token_url: None,
        };
        let apns = realtime_gateway::config::ApnsTarget {
            key_file: self.apns_key.clone(),
            key_id: apns::KEY_ID.into(),
            team_id: apns::TEAM_ID.into(),
            topic: apns::TOPIC.into(),
            url: self.apns.url.clone(),
        };
        move |c| {
            c.push.fcm = Some(fcm);
            c.push.apns = Some(apns);
            c.push.delay = Duration::from_millis(300);
        }
    }

    /// FCM sends about `message` to `device`.
    fn fcm_sends(&self, device: &str, message: Uuid) -> Vec<fcm::Sent> {
        let id = message.to_string();
        self.fcm.sent().into_iter().filter(|s| s.device == device && s.message["data"]["message_id"] == id).collect()
    }

    /// APNs requests about `message` to `device`.
    fn apns_pushes(&self, device: &str, message: Uuid) -> Vec<apns::Push> {
        let id = message.to_string();
        self.apns.pushes().into_iter().filter(|p| p.device == device && p.payload["message_id"] == id).collect()
    }

    /// Waits until both of Carla's phones were answered 200 about `message`.
    async fn until_both_phones_got(&self, message: Uuid) {
        let deadline = tokio::time::Instant::now() + ARRIVES * 3;
        loop {
            let android = self.fcm_sends(CARLA_ANDROID, message).iter().any(|s| s.status == 200);
            let iphone = self.apns_pushes(CARLA_IPHONE, message).iter().any(|p| p.status == 200);
            if android && iphone {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no push about {message} (android {android}, iphone {iphone}); refused: {:?} {:?}",
                self.fcm.refused(),
                self.apns.refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every token the gateway presented verified: nothing refused.
    fn nothing_refused(&self) {
        assert_eq!(self.fcm.refused(), Vec::<String>::new(), "FCM stand-in refusals");
        assert_eq!(self.apns.refused(), Vec::<String>::new(), "APNs stand-in refusals");
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fcm_key);
        let _ = std::fs::remove_file(&self.apns_key);
    }
}

async fn register(world: &World, who: &Person, platform: &str, token: &str) -> Uuid {
    let db = crate::push_queue::user(world, who).await;
    db.query_one("select public.chat_register_push_device($1, $2)", &[&platform, &token])
        .await
        .expect("the device is registered")
        .get(0)
}

/// The delivery of `message` to `user` on `channel`: its id and state.
async fn delivery(world: &World, message: Uuid, user: Uuid, channel: &str) -> (Uuid, String, i32) {
    crate::push::finished_delivery(world, message, user, channel).await
}

async fn one_push_per_phone_per_message(backend: Backend) {
    let providers = Providers::start().await;
    let world = World::start_on(backend, providers.configure()).await;
    let second = world.another_gateway(providers.configure()).await;
    register(&world, &CARLA, "fcm", CARLA_ANDROID).await;
    register(&world, &CARLA, "apns", CARLA_IPHONE).await;
    register(&world, &DAVID, "fcm", DAVID_ANDROID).await;
    register(&world, &DAVID, "apns", DAVID_IPHONE).await;
    // David has the app open on the second instance; Carla is away.
    let _david = Phone::connect(&format!("ws://{}/?token={}", second.local_addr(), world.token(&DAVID)))
        .await
        .expect("David connects");
    crate::push::reported_online(&world, &DAVID).await;

    let message = world.post(&ALICE, CLASS_3B_PARENTS, "Pick-up moved to 2 pm").await;
    providers.until_both_phones_got(message).await;
    // A later message decided after the first: once its pushes arrived, every push about the
    // first was sent.
    let later = world.post(&ALICE, ALICE_CARLA, "See you at 2").await;
    providers.until_both_phones_got(later).await;

    let android = providers.fcm_sends(CARLA_ANDROID, message);
    assert_eq!(android.len(), 1, "one FCM send to Carla's Android: {android:?}");
    let m = &android[0].message;
    assert_eq!(m["notification"]["title"], "Alice Martin");
    assert_eq!(m["notification"]["body"], "Pick-up moved to 2 pm");
    assert_eq!(m["data"]["thread_id"], CLASS_3B_PARENTS.to_string());
    assert_eq!(m["android"]["collapse_key"], CLASS_3B_PARENTS.to_string());
    assert!(m["apns"]["payload"]["aps"]["badge"].as_u64().is_some_and(|n| n >= 1), "{m}");
    let (fcm_delivery, state, _) = delivery(&world, message, CARLA.id, "fcm").await;
    assert_eq!((m["data"]["delivery_id"].as_str(), state.as_str()), (Some(fcm_delivery.to_string().as_str()), "sent"));

    let iphone = providers.apns_pushes(CARLA_IPHONE, message);
    assert_eq!(iphone.len(), 1, "one APNs request to Carla's iPhone: {iphone:?}");
    let p = &iphone[0];
    let (apns_delivery, state, _) = delivery(&world, message, CARLA.id, "apns").await;
    assert_eq!((p.apns_id.as_str(), state.as_str()), (apns_delivery.to_string().as_str(), "sent"));
    assert_eq!(p.collapse_id, CLASS_3B_PARENTS.to_string());
    assert_eq!(p.priority, "10");
    assert_eq!(p.payload["aps"]["alert"]["title"], "Alice Martin");
    assert_eq!(p.payload["aps"]["alert"]["body"], "Pick-up moved to 2 pm");
    assert_eq!(p.payload["aps"]["thread-id"], CLASS_3B_PARENTS.to_string());
    assert!(p.payload["aps"]["badge"].as_u64().is_some_and(|n| n >= 1), "{}", p.payload);

    assert!(providers.fcm_sends(DAVID_ANDROID, message).is_empty(), "David is online on the other instance");
    assert!(providers.apns_pushes(DAVID_IPHONE, message).is_empty(), "David is online on the other instance");
    providers.nothing_refused();
    // The access token and the provider token are reused, not made per push (one per instance).
    assert!(providers.fcm.grants() <= 2, "{} FCM grants", providers.fcm.grants());
    let provider_tokens: std::collections::HashSet<String> =
        providers.apns.pushes().into_iter().map(|p| p.provider_token).collect();
    assert!(provider_tokens.len() <= 2, "{} APNs provider tokens", provider_tokens.len());
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_parent_gets_one_push_on_each_phone_per_message_on_supabase() {
    one_push_per_phone_per_message(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_parent_gets_one_push_on_each_phone_per_message_on_postgres() {
    one_push_per_phone_per_message(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_first_gets_the_same_apns_id_and_fcm_delivery_id_again() {
    let providers = Providers::start().await;
    providers.fcm.fail(CARLA_ANDROID, &[fcm::Fault::Unavailable]);
    providers.apns.fail(CARLA_IPHONE, &[apns::Fault::Unavailable]);
    let world = World::start_with(providers.configure()).await;
    register(&world, &CARLA, "fcm", CARLA_ANDROID).await;
    register(&world, &CARLA, "apns", CARLA_IPHONE).await;
    let message = world.post(&ALICE, ALICE_CARLA, "Did you get the form?").await;
    providers.until_both_phones_got(message).await;

    let android = providers.fcm_sends(CARLA_ANDROID, message);
    let statuses: Vec<u16> = android.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 200], "{android:?}");
    assert_eq!(android[0].message["data"]["delivery_id"], android[1].message["data"]["delivery_id"]);
    let iphone = providers.apns_pushes(CARLA_IPHONE, message);
    let statuses: Vec<u16> = iphone.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [503, 200], "{iphone:?}");
    assert_eq!(iphone[0].apns_id, iphone[1].apns_id, "the retry carries the same apns-id");
    for channel in ["fcm", "apns"] {
        let (_, state, attempts) = delivery(&world, message, CARLA.id, channel).await;
        assert_eq!((state.as_str(), attempts), ("sent", 2), "{channel}");
    }
    providers.nothing_refused();
}

async fn gone_tokens_are_deleted(backend: Backend) {
    let providers = Providers::start().await;
    providers.fcm.fail(CARLA_ANDROID, &[fcm::Fault::Unregistered]);
    providers.apns.fail(CARLA_IPHONE, &[apns::Fault::Unregistered]);
    let world = World::start_on(backend, providers.configure()).await;
    register(&world, &CARLA, "fcm", CARLA_ANDROID).await;
    register(&world, &CARLA, "apns", CARLA_IPHONE).await;
    let message = world.post(&ALICE, ALICE_CARLA, "Is anyone there?").await;
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    loop {
        let left: i64 = db
            .query_one("select count(*) from public.push_devices where user_id = $1", &[&CARLA.id])
            .await
            .expect("devices")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} of Carla's devices left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(providers.fcm_sends(CARLA_ANDROID, message).len(), 1, "asked once, never again");
    assert_eq!(providers.apns_pushes(CARLA_IPHONE, message).len(), 1, "asked once, never again");
    let gone = |channel: &str| format!(r#"gateway_push_attempts_total{{channel="{channel}",outcome="gone"}}"#);
    assert_eq!(world.metric(&gone("fcm")).await, 1);
    assert_eq!(world.metric(&gone("apns")).await, 1);
    providers.nothing_refused();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_fcm_and_apns_tokens_are_deleted_on_supabase() {
    gone_tokens_are_deleted(Backend::Supabase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_fcm_and_apns_tokens_are_deleted_on_postgres() {
    gone_tokens_are_deleted(Backend::Postgres).await;
}
