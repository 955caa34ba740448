//! Hasher: turns "these paths may have changed" into committed index
//! entries. One batch ([`hash_batch`]) runs three steps:
//!
//! 1. [`classify`]: `lstat` each path (never following symlinks) and
//!    compare it with the index by the one rule,
//!    [`crate::record::disk_matches`]: an unchanged path is skipped without
//!    reading it. Directories that appear are expanded; paths that vanish
//!    become tombstones, with everything indexed below them. It runs on
//!    a thread of its own and hands on what it finds as it goes, so the
//!    next two steps start while it still looks.
//! 2. [`commit::import`]: changed big files are imported into the blob
//!    store *by reference* (hashed with BLAKE3, outboard built, no copy);
//!    small ones are hashed by [`commit::hash_chunk`] and held in their
//!    `refs/` link until a peer asks (`fleetsync_mesh::lazy`).
//! 3. [`commit::commit_chunk`]: each file is re-checked for modification
//!    during the import, and the chunk is committed in one index
//!    transaction with bumped version vectors.
//!
//! If a change on disk matches an entry a peer announced that is still
//! pending (our own receiver just wrote it, maybe before a crash), the
//! index adopts the peer's entry instead of minting a new local version:
//! that is what keeps applied changes from echoing back as local edits.
//!
//! Batches may overlap: the watcher keeps up to two at the hasher, so
//! the next one is classified and hashed while the last one's final
//! commit runs on one thread. Commits stay in the order the batches came
//! ([`Turn`]): a batch hashes at once but commits only after the one
//! before it has ended, so the newer look at a path is the one the index
//! keeps.
//!
//! Nothing is lost on failure: the [`HashOutcome`] returns paths to look at
//! again once settled (`deferred`) and paths that failed (`failed`: the
//! watcher retries them after a backoff).
//!
//! All work runs on the node runtime's blocking pool and worker threads;
//! the actor thread only forwards, so it always answers the supervisor.

mod classify;
mod commit;
mod group;
mod keep_local;

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Instant,
};

use actix::prelude::*;
use fleetsync_mesh::StoreError;
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::{debug, warn};

use crate::{
    content::Hold,
    folder::Folder,
    health::Health,
    index::{IndexError, Observed},
    msg::Ping,
    record::{DiskState, Meta},
    rt::{self, TaskError},
};
use classify::{classify, Found};
use commit::{
    changed_since, commit_chunk, hash_chunk, import, Chunk, Committed, ImportResult, Imported,
};
use group::GroupCommit;
use tokio::sync::{mpsc, oneshot};

/// Messages the hasher answers.
pub mod msg {
    use actix::Message;

    use super::Done;

    /// Look at these paths and commit whatever changed.
    #[derive(Debug, Message)]
    #[rtype(result = "HashOutcome")]
    pub struct HashPaths {
        pub paths: Vec<String>,
        /// Paths whose writer signalled it was done (closed the file,
        /// moved it into place), with what the watcher saw then.
        pub done: Done,
    }

    /// What became of a batch's paths. Every path is committed, skipped
    /// (unchanged, ignored), or returned in one of the two lists.
    #[derive(Debug, Default)]
    pub struct HashOutcome {
        /// Look at these again once they settle (still changing, being
        /// applied by the receiver, written moments ago).
        pub deferred: Vec<String>,
        /// These could not be hashed or committed (index, store or disk
        /// error, a panicked task): retry after a backoff.
        pub failed: Vec<String>,
        /// Entries written to the index.
        pub committed: usize,
    }
}

use msg::{HashOutcome, HashPaths};

/// Files whose writer signalled it was done, with the state the watcher
/// saw afterwards: such a file is hashed at once, even if it was written
/// moments ago, as long as it still shows that state (anything else means
/// it was written again, and it settles first).
pub type Done = HashMap<String, DiskState>;

/// Small files are opened, linked and hashed this many at a time, in one
/// blocking call ([`commit::hash_chunk`]; the store imports them only when
/// a peer asks, see `fleetsync_mesh::lazy`). A small file costs a hand-off
/// to the blocking pool and directory opens more than hashing: a chunk
/// pays them once. 128 rather than 32: S7 (50,000 files) took 1.55–1.79 s
/// against 1.81–2.02 s with a quarter of the blocking-pool hand-offs,
/// whose lock the pool's threads had spun on (alternating builds).
const SMALL_CHUNK: usize = 128;

