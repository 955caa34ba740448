//! Peers' index batches into `pending`: [`Index::ingest`] stores the
//! entries that could change something and advances the peer's
//! [`RemoteMark`] in the same transaction, so a crash neither loses an
//! entry nor has it fetched twice; [`Index::remote_mark`] reads the mark.

use fleetsync_mesh::model::{Causality, FileEntry};
use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};

use super::{
    schema::{dec, enc, name},
    tables::{
        count_pending, Count, PendingPeers, FILES, FOLDERS, PEER_HI, PEER_LO, PENDING,
        PENDING_PEERS, REMOTE, REPLACED,
    },
    FolderMeta, Index, RemoteMark, Result,
};
use crate::record::Record;

/// Caps on what a folder takes from its peers (the folder's
/// `max_pending` and `max_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pending rows one peer may have in the folder.
    pub max_pending: u64,
    /// Paths the folder's index may hold (records of every kind,
    /// tombstones included, plus pending rows): past it, entries for new
    /// paths wait.
    pub max_files: u64,
}

impl Limits {
    pub const NONE: Limits = Limits {
        max_pending: u64::MAX,
        max_files: u64::MAX,
    };
}

/// Which cap held an entry back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The peer has `max_pending` rows waiting in the folder.
    Pending { rows: u64 },
    /// The folder holds `max_files` paths (records and pending rows).
    Files { held: u64 },
}

/// What [`Index::ingest`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Entries stored as pending rows (new or replacing the peer's row).
    pub stored: usize,
    /// Entries not stored for lack of room. The mark stops short of the
    /// first of them, so the peer offers them again; nothing is lost.
    pub deferred: usize,
    /// The cap that deferred the first of them.
    pub full: Option<Full>,
}

impl Index {
    /// How far we have read this peer's index for this folder.
    pub fn remote_mark(&self, folder: &str, peer: &[u8; 32]) -> Result<Option<RemoteMark>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REMOTE)?;
        let v = t.get((folder, peer.as_slice()))?;
        v.map(|v| dec(name::REMOTE, v.value())).transpose()
    }

    /// Store a peer's batch as pending and advance its mark, atomically.
    /// Entries that cannot change anything (ours is equal or newer) are
    /// dropped here. Entries over a cap of `limits` are deferred: not
    /// stored, and the mark is advanced only to just before the first of
    /// them (so a resubscription offers them again).
    pub fn ingest(
        &self,
        folder: &str,
        peer: &[u8; 32],
        mark: RemoteMark,
        entries: &[FileEntry],
        limits: Limits,
    ) -> Result<Ingested> {
        let tx = self.db.begin_write()?;
        let mut room = Room::read(&tx, folder, peer, limits)?;
        let mut out = Ingested::default();
        let mut reached = mark.seq;
        {
            let files = tx.open_table(FILES)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut counts = tx.open_table(PENDING_PEERS)?;
            let mut replaced = tx.open_table(REPLACED)?;
            for e in entries {
                let ours: Option<Record> = files
                    .get((folder, e.path.as_str()))?
                    .map(|v| dec(name::FILES, v.value()))
                    .transpose()?;
                if useless(ours.as_ref(), e) {
                    continue;
                }
                let key = (folder, e.path.as_str(), peer.as_slice());
                let old: Option<FileEntry> = pending
                    .get(key)?
                    .map(|v| dec(name::PENDING, v.value()))
                    .transpose()?;
                let replaces = old.is_some();
                if let Some(old) = old.filter(|o| placeable_and_replaced(o, e)) {
                    // Our receiver may be placing it right now: kept so a
                    // crash before its commit is adopted, not minted.
                    replaced.insert(key, enc(&old).as_slice())?;
                }
                if !replaces {
                    if let Some(full) = room.take(ours.is_none()) {
                        out.full.get_or_insert(full);
                        out.deferred += 1;
                        reached = reached.min(e.sequence.saturating_sub(1));
                        continue;
                    }
                    count_pending(&mut counts, folder, peer, Count::Add)?;
                }
                pending.insert(key, enc(e).as_slice())?;
                out.stored += 1;
            }
            // Even when every entry was useless: the peer need not resend them.
            let mark = RemoteMark {
                index_id: mark.index_id,
                seq: reached,
            };
            tx.open_table(REMOTE)?
                .insert((folder, peer.as_slice()), enc(&mark).as_slice())?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Pending rows `peer` has in `folder`.
    pub fn pending_from(&self, folder: &str, peer: &[u8; 32]) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING_PEERS)?;
        let n = t.get((folder, peer.as_slice()))?.map_or(0, |v| v.value());
        Ok(n)
    }

    /// Whether a batch from `peer` could store a new pending row now, and
    /// if not, which cap is full (`None`: there is room).
    pub fn full(&self, folder: &str, peer: &[u8; 32], limits: Limits) -> Result<Option<Full>> {
        let tx = self.db.begin_read()?;
        let counts = tx.open_table(PENDING_PEERS)?;
        let folders = tx.open_table(FOLDERS)?;
        Ok(Room::of(&counts, &folders, folder, peer, limits)?.full(true))
    }
}

