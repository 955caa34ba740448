//! [`Mesh`]: the running network side of a node.
//!
//! It owns the iroh endpoint, the blob store and the router that serves the
//! control protocol and iroh-blobs behind the [`Gate`]. It keeps one
//! authenticated connection per peer (dialing known peers with backoff,
//! accepting inbound ones, de-duplicating simultaneous dials) and reports
//! sessions coming and going as [`MeshEvent`]s. Index streams run on a
//! [`PeerSession`] through [`crate::index_stream`]; blob operations are in
//! [`crate::blobs`].
//!
//! Steps, by function: [`Mesh::start`] (`open_store`, `bind_endpoint`,
//! `static_peers`, router, `dial_loop`); dialing (`due_dials` → `dial` →
//! `try_dial`); accepting (`CtrlHandler::accept`, which takes a slot from
//! [`Admission`] first, → `accept_handshake`);
//! both then `run_session` (`register` with the duplicate tie-break
//! `new_conn_wins`, `MeshEvent::Up`, `control`: peer lists both ways
//! through [`crate::exchange`] and `learn`, `session_ended`). Past
//! `max_peers` live sessions only configured peers are dialed.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use iroh::{
    endpoint::{
        presets, ConnectError, Connection, ConnectionError, QuicTransportConfig, RecvStream,
        SendStream, Side, VarInt,
    },
    protocol::{AcceptError, ProtocolHandler, Router},
    Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey,
};
use iroh_blobs::{store::fs::FsStore, BlobsProtocol};
use iroh_mdns_address_lookup::MdnsAddressLookup;
use n0_future::{Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::{
    admission::{Admission, Permit},
    auth::{self, Admitted, FleetKey, HandshakeError, HANDSHAKE_TIMEOUT},
    backoff::{self, Backoff},
    clock::{self, ClockOffset},
    codec::{read_msg, write_msg, CodecError},
    exchange::{self, Control},
    gate::{Gate, CLOSE_FORBIDDEN},
    identity::short_id,
    mdns,
    model::ShortId,
    proto::{BLOBS_ALPN, CTRL_ALPN},
};

/// Close code when a duplicate connection between two peers is dropped.
pub const CLOSE_DUPLICATE: u32 = 409;
/// Close code for a failed handshake.
pub const CLOSE_HANDSHAKE: u32 = 401;
/// Close code on shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0;

pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Redial within this after a peer was too busy with strangers.
const BUSY_RETRY: Duration = Duration::from_millis(200);
const MAX_ADDRS_PER_PEER: usize = 8;
/// Session events waiting for the node: it drains them at once, this is
/// slack for bursts (every peer reconnecting after a restart).
const EVENT_QUEUE: usize = 256;
/// QUIC keep-alive: keeps an idle session (nothing changing) from timing
/// out, well inside [`IDLE_TIMEOUT`].
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A peer silent this long is gone: its session ends and dialing resumes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Outboards up to this size live in the store's database; content itself
/// never does (see [`Mesh::start`]).
const MAX_OUTBOARD_INLINED: usize = 16 * 1024;
/// How long after a connection was registered a second one with the same
/// peer may still be the other half of a simultaneous dial (both sides
/// dialing at once; a dial on a working link completes well within this).
/// Later, the peer dialed again because it lost the first connection (it
/// restarted, or its side timed out): ours is dead even if we have not
/// noticed yet, which takes up to [`IDLE_TIMEOUT`], and keeping it would
/// turn the peer away as a duplicate until then.
const SIMULTANEOUS_DIAL_WINDOW: Duration = Duration::from_secs(3);
/// A peer nobody configured that is not connected is forgotten after this
/// many dials in a row failed (about five minutes at [`BACKOFF_MAX`]): its
/// record, gate membership and known-lane admission go, and the dial loop
/// stops dialling it. A real member that comes back dials us (or is told
/// of again by peer exchange) and is remembered anew. Without this, every
/// identity a secret holder ever made stayed dialled for good.
const FORGET_AFTER_FAILED_DIALS: u32 = 30;
/// Peers nobody configured that we remember at most. Past it, registering
/// a new one forgets the idle one seen longest ago (live sessions and
/// configured peers are never evicted).
pub const MAX_REMEMBERED_PEERS: usize = 1024;
/// The dial loop looks at its peers at least this often, even when nothing
/// wakes it.
const DIAL_TICK: Duration = Duration::from_secs(1);
/// A host-name lookup taking longer than this fails the dial (which backs
/// off and resolves again next time).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Mesh::set_static_peers`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticPeersChanged {
    pub added: Vec<EndpointId>,
    pub removed: Vec<EndpointId>,
}

/// What the node needs to bring the mesh up.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Blob store lives in `<data_dir>/blobs`.
    pub data_dir: PathBuf,
    pub secret_key: SecretKey,
    pub listen: SocketAddr,
    pub fleet_secret: [u8; 32],
    pub static_peers: Vec<(EndpointId, SocketAddr)>,
    /// Static peers given by host name and port: resolved before every
    /// dial, so a peer whose address changes is found again on reconnect.
    pub static_peer_names: Vec<(EndpointId, String, u16)>,
    pub allow: Option<Vec<EndpointId>>,
    /// Refused on every protocol, never dialed, never passed on.
    pub deny: Vec<EndpointId>,
    /// Which of the static peers came from a join ticket (for status).
    pub ticket_peers: Vec<EndpointId>,
    /// Blob garbage collection (the caller decides what stays live).
    pub gc: Option<iroh_blobs::store::GcConfig>,
    /// Tell members which members we know and dial those they tell us of.
    pub peer_exchange: bool,
    /// Live sessions past which learned peers are no longer dialed.
    pub max_peers: usize,
    /// Find fleet members on the LAN with mDNS (and be found).
    pub mdns: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: BindError,
    },
    #[error("cannot open blob store at {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why the endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error(transparent)]
    Address(#[from] iroh::endpoint::InvalidSocketAddr),
    #[error(transparent)]
    Socket(#[from] iroh::endpoint::BindError),
}

/// Why a new control connection did not become a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailed {
    #[error(transparent)]
    Stream(ConnectionError),
    #[error(transparent)]
    Auth(HandshakeError),
    #[error("handshake timed out")]
    Timeout,
    #[error("handshake slot taken by a newer stranger")]
    Evicted,
}

/// Why dialing a peer did not give a session (it is tried again later).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    #[error("no address known")]
    NoAddress,
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("handshake failed: {0}")]
    Handshake(#[source] HandshakeFailed),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("the peer is busy with other handshakes")]
    Busy,
}

impl From<HandshakeFailed> for DialError {
    fn from(e: HandshakeFailed) -> Self {
        match e {
            HandshakeFailed::Timeout => DialError::HandshakeTimeout,
            e => DialError::Handshake(e),
        }
    }
}

/// An authenticated connection to a fleet member. Index streams run on it
/// through [`crate::index_stream`].
#[derive(Debug, Clone)]
pub struct PeerSession {
    pub peer: EndpointId,
    pub short: ShortId,
    pub(crate) conn: Connection,
    pub conn_id: u64,
    pub peer_version: u32,
    /// Index streams refused on this session (over the per-session cap);
    /// shown in the peer's status.
    pub(crate) refused_streams: Arc<AtomicU64>,
    /// Folders the peer was seen to share on this session (it subscribed
    /// to them from us): wakes our subscription that it answered "not
    /// shared" before (a reload added the folder there).
    pub(crate) shares: Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>,
}

