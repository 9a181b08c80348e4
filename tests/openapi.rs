//! The machine-readable contract against the running gateway. `docs/openapi.json`: every REST
//! answer, for good and bad input, has a status the document lists for that operation and a body
//! its schema accepts, and every route the server answers is in the document.
//! `docs/ws-frames.schema.json`: every WebSocket frame and close the server sends validates.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonschema::Validator;
use reqwest::Method;
use serde_json::{json, Value};
use supabase_standin::seed::{ALICE, CARLA, CLASS_3B_PARENTS, CLASS_4A_PARENTS, DAVID};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use crate::common::{Phone, World, ARRIVES};

const OPENAPI: &str = include_str!("../docs/openapi.json");
const FRAMES: &str = include_str!("../docs/ws-frames.schema.json");

/// A compiled schema for every `definitions`/`components.schemas` entry of a document, each
/// resolved against the whole document (so internal `$ref`s work).
fn compile(doc: &Value, pointer: &str) -> HashMap<String, Validator> {
    let names: Vec<String> =
        doc.pointer(pointer).and_then(Value::as_object).expect("schemas").keys().cloned().collect();
    names
        .into_iter()
        .map(|name| {
            let mut root = doc.clone();
            if let Some(object) = root.as_object_mut() {
                object.remove("oneOf");
                object.insert("$ref".into(), json!(format!("#{pointer}/{name}")));
            }
            let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {name} compiles: {e}"));
            (name, validator)
        })
        .collect()
}

fn check(validators: &HashMap<String, Validator>, name: &str, instance: &Value) -> Result<(), String> {
    let validator = validators.get(name).ok_or_else(|| format!("no schema named {name}"))?;
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{instance} does not match {name}: {}", errors.join("; ")))
    }
}

/// The OpenAPI document and its compiled component schemas.
struct Api {
    doc: Value,
    schemas: HashMap<String, Validator>,
}

/// One HTTP answer as the test saw it.
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

