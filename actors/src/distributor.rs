//! Distributor (one per node): keeps every connected peer's copy of our
//! index current.
//!
//! A peer subscribes per folder on its own QUIC stream, telling us our
//! index id and the last sequence number it has (Syncthing-style delta
//! index). We send what it lacks in batches, a `CaughtUp` marker, and then
//! each new commit as the folder's head signal moves. QUIC flow control is
//! the backpressure: a slow peer simply makes our writes wait.
//!
//! We never send entries a peer gave us verbatim back to it (no echo), nor
//! unannounced local edits of receive-only folders. Entries applied from
//! one peer are offered to all others, so changes travel across the mesh.
//!
//! The protocol itself (streams, batches, `CaughtUp`, following the head)
//! is [`fleetsync_mesh::index_stream::serve`]; this module supplies what it
//! reads ([`Shared`], [`ServedFolder`]) and keeps the policy of what a peer
//! may see ([`may_send`]). Serving runs in tasks on the node runtime; the
//! actor owns their handles (aborted on peer loss or restart) and the
//! progress they report.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use actix::prelude::*;
use async_trait::async_trait;
use fleetsync_mesh::{
    index_stream::{self, BoxError, IndexSource, Peer, SharedFolders, Slice},
    model::{FileEntry, ShortId},
    EndpointId, PeerSession,
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::warn;

use crate::{
    folder::Folder,
    folder_set::FolderSet,
    health::Health,
    index::IndexError,
    msg::{PeerDown, PeerUp, Ping},
    record::Record,
    rt::{self, TaskError},
};

pub mod msg {
    use actix::Message;

    /// What each peer has been sent, per folder.
    #[derive(Debug, Message)]
    #[rtype(result = "Vec<super::Outbound>")]
    pub struct GetOutbound;
}

use msg::GetOutbound;

/// Progress of one subscription.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub peer: EndpointId,
    pub folder: String,
    pub sent_seq: u64,
    pub caught_up: bool,
}

type Progress = Arc<Mutex<BTreeMap<(EndpointId, String), Outbound>>>;

pub struct Distributor {
    health: Arc<Health>,
    folders: Arc<FolderSet>,
    sessions: HashMap<u64, (EndpointId, JoinHandle<()>)>,
    progress: Progress,
}

impl Distributor {
    pub fn new(folders: Arc<FolderSet>, health: Arc<Health>) -> Self {
        Distributor {
            health,
            folders,
            sessions: HashMap::new(),
            progress: Default::default(),
        }
    }
}

impl Actor for Distributor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, (_, h)) in self.sessions.drain() {
            h.abort();
        }
    }
}

impl Handler<Ping> for Distributor {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

impl Handler<PeerUp> for Distributor {
    type Result = ();

    fn handle(&mut self, PeerUp(session): PeerUp, _: &mut Context<Self>) {
        if self.sessions.contains_key(&session.conn_id) {
            return;
        }
        let shared = Arc::new(Shared {
            folders: self.folders.clone(),
            progress: self.progress.clone(),
            health: self.health.clone(),
            session: Some(session.clone()),
        });
        let (peer, conn_id) = (session.peer, session.conn_id);
        // Owned by this incarnation: a replaced distributor serves nothing.
        let h = self.health.spawn(index_stream::serve(session, shared));
        self.sessions.insert(conn_id, (peer, h));
    }
}

impl Handler<PeerDown> for Distributor {
    type Result = ();

    fn handle(&mut self, m: PeerDown, _: &mut Context<Self>) {
        self.session_down(m.peer, m.conn_id);
    }
}

impl Distributor {
    /// Stop serving a session. Its progress goes with the peer's last
    /// session: when a duplicate connection was replaced, the old one's
    /// `PeerDown` arrives after the new one's `PeerUp`, and the new
    /// session's progress must stay.
    fn session_down(&mut self, peer: EndpointId, conn_id: u64) {
        if let Some((_, h)) = self.sessions.remove(&conn_id) {
            h.abort();
        }
        if self.sessions.values().any(|(p, _)| *p == peer) {
            return;
        }
        self.progress
            .lock()
            .expect("progress lock")
            .retain(|(p, _), _| *p != peer);
    }
}

impl Handler<GetOutbound> for Distributor {
    type Result = MessageResult<GetOutbound>;

