//! Swarm fetching: one big blob from several members at once, in pieces,
//! including from members that are still downloading it themselves.
//!
//! ```text
//!  fetch_swarm(hash, size, providers, announcer)
//!    ├─ observe task per provider: iroh-blobs Observe → what it has of the
//!    │    blob (a bitfield, updated as its own download goes on)
//!    ├─ Pieces (plain state): which piece to ask whom for next
//!    └─ piece task: Get of that piece's chunk ranges → verified into the
//!         store (BLAKE3 per chunk group, by iroh-blobs)
//! ```
//!
//! Rules, each in one function of [`Pieces`]:
//! - a provider is asked only for pieces it has (by its last bitfield), at
//!   most [`PER_PROVIDER`] at a time;
//! - the rarest piece first (fewest providers have it), ties broken by a
//!   per-node random order, so that receivers starting together ask the
//!   origin for different pieces and then trade them among themselves;
//! - the announcer (in a fan-out, the origin whose uplink every receiver
//!   shares) is asked for a piece only when no other free provider has
//!   it: first for the pieces nobody else has, so each piece leaves it
//!   about once and the receivers spread it among themselves;
//! - a piece whose transfer fails or stalls goes back to the pool and its
//!   provider rests for a while ([`PROVIDER_REST`]); after
//!   [`PROVIDER_MAX_FAILURES`] (a member sending what does not verify
//!   fails every time) it is asked nothing more in this fetch.
//!
//! What arrives is written into the blob store by iroh-blobs, verified
//! chunk group by chunk group against the hash, so a lying provider gets
//! nothing in: its request fails and its piece is asked elsewhere. The
//! store's entry is partial until every piece is in; the caller exports it
//! once complete, as for a one-peer fetch.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use iroh_blobs::{
    api::{proto::Bitfield, remote::GetProgressItem},
    protocol::{ChunkRanges, GetRequest, ObserveRequest},
    Hash,
};
use n0_future::StreamExt;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{debug, warn};

use crate::{blobs::FetchError, net::Mesh, EndpointId};

/// Bytes in one piece: large enough that a request's round trip is small
/// against its transfer (1 MiB at 100 Mbit/s is about 84 ms), small enough
/// that 100 MiB spreads over 100 pieces among the receivers.
pub const PIECE_BYTES: u64 = 1 << 20;
/// Pieces asked of one provider at once: keeps its link busy across the
/// gap between one piece's end and the next request.
pub const PER_PROVIDER: usize = 3;
/// How long a provider whose piece failed is left alone.
pub const PROVIDER_REST: Duration = Duration::from_secs(5);
/// Failed pieces after which a provider is asked nothing more in this
/// fetch (one that sends what does not verify fails every time).
pub const PROVIDER_MAX_FAILURES: u32 = 3;
/// Blobs this big or bigger are fetched as a swarm; smaller ones are one
/// request to one peer (a piece or two gain nothing from spreading).
pub const SWARM_MIN_BYTES: u64 = 4 * PIECE_BYTES;

const CHUNK: u64 = 1024;

/// What a swarm fetch did: bytes received from each provider.
#[derive(Debug, Default, Clone)]
pub struct SwarmStats {
    pub from: Vec<(EndpointId, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Missing,
    InFlight,
    Done,
}

#[derive(Debug, Default)]
struct Provider {
    /// What it has, as last observed (`None`: not heard from yet).
    has: Option<ChunkRanges>,
    in_flight: usize,
    resting_until: Option<Instant>,
    failures: u32,
}

/// Which piece to ask whom for: plain state, no I/O (tested with explicit
/// bitfields and times).
#[derive(Debug)]
pub struct Pieces {
    size: u64,
    pieces: Vec<Piece>,
    /// A per-node random order of the pieces (the tie-break).
    order: Vec<usize>,
    providers: HashMap<EndpointId, Provider>,
    announcer: Option<EndpointId>,
}

impl Pieces {
    /// Pieces of a blob of `size` bytes, of which `have` is here already;
    /// `seed` picks this node's order among equally rare pieces.
    pub fn new(size: u64, have: &ChunkRanges, announcer: Option<EndpointId>, seed: u64) -> Self {
        let n = size.div_ceil(PIECE_BYTES).max(1) as usize;
        let mut pieces = vec![Piece::Missing; n];
        for (i, p) in pieces.iter_mut().enumerate() {
            if piece_ranges(size, i).is_subset(have) {
                *p = Piece::Done;
            }
        }
        Pieces {
            size,
            pieces,
            order: shuffled(n, seed),
            providers: HashMap::new(),
            announcer,
        }
    }