impl Api {
    fn load() -> Api {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let schemas = compile(&doc, "/components/schemas");
        Api { doc, schemas }
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref #{pointer}")),
            None => value,
        }
    }

    /// The documented path template a concrete path falls under (`{param}` is one segment).
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts.iter().zip(&segments).all(|(t, s)| {
                        if t.starts_with('{') && t.ends_with('}') {
                            !s.is_empty()
                        } else {
                            t == s
                        }
                    })
            })
            .cloned()
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for (key, _) in item.as_object().into_iter().flatten() {
                if ["get", "put", "post", "delete", "options", "head", "patch", "trace"].contains(&key.as_str()) {
                    out.insert((key.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// Checks one answer against the document: the operation exists, the status is listed for
    /// it, and the body matches the listed media type's schema. Returns the operation.
    fn conforms(&self, method: &Method, path: &str, answer: &Answer) -> Result<(String, String), String> {
        let template = self.template(path).ok_or_else(|| format!("{method} {path}: path not documented"))?;
        let item = &self.doc["paths"][&template];
        // `x-any-method`: the path answers every method as it answers GET.
        let documented_as =
            if item["x-any-method"] == true { "get".to_string() } else { method.as_str().to_lowercase() };
        let operation = item
            .get(&documented_as)
            .ok_or_else(|| format!("{method} {path}: no {method} operation documented for {template}"))?;
        let status = answer.status.to_string();
        let response = operation["responses"]
            .get(&status)
            .map(|r| self.resolve(r))
            .ok_or_else(|| format!("{method} {path}: status {status} not documented ({})", answer.text))?;
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return Ok((documented_as.to_uppercase(), template));
        };
        let media = answer.content_type.split(';').next().unwrap_or_default().trim();
        let schema = content
            .get(media)
            .map(|c| &c["schema"])
            .ok_or_else(|| format!("{method} {path}: content type {media:?} not documented for {status}"))?;
        let name = schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .ok_or_else(|| format!("{method} {path} {status}: response schemas must be component $refs"))?;
        let instance = if media == "application/json" {
            serde_json::from_str(&answer.text).map_err(|e| format!("{method} {path}: body is not JSON ({e})"))?
        } else {
            Value::String(answer.text.clone())
        };
        check(&self.schemas, name, &instance).map_err(|e| format!("{method} {path} {status}: {e}"))?;
        Ok((documented_as.to_uppercase(), template))
    }

    /// An error answer (404/405/...) has the documented error shape.
    fn is_error_shape(&self, answer: &Answer) -> Result<(), String> {
        check(&self.schemas, "Error", &answer.json()).map_err(|e| format!("{} {}", answer.status, e))
    }
}

async fn call(world: &World, method: Method, path: &str, token: Option<&str>) -> Answer {
    call_with(world, method, path, token, None).await
}

/// A call with a JSON body (`Some`), as a client sends one.
async fn call_with(world: &World, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
    let mut request = world.http.request(method, format!("{}{}", world.base(), path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("gateway answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    Answer { status, content_type, text }
}

/// A WebSocket upgrade the gateway refuses: its HTTP status and body.
async fn refused_upgrade(url: &str) -> Answer {
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => Answer {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            text: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        },
        Err(e) => panic!("expected an HTTP refusal of {url}, got {e}"),
        Ok(_) => panic!("expected {url} to be refused, it was upgraded"),
    }
}

/// One call of the documented-operations test: method, path, token, wanted status, JSON body.
type Case<'a> = (Method, String, Option<&'a str>, u16, Option<Value>);

/// Enables the operator page in these tests, so that its routes are checked like the others.
const ADMIN_TOKEN: &str = "admin-token-for-the-openapi-tests";

/// The operator page and Web Push on, so that their routes answer.
fn with_admin_and_web_push(c: &mut realtime_gateway::config::Config) {
    c.ops.admin_token = Some(ADMIN_TOKEN.into());
    crate::push_webpush::with_vapid(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented_for_good_and_bad_input() {
    // Every operation is called as Carla in quick succession; the per-user REST rate limit has
    // its own test (`rate_limit_and_database_timeout_answers_are_documented`), so here it must
    // not answer 429 in place of the documented status as the operations grow in number.
    let world = World::start_with(|c| {
        with_admin_and_web_push(c);
        c.fairness.rest_rate_per_sec = 1000;
    })
    .await;
    let api = Api::load();
    let carla = world.token(&CARLA);
    let good = Some(carla.as_str());
    let offline = "/api/chat/offline-messages";
    let mark = |thread: &str| format!("/api/chat/mark-read/{thread}");
    let devices = "/api/chat/devices";
    let history = |thread: &str, query: &str| format!("/api/chat/threads/{thread}/messages{query}");
    let mute = |thread: &str| format!("/api/chat/threads/{thread}/mute");
    let seen = |thread: &str, query: &str| format!("/api/chat/threads/{thread}/read-state{query}");
    let webpush = json!({"platform": "webpush", "subscription": {
        "endpoint": "https://push.example/send/openapi",
        "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"}}});
    let cases: Vec<Case> = vec![
        (Method::POST, "/api/chat/unsubscribe".into(), good, 200, None),
        (Method::POST, "/api/chat/unsubscribe".into(), None, 401, None),
        (Method::POST, "/api/chat/subscribe".into(), good, 200, None),
        (Method::POST, "/api/chat/subscribe".into(), None, 401, None),
        (Method::POST, "/api/chat/subscribe".into(), Some("not.a.token"), 401, None),
        (Method::GET, format!("{offline}?last_check_time=2020-01-01T00:00:00Z"), good, 200, None),
        (Method::GET, format!("{offline}?last_check_time=2020-01-01T00:00:00%2B02:00"), good, 200, None),
        (Method::GET, offline.into(), good, 400, None),
        (Method::GET, format!("{offline}?last_check_time="), good, 400, None),
        (Method::GET, format!("{offline}?last_check_time=yesterday"), good, 400, None),
        (Method::GET, format!("{offline}?last_check_time=2020-01-01T00:00:00Z"), None, 401, None),
        (Method::GET, "/api/chat/unread-count".into(), good, 200, None),
        (Method::GET, "/api/chat/unread-count".into(), None, 401, None),
        (Method::POST, mark(&CLASS_3B_PARENTS.to_string()), good, 200, None),
        (Method::POST, mark("not-a-uuid"), good, 400, None),
        (Method::POST, mark(&CLASS_4A_PARENTS.to_string()), good, 403, None),
        (Method::POST, mark(&CLASS_3B_PARENTS.to_string()), None, 401, None),
        (Method::GET, "/api/chat/push/vapid-public-key".into(), good, 200, None),
        (Method::GET, "/api/chat/push/vapid-public-key".into(), None, 401, None),
        (Method::GET, "/healthz".into(), None, 200, None),
        (Method::GET, "/readyz".into(), None, 200, None),
        (Method::GET, "/metrics".into(), None, 200, None),
        (Method::GET, "/api/openapi.json".into(), None, 200, None),
        (Method::GET, "/admin".into(), None, 200, None),
        (Method::GET, "/admin/api/overview".into(), Some(ADMIN_TOKEN), 200, None),
        (Method::GET, "/admin/api/overview".into(), good, 401, None),
        (Method::POST, format!("/admin/api/users/{}/disconnect", CARLA.id), Some(ADMIN_TOKEN), 200, None),
        (Method::POST, "/admin/api/users/not-a-uuid/disconnect".into(), Some(ADMIN_TOKEN), 400, None),
        (Method::POST, format!("/admin/api/users/{}/disconnect", CARLA.id), None, 401, None),
        (Method::GET, "/api/chat/unread-count?by_thread=true".into(), good, 200, None),
        (Method::GET, "/api/chat/unread-count?by_thread=maybe".into(), good, 400, None),
        (Method::GET, history(&CLASS_3B_PARENTS.to_string(), "?limit=2"), good, 200, None),
        (Method::GET, history(&CLASS_3B_PARENTS.to_string(), ""), good, 200, None),
        (Method::GET, history(&CLASS_3B_PARENTS.to_string(), "?limit=101"), good, 400, None),
        (Method::GET, history(&CLASS_3B_PARENTS.to_string(), "?before=nonsense"), good, 400, None),
        (Method::GET, history("not-a-uuid", ""), good, 400, None),
        (Method::GET, history(&CLASS_4A_PARENTS.to_string(), ""), good, 403, None),
        (Method::GET, history(&CLASS_3B_PARENTS.to_string(), ""), None, 401, None),
        (Method::GET, seen(&CLASS_3B_PARENTS.to_string(), ""), good, 200, None),
        (Method::GET, seen(&CLASS_3B_PARENTS.to_string(), "?messages=5"), good, 200, None),
        (Method::GET, seen(&CLASS_3B_PARENTS.to_string(), "?messages=0"), good, 400, None),
        (Method::GET, seen("not-a-uuid", ""), good, 400, None),
        (Method::GET, seen(&CLASS_4A_PARENTS.to_string(), ""), good, 403, None),
        (Method::GET, seen(&CLASS_3B_PARENTS.to_string(), ""), None, 401, None),
        (Method::POST, seen(&CLASS_3B_PARENTS.to_string(), ""), good, 200, Some(json!({"share": false}))),
        (Method::POST, seen(&CLASS_3B_PARENTS.to_string(), ""), good, 200, Some(json!({"share": true}))),
        (Method::POST, seen(&CLASS_3B_PARENTS.to_string(), ""), good, 400, Some(json!({"share": "no"}))),
        (Method::POST, seen("not-a-uuid", ""), good, 400, Some(json!({"share": true}))),
        (Method::POST, seen(&CLASS_4A_PARENTS.to_string(), ""), good, 403, Some(json!({"share": true}))),
        (Method::POST, seen(&CLASS_3B_PARENTS.to_string(), ""), good, 413, Some(json!({"share": "x".repeat(9000)}))),
        (Method::POST, seen(&CLASS_3B_PARENTS.to_string(), ""), None, 401, Some(json!({"share": true}))),
        (Method::POST, devices.into(), good, 201, Some(json!({"platform": "fcm", "token": "openapi-fcm-token"}))),
        (Method::POST, devices.into(), good, 201, Some(webpush.clone())),
        (Method::POST, devices.into(), good, 400, Some(json!({"platform": "sms", "token": "x"}))),
        (Method::POST, devices.into(), good, 400, Some(json!({"platform": "webpush", "token": "x"}))),
        (Method::POST, devices.into(), good, 413, Some(json!({"platform": "fcm", "token": "x".repeat(9000)}))),
        (Method::POST, devices.into(), None, 401, Some(json!({"platform": "fcm", "token": "x"}))),
        (Method::GET, devices.into(), good, 200, None),
        (Method::GET, devices.into(), None, 401, None),
        (Method::DELETE, format!("{devices}/{}", Uuid::new_v4()), good, 404, None),
        (Method::DELETE, format!("{devices}/not-a-uuid"), good, 400, None),
        (Method::DELETE, format!("{devices}/{}", Uuid::new_v4()), None, 401, None),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), good, 200, Some(json!({"until": "2030-01-01T00:00:00Z"}))),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), good, 200, Some(json!({"until": null}))),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), good, 400, Some(json!({}))),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), good, 400, Some(json!({"until": "soon"}))),
        (Method::POST, mute("not-a-uuid"), good, 400, Some(json!({"until": null}))),
        (Method::POST, mute(&CLASS_4A_PARENTS.to_string()), good, 403, Some(json!({"until": null}))),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), good, 413, Some(json!({"until": "x".repeat(9000)}))),
        (Method::POST, mute(&CLASS_3B_PARENTS.to_string()), None, 401, Some(json!({"until": null}))),
    ];
    let mut exercised: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures = Vec::new();
    for (method, path, token, want, body) in &cases {
        let answer = call_with(&world, method.clone(), path, *token, body.as_ref()).await;
        if answer.status != *want {
            failures.push(format!("{method} {path}: status {} (wanted {want}): {}", answer.status, answer.text));
            continue;
        }
        match api.conforms(method, path, &answer) {
            Ok(operation) => {
                exercised.insert(operation);
            }
            Err(e) => failures.push(e),
        }
        let body = answer.json();
        // Mirror fields, when present, repeat `data`.
        if let Some(data) = body.get("data").and_then(Value::as_object) {
            for (key, value) in data {
                if let Some(top) = body.get(key) {
                    if top != value {
                        failures.push(format!("{method} {path}: top-level {key} differs from data.{key}"));
                    }
                }
            }
        }
    }

    // The WebSocket route's documented refusals.
    let no_token = refused_upgrade(&world.ws_base()).await;
    let bad_token = refused_upgrade(&format!("{}?token=not.a.token", world.ws_base())).await;
    for answer in [no_token, bad_token] {
        assert_eq!(answer.status, 401, "{}", answer.text);
        match api.conforms(&Method::GET, "/", &answer) {
            Ok(operation) => {
                exercised.insert(operation);
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "answers that differ from docs/openapi.json:\n{}", failures.join("\n"));
    assert_eq!(exercised, api.operations(), "every documented operation was called");

    // The served document is the repository's.
    let served = call(&world, Method::GET, "/api/openapi.json", None).await;
    assert_eq!(served.json(), api.doc);
    // Metrics are Prometheus text with the gateway's names.
    let metrics = call(&world, Method::GET, "/metrics", None).await;
    assert!(metrics.content_type.starts_with("text/plain"), "{}", metrics.content_type);
    for line in metrics.text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        assert!(name.starts_with("gateway_"), "{line}");
        assert!(value.trim().parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_server_answers_is_documented() {
    let world = World::start_with(with_admin_and_web_push).await;
    let api = Api::load();
    let words = [
        "api",
        "chat",
        "subscribe",
        "unsubscribe",
        "offline-messages",
        "unread-count",
        "mark-read",
        "push",
        "vapid-public-key",
        "healthz",
        "readyz",
        "metrics",
        "openapi.json",
        "devices",
        "b0000000-0000-4000-8000-000000000001",
    ];
    let mut paths = vec!["/".to_string()];
    for a in words {
        paths.push(format!("/{a}"));
        for b in words {
            paths.push(format!("/{a}/{b}"));
            if a == "api" {
                for c in words {
                    paths.push(format!("/{a}/{b}/{c}"));
                    if b == "chat" {
                        for d in words {
                            paths.push(format!("/{a}/{b}/{c}/{d}"));
                        }
                    }
                }
            }
        }
    }
    // The operator page's routes (enabled here by ADMIN_TOKEN), and their neighbours.
    for admin in ["admin", "admin/api", "admin/api/overview", "admin/overview", "admin/api/users", "admin/api/users/x"]
    {
        paths.push(format!("/{admin}"));
    }
    paths.push("/admin/api/users/b0000000-0000-4000-8000-000000000001/disconnect".into());
    paths.push("/admin/api/users/disconnect".into());
    // Routes deeper than the probe's four words.
    for thread in ["b0000000-0000-4000-8000-000000000001", "x"] {
        paths.push(format!("/api/chat/threads/{thread}/mute"));
        paths.push(format!("/api/chat/threads/{thread}/mute/x"));
        paths.push(format!("/api/chat/threads/{thread}/messages"));
        paths.push(format!("/api/chat/threads/{thread}/read-state"));
    }
    let methods = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    let mut answered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures = Vec::new();
    for path in &paths {
        for method in &methods {
            // No token: a protected route says 401, which still shows that it exists.
            let answer = call(&world, method.clone(), path, None).await;
            let verdict = match answer.status {
                404 => api.is_error_shape(&answer),
                405 => api.is_error_shape(&answer).and_then(|()| {
                    api.template(path)
                        .map(|_| ())
                        .ok_or_else(|| format!("{method} {path}: 405 on an undocumented path"))
                }),
                _ => api.conforms(method, path, &answer).map(|operation| {
                    answered.insert(operation);
                }),
            };
            if let Err(e) = verdict {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "routes answered but not as documented:\n{}", failures.join("\n"));
    // The probe reached every documented plain-HTTP operation (the WebSocket route needs an upgrade).
    let mut documented = api.operations();
    documented.remove(&("GET".to_string(), "/".to_string()));
    assert_eq!(answered, documented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_database_timeout_answers_are_documented() {
    // One REST call per second and user (bursts of 2); every database call times out at once
    // (so the gateway never becomes ready: its gap fill cannot read the database).
    let world = World::start_unready_with(|config| {
        config.fairness.rest_rate_per_sec = 1;
        config.backend_timeout = Duration::from_nanos(1);
    })
    .await;
    let api = Api::load();
    let carla = world.token(&CARLA);
    let path = "/api/chat/unread-count";
    let answer = call(&world, Method::GET, path, Some(&carla)).await;
    assert_eq!(answer.status, 504, "{}", answer.text);
    api.conforms(&Method::GET, path, &answer).unwrap_or_else(|e| panic!("{e}"));

    // The limiter runs before the handler: a bad thread id costs no database call.
    let path = "/api/chat/mark-read/not-a-uuid";
    let mut limited = None;
    for _ in 0..50 {
        let answer = call(&world, Method::POST, path, Some(&carla)).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, 400, "{}", answer.text);
    }
    let answer = limited.expect("50 calls at a limit of 1 per second (bursts of 2) meet a 429");
    api.conforms(&Method::POST, path, &answer).unwrap_or_else(|e| panic!("{e}"));
}

/// The frame schemas, with the definition each frame type must match.
struct Frames {
    schemas: HashMap<String, Validator>,
}

impl Frames {
    fn load() -> Frames {
        let doc: Value = serde_json::from_str(FRAMES).expect("docs/ws-frames.schema.json is JSON");
        Frames { schemas: compile(&doc, "/definitions") }
    }

    /// A server frame matches `ServerFrame` and its own type's definition.
    fn server(&self, frame: &Value) {
        let own = match frame["type"].as_str().unwrap_or_default() {
            "connection_established" => "ConnectionEstablished",
            "new_message" => "NewMessage",
            "thread_subscribed" => "ThreadSubscribed",
            "thread_unsubscribed" => "ThreadUnsubscribed",
            "error" => "Error",
            "pong" => "Pong",
            "sync_complete" => "SyncComplete",
            "thread_read" => "ThreadRead",
            "typing" => "Typing",
            other => panic!("frame type {other:?} is not in docs/ws-frames.schema.json: {frame}"),
        };
        check(&self.schemas, own, frame).unwrap_or_else(|e| panic!("{e}"));
        check(&self.schemas, "ServerFrame", frame).unwrap_or_else(|e| panic!("{e}"));
    }

    fn client(&self, frame: &Value) {
        check(&self.schemas, "ClientFrame", frame).unwrap_or_else(|e| panic!("{e}"));
    }

    fn close(&self, code: u16, reason: &str) {
        check(&self.schemas, "Close", &json!({"code": code, "reason": reason})).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Sends a documented client frame (checked against `ClientFrame` first).
async fn send(phone: &mut Phone, frames: &Frames, frame: Value) {
    frames.client(&frame);
    phone.send_json(frame).await;
}

/// The next frame, validated; panics when none comes.
async fn next(phone: &mut Phone, frames: &Frames) -> Value {
    let frame = phone.next_json().await.expect("a frame arrives");
    frames.server(&frame);
    frame
}

/// Reads until the server closes; returns (code, reason), validating every frame before it.
async fn close_frame(phone: &mut Phone, frames: &Frames) -> (u16, String) {
    loop {
        match tokio::time::timeout(ARRIVES, phone.ws.next()).await.expect("the server closes") {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Text(text))) => {
                frames.server(&serde_json::from_str(text.as_str()).expect("JSON frame"));
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_and_closes_match_the_frame_schemas() {
    let world = World::start().await;
    let frames = Frames::load();
    let mut phone =
        Phone::connect(&format!("{}?token={}", world.ws_base(), world.token(&CARLA))).await.expect("connects");

    let hello = next(&mut phone, &frames).await;
    assert_eq!(hello["type"], "connection_established");

    send(&mut phone, &frames, json!({"type": "ping"})).await;
    assert_eq!(next(&mut phone, &frames).await["type"], "pong");

    phone.send_text("{nope").await;
    let error = next(&mut phone, &frames).await;
    assert_eq!(error["type"], "error");
    assert!(error["message"].as_str().unwrap_or_default().starts_with("Invalid JSON"), "{error}");

    send(&mut phone, &frames, json!({"type": "subscribe_thread", "thread_id": CLASS_4A_PARENTS})).await;
    let refused = next(&mut phone, &frames).await;
    assert_eq!(refused["message"], format!("Access denied to thread {CLASS_4A_PARENTS}"));

    send(&mut phone, &frames, json!({"type": "subscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(next(&mut phone, &frames).await["type"], "thread_subscribed");
    send(&mut phone, &frames, json!({"type": "unsubscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(next(&mut phone, &frames).await["type"], "thread_unsubscribed");
    send(&mut phone, &frames, json!({"type": "subscribe_thread", "thread_id": CLASS_3B_PARENTS})).await;
    assert_eq!(next(&mut phone, &frames).await["type"], "thread_subscribed");

    // A token refresh is silent: the next frame is the answer to the ping after it.
    send(&mut phone, &frames, json!({"type": "access_token", "token": world.token(&CARLA)})).await;
    send(&mut phone, &frames, json!({"type": "ping"})).await;
    assert_eq!(next(&mut phone, &frames).await["type"], "pong");

    // Typing: David's frame (a documented client frame) reaches Carla as a documented frame.
    let mut david =
        Phone::connect(&format!("{}?token={}", world.ws_base(), world.token(&DAVID))).await.expect("connects");
    next(&mut david, &frames).await;
    send(&mut david, &frames, json!({"type": "typing", "thread_id": CLASS_3B_PARENTS})).await;
    let typing = next(&mut phone, &frames).await;
    assert_eq!(typing["user"]["user_id"], DAVID.id.to_string(), "{typing}");
    send(&mut david, &frames, json!({"type": "typing", "thread_id": CLASS_3B_PARENTS})).await;
    let limited = next(&mut david, &frames).await;
    assert!(limited["message"].as_str().unwrap_or_default().starts_with("Too many typing frames"), "{limited}");

    let id = world.post(&ALICE, CLASS_3B_PARENTS, "validated against the schema").await;
    loop {
        let frame = next(&mut phone, &frames).await;
        if frame["type"] == "new_message" && frame["data"]["id"] == id.to_string() {
            assert_eq!(frame["data"]["sender"]["role"], "teacher");
            break;
        }
    }

    phone.ws.send(Message::binary(vec![1u8, 2, 3])).await.expect("send binary");
    let (code, reason) = close_frame(&mut phone, &frames).await;
    assert_eq!(code, 1003);
    frames.close(code, &reason);

    let mut big =
        Phone::connect(&format!("{}?token={}", world.ws_base(), world.token(&CARLA))).await.expect("connects");
    next(&mut big, &frames).await;
    big.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(20_000))).await;
    let error = next(&mut big, &frames).await;
    assert_eq!(error["message"], "message too large");
    let (code, reason) = close_frame(&mut big, &frames).await;
    assert_eq!(code, 1009);
    frames.close(code, &reason);
}

/// The JSON examples of `docs/protocol.md` are valid frames or REST bodies by the same schemas.
#[test]
fn protocol_document_examples_match_the_schemas() {
    let protocol = include_str!("../docs/protocol.md");
    let frames: Value = serde_json::from_str(FRAMES).expect("frame schemas");
    let any_frame = jsonschema::validator_for(&frames).expect("frame schemas compile");
    let api = Api::load();
    let bodies = [
        "Error",
        "RealtimeSwitch",
        "OfflineMessages",
        "UnreadCount",
        "MarkRead",
        "ReadState",
        "Health",
        "Ready",
        "NotReady",
    ];
    let mut examples = 0;
    for block in protocol.split("```json").skip(1) {
        let text = block.split("```").next().unwrap_or_default();
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("example is not JSON ({e}):{text}"));
        if value.get("type").is_some() {
            let errors: Vec<String> = any_frame.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{value} is not a documented frame: {errors:?}");
        } else {
            assert!(
                bodies.iter().any(|name| check(&api.schemas, name, &value).is_ok()),
                "{value} matches no REST body schema"
            );
        }
        examples += 1;
    }
    assert!(examples >= 15, "found only {examples} JSON examples");
}