    fn handle(&mut self, _: GetOutbound, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.progress
                .lock()
                .expect("progress lock")
                .values()
                .cloned()
                .collect(),
        )
    }
}

/// Our folders as the index streams of one session see them (the set as
/// it is when each stream opens: a folder a reload added is served at once).
struct Shared {
    folders: Arc<FolderSet>,
    progress: Progress,
    /// Every batch sent is progress of the distributor. Waiting for a peer
    /// to read is not its own work: a slow peer is the mesh's business
    /// (QUIC flow control, the idle timeout), not a reason to restart.
    health: Arc<Health>,
    /// The session served: a folder the peer asks for and we share wakes
    /// our own subscription to it there, if the peer had said "not shared"
    /// (a reload added the folder on one side). `None` in unit tests.
    session: Option<PeerSession>,
}

impl SharedFolders for Shared {
    type Source = ServedFolder;

    fn open(&self, folder: &str, peer: &Peer) -> Option<ServedFolder> {
        let folder = self.folders.get(folder)?;
        if let Some(s) = &self.session {
            s.peer_shares(folder.id());
        }
        let id = *peer.id.as_bytes();
        folder.readers.opened(id, folder.cfg.tombstone_ttl / 2);
        Some(ServedFolder {
            folder,
            peer: peer.short,
            id,
            echo_upto: Mutex::new(None),
        })
    }

    fn progress(&self, peer: &Peer, folder: &str, sent_seq: u64, caught_up: bool) {
        self.health.progress();
        if let Some(f) = self.folders.get(folder) {
            // Sent is as good as read for expiry: a peer that lost what
            // it was sent asks from below our horizon and is told to read
            // everything again.
            f.readers.read(*peer.id.as_bytes(), sent_seq);
        }
        let out = Outbound {
            peer: peer.id,
            folder: folder.to_string(),
            sent_seq,
            caught_up,
        };
        self.progress
            .lock()
            .expect("progress lock")
            .insert((peer.id, folder.to_string()), out);
    }

    /// An entry too large to send (a hostile vector merged locally): counted
    /// with the folder's other rejected hostile input.
    fn unsendable(&self, peer: &Peer, folder: &str, entry: &FileEntry) {
        if let Some(f) = self.folders.get(folder) {
            f.status.reject(
                peer.short,
                format!("not sent {}: its entry is too large to send", entry.path),
                false,
            );
        }
    }
}

/// One folder's index as one peer gets it (one per subscription stream).
struct ServedFolder {
    folder: Arc<Folder>,
    peer: ShortId,
    id: [u8; 32],
    /// Rows up to this sequence number go to the peer even if they came
    /// from it: set at the first read, to the head then if that read is a
    /// full one (from 0), else 0. A peer reading everything again (its
    /// index is new, or we told it "too old") learns what we hold of its
    /// own entries too, so it can tell what the fleet no longer has.
    echo_upto: Mutex<Option<u64>>,
}

impl ServedFolder {
    fn echo_upto(&self, from: u64) -> u64 {
        let head = *self.folder.watch_head().borrow();
        *self
            .echo_upto
            .lock()
            .expect("echo lock")
            .get_or_insert(if from == 0 { head } else { 0 })
    }
}

/// The stream ended: the peer was seen now, and how far it read is saved.
impl Drop for ServedFolder {
    fn drop(&mut self) {
        let read = self.folder.readers.closed(self.id);
        let (folder, id) = (self.folder.clone(), self.id);
        // Without a runtime (unit tests) the next tombstone sweep saves it.
        rt::try_spawn_blocking(move || {
            if let Err(e) = folder.index.save_peer_reads(folder.id(), &[(id, read)]) {
                warn!(
                    folder = folder.id(),
                    "cannot save how far a peer read our index: {e}"
                );
            }
        });
    }
}

