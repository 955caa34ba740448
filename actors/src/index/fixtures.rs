//! Test fixtures for the index's unit tests: an index on a temp dir with
//! folder "f", entries, records, and one-line commits and ingests.

pub(super) use fleetsync_mesh::model::{Causality, EntryKind, FileEntry, ShortId, VersionVector};

use super::{
    schema::SCHEMA_KEY, tables::META, Commit, Committed, Index, Ingested, Item, Limits, Local,
    Observed, RemoteMark,
};
pub(super) use crate::record::{LocalStat, Record};

pub(super) const ME: Local = Local {
    me: ShortId(7 << 56),
    receive_only: false,
};

/// A peer id for pending rows.
pub(super) const PEER: [u8; 32] = [9; 32];

/// A 10-byte file with content `[hash; 32]`, modified by the first node of
/// `vv`.
pub(super) fn file(path: &str, hash: u8, vv: &[(u64, u64)]) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        size: 10,
        mtime_ns: 1,
        mode: 0o644,
        hash: Some([hash; 32]),
        symlink_target: None,
        deleted: false,
        version: VersionVector::from_pairs(vv.iter().map(|(a, b)| (ShortId(*a), *b))),
        modified_by: ShortId(vv[0].0),
        sequence: 0,
    }
}

pub(super) fn rec(e: FileEntry) -> Record {
    Record {
        entry: e,
        local: None,
        local_changed: false,
        received_from: None,
        refs: None,
    }
}

pub(super) fn applied(record: Record) -> Item {
    Item::Applied {
        record,
        note: "test".into(),
        resolves: vec![],
        from: PEER,
    }
}

/// Commit `items` to folder "f" as [`ME`].
pub(super) fn commit(idx: &Index, items: Vec<Item>) -> Committed {
    commit_as(idx, items, ME)
}

pub(super) fn commit_as(idx: &Index, items: Vec<Item>, local: Local) -> Committed {
    let c = Commit {
        items,
        resolved: vec![],
    };
    idx.commit("f", c, local).unwrap()
}

/// Commit records as applied from a peer.
pub(super) fn put_records(idx: &Index, records: Vec<Record>) -> Committed {
    commit(idx, records.into_iter().map(applied).collect())
}

pub(super) fn put(idx: &Index, entries: Vec<FileEntry>) -> Committed {
    put_records(idx, entries.into_iter().map(rec).collect())
}

pub(super) fn observed(path: &str, seen: Observed) -> Item {
    Item::Observed {
        path: path.into(),
        seen,
    }
}

pub(super) fn seen_file(size: u64, ino: u64, hash: u8, refs: Option<&str>) -> Observed {
    Observed::File {
        stat: stat(size, ino),
        hash: [hash; 32],
        refs: refs.map(str::to_string),
    }
}

pub(super) fn stat(size: u64, ino: u64) -> LocalStat {
    LocalStat {
        size,
        mtime_ns: 5,
        ino,
        mode: 0o100644,
    }
}

/// Ingest `entries` from `peer` with a mark of index 1 at `seq`, no caps;
/// how many were stored.
pub(super) fn ingest(idx: &Index, peer: &[u8; 32], seq: u64, entries: &[FileEntry]) -> usize {
    ingest_capped(idx, peer, seq, entries, Limits::NONE).stored
}

pub(super) fn ingest_capped(
    idx: &Index,
    peer: &[u8; 32],
    seq: u64,
    entries: &[FileEntry],
    limits: Limits,
) -> Ingested {
    let mark = RemoteMark { index_id: 1, seq };
    idx.ingest("f", peer, mark, entries, limits).unwrap()
}

pub(super) fn open() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("index.redb")).unwrap();
    idx.ensure_folder("f").unwrap();
    (dir, idx)
}

/// Overwrite the database's schema byte (as a newer or broken build would).
pub(super) fn set_schema(idx: &Index, v: u8) {
    let tx = idx.db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert(SCHEMA_KEY, [v].as_slice())
        .unwrap();
    tx.commit().unwrap();
}
