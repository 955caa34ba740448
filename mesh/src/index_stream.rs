//! The index-stream protocol, in one place: its messages, the serving end
//! and the subscribing end.
//!
//! One bi-stream per (peer, folder), opened by the subscriber:
//!
//! ```text
//!  subscriber                                         server
//!  Subscribe(FolderWant{folder, index_id, since}) ──►  (within SUBSCRIBE_TIMEOUT)
//!                                                 ◄──  NotShared, end      (unknown folder)
//!                                                 ◄──  TooOld, end         (`since` below the horizon:
//!                                                                           read again from 0)
//!                                                 ◄──  Batch … Batch       (everything after `since`,
//!                                                                           from 0 if the index id differs)
//!                                                 ◄──  CaughtUp
//!                                                 ◄──  Batch …             (as the folder's head moves)
//!  closes its side                                ──►  serving ends
//! ```
//!
//! Parts:
//! - messages: [`IndexRequest`], [`FolderWant`], [`IndexResponse`], and
//!   their sizes ([`REQUEST_LIMITS`], [`BATCH_ENTRIES`]);
//! - serving: [`serve`] accepts a session's subscription streams for as
//!   long as it lives; [`serve_stream`] serves one, reading from a
//!   [`SharedFolders`] / [`IndexSource`] the caller supplies;
//! - subscribing: [`subscribe`] keeps one folder's subscription to a peer
//!   alive for the session (with backoff); [`follow`] runs one stream,
//!   validating every entry with [`FileEntry::validate`] before handing
//!   batches to the caller's [`IndexSink`].
//!
//! Tombstone expiry: a server forgets deletions every peer it still
//! hears from has read, and records the highest sequence number it
//! forgot (its horizon, [`IndexSource::horizon`]). A subscriber asking for
//! entries after a `since` below the horizon would miss deletions, so it
//! is answered [`IndexResponse::TooOld`] instead of batches; [`subscribe`]
//! then tells the sink ([`IndexSink::too_old`]) and subscribes again from
//! 0, and the sink settles what the full read showed once it is caught up
//! ([`IndexSink::settle`]). `since` 0 is a full read and never too old.
//!
//! Policy stays with the caller, behind the traits: which entries a peer
//! may see (the source), which paths a folder ignores and where marks are
//! persisted (the sink). The per-stream ends are generic over the stream
//! halves, so they run over in-memory pipes in the unit tests below.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::{
    backoff::Backoff,
    codec::{encode, read_msg, write_msg, CodecError, Limits},
    identity::short_id,
    model::{FileEntry, ShortId},
    EndpointId, PeerSession,
};

/// Sent by the subscriber on an index stream: one stream per folder, so
/// each folder has its own flow control.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexRequest {
    Subscribe(FolderWant),
}

/// What the subscriber already has of the server's index for one folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderWant {
    pub folder: String,
    /// The server's index id as last seen; a mismatch means the server's
    /// index was recreated and everything is sent again.
    pub index_id: u64,
    /// Highest server sequence number already received.
    pub since: u64,
}

/// Sent by the server on an index stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexResponse {
    /// Entries with sequence numbers in `(previous up_to, up_to]`.
    Batch {
        folder: String,
        index_id: u64,
        entries: Vec<FileEntry>,
        up_to: u64,
    },
    /// The server has sent everything it had when the subscription started
    /// (and since): the subscriber is caught up for now.
    CaughtUp {
        folder: String,
        index_id: u64,
        seq: u64,
    },
    /// The server does not share this folder (or does not send it).
    NotShared { folder: String },
    /// The subscriber's `since` is below the server's horizon: deletions
    /// after it were forgotten, so it must read the index again from 0.
    /// (Appended: the earlier variants keep their tags.)
    TooOld {
        folder: String,
        index_id: u64,
        horizon: u64,
    },
}

/// Is a subscription from `since` too old for a server whose horizon is
/// `horizon`? A full read (0) never is.
pub fn too_old(since: u64, horizon: u64) -> bool {
    since > 0 && since < horizon
}

/// Cap on the subscribe frame (it holds one folder id).
pub const REQUEST_LIMITS: Limits = Limits {
    max_frame: 4096,
    max_decoded: 4096,
};

/// Entries per index batch; keeps frames far below the codec caps even for
/// long paths (4096 B × 1000 ≈ 4 MiB before compression).
pub const BATCH_ENTRIES: usize = 1000;

/// How long a server waits for the Subscribe on a stream it accepted: a
/// member that opens streams and says nothing must not hold them forever.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Index streams served at once on one session. A node subscribes once
/// per folder it shares with us (plus, briefly, a resubscription racing
/// the end of the stream it replaces), so this leaves room for dozens of
/// shared folders, while a member opening streams without end is refused
/// past it: each served stream is a task reading our index.
pub const MAX_SERVED_STREAMS: usize = 64;

/// First wait before subscribing again after a stream ended: short, since
/// most ends are a peer restarting its side.
pub const RESUBSCRIBE_MIN: Duration = Duration::from_millis(500);
/// Longest wait between subscriptions: a peer that keeps failing (or keeps
/// sending garbage) is retried at most this often.
pub const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);

/// How long a subscription the peer answered "not shared" waits before it
/// asks again, unless the peer shows sooner that it shares the folder
/// (which it does at once when it adds it: only a fallback).
pub const NOT_SHARED_RECHECK: Duration = Duration::from_secs(300);

/// What a caller's trait implementation may fail with; kept as the source
/// of the stream's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The node at the other end of an index stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub id: EndpointId,
    /// The id its entries carry in `received_from` / version vectors.
    pub short: ShortId,
}

impl Peer {
    pub fn new(id: EndpointId) -> Self {
        Peer {
            id,
            short: short_id(&id),
        }
    }
}

/// Where a subscriber stands in a server's index of one folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// The server's index id these sequence numbers belong to.
    pub index_id: u64,
    /// Highest server sequence number received.
    pub seq: u64,
}

/// One read of a served index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slice {
    /// The entries this peer may have (possibly fewer than were read).
    pub entries: Vec<FileEntry>,
    /// Highest sequence number read, whether sent or filtered out; the
    /// `from` of the read when there was nothing after it.
    pub up_to: u64,
}

