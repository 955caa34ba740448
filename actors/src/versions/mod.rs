//! Kept versions of one folder: the previous content of a file a sync
//! overwrote or deleted (or a local edit, or a restore, replaced), under
//! `<folder>/.fleetsync/versions/<id>.zst` — see [`format`] for the file
//! and [`rule`] for which go.
//!
//! - [`Versions::keep`] reads a file once: hashes it, compresses it into a
//!   temp file in `.fleetsync/tmp`, writes the metadata, fsyncs, renames
//!   it into `versions/` (never over another) and fsyncs the directory. A
//!   crash leaves a temp file (swept by retention) or a whole version.
//! - A catalogue in memory (one entry per version file, nothing else)
//!   answers [`Versions::list`], [`Versions::bytes`] and eviction without
//!   touching the disk; [`Versions::open`] rebuilds it from the metadata
//!   frames.
//! - Eviction ([`Versions::evict`]) runs right after every keep and from
//!   retention's timer: versions older than `keep` go, then the oldest
//!   while all take more than `max_bytes`.
//!
//! Every directory is opened relative to the folder root with
//! `O_NOFOLLOW`: a symlink planted as `.fleetsync`, `tmp` or `versions`
//! is never written through. All calls are blocking (file I/O): callers
//! in async code use `rt::blocking`.
//!
//! A folder's store: `folder.versions` (an `Arc<Versions>`).

mod format;
mod rule;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use fleetsync_config::VersionsPolicy;
use fleetsync_mesh::model::{FileEntry, ShortId, VersionVector, RESERVED_DIR};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};
use tracing::warn;

use self::format::file_name;
pub use self::format::VersionMeta;
pub use self::format::{id_of, valid_id, SKIPPABLE_MAGIC};
pub use self::rule::evict_count;
use crate::fsutil::{random_u64, TMP_DIR};

/// The directory under `.fleetsync` holding the versions.
pub const VERSIONS_DIR: &str = "versions";

/// zstd level: 3 is zstd's default, fast enough to run on the apply path.
const LEVEL: i32 = 3;

/// How many of the newest versions [`Versions::recently_kept`] looks at.
const RECENT: usize = 64;

/// `replaced_by` of a version the node's own user (or a restore) replaced.
pub const LOCAL: &str = "local";

/// Why a version was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A peer's content overwrote it.
    Overwrite,
    /// A peer's delete removed it.
    Delete,
    /// The node's own user changed it (`versions.local = true`).
    Local,
    /// A restore put other content in its place.
    Restore,
}

/// One kept version, as listed: its metadata (the same JSON fields as
/// its file's metadata frame) and the bytes its file takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(flatten)]
    pub meta: VersionMeta,
    /// Bytes the version file takes on disk (compressed, with metadata).
    pub stored_bytes: u64,
}

/// What one keep writes: the metadata, the hash the content must have (if
/// checked), and the progress callback.
type Keeping<'a> = (KeepMeta, Option<[u8; 32]>, &'a dyn Fn(u64));

/// A listed version reads as its metadata (`v.path`, `v.hash`…).
impl std::ops::Deref for VersionInfo {
    type Target = VersionMeta;
    fn deref(&self) -> &VersionMeta {
        &self.meta
    }
}

/// What is known about content about to be kept; size and hash are
/// measured from the bytes themselves.
#[derive(Debug, Clone)]
pub struct KeepMeta {
    pub path: String,
    pub mtime_ns: i64,
    pub version: VersionVector,
    pub modified_by: ShortId,
    /// A peer's short id, or [`LOCAL`].
    pub replaced_by: String,
    pub reason: Reason,
}

impl KeepMeta {
    /// Keeping the content `entry` describes, replaced by `replaced_by`.
    pub fn of_entry(entry: &FileEntry, replaced_by: String, reason: Reason) -> Self {
        KeepMeta {
            path: entry.path.clone(),
            mtime_ns: entry.mtime_ns,
            version: entry.version.clone(),
            modified_by: entry.modified_by,
            replaced_by,
            reason,
        }
    }
}

