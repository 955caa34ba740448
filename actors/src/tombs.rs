//! Tombstone expiry on this node, both sides of it.
//!
//! Serving side ([`Readers`], one per folder): how far each subscribing
//! peer has read our index and when we last saw it (in memory, saved in
//! the index's `peer_reads` by every sweep and when a stream ends), and
//! the folder's horizon. [`expire`] (retention's timer) removes the
//! tombstones older than `tombstone_ttl` that every peer seen within the
//! TTL has read past ([`crate::index::read_bound`]); the index stream
//! answers a peer that asks from below the horizon "too old".
//!
//! Subscribing side: a peer answered us "too old", so we read its index
//! again from 0 ([`Rescan`], kept in the receiver's sink) and then take
//! away every file we hold that the peer no longer has, that it had read
//! from us (so its deletion covered our version) and that is still on disk
//! as we recorded it ([`take_away`]). Our own edits since the peer last
//! read us are newer than anything it deleted: they stay and propagate.
//! The removals are ordinary local deletions: the watcher records them as
//! tombstones that reach the fleet.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fleetsync_mesh::model::EntryKind;
use tracing::{debug, info, warn};

use crate::{
    apply::keep_file_at,
    folder::Folder,
    index::{read_bound, Expiry, IndexError, PeerRead},
    record::{disk_matches, Record},
    versions::{KeepMeta, Reason},
};

/// Tombstones removed per index transaction.
pub const EXPIRE_BATCH: usize = 10_000;

/// How often tombstones are looked at for a folder with this TTL: a
/// quarter of it, at most hourly (so a short TTL in a test is honoured).
pub fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(3600))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One peer as a reader of our index.
#[derive(Debug, Clone, Copy, Default)]
struct Reader {
    read: PeerRead,
    /// Index streams of ours it has open now: while any is, it is seen now.
    live: u32,
    /// How far it had read when it came back after an absence (not seen
    /// for half the TTL or more): what it knew of us before it left, which
    /// the reads of the new session (our edits made meanwhile) must not
    /// raise. `None`: it has not been away since we started.
    before_absence: Option<u64>,
}

/// Our subscribers' reads of one folder, and its horizon.
#[derive(Debug, Default)]
pub struct Readers {
    peers: Mutex<HashMap<[u8; 32], Reader>>,
    horizon: AtomicU64,
}

impl Readers {
    /// As saved in the index.
    pub fn load(index: &crate::index::Index, folder: &str) -> Result<Readers, IndexError> {
        let peers = index
            .peer_reads(folder)?
            .into_iter()
            .map(|(p, read)| {
                let r = Reader {
                    read,
                    live: 0,
                    before_absence: None,
                };
                (p, r)
            })
            .collect();
        Ok(Readers {
            peers: Mutex::new(peers),
            horizon: AtomicU64::new(index.horizon(folder)?),
        })
    }

    pub fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Relaxed)
    }

    /// Change `peer`'s entry (seen now); returns it as changed.
    fn with(&self, peer: [u8; 32], f: impl FnOnce(&mut Reader)) -> Reader {
        let mut peers = self.peers.lock().expect("readers lock");
        let r = peers.entry(peer).or_default();
        f(r);
        r.read.seen_ms = r.read.seen_ms.max(now_ms());
        *r
    }

    /// `peer` opened an index stream of ours; `absence` is how long it
    /// must have been unseen to count as back from an absence.
    pub fn opened(&self, peer: [u8; 32], absence: Duration) {
        let absence_ms = i64::try_from(absence.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        self.with(peer, |r| {
            // A peer never seen before was not away: it has no "before".
            let known = r.read.seen_ms > 0;
            if known && r.live == 0 && now.saturating_sub(r.read.seen_ms) >= absence_ms {
                r.before_absence = Some(r.read.read);
            }
            r.live += 1;
        });
    }

    /// `peer`'s stream ended; returns its read to save.
    pub fn closed(&self, peer: [u8; 32]) -> PeerRead {
        self.with(peer, |r| r.live = r.live.saturating_sub(1)).read
    }

    /// `peer` was sent (or subscribed from) everything up to `seq`.
    pub fn read(&self, peer: [u8; 32], seq: u64) {
        self.with(peer, |r| r.read.read = r.read.read.max(seq));
    }

    /// How far `peer` had read our index before it was last away (or
    /// now, if it was not away since we started; 0: never).
    pub fn read_by(&self, peer: &[u8; 32]) -> u64 {
        let peers = self.peers.lock().expect("readers lock");
        peers
            .get(peer)
            .map_or(0, |r| r.before_absence.unwrap_or(r.read.read))
    }

    /// Every reader as of `now_ms` (those with a stream open are seen
    /// now). Readers not seen for longer than `ttl` and not connected are
    /// dropped from memory (their saved row stays; they no longer count).
    fn snapshot(&self, now_ms: i64, ttl: Duration) -> Vec<([u8; 32], PeerRead)> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut peers = self.peers.lock().expect("readers lock");
        let out = peers
            .iter_mut()
            .map(|(p, r)| {
                if r.live > 0 {
                    r.read.seen_ms = now_ms;
                }
                (*p, r.read)
            })
            .collect();
        peers.retain(|_, r| r.live > 0 || now_ms.saturating_sub(r.read.seen_ms) <= ttl_ms);
        out
    }
}

