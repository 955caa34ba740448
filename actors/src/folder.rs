//! [`Folder`]: what every actor of one folder shares — config, confined
//! filesystem, index, [`Content`] (blob store and peers), the ignore rules,
//! the "index head moved" signal the distributor waits on, live status,
//! and two small caches of content on disk (parked and released `refs/`
//! links).
//!
//! Nothing here is actor state: it survives actor restarts, and everything
//! persistent lives in the index.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use fleetsync_config::{FolderConfig, FolderMode};
use fleetsync_mesh::{
    model::{EntryKind, ShortId},
    EndpointId,
};
use tokio::sync::watch;

use crate::{
    content::Content,
    fsutil::FolderFs,
    guard::DeleteGuard,
    ignore::Ignore,
    index::{Index, IndexError, Limits, Released},
    record::applied_mode,
    tombs::Readers,
    versions::Versions,
};

/// How many errors and rejected inputs a folder remembers (status's
/// `recent`, which `fleetsync doctor` reads).
pub const RECENT_EVENTS: usize = 64;

/// What a [`RecentEvent`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecentKind {
    /// Something the folder failed to do (its `last_error`).
    Error,
    /// Input from a peer refused (counted in `rejected`).
    Rejected,
}

/// One remembered error or rejected input.
#[derive(Debug, Clone)]
pub struct RecentEvent {
    pub at: SystemTime,
    pub kind: RecentKind,
    /// The peer (short id) the input came from, for rejected input.
    pub peer: Option<String>,
    pub message: String,
}

/// A transfer in progress, for `fleetsync status`.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub peer: String,
    pub total: u64,
    pub done: Arc<AtomicU64>,
    pub started: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Scanning,
    Idle,
    Syncing,
    Error,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Scanning => "scanning",
            Phase::Idle => "idle",
            Phase::Syncing => "syncing",
            Phase::Error => "error",
        }
    }
}

#[derive(Debug)]
pub struct FolderStatus {
    pub scanning: AtomicBool,
    pub syncing: AtomicBool,
    /// Folder-level fault (marker missing, root unreadable): no sync.
    fault: Mutex<Option<String>>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    /// The last [`RECENT_EVENTS`] errors and rejected inputs, with their
    /// time (`fleetsync doctor` groups the last minutes of them).
    recent: Mutex<VecDeque<RecentEvent>>,
    transfers: Mutex<BTreeMap<String, Transfer>>,
    pub files_in: AtomicU64,
    pub files_out_announced: AtomicU64,
    /// The hasher's index commits that wrote entries: with
    /// `files_out_announced`, how many files a group commit takes at once.
    pub local_commits: AtomicU64,
    pub bytes_in: AtomicU64,
    /// `bytes_in` by the peer (short id) that sent them, for metrics.
    /// Bounded by the fleet's membership.
    bytes_in_by_peer: Mutex<BTreeMap<String, u64>>,
    /// Unix seconds when a status snapshot last found the folder in sync
    /// (0: never).
    pub last_in_sync_secs: AtomicU64,
    pub conflicts: AtomicU64,
    pub rejected: AtomicU64,
    /// Remote entries deferred by the folder's caps (`max_pending`,
    /// `max_files`): not stored, offered again by their peer later.
    pub deferred: AtomicU64,
    /// Peers (short id) whose entries wait because the folder holds
    /// `max_files` paths, with the message status shows.
    full: Mutex<BTreeMap<String, String>>,
    pub initial_scan_done: AtomicBool,
    /// The watcher knows of local changes the index does not have yet
    /// (paths settling or at the hasher, new directories not looked into).
    pub unindexed: AtomicBool,
    /// What retention did here last (status, metrics, its own gate).
    pub sweeps: SweepStats,
    /// Rows the receiver holds a retry mark for (its map's size).
    pub retrying: std::sync::atomic::AtomicUsize,
    /// `versions.local`: the node's own deletes and replacements whose old
    /// content was kept, and those it could not be kept for (no intact
    /// copy left: an in-place overwrite, no hard link, ...).
    pub versions_local_kept: AtomicU64,
    pub versions_local_missed: AtomicU64,
}

