//! `gateway-bench heap`: where an idle session's bytes go. Runs a heap-profiled build of the
//! gateway (`--features dhat-heap`, profile `dhat`) twice against the same stand-in stack: once
//! with no session and once with the school population's sessions connected and idle; each
//! process writes its dhat profile when told to stop, so the profile's end state is the heap with
//! those sessions open. The difference between the two, per live allocation site, divided by the
//! number of sessions, is the heap one idle session costs; each site is given an owner by the
//! first frame of its stack that a rule in [`OWNERS`] names. Also reads the kernel's socket
//! memory (`/proc/net/sockstat`) and slab (`/proc/meminfo`) before and after, which are not in
//! the process's RSS. Writes `target/bench/heap.json` and prints the table.
//!
//! It must never be run against a shipped build: the profiler slows every allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::HeapArgs;
use crate::clients;
use crate::e2e::{spawn_gateway_with, Backend};
use crate::host::{free_port, proc_rss_kib, raise_nofile, wait_http};
use crate::school::{school_stack, session_tokens};

/// Owners of the heap, by the first frame (from the allocation outwards) that contains the
/// pattern. dhat's frames read `function (file:line:col)` with the file's path shortened (the
/// gateway's own files end in `src/...`; a dependency's may or may not keep its crate's name), so
/// the patterns name functions and the ends of paths.
pub const OWNERS: &[(&str, &str)] = &[
    ("runtime/task/core.rs", "session task (tokio task: header and the session's future)"),
    ("request_token (", "the session's access token (kept for RLS checks)"),
    ("src/session/token.rs", "the session's access token (kept for RLS checks)"),
    ("tungstenite-0.", "WebSocket state and buffers (tungstenite)"),
    ("protocol/frame/mod.rs", "WebSocket state and buffers (tungstenite)"),
    ("src/protocol/mod.rs", "WebSocket state and buffers (tungstenite)"),
    ("src/hub/outbox.rs", "hub: session handle and registry entry"),
    ("src/hub.rs:", "hub: session handle and registry entry"),
    ("src/directory", "directory entries"),
    ("src/fair.rs", "per-user state (budgets, rates)"),
    ("src/limit.rs", "per-user state (budgets, rates)"),
    ("src/router/catchup.rs", "resume and cursor state"),
    ("src/router/cursor.rs", "resume and cursor state"),
    ("src/session/resume.rs", "resume and cursor state"),
    ("src/history.rs", "resume and cursor state"),
    ("src/metrics", "metrics"),
    ("prometheus-client-", "metrics"),
    ("src/store/", "store client copied into the session's context"),
    ("src/auth", "token verification (auth)"),
    ("src/edge", "edge: connection caps"),
    ("runtime/io/", "tokio I/O driver registration"),
    ("time/interval.rs", "timers (keep-alive, token expiry)"),
    ("time/sleep.rs", "timers (keep-alive, token expiry)"),
    ("src/session/socket.rs", "timers (keep-alive, token expiry)"),
    ("hyper-1.", "HTTP upgrade leftovers (hyper)"),
    ("src/session/", "session: own allocations (the token-expiry timer)"),
    ("src/server/", "connection task (accept loop)"),
    ("online_user_ids", "push presence (the set of online users, rebuilt every second)"),
    ("src/push/", "push presence (the set of online users, rebuilt every second)"),
];

/// The owner of an allocation site, from its frames (innermost first).
pub fn owner(frames: &[&str]) -> &'static str {
    for frame in frames {
        for (pattern, owner) in OWNERS {
            if frame.contains(pattern) {
                return owner;
            }
        }
    }
    "other"
}

/// glibc's chunk for a request of `n` bytes: 8 bytes of header, 16-byte aligned, 32 at least.
pub fn malloc_chunk(n: u64) -> u64 {
    ((n + 8).div_ceil(16) * 16).max(32)
}

/// Live bytes, blocks and estimated allocator chunks at the profile's end, by owner; and the
/// largest sites (owner, frames) by live bytes.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Split {
    pub by_owner: BTreeMap<String, Totals>,
    pub sites: BTreeMap<String, (String, Totals)>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub bytes: f64,
    pub blocks: f64,
    pub chunk_bytes: f64,
}

