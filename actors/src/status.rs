//! The node's status as the admin API serves it (`fleetsync status`).
//! Built from shared counters and the index, plus a short-deadline query
//! to the receivers and the distributor, so it answers even when an actor
//! is stuck.

use std::{sync::atomic::Ordering, time::Duration};

use std::sync::Arc;

use fleetsync_mesh::{identity::short_id, EndpointId};
use serde::Serialize;

use crate::{
    distributor::{msg::GetOutbound, Outbound},
    folder::{Folder, FolderMaps, FolderStatus, RecentKind},
    index::{FolderMeta, IndexError},
    receiver::{msg::GetInbound, Inbound},
    rt,
    supervisor::{board::ActorState, NodeHandle},
};

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many of a folder's latest changes status shows (`recent_changes`).
pub const RECENT_CHANGES: usize = 10;

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub short_id: String,
    pub listen: Vec<String>,
    /// The supervisor is alive and every actor healthy.
    pub healthy: bool,
    pub peers: Vec<PeerInfo>,
    /// Peers forgotten since start (nobody configured them, and they stayed
    /// unreachable or were evicted past the cap on remembered peers).
    pub peers_forgotten: u64,
    pub folders: Vec<FolderInfo>,
    /// Every actor as the supervisor last judged it.
    pub actors: Vec<ActorState>,
    /// Blob garbage collection (retention).
    pub gc: GcInfo,
    /// Sizes of in-memory maps, to check they stay bounded.
    pub debug: DebugInfo,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcInfo {
    /// Runs completed since start.
    pub runs: u64,
    /// Runs skipped because the index could not be read.
    pub skipped: u64,
    /// When the last run completed (RFC 3339), if any.
    pub last_run: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DebugInfo {
    /// Per folder id.
    pub folder_maps: std::collections::BTreeMap<String, FolderMaps>,
    pub peers_known: usize,
    pub blob_conns: usize,
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Unix ms as RFC 3339 (seconds), `None` for 0 (never).
pub fn rfc3339_ms(ms: u64) -> Option<String> {
    (ms > 0).then(|| {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerInfo {
    pub id: String,
    pub short_id: String,
    pub connected: bool,
    pub addrs: Vec<String>,
    pub is_static: bool,
    /// `static`, `exchange`, `mdns` or `inbound`: how this node came to
    /// know it.
    pub source: String,
    /// The address the session runs over, while connected.
    pub addr: Option<String>,
    /// Whether that path is direct (relays are never used: always, while
    /// connected).
    pub direct: bool,
    /// The peer's protocol version, while connected.
    pub version: Option<u32>,
    /// Seconds since the peer was last connected (0 while it is).
    pub last_seen_secs_ago: Option<u64>,
    /// When the live session began (unix ms): a session kept across a
    /// reload keeps it.
    pub connected_since_ms: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Its clock minus ours in ms (positive: it is ahead), as last
    /// measured on the live session (peers of protocol version 3 on).
    pub clock_offset_ms: Option<i64>,
    /// How far off that reading may be (half the rtt when it was taken).
    pub clock_uncertainty_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Index streams it opened past the per-session cap, refused.
    pub refused_streams: u64,
    /// File content bytes served to it since start (all folders: the
    /// blob store is shared, content is not tied to one folder).
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderInfo {
    pub id: String,
    pub path: String,
    pub mode: String,
    pub state: String,
    /// Head of this folder's index (sequence number of the last change).
    pub seq: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Deletions remembered (tombstones not expired yet).
    pub tombstones: u64,
    /// Highest sequence number whose tombstone expired (0: none): a peer
    /// that last read us below it is told to rescan.
    pub tombstone_horizon: u64,
    /// Remote changes received but not applied yet.
    pub pending: u64,
    /// Nothing pending here and every connected peer has told us it sent
    /// us all it has.
    pub in_sync: bool,
    pub conflicts: u64,
    pub rejected: u64,
    /// Remote entries deferred by the folder's caps (`max_pending`,
    /// `max_files`); their peers offer them again once there is room.
    pub deferred: u64,
    /// Entries the folder may hold (`max_files`) and its pending cap per
    /// peer (`max_pending`).
    pub max_files: u64,
    pub max_pending: u64,
    /// The folder holds `max_files` paths: new remote paths wait (`error`
    /// says so).
    pub full: bool,
    pub files_received: u64,
    pub bytes_received: u64,
    /// `bytes_received` by peer short id.
    pub bytes_received_by_peer: std::collections::BTreeMap<String, u64>,
    /// Unix seconds when a snapshot last found the folder in sync (0: not
    /// yet). The daemon takes one a second for metrics, so it is at most
    /// about a second old while the folder stays in sync.
    pub last_in_sync_secs: u64,
    /// Kept versions (`.fleetsync/versions/`): bytes on disk and count.
    pub versions_bytes: u64,
    pub versions_count: u64,
    /// `versions.local`: own deletes/replacements kept, and those whose
    /// old content had no intact copy left (in-place overwrites...).
    pub versions_local_kept: u64,
    pub versions_local_missed: u64,
    pub error: Option<String>,
    pub last_error: Option<String>,
    pub transfers: Vec<TransferInfo>,
    pub peers: Vec<FolderPeer>,
    /// Deletes from peers the mass-delete guard holds (paths; 0: none),
    /// until `fleetsync folder resume`.
    pub deletes_held: u64,
    /// Of those, live files; and the folder's files when the burst began.
    pub deletes_held_files: u64,
    pub deletes_held_of: u64,
    /// Deletes from peers waiting out the guard's grace before they are
    /// judged again (a move's creates may still arrive; 0: none).
    pub deletes_waiting: u64,
    /// Paused by the operator (`fleetsync folder pause`).
    pub paused: bool,
    /// The folder's last errors and rejected inputs (at most
    /// [`crate::folder::RECENT_EVENTS`]), oldest first.
    pub recent: Vec<RecentInfo>,
    /// The folder's latest changes, newest first (at most
    /// [`RECENT_CHANGES`]; the index's newest sequence numbers, one per
    /// path).
    pub recent_changes: Vec<ChangeInfo>,
    /// When retention last swept the folder (RFC 3339), if ever.
    pub last_sweep: Option<String>,
    /// Unix seconds of that sweep (0: never), for metrics.
    pub last_sweep_secs: u64,
    /// Files (temp files, unused links) retention removed, and their bytes.
    pub swept_files: u64,
    pub swept_bytes: u64,
}

/// One remembered error or rejected input (`fleetsync doctor` groups the
/// last minutes of them).
#[derive(Debug, Clone, Serialize)]
pub struct RecentInfo {
    /// Unix seconds.
    pub at_secs: u64,
    pub kind: RecentKind,
    /// The peer (short id) a rejected input came from.
    pub peer: Option<String>,
    pub message: String,
}

/// One of a folder's latest changes and who made it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangeInfo {
    pub path: String,
    /// This node's sequence number for it.
    pub seq: u64,
    /// Short id of the node that made the change (what the entry claims).
    pub modified_by: String,
    /// Short id of the peer it was received from (None: indexed here).
    pub received_from: Option<String>,
    pub deleted: bool,
    pub size: u64,
    /// The entry's modification time, RFC 3339 (None before 1970).
    pub mtime: Option<String>,
}

impl ChangeInfo {
    fn of(r: crate::record::Record) -> Self {
        let e = r.entry;
        let mtime = u64::try_from(e.mtime_ns).ok().map(|ns| {
            let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns);
            humantime::format_rfc3339_seconds(t).to_string()
        });
        ChangeInfo {
            path: e.path,
            seq: e.sequence,
            modified_by: e.modified_by.to_string(),
            received_from: r.received_from.map(|p| p.to_string()),
            deleted: e.deleted,
            size: e.size,
            mtime,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferInfo {
    pub path: String,
    pub peer: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderPeer {
    pub id: String,
    /// We have everything the peer had when it last said so.
    pub received_all: bool,
    /// The peer has everything we had (as far as we sent it).
    pub sent_all: bool,
    pub sent_seq: u64,
}

pub async fn snapshot(node: &NodeHandle) -> NodeStatus {
    let outbound = ask_distributor(node).await;
    let connected = node.mesh.connected_peers();
    let set = node.folders.snapshot();
    let mut ids: Vec<&String> = set.keys().collect();
    ids.sort();
    let mut folders = Vec::with_capacity(ids.len());
    for id in ids {
        let folder = set[id].clone();
        let inbound = ask_receiver(node, id).await;
        folders.push(folder_info(folder, &connected, &inbound, &outbound).await);
    }
    NodeStatus {
        id: node.mesh.id().to_string(),
        short_id: node.mesh.short_id().to_string(),
        listen: node
            .mesh
            .listen_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        healthy: node.healthy(),
        peers: peers(node),
        peers_forgotten: node.mesh.forgotten_peers(),
        folders,
        actors: node.board.actors(),
        gc: gc_info(node),
        debug: debug_info(node).await,
    }
}

fn gc_info(node: &NodeHandle) -> GcInfo {
    let r = node.gc.runs();
    GcInfo {
        runs: r.finished,
        skipped: r.skipped,
        last_run: rfc3339_ms(r.last_ms),
    }
}

async fn debug_info(node: &NodeHandle) -> DebugInfo {
    DebugInfo {
        folder_maps: (node.folders.snapshot().iter())
            .map(|(id, f)| (id.clone(), f.maps()))
            .collect(),
        peers_known: node.mesh.peer_status().len(),
        blob_conns: node.mesh.blob_conn_count().await,
    }
}

fn peers(node: &NodeHandle) -> Vec<PeerInfo> {
    node.mesh
        .peer_status()
        .into_iter()
        .map(|p| PeerInfo {
            id: p.id.to_string(),
            short_id: short_id(&p.id).to_string(),
            connected: p.connected,
            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
            is_static: p.is_static,
            source: p.source.to_string(),
            addr: p.addr.map(|a| a.to_string()),
            direct: p.addr.is_some(),
            version: p.version,
            last_seen_secs_ago: p
                .last_seen
                .map(|t| t.elapsed().map(|d| d.as_secs()).unwrap_or(0)),
            connected_since_ms: p.connected_since.map(unix_ms),
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
            clock_offset_ms: p.clock.map(|c| c.offset_ms),
            clock_uncertainty_ms: p.clock.map(|c| c.uncertainty_ms),
            last_error: if p.connected { None } else { p.last_error },
            refused_streams: p.refused_streams,
            bytes_sent: p.bytes_sent,
        })
        .collect()
}

/// What each peer has been sent (empty if the distributor does not answer
/// in time: status must answer even when an actor is stuck).
async fn ask_distributor(node: &NodeHandle) -> Vec<Outbound> {
    match node.slots.distributor.get() {
        Some(d) => d
            .send(GetOutbound)
            .timeout(QUERY_TIMEOUT)
            .await
            .unwrap_or_default(),
        None => vec![],
    }
}

async fn ask_receiver(node: &NodeHandle, folder: &str) -> Vec<Inbound> {
    match node.slots.receiver(folder) {
        Some(r) => r
            .send(GetInbound)
            .timeout(QUERY_TIMEOUT)
            .await
            .unwrap_or_default(),
        None => vec![],
    }
}

async fn folder_info(
    folder: Arc<Folder>,
    connected: &[EndpointId],
    inbound: &[Inbound],
    outbound: &[Outbound],
) -> FolderInfo {
    let (meta, pending, recent_changes) = match read_counts(&folder).await {
        Ok((meta, pending, latest)) => (meta, Some(pending), latest),
        Err(e) => {
            folder
                .status
                .error(format!("status: cannot read the index: {e}"));
            (None, None, vec![])
        }
    };
    let peers = folder_peers(&folder, connected, inbound, outbound);
    let st = &folder.status;
    let fault = folder.fault();
    let in_sync = in_sync(
        fault.is_some(),
        pending,
        st.initial_scan_done.load(Ordering::Relaxed),
        st.unindexed.load(Ordering::Relaxed),
        &peers,
    );
    let m = meta.unwrap_or_default();
    let pending = pending.unwrap_or(0);
    let (held, deletes_waiting) = {
        let guard = folder.deletes.lock().expect("guard lock");
        (guard.held(), guard.deferred_rows() as u64)
    };
    let (deletes_held, deletes_held_files, deletes_held_of) =
        held.map_or((0, 0, 0), |h| (h.paths, h.files_deleted, h.files));
    FolderInfo {
        id: folder.id().to_string(),
        path: folder.cfg.path.display().to_string(),
        mode: folder.mode().to_string(),
        state: st.phase().as_str().to_string(),
        seq: m.seq,
        files: m.files,
        dirs: m.dirs,
        symlinks: m.symlinks,
        bytes: m.bytes,
        tombstones: m.tombstones,
        tombstone_horizon: folder.readers.horizon(),
        pending,
        in_sync,
        conflicts: st.conflicts.load(Ordering::Relaxed),
        rejected: st.rejected.load(Ordering::Relaxed),
        deferred: st.deferred.load(Ordering::Relaxed),
        max_files: folder.cfg.max_files,
        max_pending: folder.cfg.max_pending,
        full: st.full().is_some(),
        files_received: st.files_in.load(Ordering::Relaxed),
        bytes_received: st.bytes_in.load(Ordering::Relaxed),
        bytes_received_by_peer: st.received_by_peer(),
        last_in_sync_secs: seen_in_sync(st, in_sync),
        versions_bytes: folder.versions.bytes(),
        versions_count: folder.versions.count() as u64,
        versions_local_kept: st.versions_local_kept.load(Ordering::Relaxed),
        versions_local_missed: st.versions_local_missed.load(Ordering::Relaxed),
        // A full folder is an error the operator must act on (delete
        // files or raise max_files), though the rest keeps syncing.
        error: fault.or_else(|| st.full()),
        last_error: st.last_error(),
        transfers: transfers(&folder),
        peers,
        deletes_held,
        deletes_held_files,
        deletes_held_of,
        deletes_waiting,
        paused: folder.is_paused(),
        recent: recent(st),
        recent_changes,
        last_sweep: rfc3339_ms(st.sweeps.last_ms.load(Ordering::Relaxed)),
        last_sweep_secs: st.sweeps.last_ms.load(Ordering::Relaxed) / 1000,
        swept_files: st.sweeps.files.load(Ordering::Relaxed),
        swept_bytes: st.sweeps.bytes.load(Ordering::Relaxed),
    }
}

/// Record now as the folder's last moment in sync if it is; the last
/// recorded one (unix seconds, 0: never).
fn seen_in_sync(st: &crate::folder::FolderStatus, in_sync: bool) -> u64 {
    if in_sync {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        st.last_in_sync_secs.store(now, Ordering::Relaxed);
    }
    st.last_in_sync_secs.load(Ordering::Relaxed)
}

/// Reading a folder's counters for status failed.
#[derive(Debug, thiserror::Error)]
enum CountsError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Task(#[from] rt::TaskError),
}

/// The folder's counters, how many remote changes wait, and its latest
/// changes.
async fn read_counts(
    folder: &Arc<Folder>,
) -> Result<(Option<FolderMeta>, u64, Vec<ChangeInfo>), CountsError> {
    let f = folder.clone();
    rt::try_blocking(move || {
        let meta = f.index.folder_meta(f.id())?;
        let pending = f.index.pending_count(f.id())?;
        let latest = f.index.latest(f.id(), RECENT_CHANGES)?;
        Ok((
            meta,
            pending,
            latest.into_iter().map(ChangeInfo::of).collect(),
        ))
    })
    .await
}

/// In sync: no fault, nothing pending (as far as the index can tell: an
/// unreadable index is not in sync), the first scan done, no local change
/// the watcher knows of still missing from the index, and every connected
/// peer has told us it sent all it has.
fn in_sync(
    fault: bool,
    pending: Option<u64>,
    scanned: bool,
    unindexed: bool,
    peers: &[FolderPeer],
) -> bool {
    !fault && pending == Some(0) && scanned && !unindexed && peers.iter().all(|p| p.received_all)
}

fn folder_peers(
    folder: &Folder,
    connected: &[EndpointId],
    inbound: &[Inbound],
    outbound: &[Outbound],
) -> Vec<FolderPeer> {
    connected
        .iter()
        .map(|p| {
            let inb = inbound.iter().find(|i| i.peer == *p);
            let out = outbound
                .iter()
                .find(|o| o.peer == *p && o.folder == folder.id());
            FolderPeer {
                id: p.to_string(),
                received_all: !folder.mode().can_receive() || inb.is_some_and(|i| i.caught_up),
                sent_all: out.is_some_and(|o| o.caught_up),
                sent_seq: out.map(|o| o.sent_seq).unwrap_or(0),
            }
        })
        .collect()
}

fn recent(st: &FolderStatus) -> Vec<RecentInfo> {
    st.recent()
        .into_iter()
        .map(|e| RecentInfo {
            at_secs: e
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kind: e.kind,
            peer: e.peer,
            message: e.message,
        })
        .collect()
}

fn transfers(folder: &Folder) -> Vec<TransferInfo> {
    folder
        .status
        .transfers()
        .into_iter()
        .map(|(path, t)| TransferInfo {
            path,
            peer: t.peer,
            bytes_done: t.done.load(Ordering::Relaxed),
            bytes_total: t.total,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(received_all: bool) -> FolderPeer {
        FolderPeer {
            id: "p".into(),
            received_all,
            sent_all: true,
            sent_seq: 1,
        }
    }

    #[test]
    fn in_sync_needs_no_fault_nothing_pending_a_scan_nothing_unindexed_and_every_peer_caught_up() {
        let all = [peer(true), peer(true)];
        assert!(in_sync(false, Some(0), true, false, &all));
        assert!(
            in_sync(false, Some(0), true, false, &[]),
            "alone counts as in sync"
        );
        assert!(!in_sync(true, Some(0), true, false, &all), "fault");
        assert!(!in_sync(false, Some(3), true, false, &all), "pending");
        assert!(!in_sync(false, None, true, false, &all), "index unreadable");
        assert!(
            !in_sync(false, Some(0), false, false, &all),
            "first scan not done"
        );
        assert!(
            !in_sync(false, Some(0), true, true, &all),
            "the watcher holds changes the index does not have yet"
        );
        assert!(!in_sync(
            false,
            Some(0),
            true,
            false,
            &[peer(true), peer(false)]
        ));
    }
}
