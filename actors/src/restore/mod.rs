//! Restore (`fleetsync restore`, `POST /folders/{id}/restore`): kept
//! versions written back into the folder as a new local change.
//!
//! Which versions come back is [`choose`]'s rule (pure). Each chosen one
//! is then written like a user's edit, so the watcher sees it and the
//! fleet gets it as any local change (a new version on top of the current
//! record, tombstone included: it wins against the delete everywhere,
//! never a silent conflict):
//!
//! 1. the path is skipped while the receiver is writing it, and left alone
//!    if it already holds that content;
//! 2. a different file there is kept as a version first (reason
//!    `restore`), so the restore itself can be undone
//!    (`--version <kept id>`); with versions off it is refused instead;
//! 3. the old bytes are streamed into `.fleetsync/tmp`, checked against
//!    the version's hash, fsynced with mtime now, and renamed over the path
//!    (missing parent directories created) after a last `lstat` shows the
//!    path as it was in step 2.
//!
//! Nothing is deleted: a file created after TIME stays. Blocking (file
//! I/O): the admin API runs it on `rt::blocking`.

pub mod choose;

use std::{
    fs::File,
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{Duration, Instant},
};

use fleetsync_config::FolderMode;
use fleetsync_mesh::model::EntryKind;
use serde::Serialize;
use tracing::{info, warn};

pub use self::choose::{choose, covers, normalize, ChooseError, When};
use crate::{
    folder::Folder,
    fsutil::{self, Opened},
    index::{now_ns, IndexError},
    record::{applied_mode, disk_matches, DiskState},
    versions::{KeepMeta, Reason, VersionInfo, VersionsError, LOCAL},
};

/// What to restore: a path (a file, a directory, or one that is gone; ""
/// or "." for the whole folder) and which content.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub when: When,
}

/// What a restore did, path by path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub folder: String,
    pub path: String,
    /// Written back (each now a local change on its way to the fleet).
    pub restored: Vec<Restored>,
    /// Already held the chosen content: left alone.
    pub unchanged: Vec<String>,
    pub failed: Vec<Failed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub path: String,
    /// The version written back.
    pub version: String,
    pub size: u64,
    /// The version the content it replaced was kept as (restore it to
    /// undo); null if nothing was there.
    pub kept_current: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub path: String,
    pub error: String,
}

/// Why nothing was restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("folder {0} is receive-only: a restore there would not reach the fleet and the next remote change would overwrite it; restore on a node that sends")]
    ReceiveOnly(String),
    #[error("folder {folder} is paused ({why}); nothing restored")]
    Paused { folder: String, why: String },
    #[error(transparent)]
    Choose(#[from] ChooseError),
}