impl PeerSession {
    /// One more index stream of this session refused.
    pub(crate) fn count_refused_stream(&self) {
        self.refused_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Index streams of this peer refused so far.
    pub(crate) fn refused_streams_before(&self) -> u64 {
        self.refused_streams.load(Ordering::Relaxed)
    }

    /// The peer subscribed to `folder`, one we share: it shares it too.
    /// Call only for folders we share (what bounds the map).
    pub fn peer_shares(&self, folder: &str) {
        self.shares_notify(folder).notify_one();
    }

    /// What [`Self::peer_shares`] wakes for `folder` (a permit is kept if
    /// nobody waits yet).
    pub(crate) fn shares_notify(&self, folder: &str) -> Arc<tokio::sync::Notify> {
        let mut shares = self.shares.lock().expect("shares lock");
        shares.entry(folder.to_string()).or_default().clone()
    }
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
    /// How we came to know it: `static` (configured), `exchange` (a member
    /// told us), `inbound` (it connected to us first).
    pub source: &'static str,
    pub last_error: Option<String>,
    pub connected_since: Option<SystemTime>,
    /// The address the live session runs over (direct: relays are off).
    pub addr: Option<SocketAddr>,
    /// The peer's protocol version, while connected.
    pub version: Option<u32>,
    /// Now while connected; when the last session ended otherwise.
    pub last_seen: Option<SystemTime>,
    pub rtt: Option<Duration>,
    /// Its clock against ours, as last measured (on this session or one
    /// it replaced); `None` while not connected.
    pub clock: Option<ClockOffset>,
    /// Index streams it opened past the per-session cap, refused.
    pub refused_streams: u64,
    /// File content bytes served to it since start.
    pub bytes_sent: u64,
}

#[derive(Debug)]
struct PeerRecord {
    addrs: Vec<SocketAddr>,
    /// Configured host names (and ports), looked up before every dial.
    names: Vec<(String, u16)>,
    /// What `names` resolved to at the last dial (replaced each time).
    resolved: Vec<SocketAddr>,
    is_static: bool,
    /// Proved membership to us at least once (a session): only such peers
    /// are passed on in peer exchange.
    proven: bool,
    /// The member whose peer list told us of it (until it proves itself).
    learned_from: Option<EndpointId>,
    /// Found on the LAN by mDNS.
    found_by_mdns: bool,
    /// A static peer that came from a join ticket.
    from_ticket: bool,
    /// When its last session ended (now, while it is connected).
    last_seen: Option<SystemTime>,
    live: Option<Live>,
    dialing: bool,
    next_dial: Instant,
    /// Waits after failed dials (reset by a session or a config change).
    backoff: Backoff,
    last_error: Option<String>,
    /// Dials in a row that failed (reset by a session).
    failed_dials: u32,
    /// Index streams of its sessions refused (over the cap).
    refused_streams: Arc<AtomicU64>,
    /// Its latest clock reading, from whichever of its sessions carried
    /// it: a reading stays true of the peer's clock when a duplicate
    /// connection replaces the session it came on (the replacement's own
    /// reading may come only a `CLOCK_EVERY` later).
    clock: Option<ClockOffset>,
}

#[derive(Debug)]
struct Live {
    conn: Connection,
    conn_id: u64,
    since: SystemTime,
    /// When it was registered (monotonic, for the duplicate tie-break).
    registered: Instant,
    /// The peer's protocol version (from the handshake).
    version: u32,
}

impl PeerRecord {
    fn new(is_static: bool) -> Self {
        PeerRecord {
            addrs: Vec::new(),
            names: Vec::new(),
            resolved: Vec::new(),
            is_static,
            proven: false,
            learned_from: None,
            found_by_mdns: false,
            from_ticket: false,
            last_seen: None,
            live: None,
            dialing: false,
            next_dial: Instant::now(),
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            last_error: None,
            failed_dials: 0,
            refused_streams: Arc::default(),
            clock: None,
        }
    }

    /// A peer nobody configured, idle, whose dials keep failing: forget it.
    fn forgettable(&self) -> bool {
        !self.is_static
            && self.live.is_none()
            && !self.dialing
            && self.failed_dials >= FORGET_AFTER_FAILED_DIALS
    }

    /// Remember where the peer can be reached: newest first, no duplicates,
    /// at most [`MAX_ADDRS_PER_PEER`]; unusable addresses are ignored.
    fn add_addr(&mut self, a: SocketAddr) {
        if a.ip().is_unspecified() || a.port() == 0 {
            return;
        }
        if !self.addrs.contains(&a) {
            self.addrs.insert(0, a);
            self.addrs.truncate(MAX_ADDRS_PER_PEER);
        }
    }

    fn source(&self) -> &'static str {
        if self.from_ticket {
            "ticket"
        } else if self.is_static {
            "static"
        } else if self.learned_from.is_some() {
            "exchange"
        } else if self.found_by_mdns {
            "mdns"
        } else {
            "inbound"
        }
    }

    /// Should the dial loop dial this peer now?
    fn wants_dial(&self, now: Instant) -> bool {
        self.live.is_none() && !self.dialing && self.dialable() && self.next_dial <= now
    }

    /// Whether there is anything to dial: an address or a name to resolve.
    fn dialable(&self) -> bool {
        !self.addrs.is_empty() || !self.names.is_empty()
    }

    /// The peer turned us away while strangers flood it: its admission
    /// lets newcomers in as the flood churns, so try again soon (at a
    /// random point of the next [`BUSY_RETRY`], so that members do not
    /// retry in step) rather than backing off, which would leave a member
    /// nobody configured out for long. Returns whether the error is news.
    fn turned_away(&mut self, msg: String, now: Instant) -> bool {
        let news = self.last_error.as_deref() != Some(msg.as_str());
        self.last_error = Some(msg);
        self.next_dial = now + backoff::spread(BUSY_RETRY);
        news
    }

    /// A dial failed: back off (doubling, up to [`BACKOFF_MAX`]), waiting
    /// a random part of the upper half of the backoff so that the nodes
    /// of a fleet that lost the same peer (a hub restarting) do not redial
    /// it in step. Returns whether the error is news (worth an info line,
    /// not a debug one).
    fn dial_failed(&mut self, msg: String, now: Instant) -> bool {
        let news = self.last_error.as_deref() != Some(msg.as_str());
        self.last_error = Some(msg);
        self.next_dial = now + self.backoff.next_wait();
        self.failed_dials = self.failed_dials.saturating_add(1);
        news
    }
}

/// At [`MAX_REMEMBERED_PEERS`] peers nobody configured, forget the idle
/// one seen longest ago (never seen counts as oldest) to make room for a
/// new one; returns it. With none idle (all live or being dialled) nothing
/// is evicted: live sessions end, and their records become evictable.
fn make_room(peers: &mut HashMap<EndpointId, PeerRecord>) -> Option<EndpointId> {
    let learned = peers.values().filter(|r| !r.is_static).count();
    if learned < MAX_REMEMBERED_PEERS {
        return None;
    }
    let oldest = peers
        .iter()
        .filter(|(_, r)| !r.is_static && r.live.is_none() && !r.dialing)
        .min_by_key(|(_, r)| r.last_seen)
        .map(|(id, _)| *id)?;
    peers.remove(&oldest);
    Some(oldest)
}

/// After a session ends, the redial waits a random moment up to this:
/// enough to spread a whole fleet's redials of a restarted hub, short
/// enough not to matter for one node's recovery.
const REDIAL_SPREAD: Duration = Duration::from_millis(500);

