//! Supervisor: owns every actor's lifecycle, judges whether their work
//! moves, and fans mesh events out.
//!
//! ```text
//! start_node(config)                                  (node.rs)
//!   ├─ index (redb), mesh (iroh endpoint + blob store with GC protect hook)
//!   ├─ per folder: Folder, stale temp files removed
//!   └─ Supervisor (system arbiter)
//!        ├─ Distributor, Retention          each on its own arbiter thread
//!        └─ per folder: Watcher, Hasher, Receiver
//! ```
//!
//! Every `ping_interval` the supervisor pings each actor and judges its
//! [`Health`] ([`crate::health::judge`]): an actor that has work in flight
//! and no progress for `stall_timeout`, or that has not answered a ping
//! for that long, is *replaced* — its incarnation retired (its tasks
//! aborted, the generation fence closed so nothing it does later takes
//! effect), a fresh one started on a new arbiter thread (the old thread,
//! if wedged, is abandoned), its state rebuilt from the index and the
//! sessions it served replayed. An actor whose thread died (a panic) is
//! replaced at the next tick. A restart budget ([`budget`]) stops crash
//! loops: past it the node exits with [`EXIT_CRASH_LOOP`] for the service
//! manager to restart it. Each tick's judgements go on the [`board`],
//! which status, metrics and the systemd watchdog read.
//!
//! Parts: [`node`] (start-up, [`NodeHandle`]), [`board`], [`budget`],
//! [`faults`] (fault injection for tests and drills).

pub mod board;
pub mod budget;
pub mod faults;
pub mod node;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
    time::Duration,
};

use actix::prelude::*;
use fleetsync_config::{Config, SupervisorConfig};
use fleetsync_mesh::{MeshEvent, PeerSession};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use self::node::{
    access_of, peers_of, start_node, start_node_with, Injection, NodeHandle, PrepareError,
    StartError, StaticPeers,
};
use self::{
    board::{ActorState, Board},
    budget::RestartBudget,
    faults::{Fault, FaultError, InjectFault, Panic, Stall},
    node::Fatal,
};
use crate::{
    distributor::Distributor,
    folder_set::FolderSet,
    hasher::Hasher,
    health::{judge, now_ms, Health, Verdict},
    msg::{PeerDown, PeerUp, Ping},
    receiver::Receiver,
    retention::Retention,
    slot::Slot,
    watcher::{msg::HasherReplaced, Watcher},
};

/// Exit code when the restart budget is spent.
pub const EXIT_CRASH_LOOP: i32 = 70;

/// How supervision runs (`[supervisor]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub ping_interval: Duration,
    pub stall_timeout: Duration,
    pub max_restarts: usize,
    pub restart_window: Duration,
    /// `[debug] fault_injection`: [`NodeHandle::inject`] refuses unless set.
    pub fault_injection: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::of(&SupervisorConfig::default(), false)
    }
}

impl Settings {
    /// `[supervisor]` and `[debug] fault_injection` of the config.
    pub fn from_config(config: &Config) -> Self {
        Settings::of(&config.supervisor, config.debug.fault_injection)
    }

    fn of(s: &SupervisorConfig, fault_injection: bool) -> Self {
        Settings {
            ping_interval: s.ping_interval,
            stall_timeout: s.stall_timeout,
            max_restarts: s.max_restarts,
            restart_window: s.restart_window,
            fault_injection,
        }
    }
}

/// Pings an actor may miss before it counts as unhealthy on the board
/// (and the watchdog is withheld) — long before `stall_timeout` replaces it.
const PINGS_OF_GRACE: u32 = 2;

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
            ActorId::Watcher(x) => write!(f, "watcher:{x}"),
            ActorId::Hasher(x) => write!(f, "hasher:{x}"),
            ActorId::Receiver(x) => write!(f, "receiver:{x}"),
        }
    }
}

impl ActorId {
    /// `watcher`, `hasher`, … with the folder for per-folder actors.
    pub fn parse(kind: &str, folder: &str) -> Option<ActorId> {
        let f = folder.to_string();
        Some(match kind {
            "distributor" => ActorId::Distributor,
            "retention" => ActorId::Retention,
            "watcher" => ActorId::Watcher(f),
            "hasher" => ActorId::Hasher(f),
            "receiver" => ActorId::Receiver(f),
            _ => return None,
        })
    }
}

/// Addresses of every actor, stable across restarts. Per-folder slots
/// come and go with the folders (a reload).
#[derive(Clone, Default)]
pub struct Slots {
    pub distributor: Slot<Distributor>,
    pub retention: Slot<Retention>,
    folders: Arc<RwLock<HashMap<String, FolderSlots>>>,
}

