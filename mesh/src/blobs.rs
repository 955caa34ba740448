//! Content operations of the [`Mesh`]: the blob store and verified
//! transfers from peers. Callers (the actors) see operations, never the
//! store or a connection; every byte that arrives here has been verified
//! against its BLAKE3 hash by iroh-blobs before it is written anywhere.

use std::{
    collections::HashMap,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use iroh::endpoint::Connection;
use iroh_blobs::{
    api::{
        blobs::{AddPathOptions, ExportMode, ExportOptions, ImportMode},
        remote::GetProgressItem,
        TempTag,
    },
    get::fsm::{self, BlobContentNext, EndBlobNext},
    get::request::GetBlobItem,
    BlobFormat, Hash,
};
use n0_future::StreamExt;

use crate::{
    net::{Mesh, CLOSE_DUPLICATE},
    proto::BLOBS_ALPN,
    EndpointId,
};

/// A blob store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("blob store: {0}")]
    Store(#[from] iroh_blobs::api::Error),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

impl From<iroh_blobs::api::RequestError> for StoreError {
    fn from(e: iroh_blobs::api::RequestError) -> Self {
        StoreError::Store(e.into())
    }
}

/// Fetching content from a peer failed (the peer may be tried again, or
/// another one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("no address known for peer {0}")]
    NoAddress(String),
    #[error("connect to {peer}: timed out")]
    ConnectTimeout { peer: String },
    #[error("connect to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: iroh::endpoint::ConnectError,
    },
    #[error("transfer from {peer}: {source}")]
    Transfer {
        peer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("transfer from {peer}: the stream ended without a result")]
    Incomplete { peer: String },
    #[error("writing fetched content: {0}")]
    Write(#[source] std::io::Error),
}

impl FetchError {
    /// A transfer error from any source (also for fakes of the network).
    pub fn transfer(
        peer: &EndpointId,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        FetchError::Transfer {
            peer: peer.fmt_short().to_string(),
            source: source.into(),
        }
    }
}

impl Mesh {
    /// Is this blob complete in the local store?
    pub async fn has_blob(&self, hash: Hash) -> Result<bool, StoreError> {
        let has = self.inner.store.blobs().has(hash).await;
        Ok(has.map_err(iroh_blobs::api::Error::from)?)
    }

    /// Hash the file at `path` and reference it from the store in place (no
    /// copy). The tag keeps the entry from garbage collection until dropped.
    pub async fn import_in_place(&self, path: PathBuf) -> Result<TempTag, StoreError> {
        Ok(self
            .inner
            .store
            .add_path_with_opts(AddPathOptions {
                path,
                format: BlobFormat::Raw,
                mode: ImportMode::TryReference,
            })
            .temp_tag()
            .await?)
    }

    /// Move a stored blob out to `target`; the store keeps referencing it
    /// there (a rename when the data is a file of the store's own).
    pub async fn export_in_place(&self, hash: Hash, target: PathBuf) -> Result<(), StoreError> {
        self.inner
            .store
            .export_with_opts(ExportOptions {
                hash,
                mode: ExportMode::TryReference,
                target,
            })
            .finish()
            .await?;
        Ok(())
    }

    /// Fetch a blob (only the ranges we are missing) from one peer into the
    /// store, verifying every chunk against `hash` as it streams in.
    /// `progress` receives the running byte count.
    pub async fn fetch_blob(
        &self,
        peer: EndpointId,
        hash: Hash,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let conn = self.blob_conn(peer).await?;
        let mut stream = self.inner.store.remote().fetch(conn.clone(), hash).stream();
        while let Some(item) = stream.next().await {
            match item {
                GetProgressItem::Progress(n) => progress.store(n, Ordering::Relaxed),
                GetProgressItem::Done(stats) => return Ok(stats.payload_bytes_read),
                GetProgressItem::Error(e) => {
                    // A broken connection must not be reused for the retry.
                    self.inner.blob_conns.lock().await.remove(&peer);
                    return Err(FetchError::transfer(&peer, e));
                }
            }
        }
        Err(FetchError::Incomplete {
            peer: peer.fmt_short().to_string(),
        })
    }

    /// Fetch many (small) blobs from one peer in a single request, each
    /// verified against its hash as it streams and written straight to its
    /// target file (no blob store in between). Returns which hashes arrived
    /// complete and the payload bytes read; a blob that fails verification
    /// ends the request (the rest are then fetched some other way).
    pub async fn fetch_many_to(
        &self,
        peer: EndpointId,
        items: Vec<(Hash, PathBuf)>,
    ) -> Result<(Vec<Hash>, u64), FetchError> {
        let conn = self.blob_conn(peer).await?;
        let targets: HashMap<Hash, PathBuf> = items.into_iter().collect();
        let req: iroh_blobs::protocol::GetManyRequest = targets.keys().copied().collect();
        let hashes = req.hashes.clone();
        let mut done = Vec::new();
        let mut bytes = 0u64;
        let mut next = fsm::start_get_many(conn, req, Default::default())
            .await
            .map_err(|e| FetchError::transfer(&peer, e))?;
        loop {
            let child = match next {
                Ok(c) => c,
                Err(closing) => {
                    // The request is over; how the stream closes changes nothing.
                    closing.next().await.ok();
                    break;
                }
            };
            let Some(hash) = hashes.get(child.offset() as usize).copied() else {
                child.finish().next().await.ok();
                break;
            };
            let (content, _size) = child
                .next(hash)
                .next()
                .await
                .map_err(|e| FetchError::transfer(&peer, e))?;
            let file = std::fs::File::create(&targets[&hash]).map_err(FetchError::Write)?;
            let (end, n) = write_verified(&peer, content, &file).await?;
            bytes += n;
            done.push(hash);
            next = match end.next() {
                EndBlobNext::MoreChildren(c) => Ok(c),
                EndBlobNext::Closing(c) => Err(c),
            };
        }
        Ok((done, bytes))
    }

    /// Stream a blob from a peer straight into `file`, verified, bypassing
    /// the store (used when the store's copy is unusable). Returns the
    /// payload bytes written; `progress` counts them as they arrive.
    pub async fn fetch_direct_to(
        &self,
        peer: EndpointId,
        hash: Hash,
        file: &std::fs::File,
        progress: &AtomicU64,
    ) -> Result<u64, FetchError> {
        let conn = self.blob_conn(peer).await?;
        let mut stream = iroh_blobs::get::request::get_blob(conn, hash);
        while let Some(item) = stream.next().await {
            match item {
                GetBlobItem::Item(bao_tree::io::BaoContentItem::Leaf(leaf)) => {
                    file.write_all_at(&leaf.data, leaf.offset)
                        .map_err(FetchError::Write)?;
                    progress.fetch_add(leaf.data.len() as u64, Ordering::Relaxed);
                }
                GetBlobItem::Item(_) => {}
                GetBlobItem::Done(_) => return Ok(progress.load(Ordering::Relaxed)),
                GetBlobItem::Error(e) => return Err(FetchError::transfer(&peer, e)),
            }
        }
        Err(FetchError::Incomplete {
            peer: peer.fmt_short().to_string(),
        })
    }

    /// The blob connection to `peer`, dialed on first use and kept. The
    /// map is never locked across a dial: one unreachable peer must not
    /// hold up fetches from the others.
    async fn blob_conn(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        if let Some(c) = self.open_blob_conn(&peer).await {
            return Ok(c);
        }
        let conn = self.dial_blobs(peer).await?;
        let mut conns = self.inner.blob_conns.lock().await;
        // Another fetch may have dialed meanwhile: keep the first.
        if let Some(c) = conns.get(&peer).filter(|c| c.close_reason().is_none()) {
            conn.close(CLOSE_DUPLICATE.into(), b"duplicate blob connection");
            return Ok(c.clone());
        }
        conns.insert(peer, conn.clone());
        Ok(conn)
    }

    async fn open_blob_conn(&self, peer: &EndpointId) -> Option<Connection> {
        let conns = self.inner.blob_conns.lock().await;
        conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    async fn dial_blobs(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        let short = || peer.fmt_short().to_string();
        let addr = self
            .inner
            .endpoint_addr(peer)
            .ok_or_else(|| FetchError::NoAddress(short()))?;
        tokio::time::timeout(
            crate::net::DIAL_TIMEOUT,
            self.inner.endpoint.connect(addr, BLOBS_ALPN),
        )
        .await
        .map_err(|_| FetchError::ConnectTimeout { peer: short() })?
        .map_err(|source| FetchError::Connect {
            peer: short(),
            source,
        })
    }
}

/// Write one blob's verified leaves into `file`; returns the end of the
/// blob (to go on to the next child) and the payload bytes written.
async fn write_verified(
    peer: &EndpointId,
    mut content: fsm::AtBlobContent,
    file: &std::fs::File,
) -> Result<(fsm::AtEndBlob, u64), FetchError> {
    let mut bytes = 0u64;
    loop {
        match content.next().await {
            BlobContentNext::More((c, item)) => {
                if let bao_tree::io::BaoContentItem::Leaf(leaf) =
                    item.map_err(|e| FetchError::transfer(peer, e))?
                {
                    file.write_all_at(&leaf.data, leaf.offset)
                        .map_err(FetchError::Write)?;
                    bytes += leaf.data.len() as u64;
                }
                content = c;
            }
            BlobContentNext::Done(end) => return Ok((end, bytes)),
        }
    }
}
