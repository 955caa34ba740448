//! Filesystem access confined to one folder root (safety invariant 1).
//!
//! Every operation walks the relative path one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, so no symlink, whether it was planted
//! by a peer or by a local process, can redirect a read, write, rename or
//! delete, even if it points back inside the root. The final component is
//! acted on with the `*at` call relative to the parent's descriptor, without
//! following it either.
//!
//! File content arrives as a temp file in `<root>/.fleetsync/tmp` (same
//! filesystem, so the final `renameat` is atomic: invariant 2).

use std::{
    ffi::OsStr,
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use fleetsync_mesh::model::{validate_rel_path, EntryKind, RESERVED_DIR};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::record::{DiskState, LocalStat, Meta};

/// Where temp files live inside a folder.
pub const TMP_DIR: &str = "tmp";
/// Where received content lives as a second hard link the blob store keeps
/// referencing (so placing a file never invalidates the store's copy).
pub const REFS_DIR: &str = "refs";
/// Suffix of in-place temp names (symlink replacement).
pub const TMP_MARK: &str = ".fleetsync-tmp-";

fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// A path that would leave the folder root through a symlink.
#[derive(Debug)]
pub struct Escape(pub String);

impl std::fmt::Display for Escape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} leads through a symlink; refused", self.0)
    }
}

impl std::error::Error for Escape {}

/// A path whose parent component `at` is a file (or another
/// non-directory that is not a symlink) where a directory is expected.
/// Not an escape: a file that won against a directory stands there until
/// the file-vs-directory rule settles it (`rules::directory_wins`).
#[derive(Debug)]
pub struct BlockedByFile {
    pub path: String,
    pub at: String,
}

impl std::fmt::Display for BlockedByFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: {:?} is a file where a directory is expected",
            self.path, self.at
        )
    }
}

impl std::error::Error for BlockedByFile {}

fn symlink_err(rel: &str) -> io::Error {
    io::Error::other(Escape(rel.to_string()))
}

/// Is this the error [`FolderFs`] gives for a path through a symlink?
pub fn is_escape(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Escape>())
}

/// Is this the error [`FolderFs`] gives for a path through a file?
pub fn is_blocked_by_file(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<BlockedByFile>())
}

/// `openat(O_DIRECTORY | O_NOFOLLOW)` of `comp` failed with ELOOP or
/// ENOTDIR: a symlink there is an escape; anything else that is not a
/// directory (a file) merely blocks the path for now.
fn not_a_dir_err(parent: impl AsFd, comp: &str, at: &str, rel: &str) -> io::Error {
    match rustix::fs::statat(parent, comp, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Symlink => {
            io::Error::other(BlockedByFile {
                path: rel.to_string(),
                at: at.to_string(),
            })
        }
        // A symlink, or gone meanwhile (it may come back as one): refuse.
        _ => symlink_err(rel),
    }
}

pub fn meta_from_stat(st: &rustix::fs::Stat) -> DiskState {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Directory,
        FileType::Symlink => EntryKind::Symlink,
        _ => return DiskState::Special,
    };
    DiskState::Present(Meta {
        kind,
        stat: LocalStat {
            size: if kind == EntryKind::File {
                st.st_size as u64
            } else {
                0
            },
            // Saturating: a file touched past 2262 (or before 1678) must not
            // overflow; it records as the furthest representable moment.
            mtime_ns: st
                .st_mtime
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            ino: st.st_ino,
            mode: st.st_mode & 0o7777,
        },
    })
}

/// One folder root. Cheap to clone. Holds one descriptor: the staging
/// directory `.fleetsync/tmp`, opened without following symlinks and
/// pinned, so every temp file is created, written, renamed and swept in
/// that very directory however the path `<root>/.fleetsync` changes.
#[derive(Debug, Clone)]
pub struct FolderFs {
    root: PathBuf,
    tmp: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<OwnedFd>>>>,
    /// Mode of a parent directory made on the way to a path
    /// ([`Session::open_parent`] with `create`).
    dir_mode: u32,
}

/// What [`FolderFs::tmp_dir`] returns when the staging directory cannot be
/// opened safely: a path on which every operation fails.
const NO_STAGING: &str = "/proc/self/fd/-1/fleetsync-staging-refused";