/// One folder's actors.
#[derive(Clone, Default)]
pub struct FolderSlots {
    pub watcher: Slot<Watcher>,
    pub hasher: Slot<Hasher>,
    pub receiver: Slot<Receiver>,
}

impl Slots {
    pub fn folder(&self, id: &str) -> Option<FolderSlots> {
        self.folders.read().expect("slots lock").get(id).cloned()
    }

    /// The folder's receiver, if it runs.
    pub fn receiver(&self, id: &str) -> Option<Addr<Receiver>> {
        self.folder(id)?.receiver.get()
    }

    /// The folder's watcher, if it runs.
    pub fn watcher(&self, id: &str) -> Option<Addr<Watcher>> {
        self.folder(id)?.watcher.get()
    }

    fn receivers(&self) -> Vec<Addr<Receiver>> {
        let folders = self.folders.read().expect("slots lock");
        folders.values().filter_map(|f| f.receiver.get()).collect()
    }

    pub(crate) fn add_folder(&self, id: &str) {
        let mut folders = self.folders.write().expect("slots lock");
        folders.entry(id.to_string()).or_default();
    }

    fn remove_folder(&self, id: &str) {
        self.folders.write().expect("slots lock").remove(id);
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The three actors of one folder, in start order.
fn folder_actors(folder: &str) -> [ActorId; 3] {
    [
        ActorId::Hasher(folder.to_string()),
        ActorId::Watcher(folder.to_string()),
        ActorId::Receiver(folder.to_string()),
    ]
}

/// Add a folder and start its actors (a reload).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddFolder(pub Arc<crate::folder::Folder>);

/// Stop a folder's actors and take it out of the set (a reload); false if
/// there was no such folder.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct RemoveFolder(pub String);

/// Stop one actor's thread as if it had crashed (tests); the supervisor
/// notices on its next tick and restarts it.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct CrashActor(pub ActorId);

/// One actor as the supervisor keeps it.
struct Incarnation {
    health: Arc<Health>,
    arbiter: Arbiter,
    restarts: u64,
}

pub struct Supervisor {
    settings: Settings,
    folders: Arc<FolderSet>,
    slots: Slots,
    actors: HashMap<ActorId, Incarnation>,
    events: Option<mpsc::Receiver<MeshEvent>>,
    sessions: HashMap<u64, PeerSession>,
    budget: RestartBudget,
    board: Arc<Board>,
    fatal: Arc<Fatal>,
    gc: Arc<crate::gc_gate::GcGate>,
}

impl Supervisor {
    fn new(
        settings: Settings,
        folders: Arc<FolderSet>,
        slots: Slots,
        events: mpsc::Receiver<MeshEvent>,
        board: Arc<Board>,
        (fatal, gc): (Arc<Fatal>, Arc<crate::gc_gate::GcGate>),
    ) -> Self {
        Supervisor {
            budget: RestartBudget::new(settings.max_restarts, settings.restart_window),
            settings,
            folders,
            slots,
            actors: HashMap::new(),
            events: Some(events),
            sessions: HashMap::new(),
            board,
            fatal,
            gc,
        }
    }

    /// Every actor, in start order: hashers before watchers, watchers
    /// before receivers (only the first messages care).
    fn ids(&self) -> Vec<ActorId> {
        let mut ids = vec![ActorId::Distributor, ActorId::Retention];
        for f in self.folders.ids() {
            ids.extend(folder_actors(&f));
        }
        ids
    }

    /// Start (or replace) one actor: a fresh incarnation on a new arbiter
    /// thread; the old one is retired (tasks aborted, fence closed) and its
    /// thread told to stop (a wedged thread never reads that: abandoned).
    fn spawn_actor(&mut self, id: &ActorId) {
        let arbiter = Arbiter::new();
        let old = self.actors.remove(id);
        let generation = old.as_ref().map_or(1, |o| o.health.generation() + 1);
        let health = Health::new(generation);
        if let Some(old) = &old {
            old.health.retire();
            old.arbiter.stop();
        }
        self.start_in(&arbiter, id, health.clone());
        let restarts = old.map_or(0, |o| o.restarts + 1);
        self.actors.insert(
            id.clone(),
            Incarnation {
                health,
                arbiter,
                restarts,
            },
        );
    }

    fn start_in(&mut self, arbiter: &Arbiter, id: &ActorId, health: Arc<Health>) {
        let h = arbiter.handle();
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
                let gc = self.gc.clone();
                let addr =
                    Retention::start_in_arbiter(&h, move |_| Retention::new(folders, health, gc));
                self.slots.retention.set(addr);
            }
            ActorId::Hasher(f) | ActorId::Watcher(f) | ActorId::Receiver(f) => {
                let (Some(folder), Some(slots)) = (self.folders.get(f), self.slots.folder(f))
                else {
                    // Removed by a reload: nothing to start.
                    return;
                };
                self.start_folder_actor(&h, id, folder, slots, health);
            }
        }
    }

