//! Putting one remote entry on disk, safely. Used by the receiver.
//!
//! For file content: make sure the blob is in the store (already there when
//! the content exists locally under another name, e.g. after a rename;
//! otherwise fetched from a peer, verified chunk by chunk against its
//! BLAKE3 hash, resuming whatever a previous attempt left), move it into a
//! temp file in `<root>/.fleetsync/tmp`, set mode and mtime, fsync, check
//! that the local path still holds what the index says (else the user
//! edited it meanwhile: back off and let the hasher turn the edit into a
//! conflict), keep a conflict copy if our content lost, then rename into
//! place and fsync the directory. Finally re-reference the placed file in
//! the store so we can serve it onward.

use std::sync::Arc;

use fleetsync_mesh::{
    model::{EntryKind, FileEntry},
    EndpointId, Hash,
};
use tracing::{debug, warn};

use crate::{
    content::Hold,
    folder::{ApplyGuard, Folder},
    fsutil::{finish_tmp, hash_file, is_escape, set_meta, FolderFs},
    identity_short,
    record::DiskState,
    record::{LocalStat, Record},
    rt,
    rules::conflict_name,
};

/// One decided change to carry out.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: String,
    pub local: Option<Record>,
    pub target: FileEntry,
    pub conflict_copy: bool,
    pub verbatim: bool,
    pub from: [u8; 32],
}

#[derive(Debug)]
pub enum Outcome {
    Applied {
        record: Box<Record>,
        note: String,
        /// Protects the placed file's store entry until it is committed.
        tag: Option<Hold>,
        /// Keeps the hasher off the path until the record is committed.
        guard: Option<ApplyGuard>,
    },
    /// The local path changed under us (an edit not yet indexed).
    LocalRace,
    /// Could not do it now (no peer has the content, disk error): retry later.
    Retry(String),
    /// Waits for other entries to land first (the deletions of a
    /// directory's contents): retried soon, not with the long backoff.
    NotYet(String),
    /// Never doing this (the path leads through a symlink): drop it.
    Reject(String),
}

fn retry<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Outcome + '_ {
    move |e| Outcome::Retry(format!("{what}: {e}"))
}

/// Does the disk still hold what the index recorded for this path?
fn disk_matches(disk: &DiskState, local: &Option<Record>) -> bool {
    let live = local.as_ref().filter(|r| !r.entry.deleted);
    match (disk, live) {
        (DiskState::Missing, None) => true,
        (DiskState::Missing, Some(_)) => true, // already gone: nothing to lose
        (DiskState::Special, _) => false,
        (DiskState::Present(_), None) => false,
        (DiskState::Present(m), Some(r)) => match m.kind {
            EntryKind::Directory => r.entry.kind == EntryKind::Directory,
            _ => r.entry.kind == m.kind && r.local == Some(m.stat),
        },
    }
}

async fn lstat(fs: &FolderFs, path: &str) -> Result<DiskState, Outcome> {
    let fs = fs.clone();
    let p = path.to_string();
    match rt::blocking(move || fs.lstat(&p)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) if is_escape(&e) => Err(Outcome::Reject(e.to_string())),
        Ok(Err(e)) => Err(Outcome::Retry(format!("{path}: {e}"))),
        Err(e) => Err(Outcome::Retry(e.to_string())),
    }
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Outcome> {
    match rt::blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_escape(&e) => Err(Outcome::Reject(e.to_string())),
        Ok(Err(e)) => Err(Outcome::Retry(format!("{what}: {e}"))),
        Err(e) => Err(Outcome::Retry(format!("{what}: {e}"))),
    }
}

fn applied(job: &Job, local: Option<LocalStat>, refs: Option<String>, note: &str) -> Outcome {
    let from = identity_short(&job.from);
    Outcome::Applied {
        record: Box::new(Record {
            entry: job.target.clone(),
            local,
            local_changed: false,
            received_from: job.verbatim.then_some(from),
            refs,
        }),
        note: format!("{note} from {from}"),
        tag: None,
        guard: None,
    }
}

/// Move our losing content aside as a conflict copy (a rename, no copy).
async fn keep_conflict_copy(ctx: &Folder, job: &Job) -> Result<Option<String>, Outcome> {
    if job.local.as_ref().is_none_or(|r| r.entry.deleted) {
        return Ok(None);
    }
    let fs = ctx.fs.clone();
    let j = job.clone();
    let name = blocking("conflict copy", move || {
        conflict_copy_sync(&fs.session()?, &j)
    })
    .await?;
    let Some(name) = name else { return Ok(None) };
    conflict_logged(ctx, job, &name);
    Ok(Some(name))
}

