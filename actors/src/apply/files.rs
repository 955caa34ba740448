//! The file pipeline, one batch at a time: preflight (may the path be
//! replaced?), acquire content, finish it (mode, mtime, durability), then
//! [`place`](super::place) it. A single big file is a batch of one that is
//! fsynced on its own ([`Flush::EachFile`]); small files share one `syncfs`
//! ([`Flush::Batch`]) after a prefetch of all their contents, except in a
//! batch of a few, where each is fsynced ([`Flush::Few`]).
//!
//! Every job gets exactly one outcome, whatever fails and wherever.

use crate::health::Health;
use std::{io, sync::Arc};

use fleetsync_mesh::{model::EntryKind, Hash};
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::warn;

use super::{
    acquire::{self, Staged},
    place::{self, Flush, Placed, Placement, Ready},
    Applied, ApplyError, Job, Outcome, Sources,
};
use crate::{
    content::Hold,
    folder::{ApplyGuard, Folder},
    fsutil::{finish_tmp, set_meta, Parents, Session},
    record::{applied_mode, safe_to_replace, DiskState, LocalStat, Record},
    rt,
};

/// Files prepared at once (content acquired, finished) in a batch.
const PREPARE_WIDTH: usize = 8;

/// Batches of at most this many files fsync each file instead of sharing
/// one `syncfs`: `syncfs` also writes out every other program's dirty data
/// on the filesystem, which on a busy machine takes 40–100 ms (measured
/// here during a build, against 1–15 ms for an fsync of a 1 KiB file),
/// and that wait sat between a small change and its arrival on disk. For
/// larger batches one `syncfs` stays cheaper than an fsync each.
const FSYNC_EACH_MAX: usize = 8;

/// How a batch of `files` is made durable: a few files one by one.
fn flush_for(flush: Flush, files: usize) -> Flush {
    if flush == Flush::Batch && files <= FSYNC_EACH_MAX {
        Flush::Few
    } else {
        flush
    }
}

/// What preparing a job gave.
enum Prepared {
    /// Only metadata changed, and it is set: nothing to place.
    MetadataSet {
        stat: LocalStat,
        refs: Option<String>,
    },
    Ready(Ready),
}

type Preparing = (Job, ApplyGuard, Result<Prepared, ApplyError>);

/// Apply file jobs; one outcome per job, in no particular order.
pub async fn apply_files(
    folder: &Arc<Folder>,
    jobs: Vec<Job>,
    sources: &Sources,
    flush: Flush,
) -> Vec<(Job, Outcome)> {
    if flush_for(flush, jobs.len()) != Flush::EachFile {
        prefetch(folder, &jobs, sources).await;
    }
    apply_prefetched(folder, jobs, sources, flush).await
}

/// Fetch the content of a batch of small files ahead of
/// [`apply_prefetched`], which takes what arrived (parked by hash) and
/// fetches the rest one by one. A receiver fetches its next batch while
/// it places this one.
pub async fn prefetch(folder: &Arc<Folder>, jobs: &[Job], sources: &Sources) {
    acquire::prefetch(folder, jobs, sources).await;
}

/// [`apply_files`] after [`prefetch`] (or without one: content that was
/// not parked is acquired job by job).
pub async fn apply_prefetched(
    folder: &Arc<Folder>,
    jobs: Vec<Job>,
    sources: &Sources,
    flush: Flush,
) -> Vec<(Job, Outcome)> {
    let flush = flush_for(flush, jobs.len());
    let mut out = Vec::with_capacity(jobs.len());
    let mut ready = Vec::new();
    for (job, guard, prepared) in prepare_all(folder, jobs, sources, flush).await {
        match prepared {
            // The job's one guard goes with its outcome, to the commit.
            Ok(Prepared::MetadataSet { stat, refs }) => {
                let applied = Applied::new(&job, Some(stat), refs, "updated metadata", guard);
                out.push((job, Ok(applied)));
            }
            Ok(Prepared::Ready(r)) => ready.push((job, guard, r)),
            Err(e) => out.push((job, Err(e))),
        }
    }
    if !ready.is_empty() {
        out.extend(place_ready(folder, ready, flush, &sources.health).await);
    }
    out
}