    pub fn is_done(&self) -> bool {
        self.pieces.iter().all(|p| *p == Piece::Done)
    }

    /// Pieces not here yet (in flight or not).
    pub fn remaining(&self) -> usize {
        self.pieces.iter().filter(|p| **p != Piece::Done).count()
    }

    /// A provider's bitfield, whole (observe updates are folded by the
    /// caller).
    pub fn saw(&mut self, peer: EndpointId, has: ChunkRanges) {
        self.providers.entry(peer).or_default().has = Some(has);
    }

    /// The provider cannot tell us what it has (its observe failed): it
    /// is asked nothing more.
    pub fn lost(&mut self, peer: EndpointId) {
        if let Some(p) = self.providers.get_mut(&peer) {
            p.has = Some(ChunkRanges::empty());
        }
    }

    /// A provider's bitfield, unless it failed too often to be asked.
    fn usable(p: &Provider) -> Option<&ChunkRanges> {
        p.has
            .as_ref()
            .filter(|_| p.failures < PROVIDER_MAX_FAILURES)
    }

    /// The next piece to ask for and whom, if any provider is free and has
    /// a missing piece; it is then in flight.
    pub fn next(&mut self, now: Instant) -> Option<(EndpointId, usize, ChunkRanges)> {
        let (peer, piece) = self.pick(now)?;
        self.pieces[piece] = Piece::InFlight;
        self.providers.get_mut(&peer).expect("picked").in_flight += 1;
        Some((peer, piece, piece_ranges(self.size, piece)))
    }

    /// The rarest missing piece some free provider has, and that provider
    /// (the announcer only when nobody else has it; among the others the
    /// least busy).
    fn pick(&self, now: Instant) -> Option<(EndpointId, usize)> {
        let free: Vec<(&EndpointId, &Provider)> = self
            .providers
            .iter()
            .filter(|(_, p)| p.in_flight < PER_PROVIDER)
            .filter(|(_, p)| p.resting_until.is_none_or(|t| t <= now))
            .collect();
        if free.is_empty() {
            return None;
        }
        let mut best: Option<(usize, usize, EndpointId)> = None; // (holders, rank, peer)
        for (rank, &i) in self.order.iter().enumerate() {
            if self.pieces[i] != Piece::Missing {
                continue;
            }
            let ranges = piece_ranges(self.size, i);
            let others = self.holders(&ranges);
            let Some(peer) = self.giver(&free, &ranges) else {
                continue;
            };
            let holders = others + usize::from(self.announcer_has(&ranges));
            if best.is_none_or(|(h, _, _)| holders < h) {
                best = Some((holders, rank, peer));
            }
        }
        best.map(|(_, rank, peer)| (peer, self.order[rank]))
    }

    /// The free provider to ask for `ranges`: the announcer only when no
    /// other free provider has it; then the least busy, then the lowest
    /// id (stable).
    fn giver(&self, free: &[(&EndpointId, &Provider)], ranges: &ChunkRanges) -> Option<EndpointId> {
        free.iter()
            .filter(|(_, p)| Self::usable(p).is_some_and(|h| ranges.is_subset(h)))
            .min_by_key(|(id, p)| (Some(**id) == self.announcer, p.in_flight, **id))
            .map(|(id, _)| **id)
    }

    /// Providers other than the announcer that have all of `ranges`.
    fn holders(&self, ranges: &ChunkRanges) -> usize {
        self.providers
            .iter()
            .filter(|(id, _)| Some(**id) != self.announcer)
            .filter(|(_, p)| Self::usable(p).is_some_and(|h| ranges.is_subset(h)))
            .count()
    }

    fn announcer_has(&self, ranges: &ChunkRanges) -> bool {
        self.announcer
            .and_then(|a| self.providers.get(&a))
            .and_then(Self::usable)
            .is_some_and(|h| ranges.is_subset(h))
    }