/// Rename our losing file to its conflict-copy name (blocking).
fn conflict_copy_sync(
    session: &crate::fsutil::Session,
    job: &Job,
) -> std::io::Result<Option<String>> {
    let Some(l) = job.local.as_ref().filter(|r| !r.entry.deleted) else {
        return Ok(None);
    };
    let base = conflict_name(&job.path, l.entry.mtime_ns, l.entry.modified_by);
    for n in 0..10 {
        let candidate = if n == 0 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        match session.rename_noreplace(&job.path, &candidate) {
            Ok(()) => return Ok(Some(candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many conflict copies"))
}

fn conflict_logged(ctx: &Folder, job: &Job, name: &str) {
    warn!(
        folder = ctx.id(),
        path = %job.path,
        copy = %name,
        "conflict: kept the losing version as a conflict copy"
    );
    ctx.status
        .conflicts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

pub async fn apply(ctx: Arc<Folder>, job: Job, providers: Vec<EndpointId>) -> Outcome {
    let guard = ApplyGuard::new(&ctx, &job.path);
    let res = if job.target.deleted {
        apply_delete(&ctx, &job).await
    } else {
        match job.target.kind {
            EntryKind::Directory => apply_dir(&ctx, &job).await,
            EntryKind::Symlink => apply_symlink(&ctx, &job).await,
            EntryKind::File => apply_file(&ctx, &job, &providers).await,
        }
    };
    let mut out = res.unwrap_or_else(|o| o);
    if let Outcome::Applied { guard: g, .. } = &mut out {
        *g = Some(guard);
    }
    out
}

async fn apply_delete(ctx: &Folder, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    if !disk_matches(&disk, &job.local) {
        return Err(Outcome::LocalRace);
    }
    if let DiskState::Present(m) = disk {
        let fs = ctx.fs.clone();
        let p = job.path.clone();
        let res = rt::blocking(move || match m.kind {
            EntryKind::Directory => fs.remove_dir(&p),
            _ => fs.remove_file(&p),
        })
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
        if let Err(e) = res {
            if e.kind() != std::io::ErrorKind::DirectoryNotEmpty {
                return Err(Outcome::Retry(format!("delete {}: {e}", job.path)));
            }
            // Only ignored files left: they stay, and so does the directory.
            // Anything else (deletions of its contents still on their way,
            // or new local files) means: not yet. If new files keep it
            // alive, they reach the other nodes and bring it back there.
            let only_ignored = std::fs::read_dir(ctx.fs.abs(&job.path))
                .map(|rd| {
                    rd.flatten().all(|e| {
                        let rel = format!("{}/{}", job.path, e.file_name().to_string_lossy());
                        let dir = e.file_type().is_ok_and(|t| t.is_dir());
                        ctx.is_ignored(&rel, dir)
                    })
                })
                .unwrap_or(false);
            if !only_ignored {
                return Err(Outcome::NotYet(format!(
                    "{}: directory not empty yet",
                    job.path
                )));
            }
            debug!(folder = ctx.id(), path = %job.path, "directory holds only ignored files; kept");
        }
    }
    Ok(applied(job, None, None, "deleted"))
}

async fn apply_dir(ctx: &Folder, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    match disk {
        DiskState::Present(m) if m.kind == EntryKind::Directory => {}
        DiskState::Missing => {}
        _ if !disk_matches(&disk, &job.local) => return Err(Outcome::LocalRace),
        DiskState::Present(_) => {
            // A file or link we know is in the way.
            if job.conflict_copy {
                keep_conflict_copy(ctx, job).await?;
            } else {
                let fs = ctx.fs.clone();
                let p = job.path.clone();
                blocking("replace with directory", move || fs.remove_file(&p)).await?;
            }
        }
        DiskState::Special => {
            return Err(Outcome::Retry(format!(
                "{}: special file in the way",
                job.path
            )))
        }
    }
    let fs = ctx.fs.clone();
    let p = job.path.clone();
    let mode = if job.target.mode & 0o777 == 0 {
        0o755
    } else {
        job.target.mode
    };
    let stat = blocking("mkdir", move || {
        fs.mkdir(&p, mode)?;
        match fs.lstat(&p)? {
            DiskState::Present(m) => Ok(m.stat),
            _ => Err(std::io::Error::other("directory vanished")),
        }
    })
    .await?;
    Ok(applied(job, Some(stat), None, "created directory"))
}

async fn apply_symlink(ctx: &Folder, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    if !disk_matches(&disk, &job.local) && !matches!(disk, DiskState::Missing) {
        return Err(Outcome::LocalRace);
    }
    if let DiskState::Present(m) = disk {
        if m.kind == EntryKind::Directory {
            return Err(Outcome::Retry(format!(
                "{}: a directory is in the way of a symlink",
                job.path
            )));
        }
        if job.conflict_copy {
            keep_conflict_copy(ctx, job).await?;
        }
    }
    let fs = ctx.fs.clone();
    let p = job.path.clone();
    let target = job.target.symlink_target.clone().unwrap_or_default();
    let stat = blocking("symlink", move || {
        fs.symlink(&p, &target)?;
        match fs.lstat(&p)? {
            DiskState::Present(m) => Ok(m.stat),
            _ => Err(std::io::Error::other("symlink vanished")),
        }
    })
    .await?;
    Ok(applied(job, Some(stat), None, "linked"))
}

async fn apply_file(
    ctx: &Arc<Folder>,
    job: &Job,
    providers: &[EndpointId],
) -> Result<Outcome, Outcome> {
    match prepare_file(ctx, job, providers, true).await? {
        Prepared::Done(o) => Ok(o),
        Prepared::Staged(st) => place_file(ctx, job, st, true).await,
    }
}

/// Many small files at once, with one `syncfs` for all their contents
/// instead of an fsync each, and one fsync per directory for the renames.
/// Same guarantees as [`apply`]: every file is old or new after a crash.
pub async fn apply_batch(
    ctx: Arc<Folder>,
    jobs: Vec<Job>,
    providers: Vec<EndpointId>,
) -> Vec<(Job, Outcome)> {
    use n0_future::{BufferedStreamExt, StreamExt};
    let t0 = std::time::Instant::now();
    let n = jobs.len();
    prefetch(&ctx, &jobs, &providers).await;
    let t_fetched = t0.elapsed();
    // Content that arrived in this batch's prefetch is staged already: check
    // and finish all of those in one blocking call instead of a few hops per
    // file. The rest (content found elsewhere, metadata-only changes, fetch
    // failures) takes the general path.
    let (fast, slow): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
        let staged = j.target.hash.is_some_and(|h| ctx.is_parked(&h));
        let same = j
            .local
            .as_ref()
            .is_some_and(|l| !l.entry.deleted && l.entry.hash == j.target.hash);
        staged && !same
    });
    let guards: Vec<ApplyGuard> = fast
        .iter()
        .map(|j| ApplyGuard::new(&ctx, &j.path))
        .collect();
    let c = ctx.clone();
    // If this fails as a whole, the jobs simply stay pending for the next round.
    let fast_staged = match rt::blocking(move || stage_fast(&c, fast)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            warn!(folder = ctx.id(), "staging a batch failed: {e}");
            Vec::new()
        }
        Err(e) => {
            warn!(folder = ctx.id(), "staging a batch failed: {e}");
            Vec::new()
        }
    };
    let mut early = Vec::new();
    let mut ready = Vec::new();
    for ((job, r), guard) in fast_staged.into_iter().zip(guards) {
        match r {
            Ok(st) => ready.push((job, guard, Ok(Prepared::Staged(st)))),
            Err(o) => early.push((job, o)),
        }
    }
    let mut prepared: Vec<_> = n0_future::stream::iter(slow)
        .map(|job| {
            let ctx = ctx.clone();
            let providers = providers.clone();
            async move {
                let guard = ApplyGuard::new(&ctx, &job.path);
                let r = prepare_file(&ctx, &job, &providers, false).await;
                (job, guard, r)
            }
        })
        .buffered_unordered(APPLY_WIDTH)
        .collect::<Vec<_>>()
        .await;
    prepared.extend(ready);
    let mut out = Vec::with_capacity(prepared.len() + early.len());
    out.extend(early);
    let mut staged = Vec::new();
    for (job, guard, r) in prepared {
        match r {
            Ok(Prepared::Staged(st)) => staged.push((job, guard, st)),
            Ok(Prepared::Done(o)) => out.push((job, with_guard(o, guard))),
            Err(o) => out.push((job, o)),
        }
    }
    if staged.is_empty() {
        return out;
    }
    let t_prepared = t0.elapsed();
    // One blocking call for the rest of the batch: sync the staged
    // contents, then per file re-check, keep a conflict copy if needed,
    // rename into place; finally make the renames durable.
    let c = ctx.clone();
    let plan: Vec<(Job, Stage)> = staged
        .iter()
        .map(|(j, _, st)| (j.clone(), st.clone()))
        .collect();
    let placed = rt::blocking(move || place_batch(&c, plan)).await;
    let placed = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let why = format!("placing a batch: {e}");
            for (job, _, st) in staged {
                abandon(&ctx, &job, &st);
                out.push((job, Outcome::Retry(why.clone())));
            }
            return out;
        }
        Err(e) => {
            for (job, _, st) in staged {
                abandon(&ctx, &job, &st);
                out.push((job, Outcome::Retry(e.to_string())));
            }
            return out;
        }
    };
    let t_placed = t0.elapsed();
    for ((job, guard, st), res) in staged.into_iter().zip(placed) {
        let o = match res {
            PlaceResult::Placed { moved, copy } => {
                let mut note = "applied".to_string();
                if let Some(copy) = copy {
                    conflict_logged(&ctx, &job, &copy);
                    note = format!("conflict: kept ours as {copy}; applied");
                }
                let mut refs = match &st.staged {
                    Staged::Refs(n) => Some(n.clone()),
                    Staged::Tmp(_) => None,
                };
                let mut tag = None;
                if moved {
                    refs = None;
                    tag = reimport(&ctx, &job.path).await;
                }
                ctx.status
                    .files_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut o = applied(&job, Some(st.stat), refs, &note);
                if let Outcome::Applied { tag: t, .. } = &mut o {
                    *t = tag;
                }
                o
            }
            PlaceResult::Failed(o) => {
                abandon(&ctx, &job, &st);
                o
            }
        };
        out.push((job, with_guard(o, guard)));
    }
    debug!(
        folder = ctx.id(),
        files = n,
        fetched = ?t_fetched,
        prepared = ?t_prepared,
        placed = ?t_placed,
        total = ?t0.elapsed(),
        "applied a batch"
    );
    out
}

