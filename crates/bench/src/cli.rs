//! The command line: the subcommands and each scenario's settings, with their defaults. Owns
//! parsing only; it must never start a process or open a socket.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::e2e;

#[derive(Parser)]
#[command(name = "gateway-bench", about = "Load generator and ceiling server for the realtime gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the benchmark (default: the standard scenario).
    Run(RunArgs),
    /// The reconnect storm: all sessions dropped at once and resuming with `since` over a window
    /// while INSERTs continue.
    Storm(StormArgs),
    /// The end-to-end pass (real INSERTs) on both backends, latency side by side.
    E2e(e2e::E2eArgs),
    /// Push to offline recipients: the live path with push off vs on, and pushes/s to a webhook
    /// stand-in.
    Push(crate::push::PushArgs),
    /// Where an idle session's heap goes: a heap-profiled gateway with no session, then with the
    /// population idle, split by owner (target/bench/heap.json).
    Heap(HeapArgs),
    /// Typing: the live path with typing off vs on (10 % of the sessions typing every 2.5 s).
    Typing(crate::typing::TypingArgs),
    /// Serve as the ceiling server (used by `run` as a subprocess).
    Ceiling {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        realtime_url: String,
        #[arg(long)]
        apikey: String,
        #[arg(long)]
        service_key: String,
    },
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread).
    #[arg(long, default_value_t = 280)]
    pub classes: usize,
    /// Offered load steps, deliveries per second.
    #[arg(long, value_delimiter = ',', default_value = "15500,31000,62000,93000,124000,200000,300000")]
    pub rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 4.0)]
    pub step_secs: f64,
    /// New sessions per second while connecting.
    #[arg(long, default_value_t = 2500)]
    pub connect_rate: u32,
    /// Skip the ceiling server.
    #[arg(long)]
    pub no_ceiling: bool,
    /// End-to-end pass: real INSERTs per second (0 = skip).
    #[arg(long, default_value_t = 200)]
    pub e2e_inserts_per_sec: u64,
    /// Worker threads of the load generator's runtime (clients and the Realtime stand-in). With
    /// one, the generator itself becomes the bottleneck on this 2-core machine (measured).
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/report.json")]
    pub report: PathBuf,
    /// Gateway binary (built with `cargo build --release -p realtime-gateway` if missing).
    #[arg(long, default_value = "target/release/realtime-gateway")]
    pub gateway_bin: PathBuf,
}

#[derive(clap::Args, Clone)]
pub struct StormArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread): 280 gives 10,360 sessions.
    #[arg(long, default_value_t = 280)]
    pub classes: usize,
    /// Reconnects spread uniformly over this many seconds after the drop.
    #[arg(long, default_value_t = 10.0)]
    pub spread_secs: f64,
    /// Real INSERTs per second during the whole storm.
    #[arg(long, default_value_t = 100)]
    pub inserts_per_sec: u64,
    /// New sessions per second while connecting before the storm.
    #[arg(long, default_value_t = 2500)]
    pub connect_rate: u32,
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
    #[arg(long, default_value = "target/bench/storm.json")]
    pub report: PathBuf,
    #[arg(long, default_value = "target/release/realtime-gateway")]
    pub gateway_bin: PathBuf,
}

#[derive(clap::Args, Clone)]
pub struct HeapArgs {
    /// Class threads (each 1 teacher + 30 parents, plus one 1:1 thread): 280 gives 10,360 sessions.
    #[arg(long, default_value_t = 280)]
    pub classes: usize,
    /// New sessions per second while connecting (the profiler slows the gateway down).
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u32,
    /// Seconds to wait once every session is connected, before the profile is taken.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// The report; the two profiles are written beside it (`<name>.dhat-empty.json`,
    /// `<name>.dhat-idle.json`).
    #[arg(long, default_value = "target/bench/heap.json")]
    pub report: PathBuf,
    /// Split the profiles of an earlier run again (after a change of the owners' rules),
    /// without running anything.
    #[arg(long)]
    pub reanalyze: bool,
    /// The heap-profiled gateway: `cargo build --profile dhat --features dhat-heap -p realtime-gateway`.
    #[arg(long, default_value = "target/dhat/realtime-gateway")]
    pub gateway_bin: PathBuf,
}