/// The serving side's view of this node's folders.
pub trait SharedFolders: Send + Sync + 'static {
    type Source: IndexSource;

    /// `folder` as served to `peer`, or `None` if it is not shared.
    fn open(&self, folder: &str, peer: &Peer) -> Option<Self::Source>;

    /// What `peer` has been sent of `folder` (for status).
    fn progress(&self, peer: &Peer, folder: &str, sent_seq: u64, caught_up: bool);

    /// `entry` of `folder` cannot be sent to `peer` at all (it does not fit
    /// a frame on its own) and was skipped (already logged): count it.
    fn unsendable(&self, peer: &Peer, folder: &str, entry: &FileEntry);
}

/// One folder's index as served to one peer.
#[async_trait]
pub trait IndexSource: Send + Sync + 'static {
    fn index_id(&self) -> u64;

    /// The folder's newest sequence number; moves after every commit.
    fn head(&self) -> watch::Receiver<u64>;

    /// Entries with sequence numbers above `from`, at most `limit` read,
    /// minus those this peer must not get.
    async fn read(&self, from: u64, limit: usize) -> Result<Slice, BoxError>;

    /// The highest sequence number whose tombstone was forgotten (0:
    /// none): a subscription from below it is answered "too old".
    fn horizon(&self) -> u64 {
        0
    }
}

/// Where a subscription delivers one peer's index of one folder.
#[async_trait]
pub trait IndexSink: Send + Sync {
    /// Where the previous subscription ended (persisted by the sink).
    async fn mark(&self) -> Result<Mark, BoxError>;

    /// Store validated entries together with the mark they reach. Nothing
    /// more is read from the stream until this returns: the backpressure.
    async fn ingest(&self, mark: Mark, entries: Vec<FileEntry>) -> Result<(), BoxError>;

    /// The server has sent everything up to `seq`.
    fn caught_up(&self, seq: u64);

    /// One entry or frame from this peer was rejected (already logged).
    fn rejected(&self);

    /// The server forgot deletions after our mark (its horizon is
    /// `horizon`): the next subscription reads from 0. The sink notes it
    /// durably, so its [`IndexSink::mark`] says 0 until the full read is
    /// settled, even across a restart.
    async fn too_old(&self, horizon: u64) -> Result<(), BoxError> {
        let _ = horizon;
        Ok(())
    }

    /// Called (and awaited) after every `CaughtUp`, once [`IndexSink::caught_up`]
    /// ran: a sink that was reading from 0 after [`IndexSink::too_old`]
    /// settles here what the full read showed.
    async fn settle(&self, seq: u64) -> Result<(), BoxError> {
        let _ = seq;
        Ok(())
    }
}

/// How serving one stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The stream ended before a Subscribe arrived.
    NoRequest,
    /// The folder asked for is not shared; the peer was told so.
    NotShared,
    /// The subscriber's mark is below our horizon; it was told to read
    /// again from 0.
    TooOld,
    /// The subscriber closed its side.
    Unsubscribed,
    /// The folder's head signal is gone (the folder is shutting down).
    HeadGone,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("rejected malformed index request: {0}")]
    Request(#[source] CodecError),
    #[error("index request timed out")]
    RequestTimeout,
    #[error("cannot read index of {folder:?} to serve: {source}")]
    Source {
        folder: String,
        #[source]
        source: BoxError,
    },
    #[error("index stream of {folder:?} closed: {source}")]
    Send {
        folder: String,
        #[source]
        source: CodecError,
    },
}