/// Fetch the content of a batch of small files with one request per peer,
/// straight into files that become `refs` links the store then references
/// (no per-blob store bookkeeping on the way in). Whatever does not arrive
/// is fetched file by file by [`stage`].
async fn prefetch(ctx: &Arc<Folder>, jobs: &[Job], providers: &[EndpointId]) {
    use std::collections::BTreeMap;

    use n0_future::{BufferedStreamExt, StreamExt};
    // Content of files deleted a moment ago (a rename's other half) is
    // reused, not downloaded.
    let mut reuse: Vec<[u8; 32]> = jobs
        .iter()
        .filter_map(|j| j.target.hash)
        .filter(|h| *h != *Hash::EMPTY.as_bytes() && ctx.has_released(h))
        .collect();
    reuse.sort_unstable();
    reuse.dedup();
    if !reuse.is_empty() {
        let c = ctx.clone();
        let _ = rt::blocking(move || {
            for h in reuse {
                if let Some(name) = revive(&c, &h) {
                    c.park(h, name);
                }
            }
        })
        .await;
    }
    let mut want: BTreeMap<EndpointId, Vec<(Hash, std::path::PathBuf)>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for job in jobs {
        let Some(h) = job.target.hash.map(Hash::from_bytes) else {
            continue;
        };
        if h == Hash::EMPTY
            || !seen.insert(h)
            || ctx.is_parked(h.as_bytes())
            || ctx.content.has(h).await.unwrap_or(false)
        {
            continue;
        }
        let from = providers
            .iter()
            .find(|p| *p.as_bytes() == job.from)
            .or(providers.first());
        if let Some(p) = from {
            let tmp = ctx.fs.tmp_dir().join(ctx.fs.new_tmp_name());
            want.entry(*p).or_default().push((h, tmp));
        }
    }
    // A few requests in parallel: the peer serves each on its own stream.
    let mut requests = Vec::new();
    for (peer, items) in want {
        let per = items.len().div_ceil(FETCH_STREAMS).max(1);
        for chunk in items.chunks(per) {
            requests.push((peer, chunk.to_vec()));
        }
    }
    let arrived: Vec<(Hash, std::path::PathBuf)> = n0_future::stream::iter(requests)
        .map(|(peer, items)| async move {
            let n = items.len();
            let paths = items.clone();
            let got = match ctx.content.fetch_many(peer, items).await {
                Ok((got, bytes)) => {
                    ctx.status
                        .bytes_in
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    got
                }
                Err(e) => {
                    debug!(
                        folder = ctx.id(),
                        files = n,
                        "batch fetch failed ({e}); fetching one by one"
                    );
                    Vec::new()
                }
            };
            let got: std::collections::HashSet<Hash> = got.into_iter().collect();
            let mut ok = Vec::new();
            for (h, tmp) in paths {
                if got.contains(&h) {
                    ok.push((h, tmp));
                } else {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            ok
        })
        .buffered_unordered(FETCH_STREAMS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    // Verified while streaming; each becomes a refs link the store references.
    n0_future::stream::iter(arrived)
        .map(|(h, tmp)| async move {
            let name = format!("{}-{:08x}", h.to_hex(), crate::fsutil::random_u32());
            let refs = ctx.fs.refs_dir().join(&name);
            if std::fs::rename(&tmp, &refs).is_err() {
                let _ = std::fs::remove_file(&tmp);
                return;
            }
            let imported = ctx.content.import(refs.clone()).await;
            match imported {
                Ok((got, _hold)) if got == h => ctx.park(*h.as_bytes(), name),
                _ => {
                    let _ = std::fs::remove_file(&refs);
                }
            }
        })
        .buffered_unordered(APPLY_WIDTH)
        .collect::<Vec<()>>()
        .await;
}

/// Parallel batch downloads per peer.
const FETCH_STREAMS: usize = 4;

/// Stage jobs whose content a prefetch left in `refs/`: check the path
/// still holds what the index says, set mode and mtime (no fsync: the
/// batch syncs once). Blocking.
fn stage_fast(ctx: &Folder, jobs: Vec<Job>) -> std::io::Result<Vec<(Job, Result<Stage, Outcome>)>> {
    let session = ctx.fs.session()?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let hash = job.target.hash.expect("staged jobs have a hash");
        let Some(name) = ctx.unpark(&hash) else {
            out.push((job, Err(Outcome::Retry("staged content went away".into()))));
            continue;
        };
        let disk = match session.lstat(&job.path) {
            Ok(n) => n,
            Err(e) => {
                ctx.park(hash, name);
                let o = if is_escape(&e) {
                    Outcome::Reject(e.to_string())
                } else {
                    Outcome::Retry(format!("{}: {e}", job.path))
                };
                out.push((job, Err(o)));
                continue;
            }
        };
        if !disk_matches(&disk, &job.local)
            || matches!(disk, DiskState::Present(m) if m.kind == EntryKind::Directory)
        {
            ctx.park(hash, name);
            out.push((job, Err(Outcome::LocalRace)));
            continue;
        }
        let path = ctx.fs.refs_dir().join(&name);
        match finish_tmp(&path, job.target.mode, job.target.mtime_ns, false) {
            Ok(stat) => {
                let st = Stage {
                    staged: Staged::Refs(name),
                    disk,
                    hash,
                    stat,
                };
                out.push((job, Ok(st)));
            }
            Err(e) => {
                ctx.park(hash, name);
                let why = format!("finish {}: {e}", job.path);
                out.push((job, Err(Outcome::Retry(why))));
            }
        }
    }
    Ok(out)
}

enum PlaceResult {
    Placed { moved: bool, copy: Option<String> },
    Failed(Outcome),
}

/// The blocking half of [`apply_batch`]: `syncfs`, then each file, then
/// the directories' fsyncs, all through one [`crate::fsutil::Session`].
fn place_batch(ctx: &Folder, plan: Vec<(Job, Stage)>) -> std::io::Result<Vec<PlaceResult>> {
    let session = ctx.fs.session()?;
    session.sync_filesystem()?;
    let mut dirs = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(plan.len());
    for (job, st) in plan {
        let now = match session.lstat(&job.path) {
            Ok(n) => n,
            Err(e) if is_escape(&e) => {
                out.push(PlaceResult::Failed(Outcome::Reject(e.to_string())));
                continue;
            }
            Err(e) => {
                out.push(PlaceResult::Failed(Outcome::Retry(format!(
                    "{}: {e}",
                    job.path
                ))));
                continue;
            }
        };
        if now != st.disk {
            out.push(PlaceResult::Failed(Outcome::LocalRace));
            continue;
        }
        let mut copy = None;
        if job.conflict_copy
            && matches!(st.disk, DiskState::Present(m) if m.kind == EntryKind::File)
        {
            match conflict_copy_sync(&session, &job) {
                Ok(c) => copy = c,
                Err(e) => {
                    out.push(PlaceResult::Failed(Outcome::Retry(format!(
                        "conflict copy: {e}"
                    ))));
                    continue;
                }
            }
        }
        let res = match &st.staged {
            Staged::Refs(name) => match session.place_link(name, &job.path, false) {
                Ok(()) => Ok(false),
                Err(_) => session.place_from_refs(name, &job.path).map(|_| true),
            },
            Staged::Tmp(name) => session.place(name, &job.path, false).map(|_| false),
        };
        match res {
            Ok(moved) => {
                dirs.insert(
                    job.path
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default(),
                );
                out.push(PlaceResult::Placed { moved, copy });
            }
            Err(e) if is_escape(&e) => {
                out.push(PlaceResult::Failed(Outcome::Reject(e.to_string())))
            }
            Err(e) => out.push(PlaceResult::Failed(Outcome::Retry(format!(
                "place {}: {e}",
                job.path
            )))),
        }
    }
    for d in dirs {
        session.sync_dir(&d)?;
    }
    Ok(out)
}

async fn reimport(ctx: &Folder, path: &str) -> Option<Hold> {
    ctx.content
        .import(ctx.fs.abs(path))
        .await
        .ok()
        .map(|(_, h)| h)
}

/// Files prepared at once by [`apply_batch`].
const APPLY_WIDTH: usize = 8;

fn with_guard(mut o: Outcome, guard: ApplyGuard) -> Outcome {
    if let Outcome::Applied { guard: g, .. } = &mut o {
        *g = Some(guard);
    }
    o
}

/// What preparing a file gave.
enum Prepared {
    /// Nothing to stage (only metadata changed): already done.
    Done(Outcome),
    /// Content staged, ready to be placed.
    Staged(Stage),
}

/// Staged content plus what the disk showed when we started.
#[derive(Clone)]
struct Stage {
    staged: Staged,
    disk: DiskState,
    hash: [u8; 32],
    /// The staged file's stat: the placed file has the same inode.
    stat: LocalStat,
}

fn abandon(ctx: &Folder, _job: &Job, st: &Stage) {
    // A refs link stays staged for the next attempt (the store references
    // it); a temp file is simply removed.
    match &st.staged {
        Staged::Refs(n) => ctx.park(st.hash, n.clone()),
        Staged::Tmp(n) => {
            let _ = std::fs::remove_file(ctx.fs.tmp_dir().join(n));
        }
    }
}

/// Check the path, get the content (local copy or fetch), stage it with
/// its mode and mtime; fsync it when `durable`.
async fn prepare_file(
    ctx: &Arc<Folder>,
    job: &Job,
    providers: &[EndpointId],
    durable: bool,
) -> Result<Prepared, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    if !disk_matches(&disk, &job.local) {
        return Err(Outcome::LocalRace);
    }
    let target = &job.target;
    let hash_bytes = target
        .hash
        .ok_or_else(|| Outcome::Retry("file entry without hash".into()))?;
    // Same content already here: only metadata changed.
    if let (Some(l), DiskState::Present(m)) = (&job.local, &disk) {
        if !l.entry.deleted
            && l.entry.kind == EntryKind::File
            && l.entry.hash == target.hash
            && m.kind == EntryKind::File
        {
            let fs = ctx.fs.clone();
            let p = job.path.clone();
            let (mode, mtime) = (target.mode, target.mtime_ns);
            let stat = blocking("set metadata", move || {
                set_meta(&fs, &p, mode, mtime)?;
                match fs.lstat(&p)? {
                    DiskState::Present(m) => Ok(m.stat),
                    _ => Err(std::io::Error::other("file vanished")),
                }
            })
            .await?;
            return Ok(Prepared::Done(applied(
                job,
                Some(stat),
                l.refs.clone(),
                "updated metadata",
            )));
        }
    }
    if matches!(disk, DiskState::Present(m) if m.kind == EntryKind::Directory) {
        let fs = ctx.fs.clone();
        let p = job.path.clone();
        let r = rt::blocking(move || fs.remove_dir(&p))
            .await
            .map_err(|e| Outcome::Retry(e.to_string()))?;
        if r.is_err() {
            return Err(Outcome::Retry(format!(
                "{}: a non-empty directory is in the way",
                job.path
            )));
        }
    }
    let hash = Hash::from_bytes(hash_bytes);
    let staged = if hash == Hash::EMPTY {
        let name = ctx.fs.new_tmp_name();
        let p = ctx.fs.tmp_dir().join(&name);
        blocking("create empty file", move || {
            std::fs::File::create(&p).map(|_| ())
        })
        .await?;
        Staged::Tmp(name)
    } else {
        stage(ctx, job, hash, hash_bytes, providers).await?
    };
    let path = match &staged {
        Staged::Refs(n) => ctx.fs.refs_dir().join(n),
        Staged::Tmp(n) => ctx.fs.tmp_dir().join(n),
    };
    let (mode, mtime) = (target.mode, target.mtime_ns);
    let mut st = Stage {
        staged,
        disk,
        hash: hash_bytes,
        stat: LocalStat {
            size: 0,
            mtime_ns: 0,
            ino: 0,
            mode: 0,
        },
    };
    match blocking("finish temp file", move || {
        finish_tmp(&path, mode, mtime, durable)
    })
    .await
    {
        Ok(stat) => st.stat = stat,
        Err(o) => {
            abandon(ctx, job, &st);
            return Err(o);
        }
    }
    Ok(Prepared::Staged(st))
}

/// Re-check the path, keep a conflict copy if ours lost, rename the staged
/// content into place (fsyncing the directory when `durable`).
async fn place_file(
    ctx: &Arc<Folder>,
    job: &Job,
    st: Stage,
    durable: bool,
) -> Result<Outcome, Outcome> {
    // Last look before we replace: did someone write to the path meanwhile?
    let now = match lstat(&ctx.fs, &job.path).await {
        Ok(n) => n,
        Err(o) => {
            abandon(ctx, job, &st);
            return Err(o);
        }
    };
    if now != st.disk {
        abandon(ctx, job, &st);
        return Err(Outcome::LocalRace);
    }
    let mut note = "applied".to_string();
    if job.conflict_copy && matches!(st.disk, DiskState::Present(m) if m.kind == EntryKind::File) {
        match keep_conflict_copy(ctx, job).await {
            Ok(Some(copy)) => note = format!("conflict: kept ours as {copy}; applied"),
            Ok(None) => {}
            Err(o) => {
                abandon(ctx, job, &st);
                return Err(o);
            }
        }
    }
    let fs = ctx.fs.clone();
    let p = job.path.clone();
    let staged = st.staged.clone();
    let placed = blocking("place file", move || {
        let mut moved = false;
        match &staged {
            Staged::Refs(name) => {
                if let Err(e) = fs.place_link(name, &p, durable) {
                    // No hard links here (e.g. exFAT): move the file itself
                    // and let the store re-reference it below.
                    debug!("hard link failed ({e}); moving instead");
                    fs.place_from_refs(name, &p)?;
                    moved = true;
                }
            }
            Staged::Tmp(name) => fs.place(name, &p, durable)?,
        }
        Ok(moved)
    })
    .await
    .map(|moved| (st.stat, moved));
    let (stat, moved) = match placed {
        Ok(x) => x,
        Err(o) => {
            abandon(ctx, job, &st);
            return Err(o);
        }
    };
    let mut tag = None;
    let mut refs = match &st.staged {
        Staged::Refs(n) => Some(n.clone()),
        Staged::Tmp(_) => None,
    };
    if moved {
        refs = None;
        tag = reimport(ctx, &job.path).await;
    }
    ctx.status
        .files_in
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = applied(job, Some(stat), refs, &note);
    if let Outcome::Applied { tag: t, .. } = &mut out {
        *t = tag;
    }
    Ok(out)
}

/// Where content waits before it is placed.
#[derive(Debug, Clone)]
enum Staged {
    /// `<root>/.fleetsync/refs/<name>`, referenced by the store.
    Refs(String),
    /// `<root>/.fleetsync/tmp/<name>`, ours alone.
    Tmp(String),
}

/// Content into `refs/`: reuse what an abandoned attempt staged, else
/// fetch (if missing) and move it out of the store (a rename, no copy), or
/// copy it from another local file that has it (a rename on the peer).
async fn stage(
    ctx: &Arc<Folder>,
    job: &Job,
    hash: Hash,
    hash_bytes: [u8; 32],
    providers: &[EndpointId],
) -> Result<Staged, Outcome> {
    if let Some(name) = ctx.unpark(&hash_bytes) {
        if ctx.fs.refs_dir().join(&name).is_file() {
            return Ok(Staged::Refs(name));
        }
    }
    if ctx.has_released(&hash_bytes) {
        let c = ctx.clone();
        if let Some(name) =
            blocking("reuse deleted content", move || Ok(revive(&c, &hash_bytes))).await?
        {
            return Ok(Staged::Refs(name));
        }
    }
    let had = ctx.content.has(hash).await.unwrap_or(false);
    if !had {
        fetch(ctx, job, hash, providers).await?;
    }
    let name = format!("{}-{:08x}", hash.to_hex(), crate::fsutil::random_u32());
    let path = ctx.fs.refs_dir().join(&name);
    let exported = ctx.content.export(hash, path.clone()).await;
    let mut ok = exported.is_ok();
    if let Err(e) = &exported {
        debug!(folder = ctx.id(), path = %job.path, "export failed: {e}");
    }
    if ok && had {
        // A local file the store references may have been edited in place
        // since: check before trusting it (invariant 3).
        let p = path.clone();
        let h = blocking("verify local copy", move || hash_file(&p)).await?;
        ok = h == hash_bytes;
        if !ok {
            debug!(folder = ctx.id(), path = %job.path, "local copy of the content is stale");
        }
    }
    if ok {
        return Ok(Staged::Refs(name));
    }
    let _ = std::fs::remove_file(&path);
    // Last resort: stream it from a peer straight into a temp file.
    let tname = ctx.fs.new_tmp_name();
    let tpath = ctx.fs.tmp_dir().join(&tname);
    fetch_direct(ctx, job, hash, providers, &tpath).await?;
    Ok(Staged::Tmp(tname))
}

/// Content a file deleted a moment ago left in `refs/` (see
/// [`Folder::release`]), if it still hashes to `hash` and nothing else
/// links to it (a link shared with a live file would tie the two files
/// together). Blocking.
fn revive(ctx: &Folder, hash: &[u8; 32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    while let Some(name) = ctx.take_released(hash) {
        let path = ctx.fs.refs_dir().join(&name);
        let alone = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.nlink() == 1);
        if alone && hash_file(&path).is_ok_and(|h| h == *hash) {
            return Some(name);
        }
        ctx.fs.remove_ref(&name);
    }
    None
}

/// Fetch into the store from the first provider that has it.
async fn fetch(
    ctx: &Folder,
    job: &Job,
    hash: Hash,
    providers: &[EndpointId],
) -> Result<(), Outcome> {
    if providers.is_empty() {
        return Err(Outcome::Retry("no connected peer to fetch from".into()));
    }
    let mut last = String::new();
    for peer in providers {
        let t = ctx
            .status
            .track(&job.path, peer.fmt_short().to_string(), job.target.size);
        match ctx.content.fetch(*peer, hash, &t.done).await {
            Ok(n) => {
                ctx.status
                    .bytes_in
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => {
                debug!(folder = ctx.id(), path = %job.path, "fetch failed: {e}");
                last = e.to_string();
            }
        }
    }
    Err(Outcome::Retry(format!("fetch {}: {last}", job.path)))
}

/// Stream verified content from a peer directly into `tmp`, bypassing the
/// store (used only when the store's copy is unusable).
async fn fetch_direct(
    ctx: &Folder,
    job: &Job,
    hash: Hash,
    providers: &[EndpointId],
    tmp: &std::path::Path,
) -> Result<(), Outcome> {
    let mut last = "no connected peer".to_string();
    for peer in providers {
        let file = std::fs::File::create(tmp).map_err(retry("create temp file"))?;
        let t = ctx
            .status
            .track(&job.path, peer.fmt_short().to_string(), job.target.size);
        let res = ctx.content.fetch_direct(*peer, hash, &file, &t.done).await;
        // Counted whether or not it completed: these bytes crossed the wire.
        ctx.status.bytes_in.fetch_add(
            t.done.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        match res {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    let _ = std::fs::remove_file(tmp);
    Err(Outcome::Retry(format!("fetch {}: {last}", job.path)))
}
