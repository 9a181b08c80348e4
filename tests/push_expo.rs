//! Expo end to end: a gateway with `PUSH_EXPO` on, pointed at the Expo push API stand-in, and an
//! Expo push token registered for Carla, who has no app open. She gets one message with the
//! documented body; a token Expo answers `DeviceNotRegistered` for is deleted.

use std::time::Duration;

use serde_json::Value;
use supabase_standin::push::expo::{ExpoRequest, ExpoService};
use supabase_standin::seed::{ALICE, ALICE_CARLA, CARLA};

use crate::common::{World, ARRIVES};
use crate::push_webpush::{register, until_deleted};

const TOKEN: &str = "ExponentPushToken[carla-phone-0001]";

fn with_expo(url: String, access_token: Option<&str>) -> impl FnOnce(&mut realtime_gateway::config::Config) {
    let access_token = access_token.map(str::to_string);
    move |c| {
        c.push.expo = Some(realtime_gateway::config::ExpoTarget { url, access_token });
        c.push.delay = Duration::from_millis(300);
    }
}

/// Waits until the stand-in has answered `count` requests.
async fn until_received(service: &ExpoService, count: usize) -> Vec<ExpoRequest> {
    let deadline = tokio::time::Instant::now() + ARRIVES * 3;
    loop {
        let received = service.received();
        if received.len() >= count {
            return received;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} requests, wanted {count}", received.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_expo_device_gets_one_message_with_the_documented_body() {
    let service = ExpoService::start().await.expect("the Expo stand-in starts");
    let world = World::start_with(with_expo(service.url(), Some("expo-access-token"))).await;
    let device = register(&world, &CARLA, "expo", Some(TOKEN), None).await;
    let message = world.post(&ALICE, ALICE_CARLA, "Pick-up moved to 2 pm").await;
    let received = until_received(&service, 1).await;
    let db = world.stack.sql().await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let state: String = db
            .query_one("select state from public.chat_push_deliveries where message_id = $1", &[&message])
            .await
            .expect("the delivery")
            .get(0);
        if state == "sent" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the delivery stays {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(service.received().len(), 1, "one request");
    let request = &received[0];
    assert_eq!(request.status, 200, "the stand-in accepted the body's shape");
    assert_eq!(request.authorization.as_deref(), Some("Bearer expo-access-token"));
    assert_eq!(request.messages.len(), 1);
    let m = &request.messages[0];
    assert_eq!(m["to"], TOKEN);
    assert_eq!(m["title"], "Alice Martin");
    assert_eq!(m["body"], "Pick-up moved to 2 pm");
    assert_eq!(m["sound"], "default");
    assert!(m["badge"].as_u64().is_some_and(|n| n >= 1), "{m}");
    assert_eq!(m["data"]["thread_id"], ALICE_CARLA.to_string());
    assert_eq!(m["data"]["message_id"], message.to_string());
    assert!(m["data"]["delivery_id"].as_str().is_some_and(|id| !id.is_empty()), "{m}");
    let kept: i64 =
        db.query_one("select count(*) from public.push_devices where id = $1", &[&device]).await.expect("n").get(0);
    assert_eq!(kept, 1, "a delivered device stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expo_reports_not_registered_is_deleted() {
    let service = ExpoService::start().await.expect("the Expo stand-in starts");
    service.unregister(TOKEN);
    let world = World::start_with(with_expo(service.url(), None)).await;
    let device = register(&world, &CARLA, "expo", Some(TOKEN), None).await;
    world.post(&ALICE, ALICE_CARLA, "Did you get the form?").await;
    until_deleted(&world, device).await;
    let received = service.received();
    assert_eq!(received.len(), 1, "one try, not retried");
    assert_eq!(received[0].authorization, None, "no access token configured, none sent");
    assert_eq!(received[0].messages.first().map(|m| m["to"].clone()), Some(Value::from(TOKEN)));
    let gone = r#"gateway_push_attempts_total{channel="expo",outcome="gone"}"#;
    assert_eq!(world.metric(gone).await, 1);
}
