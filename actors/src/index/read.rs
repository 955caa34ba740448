//! Queries, each in one read transaction: records (`get`, `get_many`,
//! `descendants`, `for_each`, `since`), content (`paths_with_hash`,
//! `paths_with_hashes`, `refs_with_hash`, `refs_in_use`, `refs_since`, `live_hashes`), pending rows (`pending`, `pending_for`,
//! `pending_count`), `history` and `folder_meta`.

use std::collections::{HashMap, HashSet};

use fleetsync_mesh::model::FileEntry;
use redb::{ReadableDatabase, ReadableTable};

use super::{
    schema::{dec, id32, name},
    tables::{path_upper, FILES, FOLDERS, HASHES, HISTORY, PEER_HI, PEER_LO, PENDING, SEQ},
    FolderMeta, HistoryEvent, Index, Pending, RefsInUse, Result,
};
use crate::record::Record;

impl Index {
    pub fn folder_meta(&self, folder: &str) -> Result<Option<FolderMeta>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FOLDERS)?;
        let v = t.get(folder)?;
        v.map(|v| dec(name::FOLDERS, v.value())).transpose()
    }

    pub fn get(&self, folder: &str, path: &str) -> Result<Option<Record>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let v = t.get((folder, path))?;
        v.map(|v| dec(name::FILES, v.value())).transpose()
    }

    /// Records for many paths in one read transaction.
    pub fn get_many(&self, folder: &str, paths: &[String]) -> Result<HashMap<String, Record>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let mut out = HashMap::with_capacity(paths.len());
        for p in paths {
            if let Some(v) = t.get((folder, p.as_str()))? {
                out.insert(p.clone(), dec(name::FILES, v.value())?);
            }
        }
        Ok(out)
    }

    /// Every record strictly below directory `dir` ("" = the whole folder).
    pub fn descendants(&self, folder: &str, dir: &str) -> Result<Vec<Record>> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let upper = path_upper(&prefix);
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for item in t.range((folder, prefix.as_str())..(folder, upper.as_str()))? {
            let (_, v) = item?;
            out.push(dec(name::FILES, v.value())?);
        }
        Ok(out)
    }

    /// Visit every record of a folder (scan comparisons, retention).
    pub fn for_each(&self, folder: &str, mut f: impl FnMut(&Record)) -> Result<()> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        for item in t.range((folder, "")..(folder, upper.as_str()))? {
            let (_, v) = item?;
            f(&dec(name::FILES, v.value())?);
        }
        Ok(())
    }

    /// Our entries with sequence numbers in `(since, ..]`, oldest first, at
    /// most `limit`.
    pub fn since(&self, folder: &str, since: u64, limit: usize) -> Result<Vec<Record>> {
        let tx = self.db.begin_read()?;
        let seqs = tx.open_table(SEQ)?;
        let files = tx.open_table(FILES)?;
        let rows = seqs.range((folder, since.saturating_add(1))..=(folder, u64::MAX))?;
        records_of(&files, folder, rows, limit)
    }

    /// The folder's `limit` most recently changed entries, newest first
    /// (each path once: a rewritten path moves to its new sequence number).
    pub fn latest(&self, folder: &str, limit: usize) -> Result<Vec<Record>> {
        let tx = self.db.begin_read()?;
        let seqs = tx.open_table(SEQ)?;
        let files = tx.open_table(FILES)?;
        let rows = seqs.range((folder, 0)..=(folder, u64::MAX))?.rev();
        records_of(&files, folder, rows, limit)
    }

    /// Paths in this folder whose current content has this hash.
    pub fn paths_with_hash(&self, folder: &str, hash: &[u8; 32]) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HASHES)?;
        hash_paths(&t, folder, hash)
    }

    /// The `refs/` links of the current records with content `hash`, if
    /// it is at most `max_size` bytes long: where this node holds it (see
    /// `content::IndexedRefs`).
    pub fn refs_with_hash(
        &self,
        folder: &str,
        hash: &[u8; 32],
        max_size: u64,
    ) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let paths = hash_paths(&tx.open_table(HASHES)?, folder, hash)?;
        let files = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for p in paths {
            if let Some(v) = files.get((folder, p.as_str()))? {
                let r: Record = dec(name::FILES, v.value())?;
                if r.entry.size > max_size {
                    break; // every record with this hash has its size
                }
                out.extend(r.refs);
            }
        }
        Ok(out)
    }

    /// [`Index::paths_with_hash`] for several hashes in one read
    /// transaction (hashes no current entry has are left out).
    pub fn paths_with_hashes(
        &self,
        folder: &str,
        hashes: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Vec<String>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HASHES)?;
        let mut out = HashMap::with_capacity(hashes.len());
        for h in hashes {
            let paths = hash_paths(&t, folder, h)?;
            if !paths.is_empty() {
                out.insert(*h, paths);
            }
        }
        Ok(out)
    }

    /// Every refs link name a record uses, and the folder's last sequence
    /// number as of that reading (one read transaction): what commits
    /// since then brought is [`Index::refs_since`].
    pub fn refs_in_use(&self, folder: &str) -> Result<RefsInUse> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let seq = tx
            .open_table(FOLDERS)?
            .get(folder)?
            .map(|v| dec::<FolderMeta>(name::FOLDERS, v.value()))
            .transpose()?
            .map_or(0, |m| m.seq);
        let t = tx.open_table(FILES)?;
        let mut names = HashSet::new();
        for item in t.range((folder, "")..(folder, upper.as_str()))? {
            let (_, v) = item?;
            let r: Record = dec(name::FILES, v.value())?;
            names.extend(r.refs);
        }
        Ok(RefsInUse { names, seq })
    }

    /// The refs link names of the records written after sequence number
    /// `seq`: reads only those records, however large the folder.
    pub fn refs_since(&self, folder: &str, seq: u64) -> Result<HashSet<String>> {
        let tx = self.db.begin_read()?;
        let seqs = tx.open_table(SEQ)?;
        let files = tx.open_table(FILES)?;
        let rows = seqs.range((folder, seq.saturating_add(1))..=(folder, u64::MAX))?;
        let records = records_of(&files, folder, rows, usize::MAX)?;
        Ok(records.into_iter().filter_map(|r| r.refs).collect())
    }

    /// Every content hash any current entry or pending entry needs, in
    /// every folder: what blob garbage collection must keep.
    pub fn live_hashes(&self) -> Result<Vec<[u8; 32]>> {
        let tx = self.db.begin_read()?;
        let mut out: Vec<[u8; 32]> = Vec::new();
        // Rows are sorted by hash: one per hash, however many paths share it.
        for item in tx.open_table(HASHES)?.iter()? {
            let (k, _) = item?;
            let h = k.value().0;
            if out.last().map(<[u8; 32]>::as_slice) != Some(h) {
                out.push(id32(name::HASHES, h)?);
            }
        }
        for item in tx.open_table(PENDING)?.iter()? {
            let (_, v) = item?;
            let e: FileEntry = dec(name::PENDING, v.value())?;
            out.extend(e.hash);
        }
        Ok(out)
    }

    /// Up to `limit` pending rows of a folder, in path order.
    pub fn pending(&self, folder: &str, limit: usize) -> Result<Vec<Pending>> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for item in t.range((folder, "", PEER_LO)..(folder, upper.as_str(), PEER_LO))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let (_, path, peer_id) = k.value();
            out.push(Pending {
                path: path.to_string(),
                peer: id32(name::PENDING, peer_id)?,
                entry: dec(name::PENDING, v.value())?,
            });
        }
        Ok(out)
    }

    /// Every peer's pending row for one path.
    pub fn pending_for(&self, folder: &str, path: &str) -> Result<Vec<Pending>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for item in t.range((folder, path, PEER_LO)..(folder, path, PEER_HI))? {
            let (k, v) = item?;
            out.push(Pending {
                path: path.to_string(),
                peer: id32(name::PENDING, k.value().2)?,
                entry: dec(name::PENDING, v.value())?,
            });
        }
        Ok(out)
    }

    pub fn pending_count(&self, folder: &str) -> Result<u64> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut n = 0;
        for item in t.range((folder, "", PEER_LO)..(folder, upper.as_str(), PEER_LO))? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// The kept history of a path, oldest first.
    pub fn history(&self, folder: &str, path: &str) -> Result<Vec<HistoryEvent>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HISTORY)?;
        let mut out = Vec::new();
        for item in t.range((folder, path, 0)..=(folder, path, u64::MAX))? {
            let (_, v) = item?;
            out.push(dec(name::HISTORY, v.value())?);
        }
        Ok(out)
    }
}

