//! Bringing a node up: identity, index, mesh, folders, then the
//! [`Supervisor`] that starts every actor. [`NodeHandle`] is what the
//! binary and the tests hold.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use actix::prelude::*;
use fleetsync_config::{Config, PeerHost};
use fleetsync_mesh::{identity, EndpointId, Mesh, MeshOptions};

use super::{
    board::Board,
    faults::{Fault, FaultError, InjectFault},
    ActorId, Settings, Shutdown, Slots, Supervisor,
};
use crate::{folder::Folder, folder_set::FolderSet, gc_gate::GcGate, index::Index, retention};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Index(#[from] crate::index::IndexError),
    #[error("{0}")]
    Mesh(#[from] fleetsync_mesh::MeshError),
    #[error("folder {folder}: {source}")]
    Folder {
        folder: String,
        #[source]
        source: PrepareError,
    },
    #[error("peer {0}: not a valid node id")]
    PeerId(String),
    #[error("the node is shutting down")]
    Stopped,
}

/// A folder could not be made ready for its actors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare {}: {source}", path.display())]
    Reserved {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] crate::rt::TaskError),
}

/// A running node, for the binary and for tests.
#[derive(Clone)]
pub struct NodeHandle {
    pub mesh: Mesh,
    pub index: Index,
    /// The node's folders (a reload may add and remove some).
    pub folders: Arc<FolderSet>,
    pub slots: Slots,
    pub supervisor: Addr<Supervisor>,
    /// What the supervisor last saw of every actor.
    pub board: Arc<Board>,
    fault_injection: bool,
    fatal: Arc<Fatal>,
    /// When blob GC runs (status reads its runs, `sweep` forces one).
    pub gc: Arc<GcGate>,
}

/// A fault to inject (`fleetsync debug …`, tests, drills).
#[derive(Debug, Clone)]
pub enum Injection {
    /// `kind` is `watcher`, `hasher`, `receiver`, `distributor` or
    /// `retention`; per-folder actors take `folder`, else the first folder.
    Actor {
        kind: String,
        folder: Option<String>,
        fault: Fault,
    },
    /// Serve blob requests without sending data for this long (peers must
    /// fail over to another member).
    HangFetch(Duration),
}

/// Set when the node must exit (restart budget spent).
#[derive(Default)]
pub struct Fatal {
    code: std::sync::atomic::AtomicI32,
    notify: tokio::sync::Notify,
}