/// What one expiry run did to a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    pub horizon: u64,
}

/// Save the readers, then remove the tombstones of `folder` that are
/// older than its TTL and read by every peer seen within it. Blocking.
pub fn expire(folder: &Folder) -> Result<Swept, IndexError> {
    let ttl = folder.cfg.tombstone_ttl;
    let now = now_ms();
    let readers = folder.readers.snapshot(now, ttl);
    if !readers.is_empty() {
        folder.index.save_peer_reads(folder.id(), &readers)?;
    }
    let meta = folder.index.ensure_folder(folder.id())?;
    let mut out = Swept {
        removed: 0,
        horizon: folder.readers.horizon(),
    };
    if meta.tombstones == 0 {
        return Ok(out);
    }
    let run = Expiry {
        cutoff_ns: (now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
            .saturating_mul(1_000_000),
        bound: read_bound(now, ttl, meta.seq, readers.iter().map(|(_, r)| r)),
        limit: EXPIRE_BATCH,
    };
    loop {
        let done = folder.index.expire_tombstones(folder.id(), run)?;
        out.removed += done.removed;
        out.horizon = done.horizon;
        // The horizon moves before any peer can ask from below it.
        folder
            .readers
            .horizon
            .store(done.horizon, Ordering::Relaxed);
        if !done.more {
            break;
        }
    }
    if out.removed > 0 {
        info!(
            folder = folder.id(),
            removed = out.removed,
            horizon = out.horizon,
            "expired tombstones every peer has read"
        );
    }
    Ok(out)
}

/// A full read of one peer's index after it answered "too old": the paths
/// it sent, collected until it is caught up. Bounded by the peer's index
/// (its `max_files`).
#[derive(Debug, Default)]
pub struct Rescan {
    paths: Mutex<Option<HashSet<String>>>,
}

impl Rescan {
    /// A full read starts: collect from scratch.
    pub fn start(&self) {
        *self.paths.lock().expect("rescan lock") = Some(HashSet::new());
    }

    pub fn active(&self) -> bool {
        self.paths.lock().expect("rescan lock").is_some()
    }

    /// Note the paths of a batch, if a full read is going on.
    pub fn saw<'a>(&self, paths: impl IntoIterator<Item = &'a str>) {
        if let Some(set) = self.paths.lock().expect("rescan lock").as_mut() {
            set.extend(paths.into_iter().map(str::to_string));
        }
    }

    /// The full read is over: what it saw.
    pub fn finish(&self) -> Option<HashSet<String>> {
        self.paths.lock().expect("rescan lock").take()
    }
}

/// Which of our records a peer's full read says to take away: live, not
/// among the peer's paths, and read by the peer (sequence at or below
/// `read_by`, so the peer had this version when it deleted the path).
/// Children before their parents. Pure.
pub fn to_take_away(records: Vec<Record>, peer_has: &HashSet<String>, read_by: u64) -> Vec<Record> {
    let mut out: Vec<Record> = records
        .into_iter()
        .filter(|r| {
            !r.entry.deleted && r.entry.sequence <= read_by && !peer_has.contains(&r.entry.path)
        })
        .collect();
    // Deepest first, so a directory comes after everything in it.
    out.sort_by_key(|r| std::cmp::Reverse(r.entry.path.matches('/').count()));
    out
}

/// Remove from disk what [`to_take_away`] chose, each only if the disk
/// still shows what we recorded and the receiver is not writing it.
/// Returns the paths removed (for the watcher to record). Blocking.
pub fn take_away(
    folder: &Folder,
    peer_has: &HashSet<String>,
    read_by: u64,
) -> Result<Vec<String>, IndexError> {
    let mut records = Vec::new();
    folder.index.for_each(folder.id(), |r| {
        if !r.entry.deleted && !peer_has.contains(&r.entry.path) {
            records.push(r.clone());
        }
    })?;
    let mut removed = Vec::new();
    for rec in to_take_away(records, peer_has, read_by) {
        let path = rec.entry.path.as_str();
        if folder.is_applying(path)
            || folder.is_ignored(path, rec.entry.kind == EntryKind::Directory)
        {
            continue;
        }
        match remove_if_unchanged(folder, &rec) {
            Ok(true) => removed.push(rec.entry.path),
            Ok(false) => debug!(folder = folder.id(), path, "changed here since; kept"),
            Err(e) => warn!(
                folder = folder.id(),
                path, "cannot take away a file the fleet deleted: {e}"
            ),
        }
    }
    if !removed.is_empty() {
        info!(
            folder = folder.id(),
            removed = removed.len(),
            "took away files the fleet deleted while this node was away"
        );
    }
    Ok(removed)
}

