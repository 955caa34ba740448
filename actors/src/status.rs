//! The node's status as the admin API serves it (`fleetsync status`).
//! Built from shared counters and the index, plus a short-deadline query
//! to the receivers and the distributor, so it answers even when an actor
//! is stuck.

use std::{sync::atomic::Ordering, time::Duration};

use fleetsync_mesh::identity::short_id;
use serde::Serialize;

use crate::{distributor::msg::GetOutbound, receiver::msg::GetInbound, rt, supervisor::NodeHandle};

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub short_id: String,
    pub listen: Vec<String>,
    pub healthy: bool,
    pub peers: Vec<PeerInfo>,
    pub folders: Vec<FolderInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub id: String,
    pub short_id: String,
    pub connected: bool,
    pub addrs: Vec<String>,
    pub is_static: bool,
    pub rtt_ms: Option<f64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
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
    /// Remote changes received but not applied yet.
    pub pending: u64,
    /// Nothing pending here and every connected peer has told us it sent
    /// us all it has.
    pub in_sync: bool,
    pub conflicts: u64,
    pub rejected: u64,
    pub files_received: u64,
    pub bytes_received: u64,
    pub error: Option<String>,
    pub last_error: Option<String>,
    pub transfers: Vec<TransferInfo>,
    pub peers: Vec<FolderPeer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransferInfo {
    pub path: String,
    pub peer: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FolderPeer {
    pub id: String,
    /// We have everything the peer had when it last said so.
    pub received_all: bool,
    /// The peer has everything we had (as far as we sent it).
    pub sent_all: bool,
    pub sent_seq: u64,
}

pub async fn snapshot(node: &NodeHandle) -> NodeStatus {
    let mesh = &node.mesh;
    let peers: Vec<PeerInfo> = mesh
        .peer_status()
        .into_iter()
        .map(|p| PeerInfo {
            id: p.id.to_string(),
            short_id: short_id(&p.id).to_string(),
            connected: p.connected,
            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
            is_static: p.is_static,
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
            last_error: if p.connected { None } else { p.last_error },
        })
        .collect();
    let outbound = match node.slots.distributor.get() {
        Some(d) => d
            .send(GetOutbound)
            .timeout(QUERY_TIMEOUT)
            .await
            .unwrap_or_default(),
        None => vec![],
    };
    let connected = mesh.connected_peers();
    let mut folders = Vec::new();
    let mut ids: Vec<_> = node.folders.keys().cloned().collect();
    ids.sort();
    for id in ids {
        let ctx = node.folders[&id].clone();
        let inbound = match node.slots.receivers.get(&id).and_then(|s| s.get()) {
            Some(r) => r
                .send(GetInbound)
                .timeout(QUERY_TIMEOUT)
                .await
                .unwrap_or_default(),
            None => vec![],
        };
        let c = ctx.clone();
        let (meta, pending) = rt::blocking(move || {
            (
                c.index.folder_meta(c.id()).ok().flatten(),
                c.index.pending_count(c.id()).unwrap_or(0),
            )
        })
        .await
        .unwrap_or((None, 0));
        let st = &ctx.status;
        let fpeers: Vec<FolderPeer> = connected
            .iter()
            .map(|p| {
                let inb = inbound.iter().find(|i| i.peer == *p);
                let out = outbound.iter().find(|o| o.peer == *p && o.folder == id);
                FolderPeer {
                    id: p.to_string(),
                    received_all: !ctx.mode().can_receive() || inb.is_some_and(|i| i.caught_up),
                    sent_all: out.is_some_and(|o| o.caught_up),
                    sent_seq: out.map(|o| o.sent_seq).unwrap_or(0),
                }
            })
            .collect();
        let fault = ctx.fault();
        let in_sync = fault.is_none()
            && pending == 0
            && st.initial_scan_done.load(Ordering::Relaxed)
            && fpeers.iter().all(|p| p.received_all);
        let transfers = st
            .transfers()
            .into_iter()
            .map(|(path, t)| TransferInfo {
                path,
                peer: t.peer.clone(),
                bytes_done: t.done.load(Ordering::Relaxed),
                bytes_total: t.total,
            })
            .collect();
        let m = meta.unwrap_or(crate::index::FolderMeta {
            index_id: 0,
            seq: 0,
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
            tombstones: 0,
        });
        folders.push(FolderInfo {
            id: id.clone(),
            path: ctx.cfg.path.display().to_string(),
            mode: ctx.mode().to_string(),
            state: st.phase().as_str().to_string(),
            seq: m.seq,
            files: m.files,
            dirs: m.dirs,
            symlinks: m.symlinks,
            bytes: m.bytes,
            pending,
            in_sync,
            conflicts: st.conflicts.load(Ordering::Relaxed),
            rejected: st.rejected.load(Ordering::Relaxed),
            files_received: st.files_in.load(Ordering::Relaxed),
            bytes_received: st.bytes_in.load(Ordering::Relaxed),
            error: fault,
            last_error: st.last_error(),
            transfers,
            peers: fpeers,
        });
    }
    NodeStatus {
        id: mesh.id().to_string(),
        short_id: mesh.short_id().to_string(),
        listen: mesh.listen_addrs().iter().map(|a| a.to_string()).collect(),
        healthy: node.healthy(),
        peers,
        folders,
    }
}
