//! The table definitions, and [`Tables`]: one folder's tables inside a write
//! transaction. [`Tables::write`] is the only way a record reaches `files`,
//! so the rows derived from it — its `seq` row, its `hashes` row, its
//! `history` line (trimmed to [`HISTORY_PER_PATH`]) and the folder counters
//! in [`FolderMeta`] — always move with it.

use fleetsync_mesh::model::{EntryKind, FileEntry};
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{
    now_ns,
    schema::{dec, enc, id32, name},
    FolderMeta, HistoryEvent, IndexError, Released, Result, Via, HISTORY_PER_PATH,
};
use crate::record::Record;

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new(name::META);
pub(super) const FOLDERS: TableDefinition<&str, &[u8]> = TableDefinition::new(name::FOLDERS);
pub(super) const FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new(name::FILES);
pub(super) const SEQ: TableDefinition<(&str, u64), &str> = TableDefinition::new(name::SEQ);
pub(super) const HASHES: TableDefinition<(&[u8], &str, &str), ()> =
    TableDefinition::new(name::HASHES);
pub(super) const REMOTE: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new(name::REMOTE);
pub(super) const PENDING: TableDefinition<(&str, &str, &[u8]), &[u8]> =
    TableDefinition::new(name::PENDING);
pub(super) const HISTORY: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new(name::HISTORY);
/// How many `pending` rows each peer has in each folder, kept in step by
/// [`count_pending`] / [`Tables::remove_pending`] (the caps on pending rows
/// read it instead of counting rows). A plain counter: no schema byte.
pub(super) const PENDING_PEERS: TableDefinition<(&str, &[u8]), u64> =
    TableDefinition::new(name::PENDING_PEERS);

/// Per folder and subscribing peer: how far it read our index and when we
/// last saw it ([`super::PeerRead`]).
pub(super) const PEER_READS: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new(name::PEER_READS);
/// Per folder: the highest sequence number whose tombstone was expired.
/// A plain u64: no schema byte.
pub(super) const HORIZONS: TableDefinition<&str, u64> = TableDefinition::new(name::HORIZONS);
/// Per folder and peer whose index we must read again from 0 (it answered
/// "too old"): how far it had read ours then. A plain u64: no schema byte.
pub(super) const RESCANS: TableDefinition<(&str, &[u8]), u64> = TableDefinition::new(name::RESCANS);
/// Per pending row (folder, path, peer): the live file entry a newer row
/// from the same peer replaced. Our receiver may have placed that content
/// just before a crash (kill -9 between `place_all` and the `Applied`
/// commit): the rescan adopts it from here instead of minting it as a
/// local edit that would beat the newer delete. Removed with its row.
pub(super) const REPLACED: TableDefinition<(&str, &str, &[u8]), &[u8]> =
    TableDefinition::new(name::REPLACED);

pub(super) type PendingPeers<'t> = Table<'t, (&'static str, &'static [u8]), u64>;

/// Count one more (`Count::Add`) or one fewer pending row of `peer`.
pub(super) fn count_pending(
    t: &mut PendingPeers<'_>,
    folder: &str,
    peer: &[u8; 32],
    how: Count,
) -> Result<()> {
    let n = t.get((folder, peer.as_slice()))?.map_or(0, |v| v.value());
    let n = match how {
        Count::Add => n.saturating_add(1),
        Count::Remove => n.saturating_sub(1),
    };
    if n == 0 {
        t.remove((folder, peer.as_slice()))?;
    } else {
        t.insert((folder, peer.as_slice()), n)?;
    }
    Ok(())
}

/// Create every table (but `meta`, which the schema check opens), so read
/// transactions never find one missing.
pub(super) fn create_all(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(FOLDERS)?;
    tx.open_table(FILES)?;
    tx.open_table(SEQ)?;
    tx.open_table(HASHES)?;
    tx.open_table(REMOTE)?;
    tx.open_table(PENDING)?;
    tx.open_table(HISTORY)?;
    tx.open_table(PENDING_PEERS)?;
    tx.open_table(PEER_READS)?;
    tx.open_table(HORIZONS)?;
    tx.open_table(RESCANS)?;
    tx.open_table(REPLACED)?;
    Ok(())
}

