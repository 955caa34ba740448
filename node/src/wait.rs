//! `fleetsync status` exit codes and `fleetsync wait --in-sync`: what the
//! running node's `/status` says, judged for scripts.
//!
//! - [`status_code`]: 0 healthy, [`EXIT_UNHEALTHY`] when an actor does not
//!   answer or its work stopped, [`EXIT_FAULTED`] when a folder has an
//!   error (paused: marker missing; full: `max_files`). Unhealthy wins when
//!   both hold (the node itself needs attention first).
//! - [`judge`]: whether the node is in sync. Every folder must be in sync
//!   (no fault, nothing pending, first scan done, no unindexed local
//!   change, every connected peer has sent it all it has) and at least one
//!   peer connected, unless `--allow-alone` (without a peer a freshly
//!   restarted node looks "in sync" with nobody: a rollout must not move on
//!   on that). A node that is not reachable, unhealthy or faulted is not in
//!   sync: `wait` keeps polling (it may be starting) until its timeout.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cli::{EXIT_FAULTED, EXIT_TIMEOUT, EXIT_UNHEALTHY};
use crate::client;

/// What `status`/`wait` read from `/status` (the fields they judge).
#[derive(Debug, Deserialize)]
pub struct StatusView {
    pub healthy: bool,
    #[serde(default)]
    pub peers: Vec<PeerView>,
    #[serde(default)]
    pub folders: Vec<FolderView>,
}

#[derive(Debug, Deserialize)]
pub struct PeerView {
    pub short_id: String,
    pub connected: bool,
}

#[derive(Debug, Deserialize)]
pub struct FolderView {
    pub id: String,
    pub in_sync: bool,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub state: String,
    pub error: Option<String>,
    #[serde(default)]
    pub transfers: Vec<serde_json::Value>,
    #[serde(default)]
    pub peers: Vec<FolderPeerView>,
}

#[derive(Debug, Deserialize)]
pub struct FolderPeerView {
    pub id: String,
    pub received_all: bool,
}

/// `fleetsync status`'s exit code for a reachable node.
pub fn status_code(st: &StatusView) -> i32 {
    if !st.healthy {
        EXIT_UNHEALTHY
    } else if st.folders.iter().any(|f| f.error.is_some()) {
        EXIT_FAULTED
    } else {
        0
    }
}

/// The node is in sync, or the reasons it is not (one per line, each
/// naming what to look at).
pub fn judge(st: &StatusView, allow_alone: bool) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    if !st.healthy {
        why.push("node unhealthy: an actor does not answer (see fleetsync status)".to_string());
    }
    let connected = st.peers.iter().filter(|p| p.connected).count();
    if connected == 0 && !allow_alone {
        why.push(format!(
            "no peer connected (of {} known); pass --allow-alone for a fleet of one",
            st.peers.len()
        ));
    }
    for f in &st.folders {
        why.extend(folder_reasons(f));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Why one folder is not in sync (empty when it is).
fn folder_reasons(f: &FolderView) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(e) = &f.error {
        why.push(format!("folder {}: {e}", f.id));
    }
    if f.in_sync {
        return why;
    }
    if f.pending > 0 {
        why.push(format!(
            "folder {}: {} remote changes pending, {} transfers in flight",
            f.id,
            f.pending,
            f.transfers.len()
        ));
    }
    let behind: Vec<&str> = f
        .peers
        .iter()
        .filter(|p| !p.received_all)
        .map(|p| short(&p.id))
        .collect();
    if !behind.is_empty() {
        why.push(format!(
            "folder {}: not caught up with peer(s) {}",
            f.id,
            behind.join(", ")
        ));
    }
    if why.is_empty() {
        why.push(format!(
            "folder {}: {} (local changes not indexed yet)",
            f.id, f.state
        ));
    }
    why
}

fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

/// How often `wait` asks the node.
const POLL: Duration = Duration::from_millis(200);

/// How long the node must stay in sync before `wait` believes it: an index
/// frame a peer sent a moment ago may still be on its way (it then shows
/// as pending once received).
pub const SETTLE: Duration = Duration::from_secs(1);

/// `fleetsync wait --in-sync`: 0 once in sync for [`SETTLE`], else
/// [`EXIT_TIMEOUT`] after `timeout` with the last reasons on stderr.
/// `at` says where the node answers (asked on every poll).
pub fn wait_in_sync(
    at: &dyn Fn() -> anyhow::Result<client::Endpoint>,
    timeout: Duration,
    allow_alone: bool,
) -> i32 {
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    let mut why = vec!["no answer from the node yet".to_string()];
    loop {
        match poll(at, allow_alone) {
            Ok(()) => {
                let t = *since.get_or_insert_with(Instant::now);
                if t.elapsed() >= SETTLE {
                    println!("in sync after {:.1} s", start.elapsed().as_secs_f64());
                    return 0;
                }
            }
            Err(w) => {
                since = None;
                why = w;
            }
        }
        if start.elapsed() >= timeout {
            eprintln!(
                "fleetsync: not in sync after {}:",
                humantime::format_duration(timeout)
            );
            for w in &why {
                eprintln!("  {w}");
            }
            return EXIT_TIMEOUT;
        }
        std::thread::sleep(POLL);
    }
}

