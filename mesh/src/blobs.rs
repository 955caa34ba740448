//! Content operations of the [`Mesh`]: the blob store and verified
//! transfers from peers. Callers (the actors) see operations, never the
//! store or a connection; every byte that arrives here has been verified
//! against its BLAKE3 hash by iroh-blobs before it is written anywhere.
//!
//! Serving side: every blob connection and request passes [`serve_events`],
//! the provider's intercept. It refuses any endpoint that has not proven
//! fleet membership (on connect, and again on every request, which the
//! [`Gate`] hook alone would not do for a connection already open), and it
//! is where the fault injection [`Mesh::hang_blob_serving`] holds requests
//! (accepted, answered with nothing) until its deadline.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use iroh::endpoint::Connection;
use iroh_blobs::{
    api::{
        blobs::{AddPathOptions, AddProgressItem, ExportMode, ExportOptions, ImportMode},
        remote::GetProgressItem,
        TempTag,
    },
    get::fsm::{self, BlobContentNext, EndBlobNext},
    get::request::GetBlobItem,
    provider::events::{
        AbortReason, ConnectMode, EventMask, EventResult, EventSender, ObserveMode,
        ProviderMessage, RequestMode, RequestUpdate,
    },
    BlobFormat, Hash,
};
use n0_future::StreamExt;
use tokio::{sync::watch, time::Instant};
use tracing::warn;

use crate::{
    gate::Gate,
    lazy::Lazy,
    net::{Mesh, CLOSE_DUPLICATE},
    proto::BLOBS_ALPN,
    EndpointId,
};

/// Bytes of a download between two writebacks ([`Writeback`]).
pub const WRITEBACK_STEP: u64 = 64 << 20;

/// Writes a download's data out to disk while it is still arriving.
/// The receiver fsyncs every finished file before it renames it into
/// place. For a big download, that fsync would otherwise write out the
/// whole file at the end: the kernel starts on its own only past 10% of
/// RAM or after 30 s. On 1 GiB that took 0.32 s here, after the transfer.
/// So every [`WRITEBACK_STEP`] of progress, one `fdatasync` of the
/// store's data file runs on the blocking pool (never two at once), and
/// the final fsync finds at most one step still to write.
///
/// Best effort: the receiver's own fsync is what makes the file durable.
/// A failed open or sync here (the file not created yet, already exported)
/// only means less was written early.
pub(crate) struct Writeback {
    path: PathBuf,
    next: u64,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Writeback {
    /// `received`: the download's bytes so far.
    pub(crate) fn received(&mut self, received: u64) {
        if received < self.next || self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.next = received + WRITEBACK_STEP;
        let path = self.path.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_data()) {
                tracing::debug!(path = %path.display(), "early writeback skipped: {e}");
            }
        }));
    }
}

impl Mesh {
    /// A [`Writeback`] for the download of `hash` into the store.
    pub(crate) fn writeback(&self, hash: Hash) -> Writeback {
        Writeback {
            path: self.inner.store_paths.data_path(&hash),
            next: WRITEBACK_STEP,
            running: None,
        }
    }
}

/// A blob store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("blob store: {0}")]
    Store(#[from] iroh_blobs::api::Error),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

impl From<iroh_blobs::api::RequestError> for StoreError {
    fn from(e: iroh_blobs::api::RequestError) -> Self {
        StoreError::Store(e.into())
    }
}

/// Fetching content from a peer failed (the peer may be tried again, or
/// another one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("no address known for peer {0}")]
    NoAddress(String),
    #[error("connect to {peer}: timed out")]
    ConnectTimeout { peer: String },
    #[error("connect to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: iroh::endpoint::ConnectError,
    },
    #[error("transfer from {peer}: {source}")]
    Transfer {
        peer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("transfer from {peer}: the stream ended without a result")]
    Incomplete { peer: String },
    #[error("writing fetched content: {0}")]
    Write(#[source] std::io::Error),
}

impl FetchError {
    /// A transfer error from any source (also for fakes of the network).
    pub fn transfer(
        peer: &EndpointId,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        FetchError::Transfer {
            peer: peer.fmt_short().to_string(),
            source: source.into(),
        }
    }
}

impl Mesh {
    /// Is this blob complete in the local store? Content the node holds
    /// outside it ([`crate::lazy`]) is brought in first, so a rename or a
    /// copy of a small local file is not downloaded again.
    pub async fn has_blob(&self, hash: Hash) -> Result<bool, StoreError> {
        // Brought in first even if the store has it: its entry may list
        // only links that are gone ([`crate::lazy::Lazy::bring_in`]).
        if self.inner.lazy.holds(hash).await {
            return Ok(true);
        }
        let has = self.inner.store.blobs().has(hash).await;
        Ok(has.map_err(iroh_blobs::api::Error::from)?)
    }