/// Retention's record of one folder: when it last swept, what it removed,
/// and what its gate compares (the index head it last swept at, and
/// whether that sweep left something to come back for).
#[derive(Debug)]
pub struct SweepStats {
    /// Unix ms of the last sweep; 0: never.
    pub last_ms: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// The folder's head when it was last swept (`u64::MAX`: never).
    pub head: AtomicU64,
    /// The last sweep kept files it must look at again once they age
    /// (young temp files or unused links).
    pub leftovers: AtomicBool,
    /// The folder's head when the blob collector was last told about it.
    pub gc_head: AtomicU64,
}

impl Default for SweepStats {
    fn default() -> Self {
        SweepStats {
            last_ms: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            head: AtomicU64::new(u64::MAX),
            leftovers: AtomicBool::new(false),
            gc_head: AtomicU64::new(u64::MAX),
        }
    }
}

/// How many entries each of a folder's in-memory maps holds (status's
/// debug section: tests check they return to their baseline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FolderMaps {
    pub applying: usize,
    pub parked: usize,
    pub released: usize,
    pub slow: usize,
    pub transfers: usize,
    pub full: usize,
    /// The receiver's retry marks.
    pub retrying: usize,
    /// Parent directories the receiver made before their own entry came.
    pub expected_dirs: usize,
}

impl Default for FolderStatus {
    fn default() -> Self {
        FolderStatus {
            scanning: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            fault: Mutex::new(None),
            last_error: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            transfers: Mutex::new(BTreeMap::new()),
            files_in: AtomicU64::new(0),
            files_out_announced: AtomicU64::new(0),
            local_commits: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_in_by_peer: Mutex::new(BTreeMap::new()),
            last_in_sync_secs: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            full: Mutex::new(BTreeMap::new()),
            initial_scan_done: AtomicBool::new(false),
            unindexed: AtomicBool::new(false),
            sweeps: SweepStats::default(),
            retrying: std::sync::atomic::AtomicUsize::new(0),
            versions_local_kept: AtomicU64::new(0),
            versions_local_missed: AtomicU64::new(0),
        }
    }
}

impl FolderStatus {
    pub fn phase(&self) -> Phase {
        if self.fault.lock().expect("status lock").is_some() {
            Phase::Error
        } else if !self.initial_scan_done.load(Ordering::Relaxed) {
            if self.scanning.load(Ordering::Relaxed) {
                Phase::Scanning
            } else {
                Phase::Starting
            }
        } else if self.syncing.load(Ordering::Relaxed) {
            Phase::Syncing
        } else if self.scanning.load(Ordering::Relaxed) {
            Phase::Scanning
        } else {
            Phase::Idle
        }
    }

    /// `n` content bytes arrived from `peer`: counted for the folder and
    /// for that peer (one place, so the two always agree).
    pub fn received(&self, peer: &fleetsync_mesh::EndpointId, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        let short = fleetsync_mesh::identity::short_id(peer).to_string();
        *self
            .bytes_in_by_peer
            .lock()
            .expect("status lock")
            .entry(short)
            .or_default() += n;
    }

    /// Bytes received per peer (short id) since start.
    pub fn received_by_peer(&self) -> BTreeMap<String, u64> {
        self.bytes_in_by_peer.lock().expect("status lock").clone()
    }

    /// An error to show as the folder's last one (and remember as recent).
    pub fn error(&self, msg: impl Into<String>) {
        let msg = msg.into();
        self.remember(RecentKind::Error, None, &msg);
        self.set_last_error(msg);
    }

    fn set_last_error(&self, msg: String) {
        *self.last_error.lock().expect("status lock") = Some((SystemTime::now(), msg));
    }

