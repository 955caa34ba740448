//! Retention (one per node): keeps what fleetsync stores from growing
//! without bound.
//!
//! - Temp files in each folder's `.fleetsync/tmp` left by a crash or an
//!   aborted transfer: all of them at start-up (before any receiver runs),
//!   then any older than [`TMP_MAX_AGE`] every [`SWEEP_EVERY`]
//!   ([`sweep_tmp`]).
//! - `refs` links the index released: kept for [`RELEASE_GRACE`] so a
//!   rename's create can reuse a delete's content, then removed (checked
//!   every [`RELEASE_GRACE`]); any other link no record uses and no apply
//!   parked, once older than [`UNUSED_REF_MAX_AGE`] ([`sweep_refs`]).
//! - Blobs no index entry (current or pending) references: the blob
//!   store's garbage collector runs with [`gc_config`], whose protect
//!   callback reads the live set from the index and refuses to let a run
//!   proceed without it. Files referenced in place are never deleted by
//!   it, only the store's bookkeeping for them.
//! - In-memory maps are bounded by their owners (watcher dirty set,
//!   receiver retry map, history rows per path in the index).
//!
//! - Kept versions past their folder's `keep` / `max_bytes`: checked every
//!   [`VERSIONS_EVICT_EVERY`] (cheap), evicted oldest first
//!   ([`crate::versions`]).
//!
//! Left out for now: expiring tombstones (kept forever, so a node that was offline for months
//! cannot resurrect deleted files).

