//! Putting decided remote entries on disk, safely. Used by the receiver.
//!
//! ```text
//!  Job ─► entries (directory, symlink, delete)  ─────────────────────┐
//!     └─► files:  preflight ─► acquire content ─► finish ─► place ───┴─► Outcome
//!                 (disk safe   (parked, released,  (mode,    (re-check,
//!                  to replace?) store, peers)       mtime,    conflict copy,
//!                                                   fsync)    rename, dir fsync)
//! ```
//!
//! - [`error`]: [`ApplyError`] and its [`Disposition`] (reject / wait for
//!   the watcher / retry soon / back off) — the one classifier.
//! - [`entries`]: directories, symlinks and deletions (no content).
//! - [`files`]: the file pipeline, a batch at a time; a single file is a
//!   batch of one ([`Flush::EachFile`]), small files share one `syncfs`
//!   ([`Flush::Batch`]).
//! - [`acquire`]: verified content into `.fleetsync/{refs,tmp}`: parked
//!   content, a just-deleted file's content (a rename), the store, peers
//!   (announcer first, peers that stalled on this content last).
//! - [`watchdog`]: the no-progress deadline every transfer runs under.
//! - [`place`]: the one placer: re-check the disk, keep a conflict copy if
//!   ours lost, rename into place, fsync the directories.
//! - [`keep`]: the synced content a remote change replaces or deletes is
//!   kept as a version first (`.fleetsync/versions/`).
//!
//! Guarantees (ARCHITECTURE.md, invariants 1–4): every path is walked with
//! `O_NOFOLLOW`; a file is old or new after a crash, never partial; only
//! verified content is placed; a local edit made meanwhile is never
//! overwritten — the apply stops with [`ApplyError::LocalChange`] and the
//! watcher turns the edit into a version of its own first.

mod acquire;
mod entries;
mod error;
mod files;
mod keep;
pub(crate) use keep::keep_file_at;
mod place;
mod watchdog;

use std::{sync::Arc, time::Instant};

use fleetsync_mesh::{
    model::{FileEntry, ShortId},
    EndpointId,
};

pub use self::watchdog::Stalled;
pub use self::{
    error::{ApplyError, Disposition},
    files::{apply_files, apply_prefetched, prefetch},
    place::Flush,
};
use crate::{
    content::Hold,
    folder::{ApplyGuard, Folder},
    health::Health,
    record::{LocalStat, Record},
};

/// Where content may come from, and whose work its transfers are.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Peers in the order to ask them (the announcers first). Peers that
    /// connect later are asked after these; peers marked slow for a
    /// content go last.
    pub providers: Vec<EndpointId>,
    /// The receiver incarnation the transfers report progress to.
    pub health: Arc<Health>,
    /// When this attempt began: a peer whose transfer of a content stalled
    /// or failed since then is not asked again for it in this attempt.
    pub started: Instant,
}

impl Sources {
    pub fn new(providers: Vec<EndpointId>, health: Arc<Health>) -> Self {
        Sources {
            providers,
            health,
            started: Instant::now(),
        }
    }

    /// The same attempt, asking `providers` in this order.
    pub fn ordered(&self, providers: Vec<EndpointId>) -> Self {
        Sources {
            providers,
            ..self.clone()
        }
    }
}

/// One decided change to carry out.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: String,
    /// Our record when the change was decided.
    pub local: Option<Record>,
    pub target: FileEntry,
    /// Our content lost a conflict: keep it as a conflict copy first.
    pub conflict_copy: bool,
    /// The target is the peer's entry as sent (not merged): don't echo it.
    pub verbatim: bool,
    /// The peer that announced it.
    pub from: [u8; 32],
}

impl Job {
    fn is_file(&self) -> bool {
        !self.target.deleted && self.target.kind == fleetsync_mesh::model::EntryKind::File
    }
}

/// A change that is on disk, with what keeps it safe until its record is
/// committed.
#[derive(Debug)]
pub struct Applied {
    pub record: Record,
    /// For the log and the history: "applied from …", "conflict: …".
    pub note: String,
    /// Keeps the placed file's store entry from GC until committed.
    pub hold: Option<Hold>,
    /// Keeps the hasher off the path until the record is committed.
    pub guard: ApplyGuard,
}

/// What became of one job.
pub type Outcome = Result<Applied, ApplyError>;

impl Applied {
    fn new(
        job: &Job,
        local: Option<LocalStat>,
        refs: Option<String>,
        note: &str,
        guard: ApplyGuard,
    ) -> Self {
        let from = ShortId::from_node_id(&job.from);
        Applied {
            record: Record {
                entry: job.target.clone(),
                local,
                local_changed: false,
                received_from: job.verbatim.then_some(from),
                refs,
            },
            note: format!("{note} from {from}"),
            hold: None,
            guard,
        }
    }
}

/// Apply one job: a file as a batch of one, anything else directly.
/// Apply directory jobs (parents first), most of them in one blocking
/// call; one outcome per job, in order.
pub async fn apply_dirs(folder: &Arc<Folder>, jobs: Vec<Job>) -> Vec<(Job, Outcome)> {
    entries::apply_dirs(folder, jobs).await
}

pub async fn apply_one(folder: &Arc<Folder>, job: Job, sources: &Sources) -> Outcome {
    if job.is_file() {
        let mut out = apply_files(folder, vec![job], sources, Flush::EachFile).await;
        return match out.pop() {
            Some((_, outcome)) => outcome,
            None => unreachable!("apply_files answers every job"),
        };
    }
    entries::apply_entry(folder, &job).await
}

#[cfg(test)]
mod tests;
