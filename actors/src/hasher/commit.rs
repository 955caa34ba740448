//! Steps two and three of a hash batch: hash changed files (big ones by
//! importing them into the blob store, by reference through a `refs/`
//! link; small ones here, their link recorded for the mesh to import when
//! a peer first asks: `fleetsync_mesh::lazy`), then re-check them and let
//! the index resolve every observation in one transaction.

use std::{io, path::PathBuf, sync::atomic::Ordering, sync::Arc};

use n0_future::{BufferedStreamExt, StreamExt};
use tracing::{info, warn};

use crate::{
    content::Hold,
    folder::Folder,
    fsutil::{Opened, Parents, RefFile, ReservedStamp, Session},
    health::Health,
    index::{Commit, Item, Observed},
    record::{DiskState, Meta},
    rt,
};

use super::HashError;

/// A file hashed and imported: what it looked like before, and the
/// observation to commit if it still looks so.
#[derive(Debug)]
pub struct Imported {
    pub path: String,
    pub meta: Meta,
    pub hash: [u8; 32],
    pub refs: Option<String>,
    /// Imported into the blob store (so the store must be synced before
    /// the index references it); `false` when it was hashed here and is
    /// held in its `refs/` link only.
    pub stored: bool,
    /// The file's stat when it was opened for hashing: the re-check
    /// compares with it. Only the stat is kept, not the descriptor, so
    /// the files a group commit gathers hold no descriptors open.
    pub opened: rustix::fs::Stat,
}

/// One index commit's worth of observations.
#[derive(Debug, Default)]
pub struct Chunk {
    pub observed: Vec<(String, Observed)>,
    pub imported: Vec<Imported>,
}

impl Chunk {
    pub fn is_empty(&self) -> bool {
        self.observed.is_empty() && self.imported.is_empty()
    }

    /// Every path in it.
    pub fn paths(&self) -> Vec<String> {
        let observed = self.observed.iter().map(|(p, _)| p.clone());
        observed
            .chain(self.imported.iter().map(|i| i.path.clone()))
            .collect()
    }

    /// The `refs/` links made for it.
    pub fn links(&self) -> Vec<String> {
        self.imported
            .iter()
            .filter_map(|i| i.refs.clone())
            .collect()
    }
}

/// What a successful commit did.
#[derive(Debug, Default)]
pub struct Committed {
    pub written: usize,
    /// Files that changed while they were hashed: they settle again.
    pub deferred: Vec<String>,
}

/// What [`hash_chunk`] and [`chunk_of`] give per file.
pub type ImportResult = (String, Meta, Result<(Imported, Hold), HashError>);

/// A file opened for hashing ([`open_checked`]), its `refs/` link if one
/// was made, and its hash if it was hashed right there ([`How::Here`]).
type Opening = (Arc<Opened>, Option<RefFile>, Option<[u8; 32]>);

/// How a file's content gets hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// The store imports it (through its link) and hashes it: a big file,
    /// whose outboard the store builds once and serves from.
    Import,
    /// Read and hashed right where it is opened and linked; the store
    /// imports it only when a peer asks. A small file, for which the
    /// import cost more than hashing (a store task, a second open and
    /// read, a database row: a third of all CPU when a folder of many
    /// small files was indexed). A file that got no link is imported.
    Here,
}

/// Where the store finds `refs/` links, with the staging directory's
/// stamp taken before the store opens any of them (or why not).
type RefsAt = io::Result<(PathBuf, ReservedStamp)>;

/// Hash and import the file at `rel`. The file is opened once, never
/// through a symlink, and everything after works on that descriptor's
/// inode ([`open_checked`]): it is hard-linked into `refs/` and the store
/// references the link (stable across renames and replacements of the
/// user's path). The [`Hold`] keeps the blob from garbage collection until
/// the commit.
pub async fn import(
    folder: &Arc<Folder>,
    rel: &str,
    meta: Meta,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Imported, Hold), HashError> {
    let file = vec![(rel.to_string(), meta)];
    let mut done = chunk_of(folder, file, How::Import, progress).await;
    done.pop().expect("one file in, one result out").2
}