/// How a subscription stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer does not share the folder: stop asking for it.
    NotShared,
    /// Our mark is below the peer's horizon: read its index again from 0.
    TooOld { horizon: u64 },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    #[error("cannot open an index stream: {0}")]
    Open(#[source] iroh::endpoint::ConnectionError),
    #[error("cannot send the subscription: {0}")]
    Request(#[source] CodecError),
    #[error("peer closed the index stream")]
    Closed,
    #[error("index stream broke: {0}")]
    Io(#[source] std::io::Error),
    #[error("malformed index data: {0}")]
    Malformed(#[source] CodecError),
    #[error("protocol violation: entries for folder {got:?} on the {want:?} stream")]
    WrongFolder { want: String, got: String },
    #[error("cannot store the batch: {0}")]
    Sink(#[source] BoxError),
}

// ---------------------------------------------------------------- serving

/// Serve `session`'s subscription streams for as long as its connection
/// lives. Dropping (aborting) the returned future ends every stream.
pub async fn serve<F: SharedFolders>(session: PeerSession, folders: Arc<F>) {
    let peer = Peer::new(session.peer);
    let mut streams = JoinSet::new();
    loop {
        let (send, recv) = match session.conn.accept_bi().await {
            Ok(halves) => halves,
            Err(e) => {
                debug!(peer = %peer.id.fmt_short(), "session ended: {e}");
                return;
            }
        };
        // Reap finished streams so the set counts only live ones.
        while streams.try_join_next().is_some() {}
        if streams.len() >= MAX_SERVED_STREAMS {
            refuse_stream(&session, &peer, send, recv);
            continue;
        }
        let folders = folders.clone();
        streams.spawn(async move {
            let end = serve_stream(recv, send, &*folders, peer).await;
            log_served(&peer, end);
        });
    }
}

/// A stream over [`MAX_SERVED_STREAMS`]: reset at once (the subscriber
/// sees the stream end and retries with backoff), logged the first time
/// per session, counted in the peer's status.
fn refuse_stream(
    session: &PeerSession,
    peer: &Peer,
    mut send: iroh::endpoint::SendStream,
    mut recv: iroh::endpoint::RecvStream,
) {
    if session.refused_streams_before() == 0 {
        warn!(peer = %peer.id.fmt_short(), "peer opened more than {MAX_SERVED_STREAMS} index streams at once; refusing the extras");
    }
    session.count_refused_stream();
    // Either fails only if the stream is already gone: refused either way.
    let _ = send.reset(REFUSED_STREAM.into());
    let _ = recv.stop(REFUSED_STREAM.into());
}

/// QUIC error code on a refused index stream.
const REFUSED_STREAM: u32 = 429;

fn log_served(peer: &Peer, end: Result<Served, ServeError>) {
    let peer = peer.id.fmt_short();
    match end {
        Ok(how) => debug!(%peer, "index stream done: {how:?}"),
        Err(e @ ServeError::Send { .. }) => debug!(%peer, "{e}"),
        Err(e) => warn!(%peer, "{e}"),
    }
}

/// Serve one subscription: read the Subscribe, then feed the folder's
/// index from the subscriber's mark until the subscriber closes its side.
pub async fn serve_stream<R, W, F>(
    mut recv: R,
    mut send: W,
    folders: &F,
    peer: Peer,
) -> Result<Served, ServeError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: SharedFolders,
{
    let Some(want) = read_subscribe(&mut recv).await? else {
        return Ok(Served::NoRequest);
    };
    let Some(source) = folders.open(&want.folder, &peer) else {
        info!(peer = %peer.id.fmt_short(), folder = %want.folder, "peer asked for a folder we do not share");
        refuse(&mut send, want.folder).await;
        return Ok(Served::NotShared);
    };
    let cursor = start_seq(&want, source.index_id());
    let horizon = source.horizon();
    if too_old(cursor, horizon) {
        info!(peer = %peer.id.fmt_short(), folder = %want.folder, since = cursor, horizon, "peer missed forgotten deletions; telling it to read again from 0");
        let msg = IndexResponse::TooOld {
            folder: want.folder,
            index_id: source.index_id(),
            horizon,
        };
        answer_and_end(&mut send, &msg).await;
        return Ok(Served::TooOld);
    }
    debug!(peer = %peer.id.fmt_short(), folder = %want.folder, since = cursor, "serving index");
    let feed = Feed {
        folders,
        source,
        peer,
        folder: want.folder,
        cursor,
        send,
    };
    feed.run(recv).await
}

async fn read_subscribe<R: AsyncRead + Unpin>(
    recv: &mut R,
) -> Result<Option<FolderWant>, ServeError> {
    let read = read_msg::<_, IndexRequest>(recv, REQUEST_LIMITS);
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, read).await {
        Ok(Ok(Some((IndexRequest::Subscribe(want), _)))) => Ok(Some(want)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(ServeError::Request(e)),
        Err(_) => Err(ServeError::RequestTimeout),
    }
}

/// Tell the subscriber the folder is not shared and end our side.
async fn refuse<W: AsyncWrite + Unpin>(send: &mut W, folder: String) {
    answer_and_end(send, &IndexResponse::NotShared { folder }).await;
}

/// Send a final answer and end our side.
async fn answer_and_end<W: AsyncWrite + Unpin>(send: &mut W, msg: &IndexResponse) {
    // Best effort: the stream ends either way, and a subscriber that missed
    // the answer simply asks again later.
    let _ = write_msg(send, msg).await;
    let _ = send.shutdown().await;
}

/// Where serving starts: after the subscriber's mark, or from the start if
/// the mark belongs to an earlier incarnation of our index.
fn start_seq(want: &FolderWant, index_id: u64) -> u64 {
    if want.index_id == index_id {
        want.since
    } else {
        0
    }
}

/// One folder being fed to one subscriber.
struct Feed<'a, F: SharedFolders, W> {
    folders: &'a F,
    source: F::Source,
    peer: Peer,
    folder: String,
    /// Highest sequence number sent (or skipped as not for this peer).
    cursor: u64,
    send: W,
}

impl<F: SharedFolders, W: AsyncWrite + Unpin + Send> Feed<'_, F, W> {
    async fn run<R: AsyncRead + Unpin + Send>(mut self, mut recv: R) -> Result<Served, ServeError> {
        let mut head = self.source.head();
        let mut caught_up = false;
        // The subscriber sends nothing after the Subscribe: anything the
        // read returns (end, error, stray bytes) means it is done.
        let closed = async move {
            let mut byte = [0u8; 1];
            let _ = recv.read(&mut byte).await;
        };
        tokio::pin!(closed);
        loop {
            let slice = self.read().await?;
            if slice.up_to > self.cursor {
                caught_up = false;
                self.send_batch(slice).await?;
                continue;
            }
            if !caught_up {
                caught_up = true;
                self.send_caught_up().await?;
            }
            let cursor = self.cursor;
            tokio::select! {
                moved = head.wait_for(|h| *h > cursor) => if moved.is_err() {
                    return Ok(Served::HeadGone);
                },
                _ = &mut closed => return Ok(Served::Unsubscribed),
            }
        }
    }

    async fn read(&self) -> Result<Slice, ServeError> {
        self.source
            .read(self.cursor, BATCH_ENTRIES)
            .await
            .map_err(|source| ServeError::Source {
                folder: self.folder.clone(),
                source,
            })
    }

    /// Send one read as batches. A batch too large for one frame (only
    /// hostile vectors make entries that big) is halved until each part
    /// fits, and an entry that cannot fit a frame on its own is skipped
    /// (logged, counted) with the cursor moving past it: the stream never
    /// wedges re-sending what cannot be sent.
    async fn send_batch(&mut self, slice: Slice) -> Result<(), ServeError> {
        // Parts still to send, the next one last.
        let mut todo = vec![slice];
        while let Some(part) = todo.pop() {
            match self.encode_batch(part) {
                Ok((frame, up_to)) => {
                    self.write_frame(&frame).await?;
                    self.cursor = up_to;
                    self.folders
                        .progress(&self.peer, &self.folder, self.cursor, false);
                }
                Err(Unfit(mut part, _)) if part.entries.len() > 1 => {
                    let (first, rest) = halve(&mut part);
                    todo.push(rest);
                    todo.push(first);
                }
                // Not the entries' fault (cannot happen with our own folder
                // ids): give up on the stream as before.
                Err(Unfit(part, e)) if part.entries.is_empty() => return Err(self.send_error(e)),
                Err(Unfit(mut part, _)) => {
                    for entry in part.entries.drain(..) {
                        self.skip_unsendable(&entry);
                    }
                    todo.push(part);
                }
            }
        }
        Ok(())
    }

    /// One part as a frame, or the part back if it is too large for one.
    fn encode_batch(&self, part: Slice) -> Result<(Vec<u8>, u64), Unfit> {
        let msg = IndexResponse::Batch {
            folder: self.folder.clone(),
            index_id: self.source.index_id(),
            entries: part.entries,
            up_to: part.up_to,
        };
        match encode(&msg) {
            Ok(frame) => Ok((frame, part.up_to)),
            Err(e) => {
                let IndexResponse::Batch { entries, .. } = msg else {
                    unreachable!("built as a batch above")
                };
                let part = Slice {
                    entries,
                    up_to: part.up_to,
                };
                Err(Unfit(part, e))
            }
        }
    }

    fn skip_unsendable(&self, entry: &FileEntry) {
        warn!(
            peer = %self.peer.id.fmt_short(), folder = %self.folder, path = %entry.path,
            vector = entry.version.len(),
            "entry too large for an index frame; not sent"
        );
        self.folders.unsendable(&self.peer, &self.folder, entry);
    }

    async fn send_caught_up(&mut self) -> Result<(), ServeError> {
        let msg = IndexResponse::CaughtUp {
            folder: self.folder.clone(),
            index_id: self.source.index_id(),
            seq: self.cursor,
        };
        self.write(&msg).await?;
        self.folders
            .progress(&self.peer, &self.folder, self.cursor, true);
        Ok(())
    }

    async fn write(&mut self, msg: &IndexResponse) -> Result<(), ServeError> {
        let frame = encode(msg).map_err(|source| self.send_error(source))?;
        self.write_frame(&frame).await
    }

    async fn write_frame(&mut self, frame: &[u8]) -> Result<(), ServeError> {
        match self.send.write_all(frame).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_error(CodecError::Io(e))),
        }
    }

    fn send_error(&self, source: CodecError) -> ServeError {
        ServeError::Send {
            folder: self.folder.clone(),
            source,
        }
    }
}