    fn start_folder_actor(
        &self,
        h: &actix::ArbiterHandle,
        id: &ActorId,
        folder: Arc<crate::folder::Folder>,
        slots: FolderSlots,
        health: Arc<Health>,
    ) {
        match id {
            ActorId::Hasher(_) => {
                let addr = Hasher::start_in_arbiter(h, move |_| Hasher::new(folder, health));
                slots.hasher.set(addr);
                // A batch at the old incarnation will never count (its
                // commits are fenced): the watcher sends it again.
                if let Some(w) = slots.watcher.get() {
                    w.do_send(HasherReplaced);
                }
            }
            ActorId::Watcher(_) => {
                let hasher = slots.hasher.clone();
                let addr =
                    Watcher::start_in_arbiter(h, move |_| Watcher::new(folder, hasher, health));
                slots.watcher.set(addr);
            }
            ActorId::Receiver(_) => {
                let watcher = slots.watcher.clone();
                let addr =
                    Receiver::start_in_arbiter(h, move |_| Receiver::new(folder, watcher, health));
                for s in self.sessions.values() {
                    addr.do_send(PeerUp(s.clone()));
                }
                slots.receiver.set(addr);
            }
            ActorId::Distributor | ActorId::Retention => {}
        }
    }

    /// A folder a reload added: its actors start like at start-up (the
    /// receiver subscribes to every connected peer).
    fn add_folder(&mut self, folder: Arc<crate::folder::Folder>) {
        let id = folder.id().to_string();
        self.slots.add_folder(&id);
        self.folders.insert(folder);
        for actor in folder_actors(&id) {
            self.spawn_actor(&actor);
        }
        self.folders_changed();
        info!(folder = %id, "folder added");
    }

    /// A folder a reload removed: its actors are retired and stopped (like
    /// a replaced incarnation, nothing they do later takes effect), it is
    /// no longer served, and nothing on disk is touched.
    fn remove_folder(&mut self, id: &str) -> bool {
        let Some(folder) = self.folders.remove(id) else {
            return false;
        };
        for actor in folder_actors(id) {
            if let Some(inc) = self.actors.remove(&actor) {
                inc.health.retire();
                inc.arbiter.stop();
            }
        }
        self.slots.remove_folder(id);
        folder.retire();
        self.folders_changed();
        info!(folder = %id, "folder removed");
        true
    }

    /// Retention sets its folder-dependent timers again (a replaced
    /// retention reads the set as it starts anyway).
    fn folders_changed(&self) {
        if let Some(r) = self.slots.retention.get() {
            r.do_send(crate::retention::FoldersChanged);
        }
    }

    /// Replace an actor, unless its restart budget is spent: then the
    /// whole node gives up.
    fn replace(&mut self, id: &ActorId, why: &str, ctx: &mut Context<Self>) {
        if let Err(restarts) = self.budget.spend(id, std::time::Instant::now()) {
            error!(actor = %id, "{why}; restarted {restarts} times in {:?}: giving up so the service manager restarts the node", self.settings.restart_window);
            self.fatal.raise(EXIT_CRASH_LOOP);
            ctx.stop();
            return;
        }
        warn!(actor = %id, "{why}; replacing it");
        self.spawn_actor(id);
    }