/// Chunks of small files in flight. Two per core: a chunk's thread
/// often waits (a directory's lock, the disk), and with two in flight S7
/// left most of a core idle (2.40 s against 2.15 s with four, alternating
/// builds).
const SMALL_CHUNKS: usize = 4;

/// Big files hashed concurrently, besides the small ones (the store
/// hashes them on its own threads; more only adds seeks on a spinning
/// disk).
const BIG_CONCURRENCY: usize = 4;

/// Files up to this size are small: hashed here, not imported (the mesh
/// brings them in when a peer asks, `content::IndexedRefs`).
const SMALL_FILE: u64 = 256 * 1024;
const _: () = assert!(SMALL_FILE <= crate::content::HELD_OUTSIDE_MAX);

/// A group commit ([`group`]) starts with at least this many hashed files
/// unless the batch has no more: a commit costs two fsyncs and rewrites
/// every index page it touches (the hash table's keys are random, so a
/// small commit touches a page per file), so a large drop of files is not
/// committed a few files at a time while the first commit runs.
const GROUP_MIN: usize = 512;

/// Most hashed files waiting for the running commit (then hashing waits):
/// bounds memory and one index transaction, and peers still start
/// fetching while the rest of a large drop is hashed. 16,384 was slower
/// (S7 median 1.88 against 1.77 s, five runs each, alternating builds).
const GROUP_MAX: usize = 4096;

