//! Test fixtures: an in-memory [`Content`] (peers that serve blobs, a
//! local store, fetches that break half way, peers that hang mid-transfer)
//! and a [`Folder`] on a temp dir with a real index, so actors and the
//! apply pipeline are tested without iroh.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use fleetsync_config::{FolderConfig, FolderMode, WatchMode};
use fleetsync_mesh::{
    model::{EntryKind, FileEntry, ShortId, VersionVector},
    EndpointId, FetchError, Hash, SecretKey, StoreError,
};

use tokio::sync::watch;

use crate::{
    apply::Sources,
    content::{Content, Hold},
    folder::{Folder, DEFAULT_TRANSFER_STALL_TIMEOUT},
    health::Health,
    index::{Commit, Index, Item},
    record::{DiskState, LocalStat, Record},
};

/// This node's short id in tests.
pub const ME: ShortId = ShortId(7 << 56);

/// How the fake store holds a blob: fetched bytes, or a file referenced
/// in place (like the real store's `TryReference` import: if the file is
/// edited afterwards, the store hands out the edited bytes).
#[derive(Debug, Clone)]
enum Stored {
    Bytes(Vec<u8>),
    Referenced(PathBuf),
}

#[derive(Default)]
struct State {
    /// What each connected peer can serve.
    peers: BTreeMap<EndpointId, HashMap<Hash, Vec<u8>>>,
    /// The local blob store.
    store: HashMap<Hash, Stored>,
    /// Store entries made since the last `sync` (a crash loses them).
    unsynced: HashSet<Hash>,
    /// Fetches of these hashes deliver this many bytes, then fail.
    break_after: HashMap<Hash, u64>,
    /// Fetches of a hash from a peer that deliver this many bytes, then
    /// send nothing more (the connection stays up) until released.
    hangs: HashMap<(EndpointId, Hash), (u64, watch::Sender<bool>)>,
    /// Every fetch asked for, in order: (peer, hash).
    fetches: Vec<(EndpointId, Hash)>,
    /// Run once, while this content is being sent (a local edit racing a
    /// download, a disk going away mid-batch).
    during: HashMap<Hash, Hook>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// What a fake peer sent: bytes, then maybe a hang (until released), then
/// maybe an error.
struct Sent {
    bytes: Vec<u8>,
    hang: Option<watch::Receiver<bool>>,
    error: Option<FetchError>,
}

impl Sent {
    /// Wait out the hang, if any: until released (the transfer then fails,
    /// like a connection that finally drops) or the fetch is cancelled.
    async fn hang(&mut self) {
        if let Some(mut released) = self.hang.take() {
            // An error means the fake is gone: also the end of the hang.
            released.wait_for(|r| *r).await.ok();
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("peers", &self.peers.len())
            .field("store", &self.store.len())
            .field("fetches", &self.fetches)
            .finish_non_exhaustive()
    }
}

/// Peers and a blob store in memory.
#[derive(Debug, Default)]
pub struct FakeContent(Mutex<State>);

impl FakeContent {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeContent::default())
    }

    /// A fresh peer id (not connected until it serves something).
    pub fn new_peer() -> EndpointId {
        SecretKey::generate().public()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("fake content lock")
    }

    /// `peer` is connected and can serve `bytes`; returns their hash.
    pub fn serve(&self, peer: EndpointId, bytes: &[u8]) -> Hash {
        let hash = Hash::new(bytes);
        let mut s = self.state();
        s.peers
            .entry(peer)
            .or_default()
            .insert(hash, bytes.to_vec());
        hash
    }

    /// `peer` is connected but serves nothing (yet).
    pub fn connect(&self, peer: EndpointId) {
        self.state().peers.entry(peer).or_default();
    }

    pub fn disconnect(&self, peer: &EndpointId) {
        self.state().peers.remove(peer);
    }

    /// Fetches of `hash` deliver `n` bytes and then fail, until cleared.
    pub fn break_after(&self, hash: Hash, n: u64) {
        self.state().break_after.insert(hash, n);
    }

    /// Run `hook` once, the next time `hash` is being sent.
    pub fn while_sending(&self, hash: Hash, hook: impl FnOnce() + Send + 'static) {
        self.state().during.insert(hash, Box::new(hook));
    }

    pub fn mend(&self, hash: &Hash) {
        self.state().break_after.remove(hash);
    }

    /// Fetches of `hash` from `peer` deliver `after` bytes, then nothing:
    /// the peer stays connected and the transfer open, until
    /// [`FakeContent::release`] (or the fetch is cancelled).
    pub fn hang(&self, peer: EndpointId, hash: Hash, after: u64) {
        let released = watch::channel(false).0;
        self.state().hangs.insert((peer, hash), (after, released));
    }

