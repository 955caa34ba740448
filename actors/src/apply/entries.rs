//! Entries without content: directories, symlinks, deletions.

use std::{io, sync::Arc};

use fleetsync_mesh::model::EntryKind;
use tracing::debug;

use super::{error::on_disk, keep, place, Applied, ApplyError, Job, Outcome};
use crate::{
    folder::{ApplyGuard, Folder},
    fsutil::{FolderFs, Parents},
    record::{applied_mode, disk_matches, safe_to_replace, DiskState, LocalStat},
    rt,
    versions::Reason,
};

/// What an entry left on disk: its stat (none for a deletion) and a note.
type Done = (Option<LocalStat>, &'static str);

/// Apply a directory, symlink or deletion.
pub(super) async fn apply_entry(folder: &Arc<Folder>, job: &Job) -> Outcome {
    let guard = ApplyGuard::new(folder, &job.path);
    let done = if job.target.deleted {
        delete(folder, job).await
    } else {
        match job.target.kind {
            EntryKind::Directory => make_dir(folder, job).await,
            EntryKind::Symlink => link(folder, job).await,
            EntryKind::File => unreachable!("files go through apply_files"),
        }
    };
    let (local, note) = done?;
    // Its own entry is here: the hasher may look at it again (after the
    // commit; the apply guard holds it off until then).
    folder.dir_arrived(&job.path);
    Ok(Applied::new(job, local, None, note, guard))
}

/// Directories, in order (parents first): each one that finds nothing or
/// a directory at its path is made in one blocking call with the others
/// of its run; one that finds something else in the way (and all after
/// it, so a parent is settled before its children) takes
/// [`apply_entry`]. A blocking hop per step, three per directory, cost
/// about 1.6 ms a directory under load: S3's 101 directories took 165 ms
/// before the first file could be placed.
pub(super) async fn apply_dirs(folder: &Arc<Folder>, jobs: Vec<Job>) -> Vec<(Job, Outcome)> {
    // Every path is held off the hasher from the start; each guard goes
    // with its outcome (or is let go for `apply_entry`, which takes its own).
    let mut guards: Vec<Option<ApplyGuard>> = jobs
        .iter()
        .map(|j| Some(ApplyGuard::new(folder, &j.path)))
        .collect();
    let jobs = Arc::new(jobs);
    let mut outcomes = Vec::with_capacity(jobs.len());
    while outcomes.len() < jobs.len() {
        let at = outcomes.len();
        let (f, all) = (folder.clone(), jobs.clone());
        let made = match rt::blocking(move || make_plain_dirs(&f, &all[at..])).await {
            Ok(Ok(made)) => made,
            // The root could not be opened or the task failed: the general
            // way says why, directory by directory.
            Ok(Err(_)) | Err(_) => Vec::new(),
        };
        for stat in made {
            let (job, guard) = (&jobs[outcomes.len()], guards[outcomes.len()].take());
            outcomes.push(stat.map(|stat| {
                folder.dir_arrived(&job.path);
                let guard = guard.expect("one guard a job");
                Applied::new(job, Some(stat), None, "created directory", guard)
            }));
        }
        if let Some(job) = jobs.get(outcomes.len()) {
            guards[outcomes.len()] = None;
            outcomes.push(apply_entry(folder, job).await);
        }
    }
    let jobs = Arc::try_unwrap(jobs).unwrap_or_else(|shared| (*shared).clone());
    jobs.into_iter().zip(outcomes).collect()
}

/// The leading run of `jobs` whose paths hold nothing or a directory,
/// made (blocking); stops before the first that needs more.
fn make_plain_dirs(
    folder: &Folder,
    jobs: &[Job],
) -> io::Result<Vec<Result<LocalStat, ApplyError>>> {
    let session = folder.fs.session()?;
    let mut parents = Parents::default();
    let mut made = Vec::new();
    for job in jobs {
        let disk = match session.lstat_in(&mut parents, &job.path) {
            Ok(d) => d,
            Err(e) => {
                made.push(Err(ApplyError::io("lstat", &job.path, e)));
                continue;
            }
        };
        let plain = match disk {
            DiskState::Missing => true,
            DiskState::Present(m) => m.kind == EntryKind::Directory,
            DiskState::Special => false,
        };
        if !plain {
            break;
        }
        let mode = applied_mode(EntryKind::Directory, job.target.mode, folder.cfg.umask.0);
        let now = session
            .mkdir_in(&mut parents, &job.path, mode)
            .map_err(|e| ApplyError::io("mkdir", &job.path, e));
        made.push(now.and_then(|d| match d {
            DiskState::Present(m) => Ok(m.stat),
            _ => Err(ApplyError::io(
                "mkdir",
                &job.path,
                io::Error::other("not a directory"),
            )),
        }));
    }
    Ok(made)
}

async fn lstat(folder: &Folder, path: &str) -> Result<DiskState, ApplyError> {
    let fs = folder.fs.clone();
    let p = path.to_string();
    on_disk("lstat", path, move || fs.lstat(&p)).await
}

/// The disk at the job's path, if replacing it loses no local change.
async fn replaceable(folder: &Folder, job: &Job) -> Result<DiskState, ApplyError> {
    let disk = lstat(folder, &job.path).await?;
    if !safe_to_replace(&disk, job.local.as_ref()) {
        return Err(ApplyError::LocalChange {
            path: job.path.clone(),
        });
    }
    Ok(disk)
}

/// The stat of what was just made at `rel`.
fn stat_after(fs: &FolderFs, rel: &str) -> io::Result<LocalStat> {
    match fs.lstat(rel)? {
        DiskState::Present(m) => Ok(m.stat),
        _ => Err(io::Error::other("vanished right after it was made")),
    }
}

async fn delete(folder: &Arc<Folder>, job: &Job) -> Result<Done, ApplyError> {
    let DiskState::Present(mut m) = replaceable(folder, job).await? else {
        return Ok((None, "deleted"));
    };
    if keep_before_delete(folder, job, DiskState::Present(m)).await? {
        // Keeping took a while: what is there now?
        let DiskState::Present(now) = replaceable(folder, job).await? else {
            return Ok((None, "deleted"));
        };
        m = now;
    }
    let f = folder.clone();
    let p = job.path.clone();
    let removal = on_disk("delete", &job.path, move || remove(&f, &p, m.kind));
    match removal.await? {
        Removal::Removed => {}
        Removal::OnlyIgnoredLeft => {
            debug!(folder = folder.id(), path = %job.path, "directory holds only ignored files; kept");
        }
        // Deletions of its contents are still on their way, or new local
        // files keep it alive (they reach the other nodes and bring it
        // back there).
        Removal::NotEmpty => {
            return Err(ApplyError::NotEmptyYet {
                path: job.path.clone(),
            })
        }
    }
    Ok((None, "deleted"))
}

/// Keep the file a delete removes as a version (see [`keep`]); true if
/// it tried.
async fn keep_before_delete(
    folder: &Arc<Folder>,
    job: &Job,
    disk: DiskState,
) -> Result<bool, ApplyError> {
    let f = folder.clone();
    let j = job.clone();
    on_disk("keep a version", &job.path, move || {
        Ok(keep::keep_replaced(
            &f,
            &f.fs.session()?,
            &j,
            &disk,
            Reason::Delete,
        ))
    })
    .await
}

enum Removal {
    Removed,
    /// A directory that holds only ignored files: they stay, and so does it.
    OnlyIgnoredLeft,
    NotEmpty,
}

/// Remove a file, link or empty directory (blocking).
fn remove(folder: &Folder, rel: &str, kind: EntryKind) -> io::Result<Removal> {
    let res = match kind {
        EntryKind::Directory => folder.fs.remove_dir(rel),
        _ => folder.fs.remove_file(rel),
    };
    match res {
        Ok(()) => Ok(Removal::Removed),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            if holds_only_ignored(folder, rel) {
                Ok(Removal::OnlyIgnoredLeft)
            } else {
                Ok(Removal::NotEmpty)
            }
        }
        Err(e) => Err(e),
    }
}

