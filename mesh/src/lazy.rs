//! Content the node indexed without putting it into the blob store, brought
//! in when a peer first asks for it.
//!
//! Importing a small file into the store costs more than hashing it: a
//! store task, a second open and read, a database row. At index time that
//! was most of the work for a folder of many small files (S7: a third of
//! all CPU in the store's threads), and on the receiving side every small
//! file that arrived was imported again. So small files are hashed by the
//! node itself and recorded with their `refs/` link only; the serving side
//! ([`crate::blobs::serve_events`]) brings a requested hash in from a
//! current link ([`Lazy::bring_in`]) before it lets the request through.
//! A current link, not just any: the store serves an entry only from the
//! paths it recorded, and those may all be gone by now (renamed, hashed
//! again, swept).
//!
//! What the store imports is hashed as it reads it, so a candidate path
//! that holds other bytes by now (written in place, or a path that led
//! elsewhere) simply does not yield the hash asked for: the request then
//! finds nothing, as for content this node never had.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use iroh_blobs::{
    api::{Store, TempTag},
    Hash,
};
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::debug;

/// Most hashes one request may bring in. Our own receiver asks for at most
/// a few hundred at once; a member asking for more gets only what the
/// store already holds for the rest.
pub const MAX_BRING_IN: usize = 1024;

/// Imports run side by side for one request.
const BRING_IN_CONCURRENCY: usize = 16;

/// Imported links remembered ([`Lazy::bring_in`]).
const BROUGHT_MAX: usize = 16_384;

/// What [`Lazy::bring_in`] did for one hash the node holds.
enum Brought {
    /// This process imported one of its current links before.
    Listed,
    /// A current link was imported now; the tag holds it.
    Imported(TempTag),
    /// None of its links holds it any more.
    NotHeld,
}

/// Where the node holds content outside the store (the actors' index of
/// `refs/` links).
pub trait LocalContent: Send + Sync + std::fmt::Debug + 'static {
    /// Files that should hold `hash`, best first. Blocking (an index read).
    fn candidates(&self, hash: &Hash) -> Vec<PathBuf>;
}

/// The store and the node's [`LocalContent`], once the node has set it
/// ([`crate::Mesh::set_local_content`]). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Lazy {
    store: Store,
    source: Arc<OnceLock<Arc<dyn LocalContent>>>,
    /// Links this process imported, with their hash: each is among its
    /// entry's paths in the store ([`Brought`]). Kept as 64-bit digests
    /// of (hash, link), 16 bytes a link instead of about 150 (S3's peak
    /// memory is a goal); a collision, about one in 10^15 per lookup with
    /// the set full, would skip one import, and the fetch fails over.
    brought: Arc<Mutex<(RandomState, HashSet<u64>)>>,
}

impl Lazy {
    pub(crate) fn new(store: impl Into<Store>) -> Self {
        Lazy {
            store: store.into(),
            source: Arc::default(),
            brought: Arc::default(),
        }
    }

    /// Set where local content is found; only the first call counts.
    pub(crate) fn set_source(&self, source: Arc<dyn LocalContent>) -> bool {
        self.source.set(source).is_ok()
    }

    /// Make sure the store can serve every hash of `wanted` (up to
    /// [`MAX_BRING_IN`]) the node holds outside it: the store's entry
    /// must list one of the hash's *current* links. Having the hash is not
    /// enough, because the store serves an entry from its recorded paths
    /// only, and the link it was imported from may be gone since (the
    /// record was renamed or hashed again, and the old link swept): the
    /// entry then fails to open on every request. So a current link is
    /// imported unless this process did that already and the entry is
    /// still there. The tags keep what was imported from garbage collection
    /// until they are dropped (the caller holds them while it serves).
    pub(crate) async fn bring_in(&self, wanted: &[Hash]) -> Vec<TempTag> {
        self.bring_in_each(wanted)
            .await
            .into_iter()
            .filter_map(|(_, b)| match b {
                Brought::Imported(tag) => Some(tag),
                Brought::Listed | Brought::NotHeld => None,
            })
            .collect()
    }

    /// Does the node hold `hash` outside the store? If so, it is brought
    /// in ([`Lazy::bring_in`]).
    pub(crate) async fn holds(&self, hash: Hash) -> bool {
        !self.held(&[hash]).await.is_empty()
    }

    /// Which of `wanted` the node holds outside the store, each brought in
    /// ([`Lazy::bring_in`]): one lookup of the links for all of them.
    pub(crate) async fn held(&self, wanted: &[Hash]) -> HashSet<Hash> {
        self.bring_in_each(wanted)
            .await
            .into_iter()
            .filter(|(_, b)| matches!(b, Brought::Imported(_) | Brought::Listed))
            .map(|(h, _)| h)
            .collect()
    }

    async fn bring_in_each(&self, wanted: &[Hash]) -> Vec<(Hash, Brought)> {
        let Some(source) = self.source.get().cloned() else {
            return Vec::new();
        };
        let wanted: Vec<Hash> = wanted.iter().copied().take(MAX_BRING_IN).collect();
        let located = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|h| (h, source.candidates(&h)))
                .filter(|(_, paths)| !paths.is_empty())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        n0_future::stream::iter(located)
            .map(|(hash, paths)| async move { (hash, self.bring_in_one(hash, paths).await) })
            .buffered_unordered(BRING_IN_CONCURRENCY)
            .collect()
            .await
    }

    /// [`Lazy::bring_in`] for one hash held at `paths`.
    async fn bring_in_one(&self, hash: Hash, paths: Vec<PathBuf>) -> Brought {
        if self.listed(hash, &paths) && self.store.blobs().has(hash).await.unwrap_or(false) {
            return Brought::Listed;
        }
        match self.import_first(hash, paths).await {
            Some((tag, path)) => {
                self.remember(hash, path);
                Brought::Imported(tag)
            }
            None => Brought::NotHeld,
        }
    }

    /// Did this process import one of `paths` for `hash`?
    fn listed(&self, hash: Hash, paths: &[PathBuf]) -> bool {
        let brought = self.brought.lock().unwrap_or_else(|p| p.into_inner());
        let (keys, set) = &*brought;
        paths
            .iter()
            .any(|p| set.contains(&keys.hash_one((hash, p))))
    }

    /// Record an imported link; forget them all past [`BROUGHT_MAX`] (they
    /// are imported again when asked for: memory stays bounded).
    fn remember(&self, hash: Hash, path: PathBuf) {
        let mut brought = self.brought.lock().unwrap_or_else(|p| p.into_inner());
        let (keys, set) = &mut *brought;
        if set.len() >= BROUGHT_MAX {
            set.clear();
        }
        set.insert(keys.hash_one((hash, &path)));
    }

    /// Import the first of `paths` that holds `hash`.
    async fn import_first(&self, hash: Hash, paths: Vec<PathBuf>) -> Option<(TempTag, PathBuf)> {
        for path in paths {
            match crate::blobs::import_path(&self.store, path.clone(), &|_| {}).await {
                Ok(tag) if tag.hash() == hash => return Some((tag, path)),
                Ok(tag) => debug!(
                    path = %path.display(),
                    "holds {} now, not {hash}: not served from there",
                    tag.hash()
                ),
                Err(e) => debug!(path = %path.display(), "cannot bring {hash} in: {e}"),
            }
        }
        None
    }
}
