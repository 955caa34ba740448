//! Supervisor: brings a node up, owns every actor's lifecycle, and fans
//! mesh events out.
//!
//! ```text
//! start_node(config)
//!   ├─ index (redb), mesh (iroh endpoint + blob store with GC protect hook)
//!   ├─ per folder: Folder, stale temp files removed
//!   └─ Supervisor (system arbiter)
//!        ├─ Distributor, Retention          each on its own arbiter thread
//!        └─ per folder: Watcher, Hasher, Receiver
//! ```
//!
//! Every second the supervisor pings each actor. One whose mailbox is gone
//! (it stopped or its thread panicked) or that does not answer within
//! [`PING_TIMEOUT`] is replaced by a fresh instance on a new arbiter; its
//! state comes back from the index, and the sessions it served are replayed
//! to it. A restart budget ([`MAX_RESTARTS`] per [`RESTART_WINDOW`]) stops
//! crash loops: past it the node exits non-zero for systemd to restart.
//! [`NodeHandle::healthy`] feeds the systemd watchdog.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use fleetsync_config::Config;
use fleetsync_mesh::{identity, EndpointId, Mesh, MeshEvent, MeshOptions, PeerSession};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    distributor::Distributor,
    folder::Folder,
    hasher::Hasher,
    health::Health,
    index::Index,
    msg::{PeerDown, PeerUp, Ping},
    receiver::Receiver,
    retention::{self, Retention},
    slot::Slot,
    watcher::{msg::Rescan, Watcher},
};

pub const PING_EVERY: Duration = Duration::from_secs(1);
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Exit code when the restart budget is spent.
pub const EXIT_CRASH_LOOP: i32 = 70;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActorId {
    Distributor,
    Retention,
    Watcher(String),
    Hasher(String),
    Receiver(String),
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorId::Distributor => f.write_str("distributor"),
            ActorId::Retention => f.write_str("retention"),
            ActorId::Watcher(x) => write!(f, "watcher[{x}]"),
            ActorId::Hasher(x) => write!(f, "hasher[{x}]"),
            ActorId::Receiver(x) => write!(f, "receiver[{x}]"),
        }
    }
}

/// Addresses of every actor, stable across restarts.
#[derive(Clone, Default)]
pub struct Slots {
    pub distributor: Slot<Distributor>,
    pub retention: Slot<Retention>,
    pub watchers: HashMap<String, Slot<Watcher>>,
    pub hashers: HashMap<String, Slot<Hasher>>,
    pub receivers: HashMap<String, Slot<Receiver>>,
}

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
}

/// A running node, for the binary and for tests.
#[derive(Clone)]
pub struct NodeHandle {
    pub mesh: Mesh,
    pub index: Index,
    pub folders: Arc<HashMap<String, Arc<Folder>>>,
    pub slots: Slots,
    pub supervisor: Addr<Supervisor>,
    healthy: Arc<AtomicBool>,
    fatal: Arc<Fatal>,
}

/// Set when the node must exit (restart budget spent).
#[derive(Default)]
pub struct Fatal {
    code: std::sync::atomic::AtomicI32,
    notify: tokio::sync::Notify,
}

