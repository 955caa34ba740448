//! Verified content into `.fleetsync/refs` (a link the store references)
//! or `.fleetsync/tmp` (ours alone), ready to be placed.
//!
//! Cheapest source first: content parked by an earlier attempt or a
//! prefetch; content a file deleted a moment ago left behind (a rename
//! reaches us as a delete and a create); the local store; a peer, into the
//! store (resumable) and then out of it by rename; and as a last resort a
//! peer straight into a temp file. Content that came from a local copy is
//! re-hashed before it is trusted (invariant 3): the copy may have been
//! edited in place since it was hashed.
//!
//! Every transfer runs under the no-progress deadline
//! ([`watched`](super::watchdog::watched)). A peer whose transfer stalls
//! or fails is marked slow for that content ([`Folder::mark_slow`]) and the
//! next one is asked ([`candidates`]: connected peers only, the announcer
//! first, slow ones last); a stalled `GetMany` leaves its files to the
//! one-by-one path.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use fleetsync_mesh::{swarm::SWARM_MIN_BYTES, EndpointId, FetchError, Hash};
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::{debug, info, warn};

use super::{
    error::on_disk,
    watchdog::{capped, watched},
    ApplyError, Job, Sources,
};
use crate::{
    folder::Folder,
    fsutil::{hash_file, random_u32, ref_shard, ReservedStamp},
    rt, space,
};

/// Parallel `GetMany` requests per peer when prefetching a batch.
const FETCH_STREAMS: usize = 4;

/// Where content waits before it is placed.
#[derive(Debug, Clone)]
pub(super) enum Staged {
    /// `<root>/.fleetsync/refs/<name>`, referenced by the store.
    Refs(String),
    /// `<root>/.fleetsync/tmp/<name>`, ours alone.
    Tmp(String),
    /// Content the store references in `refs/<refs>`, and a copy of it in
    /// `tmp/<tmp>` that becomes the user's file, so the two stay apart
    /// ([`Folder::refs_are_copies`]).
    Copied { refs: String, tmp: String },
}

impl Staged {
    pub fn path(&self, folder: &Folder) -> PathBuf {
        match self {
            Staged::Refs(n) => folder.fs.refs_dir().join(n),
            Staged::Tmp(n) | Staged::Copied { tmp: n, .. } => folder.fs.tmp_dir().join(n),
        }
    }

    /// The `refs/` link a record keeps, if the content lives in one.
    pub fn refs_name(&self) -> Option<String> {
        match self {
            Staged::Refs(n) | Staged::Copied { refs: n, .. } => Some(n.clone()),
            Staged::Tmp(_) => None,
        }
    }

    /// Not placed after all: a `refs/` link is parked for the next attempt
    /// (the store references it); a temp file is removed.
    pub fn abandon(&self, folder: &Folder, hash: [u8; 32]) {
        match self {
            Staged::Refs(n) => folder.park(hash, n.clone()),
            // Best effort: retention sweeps stale temp files anyway.
            Staged::Tmp(n) => discard(&folder.fs.tmp_dir().join(n)),
            Staged::Copied { refs, tmp } => {
                discard(&folder.fs.tmp_dir().join(tmp));
                folder.park(hash, refs.clone());
            }
        }
    }

    /// Content in `refs/` gets a copy of its own to be placed when the
    /// folder's `refs/` entries must stay apart from the user's files
    /// ([`Folder::refs_are_copies`]). If the copy cannot be made, the link
    /// is placed: the content is right, and only a later in-place write
    /// to it would go unkept (counted as missed then). Blocking.
    pub fn apart_from_store(self, folder: &Folder, path: &str) -> Staged {
        let Staged::Refs(refs) = self else {
            return self;
        };
        if !folder.refs_are_copies() {
            return Staged::Refs(refs);
        }
        match folder.fs.session().and_then(|s| s.copy_ref_to_tmp(&refs)) {
            Ok(tmp) => Staged::Copied { refs, tmp },
            Err(e) => {
                warn!(
                    folder = folder.id(),
                    path, "cannot copy the received content apart from the store ({e}); linking it"
                );
                Staged::Refs(refs)
            }
        }
    }
}

