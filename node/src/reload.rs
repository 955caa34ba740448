//! Config reload (`SIGHUP`, `systemctl reload`, `fleetsync reload`): read
//! the config again (same file, env and flags) and apply what can change
//! while running — `[mesh] peers`/`ticket_peers` (added peers dialed at
//! once, removed ones no longer configured; sessions of the others left
//! alone), `allow`/`deny` (revoked members cut off at once) and
//! `log.level`. Anything else that changed is reported as needing a
//! restart. A config that does not load is refused with its one-line
//! error and the node keeps running as it was.

use std::collections::BTreeMap;

use fleetsync_actors::NodeHandle;
use fleetsync_config::Config;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::daemon::SetFilter;

/// Keys a reload applies without a restart (the folders' ignore files
/// reload on their own when they change).
const LIVE_KEYS: &[&str] = &[
    "mesh.peers",
    "mesh.ticket_peers",
    "mesh.allow",
    "mesh.deny",
    "log.level",
];

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes applied, one line each (`mesh.peers: 1 added, 0 removed`).
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// A reload asked through the admin API, and where its answer goes.
pub type ReloadRequest = oneshot::Sender<Result<ReloadReport, String>>;

/// Loads the config again (same file, env and flags).
pub type Load = Box<dyn Fn() -> anyhow::Result<Config> + Send>;

/// Owns what a reload compares against: the config in effect.
pub struct Reloader {
    load: Load,
    running: Config,
    set_filter: Option<SetFilter>,
}

impl Reloader {
    pub fn new(load: Load, running: Config, set_filter: Option<SetFilter>) -> Self {
        Reloader {
            load,
            running,
            set_filter,
        }
    }

    /// Load and apply; the error is the one line a refused config gets.
    pub async fn reload(&mut self, node: &NodeHandle) -> Result<ReloadReport, String> {
        let new = (self.load)().map_err(|e| format!("{e:#}"))?;
        let changed = changed_keys(&self.running, &new);
        let mut report = ReloadReport::default();
        if changed
            .iter()
            .any(|k| k == "mesh.allow" || k == "mesh.deny")
        {
            let (allow, deny) = fleetsync_actors::access_of(&new).map_err(|e| e.to_string())?;
            let cut = node.mesh.set_access(allow, deny).await;
            report.applied.push(format!(
                "mesh.allow/deny: applied, {} peer(s) disconnected",
                cut.len()
            ));
        }
        if changed
            .iter()
            .any(|k| k == "mesh.peers" || k == "mesh.ticket_peers")
        {
            let peers = fleetsync_actors::peers_of(&new).map_err(|e| e.to_string())?;
            let c = node
                .mesh
                .set_static_peers(&peers.addrs, &peers.names, &peers.from_ticket);
            report.applied.push(format!(
                "mesh.peers: {} added, {} removed",
                c.added.len(),
                c.removed.len()
            ));
        }
        if changed.iter().any(|k| k == "log.level") {
            report.applied.push(self.set_log_level(&new.log.level));
        }
        report.restart_needed = changed
            .into_iter()
            .filter(|k| !LIVE_KEYS.contains(&k.as_str()))
            .collect();
        self.running = new;
        Ok(report)
    }

    fn set_log_level(&self, level: &str) -> String {
        if std::env::var_os("FLEETSYNC_LOG").is_some() {
            return format!("log.level: now {level:?}, but FLEETSYNC_LOG is set and wins");
        }
        match &self.set_filter {
            Some(set) => match set(level) {
                Ok(()) => format!("log.level: now {level:?}"),
                Err(e) => format!("log.level: not applied ({e})"),
            },
            None => "log.level: not applied (logging is not ours to change)".to_string(),
        }
    }

    /// Reload and log the outcome (SIGHUP has no one to answer).
    pub async fn reload_and_log(&mut self, node: &NodeHandle) -> Result<ReloadReport, String> {
        let res = self.reload(node).await;
        match &res {
            Ok(r) if r.applied.is_empty() && r.restart_needed.is_empty() => {
                info!("config reloaded: nothing changed")
            }
            Ok(r) => {
                for line in &r.applied {
                    info!("config reloaded: {line}");
                }
                if !r.restart_needed.is_empty() {
                    warn!(
                        "config reloaded; these changes need a restart: {}",
                        r.restart_needed.join(", ")
                    );
                }
            }
            Err(e) => warn!("reload refused, keeping the running config: {e}"),
        }
        res
    }
}

/// Keys whose effective value differs, every setting compared through
/// `Config::settings` (one list of keys for `config show` and this); the
/// fleet secret, redacted there, is compared itself.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let old_values: BTreeMap<String, String> = old
        .settings()
        .into_iter()
        .map(|s| (s.key, s.value))
        .collect();
    let new_values: BTreeMap<String, String> = new
        .settings()
        .into_iter()
        .map(|s| (s.key, s.value))
        .collect();
    let mut keys: Vec<String> = old_values
        .keys()
        .chain(new_values.keys())
        .filter(|k| old_values.get(*k) != new_values.get(*k))
        .cloned()
        .collect();
    if old.mesh.fleet_secret.0 != new.mesh.fleet_secret.0 {
        keys.push("mesh.fleet_secret".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The admin API's side: ask the daemon loop for a reload and wait for it.
pub async fn request(tx: &mpsc::Sender<ReloadRequest>) -> Result<ReloadReport, String> {
    let (answer, rx) = oneshot::channel();
    tx.send(answer)
        .await
        .map_err(|_| "the node is shutting down".to_string())?;
    rx.await
        .map_err(|_| "the node is shutting down".to_string())?
}
