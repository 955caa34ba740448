//! Content the node indexed without putting it into the blob store, brought
//! in when a peer first asks for it.
//!
//! Importing a small file into the store costs more than hashing it: a
//! store task, a second open and read, a database row. At index time that
//! was most of the work for a folder of many small files (S7: a third of
//! all CPU in the store's threads), and on the receiving side every small
//! file that arrived was imported again. So small files are hashed by the
//! node itself and recorded with their `refs/` link only; the serving side
//! ([`crate::blobs::serve_events`]) brings a requested hash the store lacks
//! in from there ([`Lazy::bring_in`]) before it lets the request through.
//!
//! What the store imports is hashed as it reads it, so a candidate path
//! that holds other bytes by now (written in place, or a path that led
//! elsewhere) simply does not yield the hash asked for: the request then
//! finds nothing, as for content this node never had.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
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
}

impl Lazy {
    pub(crate) fn new(store: impl Into<Store>) -> Self {
        Lazy {
            store: store.into(),
            source: Arc::default(),
        }
    }

    /// Set where local content is found; only the first call counts.
    pub(crate) fn set_source(&self, source: Arc<dyn LocalContent>) -> bool {
        self.source.set(source).is_ok()
    }

    /// Make every hash of `wanted` (up to [`MAX_BRING_IN`]) that the store
    /// lacks and the node holds complete in the store. The tags keep what
    /// was brought in from garbage collection until they are dropped (the
    /// caller holds them while it serves the request).
    pub(crate) async fn bring_in(&self, wanted: &[Hash]) -> Vec<TempTag> {
        let Some(source) = self.source.get().cloned() else {
            return Vec::new();
        };
        let missing = self.missing(wanted).await;
        if missing.is_empty() {
            return Vec::new();
        }
        let located = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                .map(|h| (h, source.candidates(&h)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        n0_future::stream::iter(located)
            .map(|(hash, paths)| self.import_first(hash, paths))
            .buffered_unordered(BRING_IN_CONCURRENCY)
            .filter_map(|tag| tag)
            .collect()
            .await
    }

    /// Which of `wanted` the store does not hold complete.
    async fn missing(&self, wanted: &[Hash]) -> Vec<Hash> {
        let blobs = self.store.blobs();
        n0_future::stream::iter(wanted.iter().copied().take(MAX_BRING_IN))
            .map(|h| async move { (h, blobs.has(h).await.unwrap_or(true)) })
            .buffered_unordered(BRING_IN_CONCURRENCY)
            .filter_map(|(h, has)| (!has).then_some(h))
            .collect()
            .await
    }

    /// Import the first of `paths` that holds `hash`.
    async fn import_first(&self, hash: Hash, paths: Vec<PathBuf>) -> Option<TempTag> {
        for path in paths {
            match crate::blobs::import_path(&self.store, path.clone(), &|_| {}).await {
                Ok(tag) if tag.hash() == hash => return Some(tag),
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
