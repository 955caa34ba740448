//! Retention (one per node): keeps what fleetsync stores from growing
//! without bound.
//!
//! - Temp files in each folder's `.fleetsync/tmp` left by a crash or an
//!   aborted transfer: all of them at start-up (before any receiver runs),
//!   then any older than [`TMP_MAX_AGE`] ([`sweep_tmp`]).
//! - `refs` links the index released: kept for [`RELEASE_GRACE`] so a
//!   rename's create can reuse a delete's content, then removed (checked
//!   every [`RELEASE_GRACE`]); any other link no record uses and no apply
//!   parked, once older than [`UNUSED_REF_MAX_AGE`] ([`sweep_refs`]).
//! - Blobs no index entry (current or pending) references: the blob
//!   store's garbage collector runs with [`gc_config`], whose protect
//!   callback waits for its turn at the [`GcGate`], reads the live set
//!   from the index and refuses to let a run proceed without it. Files
//!   referenced in place are never deleted by it, only the store's
//!   bookkeeping for them; content being fetched is held by a temp tag
//!   (`Content::hold`) and by its pending row.
//! - In-memory maps: bounded by their owners (watcher dirty set, receiver
//!   retry map, history rows per path in the index); the folder's slow
//!   marks and parked links are pruned here ([`Folder::prune`]).
//!
//! The timer is gated ([`due`]): a folder is swept only if its index moved
//! since its last sweep or that sweep left young files to look at again,
//! and blob GC runs only if some index moved; an idle node compares a few
//! integers every [`RELEASE_GRACE`] and touches nothing. `fleetsync sweep`
//! ([`Sweep`]) forces a sweep of every folder and a GC run at once.
//!
//! - Tombstones older than the folder's `tombstone_ttl` that every peer
//!   seen within the TTL has read ([`crate::tombs::expire`]), every
//!   [`crate::tombs::sweep_every`] of the shortest TTL.
//!
//! - Kept versions past their folder's `keep` / `max_bytes`: checked every
//!   [`VERSIONS_EVICT_EVERY`] (cheap), evicted oldest first
//!   ([`crate::versions`]).

use std::{
    collections::HashSet,
    fmt::Display,
    os::unix::fs::MetadataExt,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix::prelude::*;
use iroh_blobs::{
    store::{GcConfig, ProtectOutcome},
    Hash,
};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::{
    folder::{Folder, PARKED_MAX_AGE, RELEASE_GRACE},
    folder_set::FolderSet,
    fsutil::is_shard_dir,
    gc_gate::{GcGate, GcRunError, GC_POLL},
    health::Health,
    index::{Index, IndexError, RefsInUse},
    msg::Ping,
    rt, tombs,
};

/// Temp files older than this are left over (a transfer in progress
/// writes to its temp file continuously, so its mtime stays fresh; an hour
/// covers a stalled one resuming).
pub const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Unused `refs` links older than this are removed: a link is made just
/// before the commit that references it, so an hour is far beyond any
/// commit in flight.
pub const UNUSED_REF_MAX_AGE: Duration = Duration::from_secs(3600);

/// How often a folder that changed is swept (temp files and unused
/// links): leftovers cost only disk space, so ten minutes keeps the walk
/// of `tmp/` and `refs/` rare.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// How often blob garbage collection may run (only if an index moved):
/// each run reads the whole live set from the index.
pub const GC_EVERY: Duration = Duration::from_secs(600);

/// How long a forced sweep waits for its blob GC run.
pub const FORCED_GC_WAIT: Duration = Duration::from_secs(60);

/// Is a timed sweep of a folder due? Only if something may have been left
/// behind since the last one — its index moved (`head` is not the head it
/// was last swept at) or that sweep kept young files to look at again —
/// and the last one is `every` old. Pure, so the gate is tested alone.
pub fn due(
    head: u64,
    swept_head: u64,
    leftovers: bool,
    since_last: Duration,
    every: Duration,
) -> bool {
    (head != swept_head || leftovers) && since_last >= every
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    pub files: u64,
    pub bytes: u64,
    /// Files kept only because they are young: the next sweep must look
    /// again.
    #[serde(skip)]
    pub young: u64,
}

impl Swept {
    fn add(&mut self, o: Swept) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.young += o.young;
    }
}