/// Why a path could not be hashed or committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    #[error("folder root: {0}")]
    Root(#[source] io::Error),
    #[error("{path}: {source}")]
    Disk {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("import {path}: {source}")]
    Import {
        path: String,
        #[source]
        source: StoreError,
    },
    /// The file changed, or was swapped for something else, while it was
    /// being hashed: it settles and is looked at again.
    #[error("{0} changed while it was hashed")]
    Changed(String),
    #[error("index commit: {0}")]
    Index(#[from] IndexError),
    #[error("blob store sync before the index commit: {source}")]
    StoreSync {
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
}

pub struct Hasher {
    folder: Arc<Folder>,
    health: Arc<Health>,
    turns: Turns,
}

impl Hasher {
    pub fn new(folder: Arc<Folder>, health: Arc<Health>) -> Self {
        Hasher {
            folder,
            health,
            turns: Turns::default(),
        }
    }
}

/// Hands each batch its [`Turn`] and [`BatchEnd`], in the order the
/// batches are taken.
#[derive(Debug, Default)]
pub struct Turns {
    /// The end of the last batch taken: the next one commits after it.
    last_end: Option<oneshot::Receiver<()>>,
}

impl Turns {
    /// The next batch's turn (after the last one taken) and its end.
    pub fn take_next(&mut self) -> (Turn, BatchEnd) {
        let (end, ended) = oneshot::channel();
        (Turn(self.last_end.replace(ended)), BatchEnd { _end: end })
    }
}

/// When a batch may commit: once the batch taken before it has ended
/// (however it ended: done, failed, panicked or aborted). Only the
/// batch's first commit waits; the rest follow it in order.
#[derive(Debug, Default)]
pub struct Turn(Option<oneshot::Receiver<()>>);

/// Held for as long as a batch runs; dropping it gives the next batch
/// its [`Turn`].
#[derive(Debug)]
pub struct BatchEnd {
    _end: oneshot::Sender<()>,
}

impl Turn {
    /// Commit at once: no batch before this one.
    pub fn now() -> Self {
        Turn(None)
    }

    /// Wait for the turn. The sender is never used: the previous batch
    /// ends by dropping it, so the wait ends with a closed channel, which
    /// is no error.
    async fn wait(self) {
        if let Some(ended) = self.0 {
            ended.await.ok();
        }
    }

    /// The turn for whoever commits first; later commits get [`Self::now`].
    fn take(&mut self) -> Turn {
        std::mem::take(self)
    }
}

impl Actor for Hasher {
    type Context = Context<Self>;
}

impl Handler<Ping> for Hasher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

impl Handler<HashPaths> for Hasher {
    type Result = ResponseFuture<HashOutcome>;

    fn handle(&mut self, msg: HashPaths, _: &mut Context<Self>) -> Self::Result {
        let work = self.health.begin();
        let batch = hash_batch_guarded(
            self.folder.clone(),
            self.health.clone(),
            msg.paths,
            msg.done,
            self.turns.take_next(),
        );
        Box::pin(async move {
            let out = batch.await;
            drop(work);
            out
        })
    }
}

/// [`hash_batch`] as a task of its own: if it panics, its paths come back
/// as failed (retried after a backoff) instead of being lost.
/// The task belongs to this hasher incarnation: replacing the hasher
/// aborts it (and fences its commits).
/// The batch ends (`end` is dropped) when the task does.
pub async fn hash_batch_guarded(
    folder: Arc<Folder>,
    health: Arc<Health>,
    paths: Vec<String>,
    done: Done,
    (turn, end): (Turn, BatchEnd),
) -> HashOutcome {
    let batch = hash_done_batch(folder.clone(), health.clone(), paths.clone(), done, turn);
    let task = health.spawn(async move {
        let out = batch.await;
        drop(end);
        out
    });
    match task.await {
        Ok(out) => out,
        // Replaced: the paths go back, to the next hasher; nothing to report.
        Err(e) if e.is_cancelled() => HashOutcome {
            failed: paths,
            ..HashOutcome::default()
        },
        Err(e) => {
            let e = HashError::Task(TaskError(e));
            warn!(folder = folder.id(), "{e}");
            folder.status.error(e.to_string());
            HashOutcome {
                failed: paths,
                ..HashOutcome::default()
            }
        }
    }
}

/// Look at `paths`, hash what changed, commit it; see the module docs.
pub async fn hash_batch(
    folder: Arc<Folder>,
    health: Arc<Health>,
    paths: Vec<String>,
) -> HashOutcome {
    hash_done_batch(folder, health, paths, Done::new(), Turn::now()).await
}

/// [`hash_batch`], with the files of `done` hashed at once while they
/// show the state their writer left, committing once it is `turn`'s.
pub async fn hash_done_batch(
    folder: Arc<Folder>,
    health: Arc<Health>,
    paths: Vec<String>,
    done: Done,
    turn: Turn,
) -> HashOutcome {
    if folder.fault().is_some() {
        // Paused: the rescan after the fault clears finds everything.
        return HashOutcome::default();
    }
    let t0 = Instant::now();
    let (f, p) = (folder.clone(), paths.clone());
    let (mut hand_on, found) = feed();
    let classifying = rt::spawn_blocking(move || classify(&f, p, &done, &mut |x| hand_on.take(x)));
    let mut out = HashOutcome::default();
    let broken = import_and_commit(&folder, &health, found, turn, &mut out).await;
    match classifying.await {
        Ok(plan) => {
            out.deferred.extend(plan.deferred);
            out.failed.extend(plan.failed);
        }
        Err(e) => {
            // A panic while classifying must not lose the paths either:
            // all of them are looked at again (what was committed is then
            // found unchanged).
            let e = TaskError(e);
            folder.status.error(e.to_string());
            return HashOutcome {
                failed: paths,
                ..HashOutcome::default()
            };
        }
    }
    if !broken.is_empty() {
        sort_failed_imports(&folder, broken, &mut out).await;
    }
    debug!(
        folder = folder.id(),
        committed = out.committed,
        deferred = out.deferred.len(),
        failed = out.failed.len(),
        total = ?t0.elapsed(),
        "hash batch done"
    );
    out
}

/// The classifier's end of [`feed`].
struct HandOnFound {
    small: mpsc::Sender<Vec<ToHash>>,
    big: mpsc::Sender<ToHash>,
    observed: Arc<Mutex<Vec<Observation>>>,
}

/// The hashing end of [`feed`]; its channels close when the classifier is
/// done (or panicked).
struct FoundFiles {
    small: mpsc::Receiver<Vec<ToHash>>,
    big: mpsc::Receiver<ToHash>,
    observed: Arc<Mutex<Vec<Observation>>>,
}

/// How what the classifier finds reaches hashing while it still looks at
/// the rest of the batch: small files a chunk at a time and big files one
/// at a time over bounded channels (a classifier ahead of hashing waits,
/// so memory stays bounded), observations into a list that the next
/// commit takes.
fn feed() -> (HandOnFound, FoundFiles) {
    let (small_tx, small) = mpsc::channel(SMALL_CHUNKS);
    let (big_tx, big) = mpsc::channel(BIG_CONCURRENCY);
    let observed = Arc::new(Mutex::new(Vec::new()));
    let hand_on = HandOnFound {
        small: small_tx,
        big: big_tx,
        observed: observed.clone(),
    };
    let found = FoundFiles {
        small,
        big,
        observed,
    };
    (hand_on, found)
}

impl HandOnFound {
    /// Blocking: waits while hashing is a chunk behind. `false` once the
    /// hashing end is gone (the batch was given up).
    fn take(&mut self, found: Found) -> bool {
        if !found.observed.is_empty() {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            observed.extend(found.observed);
        }
        let (small, big): (Vec<_>, Vec<_>) = found
            .files
            .into_iter()
            .partition(|(_, m)| m.stat.size <= SMALL_FILE);
        if !small.is_empty() && self.small.blocking_send(small).is_err() {
            return false;
        }
        big.into_iter().all(|b| self.big.blocking_send(b).is_ok())
    }
}

/// The observations handed on so far, for the commit about to start.
/// Nobody panics while holding the lock (only pushes and takes), so a
/// poisoned list is still sound.
fn take_observed(observed: &Mutex<Vec<Observation>>) -> Vec<Observation> {
    std::mem::take(&mut *observed.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A path and what the hasher saw there, ready to commit.
type Observation = (String, Observed);
/// A changed file to hash, with what `lstat` showed.
type ToHash = (String, Meta);
/// A file that could not be imported, and why.
type Broken = (String, Meta, HashError);
/// A running group commit.
type Committing<'a> = Pin<Box<dyn Future<Output = HashOutcome> + Send + 'a>>;

/// Import the files the classifier hands on (small and big ones side by
/// side, each kind a number at a time) and commit them in groups
/// ([`group`]): hashing goes on while a commit runs, commits run one at a
/// time in hashing order, each takes the observations handed on so far;
/// the first waits for the batch's `turn`. Returns the files whose import
/// failed.
async fn import_and_commit(
    folder: &Arc<Folder>,
    health: &Arc<Health>,
    found: FoundFiles,
    mut turn: Turn,
    out: &mut HashOutcome,
) -> Vec<Broken> {
    let mut broken = Vec::new();
    let FoundFiles {
        mut small,
        mut big,
        observed,
    } = found;
    let mut smalls = small_imports(
        folder,
        health,
        n0_future::stream::poll_fn(move |cx| small.poll_recv(cx)),
    );
    let mut bigs = imports(
        folder,
        health,
        n0_future::stream::poll_fn(move |cx| big.poll_recv(cx)),
        BIG_CONCURRENCY,
    );
    let (mut smalls_left, mut bigs_left) = (true, true);
    let mut group = GroupCommit::new(GROUP_MIN, GROUP_MAX);
    let mut running: Option<Committing<'_>> = None;
    loop {
        if let Some(files) = group.next() {
            let observed = take_observed(&observed);
            let turn = turn.take();
            running = Some(Box::pin(async move {
                turn.wait().await;
                commit_group(folder, health, observed, files).await
            }));
        }
        if group.finished() {
            break;
        }
        let more = group.takes_more();
        tokio::select! {
            done = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                group.committed();
                out.merge(done);
            }
            next = smalls.next(), if more && smalls_left => {
                smalls_left = gather(folder, next, &mut group, &mut broken);
            }
            next = bigs.next(), if more && bigs_left => {
                bigs_left = gather(folder, next, &mut group, &mut broken);
            }
        }
        if !smalls_left && !bigs_left {
            group.end();
        }
    }
    // Observations handed on after the last commit started (or no file
    // was hashed at all: there were none, or every import failed).
    turn.wait().await;
    let rest = take_observed(&observed);
    if !rest.is_empty() {
        out.merge(commit_group(folder, health, rest, Vec::new()).await);
    }
    broken
}

/// Small `files` imported a chunk at a time ([`SMALL_CHUNK`],
/// [`SMALL_CHUNKS`]), in the order the chunks finish.
fn small_imports<'a>(
    folder: &'a Arc<Folder>,
    health: &'a Health,
    chunks: impl n0_future::Stream<Item = Vec<ToHash>> + Send + 'a,
) -> impl n0_future::Stream<Item = ImportResult> + Send + 'a {
    chunks
        .map(move |chunk| async move { hash_chunk(folder, chunk, &|_| health.progress()).await })
        .buffered_unordered(SMALL_CHUNKS)
        .flat_map(n0_future::stream::iter)
}

/// `files` imported `n` at a time, in the order they finish.
fn imports<'a>(
    folder: &'a Arc<Folder>,
    health: &'a Health,
    files: impl n0_future::Stream<Item = ToHash> + Send + 'a,
    n: usize,
) -> impl n0_future::Stream<Item = ImportResult> + Send + 'a {
    files
        .map(move |(rel, meta)| {
            let folder = folder.clone();
            async move {
                // Each step of the store's hashing is progress: a file of
                // many GiB takes longer than the stall timeout.
                let res = import(&folder, &rel, meta, &|_| health.progress()).await;
                (rel, meta, res)
            }
        })
        .buffered_unordered(n)
}

