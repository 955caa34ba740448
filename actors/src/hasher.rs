//! Hasher: turns "these paths may have changed" into committed index
//! entries.
//!
//! For each path it `lstat`s (never following symlinks) and compares with
//! the index; an unchanged (size, mtime, inode, mode) skips the read.
//! Changed files are imported into the iroh-blobs store *by reference*
//! (hashing with BLAKE3 and building the outboard, no copy), re-checked for
//! modification during the import, and committed with a bumped version
//! vector in one index transaction. Directories that appear are expanded;
//! paths that vanish become tombstones, with everything below them.
//!
//! If a change on disk matches an entry a peer announced that is still
//! pending (our own receiver just wrote it, maybe before a crash), the
//! peer's entry is adopted instead of minting a new local version: that is
//! what keeps applied changes from echoing back as local edits.
//!
//! All work runs on the node runtime's blocking pool and worker threads;
//! the actor thread only forwards, so it always answers the supervisor.

use std::{
    collections::{HashSet, VecDeque},
    sync::{atomic::Ordering, Arc},
};

use actix::prelude::*;
use fleetsync_mesh::model::EntryKind;
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::{debug, info, warn};

use crate::{
    content::Hold,
    folder::Folder,
    index::{now_ns, Commit, Item, Observed},
    msg::Ping,
    record::Record,
    record::{DiskState, Meta},
    rt,
};

/// Messages the hasher answers.
pub mod msg {
    use actix::Message;

    /// Look at these paths and commit whatever changed.
    #[derive(Debug, Message)]
    #[rtype(result = "HashOutcome")]
    pub struct HashPaths {
        pub paths: Vec<String>,
    }

    #[derive(Debug, Default)]
    pub struct HashOutcome {
        /// Paths to look at again later (still changing, being applied).
        pub deferred: Vec<String>,
        /// Entries committed.
        pub committed: usize,
    }
}

use msg::{HashOutcome, HashPaths};

/// Files hashed concurrently (the store hashes on its own threads).
const IMPORT_CONCURRENCY: usize = 8;
/// Files hashed per index commit.
const COMMIT_CHUNK: usize = 500;

pub struct Hasher {
    ctx: Arc<Folder>,
}

impl Hasher {
    pub fn new(ctx: Arc<Folder>) -> Self {
        Hasher { ctx }
    }
}

impl Actor for Hasher {
    type Context = Context<Self>;
}

impl Handler<Ping> for Hasher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<HashPaths> for Hasher {
    type Result = ResponseFuture<HashOutcome>;

    fn handle(&mut self, msg: HashPaths, _: &mut Context<Self>) -> Self::Result {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            match rt::spawn(hash_batch(ctx.clone(), msg.paths.clone())).await {
                Ok(o) => o,
                Err(e) => {
                    // A panic while hashing must not lose the paths.
                    ctx.status.error(format!("hasher task failed: {e}"));
                    HashOutcome {
                        deferred: msg.paths,
                        committed: 0,
                    }
                }
            }
        })
    }
}

/// A path, what was found there, and (files) its hash and refs link.
type Hashed = (String, Found, Option<([u8; 32], Option<String>)>);

/// A change found on disk, before hashing.
#[derive(Debug, Clone)]
enum Found {
    Gone,
    Dir(Meta),
    Symlink(Meta, String),
    File(Meta),
}

#[derive(Debug, Default)]
struct Plan {
    found: Vec<(String, Found)>,
    deferred: Vec<String>,
}

fn live(r: &Option<Record>) -> Option<&Record> {
    r.as_ref().filter(|r| !r.entry.deleted)
}