/// Is `old`, the row `new` replaces, content our receiver could have
/// placed (a live file) that `new` does not hold?
fn placeable_and_replaced(old: &FileEntry, new: &FileEntry) -> bool {
    !old.deleted && old.kind == fleetsync_mesh::model::EntryKind::File && !old.same_content(new)
}

/// Room left under the caps, as a batch uses it up.
struct Room {
    limits: Limits,
    /// This peer's pending rows in the folder.
    from_peer: u64,
    /// Paths the folder holds: records of every kind plus pending rows.
    held: u64,
}

impl Room {
    fn read(tx: &WriteTransaction, folder: &str, peer: &[u8; 32], limits: Limits) -> Result<Self> {
        let counts: PendingPeers<'_> = tx.open_table(PENDING_PEERS)?;
        let folders: Table<'_, &str, &[u8]> = tx.open_table(FOLDERS)?;
        Room::of(&counts, &folders, folder, peer, limits)
    }

    fn of(
        counts: &impl ReadableTable<(&'static str, &'static [u8]), u64>,
        folders: &impl ReadableTable<&'static str, &'static [u8]>,
        folder: &str,
        peer: &[u8; 32],
        limits: Limits,
    ) -> Result<Self> {
        let from_peer = counts
            .get((folder, peer.as_slice()))?
            .map_or(0, |v| v.value());
        let mut pending = 0u64;
        for item in counts.range((folder, PEER_LO)..(folder, PEER_HI))? {
            pending = pending.saturating_add(item?.1.value());
        }
        let meta: FolderMeta = folders
            .get(folder)?
            .map(|v| dec(name::FOLDERS, v.value()))
            .transpose()?
            .unwrap_or_default();
        let records = [meta.files, meta.dirs, meta.symlinks, meta.tombstones]
            .into_iter()
            .fold(0u64, u64::saturating_add);
        Ok(Room {
            limits,
            from_peer,
            held: records.saturating_add(pending),
        })
    }

    /// Which cap a new pending row (for a path the folder does not hold
    /// yet, if `new_path`) would exceed.
    fn full(&self, new_path: bool) -> Option<Full> {
        if self.from_peer >= self.limits.max_pending {
            return Some(Full::Pending {
                rows: self.from_peer,
            });
        }
        if new_path && self.held >= self.limits.max_files {
            return Some(Full::Files { held: self.held });
        }
        None
    }

    /// Take room for one new pending row, or say which cap is full.
    fn take(&mut self, new_path: bool) -> Option<Full> {
        let full = self.full(new_path);
        if full.is_none() {
            self.from_peer += 1;
            self.held += 1;
        }
        full
    }
}