impl FolderFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FolderFs {
            root: root.into(),
            tmp: Default::default(),
            dir_mode: 0o755,
        }
    }

    /// Parent directories made on the way to a received path get `mode`
    /// (the folder's umask applied, `record::applied_mode`), exactly as
    /// the directory's own entry would have made them: an entry that
    /// arrives after its parent was made implicitly keeps that mode.
    pub fn with_dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = mode & 0o777;
        self
    }

    /// The pinned staging directory, opened (and pinned) on first use.
    fn tmp_fd(&self) -> io::Result<std::sync::Arc<OwnedFd>> {
        let mut pin = self.tmp.lock().expect("staging pin lock");
        if let Some(fd) = pin.as_ref() {
            return Ok(fd.clone());
        }
        let fd = std::sync::Arc::new(self.session_unpinned()?.open_reserved(TMP_DIR)?);
        *pin = Some(fd.clone());
        Ok(fd)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The staging directory as a path through its pinned descriptor
    /// (`/proc/self/fd/N`): a local user who replaces `.fleetsync` or its
    /// `tmp` with a symlink cannot make the node write there. Valid while
    /// the node runs; not a path to persist.
    pub fn tmp_dir(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        match self.tmp_fd() {
            Ok(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            Err(e) => {
                // Not a warning each time: the session's own open of the
                // staging directory fails with the reason and reports it.
                tracing::debug!(root = %self.root.display(), "staging directory refused: {e}");
                PathBuf::from(NO_STAGING)
            }
        }
    }

    pub fn refs_dir(&self) -> PathBuf {
        self.root.join(RESERVED_DIR).join(REFS_DIR)
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)
    }

    /// Open the root once for a series of operations (a batch of files):
    /// saves re-opening the root and the reserved directories each time.
    /// Keep it short-lived: it pins the directory that was the root when
    /// it was opened.
    pub fn session(&self) -> io::Result<Session> {
        let session = self.session_unpinned()?;
        // Temp files live in the pinned staging directory, wherever the
        // path leads now (a fresh open could find a replaced one).
        if let Ok(fd) = self.tmp_fd() {
            let _ = session.tmp.set(fd.try_clone()?);
        }
        Ok(session)
    }

    fn session_unpinned(&self) -> io::Result<Session> {
        Ok(Session {
            root: self.open_root()?,
            tmp: std::sync::OnceLock::new(),
            refs: std::sync::OnceLock::new(),
            dir_mode: self.dir_mode,
        })
    }

    fn open_dir_at(parent: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    pub fn lstat(&self, rel: &str) -> io::Result<DiskState> {
        self.session()?.lstat(rel)
    }

    pub fn read_link(&self, rel: &str) -> io::Result<String> {
        self.session()?.read_link(rel)
    }

    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        self.session()?.remove_file(rel)
    }

    pub fn remove_dir(&self, rel: &str) -> io::Result<()> {
        self.session()?.remove_dir(rel)
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        self.session()?.mkdir(rel, mode)
    }

    pub fn symlink(&self, rel: &str, target: &str) -> io::Result<()> {
        self.session()?.symlink(rel, target)
    }

    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        self.session()?.rename_noreplace(from, to)
    }

    pub fn place(&self, tmp_name: &str, rel: &str, sync_dir: bool) -> io::Result<()> {
        self.session()?.place(tmp_name, rel, sync_dir)
    }

    pub fn sync_filesystem(&self) -> io::Result<()> {
        self.session()?.sync_filesystem()
    }

    pub fn sync_dir(&self, rel: &str) -> io::Result<()> {
        self.session()?.sync_dir(rel)
    }

    pub fn place_link(&self, refs_name: &str, rel: &str, sync_dir: bool) -> io::Result<()> {
        self.session()?.place_link(refs_name, rel, sync_dir)
    }

    pub fn link_ref(&self, rel: &str) -> io::Result<String> {
        self.session()?.link_ref(rel)
    }

    pub fn remove_ref(&self, name: &str) {
        if let Ok(s) = self.session() {
            s.remove_ref(name);
        }
    }

    pub fn place_from_refs(&self, refs_name: &str, rel: &str) -> io::Result<()> {
        self.session()?.place_from_refs(refs_name, rel)
    }

    /// Create `<root>/.fleetsync` with `tmp/` and `refs/` (owner-only: the
    /// node's staging area), the folder marker that also tells us the
    /// folder is really there (mounted). One of them that is a symlink
    /// (planted by a local user to redirect the node's writes) is removed
    /// and replaced by a plain directory, with a warning; anything else
    /// that is not a directory is refused. The staging directory is pinned
    /// afresh.
    pub fn ensure_reserved(&self) -> io::Result<()> {
        let root = self.open_root()?;
        for (parent_is_root, name) in [(true, RESERVED_DIR), (false, TMP_DIR), (false, REFS_DIR)] {
            let parent = if parent_is_root {
                root.try_clone()?
            } else {
                Self::open_dir_at(&root, OsStr::new(RESERVED_DIR)).map_err(to_io)?
            };
            self.replace_symlink(&parent, name)?;
            match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(to_io(e)),
            }
            Self::open_dir_at(&parent, OsStr::new(name)).map_err(|_| {
                io::Error::other(format!(
                    "{name} in {} is not a plain directory",
                    self.root.display()
                ))
            })?;
        }
        self.make_ref_shards(&root)?;
        *self.tmp.lock().expect("staging pin lock") = None;
        self.tmp_fd().map(drop)
    }

    /// Create the shard directories of `refs/` ([`ref_shard`]) that are
    /// missing.
    fn make_ref_shards(&self, root: &OwnedFd) -> io::Result<()> {
        let reserved = Self::open_dir_at(root, OsStr::new(RESERVED_DIR)).map_err(to_io)?;
        let refs = Self::open_dir_at(&reserved, OsStr::new(REFS_DIR)).map_err(to_io)?;
        for n in 0..=u8::MAX {
            let shard = ref_shard(n);
            match rustix::fs::mkdirat(&refs, shard.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }

    /// Remove `name` in `parent` if it is a symlink (never following it).
    fn replace_symlink(&self, parent: &OwnedFd, name: &str) -> io::Result<()> {
        let Ok(st) = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return Ok(());
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return Ok(());
        }
        tracing::warn!(
            root = %self.root.display(),
            "{name} in the folder's staging area is a symlink (someone tried to redirect the node's writes); replaced with a plain directory"
        );
        rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(to_io)
    }

    pub fn has_marker(&self) -> bool {
        matches!(self.lstat_abs_marker(), Ok(Some(EntryKind::Directory)))
    }

    /// Is `<root>/.fleetsync` a symlink?
    pub fn marker_is_symlink(&self) -> bool {
        matches!(self.lstat_abs_marker(), Ok(Some(EntryKind::Symlink)))
    }

    fn lstat_abs_marker(&self) -> io::Result<Option<EntryKind>> {
        let root = self.open_root()?;
        match rustix::fs::statat(&root, RESERVED_DIR, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(match meta_from_stat(&st) {
                DiskState::Present(m) => Some(m.kind),
                _ => None,
            }),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// `<root>/.fleetsync/refs/<name>` as a real path, for the blob store
    /// (which keeps such paths and opens them later), with the stamp of
    /// `.fleetsync` as the path resolves now; an error unless that is our
    /// own directory (the one the pinned staging directory is in).
    pub fn store_ref_path(&self, name: &str) -> io::Result<(PathBuf, ReservedStamp)> {
        let (dir, stamp) = self.store_refs_dir()?;
        Ok((dir.join(name), stamp))
    }

    /// [`Self::store_ref_path`]'s directory: one check for a whole chunk of
    /// files imported under the same stamp.
    pub fn store_refs_dir(&self) -> io::Result<(PathBuf, ReservedStamp)> {
        let stamp = self.reserved_stamp()?;
        let ours = rustix::fs::statat(&*self.tmp_fd()?, "..", AtFlags::empty()).map_err(to_io)?;
        if (ours.st_dev, ours.st_ino) != (stamp.0, stamp.1) {
            return Err(io::Error::other(format!(
                "{RESERVED_DIR} in {} was replaced while the node runs; restart the node to recreate it",
                self.root.display()
            )));
        }
        Ok((self.refs_dir(), stamp))
    }

    /// Did `<root>/.fleetsync` stay the same directory since `stamp` was
    /// taken? Renaming it away and back changes its ctime; replacing
    /// `refs/` in it changes its ctime too. The blob store opens `refs/`
    /// paths by name: the same stamp before and after proves the path led
    /// to our directory all along.
    pub fn still_reserved(&self, stamp: &ReservedStamp) -> bool {
        self.reserved_stamp().is_ok_and(|now| now == *stamp)
    }

    fn reserved_stamp(&self) -> io::Result<ReservedStamp> {
        let st = rustix::fs::lstat(self.root.join(RESERVED_DIR)).map_err(to_io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(io::Error::other(format!(
                "{RESERVED_DIR} in {} is not a plain directory",
                self.root.display()
            )));
        }
        Ok(ReservedStamp(
            st.st_dev,
            st.st_ino,
            st.st_ctime,
            st.st_ctime_nsec as i64,
        ))
    }

    /// A fresh temp path for content on its way in.
    pub fn new_tmp_name(&self) -> String {
        format!("{:016x}.part", random_u64())
    }
}

/// Identity of `<root>/.fleetsync` (device, inode, ctime): see
/// [`FolderFs::still_reserved`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedStamp(u64, u64, i64, i64);

/// Make directory `name` in `dir` with exactly `mode` (mkdir alone honours
/// the process umask, not the folder's), or find the one already there,
/// which keeps its mode (a directory's mode is not synced,
/// `record::synced_mode`). Returned opened, never through a symlink.
fn make_dir_at(dir: impl AsFd, name: &OsStr, mode: u32) -> rustix::io::Result<OwnedFd> {
    let mode = Mode::from_raw_mode(mode & 0o777);
    let made = match rustix::fs::mkdirat(&dir, name, mode) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e),
    };
    let d = FolderFs::open_dir_at(&dir, name)?;
    if made {
        rustix::fs::fchmod(&d, mode)?;
    }
    Ok(d)
}