/// Remove a file we no longer need. Best effort: what is left behind is
/// swept by retention (stale temp files, unused `refs/` links).
pub(super) fn discard(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            debug!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

/// A fresh `refs/` name for content with this hash, in the shard of its
/// first byte.
fn refs_name(hash: &Hash) -> String {
    let shard = ref_shard(hash.as_bytes()[0]);
    format!("{shard}/{}-{:08x}", hash.to_hex(), random_u32())
}

/// An empty temp file (the empty blob needs no transfer).
pub(super) async fn empty(folder: &Folder, path: &str) -> Result<Staged, ApplyError> {
    let name = folder.fs.new_tmp_name();
    let p = folder.fs.tmp_dir().join(&name);
    on_disk("create empty file", path, move || {
        std::fs::File::create(&p).map(|_| ())
    })
    .await?;
    Ok(Staged::Tmp(name))
}

/// The job's content, staged, from the cheapest source that has it.
pub(super) async fn acquire(
    folder: &Arc<Folder>,
    job: &Job,
    hash: Hash,
    sources: &Sources,
) -> Result<Staged, ApplyError> {
    if let Some(name) = take_parked(folder, hash.as_bytes()) {
        return Ok(Staged::Refs(name));
    }
    if let Some(name) = revive_released(folder, hash).await? {
        return Ok(Staged::Refs(name));
    }
    let had = folder.content.has(hash).await.unwrap_or_else(|e| {
        debug!(
            folder = folder.id(),
            "blob store lookup failed ({e}); fetching"
        );
        false
    });
    // From before the fetch until the content is out in `refs/`, GC must
    // not take what the transfer writes (the pending row protects it too,
    // but only from the next live-set read on).
    let hold = folder.content.hold(hash).await;
    if !had {
        ensure_space(folder, job, job.target.size).await?;
        fetch_into_store(folder, job, hash, sources).await?;
    }
    let exported = export_to_refs(folder, job, hash, had).await?;
    drop(hold);
    if let Some(name) = exported {
        return Ok(Staged::Refs(name));
    }
    ensure_space(folder, job, job.target.size).await?;
    fetch_direct(folder, job, hash, sources).await
}

/// Is there room for `size` more bytes (plus the folder's `min_free`) on
/// the folder's filesystem and the data dir's? Checked before every fetch,
/// so a huge announcement is refused before its first byte, and a fetch
/// that failed on a full disk does not grow again until space is back.
async fn ensure_space(folder: &Folder, job: &Job, size: u64) -> Result<(), ApplyError> {
    let root = folder.cfg.path.clone();
    let data = folder.index.dir().to_path_buf();
    let min_free = folder.cfg.min_free;
    rt::blocking(move || space::check(&root, &data, size, min_free))
        .await?
        .map_err(|source| ApplyError::NoSpace {
            path: job.path.clone(),
            source,
        })
}

/// Parked content of this hash, if its link is still a file of its own. A
/// link that another file shares (a record that was superseded after its
/// file was placed) would tie two files together: it is left for
/// retention to sweep once nothing uses it.
pub(super) fn take_parked(folder: &Folder, hash: &[u8; 32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let name = folder.unpark(hash)?;
    let meta = std::fs::symlink_metadata(folder.fs.refs_dir().join(&name)).ok()?;
    (meta.is_file() && meta.nlink() == 1).then_some(name)
}

/// Content a file deleted a moment ago left in `refs/`, if still intact.
async fn revive_released(folder: &Arc<Folder>, hash: Hash) -> Result<Option<String>, ApplyError> {
    if !folder.has_released(hash.as_bytes()) {
        return Ok(None);
    }
    let f = folder.clone();
    Ok(rt::blocking(move || revive(&f, hash.as_bytes())).await?)
}

/// A released `refs/` link of this hash (see [`Folder::release`]) that
/// still hashes to it and that nothing else links to (a link shared with
/// a live file would tie the two files together). Blocking.
fn revive(folder: &Folder, hash: &[u8; 32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    while let Some(name) = folder.take_released(hash) {
        let path = folder.fs.refs_dir().join(&name);
        let alone = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.nlink() == 1);
        if alone && hash_file(&path).is_ok_and(|h| h == *hash) {
            return Some(name);
        }
        folder.fs.remove_ref(&name);
    }
    None
}

/// Who to ask for `hash`, best first: connected peers only; the peer that
/// announced the job (`from`), then the attempt's order, then any other
/// connected member; peers whose transfer of this content stalled or
/// failed go last, and those that did so during this very attempt (since
/// `sources.started`) are not asked again in it.
fn candidates(folder: &Folder, hash: &Hash, from: &[u8; 32], sources: &Sources) -> Vec<EndpointId> {
    let live = folder.content.providers();
    let mut order: Vec<EndpointId> = sources
        .providers
        .iter()
        .filter(|p| live.contains(p))
        .copied()
        .collect();
    for p in live {
        if !order.contains(&p) {
            order.push(p);
        }
    }
    let mut ranked: Vec<(bool, bool, EndpointId)> = Vec::with_capacity(order.len());
    for p in order {
        match folder.slow_since(hash.as_bytes(), &p) {
            Some(at) if at >= sources.started => {}
            mark => ranked.push((mark.is_some(), p.as_bytes() != from, p)),
        }
    }
    // Stable: within each rank the attempt's order stays.
    ranked.sort_by_key(|(slow, other, _)| (*slow, *other));
    ranked.into_iter().map(|(_, _, p)| p).collect()
}

/// The next peer to ask for the job's content, not yet asked in this loop.
fn next_peer(
    folder: &Folder,
    job: &Job,
    hash: &Hash,
    sources: &Sources,
    asked: &[EndpointId],
) -> Option<EndpointId> {
    candidates(folder, hash, &job.from, sources)
        .into_iter()
        .find(|p| !asked.contains(p))
}

/// How one transfer from one peer ended, as the job's error if it failed
/// (the peer is then marked slow for this content).
fn attempt_failed(
    folder: &Folder,
    job: &Job,
    hash: &Hash,
    peer: EndpointId,
    res: Result<Result<u64, fleetsync_mesh::FetchError>, super::Stalled>,
) -> Result<u64, ApplyError> {
    let e = match res {
        Ok(Ok(n)) => return Ok(n),
        Ok(Err(e)) => {
            debug!(folder = folder.id(), path = %job.path, peer = %peer.fmt_short(), "fetch failed: {e}");
            ApplyError::Fetch {
                path: job.path.clone(),
                source: Box::new(e),
            }
        }
        Err(stalled) => {
            info!(folder = folder.id(), path = %job.path, peer = %peer.fmt_short(), "transfer stalled ({stalled}); asking another peer");
            ApplyError::Stalled {
                path: job.path.clone(),
                peer: peer.fmt_short().to_string(),
                source: stalled,
            }
        }
    };
    folder.mark_slow(*hash.as_bytes(), peer);
    Err(e)
}

/// Fetch into the store: a big blob from every connected member that has
/// some of it at once ([`fetch_as_swarm`]), anything else (or what the
/// swarm could not get) from the best peer that gives it, each attempt
/// resuming whatever the earlier ones verified.
async fn fetch_into_store(
    folder: &Folder,
    job: &Job,
    hash: Hash,
    sources: &Sources,
) -> Result<(), ApplyError> {
    if job.target.size >= SWARM_MIN_BYTES {
        let providers = candidates(folder, &hash, &job.from, sources);
        if providers.len() > 1 {
            match fetch_as_swarm(folder, job, hash, providers, sources).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    debug!(folder = folder.id(), path = %job.path, "swarm fetch: {e}; asking peers one by one")
                }
            }
        }
    }
    fetch_from_one(folder, job, hash, sources).await
}