    /// One supervision tick: ping every actor, judge each, replace the
    /// dead and the stalled, write the board.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        for id in self.ids() {
            let why = match self.ping(&id) {
                false => Some("its thread is gone (it panicked or stopped)".to_string()),
                true => self.stalled(&id, now),
            };
            if let Some(why) = why {
                self.replace(&id, &why, ctx);
            }
        }
        self.write_board(now);
    }

    /// Send a ping (answered by the actor recording a pong on its own
    /// `Health`). False if the actor's thread is gone.
    fn ping(&self, id: &ActorId) -> bool {
        fn send<A>(slot: &Slot<A>) -> bool
        where
            A: Actor + Handler<Ping>,
            A::Context: actix::dev::ToEnvelope<A, Ping>,
        {
            match slot.get() {
                Some(addr) if addr.connected() => {
                    addr.do_send(Ping);
                    true
                }
                _ => false,
            }
        }
        match id {
            ActorId::Distributor => send(&self.slots.distributor),
            ActorId::Retention => send(&self.slots.retention),
            ActorId::Watcher(f) => self.slots.folder(f).is_some_and(|s| send(&s.watcher)),
            ActorId::Hasher(f) => self.slots.folder(f).is_some_and(|s| send(&s.hasher)),
            ActorId::Receiver(f) => self.slots.folder(f).is_some_and(|s| send(&s.receiver)),
        }
    }

    /// Why `id` must be replaced, if it must.
    fn stalled(&self, id: &ActorId, now: u64) -> Option<String> {
        let inc = self.actors.get(id)?;
        match judge(inc.health.vitals(), now, self.settings.stall_timeout) {
            Verdict::Healthy => None,
            Verdict::Stalled { idle } => Some(format!(
                "its work has not moved for {idle:?} (stall_timeout {:?})",
                self.settings.stall_timeout
            )),
            Verdict::NoAnswer { silent } => Some(format!(
                "it has not answered a ping for {silent:?} (stall_timeout {:?})",
                self.settings.stall_timeout
            )),
        }
    }

    fn write_board(&self, now: u64) {
        let grace = (self.settings.ping_interval * PINGS_OF_GRACE).as_millis() as u64;
        let states = self
            .ids()
            .iter()
            .filter_map(|id| {
                let inc = self.actors.get(id)?;
                let v = inc.health.vitals();
                let verdict = judge(v, now, self.settings.stall_timeout);
                let answering = now.saturating_sub(v.last_pong_ms) <= grace;
                Some(ActorState {
                    name: id.to_string(),
                    healthy: answering && verdict == Verdict::Healthy,
                    restarts: inc.restarts,
                    last_progress_ms: now.saturating_sub(v.last_progress_ms),
                    busy: v.busy,
                })
            })
            .collect();
        self.board.write(states);
    }

    /// Deliver a fault to an actor ([`NodeHandle::inject`] checked that
    /// fault injection is on).
    fn inject(&self, m: InjectFault) -> Result<(), FaultError> {
        fn deliver<A>(slot: Option<&Slot<A>>, fault: Fault) -> bool
        where
            A: Actor + Handler<Stall> + Handler<Panic>,
            A::Context: actix::dev::ToEnvelope<A, Stall> + actix::dev::ToEnvelope<A, Panic>,
        {
            let Some(addr) = slot.and_then(|s| s.get()) else {
                return false;
            };
            match fault {
                Fault::Stall(duration) => addr.do_send(Stall { duration }),
                Fault::Panic => addr.do_send(Panic),
            }
            true
        }
        let delivered = match &m.actor {
            ActorId::Distributor => deliver(Some(&self.slots.distributor), m.fault),
            ActorId::Retention => deliver(Some(&self.slots.retention), m.fault),
            ActorId::Watcher(f) => {
                deliver(self.slots.folder(f).map(|s| s.watcher).as_ref(), m.fault)
            }
            ActorId::Hasher(f) => deliver(self.slots.folder(f).map(|s| s.hasher).as_ref(), m.fault),
            ActorId::Receiver(f) => {
                deliver(self.slots.folder(f).map(|s| s.receiver).as_ref(), m.fault)
            }
        };
        if !delivered {
            return Err(FaultError::NoSuchActor(m.actor.to_string()));
        }
        warn!(actor = %m.actor, fault = ?m.fault, "fault injected on request");
        Ok(())
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
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
        self.write_board(now_ms());
        ctx.run_interval(self.settings.ping_interval, |act, ctx| act.tick(ctx));
        info!(
            folders = self.folders.len(),
            actors = ids.len(),
            "node started"
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, inc) in self.actors.drain() {
            inc.health.retire();
            inc.arbiter.stop();
        }
    }
}

impl Handler<InjectFault> for Supervisor {
    type Result = Result<(), FaultError>;

    fn handle(&mut self, m: InjectFault, _: &mut Context<Self>) -> Self::Result {
        self.inject(m)
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
                for r in self.slots.receivers() {
                    r.do_send(PeerUp(s.clone()));
                }
            }
            MeshEvent::Down { peer, conn_id } => {
                self.sessions.remove(&conn_id);
                if let Some(d) = self.slots.distributor.get() {
                    d.do_send(PeerDown { peer, conn_id });
                }
                for r in self.slots.receivers() {
                    r.do_send(PeerDown { peer, conn_id });
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
        match self.actors.get(&m.0).map(|inc| &inc.arbiter) {
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
        // `stopped` retires every incarnation and stops its thread.
        ctx.stop();
    }
}

impl Handler<AddFolder> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: AddFolder, _: &mut Context<Self>) {
        self.add_folder(m.0);
    }
}

impl Handler<RemoveFolder> for Supervisor {
    type Result = bool;

    fn handle(&mut self, m: RemoveFolder, _: &mut Context<Self>) -> bool {
        self.remove_folder(&m.0)
    }
}
