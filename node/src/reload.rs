//! Config reload (`SIGHUP`, `systemctl reload`, `fleetsync reload`): read
//! the config again (same file, env and flags) and apply what can change
//! while running — `[mesh] peers`/`ticket_peers` (added peers dialed at
//! once, removed ones no longer configured; sessions of the others left
//! alone), `allow`/`deny` (revoked members cut off at once), `log.level`
//! and the folder list (folders added start syncing with the connected
//! peers that share them, removed ones stop; no connection is dropped).
//! Anything else that changed, a folder's own settings included, is
//! reported as needing a restart. A config that does not load is refused
//! with its one-line error and the node keeps running as it was.

use std::collections::{BTreeMap, BTreeSet};

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
        let mut new = (self.load)().map_err(|e| format!("{e:#}"))?;
        let changed = changed_keys(&self.running, &new);
        let mut report = ReloadReport::default();
        self.apply_folders(node, &mut new, &mut report).await;
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
        report.restart_needed.extend(
            changed
                .into_iter()
                .filter(|k| !LIVE_KEYS.contains(&k.as_str()) && !k.starts_with("folders[")),
        );
        self.running = new;
        Ok(report)
    }

    /// Add the folders `new` has and the node does not run, remove those it
    /// no longer has; a folder whose own settings changed is named as
    /// needing a restart. A folder that cannot be added (its path cannot be
    /// made…) is reported and left out of `new`, so the next reload tries
    /// again.
    async fn apply_folders(&self, node: &NodeHandle, new: &mut Config, report: &mut ReloadReport) {
        let plan = FolderPlan::of(&self.running, new);
        let mut not_added = BTreeSet::new();
        for id in &plan.removed {
            match node.remove_folder(id).await {
                Ok(_) => report
                    .applied
                    .push(format!("folder {id}: removed (its files stay)")),
                Err(e) => report
                    .applied
                    .push(format!("folder {id}: not removed ({e})")),
            }
        }
        for f in new.folders.iter().filter(|f| plan.added.contains(&f.id)) {
            let stall = new.mesh.transfer_stall_timeout;
            match node.add_folder(f.clone(), stall).await {
                Ok(()) => {
                    report
                        .applied
                        .push(format!("folder {}: added ({})", f.id, f.path.display()))
                }
                Err(e) => {
                    report
                        .applied
                        .push(format!("folder {}: not added ({e})", f.id));
                    not_added.insert(f.id.clone());
                }
            }
        }
        new.folders.retain(|f| !not_added.contains(&f.id));
        report.restart_needed.extend(plan.changed);
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

/// How the folder list changed, folder by folder (by id).
#[derive(Debug, Default, PartialEq, Eq)]
struct FolderPlan {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// `folders[id=<id>].<key>` of folders in both whose settings differ.
    changed: Vec<String>,
}

impl FolderPlan {
    fn of(old: &Config, new: &Config) -> FolderPlan {
        let by_id = |c: &Config| -> BTreeMap<String, Vec<(&'static str, String)>> {
            (c.folders.iter())
                .map(|f| (f.id.clone(), fleetsync_config::folder_values(f)))
                .collect()
        };
        let (old, new) = (by_id(old), by_id(new));
        let mut plan = FolderPlan::default();
        for (id, values) in &new {
            match old.get(id) {
                None => {
                    plan.added.insert(id.clone());
                }
                Some(before) => plan.changed.extend(
                    (values.iter())
                        .filter(|kv| !before.contains(kv))
                        .map(|(k, _)| format!("folders[id={id}].{k}")),
                ),
            }
        }
        plan.removed = old
            .keys()
            .filter(|id| !new.contains_key(*id))
            .cloned()
            .collect();
        plan
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(folders: &[(&str, &str)]) -> Config {
        let mut text = format!("[mesh]\nfleet_secret = \"{}\"\n", "ab".repeat(32));
        for (id, settle) in folders {
            text.push_str(&format!(
                "[[folders]]\nid = \"{id}\"\npath = \"/srv/{id}\"\nsettle = \"{settle}\"\n"
            ));
        }
        let path = std::path::Path::new("/etc/fleetsync/fleetsync.toml");
        Config::from_toml_str(&text, path, [], &Default::default()).expect("valid config")
    }

    #[test]
    fn folders_are_compared_by_id_not_by_position() {
        let old = config(&[("a", "1s"), ("b", "1s"), ("c", "1s")]);
        // `a` gone, so `b` and `c` move up; `c`'s settle changed; `d` new.
        let new = config(&[("b", "1s"), ("c", "2s"), ("d", "1s")]);
        let plan = FolderPlan::of(&old, &new);
        assert_eq!(plan.added, BTreeSet::from(["d".to_string()]));
        assert_eq!(plan.removed, BTreeSet::from(["a".to_string()]));
        assert_eq!(plan.changed, ["folders[id=c].settle"]);
        assert_eq!(FolderPlan::of(&new, &new), FolderPlan::default());
    }
}
