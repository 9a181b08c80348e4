//! The example web app as a newcomer runs it, following the README: `scripts/demo --web` as a
//! process (stand-in, gateway with the page's origin in `CORS_ALLOWED_ORIGINS`, `serve.mjs`), the
//! printed URL opened in headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! `tests/node/browser.mjs` through playwright-core), signed in with a printed token; messages
//! inserted with SQL through the printed database URL. Fails (never skips) when Node, the npm
//! packages, the library build or Chromium are missing: run `scripts/setup` first.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use supabase_standin::seed::{ALICE, ALICE_CARLA, CLASS_3B_PARENTS};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uuid::Uuid;

use crate::common::node::{self, Script};

/// Bound for each step of the scenario (never an assertion about speed); the first start of the
/// demo may build what `cargo test` did not.
const PHASE: Duration = Duration::from_secs(60);
const START: Duration = Duration::from_secs(600);

/// Carla's two unread messages in "Class 3B parents" (supabase/seed.sql).
const UNREAD_3B: [&str; 2] =
    ["Reminder: the museum trip is on Friday, please sign the form.", "Please bring a packed lunch on Friday."];
/// Older messages added to 3B, so that its history takes several pages.
const OLDER: usize = 70;
/// Messages of 3B in the seed.
const SEEDED_3B: usize = 4;

/// `scripts/demo --web`, running, with what it printed.
struct Demo {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
    database: String,
    tokens: Vec<(String, String)>,
}