    /// End a hang: the fetches held by it fail ("connection lost"), later
    /// ones are served again.
    pub fn release(&self, peer: EndpointId, hash: Hash) {
        if let Some((_, released)) = self.state().hangs.remove(&(peer, hash)) {
            released.send_replace(true);
        }
    }

    /// Every fetch asked for so far: (peer, hash).
    pub fn fetches(&self) -> Vec<(EndpointId, Hash)> {
        self.state().fetches.clone()
    }

    /// A crash of the real store: entries recorded since the last
    /// [`Content::sync`] are lost.
    pub fn crash(&self) {
        let mut s = self.state();
        for h in std::mem::take(&mut s.unsynced) {
            s.store.remove(&h);
        }
    }

    fn stored(&self, hash: Hash, how: Stored) {
        let mut s = self.state();
        s.store.insert(hash, how);
        s.unsynced.insert(hash);
    }

    pub fn in_store(&self, hash: &Hash) -> bool {
        self.state().store.contains_key(hash)
    }

    /// What `peer` would send for `hash`: the bytes, and how it fails
    /// after them, if it does.
    fn send(&self, peer: EndpointId, hash: Hash) -> Sent {
        let hook = self.state().during.remove(&hash);
        if let Some(hook) = hook {
            hook();
        }
        let mut s = self.state();
        s.fetches.push((peer, hash));
        let Some(bytes) = s.peers.get(&peer).and_then(|p| p.get(&hash)).cloned() else {
            return Sent {
                bytes: Vec::new(),
                hang: None,
                error: Some(FetchError::transfer(&peer, "not found")),
            };
        };
        let lost = || Some(FetchError::transfer(&peer, "connection lost"));
        let upto = |n: u64| bytes[..(n as usize).min(bytes.len())].to_vec();
        if let Some((n, released)) = s.hangs.get(&(peer, hash)) {
            return Sent {
                bytes: upto(*n),
                hang: Some(released.subscribe()),
                error: lost(),
            };
        }
        match s.break_after.get(&hash) {
            Some(&n) => Sent {
                bytes: upto(n),
                hang: None,
                error: lost(),
            },
            None => Sent {
                bytes,
                hang: None,
                error: None,
            },
        }
    }
}

#[async_trait]
impl Content for FakeContent {
    fn providers(&self) -> Vec<EndpointId> {
        self.state().peers.keys().copied().collect()
    }

    async fn has(&self, hash: Hash) -> Result<bool, StoreError> {
        Ok(self.in_store(&hash))
    }

    async fn import(
        &self,
        path: PathBuf,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Hash, Hold), StoreError> {
        let bytes = std::fs::read(&path)?;
        progress(bytes.len() as u64);
        let hash = Hash::new(bytes);
        self.stored(hash, Stored::Referenced(path));
        Ok((hash, Hold::new(())))
    }