/// Prepare every job: those whose content a prefetch parked in one
/// blocking call (a few hops per file would dominate small files), the
/// rest a few at a time.
async fn prepare_all(
    folder: &Arc<Folder>,
    jobs: Vec<Job>,
    sources: &Sources,
    flush: Flush,
) -> Vec<Preparing> {
    // One job per hash can take parked content; a duplicate (the round
    // never sends one) takes the general path.
    let mut hashes = std::collections::HashSet::new();
    let (parked, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
        flush != Flush::EachFile && content_is_parked(folder, j) && hashes.insert(j.target.hash)
    });
    let mut out = prepare_parked(folder, parked, flush != Flush::Batch).await;
    let others: Vec<Preparing> = n0_future::stream::iter(rest)
        .map(|job| async move {
            let guard = ApplyGuard::new(folder, &job.path);
            let prepared = prepare_one(folder, &job, sources, flush).await;
            (job, guard, prepared)
        })
        .buffered_unordered(PREPARE_WIDTH)
        .collect()
        .await;
    out.extend(others);
    out
}

/// Parked content and not a metadata-only change (those take the general
/// path, which handles them without content).
fn content_is_parked(folder: &Folder, job: &Job) -> bool {
    let parked = job.target.hash.is_some_and(|h| folder.is_parked(&h));
    parked && !same_content(job.local.as_ref(), job)
}

fn same_content(local: Option<&Record>, job: &Job) -> bool {
    Record::live(local)
        .is_some_and(|l| l.entry.kind == EntryKind::File && l.entry.hash == job.target.hash)
}

fn hash_of(job: &Job) -> Result<[u8; 32], ApplyError> {
    job.target.hash.ok_or_else(|| ApplyError::NoHash {
        path: job.path.clone(),
    })
}

/// Check the path, get the content, finish it.
async fn prepare_one(
    folder: &Arc<Folder>,
    job: &Job,
    sources: &Sources,
    flush: Flush,
) -> Result<Prepared, ApplyError> {
    let f = folder.clone();
    let j = job.clone();
    let disk =
        rt::blocking(move || preflight(&session_for(&f, &j.path)?, &mut Parents::default(), &j))
            .await??;
    if let Some(set) = update_metadata_only(folder, job, &disk).await? {
        return Ok(set);
    }
    let hash = hash_of(job)?;
    let staged = if Hash::from_bytes(hash) == Hash::EMPTY {
        acquire::empty(folder, &job.path).await?
    } else {
        acquire::acquire(folder, job, Hash::from_bytes(hash), sources).await?
    };
    let f = folder.clone();
    let j = job.clone();
    let sync = flush != Flush::Batch;
    let ready = rt::blocking(move || finish_or_abandon(&f, staged, &j, disk, sync)).await?;
    Ok(Prepared::Ready(ready?))
}

/// Finish staged content (mode, mtime, fsync when `sync`) into a [`Ready`];
/// if that fails, the content is abandoned (parked or removed). Blocking.
fn finish_or_abandon(
    folder: &Folder,
    staged: Staged,
    job: &Job,
    disk: DiskState,
    sync: bool,
) -> Result<Ready, ApplyError> {
    let hash = hash_of(job)?;
    let staged = staged.apart_from_store(folder, &job.path);
    match finish(folder, &staged, job, sync) {
        Ok(stat) => Ok(Ready {
            staged,
            disk,
            hash,
            stat,
        }),
        Err(e) => {
            staged.abandon(folder, hash);
            Err(e)
        }
    }
}

fn session_for(folder: &Folder, path: &str) -> Result<Session, ApplyError> {
    folder
        .fs
        .session()
        .map_err(ApplyError::io_at("open folder root", path))
}

/// May a file be placed at the job's path? Returns what the disk shows
/// (the snapshot placing re-checks against). An empty directory in the
/// way is removed first (blocking).
fn preflight(session: &Session, parents: &mut Parents, job: &Job) -> Result<DiskState, ApplyError> {
    let disk = session
        .lstat_in(parents, &job.path)
        .map_err(ApplyError::io_at("lstat", &job.path))?;
    if !safe_to_replace(&disk, job.local.as_ref()) {
        return Err(ApplyError::LocalChange {
            path: job.path.clone(),
        });
    }
    if matches!(disk, DiskState::Present(m) if m.kind == EntryKind::Directory) {
        session.remove_dir(&job.path).map_err(|e| {
            match ApplyError::io("remove", &job.path, e) {
                ApplyError::Io { path, source, .. } => {
                    ApplyError::DirectoryInTheWay { path, source }
                }
                escape => escape,
            }
        })?;
        return Ok(DiskState::Missing);
    }
    Ok(disk)
}