    /// Which of `hashes` the node holds outside the store (its folders'
    /// `refs/` links), each brought in; the store itself is not asked
    /// (see `fleetsync_actors::content::Content::held_locally`).
    pub async fn held_outside_store(&self, hashes: &[Hash]) -> HashSet<Hash> {
        self.inner.lazy.held(hashes).await
    }

    /// Hash the file at `path` and reference it from the store in place (no
    /// copy). The tag keeps the entry from garbage collection until dropped.
    /// `progress` is called with the byte offset reached, as the store
    /// reports it (hashing a huge file is long work its owner must see
    /// move; the store may skip reports when its channel is full).
    pub async fn import_in_place(
        &self,
        path: PathBuf,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<TempTag, StoreError> {
        import_path(&self.inner.store, path, progress).await
    }

    /// Keep `hash` (complete, partial or not there yet) from garbage
    /// collection until the tag is dropped: taken before a fetch into the
    /// store and held until its content is out in a `refs/` link, so a GC
    /// run never removes what a transfer is writing.
    pub async fn hold_blob(&self, hash: Hash) -> Result<TempTag, StoreError> {
        let tags = self.inner.store.tags();
        let tag = tags.temp_tag(iroh_blobs::HashAndFormat::raw(hash)).await;
        Ok(tag.map_err(iroh_blobs::api::Error::from)?)
    }

    /// Blob connections kept open to peers (status's debug section).
    pub async fn blob_conn_count(&self) -> usize {
        self.inner.blob_conns.lock().await.len()
    }

    /// Commit what the store has recorded so far (imports, fetches,
    /// exports) to its database, and wait for it. The store batches its
    /// bookkeeping for up to half a second: without this, a crash right
    /// after an index commit can leave the index referencing content the
    /// store has forgotten (or still places in a file it has moved away),
    /// which this node then can never serve.
    pub async fn sync_store(&self) -> Result<(), StoreError> {
        Ok(self.inner.store.sync_db().await?)
    }

    /// Move a stored blob out to `target`; the store keeps referencing it
    /// there (a rename when the data is a file of the store's own).
    pub async fn export_in_place(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError> {
        self.inner
            .store
            .export_with_opts(ExportOptions {
                hash,
                mode: ExportMode::TryReference,
                target,
            })
            .finish()
            .await?;
        Ok(())
    }

    /// Fetch a blob (only the ranges we are missing) from one peer into the
    /// store, verifying every chunk against `hash` as it streams in.
    /// `progress` receives the running byte count.
    pub async fn fetch_blob(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let conn = self.blob_conn(peer).await?;
        let mut stream = self.inner.store.remote().fetch(conn.clone(), hash).stream();
        let mut writeback = self.writeback(hash);
        while let Some(item) = stream.next().await {
            match item {
                GetProgressItem::Progress(n) => {
                    progress.store(n, Ordering::Relaxed);
                    writeback.received(n);
                }
                GetProgressItem::Done(stats) => return Ok(stats.payload_bytes_read),
                GetProgressItem::Error(e) => {
                    // A broken connection must not be reused for the retry.
                    self.drop_blob_conn(&peer).await;
                    return Err(FetchError::transfer(&peer, e));
                }
            }
        }
        Err(FetchError::Incomplete {
            peer: peer.fmt_short().to_string(),
        })
    }

    /// Fetch many (small) blobs from one peer in a single request, each
    /// verified against its hash as it streams and written straight to its
    /// target file (no blob store in between). Returns which hashes arrived
    /// complete and the payload bytes read; a blob that fails verification
    /// ends the request (the rest are then fetched some other way).
    pub async fn fetch_many_to(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
        progress: &AtomicU64,
    ) -> Result<(Vec<Hash>, u64), FetchError> {
        let conn = self.blob_conn(peer).await?;
        let targets: HashMap<Hash, PathBuf> = items.into_iter().collect();
        let req: iroh_blobs::protocol::GetManyRequest = targets.keys().copied().collect();
        let hashes = req.hashes.clone();
        let mut done = Vec::new();
        let mut bytes = 0u64;
        let mut next = fsm::start_get_many(conn, req, Default::default())
            .await
            .map_err(|e| FetchError::transfer(&peer, e))?;
        loop {
            let child = match next {
                Ok(c) => c,
                Err(closing) => {
                    // The request is over; how the stream closes changes nothing.
                    closing.next().await.ok();
                    break;
                }
            };
            let Some(hash) = hashes.get(child.offset() as usize).copied() else {
                child.finish().next().await.ok();
                break;
            };
            let (content, _size) = child
                .next(hash)
                .next()
                .await
                .map_err(|e| FetchError::transfer(&peer, e))?;
            let file = std::fs::File::create(&targets[&hash]).map_err(FetchError::Write)?;
            let (end, n) = write_verified(&peer, content, &file, progress).await?;
            bytes += n;
            done.push(hash);
            next = match end.next() {
                EndBlobNext::MoreChildren(c) => Ok(c),
                EndBlobNext::Closing(c) => Err(c),
            };
        }
        Ok((done, bytes))
    }

    /// Stream a blob from a peer straight into `file`, verified, bypassing
    /// the store (used when the store's copy is unusable). Returns the
    /// payload bytes written; `progress` counts them as they arrive.
    pub async fn fetch_direct_to(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let conn = self.blob_conn(peer).await?;
        let mut stream = iroh_blobs::get::request::get_blob(conn, hash);
        while let Some(item) = stream.next().await {
            match item {
                GetBlobItem::Item(bao_tree::io::BaoContentItem::Leaf(leaf)) => {
                    file.write_all_at(&leaf.data, leaf.offset)
                        .map_err(FetchError::Write)?;
                    progress.fetch_add(leaf.data.len() as u64, Ordering::Relaxed);
                }
                GetBlobItem::Item(_) => {}
                GetBlobItem::Done(_) => return Ok(progress.load(Ordering::Relaxed)),
                GetBlobItem::Error(e) => return Err(FetchError::transfer(&peer, e)),
            }
        }
        Err(FetchError::Incomplete {
            peer: peer.fmt_short().to_string(),
        })
    }

    /// The blob connection to `peer` (for [`crate::swarm`]).
    pub(crate) async fn blob_conn_for(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        self.blob_conn(peer).await
    }

    /// Forget a broken blob connection, so the next request dials anew.
    pub(crate) async fn drop_blob_conn(&self, peer: &EndpointId) {
        self.inner.blob_conns.lock().await.remove(peer);
    }

    /// The blob connection to `peer`, dialed on first use and kept. The
    /// map is never locked across a dial: one unreachable peer must not
    /// hold up fetches from the others.
    async fn blob_conn(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        if let Some(c) = self.open_blob_conn(&peer).await {
            return Ok(c);
        }
        let conn = self.dial_blobs(peer).await?;
        let mut conns = self.inner.blob_conns.lock().await;
        // Another fetch may have dialed meanwhile: keep the first.
        if let Some(c) = conns.get(&peer).filter(|c| c.close_reason().is_none()) {
            conn.close(CLOSE_DUPLICATE.into(), b"duplicate blob connection");
            return Ok(c.clone());
        }
        // Connections to peers that went away are dropped here (bounded:
        // the map holds open connections only, plus this one).
        conns.retain(|_, c| c.close_reason().is_none());
        conns.insert(peer, conn.clone());
        Ok(conn)
    }

    async fn open_blob_conn(&self, peer: &EndpointId) -> Option<Connection> {
        let conns = self.inner.blob_conns.lock().await;
        conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    async fn dial_blobs(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        let short = || peer.fmt_short().to_string();
        let addr = self
            .inner
            .endpoint_addr(peer)
            .ok_or_else(|| FetchError::NoAddress(short()))?;
        tokio::time::timeout(
            crate::net::DIAL_TIMEOUT,
            self.inner.endpoint.connect(addr, BLOBS_ALPN),
        )
        .await
        .map_err(|_| FetchError::ConnectTimeout { peer: short() })?
        .map_err(|source| FetchError::Connect {
            peer: short(),
            source,
        })
    }
}

/// [`Mesh::import_in_place`] on `store` (also for [`crate::lazy`]).
pub(crate) async fn import_path(
    store: &iroh_blobs::api::Store,
    path: PathBuf,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<TempTag, StoreError> {
    let add = store.add_path_with_opts(AddPathOptions {
        path,
        format: BlobFormat::Raw,
        mode: ImportMode::TryReference,
    });
    let mut events = add.stream().await;
    while let Some(event) = events.next().await {
        match event {
            AddProgressItem::CopyProgress(at) | AddProgressItem::OutboardProgress(at) => {
                progress(at)
            }
            AddProgressItem::Size(_) | AddProgressItem::CopyDone => progress(0),
            AddProgressItem::Done(tag) => return Ok(tag),
            AddProgressItem::Error(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("the blob store ended the import without a result").into())
}

/// Write one blob's verified leaves into `file`; returns the end of the
/// blob (to go on to the next child) and the payload bytes written, which
/// `progress` also counts as they arrive.
async fn write_verified(
    peer: &EndpointId,
    mut content: fsm::AtBlobContent,
    file: &std::fs::File,
    progress: &AtomicU64,
) -> Result<(fsm::AtEndBlob, u64), FetchError> {
    let mut bytes = 0u64;
    loop {
        match content.next().await {
            BlobContentNext::More((c, item)) => {
                if let bao_tree::io::BaoContentItem::Leaf(leaf) =
                    item.map_err(|e| FetchError::transfer(peer, e))?
                {
                    file.write_all_at(&leaf.data, leaf.offset)
                        .map_err(FetchError::Write)?;
                    bytes += leaf.data.len() as u64;
                    progress.fetch_add(leaf.data.len() as u64, Ordering::Relaxed);
                }
                content = c;
            }
            BlobContentNext::Done(end) => return Ok((end, bytes)),
        }
    }
}

/// Blob requests waiting for the provider's answer to the intercept: they
/// are answered at once, so this is only slack for bursts.
const SERVE_EVENTS_QUEUE: usize = 64;

/// Until when blob requests are held (the `hang-fetch` fault); `None` or a
/// past instant: served normally.
pub(crate) type HangSwitch = watch::Sender<Option<Instant>>;

/// The provider's event hook and the switch that makes it hold requests.
///
/// Every connection is intercepted and refused unless its endpoint proved
/// membership to `gate`; so is every `Get`/`GetMany` request, whose
/// connection's member is looked up again; so is `Observe` (which we do
/// not use, but which tells what we hold). Push stays off.
/// That is one local message per connection and per request, not per
/// chunk: the per-chunk throttle hook would cost every
/// transfer). While the switch says so, the answer waits: the request is
/// accepted, its stream stays open, and no data is sent, on connections old
/// and new, exactly what a peer whose keep-alives still arrive but whose
/// transfers never move looks like. A transfer already sending when the
/// hang starts goes on.
///
/// Each `Get`/`GetMany`'s transfer log is read for the payload bytes sent
/// to the member, summed per member in the returned [`Sent`] (metrics).
/// That log costs one local message per written chunk group, dropped when
/// its queue is full: the progress messages carry nothing we count.
pub(crate) fn serve_events(gate: Gate, lazy: Lazy) -> (EventSender, HangSwitch, Sent) {
    let mask = EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::InterceptLog,
        get_many: RequestMode::InterceptLog,
        observe: ObserveMode::Intercept,
        ..EventMask::DEFAULT
    };
    let (events, requests) = EventSender::channel(SERVE_EVENTS_QUEUE, mask);
    let switch = watch::channel(None).0;
    let sent = Sent::default();
    tokio::spawn(answer_requests(
        requests,
        switch.subscribe(),
        gate,
        sent.clone(),
        lazy,
    ));
    (events, switch, sent)
}

/// Content bytes served to each member since start. Bounded by the
/// fleet's membership (only members' requests are served).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent(std::sync::Arc<std::sync::Mutex<HashMap<EndpointId, u64>>>);

impl Sent {
    fn add(&self, peer: EndpointId, n: u64) {
        *self.0.lock().expect("sent lock").entry(peer).or_default() += n;
    }

    pub(crate) fn to(&self, peer: &EndpointId) -> u64 {
        self.0
            .lock()
            .expect("sent lock")
            .get(peer)
            .copied()
            .unwrap_or(0)
    }
}

/// Who is on each open blob connection (the provider's connection ids),
/// so that each request can be checked against current membership.
#[derive(Debug, Default)]
struct Clients(HashMap<u64, EndpointId>);

impl Clients {
    /// A new connection: only proven members may use it.
    fn connected(&mut self, gate: &Gate, conn: u64, who: Option<EndpointId>) -> EventResult {
        match who {
            Some(id) if gate.is_member(&id) => {
                self.0.insert(conn, id);
                Ok(())
            }
            _ => {
                let who = who.map(|id| id.fmt_short().to_string());
                warn!(peer = ?who, "refused blob connection: not a proven fleet member");
                Err(AbortReason::Permission)
            }
        }
    }

    /// A request: its connection's endpoint must still be a member (who
    /// is returned).
    fn request(&self, gate: &Gate, conn: u64) -> Result<EndpointId, AbortReason> {
        match self.0.get(&conn) {
            Some(id) if gate.is_member(id) => Ok(*id),
            _ => {
                warn!(conn, "refused blob request: not a proven fleet member");
                Err(AbortReason::Permission)
            }
        }
    }
}

/// Admit members' connections; let each of their requests through, once
/// the hang (if any) is over and what it asks for that the node holds
/// outside the store is brought in ([`crate::lazy`]).
async fn answer_requests(
    mut requests: tokio::sync::mpsc::Receiver<ProviderMessage>,
    hang: watch::Receiver<Option<Instant>>,
    gate: Gate,
    sent: Sent,
    lazy: Lazy,
) {
    let mut clients = Clients::default();
    while let Some(msg) = requests.recv().await {
        let hang = hang.clone();
        match msg {
            ProviderMessage::ClientConnected(m) => {
                let verdict = clients.connected(&gate, m.connection_id, m.endpoint_id);
                // A client that is gone already needs no answer.
                m.tx.send(verdict).await.ok();
            }
            ProviderMessage::ConnectionClosed(m) => {
                clients.0.remove(&m.connection_id);
            }
            ProviderMessage::GetRequestReceived(m) => {
                let member = clients.request(&gate, m.connection_id);
                let wanted = vec![m.request.hash];
                let ready = Ready {
                    lazy: lazy.clone(),
                    wanted,
                    hang,
                };
                let_through(member, m.tx, m.rx, sent.clone(), ready);
            }
            ProviderMessage::ObserveRequestReceived(m) => {
                let verdict = clients.request(&gate, m.connection_id).map(|_| ());
                m.tx.send(verdict).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(m) => {
                let member = clients.request(&gate, m.connection_id);
                let wanted = m.request.hashes.clone();
                let ready = Ready {
                    lazy: lazy.clone(),
                    wanted,
                    hang,
                };
                let_through(member, m.tx, m.rx, sent.clone(), ready);
            }
            // The mask asks for nothing else; anything more is not held.
            _ => {}
        }
    }
}

/// What a member's request waits for before it is let through.
struct Ready {
    lazy: Lazy,
    /// The hashes it asks for.
    wanted: Vec<Hash>,
    hang: watch::Receiver<Option<Instant>>,
}

/// Answer a get request: refused unless it comes from a member; a
/// member's goes through once the hang (if any) is over and the content
/// it asks for is in the store ([`Lazy::bring_in`]); what its transfer
/// sends is counted. What was brought in stays held until the transfer
/// ends.
fn let_through(
    member: Result<EndpointId, AbortReason>,
    tx: irpc::channel::oneshot::Sender<EventResult>,
    mut log: irpc::channel::mpsc::Receiver<RequestUpdate>,
    sent: Sent,
    ready: Ready,
) {
    let peer = match member {
        Ok(peer) => peer,
        Err(e) => {
            // A requester that is gone already needs no answer.
            tokio::spawn(async move { tx.send(Err(e)).await.ok() });
            return;
        }
    };
    let (held_tx, held) = tokio::sync::oneshot::channel::<Vec<TempTag>>();
    tokio::spawn(async move {
        while let Ok(Some(update)) = log.recv().await {
            count_sent(&sent, peer, update);
        }
        drop(held);
    });
    tokio::spawn(async move {
        hang_over(ready.hang).await;
        let tags = ready.lazy.bring_in(&ready.wanted).await;
        // Kept by the log task until the transfer is over (or dropped at
        // once if that already ended).
        held_tx.send(tags).ok();
        // The requester may have given up meanwhile: nothing to tell.
        tx.send(Ok(())).await.ok();
    });
}

/// A request's transfer ended: its payload bytes count as sent to `peer`
/// (an aborted one's too: they crossed the wire).
fn count_sent(sent: &Sent, peer: EndpointId, update: RequestUpdate) {
    let stats = match update {
        RequestUpdate::Completed(c) => c.stats,
        RequestUpdate::Aborted(a) => a.stats,
        RequestUpdate::Started(_) | RequestUpdate::Progress(_) => return,
    };
    sent.add(peer, stats.payload_bytes_sent);
}

/// Wait until the switch no longer holds requests (it may be moved either
/// way while we wait).
async fn hang_over(mut hang: watch::Receiver<Option<Instant>>) {
    loop {
        let until = *hang.borrow_and_update();
        let Some(until) = until.filter(|u| *u > Instant::now()) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            changed = hang.changed() => {
                if changed.is_err() {
                    return; // the mesh is gone
                }
            }
        }
    }
}

impl Mesh {
    /// Fault injection (`fleetsync debug hang-fetch`): until `until`, accept
    /// blob requests from peers and send them nothing. A later call moves
    /// the deadline either way (a past instant ends the hang at once).
    pub fn hang_blob_serving(&self, until: std::time::Instant) {
        self.inner.hang.send_replace(Some(Instant::from_std(until)));
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio::sync::mpsc;

    use super::*;
    use crate::{MeshEvent, MeshOptions, SecretKey};

    /// Generous for a loaded machine; every wait ends as soon as it can.
    const DEADLINE: Duration = Duration::from_secs(30);
    /// Content of this size spans many chunk groups and is never inlined.
    const BLOB: usize = 200 * 1024;

    struct Node {
        mesh: Mesh,
        events: mpsc::Receiver<MeshEvent>,
        _dir: tempfile::TempDir,
    }

    /// Two members that know each other, both connected.
    async fn pair() -> (Node, Node) {
        let keys = [SecretKey::generate(), SecretKey::generate()];
        let addrs = [
            crate::loopback::free_udp_addr().unwrap(),
            crate::loopback::free_udp_addr().unwrap(),
        ];
        let mut nodes = Vec::new();
        for i in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let (mesh, events) = Mesh::start(MeshOptions {
                data_dir: dir.path().to_path_buf(),
                secret_key: keys[i].clone(),
                listen: addrs[i],
                fleet_secret: [7; 32],
                static_peers: vec![(keys[1 - i].public(), addrs[1 - i])],
                static_peer_names: Vec::new(),
                allow: None,
                deny: vec![],
                ticket_peers: vec![],
                gc: None,
                peer_exchange: false,
                max_peers: 32,
                mdns: false,
            })
            .await
            .unwrap();
            nodes.push(Node {
                mesh,
                events,
                _dir: dir,
            });
        }
        for n in &mut nodes {
            let up = tokio::time::timeout(DEADLINE, n.events.recv()).await;
            assert!(matches!(up, Ok(Some(MeshEvent::Up(_)))), "{up:?}");
        }
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        (a, b)
    }

    /// A file of `BLOB` bytes in `a`'s store (referenced in place).
    async fn content(a: &Node, seed: u8) -> (Hash, TempTag) {
        let path = a._dir.path().join(format!("blob-{seed}"));
        let bytes: Vec<u8> = (0..BLOB).map(|i| (i as u8).wrapping_mul(seed)).collect();
        std::fs::write(&path, bytes).unwrap();
        let tag = a.mesh.import_in_place(path, &|_| {}).await.unwrap();
        (tag.hash(), tag)
    }

    /// Where a test node holds content outside its store.
    #[derive(Debug, Default)]
    struct Held(std::sync::Mutex<HashMap<Hash, Vec<PathBuf>>>);

    impl crate::LocalContent for Held {
        fn candidates(&self, hash: &Hash) -> Vec<PathBuf> {
            self.0
                .lock()
                .unwrap()
                .get(hash)
                .cloned()
                .unwrap_or_default()
        }
    }

    /// A small file in `a`'s directory, not imported; its hash and path.
    fn small_file(a: &Node, name: &str) -> (Hash, PathBuf) {
        let path = a._dir.path().join(name);
        std::fs::write(&path, format!("{name}, held in a refs link")).unwrap();
        (Hash::new(std::fs::read(&path).unwrap()), path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn content_held_outside_the_store_is_brought_in_when_a_member_asks() {
        let (a, b) = pair().await;
        let peer = a.mesh.id();
        let (one, one_at) = small_file(&a, "one");
        let (two, two_at) = small_file(&a, "two");
        let (three, three_at) = small_file(&a, "three");
        let (moved, _) = small_file(&a, "moved");
        let fetch_one = || {
            let m = b.mesh.clone();
            async move {
                let progress = AtomicU64::new(0);
                let got = m.fetch_blob(peer, one, &progress);
                tokio::time::timeout(DEADLINE, got).await.expect("answered")
            }
        };
        // Without a source, a blob the store lacks is not there to serve.
        assert!(fetch_one().await.is_err(), "served what the store lacks");
        let held = Arc::new(Held::default());
        assert!(a.mesh.set_local_content(held.clone()));
        {
            let mut map = held.0.lock().unwrap();
            map.insert(one, vec![one_at]);
            map.insert(two, vec![two_at]);
            map.insert(three, vec![three_at.clone()]);
            map.insert(moved, vec![three_at]);
        }
        // One blob (`Get`).
        assert_eq!(fetch_one().await.unwrap(), one_len(&a));
        assert!(b.mesh.has_blob(one).await.unwrap());
        // Many (`GetMany`), straight into files.
        let targets = [two, three].map(|h| (h, b._dir.path().join(h.to_hex())));
        let progress = AtomicU64::new(0);
        let got = b.mesh.fetch_many_to(peer, targets.to_vec(), &progress);
        let (arrived, _) = tokio::time::timeout(DEADLINE, got).await.unwrap().unwrap();
        assert_eq!(arrived, vec![two, three]);
        for (h, t) in &targets {
            assert_eq!(Hash::new(std::fs::read(t).unwrap()), *h);
        }
        // A link that holds other bytes by now serves nothing.
        let progress = AtomicU64::new(0);
        let got = b.mesh.fetch_blob(peer, moved, &progress);
        let got = tokio::time::timeout(DEADLINE, got).await.expect("answered");
        assert!(got.is_err(), "served bytes of another hash");
        assert!(!a.mesh.has_blob(moved).await.unwrap());
    }

    /// Regression (chaos test `kill9_at_random_points…`, seed
    /// 3917628595524696525): a small file was brought in from its link,
    /// its record moved to another link (a rename) and the first link was
    /// swept. The store still had the hash, so nothing was brought in
    /// again, and every request failed to open the entry ("failed to open
    /// …, poisoning"): the file never converged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn content_whose_imported_link_was_swept_is_served_from_its_current_link() {
        let (a, b) = pair().await;
        let peer = a.mesh.id();
        let (hash, first) = small_file(&a, "first");
        let held = Arc::new(Held::default());
        assert!(a.mesh.set_local_content(held.clone()));
        held.0.lock().unwrap().insert(hash, vec![first.clone()]);
        assert!(a.mesh.has_blob(hash).await.unwrap(), "brought in");
        let second = a._dir.path().join("second");
        std::fs::hard_link(&first, &second).unwrap();
        held.0.lock().unwrap().insert(hash, vec![second.clone()]);
        std::fs::remove_file(&first).unwrap();
        let progress = AtomicU64::new(0);
        let got = b.mesh.fetch_blob(peer, hash, &progress);
        let got = tokio::time::timeout(DEADLINE, got).await.expect("answered");
        let len = std::fs::metadata(&second).unwrap().len();
        assert_eq!(got.expect("served from the current link"), len);
    }

    /// A receiver's prefetch asks once for a whole batch which contents it
    /// holds itself; only its folders' links count (the store alone is
    /// not asked), and what they hold is brought in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_outside_the_store_names_the_linked_contents_and_brings_them_in() {
        let (a, _b) = pair().await;
        let (linked, linked_at) = small_file(&a, "linked");
        let (moved, moved_at) = small_file(&a, "moved");
        std::fs::write(&moved_at, b"other bytes by now").unwrap();
        let (stored, _tag) = content(&a, 3).await;
        let unknown = Hash::new(b"nobody has this");
        let held = Arc::new(Held::default());
        assert!(a.mesh.set_local_content(held.clone()));
        {
            let mut map = held.0.lock().unwrap();
            map.insert(linked, vec![linked_at]);
            map.insert(moved, vec![moved_at]);
        }
        let got = a
            .mesh
            .held_outside_store(&[linked, moved, stored, unknown])
            .await;
        assert_eq!(got, HashSet::from([linked]));
        let in_store = a.mesh.inner.store.blobs().has(linked).await.unwrap();
        assert!(in_store, "brought into the store");
    }

    fn one_len(a: &Node) -> u64 {
        std::fs::metadata(a._dir.path().join("one")).unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_node_accepts_requests_sends_nothing_and_serves_them_when_released() {
        let (a, b) = pair().await;
        let peer = a.mesh.id();
        let (warm, _t1) = content(&a, 3).await;
        let (big, _t2) = content(&a, 5).await;
        let (many, _t3) = content(&a, 7).await;
        // The blob connection exists before the hang starts.
        let n = b.mesh.fetch_blob(peer, warm, &AtomicU64::new(0)).await;
        assert_eq!(n.unwrap(), BLOB as u64);

        a.mesh
            .hang_blob_serving(std::time::Instant::now() + Duration::from_secs(600));
        let got = Arc::new(AtomicU64::new(0));
        let got_many = Arc::new(AtomicU64::new(0));
        let single = {
            let (m, got) = (b.mesh.clone(), got.clone());
            tokio::spawn(async move { m.fetch_blob(peer, big, &got).await })
        };
        let target = b._dir.path().join("many-target");
        let batch = {
            let (m, got, t) = (b.mesh.clone(), got_many.clone(), target.clone());
            tokio::spawn(async move { m.fetch_many_to(peer, vec![(many, t)], &got).await })
        };
        // Nothing may arrive while the node hangs: watch a while.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!single.is_finished() && !batch.is_finished(), "held open");
        assert_eq!(got.load(Ordering::Relaxed), 0, "no bytes while hung");
        assert_eq!(got_many.load(Ordering::Relaxed), 0, "no bytes while hung");

        a.mesh.hang_blob_serving(std::time::Instant::now());
        let n = tokio::time::timeout(DEADLINE, single)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n.unwrap(), BLOB as u64, "served once released");
        let (done, bytes) = tokio::time::timeout(DEADLINE, batch)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((done, bytes), (vec![many], BLOB as u64));
        assert_eq!(got_many.load(Ordering::Relaxed), BLOB as u64);
        assert_eq!(std::fs::read(&target).unwrap().len(), BLOB);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hang_ends_by_itself_at_its_deadline() {
        let (a, b) = pair().await;
        let (hash, _tag) = content(&a, 9).await;
        let until = std::time::Instant::now() + Duration::from_millis(800);
        a.mesh.hang_blob_serving(until);
        let progress = AtomicU64::new(0);
        let fetch = b.mesh.fetch_blob(a.mesh.id(), hash, &progress);
        let n = tokio::time::timeout(DEADLINE, fetch).await.unwrap();
        assert_eq!(n.unwrap(), BLOB as u64);
        assert!(
            std::time::Instant::now() >= until,
            "served before the hang ended"
        );
    }

    /// A bare endpoint on 127.0.0.1 without the gate hook: only the
    /// provider's own intercept stands between a client and the content.
    async fn bare_endpoint() -> iroh::Endpoint {
        iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
            .secret_key(SecretKey::generate())
            .relay_mode(iroh::RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")
            .unwrap()
            .bind()
            .await
            .unwrap()
    }

    /// Issue 9: the blob provider itself refuses endpoints that have not
    /// proven membership, and checks again on each request of an open
    /// connection, even when the connection got past the endpoint hook.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_provider_serves_proven_members_only_checked_per_request() {
        let store = iroh_blobs::store::mem::MemStore::new();
        let tag = store.add_slice(b"members only").await.unwrap();
        let gate = Gate::new(None, vec![]);
        let (events, _hang, _sent) = serve_events(gate.clone(), Lazy::new(store.clone()));
        let server = bare_endpoint().await;
        let router = iroh::protocol::Router::builder(server.clone())
            .accept(
                BLOBS_ALPN,
                iroh_blobs::BlobsProtocol::new(&store, Some(events)),
            )
            .spawn();
        let addr = iroh::EndpointAddr::new(server.id()).with_ip_addr(server.bound_sockets()[0]);
        let client = bare_endpoint().await;
        let get = |conn| iroh_blobs::get::request::get_blob(conn, tag.hash);

        let conn = client.connect(addr.clone(), BLOBS_ALPN).await.unwrap();
        let refused = tokio::time::timeout(DEADLINE, get(conn)).await.unwrap();
        assert!(refused.is_err(), "a stranger fetched a blob by its hash");

        gate.admit(client.id());
        let conn = client.connect(addr.clone(), BLOBS_ALPN).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, get(conn.clone()))
            .await
            .unwrap();
        assert_eq!(&got.unwrap()[..], b"members only");

        // Membership gone: the same open connection is refused next time.
        gate.revoke(&client.id());
        let again = tokio::time::timeout(DEADLINE, get(conn)).await.unwrap();
        assert!(
            again.is_err(),
            "a revoked member fetched on an open connection"
        );
        router.shutdown().await.unwrap();
    }

    /// Issue 8: hashing a huge file took longer than the stall timeout
    /// without a sign of life, so the supervisor took the hasher for stuck.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_reports_progress_while_it_hashes() {
        let (a, _b) = pair().await;
        let path = a._dir.path().join("big");
        let len = 8u64 << 20;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let tag = a
            .mesh
            .import_in_place(path, &|at| seen.lock().unwrap().push(at))
            .await
            .unwrap();
        assert_eq!(tag.hash(), Hash::new(&bytes));
        let seen = seen.into_inner().unwrap();
        let beyond_start = seen.iter().filter(|&&at| at > 0).count();
        assert!(
            beyond_start >= 2,
            "progress while hashing, not only at the ends: {seen:?}"
        );
        assert!(seen.iter().all(|&at| at <= len), "{seen:?}");
    }
}