/// Of two live connections between the same pair, does the `new` one
/// replace the `existing` one (registered `existing_age` ago)? Within
/// [`SIMULTANEOUS_DIAL_WINDOW`] both sides keep the connection dialed by
/// the smaller endpoint id, so a simultaneous dial converges on one
/// connection without any message; `me` and `peer` are from this side's
/// point of view, `Side` is our side of each connection. Past it, the new
/// one wins: the peer only dials when it has no connection to us.
fn new_conn_wins(
    me: EndpointId,
    peer: EndpointId,
    new: Side,
    existing: Side,
    existing_age: Duration,
) -> bool {
    if existing_age > SIMULTANEOUS_DIAL_WINDOW {
        return true;
    }
    let dialer = |side| match side {
        Side::Client => me,
        Side::Server => peer,
    };
    dialer(new) < dialer(existing)
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
    /// Bumped when a member proves itself: the exchange sends lists again.
    members_changed: tokio::sync::watch::Sender<u64>,
    peer_exchange: bool,
    max_peers: usize,
    /// Who may run a handshake now (see [`crate::admission`]).
    pub(crate) admission: Admission,
    next_conn_id: AtomicU64,
    /// Peers forgotten (see [`FORGET_AFTER_FAILED_DIALS`] and
    /// [`MAX_REMEMBERED_PEERS`]).
    forgotten_peers: AtomicU64,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Holds blob requests while set (fault injection).
    pub(crate) hang: crate::blobs::HangSwitch,
    /// Content bytes served to each member.
    sent: crate::blobs::Sent,
    /// Where the store keeps its data files ([`crate::blobs::Writeback`]).
    pub(crate) store_paths: iroh_blobs::store::fs::options::PathOptions,
    /// Content held outside the store, brought in when asked for.
    pub(crate) lazy: crate::lazy::Lazy,
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
        let store = open_store(&opts).await?;
        let gate = Gate::new(opts.allow.clone(), opts.deny.clone());
        let tag = mdns::fleet_tag(&opts.fleet_secret);
        let lan = opts.mdns.then(|| lan_lookup(&opts, &tag)).flatten();
        let endpoint = bind_endpoint(&opts, &gate, lan.as_ref(), &tag).await?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let lazy = crate::lazy::Lazy::new(store.clone());
        let (serve_events, hang, sent) = crate::blobs::serve_events(gate.clone(), lazy.clone());
        let me = endpoint.id();
        let admission = Admission::new();
        for id in opts.static_peers.iter().map(|(id, _)| id) {
            admission.remember(*id);
        }
        for id in opts.allow.iter().flatten() {
            admission.remember(*id);
        }
        // A denied (or not allowed) configured peer is never dialed.
        let peers = static_peers(me, &opts.static_peers, &opts.static_peer_names)
            .into_iter()
            .filter(|(id, _)| gate.allowed(id))
            .map(|(id, mut rec)| {
                rec.from_ticket = opts.ticket_peers.contains(&id);
                (id, rec)
            })
            .collect();
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
            members_changed: tokio::sync::watch::channel(0).0,
            peer_exchange: opts.peer_exchange,
            max_peers: opts.max_peers,
            admission,
            // Starts at 1 so that no session is ever numbered 0.
            next_conn_id: AtomicU64::new(1),
            forgotten_peers: AtomicU64::new(0),
            shutdown: tokio::sync::watch::channel(false).0,
            hang,
            sent,
            store_paths: store_paths(&opts.data_dir),
            lazy,
        });
        let ctrl = CtrlHandler {
            inner: inner.clone(),
        };
        let router = Router::builder(endpoint)
            .accept(CTRL_ALPN, ctrl)
            .accept(BLOBS_ALPN, BlobsProtocol::new(&store, Some(serve_events)))
            .spawn();
        tokio::spawn(dial_loop(inner.clone()));
        if let Some(lan) = lan {
            let found = mdns::members(lan.subscribe().await, me, tag);
            tokio::spawn(learn_from_lan(inner.clone(), found));
            info!("mDNS on: finding fleet members on the local network");
        }
        info!(id = %me, addrs = ?inner.listen_addrs(), "mesh up");
        Ok((Mesh { inner, router }, events_rx))
    }

    pub fn id(&self) -> EndpointId {
        self.inner.me
    }

    pub fn short_id(&self) -> ShortId {
        short_id(&self.inner.me)
    }

    /// Where content the node indexed without importing it is found, so
    /// that peers asking for it get it ([`crate::lazy`]). Set once, when
    /// the node's folders are open; `false` if it was set already.
    pub fn set_local_content(&self, source: Arc<dyn crate::lazy::LocalContent>) -> bool {
        self.inner.lazy.set_source(source)
    }

    /// Peers forgotten since start: idle ones nobody configured whose dials
    /// kept failing, or evicted past [`MAX_REMEMBERED_PEERS`].
    pub fn forgotten_peers(&self) -> u64 {
        self.inner.forgotten_peers.load(Ordering::Relaxed)
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
                addrs: r.addrs.iter().chain(&r.resolved).copied().collect(),
                is_static: r.is_static,
                source: r.source(),
                last_error: r.last_error.clone(),
                connected_since: r.live.as_ref().map(|l| l.since),
                addr: r.live.as_ref().and_then(|l| remote_socket(&l.conn)),
                version: r.live.as_ref().map(|l| l.version),
                last_seen: if r.live.is_some() {
                    Some(SystemTime::now())
                } else {
                    r.last_seen
                },
                rtt: r.live.as_ref().and_then(|l| session_rtt(&l.conn)),
                clock: r.live.as_ref().and(r.clock),
                refused_streams: r.refused_streams.load(Ordering::Relaxed),
                bytes_sent: self.inner.sent.to(id),
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// Apply a new `[mesh] allow` / `deny` (a config reload): nodes no
    /// longer allowed lose their membership, their sessions are closed at
    /// once (403) and their records dropped, so they are neither dialed
    /// nor passed on; their redials are refused by the gate. Returns the
    /// ids cut off.
    pub async fn set_access(
        &self,
        allow: Option<Vec<EndpointId>>,
        deny: Vec<EndpointId>,
    ) -> Vec<EndpointId> {
        self.inner.gate.set_access(allow, deny);
        let cut: Vec<EndpointId> = {
            let mut peers = self.inner.peers.lock().expect("peers lock");
            let cut: Vec<EndpointId> = peers
                .keys()
                .filter(|id| !self.inner.gate.allowed(id))
                .copied()
                .collect();
            for id in &cut {
                // A live session ends the usual way (the node hears of it;
                // `unregister` then drops the record); idle records go now.
                match peers.get(id).and_then(|r| r.live.as_ref()) {
                    Some(live) => live
                        .conn
                        .close(VarInt::from_u32(CLOSE_FORBIDDEN), b"denied"),
                    None => {
                        peers.remove(id);
                    }
                }
            }
            cut
        };
        let mut blob_conns = self.inner.blob_conns.lock().await;
        for id in &cut {
            if let Some(conn) = blob_conns.remove(id) {
                conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), b"denied");
            }
            info!(peer = %id.fmt_short(), "access revoked: disconnected");
        }
        cut
    }

    /// Apply a new configured peer list (a config reload): peers added are
    /// remembered and dialed at once; peers removed are no longer
    /// configured (a live session stays; an idle one is forgotten like any
    /// peer nobody configured). Sessions of peers on both lists are not
    /// touched. A denied (or not allowed) peer is never added.
    pub fn set_static_peers(
        &self,
        configured: &[(EndpointId, SocketAddr)],
        named: &[(EndpointId, String, u16)],
        from_ticket: &[EndpointId],
    ) -> StaticPeersChanged {
        let inner = &self.inner;
        let wanted: HashMap<EndpointId, PeerRecord> = static_peers(inner.me, configured, named)
            .into_iter()
            .filter(|(id, _)| inner.gate.allowed(id))
            .collect();
        let mut changed = StaticPeersChanged::default();
        {
            let mut peers = inner.peers.lock().expect("peers lock");
            for (id, rec) in peers.iter_mut() {
                if rec.is_static && !wanted.contains_key(id) {
                    rec.is_static = false;
                    rec.from_ticket = false;
                    rec.names.clear();
                    changed.removed.push(*id);
                }
            }
            for (id, new) in wanted {
                inner.admission.remember(id);
                let rec = peers.entry(id).or_insert_with(|| PeerRecord::new(false));
                if !rec.is_static {
                    rec.is_static = true;
                    // Dial it now, not after a backoff learned before.
                    rec.next_dial = Instant::now();
                    rec.backoff.reset();
                    changed.added.push(id);
                }
                for a in new.addrs {
                    rec.add_addr(a);
                }
                rec.names = new.names;
                rec.from_ticket = from_ticket.contains(&id);
            }
        }
        changed.added.sort();
        changed.removed.sort();
        inner.wake_dialer.notify_one();
        changed
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
        // Fails only if the dial loop is already gone, which is the goal.
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

/// Where the store in `<data_dir>/blobs` keeps its files.
fn store_paths(data_dir: &std::path::Path) -> iroh_blobs::store::fs::options::PathOptions {
    iroh_blobs::store::fs::options::PathOptions::new(&data_dir.join("blobs"))
}

/// The blob store in `<data_dir>/blobs`, with the caller's GC.
async fn open_store(opts: &MeshOptions) -> Result<FsStore, MeshError> {
    let blobs_dir = opts.data_dir.join("blobs");
    let mut store_opts = iroh_blobs::store::fs::options::Options::new(&blobs_dir);
    store_opts.path = store_paths(&opts.data_dir);
    store_opts.gc = opts.gc.clone();
    // Content never lives in the store's database (its cache would grow
    // with every small file synced): data is referenced in place or kept
    // as files; only small outboards are inlined.
    store_opts.inline = iroh_blobs::store::fs::options::InlineOptions {
        max_data_inlined: 0,
        max_outboard_inlined: MAX_OUTBOARD_INLINED as u64,
    };
    FsStore::load_with_opts(blobs_dir.join("blobs.db"), store_opts)
        .await
        .map_err(|e| MeshError::Store {
            path: blobs_dir,
            source: e.into(),
        })
}

/// One endpoint on exactly `opts.listen`: no relay, every connection
/// through the gate.
async fn bind_endpoint(
    opts: &MeshOptions,
    gate: &Gate,
    lan: Option<&MdnsAddressLookup>,
    tag: &[u8; 32],
) -> Result<Endpoint, MeshError> {
    let bind_err = |source: BindError| MeshError::Bind {
        addr: opts.listen,
        source,
    };
    let idle = IDLE_TIMEOUT
        .try_into()
        .expect("IDLE_TIMEOUT is a valid idle timeout");
    // Everything else stays at noq's defaults on purpose: measured on L1
    // (1 GiB over a 1 Gbit/s tbf link, 2 cores, 2026-11-30) no throughput
    // knob beat them. An 8 MiB stream receive window lost the connection
    // over and over (one transfer took 446 s); a 32 MiB send window, BBR,
    // ack frequency (every 10 packets) and a 1452-byte initial MTU were
    // level or slower; without segmentation offload (GSO) sender CPU
    // doubled. See docs/benchmarks.md.
    let transport = QuicTransportConfig::builder()
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(Some(idle))
        .build();
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(opts.secret_key.clone())
        .relay_mode(RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr(opts.listen)
        .map_err(|e| bind_err(e.into()))?
        .transport_config(transport)
        .hooks(gate.clone());
    if let Some(lan) = lan {
        builder = builder
            .address_lookup(lan.clone())
            .user_data_for_address_lookup(mdns::user_data_value(tag));
    }
    builder.bind().await.map_err(|e| bind_err(e.into()))
}

/// The fleet's mDNS lookup, or `None` (logged) where the host has no
/// multicast: the node runs on without LAN discovery.
fn lan_lookup(opts: &MeshOptions, tag: &[u8; 32]) -> Option<MdnsAddressLookup> {
    match mdns::lookup(opts.secret_key.public(), tag) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("{e}; LAN discovery off (configured peers and peer exchange still work)");
            None
        }
    }
}