/// One big blob from several `providers` at once, in pieces (see
/// [`fleetsync_mesh::swarm`]), under the same stall watchdog and size cap
/// as a one-peer fetch.
async fn fetch_as_swarm(
    folder: &Folder,
    job: &Job,
    hash: Hash,
    providers: Vec<EndpointId>,
    sources: &Sources,
) -> Result<(), ApplyError> {
    let announcer = EndpointId::from_bytes(&job.from).ok();
    let size = job.target.size;
    let label = format!("{} peers", providers.len());
    let t = folder.status.track(&job.path, label, size);
    let first = providers[0];
    let stall = folder.transfer_stall;
    let fetch = folder
        .content
        .fetch_swarm(hash, size, providers, announcer, &t.done, stall);
    let fetch = bounded(fetch, &t.done, size, &first);
    let res = watched(fetch, &t.done, stall, &sources.health).await;
    let by_peer = match res {
        Ok(Ok(by_peer)) => by_peer,
        Ok(Err(e)) => {
            return Err(ApplyError::Fetch {
                path: job.path.clone(),
                source: Box::new(e),
            })
        }
        Err(stalled) => {
            return Err(ApplyError::Stalled {
                path: job.path.clone(),
                peer: "swarm".to_string(),
                source: stalled,
            })
        }
    };
    for (peer, n) in by_peer {
        folder.status.received(&peer, n);
    }
    Ok(())
}