/// What an eviction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    pub count: usize,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("versions of {root}: {op}: {source}")]
    Io {
        root: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("versions of {root}: {what} is not a plain directory (a symlink or a file); nothing kept there")]
    NotADirectory { root: PathBuf, what: &'static str },
    #[error("versions of {root}: the folder marker .fleetsync is missing; nothing kept")]
    NoMarker { root: PathBuf },
    #[error("{path}: not a regular file; not kept")]
    NotRegular { path: PathBuf },
    #[error("{path}: the copy to keep no longer holds the content (hash {want}); not kept")]
    ContentChanged { path: String, want: String },
    #[error("no kept version {id:?}")]
    NotFound { id: String },
    #[error("version {id}: {source}")]
    Unreadable {
        id: String,
        #[source]
        source: io::Error,
    },
}

/// What the catalogue holds of one version in memory: what eviction and
/// a path filter need. The rest of the metadata stays in the file's frame
/// and is read when a version is listed (a node keeping 100,000 tiny
/// versions would otherwise hold their whole metadata, ~4 KiB each as
/// measured, in memory).
#[derive(Debug, Clone)]
struct Slim {
    path: Box<str>,
    kept_at_ms: u64,
    stored_bytes: u64,
}

impl Slim {
    fn of(info: &VersionInfo) -> Self {
        Slim {
            path: info.path.as_str().into(),
            kept_at_ms: info.kept_at_ms,
            stored_bytes: info.stored_bytes,
        }
    }
}

#[derive(Debug, Default)]
struct Catalogue {
    /// By id, so oldest first.
    by_id: BTreeMap<Box<str>, Slim>,
    bytes: u64,
}

impl Catalogue {
    fn insert(&mut self, id: &str, slim: Slim) {
        self.bytes += slim.stored_bytes;
        if let Some(old) = self.by_id.insert(id.into(), slim) {
            self.bytes -= old.stored_bytes;
        }
    }

