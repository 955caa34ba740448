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

use std::{
    os::unix::fs::FileExt,
    sync::{atomic::AtomicU64, Arc},
    time::SystemTime,
};

use fleetsync_mesh::{
    model::{EntryKind, FileEntry},
    EndpointId, Hash,
};
use iroh_blobs::api::blobs::{AddPathOptions, ExportMode, ExportOptions, ImportMode};
use n0_future::StreamExt;
use tracing::{debug, warn};

use crate::{
    folder::{ApplyGuard, FolderCtx, Transfer},
    fsutil::{finish_tmp, hash_file, is_escape, set_meta, FolderFs, Node},
    identity_short,
    index::{LocalStat, Record},
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
        tag: Option<iroh_blobs::api::TempTag>,
        /// Keeps the hasher off the path until the record is committed.
        guard: Option<ApplyGuard>,
    },
    /// The local path changed under us (an edit not yet indexed).
    LocalRace,
    /// Could not do it now (no peer has the content, disk error): retry later.
    Retry(String),
    /// Never doing this (the path leads through a symlink): drop it.
    Reject(String),
}

fn retry<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Outcome + '_ {
    move |e| Outcome::Retry(format!("{what}: {e}"))
}

/// Does the disk still hold what the index recorded for this path?
fn disk_matches(disk: &Node, local: &Option<Record>) -> bool {
    let live = local.as_ref().filter(|r| !r.entry.deleted);
    match (disk, live) {
        (Node::Missing, None) => true,
        (Node::Missing, Some(_)) => true, // already gone: nothing to lose
        (Node::Other, _) => false,
        (Node::Some(_), None) => false,
        (Node::Some(m), Some(r)) => match m.kind {
            EntryKind::Directory => r.entry.kind == EntryKind::Directory,
            _ => r.entry.kind == m.kind && r.local == Some(m.stat),
        },
    }
}

async fn lstat(fs: &FolderFs, path: &str) -> Result<Node, Outcome> {
    let fs = fs.clone();
    let p = path.to_string();
    match rt::blocking(move || fs.lstat(&p)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) if is_escape(&e) => Err(Outcome::Reject(e.to_string())),
        Ok(Err(e)) => Err(Outcome::Retry(format!("{path}: {e}"))),
        Err(e) => Err(Outcome::Retry(e)),
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
async fn keep_conflict_copy(ctx: &FolderCtx, job: &Job) -> Result<Option<String>, Outcome> {
    let Some(l) = job.local.as_ref().filter(|r| !r.entry.deleted) else {
        return Ok(None);
    };
    let fs = ctx.fs.clone();
    let path = job.path.clone();
    let base = conflict_name(&job.path, l.entry.mtime_ns, l.entry.modified_by);
    let name = blocking("conflict copy", move || {
        for n in 0..10 {
            let candidate = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            match fs.rename_noreplace(&path, &candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("too many conflict copies"))
    })
    .await?;
    warn!(
        folder = ctx.id(),
        path = %job.path,
        copy = %name,
        "conflict: kept the losing version as a conflict copy"
    );
    ctx.status
        .conflicts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(name))
}

pub async fn apply(ctx: Arc<FolderCtx>, job: Job, providers: Vec<EndpointId>) -> Outcome {
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

async fn apply_delete(ctx: &FolderCtx, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    if !disk_matches(&disk, &job.local) {
        return Err(Outcome::LocalRace);
    }
    if let Node::Some(m) = disk {
        let fs = ctx.fs.clone();
        let p = job.path.clone();
        let res = rt::blocking(move || match m.kind {
            EntryKind::Directory => fs.remove_dir(&p),
            _ => fs.remove_file(&p),
        })
        .await
        .map_err(Outcome::Retry)?;
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
                return Err(Outcome::Retry(format!(
                    "{}: directory not empty yet",
                    job.path
                )));
            }
            debug!(folder = ctx.id(), path = %job.path, "directory holds only ignored files; kept");
        }
    }
    Ok(applied(job, None, None, "deleted"))
}

async fn apply_dir(ctx: &FolderCtx, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    match disk {
        Node::Some(m) if m.kind == EntryKind::Directory => {}
        Node::Missing => {}
        _ if !disk_matches(&disk, &job.local) => return Err(Outcome::LocalRace),
        Node::Some(_) => {
            // A file or link we know is in the way.
            if job.conflict_copy {
                keep_conflict_copy(ctx, job).await?;
            } else {
                let fs = ctx.fs.clone();
                let p = job.path.clone();
                blocking("replace with directory", move || fs.remove_file(&p)).await?;
            }
        }
        Node::Other => {
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
            Node::Some(m) => Ok(m.stat),
            _ => Err(std::io::Error::other("directory vanished")),
        }
    })
    .await?;
    Ok(applied(job, Some(stat), None, "created directory"))
}