/// Why one path was not restored (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("a sync is writing it right now; try again in a moment")]
    Busy,
    #[error("a {0} is there now; move it away to restore the file")]
    NotAFile(&'static str),
    #[error("it changed while being restored; try again")]
    Changed,
    #[error("versions are off for this folder, so the different content there now could not be kept first; move it away to restore")]
    NotKept,
    #[error("version {id} reads back as other content (BLAKE3 {got}, not {want}); not restored")]
    Corrupt {
        id: String,
        got: String,
        want: String,
    },
    #[error("{0}")]
    Versions(#[from] VersionsError),
    #[error("{0}")]
    Index(#[from] IndexError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

enum Outcome {
    Unchanged,
    Restored { kept_current: Option<String> },
}

/// Restore `req` in `folder` (blocking).
pub fn restore(folder: &Folder, req: &Request) -> Result<Report, RestoreError> {
    if folder.mode() == FolderMode::ReceiveOnly {
        return Err(RestoreError::ReceiveOnly(folder.id().to_string()));
    }
    if let Some(why) = folder.fault() {
        return Err(RestoreError::Paused {
            folder: folder.id().to_string(),
            why,
        });
    }
    let kept = folder.versions.list(None);
    let chosen = choose(&kept, &req.path, &req.when)?;
    let mut report = Report {
        folder: folder.id().to_string(),
        path: normalize(&req.path).to_string(),
        ..Report::default()
    };
    for v in chosen {
        match restore_when_not_busy(folder, v) {
            Ok(Outcome::Unchanged) => report.unchanged.push(v.path.clone()),
            Ok(Outcome::Restored { kept_current }) => {
                info!(folder = folder.id(), path = %v.path, version = %v.id, "restored");
                report.restored.push(Restored {
                    path: v.path.clone(),
                    version: v.id.clone(),
                    size: v.size,
                    kept_current,
                });
            }
            Err(e) => {
                warn!(folder = folder.id(), path = %v.path, version = %v.id, "not restored: {e}");
                report.failed.push(Failed {
                    path: v.path.clone(),
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(report)
}

/// How long a restore waits for a sync that is writing the path right
/// now (a restore just after a sync must not fail on its last step).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// [`restore_one`], waiting up to [`BUSY_WAIT`] while a sync applies the
/// path (blocking: restores run off the async workers).
fn restore_when_not_busy(folder: &Folder, v: &VersionInfo) -> Result<Outcome, PathError> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match restore_one(folder, v) {
            Err(PathError::Busy) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Write version `v` back at its path (steps 1–3 of the module doc).
fn restore_one(folder: &Folder, v: &VersionInfo) -> Result<Outcome, PathError> {
    if folder.is_applying(&v.path) {
        return Err(PathError::Busy);
    }
    let session = folder.fs.session()?;
    let before = session.lstat(&v.path)?;
    let (current_mode, kept_current) = match before {
        DiskState::Missing => (None, None),
        DiskState::Present(m) if m.kind == EntryKind::File => {
            let current = session.open_regular(&v.path)?;
            if hex::encode(current.hash()?) == v.hash {
                return Ok(Outcome::Unchanged);
            }
            let kept = keep_current(folder, &v.path, &before, &current)?;
            (Some(m.stat.mode), Some(kept))
        }
        DiskState::Present(m) => {
            return Err(PathError::NotAFile(match m.kind {
                EntryKind::Directory => "directory",
                _ => "symlink",
            }))
        }
        DiskState::Special => return Err(PathError::NotAFile("special file")),
    };
    let mode = restored_mode(v.mode, current_mode, folder.cfg.umask.0);
    let tmp = stage(folder, v, mode)?;
    let placed = match session.lstat(&v.path) {
        Ok(now) if now == before => session.place(&tmp, &v.path, true).map_err(PathError::Io),
        Ok(_) => Err(PathError::Changed),
        Err(e) => Err(PathError::Io(e)),
    };
    if placed.is_err() {
        remove_tmp(folder, &tmp);
    }
    placed.map(|()| Outcome::Restored { kept_current })
}

/// The permission bits a restored file gets: those it had when it was
/// kept (never setuid, setgid or sticky); for a version kept before modes
/// were recorded, the replaced file's, or a new file's (`0o666` through
/// the folder's umask).
fn restored_mode(kept: Option<u32>, current: Option<u32>, umask: u32) -> u32 {
    match (kept, current) {
        (Some(kept), _) => kept & 0o777,
        (None, Some(current)) => current,
        (None, None) => applied_mode(EntryKind::File, 0, umask),
    }
}

/// Keep the file at `rel` (opened as `current`) as a version before it is
/// replaced; its id.
fn keep_current(
    folder: &Folder,
    rel: &str,
    disk: &DiskState,
    current: &Opened,
) -> Result<String, PathError> {
    let rec = folder.index.get(folder.id(), rel)?;
    let mut meta = match rec.as_ref().filter(|r| disk_matches(disk, Some(r))) {
        Some(r) => KeepMeta::of_entry(&r.entry, LOCAL.to_string(), Reason::Restore),
        // A local edit the index has not seen yet (or never will: ignored):
        // ours, on top of what was recorded.
        None => KeepMeta {
            path: rel.to_string(),
            mtime_ns: 0,
            version: rec.map(|r| r.entry.version).unwrap_or_default(),
            modified_by: folder.me,
            replaced_by: LOCAL.to_string(),
            reason: Reason::Restore,
        },
    };
    if let DiskState::Present(m) = disk {
        meta.mtime_ns = m.stat.mtime_ns;
    }
    let kept = folder.versions.keep_file(&current.file()?, meta)?;
    kept.map(|info| info.meta.id).ok_or(PathError::NotKept)
}

/// Version `v`'s bytes in a finished temp file (mode, mtime now, fsynced);
/// its name in the staging directory.
fn stage(folder: &Folder, v: &VersionInfo, mode: u32) -> Result<String, PathError> {
    let name = folder.fs.new_tmp_name();
    let path = folder.fs.tmp_dir().join(&name);
    let res = write_checked(folder, v, &path).and_then(|()| {
        fsutil::finish_tmp(&path, mode, now_ns(), true)
            .map(drop)
            .map_err(PathError::Io)
    });
    match res {
        Ok(()) => Ok(name),
        Err(e) => {
            remove_tmp(folder, &name);
            Err(e)
        }
    }
}

/// Stream version `v` into a new file at `path`, checking its BLAKE3.
fn write_checked(folder: &Folder, v: &VersionInfo, path: &Path) -> Result<(), PathError> {
    let mut reader = folder.versions.open_reader(&v.id)?;
    let mut out = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PathError::Io(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let got = hasher.finalize().to_hex().to_string();
    if got != v.hash {
        return Err(PathError::Corrupt {
            id: v.id.clone(),
            got,
            want: v.hash.clone(),
        });
    }
    Ok(())
}

fn remove_tmp(folder: &Folder, name: &str) {
    let path = folder.fs.tmp_dir().join(name);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            // Retention sweeps it later; nothing is lost.
            warn!(folder = folder.id(), "removing temp file {name}: {e}");
        }
    }
}

#[cfg(test)]
pub(crate) fn test_version(path: &str, mtime_ns: i64, kept_at_ms: u64) -> VersionInfo {
    crate::versions::VersionMeta {
        id: format!("{kept_at_ms:013}-{:08x}", fsutil::random_u32()),
        path: path.into(),
        size: 0,
        mtime_ns,
        hash: String::new(),
        version: Default::default(),
        modified_by: String::new(),
        replaced_by: String::new(),
        kept_at_ms,
        reason: Reason::Overwrite,
        mode: None,
    }
    .into_info(0)
}

#[cfg(test)]
mod tests;
