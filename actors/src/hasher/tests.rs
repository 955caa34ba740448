use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use fleetsync_config::FolderMode;
use fleetsync_mesh::{
    model::{EntryKind, VersionVector},
    EndpointId, FetchError, Hash, StoreError,
};

use super::*;
use crate::{
    content::Content,
    folder::ApplyGuard,
    fsutil::Opened,
    index::Index,
    record::Record,
    testing::{self, FakeContent, ME},
    watcher::settle::{Settle, RETRY_FIRST},
};

/// A folder like `testing::folder`, with this settle window: `ZERO` so a
/// file just written is hashed at once, or long so it is surely "written
/// moments ago" however slow the machine.
pub(crate) fn folder_with_settle(
    dir: &Path,
    content: Arc<dyn Content>,
    settle: Duration,
) -> Arc<Folder> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut cfg = testing::folder_config(&root, FolderMode::SendReceive);
    cfg.settle = settle;
    let index = Index::open(&dir.join("index.redb")).unwrap();
    let stall = crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT;
    let folder = Folder::new(cfg, index, content, ME, stall).unwrap();
    folder.fs.ensure_reserved().unwrap();
    folder
}

/// A folder whose files are hashed as soon as they are written.
pub(crate) fn quick_folder(dir: &Path, content: Arc<dyn Content>) -> Arc<Folder> {
    folder_with_settle(dir, content, Duration::ZERO)
}

pub(crate) fn write(folder: &Folder, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = folder.fs.abs(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn record(folder: &Folder, rel: &str) -> Option<Record> {
    folder.index.get(folder.id(), rel).unwrap()
}

fn paths(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn refs_links(folder: &Folder) -> Vec<String> {
    let listed = crate::retention::list_refs(folder).unwrap();
    listed.into_iter().map(|(name, _)| name).collect()
}

/// [`FakeContent`] that counts imports, and can fail them, modify the
/// file while it is being imported, or hash slowly (reporting progress
/// until `slow` is cleared, like a store hashing a huge file).
#[derive(Debug, Default)]
struct Probe {
    inner: FakeContent,
    imports: AtomicUsize,
    fail: AtomicBool,
    panic: AtomicBool,
    write_during_import: AtomicBool,
    slow: AtomicBool,
    /// Run once, at the start of the next import, with its path.
    during_import: std::sync::Mutex<Option<Hook>>,
    /// Append to the file being imported if it holds exactly these bytes
    /// (rewritten while it is hashed).
    tamper: std::sync::Mutex<Option<Vec<u8>>>,
    /// Store syncs: one per commit that references new content.
    syncs: AtomicUsize,
}

struct Hook(Box<dyn FnOnce(&Path) + Send>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hook")
    }
}

impl Probe {
    /// A file's content is about to be read for its hash (imported, or
    /// hashed by the hasher itself): count it, and do what the test set.
    fn reading(&self, path: &Path) -> std::io::Result<()> {
        self.imports.fetch_add(1, Ordering::Relaxed);
        let hook = self.during_import.lock().unwrap().take();
        if let Some(hook) = hook {
            (hook.0)(path);
        }
        let tamper = self.tamper.lock().unwrap().clone();
        if tamper.is_some_and(|t| std::fs::read(path).ok() == Some(t)) {
            let mut f = std::fs::File::options().append(true).open(path)?;
            std::io::Write::write_all(&mut f, b" and more")?;
        }
        if self.write_during_import.load(Ordering::Relaxed) {
            // `path` is the refs link: the same inode as the user's file.
            let mut f = std::fs::File::options().append(true).open(path)?;
            std::io::Write::write_all(&mut f, b" and more")?;
        }
        assert!(!self.panic.load(Ordering::Relaxed), "import panics (test)");
        if self.fail.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("store is broken"));
        }
        Ok(())
    }
}