    /// Ids of the versions under `prefix` (all without one), newest first.
    fn ids_under(&self, prefix: Option<&str>) -> Vec<Box<str>> {
        self.by_id
            .iter()
            .rev()
            .filter(|(_, v)| prefix.is_none_or(|p| under(&v.path, p)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Does anything go at `now_ms`? O(1): only the oldest version can be
    /// past `keep`, and the total is kept up to date.
    fn due(&self, policy: &VersionsPolicy, now_ms: u64) -> bool {
        let keep_ms = u64::try_from(policy.keep.as_millis()).unwrap_or(u64::MAX);
        self.bytes > policy.max_bytes
            || self
                .by_id
                .values()
                .next()
                .is_some_and(|v| v.kept_at_ms < now_ms.saturating_sub(keep_ms))
    }

    /// Take out the versions the policy lets go.
    fn take_evicted(&mut self, policy: &VersionsPolicy, now_ms: u64) -> Vec<(Box<str>, Slim)> {
        if !self.due(policy, now_ms) {
            return Vec::new();
        }
        let sizes: Vec<(u64, u64)> = self
            .by_id
            .values()
            .map(|v| (v.kept_at_ms, v.stored_bytes))
            .collect();
        let n = evict_count(&sizes, policy.keep, policy.max_bytes, now_ms);
        let out: Vec<(Box<str>, Slim)> = (0..n).filter_map(|_| self.by_id.pop_first()).collect();
        self.bytes -= out.iter().map(|(_, v)| v.stored_bytes).sum::<u64>();
        out
    }
}

/// The kept versions of one folder.
#[derive(Debug)]
pub struct Versions {
    root: PathBuf,
    policy: VersionsPolicy,
    catalogue: Mutex<Catalogue>,
    /// The last `kept_at_ms` given: each keep takes a later one, so ids
    /// (which sort by it) put versions kept within one millisecond in the
    /// order they were kept, and "oldest first" is exact.
    last_ms: std::sync::atomic::AtomicU64,
}

fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Versions {
    /// The store of the folder at `root`, its catalogue read from the
    /// version files there (none yet is fine; nothing is created until the
    /// first keep). Files in `versions/` that are not versions are left
    /// alone and not counted. Blocking.
    pub fn open(root: impl Into<PathBuf>, policy: VersionsPolicy) -> Result<Self, VersionsError> {
        let v = Self::empty(root, policy);
        let dir = match v.versions_dir(false) {
            Ok(dir) => dir,
            Err(VersionsError::NoMarker { .. }) => return Ok(v),
            Err(VersionsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(v)
            }
            Err(e) => return Err(e),
        };
        let loaded = v.load(&dir)?;
        *v.catalogue.lock().expect("versions lock") = loaded;
        Ok(v)
    }

    /// A store with no catalogue yet (a folder whose store could not be
    /// opened: each keep tries again and reports why it cannot).
    pub fn empty(root: impl Into<PathBuf>, policy: VersionsPolicy) -> Self {
        Versions {
            root: root.into(),
            policy,
            catalogue: Mutex::new(Catalogue::default()),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `now` in unix ms, or just after the last one given if that is not
    /// later (several keeps in one millisecond, a clock stepped back).
    fn next_ms(&self, now: SystemTime) -> u64 {
        use std::sync::atomic::Ordering;
        let now = unix_ms(now);
        let prev = self
            .last_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now.max(prev.saturating_add(1))
    }

    pub fn policy(&self) -> &VersionsPolicy {
        &self.policy
    }

    /// `<root>/.fleetsync/versions` (for messages; never opened by path).
    pub fn dir(&self) -> PathBuf {
        self.root.join(RESERVED_DIR).join(VERSIONS_DIR)
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> VersionsError + '_ {
        move |source| VersionsError::Io {
            root: self.root.clone(),
            op,
            source,
        }
    }

    /// Open `.fleetsync/<name>` without following a symlink anywhere,
    /// creating it (owner-only) when `create`. The marker itself is never
    /// created: it missing means the disk may not be mounted.
    fn reserved_subdir(&self, name: &'static str, create: bool) -> Result<OwnedFd, VersionsError> {
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rustix::fs::open(&self.root, dir_flags, Mode::empty())
            .map_err(|e| (self.io_err("open folder root"))(to_io(e)))?;
        let marker = match rustix::fs::openat(&root, RESERVED_DIR, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                return Err(VersionsError::NoMarker {
                    root: self.root.clone(),
                })
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(VersionsError::NotADirectory {
                    root: self.root.clone(),
                    what: ".fleetsync",
                })
            }
            Err(e) => return Err((self.io_err("open .fleetsync"))(to_io(e))),
        };
        if create {
            match rustix::fs::mkdirat(&marker, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err((self.io_err("create the directory"))(to_io(e))),
            }
        }
        match rustix::fs::openat(&marker, name, dir_flags, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                Err(VersionsError::NotADirectory {
                    root: self.root.clone(),
                    what: name,
                })
            }
            Err(e) => Err((self.io_err("open the directory"))(to_io(e))),
        }
    }

    fn versions_dir(&self, create: bool) -> Result<OwnedFd, VersionsError> {
        self.reserved_subdir(VERSIONS_DIR, create)
    }

    /// Read every version's metadata frame in `dir`.
    fn load(&self, dir: &OwnedFd) -> Result<Catalogue, VersionsError> {
        let mut cat = Catalogue::default();
        let names = list_dir(dir).map_err(self.io_err("list"))?;
        for name in names {
            let Some(id) = name.strip_suffix(".zst").filter(|id| valid_id(id)) else {
                continue;
            };
            match read_header(dir, &name) {
                Ok((h, len)) if h.id == id => cat.insert(id, Slim::of(&h.into_info(len))),
                Ok(_) => {
                    warn!(dir = %self.dir().display(), file = %name, "version metadata names another id; left alone")
                }
                Err(e) => {
                    warn!(dir = %self.dir().display(), file = %name, "not a readable version ({e}); left alone")
                }
            }
        }
        Ok(cat)
    }

    /// Keep the regular file at `path_on_disk` (its last component is not
    /// followed if a symlink). See [`Versions::keep_file`].
    pub fn keep(
        &self,
        path_on_disk: &Path,
        meta: KeepMeta,
    ) -> Result<Option<VersionInfo>, VersionsError> {
        if !self.policy.enabled {
            return Ok(None);
        }
        let file = open_regular(path_on_disk).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => VersionsError::NotRegular {
                path: path_on_disk.to_path_buf(),
            },
            _ => (self.io_err("open the file to keep"))(e),
        })?;
        self.keep_file(&file, meta)
    }

    /// Keep the content of `file` (read from its start) as a version;
    /// `None` when the folder keeps no versions (`versions = "off"`).
    /// Evicts what the limits then let go. Blocking.
    pub fn keep_file(
        &self,
        file: &File,
        meta: KeepMeta,
    ) -> Result<Option<VersionInfo>, VersionsError> {
        self.keep_checked(file, meta, None, &|_| {})
    }

    /// [`Versions::keep_file`] of content that must have hash `want`
    /// (a copy that may have been rewritten since it was hashed): checked
    /// in the same pass that compresses it, and nothing is kept
    /// ([`VersionsError::ContentChanged`]) if it differs. `progress` is
    /// called with the bytes read so far (a caller whose health is judged
    /// by progress reports it).
    pub fn keep_file_as(
        &self,
        file: &File,
        meta: KeepMeta,
        want: [u8; 32],
        progress: &dyn Fn(u64),
    ) -> Result<Option<VersionInfo>, VersionsError> {
        self.keep_checked(file, meta, Some(want), progress)
    }

    fn keep_checked(
        &self,
        file: &File,
        meta: KeepMeta,
        want: Option<[u8; 32]>,
        progress: &dyn Fn(u64),
    ) -> Result<Option<VersionInfo>, VersionsError> {
        if !self.policy.enabled {
            return Ok(None);
        }
        let now = SystemTime::now();
        let info = self.write_version(file, (meta, want, progress), self.next_ms(now))?;
        self.catalogue
            .lock()
            .expect("versions lock")
            .insert(&info.id, Slim::of(&info));
        self.evict(now);
        Ok(Some(info))
    }

    /// Compress `file` into a new version file; the id takes the first
    /// free millisecond from `kept_at_ms` on.
    fn write_version(
        &self,
        file: &File,
        what: Keeping<'_>,
        kept_at_ms: u64,
    ) -> Result<VersionInfo, VersionsError> {
        let vdir = self.versions_dir(true)?;
        let tmp_dir = self.reserved_subdir(TMP_DIR, false)?;
        let tmp_name = format!("version-{:016x}.part", random_u64());
        let out = create_tmp(&tmp_dir, &tmp_name).map_err(self.io_err("create a temp file"))?;
        let res = self.fill_and_place(file, &out, what, kept_at_ms, (&tmp_dir, &tmp_name), &vdir);
        if res.is_err() {
            // A half-written temp file is worth nothing: gone now rather
            // than at retention's next sweep.
            if let Err(e) = rustix::fs::unlinkat(&tmp_dir, tmp_name.as_str(), AtFlags::empty()) {
                if e != rustix::io::Errno::NOENT {
                    warn!(root = %self.root.display(), "removing temp file {tmp_name}: {e}");
                }
            }
        }
        res
    }

    fn fill_and_place(
        &self,
        src: &File,
        out: &File,
        (meta, want, progress): Keeping<'_>,
        kept_at_ms: u64,
        (tmp_dir, tmp_name): (&OwnedFd, &str),
        vdir: &OwnedFd,
    ) -> Result<VersionInfo, VersionsError> {
        let mut header = VersionMeta {
            id: String::new(),
            path: meta.path,
            size: 0,
            mtime_ns: meta.mtime_ns,
            hash: String::new(),
            version: stored_vector(&meta.version),
            modified_by: meta.modified_by.to_string(),
            replaced_by: meta.replaced_by,
            kept_at_ms,
            reason: meta.reason,
            mode: Some(permissions(src).map_err(self.io_err("stat the file to keep"))?),
        };
        let room = header.room();
        let (size, hash) =
            compress(src, out, 8 + room as u64, progress).map_err(self.io_err("compress"))?;
        if let Some(want) = want.filter(|w| *w != hash) {
            return Err(VersionsError::ContentChanged {
                path: header.path,
                want: hex::encode(want),
            });
        }
        header.size = size;
        header.hash = hex::encode(hash);
        for ms in kept_at_ms.. {
            header.kept_at_ms = ms;
            header.id = id_of(ms, &hash);
            let frame = header.frame(room).map_err(self.io_err("write metadata"))?;
            write_at_start(out, &frame).map_err(self.io_err("write metadata"))?;
            let target = file_name(&header.id);
            match rustix::fs::renameat_with(
                tmp_dir,
                tmp_name,
                vdir,
                target.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => break,
                // Same content kept twice in one millisecond: next one.
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err((self.io_err("rename into versions"))(to_io(e))),
            }
        }
        rustix::fs::fsync(vdir)
            .map_err(|e| (self.io_err("sync the versions directory"))(to_io(e)))?;
        let stored = out.metadata().map_err(self.io_err("stat"))?.len();
        Ok(header.into_info(stored))
    }

    /// Kept versions, newest first; with `prefix`, only those whose path is
    /// `prefix` or lies under the directory `prefix`.
    /// Blocking: each listed version's metadata is read from its file (a
    /// version evicted meanwhile is left out).
    pub fn list(&self, prefix: Option<&str>) -> Vec<VersionInfo> {
        let ids = self
            .catalogue
            .lock()
            .expect("versions lock")
            .ids_under(prefix);
        self.read_infos(&ids)
    }

    /// The metadata of versions `ids`, read from their files, in order;
    /// ids whose file is gone or unreadable are left out.
    fn read_infos(&self, ids: &[Box<str>]) -> Vec<VersionInfo> {
        if ids.is_empty() {
            return Vec::new();
        }
        let Ok(dir) = self.versions_dir(false) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| match read_header(&dir, &file_name(id)) {
                Ok((h, len)) if *h.id == **id => Some(h.into_info(len)),
                _ => None,
            })
            .collect()
    }

