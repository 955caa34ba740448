//! Hasher: turns "these paths may have changed" into committed index
//! entries. One batch ([`hash_batch`]) runs three steps:
//!
//! 1. [`classify`]: `lstat` each path (never following symlinks) and
//!    compare it with the index by the one rule,
//!    [`crate::record::disk_matches`]: an unchanged path is skipped without
//!    reading it. Directories that appear are expanded; paths that vanish
//!    become tombstones, with everything indexed below them.
//! 2. [`commit::import`]: changed files are imported into the blob store
//!    *by reference* (hashed with BLAKE3, outboard built, no copy).
//! 3. [`commit::commit_chunk`]: each file is re-checked for modification
//!    during the import, and the chunk is committed in one index
//!    transaction with bumped version vectors.
//!
//! If a change on disk matches an entry a peer announced that is still
//! pending (our own receiver just wrote it, maybe before a crash), the
//! index adopts the peer's entry instead of minting a new local version:
//! that is what keeps applied changes from echoing back as local edits.
//!
//! Nothing is lost on failure: the [`HashOutcome`] returns paths to look at
//! again once settled (`deferred`) and paths that failed (`failed`: the
//! watcher retries them after a backoff).
//!
//! All work runs on the node runtime's blocking pool and worker threads;
//! the actor thread only forwards, so it always answers the supervisor.

mod classify;
mod commit;
mod keep_local;

use std::{collections::HashMap, io, sync::Arc, time::Instant};

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
use classify::{classify, Plan};
use commit::{changed_since, commit_chunk, import, Chunk, Committed, Imported};

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

/// Files hashed concurrently (the store hashes on its own threads; more
/// only adds seeks on a spinning disk).
const IMPORT_CONCURRENCY: usize = 8;

/// Files hashed per index commit, so peers start fetching while we still
/// hash the rest of a large drop of files.
const COMMIT_CHUNK: usize = 500;

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
}

impl Hasher {
    pub fn new(folder: Arc<Folder>, health: Arc<Health>) -> Self {
        Hasher { folder, health }
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
pub async fn hash_batch_guarded(
    folder: Arc<Folder>,
    health: Arc<Health>,
    paths: Vec<String>,
    done: Done,
) -> HashOutcome {
    let task = health.spawn(hash_done_batch(
        folder.clone(),
        health.clone(),
        paths.clone(),
        done,
    ));
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
    hash_done_batch(folder, health, paths, Done::new()).await
}

/// [`hash_batch`], with the files of `done` hashed at once while they
/// show the state their writer left.
pub async fn hash_done_batch(
    folder: Arc<Folder>,
    health: Arc<Health>,
    paths: Vec<String>,
    done: Done,
) -> HashOutcome {
    if folder.fault().is_some() {
        // Paused: the rescan after the fault clears finds everything.
        return HashOutcome::default();
    }
    let t0 = Instant::now();
    let (f, p) = (folder.clone(), paths.clone());
    let plan: Plan = match rt::blocking(move || classify(&f, p, &done)).await {
        Ok(plan) => plan,
        Err(e) => {
            // A panic while classifying must not lose the paths either.
            folder.status.error(e.to_string());
            return HashOutcome {
                failed: paths,
                ..HashOutcome::default()
            };
        }
    };
    let classify_took = t0.elapsed();
    let mut out = HashOutcome {
        deferred: plan.deferred,
        failed: plan.failed,
        committed: 0,
    };
    for (observed, files) in chunks(plan.observed, plan.files) {
        let (imported, holds) = import_files(&folder, &health, files, &mut out).await;
        let chunk = Chunk { observed, imported };
        commit_or_fail(&folder, &health, chunk, &mut out).await;
        // Held until the commit, so blob GC cannot drop what we referenced.
        drop(holds);
    }
    debug!(
        folder = folder.id(),
        committed = out.committed,
        deferred = out.deferred.len(),
        failed = out.failed.len(),
        classify = ?classify_took,
        total = ?t0.elapsed(),
        "hash batch done"
    );
    out
}

/// A path and what the hasher saw there, ready to commit.
type Observation = (String, Observed);
/// A changed file to hash, with what `lstat` showed.
type ToHash = (String, Meta);

/// Observations and files split into commits: the observations go with
/// the first chunk of files (or alone), then [`COMMIT_CHUNK`] files each.
fn chunks(observed: Vec<Observation>, files: Vec<ToHash>) -> Vec<(Vec<Observation>, Vec<ToHash>)> {
    let mut out = Vec::new();
    let mut first = Some(observed);
    let mut files = files.into_iter().peekable();
    while first.is_some() || files.peek().is_some() {
        let observed = first.take().unwrap_or_default();
        let chunk: Vec<_> = files.by_ref().take(COMMIT_CHUNK).collect();
        if !observed.is_empty() || !chunk.is_empty() {
            out.push((observed, chunk));
        }
    }
    out
}

/// Import `files` concurrently. A file that failed to import is deferred
/// if it changed or vanished meanwhile (it settles again), failed if it is
/// still as it was (unreadable, or the store failed: backoff).
async fn import_files(
    folder: &Arc<Folder>,
    health: &Health,
    files: Vec<ToHash>,
    out: &mut HashOutcome,
) -> (Vec<Imported>, Vec<Hold>) {
    let results: Vec<_> = n0_future::stream::iter(files)
        .map(|(rel, meta)| {
            let folder = folder.clone();
            async move {
                // Each step of the store's hashing is progress: a file of
                // many GiB takes longer than the stall timeout.
                let res = import(&folder, &rel, meta, &|_| health.progress()).await;
                (rel, meta, res)
            }
        })
        .buffered_unordered(IMPORT_CONCURRENCY)
        .collect()
        .await;
    let mut imported = Vec::with_capacity(results.len());
    let mut holds = Vec::with_capacity(results.len());
    let mut broken = Vec::new();
    health.progress();
    for (rel, meta, res) in results {
        match res {
            Ok((i, hold)) => {
                imported.push(i);
                holds.push(hold);
            }
            Err(e) => {
                debug!(folder = folder.id(), path = %rel, "import failed: {e}");
                broken.push((rel, meta, e));
            }
        }
    }
    if !broken.is_empty() {
        sort_failed_imports(folder, broken, out).await;
    }
    (imported, holds)
}

async fn sort_failed_imports(
    folder: &Arc<Folder>,
    broken: Vec<(String, Meta, HashError)>,
    out: &mut HashOutcome,
) {
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
/// the record), so no peer could ever fetch them from it.
async fn store_synced(folder: &Folder, chunk: &Chunk) -> Result<(), HashError> {
    if chunk.imported.is_empty() {
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
