//! Where file content comes from and goes to: [`Content`], the one seam
//! between the actors and the blob store + peers.
//!
//! The hasher imports (big) local files and hashes small ones through it,
//! the receiver and
//! [`crate::apply`] fetch and export through it. The mesh implements it
//! ([`fleetsync_mesh::Mesh`], below); unit tests drive the receiver with
//! an in-memory fake (`crate::testing::FakeContent`), so decisions,
//! retries, conflict copies and failed fetches are tested without iroh.
//!
//! Small files are not imported when they are indexed (the hasher hashes
//! them itself, see `hasher::commit`), and small files fetched in a batch
//! are not imported when they arrive: [`IndexedRefs`] tells the mesh where
//! their content is, and the mesh imports it when a peer first asks, or
//! when [`Content::has`] is asked for it here (a rename or a copy reuses
//! it; [`fleetsync_mesh::lazy`]).

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use async_trait::async_trait;
use fleetsync_mesh::{EndpointId, FetchError, Hash, LocalContent, Mesh, StoreError};
use tracing::debug;

use crate::{folder_set::FolderSet, fsutil::Opened, index::Index};

/// Keeps content the store references safe from garbage collection until
/// dropped (the store's temp tag; nothing for a fake).
pub struct Hold(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Hold {
    pub fn new(inner: impl Send + Sync + 'static) -> Self {
        Hold(Box::new(inner))
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hold")
    }
}

/// Content of a folder's files: the local blob store and the peers that
/// can serve what it lacks. Everything that arrives is verified against
/// its BLAKE3 hash before it is written (invariant 3).
#[async_trait]
pub trait Content: Send + Sync + fmt::Debug + 'static {
    /// Peers that can be asked for content right now (every connected
    /// member, not only the one that announced it), in no particular order.
    fn providers(&self) -> Vec<EndpointId>;

    /// Is this blob complete in the local store (brought in first if the
    /// node holds it outside the store, [`IndexedRefs`])?
    async fn has(&self, hash: Hash) -> Result<bool, StoreError>;

    /// Which of `hashes` this node holds in its folders' files, each
    /// brought into the store on the way (as [`Content::has`] does). The
    /// store alone is not asked: a prefetch of small files would wait on
    /// one store lookup per file, almost always for content that is new
    /// (S3: a fifth of the receiver's CPU), while what only the store
    /// still holds is at most fetched once more. Fakes answer with
    /// [`Content::has`].
    async fn held_locally(&self, hashes: &[Hash]) -> HashSet<Hash> {
        let mut held = HashSet::new();
        for h in hashes {
            if matches!(self.has(*h).await, Ok(true)) {
                held.insert(*h);
            }
        }
        held
    }

    /// Hash the file at `path` and reference it in place (no copy);
    /// `progress` is called as the hashing moves (with the byte offset).
    async fn import(
        &self,
        path: PathBuf,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Hash, Hold), StoreError>;

    /// Hash a small file without importing it: `opened` is its descriptor,
    /// `path` its `refs/` link (the same inode, or a copy made from it).
    /// The store takes the content only when a peer asks for it
    /// ([`IndexedRefs`]). Reads through the descriptor; fakes may watch
    /// or fail it. Blocking.
    fn hash_unimported(&self, _path: &Path, opened: &Opened) -> std::io::Result<[u8; 32]> {
        opened.hash()
    }

    /// Keep `hash` from blob garbage collection while the returned hold
    /// lives (taken before a fetch into the store, dropped once the
    /// content is out in a `refs/` link). `None` if the store cannot give
    /// one (the pending row still protects it; see `retention`).
    async fn hold(&self, _hash: Hash) -> Option<Hold> {
        None
    }

    /// Move a stored blob out to `target`; the store keeps referencing it
    /// there.
    async fn export(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError>;

    /// Make everything the store recorded so far durable. Called before an
    /// index commit that references new content: the index is durable at
    /// once, the store's bookkeeping only in batches, and a crash between
    /// the two would leave an index entry this node can never serve.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Fetch a blob from `peer` into the store (resuming what is there);
    /// `progress` follows the bytes received (the caller's no-progress
    /// deadline watches it). Returns the bytes received. Dropping the
    /// future cancels the transfer; the store keeps the verified part.
    async fn fetch(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError>;

    /// Fetch a big blob into the store from several of `providers` at
    /// once, in pieces (also from members still downloading it; the
    /// `announcer` is asked only for what nobody else has): see
    /// [`fleetsync_mesh::swarm`]. Returns the bytes each provider gave.
    /// Without a swarm (fakes), the providers are asked one by one.
    async fn fetch_swarm(
        &self,
        hash: Hash,
        _size: u64,
        providers: Vec<EndpointId>,
        _announcer: Option<EndpointId>,
        progress: &AtomicU64,
        _stall: Duration,
    ) -> Result<Vec<(EndpointId, u64)>, FetchError> {
        let mut last = None;
        for peer in providers {
            match self.fetch(peer, hash, progress).await {
                Ok(n) => return Ok(vec![(peer, n)]),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::NoAddress("no provider".into())))
    }

    /// Fetch many small blobs from `peer` in one request, each straight
    /// into its file; `progress` follows the bytes received. Returns the
    /// hashes that arrived whole and the bytes received.
    async fn fetch_many(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
        progress: &AtomicU64,
    ) -> Result<(Vec<Hash>, u64), FetchError>;

    /// Stream a blob from `peer` into `file`, bypassing the store.
    async fn fetch_direct(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError>;
}

#[async_trait]
impl Content for Mesh {
    fn providers(&self) -> Vec<EndpointId> {
        self.connected_peers()
    }

    async fn has(&self, hash: Hash) -> Result<bool, StoreError> {
        self.has_blob(hash).await
    }

    async fn held_locally(&self, hashes: &[Hash]) -> HashSet<Hash> {
        self.held_outside_store(hashes).await
    }

    async fn import(
        &self,
        path: PathBuf,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Hash, Hold), StoreError> {
        let tag = self.import_in_place(path, progress).await?;
        Ok((tag.hash(), Hold::new(tag)))
    }

    async fn hold(&self, hash: Hash) -> Option<Hold> {
        match self.hold_blob(hash).await {
            Ok(tag) => Some(Hold::new(tag)),
            Err(e) => {
                tracing::debug!("no temp tag for {hash}: {e}");
                None
            }
        }
    }

    async fn export(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError> {
        self.export_in_place(hash, target).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.sync_store().await
    }

    async fn fetch(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        self.fetch_blob(peer, hash, progress).await
    }

    async fn fetch_swarm(
        &self,
        hash: Hash,
        size: u64,
        providers: Vec<EndpointId>,
        announcer: Option<EndpointId>,
        progress: &AtomicU64,
        stall: Duration,
    ) -> Result<Vec<(EndpointId, u64)>, FetchError> {
        let stats = Mesh::fetch_swarm(self, hash, size, providers, announcer, progress, stall);
        Ok(stats.await?.from)
    }

    async fn fetch_many(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
        progress: &AtomicU64,
    ) -> Result<(Vec<Hash>, u64), FetchError> {
        self.fetch_many_to(peer, items, progress).await
    }

    async fn fetch_direct(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        self.fetch_direct_to(peer, hash, file, progress).await
    }
}

/// Content up to this size may be held outside the blob store: hashed by
/// the hasher without an import, or parked by a batch fetch. Bigger
/// content is imported at every link it gets, so the mesh looks only for
/// content up to this size in `refs/` links ([`IndexedRefs`]).
pub const HELD_OUTSIDE_MAX: u64 = 1 << 20;

/// Where this node holds content outside the blob store: the `refs/`
/// links of the current records with that hash, in every folder. The
/// store hashes what it imports from them, so a link that holds other
/// bytes by now serves nothing.
#[derive(Debug)]
pub struct IndexedRefs {
    pub index: Index,
    pub folders: Arc<FolderSet>,
}

impl LocalContent for IndexedRefs {
    fn candidates(&self, hash: &Hash) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (id, folder) in self.folders.snapshot().iter() {
            match self
                .index
                .refs_with_hash(id, hash.as_bytes(), HELD_OUTSIDE_MAX)
            {
                Ok(names) => out.extend(names.iter().map(|n| folder.fs.refs_dir().join(n))),
                Err(e) => debug!(folder = %id, "cannot look up {hash}: {e}"),
            }
        }
        out
    }
}