    /// Is the superseded entry (`path`, content `hash`, `version`) among
    /// the newest [`RECENT`] versions already? A restore keeps what it
    /// replaces, then the watcher sees the restored file: the second keep
    /// of the same entry is skipped. Bounded: never a walk of the whole
    /// catalogue.
    pub fn recently_kept(&self, path: &str, hash: &[u8; 32], version: &VersionVector) -> bool {
        let (hash, version) = (hex::encode(hash), stored_vector(version));
        let same_path: Vec<Box<str>> = {
            let cat = self.catalogue.lock().expect("versions lock");
            cat.by_id
                .iter()
                .rev()
                .take(RECENT)
                .filter(|(_, v)| *v.path == *path)
                .map(|(id, _)| id.clone())
                .collect()
        };
        self.read_infos(&same_path)
            .iter()
            .any(|v| v.hash == hash && v.version == version)
    }

    /// The metadata of version `id` (read from its file). Blocking.
    pub fn get(&self, id: &str) -> Option<VersionInfo> {
        let known = self
            .catalogue
            .lock()
            .expect("versions lock")
            .by_id
            .get_key_value(id)
            .map(|(id, _)| id.clone())?;
        self.read_infos(&[known]).pop()
    }

    /// Is `id` a kept version? (No I/O.)
    fn knows(&self, id: &str) -> bool {
        self.catalogue
            .lock()
            .expect("versions lock")
            .by_id
            .contains_key(id)
    }

