//! What every actor of one folder shares: config, confined filesystem,
//! index, mesh (for the blob store and fetches), the ignore rules, the
//! "index head moved" signal the distributor waits on, and live status.
//!
//! Nothing here is actor state: it survives actor restarts, and everything
//! persistent lives in the index.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::SystemTime,
};

use fleetsync_config::{FolderConfig, FolderMode};
use fleetsync_mesh::{model::ShortId, Mesh};
use tokio::sync::watch;

use crate::{
    fsutil::FolderFs,
    ignore::Ignore,
    index::{Index, IndexError},
};

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
    pub fault: Mutex<Option<String>>,
    pub last_error: Mutex<Option<(SystemTime, String)>>,
    pub transfers: Mutex<BTreeMap<String, Transfer>>,
    pub files_in: AtomicU64,
    pub files_out_announced: AtomicU64,
    pub bytes_in: AtomicU64,
    pub conflicts: AtomicU64,
    pub rejected: AtomicU64,
    pub initial_scan_done: AtomicBool,
}

impl Default for FolderStatus {
    fn default() -> Self {
        FolderStatus {
            scanning: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            fault: Mutex::new(None),
            last_error: Mutex::new(None),
            transfers: Mutex::new(BTreeMap::new()),
            files_in: AtomicU64::new(0),
            files_out_announced: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            initial_scan_done: AtomicBool::new(false),
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

    pub fn error(&self, msg: impl Into<String>) {
        *self.last_error.lock().expect("status lock") = Some((SystemTime::now(), msg.into()));
    }
}

#[derive(Debug)]
pub struct FolderCtx {
    pub cfg: FolderConfig,
    pub fs: FolderFs,
    pub index: Index,
    pub mesh: Mesh,
    pub me: ShortId,
    pub index_id: u64,
    ignore: RwLock<Arc<Ignore>>,
    /// Bumped after every commit; subscribers wait on it.
    pub head: watch::Sender<u64>,
    /// Paths the receiver is writing right now: the hasher leaves them be.
    pub applying: Mutex<HashSet<String>>,
    /// Content staged in `refs/` by an apply that was then abandoned (the
    /// store references it): reused by the next attempt instead of copied.
    pub staged: Mutex<std::collections::HashMap<[u8; 32], String>>,
    pub status: FolderStatus,
}

impl FolderCtx {
    pub fn new(cfg: FolderConfig, index: Index, mesh: Mesh) -> Result<Arc<Self>, IndexError> {
        let meta = index.ensure_folder(&cfg.id)?;
        let me = mesh.short_id();
        Ok(Arc::new(FolderCtx {
            fs: FolderFs::new(&cfg.path),
            ignore: RwLock::new(Arc::new(Ignore::load(&cfg.path))),
            cfg,
            index,
            mesh,
            me,
            index_id: meta.index_id,
            head: watch::channel(meta.seq).0,
            applying: Mutex::new(HashSet::new()),
            staged: Mutex::new(Default::default()),
            status: FolderStatus::default(),
        }))
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

    pub fn announce(&self, seq: u64) {
        self.head.send_replace(seq);
    }

    pub fn is_applying(&self, rel: &str) -> bool {
        self.applying.lock().expect("applying lock").contains(rel)
    }

    /// Remember a staged refs link for a later attempt (bounded).
    pub fn keep_staged(&self, hash: [u8; 32], name: String) {
        let mut m = self.staged.lock().expect("staged lock");
        if m.len() >= 1024 {
            m.clear(); // retention removes the links themselves
        }
        m.insert(hash, name);
    }

    pub fn take_staged(&self, hash: &[u8; 32]) -> Option<String> {
        self.staged.lock().expect("staged lock").remove(hash)
    }

    /// Remove refs links nothing references any more.
    pub fn release(&self, names: Vec<String>) {
        for n in names {
            self.fs.remove_ref(&n);
        }
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
    ctx: Arc<FolderCtx>,
    path: String,
}

impl ApplyGuard {
    pub fn new(ctx: &Arc<FolderCtx>, path: &str) -> Self {
        ctx.applying
            .lock()
            .expect("applying lock")
            .insert(path.to_string());
        ApplyGuard {
            ctx: ctx.clone(),
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
        self.ctx
            .applying
            .lock()
            .expect("applying lock")
            .remove(&self.path);
    }
}