/// A batch that does not encode into one frame, handed back whole, and why.
struct Unfit(Slice, CodecError);

/// Split a part of two or more entries (in sequence order) in two: the
/// first half reaches its last entry's sequence number, the second the
/// part's `up_to`.
fn halve(part: &mut Slice) -> (Slice, Slice) {
    let rest = part.entries.split_off(part.entries.len() / 2);
    let first = std::mem::take(&mut part.entries);
    let first_up_to = first
        .last()
        .map_or(part.up_to, |e| e.sequence.min(part.up_to));
    (
        Slice {
            entries: first,
            up_to: first_up_to,
        },
        Slice {
            entries: rest,
            up_to: part.up_to,
        },
    )
}

// ------------------------------------------------------------ subscribing

/// Keep a subscription to `session`'s index of `folder` alive for as long
/// as the session lives, resuming each time from the sink's mark. Returns
/// when the connection closes. A peer that does not share the folder is
/// asked again once it subscribes to the folder from us (a reload added
/// it there: [`PeerSession::peer_shares`]), or after [`NOT_SHARED_RECHECK`].
pub async fn subscribe<K: IndexSink>(session: &PeerSession, folder: &str, sink: &K) {
    let peer = Peer::new(session.peer);
    let mut backoff = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
    // After "too old", read from 0 whatever the sink says (a sink that
    // could not note it must not loop on the same answer).
    let mut from_zero = false;
    loop {
        if session.conn.close_reason().is_some() {
            return;
        }
        let mut mark = resume_mark(&peer, folder, sink).await;
        if from_zero {
            mark.seq = 0;
        }
        let heard = Heard::new(sink);
        match subscribe_once(session, &peer, folder, mark, &heard).await {
            Ok(Ended::NotShared) => {
                let shares = session.shares_notify(folder);
                tokio::select! {
                    _ = shares.notified() => {}
                    _ = tokio::time::sleep(NOT_SHARED_RECHECK) => {}
                    _ = session.conn.closed() => return,
                }
                continue;
            }
            Ok(Ended::TooOld { horizon }) => {
                from_zero = true;
                if let Err(e) = sink.too_old(horizon).await {
                    warn!(peer = %peer.id.fmt_short(), folder, "cannot note that the peer's index must be read again: {e}");
                }
                continue;
            }
            Err(e) => debug!(peer = %peer.id.fmt_short(), folder, "index subscription ended: {e}"),
        }
        let wait = next_wait(&mut backoff, heard.anything());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = session.conn.closed() => return,
        }
    }
}

/// The wait before subscribing again (with jitter, see [`Backoff`]).
/// A subscription that worked (the peer sent anything) starts the backoff
/// over: only streams that keep failing at once wait longer, doubling up
/// to [`RESUBSCRIBE_MAX`]. (Without the reset, a session whose streams had
/// broken a few times over its life waited the maximum after every break.)
fn next_wait(backoff: &mut Backoff, worked: bool) -> Duration {
    if worked {
        backoff.reset();
    }
    backoff.next_wait()
}

/// The caller's sink, noting whether the peer sent anything on a stream.
struct Heard<'a, K> {
    sink: &'a K,
    heard: AtomicBool,
}

impl<'a, K: IndexSink> Heard<'a, K> {
    fn new(sink: &'a K) -> Self {
        Heard {
            sink,
            heard: AtomicBool::new(false),
        }
    }

