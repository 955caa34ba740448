//! Peers' index batches into `pending`: [`Index::ingest`] stores the
//! entries that could change something and advances the peer's
//! [`RemoteMark`] in the same transaction, so a crash neither loses an
//! entry nor has it fetched twice; [`Index::remote_mark`] reads the mark.

use fleetsync_mesh::model::{Causality, FileEntry};
use redb::{ReadableDatabase, ReadableTable};

use super::{
    schema::{dec, enc, name},
    tables::{FILES, PENDING, REMOTE},
    Index, RemoteMark, Result,
};
use crate::record::Record;

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
    /// dropped here. Returns how many became pending.
    pub fn ingest(
        &self,
        folder: &str,
        peer: &[u8; 32],
        mark: RemoteMark,
        entries: &[FileEntry],
    ) -> Result<usize> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let files = tx.open_table(FILES)?;
            let mut pending = tx.open_table(PENDING)?;
            for e in entries {
                let ours: Option<Record> = files
                    .get((folder, e.path.as_str()))?
                    .map(|v| dec(name::FILES, v.value()))
                    .transpose()?;
                if useless(ours.as_ref(), e) {
                    continue;
                }
                pending.insert(
                    (folder, e.path.as_str(), peer.as_slice()),
                    enc(e).as_slice(),
                )?;
                n += 1;
            }
            // Even when every entry was useless: the peer need not resend them.
            tx.open_table(REMOTE)?
                .insert((folder, peer.as_slice()), enc(&mark).as_slice())?;
        }
        tx.commit()?;
        Ok(n)
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
            )
            .unwrap();
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
}