    /// Input from `peer` refused (already logged): counted, remembered as
    /// recent; `last` also makes it the folder's last error.
    pub fn reject(&self, peer: ShortId, msg: String, last: bool) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.remember(RecentKind::Rejected, Some(peer), &msg);
        if last {
            self.set_last_error(msg);
        }
    }

    /// Bounded: the oldest event goes when the ring is full, so a peer
    /// sending garbage without end costs a fixed amount of memory.
    fn remember(&self, kind: RecentKind, peer: Option<ShortId>, msg: &str) {
        let mut recent = self.recent.lock().expect("status lock");
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(RecentEvent {
            at: SystemTime::now(),
            kind,
            peer: peer.map(|p| p.to_string()),
            message: msg.to_string(),
        });
    }

    /// The remembered errors and rejected inputs, oldest first.
    pub fn recent(&self) -> Vec<RecentEvent> {
        self.recent
            .lock()
            .expect("status lock")
            .iter()
            .cloned()
            .collect()
    }

    /// While `Some`: `peer`'s new paths wait because the folder is full
    /// (shown as the folder's error); `None` when they flow again.
    pub fn set_full(&self, peer: &str, msg: Option<String>) {
        let mut full = self.full.lock().expect("status lock");
        match msg {
            Some(m) => full.insert(peer.to_string(), m),
            None => full.remove(peer),
        };
    }

    /// Why the folder takes no new paths, if it is full.
    pub fn full(&self) -> Option<String> {
        let full = self.full.lock().expect("status lock");
        full.values().next().cloned()
    }

    pub fn last_error(&self) -> Option<String> {
        let e = self.last_error.lock().expect("status lock");
        e.as_ref().map(|(_, m)| m.clone())
    }

    /// Transfers in progress, by path.
    pub fn transfers(&self) -> Vec<(String, Transfer)> {
        let t = self.transfers.lock().expect("status lock");
        t.iter().map(|(p, t)| (p.clone(), t.clone())).collect()
    }

    /// Show a transfer in status for as long as the returned guard lives.
    pub fn track(&self, path: &str, peer: String, total: u64) -> TransferGuard<'_> {
        let done = Arc::new(AtomicU64::new(0));
        let t = Transfer {
            peer,
            total,
            done: done.clone(),
            started: SystemTime::now(),
        };
        self.transfers
            .lock()
            .expect("status lock")
            .insert(path.to_string(), t);
        TransferGuard {
            status: self,
            path: path.to_string(),
            done,
        }
    }
}

/// A transfer shown in status; removed when dropped.
pub struct TransferGuard<'a> {
    status: &'a FolderStatus,
    path: String,
    /// Bytes received so far; the fetch updates it.
    pub done: Arc<AtomicU64>,
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.status
            .transfers
            .lock()
            .expect("status lock")
            .remove(&self.path);
    }
}

#[derive(Debug)]
pub struct Folder {
    pub cfg: FolderConfig,
    pub fs: FolderFs,
    pub index: Index,
    pub content: Arc<dyn Content>,
    pub me: ShortId,
    pub index_id: u64,
    ignore: RwLock<Arc<Ignore>>,
    /// Bumped after every commit; subscribers wait on it.
    head: watch::Sender<u64>,
    /// Paths the receiver is writing right now, with how many guards hold
    /// each (the hasher leaves them be until the last one is dropped).
    applying: Mutex<HashMap<String, usize>>,
    /// Parked content: `refs/` links holding verified content that an
    /// apply fetched or staged but did not place (abandoned, or prefetched
    /// for a later step). The next apply of the same hash takes it instead
    /// of fetching again.
    parked: Mutex<HashMap<[u8; 32], (Instant, String)>>,
    /// Refs links the index just stopped using, kept for [`RELEASE_GRACE`].
    released: Mutex<Graveyard>,
    /// A transfer that receives no verified bytes for this long is given
    /// up on that peer (`[mesh] transfer_stall_timeout`).
    pub transfer_stall: Duration,
    /// Peers whose transfer of some content stalled or failed, and when:
    /// they are asked last for that content until the mark expires.
    slow: Mutex<HashMap<([u8; 32], EndpointId), Instant>>,
    /// Parent directories the receiver makes for peers' entries before it
    /// has the directory's own entry, and since when ([`Folder::expect_dirs`]).
    expected_dirs: Mutex<HashMap<String, Instant>>,
    pub status: FolderStatus,
    /// The mass-delete guard ([`crate::guard`]): what it holds, the
    /// burst window.
    pub deletes: Mutex<DeleteGuard>,
    /// How far each peer has read our index, and the horizon of expired
    /// tombstones ([`crate::tombs`]).
    pub readers: Readers,
    /// Kept versions of replaced content (`.fleetsync/versions/`).
    pub versions: Arc<Versions>,
    /// Paused by the operator ([`Folder::set_paused`]).
    paused: AtomicBool,
    /// See [`Folder::refs_lock`].
    refs_lock: Mutex<()>,
    /// Removed by a reload ([`Folder::retire`]).
    retired: AtomicBool,
}

/// Where a folder's pause is kept.
fn paused_marker(root: &std::path::Path) -> std::path::PathBuf {
    root.join(fleetsync_mesh::model::RESERVED_DIR)
        .join("paused")
}

/// `[mesh] transfer_stall_timeout`'s default (the config crate owns it).
pub use fleetsync_config::DEFAULT_TRANSFER_STALL_TIMEOUT;