use std::{
    collections::{HashMap, HashSet},
    fmt::Display,
    os::unix::fs::MetadataExt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix::prelude::*;
use iroh_blobs::{
    store::{GcConfig, ProtectOutcome},
    Hash,
};
use tracing::{debug, info, warn};

use crate::{
    folder::{Folder, RELEASE_GRACE},
    health::Health,
    index::{Index, IndexError},
    msg::Ping,
    rt,
};

/// Temp files older than this are left over (a transfer in progress
/// writes to its temp file continuously, so its mtime stays fresh; an hour
/// covers a stalled one resuming).
pub const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Unused `refs` links older than this are removed: a link is made just
/// before the commit that references it, so an hour is far beyond any
/// commit in flight.
pub const UNUSED_REF_MAX_AGE: Duration = Duration::from_secs(3600);

/// How often temp files and unused links are swept: leftovers cost only
/// disk space, so ten minutes keeps the walk of `tmp/` and `refs/` rare.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// How often blob garbage collection runs: each run reads the whole live
/// set from the index, and unreferenced blobs cost only bookkeeping.
pub const GC_EVERY: Duration = Duration::from_secs(600);

/// How often kept versions are checked against their limits (`keep`,
/// `max_bytes`): the check is O(1) per folder, so a short `keep` (tests)
/// is honoured within a second.
pub const VERSIONS_EVICT_EVERY: Duration = Duration::from_secs(1);

pub struct Retention {
    folders: Arc<HashMap<String, Arc<Folder>>>,
    health: Arc<Health>,
}

impl Retention {
    pub fn new(folders: Arc<HashMap<String, Arc<Folder>>>, health: Arc<Health>) -> Self {
        Retention { folders, health }
    }

    /// Remove released links whose grace is over.
    fn expire_released(&mut self, ctx: &mut Context<Self>) {
        let folders = self.folders.clone();
        let busy = self.health.begin();
        let work = rt::blocking(move || {
            for folder in folders.values() {
                folder.expire_released(RELEASE_GRACE);
                busy.progress();
            }
        });
        ctx.spawn(work.into_actor(self).map(|res, _, _| {
            if let Err(e) = res {
                warn!("expiring released content failed: {e}");
            }
        }));
    }

    /// Evict kept versions past their folder's limits. Asking is O(1) per
    /// folder on the actor's thread; only a folder with something to
    /// remove costs a blocking task.
    fn evict_versions(&mut self, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let due: Vec<Arc<Folder>> = self
            .folders
            .values()
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

    /// A sweep is work (the supervisor sees it move folder by folder).
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let folders = self.folders.clone();
        let busy = self.health.begin();
        let work = rt::blocking(move || {
            for folder in folders.values() {
                sweep_tmp(folder, TMP_MAX_AGE);
                busy.progress();
                sweep_refs(folder, UNUSED_REF_MAX_AGE);
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

impl Actor for Retention {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(RELEASE_GRACE, Self::expire_released);
        ctx.run_interval(SWEEP_EVERY, Self::sweep);
        ctx.run_interval(VERSIONS_EVICT_EVERY, Self::evict_versions);
    }
}

impl Handler<Ping> for Retention {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

/// Remove `refs` links no record uses, no apply parked and no release
/// keeps in its grace, once older than `max_age` (so a link made a moment
/// ago for a commit in flight survives). With `ZERO` (start-up, nothing in
/// flight) released links go too. Returns how many were removed.
pub fn sweep_refs(folder: &Folder, max_age: Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(folder.fs.refs_dir()) else {
        return 0;
    };
    let Some(keep) = refs_to_keep(folder, max_age) else {
        return 0;
    };
    // Removal goes through the `refs/` descriptor: if the listed path was
    // redirected by a symlink, nothing outside is ever removed.
    let Ok(session) = folder.fs.session() else {
        return 0;
    };
    let now = SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if keep.contains(&name) {
            continue;
        }
        // The content's mtime can be anything; creating the link set its
        // ctime, so that is the age that counts.
        let old = max_age.is_zero()
            || e.metadata()
                .map_or(true, |m| age(now, ctime(&m)) >= max_age);
        if old && session.unlink_ref(&name) {
            n += 1;
        }
    }
    if n > 0 {
        debug!(
            folder = folder.id(),
            removed = n,
            "released content no entry needs"
        );
    }
    n
}

/// Names of the links that must stay; `None` if the index cannot say
/// (then nothing is swept).
fn refs_to_keep(folder: &Folder, max_age: Duration) -> Option<HashSet<String>> {
    let mut keep = match folder.index.refs_in_use(folder.id()) {
        Ok(k) => k,
        Err(e) => {
            warn!(folder = folder.id(), "refs sweep skipped: {e}");
            return None;
        }
    };
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
/// Returns how many were removed.
pub fn sweep_tmp(folder: &Folder, max_age: Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(folder.fs.tmp_dir()) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map_or(true, |t| age(now, t) >= max_age);
        if old && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) => warn!(folder = folder.id(), "cannot remove stale temp file: {err}"),
            }
        }
    }
    if n > 0 {
        info!(
            folder = folder.id(),
            removed = n,
            "removed stale temp files"
        );
    }
    n
}

/// Blob garbage collection that keeps every hash the index still needs.
pub fn gc_config(index: Index, every: Duration) -> GcConfig {
    GcConfig {
        interval: every,
        add_protected: Some(Arc::new(move |live| {
            let index = index.clone();
            Box::pin(async move {
                let hashes = rt::try_blocking(move || Ok::<_, LiveSetError>(index.live_hashes()?));
                protect(live, hashes.await)
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

    #[test]
    fn sweep_tmp_removes_only_files_older_than_max_age_and_all_with_zero() {
        let dir = tempfile::tempdir().unwrap();
        let folder = quick_folder(dir.path(), FakeContent::new());
        let tmp = folder.fs.tmp_dir();
        std::fs::write(tmp.join("old.part"), b"left by a crash").unwrap();
        set_mtime(&tmp.join("old.part"), SystemTime::now() - 2 * TMP_MAX_AGE);
        std::fs::write(tmp.join("new.part"), b"a transfer in progress").unwrap();
        std::fs::create_dir(tmp.join("subdir")).unwrap();
        assert_eq!(sweep_tmp(&folder, TMP_MAX_AGE), 1);
        assert_eq!(names(&tmp), vec!["new.part", "subdir"]);
        assert_eq!(sweep_tmp(&folder, Duration::ZERO), 1);
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
        assert_eq!(sweep_refs(&folder, UNUSED_REF_MAX_AGE), 0);
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
        assert_eq!(names(&refs), kept);
        // At start-up (ZERO) released links go too; used and parked stay.
        assert_eq!(sweep_refs(&folder, Duration::ZERO), 0);
        let mut kept = vec!["parked".to_string(), in_use];
        kept.sort();
        assert_eq!(names(&refs), kept);
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
        let cfg = gc_config(folder.index.clone(), GC_EVERY);
        let cb = cfg.add_protected.expect("a protect callback");
        let mut live = HashSet::new();
        assert!(matches!(cb(&mut live).await, ProtectOutcome::Continue));
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