    async fn export(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError> {
        let stored = self.state().store.get(&hash).cloned();
        let bytes = match stored {
            Some(Stored::Bytes(b)) => b,
            Some(Stored::Referenced(p)) => std::fs::read(p)?,
            None => return Err(std::io::Error::other("not in the store").into()),
        };
        std::fs::write(target, bytes)?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.state().unsynced.clear();
        Ok(())
    }

    async fn fetch(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let mut sent = self.send(peer, hash);
        let n = sent.bytes.len() as u64;
        progress.store(n, Ordering::Relaxed);
        sent.hang().await;
        match sent.error {
            Some(e) => Err(e),
            None => {
                self.stored(hash, Stored::Bytes(sent.bytes));
                Ok(n)
            }
        }
    }

    async fn fetch_many(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
        progress: &AtomicU64,
    ) -> Result<(Vec<Hash>, u64), FetchError> {
        let mut got = Vec::new();
        let mut bytes = 0;
        for (hash, path) in items {
            let mut sent = self.send(peer, hash);
            progress.fetch_add(sent.bytes.len() as u64, Ordering::Relaxed);
            sent.hang().await;
            match sent.error {
                None => {
                    std::fs::write(&path, &sent.bytes).map_err(FetchError::Write)?;
                    bytes += sent.bytes.len() as u64;
                    got.push(hash);
                }
                // Like GetMany: a blob that breaks off ends the request.
                Some(e) if !sent.bytes.is_empty() => return Err(e),
                Some(_) => {}
            }
        }
        Ok((got, bytes))
    }

    async fn fetch_direct(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let mut sent = self.send(peer, hash);
        file.write_all_at(&sent.bytes, 0)
            .map_err(FetchError::Write)?;
        progress.fetch_add(sent.bytes.len() as u64, Ordering::Relaxed);
        sent.hang().await;
        match sent.error {
            None => Ok(sent.bytes.len() as u64),
            Some(e) => Err(e),
        }
    }
}

/// The config of test folder `f` rooted at `root`.
pub fn folder_config(root: &Path, mode: FolderMode) -> FolderConfig {
    FolderConfig {
        id: "f".into(),
        path: root.to_path_buf(),
        mode,
        settle: Duration::from_millis(50),
        rescan: Duration::from_secs(3600),
        watch: WatchMode::Notify,
        poll_interval: Duration::from_secs(1),
        max_pending: fleetsync_config::DEFAULT_MAX_PENDING,
        max_files: fleetsync_config::DEFAULT_MAX_FILES,
        min_free: fleetsync_config::MinFree::Bytes(0),
        umask: fleetsync_config::Umask::default(),
        max_delete_fraction: fleetsync_config::DEFAULT_MAX_DELETE_FRACTION,
        tombstone_ttl: std::time::Duration::from_secs(180 * 24 * 3600),
        versions: fleetsync_config::VersionsPolicy::default(),
    }
}

/// A send-receive folder `f` at `<dir>/root` (reserved dirs made), its
/// index at `<dir>/index.redb`.
pub fn folder(dir: &Path, content: Arc<dyn Content>) -> Arc<Folder> {
    folder_with_mode(dir, content, FolderMode::SendReceive)
}

pub fn folder_with_mode(dir: &Path, content: Arc<dyn Content>, mode: FolderMode) -> Arc<Folder> {
    folder_with(dir, content, mode, DEFAULT_TRANSFER_STALL_TIMEOUT)
}

/// A folder whose transfers give up on a peer after `stall` without data.
pub fn folder_with(
    dir: &Path,
    content: Arc<dyn Content>,
    mode: FolderMode,
    stall: Duration,
) -> Arc<Folder> {
    folder_with_cfg(dir, content, stall, |c| c.mode = mode)
}

/// A folder whose config `edit` changes first.
pub fn folder_with_cfg(
    dir: &Path,
    content: Arc<dyn Content>,
    stall: Duration,
    edit: impl FnOnce(&mut FolderConfig),
) -> Arc<Folder> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("create folder root");
    let index = Index::open(&dir.join("index.redb")).expect("open index");
    let mut cfg = folder_config(&root, FolderMode::SendReceive);
    edit(&mut cfg);
    let folder = Folder::new(cfg, index, content, ME, stall).expect("folder");
    folder.fs.ensure_reserved().expect("reserved dirs");
    folder
}

/// Every connected peer of `content`, as a fresh attempt of a receiver
/// incarnation of its own.
pub fn sources(content: &dyn Content) -> Sources {
    Sources::new(content.providers(), Health::new(1))
}

/// A peer's entry: version `{by: counter}`, a fixed mtime, mode 0o750 for
/// directories and 0o640 otherwise, the content's hash, symlinks pointing
/// at "target".
pub fn entry(
    path: &str,
    kind: EntryKind,
    content: Option<&[u8]>,
    by: ShortId,
    counter: u64,
) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        size: content.map_or(0, |c| c.len() as u64),
        mtime_ns: 1_600_000_000_123_456_789,
        mode: if kind == EntryKind::Directory {
            0o750
        } else {
            0o640
        },
        hash: content.map(|c| *Hash::new(c).as_bytes()),
        symlink_target: (kind == EntryKind::Symlink).then(|| "target".to_string()),
        deleted: false,
        version: VersionVector::from_pairs([(by, counter)]),
        modified_by: by,
        sequence: counter,
    }
}

/// A folder with its fake content and one connected peer: the setting of
/// most apply and receiver tests.
pub struct Scene {
    _dir: tempfile::TempDir,
    pub fake: Arc<FakeContent>,
    pub folder: Arc<Folder>,
    pub peer: EndpointId,
}

impl Scene {
    pub fn new() -> Self {
        Scene::with_stall(DEFAULT_TRANSFER_STALL_TIMEOUT)
    }

    /// A scene whose transfers give up on a peer after `stall` without data.
    pub fn with_stall(stall: Duration) -> Self {
        Scene::with_cfg(stall, |_| {})
    }

    /// A scene whose folder config `edit` changes first.
    pub fn with_cfg(stall: Duration, edit: impl FnOnce(&mut FolderConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = FakeContent::new();
        let folder = folder_with_cfg(dir.path(), fake.clone(), stall, edit);
        let peer = FakeContent::new_peer();
        fake.connect(peer);
        Scene {
            _dir: dir,
            fake,
            folder,
            peer,
        }
    }

    pub fn root(&self) -> &Path {
        self.folder.fs.root()
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.root().join(rel)).expect("read a folder file")
    }