/// Reading the index to serve a peer failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot read the index: {0}")]
    Index(#[from] IndexError),
    #[error("folder {0} is no longer shared (removed by a reload)")]
    Removed(String),
}

#[async_trait]
impl IndexSource for ServedFolder {
    fn index_id(&self) -> u64 {
        self.folder.index_id
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.folder.watch_head()
    }

    fn horizon(&self) -> u64 {
        self.folder.readers.horizon()
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Slice, BoxError> {
        // A removed folder's streams end here (its retirement moved the
        // head to wake them); the peer asks again and is told "not shared".
        if self.folder.is_retired() {
            return Err(ReadError::Removed(self.folder.id().to_string()).into());
        }
        let echo_upto = self.echo_upto(from);
        let folder = self.folder.clone();
        let rows = rt::try_blocking(move || {
            Ok::<_, ReadError>(folder.index.since(folder.id(), from, limit)?)
        })
        .await?;
        Ok(slice_for(self.peer, from, rows, echo_upto))
    }
}

/// The rows read after `from`, as `peer` may have them (rows up to
/// `echo_upto` even if they came from it); the slice reaches the last row
/// read even when that row is not sent.
fn slice_for(peer: ShortId, from: u64, rows: Vec<Record>, echo_upto: u64) -> Slice {
    let up_to = rows.last().map_or(from, |r| r.entry.sequence);
    let entries = rows
        .into_iter()
        .filter(|r| may_send(r, peer) || (!r.local_changed && r.entry.sequence <= echo_upto))
        .map(|r| r.entry)
        .collect();
    Slice { entries, up_to }
}

/// No echo (an entry we adopted from `peer` goes back to it only once
/// changed again), and unannounced local edits of receive-only folders
/// never leave the node.
fn may_send(r: &Record, peer: ShortId) -> bool {
    !r.local_changed && r.received_from != Some(peer)
}

#[cfg(test)]
mod tests {
    use fleetsync_mesh::model::{EntryKind, FileEntry, VersionVector};

    use super::*;
    use crate::testing::{self, FakeContent};

    const PEER: ShortId = ShortId(1);
    const OTHER: ShortId = ShortId(2);

    fn row(seq: u64, received_from: Option<ShortId>, local_changed: bool) -> Record {
        Record {
            entry: FileEntry {
                path: format!("d{seq}"),
                kind: EntryKind::Directory,
                size: 0,
                mtime_ns: 1,
                mode: 0o755,
                hash: None,
                symlink_target: None,
                deleted: false,
                version: VersionVector::from_pairs([(OTHER, seq)]),
                modified_by: OTHER,
                sequence: seq,
            },
            local: None,
            local_changed,
            received_from,
            refs: None,
        }
    }

    fn paths(s: &Slice) -> Vec<&str> {
        s.entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn an_entry_is_not_echoed_to_the_peer_it_came_from() {
        assert!(!may_send(&row(1, Some(PEER), false), PEER));
        assert!(may_send(&row(1, Some(OTHER), false), PEER));
        assert!(may_send(&row(1, None, false), PEER));
    }

    #[test]
    fn a_full_read_gets_the_peers_own_entries_back_but_never_unannounced_edits() {
        let rows = vec![
            row(1, Some(PEER), false),
            row(2, None, true),
            row(3, Some(PEER), false),
        ];
        let s = slice_for(PEER, 0, rows, 2);
        // Up to the head of the full read's start (2), echoed; after it, not.
        assert_eq!(paths(&s), vec!["d1"]);
        assert_eq!(s.up_to, 3);
    }

    #[test]
    fn an_unannounced_receive_only_edit_is_never_sent() {
        assert!(!may_send(&row(1, None, true), PEER));
    }

    #[test]
    fn a_slice_reaches_the_last_row_read_even_when_it_is_not_sent() {
        let rows = vec![row(4, None, false), row(5, Some(PEER), false)];
        let s = slice_for(PEER, 3, rows, 0);
        assert_eq!(paths(&s), vec!["d4"]);
        assert_eq!(s.up_to, 5);
    }

    #[test]
    fn an_empty_read_stays_where_it_started() {
        let s = slice_for(PEER, 9, Vec::new(), 0);
        assert!(s.entries.is_empty());
        assert_eq!(s.up_to, 9);
    }

    fn shared_with_test_folder(dir: &std::path::Path) -> Shared {
        let folder = testing::folder(dir, FakeContent::new());
        let folders =
            crate::folder_set::FolderSet::new(HashMap::from([(folder.id().to_string(), folder)]));
        Shared {
            folders,
            progress: Default::default(),
            health: Health::new(1),
            session: None,
        }
    }

    #[test]
    fn every_batch_sent_is_progress_of_the_distributor() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_test_folder(dir.path());
        let before = shared.health.vitals().last_progress_ms;
        let peer = Peer::new(FakeContent::new_peer());
        // Time must pass for the stamp to move: wait for the clock tick.
        let start = crate::health::now_ms();
        while crate::health::now_ms() == start {
            std::hint::spin_loop();
        }
        shared.progress(&peer, "f", 3, false);
        assert!(shared.health.vitals().last_progress_ms > before);
    }