/// Take one import result into the group (or the broken list). Returns
/// whether that stream has more (`false` once it ended).
fn gather(
    folder: &Folder,
    next: Option<ImportResult>,
    group: &mut GroupCommit<(Imported, Hold)>,
    broken: &mut Vec<Broken>,
) -> bool {
    match next {
        Some((_, _, Ok(imported))) => group.add(imported),
        Some((rel, meta, Err(e))) => {
            debug!(folder = folder.id(), path = %rel, "import failed: {e}");
            broken.push((rel, meta, e));
        }
        None => return false,
    }
    true
}

/// Commit one group: its observations and hashed files. The holds keep
/// the files' blobs from garbage collection until the commit is done.
async fn commit_group(
    folder: &Arc<Folder>,
    health: &Arc<Health>,
    observed: Vec<Observation>,
    files: Vec<(Imported, Hold)>,
) -> HashOutcome {
    health.progress();
    let (imported, holds): (Vec<_>, Vec<_>) = files.into_iter().unzip();
    let mut out = HashOutcome::default();
    commit_or_fail(folder, health, Chunk { observed, imported }, &mut out).await;
    drop(holds);
    out
}

impl HashOutcome {
    fn merge(&mut self, other: HashOutcome) {
        self.deferred.extend(other.deferred);
        self.failed.extend(other.failed);
        self.committed += other.committed;
    }
}