/// An upper bound for every path under `prefix`: U+10FFFF is the largest
/// char, so every such path sorts before prefix + U+10FFFF.
pub(super) fn path_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// Bounds of a pending row's peer part: peer ids are 32 bytes, so every
/// one sorts between the empty slice and 33 bytes of 0xff.
pub(super) const PEER_LO: &[u8] = &[];
pub(super) const PEER_HI: &[u8] = &[0xff; 33];

/// One folder's tables in a write transaction, with the folder's
/// [`FolderMeta`] as it changes; [`Tables::finish`] stores it.
pub(super) struct Tables<'t> {
    folder: &'t str,
    meta: FolderMeta,
    folders: Table<'t, &'static str, &'static [u8]>,
    files: Table<'t, (&'static str, &'static str), &'static [u8]>,
    seqs: Table<'t, (&'static str, u64), &'static str>,
    hashes: Table<'t, (&'static [u8], &'static str, &'static str), ()>,
    history: Table<'t, (&'static str, &'static str, u64), &'static [u8]>,
    pending: Table<'t, (&'static str, &'static str, &'static [u8]), &'static [u8]>,
    pending_peers: PendingPeers<'t>,
    replaced: Table<'t, (&'static str, &'static str, &'static [u8]), &'static [u8]>,
}

impl<'t> Tables<'t> {
    /// The folder these tables belong to (for log lines).
    pub(super) fn folder(&self) -> &str {
        self.folder
    }

    /// Fails with [`IndexError::FolderNotInitialised`] for a folder
    /// [`super::Index::ensure_folder`] never created.
    pub(super) fn open(tx: &'t WriteTransaction, folder: &'t str) -> Result<Self> {
        let folders = tx.open_table(FOLDERS)?;
        let meta = folders
            .get(folder)?
            .map(|v| dec::<FolderMeta>(name::FOLDERS, v.value()))
            .transpose()?
            .ok_or_else(|| IndexError::FolderNotInitialised {
                folder: folder.to_string(),
            })?;
        Ok(Tables {
            folder,
            meta,
            folders,
            files: tx.open_table(FILES)?,
            seqs: tx.open_table(SEQ)?,
            hashes: tx.open_table(HASHES)?,
            history: tx.open_table(HISTORY)?,
            pending: tx.open_table(PENDING)?,
            pending_peers: tx.open_table(PENDING_PEERS)?,
            replaced: tx.open_table(REPLACED)?,
        })
    }

    pub(super) fn get(&self, path: &str) -> Result<Option<Record>> {
        self.files
            .get((self.folder, path))?
            .map(|v| dec(name::FILES, v.value()))
            .transpose()
    }

    /// The pending rows of `path`, with the peer each came from.
    pub(super) fn pending_for(&self, path: &str) -> Result<Vec<([u8; 32], FileEntry)>> {
        let mut out = Vec::new();
        for item in self
            .pending
            .range((self.folder, path, PEER_LO)..(self.folder, path, PEER_HI))?
        {
            let (k, v) = item?;
            out.push((
                id32(name::PENDING, k.value().2)?,
                dec(name::PENDING, v.value())?,
            ));
        }
        Ok(out)
    }

    /// `peer`'s pending row for `path`, if any.
    pub(super) fn pending_row(&self, path: &str, peer: &[u8; 32]) -> Result<Option<FileEntry>> {
        self.pending
            .get((self.folder, path, peer.as_slice()))?
            .map(|v| dec(name::PENDING, v.value()))
            .transpose()
    }

    /// The live file entries newer rows replaced for `path` (see
    /// [`REPLACED`]), with the peer each came from.
    pub(super) fn replaced_for(&self, path: &str) -> Result<Vec<([u8; 32], FileEntry)>> {
        let mut out = Vec::new();
        for item in self
            .replaced
            .range((self.folder, path, PEER_LO)..(self.folder, path, PEER_HI))?
        {
            let (k, v) = item?;
            out.push((
                id32(name::REPLACED, k.value().2)?,
                dec(name::REPLACED, v.value())?,
            ));
        }
        Ok(out)
    }