impl Demo {
    async fn start(web_port: u16, gateway_port: u16) -> Demo {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(root.join("scripts/demo"))
            .args(["--web", "--web-port", &web_port.to_string(), "--gateway-port", &gateway_port.to_string()])
            .current_dir(&root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("scripts/demo runs");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut url, mut database, mut tokens) = (None, None, Vec::new());
        let printed = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("Open ") {
                    url = rest.split_whitespace().next().map(str::to_string);
                } else if let Some(rest) = line.trim().strip_prefix("psql '") {
                    database = rest.split('\'').next().map(str::to_string);
                } else if line.starts_with("Running until Ctrl-C") {
                    return;
                } else if url.is_some() && database.is_none() {
                    // "  Carla Diaz    parent   <token>"
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if words.len() == 4 {
                        tokens.push((format!("{} {}", words[0], words[1]), words[3].to_string()));
                    }
                }
            }
            panic!("scripts/demo --web ended before it was running");
        };
        tokio::time::timeout(START, printed).await.expect("scripts/demo --web starts in time");
        Demo {
            child,
            lines,
            url: url.expect("the demo prints the URL to open"),
            database: database.expect("the demo prints the database URL"),
            tokens,
        }
    }

    fn token(&self, name: &str) -> &str {
        self.tokens.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str()).expect("a token per seeded user")
    }

    /// Ctrl-C (SIGINT), as a person stops it; it must exit cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill runs").success());
        tokio::spawn(async move { while let Ok(Some(_)) = self.lines.next_line().await {} });
        let status = tokio::time::timeout(PHASE, self.child.wait()).await.expect("stops in time").expect("wait");
        assert!(status.success(), "scripts/demo --web after Ctrl-C: {status:?}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

async fn sql(database: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(database, tokio_postgres::NoTls).await.expect("the printed database URL works");
    tokio::spawn(connection);
    client
}

async fn insert(db: &tokio_postgres::Client, thread: Uuid, text: &str) {
    db.execute(
        "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3)",
        &[&thread, &ALICE.id, &text],
    )
    .await
    .expect("insert");
}

/// The README's client section, in Chromium: signed in as Carla (two unread messages in 3B), the
/// opened thread shows its latest page with both unread messages below the "unread" divider, and
/// the page marks it read only once they are on screen; scrolling up loads the older pages down to
/// the first message, each message once; a message inserted with SQL appears live in the open
/// thread, and one in her other thread raises that thread's badge; from an origin the gateway does
/// not admit, the status pill says why the page is offline and names `CORS_ALLOWED_ORIGINS`.
/// Ctrl-C stops the demo, its database is gone, and it starts again at once on the same ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_web_app_shows_history_unread_live_messages_and_why_it_is_offline() {
    node::require(&node::library_dir(), &["dist/index.js"]);
    node::require_chromium();
    let (web_port, gateway_port) = (free_port(), free_port());
    let demo = Demo::start(web_port, gateway_port).await;
    assert_eq!(demo.url, format!("http://127.0.0.1:{web_port}/"));
    let db = sql(&demo.database).await;
    // Older history, read long ago: one statement, so equal-looking times come from one transaction.
    let oldest = "older message 0";
    db.execute(
        "insert into public.messages (thread_id, sender_id, content, created_at)
         select $1, $2, 'older message ' || i, now() - interval '20 days' + i * interval '1 hour'
         from generate_series(0, $3::int - 1) i",
        &[&CLASS_3B_PARENTS, &ALICE.id, &i32::try_from(OLDER).expect("small")],
    )
    .await
    .expect("older messages");

    let nonce = Uuid::new_v4().simple().to_string();
    let text_a = format!("Parents' evening moved to Thursday {}", &nonce[..8]);
    let args = json!({
        "url": demo.url,
        "token": demo.token("Carla Diaz"),
        "threadA": CLASS_3B_PARENTS,
        "threadB": ALICE_CARLA,
        "unreadA": UNREAD_3B,
        "textA": text_a,
        "refusedUrl": format!("http://localhost:{web_port}/"),
    });
    let mut script = Script::spawn(node::command(&node::tests_dir()).arg("browser.mjs").arg(args.to_string()));

    let ready = script.next_json(PHASE, "the page opens thread 3B").await;
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["badgeA"], 2, "3B's badge: Carla's two unread messages: {ready}");
    assert_seen_before_read(&ready);
    assert_eq!(ready["afterDivider"], UNREAD_3B[0], "the divider is above the first unread message: {ready}");
    let pages = ready["pages"].as_array().expect("page counts");
    assert!(pages.len() >= 3, "scrolling up loaded older pages one after the other: {ready}");
    assert_eq!(ready["total"], OLDER + SEEDED_3B, "every message of 3B, down to the first: {ready}");
    assert_eq!(ready["distinct"], ready["total"], "each message once: {ready}");
    assert_eq!(ready["first"], oldest, "{ready}");

    insert(&db, CLASS_3B_PARENTS, &text_a).await;
    insert(&db, ALICE_CARLA, "Can we talk about the trip?").await;
    let live = script.next_json(PHASE, "the live messages show").await;
    assert_eq!(live["event"], "live", "{live}");
    assert_eq!(live["senderA"], "Alice Martin", "{live}");
    assert_eq!(live["badgeB"], ready["badgeB"].as_i64().expect("a number") + 1, "{live}");
    assert_eq!(live["badgeA"], 0, "the open thread keeps no badge: {live}");

    let refused = script.next_json(PHASE, "the refused origin is explained").await;
    assert_eq!(refused["event"], "refused", "{refused}");
    assert_eq!(refused["reason"], "origin", "{refused}");
    assert!(refused["text"].as_str().is_some_and(|t| t.contains("CORS_ALLOWED_ORIGINS")), "{refused}");
    let status = tokio::time::timeout(PHASE, script.child.wait()).await.expect("exits").expect("status");
    assert!(status.success());

    drop(db);
    let database = demo.database.clone();
    demo.stop().await;
    assert!(
        tokio_postgres::connect(&database, tokio_postgres::NoTls).await.is_err(),
        "the demo's database is gone after Ctrl-C"
    );
    // Started again right away on the same ports: nothing holds them.
    Demo::start(web_port, gateway_port).await.stop().await;
}

/// Both unread messages were on screen before the page asked to mark the thread read, and the
/// badge went only after that.
fn assert_seen_before_read(ready: &Value) {
    let events = ready["events"].as_array().expect("events");
    let at = |what: &str| -> Vec<f64> {
        events.iter().filter(|e| e["what"] == what).filter_map(|e| e["at"].as_f64()).collect()
    };
    let shown = at("shown");
    assert_eq!(shown.len(), 2, "both unread messages on screen: {ready}");
    let last_shown = shown.iter().copied().fold(f64::MIN, f64::max);
    let asked = *at("mark-read").first().expect("the page marks the thread read");
    let dropped = *at("badge-dropped").first().expect("the badge drops");
    assert!(last_shown <= asked, "marked read before the messages were on screen: {ready}");
    assert!(asked <= dropped, "the badge dropped before the thread was marked read: {ready}");
}