/// Dial the fleet members mDNS finds.
async fn learn_from_lan(inner: Arc<Inner>, mut found: impl Stream<Item = mdns::Found> + Unpin) {
    while let Some(f) = found.next().await {
        inner.learn_mdns(f);
    }
}

/// The configured peers (never ourselves), to be dialed from the start.
fn static_peers(
    me: EndpointId,
    configured: &[(EndpointId, SocketAddr)],
    named: &[(EndpointId, String, u16)],
) -> HashMap<EndpointId, PeerRecord> {
    let mut peers = HashMap::new();
    for (id, addr) in configured.iter().filter(|(id, _)| *id != me) {
        let rec = peers.entry(*id).or_insert_with(|| PeerRecord::new(true));
        rec.add_addr(*addr);
    }
    for (id, host, port) in named.iter().filter(|(id, ..)| *id != me) {
        let rec = peers.entry(*id).or_insert_with(|| PeerRecord::new(true));
        rec.names.push((host.clone(), *port));
    }
    peers
}

/// Look up every name; the addresses of those that resolve, or the first
/// error if none does. A name answering nothing is an error too.
async fn resolve_names<F, Fut>(
    names: &[(String, u16)],
    lookup: F,
) -> Result<Vec<SocketAddr>, DialError>
where
    F: Fn(String, u16) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let mut out = Vec::new();
    let mut first_err = None;
    for (host, port) in names {
        let res = tokio::time::timeout(RESOLVE_TIMEOUT, lookup(host.clone(), *port))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "lookup timed out",
                ))
            });
        match res {
            Ok(addrs) if !addrs.is_empty() => out.extend(addrs),
            Ok(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
                first_err.get_or_insert((host.clone(), e));
            }
            Err(e) => {
                first_err.get_or_insert((host.clone(), e));
            }
        }
    }
    match first_err {
        Some((host, source)) if out.is_empty() => Err(DialError::Resolve { host, source }),
        _ => Ok(out),
    }
}