/// How long a peer stays "slow" for a content after its transfer of it
/// stalled or failed: long enough that retries ask the others first,
/// short enough that a peer that recovered is asked first again soon.
pub const SLOW_MARK_TTL: Duration = Duration::from_secs(300);

/// Slow marks kept at most; past it the expired ones go, then all (bounded
/// memory: a forgotten mark only changes the order peers are asked in).
const SLOW_MARKS_MAX: usize = 4096;

/// How long a parent directory the receiver made waits for its own entry
/// before the watcher may record it as a local one. The entry follows its
/// children within seconds; minutes cover a peer that is slow to settle a
/// directory still being filled.
pub const EXPECTED_DIR_TTL: Duration = Duration::from_secs(600);

/// Expected directories remembered at most; past it the expired ones go,
/// then the oldest half (bounded memory: a forgotten mark only lets the
/// watcher record that directory as a local version, as before).
const EXPECTED_DIRS_MAX: usize = 10_000;

/// The folder's marker (`<root>/.fleetsync`) is gone while the index has
/// content: most likely an unmounted disk. Syncing it as empty would
/// delete it everywhere, so the folder is paused instead.
#[derive(Debug, thiserror::Error)]
pub enum MarkerMissing {
    #[error("folder marker {}/.fleetsync is missing: is the disk mounted? (if the folder was emptied on purpose: mkdir -p {}/.fleetsync)", root.display(), root.display())]
    Missing { root: std::path::PathBuf },
    /// Planted by a local user to redirect the node's staging writes (or
    /// to fake the marker of an unmounted disk): never followed, never
    /// replaced silently, since the real disk may be the one missing.
    #[error("folder marker {}/.fleetsync is a symlink, not the node's directory; sync paused (remove the symlink; if the folder was emptied on purpose: mkdir {}/.fleetsync)", root.display(), root.display())]
    Symlink { root: std::path::PathBuf },
}

/// How long released content stays on disk. A rename reaches a peer as a
/// delete and a create, often in that order and in different batches; the
/// create finds the deleted file's content here instead of downloading it.
pub const RELEASE_GRACE: Duration = Duration::from_secs(30);

/// Released links beyond this many are removed at once (bounded memory).
const GRAVEYARD_MAX: usize = 100_000;

/// Parked links remembered at most; past it the memory is cleared (the
/// links themselves are swept by retention once old). Room for two
/// receiver batches (one being placed, the next prefetched) many times
/// over.
pub const PARKED_MAX: usize = 4096;

/// A parked link no apply took within this long is forgotten
/// ([`Folder::prune`]); retention then removes the link like any unused
/// one. An abandoned apply retries within minutes, so an hour is plenty.
pub const PARKED_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Graveyard {
    by_hash: HashMap<[u8; 32], Vec<(Instant, String)>>,
    len: usize,
    /// No entry is older than this: lets `expire` skip its scan (it runs
    /// on every commit).
    oldest: Option<Instant>,
}

impl Graveyard {
    fn add(&mut self, hash: [u8; 32], name: String) {
        let now = Instant::now();
        self.by_hash.entry(hash).or_default().push((now, name));
        self.len += 1;
        self.oldest.get_or_insert(now);
    }

    /// Take out what is older than `grace` (everything if over the bound).
    fn expire(&mut self, grace: Duration) -> Vec<String> {
        let now = Instant::now();
        let all = self.len > GRAVEYARD_MAX;
        if !all && self.oldest.is_none_or(|t| now.duration_since(t) < grace) {
            return Vec::new();
        }
        self.oldest = None;
        let mut oldest = None::<Instant>;
        let mut out = Vec::new();
        self.by_hash.retain(|_, v| {
            v.retain(|(t, name)| {
                let keep = !all && now.duration_since(*t) < grace;
                if keep {
                    oldest = Some(oldest.map_or(*t, |o| o.min(*t)));
                } else {
                    out.push(name.clone());
                }
                keep
            });
            !v.is_empty()
        });
        self.oldest = oldest;
        self.len -= out.len();
        out
    }
}

/// The folder's store of kept versions. One that cannot be read (its
/// directory replaced by a symlink…) starts empty: each keep then tries
/// again and fails with the reason, which the apply reports.
fn open_versions(cfg: &FolderConfig) -> Versions {
    Versions::open(&cfg.path, cfg.versions).unwrap_or_else(|e| {
        tracing::warn!(folder = %cfg.id, "kept versions not readable: {e}");
        Versions::empty(&cfg.path, cfg.versions)
    })
}

