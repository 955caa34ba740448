//! The one placer: staged content goes into the folder here, whether it is
//! one big file or a batch of 512 small ones.
//!
//! All of it runs in one blocking call on one [`Session`]: for a batch,
//! one `syncfs` makes every staged file durable first; then per file a
//! last look at the disk (anything different from what preflight saw means
//! a local edit: stop), a conflict copy if our content lost, the atomic
//! rename; finally one fsync per touched directory makes the renames
//! durable. A crash at any point leaves each file old or new.

use std::{collections::BTreeSet, io, sync::atomic::Ordering};

use fleetsync_mesh::model::EntryKind;
use tracing::{debug, warn};

use super::{acquire::Staged, keep, ApplyError, Job};
use crate::{
    folder::Folder,
    fsutil::{Parents, Session},
    record::{DiskState, LocalStat},
    rules::conflict_name_try,
    versions::Reason,
};

/// Conflict copies of one path with the same name stamp tried before
/// giving up (`name.sync-conflict-…`, then `.1` … `.9`).
const CONFLICT_NAME_TRIES: usize = 10;

/// How staged content is made durable before it is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Each file is fsynced as it is finished (big files: the fsync is
    /// cheap next to their transfer).
    EachFile,
    /// One `syncfs` for the whole batch right before placing (many small
    /// files: an fsync each would dominate).
    Batch,
    /// A batch of a few files: fetched and placed together as in
    /// [`Flush::Batch`], but each file fsynced as it is finished instead of
    /// one `syncfs`, which also writes out every other program's dirty
    /// data on the filesystem.
    Few,
}

/// Content staged and finished, ready to be placed.
#[derive(Debug, Clone)]
pub(super) struct Ready {
    pub staged: Staged,
    /// What preflight saw at the path; placing re-checks against it.
    pub disk: DiskState,
    pub hash: [u8; 32],
    /// The staged file's stat: the placed file has the same inode.
    pub stat: LocalStat,
}

/// A file that went into place.
#[derive(Debug)]
pub(super) struct Placed {
    /// Hard links are unavailable here: the `refs/` file itself was moved
    /// into place, so the store must reference the new path.
    pub moved: bool,
    /// Name our losing version was kept under.
    pub copy: Option<String>,
}

/// What became of one file at the placer.
#[derive(Debug)]
pub(super) enum Placement {
    Placed(Placed),
    /// The path was not touched: the staged content may be used again.
    NotPlaced(ApplyError),
    /// Renamed into place, but its directory could not be made durable. The
    /// content now belongs to the placed file and must not be reused; the
    /// retry finds the file there and the hasher adopts it.
    NotDurable(ApplyError),
}

/// Place every ready file (blocking). The outer error is one for the whole
/// batch, raised before anything was renamed (the root could not be
/// opened or the filesystem sync failed); per file, its placement.
pub(super) fn place_all(
    folder: &Folder,
    plan: &[(Job, Ready)],
    flush: Flush,
) -> io::Result<Vec<Placement>> {
    let session = folder.fs.session()?;
    if flush == Flush::Batch {
        session.sync_filesystem()?;
    }
    // A batch comes a directory at a time (paths sorted).
    let mut parents = Parents::default();
    let mut out: Vec<Placement> = plan
        .iter()
        .map(
            |(job, ready)| match place_one(folder, &session, &mut parents, job, ready) {
                Ok(p) => Placement::Placed(p),
                Err(e) => Placement::NotPlaced(e),
            },
        )
        .collect();
    sync_dirs(&session, plan, &mut out);
    Ok(out)
}

/// One fsync per directory that received a file; a file whose directory
/// could not be synced is not durable yet.
fn sync_dirs(session: &Session, plan: &[(Job, Ready)], out: &mut [Placement]) {
    let placed = |i: usize| matches!(out[i], Placement::Placed(_));
    let dirs: BTreeSet<&str> = (0..plan.len())
        .filter(|i| placed(*i))
        .map(|i| parent_dir(&plan[i].0.path))
        .collect();
    for d in dirs {
        let Err(e) = session.sync_dir(d) else {
            continue;
        };
        let cause = std::sync::Arc::new(e);
        for (i, (job, _)) in plan.iter().enumerate() {
            if matches!(out[i], Placement::Placed(_)) && parent_dir(&job.path) == d {
                out[i] = Placement::NotDurable(ApplyError::NotDurable {
                    path: job.path.clone(),
                    source: cause.clone(),
                });
            }
        }
    }
}

