//! The receiver's side of index streams: one subscription per peer
//! session, kept alive for as long as the session lives.
//!
//! The protocol (subscribing, resuming, validating every entry, backoff) is
//! [`fleetsync_mesh::index_stream::subscribe`]; this module is its
//! [`IndexSink`] for one folder and one peer ([`Sink`]): it reads the
//! persisted mark, drops the paths this folder ignores, and hands each
//! batch to the receiver actor as [`Ingest`], whose reply is the
//! backpressure.
//!
//! When the folder's caps defer part of a batch (the peer has
//! `max_pending` rows waiting, or the folder holds `max_files` paths), the
//! index keeps the peer's mark short of the deferred entries, and the sink
//! holds the stream (reads nothing more) until there is room, then offers
//! the batch again: the deferred entries arrive once rows drain, and a
//! restart in between resumes from the mark. Nothing is dropped.

use std::{sync::Arc, time::Duration};

use actix::{Addr, MailboxError};
use async_trait::async_trait;
use fleetsync_mesh::{
    identity::short_id,
    index_stream::{self, BoxError, IndexSink, Mark},
    model::{EntryKind, FileEntry},
    EndpointId, PeerSession,
};
use tracing::{info, warn};

use super::{
    msg::{CaughtUp, Ingest, Recheck},
    Receiver,
};
use crate::{
    folder::Folder,
    index::{Full, IndexError, RemoteMark},
    rt::{self, TaskError},
    tombs::{self, Rescan},
};

/// Keep a subscription to one peer's index of `folder` alive for the session.
pub(super) async fn pull(addr: Addr<Receiver>, folder: Arc<Folder>, session: PeerSession) {
    let sink = Sink {
        addr,
        folder,
        peer: session.peer,
        rescan: Rescan::default(),
    };
    index_stream::subscribe(&session, sink.folder.id(), &sink).await;
}

/// Where one peer's index of one folder goes: the receiver actor.
struct Sink {
    addr: Addr<Receiver>,
    folder: Arc<Folder>,
    peer: EndpointId,
    /// The full read after the peer said "too old", while it goes on.
    rescan: Rescan,
}

/// Reading the index for a subscription (where the last one ended,
/// whether a held batch has room) failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot read the index: {0}")]
    Index(#[from] IndexError),
}

