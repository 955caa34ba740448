//! [`Mesh`]: the running network side of a node.
//!
//! It owns the iroh endpoint, the blob store and the router that serves the
//! control protocol and iroh-blobs behind the [`Gate`]. It keeps one
//! authenticated connection per peer (dialing known peers with backoff,
//! accepting inbound ones, de-duplicating simultaneous dials) and reports
//! sessions coming and going as [`MeshEvent`]s. What flows over a session
//! (index streams) is the actors' business; blob fetches go through
//! [`Mesh::fetch_blob`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use iroh::{
    endpoint::{presets, Connection, QuicTransportConfig, RecvStream, SendStream, Side, VarInt},
    protocol::{AcceptError, ProtocolHandler, Router},
    Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey,
};
use iroh_blobs::{store::fs::FsStore, BlobsProtocol};
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::{
    auth::{self, Admitted, FleetKey, HandshakeError, HANDSHAKE_TIMEOUT},
    codec::read_msg,
    gate::Gate,
    identity::short_id,
    model::ShortId,
    proto::{Handshake, BLOBS_ALPN, CTRL_ALPN},
};

/// Close code when a duplicate connection between two peers is dropped.
pub const CLOSE_DUPLICATE: u32 = 409;
/// Close code for a failed handshake.
pub const CLOSE_HANDSHAKE: u32 = 401;
/// Close code on shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0;

/// How many strangers may be mid-handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 64;
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const MAX_ADDRS_PER_PEER: usize = 8;