/// A forced sweep's answer (`POST /retention/sweep`).
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub folders: Vec<FolderSwept>,
    /// Blob GC runs completed since start (this sweep's included).
    pub gc_runs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FolderSwept {
    pub id: String,
    pub files: u64,
    pub bytes: u64,
}

/// A forced sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("retention is not running (restarting?); try again")]
    NotRunning,
    #[error("sweep: {0}")]
    Task(#[from] rt::TaskError),
    #[error(transparent)]
    Gc(#[from] GcRunError),
}

/// Sweep every folder now and run blob GC, then answer.
#[derive(Message)]
#[rtype(result = "Result<SweepReport, SweepError>")]
pub struct Sweep;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sweep one folder (blocking): released links past `grace`, temp files,
/// unused links, forgotten maps; recorded in the folder's status.
pub fn sweep_folder(folder: &Folder, grace: Duration) -> Swept {
    let head = folder.head();
    folder.expire_released(grace);
    folder.prune(PARKED_MAX_AGE);
    let mut s = sweep_tmp(folder, TMP_MAX_AGE);
    s.add(sweep_refs(folder, UNUSED_REF_MAX_AGE));
    record(folder, head, s);
    s
}

/// Record a sweep in the folder's status (and the head it saw, for the gate).
pub fn record(folder: &Folder, head: u64, s: Swept) {
    let st = &folder.status.sweeps;
    st.files.fetch_add(s.files, Ordering::Relaxed);
    st.bytes.fetch_add(s.bytes, Ordering::Relaxed);
    st.head.store(head, Ordering::Relaxed);
    st.leftovers.store(s.young > 0, Ordering::Relaxed);
    st.last_ms.store(now_ms(), Ordering::Relaxed);
}

/// How often kept versions are checked against their limits (`keep`,
/// `max_bytes`): the check is O(1) per folder, so a short `keep` (tests)
/// is honoured within a second.
pub const VERSIONS_EVICT_EVERY: Duration = Duration::from_secs(1);

pub struct Retention {
    folders: Arc<FolderSet>,
    health: Arc<Health>,
    gc: Arc<GcGate>,
    /// The tombstone expiry timer, set for the shortest `tombstone_ttl`
    /// of the folders (again when a reload changes them).
    tombs_timer: Option<SpawnHandle>,
}

/// The node's folders changed (a reload): timers that depend on them are
/// set again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FoldersChanged;

impl Retention {
    pub fn new(folders: Arc<FolderSet>, health: Arc<Health>, gc: Arc<GcGate>) -> Self {
        Retention {
            folders,
            health,
            gc,
            tombs_timer: None,
        }
    }

    /// Expire tombstones as often as the shortest TTL needs.
    fn set_tombs_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.tombs_timer.take() {
            ctx.cancel_future(t);
        }
        let folders = self.folders.snapshot();
        let shortest_ttl = folders.values().map(|f| f.cfg.tombstone_ttl).min();
        if let Some(ttl) = shortest_ttl {
            let every = tombs::sweep_every(ttl);
            self.tombs_timer = Some(ctx.run_interval(every, Self::expire_tombstones));
        }
    }

    /// Every [`RELEASE_GRACE`]: released links whose grace is over go
    /// (in memory first: nothing is touched unless some expired); a folder
    /// whose index moved makes blob GC due; folders the gate lets through
    /// are swept. An idle node does nothing else.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        let mut sweep = Vec::new();
        let folders = self.folders.snapshot();
        for folder in folders.values() {
            let st = &folder.status.sweeps;
            let head = folder.head();
            if st.gc_head.swap(head, Ordering::Relaxed) != head {
                self.gc.mark_dirty();
            }
            let since =
                Duration::from_millis(now.saturating_sub(st.last_ms.load(Ordering::Relaxed)));
            let leftovers = st.leftovers.load(Ordering::Relaxed);
            if due(
                head,
                st.head.load(Ordering::Relaxed),
                leftovers,
                since,
                SWEEP_EVERY,
            ) {
                sweep.push(folder.clone());
            }
        }
        let released: Vec<_> = (folders.values())
            .filter(|f| f.maps().released > 0)
            .cloned()
            .collect();
        if sweep.is_empty() && released.is_empty() {
            return;
        }
        let busy = self.health.begin();
        let work = rt::blocking(move || {
            for folder in released {
                folder.expire_released(RELEASE_GRACE);
            }
            for folder in sweep {
                sweep_folder(&folder, RELEASE_GRACE);
                busy.progress();
            }
        });
        ctx.spawn(work.into_actor(self).map(|res, _, _| {
            if let Err(e) = res {
                warn!("retention sweep failed: {e}");
            }
        }));
    }
}