    /// Forget the replaced entry kept for `peer`'s row of `path`.
    pub(super) fn remove_replaced(&mut self, path: &str, peer: &[u8; 32]) -> Result<()> {
        self.replaced.remove((self.folder, path, peer.as_slice()))?;
        Ok(())
    }

    pub(super) fn remove_pending(&mut self, path: &str, peer: &[u8; 32]) -> Result<()> {
        self.remove_replaced(path, peer)?;
        if self
            .pending
            .remove((self.folder, path, peer.as_slice()))?
            .is_some()
        {
            count_pending(&mut self.pending_peers, self.folder, peer, Count::Remove)?;
        }
        Ok(())
    }

    /// Replace `old` (the current record of the path, if any) with `rec`
    /// under the next sequence number, and log it in the history. Returns
    /// the old record's refs link if `rec` no longer uses it.
    pub(super) fn write(
        &mut self,
        old: Option<Record>,
        mut rec: Record,
        note: String,
        via: Via,
    ) -> Result<Option<Released>> {
        if let Some(old) = &old {
            self.unindex(old)?;
        }
        self.meta.seq += 1;
        rec.entry.sequence = self.meta.seq;
        self.index(&rec)?;
        self.append_history(&rec, note, via)?;
        Ok(old.and_then(|old| released_by(old, &rec)))
    }

    /// Drop an expired tombstone whole: its `files` and `seq` rows, its
    /// history, its share of the counters. No sequence number is handed
    /// out: peers that read past it lose nothing, and those that did not
    /// are below the horizon (`super::tombs`).
    pub(super) fn forget(&mut self, old: &Record) -> Result<()> {
        let path = old.entry.path.as_str();
        self.unindex(old)?;
        self.files.remove((self.folder, path))?;
        let lines: Vec<u64> = self
            .history
            .range((self.folder, path, 0)..=(self.folder, path, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().2))
            .collect::<std::result::Result<_, _>>()?;
        for seq in lines {
            self.history.remove((self.folder, path, seq))?;
        }
        Ok(())
    }

    /// When this node recorded `path` at `seq` (its history line), if known.
    pub(super) fn recorded_ns(&self, path: &str, seq: u64) -> Result<Option<i64>> {
        self.history
            .get((self.folder, path, seq))?
            .map(|v| dec::<HistoryEvent>(name::HISTORY, v.value()).map(|h| h.recorded_ns))
            .transpose()
    }

    /// The path recorded under `seq`, if any.
    pub(super) fn path_at(&self, seq: u64) -> Result<Option<String>> {
        Ok(self
            .seqs
            .get((self.folder, seq))?
            .map(|v| v.value().to_string()))
    }

    /// The first sequence number above `after` that is in use.
    pub(super) fn next_seq(&self, after: u64) -> Result<Option<u64>> {
        let next = self
            .seqs
            .range((self.folder, after.saturating_add(1))..=(self.folder, u64::MAX))?
            .next()
            .transpose()?;
        Ok(next.map(|(k, _)| k.value().1))
    }

    /// Store the meta the writes changed; the caller commits.
    pub(super) fn finish(mut self) -> Result<FolderMeta> {
        self.folders
            .insert(self.folder, enc(&self.meta).as_slice())?;
        Ok(self.meta)
    }

    /// Remove what `old` contributed besides its `files` row (overwritten
    /// by the caller).
    fn unindex(&mut self, old: &Record) -> Result<()> {
        let path = old.entry.path.as_str();
        self.seqs.remove((self.folder, old.entry.sequence))?;
        if let Some(h) = live_hash(&old.entry) {
            self.hashes.remove((h.as_slice(), self.folder, path))?;
        }
        count(&mut self.meta, &old.entry, Count::Remove);
        Ok(())
    }