/// A directory descriptor: the session's root, or one opened on the way.
pub enum Dir<'a> {
    Root(&'a OwnedFd),
    Owned(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Root(r) => r.as_fd(),
            Dir::Owned(o) => o.as_fd(),
        }
    }
}

/// The parent directory of the last path looked at through it, kept open
/// for the next ([`Session::parent_in`]): a run of paths in one directory
/// (a scan's, a chunk's) opens it once instead of once per path (an
/// `openat` and a `close` a file, for each of the three looks a hashed
/// file gets). The descriptor stays the directory that was at that path
/// when it was walked to (never through a symlink), so swapping the path
/// for a symlink meanwhile cannot lead outside the folder; a directory
/// renamed meanwhile is still looked into, and the events of that rename
/// make the watcher look at both names again. Kept for one step of a
/// batch, never longer.
#[derive(Default)]
pub struct Parents {
    last: Option<(String, OwnedFd)>,
}

/// The folder root opened once, for a series of operations. Every walk
/// below it still goes component by component with `O_NOFOLLOW`.
pub struct Session {
    root: OwnedFd,
    tmp: std::sync::OnceLock<OwnedFd>,
    refs: std::sync::OnceLock<OwnedFd>,
    dir_mode: u32,
}

impl Session {
    /// Open the directory holding `rel`'s last component, never following
    /// a symlink on the way. With `create`, missing directories are made.
    /// Returns the parent descriptor and the last component.
    pub fn open_parent<'a>(&self, rel: &'a str, create: bool) -> io::Result<(Dir<'_>, &'a str)> {
        validate_rel_path(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut dir = Dir::Root(&self.root);
        let mut comps = rel.split('/').peekable();
        let mut walked = 0;
        loop {
            let comp = comps.next().expect("validated path is non-empty");
            if comps.peek().is_none() {
                return Ok((dir, comp));
            }
            walked += comp.len() + usize::from(walked > 0);
            let at = &rel[..walked];
            let name = OsStr::new(comp);
            dir = match FolderFs::open_dir_at(&dir, name) {
                Ok(d) => Dir::Owned(d),
                Err(rustix::io::Errno::NOENT) if create => {
                    Dir::Owned(make_dir_at(&dir, name, self.dir_mode).map_err(|e| match e {
                        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                            not_a_dir_err(&dir, comp, at, rel)
                        }
                        e => to_io(e),
                    })?)
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(not_a_dir_err(&dir, comp, at, rel))
                }
                Err(e) => return Err(to_io(e)),
            };
        }
    }

    /// [`Self::open_parent`] (never creating) through `parents`: the
    /// directory is opened only if it is not the last one's.
    pub fn parent_in<'c, 'a>(
        &'c self,
        parents: &'c mut Parents,
        rel: &'a str,
    ) -> io::Result<(BorrowedFd<'c>, &'a str)> {
        self.parent_through(parents, rel, false)
    }

    /// [`Self::parent_in`], making missing directories on the way (as
    /// [`Self::open_parent`] with `create`).
    pub fn parent_in_making<'c, 'a>(
        &'c self,
        parents: &'c mut Parents,
        rel: &'a str,
    ) -> io::Result<(BorrowedFd<'c>, &'a str)> {
        self.parent_through(parents, rel, true)
    }

    fn parent_through<'c, 'a>(
        &'c self,
        parents: &'c mut Parents,
        rel: &'a str,
        create: bool,
    ) -> io::Result<(BorrowedFd<'c>, &'a str)> {
        let Some((parent, name)) = rel.rsplit_once('/') else {
            let (_, name) = self.open_parent(rel, create)?;
            return Ok((self.root.as_fd(), name));
        };
        match &parents.last {
            Some((p, _)) if p == parent => {
                validate_rel_path(rel)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            }
            _ => {
                parents.last = None;
                let Dir::Owned(fd) = self.open_parent(rel, create)?.0 else {
                    unreachable!("a path with a parent has its parent opened");
                };
                parents.last = Some((parent.to_string(), fd));
            }
        }
        let (_, fd) = parents.last.as_ref().expect("just set");
        Ok((fd.as_fd(), name))
    }

    /// `lstat` of a path inside the root. A parent that is missing (or a
    /// file) means the path is missing; a parent that is a symlink means we
    /// must not look.
    pub fn lstat(&self, rel: &str) -> io::Result<DiskState> {
        self.lstat_in(&mut Parents::default(), rel)
    }

    /// [`Self::lstat`], the parent directory opened through `parents`.
    pub fn lstat_in(&self, parents: &mut Parents, rel: &str) -> io::Result<DiskState> {
        let (dir, name) = match self.parent_in(parents, rel) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound || is_blocked_by_file(&e) => {
                return Ok(DiskState::Missing)
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(meta_from_stat(&st)),
            Err(rustix::io::Errno::NOENT) => Ok(DiskState::Missing),
            Err(e) => Err(to_io(e)),
        }
    }

    pub fn read_link(&self, rel: &str) -> io::Result<String> {
        let (dir, name) = self.open_parent(rel, false)?;
        let t = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(to_io)?;
        String::from_utf8(t.into_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "symlink target is not UTF-8"))
    }

    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.open_parent(rel, false)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Remove an empty directory. Not empty → `DirectoryNotEmpty`.
    pub fn remove_dir(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.open_parent(rel, false)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.open_parent(rel, true)?;
        make_dir_at(&dir, OsStr::new(name), mode).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => symlink_err(rel),
            e => to_io(e),
        })?;
        Ok(())
    }

    /// [`Self::mkdir`] through `parents` (a run of directories in one
    /// parent opens it once); an existing directory is kept as it is.
    /// Returns the stat of the directory now at `rel`.
    pub fn mkdir_in(&self, parents: &mut Parents, rel: &str, mode: u32) -> io::Result<DiskState> {
        let (dir, name) = self.parent_in_making(parents, rel)?;
        let made = make_dir_at(dir, OsStr::new(name), mode).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => symlink_err(rel),
            e => to_io(e),
        })?;
        Ok(meta_from_stat(&rustix::fs::fstat(&made).map_err(to_io)?))
    }

    /// Create or atomically replace a symlink (never following the old one).
    pub fn symlink(&self, rel: &str, target: &str) -> io::Result<()> {
        let (dir, name) = self.open_parent(rel, true)?;
        let tmp = symlink_tmp_name(name, random_u32());
        rustix::fs::symlinkat(target, &dir, tmp.as_str()).map_err(to_io)?;
        if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name) {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(to_io(e));
        }
        Ok(())
    }

    /// Rename within the folder (conflict copies). Fails if `to` exists.
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        let (fdir, fname) = self.open_parent(from, false)?;
        let (tdir, tname) = self.open_parent(to, true)?;
        rustix::fs::renameat_with(
            &fdir,
            fname,
            &tdir,
            tname,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(to_io)
    }

    /// Move a finished temp file (in [`Self::tmp_dir`]) over `rel` atomically
    /// and make the rename durable.
    pub fn place(&self, tmp_name: &str, rel: &str, sync_dir: bool) -> io::Result<()> {
        let tmpdir = self.open_tmp_dir()?;
        let (dir, name) = self.open_parent(rel, true)?;
        rustix::fs::renameat(tmpdir, tmp_name, &dir, name).map_err(to_io)?;
        if sync_dir {
            rustix::fs::fsync(&dir).map_err(to_io)?;
        }
        Ok(())
    }

    /// Flush everything written to this folder's filesystem (one call for
    /// a whole batch of staged files instead of an fsync each).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.root).map_err(to_io)
    }

    /// Make renames in directory `rel` ("" = the root) durable.
    pub fn sync_dir(&self, rel: &str) -> io::Result<()> {
        if rel.is_empty() {
            return rustix::fs::fsync(&self.root).map_err(to_io);
        }
        let (parent, name) = self.open_parent(rel, false)?;
        let dir = FolderFs::open_dir_at(&parent, OsStr::new(name)).map_err(|_| symlink_err(rel))?;
        rustix::fs::fsync(&dir).map_err(to_io)
    }

    fn open_reserved(&self, sub: &str) -> io::Result<OwnedFd> {
        let res = FolderFs::open_dir_at(&self.root, OsStr::new(RESERVED_DIR))
            .and_then(|d| FolderFs::open_dir_at(&d, OsStr::new(sub)));
        res.map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                io::Error::other(format!("{RESERVED_DIR}/{sub} is not a plain directory"))
            }
            e => to_io(e),
        })
    }

    fn cached<'s>(
        &'s self,
        cell: &'s std::sync::OnceLock<OwnedFd>,
        sub: &str,
    ) -> io::Result<BorrowedFd<'s>> {
        if cell.get().is_none() {
            let fd = self.open_reserved(sub)?;
            let _ = cell.set(fd);
        }
        Ok(cell.get().expect("set above").as_fd())
    }

    fn open_tmp_dir(&self) -> io::Result<BorrowedFd<'_>> {
        self.cached(&self.tmp, TMP_DIR)
    }

    fn refs_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.cached(&self.refs, REFS_DIR)
    }

    /// Put a second hard link of `refs/<name>` at `rel`, atomically
    /// replacing whatever is there, and make it durable. The store keeps
    /// referencing the `refs` link; both names share the inode.
    pub fn place_link(&self, refs_name: &str, rel: &str, sync_dir: bool) -> io::Result<()> {
        let refs = self.refs_fd()?;
        let tmpdir = self.open_tmp_dir()?;
        let tmp = format!("{:016x}.part", random_u64());
        rustix::fs::linkat(refs, refs_name, tmpdir, tmp.as_str(), AtFlags::empty())
            .map_err(to_io)?;
        match self.place(&tmp, rel, sync_dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = rustix::fs::unlinkat(tmpdir, tmp.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Make a hard link of the file at `rel` in `refs/` (never following a
    /// symlink) and return its name; the blob store then references the link.
    pub fn link_ref(&self, rel: &str) -> io::Result<String> {
        let (dir, name) = self.open_parent(rel, false)?;
        let refs = self.refs_fd()?;
        let link = new_ref_name('l');
        rustix::fs::linkat(&dir, name, refs, link.as_str(), AtFlags::empty()).map_err(to_io)?;
        Ok(link)
    }

    /// Open the regular file at `rel` once, never following a symlink
    /// (neither on the way nor at the end): what is hashed, linked and
    /// re-checked is this descriptor's inode, whatever the path becomes.
    /// A symlink, fifo or device there is refused with [`NotRegular`].
    pub fn open_regular(&self, rel: &str) -> io::Result<Opened> {
        self.open_regular_in(&mut Parents::default(), rel)
    }

    /// [`Self::open_regular`], the parent directory opened through
    /// `parents`.
    pub fn open_regular_in(&self, parents: &mut Parents, rel: &str) -> io::Result<Opened> {
        let (dir, name) = self.parent_in(parents, rel)?;
        // NONBLOCK: a fifo swapped in must not hang the open.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match open_without_atime(dir, name, flags) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(not_regular(rel)),
            Err(e) => return Err(to_io(e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(to_io)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(not_regular(rel));
        }
        Ok(Opened { fd, stat })
    }

    /// Hard-link the opened file into `refs/` from its descriptor (not its
    /// path, which may point elsewhere by now) and return the link's name.
    /// The link is checked to be the opened inode. Linking changes the
    /// inode's ctime: the link's stat, taken after it was made, is that
    /// inode's and becomes the one the later re-check compares with.
    pub fn link_opened(&self, file: &mut Opened) -> io::Result<RefFile> {
        let refs = self.refs_fd()?;
        let link = new_ref_name('l');
        link_fd(&file.fd, refs, &link)?;
        match rustix::fs::statat(refs, link.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if same_inode(&st, &file.stat) => {
                file.stat = st;
                Ok(RefFile::of(link, &st))
            }
            res => {
                let _ = rustix::fs::unlinkat(refs, link.as_str(), AtFlags::empty());
                Err(res.map_or_else(to_io, |_| not_regular(&link)))
            }
        }
    }

    /// Copy the opened file's content into a new `refs/` file. Unlike
    /// [`Self::link_opened`] the copy is an inode of its own: an in-place
    /// write to the user's file later leaves it intact, which
    /// `versions.local` needs to keep what such a write replaced. Copying
    /// does not touch the opened file, so its stat stays the one the
    /// re-check compares with: a write during the copy shows up there.
    pub fn copy_opened(&self, file: &Opened) -> io::Result<RefFile> {
        let refs = self.refs_fd()?;
        let name = new_ref_name('c');
        let copy = new_copy(file.fd.as_fd(), refs, &name)?;
        Ok(RefFile::of(name, &rustix::fs::fstat(&copy).map_err(to_io)?))
    }

    /// Turn `refs/<name>`, if it is a hard link shared with another name
    /// (a user's file), into a copy of its own under the same name (the
    /// store references the name). The copy replaces the link only if it
    /// hashes to `hash`: content rewritten meanwhile stays linked. True if
    /// replaced.
    pub fn separate_ref(&self, name: &str, hash: &[u8; 32]) -> io::Result<bool> {
        let src = self.open_ref(name)?;
        if rustix::fs::fstat(&src).map_err(to_io)?.st_nlink <= 1 {
            return Ok(false);
        }
        let tmp = self.copy_ref_to_tmp(name)?;
        let tmpdir = self.open_tmp_dir()?;
        let copied = rustix::fs::openat(
            tmpdir,
            tmp.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(to_io)
        .and_then(|fd| {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::from(fd))?;
            Ok(*h.finalize().as_bytes())
        });
        let same = matches!(copied, Ok(h) if h == *hash);
        let swapped = same
            && rustix::fs::renameat(tmpdir, tmp.as_str(), self.refs_fd()?, name)
                .map_err(to_io)
                .is_ok();
        if !swapped {
            // Best effort: retention sweeps stale temp files.
            let _ = rustix::fs::unlinkat(tmpdir, tmp.as_str(), AtFlags::empty());
        }
        copied.map(|_| swapped)
    }

    /// Copy `refs/<name>` into a new temp file and return the temp name:
    /// the copy is placed as the user's file while the store keeps the
    /// `refs/` one (see [`Self::copy_opened`] for why).
    pub fn copy_ref_to_tmp(&self, refs_name: &str) -> io::Result<String> {
        let src = self.open_ref(refs_name)?;
        let tmp = format!("{:016x}.part", random_u64());
        new_copy(src.as_fd(), self.open_tmp_dir()?, &tmp)?;
        Ok(tmp)
    }

    /// Is `rel` still exactly the opened file (same inode, size, mtime,
    /// mode and ctime)? ctime catches a rewrite that restored the mtime.
    /// `opened` is the stat the file had when it was opened
    /// ([`Opened::stat`]), so the descriptor may be closed before the
    /// re-check (a group commit re-checks thousands of files at once).
    pub fn still_is(&self, rel: &str, opened: &rustix::fs::Stat) -> bool {
        self.still_is_in(&mut Parents::default(), rel, opened)
    }

    /// [`Self::still_is`], the parent directory opened through `parents`.
    pub fn still_is_in(&self, parents: &mut Parents, rel: &str, opened: &rustix::fs::Stat) -> bool {
        let Ok((dir, name)) = self.parent_in(parents, rel) else {
            return false;
        };
        let Ok(now) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        same_inode(&now, opened)
            && meta_from_stat(&now) == meta_from_stat(opened)
            && (now.st_ctime, now.st_ctime_nsec) == (opened.st_ctime, opened.st_ctime_nsec)
    }

    pub fn remove_ref(&self, name: &str) {
        self.unlink_ref(name);
    }

    /// Open `refs/<name>` for reading through the `refs/` descriptor,
    /// never following a symlink; only a regular file is returned.
    pub fn open_ref(&self, name: &str) -> io::Result<std::fs::File> {
        if !is_ref_name(name) {
            return Err(not_regular(name));
        }
        let (shard, file) = self.ref_dir(name).map_err(|_| not_regular(name))?;
        let dir = match &shard {
            Some(d) => d.as_fd(),
            None => self.refs_fd()?,
        };
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(dir, file, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(not_regular(name)),
            Err(e) => return Err(to_io(e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(to_io)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(not_regular(name));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Remove `refs/<name>` through the `refs/` descriptor (never a path
    /// that a symlink could redirect); true if it was removed.
    pub fn unlink_ref(&self, name: &str) -> bool {
        if !is_ref_name(name) {
            return false;
        }
        let Ok((shard, file)) = self.ref_dir(name) else {
            return false;
        };
        let dir = match &shard {
            Some(d) => Ok(d.as_fd()),
            None => self.refs_fd(),
        };
        dir.is_ok_and(|dir| rustix::fs::unlinkat(dir, file, AtFlags::empty()).is_ok())
    }

    /// The shard directory of `refs/` entry `name` (`None`: `refs/`
    /// itself, a name from before the shards) and the file's name in it.
    /// The shard is opened without following a symlink, so reading and
    /// removing never leave `refs/`. (Links are made through the shard's
    /// path: `refs/` is the node's own, owner-only directory, and the
    /// stamp of the staging directory guards against its replacement.)
    fn ref_dir<'n>(&self, name: &'n str) -> io::Result<(Option<OwnedFd>, &'n str)> {
        let Some((shard, file)) = name.split_once('/') else {
            return Ok((None, name));
        };
        let dir = FolderFs::open_dir_at(self.refs_fd()?, OsStr::new(shard)).map_err(to_io)?;
        Ok((Some(dir), file))
    }

    /// Link `refs/<refs_name>` in at `rel`, where nothing is (missing
    /// parents are made): never over anything, so whatever appeared at
    /// `rel` meanwhile fails it with `AlreadyExists`. One `linkat`, where
    /// replacing takes a link into `tmp/` and a rename. Not durable until
    /// the parent directory is synced.
    pub fn link_new_in(&self, parents: &mut Parents, refs_name: &str, rel: &str) -> io::Result<()> {
        let refs = self.refs_fd()?;
        let (dir, name) = self.parent_in_making(parents, rel)?;
        rustix::fs::linkat(refs, refs_name, dir, name, AtFlags::empty()).map_err(to_io)
    }

    /// Rename `tmp/<tmp_name>` to `rel`, where nothing is (missing parents
    /// are made): never over anything, as [`Self::link_new_in`]. Where the
    /// filesystem cannot refuse to replace (`EINVAL`), a plain rename.
    pub fn rename_new_in(
        &self,
        parents: &mut Parents,
        tmp_name: &str,
        rel: &str,
    ) -> io::Result<()> {
        let tmpdir = self.open_tmp_dir()?;
        let (dir, name) = self.parent_in_making(parents, rel)?;
        let noreplace = rustix::fs::RenameFlags::NOREPLACE;
        match rustix::fs::renameat_with(tmpdir, tmp_name, dir, name, noreplace) {
            Err(rustix::io::Errno::INVAL) => {
                rustix::fs::renameat(tmpdir, tmp_name, dir, name).map_err(to_io)
            }
            r => r.map_err(to_io),
        }
    }

    /// Move `refs/<name>` itself into place (when hard links are not
    /// available on this filesystem).
    pub fn place_from_refs(&self, refs_name: &str, rel: &str) -> io::Result<()> {
        let refs = self.refs_fd()?;
        let (dir, name) = self.open_parent(rel, true)?;
        rustix::fs::renameat(refs, refs_name, &dir, name).map_err(to_io)?;
        rustix::fs::fsync(&dir).map_err(to_io)
    }
}

/// A regular file opened by [`Session::open_regular`], with its `fstat`.
#[derive(Debug)]
pub struct Opened {
    fd: OwnedFd,
    stat: rustix::fs::Stat,
}

impl Opened {
    /// Kind and stat as `lstat` would compare them.
    pub fn meta(&self) -> DiskState {
        meta_from_stat(&self.stat)
    }

    /// The stat taken when it was opened (what [`Session::still_is`]
    /// compares with).
    pub fn stat(&self) -> &rustix::fs::Stat {
        &self.stat
    }

    /// The opened file itself (a second descriptor of the same open file:
    /// reads through it see this inode, whatever the path becomes).
    pub fn file(&self) -> io::Result<std::fs::File> {
        Ok(std::fs::File::from(self.fd.try_clone()?))
    }

    /// BLAKE3 of the content, read through the descriptor. Blocking.
    /// Positioned reads: no second descriptor, no seek. A small file is
    /// one read: asked for one byte more than its size, a read that comes
    /// back short at that size has found the end (a regular file reads
    /// short only there), and a file that grew reads on to its new end.
    pub fn hash(&self) -> io::Result<[u8; 32]> {
        let size = u64::try_from(self.stat.st_size).unwrap_or(0);
        let want = usize::try_from(size).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; want.saturating_add(1).clamp(4096, 256 * 1024)];
        let mut h = blake3::Hasher::new();
        let mut at = 0u64;
        loop {
            let n = match rustix::io::pread(&self.fd, &mut buf[..], at) {
                Ok(0) => return Ok(*h.finalize().as_bytes()),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(to_io(e)),
            };
            h.update(&buf[..n]);
            at += n as u64;
            if n < buf.len() && at == size {
                return Ok(*h.finalize().as_bytes());
            }
        }
    }
}

/// A `refs/` file made for an opened file, and the inode it is: the
/// opened file's own for a link, a new one for a copy. The store opens it
/// by path, so the path is checked to still lead there.
#[derive(Debug, Clone)]
pub struct RefFile {
    pub name: String,
    inode: (u64, u64),
}

impl RefFile {
    fn of(name: String, st: &rustix::fs::Stat) -> RefFile {
        RefFile {
            name,
            inode: (st.st_dev, st.st_ino),
        }
    }

    /// Does `path` (followed) lead to this file?
    pub fn is_at(&self, path: &Path) -> bool {
        rustix::fs::stat(path).is_ok_and(|st| (st.st_dev, st.st_ino) == self.inode)
    }
}

/// Something other than a regular file where one was expected (a symlink
/// swapped in, a fifo…): never read.
#[derive(Debug)]
pub struct NotRegular(pub String);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a regular file (any more); not read", self.0)
    }
}

impl std::error::Error for NotRegular {}

fn not_regular(rel: &str) -> io::Error {
    io::Error::other(NotRegular(rel.to_string()))
}

/// Reading a file to hash it is not a use of it: with `relatime` (the
/// default) the first read of a new file would set its atime, dirtying
/// every inode a scan reads and writing them all out again (2% of the CPU
/// of a first index, S7, besides the writes). `O_NOATIME` is refused
/// (`EPERM`) for a file that is neither ours nor readable with
/// `CAP_FOWNER`: then it is opened as usual.
fn open_without_atime(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// `linkat` of an open file into `dir` as `name`. `AT_EMPTY_PATH` needs
/// CAP_DAC_READ_SEARCH (root has it); without it, the `/proc/self/fd`
/// magic link is followed, which resolves to the descriptor's inode too.
fn link_fd(fd: &OwnedFd, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            use std::os::fd::AsRawFd;
            let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                magic.as_str(),
                dir,
                name,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(to_io)
        }
        Err(e) => Err(to_io(e)),
    }
}

/// Create `name` in `dir` (owner-only, never over an existing name)
/// holding the content of `src`, removed again if the copy fails.
fn new_copy(src: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dst = rustix::fs::openat(dir, name, flags, Mode::RUSR | Mode::WUSR).map_err(to_io)?;
    match copy_content(src, dst.as_fd()) {
        Ok(()) => Ok(dst),
        Err(e) => {
            // Best effort: retention sweeps what is left in tmp/ and refs/.
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            Err(e)
        }
    }
}

/// Copy all of `src` into the empty `dst` from offset 0 (neither file's
/// offset is used): a reflink where the filesystem shares blocks (btrfs,
/// xfs: no extra space), else `copy_file_range` (in the kernel), else
/// read and write.
fn copy_content(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::io::Errno;
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let (mut off_in, mut off_out) = (0u64, 0u64);
    loop {
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), 1 << 30)
        {
            Ok(0) => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) if off_out == 0 => {
                return copy_by_reading(src, dst)
            }
            Err(e) => return Err(to_io(e)),
        }
    }
}

fn copy_by_reading(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (src, dst) = (
        std::fs::File::from(src.try_clone_to_owned()?),
        std::fs::File::from(dst.try_clone_to_owned()?),
    );
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = match src.read_at(&mut buf, off) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
}

/// The temp name a symlink is created under before it is renamed over
/// `name`: `.<name><TMP_MARK><8 hex>`, the name shortened so the whole
/// stays within NAME_MAX (a long name must not make it fail forever).
fn symlink_tmp_name(name: &str, nonce: u32) -> String {
    use fleetsync_mesh::model::{shorten_name, MAX_NAME_LEN};
    let room = MAX_NAME_LEN - 1 - TMP_MARK.len() - 8;
    format!(".{}{TMP_MARK}{nonce:08x}", shorten_name(name, room))
}

/// [`random_u64`], cut to 32 bits (drawn from the same pool).
pub fn random_u32() -> u32 {
    random_u64() as u32
}

/// A fresh `refs/` name: `kind` and 16 random hex digits, in the shard
/// ([`ref_shard`]) its first two digits name.
pub fn new_ref_name(kind: char) -> String {
    let r = random_u64();
    format!("{:02x}/{kind}{r:016x}", r >> 56)
}

/// `refs/` is split into 256 directories, `00` to `ff`, and a link's name
/// starts with its shard (`3f/l3f…`). One directory of every link made
/// two linking threads wait for each other on its lock, and each lookup
/// searched a larger tree: linking 50,000 files from two threads took
/// 7.0 µs a file in shards against 10.0 µs in one directory (a C
/// benchmark on the S7 machine). More shards would search smaller
/// directories (4,096, made as first needed: 12.9–13.7 µs a link against
/// 17–19 µs, one thread), but a `mkdir` there costs 150–190 µs of CPU, so
/// the first index of a large folder would pay 0.6–0.8 s more than it
/// saves. Names of one part (no shard) are links made before the split;
/// they stay valid where they are.
pub fn ref_shard(n: u8) -> String {
    format!("{n:02x}")
}

/// Is `name` a `refs/` entry's name, one that cannot lead out of `refs/`:
/// a file name, or a shard ([`ref_shard`]) and a file name in it?
pub fn is_ref_name(name: &str) -> bool {
    let file = |f: &str| !f.is_empty() && !f.contains('/') && !f.starts_with('.');
    match name.split_once('/') {
        None => file(name),
        Some((shard, rest)) => is_shard_dir(shard) && file(rest),
    }
}

/// Is `name` one of the 256 shard directories of `refs/`?
pub fn is_shard_dir(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random number for a name or an id (unique, not secret).
pub fn random_u64() -> u64 {
    /// Drawn from the OS this many at a time: a name for every file
    /// hashed made the `getrandom` call 1% of indexing a folder of small
    /// files.
    const POOL: usize = 64;
    thread_local! {
        static DRAWN: std::cell::RefCell<(usize, [u64; POOL])> =
            const { std::cell::RefCell::new((POOL, [0; POOL])) };
    }
    DRAWN.with_borrow_mut(|(next, pool)| {
        if *next == POOL {
            let mut b = [0u8; POOL * 8];
            getrandom::fill(&mut b).expect("OS random source unavailable");
            for (v, c) in pool.iter_mut().zip(b.chunks_exact(8)) {
                *v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
            *next = 0;
        }
        *next += 1;
        pool[*next - 1]
    })
}

/// Finish a temp file: permissions, mtime, fsync. Returns its stat.
pub fn finish_tmp(path: &Path, mode: u32, mtime_ns: i64, sync: bool) -> io::Result<LocalStat> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o777)).map_err(to_io)?;
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::futimens(
        &f,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
    )
    .map_err(to_io)?;
    if sync {
        f.sync_all()?;
    }
    match meta_from_stat(&rustix::fs::fstat(&f).map_err(to_io)?) {
        DiskState::Present(m) => Ok(m.stat),
        _ => Err(io::Error::other("temp file is not a regular file")),
    }
}