/// What the node needs to bring the mesh up.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Blob store lives in `<data_dir>/blobs`.
    pub data_dir: PathBuf,
    pub secret_key: SecretKey,
    pub listen: SocketAddr,
    pub fleet_secret: [u8; 32],
    pub static_peers: Vec<(EndpointId, SocketAddr)>,
    pub allow: Option<Vec<EndpointId>>,
    /// Blob garbage collection (the caller decides what stays live).
    pub gc: Option<iroh_blobs::store::GcConfig>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("cannot bind {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("cannot open blob store at {path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// An authenticated connection to a fleet member.
#[derive(Debug, Clone)]
pub struct PeerSession {
    pub peer: EndpointId,
    pub short: ShortId,
    pub conn: Connection,
    pub conn_id: u64,
    pub peer_version: u32,
}

#[derive(Debug)]
pub enum MeshEvent {
    Up(PeerSession),
    Down { peer: EndpointId, conn_id: u64 },
}

/// A peer as the status page shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub id: EndpointId,
    pub connected: bool,
    pub addrs: Vec<SocketAddr>,
    pub is_static: bool,
    pub last_error: Option<String>,
    pub connected_since: Option<SystemTime>,
    pub rtt: Option<Duration>,
}

#[derive(Debug)]
struct PeerRecord {
    addrs: Vec<SocketAddr>,
    is_static: bool,
    live: Option<Live>,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Live {
    conn: Connection,
    conn_id: u64,
    since: SystemTime,
}

impl PeerRecord {
    fn new(is_static: bool) -> Self {
        PeerRecord {
            addrs: Vec::new(),
            is_static,
            live: None,
            dialing: false,
            next_dial: Instant::now(),
            backoff: BACKOFF_MIN,
            last_error: None,
        }
    }

    fn add_addr(&mut self, a: SocketAddr) {
        if a.ip().is_unspecified() || a.port() == 0 {
            return;
        }
        if !self.addrs.contains(&a) {
            self.addrs.insert(0, a);
            self.addrs.truncate(MAX_ADDRS_PER_PEER);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) endpoint: Endpoint,
    pub(crate) store: FsStore,
    key: FleetKey,
    gate: Gate,
    me: EndpointId,
    peers: Mutex<HashMap<EndpointId, PeerRecord>>,
    pub(crate) blob_conns: tokio::sync::Mutex<HashMap<EndpointId, Connection>>,
    events: mpsc::Sender<MeshEvent>,
    wake_dialer: Notify,
    handshake_slots: Semaphore,
    next_conn_id: AtomicU64,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// The running mesh. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub(crate) inner: Arc<Inner>,
    router: Router,
}

impl Mesh {
    /// Bind the endpoint, open the blob store and start serving and dialing.
    pub async fn start(opts: MeshOptions) -> Result<(Mesh, mpsc::Receiver<MeshEvent>), MeshError> {
        let blobs_dir = opts.data_dir.join("blobs");
        let mut store_opts = iroh_blobs::store::fs::options::Options::new(&blobs_dir);
        store_opts.gc = opts.gc.clone();
        // Content never lives in the store's database (its cache would grow
        // with every small file synced): data is referenced in place or kept
        // as files; only small outboards are inlined.
        store_opts.inline = iroh_blobs::store::fs::options::InlineOptions {
            max_data_inlined: 0,
            max_outboard_inlined: 16 * 1024,
        };
        let store = FsStore::load_with_opts(blobs_dir.join("blobs.db"), store_opts)
            .await
            .map_err(|e| MeshError::Store {
                path: blobs_dir.clone(),
                message: e.to_string(),
            })?;
        let gate = Gate::new(opts.allow.clone());
        let transport = QuicTransportConfig::builder()
            .keep_alive_interval(Duration::from_secs(2))
            .max_idle_timeout(Some(
                Duration::from_secs(10)
                    .try_into()
                    .expect("10s is a valid idle timeout"),
            ))
            .build();
        let bind_err = |message: String| MeshError::Bind {
            addr: opts.listen,
            message,
        };
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(opts.secret_key.clone())
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr(opts.listen)
            .map_err(|e| bind_err(e.to_string()))?
            .transport_config(transport)
            .hooks(gate.clone())
            .bind()
            .await
            .map_err(|e| bind_err(e.to_string()))?;
        let (events_tx, events_rx) = mpsc::channel(256);
        let me = endpoint.id();
        let mut peers = HashMap::new();
        for (id, addr) in &opts.static_peers {
            if *id == me {
                continue;
            }
            let rec = peers.entry(*id).or_insert_with(|| PeerRecord::new(true));
            rec.add_addr(*addr);
        }
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            store: store.clone(),
            key: FleetKey::new(&opts.fleet_secret),
            gate,
            me,
            peers: Mutex::new(peers),
            blob_conns: Default::default(),
            events: events_tx,
            wake_dialer: Notify::new(),
            handshake_slots: Semaphore::new(MAX_PENDING_HANDSHAKES),
            next_conn_id: AtomicU64::new(1),
            shutdown: tokio::sync::watch::channel(false).0,
        });
        let router = Router::builder(endpoint)
            .accept(
                CTRL_ALPN,
                CtrlHandler {
                    inner: inner.clone(),
                },
            )
            .accept(BLOBS_ALPN, BlobsProtocol::new(&store, None))
            .spawn();
        tokio::spawn(dial_loop(inner.clone()));
        info!(
            id = %me,
            addrs = ?inner.listen_addrs(),
            "mesh up"
        );
        Ok((Mesh { inner, router }, events_rx))
    }

    pub fn id(&self) -> EndpointId {
        self.inner.me
    }

    pub fn short_id(&self) -> ShortId {
        short_id(&self.inner.me)
    }

    /// The UDP addresses peers can reach us on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.inner.listen_addrs()
    }

    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let peers = self.inner.peers.lock().expect("peers lock");
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .map(|(id, r)| PeerStatus {
                id: *id,
                connected: r.live.is_some(),
                addrs: r.addrs.clone(),
                is_static: r.is_static,
                last_error: r.last_error.clone(),
                connected_since: r.live.as_ref().map(|l| l.since),
                rtt: r
                    .live
                    .as_ref()
                    .and_then(|l| l.conn.paths().iter().map(|p| p.rtt()).min()),
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// Peers with a live authenticated session right now.
    pub fn connected_peers(&self) -> Vec<EndpointId> {
        let peers = self.inner.peers.lock().expect("peers lock");
        peers
            .iter()
            .filter(|(_, r)| r.live.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Close every connection and the endpoint; stops the blob store.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        {
            let peers = self.inner.peers.lock().expect("peers lock");
            for r in peers.values() {
                if let Some(l) = &r.live {
                    l.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                }
            }
        }
        if let Err(e) = self.router.shutdown().await {
            warn!("router shutdown: {e}");
        }
        self.inner.endpoint.close().await;
    }
}

impl Inner {
    fn listen_addrs(&self) -> Vec<SocketAddr> {
        let bound = self.endpoint.bound_sockets();
        if bound.iter().all(|a| !a.ip().is_unspecified()) {
            return bound;
        }
        // Bound to a wildcard: advertise the interface addresses iroh found.
        let port = bound.first().map(|a| a.port()).unwrap_or(0);
        let mut out: Vec<SocketAddr> = self
            .endpoint
            .addr()
            .ip_addrs()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        if out.is_empty() && port != 0 {
            out.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        out
    }

    pub(crate) fn endpoint_addr(&self, peer: EndpointId) -> Option<EndpointAddr> {
        let peers = self.peers.lock().expect("peers lock");
        let rec = peers.get(&peer)?;
        if rec.addrs.is_empty() {
            return None;
        }
        let mut a = EndpointAddr::new(peer);
        for s in &rec.addrs {
            a = a.with_ip_addr(*s);
        }
        Some(a)
    }

    /// Record a new authenticated connection. Returns false if it lost the
    /// duplicate tie-break and was closed.
    fn register(
        self: &Arc<Self>,
        peer: EndpointId,
        conn: &Connection,
        admitted: &Admitted,
    ) -> Option<u64> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.peers.lock().expect("peers lock");
        let rec = peers.entry(peer).or_insert_with(|| PeerRecord::new(false));
        for a in &admitted.peer_listen {
            rec.add_addr(*a);
        }
        if let Some(a) = conn.paths().iter().find_map(|p| match p.remote_addr() {
            iroh::TransportAddr::Ip(s) => Some(*s),
            _ => None,
        }) {
            // The address an inbound connection came from is where the peer's
            // socket lives (one UDP socket serves both directions).
            if conn.side() == Side::Server {
                rec.add_addr(a);
            }
        }
        rec.backoff = BACKOFF_MIN;
        rec.last_error = None;
        if let Some(existing) = &rec.live {
            if existing.conn.close_reason().is_none() {
                // Both sides keep the connection dialed by the smaller id, so
                // a simultaneous dial converges on one connection.
                let dialer = |c: &Connection| match c.side() {
                    Side::Client => self.me,
                    Side::Server => peer,
                };
                if dialer(conn) < dialer(&existing.conn) {
                    existing
                        .conn
                        .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                } else {
                    conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                    return None;
                }
            }
        }
        rec.live = Some(Live {
            conn: conn.clone(),
            conn_id,
            since: SystemTime::now(),
        });
        Some(conn_id)
    }

    fn unregister(&self, peer: EndpointId, conn_id: u64, reason: String) -> bool {
        let mut peers = self.peers.lock().expect("peers lock");
        let Some(rec) = peers.get_mut(&peer) else {
            return false;
        };
        if rec.live.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return false;
        }
        rec.live = None;
        rec.last_error = Some(reason);
        rec.next_dial = Instant::now();
        true
    }

    /// Handshake done on either side: admit, register, announce, and watch
    /// the connection until it closes.
    async fn run_session(
        self: Arc<Self>,
        conn: Connection,
        admitted: Admitted,
        ctrl: (SendStream, RecvStream),
    ) {
        let peer = conn.remote_id();
        self.gate.admit(peer);
        let Some(conn_id) = self.register(peer, &conn, &admitted) else {
            debug!(peer = %peer.fmt_short(), "dropped duplicate connection");
            return;
        };
        info!(peer = %peer.fmt_short(), version = admitted.peer_version, "peer connected");
        let session = PeerSession {
            peer,
            short: short_id(&peer),
            conn: conn.clone(),
            conn_id,
            peer_version: admitted.peer_version,
        };
        if self.events.send(MeshEvent::Up(session)).await.is_err() {
            return;
        }
        let (_send, mut recv) = ctrl;
        // The handshake stream stays open as the control channel; for now
        // nothing is sent on it after the handshake, so any traffic is a
        // protocol violation and ends the session.
        let ctrl_watch = async {
            match read_msg::<_, Handshake>(&mut recv, auth::HANDSHAKE_LIMITS).await {
                Ok(None) | Err(_) => {}
                Ok(Some(_)) => {
                    warn!(peer = %peer.fmt_short(), "unexpected control message; closing");
                    conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"protocol violation");
                }
            }
            std::future::pending::<()>().await
        };
        let reason = tokio::select! {
            e = conn.closed() => e.to_string(),
            _ = ctrl_watch => unreachable!(),
        };
        if self.unregister(peer, conn_id, reason.clone()) {
            info!(peer = %peer.fmt_short(), %reason, "peer disconnected");
            self.blob_conns.lock().await.remove(&peer);
            let _ = self.events.send(MeshEvent::Down { peer, conn_id }).await;
            self.wake_dialer.notify_one();
        }
    }

    async fn dial(self: Arc<Self>, peer: EndpointId) {
        let res = self.clone().try_dial(peer).await;
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(rec) = peers.get_mut(&peer) {
            rec.dialing = false;
            if let Err(e) = res {
                let msg = e.to_string();
                if rec.last_error.as_deref() != Some(&msg) {
                    info!(peer = %peer.fmt_short(), "cannot connect: {msg}");
                } else {
                    debug!(peer = %peer.fmt_short(), "cannot connect: {msg}");
                }
                rec.last_error = Some(msg);
                rec.next_dial = Instant::now() + rec.backoff;
                rec.backoff = (rec.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    async fn try_dial(self: Arc<Self>, peer: EndpointId) -> Result<(), String> {
        let addr = self
            .endpoint_addr(peer)
            .ok_or_else(|| "no address known".to_string())?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.connect(addr, CTRL_ALPN))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let hs = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let admitted = auth::dial(
                &self.key,
                self.me,
                peer,
                self.listen_addrs(),
                &mut recv,
                &mut send,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((admitted, send, recv))
        };
        let (admitted, send, recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                if conn.close_reason().is_some() {
                    // Closed under us (a duplicate being dropped, a restart).
                    debug!(peer = %peer.fmt_short(), "handshake interrupted: {e}");
                } else {
                    warn!(peer = %peer.fmt_short(), "handshake failed: {e}");
                }
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake failed");
                return Err(format!("handshake failed: {e}"));
            }
            Err(_) => {
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake timeout");
                return Err("handshake timed out".into());
            }
        };
        tokio::spawn(self.run_session(conn, admitted, (send, recv)));
        Ok(())
    }
}

/// Keeps dialing known peers that have no live session, with per-peer
/// exponential backoff.
async fn dial_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next_wake = now + Duration::from_secs(1);
        {
            let mut peers = inner.peers.lock().expect("peers lock");
            for (id, rec) in peers.iter_mut() {
                if rec.live.is_some() || rec.dialing || rec.addrs.is_empty() {
                    continue;
                }
                if rec.next_dial <= now {
                    rec.dialing = true;
                    due.push(*id);
                } else {
                    next_wake = next_wake.min(rec.next_dial);
                }
            }
        }
        for id in due {
            tokio::spawn(inner.clone().dial(id));
        }
        tokio::select! {
            _ = inner.wake_dialer.notified() => {}
            _ = tokio::time::sleep_until(next_wake.into()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[derive(Debug, Clone)]
struct CtrlHandler {
    inner: Arc<Inner>,
}

impl ProtocolHandler for CtrlHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let inner = self.inner.clone();
        let peer = conn.remote_id();
        let Ok(permit) = inner.handshake_slots.try_acquire() else {
            warn!(peer = %peer.fmt_short(), "too many pending handshakes; refusing");
            conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"busy");
            return Ok(());
        };
        let hs = async {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let admitted = auth::accept(
                &inner.key,
                inner.me,
                peer,
                inner.listen_addrs(),
                &mut recv,
                &mut send,
            )
            .await
            .map_err(|e| match e {
                HandshakeError::BadProof => {
                    "it does not hold this fleet's secret (membership proof failed)".to_string()
                }
                e => e.to_string(),
            })?;
            Ok::<_, String>((admitted, send, recv))
        };
        let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await;
        drop(permit);
        match res {
            Ok(Ok((admitted, send, recv))) => {
                inner.run_session(conn, admitted, (send, recv)).await;
            }
            Ok(Err(e)) => {
                if conn.close_reason().is_some() {
                    debug!(peer = %peer.fmt_short(), "handshake interrupted: {e}");
                } else {
                    warn!(peer = %peer.fmt_short(), "rejected control connection: {e}");
                }
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake failed");
            }
            Err(_) => {
                warn!(peer = %peer.fmt_short(), "rejected control connection: handshake timed out");
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake timeout");
            }
        }
        Ok(())
    }
}