fn place_one(
    folder: &Folder,
    session: &Session,
    parents: &mut Parents,
    job: &Job,
    ready: &Ready,
) -> Result<Placed, ApplyError> {
    // Last look before we replace: did someone write to the path meanwhile?
    unchanged_since_preflight(session, parents, job, ready)?;
    if ready.disk == DiskState::Missing {
        // Nothing to replace, keep or move aside.
        let moved = put_where_nothing_is(session, parents, job, &ready.staged)?;
        return Ok(Placed { moved, copy: None });
    }
    if keep::keep_replaced(folder, session, job, &ready.disk, Reason::Overwrite) {
        // Keeping took a while: look again.
        unchanged_since_preflight(session, parents, job, ready)?;
    }
    let ours_is_a_file = matches!(ready.disk, DiskState::Present(m) if m.kind == EntryKind::File);
    let copy = if job.conflict_copy && ours_is_a_file {
        move_aside(session, job)?
    } else {
        None
    };
    let moved = put_in_place(session, job, &ready.staged)?;
    Ok(Placed { moved, copy })
}

fn unchanged_since_preflight(
    session: &Session,
    parents: &mut Parents,
    job: &Job,
    ready: &Ready,
) -> Result<(), ApplyError> {
    let now = session
        .lstat_in(parents, &job.path)
        .map_err(ApplyError::io_at("lstat", &job.path))?;
    if now != ready.disk {
        return Err(local_change(job));
    }
    Ok(())
}

fn local_change(job: &Job) -> ApplyError {
    ApplyError::LocalChange {
        path: job.path.clone(),
    }
}

/// Staged content into a path where nothing was: a name of its own that
/// never replaces, so a file created there since the last look fails it
/// (a local change) instead of being overwritten. True if the `refs/`
/// file itself had to move (see [`put_in_place`]).
fn put_where_nothing_is(
    session: &Session,
    parents: &mut Parents,
    job: &Job,
    staged: &Staged,
) -> Result<bool, ApplyError> {
    let placed = match staged {
        Staged::Refs(name) => session.link_new_in(parents, name, &job.path),
        Staged::Tmp(name) | Staged::Copied { tmp: name, .. } => {
            session.rename_new_in(parents, name, &job.path)
        }
    };
    match placed {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(local_change(job)),
        // No hard links here (or another refusal): the general way.
        Err(e) if matches!(staged, Staged::Refs(_)) => {
            debug!(path = %job.path, "linking into place failed ({e}); replacing instead");
            put_in_place(session, job, staged)
        }
        Err(e) => Err(ApplyError::io("place", &job.path, e)),
    }
}

/// Rename staged content over the path; true if the `refs/` file itself
/// had to move (no hard links on this filesystem).
fn put_in_place(session: &Session, job: &Job, staged: &Staged) -> Result<bool, ApplyError> {
    let place_err = ApplyError::io_at("place", &job.path);
    match staged {
        Staged::Refs(name) => match session.place_link(name, &job.path, false) {
            Ok(()) => Ok(false),
            Err(e) => {
                debug!(path = %job.path, "hard link failed ({e}); moving instead");
                session
                    .place_from_refs(name, &job.path)
                    .map_err(place_err)?;
                Ok(true)
            }
        },
        Staged::Tmp(name) | Staged::Copied { tmp: name, .. } => {
            session.place(name, &job.path, false).map_err(place_err)?;
            Ok(false)
        }
    }
}

