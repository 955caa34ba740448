//! `versions.local = true`: what the node's own user deleted or replaced
//! is kept as a version too (reason `local`).
//!
//! When the watcher sees the change, the user's path no longer holds the
//! old content. The copy used is the replaced record's `refs/` link: a hard
//! link to the inode the path had when the hasher imported it (or the
//! receiver placed it). Its BLAKE3 is checked against the record in the
//! same pass that compresses it; nothing unverified is kept.
//!
//! - Delete, and replace by rename (write a temp file, rename it over):
//!   the old inode lives on in `refs/` — kept.
//! - In-place overwrite (open with truncate, write): the link shares the
//!   rewritten inode, the hash differs — not kept.
//! - No link (a filesystem without hard links, or the link already gone)
//!   — not kept. An empty file needs no copy — kept.
//! - Content the folder still holds under another path (a move, a copy)
//!   is not lost: not kept, and not counted as missed.
//!
//! Every change not kept is counted in the folder's
//! `versions_local_missed` (status, metrics) with a debug log line, never
//! silent. This runs right after the index commit that replaced the
//! records and before the links that commit released are handed to
//! [`Folder::release`], which starts their removal; the refs sweep only
//! takes unused links older than its age limit, and a delete or a rename
//! over the path has just changed the link's ctime.

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

/// Keep the content of every record in `replaced` (records a local
/// change replaced, see `Committed::replaced_locally`) if the folder keeps
/// local versions; `progress` is called as the content is read (the
/// hasher's health). Blocking.
pub fn keep_replaced_locally(folder: &Folder, replaced: &[Record], progress: &dyn Fn(u64)) {
    let policy = folder.versions.policy();
    if replaced.is_empty() || !policy.enabled || !policy.local {
        return;
    }
    let session = match folder.fs.session() {
        Ok(s) => s,
        Err(e) => {
            missed(folder, replaced.len());
            warn!(
                folder = folder.id(),
                "local changes not kept as versions: {e}"
            );
            return;
        }
    };
    for old in replaced {
        match keep_one(folder, &session, old, progress) {
            Ok(true) => {
                folder
                    .status
                    .versions_local_kept
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => report(folder, &old.entry.path, &e),
        }
    }
}

/// Keep one replaced record's content; false if it was kept already (a
/// restore keeps what it replaces before the watcher sees it).
fn keep_one(
    folder: &Folder,
    session: &Session,
    old: &Record,
    progress: &dyn Fn(u64),
) -> Result<bool, MissedError> {
    let Some(hash) = old.entry.hash else {
        return Err(MissedError::NoCopy);
    };
    let e = &old.entry;
    if folder.versions.recently_kept(&e.path, &hash, &e.version) || live_elsewhere(folder, &hash) {
        return Ok(false);
    }
    let file = copy_of(session, old, hash)?;
    let meta = KeepMeta::of_entry(e, LOCAL.to_string(), Reason::Local);
    folder.versions.keep_file_as(&file, meta, hash, progress)?;
    Ok(true)
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

/// The file holding the record's content: its refs link (an empty file
/// needs none).
fn copy_of(session: &Session, old: &Record, hash: [u8; 32]) -> Result<File, MissedError> {
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
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(folder.fs.abs("c"))
            .unwrap();
        f.write_all(b"charlie 2").unwrap();
        drop(f);
        hash(folder, &["a", "b", "c", "e"]).await;
    }

    #[tokio::test]
    async fn a_delete_and_a_rename_over_are_kept_an_in_place_overwrite_is_counted_missed() {
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
            [want("a", "alpha"), want("b", "bravo"), want("e", "")]
        );
        let st = &folder.status;
        assert_eq!(st.versions_local_kept.load(Ordering::Relaxed), 3);
        assert_eq!(st.versions_local_missed.load(Ordering::Relaxed), 1, "c");
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