/// Same content already here: set mode and mtime in place.
async fn update_metadata_only(
    folder: &Arc<Folder>,
    job: &Job,
    disk: &DiskState,
) -> Result<Option<Prepared>, ApplyError> {
    let on_disk_file = matches!(disk, DiskState::Present(m) if m.kind == EntryKind::File);
    if !on_disk_file || !same_content(job.local.as_ref(), job) {
        return Ok(None);
    }
    let fs = folder.fs.clone();
    let p = job.path.clone();
    let (mode, mtime) = (file_mode(folder, job), job.target.mtime_ns);
    let stat = rt::blocking(move || -> io::Result<LocalStat> {
        set_meta(&fs, &p, mode, mtime)?;
        match fs.lstat(&p)? {
            DiskState::Present(m) => Ok(m.stat),
            _ => Err(io::Error::other("file vanished")),
        }
    })
    .await?
    .map_err(ApplyError::io_at("set metadata", &job.path))?;
    let refs = job.local.as_ref().and_then(|l| l.refs.clone());
    Ok(Some(Prepared::MetadataSet { stat, refs }))
}

/// The mode the job's file gets here: the sender's exec bits through the
/// folder's umask ([`applied_mode`]).
fn file_mode(folder: &Folder, job: &Job) -> u32 {
    applied_mode(EntryKind::File, job.target.mode, folder.cfg.umask.0)
}

/// Mode and mtime on the staged file, fsync when asked (blocking).
fn finish(
    folder: &Folder,
    staged: &Staged,
    job: &Job,
    sync: bool,
) -> Result<LocalStat, ApplyError> {
    let (mode, mtime) = (file_mode(folder, job), job.target.mtime_ns);
    let stat = finish_tmp(&staged.path(folder), mode, mtime, sync)
        .map_err(ApplyError::io_at("finish", &job.path))?;
    same_size(job, stat.size)?;
    Ok(stat)
}

/// The staged content is verified against the entry's hash, so its length
/// is the blob's true size: an entry announcing another size is garbage
/// (a hostile member, or a broken one) and is not applied.
fn same_size(job: &Job, actual: u64) -> Result<(), ApplyError> {
    if actual == job.target.size {
        return Ok(());
    }
    Err(ApplyError::SizeMismatch {
        path: job.path.clone(),
        announced: job.target.size,
        actual,
    })
}

/// Parked content for each job, checked and finished in one blocking call.
async fn prepare_parked(folder: &Arc<Folder>, jobs: Vec<Job>, sync: bool) -> Vec<Preparing> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let guards: Vec<ApplyGuard> = jobs
        .iter()
        .map(|j| ApplyGuard::new(folder, &j.path))
        .collect();
    let f = folder.clone();
    let batch = jobs.clone();
    let results = rt::blocking(move || -> io::Result<Vec<Result<Ready, ApplyError>>> {
        let session = f.fs.session()?;
        let mut parents = Parents::default();
        Ok(batch
            .iter()
            .map(|job| prepare_from_parked(&f, &session, &mut parents, job, sync))
            .collect())
    })
    .await;
    let results = match results {
        Ok(Ok(rs)) => rs,
        Ok(Err(e)) => whole_batch(&jobs, Arc::new(e)),
        Err(e) => whole_batch(&jobs, Arc::new(e)),
    };
    jobs.into_iter()
        .zip(guards)
        .zip(results)
        .map(|((job, guard), r)| (job, guard, r.map(Prepared::Ready)))
        .collect()
}

/// The same error for every job of a batch that failed as a whole (the
/// folder root or the filesystem sync failed, or the task panicked).
fn whole_batch<T>(
    jobs: &[Job],
    cause: Arc<dyn std::error::Error + Send + Sync>,
) -> Vec<Result<T, ApplyError>> {
    jobs.iter()
        .map(|job| {
            Err(ApplyError::Batch {
                path: job.path.clone(),
                source: cause.clone(),
            })
        })
        .collect()
}

/// Preflight and finish one job whose content is parked (blocking).
fn prepare_from_parked(
    folder: &Folder,
    session: &Session,
    parents: &mut Parents,
    job: &Job,
    sync: bool,
) -> Result<Ready, ApplyError> {
    let hash = hash_of(job)?;
    let name = folder
        .unpark(&hash)
        .ok_or_else(|| ApplyError::ContentGone {
            path: job.path.clone(),
        })?;
    let staged = Staged::Refs(name);
    match preflight(session, parents, job) {
        Ok(disk) => finish_or_abandon(folder, staged, job, disk, sync),
        Err(e) => {
            staged.abandon(folder, hash);
            Err(e)
        }
    }
}