/// Make room in the expected directories: the expired ones go, then the
/// older half if that was not enough.
fn shrink_expected(m: &mut HashMap<String, Instant>, now: Instant) {
    m.retain(|_, at| now.duration_since(*at) < EXPECTED_DIR_TTL);
    if m.len() >= EXPECTED_DIRS_MAX {
        let mut ages: Vec<Instant> = m.values().copied().collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        m.retain(|_, at| *at > cut);
    }
}

impl Folder {
    pub fn new(
        cfg: FolderConfig,
        index: Index,
        content: Arc<dyn Content>,
        me: ShortId,
        transfer_stall: Duration,
    ) -> Result<Arc<Self>, IndexError> {
        let meta = index.ensure_folder(&cfg.id)?;
        let readers = Readers::load(&index, &cfg.id)?;
        let versions = Arc::new(open_versions(&cfg));
        let cfg_path = cfg.path.clone();
        Ok(Arc::new(Folder {
            fs: FolderFs::new(&cfg.path).with_dir_mode(applied_mode(
                EntryKind::Directory,
                0,
                cfg.umask.0,
            )),
            ignore: RwLock::new(Arc::new(Ignore::load(&cfg.path))),
            cfg,
            index,
            content,
            me,
            index_id: meta.index_id,
            head: watch::channel(meta.seq).0,
            applying: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            released: Mutex::new(Graveyard::default()),
            transfer_stall,
            slow: Mutex::new(HashMap::new()),
            expected_dirs: Mutex::new(HashMap::new()),
            status: FolderStatus::default(),
            deletes: Mutex::new(DeleteGuard::default()),
            readers,
            versions,
            paused: AtomicBool::new(paused_marker(&cfg_path).exists()),
            refs_lock: Mutex::new(()),
            retired: AtomicBool::new(false),
        }))
    }