/// Handing a batch to the receiver failed.
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("the receiver is gone: {0}")]
    Gone(#[from] MailboxError),
    #[error("the receiver could not store the batch: {0}")]
    Refused(#[source] BoxError),
}

#[async_trait]
impl IndexSink for Sink {
    async fn mark(&self) -> Result<Mark, BoxError> {
        let folder = self.folder.clone();
        let peer = *self.peer.as_bytes();
        let (mark, rescan) = rt::try_blocking(move || {
            let mark = folder.index.remote_mark(folder.id(), &peer)?;
            let rescan = folder.index.rescan_owed(folder.id(), &peer)?;
            Ok::<_, ReadError>((mark, rescan))
        })
        .await?;
        let mut mark = mark.map_or_else(Mark::default, |m| Mark {
            index_id: m.index_id,
            seq: m.seq,
        });
        // A full read owed (even one a restart cut short) starts over.
        if rescan.is_some() {
            mark.seq = 0;
            self.rescan.start();
        }
        Ok(mark)
    }

    /// Noted with how far the peer had read us before it was away (kept,
    /// so a restart in the middle of the full read does not count what the
    /// new session read of our edits made meanwhile).
    async fn too_old(&self, _horizon: u64) -> Result<(), BoxError> {
        let folder = self.folder.clone();
        let peer = *self.peer.as_bytes();
        rt::try_blocking(move || {
            if folder.index.rescan_owed(folder.id(), &peer)?.is_some() {
                return Ok(()); // noted before (a full read cut short)
            }
            let read_by = folder.readers.read_by(&peer);
            Ok::<_, ReadError>(folder.index.set_rescan(folder.id(), &peer, Some(read_by))?)
        })
        .await?;
        Ok(())
    }

    async fn settle(&self, _seq: u64) -> Result<(), BoxError> {
        let Some(peer_has) = self.rescan.finish() else {
            return Ok(());
        };
        let folder = self.folder.clone();
        let peer = *self.peer.as_bytes();
        let removed = rt::try_blocking(move || {
            let Some(read_by) = folder.index.rescan_owed(folder.id(), &peer)? else {
                return Ok(Vec::new());
            };
            let removed = tombs::take_away(&folder, &peer_has, read_by)?;
            folder.index.set_rescan(folder.id(), &peer, None)?;
            Ok::<_, ReadError>(removed)
        })
        .await?;
        if !removed.is_empty() {
            self.addr.do_send(Recheck { paths: removed });
        }
        Ok(())
    }

    async fn ingest(&self, mark: Mark, entries: Vec<FileEntry>) -> Result<(), BoxError> {
        let mark = RemoteMark {
            index_id: mark.index_id,
            seq: mark.seq,
        };
        self.rescan.saw(entries.iter().map(|e| e.path.as_str()));
        let entries = drop_ignored(&self.folder, entries);
        let mut waited = false;
        loop {
            let batch = Ingest {
                peer: self.peer,
                mark,
                entries: entries.clone(),
            };
            let done = self
                .addr
                .send(batch)
                .await
                .map_err(DeliverError::from)?
                .map_err(|e| DeliverError::Refused(e.into()))?;
            let Some(full) = done.full else {
                self.show_full(None);
                return Ok(());
            };
            if !waited {
                self.report_deferral(full, done.deferred);
                waited = true;
            }
            self.wait_for_room().await?;
        }
    }

    fn caught_up(&self, seq: u64) {
        self.addr.do_send(CaughtUp {
            peer: self.peer,
            seq,
        });
    }

    fn rejected(&self) {
        // The reason is in the log line the index stream wrote.
        self.folder.status.reject(
            short_id(&self.peer),
            "rejected malformed or invalid index data from the peer (the log has the reason)"
                .to_string(),
            false,
        );
    }
}

/// A subscription that ends (the session closed, the task aborted) no
/// longer holds entries back: its "folder full" goes from status.
impl Drop for Sink {
    fn drop(&mut self) {
        self.show_full(None);
    }
}

/// How often a held stream looks whether its folder has room again.
const ROOM_POLL: Duration = Duration::from_millis(500);

impl Sink {
    /// Log (once per held batch) and show why entries wait.
    fn report_deferral(&self, full: Full, deferred: usize) {
        let peer = self.peer.fmt_short();
        let folder = self.folder.id();
        match full {
            Full::Pending { rows } => info!(
                folder,
                %peer,
                "{deferred} entries from this peer wait: it has {rows} changes pending here (max_pending {})",
                self.folder.cfg.max_pending
            ),
            Full::Files { held } => {
                let msg = format!(
                    "folder full: it holds {held} paths (max_files {}, deletions included: they \
                     are remembered); new paths from peers wait until max_files is raised and \
                     fleetsync restarted",
                    self.folder.cfg.max_files
                );
                warn!(folder, %peer, "{msg}");
                self.show_full(Some(msg));
            }
        }
    }

    fn show_full(&self, msg: Option<String>) {
        let peer = self.peer.fmt_short().to_string();
        self.folder.status.set_full(&peer, msg);
    }

    /// Until a new pending row of this peer would fit the folder's caps.
    async fn wait_for_room(&self) -> Result<(), BoxError> {
        loop {
            tokio::time::sleep(ROOM_POLL).await;
            let folder = self.folder.clone();
            let peer = *self.peer.as_bytes();
            let full = rt::try_blocking(move || {
                let limits = folder.limits();
                Ok::<_, ReadError>(folder.index.full(folder.id(), &peer, limits)?)
            })
            .await?;
            if full.is_none() {
                return Ok(());
            }
        }
    }
}

/// `.fleetsyncignore` is node-local: remote entries for ignored paths are
/// dropped silently (they are not an error, just not ours to touch).
fn drop_ignored(folder: &Folder, entries: Vec<FileEntry>) -> Vec<FileEntry> {
    let ignore = folder.ignore();
    entries
        .into_iter()
        .filter(|e| !ignore.is_ignored(&e.path, e.kind == EntryKind::Directory))
        .collect()
}

#[cfg(test)]
mod tests {
    use fleetsync_mesh::model::{ShortId, VersionVector};

    use super::*;
    use crate::testing::{self, FakeContent};

    fn entry(path: &str, kind: EntryKind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            size: 0,
            mtime_ns: 1,
            mode: 0o755,
            hash: None,
            symlink_target: None,
            deleted: false,
            version: VersionVector::from_pairs([(ShortId(1), 1)]),
            modified_by: ShortId(1),
            sequence: 1,
        }
    }

    #[test]
    fn entries_for_ignored_paths_are_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        std::fs::write(folder.cfg.path.join(".fleetsyncignore"), "*.tmp\nbuild/\n").unwrap();
        folder.reload_ignore();
        let entries = vec![
            entry("keep.txt", EntryKind::File),
            entry("scratch.tmp", EntryKind::File),
            entry("build", EntryKind::Directory),
            entry("src", EntryKind::Directory),
        ];
        let kept: Vec<String> = drop_ignored(&folder, entries)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(kept, vec!["keep.txt".to_string(), "src".to_string()]);
    }
}