/// Fetch into the store from the best peer that gives it, one after the
/// other.
async fn fetch_from_one(
    folder: &Folder,
    job: &Job,
    hash: Hash,
    sources: &Sources,
) -> Result<(), ApplyError> {
    let mut asked = Vec::new();
    let mut last = None;
    while let Some(peer) = next_peer(folder, job, &hash, sources, &asked) {
        asked.push(peer);
        let t = folder
            .status
            .track(&job.path, peer.fmt_short().to_string(), job.target.size);
        let fetch = folder.content.fetch(peer, hash, &t.done);
        let fetch = bounded(fetch, &t.done, job.target.size, &peer);
        let res = watched(fetch, &t.done, folder.transfer_stall, &sources.health).await;
        match attempt_failed(folder, job, &hash, peer, res) {
            Ok(n) => {
                folder.status.received(&peer, n);
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(no_peer_could(job, last))
}

/// A fetch cut off once it brings more than `announced` bytes ([`capped`]);
/// being cut is its error (the entry is then rejected, see
/// [`ApplyError::disposition`]).
async fn bounded<T>(
    fetch: impl std::future::Future<Output = Result<T, FetchError>>,
    bytes: &AtomicU64,
    announced: u64,
    peer: &EndpointId,
) -> Result<T, FetchError> {
    capped(fetch, bytes, announced)
        .await
        .unwrap_or_else(|over| Err(FetchError::transfer(peer, over)))
}

/// Why no provider gave the content: the last peer's error, or none asked.
fn no_peer_could(job: &Job, last: Option<ApplyError>) -> ApplyError {
    last.unwrap_or_else(|| ApplyError::NoProvider {
        path: job.path.clone(),
    })
}

/// Move the stored blob out into a fresh `refs/` link. `None` if the store
/// could not give verified content (the caller then streams it directly).
async fn export_to_refs(
    folder: &Folder,
    job: &Job,
    hash: Hash,
    was_local: bool,
) -> Result<Option<String>, ApplyError> {
    let name = refs_name(&hash);
    // The store writes to (and keeps) a real path: only through our own
    // `.fleetsync`, checked before and after (see `still_reserved`).
    let (path, stamp) = match folder.fs.store_ref_path(&name) {
        Ok(p) => p,
        Err(e) => {
            debug!(folder = folder.id(), path = %job.path, "no export: {e}");
            return Ok(None);
        }
    };
    if let Err(e) = folder.content.export(hash, path.clone()).await {
        debug!(folder = folder.id(), path = %job.path, "export failed: {e}");
        discard(&path);
        return Ok(None);
    }
    if !folder.fs.still_reserved(&stamp) {
        warn!(folder = folder.id(), path = %job.path, "the staging directory was replaced during an export; content fetched directly instead");
        return Ok(None);
    }
    if was_local {
        let p = path.clone();
        let h = on_disk("verify local copy", &job.path, move || hash_file(&p)).await?;
        if h != *hash.as_bytes() {
            debug!(folder = folder.id(), path = %job.path, "local copy of the content is stale");
            discard(&path);
            return Ok(None);
        }
    }
    Ok(Some(name))
}

/// Stream verified content from a peer straight into a temp file,
/// bypassing the store (when the store's copy is unusable).
async fn fetch_direct(
    folder: &Folder,
    job: &Job,
    hash: Hash,
    sources: &Sources,
) -> Result<Staged, ApplyError> {
    let name = folder.fs.new_tmp_name();
    let tmp = folder.fs.tmp_dir().join(&name);
    let mut asked = Vec::new();
    let mut last = None;
    while let Some(peer) = next_peer(folder, job, &hash, sources, &asked) {
        asked.push(peer);
        let file = std::fs::File::create(&tmp)
            .map_err(ApplyError::io_at("create temp file", &job.path))?;
        let t = folder
            .status
            .track(&job.path, peer.fmt_short().to_string(), job.target.size);
        let fetch = folder.content.fetch_direct(peer, hash, &file, &t.done);
        let fetch = bounded(fetch, &t.done, job.target.size, &peer);
        let res = watched(fetch, &t.done, folder.transfer_stall, &sources.health).await;
        // Counted whether or not it completed: these bytes crossed the wire.
        let n = t.done.load(Ordering::Relaxed);
        folder.status.received(&peer, n);
        match attempt_failed(folder, job, &hash, peer, res) {
            Ok(_) => return Ok(Staged::Tmp(name)),
            Err(e) => last = Some(e),
        }
    }
    discard(&tmp);
    Err(no_peer_could(job, last))
}

/// Fetch the content of a batch of small files with a few `GetMany`
/// requests per peer, straight into files that become parked `refs/`
/// links (no per-blob store bookkeeping on the way in). What does not
/// arrive is fetched one by one by [`acquire`].
pub(super) async fn prefetch(folder: &Arc<Folder>, jobs: &[Job], sources: &Sources) {
    revive_all_released(folder, jobs).await;
    // Content arrives straight under its `refs/` name: a rename from a
    // temp file cost as much as the file's creation (S3). Under the stamp
    // of the staging directory, checked again before anything is parked.
    let f = folder.clone();
    let (refs_dir, stamp) = match rt::blocking(move || f.fs.store_refs_dir()).await {
        Ok(Ok(r)) => r,
        failed => {
            // Nothing lost: those files are fetched one by one.
            debug!(folder = folder.id(), "no prefetch: {failed:?}");
            return;
        }
    };
    let want = wanted(folder, jobs, sources, &refs_dir).await;
    if !batch_fits(folder, jobs, &want).await {
        return;
    }
    let sizes = sizes(jobs);
    let requests: Vec<(EndpointId, Vec<(Hash, PathBuf)>)> = want
        .into_iter()
        .flat_map(|(peer, items)| {
            let per = items.len().div_ceil(FETCH_STREAMS).max(1);
            let chunks: Vec<_> = items.chunks(per).map(|c| (peer, c.to_vec())).collect();
            chunks
        })
        .collect();
    let arrived: Vec<(Hash, PathBuf)> = n0_future::stream::iter(requests)
        .map(|(peer, items)| {
            let limit = announced(&sizes, &items);
            fetch_many(folder, peer, items, limit, sources)
        })
        .buffered_unordered(FETCH_STREAMS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let f = folder.clone();
    if let Err(e) = rt::blocking(move || park_arrived(&f, arrived, stamp)).await {
        // Nothing lost: those files are fetched one by one.
        debug!(folder = folder.id(), "parking fetched content failed: {e}");
    }
}

/// Does everything a prefetch would fetch fit? If not, nothing is
/// prefetched: each file then takes [`acquire`], which checks its own size
/// and says which one does not fit.
async fn batch_fits(
    folder: &Folder,
    jobs: &[Job],
    want: &BTreeMap<EndpointId, Vec<(Hash, PathBuf)>>,
) -> bool {
    let hashes: HashSet<[u8; 32]> = want
        .values()
        .flatten()
        .map(|(h, _)| *h.as_bytes())
        .collect();
    let mut seen = HashSet::new();
    let total = jobs
        .iter()
        .filter(|j| {
            j.target
                .hash
                .is_some_and(|h| hashes.contains(&h) && seen.insert(h))
        })
        .fold(0u64, |n, j| n.saturating_add(j.target.size));
    match jobs.first() {
        Some(job) if total > 0 => ensure_space(folder, job, total).await.is_ok(),
        _ => true,
    }
}

/// Content of files deleted a moment ago (a rename's other half) is
/// reused, not downloaded.
async fn revive_all_released(folder: &Arc<Folder>, jobs: &[Job]) {
    let mut reuse: Vec<[u8; 32]> = jobs
        .iter()
        .filter_map(|j| j.target.hash)
        .filter(|h| *h != *Hash::EMPTY.as_bytes() && folder.has_released(h))
        .collect();
    reuse.sort_unstable();
    reuse.dedup();
    if reuse.is_empty() {
        return;
    }
    let f = folder.clone();
    let revived = rt::blocking(move || {
        for h in reuse {
            if let Some(name) = revive(&f, &h) {
                f.park(h, name);
            }
        }
    })
    .await;
    if let Err(e) = revived {
        // Nothing lost: those files are fetched instead.
        debug!(folder = folder.id(), "reusing released content failed: {e}");
    }
}

/// What to fetch from whom: each missing hash once, from the best
/// candidate (the peer that announced it, unless that one is slow for it),
/// into a fresh `refs/` name in `refs_dir`.
async fn wanted(
    folder: &Folder,
    jobs: &[Job],
    sources: &Sources,
    refs_dir: &std::path::Path,
) -> BTreeMap<EndpointId, Vec<(Hash, PathBuf)>> {
    let mut want: BTreeMap<EndpointId, Vec<(Hash, PathBuf)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let maybe: Vec<(&Job, Hash)> = jobs
        .iter()
        .filter_map(|job| {
            let h = job.target.hash.map(Hash::from_bytes)?;
            let new = h != Hash::EMPTY && seen.insert(h) && !folder.is_parked(h.as_bytes());
            new.then_some((job, h))
        })
        .collect();
    // Content one of our folders holds is brought in, not fetched; one
    // lookup for the whole batch.
    let hashes: Vec<Hash> = maybe.iter().map(|(_, h)| *h).collect();
    let held = folder.content.held_locally(&hashes).await;
    let missing = maybe.into_iter().filter(|(_, h)| !held.contains(h));
    for (job, h) in missing {
        if let Some(p) = candidates(folder, &h, &job.from, sources).first() {
            want.entry(*p)
                .or_default()
                .push((h, refs_dir.join(refs_name(&h))));
        }
    }
    want
}

/// One `GetMany` request under the no-progress deadline; returns what
/// arrived whole (the files of the rest removed). If it fails or
/// stalls, the peer is marked slow for every content it was asked for,
/// and those files are fetched one by one, from others first.
async fn fetch_many(
    folder: &Folder,
    peer: EndpointId,
    items: Vec<(Hash, PathBuf)>,
    limit: u64,
    sources: &Sources,
) -> Vec<(Hash, PathBuf)> {
    let bytes = AtomicU64::new(0);
    let fetch = folder.content.fetch_many(peer, items.clone(), &bytes);
    let fetch = bounded(fetch, &bytes, limit, &peer);
    let res = watched(fetch, &bytes, folder.transfer_stall, &sources.health).await;
    let why = match res {
        Ok(Ok((got, n))) => {
            folder.status.received(&peer, n);
            let got: HashSet<Hash> = got.into_iter().collect();
            return keep_arrived(items, &got);
        }
        Ok(Err(e)) => e.to_string(),
        Err(stalled) => stalled.to_string(),
    };
    debug!(
        folder = folder.id(),
        files = items.len(),
        peer = %peer.fmt_short(),
        "batch fetch failed ({why}); fetching one by one"
    );
    for (h, _) in &items {
        folder.mark_slow(*h.as_bytes(), peer);
    }
    keep_arrived(items, &HashSet::new())
}

/// The most any job announced for each content.
fn sizes(jobs: &[Job]) -> HashMap<[u8; 32], u64> {
    let mut sizes: HashMap<[u8; 32], u64> = HashMap::new();
    for j in jobs {
        if let Some(h) = j.target.hash {
            let s = sizes.entry(h).or_default();
            *s = (*s).max(j.target.size);
        }
    }
    sizes
}

/// The bytes announced for these items' contents: a `GetMany` that brings
/// more is cut.
fn announced(sizes: &HashMap<[u8; 32], u64>, items: &[(Hash, PathBuf)]) -> u64 {
    items
        .iter()
        .map(|(h, _)| sizes.get(h.as_bytes()).copied().unwrap_or(0))
        .fold(0u64, u64::saturating_add)
}

/// The items in `got`; the partial files of the others are removed.
fn keep_arrived(items: Vec<(Hash, PathBuf)>, got: &HashSet<Hash>) -> Vec<(Hash, PathBuf)> {
    let (ok, missed): (Vec<_>, Vec<_>) = items.into_iter().partition(|(h, _)| got.contains(h));
    for (_, tmp) in missed {
        discard(&tmp);
    }
    ok
}

/// Verified arrivals become parked `refs/` links. They are not imported
/// into the store: the `refs/` link of the record they become is where
/// the mesh finds them when a peer asks (`fleetsync_mesh::lazy`). The
/// staging directory must have stayed ours (`stamp`, taken before they
/// were written), or they are removed and fetched again. Blocking.
fn park_arrived(folder: &Folder, arrived: Vec<(Hash, PathBuf)>, stamp: ReservedStamp) {
    let ours = folder.fs.still_reserved(&stamp);
    let refs_dir = folder.fs.refs_dir();
    for (hash, refs) in arrived {
        let name = refs.strip_prefix(&refs_dir).ok().and_then(|n| n.to_str());
        match (ours, name) {
            (true, Some(name)) => folder.park(*hash.as_bytes(), name.to_string()),
            _ => discard(&refs), // fetched again later
        }
    }
}