    /// The stat of what is at `rel` (panics if nothing is).
    pub fn stat(&self, rel: &str) -> LocalStat {
        match self.folder.fs.lstat(rel).expect("lstat") {
            DiskState::Present(m) => m.stat,
            other => panic!("{rel}: {other:?}"),
        }
    }

    /// Write a file and record it as our own first version, disk and index
    /// in agreement (what the hasher would leave).
    pub fn local_file(&self, rel: &str, content: &[u8]) -> FileEntry {
        std::fs::write(self.root().join(rel), content).expect("write");
        let stat = self.stat(rel);
        let e = FileEntry {
            path: rel.into(),
            kind: EntryKind::File,
            size: content.len() as u64,
            mtime_ns: stat.mtime_ns,
            mode: stat.mode,
            hash: Some(*Hash::new(content).as_bytes()),
            symlink_target: None,
            deleted: false,
            version: VersionVector::from_pairs([(ME, 1)]),
            modified_by: ME,
            sequence: 0,
        };
        self.record(e.clone(), Some(stat));
        e
    }

    /// Make a directory and record it as ours.
    pub fn local_dir(&self, rel: &str) {
        std::fs::create_dir(self.root().join(rel)).expect("mkdir");
        let stat = self.stat(rel);
        let e = FileEntry {
            path: rel.into(),
            kind: EntryKind::Directory,
            size: 0,
            mtime_ns: stat.mtime_ns,
            mode: stat.mode,
            hash: None,
            symlink_target: None,
            deleted: false,
            version: VersionVector::from_pairs([(ME, 1)]),
            modified_by: ME,
            sequence: 0,
        };
        self.record(e, Some(stat));
    }

    /// Commit `entry` as our record of its path.
    pub fn record(&self, entry: FileEntry, local: Option<LocalStat>) {
        let record = Record {
            entry,
            local,
            local_changed: false,
            received_from: None,
            refs: None,
        };
        let c = Commit {
            items: vec![Item::Applied {
                record,
                note: "test".into(),
                resolves: vec![],
                from: [0; 32],
            }],
            resolved: vec![],
        };
        let f = &self.folder;
        f.index.commit(f.id(), c, f.local()).expect("commit");
    }

    pub fn recorded(&self, path: &str) -> Option<Record> {
        self.folder
            .index
            .get(self.folder.id(), path)
            .expect("index get")
    }

    pub fn pending_count(&self) -> u64 {
        self.folder
            .index
            .pending_count(self.folder.id())
            .expect("count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_serves_what_peers_have_and_breaks_where_told() {
        let fake = FakeContent::new();
        let p = FakeContent::new_peer();
        let h = fake.serve(p, b"hello world");
        assert_eq!(fake.providers(), vec![p]);
        let progress = AtomicU64::new(0);
        fake.break_after(h, 5);
        assert!(fake.fetch(p, h, &progress).await.is_err());
        assert_eq!(progress.load(Ordering::Relaxed), 5);
        assert!(!fake.has(h).await.unwrap());
        fake.mend(&h);
        assert_eq!(fake.fetch(p, h, &progress).await.unwrap(), 11);
        assert!(fake.has(h).await.unwrap());
        let other = FakeContent::new_peer();
        assert!(fake.fetch(other, h, &progress).await.is_err());
        assert_eq!(fake.fetches().len(), 3);
    }

    #[tokio::test]
    async fn a_hanging_peer_sends_part_then_nothing_until_released() {
        let fake = FakeContent::new();
        let (slow, fast) = (FakeContent::new_peer(), FakeContent::new_peer());
        let h = fake.serve(slow, b"hello world");
        fake.serve(fast, b"hello world");
        fake.hang(slow, h, 4);
        let progress = Arc::new(AtomicU64::new(0));
        let held = {
            let (fake, progress) = (fake.clone(), progress.clone());
            tokio::spawn(async move { fake.fetch(slow, h, &progress).await })
        };
        let start = std::time::Instant::now();
        while fake.fetches().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "never asked");
            tokio::task::yield_now().await;
        }
        // Other peers and other content are not held.
        assert_eq!(fake.fetch(fast, h, &AtomicU64::new(0)).await.unwrap(), 11);
        assert_eq!(
            progress.load(Ordering::Relaxed),
            4,
            "the part before the hang"
        );
        assert!(!held.is_finished(), "held open");
        fake.release(slow, h);
        assert!(held.await.unwrap().is_err(), "released: the transfer fails");
        let n = fake.fetch(slow, h, &AtomicU64::new(0)).await.unwrap();
        assert_eq!(n, 11, "served again after the release");
    }
}