    /// The caps on what this folder takes from peers.
    pub fn limits(&self) -> Limits {
        Limits {
            max_pending: self.cfg.max_pending,
            max_files: self.cfg.max_files,
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn mode(&self) -> FolderMode {
        self.cfg.mode
    }

    /// Who commits local observations for this folder.
    pub fn local(&self) -> crate::index::Local {
        crate::index::Local {
            me: self.me,
            receive_only: self.cfg.mode == FolderMode::ReceiveOnly,
        }
    }

    pub fn ignore(&self) -> Arc<Ignore> {
        self.ignore.read().expect("ignore lock").clone()
    }

    pub fn reload_ignore(&self) {
        *self.ignore.write().expect("ignore lock") = Arc::new(Ignore::load(&self.cfg.path));
    }

    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        self.ignore().is_ignored(rel, is_dir)
    }

    /// The index head moved (a commit wrote entries up to `seq`).
    pub fn announce(&self, seq: u64) {
        self.head.send_replace(seq);
    }

    /// The folder was removed from the node (a reload): index streams
    /// serving it end. The head is moved to wake them; nothing reads it
    /// after this.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.head.send_replace(u64::MAX);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Wait for the head to move (the distributor, per subscription).
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn is_applying(&self, rel: &str) -> bool {
        self.applying
            .lock()
            .expect("applying lock")
            .contains_key(rel)
    }

    /// Park a `refs/` link holding verified content of `hash` for a later
    /// apply (bounded).
    pub fn park(&self, hash: [u8; 32], name: String) {
        let mut m = self.parked.lock().expect("parked lock");
        if m.len() >= PARKED_MAX {
            m.clear(); // retention removes the links themselves
        }
        m.insert(hash, (Instant::now(), name));
    }

    pub fn unpark(&self, hash: &[u8; 32]) -> Option<String> {
        let mut m = self.parked.lock().expect("parked lock");
        m.remove(hash).map(|(_, n)| n)
    }

    pub fn is_parked(&self, hash: &[u8; 32]) -> bool {
        self.parked.lock().expect("parked lock").contains_key(hash)
    }

    /// Names of the parked links (retention leaves them be).
    pub fn parked_names(&self) -> Vec<String> {
        let m = self.parked.lock().expect("parked lock");
        m.values().map(|(_, n)| n.clone()).collect()
    }

    /// The index head: the sequence number of the folder's last change.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Drop what only remembers something that no longer matters: slow
    /// marks past [`SLOW_MARK_TTL`] and parked links older than
    /// `parked_age` (their links are then unused and swept). Returns how
    /// many entries went.
    pub fn prune(&self, parked_age: Duration) -> usize {
        let mut n = 0;
        {
            let mut slow = self.slow.lock().expect("slow lock");
            let before = slow.len();
            slow.retain(|_, at| at.elapsed() < SLOW_MARK_TTL);
            n += before - slow.len();
        }
        {
            let mut dirs = self.expected_dirs.lock().expect("expected dirs lock");
            let before = dirs.len();
            dirs.retain(|_, at| at.elapsed() < EXPECTED_DIR_TTL);
            n += before - dirs.len();
        }
        let mut parked = self.parked.lock().expect("parked lock");
        let before = parked.len();
        parked.retain(|_, (at, _)| at.elapsed() < parked_age);
        n + before - parked.len()
    }

    /// The receiver is about to apply peers' entries below these
    /// directories, which it has no live record of: applying a child makes
    /// them. Their own entries are on their way (a peer may commit a child
    /// before its directory); until one is applied the hasher leaves the
    /// directory unrecorded ([`Folder::is_expected_dir`]) instead of
    /// authoring a new local version of it, which could reach the origin
    /// after it deleted the tree and bring the directory back everywhere.
    pub fn expect_dirs(&self, dirs: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut m = self.expected_dirs.lock().expect("expected dirs lock");
        for d in dirs {
            if m.len() >= EXPECTED_DIRS_MAX {
                shrink_expected(&mut m, now);
            }
            m.insert(d, now);
        }
    }

    /// Is `rel` a directory the receiver made for a peer's child and whose
    /// own entry has not been applied yet (within [`EXPECTED_DIR_TTL`])?
    pub fn is_expected_dir(&self, rel: &str) -> bool {
        let m = self.expected_dirs.lock().expect("expected dirs lock");
        m.get(rel).is_some_and(|at| at.elapsed() < EXPECTED_DIR_TTL)
    }

    /// The entry of `rel` was applied (made, or deleted): no longer expected.
    pub fn dir_arrived(&self, rel: &str) {
        let mut m = self.expected_dirs.lock().expect("expected dirs lock");
        m.remove(rel);
    }

    /// Sizes of the folder's in-memory maps.
    pub fn maps(&self) -> FolderMaps {
        FolderMaps {
            applying: self.applying.lock().expect("applying lock").len(),
            parked: self.parked.lock().expect("parked lock").len(),
            released: self.released.lock().expect("released lock").len,
            slow: self.slow.lock().expect("slow lock").len(),
            transfers: self.status.transfers.lock().expect("status lock").len(),
            full: self.status.full.lock().expect("status lock").len(),
            retrying: self.status.retrying.load(Ordering::Relaxed),
            expected_dirs: self.expected_dirs.lock().expect("expected dirs lock").len(),
        }
    }

    /// Refs links nothing references any more: those with a known hash
    /// stay for [`RELEASE_GRACE`] (see [`Folder::take_released`]), the
    /// rest go now.
    pub fn release(&self, names: Vec<Released>) {
        let mut g = self.released.lock().expect("released lock");
        for r in names {
            match r.hash {
                Some(h) => g.add(h, r.name),
                None => self.fs.remove_ref(&r.name),
            }
        }
        let old = g.expire(RELEASE_GRACE);
        drop(g);
        for n in old {
            self.fs.remove_ref(&n);
        }
    }

    /// Remove released links older than `grace` (`ZERO`: all of them).
    pub fn expire_released(&self, grace: Duration) -> usize {
        let old = self.released.lock().expect("released lock").expire(grace);
        for n in &old {
            self.fs.remove_ref(n);
        }
        old.len()
    }

    /// A released link whose record had this hash. The caller must check
    /// the content before use: the file may have changed before it was
    /// deleted.
    pub fn take_released(&self, hash: &[u8; 32]) -> Option<String> {
        let mut g = self.released.lock().expect("released lock");
        let v = g.by_hash.get_mut(hash)?;
        let (_, name) = v.pop()?;
        if v.is_empty() {
            g.by_hash.remove(hash);
        }
        g.len -= 1;
        Some(name)
    }

    pub fn has_released(&self, hash: &[u8; 32]) -> bool {
        self.released
            .lock()
            .expect("released lock")
            .by_hash
            .contains_key(hash)
    }

    /// Names of the released links still kept (retention leaves them be).
    pub fn released_names(&self) -> Vec<String> {
        self.released
            .lock()
            .expect("released lock")
            .by_hash
            .values()
            .flatten()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// `peer`'s transfer of this content stalled or failed: ask it last
    /// for a while ([`SLOW_MARK_TTL`]).
    pub fn mark_slow(&self, hash: [u8; 32], peer: EndpointId) {
        let mut m = self.slow.lock().expect("slow lock");
        if m.len() >= SLOW_MARKS_MAX {
            m.retain(|_, at| at.elapsed() < SLOW_MARK_TTL);
            if m.len() >= SLOW_MARKS_MAX {
                m.clear();
            }
        }
        m.insert((hash, peer), Instant::now());
    }

    /// When `peer` was last marked slow for this content, if the mark is
    /// still in force.
    pub fn slow_since(&self, hash: &[u8; 32], peer: &EndpointId) -> Option<Instant> {
        let m = self.slow.lock().expect("slow lock");
        let at = *m.get(&(*hash, *peer))?;
        (at.elapsed() < SLOW_MARK_TTL).then_some(at)
    }

    /// Pause the folder (a fault, shown in status) if its marker is gone.
    pub fn check_marker(&self) -> Result<(), MarkerMissing> {
        if self.fs.has_marker() {
            return Ok(());
        }
        let root = self.cfg.path.clone();
        let e = if self.fs.marker_is_symlink() {
            MarkerMissing::Symlink { root }
        } else {
            MarkerMissing::Missing { root }
        };
        tracing::warn!(folder = self.id(), "{e}; sync paused");
        self.set_fault(Some(e.to_string()));
        self.status.error(e.to_string());
        Err(e)
    }

    /// Are `refs/` entries copies rather than hard links of the user's
    /// files? Only when the folder keeps its own user's changes
    /// (`versions.local`): an in-place write to a hard-linked file would
    /// rewrite the only old copy too. Costs the folder's size again on
    /// disk, except where the filesystem shares blocks (reflinks).
    pub fn refs_are_copies(&self) -> bool {
        let p = self.versions.policy();
        p.enabled && p.local
    }

    /// Held by the refs sweep while it decides what to remove, and by the
    /// hasher from an index commit until it has opened the `refs/` entries
    /// the commit stopped using that `versions.local` keeps from. A
    /// released hard link is young (the delete or rename that released it
    /// changed its ctime), but a copy can be older than the sweep's age
    /// limit: without this it could go in between.
    pub fn refs_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.refs_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Paused by the operator (`fleetsync folder pause`): nothing from
    /// peers is applied (their changes wait as pending rows) and no local
    /// change is indexed, so none is announced (the watcher keeps what it
    /// saw and rescans on resume). Content already indexed is still served.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Pause or resume. Kept across restarts as `.fleetsync/paused` (an
    /// operator who paused for maintenance and restarted still finds it
    /// paused). Returns whether it changed.
    pub fn set_paused(&self, on: bool) -> std::io::Result<bool> {
        let marker = paused_marker(&self.cfg.path);
        if on {
            std::fs::write(&marker, b"paused by fleetsync folder pause\n")?;
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(self.paused.swap(on, Ordering::Relaxed) != on)
    }

    pub fn fault(&self) -> Option<String> {
        self.status.fault.lock().expect("status lock").clone()
    }

    pub fn set_fault(&self, f: Option<String>) {
        *self.status.fault.lock().expect("status lock") = f;
    }
}

/// Marks a path as being written by the receiver for as long as it lives:
/// from before the first look at the disk until the applied entry is
/// committed, so the hasher never sees the new file with an index that
/// does not know it yet (its edit would otherwise be based on a stale
/// version and look like a conflict).
pub struct ApplyGuard {
    folder: Arc<Folder>,
    path: String,
}

impl ApplyGuard {
    pub fn new(folder: &Arc<Folder>, path: &str) -> Self {
        *folder
            .applying
            .lock()
            .expect("applying lock")
            .entry(path.to_string())
            .or_insert(0) += 1;
        ApplyGuard {
            folder: folder.clone(),
            path: path.to_string(),
        }
    }
}

impl std::fmt::Debug for ApplyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApplyGuard({})", self.path)
    }
}

impl Drop for ApplyGuard {
    fn drop(&mut self) {
        let mut applying = self.folder.applying.lock().expect("applying lock");
        if let Some(n) = applying.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                applying.remove(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_stays_applying_until_its_last_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let folder = crate::testing::folder(dir.path(), crate::testing::FakeContent::new());
        let outer = ApplyGuard::new(&folder, "a");
        let inner = ApplyGuard::new(&folder, "a");
        drop(inner);
        assert!(folder.is_applying("a"), "the outer guard still holds it");
        drop(outer);
        assert!(!folder.is_applying("a"));
    }

    #[test]
    fn slow_marks_are_per_content_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let folder = crate::testing::folder(dir.path(), crate::testing::FakeContent::new());
        let (p, q) = (
            crate::testing::FakeContent::new_peer(),
            crate::testing::FakeContent::new_peer(),
        );
        let before = Instant::now();
        folder.mark_slow([1; 32], p);
        assert!(folder.slow_since(&[1; 32], &p).is_some_and(|t| t >= before));
        assert!(folder.slow_since(&[2; 32], &p).is_none(), "other content");
        assert!(folder.slow_since(&[1; 32], &q).is_none(), "other peer");
        for i in 0..SLOW_MARKS_MAX {
            folder.mark_slow(
                [(i % 251) as u8, (i / 251) as u8, 9, 9]
                    .repeat(8)
                    .try_into()
                    .unwrap(),
                q,
            );
        }
        assert!(folder.slow.lock().unwrap().len() <= SLOW_MARKS_MAX);
    }