    /// The piece arrived (verified, in the store).
    pub fn finished(&mut self, peer: EndpointId, piece: usize) {
        self.pieces[piece] = Piece::Done;
        if let Some(p) = self.providers.get_mut(&peer) {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }

    /// The piece did not arrive: back to the pool; its provider rests,
    /// and after [`PROVIDER_MAX_FAILURES`] is asked nothing more.
    /// Returns whether this failure dropped the provider.
    pub fn failed(&mut self, peer: EndpointId, piece: usize, now: Instant) -> bool {
        if self.pieces[piece] == Piece::InFlight {
            self.pieces[piece] = Piece::Missing;
        }
        let Some(p) = self.providers.get_mut(&peer) else {
            return false;
        };
        p.in_flight = p.in_flight.saturating_sub(1);
        p.resting_until = Some(now + PROVIDER_REST);
        p.failures += 1;
        p.failures == PROVIDER_MAX_FAILURES
    }

    /// When a resting provider is free again (the caller wakes then).
    pub fn next_rest_end(&self, now: Instant) -> Option<Instant> {
        self.providers
            .values()
            .filter_map(|p| p.resting_until)
            .filter(|t| *t > now)
            .min()
    }

    /// A provider we asked but that has not answered yet.
    fn saw_nothing_yet(&mut self, peer: EndpointId) {
        self.providers.entry(peer).or_default();
    }

    /// Could any provider still give a missing piece (now or after its
    /// rest, or once it tells us what it has)?
    fn anyone_may_give(&self) -> bool {
        let missing: Vec<ChunkRanges> = (0..self.pieces.len())
            .filter(|i| self.pieces[*i] == Piece::Missing)
            .map(|i| piece_ranges(self.size, i))
            .collect();
        self.providers
            .values()
            .filter(|p| p.failures < PROVIDER_MAX_FAILURES)
            .any(|p| match &p.has {
                None => true,
                Some(h) => missing.iter().any(|r| r.is_subset(h)),
            })
    }

    /// Is anything in flight?
    pub fn busy(&self) -> bool {
        self.pieces.contains(&Piece::InFlight)
    }
}

/// The chunk ranges of piece `i` of a blob of `size` bytes.
fn piece_ranges(size: u64, i: usize) -> ChunkRanges {
    let per = PIECE_BYTES / CHUNK;
    let start = i as u64 * per;
    let end = (start + per).min(size.div_ceil(CHUNK).max(1));
    ChunkRanges::from(bao_tree::ChunkNum(start)..bao_tree::ChunkNum(end))
}

/// 0..n in an order drawn from `seed` (xorshift; Fisher–Yates).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// What a task of the fetch reports back.
enum Event {
    Saw(EndpointId, ChunkRanges),
    Lost(EndpointId),
    Piece {
        peer: EndpointId,
        piece: usize,
        res: Result<u64, FetchError>,
    },
}

impl Mesh {
    /// Fetch `hash` (`size` bytes as announced) into the store from any of
    /// `providers`, piece by piece and from several at once (see the
    /// module). `progress` counts payload bytes as they arrive; `stall`
    /// ends a piece request that moves nothing for that long. Returns the
    /// bytes each provider gave; fails when no provider can give what is
    /// missing (the last provider's error).
    pub async fn fetch_swarm(
        &self,
        hash: Hash,
        size: u64,
        providers: Vec<EndpointId>,
        announcer: Option<EndpointId>,
        progress: &AtomicU64,
        stall: Duration,
    ) -> Result<SwarmStats, FetchError> {
        let have = self.local_ranges(hash).await;
        let seed = u64::from_le_bytes(self.id().as_bytes()[..8].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let mut plan = Pieces::new(size, &have, announcer, seed);
        let (tx, mut events) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        for &peer in &providers {
            plan.saw_nothing_yet(peer);
            tasks.spawn(self.clone().observe_provider(peer, hash, tx.clone()));
        }
        let mut stats: HashMap<EndpointId, u64> = HashMap::new();
        let mut writeback = self.writeback(hash);
        let mut received = 0u64;
        let mut last_error = None;
        while !plan.is_done() {
            let now = Instant::now();
            while let Some((peer, piece, ranges)) = plan.next(now) {
                let req = GetRequest::blob_ranges(hash, ranges);
                tasks.spawn(
                    self.clone()
                        .fetch_piece(peer, piece, req, tx.clone(), stall),
                );
            }
            if !plan.busy() && !plan.anyone_may_give() {
                break;
            }
            let wake = plan.next_rest_end(now).unwrap_or(now + stall);
            let event = tokio::select! {
                e = events.recv() => e,
                _ = tokio::time::sleep_until(wake) => continue,
            };
            match event.expect("we hold a sender") {
                Event::Saw(peer, has) => plan.saw(peer, has),
                Event::Lost(peer) => plan.lost(peer),
                Event::Piece { peer, piece, res } => match res {
                    Ok(n) => {
                        *stats.entry(peer).or_default() += n;
                        progress.fetch_add(n, Ordering::Relaxed);
                        received += n;
                        writeback.received(received);
                        plan.finished(peer, piece);
                    }
                    Err(e) => {
                        debug!(peer = %peer.fmt_short(), piece, "swarm piece failed: {e}");
                        if plan.failed(peer, piece, Instant::now()) {
                            warn!(peer = %peer.fmt_short(), %hash, "{PROVIDER_MAX_FAILURES} pieces from this member failed (last: {e}); not asking it again for this content");
                        }
                        last_error = Some(e);
                    }
                },
            }
        }
        tasks.abort_all();
        let stats = SwarmStats {
            from: stats.into_iter().collect(),
        };
        if plan.is_done() {
            return Ok(stats);
        }
        debug!(
            remaining = plan.remaining(),
            "swarm: no provider has the rest"
        );
        Err(last_error.unwrap_or_else(|| {
            FetchError::transfer(
                &announcer
                    .or(providers.first().copied())
                    .unwrap_or(self.id()),
                "no connected member has the missing pieces",
            )
        }))
    }

    /// What of `hash` the local store has (nothing if it cannot say).
    async fn local_ranges(&self, hash: Hash) -> ChunkRanges {
        match self.inner.store.blobs().observe(hash).await {
            Ok(b) => b.ranges,
            Err(e) => {
                debug!("local bitfield of {hash}: {e}");
                ChunkRanges::empty()
            }
        }
    }

    /// Follow what `peer` has of `hash` until the fetch ends (the task is
    /// aborted then): each update is folded into its whole bitfield.
    async fn observe_provider(self, peer: EndpointId, hash: Hash, tx: mpsc::Sender<Event>) {
        let conn = match self.blob_conn_for(peer).await {
            Ok(c) => c,
            Err(e) => {
                debug!(peer = %peer.fmt_short(), "swarm: no blob connection: {e}");
                tx.send(Event::Lost(peer)).await.ok();
                return;
            }
        };
        let updates = self
            .inner
            .store
            .remote()
            .observe(conn, ObserveRequest::new(hash));
        tokio::pin!(updates);
        let mut whole = Bitfield::empty();
        while let Some(update) = updates.next().await {
            match update {
                Ok(diff) => {
                    whole.update(&diff);
                    if tx
                        .send(Event::Saw(peer, whole.ranges.clone()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    debug!(peer = %peer.fmt_short(), "swarm: observe ended: {e}");
                    break;
                }
            }
        }
        tx.send(Event::Lost(peer)).await.ok();
    }

    /// One piece from one provider into the store; a request that moves
    /// nothing for `stall` fails.
    async fn fetch_piece(
        self,
        peer: EndpointId,
        piece: usize,
        req: GetRequest,
        tx: mpsc::Sender<Event>,
        stall: Duration,
    ) {
        let res = self.get_ranges(peer, req, stall).await;
        tx.send(Event::Piece { peer, piece, res }).await.ok();
    }

    async fn get_ranges(
        &self,
        peer: EndpointId,
        req: GetRequest,
        stall: Duration,
    ) -> Result<u64, FetchError> {
        let conn = self.blob_conn_for(peer).await?;
        let stream = self.inner.store.remote().execute_get(conn, req).stream();
        tokio::pin!(stream);
        loop {
            let item = tokio::time::timeout(stall, stream.next())
                .await
                .map_err(|_| FetchError::transfer(&peer, "piece stalled"))?;
            match item {
                Some(GetProgressItem::Progress(_)) => {}
                Some(GetProgressItem::Done(stats)) => return Ok(stats.payload_bytes_read),
                Some(GetProgressItem::Error(e)) => {
                    self.drop_blob_conn(&peer).await;
                    return Err(FetchError::transfer(&peer, e));
                }
                None => {
                    return Err(FetchError::Incomplete {
                        peer: peer.fmt_short().to_string(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