/// The system resolver.
async fn system_lookup(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
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
        if rec.addrs.is_empty() && rec.resolved.is_empty() {
            return None;
        }
        let mut a = EndpointAddr::new(peer);
        for s in rec.addrs.iter().chain(&rec.resolved) {
            a = a.with_ip_addr(*s);
        }
        Some(a)
    }

    /// Record a new authenticated connection and return its id, or `None`
    /// if it lost the duplicate tie-break and was closed.
    fn register(&self, peer: EndpointId, conn: &Connection, admitted: &Admitted) -> Option<u64> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.peers.lock().expect("peers lock");
        if !peers.contains_key(&peer) {
            if let Some(evicted) = make_room(&mut peers) {
                self.forgotten(evicted, "to make room for a new peer");
            }
        }
        let rec = peers.entry(peer).or_insert_with(|| PeerRecord::new(false));
        learn_addrs(rec, conn, admitted);
        rec.failed_dials = 0;
        if !rec.proven {
            rec.proven = true;
            self.members_changed.send_modify(|n| *n += 1);
        }
        rec.backoff.reset();
        rec.last_error = None;
        if let Some(existing) = rec
            .live
            .as_ref()
            .filter(|l| l.conn.close_reason().is_none())
        {
            let age = existing.registered.elapsed();
            if new_conn_wins(self.me, peer, conn.side(), existing.conn.side(), age) {
                close_duplicate(&existing.conn);
            } else {
                close_duplicate(conn);
                return None;
            }
        }
        rec.live = Some(Live {
            conn: conn.clone(),
            conn_id,
            since: SystemTime::now(),
            registered: Instant::now(),
            version: admitted.peer_version,
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
        rec.last_seen = Some(SystemTime::now());
        rec.last_error = Some(reason);
        rec.next_dial = Instant::now() + backoff::spread(REDIAL_SPREAD);
        if !self.gate.allowed(&peer) {
            peers.remove(&peer); // revoked while connected
        }
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
        self.admission.remember(peer);
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
            refused_streams: self.refused_streams_of(peer),
            shares: Arc::default(),
        };
        if self.events.send(MeshEvent::Up(session)).await.is_err() {
            return;
        }
        let reason = tokio::select! {
            e = conn.closed() => e.to_string(),
            never = self.clone().control(&conn, admitted.peer_version, ctrl) => match never {},
        };
        self.session_ended(peer, conn_id, reason).await;
    }

    /// The session's connection closed: forget it, tell the node, redial.
    async fn session_ended(&self, peer: EndpointId, conn_id: u64, reason: String) {
        if !self.unregister(peer, conn_id, reason.clone()) {
            return;
        }
        info!(peer = %peer.fmt_short(), %reason, "peer disconnected");
        self.blob_conns.lock().await.remove(&peer);
        // Fails only when the node stopped listening (shutting down).
        let _ = self.events.send(MeshEvent::Down { peer, conn_id }).await;
        self.wake_dialer.notify_one();
    }

    async fn dial(self: Arc<Self>, peer: EndpointId) {
        let res = self.clone().try_dial(peer).await;
        self.dial_done(peer, res);
    }

    /// After a dial: back off on failure, and forget a peer nobody
    /// configured once its dials kept failing.
    fn dial_done(&self, peer: EndpointId, res: Result<(), DialError>) {
        let mut peers = self.peers.lock().expect("peers lock");
        let Some(rec) = peers.get_mut(&peer) else {
            return;
        };
        rec.dialing = false;
        if let Err(e) = res {
            let msg = e.to_string();
            let news = if let DialError::Busy = e {
                rec.turned_away(msg.clone(), Instant::now())
            } else {
                rec.dial_failed(msg.clone(), Instant::now())
            };
            if news {
                info!(peer = %peer.fmt_short(), "cannot connect: {msg}");
            } else {
                debug!(peer = %peer.fmt_short(), "cannot connect: {msg}");
            }
            if rec.forgettable() {
                peers.remove(&peer);
                self.forgotten(peer, "after failing to connect too often");
            }
        }
    }

    /// `peer`'s record is gone: it also loses its gate membership and its
    /// known-lane admission (unless configured in the allowlist), and is
    /// no longer passed on. Counted for status.
    fn forgotten(&self, peer: EndpointId, why: &str) {
        self.gate.revoke(&peer);
        if !self.gate.listed(&peer) {
            self.admission.forget(&peer);
        }
        self.members_changed.send_modify(|n| *n += 1);
        self.forgotten_peers.fetch_add(1, Ordering::Relaxed);
        info!(peer = %peer.fmt_short(), "forgot peer {why}");
    }

    /// The refused-streams counter of `peer`'s record (a fresh one if the
    /// record is gone meanwhile).
    fn refused_streams_of(&self, peer: EndpointId) -> Arc<AtomicU64> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .get(&peer)
            .map(|r| r.refused_streams.clone())
            .unwrap_or_default()
    }

    /// Connect to `peer` and prove membership both ways; on success the
    /// session runs in its own task.
    async fn try_dial(self: Arc<Self>, peer: EndpointId) -> Result<(), DialError> {
        self.resolve_peer(peer).await?;
        let addr = self.endpoint_addr(peer).ok_or(DialError::NoAddress)?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.connect(addr, CTRL_ALPN))
            .await
            .map_err(|_| DialError::ConnectTimeout)??;
        let handshake = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(HandshakeFailed::Stream)?;
            let listen = self.listen_addrs();
            let res = auth::dial(&self.key, self.me, peer, listen, &mut recv, &mut send).await;
            let admitted = res_or_refuse(res, &mut send).await?;
            Ok((admitted, send, recv))
        };
        let (admitted, send, recv) = match with_deadline(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(done) => done,
            Err(e) => {
                if turned_away(&conn) {
                    return Err(DialError::Busy);
                }
                handshake_failed(&conn, &e, Role::Dialer);
                return Err(e.into());
            }
        };
        tokio::spawn(self.run_session(conn, admitted, (send, recv)));
        Ok(())
    }

    /// Resolve the peer's configured host names afresh (every dial, so a
    /// moved peer is found on reconnect) into its `resolved` addresses.
    async fn resolve_peer(&self, peer: EndpointId) -> Result<(), DialError> {
        let names = {
            let peers = self.peers.lock().expect("peers lock");
            match peers.get(&peer) {
                Some(rec) if !rec.names.is_empty() => rec.names.clone(),
                _ => return Ok(()),
            }
        };
        let res = resolve_names(&names, system_lookup).await;
        let mut peers = self.peers.lock().expect("peers lock");
        let Some(rec) = peers.get_mut(&peer) else {
            return Ok(());
        };
        match res {
            Ok(resolved) => rec.resolved = resolved,
            // Addresses learned from an earlier session may still work.
            Err(e) if rec.addrs.is_empty() => return Err(e),
            Err(e) => debug!(peer = %peer.fmt_short(), "{e}; dialing known addresses"),
        }
        Ok(())
    }

    /// The acceptor's side of the handshake on a new control connection,
    /// within the deadline of its admission lane.
    async fn accept_handshake(
        &self,
        conn: &Connection,
        permit: &Permit,
    ) -> Result<Handshaken, HandshakeFailed> {
        let peer = conn.remote_id();
        let handshake = async {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(HandshakeFailed::Stream)?;
            // The stream shows up with its first bytes: the peer spoke.
            permit.spoke();
            let listen = self.listen_addrs();
            let res = auth::accept(&self.key, self.me, peer, listen, &mut recv, &mut send).await;
            let admitted = res_or_refuse(res, &mut send).await?;
            Ok((admitted, send, recv))
        };
        with_deadline(permit.deadline(), handshake).await
    }
}

/// How long a refusal may take to reach the peer before the connection is
/// closed (closing discards what is still unsent).
const REFUSAL_FLUSH: Duration = Duration::from_millis(250);

/// On a failed handshake in which we told the peer why, let that message
/// arrive (bounded by [`REFUSAL_FLUSH`]): a member with a wrong secret or an
/// old version then logs the reason instead of a bare close.
async fn res_or_refuse(
    res: Result<Admitted, HandshakeError>,
    send: &mut SendStream,
) -> Result<Admitted, HandshakeFailed> {
    let e = match res {
        Ok(admitted) => return Ok(admitted),
        Err(e) => e,
    };
    // Finishing fails only if the stream is already gone: nothing to flush.
    if e.refusal_sent() && send.finish().is_ok() {
        // Either outcome ends the wait; the handshake has failed regardless.
        tokio::time::timeout(REFUSAL_FLUSH, send.stopped())
            .await
            .ok();
    }
    Err(HandshakeFailed::Auth(e))
}

/// A handshake's result: the peer's admission and the control stream.
type Handshaken = (Admitted, SendStream, RecvStream);

/// Run a handshake within `deadline`.
async fn with_deadline(
    deadline: Duration,
    handshake: impl Future<Output = Result<Handshaken, HandshakeFailed>>,
) -> Result<Handshaken, HandshakeFailed> {
    tokio::time::timeout(deadline, handshake)
        .await
        .unwrap_or(Err(HandshakeFailed::Timeout))
}

/// Our side of a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Dialer,
    Acceptor,
}

/// Log a failed handshake and close the connection. Quietly if the
/// connection was closed under us (a duplicate being dropped, a restart);
/// a dialer's timeout is reported by the dial loop ("cannot connect").
fn handshake_failed(conn: &Connection, e: &HandshakeFailed, role: Role) {
    let peer = conn.remote_id().fmt_short();
    match e {
        HandshakeFailed::Timeout => {
            if role == Role::Acceptor {
                warn!(%peer, "rejected control connection: {e}");
            }
            conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake timeout");
            return;
        }
        // Part of a flood's churn (or a member's retry): not news.
        HandshakeFailed::Evicted => {
            debug!(%peer, "rejected control connection: {e}");
            conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"evicted");
            return;
        }
        _ => {}
    }
    if conn.close_reason().is_some() {
        debug!(%peer, "handshake interrupted: {e}");
    } else if role == Role::Acceptor {
        warn!(%peer, "rejected control connection: {e}");
    } else {
        warn!(%peer, "handshake failed: {e}");
    }
    conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"handshake failed");
}

/// Did the peer close the connection because its handshake slots for
/// strangers were taken ("busy", "evicted")? That says nothing about us
/// or the link: see [`PeerRecord::turned_away`].
fn turned_away(conn: &Connection) -> bool {
    match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(close)) => {
            close.error_code == VarInt::from_u32(CLOSE_HANDSHAKE)
                && matches!(&close.reason[..], b"busy" | b"evicted")
        }
        _ => false,
    }
}

/// Learn where the peer can be reached from a new connection.
fn learn_addrs(rec: &mut PeerRecord, conn: &Connection, admitted: &Admitted) {
    for a in &admitted.peer_listen {
        rec.add_addr(*a);
    }
    // The address an inbound connection came from is where the peer's
    // socket lives (one UDP socket serves both directions).
    if conn.side() == Side::Server {
        if let Some(a) = remote_socket(conn) {
            rec.add_addr(a);
        }
    }
}

/// The peer's UDP address on the connection's first IP path.
fn remote_socket(conn: &Connection) -> Option<SocketAddr> {
    conn.paths().iter().find_map(|p| match p.remote_addr() {
        iroh::TransportAddr::Ip(s) => Some(*s),
        _ => None,
    })
}

fn close_duplicate(conn: &Connection) {
    conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
}