#[async_trait]
impl Content for Probe {
    fn providers(&self) -> Vec<EndpointId> {
        self.inner.providers()
    }
    async fn has(&self, hash: Hash) -> Result<bool, StoreError> {
        self.inner.has(hash).await
    }
    async fn import(
        &self,
        path: PathBuf,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Hash, Hold), StoreError> {
        self.reading(&path)?;
        let mut at = 0;
        while self.slow.load(Ordering::Relaxed) {
            at += 1 << 20;
            progress(at);
            // Pacing of the simulated hashing, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.import(path, progress).await
    }
    fn hash_unimported(&self, path: &Path, opened: &Opened) -> std::io::Result<[u8; 32]> {
        self.reading(path)?;
        opened.hash()
    }
    async fn export(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError> {
        self.inner.export(hash, target).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync().await
    }
    async fn fetch(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, FetchError> {
        self.inner.fetch(peer, hash, progress).await
    }
    async fn fetch_many(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<(Vec<Hash>, u64), FetchError> {
        self.inner.fetch_many(peer, items, progress).await
    }
    async fn fetch_direct(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64, FetchError> {
        self.inner.fetch_direct(peer, hash, file, progress).await
    }
}

#[tokio::test]
async fn a_new_file_is_committed_with_a_bumped_vector_and_a_refs_link() {
    let dir = tempfile::tempdir().unwrap();
    let content = FakeContent::new();
    let folder = quick_folder(dir.path(), content.clone());
    write(&folder, "a.txt", b"hello");
    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a.txt"]),
    )
    .await;
    assert_eq!(out.committed, 1, "{out:?}");
    assert!(out.deferred.is_empty() && out.failed.is_empty());
    let r = record(&folder, "a.txt").expect("recorded");
    assert_eq!(r.entry.kind, EntryKind::File);
    assert_eq!(r.entry.version, VersionVector::new().bump(ME).unwrap());
    assert_eq!(r.entry.hash, Some(*Hash::new(b"hello").as_bytes()));
    assert_eq!(r.entry.size, 5);
    // Small: hashed by the hasher, imported only when a peer asks.
    assert!(!content.in_store(&Hash::new(b"hello")));
    let link = r.refs.expect("a refs link");
    assert_eq!(refs_links(&folder), vec![link.clone()]);
    let linked = std::fs::read(folder.fs.refs_dir().join(link)).unwrap();
    assert_eq!(linked, b"hello");
    // An edit is a new version on top.
    write(&folder, "a.txt", b"hello again");
    assert_eq!(
        hash_batch(
            folder.clone(),
            crate::health::Health::new(1),
            paths(&["a.txt"])
        )
        .await
        .committed,
        1
    );
    let r = record(&folder, "a.txt").unwrap();
    assert_eq!(r.entry.version.get(ME), 2);
}

#[tokio::test]
async fn an_unchanged_file_is_skipped_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "a", b"content");
    assert_eq!(
        hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"]))
            .await
            .committed,
        1
    );
    assert_eq!(probe.imports.load(Ordering::Relaxed), 1);
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.committed, 0);
    assert!(out.deferred.is_empty() && out.failed.is_empty());
    assert_eq!(probe.imports.load(Ordering::Relaxed), 1, "not read again");
}

#[tokio::test]
async fn a_file_changed_while_being_hashed_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "a", b"first");
    probe.write_during_import.store(true, Ordering::Relaxed);
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.committed, 0);
    assert_eq!(out.deferred, paths(&["a"]));
    assert!(record(&folder, "a").is_none());
    assert!(refs_links(&folder).is_empty(), "its link is removed");
}

#[tokio::test]
async fn a_new_directorys_contents_are_queued() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "d/a", b"a");
    write(&folder, "d/e/b", b"b");
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["d"])).await;
    assert_eq!(out.committed, 4, "{out:?}");
    assert_eq!(
        record(&folder, "d/e").unwrap().entry.kind,
        EntryKind::Directory
    );
    assert_eq!(record(&folder, "d/e/b").unwrap().entry.size, 1);
}

/// CI flake of `create_modify_delete_dirs…`: after `mkdir -p empty/dir`
/// the child settled first and was committed alone; the tree was removed
/// before `empty` itself was ever classified, so no tombstone could
/// remove the `empty` the peer had made for the child.
#[tokio::test]
async fn regression_a_child_committed_before_its_new_parent_brings_the_parent_along() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    std::fs::create_dir_all(folder.fs.abs("empty/dir")).unwrap();
    write(&folder, "top/mid/f", b"f");
    let health = crate::health::Health::new(1);
    let out = hash_batch(
        folder.clone(),
        health.clone(),
        paths(&["empty/dir", "top/mid/f"]),
    )
    .await;
    assert_eq!(out.committed, 5, "{out:?}");
    for p in ["empty", "empty/dir", "top", "top/mid"] {
        assert_eq!(
            record(&folder, p).unwrap().entry.kind,
            EntryKind::Directory,
            "{p}"
        );
    }
    std::fs::remove_dir_all(folder.fs.abs("empty")).unwrap();
    let out = hash_batch(folder.clone(), health, paths(&["empty/dir", "empty"])).await;
    assert_eq!(out.committed, 2, "{out:?}");
    assert!(record(&folder, "empty").unwrap().entry.deleted);
}