    #[test]
    fn only_configured_folders_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_test_folder(dir.path());
        let peer = Peer::new(FakeContent::new_peer());
        assert!(shared.open("f", &peer).is_some());
        assert!(shared.open("not-here", &peer).is_none());
    }

    #[test]
    fn progress_keeps_the_latest_report_per_peer_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared_with_test_folder(dir.path());
        let (a, b) = (
            Peer::new(FakeContent::new_peer()),
            Peer::new(FakeContent::new_peer()),
        );
        shared.progress(&a, "f", 10, false);
        shared.progress(&a, "f", 12, true);
        shared.progress(&b, "f", 3, false);
        let progress = shared.progress.lock().unwrap();
        let of = |p: &Peer| {
            let o = &progress[&(p.id, "f".to_string())];
            (o.sent_seq, o.caught_up)
        };
        assert_eq!(progress.len(), 2);
        assert_eq!(of(&a), (12, true));
        assert_eq!(of(&b), (3, false));
    }

    fn distributor_serving(sessions: &[(u64, EndpointId)]) -> Distributor {
        let mut d = Distributor::new(
            FolderSet::new(HashMap::new()),
            crate::health::Health::new(1),
        );
        for (conn_id, peer) in sessions {
            let task = tokio::spawn(std::future::pending::<()>());
            d.sessions.insert(*conn_id, (*peer, task));
        }
        d
    }

    fn report(d: &Distributor, peer: EndpointId) {
        let out = Outbound {
            peer,
            folder: "f".into(),
            sent_seq: 5,
            caught_up: true,
        };
        let mut progress = d.progress.lock().unwrap();
        progress.insert((peer, "f".into()), out);
    }

    #[tokio::test]
    async fn regression_progress_of_a_reconnected_peer_survives_the_old_sessions_down() {
        let peer = FakeContent::new_peer();
        // Old session 1 was replaced by session 2, which already reported.
        let mut d = distributor_serving(&[(1, peer), (2, peer)]);
        report(&d, peer);
        d.session_down(peer, 1);
        assert_eq!(
            d.progress.lock().unwrap().len(),
            1,
            "new session's progress kept"
        );
        assert!(d.sessions.contains_key(&2));
        d.session_down(peer, 2);
        assert!(d.progress.lock().unwrap().is_empty(), "last session gone");
        assert!(d.sessions.is_empty());
    }

    #[tokio::test]
    async fn a_session_down_forgets_only_that_peers_progress() {
        let (a, b) = (FakeContent::new_peer(), FakeContent::new_peer());
        let mut d = distributor_serving(&[(1, a), (2, b)]);
        report(&d, a);
        report(&d, b);
        d.session_down(a, 1);
        let progress = d.progress.lock().unwrap();
        assert_eq!(
            progress.keys().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![b]
        );
    }
}