/// Place every ready file in one blocking call, then finish each outcome.
async fn place_ready(
    folder: &Arc<Folder>,
    ready: Vec<(Job, ApplyGuard, Ready)>,
    flush: Flush,
    health: &Health,
) -> Vec<(Job, Outcome)> {
    let plan: Vec<(Job, Ready)> = ready
        .iter()
        .map(|(j, _, r)| (j.clone(), r.clone()))
        .collect();
    let jobs: Vec<Job> = plan.iter().map(|(j, _)| j.clone()).collect();
    let f = folder.clone();
    let placed = rt::blocking(move || place::place_all(&f, &plan, flush)).await;
    let placed: Vec<Placement> = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => not_placed(whole_batch(&jobs, Arc::new(e))),
        Err(e) => not_placed(whole_batch(&jobs, Arc::new(e))),
    };
    let mut out = Vec::with_capacity(ready.len());
    for ((job, guard, r), placement) in ready.into_iter().zip(placed) {
        let outcome = match placement {
            Placement::Placed(p) => Ok(placed_file(folder, &job, guard, &r, p, health).await),
            Placement::NotPlaced(e) => {
                r.staged.abandon(folder, r.hash);
                Err(e)
            }
            Placement::NotDurable(e) => Err(e),
        };
        out.push((job, outcome));
    }
    out
}

fn not_placed(errors: Vec<Result<(), ApplyError>>) -> Vec<Placement> {
    errors
        .into_iter()
        .map(|r| match r {
            Ok(()) => unreachable!("whole_batch gives only errors"),
            Err(e) => Placement::NotPlaced(e),
        })
        .collect()
}

/// The record of a placed file, and the store's reference to it.
async fn placed_file(
    folder: &Folder,
    job: &Job,
    guard: ApplyGuard,
    ready: &Ready,
    placed: Placed,
    health: &Health,
) -> Applied {
    let mut refs = ready.staged.refs_name();
    let mut hold = None;
    if placed.moved {
        // The refs link is gone (moved into place): reference the path.
        refs = None;
        hold = reimport(folder, &job.path, health).await;
    }
    let note = match &placed.copy {
        Some(copy) => {
            place::conflict_logged(folder, job, copy);
            format!("conflict: kept ours as {copy}; applied")
        }
        None => "applied".to_string(),
    };
    folder
        .status
        .files_in
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut applied = Applied::new(job, Some(ready.stat), refs, &note, guard);
    applied.hold = hold;
    applied
}

/// Hashing a placed file again is long for a big one: progress of the
/// receiver, like the transfer before it.
async fn reimport(folder: &Folder, path: &str, health: &Health) -> Option<Hold> {
    let progress = |_| health.progress();
    match folder.content.import(folder.fs.abs(path), &progress).await {
        Ok((_, hold)) => Some(hold),
        Err(e) => {
            // Served again once the hasher re-imports it on its next look.
            warn!(folder = folder.id(), %path, "cannot reference the placed file in the store: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_files_are_fsynced_one_by_one_and_many_share_one_syncfs() {
        assert_eq!(flush_for(Flush::Batch, 1), Flush::Few);
        assert_eq!(flush_for(Flush::Batch, FSYNC_EACH_MAX), Flush::Few);
        assert_eq!(flush_for(Flush::Batch, FSYNC_EACH_MAX + 1), Flush::Batch);
        assert_eq!(flush_for(Flush::EachFile, 500), Flush::EachFile);
    }

    #[test]
    fn a_batch_failing_as_a_whole_fails_each_of_its_jobs_with_the_cause() {
        let job = |p: &str| Job {
            path: p.into(),
            local: None,
            target: crate::testing::entry(p, EntryKind::File, Some(b"x"), crate::testing::ME, 1),
            conflict_copy: false,
            verbatim: true,
            from: [0; 32],
        };
        let cause = Arc::new(io::Error::other("syncfs failed"));
        let out: Vec<Result<(), ApplyError>> = whole_batch(&[job("a"), job("b")], cause);
        assert_eq!(out.len(), 2);
        for (r, p) in out.iter().zip(["a", "b"]) {
            let e = r.as_ref().unwrap_err();
            assert!(matches!(e, ApplyError::Batch { path, .. } if path == p));
            let source = std::error::Error::source(e).map(|s| s.to_string());
            assert_eq!(source.as_deref(), Some("syncfs failed"));
        }
    }
}
