//! `gateway-bench`: the load generator (and, as a subcommand, the ceiling server).
//!
//! One invocation starts the local Supabase stand-in (its own throwaway PostgreSQL), creates a
//! school-shaped population, starts a release build of the gateway as a separate process, opens N
//! WebSocket sessions with real signed tokens (HS256 and ES256 alternately), and steps the offered
//! load in deliveries/s using the Realtime stand-in's synthetic events (so PostgreSQL does not cap
//! the rate). Every delivery is checked: lost, duplicated and misrouted counts (any non-zero is a
//! failure). Then the same sockets and the same steps run against the ceiling server, a minimal
//! fan-out server, and an end-to-end pass uses real INSERTs. It prints a table and writes
//! `target/bench/report.json`. Numbers are never asserted in tests; they live here.
//!
//! By role: [`cli`] (the command line), [`school`] (the population), [`host`] (the gateway
//! process, `/proc` and `/metrics`), [`clients`] (the sessions), [`pass`] (a live-path
//! scenario's gateway, sessions and measured window, shared by `push` and `typing`), [`step`] (one step of offered
//! load, every delivery checked), [`run`] (the standard scenario) and [`report`] (its table and
//! JSON), [`e2e`] (real INSERTs, both backends), [`push`] (push to offline recipients: the live
//! path with push off vs on, pushes/s), [`typing`] (the live path with typing off vs on),
//! [`storm`] (the reconnect storm), [`heap`] (an idle session's heap by owner, from a
//! heap-profiled gateway) and [`ceiling`] (the ceiling server).

mod ceiling;
mod cli;
mod clients;
mod e2e;
mod heap;
mod host;
mod pass;
mod push;
mod report;
mod run;
mod school;
mod step;
mod storm;
mod typing;

use clap::Parser;

use cli::{Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Some(Cmd::Run(a)) => a.gen_threads.max(1),
        Some(Cmd::Storm(a)) => a.gen_threads.max(1),
        Some(Cmd::E2e(_)) => 2,
        Some(Cmd::Push(_)) => 2,
        Some(Cmd::Heap(_)) => 2,
        Some(Cmd::Typing(_)) => 2,
        Some(Cmd::Ceiling { .. }) => 2,
        None => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match cli.command {
        Some(Cmd::Ceiling { port, realtime_url, apikey, service_key }) => {
            match runtime.block_on(ceiling::run(port, realtime_url, apikey, service_key)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ceiling: {e}");
                    2
                }
            }
        }
        Some(Cmd::Run(args)) => runtime.block_on(run::run(args)),
        Some(Cmd::Storm(args)) => runtime.block_on(storm::run(args)),
        Some(Cmd::E2e(args)) => runtime.block_on(e2e::run(args)),
        Some(Cmd::Push(args)) => runtime.block_on(push::run(args)),
        Some(Cmd::Heap(args)) => runtime.block_on(heap::run(args)),
        Some(Cmd::Typing(args)) => runtime.block_on(typing::run(args)),
        None => match Cli::parse_from(["gateway-bench", "run"]).command {
            Some(Cmd::Run(args)) => runtime.block_on(run::run(args)),
            _ => 2,
        },
    };
    std::process::exit(code);
}