    fn anything(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl<K: IndexSink> IndexSink for Heard<'_, K> {
    async fn mark(&self) -> Result<Mark, BoxError> {
        self.sink.mark().await
    }

    async fn ingest(&self, mark: Mark, entries: Vec<FileEntry>) -> Result<(), BoxError> {
        self.heard.store(true, Ordering::Relaxed);
        self.sink.ingest(mark, entries).await
    }

    fn caught_up(&self, seq: u64) {
        self.heard.store(true, Ordering::Relaxed);
        self.sink.caught_up(seq);
    }

    fn rejected(&self) {
        self.sink.rejected();
    }

    async fn too_old(&self, horizon: u64) -> Result<(), BoxError> {
        self.sink.too_old(horizon).await
    }

    async fn settle(&self, seq: u64) -> Result<(), BoxError> {
        self.sink.settle(seq).await
    }
}

async fn resume_mark<K: IndexSink>(peer: &Peer, folder: &str, sink: &K) -> Mark {
    sink.mark().await.unwrap_or_else(|e| {
        // Asking for everything again is always safe, only slower.
        warn!(peer = %peer.id.fmt_short(), folder, "cannot read where the last subscription ended; starting over: {e}");
        Mark::default()
    })
}

async fn subscribe_once<K: IndexSink>(
    session: &PeerSession,
    peer: &Peer,
    folder: &str,
    mark: Mark,
    sink: &K,
) -> Result<Ended, SubscribeError> {
    let (send, recv) = session.conn.open_bi().await.map_err(SubscribeError::Open)?;
    follow(recv, send, peer, folder, mark, sink).await
}

/// Run one subscription stream: send the Subscribe, then hand every batch
/// (validated) to the sink until the stream ends. `send` stays open for the
/// whole subscription: closing it is how a subscriber unsubscribes.
pub async fn follow<R, W, K>(
    mut recv: R,
    mut send: W,
    peer: &Peer,
    folder: &str,
    mark: Mark,
    sink: &K,
) -> Result<Ended, SubscribeError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    K: IndexSink,
{
    let want = FolderWant {
        folder: folder.to_string(),
        index_id: mark.index_id,
        since: mark.seq,
    };
    write_msg(&mut send, &IndexRequest::Subscribe(want))
        .await
        .map_err(SubscribeError::Request)?;
    loop {
        match read_response(&mut recv, peer, folder, sink).await? {
            IndexResponse::Batch {
                folder: got,
                index_id,
                entries,
                up_to,
            } => {
                check_folder(peer, folder, got)?;
                let entries = screen(peer, folder, entries, sink);
                let mark = Mark {
                    index_id,
                    seq: up_to,
                };
                sink.ingest(mark, entries)
                    .await
                    .map_err(SubscribeError::Sink)?;
            }
            IndexResponse::CaughtUp { seq, .. } => {
                sink.caught_up(seq);
                sink.settle(seq).await.map_err(SubscribeError::Sink)?;
            }
            IndexResponse::NotShared { folder } => {
                info!(peer = %peer.id.fmt_short(), %folder, "peer does not share this folder");
                return Ok(Ended::NotShared);
            }
            IndexResponse::TooOld { horizon, .. } => {
                info!(peer = %peer.id.fmt_short(), folder, since = mark.seq, horizon, "peer forgot deletions we never read; reading its index again from 0");
                return Ok(Ended::TooOld { horizon });
            }
        }
    }
}

/// The next message; a malformed frame is rejected (logged, counted) and
/// ends the stream.
async fn read_response<R: AsyncRead + Unpin, K: IndexSink>(
    recv: &mut R,
    peer: &Peer,
    folder: &str,
    sink: &K,
) -> Result<IndexResponse, SubscribeError> {
    match read_msg::<_, IndexResponse>(recv, Limits::default()).await {
        Ok(Some((msg, _))) => Ok(msg),
        Ok(None) => Err(SubscribeError::Closed),
        Err(CodecError::Io(e)) => Err(SubscribeError::Io(e)),
        Err(e) => {
            warn!(peer = %peer.id.fmt_short(), folder, "rejected malformed index data from peer: {e}");
            sink.rejected();
            Err(SubscribeError::Malformed(e))
        }
    }
}

/// A stream carries one folder: entries for another are a protocol violation.
fn check_folder(peer: &Peer, want: &str, got: String) -> Result<(), SubscribeError> {
    if got == want {
        return Ok(());
    }
    warn!(peer = %peer.id.fmt_short(), "peer sent entries for folder {got:?} on the {want:?} stream; dropping stream");
    Err(SubscribeError::WrongFolder {
        want: want.to_string(),
        got,
    })
}

/// Drop malformed or hostile entries one by one (logged, counted); the rest
/// of the batch goes on.
fn screen<K: IndexSink>(
    peer: &Peer,
    folder: &str,
    entries: Vec<FileEntry>,
    sink: &K,
) -> Vec<FileEntry> {
    entries
        .into_iter()
        .filter(|e| match e.validate() {
            Ok(()) => true,
            Err(err) => {
                warn!(peer = %peer.id.fmt_short(), folder, "rejected entry from peer: {err}");
                sink.rejected();
                false
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use tokio::{
        io::{duplex, DuplexStream},
        sync::mpsc,
        task::JoinHandle,
    };

    use super::*;
    use crate::model::{EntryKind, VersionVector};

    /// Long enough for any step of these tests on a loaded machine; they
    /// wait for events, never for time.
    const DEADLINE: Duration = Duration::from_secs(10);
    const INDEX_ID: u64 = 77;
    const PIPE: usize = 1 << 20;

    fn entry(path: &str, seq: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::Directory,
            size: 0,
            mtime_ns: 1,
            mode: 0o755,
            hash: None,
            symlink_target: None,
            deleted: false,
            version: VersionVector::from_pairs([(ShortId(1), seq)]),
            modified_by: ShortId(1),
            sequence: seq,
        }
    }

    fn peer() -> Peer {
        Peer::new(iroh::SecretKey::generate().public())
    }

    /// One folder's index in memory: entries in sequence order and a head.
    #[derive(Clone)]
    struct FakeSource {
        entries: Arc<Mutex<Vec<FileEntry>>>,
        head: Arc<watch::Sender<u64>>,
        horizon: u64,
    }

    impl FakeSource {
        fn with(n: u64) -> Self {
            let src = FakeSource {
                entries: Default::default(),
                head: Arc::new(watch::channel(0).0),
                horizon: 0,
            };
            for seq in 1..=n {
                src.commit(&format!("d{seq}"));
            }
            src
        }

        fn commit(&self, path: &str) {
            let mut entries = self.entries.lock().unwrap();
            let seq = entries.len() as u64 + 1;
            entries.push(entry(path, seq));
            self.head.send_replace(seq);
        }
    }

    #[async_trait]
    impl IndexSource for FakeSource {
        fn index_id(&self) -> u64 {
            INDEX_ID
        }
        fn head(&self) -> watch::Receiver<u64> {
            self.head.subscribe()
        }
        fn horizon(&self) -> u64 {
            self.horizon
        }
        async fn read(&self, from: u64, limit: usize) -> Result<Slice, BoxError> {
            let entries: Vec<FileEntry> = self
                .entries
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.sequence > from)
                .take(limit)
                .cloned()
                .collect();
            let up_to = entries.last().map_or(from, |e| e.sequence);
            Ok(Slice { entries, up_to })
        }
    }

    #[derive(Default)]
    struct FakeFolders {
        folders: HashMap<String, FakeSource>,
        progress: Mutex<Vec<(String, u64, bool)>>,
        unsendable: Mutex<Vec<String>>,
    }

    impl SharedFolders for FakeFolders {
        type Source = FakeSource;
        fn open(&self, folder: &str, _: &Peer) -> Option<FakeSource> {
            self.folders.get(folder).cloned()
        }
        fn progress(&self, _: &Peer, folder: &str, sent_seq: u64, caught_up: bool) {
            let p = (folder.to_string(), sent_seq, caught_up);
            self.progress.lock().unwrap().push(p);
        }
        fn unsendable(&self, _: &Peer, _: &str, entry: &FileEntry) {
            self.unsendable.lock().unwrap().push(entry.path.clone());
        }
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        Batch(Mark, Vec<String>),
        CaughtUp(u64),
        Rejected,
    }

    struct FakeSink {
        events: mpsc::UnboundedSender<Event>,
        fail_ingest: bool,
    }

    #[async_trait]
    impl IndexSink for FakeSink {
        async fn mark(&self) -> Result<Mark, BoxError> {
            Ok(Mark::default())
        }
        async fn ingest(&self, mark: Mark, entries: Vec<FileEntry>) -> Result<(), BoxError> {
            if self.fail_ingest {
                return Err("disk full".into());
            }
            let paths = entries.into_iter().map(|e| e.path).collect();
            self.events.send(Event::Batch(mark, paths)).unwrap();
            Ok(())
        }
        fn caught_up(&self, seq: u64) {
            self.events.send(Event::CaughtUp(seq)).unwrap();
        }
        fn rejected(&self) {
            self.events.send(Event::Rejected).unwrap();
        }
    }

    /// A subscriber running `follow` over in-memory pipes; the test plays
    /// (or runs) the server on the other ends.
    struct Subscriber {
        task: JoinHandle<Result<Ended, SubscribeError>>,
        events: mpsc::UnboundedReceiver<Event>,
        /// The server's ends: it reads the subscriber's requests from
        /// `recv` and writes responses to `send`.
        server: Option<(DuplexStream, DuplexStream)>,
    }

    fn start_subscriber(folder: &str, mark: Mark, fail_ingest: bool) -> Subscriber {
        let (to_server, server_recv) = duplex(PIPE);
        let (server_send, from_server) = duplex(PIPE);
        let (tx, events) = mpsc::unbounded_channel();
        let sink = FakeSink {
            events: tx,
            fail_ingest,
        };
        let folder = folder.to_string();
        let task = tokio::spawn(async move {
            follow(from_server, to_server, &peer(), &folder, mark, &sink).await
        });
        Subscriber {
            task,
            events,
            server: Some((server_recv, server_send)),
        }
    }

    impl Subscriber {
        /// Serve it with the real server over `folders`.
        fn serve(&mut self, folders: Arc<FakeFolders>) -> JoinHandle<Result<Served, ServeError>> {
            let (recv, send) = self.server.take().unwrap();
            tokio::spawn(async move { serve_stream(recv, send, &*folders, peer()).await })
        }

        /// Play a server by hand: read the Subscribe, send `frames`.
        async fn play(&mut self, frames: &[&[u8]]) -> FolderWant {
            let (recv, send) = self.server.as_mut().unwrap();
            let (IndexRequest::Subscribe(want), _) =
                read_msg(recv, REQUEST_LIMITS).await.unwrap().unwrap();
            for f in frames {
                send.write_all(f).await.unwrap();
            }
            want
        }

        async fn next(&mut self) -> Event {
            tokio::time::timeout(DEADLINE, self.events.recv())
                .await
                .expect("an event before the deadline")
                .expect("the sink is alive")
        }

        async fn end(self) -> (Result<Ended, SubscribeError>, Vec<Event>) {
            let res = tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("the subscriber ends before the deadline")
                .unwrap();
            let mut events = self.events;
            let mut rest = Vec::new();
            while let Ok(e) = events.try_recv() {
                rest.push(e);
            }
            (res, rest)
        }
    }

    fn folders_with(folder: &str, source: FakeSource) -> Arc<FakeFolders> {
        let mut f = FakeFolders::default();
        f.folders.insert(folder.into(), source);
        Arc::new(f)
    }

    /// A server on pipes, subscribed to folder "f" from the start: the
    /// subscriber's pipe ends and the server task.
    async fn subscribed(
        folders: &Arc<FakeFolders>,
    ) -> (
        DuplexStream,
        DuplexStream,
        JoinHandle<Result<Served, ServeError>>,
    ) {
        let (mut to_server, server_recv) = duplex(PIPE);
        let (server_send, from_server) = duplex(PIPE);
        let server = tokio::spawn({
            let folders = folders.clone();
            async move { serve_stream(server_recv, server_send, &*folders, peer()).await }
        });
        let want = FolderWant {
            folder: "f".into(),
            index_id: INDEX_ID,
            since: 0,
        };
        write_msg(&mut to_server, &IndexRequest::Subscribe(want))
            .await
            .unwrap();
        (to_server, from_server, server)
    }

    fn frame(msg: &IndexResponse) -> Vec<u8> {
        crate::codec::encode(msg).unwrap()
    }

    fn paths(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|s| format!("d{s}")).collect()
    }

    fn mark(seq: u64) -> Mark {
        Mark {
            index_id: INDEX_ID,
            seq,
        }
    }

    #[test]
    fn only_a_partial_read_from_below_the_horizon_is_too_old() {
        assert!(too_old(3, 5));
        assert!(!too_old(5, 5));
        assert!(!too_old(9, 5));
        assert!(!too_old(0, 5));
        assert!(!too_old(3, 0));
    }

    #[tokio::test]
    async fn a_subscriber_below_the_horizon_is_told_too_old_and_gets_no_entries() {
        let mut source = FakeSource::with(8);
        source.horizon = 5;
        let folders = folders_with("f", source);
        let mut sub = start_subscriber("f", mark(3), false);
        let server = sub.serve(folders.clone());
        let (res, events) = sub.end().await;
        assert_eq!(res.unwrap(), Ended::TooOld { horizon: 5 });
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(server.await.unwrap().unwrap(), Served::TooOld);
        // From the horizon, or a full read from 0, it is served as before.
        for (since, first) in [(5, 6), (0, 1)] {
            let mut sub = start_subscriber("f", mark(since), false);
            let _server = sub.serve(folders.clone());
            assert_eq!(sub.next().await, Event::Batch(mark(8), paths(first..=8)));
            assert_eq!(sub.next().await, Event::CaughtUp(8));
        }
    }

    #[tokio::test]
    async fn subscriber_gets_batches_then_caught_up_then_live_batches() {
        let n = BATCH_ENTRIES as u64 + 1;
        let source = FakeSource::with(n);
        let folders = folders_with("f", source.clone());
        let mut sub = start_subscriber("f", Mark::default(), false);
        let server = sub.serve(folders.clone());
        let full = BATCH_ENTRIES as u64;
        assert_eq!(sub.next().await, Event::Batch(mark(full), paths(1..=full)));
        assert_eq!(sub.next().await, Event::Batch(mark(n), paths(n..=n)));
        assert_eq!(sub.next().await, Event::CaughtUp(n));
        source.commit("live");
        assert_eq!(
            sub.next().await,
            Event::Batch(mark(n + 1), vec!["live".into()])
        );
        assert_eq!(sub.next().await, Event::CaughtUp(n + 1));
        sub.task.abort();
        let end = tokio::time::timeout(DEADLINE, server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end.unwrap(), Served::Unsubscribed);
        let progress = folders.progress.lock().unwrap().clone();
        let f = |seq, caught_up| ("f".to_string(), seq, caught_up);
        assert_eq!(
            progress,
            vec![
                f(full, false),
                f(n, false),
                f(n, true),
                f(n + 1, false),
                f(n + 1, true)
            ]
        );
    }

    #[tokio::test]
    async fn resumes_from_the_subscribers_mark() {
        let folders = folders_with("f", FakeSource::with(5));
        let mut sub = start_subscriber("f", mark(3), false);
        let _server = sub.serve(folders);
        assert_eq!(sub.next().await, Event::Batch(mark(5), paths(4..=5)));
        assert_eq!(sub.next().await, Event::CaughtUp(5));
    }

    #[tokio::test]
    async fn an_index_id_mismatch_restarts_from_zero() {
        let folders = folders_with("f", FakeSource::with(5));
        let stale = Mark {
            index_id: INDEX_ID + 1,
            seq: 3,
        };
        let mut sub = start_subscriber("f", stale, false);
        let _server = sub.serve(folders);
        assert_eq!(sub.next().await, Event::Batch(mark(5), paths(1..=5)));
        assert_eq!(sub.next().await, Event::CaughtUp(5));
    }

    #[tokio::test]
    async fn an_unknown_folder_is_not_shared_and_the_subscriber_stops() {
        let folders = folders_with("f", FakeSource::with(2));
        let mut sub = start_subscriber("elsewhere", Mark::default(), false);
        let server = sub.serve(folders);
        let (res, events) = sub.end().await;
        assert_eq!(res.unwrap(), Ended::NotShared);
        assert_eq!(events, vec![]);
        assert_eq!(server.await.unwrap().unwrap(), Served::NotShared);
    }

    #[tokio::test]
    async fn a_hostile_entry_is_rejected_and_counted_and_the_rest_of_its_batch_applies() {
        let mut sub = start_subscriber("f", Mark::default(), false);
        let batch = IndexResponse::Batch {
            folder: "f".into(),
            index_id: INDEX_ID,
            entries: vec![entry("ok-1", 1), entry("../x", 2), entry("ok-2", 3)],
            up_to: 3,
        };
        sub.play(&[&frame(&batch)]).await;
        assert_eq!(sub.next().await, Event::Rejected);
        let ok = vec!["ok-1".to_string(), "ok-2".to_string()];
        assert_eq!(sub.next().await, Event::Batch(mark(3), ok));
    }

    #[tokio::test]
    async fn a_batch_for_another_folder_ends_the_stream_as_a_protocol_violation() {
        let mut sub = start_subscriber("f", Mark::default(), false);
        let batch = IndexResponse::Batch {
            folder: "other".into(),
            index_id: INDEX_ID,
            entries: vec![entry("a", 1)],
            up_to: 1,
        };
        sub.play(&[&frame(&batch)]).await;
        let (res, events) = sub.end().await;
        assert!(
            matches!(res, Err(SubscribeError::WrongFolder { ref got, .. }) if got == "other"),
            "{res:?}"
        );
        assert_eq!(events, vec![], "nothing of the other folder was ingested");
    }

    #[tokio::test]
    async fn an_oversized_frame_ends_the_stream_with_an_error_and_is_counted() {
        let mut sub = start_subscriber("f", Mark::default(), false);
        sub.play(&[&(1u32 << 30).to_be_bytes(), &[0u8; 64]]).await;
        let (res, events) = sub.end().await;
        assert!(
            matches!(
                res,
                Err(SubscribeError::Malformed(CodecError::TooLarge { .. }))
            ),
            "{res:?}"
        );
        assert_eq!(events, vec![Event::Rejected]);
    }

    #[tokio::test]
    async fn a_garbage_frame_ends_the_stream_with_an_error_and_is_counted() {
        let mut sub = start_subscriber("f", Mark::default(), false);
        sub.play(&[&[0, 0, 0, 5, 0, 0xde, 0xad, 0xbe, 0xef]]).await;
        let (res, events) = sub.end().await;
        assert!(
            matches!(res, Err(SubscribeError::Malformed(CodecError::Decode(_)))),
            "{res:?}"
        );
        assert_eq!(events, vec![Event::Rejected]);
    }

    #[tokio::test]
    async fn a_batch_the_sink_cannot_store_ends_the_stream() {
        let folders = folders_with("f", FakeSource::with(1));
        let mut sub = start_subscriber("f", Mark::default(), true);
        let _server = sub.serve(folders);
        let (res, _) = sub.end().await;
        assert!(matches!(res, Err(SubscribeError::Sink(_))), "{res:?}");
    }

    #[tokio::test]
    async fn a_server_that_ends_the_stream_ends_the_subscription() {
        let mut sub = start_subscriber("f", Mark::default(), false);
        sub.play(&[]).await;
        drop(sub.server.take());
        let (res, _) = sub.end().await;
        assert!(matches!(res, Err(SubscribeError::Closed)), "{res:?}");
    }

    #[tokio::test]
    async fn the_server_stops_when_the_subscriber_closes() {
        let folders = folders_with("f", FakeSource::with(0));
        let (to_server, mut from_server, server) = subscribed(&folders).await;
        let (reply, _) = read_msg::<_, IndexResponse>(&mut from_server, Limits::default())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(reply, IndexResponse::CaughtUp { seq: 0, .. }),
            "{reply:?}"
        );
        drop(to_server);
        let end = tokio::time::timeout(DEADLINE, server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end.unwrap(), Served::Unsubscribed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_a_subscribe_is_dropped_after_the_deadline() {
        let folders = FakeFolders::default();
        let (_to_server, server_recv) = duplex(PIPE);
        let (server_send, _from_server) = duplex(PIPE);
        let end = serve_stream(server_recv, server_send, &folders, peer()).await;
        assert!(matches!(end, Err(ServeError::RequestTimeout)), "{end:?}");
    }

    #[tokio::test]
    async fn an_oversized_request_is_rejected() {
        let folders = FakeFolders::default();
        let (mut to_server, server_recv) = duplex(PIPE);
        let (server_send, _from_server) = duplex(PIPE);
        let big = REQUEST_LIMITS.max_frame as u32 + 1;
        to_server.write_all(&big.to_be_bytes()).await.unwrap();
        let end = serve_stream(server_recv, server_send, &folders, peer()).await;
        assert!(
            matches!(end, Err(ServeError::Request(CodecError::TooLarge { .. }))),
            "{end:?}"
        );
    }

    /// An entry whose vector has `pairs` random (incompressible) pairs.
    fn heavy(path: &str, seq: u64, pairs: usize) -> FileEntry {
        let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            // xorshift64: fast, and zstd finds nothing to squeeze.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let version =
            VersionVector::from_pairs((0..pairs).map(|_| (ShortId(next()), next() >> 2 | 1)));
        FileEntry {
            version,
            ..entry(path, seq)
        }
    }

    /// Regression (issue 10, oversized version vectors): a batch over the
    /// frame cap failed to encode and ended the stream, and the subscriber
    /// asked again from the same point forever. Now it is split until each
    /// part fits, and an entry that fits no frame is skipped and counted.
    #[tokio::test]
    async fn oversized_version_vectors_split_the_batch_and_skip_what_cannot_fit() {
        // ~1 MiB per heavy entry, so ten of them exceed the 8 MiB cap;
        // the giant alone does too.
        let per = (1 << 20) / 18;
        let source = FakeSource::with(0);
        let mut want_paths = Vec::new();
        {
            let mut entries = source.entries.lock().unwrap();
            for seq in 1..=12u64 {
                let (path, e) = match seq {
                    6 => ("giant".to_string(), heavy("giant", seq, 10 * per)),
                    s if s % 2 == 0 => (format!("h{s}"), heavy(&format!("h{s}"), s, per)),
                    s => (format!("d{s}"), entry(&format!("d{s}"), s)),
                };
                if seq != 6 {
                    want_paths.push(path);
                }
                entries.push(e);
            }
        }
        source.head.send_replace(12);
        let folders = folders_with("f", source);
        let (to_server, mut from_server, server) = subscribed(&folders).await;
        let (mut got, mut marks) = (Vec::new(), Vec::new());
        loop {
            let read = read_msg::<_, IndexResponse>(&mut from_server, Limits::default());
            let reply = tokio::time::timeout(DEADLINE, read).await.unwrap();
            match reply.unwrap().expect("the stream stays open") {
                (IndexResponse::Batch { entries, up_to, .. }, _) => {
                    got.extend(entries.into_iter().map(|e| e.path));
                    marks.push(up_to);
                }
                (IndexResponse::CaughtUp { seq, .. }, _) => {
                    assert_eq!(seq, 12);
                    break;
                }
                (other, _) => panic!("{other:?}"),
            }
        }
        assert_eq!(got, want_paths, "everything but the giant, in order");
        assert!(marks.len() > 1, "the batch was split: {marks:?}");
        assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
        assert_eq!(marks.last(), Some(&12));
        assert_eq!(*folders.unsendable.lock().unwrap(), vec!["giant"]);
        assert!(!server.is_finished(), "the stream is still served");
        drop(to_server);
        let end = tokio::time::timeout(DEADLINE, server).await.unwrap();
        assert_eq!(end.unwrap().unwrap(), Served::Unsubscribed);
    }

    #[test]
    fn serving_starts_after_the_mark_only_for_the_same_index() {
        let want = |index_id| FolderWant {
            folder: "f".into(),
            index_id,
            since: 9,
        };
        assert_eq!(start_seq(&want(INDEX_ID), INDEX_ID), 9);
        assert_eq!(start_seq(&want(INDEX_ID + 1), INDEX_ID), 0);
    }

    #[test]
    fn resubscribe_backoff_doubles_up_to_its_cap_while_streams_fail() {
        let mut b = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
        assert!(within(next_wait(&mut b, false), RESUBSCRIBE_MIN));
        assert!(within(next_wait(&mut b, false), RESUBSCRIBE_MIN * 2));
        for _ in 0..20 {
            assert!(next_wait(&mut b, false) <= RESUBSCRIBE_MAX);
        }
        assert!(within(next_wait(&mut b, false), RESUBSCRIBE_MAX));
    }

    /// Is `w` within `[d/2, d]` (the jittered wait for step `d`)?
    fn within(w: Duration, d: Duration) -> bool {
        w >= d / 2 && w <= d
    }

    /// Regression (issue 8): the backoff never reset after a subscription
    /// that worked, so once a session's streams had broken a few times,
    /// every later break waited the maximum before resubscribing.
    #[test]
    fn a_subscription_that_worked_starts_the_resubscribe_backoff_over() {
        let mut b = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
        for _ in 0..20 {
            next_wait(&mut b, false);
        }
        assert!(within(next_wait(&mut b, true), RESUBSCRIBE_MIN));
        next_wait(&mut b, false);
        next_wait(&mut b, false);
        assert!(within(next_wait(&mut b, true), RESUBSCRIBE_MIN));
    }

    #[tokio::test]
    async fn the_subscription_notes_whether_the_peer_sent_anything() {
        let (tx, mut events) = mpsc::unbounded_channel();
        let sink = FakeSink {
            events: tx,
            fail_ingest: false,
        };
        let heard = Heard::new(&sink);
        heard.rejected();
        assert!(
            !heard.anything(),
            "a rejected frame is not a working stream"
        );
        heard.caught_up(3);
        assert!(heard.anything(), "caught up");
        let heard = Heard::new(&sink);
        heard.ingest(mark(1), vec![]).await.unwrap();
        assert!(heard.anything(), "a batch");
        // Everything reaches the caller's sink.
        let mut got = Vec::new();
        while let Ok(e) = events.try_recv() {
            got.push(e);
        }
        assert_eq!(got.len(), 3, "{got:?}");
    }
}