async fn apply_symlink(ctx: &FolderCtx, job: &Job) -> Result<Outcome, Outcome> {
    let disk = lstat(&ctx.fs, &job.path).await?;
    if !disk_matches(&disk, &job.local) && !matches!(disk, Node::Missing) {
        return Err(Outcome::LocalRace);
    }
    if let Node::Some(m) = disk {
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
            Node::Some(m) => Ok(m.stat),
            _ => Err(std::io::Error::other("symlink vanished")),
        }
    })
    .await?;
    Ok(applied(job, Some(stat), None, "linked"))
}

async fn apply_file(
    ctx: &Arc<FolderCtx>,
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
pub async fn apply_batch(ctx: Arc<FolderCtx>, jobs: Vec<Job>, providers: Vec<EndpointId>) -> Vec<(Job, Outcome)> {
    use n0_future::{BufferedStreamExt, StreamExt};
    let prepared: Vec<_> = n0_future::stream::iter(jobs)
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
        .collect()
        .await;
    let mut out = Vec::with_capacity(prepared.len());
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
    let fs = ctx.fs.clone();
    if let Err(o) = blocking("sync staged files", move || fs.sync_filesystem()).await {
        for (job, _, st) in staged {
            abandon(&ctx, &job, &st);
            out.push((job, clone_outcome(&o)));
        }
        return out;
    }
    let mut dirs = std::collections::BTreeSet::new();
    for (job, guard, st) in staged {
        let o = match place_file(&ctx, &job, st, false).await {
            Ok(o) | Err(o) => o,
        };
        if matches!(o, Outcome::Applied { .. }) {
            dirs.insert(job.path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default());
        }
        out.push((job, with_guard(o, guard)));
    }
    let fs = ctx.fs.clone();
    if let Err(o) = blocking("sync directories", move || {
        for d in dirs {
            fs.sync_dir(&d)?;
        }
        Ok(())
    })
    .await
    {
        // The renames happened but are not known to be durable: report the
        // batch as failed so it is re-checked (the next attempt finds the
        // content in place and only records it).
        return out
            .into_iter()
            .map(|(j, x)| match x {
                Outcome::Applied { .. } => (j, clone_outcome(&o)),
                x => (j, x),
            })
            .collect();
    }
    out
}

/// Files prepared at once by [`apply_batch`].
const APPLY_WIDTH: usize = 8;

fn clone_outcome(o: &Outcome) -> Outcome {
    match o {
        Outcome::Reject(s) => Outcome::Reject(s.clone()),
        Outcome::Retry(s) => Outcome::Retry(s.clone()),
        _ => Outcome::Retry("batch failed".into()),
    }
}

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
struct Stage {
    staged: Staged,
    disk: Node,
    hash: [u8; 32],
}

fn abandon(ctx: &FolderCtx, _job: &Job, st: &Stage) {
    // A refs link stays staged for the next attempt (the store references
    // it); a temp file is simply removed.
    match &st.staged {
        Staged::Refs(n) => ctx.keep_staged(st.hash, n.clone()),
        Staged::Tmp(n) => {
            let _ = std::fs::remove_file(ctx.fs.tmp_dir().join(n));
        }
    }
}

/// Check the path, get the content (local copy or fetch), stage it with
/// its mode and mtime; fsync it when `durable`.
async fn prepare_file(
    ctx: &Arc<FolderCtx>,
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
    if let (Some(l), Node::Some(m)) = (&job.local, &disk) {
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
                    Node::Some(m) => Ok(m.stat),
                    _ => Err(std::io::Error::other("file vanished")),
                }
            })
            .await?;
            return Ok(Prepared::Done(applied(job, Some(stat), l.refs.clone(), "updated metadata")));
        }
    }
    if matches!(disk, Node::Some(m) if m.kind == EntryKind::Directory) {
        let fs = ctx.fs.clone();
        let p = job.path.clone();
        let r = rt::blocking(move || fs.remove_dir(&p))
            .await
            .map_err(Outcome::Retry)?;
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
        blocking("create empty file", move || std::fs::File::create(&p).map(|_| ())).await?;
        Staged::Tmp(name)
    } else {
        stage(ctx, job, hash, hash_bytes, providers).await?
    };
    let st = Stage {
        staged,
        disk,
        hash: hash_bytes,
    };
    let path = match &st.staged {
        Staged::Refs(n) => ctx.fs.refs_dir().join(n),
        Staged::Tmp(n) => ctx.fs.tmp_dir().join(n),
    };
    let (mode, mtime) = (target.mode, target.mtime_ns);
    if let Err(o) = blocking("finish temp file", move || finish_tmp(&path, mode, mtime, durable)).await {
        abandon(ctx, job, &st);
        return Err(o);
    }
    Ok(Prepared::Staged(st))
}