fn classify(ctx: &Folder, paths: Vec<String>) -> Plan {
    let mut plan = Plan::default();
    let ig = ctx.ignore();
    let settle_ns = ctx.cfg.settle.as_nanos() as i64;
    let now = now_ns();
    let mut seen = HashSet::new();
    let mut queue: VecDeque<String> = paths.into();
    let folder = ctx.id();
    let session = match ctx.fs.session() {
        Ok(s) => s,
        Err(e) => {
            ctx.status.error(format!("folder root: {e}"));
            plan.deferred.extend(queue);
            return plan;
        }
    };
    while let Some(rel) = queue.pop_front() {
        if !seen.insert(rel.clone()) {
            continue;
        }
        if ig.is_ignored(&rel, false) && ig.is_ignored(&rel, true) {
            continue;
        }
        if ctx.is_applying(&rel) {
            plan.deferred.push(rel);
            continue;
        }
        let node = match session.lstat(&rel) {
            Ok(n) => n,
            // A parent turned into a symlink: the path is no longer in the folder.
            Err(e) if e.kind() == std::io::ErrorKind::Other => DiskState::Missing,
            Err(e) => {
                ctx.status.error(format!("{rel}: {e}"));
                continue;
            }
        };
        let rec = match ctx.index.get(folder, &rel) {
            Ok(r) => r,
            Err(e) => {
                ctx.status.error(format!("index: {e}"));
                plan.deferred.push(rel);
                continue;
            }
        };
        match node {
            DiskState::Missing | DiskState::Special => {
                if live(&rec).is_some() {
                    plan.found.push((rel.clone(), Found::Gone));
                }
                match ctx.index.descendants(folder, &rel) {
                    Ok(children) => {
                        for c in children.into_iter().filter(|c| !c.entry.deleted) {
                            let p = c.entry.path.clone();
                            if seen.insert(p.clone()) {
                                plan.found.push((p, Found::Gone));
                            }
                        }
                    }
                    Err(e) => ctx.status.error(format!("index: {e}")),
                }
            }
            DiskState::Present(meta) => {
                if ig.is_ignored(&rel, meta.kind == EntryKind::Directory) {
                    continue;
                }
                match meta.kind {
                    EntryKind::Directory => {
                        let known = live(&rec).filter(|r| r.entry.kind == EntryKind::Directory);
                        if known.is_none_or(|r| r.entry.mode != meta.stat.mode) {
                            plan.found.push((rel.clone(), Found::Dir(meta)));
                        }
                        if known.is_none() {
                            // A directory that appeared (mkdir -p, mv in): its
                            // contents produce no events of their own.
                            if let Ok(rd) = std::fs::read_dir(ctx.fs.abs(&rel)) {
                                for e in rd.flatten() {
                                    if let Some(name) = e.file_name().to_str() {
                                        queue.push_back(format!("{rel}/{name}"));
                                    }
                                }
                            }
                        }
                    }
                    EntryKind::Symlink => match session.read_link(&rel) {
                        Ok(target) => {
                            let same = live(&rec).is_some_and(|r| {
                                r.entry.kind == EntryKind::Symlink
                                    && r.entry.symlink_target.as_deref() == Some(target.as_str())
                            });
                            if !same {
                                plan.found.push((rel.clone(), Found::Symlink(meta, target)));
                            }
                        }
                        Err(e) => ctx.status.error(format!("{rel}: {e}")),
                    },
                    EntryKind::File => {
                        let same = live(&rec).is_some_and(|r| {
                            r.entry.kind == EntryKind::File && r.local == Some(meta.stat)
                        });
                        if same {
                            continue;
                        }
                        if (0..settle_ns).contains(&(now - meta.stat.mtime_ns)) {
                            // Written moments ago (a scan found it): let it settle.
                            plan.deferred.push(rel);
                            continue;
                        }
                        plan.found.push((rel.clone(), Found::File(meta)));
                    }
                }
            }
        }
    }
    plan
}

/// Hash and import a file. It is first hard-linked into `refs/` and the
/// store references the link (stable across renames and replacements of
/// the user's path); returns the link's name.
async fn import(
    ctx: &Arc<Folder>,
    rel: &str,
    size: u64,
) -> Result<([u8; 32], Hold, Option<String>), String> {
    let mut refs = None;
    if size > 0 {
        let c = ctx.clone();
        let r = rel.to_string();
        // No hard links here (another filesystem mounted below the root,
        // exFAT…): reference the path itself.
        refs = rt::blocking(move || c.fs.link_ref(&r).ok())
            .await
            .ok()
            .flatten();
    }
    let abs = match &refs {
        Some(n) => ctx.fs.refs_dir().join(n),
        None => ctx.fs.abs(rel),
    };
    let res = import_path(ctx, abs).await;
    match res {
        Ok((h, t)) => Ok((h, t, refs)),
        Err(e) => {
            if let Some(n) = refs {
                ctx.fs.remove_ref(&n);
            }
            Err(e)
        }
    }
}

async fn import_path(ctx: &Folder, abs: std::path::PathBuf) -> Result<([u8; 32], Hold), String> {
    let (hash, hold) = ctx.content.import(abs).await.map_err(|e| e.to_string())?;
    Ok((*hash.as_bytes(), hold))
}