impl Fatal {
    fn raise(&self, code: i32) {
        self.code.store(code, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

impl NodeHandle {
    /// All actors answered their last ping.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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

    /// Stop actors, close connections, flush the store.
    pub async fn shutdown(&self) {
        let _ = self.supervisor.send(Shutdown).await;
        self.mesh.shutdown().await;
    }
}

/// Open everything and start the actors. Call inside an actix `System`
/// running on a multi-threaded tokio runtime.
pub async fn start_node(config: &Config) -> Result<NodeHandle, StartError> {
    crate::rt::init(tokio::runtime::Handle::current());
    let data_dir = config.data_dir.clone();
    let secret_key = identity::load_or_create(&data_dir)?;
    let index = Index::open(&data_dir.join("index.redb"))?;
    let mut static_peers = Vec::new();
    for p in &config.mesh.peers {
        let id =
            EndpointId::from_bytes(&p.id).map_err(|_| StartError::PeerId(hex::encode(p.id)))?;
        static_peers.push((id, p.addr));
    }
    let allow = match &config.mesh.allow {
        None => None,
        Some(ids) => Some(
            ids.iter()
                .map(|b| EndpointId::from_bytes(b).map_err(|_| StartError::PeerId(hex::encode(b))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let (mesh, events) = Mesh::start(MeshOptions {
        data_dir: data_dir.clone(),
        secret_key,
        listen: config.mesh.listen,
        fleet_secret: config.mesh.fleet_secret.0,
        static_peers,
        allow,
        gc: Some(retention::gc_config(index.clone(), retention::GC_EVERY)),
    })
    .await?;
    let mut folders = HashMap::new();
    for f in &config.folders {
        let content: Arc<dyn crate::content::Content> = Arc::new(mesh.clone());
        // Wiring point: `config.mesh.transfer_stall_timeout` once the key exists.
        let stall = crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT;
        let folder = Folder::new(f.clone(), index.clone(), content, mesh.short_id(), stall)?;
        prepare_folder(&folder).map_err(|source| StartError::Folder {
            folder: f.id.clone(),
            source,
        })?;
        folders.insert(f.id.clone(), folder);
    }
    let folders = Arc::new(folders);
    let mut slots = Slots::default();
    for id in folders.keys() {
        slots.watchers.insert(id.clone(), Slot::default());
        slots.hashers.insert(id.clone(), Slot::default());
        slots.receivers.insert(id.clone(), Slot::default());
    }
    let healthy = Arc::new(AtomicBool::new(false));
    let fatal = Arc::new(Fatal::default());
    let sup = Supervisor {
        fatal: fatal.clone(),
        folders: folders.clone(),
        slots: slots.clone(),
        arbiters: HashMap::new(),
        events: Some(events),
        sessions: HashMap::new(),
        restarts: RestartBudget::new(MAX_RESTARTS, RESTART_WINDOW),
        healths: HashMap::new(),
        pinging: HashSet::new(),
        healthy: healthy.clone(),
        failing: HashSet::new(),
    };
    let supervisor = sup.start();
    Ok(NodeHandle {
        mesh,
        index,
        folders,
        slots,
        supervisor,
        healthy,
        fatal,
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
    // Nothing is in flight before the receivers start.
    retention::sweep_tmp(folder, Duration::ZERO);
    retention::sweep_refs(folder, Duration::ZERO);
    Ok(())
}

/// How many restarts each actor may have within a sliding window; past
/// it, the node gives up (a crash loop is for the service manager).
#[derive(Debug)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    seen: HashMap<ActorId, VecDeque<Instant>>,
}

impl RestartBudget {
    pub fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            seen: HashMap::new(),
        }
    }

    /// Count a restart of `id` at `now`. `Err(n)`: the budget is spent
    /// (`n` earlier restarts within the window).
    pub fn spend(&mut self, id: &ActorId, now: Instant) -> Result<(), usize> {
        let q = self.seen.entry(id.clone()).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            q.pop_front();
        }
        if q.len() > self.max {
            Err(q.len() - 1)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Stop one actor's thread as if it had crashed (fault injection for tests
/// and drills); the supervisor notices on its next ping and restarts it.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct CrashActor(pub ActorId);

pub struct Supervisor {
    folders: Arc<HashMap<String, Arc<Folder>>>,
    slots: Slots,
    arbiters: HashMap<ActorId, Arbiter>,
    events: Option<mpsc::Receiver<MeshEvent>>,
    sessions: HashMap<u64, PeerSession>,
    restarts: RestartBudget,
    /// The current incarnation of each actor.
    healths: HashMap<ActorId, Arc<Health>>,
    pinging: HashSet<ActorId>,
    failing: HashSet<ActorId>,
    healthy: Arc<AtomicBool>,
    fatal: Arc<Fatal>,
}

impl Supervisor {
    fn ids(&self) -> Vec<ActorId> {
        let mut ids = vec![ActorId::Distributor, ActorId::Retention];
        for f in self.folders.keys() {
            ids.push(ActorId::Hasher(f.clone()));
            ids.push(ActorId::Watcher(f.clone()));
            ids.push(ActorId::Receiver(f.clone()));
        }
        ids
    }

    /// Start (or restart) one actor on a fresh arbiter thread.
    fn spawn_actor(&mut self, id: &ActorId) {
        let arb = Arbiter::new();
        let h = arb.handle();
        let generation = self.healths.get(id).map_or(1, |old| old.generation() + 1);
        let health = Health::new(generation);
        if let Some(old) = self.healths.insert(id.clone(), health.clone()) {
            old.retire();
        }
        match id {
            ActorId::Distributor => {
                let folders = self.folders.clone();
                let addr =
                    Distributor::start_in_arbiter(&h, move |_| Distributor::new(folders, health));
                for s in self.sessions.values() {
                    addr.do_send(PeerUp(s.clone()));
                }
                self.slots.distributor.set(addr);
            }
            ActorId::Retention => {
                let folders = self.folders.clone();
                let addr =
                    Retention::start_in_arbiter(&h, move |_| Retention::new(folders, health));
                self.slots.retention.set(addr);
            }
            ActorId::Hasher(f) => {
                let folder = self.folders[f].clone();
                let addr = Hasher::start_in_arbiter(&h, move |_| Hasher::new(folder, health));
                self.slots.hashers[f].set(addr);
                // A batch in flight to the old instance is lost: re-derive it.
                if let Some(w) = self.slots.watchers[f].get() {
                    w.do_send(Rescan);
                }
            }
            ActorId::Watcher(f) => {
                let folder = self.folders[f].clone();
                let hasher = self.slots.hashers[f].clone();
                let addr =
                    Watcher::start_in_arbiter(&h, move |_| Watcher::new(folder, hasher, health));
                self.slots.watchers[f].set(addr);
            }
            ActorId::Receiver(f) => {
                let folder = self.folders[f].clone();
                let watcher = self.slots.watchers[f].clone();
                let addr =
                    Receiver::start_in_arbiter(&h, move |_| Receiver::new(folder, watcher, health));
                for s in self.sessions.values() {
                    addr.do_send(PeerUp(s.clone()));
                }
                self.slots.receivers[f].set(addr);
            }
        }
        if let Some(old) = self.arbiters.insert(id.clone(), arb) {
            old.stop();
        }
    }

    fn restart(&mut self, id: &ActorId, why: &str, ctx: &mut Context<Self>) {
        if let Err(restarts) = self.restarts.spend(id, Instant::now()) {
            error!(actor = %id, "restarted {restarts} times in {RESTART_WINDOW:?}; giving up so the service manager restarts the node");
            self.fatal.raise(EXIT_CRASH_LOOP);
            ctx.stop();
            return;
        }
        warn!(actor = %id, "{why}; restarting it");
        self.spawn_actor(id);
    }

    fn ping(&mut self, id: ActorId, ctx: &mut Context<Self>) {
        if self.pinging.contains(&id) {
            return;
        }
        fn send<A>(slot: &Slot<A>) -> Option<ResponseFuture<Result<(), MailboxError>>>
        where
            A: Actor + Handler<Ping>,
            A::Context: actix::dev::ToEnvelope<A, Ping>,
        {
            let addr = slot.get()?;
            if !addr.connected() {
                return None;
            }
            Some(Box::pin(addr.send(Ping).timeout(PING_TIMEOUT)))
        }
        let fut = match &id {
            ActorId::Distributor => send(&self.slots.distributor),
            ActorId::Retention => send(&self.slots.retention),
            ActorId::Watcher(f) => send(&self.slots.watchers[f]),
            ActorId::Hasher(f) => send(&self.slots.hashers[f]),
            ActorId::Receiver(f) => send(&self.slots.receivers[f]),
        };
        let Some(fut) = fut else {
            self.failing.insert(id.clone());
            self.restart(&id, "actor stopped", ctx);
            return;
        };
        self.pinging.insert(id.clone());
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.pinging.remove(&id);
            match res {
                Ok(()) => {
                    act.failing.remove(&id);
                }
                Err(MailboxError::Timeout) => {
                    act.failing.insert(id.clone());
                    act.restart(&id, "actor did not answer its ping in time (stalled)", ctx);
                }
                Err(MailboxError::Closed) => {
                    act.failing.insert(id.clone());
                    act.restart(&id, "actor stopped", ctx);
                }
            }
        }));
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Order matters only for the first messages: hashers before
        // watchers, watchers before receivers.
        let ids = self.ids();
        for id in &ids {
            self.spawn_actor(id);
        }
        if let Some(rx) = self.events.take() {
            let stream =
                n0_future::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
                );
            ctx.add_stream(stream);
        }
        ctx.run_interval(PING_EVERY, |act, ctx| {
            for id in act.ids() {
                act.ping(id, ctx);
            }
            act.healthy.store(act.failing.is_empty(), Ordering::Relaxed);
        });
        info!(
            folders = self.folders.len(),
            actors = ids.len(),
            "node started"
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, arb) in self.arbiters.drain() {
            arb.stop();
        }
    }
}

impl StreamHandler<MeshEvent> for Supervisor {
    fn handle(&mut self, ev: MeshEvent, _: &mut Context<Self>) {
        match ev {
            MeshEvent::Up(s) => {
                self.sessions.insert(s.conn_id, s.clone());
                if let Some(d) = self.slots.distributor.get() {
                    d.do_send(PeerUp(s.clone()));
                }
                for r in self.slots.receivers.values() {
                    if let Some(r) = r.get() {
                        r.do_send(PeerUp(s.clone()));
                    }
                }
            }
            MeshEvent::Down { peer, conn_id } => {
                self.sessions.remove(&conn_id);
                if let Some(d) = self.slots.distributor.get() {
                    d.do_send(PeerDown { peer, conn_id });
                }
                for r in self.slots.receivers.values() {
                    if let Some(r) = r.get() {
                        r.do_send(PeerDown { peer, conn_id });
                    }
                }
            }
        }
    }

    /// The mesh closed its event channel (shutdown): nothing more to fan out,
    /// but the actors keep running until told to stop.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<CrashActor> for Supervisor {
    type Result = bool;

    fn handle(&mut self, m: CrashActor, _: &mut Context<Self>) -> bool {
        match self.arbiters.get(&m.0) {
            Some(arb) => {
                warn!(actor = %m.0, "stopping actor thread on request (fault injection)");
                arb.stop()
            }
            None => false,
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        for (_, arb) in self.arbiters.drain() {
            arb.stop();
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_budget_allows_max_per_window_per_actor() {
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let hasher = ActorId::Hasher("f".into());
        assert_eq!(b.spend(&hasher, t0), Ok(()));
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(b.spend(&ActorId::Retention, t0), Ok(()), "per actor");
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(2)), Err(2));
        // Once the window has passed, the old restarts no longer count.
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(120)), Ok(()));
    }
}