#[tokio::test]
async fn a_deleted_directory_tombstones_its_indexed_children() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "d/a", b"a");
    write(&folder, "d/e/b", b"b");
    write(&folder, "other", b"o");
    assert_eq!(
        hash_batch(
            folder.clone(),
            crate::health::Health::new(1),
            paths(&["d", "other"])
        )
        .await
        .committed,
        5
    );
    std::fs::remove_dir_all(folder.fs.abs("d")).unwrap();
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["d"])).await;
    assert_eq!(out.committed, 4, "{out:?}");
    for p in ["d", "d/a", "d/e", "d/e/b"] {
        let r = record(&folder, p).unwrap();
        assert!(r.entry.deleted, "{p} is a tombstone");
        assert_eq!(r.entry.version.get(ME), 2);
    }
    assert!(!record(&folder, "other").unwrap().entry.deleted);
}

#[tokio::test]
async fn a_path_the_receiver_is_applying_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "a", b"being written by the receiver");
    let guard = ApplyGuard::new(&folder, "a");
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.deferred, paths(&["a"]));
    assert_eq!(out.committed, 0);
    assert!(record(&folder, "a").is_none());
    drop(guard);
    assert_eq!(
        hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"]))
            .await
            .committed,
        1
    );
}

#[tokio::test]
async fn an_ignored_path_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, ".fleetsyncignore", b"*.log\nbuild/\n");
    folder.reload_ignore();
    write(&folder, "a.log", b"noise");
    write(&folder, "build/x.o", b"obj");
    write(&folder, "keep", b"k");
    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a.log", "build", "keep"]),
    )
    .await;
    assert_eq!(out.committed, 1, "{out:?}");
    assert!(out.deferred.is_empty() && out.failed.is_empty());
    assert!(record(&folder, "a.log").is_none());
    assert!(record(&folder, "build").is_none());
    assert!(record(&folder, "build/x.o").is_none());
}

#[tokio::test]
async fn a_file_its_writer_is_done_with_is_hashed_at_once_while_it_shows_what_the_writer_left() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = folder_with_settle(dir.path(), probe.clone(), Duration::from_secs(600));
    write(&folder, "closed", b"done");
    write(&folder, "again", b"first");
    let lstat = |p: &str| folder.fs.lstat(p).unwrap();
    let mut done = Done::new();
    done.insert("closed".to_string(), lstat("closed"));
    done.insert("again".to_string(), lstat("again"));
    // Written again after the watcher looked: it settles first.
    write(&folder, "again", b"second, longer");
    let out = hash_done_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["closed", "again"]),
        done,
        Turn::now(),
    )
    .await;
    assert_eq!(out.committed, 1, "{out:?}");
    assert_eq!(out.deferred, paths(&["again"]));
    assert!(record(&folder, "closed").is_some());
    assert!(record(&folder, "again").is_none());
}

#[tokio::test]
async fn a_file_written_moments_ago_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = folder_with_settle(dir.path(), probe.clone(), Duration::from_secs(600));
    write(&folder, "fresh", b"still being written?");
    let old = write(&folder, "old", b"written long ago");
    let f = std::fs::File::options().write(true).open(old).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["fresh", "old"]),
    )
    .await;
    assert_eq!(out.deferred, paths(&["fresh"]));
    assert_eq!(out.committed, 1);
    assert_eq!(
        probe.imports.load(Ordering::Relaxed),
        1,
        "fresh was not read"
    );
}

/// Point `l` at `target` through a rename, so the link gets a new inode
/// even if the old one is about to be freed (a reused inode and a coarse
/// mtime could leave the stat unchanged).
fn relink(folder: &Folder, target: &str) {
    let tmp = folder.fs.abs("l.new");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, folder.fs.abs("l")).unwrap();
}