    /// The exact old bytes of version `id`, streamed (decompressed as read).
    pub fn open_reader(&self, id: &str) -> Result<impl Read, VersionsError> {
        if !valid_id(id) || !self.knows(id) {
            return Err(VersionsError::NotFound { id: id.to_string() });
        }
        let unreadable = |source| VersionsError::Unreadable {
            id: id.to_string(),
            source,
        };
        let dir = self.versions_dir(false)?;
        let name = file_name(id);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty())
            .map_err(|e| unreadable(to_io(e)))?;
        let mut r = BufReader::new(File::from(fd));
        VersionMeta::read_from(&mut r).map_err(unreadable)?;
        zstd::stream::read::Decoder::with_buffer(r).map_err(unreadable)
    }

    /// The exact old bytes of version `id`, in memory (small files; use
    /// [`Versions::open_reader`] for big ones).
    pub fn read(&self, id: &str) -> Result<Vec<u8>, VersionsError> {
        let mut out = Vec::new();
        self.open_reader(id)?
            .read_to_end(&mut out)
            .map_err(|source| VersionsError::Unreadable {
                id: id.to_string(),
                source,
            })?;
        Ok(out)
    }

    /// Would [`Versions::evict`] remove anything at `now`? Cheap (no I/O,
    /// O(1)): retention asks every second and evicts only when due.
    pub fn evict_due(&self, now: SystemTime) -> bool {
        self.catalogue
            .lock()
            .expect("versions lock")
            .due(&self.policy, unix_ms(now))
    }

    /// Remove the versions the policy lets go at `now` (older than `keep`,
    /// then the oldest while over `max_bytes`). Cheap when nothing goes:
    /// decided from the catalogue. A file that cannot be removed goes back
    /// into the catalogue (tried again next time).
    pub fn evict(&self, now: SystemTime) -> Evicted {
        let gone = self
            .catalogue
            .lock()
            .expect("versions lock")
            .take_evicted(&self.policy, unix_ms(now));
        if gone.is_empty() {
            return Evicted::default();
        }
        let dir = match self.versions_dir(false) {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot evict versions: {e}");
                self.put_back(gone);
                return Evicted::default();
            }
        };
        let mut evicted = Evicted::default();
        let mut failed = Vec::new();
        for (id, v) in gone {
            match rustix::fs::unlinkat(&dir, file_name(&id).as_str(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {
                    evicted.count += 1;
                    evicted.bytes += v.stored_bytes;
                }
                Err(e) => {
                    warn!(root = %self.root.display(), id = %id, "cannot remove version: {e}");
                    failed.push((id, v));
                }
            }
        }
        self.put_back(failed);
        evicted
    }

    fn put_back(&self, versions: Vec<(Box<str>, Slim)>) {
        let mut cat = self.catalogue.lock().expect("versions lock");
        for (id, v) in versions {
            cat.insert(&id, v);
        }
    }

    /// Bytes all kept versions take on disk.
    pub fn bytes(&self) -> u64 {
        self.catalogue.lock().expect("versions lock").bytes
    }

    /// How many versions are kept.
    pub fn count(&self) -> usize {
        self.catalogue.lock().expect("versions lock").by_id.len()
    }
}