/// Records a peer's list may add that have not proven themselves yet:
/// per member, and over all, so no member can fill our memory or make us
/// dial an address list in bulk.
const MAX_UNPROVEN_PER_SOURCE: usize = 128;
const MAX_UNPROVEN: usize = 1024;
/// Peer lists go out at most this often on a session.
const EXCHANGE_MIN_GAP: Duration = Duration::from_secs(1);
/// Close code for a broken control-stream rule.
pub const CLOSE_PROTOCOL: u32 = 400;

/// Members found by mDNS that have not proven themselves yet, at most
/// (anyone on the LAN can advertise our tag).
const MAX_UNPROVEN_MDNS: usize = 32;

impl Inner {
    /// A member found on the LAN: remember it (within the cap) and dial.
    /// A peer we know already keeps the addresses it told us itself.
    fn learn_mdns(&self, found: mdns::Found) {
        if !self.gate.allowed(&found.id) {
            return;
        }
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(rec) = peers.get_mut(&found.id) {
            if rec.addrs.is_empty() {
                found.addrs.iter().for_each(|a| rec.add_addr(*a));
            }
        } else {
            let unproven = peers
                .values()
                .filter(|r| r.found_by_mdns && !r.proven)
                .count();
            if unproven >= MAX_UNPROVEN_MDNS {
                debug!(peer = %found.id.fmt_short(), "mDNS find over the cap; ignored");
                return;
            }
            let mut rec = PeerRecord::new(false);
            rec.found_by_mdns = true;
            found.addrs.iter().for_each(|a| rec.add_addr(*a));
            peers.insert(found.id, rec);
            info!(peer = %found.id.fmt_short(), addrs = ?found.addrs, "found by mDNS");
        }
        drop(peers);
        self.wake_dialer.notify_one();
    }

    /// The members we know (proven by a session once), with addresses.
    fn known_members(&self) -> Vec<(EndpointId, Vec<SocketAddr>)> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .iter()
            .filter(|(id, r)| r.proven && self.gate.allowed(id))
            .map(|(id, r)| (*id, r.addrs.clone()))
            .collect()
    }

    /// Remember the members `from` told us of, within the caps, and wake
    /// the dial loop. A peer we know already keeps its own addresses
    /// (hearsay never displaces what a peer told us itself).
    fn learn(&self, from: EndpointId, hints: Vec<exchange::PeerHint>) {
        let mut peers = self.peers.lock().expect("peers lock");
        let unproven = |peers: &HashMap<EndpointId, PeerRecord>, src: Option<EndpointId>| {
            peers
                .values()
                .filter(|r| !r.proven && r.learned_from.is_some())
                .filter(|r| src.is_none() || r.learned_from == src)
                .count()
        };
        let mut added = 0;
        for h in hints.into_iter().filter(|h| self.gate.allowed(&h.id)) {
            if let Some(rec) = peers.get_mut(&h.id) {
                if rec.addrs.is_empty() {
                    h.addrs.iter().for_each(|a| rec.add_addr(*a));
                }
                continue;
            }
            if unproven(&peers, Some(from)) >= MAX_UNPROVEN_PER_SOURCE
                || unproven(&peers, None) >= MAX_UNPROVEN
            {
                debug!(peer = %from.fmt_short(), "peer list over the cap; rest ignored");
                break;
            }
            let mut rec = PeerRecord::new(false);
            rec.learned_from = Some(from);
            h.addrs.iter().for_each(|a| rec.add_addr(*a));
            peers.insert(h.id, rec);
            added += 1;
        }
        drop(peers);
        if added > 0 {
            info!(peer = %from.fmt_short(), added, "learned members by peer exchange");
            self.wake_dialer.notify_one();
        }
    }

    /// The session's control stream after the handshake: peer lists and
    /// clock readings both ways. Never returns; the caller waits for the
    /// connection to close.
    async fn control(
        self: Arc<Self>,
        conn: &Connection,
        peer_version: u32,
        (send, recv): (SendStream, RecvStream),
    ) -> Infallible {
        let sending = async {
            if let Err(e) = self.send_control(conn, peer_version, send).await {
                debug!(peer = %conn.remote_id().fmt_short(), "control stream: {e}");
            }
        };
        tokio::join!(sending, self.read_control(conn, recv));
        std::future::pending().await
    }

    /// Send our member list now and again whenever it changes (with peer
    /// exchange on), and our clock now and every [`clock::CLOCK_EVERY`]
    /// (to peers that know the message: version 2 ones close the
    /// connection on any message they do not know).
    async fn send_control(
        &self,
        conn: &Connection,
        peer_version: u32,
        mut send: SendStream,
    ) -> Result<(), CodecError> {
        let peer = conn.remote_id();
        let local = remote_socket(conn).is_some_and(|a| exchange::only_this_host(&a.ip()));
        let lists = self.peer_exchange;
        let clocks = peer_version >= clock::CLOCK_SINCE_VERSION;
        let mut changed = self.members_changed.subscribe();
        let mut last = None;
        let mut clock_due = tokio::time::interval(clock::CLOCK_EVERY);
        clock_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if lists {
                let hints = exchange::hints_for(&self.known_members(), peer, local);
                if last.as_ref() != Some(&hints) {
                    let peers = hints.clone();
                    write_msg(&mut send, &Control::Peers { peers }).await?;
                    last = Some(hints);
                }
            }
            tokio::select! {
                r = changed.changed(), if lists => {
                    if r.is_err() {
                        return Ok(());
                    }
                    tokio::time::sleep(EXCHANGE_MIN_GAP).await;
                    changed.borrow_and_update();
                }
                _ = clock_due.tick(), if clocks => {
                    let unix_ms = clock::now_unix_ms();
                    write_msg(&mut send, &Control::Clock { unix_ms }).await?;
                }
                else => return Ok(()),
            }
        }
    }

    /// Read the peer's control messages until the stream ends; a message
    /// that breaks the rules closes the connection.
    async fn read_control(&self, conn: &Connection, mut recv: RecvStream) {
        let from = conn.remote_id();
        loop {
            let violation = match read_msg::<_, Control>(&mut recv, exchange::CONTROL_LIMITS).await
            {
                Ok(Some((Control::Peers { peers }, _))) => {
                    match exchange::accept_hints(peers, self.me, from) {
                        Ok(hints) if self.peer_exchange => {
                            self.learn(from, hints);
                            continue;
                        }
                        Ok(_) => continue,
                        Err(e) => e.to_string(),
                    }
                }
                Ok(Some((Control::Clock { unix_ms }, _))) => {
                    let rtt = session_rtt(conn).unwrap_or_default();
                    let reading = clock::offset(unix_ms, SystemTime::now(), rtt);
                    self.note_clock(from, reading);
                    continue;
                }
                Ok(None) => return,
                Err(e) if conn.close_reason().is_some() => {
                    debug!(peer = %from.fmt_short(), "control stream: {e}");
                    return;
                }
                Err(e) => e.to_string(),
            };
            warn!(peer = %from.fmt_short(), "control message refused: {violation}; closing");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
            return;
        }
    }

    /// Keep the peer's latest clock reading (whichever of its sessions
    /// carried it).
    fn note_clock(&self, peer: EndpointId, reading: clock::ClockOffset) {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(rec) = peers.get_mut(&peer) {
            rec.clock = Some(reading);
        }
    }
}

/// The session's round-trip time: its best path's estimate.
fn session_rtt(conn: &Connection) -> Option<Duration> {
    conn.paths().iter().map(|p| p.rtt()).min()
}

/// Keeps dialing known peers that have no live session, with per-peer
/// exponential backoff.
async fn dial_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let (due, next_wake) = due_dials(&inner, Instant::now());
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

/// The peers to dial now (marked as dialing) and when to look again.
fn due_dials(inner: &Inner, now: Instant) -> (Vec<EndpointId>, Instant) {
    let mut due = Vec::new();
    let mut next_wake = now + DIAL_TICK;
    let mut peers = inner.peers.lock().expect("peers lock");
    // Sessions we have or are dialing: past max_peers only configured
    // peers are dialed; learned ones reach us through the members we
    // have (bounded degree).
    let mut busy = peers
        .values()
        .filter(|r| r.live.is_some() || r.dialing)
        .count();
    for (id, rec) in peers.iter_mut() {
        if busy >= inner.max_peers && !rec.is_static {
            continue;
        }
        if rec.wants_dial(now) {
            rec.dialing = true;
            busy += 1;
            due.push(*id);
        } else if rec.live.is_none() && !rec.dialing && rec.dialable() {
            next_wake = next_wake.min(rec.next_dial);
        }
    }
    (due, next_wake)
}