#[tokio::test]
async fn a_symlink_is_a_new_version_only_when_its_target_changes() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    relink(&folder, "t1");
    assert_eq!(
        hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["l"]))
            .await
            .committed,
        1
    );
    // Recreated with the same target: a new stat, so it is read, and the
    // index finds it already recorded.
    relink(&folder, "t1");
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["l"])).await;
    assert_eq!(out.committed, 0, "{out:?}");
    relink(&folder, "t2");
    assert_eq!(
        hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["l"]))
            .await
            .committed,
        1
    );
    let r = record(&folder, "l").unwrap();
    assert_eq!(r.entry.symlink_target.as_deref(), Some("t2"));
    assert_eq!(r.entry.version.get(ME), 2);
}

/// Regression: a file the store could not import (unreadable, the store
/// failing) came back as `deferred`, so the watcher re-marked it and the
/// hasher tried again every `settle`, forever. A file that is unchanged
/// after a failed import is now `failed` (retried after a backoff); one
/// that changed or vanished meanwhile still settles again.
#[tokio::test]
async fn an_unimportable_file_backs_off_instead_of_retrying_every_settle() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "a", b"cannot be imported");
    probe.fail.store(true, Ordering::Relaxed);
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.failed, paths(&["a"]));
    assert!(out.deferred.is_empty());
    assert!(refs_links(&folder).is_empty(), "its link is removed");
    assert!(folder
        .status
        .last_error()
        .unwrap()
        .contains("store is broken"));
    probe.write_during_import.store(true, Ordering::Relaxed);
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.deferred, paths(&["a"]), "it changed: settle again");
    assert!(out.failed.is_empty());
}

#[tokio::test]
async fn a_hash_task_that_panics_returns_its_paths_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "a", b"a");
    write(&folder, "b", b"b");
    probe.panic.store(true, Ordering::Relaxed);
    let out = hash_batch_guarded(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a", "b"]),
        Done::new(),
        Turns::default().take_next(),
    )
    .await;
    assert_eq!(out.failed, paths(&["a", "b"]));
    assert_eq!(out.committed, 0);
    probe.panic.store(false, Ordering::Relaxed);
    let out = hash_batch_guarded(
        folder.clone(),
        crate::health::Health::new(1),
        out.failed,
        Done::new(),
        Turns::default().take_next(),
    )
    .await;
    assert_eq!(out.committed, 2, "{out:?}");
}

#[tokio::test]
async fn a_new_directory_skips_names_no_peer_could_accept() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "d/ok", b"ok");
    write(&folder, "d/back\\slash", b"unsyncable");
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["d"])).await;
    assert_eq!(out.committed, 2, "{out:?}");
    assert!(out.failed.is_empty(), "not retried forever: {out:?}");
    assert!(record(&folder, "d/ok").is_some());
}