impl Totals {
    fn add(&mut self, bytes: f64, blocks: f64, chunk_bytes: f64) {
        self.bytes += bytes;
        self.blocks += blocks;
        self.chunk_bytes += chunk_bytes;
    }
}

/// The end state of a dhat profile, split by owner and by site (the site's key is its frames
/// after the allocator's own, shortened).
pub fn split(profile: &Value) -> Split {
    let empty = Vec::new();
    let table: Vec<&str> = profile["ftbl"].as_array().unwrap_or(&empty).iter().filter_map(Value::as_str).collect();
    let mut out = Split::default();
    for pp in profile["pps"].as_array().unwrap_or(&empty) {
        let (bytes, blocks) = (pp["eb"].as_u64().unwrap_or(0), pp["ebk"].as_u64().unwrap_or(0));
        if blocks == 0 {
            continue;
        }
        let frames: Vec<String> = pp["fs"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|i| i.as_u64().and_then(|i| table.get(i as usize).copied()))
            .map(short_frame)
            .filter(|f| !is_plumbing(f))
            .collect();
        let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
        let chunks = blocks * malloc_chunk(bytes / blocks);
        let who = owner(&frames);
        out.by_owner.entry(who.to_string()).or_default().add(bytes as f64, blocks as f64, chunks as f64);
        let key = frames.iter().take(6).copied().collect::<Vec<_>>().join(" < ");
        out.sites.entry(key).or_insert_with(|| (who.to_string(), Totals::default())).1.add(
            bytes as f64,
            blocks as f64,
            chunks as f64,
        );
    }
    out
}

/// A frame without its address, and with generic arguments elided (warp's types run to pages):
/// `0x55..: name<..> (file:line:col)` -> `name (file:line:col)`.
fn short_frame(frame: &str) -> String {
    let frame = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    let (name, place) = frame.rsplit_once(" (").map_or((frame, ""), |(n, p)| (n, p));
    let mut short = String::new();
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => short.push(c),
            _ => {}
        }
    }
    if place.is_empty() {
        short
    } else {
        format!("{short} ({place}")
    }
}

/// Frames of the allocator, the standard library and generic containers, which never say who
/// owns the memory.
fn is_plumbing(frame: &str) -> bool {
    const PLUMBING: &[&str] =
        &["(alloc/src/", "(core/src/", "(std/src/", "(dhat-", "(hashbrown-", "(bytes-", "(src/raw_vec", "[root]"];
    PLUMBING.iter().any(|p| frame.contains(p))
}

/// `a - b`, per owner and per site, divided by `n`.
pub fn per_session(with: &Split, without: &Split, n: f64) -> Split {
    let mut out = Split::default();
    let diff = |a: Option<&Totals>, b: Option<&Totals>| {
        let (a, b) = (a.copied().unwrap_or_default(), b.copied().unwrap_or_default());
        Totals {
            bytes: (a.bytes - b.bytes) / n,
            blocks: (a.blocks - b.blocks) / n,
            chunk_bytes: (a.chunk_bytes - b.chunk_bytes) / n,
        }
    };
    for key in with.by_owner.keys().chain(without.by_owner.keys()) {
        out.by_owner.insert(key.clone(), diff(with.by_owner.get(key), without.by_owner.get(key)));
    }
    for key in with.sites.keys().chain(without.sites.keys()) {
        let who = with.sites.get(key).or(without.sites.get(key)).map(|(w, _)| w.clone()).unwrap_or_default();
        let t = diff(with.sites.get(key).map(|(_, t)| t), without.sites.get(key).map(|(_, t)| t));
        out.sites.insert(key.clone(), (who, t));
    }
    out
}

/// Kernel memory for sockets: TCP pages in use (`/proc/net/sockstat`), and the slab (`/proc/meminfo`),
/// in KiB. Machine-wide: both ends of every loopback connection are in it.
fn kernel_kib() -> (u64, u64) {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (tcp_pages * 4, slab)
}