    fn index(&mut self, rec: &Record) -> Result<()> {
        let path = rec.entry.path.as_str();
        self.seqs.insert((self.folder, rec.entry.sequence), path)?;
        if let Some(h) = live_hash(&rec.entry) {
            self.hashes.insert((h.as_slice(), self.folder, path), ())?;
        }
        self.files
            .insert((self.folder, path), enc(rec).as_slice())?;
        count(&mut self.meta, &rec.entry, Count::Add);
        Ok(())
    }

    fn append_history(&mut self, rec: &Record, note: String, via: Via) -> Result<()> {
        let e = &rec.entry;
        let ev = HistoryEvent {
            seq: e.sequence,
            modified_by: e.modified_by,
            mtime_ns: e.mtime_ns,
            hash: e.hash,
            deleted: e.deleted,
            size: e.size,
            version: e.version.iter().collect(),
            recorded_ns: now_ns(),
            applied_from: rec.received_from,
            note,
            via,
        };
        let path = e.path.as_str();
        self.history
            .insert((self.folder, path, e.sequence), enc(&ev).as_slice())?;
        self.trim_history(path, e.sequence)
    }

    /// Keep the newest [`HISTORY_PER_PATH`] lines of `path`, `newest` being
    /// the one just added.
    fn trim_history(&mut self, path: &str, newest: u64) -> Result<()> {
        let older: Vec<u64> = self
            .history
            .range((self.folder, path, 0)..(self.folder, path, newest))?
            .map(|r| r.map(|(k, _)| k.value().2))
            .collect::<std::result::Result<_, _>>()?;
        let excess = (older.len() + 1).saturating_sub(HISTORY_PER_PATH);
        for seq in &older[..excess] {
            self.history.remove((self.folder, path, *seq))?;
        }
        Ok(())
    }
}

/// The hash a `hashes` row is kept under: tombstones have none.
fn live_hash(e: &FileEntry) -> Option<[u8; 32]> {
    e.hash.filter(|_| !e.deleted)
}

