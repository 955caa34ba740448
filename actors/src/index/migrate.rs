//! Migration of an index of schema 1 to [`super::SCHEMA_VERSION`] 2, run by
//! `schema::check_or_init` inside the opening transaction (all or nothing):
//!
//! - every `history` line is rewritten with [`Via::Unknown`] (schema 1 did
//!   not record who sent a change; `applied_from` and the note stay);
//! - `pending_peers` is counted from the `pending` rows.
//!
//! Other tables kept their format (their schema-1 values are read as they
//! are, see `schema::readable_since`).

use fleetsync_mesh::model::ShortId;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    schema::{enc, id32, name, CorruptValue},
    tables::{HISTORY, PENDING, PENDING_PEERS},
    HistoryEvent, IndexError, Result, Via,
};

/// A history line as schema 1 stored it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HistoryEventV1 {
    pub seq: u64,
    pub modified_by: ShortId,
    pub mtime_ns: i64,
    pub hash: Option<[u8; 32]>,
    pub deleted: bool,
    pub size: u64,
    pub version: Vec<(ShortId, u64)>,
    pub recorded_ns: i64,
    pub applied_from: Option<ShortId>,
    pub note: String,
}

impl From<HistoryEventV1> for HistoryEvent {
    fn from(v: HistoryEventV1) -> Self {
        HistoryEvent {
            seq: v.seq,
            modified_by: v.modified_by,
            mtime_ns: v.mtime_ns,
            hash: v.hash,
            deleted: v.deleted,
            size: v.size,
            version: v.version,
            recorded_ns: v.recorded_ns,
            applied_from: v.applied_from,
            note: v.note,
            via: Via::Unknown,
        }
    }
}

pub(super) fn from_v1(tx: &WriteTransaction) -> Result<()> {
    rewrite_history(tx)?;
    count_pending(tx)
}

fn rewrite_history(tx: &WriteTransaction) -> Result<()> {
    let mut t = tx.open_table(HISTORY)?;
    let mut rows: Vec<((String, String, u64), Vec<u8>)> = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let (folder, path, seq) = k.value();
        let ev: HistoryEvent = decode_v1(v.value())?.into();
        rows.push(((folder.to_string(), path.to_string(), seq), enc(&ev)));
    }
    for ((folder, path, seq), v) in &rows {
        t.insert((folder.as_str(), path.as_str(), *seq), v.as_slice())?;
    }
    Ok(())
}

fn decode_v1(b: &[u8]) -> Result<HistoryEventV1> {
    let corrupt = |source| IndexError::Corrupt {
        table: name::HISTORY,
        source,
    };
    match b.split_first() {
        Some((1, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.into())),
        Some((&found, _)) => Err(corrupt(CorruptValue::Schema { found, oldest: 1 })),
        None => Err(corrupt(CorruptValue::Empty)),
    }
}

fn count_pending(tx: &WriteTransaction) -> Result<()> {
    let mut counts: std::collections::BTreeMap<(String, [u8; 32]), u64> = Default::default();
    for item in tx.open_table(PENDING)?.iter()? {
        let (k, _) = item?;
        let (folder, _, peer) = k.value();
        *counts
            .entry((folder.to_string(), id32(name::PENDING, peer)?))
            .or_default() += 1;
    }
    let mut t = tx.open_table(PENDING_PEERS)?;
    for ((folder, peer), n) in &counts {
        t.insert((folder.as_str(), peer.as_slice()), *n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{fixtures::*, schema::SCHEMA_KEY, tables::META, Index};
    use super::*;

    /// Write a schema-1 database by hand: a history line of the old format
    /// and two pending rows, stamped schema 1.
    fn write_v1(idx: &Index) {
        let tx = idx.db.begin_write().unwrap();
        {
            let old = HistoryEventV1 {
                seq: 3,
                modified_by: ShortId(5),
                mtime_ns: 1,
                hash: Some([1; 32]),
                deleted: false,
                size: 10,
                version: vec![(ShortId(5), 1)],
                recorded_ns: 2,
                applied_from: Some(ShortId(5)),
                note: "applied from 0000000005".into(),
            };
            let mut v = vec![1u8];
            v.extend(postcard::to_stdvec(&old).unwrap());
            tx.open_table(HISTORY)
                .unwrap()
                .insert(("f", "a", 3), v.as_slice())
                .unwrap();
            let mut p = tx.open_table(PENDING).unwrap();
            let mut row = vec![1u8];
            row.extend(postcard::to_stdvec(&file("b", 2, &[(5, 1)])).unwrap());
            p.insert(("f", "b", PEER.as_slice()), row.as_slice())
                .unwrap();
            p.insert(("f", "c", PEER.as_slice()), row.as_slice())
                .unwrap();
            tx.open_table(PENDING_PEERS)
                .unwrap()
                .retain(|_, _| false)
                .unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, [1u8].as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn an_index_of_schema_1_opens_with_its_history_and_pending_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.redb");
        {
            let idx = Index::open(&p).unwrap();
            idx.ensure_folder("f").unwrap();
            write_v1(&idx);
        }
        let idx = Index::open(&p).unwrap();
        let h = idx.history("f", "a").unwrap();
        assert_eq!(h.len(), 1, "the old line survives");
        assert_eq!(h[0].note, "applied from 0000000005");
        assert_eq!(h[0].applied_from, Some(ShortId(5)));
        assert_eq!(h[0].via, Via::Unknown);
        assert_eq!(idx.pending_from("f", &PEER).unwrap(), 2);
        // Values of unchanged formats (pending rows of schema 1) still read.
        assert_eq!(idx.pending("f", 10).unwrap().len(), 2);
        // Reopening a migrated index is a no-op.
        drop(idx);
        let idx = Index::open(&p).unwrap();
        assert_eq!(idx.history("f", "a").unwrap()[0].via, Via::Unknown);
    }
}