    #[test]
    fn prune_forgets_expired_slow_marks_and_old_parked_links_only() {
        let dir = tempfile::tempdir().unwrap();
        let folder = crate::testing::folder(dir.path(), crate::testing::FakeContent::new());
        let p = crate::testing::FakeContent::new_peer();
        folder.mark_slow([1; 32], p);
        folder.slow.lock().unwrap().insert(
            ([2; 32], p),
            Instant::now() - SLOW_MARK_TTL - Duration::from_secs(1),
        );
        folder.park([3; 32], "fresh".into());
        folder
            .parked
            .lock()
            .unwrap()
            .insert([4; 32], (Instant::now() - PARKED_MAX_AGE, "old".into()));
        assert_eq!(folder.prune(PARKED_MAX_AGE), 2);
        let m = folder.maps();
        assert_eq!((m.slow, m.parked), (1, 1));
        assert_eq!(folder.parked_names(), vec!["fresh".to_string()]);
        assert_eq!(folder.prune(PARKED_MAX_AGE), 0, "nothing else is old");
    }

    #[test]
    fn graveyard_expires_by_age_and_by_bound() {
        let mut g = Graveyard::default();
        g.add([1; 32], "a".into());
        assert!(g.expire(RELEASE_GRACE).is_empty(), "fresh links are kept");
        assert_eq!(g.expire(Duration::ZERO), vec!["a".to_string()]);
        assert_eq!(g.len, 0);
        assert!(g.by_hash.is_empty());
        assert!(g.oldest.is_none());
        for i in 0..=GRAVEYARD_MAX {
            g.add([(i % 251) as u8; 32], i.to_string());
        }
        assert_eq!(g.expire(RELEASE_GRACE).len(), GRAVEYARD_MAX + 1);
        assert_eq!(g.len, 0);
    }

    #[test]
    fn recent_errors_and_rejections_are_remembered_in_a_bounded_ring() {
        let st = FolderStatus::default();
        st.error("cannot write a: Permission denied");
        for i in 0..RECENT_EVENTS + 5 {
            st.reject(ShortId(7), format!("rejected {i}"), false);
        }
        assert_eq!(
            st.rejected.load(Ordering::Relaxed),
            RECENT_EVENTS as u64 + 5
        );
        let recent = st.recent();
        assert_eq!(recent.len(), RECENT_EVENTS, "the oldest went");
        assert_eq!(recent[0].message, "rejected 5");
        assert_eq!(recent[0].kind, RecentKind::Rejected);
        assert_eq!(
            recent[0].peer.as_deref(),
            Some(ShortId(7).to_string().as_str())
        );
        assert_eq!(
            st.last_error().as_deref(),
            Some("cannot write a: Permission denied"),
            "a rejection without `last` leaves the last error alone"
        );
        st.reject(ShortId(7), "rejected x".into(), true);
        assert_eq!(st.last_error().as_deref(), Some("rejected x"));
    }
}