impl Retention {
    /// Forget old tombstones every peer has read (saving the peers' reads
    /// first). Work, like a sweep.
    fn expire_tombstones(&mut self, ctx: &mut Context<Self>) {
        let folders = self.folders.snapshot();
        let busy = self.health.begin();
        let work = rt::blocking(move || {
            for folder in folders.values() {
                if let Err(e) = tombs::expire(folder) {
                    warn!(folder = folder.id(), "expiring tombstones failed: {e}");
                }
                busy.progress();
            }
        });
        ctx.spawn(work.into_actor(self).map(|res, _, _| {
            if let Err(e) = res {
                warn!("expiring tombstones failed: {e}");
            }
        }));
    }
}

impl Retention {
    /// Evict kept versions past their folder's limits. Asking is O(1) per
    /// folder on the actor's thread; only a folder with something to
    /// remove costs a blocking task.
    fn evict_versions(&mut self, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let due: Vec<Arc<Folder>> = (self.folders.snapshot().values())
            .filter(|f| f.versions.evict_due(now))
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let busy = self.health.begin();
        let work = rt::blocking(move || {
            for folder in due {
                let gone = folder.versions.evict(now);
                debug!(
                    folder = folder.id(),
                    count = gone.count,
                    bytes = gone.bytes,
                    "versions evicted"
                );
                busy.progress();
            }
        });
        ctx.spawn(work.into_actor(self).map(|res, _, _| {
            if let Err(e) = res {
                warn!("evicting versions failed: {e}");
            }
        }));
    }
}

impl Actor for Retention {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(RELEASE_GRACE, Self::tick);
        self.set_tombs_timer(ctx);
        ctx.run_interval(VERSIONS_EVICT_EVERY, Self::evict_versions);
    }
}

impl Handler<FoldersChanged> for Retention {
    type Result = ();
    fn handle(&mut self, _: FoldersChanged, ctx: &mut Context<Self>) {
        self.set_tombs_timer(ctx);
    }
}