/// Regression: when the index commit of a hashed chunk failed, the hasher
/// only logged it; the paths came back neither deferred nor failed, so
/// the change waited for the hourly rescan. Now they come back `failed`,
/// and the watcher's settle state marks them again after a backoff.
///
/// How the commit is made to fail: the real `Index::commit` refuses a
/// folder that was never initialised in that index. `Folder::new` always
/// initialises its folder, so the test swaps the (public) `index` field
/// of a fresh, not yet shared `Folder` for a second index that has never
/// seen the folder, then swaps the right one back. Permissions cannot
/// make redb fail here: the tests run as root, and redb keeps its file
/// open. Reads of the empty index work (the path is simply new), so only
/// the commit fails, as a full disk or an I/O error would.
#[tokio::test]
async fn a_failed_hash_commit_is_retried_not_left_for_the_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let mut folder = quick_folder(dir.path(), FakeContent::new());
    let blank = Index::open(&dir.path().join("blank.redb")).unwrap();
    let good = std::mem::replace(&mut Arc::get_mut(&mut folder).unwrap().index, blank);
    write(&folder, "a", b"hashed, then the commit fails");
    std::fs::create_dir(folder.fs.abs("d")).unwrap();

    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a", "d"]),
    )
    .await;
    assert_eq!(out.committed, 0);
    let mut failed = out.failed.clone();
    failed.sort();
    assert_eq!(failed, paths(&["a", "d"]), "{out:?}");
    assert!(out.deferred.is_empty());
    assert!(
        refs_links(&folder).is_empty(),
        "the chunk's links are removed"
    );
    assert!(folder.status.last_error().unwrap().contains("index commit"));

    // The watcher retries them after the backoff, not at the next rescan.
    let mut settle = Settle::new(folder.cfg.settle);
    let t0 = Instant::now();
    settle.batch_done(out.failed, t0);
    assert!(settle.due(t0).is_empty());
    let t1 = t0 + RETRY_FIRST;
    let wake = settle.next_wake(t0).expect("a retry is due");
    assert!(
        wake >= t0 + RETRY_FIRST / 2 && wake <= t1,
        "{:?}",
        wake - t0
    );
    settle.retry_due(t1);
    let mut due = settle.due(t1);
    due.sort();
    assert_eq!(due, paths(&["a", "d"]));
    let looks: Vec<_> = due
        .iter()
        .map(|p| (p.clone(), folder.fs.lstat(p).unwrap()))
        .collect();
    settle.looked(looks.clone(), t1, t1);
    settle.looked(looks, t1, t1);
    let batch = settle.next_batch(10).into_iter().map(|(p, _)| p).collect();

    // The index works again: the retried batch commits both.
    Arc::get_mut(&mut folder).unwrap().index = good;
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), batch).await;
    assert_eq!(out.committed, 2, "{out:?}");
    assert!(out.failed.is_empty());
    assert!(record(&folder, "a").is_some() && record(&folder, "d").is_some());
}

#[tokio::test]
async fn observations_are_committed_even_when_every_import_fails() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "a", b"cannot be imported");
    std::fs::create_dir(folder.fs.abs("d")).unwrap();
    probe.fail.store(true, Ordering::Relaxed);
    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a", "d"]),
    )
    .await;
    assert_eq!(out.committed, 1, "{out:?}");
    assert_eq!(out.failed, paths(&["a"]));
    assert!(record(&folder, "d").is_some() && record(&folder, "a").is_none());
}

/// Group commits: hundreds of files hashed while earlier groups commit,
/// one of them rewritten while it is hashed. Every other file is
/// committed, in fewer commits than files; the rewritten one is caught by
/// the re-check and deferred, never committed with what was hashed.
#[tokio::test]
async fn a_file_changed_during_a_group_commit_batch_is_caught_the_rest_commit() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    let n = GROUP_MIN * 5 + 3;
    let mut names = Vec::new();
    for i in 0..n {
        let rel = format!("d/f{i:04}");
        write(&folder, &rel, format!("file {i}").as_bytes());
        names.push(rel);
    }
    *probe.tamper.lock().unwrap() = Some(b"file 77".to_vec());
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), names.clone()).await;
    // Every file but the rewritten one, and their parent `d`.
    assert_eq!(out.committed, n, "{out:?}");
    assert_eq!(out.deferred, paths(&["d/f0077"]));
    assert!(out.failed.is_empty());
    assert!(record(&folder, "d/f0077").is_none());
    for rel in names.iter().filter(|r| r.as_str() != "d/f0077") {
        let r = record(&folder, rel).expect("committed");
        let want = std::fs::read(folder.fs.abs(rel)).unwrap();
        assert_eq!(r.entry.hash, Some(*Hash::new(&want).as_bytes()), "{rel}");
    }
    let commits = folder.status.local_commits.load(Ordering::Relaxed) as usize;
    assert!(
        commits >= 1 && commits < n / 2,
        "grouped: {commits} commits"
    );
    // Small files are hashed by the hasher: nothing for the store to sync.
    assert_eq!(probe.syncs.load(Ordering::Relaxed), 0);
    assert_eq!(
        refs_links(&folder).len(),
        n - 1,
        "the changed file's link is removed"
    );
}

