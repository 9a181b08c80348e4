//! The per-user realtime switch as every instance learns it: read whole from the database each
//! time the upstream becomes live (changes made while it was down were missed), then kept current
//! by the change feed. Changes that arrive while a read is under way are logged and applied again
//! on top of it, so a read taken before them cannot undo them. One read per subscription, not one
//! per connecting device.

use std::collections::HashSet;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Router;

/// A finished read: the users who switched realtime off, tagged with the read it answers.
pub struct OffUsers {
    read: u64,
    users: HashSet<Uuid>,
}

/// The router's state of the switch reads.
pub struct Switches {
    tx: mpsc::Sender<OffUsers>,
    pub(super) rx: mpsc::Receiver<OffUsers>,
    read: u64,
    /// Changes seen since the current read started (None: no read under way).
    log: Option<Vec<(Uuid, bool)>>,
}

impl Default for Switches {
    fn default() -> Switches {
        let (tx, rx) = mpsc::channel(1);
        Switches { tx, rx, read: 0, log: None }
    }
}

impl Switches {
    /// Whether the last read has completed (the gateway is ready only then).
    pub(super) fn loaded(&self) -> bool {
        self.log.is_none()
    }
}

impl Router {
    /// Reads every switched-off user (retried with backoff until it succeeds or the gateway stops).
    pub(super) fn read_switches(&mut self) {
        self.switches.read += 1;
        self.switches.log = Some(Vec::new());
        let (store, tx, read, stop) =
            (self.store.clone(), self.switches.tx.clone(), self.switches.read, self.stop.clone());
        self.tasks.spawn(async move {
            let mut delays = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                match store.realtime_off_users().await {
                    Ok(users) => {
                        let _ = tx.send(OffUsers { read, users }).await;
                        return;
                    }
                    Err(e) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "reading the realtime switches failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
        });
    }

    /// A switch change from the feed.
    pub(super) fn on_switch(&mut self, user_id: Uuid, enabled: bool) {
        self.hub.set_realtime(user_id, enabled);
        if let Some(log) = self.switches.log.as_mut() {
            log.push((user_id, enabled));
        }
    }

    /// A read finished: it becomes the state, with the changes seen meanwhile applied on top.
    pub(super) fn on_switches_read(&mut self, off: OffUsers) {
        if off.read != self.switches.read {
            return;
        }
        self.hub.replace_realtime_off(&off.users);
        for (user_id, enabled) in self.switches.log.take().unwrap_or_default() {
            self.hub.set_realtime(user_id, enabled);
        }
        tracing::info!(switched_off = off.users.len(), "realtime switches read");
    }
}