/// Remove `rec`'s path if the disk matches the record (a directory only if
/// empty). `Ok(false)`: left alone.
fn remove_if_unchanged(folder: &Folder, rec: &Record) -> std::io::Result<bool> {
    let path = rec.entry.path.as_str();
    let disk = folder.fs.lstat(path)?;
    if !disk_matches(&disk, Some(rec)) {
        return Ok(false);
    }
    match rec.entry.kind {
        EntryKind::Directory => match folder.fs.remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(e),
        },
        EntryKind::File => {
            keep_taken_away(folder, rec, &disk);
            folder.fs.remove_file(path).map(|()| true)
        }
        EntryKind::Symlink => folder.fs.remove_file(path).map(|()| true),
    }
}

/// A file taken away is kept as a version first (reason delete, replaced
/// by "rescan"), so a wrong take-away — a peer whose index lacks the path
/// for another reason than a forgotten delete — is undone with `fleetsync
/// restore`. Failing to keep is logged and shown, and does not stop it.
fn keep_taken_away(folder: &Folder, rec: &Record, disk: &crate::record::DiskState) {
    let path = rec.entry.path.as_str();
    let meta = KeepMeta::of_entry(&rec.entry, "rescan".into(), Reason::Delete);
    let kept = (folder.fs.session().map_err(|e| e.to_string()))
        .and_then(|session| keep_file_at(folder, &session, path, disk, meta));
    if let Err(e) = kept {
        warn!(
            folder = folder.id(),
            path, "content taken away not kept as a version: {e}"
        );
        folder.status.error(format!(
            "{path}: content taken away not kept as a version: {e}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use fleetsync_mesh::model::{FileEntry, ShortId, VersionVector};

    use super::*;

    fn rec(path: &str, seq: u64, deleted: bool, kind: EntryKind) -> Record {
        Record {
            entry: FileEntry {
                path: path.into(),
                kind,
                size: 0,
                mtime_ns: 1,
                mode: 0o644,
                hash: None,
                symlink_target: None,
                deleted,
                version: VersionVector::from_pairs([(ShortId(1), seq)]),
                modified_by: ShortId(1),
                sequence: seq,
            },
            local: None,
            local_changed: false,
            received_from: None,
            refs: None,
        }
    }

    fn paths(r: &[Record]) -> Vec<&str> {
        r.iter().map(|r| r.entry.path.as_str()).collect()
    }

    #[test]
    fn only_what_the_peer_read_and_no_longer_has_is_taken_away() {
        let f = EntryKind::File;
        let records = vec![
            rec("kept-by-peer", 1, false, f),
            rec("deleted-by-fleet", 2, false, f),
            rec("already-gone", 3, true, f),
            rec("edited-while-away", 9, false, f),
        ];
        let peer_has = HashSet::from(["kept-by-peer".to_string()]);
        let out = to_take_away(records, &peer_has, 5);
        assert_eq!(paths(&out), vec!["deleted-by-fleet"]);
    }

    #[test]
    fn children_are_taken_away_before_their_directory() {
        let records = vec![
            rec("d", 1, false, EntryKind::Directory),
            rec("d/e/f", 2, false, EntryKind::File),
            rec("d/e", 3, false, EntryKind::Directory),
        ];
        let out = to_take_away(records, &HashSet::new(), 5);
        assert_eq!(paths(&out), vec!["d/e/f", "d/e", "d"]);
    }

    #[test]
    fn readers_seen_long_ago_are_dropped_and_connected_ones_are_seen_now() {
        let r = Readers::default();
        r.opened([1; 32], Duration::from_secs(1));
        r.read([1; 32], 7);
        r.read([2; 32], 3);
        r.closed([2; 32]);
        let ttl = Duration::from_secs(10);
        let later = now_ms() + 60_000;
        let snap = r.snapshot(later, ttl);
        assert_eq!(snap.len(), 2);
        let one = snap.iter().find(|(p, _)| *p == [1; 32]).unwrap().1;
        assert_eq!((one.read, one.seen_ms), (7, later));
        // Peer 2 was not seen within the TTL: gone from memory.
        assert_eq!(r.read_by(&[2; 32]), 0);
        assert_eq!(r.read_by(&[1; 32]), 7);
    }

    #[test]
    fn what_a_peer_read_before_an_absence_is_not_raised_by_its_new_session() {
        let r = Readers::default();
        let absence = Duration::from_secs(3600);
        r.opened([1; 32], absence);
        r.read([1; 32], 5);
        r.closed([1; 32]);
        // Back at once: not an absence, reads count as they come.
        r.opened([1; 32], absence);
        r.read([1; 32], 6);
        assert_eq!(r.read_by(&[1; 32]), 6);
        r.closed([1; 32]);
        // Back after an absence: it knew 6 of us; the new session's reads
        // (our edits made meanwhile) do not change that.
        r.opened([1; 32], Duration::ZERO);
        r.read([1; 32], 9);
        assert_eq!(r.read_by(&[1; 32]), 6);
    }

    #[test]
    fn a_short_ttl_is_swept_often_and_a_long_one_hourly() {
        assert_eq!(
            sweep_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_every(Duration::from_secs(180 * 24 * 3600)),
            Duration::from_secs(3600)
        );
    }
}