/// Small and big files are imported side by side (a number of each at a
/// time): a batch of both commits every one, each with its own content.
#[tokio::test]
async fn small_and_big_files_in_one_batch_are_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    let mut names = Vec::new();
    for i in 0..10u8 {
        let size = if i % 3 == 0 {
            SMALL_FILE as usize + 1
        } else {
            10
        };
        let rel = format!("f{i}");
        write(&folder, &rel, &vec![i; size]);
        names.push(rel);
    }
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), names.clone()).await;
    assert_eq!(out.committed, 10, "{out:?}");
    for rel in &names {
        let want = std::fs::read(folder.fs.abs(rel)).unwrap();
        let r = record(&folder, rel).expect("committed");
        assert_eq!(r.entry.hash, Some(*Hash::new(&want).as_bytes()), "{rel}");
    }
}

/// Issue 8: hashing one huge file takes longer than the stall timeout; the
/// store's progress while it hashes must reach the hasher's health, or the
/// supervisor replaces a hasher that is working.
#[tokio::test]
async fn a_long_import_is_progress_of_the_hasher() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "huge", &big_content(b"pretend many GiB"));
    probe.slow.store(true, Ordering::Relaxed);
    let health = crate::health::Health::new(1);
    let batch = tokio::spawn(hash_batch(folder.clone(), health.clone(), paths(&["huge"])));
    until("the import to start", || {
        probe.imports.load(Ordering::Relaxed) == 1
    })
    .await;
    let when_started = health.vitals().last_progress_ms;
    until("progress from inside the import", || {
        health.vitals().last_progress_ms > when_started
    })
    .await;
    probe.slow.store(false, Ordering::Relaxed);
    assert_eq!(batch.await.unwrap().committed, 1);
}

/// Two batches run at once (the watcher sends the next while the last
/// commits): the later one may hash first, but its commits wait until
/// the earlier batch has ended, so the index keeps the newer look.
#[tokio::test]
async fn batches_commit_in_the_order_the_hasher_took_them() {
    let dir = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "first", b"taken first");
    write(&folder, "second", b"taken second");
    let mut turns = Turns::default();
    let (first_turn, first_end) = turns.take_next();
    let second_turn = turns.take_next();
    let second = tokio::spawn(hash_batch_guarded(
        folder.clone(),
        Health::new(1),
        paths(&["second"]),
        Done::new(),
        second_turn,
    ));
    until("the second batch to have hashed its file", || {
        crate::retention::list_refs(&folder).is_some_and(|refs| !refs.is_empty())
    })
    .await;
    let first = hash_batch_guarded(
        folder.clone(),
        Health::new(1),
        paths(&["first"]),
        Done::new(),
        (first_turn, first_end),
    )
    .await;
    assert_eq!(first.committed, 1, "{first:?}");
    let second = second.await.unwrap();
    assert_eq!(second.committed, 1, "{second:?}");
    let seq = |p: &str| record(&folder, p).expect("recorded").entry.sequence;
    assert!(
        seq("first") < seq("second"),
        "the batch taken second committed before the first had ended"
    );
}

