//! Node.js for the tests that run JavaScript: where the scripts are (`tests/node`, one package for
//! the guide's code, the supabase-js checks and the browser drivers; `clients/js`, the client
//! library and its own tests), the check that `scripts/setup` installed what a script needs, and the
//! one way to start `node`. Never skips: a missing install fails the test with the command to run.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// `tests/node`: the JavaScript that tests the gateway and the stand-ins (one package.json).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// `clients/js`: the client library, built to `dist/` by `scripts/setup`.
pub fn library_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// Panics unless every path in `needed` (relative to `dir`) exists: run `scripts/setup` first.
pub fn require(dir: &Path, needed: &[&str]) {
    for needed in needed {
        assert!(dir.join(needed).exists(), "{} missing in {}: run scripts/setup", needed, dir.display());
    }
}

/// The headless Chromium the browser drivers use (`CHROMIUM`, else `/usr/bin/chromium`), checked
/// together with `playwright-core` in `tests/node`.
pub fn require_chromium() {
    require(&tests_dir(), &["node_modules/playwright-core"]);
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} missing: run scripts/setup");
}

/// `node` started in `dir`, killed when the handle is dropped (a failing test leaves no process).
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new("node");
    command.current_dir(dir).kill_on_drop(true);
    command
}

/// A running script: its stdout read line by line as JSON, its stderr passed through.
pub struct Script {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

impl Script {
    /// Spawns `command` with stdout piped and stderr inherited.
    pub fn spawn(command: &mut Command) -> Script {
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("node must be installed");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Script { child, lines }
    }

    /// The next line, parsed as JSON; panics naming `what` when none comes within `within`.
    pub async fn next_json(&mut self, within: std::time::Duration, what: &str) -> Value {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what}: no line in time"))
            .expect("read")
            .unwrap_or_else(|| panic!("{what}: the driver ended early"));
        serde_json::from_str(&line).expect("json")
    }
}