pub async fn hash_batch(ctx: Arc<Folder>, paths: Vec<String>) -> HashOutcome {
    if ctx.fault().is_some() {
        return HashOutcome::default();
    }
    let t0 = std::time::Instant::now();
    let c = ctx.clone();
    let plan = match rt::blocking(move || classify(&c, paths)).await {
        Ok(p) => p,
        Err(e) => {
            ctx.status.error(e.to_string());
            return HashOutcome::default();
        }
    };
    let mut deferred = plan.deferred;
    let classify_took = t0.elapsed();
    let mut files = Vec::new();
    let mut first: Vec<Hashed> = Vec::new();
    for (rel, f) in plan.found {
        match f {
            Found::File(..) => files.push((rel, f)),
            other => first.push((rel, other, None)),
        }
    }
    // Commit in chunks, so peers start fetching while we still hash the
    // rest of a large drop of files.
    let mut committed = 0;
    let mut chunks = files.chunks(COMMIT_CHUNK).peekable();
    let mut pending_first = Some(first);
    while pending_first.is_some() || chunks.peek().is_some() {
        let mut hashed = pending_first.take().unwrap_or_default();
        let chunk: Vec<(String, Found)> = chunks.next().map(|c| c.to_vec()).unwrap_or_default();
        // Held until the commit, so blob GC cannot drop what we referenced.
        let mut tags = Vec::new();
        let results: Vec<_> = n0_future::stream::iter(chunk)
            .map(|(rel, f)| {
                let ctx = ctx.clone();
                async move {
                    let size = match &f {
                        Found::File(m) => m.stat.size,
                        _ => 0,
                    };
                    let h = import(&ctx, &rel, size).await;
                    (rel, f, h)
                }
            })
            .buffered_unordered(IMPORT_CONCURRENCY)
            .collect()
            .await;
        for (rel, f, h) in results {
            match h {
                Ok((h, tag, refs)) => {
                    tags.push(tag);
                    hashed.push((rel, f, Some((h, refs))));
                }
                Err(e) => {
                    // Vanished or unreadable mid-import: look again later.
                    debug!(folder = ctx.id(), path = %rel, "import failed: {e}");
                    deferred.push(rel);
                }
            }
        }
        let c = ctx.clone();
        let res = rt::blocking(move || commit_found(&c, hashed)).await;
        drop(tags);
        match res {
            Ok(Ok((n, mut more))) => {
                deferred.append(&mut more);
                committed += n;
            }
            Ok(Err(e)) => {
                warn!(folder = ctx.id(), "commit failed: {e}");
                ctx.status.error(format!("index commit: {e}"));
            }
            Err(e) => {
                warn!(folder = ctx.id(), "commit failed: {e}");
                ctx.status.error(format!("index commit: {e}"));
            }
        }
    }
    debug!(
        folder = ctx.id(),
        committed,
        deferred = deferred.len(),
        classify = ?classify_took,
        total = ?t0.elapsed(),
        "hash batch done"
    );
    HashOutcome {
        deferred,
        committed,
    }
}

/// Re-check files, then let the index resolve every observation against
/// its current state in one transaction (skip, adopt a pending remote entry,
/// or bump to a new local version).
fn commit_found(ctx: &Folder, hashed: Vec<Hashed>) -> Result<(usize, Vec<String>), String> {
    let folder = ctx.id();
    let mut items = Vec::with_capacity(hashed.len());
    let mut deferred = Vec::new();
    let session = ctx.fs.session().map_err(|e| e.to_string())?;
    for (rel, found, hash) in hashed {
        let seen = match found {
            Found::Gone => Observed::Gone,
            Found::Dir(meta) => Observed::Dir { stat: meta.stat },
            Found::Symlink(meta, target) => Observed::Symlink {
                stat: meta.stat,
                target,
            },
            Found::File(meta) => {
                // Did it change while we hashed it?
                match (session.lstat(&rel), hash) {
                    (Ok(DiskState::Present(now)), Some((hash, refs))) if now == meta => {
                        Observed::File {
                            stat: meta.stat,
                            hash,
                            refs,
                        }
                    }
                    (_, h) => {
                        if let Some((_, Some(n))) = h {
                            ctx.fs.remove_ref(&n);
                        }
                        deferred.push(rel);
                        continue;
                    }
                }
            }
        };
        items.push(Item::Observed { path: rel, seen });
    }
    if items.is_empty() {
        return Ok((0, deferred));
    }
    let c = ctx
        .index
        .commit(
            folder,
            Commit {
                items,
                resolved: vec![],
            },
            ctx.local(),
        )
        .map_err(|e| e.to_string())?;
    ctx.release(c.released);
    if c.written > 0 {
        ctx.status
            .files_out_announced
            .fetch_add(c.written as u64, Ordering::Relaxed);
        ctx.announce(c.meta.seq);
        info!(
            folder,
            changes = c.written,
            seq = c.meta.seq,
            "indexed changes"
        );
    }
    Ok((c.written, deferred))
}