/// Small files, many at a time: one blocking call opens, links and hashes
/// them all (one session, instead of a thread hand-off and the root and
/// staging directories opened again per file; [`How::Here`]). The store
/// imports only those that got no link, side by side.
pub async fn hash_chunk(
    folder: &Arc<Folder>,
    files: Vec<(String, Meta)>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Vec<ImportResult> {
    chunk_of(folder, files, How::Here, progress).await
}

/// Open (and link) `files` in one blocking call, hash or import each as
/// `how` says; one check of the staging directory's stamp covers every
/// import by path.
async fn chunk_of(
    folder: &Arc<Folder>,
    files: Vec<(String, Meta)>,
    how: How,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Vec<ImportResult> {
    let n = files.len().max(1);
    // Taken before the files are linked: a swap while they are hashed or
    // imported shows at the check at the end.
    let at = folder.fs.store_refs_dir();
    let opened = open_all(folder, files, how).await;
    let mut out: Vec<ImportResult> = n0_future::stream::iter(opened)
        .map(|(rel, meta, opening)| {
            let at = &at;
            async move {
                let res = match opening {
                    Ok(o) => import_opened(folder, &rel, meta, o, at, progress).await,
                    Err(e) => Err(e),
                };
                (rel, meta, res)
            }
        })
        .buffered_unordered(n)
        .collect()
        .await;
    if let Ok((_, stamp)) = &at {
        if !folder.fs.still_reserved(stamp) {
            unlink_imports(folder, &mut out);
        }
    }
    out
}

/// Open and link `files` in one blocking call ([`open_checked`] each),
/// hashing them there too with [`How::Here`].
async fn open_all(
    folder: &Arc<Folder>,
    files: Vec<(String, Meta)>,
    how: How,
) -> Vec<(String, Meta, Result<Opening, HashError>)> {
    let f = folder.clone();
    let paths = files.clone();
    let opened = rt::blocking(move || match f.fs.session() {
        Ok(session) => {
            // A chunk's files are mostly of one directory.
            let mut parents = Parents::default();
            paths
                .into_iter()
                .map(|(rel, meta)| {
                    let o = open_checked(&f, &session, &mut parents, &rel, meta)
                        .and_then(|o| hashed_if(&f, how, o, &rel));
                    (rel, meta, o)
                })
                .collect()
        }
        Err(e) => paths
            .into_iter()
            .map(|(rel, meta)| (rel, meta, Err(HashError::Root(same_error(&e)))))
            .collect(),
    })
    .await;
    opened.unwrap_or_else(|e| {
        // A panic while opening: nothing was linked that is still
        // referenced; the files are retried after a backoff.
        let e = io::Error::other(format!("opening for hashing failed: {e}"));
        files
            .into_iter()
            .map(|(rel, meta)| {
                let source = same_error(&e);
                let err = HashError::Disk {
                    path: rel.clone(),
                    source,
                };
                (rel, meta, Err(err))
            })
            .collect()
    })
}

/// The staging directory was replaced while the chunk's files were
/// linked, hashed or imported: the store opened `refs/` paths in it (what
/// it read may have been anything), and a peer's request would make it
/// open them there again. Those files are not indexed (they settle and
/// are hashed again).
fn unlink_imports(folder: &Folder, out: &mut [ImportResult]) {
    warn!(
        folder = folder.id(),
        "the staging directory was replaced while files were hashed; not indexed"
    );
    for (rel, _, res) in out.iter_mut() {
        if let Ok((Imported { refs: Some(n), .. }, _)) = res {
            folder.fs.remove_ref(n);
            *res = Err(HashError::Changed(rel.clone()));
        }
    }
}

/// With [`How::Here`], a linked file is hashed through its descriptor
/// (the link is that inode, or a copy made from it; the re-check before
/// the commit catches a write after the open). Blocking.
fn hashed_if(
    folder: &Folder,
    how: How,
    (opened, refs, _): Opening,
    rel: &str,
) -> Result<Opening, HashError> {
    let Some(link) = refs.as_ref().filter(|_| how == How::Here) else {
        return Ok((opened, refs, None));
    };
    let path = folder.fs.refs_dir().join(&link.name);
    match folder.content.hash_unimported(&path, &opened) {
        Ok(h) => Ok((opened, refs, Some(h))),
        Err(source) => {
            folder.fs.remove_ref(&link.name); // referenced by nothing yet
            Err(HashError::Disk {
                path: rel.to_string(),
                source,
            })
        }
    }
}

/// Import one opened file (by its link, or by its path if it has none),
/// unless it was hashed already. A failure removes the link.
async fn import_opened(
    folder: &Folder,
    rel: &str,
    meta: Meta,
    (opened, ref_file, hashed): Opening,
    at: &RefsAt,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Imported, Hold), HashError> {
    let res = match (&ref_file, hashed) {
        (Some(_), Some(hash)) => Ok((hash, None)),
        (Some(r), None) => import_ref(folder, r, rel, at, progress).await.map(stored),
        (None, _) => import_unlinked(folder, rel, &opened, progress)
            .await
            .map(stored),
    };
    let refs = ref_file.map(|r| r.name);
    match res {
        Ok((hash, hold)) => Ok((
            Imported {
                path: rel.to_string(),
                meta,
                hash,
                refs,
                stored: hold.is_some(),
                opened: *opened.stat(),
            },
            hold.unwrap_or_else(|| Hold::new(())),
        )),
        Err(e) => {
            if let Some(n) = refs {
                folder.fs.remove_ref(&n);
            }
            Err(e)
        }
    }
}

/// Open `rel` (no symlink followed), check it is still what `lstat` showed
/// the classifier, and link it into `refs/` from the descriptor (or copy
/// it there, see [`Folder::refs_are_copies`]). Without hard links
/// (another filesystem mounted below the root, exFAT…) there is no link.
/// Empty files get none either (nothing to serve). Blocking.
fn open_checked(
    folder: &Folder,
    session: &Session,
    parents: &mut Parents,
    rel: &str,
    meta: Meta,
) -> Result<Opening, HashError> {
    let disk = |source| HashError::Disk {
        path: rel.to_string(),
        source,
    };
    let mut opened = session.open_regular_in(parents, rel).map_err(disk)?;
    if opened.meta() != DiskState::Present(meta) {
        return Err(HashError::Changed(rel.to_string()));
    }
    let refs = match meta.stat.size > 0 {
        false => None,
        true if folder.refs_are_copies() => session.copy_opened(&opened).ok(),
        true => session.link_opened(&mut opened).ok(),
    };
    Ok((Arc::new(opened), refs, None))
}

/// An import's result, its hold kept.
fn stored((hash, hold): ([u8; 32], Hold)) -> ([u8; 32], Option<Hold>) {
    (hash, Some(hold))
}

/// An error to hand to each of several files.
fn same_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Import the `refs/` file. The store opens it by path: the path must
/// lead to the file made before and after (and the caller checks that the
/// reserved directory stayed the same: nobody swapped it for a symlink).
async fn import_ref(
    folder: &Folder,
    link: &RefFile,
    rel: &str,
    at: &RefsAt,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<([u8; 32], Hold), HashError> {
    let dir = match at {
        Ok((dir, _)) => dir,
        Err(e) => {
            return Err(HashError::Disk {
                path: rel.to_string(),
                source: same_error(e),
            })
        }
    };
    let abs = dir.join(&link.name);
    if !link.is_at(&abs) {
        return Err(HashError::Changed(rel.to_string()));
    }
    let out = import_path(folder, abs.clone(), rel, progress).await?;
    if !link.is_at(&abs) {
        return Err(HashError::Changed(rel.to_string()));
    }
    Ok(out)
}

/// Import the user's path itself (no link could be made). The store opens
/// it by path, which may lead elsewhere by then: its hash must be the hash
/// of what the opened descriptor holds.
async fn import_unlinked(
    folder: &Folder,
    rel: &str,
    opened: &Arc<Opened>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<([u8; 32], Hold), HashError> {
    let (hash, hold) = import_path(folder, folder.fs.abs(rel), rel, progress).await?;
    let o = opened.clone();
    let ours = rt::blocking(move || o.hash()).await?;
    match ours {
        Ok(h) if h == hash => Ok((hash, hold)),
        Ok(_) => Err(HashError::Changed(rel.to_string())),
        Err(source) => Err(HashError::Disk {
            path: rel.to_string(),
            source,
        }),
    }
}

async fn import_path(
    folder: &Folder,
    abs: PathBuf,
    rel: &str,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<([u8; 32], Hold), HashError> {
    let (hash, hold) = folder
        .content
        .import(abs, progress)
        .await
        .map_err(|source| HashError::Import {
            path: rel.to_string(),
            source,
        })?;
    Ok((*hash.as_bytes(), hold))
}

/// Re-check the imported files, then let the index resolve every
/// observation against its current state in one transaction (skip, adopt
/// a pending remote entry, or bump to a new local version). Blocking.
/// The commit is fenced: a hasher replaced meanwhile writes nothing.
pub fn commit_chunk(
    folder: &Folder,
    health: &Health,
    chunk: Chunk,
) -> Result<Committed, HashError> {
    let (items, deferred) = recheck(folder, chunk)?;
    if items.is_empty() {
        return Ok(Committed {
            written: 0,
            deferred,
        });
    }
    let commit = Commit {
        items,
        resolved: vec![],
    };
    let replaced = || !health.is_current();
    let refs_held = folder.refs_lock();
    let c = folder
        .index
        .commit_unless(folder.id(), commit, folder.local(), replaced)?;
    // Before the refs sweep may look again and before the release: the
    // replaced content's refs entries must still be there to be kept from.
    let copies = super::keep_local::open_replaced(folder, &c.replaced_locally);
    drop(refs_held);
    super::keep_local::keep_opened(folder, copies, &|_| health.progress());
    folder.release(c.released);
    if c.written > 0 {
        folder
            .status
            .files_out_announced
            .fetch_add(c.written as u64, Ordering::Relaxed);
        folder.status.local_commits.fetch_add(1, Ordering::Relaxed);
        folder.announce(c.meta.seq);
        info!(
            folder = folder.id(),
            changes = c.written,
            seq = c.meta.seq,
            "indexed changes"
        );
    }
    Ok(Committed {
        written: c.written,
        deferred,
    })
}

/// The chunk as index items, without the files that changed while they
/// were hashed (returned to settle again; their links removed).
fn recheck(folder: &Folder, chunk: Chunk) -> Result<(Vec<Item>, Vec<String>), HashError> {
    let mut items: Vec<Item> = chunk
        .observed
        .into_iter()
        .map(|(path, seen)| Item::Observed { path, seen })
        .collect();
    let mut deferred = Vec::new();
    if chunk.imported.is_empty() {
        return Ok((items, deferred));
    }
    let session = folder.fs.session().map_err(HashError::Root)?;
    // Hashed a directory at a time: each parent is opened once more.
    let mut parents = Parents::default();
    for i in chunk.imported {
        // Same inode, stat and ctime as the descriptor that was hashed.
        if !session.still_is_in(&mut parents, &i.path, &i.opened) {
            if let Some(n) = &i.refs {
                folder.fs.remove_ref(n);
            }
            deferred.push(i.path);
            continue;
        }
        items.push(Item::Observed {
            path: i.path,
            seen: Observed::File {
                stat: i.meta.stat,
                hash: i.hash,
                refs: i.refs,
            },
        });
    }
    Ok((items, deferred))
}

/// After a failed import: did the file change or vanish (look again once
/// it settles), or is it still there as it was (it cannot be read, or the
/// store failed: retry after a backoff)? Blocking.
pub fn changed_since(folder: &Folder, rel: &str, meta: Meta) -> bool {
    !matches!(folder.fs.lstat(rel), Ok(DiskState::Present(now)) if now == meta)
}