impl Fatal {
    pub(super) fn raise(&self, code: i32) {
        self.code.store(code, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// `[mesh] allow` and `deny` as endpoint ids.
pub fn access_of(
    config: &Config,
) -> Result<(Option<Vec<EndpointId>>, Vec<EndpointId>), StartError> {
    let ids = |list: &[[u8; 32]]| {
        list.iter()
            .map(|b| EndpointId::from_bytes(b).map_err(|_| StartError::PeerId(hex::encode(b))))
            .collect::<Result<Vec<_>, _>>()
    };
    let allow = config.mesh.allow.as_deref().map(ids).transpose()?;
    Ok((allow, ids(&config.mesh.deny)?))
}

/// `[mesh] peers` and `ticket_peers` as the mesh takes them.
#[derive(Debug, Default)]
pub struct StaticPeers {
    pub addrs: Vec<(EndpointId, std::net::SocketAddr)>,
    /// Given by host name: resolved before every dial.
    pub names: Vec<(EndpointId, String, u16)>,
    /// Which of them came from a join ticket.
    pub from_ticket: Vec<EndpointId>,
}

/// The configured peers (from `peers` and `ticket_peers`).
pub fn peers_of(config: &Config) -> Result<StaticPeers, StartError> {
    let mut out = StaticPeers::default();
    for p in config.mesh.peers.iter().chain(&config.mesh.ticket_peers) {
        let id =
            EndpointId::from_bytes(&p.id).map_err(|_| StartError::PeerId(hex::encode(p.id)))?;
        if config.mesh.ticket_peers.contains(p) {
            out.from_ticket.push(id);
        }
        match &p.addr {
            PeerHost::Ip(a) => out.addrs.push((id, *a)),
            PeerHost::Name { host, port } => out.names.push((id, host.clone(), *port)),
        }
    }
    Ok(out)
}

impl NodeHandle {
    /// The supervisor is alive (its board is fresh) and every actor is
    /// healthy: what may feed the systemd watchdog.
    pub fn healthy(&self) -> bool {
        self.board.healthy()
    }

    pub fn id(&self) -> EndpointId {
        self.mesh.id()
    }

    /// Resolves with an exit code if the node gave up (crash loop).
    pub async fn fatal(&self) -> i32 {
        loop {
            let n = self.fatal.notify.notified();
            let c = self.fatal.code.load(Ordering::SeqCst);
            if c != 0 {
                return c;
            }
            n.await;
        }
    }

    /// Inject a fault — refused unless `[debug] fault_injection` is on
    /// (the one place that rule is checked).
    pub async fn inject(&self, injection: Injection) -> Result<(), FaultError> {
        if !self.fault_injection {
            return Err(FaultError::Disabled);
        }
        match injection {
            Injection::Actor {
                kind,
                folder,
                fault,
            } => {
                let folder = folder.or_else(|| self.first_folder()).unwrap_or_default();
                let actor = ActorId::parse(&kind, &folder)
                    .ok_or_else(|| FaultError::NoSuchActor(kind.clone()))?;
                let msg = InjectFault { actor, fault };
                self.supervisor
                    .send(msg)
                    .await
                    .map_err(|_| FaultError::NoSuchActor("supervisor".into()))?
            }
            Injection::HangFetch(d) => {
                tracing::warn!("fault injection: serving blobs without sending data for {d:?}");
                self.mesh.hang_blob_serving(std::time::Instant::now() + d);
                Ok(())
            }
        }
    }

    /// `fleetsync folder resume`: let the deletes from peers that the
    /// mass-delete guard holds in `folder` through ([`crate::guard`]).
    /// How many paths; `None`: no such folder.
    pub fn resume_deletes(&self, folder: &str) -> Option<u64> {
        let f = self.folders.get(folder)?;
        let n = f.deletes.lock().expect("guard lock").resume();
        // A receiver being replaced runs a round as it starts anyway.
        if let Some(r) = self.slots.receiver(folder) {
            r.do_send(crate::receiver::msg::Kick);
        }
        Some(n)
    }

    /// `fleetsync folder pause`: see [`Folder::is_paused`]. `None`: no
    /// such folder; else whether it changed (false: paused already).
    pub fn pause(&self, folder: &str) -> Option<std::io::Result<bool>> {
        Some(self.folders.get(folder)?.set_paused(true))
    }

    /// `fleetsync folder resume` of a paused folder: applying and
    /// indexing start again (a round now, and a rescan for what the
    /// watcher saw meanwhile). Whether it was paused.
    pub fn unpause(&self, folder: &str) -> Option<std::io::Result<bool>> {
        let changed = match self.folders.get(folder)?.set_paused(false) {
            Ok(changed) => changed,
            Err(e) => return Some(Err(e)),
        };
        if changed {
            self.rescan(folder);
            if let Some(r) = self.slots.receiver(folder) {
                r.do_send(crate::receiver::msg::Kick);
            }
        }
        Some(Ok(changed))
    }

    /// Is this folder paused? `None`: no such folder.
    pub fn is_paused(&self, folder: &str) -> Option<bool> {
        Some(self.folders.get(folder)?.is_paused())
    }

    /// `fleetsync folder rescan`: walk the folder now (changes the OS
    /// watch missed: a network filesystem, a mount). `false`: no such
    /// folder.
    pub fn rescan(&self, folder: &str) -> bool {
        if !self.folders.contains(folder) {
            return false;
        }
        // A watcher being replaced scans as it starts anyway.
        if let Some(w) = self.slots.watcher(folder) {
            w.do_send(crate::watcher::msg::Rescan);
        }
        true
    }

    /// Sweep every folder and run blob GC now (`fleetsync sweep`).
    pub async fn sweep(&self) -> Result<retention::SweepReport, retention::SweepError> {
        let r = self
            .slots
            .retention
            .get()
            .ok_or(retention::SweepError::NotRunning)?;
        r.send(retention::Sweep)
            .await
            .map_err(|_| retention::SweepError::NotRunning)?
    }

    fn first_folder(&self) -> Option<String> {
        self.folders.ids().into_iter().next()
    }

    /// Add a folder to the running node (a reload): made ready like at
    /// start-up, then its actors start and it is served to peers.
    pub async fn add_folder(
        &self,
        cfg: fleetsync_config::FolderConfig,
        stall: Duration,
    ) -> Result<(), StartError> {
        let content: Arc<dyn crate::content::Content> = Arc::new(self.mesh.clone());
        let id = cfg.id.clone();
        let folder = Folder::new(
            cfg,
            self.index.clone(),
            content,
            self.mesh.short_id(),
            stall,
        )?;
        let f = folder.clone();
        crate::rt::blocking(move || prepare_folder(&f))
            .await
            .map_err(|e| StartError::Folder {
                folder: id.clone(),
                source: PrepareError::Task(e),
            })?
            .map_err(|source| StartError::Folder { folder: id, source })?;
        self.supervisor
            .send(super::AddFolder(folder))
            .await
            .map_err(|_| StartError::Stopped)
    }

    /// Stop syncing a folder (a reload): its actors stop, peers are no
    /// longer served it; its files, index rows and kept versions stay.
    /// False if there was no such folder.
    pub async fn remove_folder(&self, id: &str) -> Result<bool, StartError> {
        self.supervisor
            .send(super::RemoveFolder(id.to_string()))
            .await
            .map_err(|_| StartError::Stopped)
    }

    /// Stop actors, close connections, flush the store.
    pub async fn shutdown(&self) {
        let _ = self.supervisor.send(Shutdown).await;
        self.mesh.shutdown().await;
    }
}

/// Open everything and start the actors. Call inside an actix `System`
/// running on a multi-threaded tokio runtime.
pub async fn start_node(config: &Config) -> Result<NodeHandle, StartError> {
    start_node_with(config, Settings::from_config(config)).await
}

/// [`start_node`] with supervision settings of the caller's choosing.
pub async fn start_node_with(
    config: &Config,
    settings: Settings,
) -> Result<NodeHandle, StartError> {
    crate::rt::init(tokio::runtime::Handle::current());
    let data_dir = config.data_dir.clone();
    let secret_key = identity::load_or_create(&data_dir)?;
    let index = Index::open(&data_dir.join("index.redb"))?;
    let StaticPeers {
        addrs: static_peers,
        names: static_peer_names,
        from_ticket: ticket_peers,
    } = peers_of(config)?;
    let (allow, deny) = access_of(config)?;
    let gc = Arc::new(GcGate::new(retention::GC_EVERY));
    let (mesh, events) = Mesh::start(MeshOptions {
        data_dir: data_dir.clone(),
        secret_key,
        listen: config.mesh.listen,
        fleet_secret: config.mesh.fleet_secret.0,
        static_peers,
        static_peer_names,
        allow,
        deny,
        ticket_peers,
        gc: Some(retention::gc_config(index.clone(), gc.clone())),
        peer_exchange: config.mesh.peer_exchange,
        max_peers: config.mesh.max_peers,
        mdns: config.mesh.mdns,
    })
    .await?;
    let mut folders = HashMap::new();
    for f in &config.folders {
        let content: Arc<dyn crate::content::Content> = Arc::new(mesh.clone());
        let stall = config.mesh.transfer_stall_timeout;
        let folder = Folder::new(f.clone(), index.clone(), content, mesh.short_id(), stall)?;
        prepare_folder(&folder).map_err(|source| StartError::Folder {
            folder: f.id.clone(),
            source,
        })?;
        folders.insert(f.id.clone(), folder);
    }
    let slots = Slots::default();
    for id in folders.keys() {
        slots.add_folder(id);
    }
    let folders = FolderSet::new(folders);
    mesh.set_local_content(Arc::new(crate::content::IndexedRefs {
        index: index.clone(),
        folders: folders.clone(),
    }));
    let board = Arc::new(Board::new(settings.ping_interval));
    let fatal = Arc::new(Fatal::default());
    let sup = Supervisor::new(
        settings,
        folders.clone(),
        slots.clone(),
        events,
        board.clone(),
        (fatal.clone(), gc.clone()),
    );
    let supervisor = sup.start();
    Ok(NodeHandle {
        mesh,
        index,
        folders,
        slots,
        supervisor,
        board,
        fault_injection: settings.fault_injection,
        fatal,
        gc,
    })
}

/// Make the folder usable before any actor touches it. A folder whose
/// index has content but whose marker is gone is most likely an unmounted
/// disk: it is put in a fault state rather than "synced" as empty, which
/// would delete it everywhere.
fn prepare_folder(folder: &Folder) -> Result<(), PrepareError> {
    let root = &folder.cfg.path;
    let had_content = folder
        .index
        .folder_meta(folder.id())?
        .is_some_and(|m| m.seq > 0);
    if had_content && folder.check_marker().is_err() {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|source| PrepareError::Create {
        path: root.clone(),
        source,
    })?;
    folder
        .fs
        .ensure_reserved()
        .map_err(|source| PrepareError::Reserved {
            path: root.clone(),
            source,
        })?;
    // Nothing is in flight before the receivers start: every temp file
    // and every link no record uses is an orphan of the last run.
    let head = folder.head();
    let mut swept = retention::sweep_tmp(folder, Duration::ZERO);
    swept.files += retention::sweep_refs(folder, Duration::ZERO).files;
    retention::record(folder, head, swept);
    retention::separate_refs(folder);
    Ok(())
}
