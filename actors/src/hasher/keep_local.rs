//! `versions.local = true`: what the node's own user deleted or replaced
//! is kept as a version too (reason `local`).
//!
//! When the watcher sees the change, the user's path no longer holds the
//! old content. The copy used is the replaced record's `refs/` entry,
//! which on such a folder is a copy of its own, not a hard link of the
//! user's file ([`Folder::refs_are_copies`]): made by the hasher when it
//! imported the file, or by the receiver next to the file it placed. Its
//! BLAKE3 is checked against the record in the same pass that compresses
//! it; nothing unverified is kept.
//!
//! - Delete, replace by rename (write a temp file, rename it over), and
//!   in-place overwrite (open with truncate, write; what vim does to a
//!   file with a second hard link): the `refs/` copy is intact — kept.
//! - No copy (the content was indexed while `versions.local` was off and
//!   its entry is a hard link an in-place write rewrote; a filesystem
//!   without hard links; the copy could not be made) — not kept. An
//!   empty file needs no copy — kept.
//! - Content the folder still holds under another path (a move, a copy)
//!   is not lost: not kept, and not counted as missed.
//!
//! Every change not kept is counted in the folder's
//! `versions_local_missed` (status, metrics) with a debug log line, never
//! silent. The copies are opened right after the index commit that
//! replaced the records, under [`Folder::refs_lock`] (the refs sweep
//! cannot take them in between), and before the links that commit
//! released are handed to [`Folder::release`]; once open they are read
//! whatever happens to their names.

use std::{fs::File, io, sync::atomic::Ordering};

use tracing::{debug, warn};

use crate::{
    folder::Folder,
    fsutil::Session,
    record::Record,
    versions::{KeepMeta, Reason, VersionsError, LOCAL},
};

/// BLAKE3 of no bytes: an empty file's hash.
const EMPTY: [u8; 32] = [
    0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9, 0x49,
    0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
];