impl Handler<Ping> for Retention {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

/// A forced sweep (the operator's `fleetsync sweep`): every folder now,
/// released links included (their grace only saves a rename's refetch),
/// then one blob GC run, waited for.
impl Handler<Sweep> for Retention {
    type Result = ResponseFuture<Result<SweepReport, SweepError>>;

    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> Self::Result {
        let folders = self.folders.snapshot();
        let busy = self.health.begin();
        let gc = self.gc.clone();
        Box::pin(async move {
            let swept = rt::blocking(move || {
                let mut out = Vec::new();
                for f in folders.values() {
                    let s = sweep_folder(f, Duration::ZERO);
                    busy.progress();
                    out.push(FolderSwept {
                        id: f.id().to_string(),
                        files: s.files,
                        bytes: s.bytes,
                    });
                }
                out.sort_by(|a, b| a.id.cmp(&b.id));
                out
            })
            .await?;
            let runs = gc.run_now(FORCED_GC_WAIT).await?;
            info!(gc_runs = runs.finished, "forced retention sweep done");
            Ok(SweepReport {
                folders: swept,
                gc_runs: runs.finished,
            })
        })
    }
}

/// Remove `refs` links no record uses, no apply parked and no release
/// keeps in its grace, once older than `max_age` (so a link made a moment
/// ago for a commit in flight survives). With `ZERO` (start-up, nothing in
/// flight) released links go too. Returns what was removed.
pub fn sweep_refs(folder: &Folder, max_age: Duration) -> Swept {
    let Some(listed) = list_refs(folder) else {
        return Swept::default();
    };
    // The walk over every record runs before the lock is taken: on a
    // folder of a million files it takes a second or more, and every
    // index commit of the hasher waits for this lock.
    let in_use = match folder.index.refs_in_use(folder.id()) {
        Ok(r) => r,
        Err(e) => {
            warn!(folder = folder.id(), "refs sweep skipped: {e}");
            return Swept::default();
        }
    };
    sweep_listed(folder, listed, in_use, max_age)
}

/// A `refs/` entry's name ([`crate::fsutil::is_ref_name`]) and `lstat`.
type Listed = (String, Option<std::fs::Metadata>);

/// Every entry of `refs/`: those in its shard directories, and those made
/// before it had shards (in `refs/` itself). `None` if `refs/` cannot be
/// read. A shard that cannot be read is left out (nothing in it is swept).
pub(crate) fn list_refs(folder: &Folder) -> Option<Vec<Listed>> {
    let refs = folder.fs.refs_dir();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&refs).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let meta = e.metadata().ok();
        if !(is_shard_dir(&name) && meta.as_ref().is_some_and(|m| m.is_dir())) {
            out.push((name, meta));
            continue;
        }
        let Ok(shard) = std::fs::read_dir(refs.join(&name)) else {
            continue;
        };
        for f in shard.flatten() {
            let file = f.file_name().to_string_lossy().to_string();
            out.push((format!("{name}/{file}"), f.metadata().ok()));
        }
    }
    Some(out)
}

/// The rest of [`sweep_refs`], given the links in use as of the walk:
/// under the lock, those that commits since then started using are added.
fn sweep_listed(
    folder: &Folder,
    listed: Vec<Listed>,
    in_use: RefsInUse,
    max_age: Duration,
) -> Swept {
    let mut n = Swept::default();
    let _held = folder.refs_lock();
    let Some(keep) = refs_to_keep(folder, in_use, max_age) else {
        return n;
    };
    // Removal goes through the `refs/` descriptor: if the listed path was
    // redirected by a symlink, nothing outside is ever removed.
    let Ok(session) = folder.fs.session() else {
        return n;
    };
    let now = SystemTime::now();
    for (name, meta) in listed {
        if keep.contains(&name) {
            continue;
        }
        // The content's mtime can be anything; creating the link set its
        // ctime, so that is the age that counts.
        let old = max_age.is_zero() || meta.as_ref().is_none_or(|m| age(now, ctime(m)) >= max_age);
        if !old {
            n.young += 1;
        } else if session.unlink_ref(&name) {
            n.files += 1;
            n.bytes += meta.map_or(0, |m| m.len());
        }
    }
    if n.files > 0 {
        debug!(
            folder = folder.id(),
            removed = n.files,
            "released content no entry needs"
        );
    }
    n
}

/// On a folder whose `refs/` entries are copies ([`Folder::refs_are_copies`],
/// `versions.local` on), turn the entries still shared with users' files
/// (made while it was off) into copies, so that an in-place write to any
/// file can be kept. Costs a copy of each such file (none where the
/// filesystem shares blocks). At start-up, before anything is in flight;
/// returns how many were separated. Blocking.
pub fn separate_refs(folder: &Folder) -> u64 {
    if !folder.refs_are_copies() {
        return 0;
    }
    let mut entries = Vec::new();
    let listed = folder.index.for_each(folder.id(), |r| {
        if let (Some(name), Some(hash)) = (&r.refs, r.entry.hash) {
            entries.push((name.clone(), hash));
        }
    });
    let session = match listed
        .map_err(|e| e.to_string())
        .and_then(|()| folder.fs.session().map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            warn!(
                folder = folder.id(),
                "refs/ entries not separated from the files: {e}"
            );
            return 0;
        }
    };
    let mut separated = 0;
    for (name, hash) in entries {
        match session.separate_ref(&name, &hash) {
            Ok(true) => separated += 1,
            Ok(false) => {}
            Err(e) => debug!(folder = folder.id(), name, "refs/ entry not separated: {e}"),
        }
    }
    if separated > 0 {
        info!(
            folder = folder.id(),
            separated, "refs/ entries made copies of their own (versions.local)"
        );
    }
    separated
}