/// Re-check the path, keep a conflict copy if ours lost, rename the staged
/// content into place (fsyncing the directory when `durable`).
async fn place_file(ctx: &Arc<FolderCtx>, job: &Job, st: Stage, durable: bool) -> Result<Outcome, Outcome> {
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
    if job.conflict_copy && matches!(st.disk, Node::Some(m) if m.kind == EntryKind::File) {
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
        match fs.lstat(&p)? {
            Node::Some(m) => Ok((m.stat, moved)),
            _ => Err(std::io::Error::other("file vanished after rename")),
        }
    })
    .await;
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
        tag = ctx
            .mesh
            .store()
            .add_path_with_opts(AddPathOptions {
                path: ctx.fs.abs(&job.path),
                format: iroh_blobs::BlobFormat::Raw,
                mode: ImportMode::TryReference,
            })
            .temp_tag()
            .await
            .ok();
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
    ctx: &Arc<FolderCtx>,
    job: &Job,
    hash: Hash,
    hash_bytes: [u8; 32],
    providers: &[EndpointId],
) -> Result<Staged, Outcome> {
    if let Some(name) = ctx.take_staged(&hash_bytes) {
        if ctx.fs.refs_dir().join(&name).is_file() {
            return Ok(Staged::Refs(name));
        }
    }
    let store = ctx.mesh.store();
    let had = store.blobs().has(hash).await.unwrap_or(false);
    if !had {
        fetch(ctx, job, hash, providers).await?;
    }
    let name = format!("{}-{:08x}", hash.to_hex(), crate::fsutil::random_u32());
    let path = ctx.fs.refs_dir().join(&name);
    let exported = store
        .export_with_opts(ExportOptions {
            hash,
            mode: ExportMode::TryReference,
            target: path.clone(),
        })
        .finish()
        .await;
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

struct TransferGuard<'a> {
    ctx: &'a FolderCtx,
    path: String,
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.ctx
            .status
            .transfers
            .lock()
            .expect("status lock")
            .remove(&self.path);
    }
}

fn track<'a>(
    ctx: &'a FolderCtx,
    job: &Job,
    peer: &EndpointId,
    done: Arc<AtomicU64>,
) -> TransferGuard<'a> {
    ctx.status.transfers.lock().expect("status lock").insert(
        job.path.clone(),
        Transfer {
            peer: peer.fmt_short().to_string(),
            total: job.target.size,
            done,
            started: SystemTime::now(),
        },
    );
    TransferGuard {
        ctx,
        path: job.path.clone(),
    }
}

/// Fetch into the store from the first provider that has it.
async fn fetch(
    ctx: &FolderCtx,
    job: &Job,
    hash: Hash,
    providers: &[EndpointId],
) -> Result<(), Outcome> {
    if providers.is_empty() {
        return Err(Outcome::Retry("no connected peer to fetch from".into()));
    }
    let mut last = String::new();
    for peer in providers {
        let done = Arc::new(AtomicU64::new(0));
        let _t = track(ctx, job, peer, done.clone());
        match ctx.mesh.fetch_blob(*peer, hash, &done).await {
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
    ctx: &FolderCtx,
    job: &Job,
    hash: Hash,
    providers: &[EndpointId],
    tmp: &std::path::Path,
) -> Result<(), Outcome> {
    let mut last = "no connected peer".to_string();
    for peer in providers {
        let file = std::fs::File::create(tmp).map_err(retry("create temp file"))?;
        let done = Arc::new(AtomicU64::new(0));
        let _t = track(ctx, job, peer, done.clone());
        let mut stream = match ctx.mesh.get_blob_direct(*peer, hash).await {
            Ok(s) => s,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut failed = None;
        while let Some(item) = stream.next().await {
            use iroh_blobs::get::request::GetBlobItem;
            match item {
                GetBlobItem::Item(bao_tree::io::BaoContentItem::Leaf(leaf)) => {
                    if let Err(e) = file.write_all_at(&leaf.data, leaf.offset) {
                        failed = Some(e.to_string());
                        break;
                    }
                    done.fetch_add(leaf.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                GetBlobItem::Item(_) => {}
                GetBlobItem::Done(_) => break,
                GetBlobItem::Error(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        match failed {
            None => return Ok(()),
            Some(e) => last = e,
        }
    }
    let _ = std::fs::remove_file(tmp);
    Err(Outcome::Retry(format!("fetch {}: {last}", job.path)))
}