/// Why a replaced record's content was not kept.
#[derive(Debug, thiserror::Error)]
enum MissedError {
    #[error("no copy of the old content is left (no refs link)")]
    NoCopy,
    #[error("its refs copy cannot be opened: {0}")]
    Open(#[source] io::Error),
    #[error(transparent)]
    Keep(#[from] VersionsError),
}

impl MissedError {
    /// Expected when the copy is gone or was rewritten in place: a debug
    /// line and the counter. Anything else is a store failure worth a
    /// warning and the folder's last error.
    fn expected(&self) -> bool {
        match self {
            MissedError::NoCopy | MissedError::Keep(VersionsError::ContentChanged { .. }) => true,
            MissedError::Open(e) => e.kind() == io::ErrorKind::NotFound,
            MissedError::Keep(_) => false,
        }
    }
}

/// The replaced records whose content is to be kept, each with its copy
/// opened (or why there is none). Opened while the index's use of
/// `refs/` cannot change under the refs sweep ([`Folder::refs_lock`]):
/// once open, a copy is readable whatever happens to its name.
pub struct Copies(Vec<(Record, Result<File, MissedError>)>);

/// Open the copy of every record in `replaced` (records a local change
/// replaced, see `Committed::replaced_locally`) if the folder keeps local
/// versions. Call right after the commit, before releasing its links.
/// Blocking.
pub fn open_replaced(folder: &Folder, replaced: &[Record]) -> Copies {
    let policy = folder.versions.policy();
    if replaced.is_empty() || !policy.enabled || !policy.local {
        return Copies(Vec::new());
    }
    let session = match folder.fs.session() {
        Ok(s) => s,
        Err(e) => {
            missed(folder, replaced.len());
            warn!(
                folder = folder.id(),
                "local changes not kept as versions: {e}"
            );
            return Copies(Vec::new());
        }
    };
    let to_keep = replaced.iter().filter(|old| !already_safe(folder, old));
    Copies(
        to_keep
            .map(|old| (old.clone(), copy_of(&session, old)))
            .collect(),
    )
}

/// Keep the content of every opened copy; `progress` is called as the
/// content is read (the hasher's health). Blocking.
pub fn keep_opened(folder: &Folder, copies: Copies, progress: &dyn Fn(u64)) {
    for (old, copy) in copies.0 {
        match copy.and_then(|file| keep_one(folder, &old, file, progress)) {
            Ok(()) => {
                folder
                    .status
                    .versions_local_kept
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => report(folder, &old.entry.path, &e),
        }
    }
}

/// Nothing to keep: kept already (a restore keeps what it replaces before
/// the watcher sees it), or the content lives on under another path.
fn already_safe(folder: &Folder, old: &Record) -> bool {
    let e = &old.entry;
    e.hash.is_some_and(|hash| {
        folder.versions.recently_kept(&e.path, &hash, &e.version) || live_elsewhere(folder, &hash)
    })
}

/// Keep one replaced record's content from its opened copy.
fn keep_one(
    folder: &Folder,
    old: &Record,
    file: File,
    progress: &dyn Fn(u64),
) -> Result<(), MissedError> {
    let hash = old.entry.hash.ok_or(MissedError::NoCopy)?;
    let meta = KeepMeta::of_entry(&old.entry, LOCAL.to_string(), Reason::Local);
    folder.versions.keep_file_as(&file, meta, hash, progress)?;
    Ok(())
}

/// Does the folder still hold this content under some path (a move, or a
/// copy)? Then nothing is lost. One indexed lookup; if the index cannot
/// say, the content is kept.
fn live_elsewhere(folder: &Folder, hash: &[u8; 32]) -> bool {
    folder
        .index
        .paths_with_hash(folder.id(), hash)
        .is_ok_and(|paths| !paths.is_empty())
}

/// The file holding the record's content: its refs entry (an empty file
/// needs none).
fn copy_of(session: &Session, old: &Record) -> Result<File, MissedError> {
    let hash = old.entry.hash.ok_or(MissedError::NoCopy)?;
    match &old.refs {
        Some(name) => session.open_ref(name).map_err(MissedError::Open),
        None if hash == EMPTY => File::open("/dev/null").map_err(MissedError::Open),
        None => Err(MissedError::NoCopy),
    }
}

fn report(folder: &Folder, path: &str, e: &MissedError) {
    missed(folder, 1);
    if e.expected() {
        debug!(
            folder = folder.id(),
            path, "versions_local_missed: previous content not kept: {e}"
        );
    } else {
        warn!(
            folder = folder.id(),
            path, "previous content not kept as a version: {e}"
        );
        folder.status.error(format!(
            "{path}: previous content not kept as a version: {e}"
        ));
    }
}

fn missed(folder: &Folder, n: usize) {
    folder
        .status
        .versions_local_missed
        .fetch_add(n as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{atomic::Ordering, Arc},
        time::Duration,
    };

    use super::EMPTY;
    use crate::{
        folder::{Folder, DEFAULT_TRANSFER_STALL_TIMEOUT},
        hasher::{hash_batch, tests::write},
        health::Health,
        testing::{self, FakeContent},
        versions::Reason,
    };

    #[test]
    fn empty_is_the_hash_of_no_bytes() {
        assert_eq!(EMPTY, *blake3::hash(b"").as_bytes());
    }

    fn folder(dir: &std::path::Path, local: bool) -> Arc<Folder> {
        let stall = DEFAULT_TRANSFER_STALL_TIMEOUT;
        testing::folder_with_cfg(dir, FakeContent::new(), stall, |c| {
            c.settle = Duration::ZERO;
            c.versions.local = local;
        })
    }

    async fn hash(folder: &Arc<Folder>, paths: &[&str]) {
        let paths = paths.iter().map(|p| p.to_string()).collect();
        let out = hash_batch(folder.clone(), Health::new(1), paths).await;
        assert!(out.failed.is_empty() && out.deferred.is_empty(), "{out:?}");
    }

    /// Open with truncate and write: the inode stays, the bytes change.
    fn overwrite_in_place(path: std::path::PathBuf, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Delete `a`, replace `b` by a rename over it, rewrite `c` in place,
    /// and hash the three again.
    async fn change_all(folder: &Arc<Folder>, dir: &std::path::Path) {
        for (p, bytes) in [("a", "alpha"), ("b", "bravo"), ("c", "charlie"), ("e", "")] {
            write(folder, p, bytes.as_bytes());
        }
        hash(folder, &["a", "b", "c", "e"]).await;
        std::fs::remove_file(folder.fs.abs("a")).unwrap();
        std::fs::remove_file(folder.fs.abs("e")).unwrap();
        let tmp = dir.join("b.tmp");
        std::fs::write(&tmp, b"bravo 2").unwrap();
        std::fs::rename(&tmp, folder.fs.abs("b")).unwrap();
        overwrite_in_place(folder.fs.abs("c"), b"charlie 2");
        hash(folder, &["a", "b", "c", "e"]).await;
    }

    /// Regression: an in-place overwrite was not kept (the `refs/` entry
    /// was a hard link sharing the rewritten inode).
    #[tokio::test]
    async fn a_delete_a_rename_over_and_an_in_place_overwrite_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path(), true);
        change_all(&folder, dir.path()).await;
        let mut kept: Vec<(String, Reason, Vec<u8>)> = (folder.versions.list(None).iter())
            .map(|v| {
                (
                    v.path.clone(),
                    v.reason,
                    folder.versions.read(&v.id).unwrap(),
                )
            })
            .collect();
        kept.sort_by(|x, y| x.0.cmp(&y.0));
        let want = |p: &str, b: &str| (p.to_string(), Reason::Local, b.as_bytes().to_vec());
        assert_eq!(
            kept,
            [
                want("a", "alpha"),
                want("b", "bravo"),
                want("c", "charlie"),
                want("e", "")
            ]
        );
        let st = &folder.status;
        assert_eq!(st.versions_local_kept.load(Ordering::Relaxed), 4);
        assert_eq!(st.versions_local_missed.load(Ordering::Relaxed), 0);
    }

    /// Content indexed while `versions.local` was off has a hard link in
    /// `refs/`; turned on (a restart), the start-up pass makes it a copy,
    /// so an in-place overwrite afterwards is kept too.
    #[tokio::test]
    async fn a_link_made_while_versions_local_was_off_becomes_a_copy_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let before = folder(dir.path(), false);
        write(&before, "c", b"charlie");
        write(&before, "d", b"delta");
        hash(&before, &["c", "d"]).await;
        assert_eq!(crate::retention::separate_refs(&before), 0, "off: none");
        drop(before);
        let folder = folder(dir.path(), true);
        assert_eq!(crate::retention::separate_refs(&folder), 2);
        assert_eq!(crate::retention::separate_refs(&folder), 0, "done once");
        overwrite_in_place(folder.fs.abs("c"), b"charlie 2");
        hash(&folder, &["c"]).await;
        let kept = folder.versions.list(None);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(folder.versions.read(&kept[0].id).unwrap(), b"charlie");
        assert_eq!(std::fs::read(folder.fs.abs("d")).unwrap(), b"delta");
    }

    #[tokio::test]
    async fn by_default_the_nodes_own_changes_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path(), false);
        change_all(&folder, dir.path()).await;
        assert_eq!(folder.versions.count(), 0);
        assert_eq!(
            folder.status.versions_local_missed.load(Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn content_still_live_under_another_path_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path(), true);
        write(&folder, "old", b"moved");
        hash(&folder, &["old"]).await;
        std::fs::rename(folder.fs.abs("old"), folder.fs.abs("new")).unwrap();
        hash(&folder, &["new", "old"]).await;
        assert_eq!(folder.versions.count(), 0);
        assert_eq!(
            folder.status.versions_local_missed.load(Ordering::Relaxed),
            0
        );
    }
}