/// A version vector as a version's metadata stores it.
fn stored_vector(v: &VersionVector) -> BTreeMap<String, u64> {
    v.iter().map(|(n, c)| (n.to_string(), c)).collect()
}

/// Is `path` the path `prefix`, or under the directory `prefix`? An empty
/// prefix (or "/") is the whole folder.
pub fn under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_matches('/');
    p.is_empty()
        || path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn list_dir(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(to_io)? {
        let entry = entry.map_err(to_io)?;
        if let Ok(s) = std::str::from_utf8(entry.file_name().to_bytes()) {
            names.push(s.to_string());
        }
    }
    Ok(names)
}

/// The header of the version file `name` in `dir`, and the file's length.
/// The permission bits of the file being kept (a restore gives them back).
fn permissions(file: &File) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(file.metadata()?.permissions().mode() & 0o7777)
}

fn read_header(dir: &OwnedFd, name: &str) -> io::Result<(VersionMeta, u64)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(to_io)?);
    let len = file.metadata()?.len();
    Ok((VersionMeta::read_from(&mut BufReader::new(file))?, len))
}

fn open_regular(path: &Path) -> io::Result<File> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::from(io::ErrorKind::InvalidInput),
        e => to_io(e),
    })?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    Ok(file)
}

fn create_tmp(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)).map_err(to_io)?;
    Ok(File::from(fd))
}

/// Compress all of `src` (from its start) into `out` at `offset`, hashing
/// it on the way; returns its size and BLAKE3.
fn compress(
    src: &File,
    out: &File,
    offset: u64,
    progress: &dyn Fn(u64),
) -> io::Result<(u64, [u8; 32])> {
    let mut src = src;
    src.seek(SeekFrom::Start(0))?;
    let mut out = out;
    out.seek(SeekFrom::Start(offset))?;
    let mut enc = zstd::stream::write::Encoder::new(BufWriter::new(out), LEVEL)?;
    enc.include_checksum(true)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
        size += n as u64;
        progress(size);
    }
    enc.finish()?.flush()?;
    Ok((size, *hasher.finalize().as_bytes()))
}

/// Write the metadata frame over the reserved start of `out`, and make
/// the whole file durable.
fn write_at_start(out: &File, frame: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    out.write_all_at(frame, 0)?;
    out.sync_all()
}

#[cfg(test)]
mod tests;