/// One indexed range of the `hashes` table: the folder's paths with `hash`.
fn hash_paths(
    t: &impl ReadableTable<(&'static [u8], &'static str, &'static str), ()>,
    folder: &str,
    hash: &[u8; 32],
) -> Result<Vec<String>> {
    let upper = path_upper("");
    let mut out = Vec::new();
    for item in t.range((hash.as_slice(), folder, "")..(hash.as_slice(), folder, upper.as_str()))? {
        let (k, _) = item?;
        out.push(k.value().2.to_string());
    }
    Ok(out)
}

/// The records the sequence rows `rows` point at, in their order, at
/// most `limit` (a row whose record is gone is skipped).
fn records_of<'a>(
    files: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    folder: &str,
    rows: impl Iterator<
        Item = std::result::Result<
            (
                redb::AccessGuard<'a, (&'static str, u64)>,
                redb::AccessGuard<'a, &'static str>,
            ),
            redb::StorageError,
        >,
    >,
    limit: usize,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for item in rows {
        if out.len() >= limit {
            break;
        }
        let (_, path) = item?;
        if let Some(v) = files.get((folder, path.value()))? {
            out.push(dec(name::FILES, v.value())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{tables::FILES, CorruptValue, IndexError, Limits, SCHEMA_VERSION};

    #[test]
    fn descendants_stop_at_the_prefix() {
        let (_d, idx) = open();
        put(
            &idx,
            ["d", "d/x", "d/y/z", "d2", "e", "dd/x"]
                .iter()
                .map(|p| file(p, 1, &[(1, 1)]))
                .collect(),
        );
        let mut got: Vec<_> = idx
            .descendants("f", "d")
            .unwrap()
            .into_iter()
            .map(|r| r.entry.path)
            .collect();
        got.sort();
        assert_eq!(got, vec!["d/x", "d/y/z"]);
        assert_eq!(idx.descendants("f", "").unwrap().len(), 6);
    }

    #[test]
    fn since_respects_limit_and_skips_earlier_sequences() {
        let (_d, idx) = open();
        put(
            &idx,
            ["a", "b", "c", "d"]
                .iter()
                .map(|p| file(p, 1, &[(1, 1)]))
                .collect(),
        );
        let paths =
            |v: Vec<Record>| -> Vec<String> { v.into_iter().map(|r| r.entry.path).collect() };
        assert_eq!(paths(idx.since("f", 1, 2).unwrap()), vec!["b", "c"]);
        assert_eq!(paths(idx.since("f", 3, 10).unwrap()), vec!["d"]);
        assert!(idx.since("f", 4, 10).unwrap().is_empty());
        assert!(idx.since("f", 0, 0).unwrap().is_empty());
        assert!(idx.since("f", u64::MAX, 10).unwrap().is_empty());
        // A rewritten path moves to its new sequence number.
        put(&idx, vec![file("a", 2, &[(1, 2)])]);
        assert_eq!(paths(idx.since("f", 3, 10).unwrap()), vec!["d", "a"]);
    }

    #[test]
    fn latest_is_newest_first_bounded_and_one_folder() {
        let (_d, idx) = open();
        put(
            &idx,
            ["a", "b", "c"]
                .iter()
                .map(|p| file(p, 1, &[(1, 1)]))
                .collect(),
        );
        idx.ensure_folder("g").unwrap();
        let paths =
            |v: Vec<Record>| -> Vec<String> { v.into_iter().map(|r| r.entry.path).collect() };
        assert_eq!(paths(idx.latest("f", 2).unwrap()), vec!["c", "b"]);
        put(&idx, vec![file("a", 2, &[(1, 2)])]);
        assert_eq!(paths(idx.latest("f", 10).unwrap()), vec!["a", "c", "b"]);
        assert!(idx.latest("f", 0).unwrap().is_empty());
        assert!(idx.latest("g", 10).unwrap().is_empty(), "another folder's");
    }

    #[test]
    fn pending_for_and_pending_count_see_one_folder_and_path() {
        let (_d, idx) = open();
        idx.ensure_folder("g").unwrap();
        let other = [3u8; 32];
        ingest(
            &idx,
            &PEER,
            1,
            &[file("a", 1, &[(2, 1)]), file("b", 1, &[(2, 1)])],
        );
        ingest(&idx, &other, 1, &[file("a", 2, &[(3, 1)])]);
        idx.ingest(
            "g",
            &PEER,
            Default::default(),
            &[file("a", 3, &[(2, 1)])],
            Limits::NONE,
        )
        .unwrap();
        assert_eq!(idx.pending_count("f").unwrap(), 3);
        assert_eq!(idx.pending_count("g").unwrap(), 1);
        let mut a: Vec<_> = idx
            .pending_for("f", "a")
            .unwrap()
            .into_iter()
            .map(|p| (p.peer, p.entry.hash))
            .collect();
        a.sort();
        assert_eq!(a, vec![(other, Some([2; 32])), (PEER, Some([1; 32]))]);
        assert!(idx.pending_for("f", "c").unwrap().is_empty());
        assert_eq!(idx.pending("f", 2).unwrap().len(), 2);
        assert_eq!(idx.pending("f", 10).unwrap().last().unwrap().path, "b");
    }

    #[test]
    fn live_hashes_cover_current_and_pending_entries_only() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 1)]), file("b", 1, &[(1, 1)])]);
        put(&idx, vec![file("c", 2, &[(1, 1)])]);
        let mut gone = file("c", 2, &[(1, 2)]);
        gone.deleted = true;
        put(&idx, vec![file("a", 3, &[(1, 2)]), gone]);
        ingest(&idx, &PEER, 1, &[file("p", 4, &[(2, 1)])]);
        idx.ensure_folder("g").unwrap();
        idx.ingest(
            "g",
            &PEER,
            Default::default(),
            &[file("q", 5, &[(2, 1)])],
            Limits::NONE,
        )
        .unwrap();
        let mut live = idx.live_hashes().unwrap();
        live.sort();
        // 1 once though two paths share it; 2 only in a tombstone: gone.
        assert_eq!(live, vec![[1; 32], [3; 32], [4; 32], [5; 32]]);
    }

    #[test]
    fn refs_in_use_lists_every_link_a_record_uses() {
        let (_d, idx) = open();
        let mut a = rec(file("a", 1, &[(1, 1)]));
        a.refs = Some("la".into());
        let mut b = rec(file("b", 2, &[(1, 1)]));
        b.refs = Some("lb".into());
        put_records(&idx, vec![a, b, rec(file("c", 3, &[(1, 1)]))]);
        let in_use = idx.refs_in_use("f").unwrap();
        let mut got: Vec<_> = in_use.names.into_iter().collect();
        got.sort();
        assert_eq!(got, vec!["la", "lb"]);
        assert_eq!(in_use.seq, 3, "as of the last sequence number");
        idx.ensure_folder("g").unwrap();
        assert!(idx.refs_in_use("g").unwrap().names.is_empty());
    }

    #[test]
    fn refs_since_reads_only_records_written_after_the_sequence_number() {
        let (_d, idx) = open();
        let linked = |p: &str, h: u8, link: &str| {
            let mut r = rec(file(p, h, &[(1, u64::from(h))]));
            r.refs = Some(link.into());
            r
        };
        put_records(&idx, vec![linked("a", 1, "la"), linked("b", 2, "lb")]);
        let seq = idx.refs_in_use("f").unwrap().seq;
        assert!(idx.refs_since("f", seq).unwrap().is_empty());
        // A new link for a, and c: only they are read.
        put_records(&idx, vec![linked("a", 3, "la2"), linked("c", 4, "lc")]);
        let mut got: Vec<_> = idx.refs_since("f", seq).unwrap().into_iter().collect();
        got.sort();
        assert_eq!(got, vec!["la2", "lc"]);
        idx.ensure_folder("g").unwrap();
        assert!(idx.refs_since("g", 0).unwrap().is_empty());
    }

    #[test]
    fn get_many_returns_only_recorded_paths() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 1)]), file("b", 2, &[(1, 1)])]);
        let got = idx
            .get_many("f", &["a".into(), "x".into(), "b".into()])
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["b"].entry.hash, Some([2; 32]));
        assert!(idx.get_many("g", &["a".into()]).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_value_is_reported_as_corrupt_with_its_table() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 1)])]);
        let tx = idx.db.begin_write().unwrap();
        // Right schema byte, garbage after it.
        tx.open_table(FILES)
            .unwrap()
            .insert(("f", "a"), [SCHEMA_VERSION, 0xff, 0xff].as_slice())
            .unwrap();
        tx.commit().unwrap();
        let err = idx.get("f", "a").unwrap_err();
        assert!(matches!(
            &err,
            IndexError::Corrupt {
                table: "files",
                source: CorruptValue::Decode(_)
            }
        ));
        assert!(std::error::Error::source(&err).is_some());
        assert!(matches!(
            idx.for_each("f", |_| {}),
            Err(IndexError::Corrupt { table: "files", .. })
        ));
    }
}