/// One profiled gateway process: started, `tokens` connected and left idle, stopped; its profile.
async fn profile_once(
    args: &HeapArgs,
    stack: &supabase_standin::Stack,
    tokens: &[(usize, String)],
    file: &Path,
) -> Option<(Value, Value)> {
    let _ = std::fs::remove_file(file);
    let port = free_port();
    let extra = [("DHAT_HEAP_FILE", file.display().to_string())];
    let mut gateway = match spawn_gateway_with(&args.gateway_bin, stack, Backend::Supabase, port, &extra) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start {}: {e}", args.gateway_bin.display());
            return None;
        }
    };
    if !wait_http(&format!("http://127.0.0.1:{port}/readyz")).await {
        eprintln!("gateway never became ready");
        let _ = gateway.kill();
        return None;
    }
    let pid = gateway.id();
    let (rss_before, kernel_before) = (proc_rss_kib(pid), kernel_kib());
    let epoch = chrono::Utc::now().timestamp_micros();
    let url = format!("ws://127.0.0.1:{port}/");
    let (sessions, _, failures) = clients::connect_all(&url, tokens, args.connect_rate, epoch).await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let (rss_idle, kernel_idle) = (proc_rss_kib(pid), kernel_kib());
    // The profiled gateway writes its profile at the first SIGTERM, sessions still open.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = tokio::task::spawn_blocking(move || gateway.wait()).await;
    drop(sessions);
    let text = std::fs::read_to_string(file).ok()?;
    let profile = serde_json::from_str(&text).ok()?;
    let figures = json!({
        "sessions": tokens.len() - failures, "failures": failures,
        "rss_kib": {"before": rss_before, "idle": rss_idle},
        "kernel_tcp_mem_kib": {"before": kernel_before.0, "idle": kernel_idle.0},
        "kernel_slab_kib": {"before": kernel_before.1, "idle": kernel_idle.1},
    });
    Some((profile, figures))
}

pub async fn run(args: HeapArgs) -> i32 {
    raise_nofile();
    if !args.reanalyze && !args.gateway_bin.exists() {
        eprintln!(
            "{} is missing: cargo build --profile dhat --features dhat-heap -p realtime-gateway",
            args.gateway_bin.display()
        );
        return 2;
    }
    let stem = args.report.file_stem().and_then(|s| s.to_str()).unwrap_or("heap").to_string();
    let dir = args.report.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let (empty_file, idle_file) =
        (dir.join(format!("{stem}.dhat-empty.json")), dir.join(format!("{stem}.dhat-idle.json")));
    let (empty, full, figures) = if args.reanalyze {
        let read = |f: &Path| std::fs::read_to_string(f).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let (Some(empty), Some(full), Some(report)) = (read(&empty_file), read(&idle_file), read(&args.report)) else {
            eprintln!(
                "--reanalyze needs {}, {} and {}",
                empty_file.display(),
                idle_file.display(),
                args.report.display()
            );
            return 2;
        };
        (empty, full, report["figures"].clone())
    } else {
        let Some((stack, pop)) = school_stack(args.classes).await else { return 2 };
        let tokens = session_tokens(&pop, stack.keys());
        let _ = std::fs::create_dir_all(&dir);
        eprintln!("profiling the gateway with no session...");
        let Some((empty, _)) = profile_once(&args, &stack, &[], &empty_file).await else { return 2 };
        eprintln!("profiling the gateway with {} idle sessions...", tokens.len());
        let Some((full, figures)) = profile_once(&args, &stack, &tokens, &idle_file).await else { return 2 };
        (empty, full, figures)
    };
    let n = figures["sessions"].as_u64().unwrap_or(0).max(1) as f64;
    let table = per_session(&split(&full), &split(&empty), n);
    print_table(&table, &figures, n);
    let report = report_json(&table, &figures);
    match std::fs::write(&args.report, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        Ok(()) => eprintln!("wrote {}", args.report.display()),
        Err(e) => eprintln!("cannot write {}: {e}", args.report.display()),
    }
    0
}