fn holds_only_ignored(folder: &Folder, rel: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(folder.fs.abs(rel)) else {
        return false;
    };
    rd.flatten().all(|e| {
        let child = format!("{rel}/{}", e.file_name().to_string_lossy());
        let dir = e.file_type().is_ok_and(|t| t.is_dir());
        folder.is_ignored(&child, dir)
    })
}

async fn make_dir(folder: &Arc<Folder>, job: &Job) -> Result<Done, ApplyError> {
    let disk = lstat(folder, &job.path).await?;
    match disk {
        DiskState::Missing => {}
        DiskState::Present(m) if m.kind == EntryKind::Directory => {}
        DiskState::Special => {
            return Err(ApplyError::InTheWay {
                path: job.path.clone(),
                what: "a special file",
            })
        }
        DiskState::Present(_) if !disk_matches(&disk, job.local.as_ref()) => {
            return Err(ApplyError::LocalChange {
                path: job.path.clone(),
            })
        }
        // A file or link we know is in the way.
        DiskState::Present(_) => clear_the_way(folder, job).await?,
    }
    // Whatever mode the sender's directory has: 0o777 through our umask.
    let mode = applied_mode(EntryKind::Directory, job.target.mode, folder.cfg.umask.0);
    let fs = folder.fs.clone();
    let p = job.path.clone();
    let stat = on_disk("mkdir", &job.path, move || {
        fs.mkdir(&p, mode)?;
        stat_after(&fs, &p)
    })
    .await?;
    Ok((Some(stat), "created directory"))
}

/// Move our losing file aside (conflict copy), or remove it.
async fn clear_the_way(folder: &Arc<Folder>, job: &Job) -> Result<(), ApplyError> {
    if job.conflict_copy {
        keep_conflict_copy(folder, job).await?;
        return Ok(());
    }
    let fs = folder.fs.clone();
    let p = job.path.clone();
    on_disk("replace with directory", &job.path, move || {
        fs.remove_file(&p)
    })
    .await
}

async fn keep_conflict_copy(folder: &Arc<Folder>, job: &Job) -> Result<(), ApplyError> {
    let f = folder.clone();
    let j = job.clone();
    let copy = rt::blocking(move || {
        let session =
            f.fs.session()
                .map_err(ApplyError::io_at("open root", &j.path))?;
        place::move_aside(&session, &j)
    })
    .await??;
    if let Some(copy) = copy {
        place::conflict_logged(folder, job, &copy);
    }
    Ok(())
}

async fn link(folder: &Arc<Folder>, job: &Job) -> Result<Done, ApplyError> {
    if let DiskState::Present(m) = replaceable(folder, job).await? {
        if m.kind == EntryKind::Directory {
            return Err(ApplyError::InTheWay {
                path: job.path.clone(),
                what: "a directory",
            });
        }
        if job.conflict_copy {
            keep_conflict_copy(folder, job).await?;
        }
    }
    let fs = folder.fs.clone();
    let p = job.path.clone();
    let target = job.target.symlink_target.clone().unwrap_or_default();
    let stat = on_disk("symlink", &job.path, move || {
        fs.symlink(&p, &target)?;
        stat_after(&fs, &p)
    })
    .await?;
    Ok((Some(stat), "linked"))
}