fn parent_dir(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// Rename our losing file to its conflict-copy name (a rename, no copy).
/// The name comes from the loser's mtime and author, so every node that
/// keeps the same loser picks the same name.
pub(super) fn move_aside(session: &Session, job: &Job) -> Result<Option<String>, ApplyError> {
    let Some(l) = job.local.as_ref().filter(|r| !r.entry.deleted) else {
        return Ok(None);
    };
    for n in 0..CONFLICT_NAME_TRIES {
        let candidate = conflict_name_try(&job.path, l.entry.mtime_ns, l.entry.modified_by, n);
        match session.rename_noreplace(&job.path, &candidate) {
            Ok(()) => return Ok(Some(candidate)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ApplyError::io("conflict copy", &job.path, e)),
        }
    }
    Err(ApplyError::TooManyConflictCopies {
        path: job.path.clone(),
    })
}

pub(super) fn conflict_logged(folder: &Folder, job: &Job, copy: &str) {
    warn!(
        folder = folder.id(),
        path = %job.path,
        copy = %copy,
        "conflict: kept the losing version as a conflict copy"
    );
    folder.status.conflicts.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{self, Scene};
    use fleetsync_mesh::model::ShortId;
    use std::os::unix::fs::MetadataExt;

    fn job_for(path: &str, content: &[u8]) -> Job {
        Job {
            path: path.into(),
            local: None,
            target: testing::entry(path, EntryKind::File, Some(content), ShortId(7 << 56), 1),
            conflict_copy: false,
            verbatim: true,
            from: [7; 32],
        }
    }

    /// Content staged in `refs/` and in `tmp/`, as a fetch leaves it.
    fn staged(scene: &Scene, content: &[u8]) -> (Staged, Staged) {
        let refs = format!("{}/staged-ref", crate::fsutil::ref_shard(0));
        std::fs::write(scene.folder.fs.refs_dir().join(&refs), content).unwrap();
        std::fs::write(scene.folder.fs.tmp_dir().join("staged.tmp"), content).unwrap();
        (Staged::Refs(refs), Staged::Tmp("staged.tmp".into()))
    }

    #[test]
    fn a_file_that_appeared_where_nothing_was_is_never_replaced() {
        let scene = Scene::new();
        let session = scene.folder.fs.session().unwrap();
        let (refs, tmp) = staged(&scene, b"theirs");
        // Written after the last look found nothing at the path.
        std::fs::write(scene.root().join("a"), b"mine, just written").unwrap();
        for staged in [refs, tmp] {
            let job = job_for("a", b"theirs");
            let res = put_where_nothing_is(&session, &mut Parents::default(), &job, &staged);
            assert!(
                matches!(res, Err(ApplyError::LocalChange { .. })),
                "{staged:?}: {res:?}"
            );
            assert_eq!(scene.read("a"), b"mine, just written", "{staged:?}");
            assert!(
                staged.path(&scene.folder).exists(),
                "{staged:?} stays staged"
            );
        }
    }

    #[test]
    fn content_goes_where_nothing_is_as_a_link_of_the_store_file_parents_made() {
        let scene = Scene::new();
        let session = scene.folder.fs.session().unwrap();
        let (refs, tmp) = staged(&scene, b"theirs");
        let mut parents = Parents::default();
        let moved =
            put_where_nothing_is(&session, &mut parents, &job_for("d/e/a", b"theirs"), &refs);
        assert!(!moved.unwrap(), "linked, not moved");
        assert_eq!(scene.read("d/e/a"), b"theirs");
        let store_file = std::fs::metadata(refs.path(&scene.folder)).unwrap();
        assert_eq!(
            store_file.nlink(),
            2,
            "the store's link and the placed file"
        );
        // The next path in the same directory, through the open parent.
        let moved =
            put_where_nothing_is(&session, &mut parents, &job_for("d/e/b", b"theirs"), &tmp);
        assert!(!moved.unwrap());
        assert_eq!(scene.read("d/e/b"), b"theirs");
        assert!(
            !tmp.path(&scene.folder).exists(),
            "the temp file was renamed"
        );
    }

    #[test]
    fn parent_of_a_top_level_path_is_the_root() {
        assert_eq!(parent_dir("a.txt"), "");
        assert_eq!(parent_dir("d/e/a.txt"), "d/e");
    }
}