/// The watcher sends the next batch while the last one is still at the
/// hasher ([`crate::watcher`]'s `IN_FLIGHT`): a file written during a
/// huge import is hashed before that import ends, and committed after it.
#[actix::test]
async fn a_file_written_during_a_huge_import_is_hashed_before_that_batch_ends() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    write(&folder, "huge", &big_content(b"pretend many GiB"));
    probe.slow.store(true, Ordering::Relaxed);
    let hasher = crate::slot::Slot::default();
    hasher.set(Hasher::new(folder.clone(), Health::new(1)).start());
    let _watcher = crate::watcher::Watcher::new(folder.clone(), hasher, Health::new(1)).start();
    until("the huge import to start", || {
        probe.imports.load(Ordering::Relaxed) == 1
    })
    .await;
    let links = refs_links(&folder).len();
    write(&folder, "small", b"written during the import");
    until("the small file to be hashed", || {
        refs_links(&folder).len() > links
    })
    .await;
    assert!(record(&folder, "huge").is_none(), "still importing");
    probe.slow.store(false, Ordering::Relaxed);
    until("both files to be indexed", || {
        record(&folder, "huge").is_some() && record(&folder, "small").is_some()
    })
    .await;
    let seq = |p: &str| record(&folder, p).expect("recorded").entry.sequence;
    assert!(seq("huge") < seq("small"), "committed out of order");
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issue 10, case 13 (kill -9 at random points): the store records an
/// import in batches, the index commits at once. A crash right after the
/// commit must not leave an entry whose content the store forgot: the
/// disk matches the record, so nothing would ever import it again and no
/// peer could fetch it from this node. A small file is not in the store
/// at all: its `refs/` link, made before the commit, holds the content
/// (what `IndexedRefs` hands the mesh when a peer asks).
#[tokio::test]
async fn kill9_right_after_a_hash_commit_leaves_the_content_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let content = FakeContent::new();
    let folder = quick_folder(dir.path(), content.clone());
    write(
        &folder,
        "big",
        &big_content(b"committed just before the crash"),
    );
    write(&folder, "small", b"committed just before the crash");
    let out = hash_batch(folder.clone(), Health::new(1), paths(&["big", "small"])).await;
    assert_eq!(out.committed, 2, "{out:?}");
    content.crash();
    let r = record(&folder, "big").expect("recorded");
    let hash = Hash::from_bytes(r.entry.hash.unwrap());
    assert!(
        content.in_store(&hash),
        "the index references content the store lost in the crash"
    );
    let r = record(&folder, "small").expect("recorded");
    let link = folder.fs.refs_dir().join(r.refs.expect("a refs link"));
    let held = crate::fsutil::hash_file(&link).unwrap();
    assert_eq!(
        Some(held),
        r.entry.hash,
        "the link holds the recorded content"
    );
    let index = folder.index.clone();
    let folders =
        crate::folder_set::FolderSet::new([(folder.id().to_string(), folder.clone())].into());
    let local = crate::content::IndexedRefs { index, folders };
    use fleetsync_mesh::LocalContent;
    assert_eq!(local.candidates(&Hash::from_bytes(held)), vec![link]);
}

/// Content bigger than a small file ([`SMALL_FILE`]): imported by the
/// store, which hashes it.
fn big_content(seed: &[u8]) -> Vec<u8> {
    seed.iter()
        .copied()
        .cycle()
        .take(SMALL_FILE as usize + 1)
        .collect()
}

/// What the classifier's `lstat` showed at `rel`.
fn lstat_meta(folder: &Folder, rel: &str) -> Meta {
    match folder.fs.lstat(rel).unwrap() {
        crate::record::DiskState::Present(m) => m,
        other => panic!("{rel}: {other:?}"),
    }
}

/// A secret outside the folder, and `rel` in the folder replaced by a
/// symlink to it (what a local user can do between `lstat` and open).
fn swap_for_symlink(folder: &Folder, rel: &str, outside: &Path) -> PathBuf {
    let secret = outside.join("shadow");
    std::fs::write(&secret, b"root:secret-hash:19000").unwrap();
    let p = folder.fs.abs(rel);
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(&secret, &p).unwrap();
    secret
}

#[tokio::test]
async fn hasher_race_a_symlink_swapped_in_before_the_open_is_never_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    for (rel, bytes) in [("a", &b"innocent"[..]), ("empty", &b""[..])] {
        let probe = Arc::new(Probe::default());
        let folder = quick_folder(&dir.path().join(rel), probe.clone());
        write(&folder, rel, bytes);
        let meta = lstat_meta(&folder, rel);
        swap_for_symlink(&folder, rel, outside.path());
        let res = super::commit::import(&folder, rel, meta, &|_| {}).await;
        assert!(res.is_err(), "{rel}: the symlink was imported");
        assert_eq!(probe.imports.load(Ordering::Relaxed), 0, "{rel}: read");
        assert!(!probe.inner.in_store(&Hash::new(b"root:secret-hash:19000")));
        assert!(refs_links(&folder).is_empty(), "{rel}: a link was left");
        // The whole batch: nothing of the secret is indexed.
        let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&[rel])).await;
        assert!(out.failed.is_empty(), "{out:?}");
        let r = record(&folder, rel).expect("the symlink is indexed as one");
        assert_eq!(r.entry.kind, EntryKind::Symlink);
        assert!(!probe.inner.in_store(&Hash::new(b"root:secret-hash:19000")));
    }
}