#[derive(Debug, Clone)]
struct CtrlHandler {
    inner: Arc<Inner>,
}

impl CtrlHandler {
    /// A handshake slot for this connection, or close it as busy. Refusals
    /// are logged in batches: a flood must not become a log flood.
    fn admit(&self, conn: &Connection) -> Option<Permit> {
        let ip: Option<IpAddr> = remote_socket(conn).map(|a| a.ip());
        match self.inner.admission.enter(conn.remote_id(), ip) {
            Ok(permit) => Some(permit),
            Err(busy) => {
                if let Some(n) = busy.report {
                    warn!(
                        "too many pending handshakes from strangers: refused {n} \
                         connection(s) (latest from {ip:?})"
                    );
                }
                conn.close(VarInt::from_u32(CLOSE_HANDSHAKE), b"busy");
                None
            }
        }
    }
}

impl ProtocolHandler for CtrlHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Some(permit) = self.admit(&conn) else {
            return Ok(());
        };
        let res = tokio::select! {
            res = self.inner.accept_handshake(&conn, &permit) => res,
            () = permit.evicted() => Err(HandshakeFailed::Evicted),
        };
        drop(permit);
        match res {
            Ok((admitted, send, recv)) => {
                self.inner
                    .clone()
                    .run_session(conn, admitted, (send, recv))
                    .await;
            }
            Err(e) => handshake_failed(&conn, &e, Role::Acceptor),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> EndpointId {
        SecretKey::generate().public()
    }

    /// Two ids, the smaller first.
    fn ordered_pair() -> (EndpointId, EndpointId) {
        let (a, b) = (id(), id());
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// An existing connection registered just now: a simultaneous dial.
    const FRESH: Duration = Duration::ZERO;

    #[test]
    fn the_connection_dialed_by_the_smaller_id_wins_on_both_sides() {
        let (small, big) = ordered_pair();
        // The smaller side dialed the new one (it is the client of it); the
        // existing one was dialed by the bigger side.
        assert!(new_conn_wins(small, big, Side::Client, Side::Server, FRESH));
        // The bigger side sees the same two connections the other way round.
        assert!(new_conn_wins(big, small, Side::Server, Side::Client, FRESH));
        // And when the bigger side's dial is the new one, both keep the old.
        assert!(!new_conn_wins(
            big,
            small,
            Side::Client,
            Side::Server,
            FRESH
        ));
        assert!(!new_conn_wins(
            small,
            big,
            Side::Server,
            Side::Client,
            FRESH
        ));
    }

    #[test]
    fn a_second_connection_dialed_the_same_way_keeps_the_first() {
        let (small, big) = ordered_pair();
        for side in [Side::Client, Side::Server] {
            assert!(!new_conn_wins(small, big, side, side, FRESH));
            assert!(!new_conn_wins(big, small, side, side, FRESH));
        }
    }

    /// Regression (issue 8): a peer killed with -9 and restarted dials
    /// again; our old connection to it looks alive until it times out, and
    /// won the tie-break, so the restarted peer was turned away as a
    /// duplicate for up to IDLE_TIMEOUT after every restart.
    #[test]
    fn a_peer_dialing_again_after_the_simultaneous_dial_window_replaces_the_old_connection() {
        let (small, big) = ordered_pair();
        let old = SIMULTANEOUS_DIAL_WINDOW + Duration::from_millis(1);
        for (me, peer) in [(small, big), (big, small)] {
            for new in [Side::Client, Side::Server] {
                for existing in [Side::Client, Side::Server] {
                    assert!(new_conn_wins(me, peer, new, existing, old));
                }
            }
        }
    }

    #[test]
    fn add_addr_ignores_unusable_addresses() {
        let mut rec = PeerRecord::new(false);
        rec.add_addr(addr("0.0.0.0:4000"));
        rec.add_addr(addr("[::]:4000"));
        rec.add_addr(addr("10.0.0.1:0"));
        assert!(rec.addrs.is_empty());
    }

    #[test]
    fn add_addr_keeps_the_newest_first_without_duplicates() {
        let mut rec = PeerRecord::new(false);
        rec.add_addr(addr("10.0.0.1:4000"));
        rec.add_addr(addr("10.0.0.2:4000"));
        rec.add_addr(addr("10.0.0.1:4000"));
        assert_eq!(
            rec.addrs,
            vec![addr("10.0.0.2:4000"), addr("10.0.0.1:4000")]
        );
    }

    #[test]
    fn add_addr_is_bounded_and_forgets_the_oldest() {
        let mut rec = PeerRecord::new(false);
        let n = MAX_ADDRS_PER_PEER + 3;
        for port in 1..=n {
            rec.add_addr(SocketAddr::from(([10, 0, 0, 1], port as u16)));
        }
        assert_eq!(rec.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(rec.addrs[0].port() as usize, n);
        assert!(rec
            .addrs
            .iter()
            .all(|a| a.port() as usize > n - MAX_ADDRS_PER_PEER));
    }

    #[test]
    fn failed_dials_back_off_doubling_to_the_cap_with_jitter() {
        let mut rec = PeerRecord::new(true);
        let now = Instant::now();
        let within = |rec: &PeerRecord, d: Duration| {
            rec.next_dial >= now + d / 2 && rec.next_dial <= now + d
        };
        assert!(rec.dial_failed("refused".into(), now));
        assert!(within(&rec, BACKOFF_MIN));
        assert!(
            !rec.dial_failed("refused".into(), now),
            "same error is not news"
        );
        assert!(within(&rec, BACKOFF_MIN * 2));
        assert!(rec.dial_failed("timed out".into(), now));
        assert!(within(&rec, BACKOFF_MIN * 4));
        for _ in 0..20 {
            rec.dial_failed("timed out".into(), now);
            assert!(rec.next_dial <= now + BACKOFF_MAX, "never above the cap");
        }
        assert!(within(&rec, BACKOFF_MAX));
        assert_eq!(rec.last_error.as_deref(), Some("timed out"));
        // A session starts the backoff over.
        rec.backoff.reset();
        rec.dial_failed("refused".into(), now);
        assert!(within(&rec, BACKOFF_MIN));
    }

    /// Issue 9: nodes that lose the same peer must not redial it in step.
    #[test]
    fn backoff_waits_are_spread_not_in_step() {
        let now = Instant::now();
        let waits: std::collections::HashSet<Instant> = (0..50)
            .map(|_| {
                let mut rec = PeerRecord::new(true);
                rec.dial_failed("refused".into(), now);
                rec.next_dial
            })
            .collect();
        assert!(waits.len() > 10, "{} distinct waits of 50", waits.len());
    }

    #[test]
    fn a_busy_peer_is_retried_soon_without_growing_the_backoff() {
        let mut rec = PeerRecord::new(false);
        let now = Instant::now();
        rec.dial_failed("refused".into(), now);
        for _ in 0..20 {
            rec.turned_away("busy".into(), now);
            assert!(rec.next_dial >= now + BUSY_RETRY / 2);
            assert!(rec.next_dial <= now + BUSY_RETRY);
        }
        // The next failure waits the second step, not the 22nd.
        rec.dial_failed("refused".into(), now);
        assert!(
            rec.next_dial <= now + BACKOFF_MIN * 2,
            "busy is not a failure of the link"
        );
    }

    #[test]
    fn only_idle_peers_with_an_address_and_due_are_dialed() {
        let mut rec = PeerRecord::new(true);
        let now = rec.next_dial;
        assert!(!rec.wants_dial(now), "no address yet");
        rec.add_addr(addr("10.0.0.1:4000"));
        assert!(rec.wants_dial(now));
        rec.dialing = true;
        assert!(!rec.wants_dial(now), "already dialing");
        rec.dialing = false;
        rec.next_dial = now + Duration::from_secs(1);
        assert!(!rec.wants_dial(now), "backing off");
    }

    #[test]
    fn static_peers_never_include_ourselves() {
        let (me, other) = (id(), id());
        let configured = [
            (me, addr("10.0.0.1:4000")),
            (other, addr("10.0.0.2:4000")),
            (other, addr("10.0.0.3:4000")),
        ];
        let named = [
            (me, "localhost".to_string(), 4000),
            (other, "peer.example".to_string(), 4001),
        ];
        let peers = static_peers(me, &configured, &named);
        assert_eq!(peers.len(), 1);
        let rec = &peers[&other];
        assert!(rec.is_static);
        assert_eq!(rec.addrs.len(), 2);
        assert_eq!(rec.names, vec![("peer.example".to_string(), 4001)]);
    }

    #[test]
    fn a_peer_known_only_by_name_is_dialed() {
        let mut rec = PeerRecord::new(true);
        rec.names.push(("peer.example".to_string(), 4000));
        assert!(rec.wants_dial(rec.next_dial));
    }

    /// Names are looked up afresh on each call (each dial): a changed DNS
    /// answer is used at the next reconnect, a failure is a resolve error.
    #[tokio::test]
    async fn names_are_resolved_at_each_dial() {
        let calls = std::sync::atomic::AtomicU16::new(0);
        let lookup = |host: String, port: u16| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(host, "peer.example");
                match n {
                    0 => Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))]),
                    1 => Ok(vec![SocketAddr::from(([10, 0, 0, 2], port))]),
                    2 => Ok(vec![]),
                    _ => Err(std::io::Error::other("no such host")),
                }
            }
        };
        let names = vec![("peer.example".to_string(), 7300)];
        let first = resolve_names(&names, &lookup).await.unwrap();
        assert_eq!(first, vec![addr("10.0.0.1:7300")]);
        let second = resolve_names(&names, &lookup).await.unwrap();
        assert_eq!(second, vec![addr("10.0.0.2:7300")]);
        for _ in 0..2 {
            let e = resolve_names(&names, &lookup).await.unwrap_err();
            assert!(matches!(e, DialError::Resolve { ref host, .. } if host == "peer.example"));
            assert!(
                e.to_string().starts_with("cannot resolve peer.example: "),
                "{e}"
            );
        }
    }

    #[test]
    fn a_dial_error_reads_as_before_in_the_status() {
        let timeout: DialError = HandshakeFailed::Timeout.into();
        assert_eq!(timeout.to_string(), "handshake timed out");
        let refused: DialError = HandshakeFailed::Auth(HandshakeError::Refused("no".into())).into();
        assert_eq!(refused.to_string(), "handshake failed: peer refused us: no");
        assert!(std::error::Error::source(&refused).is_some());
    }

    async fn lone_mesh(dir: &std::path::Path) -> Mesh {
        let (mesh, _events) = Mesh::start(MeshOptions {
            data_dir: dir.to_path_buf(),
            secret_key: SecretKey::generate(),
            listen: crate::loopback::free_udp_addr().unwrap(),
            fleet_secret: [9; 32],
            static_peers: vec![],
            static_peer_names: vec![],
            allow: None,
            deny: vec![],
            ticket_peers: vec![],
            gc: None,
            peer_exchange: true,
            max_peers: 32,
            mdns: false,
        })
        .await
        .unwrap();
        mesh
    }

    fn hints(n: usize, first_octet: u8) -> Vec<exchange::PeerHint> {
        (0..n)
            .map(|i| exchange::PeerHint {
                id: id(),
                addrs: vec![addr(&format!(
                    "{first_octet}.0.{}.{}:7300",
                    i / 250,
                    i % 250 + 1
                ))],
            })
            .collect()
    }

    /// Issue 9: a member must not be able to make us remember (and dial)
    /// an address list in bulk.
    #[tokio::test]
    async fn one_member_can_add_at_most_its_share_of_unproven_peers() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = lone_mesh(dir.path()).await;
        let (a, b) = (id(), id());
        mesh.inner.learn(a, hints(exchange::MAX_HINTS, 10));
        mesh.inner.learn(a, hints(exchange::MAX_HINTS, 11));
        mesh.inner.learn(a, hints(exchange::MAX_HINTS, 12));
        let from_a = mesh.peer_status().len();
        assert_eq!(from_a, MAX_UNPROVEN_PER_SOURCE);
        assert!(mesh.peer_status().iter().all(|p| p.source == "exchange"));
        mesh.inner.learn(b, hints(10, 13));
        assert_eq!(mesh.peer_status().len(), from_a + 10, "b has its own share");
        mesh.shutdown().await;
    }

    #[tokio::test]
    async fn hearsay_never_replaces_the_addresses_of_a_known_peer() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = lone_mesh(dir.path()).await;
        let (a, b, known) = (id(), id(), id());
        mesh.inner.learn(
            a,
            vec![exchange::PeerHint {
                id: known,
                addrs: vec![addr("10.1.1.1:7300")],
            }],
        );
        mesh.inner.learn(
            b,
            vec![exchange::PeerHint {
                id: known,
                addrs: vec![addr("10.6.6.6:7300")],
            }],
        );
        let st = mesh.peer_status();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].addrs, vec![addr("10.1.1.1:7300")]);
        // Only members proven to us are passed on: hearsay is not.
        assert!(mesh.inner.known_members().is_empty());
        mesh.shutdown().await;
    }

    fn remembered(last_seen_secs: u64) -> PeerRecord {
        let mut rec = PeerRecord::new(false);
        rec.proven = true;
        rec.last_seen = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(last_seen_secs));
        rec
    }

    /// Issue 10 (unbounded growth): every identity a secret holder made
    /// stayed a member and was dialled for good.
    #[tokio::test]
    async fn fake_identities_unreachable_peers_are_forgotten_after_failed_dials() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = lone_mesh(dir.path()).await;
        let inner = &mesh.inner;
        let (fake, configured) = (id(), id());
        {
            let mut peers = inner.peers.lock().unwrap();
            peers.insert(fake, remembered(1));
            let mut rec = PeerRecord::new(true);
            rec.add_addr(addr("10.0.0.2:7300"));
            peers.insert(configured, rec);
        }
        for id in [fake, configured] {
            inner.gate.admit(id);
            inner.admission.remember(id);
        }
        for i in 0..FORGET_AFTER_FAILED_DIALS {
            assert_eq!(
                mesh.peer_status().len(),
                2,
                "still known after {i} failures"
            );
            inner.dial_done(fake, Err(DialError::NoAddress));
            inner.dial_done(configured, Err(DialError::NoAddress));
        }
        let st = mesh.peer_status();
        assert_eq!(st.len(), 1, "{st:?}");
        assert_eq!(st[0].id, configured, "a configured peer is never forgotten");
        assert!(!inner.gate.is_member(&fake));
        assert!(!inner.admission.is_known(&fake));
        assert!(inner.admission.is_known(&configured));
        assert_eq!(mesh.forgotten_peers(), 1);
        mesh.shutdown().await;
    }

    #[test]
    fn fake_identities_remembered_peers_are_capped_evicting_the_idle_one_seen_longest_ago() {
        let mut peers = HashMap::new();
        let configured = id();
        peers.insert(configured, PeerRecord::new(true));
        let ids: Vec<EndpointId> = (0..MAX_REMEMBERED_PEERS - 1).map(|_| id()).collect();
        for (i, id) in ids.iter().enumerate() {
            peers.insert(*id, remembered(100 + i as u64));
        }
        assert_eq!(make_room(&mut peers), None, "under the cap");
        let oldest = id();
        peers.insert(oldest, remembered(1));
        let mut busy = remembered(0);
        busy.dialing = true;
        peers.insert(id(), busy);
        // Now over the cap: the idle peer seen longest ago goes, not the
        // one being dialled nor the configured one.
        assert_eq!(make_room(&mut peers), Some(oldest));
        assert_eq!(make_room(&mut peers), Some(ids[0]));
        assert!(peers.contains_key(&configured));
    }
}
