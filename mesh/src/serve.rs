//! Serving blobs: iroh-blobs' provider behind our own accept loop, so that
//! each request's writer is ours ([`Writer`]).
//!
//! Why not `BlobsProtocol` as it is: its writer hands every 16 KiB chunk
//! group and every 64-byte tree node to QUIC as a write of its own (each
//! one locks the connection and wakes its driver task), and counting what
//! was sent to whom needed the provider's per-request transfer log, one
//! local message per chunk group. On a 2-core machine those hand-offs were
//! the sender's largest cost after the cryptography. [`Writer`] counts the
//! payload bytes itself and, for `Get` requests (the big transfers), hands
//! QUIC the data in batches of [`BATCH`] bytes.
//!
//! Requests go through the same provider functions (`handle_get`, …) and
//! the same event hook (membership, the hang fault) as before.

use std::{
    collections::HashMap,
    future::Future,
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use iroh::{
    endpoint::{Connection, VarInt},
    protocol::{AcceptError, ProtocolHandler},
    EndpointId,
};
use iroh_blobs::{
    api::Store,
    protocol::Request,
    provider::{
        self,
        events::{ClientConnected, ConnectionClosed, EventSender, HasErrorCode},
        StreamPair,
    },
    util::SendStream,
};
use tracing::{debug, error};

/// Bytes a `Get` stream gathers before handing them to QUIC in one write:
/// 16 chunk groups. Large enough that the per-write cost (a lock and a
/// wake-up of the connection's driver) is paid rarely; small next to the
/// stream's send window, so the link never waits for a batch.
pub(crate) const BATCH: usize = 256 * 1024;

/// Content bytes served to each member since start. Bounded by the
/// fleet's membership (only members' requests are served).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent(Arc<Mutex<HashMap<EndpointId, u64>>>);

impl Sent {
    fn add(&self, peer: EndpointId, n: u64) {
        if n > 0 {
            *self.0.lock().expect("sent lock").entry(peer).or_default() += n;
        }
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

/// The blobs protocol handler (in place of `iroh_blobs::BlobsProtocol`).
#[derive(Debug, Clone)]
pub(crate) struct BlobServer {
    store: Store,
    events: EventSender,
    sent: Sent,
}

impl BlobServer {
    pub(crate) fn new(store: &Store, events: EventSender, sent: Sent) -> Self {
        BlobServer {
            store: store.clone(),
            events,
            sent,
        }
    }
}

impl ProtocolHandler for BlobServer {
    /// What `iroh_blobs::provider::handle_connection` does, with our
    /// writer on every stream.
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let connection_id = conn.stable_id() as u64;
        let peer = conn.remote_id();
        let connected = || ClientConnected {
            connection_id,
            endpoint_id: Some(peer),
        };
        if let Err(cause) = self.events.client_connected(connected).await {
            debug!("blob connection refused: {cause}");
            conn.close(cause.code(), cause.reason());
            return Ok(());
        }
        while let Ok((send, recv)) = conn.accept_bi().await {
            let writer = Writer::new(send, peer, self.sent.clone());
            let batching = writer.batching.clone();
            let pair = StreamPair::new(connection_id, recv, writer, self.events.clone());
            tokio::spawn(serve_stream(pair, self.store.clone(), batching));
        }
        let closed = || ConnectionClosed { connection_id };
        // Only the event hook's bookkeeping: nobody waits for it.
        self.events.connection_closed(closed).await.ok();
        Ok(())
    }

    async fn shutdown(&self) {
        if let Err(e) = self.store.shutdown().await {
            error!("error shutting down the blob store: {e:?}");
        }
    }
}

/// One request: read it, then answer it as the provider does. Only a `Get`
/// batches its writes: the provider ends it with `sync` (which flushes),
/// while `GetMany` ends without one and `Observe` streams small updates
/// that must go out at once.
async fn serve_stream(
    mut pair: StreamPair<iroh::endpoint::RecvStream, Writer>,
    store: Store,
    batching: Arc<AtomicBool>,
) {
    let request = match pair.read_request().await {
        Ok(r) => r,
        Err(e) => {
            debug!("unreadable blob request: {e:#}");
            return;
        }
    };
    let res = match request {
        Request::Get(r) => {
            batching.store(true, Ordering::Relaxed);
            provider::handle_get(pair, store, r).await
        }
        Request::GetMany(r) => provider::handle_get_many(pair, store, r).await,
        Request::Observe(r) => provider::handle_observe(pair, store, r).await,
        Request::Push(r) => provider::handle_push(pair, store, r).await,
        _ => Ok(()),
    };
    if let Err(e) = res {
        // The peer only sees a reset with an error code.
        debug!("blob stream failed: {e:#}");
    }
}

/// A request's send stream: counts the payload bytes (leaves, written with
/// `send_bytes`) toward [`Sent`] once QUIC has them and, while batching,
/// gathers writes up to [`BATCH`] bytes (the leaves without a copy).
pub(crate) struct Writer<W = iroh::endpoint::SendStream> {
    inner: W,
    peer: EndpointId,
    sent: Sent,
    batching: Arc<AtomicBool>,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Payload bytes among `pending`.
    pending_payload: u64,
}

/// What [`Writer`] needs of the stream below it: one write of several
/// buffers.
pub(crate) trait Chunks: SendStream {
    fn write_chunks(&mut self, bufs: &mut [Bytes]) -> impl Future<Output = io::Result<()>> + Send;
}

impl Chunks for iroh::endpoint::SendStream {
    async fn write_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<()> {
        Ok(self.write_all_chunks(bufs).await?)
    }
}

impl<W: Chunks> Writer<W> {
    pub(crate) fn new(inner: W, peer: EndpointId, sent: Sent) -> Self {
        Writer {
            inner,
            peer,
            sent,
            batching: Arc::new(AtomicBool::new(false)),
            pending: Vec::new(),
            pending_len: 0,
            pending_payload: 0,
        }
    }

    fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    async fn gather(&mut self, b: Bytes, payload: bool) -> io::Result<()> {
        self.pending_len += b.len();
        if payload {
            self.pending_payload += b.len() as u64;
        }
        self.pending.push(b);
        if self.pending_len >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.inner.write_chunks(&mut self.pending).await?;
        }
        self.sent.add(self.peer, self.pending_payload);
        self.discard();
        Ok(())
    }

    fn discard(&mut self) {
        self.pending.clear();
        self.pending_len = 0;
        self.pending_payload = 0;
    }
}

impl<W: Chunks> SendStream for Writer<W> {
    /// The provider writes leaves (content) with `send_bytes`, tree nodes
    /// and sizes with `send`.
    async fn send_bytes(&mut self, bytes: Bytes) -> io::Result<()> {
        if self.batching() {
            return self.gather(bytes, true).await;
        }
        let n = bytes.len() as u64;
        self.inner.send_bytes(bytes).await?;
        self.sent.add(self.peer, n);
        Ok(())
    }

    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.batching() {
            return self.gather(Bytes::copy_from_slice(buf), false).await;
        }
        self.inner.send(buf).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.inner.sync().await
    }

    /// What was gathered goes with the stream (it never crossed the wire).
    fn reset(&mut self, code: VarInt) -> io::Result<()> {
        self.discard();
        self.inner.reset(code)
    }

    async fn stopped(&mut self) -> io::Result<Option<VarInt>> {
        self.inner.stopped().await
    }

    fn id(&self) -> u64 {
        self.inner.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write the writer makes below it.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        reset: Option<VarInt>,
    }

    impl SendStream for Recorder {
        async fn send_bytes(&mut self, bytes: Bytes) -> io::Result<()> {
            self.writes.push(bytes.to_vec());
            Ok(())
        }
        async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
            self.writes.push(buf.to_vec());
            Ok(())
        }
        async fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn reset(&mut self, code: VarInt) -> io::Result<()> {
            self.reset = Some(code);
            Ok(())
        }
        async fn stopped(&mut self) -> io::Result<Option<VarInt>> {
            Ok(None)
        }
        fn id(&self) -> u64 {
            0
        }
    }

    impl Chunks for Recorder {
        async fn write_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<()> {
            self.writes
                .push(bufs.iter().flat_map(|b| b.to_vec()).collect());
            Ok(())
        }
    }

    fn peer() -> EndpointId {
        iroh::SecretKey::from_bytes(&[7; 32]).public()
    }

    /// What the provider writes for a blob: size, then a tree node and a
    /// 16 KiB leaf, again and again.
    async fn write_blob(w: &mut Writer<Recorder>, leaves: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let size = ((leaves * 16384) as u64).to_le_bytes();
        w.send(&size).await.unwrap();
        all.extend_from_slice(&size);
        for i in 0..leaves {
            let node = [i as u8; 64];
            w.send(&node).await.unwrap();
            all.extend_from_slice(&node);
            let leaf = Bytes::from(vec![(i * 3) as u8; 16384]);
            all.extend_from_slice(&leaf);
            w.send_bytes(leaf).await.unwrap();
        }
        all
    }

    #[tokio::test]
    async fn a_get_reaches_quic_in_few_large_writes_in_order() {
        let sent = Sent::default();
        let mut w = Writer::new(Recorder::default(), peer(), sent.clone());
        w.batching.store(true, Ordering::Relaxed);
        let want = write_blob(&mut w, 64).await;
        w.sync().await.unwrap();
        let writes = &w.inner.writes;
        // 129 provider writes, 1 MiB: four batches and the rest.
        assert!(writes.len() <= 5, "{} writes", writes.len());
        assert!(writes[..writes.len() - 1].iter().all(|b| b.len() >= BATCH));
        assert_eq!(writes.concat(), want);
        assert_eq!(sent.to(&peer()), 64 * 16384, "payload only, all of it");
    }

    #[tokio::test]
    async fn without_batching_every_write_goes_through_at_once() {
        let sent = Sent::default();
        let mut w = Writer::new(Recorder::default(), peer(), sent.clone());
        let want = write_blob(&mut w, 3).await;
        assert_eq!(w.inner.writes.len(), 7, "nothing waits for a sync");
        assert_eq!(w.inner.writes.concat(), want);
        assert_eq!(sent.to(&peer()), 3 * 16384);
    }

    #[tokio::test]
    async fn a_reset_drops_what_was_gathered_and_counts_only_what_left() {
        let sent = Sent::default();
        let mut w = Writer::new(Recorder::default(), peer(), sent.clone());
        w.batching.store(true, Ordering::Relaxed);
        write_blob(&mut w, 20).await; // one batch out (16 leaves), 4 gathered
        w.reset(VarInt::from_u32(3)).unwrap();
        w.sync().await.unwrap();
        assert_eq!(w.inner.reset, Some(VarInt::from_u32(3)));
        assert_eq!(w.inner.writes.len(), 1);
        assert_eq!(sent.to(&peer()), 16 * 16384);
    }

    async fn endpoint() -> iroh::Endpoint {
        iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
            .secret_key(iroh::SecretKey::generate())
            .relay_mode(iroh::RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")
            .unwrap()
            .bind()
            .await
            .unwrap()
    }

    /// Over QUIC: a blob several batches long (and not a whole number of
    /// them) arrives whole and verified, and its bytes count as sent to
    /// the member who fetched it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_blob_arrives_whole_and_is_counted() {
        let store = iroh_blobs::store::mem::MemStore::new();
        let data: Vec<u8> = (0..(3 * BATCH + 12345)).map(|i| (i % 251) as u8).collect();
        let tag = store.add_slice(&data).await.unwrap();
        let gate = crate::gate::Gate::new(None, vec![]);
        let (events, _hang) = crate::blobs::serve_events(gate.clone());
        let sent = Sent::default();
        let server = endpoint().await;
        let router = iroh::protocol::Router::builder(server.clone())
            .accept(
                crate::proto::BLOBS_ALPN,
                BlobServer::new(&store, events, sent.clone()),
            )
            .spawn();
        let client = endpoint().await;
        gate.admit(client.id());
        let addr = iroh::EndpointAddr::new(server.id()).with_ip_addr(server.bound_sockets()[0]);
        let conn = client
            .connect(addr, crate::proto::BLOBS_ALPN)
            .await
            .unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            iroh_blobs::get::request::get_blob(conn, tag.hash),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(got[..] == data[..], "the blob arrived altered");
        assert_eq!(sent.to(&client.id()), data.len() as u64);
        router.shutdown().await.unwrap();
    }
}