/// One look at the node; an unreachable node (not started yet, restarting)
/// is a reason to go on waiting, not an error.
fn poll(
    at: &dyn Fn() -> anyhow::Result<client::Endpoint>,
    allow_alone: bool,
) -> Result<(), Vec<String>> {
    let body = at()
        .and_then(|a| client::get(&a, "/status"))
        .map_err(|e| vec![format!("{e:#}")])?;
    let st: StatusView =
        serde_json::from_str(&body).map_err(|e| vec![format!("unexpected /status reply: {e}")])?;
    judge(&st, allow_alone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(id: &str, in_sync: bool) -> FolderView {
        FolderView {
            id: id.into(),
            in_sync,
            pending: 0,
            state: "idle".into(),
            error: None,
            transfers: vec![],
            peers: vec![FolderPeerView {
                id: "aaaaaaaaaaaaaaaa".into(),
                received_all: in_sync,
            }],
        }
    }

    fn node(healthy: bool, connected: usize, folders: Vec<FolderView>) -> StatusView {
        StatusView {
            healthy,
            peers: (0..connected.max(1))
                .map(|i| PeerView {
                    short_id: format!("p{i}"),
                    connected: i < connected,
                })
                .collect(),
            folders,
        }
    }

    #[test]
    fn in_sync_needs_every_folder_in_sync_health_and_a_peer() {
        assert_eq!(
            judge(&node(true, 1, vec![folder("a", true)]), false),
            Ok(())
        );
        let two = node(true, 2, vec![folder("a", true), folder("b", false)]);
        let why = judge(&two, false).unwrap_err();
        assert!(why.iter().any(|w| w.contains("folder b")), "{why:?}");
        assert!(!why.iter().any(|w| w.contains("folder a")), "{why:?}");
        let sick = judge(&node(false, 1, vec![folder("a", true)]), false).unwrap_err();
        assert!(sick[0].contains("unhealthy"), "{sick:?}");
    }

    #[test]
    fn alone_is_not_in_sync_unless_allowed() {
        let alone = node(true, 0, vec![folder("a", true)]);
        let why = judge(&alone, false).unwrap_err();
        assert!(why[0].contains("--allow-alone"), "{why:?}");
        assert_eq!(judge(&alone, true), Ok(()));
    }

    #[test]
    fn pending_faulted_and_behind_folders_say_why() {
        let mut f = folder("a", false);
        f.pending = 3;
        f.error = Some("marker missing".into());
        let why = judge(&node(true, 1, vec![f]), false).unwrap_err();
        assert!(
            why.iter().any(|w| w.contains("3 remote changes pending")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("marker missing")), "{why:?}");
        assert!(
            why.iter()
                .any(|w| w.contains("not caught up with peer(s) aaaaaaaaaa")),
            "{why:?}"
        );
        // A fault alone is never in sync, even if the node said in_sync.
        let mut g = folder("g", true);
        g.error = Some("full".into());
        assert!(judge(&node(true, 1, vec![g]), false).is_err());
        // Not in sync with nothing pending and every peer caught up: an
        // unindexed local change or the first scan.
        let mut h = folder("h", false);
        h.peers[0].received_all = true;
        h.state = "scanning".into();
        let why = judge(&node(true, 1, vec![h]), true).unwrap_err();
        assert!(why[0].contains("scanning"), "{why:?}");
    }

    #[test]
    fn status_code_unhealthy_before_faulted() {
        assert_eq!(status_code(&node(true, 1, vec![folder("a", true)])), 0);
        // Not in sync is not a status failure: syncing is normal work.
        assert_eq!(status_code(&node(true, 0, vec![folder("a", false)])), 0);
        let mut f = folder("a", true);
        f.error = Some("paused".into());
        assert_eq!(status_code(&node(true, 1, vec![f])), EXIT_FAULTED);
        let mut f = folder("a", true);
        f.error = Some("paused".into());
        assert_eq!(status_code(&node(false, 1, vec![f])), EXIT_UNHEALTHY);
    }

    #[test]
    fn reads_the_real_status_shape() {
        let body = r#"{"id":"x","short_id":"x","listen":[],"healthy":true,"peers":[{"id":"p","short_id":"p","connected":true,"addrs":[]}],
            "folders":[{"id":"shared","path":"/x","mode":"send-receive","state":"idle","pending":0,"in_sync":true,"error":null,
            "transfers":[],"peers":[{"id":"p","received_all":true,"sent_all":true,"sent_seq":1}]}],"actors":[]}"#;
        let st: StatusView = serde_json::from_str(body).unwrap();
        assert_eq!(judge(&st, false), Ok(()));
    }
}