/// Can `remote` change nothing here? When ours dominates it, or is the same
/// version with the same content. A receive-only folder's local edit
/// (`local_changed`) yields to every remote entry, so nothing is useless
/// over it.
fn useless(ours: Option<&Record>, remote: &FileEntry) -> bool {
    match ours {
        Some(o) if !o.local_changed => match o.entry.version.compare(&remote.version) {
            Causality::Dominates => true,
            Causality::Equal => o.entry.same_content(remote),
            Causality::DominatedBy | Causality::Concurrent => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{Commit, Item};
    use super::*;

    #[test]
    fn ingest_drops_useless_entries_and_commit_resolves_pending() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 2)])]);
        let peer = [9u8; 32];
        let n = idx
            .ingest(
                "f",
                &peer,
                RemoteMark {
                    index_id: 5,
                    seq: 7,
                },
                &[file("a", 1, &[(1, 1)]), file("b", 2, &[(2, 1)])],
                Limits::NONE,
            )
            .unwrap()
            .stored;
        assert_eq!(n, 1);
        assert_eq!(idx.remote_mark("f", &peer).unwrap().unwrap().seq, 7);
        let p = idx.pending("f", 10).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "b");
        assert_eq!(idx.pending_for("f", "b").unwrap().len(), 1);
        let live = idx.live_hashes().unwrap();
        assert!(live.contains(&[1; 32]) && live.contains(&[2; 32]));
        let c = Commit {
            items: vec![Item::Applied {
                record: rec(p[0].entry.clone()),
                note: "x".into(),
                resolves: vec![("b".into(), peer)],
                from: peer,
            }],
            resolved: vec![],
        };
        idx.commit("f", c, ME).unwrap();
        assert_eq!(idx.pending_count("f").unwrap(), 0);
    }

    #[test]
    fn ingest_drops_an_equal_version_with_the_same_content_but_keeps_different_content() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 1)]), file("b", 1, &[(1, 1)])]);
        let mut newer_mtime = file("a", 1, &[(1, 1)]);
        newer_mtime.mtime_ns = 99;
        let other_content = file("b", 2, &[(1, 1)]);
        let n = ingest(&idx, &PEER, 1, &[newer_mtime, other_content]);
        assert_eq!(n, 1);
        let p = idx.pending("f", 10).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].path.as_str(), p[0].peer), ("b", PEER));
        assert_eq!(p[0].entry.hash, Some([2; 32]));
    }

    #[test]
    fn ingest_advances_the_remote_mark_even_when_every_entry_is_useless() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 2)])]);
        assert_eq!(idx.remote_mark("f", &PEER).unwrap(), None);
        let n = ingest(&idx, &PEER, 42, &[file("a", 1, &[(1, 1)])]);
        assert_eq!(n, 0);
        assert_eq!(idx.pending_count("f").unwrap(), 0);
        assert_eq!(
            idx.remote_mark("f", &PEER).unwrap(),
            Some(RemoteMark {
                index_id: 1,
                seq: 42
            })
        );
        // Marks are per folder and per peer.
        assert_eq!(idx.remote_mark("f", &[8; 32]).unwrap(), None);
        idx.ensure_folder("g").unwrap();
        assert_eq!(idx.remote_mark("g", &PEER).unwrap(), None);
    }

    #[test]
    fn ingest_keeps_an_older_entry_over_a_receive_only_local_edit() {
        let (_d, idx) = open();
        let mut r = rec(file("a", 1, &[(1, 2)]));
        r.local_changed = true;
        put_records(&idx, vec![r]);
        // Dominated by ours, yet the fleet's version must win over an
        // unannounced local edit.
        assert_eq!(ingest(&idx, &PEER, 1, &[file("a", 2, &[(1, 1)])]), 1);
        assert_eq!(idx.pending_for("f", "a").unwrap().len(), 1);
    }
    fn dirs(range: std::ops::RangeInclusive<u64>) -> Vec<FileEntry> {
        range
            .map(|n| {
                let mut e = file(&format!("d{n:03}"), 0, &[(2, 1)]);
                e.kind = EntryKind::Directory;
                e.hash = None;
                e.size = 0;
                e.sequence = n;
                e
            })
            .collect()
    }

    fn caps(max_pending: u64, max_files: u64) -> Limits {
        Limits {
            max_pending,
            max_files,
        }
    }

    /// Apply (commit) every pending row, as the receiver would.
    fn apply_all(idx: &Index) {
        let rows = idx.pending("f", usize::MAX).unwrap();
        let items = rows
            .into_iter()
            .map(|p| Item::Applied {
                record: rec(p.entry),
                note: "applied".into(),
                resolves: vec![(p.path, p.peer)],
                from: p.peer,
            })
            .collect();
        let c = Commit {
            items,
            resolved: vec![],
        };
        idx.commit("f", c, ME).unwrap();
    }

    #[test]
    fn past_max_pending_entries_are_deferred_and_arrive_once_rows_drain() {
        let (_d, idx) = open();
        let limits = caps(3, u64::MAX);
        let batch = dirs(1..=5);
        let got = ingest_capped(&idx, &PEER, 5, &batch, limits);
        assert_eq!((got.stored, got.deferred), (3, 2));
        assert_eq!(got.full, Some(Full::Pending { rows: 3 }));
        assert_eq!(idx.pending_from("f", &PEER).unwrap(), 3);
        // The mark stops before the first deferred entry: it is offered again.
        assert_eq!(idx.remote_mark("f", &PEER).unwrap().unwrap().seq, 3);
        assert_eq!(
            idx.full("f", &PEER, limits).unwrap(),
            Some(Full::Pending { rows: 3 })
        );
        // Another peer has its own allowance.
        assert_eq!(
            ingest_capped(&idx, &[8; 32], 1, &dirs(9..=9), limits).stored,
            1
        );
        apply_all(&idx);
        assert_eq!(idx.pending_from("f", &PEER).unwrap(), 0);
        assert_eq!(idx.full("f", &PEER, limits).unwrap(), None);
        // Offered again (the same batch, as the held stream does): the rest arrive.
        let got = ingest_capped(&idx, &PEER, 5, &batch, limits);
        assert_eq!((got.stored, got.deferred, got.full), (2, 0, None));
        assert_eq!(idx.remote_mark("f", &PEER).unwrap().unwrap().seq, 5);
        apply_all(&idx);
        for d in dirs(1..=5) {
            assert!(
                idx.get("f", &d.path).unwrap().is_some(),
                "{} arrived",
                d.path
            );
        }
    }

    #[test]
    fn a_replaced_pending_row_needs_no_room() {
        let (_d, idx) = open();
        let limits = caps(2, u64::MAX);
        assert_eq!(
            ingest_capped(&idx, &PEER, 2, &dirs(1..=2), limits).stored,
            2
        );
        let mut newer = dirs(1..=1);
        newer[0].version = newer[0].version.bump(ShortId(2)).unwrap();
        newer[0].sequence = 3;
        let got = ingest_capped(&idx, &PEER, 3, &newer, limits);
        assert_eq!((got.stored, got.deferred), (1, 0));
        assert_eq!(idx.pending_from("f", &PEER).unwrap(), 2);
    }

    #[test]
    fn past_max_files_new_paths_are_deferred_but_known_paths_still_change() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(2, 1)]), file("b", 1, &[(2, 1)])]);
        let limits = caps(u64::MAX, 3);
        let mut newer_a = file("a", 2, &[(2, 2)]);
        newer_a.sequence = 4;
        let mut batch = dirs(1..=3);
        batch.push(newer_a);
        let got = ingest_capped(&idx, &PEER, 4, &batch, limits);
        // d001 fills the folder to 3 paths; d002 and d003 wait; a changes.
        assert_eq!((got.stored, got.deferred), (2, 2));
        assert_eq!(got.full, Some(Full::Files { held: 3 }));
        assert_eq!(idx.remote_mark("f", &PEER).unwrap().unwrap().seq, 1);
        let paths: Vec<_> = idx
            .pending("f", 10)
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(paths, vec!["a", "d001"]);
        apply_all(&idx);
        assert_eq!(
            idx.full("f", &PEER, limits).unwrap(),
            Some(Full::Files { held: 3 })
        );
        // Room again (a path deleted and its tombstone gone is what frees
        // it for real; a bigger cap here): the deferred ones arrive.
        let got = ingest_capped(&idx, &PEER, 4, &batch, caps(u64::MAX, 10));
        assert_eq!((got.stored, got.deferred), (2, 0));
    }
}