/// Names of the links that must stay: those in use as of the walk, those
/// records written since use (read by sequence number: only the commits
/// since), parked and released ones; `None` if the index cannot say (then
/// nothing is swept). Under the refs lock: a link a hasher's commit
/// stopped using after the walk was kept by the walk, or the hasher has
/// opened it already (it holds the lock from its commit until then).
fn refs_to_keep(folder: &Folder, in_use: RefsInUse, max_age: Duration) -> Option<HashSet<String>> {
    let mut keep = in_use.names;
    match folder.index.refs_since(folder.id(), in_use.seq) {
        Ok(since) => keep.extend(since),
        Err(e) => {
            warn!(folder = folder.id(), "refs sweep skipped: {e}");
            return None;
        }
    }
    keep.extend(folder.parked_names());
    if max_age.is_zero() {
        folder.expire_released(Duration::ZERO);
    } else {
        keep.extend(folder.released_names());
    }
    Some(keep)
}

fn ctime(m: &std::fs::Metadata) -> SystemTime {
    let secs = u64::try_from(m.ctime()).unwrap_or(0);
    let nanos = u32::try_from(m.ctime_nsec()).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// How long before `now` `t` was (zero if in the future: a skewed clock).
fn age(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

/// Remove temp files older than `max_age` (all of them with `ZERO`).
/// Returns what was removed.
pub fn sweep_tmp(folder: &Folder, max_age: Duration) -> Swept {
    let mut n = Swept::default();
    let Ok(rd) = std::fs::read_dir(folder.fs.tmp_dir()) else {
        return n;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            continue;
        }
        let meta = e.metadata().ok();
        let old = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .is_none_or(|t| age(now, t) >= max_age);
        if !old {
            n.young += 1;
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                n.files += 1;
                n.bytes += meta.map_or(0, |m| m.len());
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(folder = folder.id(), "cannot remove stale temp file: {err}"),
        }
    }
    if n.files > 0 {
        info!(
            folder = folder.id(),
            removed = n.files,
            "removed stale temp files"
        );
    }
    n
}

/// Blob garbage collection that runs when the gate says (see
/// [`GcGate`]) and keeps every hash the index still needs.
pub fn gc_config(index: Index, gate: Arc<GcGate>) -> GcConfig {
    GcConfig {
        interval: GC_POLL,
        add_protected: Some(Arc::new(move |live| {
            let index = index.clone();
            let gate = gate.clone();
            Box::pin(async move {
                let turn = gate.next_turn().await;
                let hashes = rt::try_blocking(move || Ok::<_, LiveSetError>(index.live_hashes()?));
                let outcome = protect(live, hashes.await);
                if matches!(outcome, ProtectOutcome::Abort) {
                    gate.skip(turn);
                }
                outcome
            })
        })),
    }
}

/// Why the protect callback has no live set.
#[derive(Debug, thiserror::Error)]
enum LiveSetError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Task(#[from] rt::TaskError),
}

/// Add the live set to what GC keeps, or abort the run if the index could
/// not be read: never sweep on an incomplete picture.
fn protect<E: Display>(
    live: &mut HashSet<Hash>,
    hashes: Result<Vec<[u8; 32]>, E>,
) -> ProtectOutcome {
    match hashes {
        Ok(hs) => {
            debug!(protected = hs.len(), "blob gc: protecting live content");
            live.extend(hs.into_iter().map(Hash::from_bytes));
            ProtectOutcome::Continue
        }
        Err(e) => {
            warn!("blob gc skipped: index unreadable: {e}");
            ProtectOutcome::Abort
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        hasher::{
            hash_batch,
            tests::{quick_folder, write},
        },
        index::Released,
        testing::FakeContent,
    };

    fn set_mtime(path: &std::path::Path, t: SystemTime) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// The names of `folder`'s `refs/` entries, shards included.
    fn ref_names(folder: &Folder) -> Vec<String> {
        let mut v: Vec<String> = list_refs(folder)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_idle_folder_is_never_swept_a_changed_one_once_per_period() {
        let every = SWEEP_EVERY;
        assert!(!due(7, 7, false, every * 10, every), "idle: nothing moved");
        assert!(due(8, 7, false, every, every), "the index moved");
        assert!(
            !due(8, 7, false, every / 2, every),
            "but not before the period"
        );
        assert!(
            due(7, 7, true, every, every),
            "young leftovers to look at again"
        );
        assert!(due(0, u64::MAX, false, every, every), "never swept");
    }

    #[test]
    fn a_sweep_records_what_it_removed_and_what_it_must_come_back_for() {
        let dir = tempfile::tempdir().unwrap();
        let folder = quick_folder(dir.path(), FakeContent::new());
        let tmp = folder.fs.tmp_dir();
        std::fs::write(tmp.join("old.part"), b"12345").unwrap();
        set_mtime(&tmp.join("old.part"), SystemTime::now() - 2 * TMP_MAX_AGE);
        let s = sweep_folder(&folder, RELEASE_GRACE);
        assert_eq!((s.files, s.bytes, s.young), (1, 5, 0));
        let st = &folder.status.sweeps;
        assert_eq!(st.head.load(Ordering::Relaxed), folder.head());
        assert!(st.last_ms.load(Ordering::Relaxed) > 0);
        assert!(!st.leftovers.load(Ordering::Relaxed));
        std::fs::write(tmp.join("new.part"), b"in progress").unwrap();
        let s = sweep_folder(&folder, RELEASE_GRACE);
        assert_eq!((s.files, s.young), (0, 1));
        assert!(
            st.leftovers.load(Ordering::Relaxed),
            "the young file is looked at again"
        );
        assert_eq!(st.files.load(Ordering::Relaxed), 1);
        assert_eq!(st.bytes.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn sweep_tmp_removes_only_files_older_than_max_age_and_all_with_zero() {
        let dir = tempfile::tempdir().unwrap();
        let folder = quick_folder(dir.path(), FakeContent::new());
        let tmp = folder.fs.tmp_dir();
        std::fs::write(tmp.join("old.part"), b"left by a crash").unwrap();
        set_mtime(&tmp.join("old.part"), SystemTime::now() - 2 * TMP_MAX_AGE);
        std::fs::write(tmp.join("new.part"), b"a transfer in progress").unwrap();
        std::fs::create_dir(tmp.join("subdir")).unwrap();
        assert_eq!(sweep_tmp(&folder, TMP_MAX_AGE).files, 1);
        assert_eq!(names(&tmp), vec!["new.part", "subdir"]);
        assert_eq!(sweep_tmp(&folder, Duration::ZERO).files, 1);
        assert_eq!(
            names(&tmp),
            vec!["subdir"],
            "directories are not its business"
        );
    }

    /// A folder with one link of each kind: in use by a record, parked,
    /// released (in grace), and unused (with an ancient mtime).
    async fn folder_with_links(dir: &std::path::Path) -> (Arc<Folder>, String) {
        let folder = quick_folder(dir, FakeContent::new());
        write(&folder, "a", b"in use");
        assert_eq!(
            hash_batch(
                folder.clone(),
                crate::health::Health::new(1),
                vec!["a".into()]
            )
            .await
            .committed,
            1
        );
        let in_use = folder
            .index
            .get(folder.id(), "a")
            .unwrap()
            .unwrap()
            .refs
            .unwrap();
        let refs = folder.fs.refs_dir();
        for n in ["parked", "released", "unused"] {
            std::fs::write(refs.join(n), n).unwrap();
        }
        set_mtime(&refs.join("unused"), UNIX_EPOCH);
        folder.park([1; 32], "parked".into());
        folder.release(vec![Released {
            name: "released".into(),
            hash: Some([2; 32]),
        }]);
        (folder, in_use)
    }

    #[tokio::test]
    async fn sweep_refs_keeps_used_parked_and_released_links_and_removes_old_unused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, in_use) = folder_with_links(dir.path()).await;
        let refs = folder.fs.refs_dir();
        // Made just now (ctime), however old its mtime: kept.
        assert_eq!(sweep_refs(&folder, UNUSED_REF_MAX_AGE).files, 0);
        assert!(refs.join("unused").exists());
        // Once older than the max age (by ctime), only the unused one goes.
        let max_age = Duration::from_millis(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while refs.join("unused").exists() {
            assert!(Instant::now() < deadline, "unused link never swept");
            sweep_refs(&folder, max_age);
        }
        let mut kept = vec!["parked".to_string(), "released".to_string(), in_use.clone()];
        kept.sort();
        assert_eq!(ref_names(&folder), kept);
        // At start-up (ZERO) released links go too; used and parked stay.
        assert_eq!(sweep_refs(&folder, Duration::ZERO).files, 0);
        let mut kept = vec!["parked".to_string(), in_use];
        kept.sort();
        assert_eq!(ref_names(&folder), kept);
    }

    /// The walk over every record runs before the refs lock is taken
    /// (commits do not wait for it): a link a commit starts using in
    /// between is read by sequence number under the lock, and stays.
    #[tokio::test]
    async fn a_link_committed_between_the_walk_and_the_lock_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, in_use) = folder_with_links(dir.path()).await;
        let walked = folder.index.refs_in_use(folder.id()).unwrap();
        write(&folder, "b", b"committed meanwhile");
        let health = crate::health::Health::new(1);
        let hashed = hash_batch(folder.clone(), health, vec!["b".into()]).await;
        assert_eq!(hashed.committed, 1);
        let b = folder.index.get(folder.id(), "b").unwrap().unwrap();
        let b_link = b.refs.unwrap();
        assert!(!walked.names.contains(&b_link), "not in the walk");
        let listed = list_refs(&folder).unwrap();
        // ZERO: every link counts as old, only use keeps one.
        sweep_listed(&folder, listed, walked, Duration::ZERO);
        let mut kept = vec!["parked".to_string(), in_use, b_link];
        kept.sort();
        assert_eq!(ref_names(&folder), kept);
    }

    #[tokio::test]
    async fn gc_protects_every_hash_the_index_holds() {
        let dir = tempfile::tempdir().unwrap();
        let folder = quick_folder(dir.path(), FakeContent::new());
        write(&folder, "a", b"keep me");
        assert_eq!(
            hash_batch(
                folder.clone(),
                crate::health::Health::new(1),
                vec!["a".into()]
            )
            .await
            .committed,
            1
        );
        let gate = Arc::new(GcGate::new(GC_EVERY));
        let cfg = gc_config(folder.index.clone(), gate.clone());
        let cb = cfg.add_protected.expect("a protect callback");
        let mut live = HashSet::new();
        let asked = tokio::spawn(async move { gate.run_now(Duration::from_secs(30)).await });
        assert!(matches!(cb(&mut live).await, ProtectOutcome::Continue));
        drop(asked);
        assert!(live.contains(&Hash::new(b"keep me")));
    }

    /// The callback's decision with a failed read (a real unreadable
    /// index cannot be made here: the tests run as root and redb keeps
    /// its file open).
    #[test]
    fn gc_refuses_to_run_without_the_live_set() {
        let mut live = HashSet::new();
        let out = protect(
            &mut live,
            Err::<Vec<[u8; 32]>, _>(std::io::Error::other("eio")),
        );
        assert!(matches!(out, ProtectOutcome::Abort));
        assert!(live.is_empty());
        let out = protect(&mut live, Ok::<_, std::io::Error>(vec![[3; 32]]));
        assert!(matches!(out, ProtectOutcome::Continue));
        assert!(live.contains(&Hash::from_bytes([3; 32])));
    }
}