/// Set permissions and mtime of an existing file in place (metadata-only change).
pub fn set_meta(fs: &FolderFs, rel: &str, mode: u32, mtime_ns: i64) -> io::Result<()> {
    let session = fs.session()?;
    let (dir, name) = session.open_parent(rel, false)?;
    let f = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(to_io)?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o777)).map_err(to_io)?;
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::futimens(
        &f,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
    )
    .map_err(to_io)
}

/// BLAKE3 of a file, streamed (never the whole file in memory).
pub fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(*h.finalize().as_bytes())
}

/// A relative path from an absolute one under `root`, if it is a valid
/// folder path (UTF-8, normalised).
pub fn rel_of(root: &Path, abs: &Path) -> Option<String> {
    let rel = abs.strip_prefix(root).ok()?;
    let s = std::str::from_utf8(rel.as_os_str().as_bytes()).ok()?;
    if s.is_empty() || validate_rel_path(s).is_err() {
        return None;
    }
    Some(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file read to be hashed keeps its atime (`relatime` would set it
    /// on the first read after a write).
    #[test]
    fn hashing_a_file_leaves_its_atime_alone() {
        let root = tempfile::tempdir().unwrap();
        let fs = FolderFs::new(root.path());
        let path = root.path().join("f");
        std::fs::write(&path, b"content").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // Older than the mtime: any read through relatime would update it.
        let old = meta.modified().unwrap() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        let opened = fs.session().unwrap().open_regular("f").unwrap();
        assert_eq!(opened.hash().unwrap(), *blake3::hash(b"content").as_bytes());
        drop(opened);
        let atime = std::fs::metadata(&path).unwrap().accessed().unwrap();
        assert_eq!(atime, old, "the read set the atime");
    }

    #[test]
    fn links_go_into_refs_shards_and_no_ref_name_leads_out_of_refs() {
        let root = tempfile::tempdir().unwrap();
        let fs = FolderFs::new(root.path());
        fs.ensure_reserved().unwrap();
        std::fs::write(root.path().join("f"), b"content").unwrap();
        let session = fs.session().unwrap();
        let mut opened = session.open_regular("f").unwrap();
        let link = session.link_opened(&mut opened).unwrap().name;
        let (shard, file) = link.split_once('/').expect("in a shard");
        assert!(
            is_shard_dir(shard) && file[1..].starts_with(shard),
            "{link}"
        );
        assert_eq!(
            std::fs::read(fs.refs_dir().join(&link)).unwrap(),
            b"content"
        );
        assert_eq!(session.open_ref(&link).map(|_| ()).ok(), Some(()));
        // A shard replaced by a symlink is not followed out of refs/.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("lx"), b"outside").unwrap();
        std::fs::remove_dir(fs.refs_dir().join("ab")).unwrap();
        std::os::unix::fs::symlink(outside.path(), fs.refs_dir().join("ab")).unwrap();
        assert!(session.open_ref("ab/lx").is_err());
        assert!(!session.unlink_ref("ab/lx"));
        assert!(outside.path().join("lx").exists());
        // Made before refs/ had shards: still a name.
        assert!(is_ref_name("l0123456789abcdef"));
        for bad in [
            "", ".", "..", "../x", "ab/../x", "ab/.x", "zz/x", "abc/x", "ab/x/y", "/x", "ab/",
        ] {
            assert!(!is_ref_name(bad), "{bad}");
            assert!(session.open_ref(bad).is_err(), "{bad}");
            assert!(!session.unlink_ref(bad), "{bad}");
        }
    }

    #[test]
    fn parents_answer_as_a_fresh_walk_does_and_never_lead_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("d/e")).unwrap();
        std::fs::write(r.join("d/a"), b"a").unwrap();
        std::fs::write(r.join("d/b"), b"bb").unwrap();
        std::fs::write(r.join("top"), b"t").unwrap();
        std::fs::write(outside.path().join("a"), b"secret!").unwrap();
        std::fs::write(outside.path().join("c"), b"secret!").unwrap();
        let fs = FolderFs::new(r);
        let session = fs.session().unwrap();
        let mut parents = Parents::default();
        let size = |d: DiskState| match d {
            DiskState::Present(m) => Some(m.stat.size),
            _ => None,
        };
        // The same answers as a fresh walk, for a run and around it.
        for rel in ["d/a", "d/b", "d/missing", "top", "d/e", "d/a"] {
            let cached = session.lstat_in(&mut parents, rel).unwrap();
            assert_eq!(cached, session.lstat(rel).unwrap(), "{rel}");
        }
        assert_eq!(
            size(session.lstat_in(&mut parents, "d/b").unwrap()),
            Some(2)
        );
        assert!(
            session.lstat_in(&mut parents, "d/..").is_err(),
            "names are still checked"
        );
        // The directory is swapped for a symlink out of the folder while
        // it is held: the held descriptor is still the old directory
        // (moved away), never the symlink's target.
        std::fs::rename(r.join("d"), r.join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("d")).unwrap();
        assert_eq!(
            size(session.lstat_in(&mut parents, "d/a").unwrap()),
            Some(1)
        );
        assert_eq!(
            session.lstat_in(&mut parents, "d/c").unwrap(),
            DiskState::Missing
        );
        let opened = session.open_regular_in(&mut parents, "d/a").unwrap();
        assert_eq!(opened.hash().unwrap(), *blake3::hash(b"a").as_bytes());
        // A fresh walk (another parent first) refuses the symlink.
        let mut fresh = Parents::default();
        assert!(session.lstat_in(&mut fresh, "top").is_ok());
        assert!(session.open_regular_in(&mut fresh, "d/a").is_err());
        assert!(!session.still_is_in(&mut fresh, "d/a", opened.stat()));
    }

    #[test]
    fn a_file_that_grew_after_it_was_opened_is_hashed_to_its_new_end() {
        use std::io::Write;
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"x").unwrap();
        let fs = FolderFs::new(root.path());
        let opened = fs.session().unwrap().open_regular("f").unwrap();
        assert_eq!(opened.hash().unwrap(), *blake3::hash(b"x").as_bytes());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(root.path().join("f"))
            .unwrap();
        f.write_all(b" and more").unwrap();
        assert_eq!(opened.stat().st_size, 1, "the stat taken at the open");
        assert_eq!(
            opened.hash().unwrap(),
            *blake3::hash(b"x and more").as_bytes()
        );
    }

    #[test]
    fn writes_never_pass_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let fs = FolderFs::new(root.path());
        fs.ensure_reserved().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("inside")).unwrap();
        for rel in ["evil/x", "inside/x", "evil/deep/x"] {
            assert!(fs.mkdir(rel, 0o755).is_err(), "{rel}");
            assert!(fs.symlink(rel, "t").is_err(), "{rel}");
            assert!(fs.remove_file(rel).is_err(), "{rel}");
            assert!(fs.lstat(rel).is_err(), "{rel}");
            std::fs::write(fs.tmp_dir().join("t.part"), b"x").unwrap();
            assert!(fs.place("t.part", rel, true).is_err(), "{rel}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(root.path().join("real")).unwrap().count(),
            0
        );
        // The symlink itself is a thing we can see and replace.
        assert!(matches!(
            fs.lstat("evil").unwrap(),
            DiskState::Present(Meta {
                kind: EntryKind::Symlink,
                ..
            })
        ));
        fs.symlink("evil", "elsewhere").unwrap();
        assert_eq!(fs.read_link("evil").unwrap(), "elsewhere");
    }

    #[test]
    fn place_is_a_rename_into_created_parents() {
        let root = tempfile::tempdir().unwrap();
        let fs = FolderFs::new(root.path());
        fs.ensure_reserved().unwrap();
        let tmp = fs.tmp_dir().join("a.part");
        std::fs::write(&tmp, b"hello").unwrap();
        let st = finish_tmp(&tmp, 0o755, 1_000_000_123, true).unwrap();
        fs.place("a.part", "x/y/z.bin", true).unwrap();
        let DiskState::Present(m) = fs.lstat("x/y/z.bin").unwrap() else {
            panic!()
        };
        assert_eq!(m.stat, st);
        assert_eq!(m.stat.mtime_ns, 1_000_000_123);
        assert_eq!(m.stat.mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read(root.path().join("x/y/z.bin")).unwrap(),
            b"hello"
        );
        assert!(!tmp.exists());
    }

    #[test]
    fn long_names_a_symlink_with_a_long_name_is_created() {
        let root = tempfile::tempdir().unwrap();
        let fs = FolderFs::new(root.path());
        fs.ensure_reserved().unwrap();
        for name in ["l".repeat(240), "é".repeat(127), "x".repeat(255)] {
            fs.symlink(&name, "target").unwrap();
            assert_eq!(fs.read_link(&name).unwrap(), "target");
            let tmp = symlink_tmp_name(&name, u32::MAX);
            assert!(tmp.len() <= 255 && tmp.contains(TMP_MARK), "{tmp}");
            assert_eq!(tmp, symlink_tmp_name(&name, u32::MAX));
        }
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            4,
            "no temp left"
        );
    }

    #[test]
    fn reserved_dir_must_be_real() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join(RESERVED_DIR)).unwrap();
        assert!(!FolderFs::new(root.path()).has_marker());
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let fs = FolderFs::new(root.path().join("file"));
        assert!(fs.ensure_reserved().is_err(), "a file is no folder root");
    }

    #[test]
    fn staging_dirs_a_symlink_is_replaced_and_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join(TMP_DIR)).unwrap();
        std::fs::create_dir(outside.path().join(REFS_DIR)).unwrap();
        let reserved = root.path().join(RESERVED_DIR);
        // Planted before start: replaced by a plain directory.
        std::os::unix::fs::symlink(outside.path(), &reserved).unwrap();
        let fs = FolderFs::new(root.path());
        fs.ensure_reserved().unwrap();
        assert!(std::fs::symlink_metadata(&reserved).unwrap().is_dir());
        std::fs::remove_dir(reserved.join(TMP_DIR)).unwrap();
        std::os::unix::fs::symlink(outside.path().join(TMP_DIR), reserved.join(TMP_DIR)).unwrap();
        fs.ensure_reserved().unwrap();
        assert!(std::fs::symlink_metadata(reserved.join(TMP_DIR))
            .unwrap()
            .is_dir());
        // Swapped while running: temp files still go to the real one.
        std::fs::rename(&reserved, root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &reserved).unwrap();
        std::fs::write(fs.tmp_dir().join("a.part"), b"content").unwrap();
        let st = finish_tmp(&fs.tmp_dir().join("a.part"), 0o644, 0, false).unwrap();
        assert_eq!(st.size, 7);
        assert!(root.path().join("moved/tmp/a.part").exists());
        assert_eq!(
            std::fs::read_dir(outside.path().join(TMP_DIR))
                .unwrap()
                .count(),
            0
        );
        // Placing takes it from the pinned directory too.
        fs.place("a.part", "x", true).unwrap();
        assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"content");
        assert_eq!(
            std::fs::read_dir(outside.path().join(REFS_DIR))
                .unwrap()
                .count(),
            0
        );
    }
}