async fn sort_failed_imports(folder: &Arc<Folder>, broken: Vec<Broken>, out: &mut HashOutcome) {
    let paths: Vec<String> = broken.iter().map(|(rel, ..)| rel.clone()).collect();
    let f = folder.clone();
    let sorted = rt::blocking(move || {
        broken
            .into_iter()
            .map(|(rel, meta, e)| (changed_since(&f, &rel, meta), rel, e))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(sorted) = sorted else {
        out.failed.extend(paths);
        return;
    };
    for (changed, rel, e) in sorted {
        if changed {
            out.deferred.push(rel);
        } else {
            folder.status.error(e.to_string());
            out.failed.push(rel);
        }
    }
}

/// The store's record of the chunk's imports made durable before the index
/// references them: a crash in between would leave index entries whose
/// content this node has forgotten and never re-imports (the disk matches
/// the record), so no peer could ever fetch them from it. Files hashed
/// here are not in the store: their `refs/` link, made before, is what
/// the record keeps and what a peer's request brings in.
async fn store_synced(folder: &Folder, chunk: &Chunk) -> Result<(), HashError> {
    if !chunk.imported.iter().any(|i| i.stored) {
        return Ok(());
    }
    folder
        .content
        .sync()
        .await
        .map_err(|source| HashError::StoreSync { source })
}

/// Commit a chunk; if that fails, its paths are returned as failed (and
/// the links made for it removed: nothing references them).
async fn commit_or_fail(
    folder: &Arc<Folder>,
    health: &Arc<Health>,
    chunk: Chunk,
    out: &mut HashOutcome,
) {
    if chunk.is_empty() {
        return;
    }
    let (paths, links) = (chunk.paths(), chunk.links());
    let f = folder.clone();
    let h = health.clone();
    let committed = match store_synced(folder, &chunk).await {
        Ok(()) => rt::try_blocking(move || commit_chunk(&f, &h, chunk)).await,
        Err(e) => Err(e),
    };
    match committed {
        Ok(Committed { written, deferred }) => {
            health.progress();
            out.committed += written;
            out.deferred.extend(deferred);
        }
        Err(e) => {
            if matches!(e, HashError::Index(IndexError::Fenced)) {
                debug!(
                    folder = folder.id(),
                    "a replaced hasher's commit was fenced off"
                );
            } else {
                warn!(folder = folder.id(), "{e}; retrying {} paths", paths.len());
                folder.status.error(e.to_string());
            }
            for n in &links {
                folder.fs.remove_ref(n);
            }
            out.failed.extend(paths);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