/// `old`'s refs link if `new` no longer uses it, with the hash `old` had.
fn released_by(old: Record, new: &Record) -> Option<Released> {
    let hash = live_hash(&old.entry);
    old.refs
        .filter(|name| Some(name) != new.refs.as_ref())
        .map(|name| Released { name, hash })
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Count {
    Add,
    Remove,
}

/// Add or remove an entry's share of the folder counters. Saturating, so
/// no size a peer claims can wrap them (once saturated, `bytes` is a floor).
fn count(meta: &mut FolderMeta, e: &FileEntry, how: Count) {
    let step = |x: &mut u64, by: u64| {
        *x = match how {
            Count::Add => x.saturating_add(by),
            Count::Remove => x.saturating_sub(by),
        }
    };
    if e.deleted {
        step(&mut meta.tombstones, 1);
        return;
    }
    match e.kind {
        EntryKind::File => {
            step(&mut meta.files, 1);
            step(&mut meta.bytes, e.size);
        }
        EntryKind::Directory => step(&mut meta.dirs, 1),
        EntryKind::Symlink => step(&mut meta.symlinks, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{Commit, Item};
    use super::*;

    #[test]
    fn history_is_trimmed_to_history_per_path() {
        let (_d, idx) = open();
        let extra = 5u64;
        for v in 1..=HISTORY_PER_PATH as u64 + extra {
            put(&idx, vec![file("a", v as u8, &[(1, v)])]);
        }
        put(&idx, vec![file("b", 1, &[(1, 1)])]);
        let h = idx.history("f", "a").unwrap();
        assert_eq!(h.len(), HISTORY_PER_PATH);
        // The newest are kept, oldest first.
        assert_eq!(h[0].seq, extra + 1);
        assert_eq!(h.last().unwrap().seq, HISTORY_PER_PATH as u64 + extra);
        assert_eq!(h.last().unwrap().version, vec![(ShortId(1), 37)]);
        // Trimming one path leaves the others alone.
        assert_eq!(idx.history("f", "b").unwrap().len(), 1);
    }

    fn counters(m: FolderMeta) -> [u64; 5] {
        [m.files, m.dirs, m.symlinks, m.bytes, m.tombstones]
    }

    #[test]
    fn folder_counters_follow_create_modify_delete() {
        let (_d, idx) = open();
        let mut dir = file("d", 0, &[(1, 1)]);
        dir.kind = EntryKind::Directory;
        dir.hash = None;
        dir.size = 0;
        let mut link = file("l", 0, &[(1, 1)]);
        link.kind = EntryKind::Symlink;
        link.hash = None;
        link.symlink_target = Some("d".into());
        let m = put(&idx, vec![file("a", 1, &[(1, 1)]), dir, link]).meta;
        assert_eq!(counters(m), [1, 1, 1, 10, 0]);
        let mut bigger = file("a", 2, &[(1, 2)]);
        bigger.size = 25;
        let m = put(&idx, vec![bigger, file("b", 3, &[(1, 1)])]).meta;
        assert_eq!(counters(m), [2, 1, 1, 35, 0]);
        let mut gone = file("a", 2, &[(1, 3)]);
        gone.deleted = true;
        let mut gone_dir = file("d", 0, &[(1, 2)]);
        gone_dir.kind = EntryKind::Directory;
        gone_dir.deleted = true;
        let m = put(&idx, vec![gone, gone_dir]).meta;
        assert_eq!(counters(m), [1, 0, 1, 10, 2]);
        assert_eq!(idx.folder_meta("f").unwrap(), Some(m));
    }

    #[test]
    fn folder_counters_do_not_overflow_on_huge_sizes() {
        // Was: `d * size as i64` — a size of 2^63 became i64::MIN and
        // removing it overflowed (a panic in debug, garbage in release);
        // a size of u64::MAX counted as -1 byte.
        let (_d, idx) = open();
        let mut huge = file("a", 1, &[(1, 1)]);
        huge.size = 1 << 63;
        assert_eq!(put(&idx, vec![huge.clone()]).meta.bytes, 1 << 63);
        let mut max = file("b", 2, &[(1, 1)]);
        max.size = u64::MAX;
        assert_eq!(put(&idx, vec![max]).meta.bytes, u64::MAX);
        huge.version = huge.version.bump(ShortId(1)).unwrap();
        huge.size = 1;
        let m = put(&idx, vec![huge]).meta;
        assert_eq!((m.files, m.bytes), (2, u64::MAX - (1 << 63) + 1));
    }

    #[test]
    fn replacing_a_record_releases_the_old_refs_link_with_its_hash() {
        let (_d, idx) = open();
        let mut r = rec(file("a", 1, &[(1, 1)]));
        r.refs = Some("link-1".into());
        put_records(&idx, vec![r.clone()]);
        // Same link kept: nothing released.
        r.entry = file("a", 1, &[(1, 2)]);
        assert!(put_records(&idx, vec![r.clone()]).released.is_empty());
        r.entry = file("a", 2, &[(1, 3)]);
        r.refs = Some("link-2".into());
        let c = put_records(&idx, vec![r]);
        assert_eq!(
            c.released,
            vec![Released {
                name: "link-1".into(),
                hash: Some([1; 32])
            }]
        );
        assert_eq!(idx.paths_with_hash("f", &[2; 32]).unwrap(), vec!["a"]);
        assert!(idx.paths_with_hash("f", &[1; 32]).unwrap().is_empty());
    }
    #[test]
    fn history_records_the_proven_sender_next_to_the_claimed_author() {
        let (_d, idx) = open();
        // The entry claims node 1 made it; peer [3; 32] sent it.
        let forged = file("a", 1, &[(1, 1)]);
        let c = Commit {
            items: vec![Item::Applied {
                record: rec(forged),
                note: "applied".into(),
                resolves: vec![],
                from: [3; 32],
            }],
            resolved: vec![],
        };
        idx.commit("f", c, ME).unwrap();
        commit(&idx, vec![observed("a", seen_file(10, 1, 2, None))]);
        let h = idx.history("f", "a").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].modified_by, ShortId(1));
        assert_eq!(h[0].via, Via::Peer([3; 32]));
        assert_eq!(h[1].modified_by, ME.me);
        assert_eq!(h[1].via, Via::Local);
    }
}