#[test]
fn hasher_race_a_swap_between_open_and_link_links_the_opened_inode() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let folder = quick_folder(dir.path(), FakeContent::new());
    write(&folder, "a", b"innocent");
    let session = folder.fs.session().unwrap();
    let mut opened = session.open_regular("a").unwrap();
    // The user's file moved aside (still alive), a symlink in its place.
    std::fs::rename(folder.fs.abs("a"), folder.fs.abs("kept")).unwrap();
    write(&folder, "a", b"placeholder");
    let secret = swap_for_symlink(&folder, "a", outside.path());
    let link = session.link_opened(&mut opened).unwrap();
    let linked = folder.fs.refs_dir().join(&link.name);
    assert_eq!(std::fs::read(&linked).unwrap(), b"innocent");
    assert!(!std::fs::symlink_metadata(&linked).unwrap().is_symlink());
    assert!(!link.is_at(&secret));
    assert!(
        !session.still_is("a", opened.stat()),
        "the re-check sees the swap"
    );
    // Deleted outright: no link can be made; never one to the secret.
    write(&folder, "b", b"innocent");
    let mut opened = session.open_regular("b").unwrap();
    swap_for_symlink(&folder, "b", outside.path());
    assert!(session.link_opened(&mut opened).is_err());
}

#[tokio::test]
async fn hasher_race_a_staging_dir_swapped_during_import_is_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    // Big: the store imports it, opening its `refs/` link by path.
    write(&folder, "a", &big_content(b"innocent"));
    let secret = outside.path().join("shadow");
    std::fs::write(&secret, b"root:secret-hash:19000").unwrap();
    let (root, fake) = (folder.cfg.path.clone(), outside.path().join("fake"));
    *probe.during_import.lock().unwrap() = Some(Hook(Box::new(move |path: &Path| {
        // `.fleetsync` moved away and replaced by a symlink to a tree
        // whose `refs/<same name>` leads to the secret.
        let link = path.strip_prefix(root.join(".fleetsync/refs")).unwrap();
        let planted = fake.join("refs").join(link);
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, planted).unwrap();
        std::fs::rename(root.join(".fleetsync"), root.join(".moved")).unwrap();
        std::os::unix::fs::symlink(&fake, root.join(".fleetsync")).unwrap();
    })));
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.committed, 0, "{out:?}");
    assert!(
        record(&folder, "a").is_none(),
        "the secret's hash was indexed"
    );
}

#[tokio::test]
async fn hasher_race_a_staging_dir_swapped_during_a_chunk_indexes_none_of_it() {
    // Small files are hashed a chunk at a time under one stamp check: a
    // swap while the first one is hashed keeps every file of the chunk
    // out (the mesh would open their links through the swapped directory
    // when a peer asks).
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    for name in ["a", "b", "c"] {
        write(&folder, name, name.as_bytes());
    }
    let (root, fake) = (folder.cfg.path.clone(), outside.path().join("fake"));
    *probe.during_import.lock().unwrap() = Some(Hook(Box::new(move |_: &Path| {
        // The swapped-in tree leads to the same files (every path check
        // passes): only the stamp of `.fleetsync` tells.
        std::fs::create_dir_all(fake.join("refs")).unwrap();
        std::fs::rename(root.join(".fleetsync"), root.join(".moved")).unwrap();
        for link in std::fs::read_dir(root.join(".moved/refs")).unwrap() {
            let link = link.unwrap();
            std::os::unix::fs::symlink(link.path(), fake.join("refs").join(link.file_name()))
                .unwrap();
        }
        std::os::unix::fs::symlink(&fake, root.join(".fleetsync")).unwrap();
    })));
    let out = hash_batch(
        folder.clone(),
        crate::health::Health::new(1),
        paths(&["a", "b", "c"]),
    )
    .await;
    assert_eq!(out.committed, 0, "{out:?}");
    for name in ["a", "b", "c"] {
        assert!(record(&folder, name).is_none(), "{name} was indexed");
    }
}

#[tokio::test]
async fn hasher_race_a_rewrite_that_restores_the_mtime_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let folder = quick_folder(dir.path(), probe.clone());
    let p = write(&folder, "a", b"first");
    *probe.during_import.lock().unwrap() = Some(Hook(Box::new(move |_: &Path| {
        // Same size, same inode, mtime put back: only ctime tells.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        std::io::Write::write_all(&mut &f, b"FIRST").unwrap();
        f.set_modified(mtime).unwrap();
    })));
    let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths(&["a"])).await;
    assert_eq!(out.committed, 0, "{out:?}");
    assert_eq!(out.deferred, paths(&["a"]));
}