fn print_table(table: &Split, figures: &Value, n: f64) {
    let mut owners: Vec<_> = table.by_owner.iter().collect();
    owners.sort_by(|a, b| b.1.bytes.total_cmp(&a.1.bytes));
    let total = owners.iter().fold(Totals::default(), |mut t, (_, o)| {
        t.add(o.bytes, o.blocks, o.chunk_bytes);
        t
    });
    println!("\n== heap per idle session ({n} sessions), live at the end, with no session subtracted");
    println!("| owner | bytes | blocks | with glibc chunk overhead |");
    println!("|---|---|---|---|");
    for (who, t) in &owners {
        println!("| {who} | {:.0} | {:.2} | {:.0} |", t.bytes, t.blocks, t.chunk_bytes);
    }
    println!("| **total** | **{:.0}** | **{:.2}** | **{:.0}** |", total.bytes, total.blocks, total.chunk_bytes);
    let rss = &figures["rss_kib"];
    let per = |v: &Value| (v["idle"].as_f64().unwrap_or(0.0) - v["before"].as_f64().unwrap_or(0.0)) * 1024.0 / n;
    println!(
        "\nRSS of the profiled process per session: {:.0} B (the profiler's own bookkeeping included); kernel, not in RSS: TCP buffers {:.0} B, slab {:.0} B per session (both ends of loopback)",
        per(rss),
        per(&figures["kernel_tcp_mem_kib"]),
        per(&figures["kernel_slab_kib"])
    );
    let mut sites: Vec<_> = table.sites.iter().filter(|(_, (_, t))| t.bytes.abs() >= 4.0).collect();
    sites.sort_by(|a, b| b.1 .1.bytes.total_cmp(&a.1 .1.bytes));
    println!("\nlargest sites (bytes per session, blocks per session, owner, frames):");
    for (key, (who, t)) in sites.iter().take(40) {
        println!("{:>7.0} {:>5.2}  [{who}]  {key}", t.bytes, t.blocks);
    }
}

fn report_json(table: &Split, figures: &Value) -> Value {
    let owners: BTreeMap<&String, Value> = table
        .by_owner
        .iter()
        .map(|(k, t)| (k, json!({"bytes": t.bytes, "blocks": t.blocks, "chunk_bytes": t.chunk_bytes})))
        .collect();
    let mut sites: Vec<_> = table.sites.iter().filter(|(_, (_, t))| t.bytes.abs() >= 1.0).collect();
    sites.sort_by(|a, b| b.1 .1.bytes.total_cmp(&a.1 .1.bytes));
    let sites: Vec<Value> = sites
        .into_iter()
        .map(|(k, (who, t))| json!({"owner": who, "frames": k, "bytes": t.bytes, "blocks": t.blocks}))
        .collect();
    json!({"per_session": owners, "figures": figures, "sites": sites})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_glibc() {
        assert_eq!(malloc_chunk(1), 32);
        assert_eq!(malloc_chunk(24), 32);
        assert_eq!(malloc_chunk(25), 48);
        assert_eq!(malloc_chunk(256), 272);
    }

    #[test]
    fn a_site_belongs_to_the_first_frame_a_rule_names() {
        let frames = ["try_push (memory/src/hub/outbox.rs:1:1)", "fan_out (src/hub.rs:2:2)"];
        assert_eq!(owner(&frames), "hub: session handle and registry entry");
        assert_eq!(short_frame("0x1: clone<a::B<c>> (src/store/mod.rs:33:10)"), "clone (src/store/mod.rs:33:10)");
        assert!(is_plumbing("grow_one (alloc/src/raw_vec/mod.rs:1:1)"));
        assert_eq!(owner(&["something::else"]), "other");
    }

    #[test]
    fn the_split_subtracts_the_empty_process_per_session() {
        let profile = |blocks: u64| {
            json!({"ftbl": ["[root]", "0x1: register (src/hub.rs:1:1)"],
                   "pps": [{"eb": blocks * 100, "ebk": blocks, "fs": [1]}]})
        };
        let table = per_session(&split(&profile(12)), &split(&profile(2)), 10.0);
        let t = table.by_owner["hub: session handle and registry entry"];
        assert_eq!((t.bytes, t.blocks, t.chunk_bytes), (100.0, 1.0, 112.0));
    }
}
