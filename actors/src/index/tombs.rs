//! Tombstone expiry: what this node remembers of its peers' reads
//! ([`PeerRead`], table `peer_reads`), the rule that says how far
//! tombstones may go ([`read_bound`]), the removal itself
//! ([`Index::expire_tombstones`]) and the folder's horizon (the highest
//! sequence number expired, table `horizons`). A peer that subscribes from
//! below the horizon missed deletions we no longer hold: the index stream
//! answers it "too old", and it reads our index again from 0.
//!
//! The subscriber's side: `rescans` holds, per peer that answered us "too
//! old", that we owe it a full read (kept across a restart, so a rescan
//! cut short starts over from 0).

use std::{collections::HashMap, time::Duration};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    schema::{dec, enc, id32, name},
    tables::{Tables, HORIZONS, PEER_READS, RESCANS},
    Index, Result,
};

/// How far a subscribing peer has read this node's index of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerRead {
    /// Highest of our sequence numbers it was sent (or subscribed from).
    pub read: u64,
    /// When we last saw it (ms since the epoch).
    pub seen_ms: i64,
}

impl PeerRead {
    /// The later of two notes about one peer (reads only move forward).
    pub fn merge(self, other: PeerRead) -> PeerRead {
        PeerRead {
            read: self.read.max(other.read),
            seen_ms: self.seen_ms.max(other.seen_ms),
        }
    }
}

/// How far tombstones may be expired now: every peer seen within `ttl`
/// (before `now_ms`) must have read past a tombstone; peers not seen for
/// longer no longer count (a dead node must not pin tombstones forever).
/// With no such peer, up to `head`.
pub fn read_bound<'a>(
    now_ms: i64,
    ttl: Duration,
    head: u64,
    peers: impl IntoIterator<Item = &'a PeerRead>,
) -> u64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    peers
        .into_iter()
        .filter(|p| now_ms.saturating_sub(p.seen_ms) <= ttl_ms)
        .map(|p| p.read)
        .fold(head, u64::min)
}

/// One expiry run over a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Tombstones recorded at or before this time (ns since the epoch) are old enough.
    pub cutoff_ns: i64,
    /// Only tombstones at or below this sequence number ([`read_bound`]).
    pub bound: u64,
    /// Most tombstones removed in one transaction.
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    pub removed: usize,
    /// The folder's horizon after the run.
    pub horizon: u64,
    /// The limit stopped the run: call again.
    pub more: bool,
}

impl Index {
    /// The folder's horizon: the highest sequence number expired (0: none).
    pub fn horizon(&self, folder: &str) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HORIZONS)?;
        Ok(t.get(folder)?.map_or(0, |v| v.value()))
    }

    /// Every peer's read of `folder` as last saved.
    pub fn peer_reads(&self, folder: &str) -> Result<HashMap<[u8; 32], PeerRead>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PEER_READS)?;
        let mut out = HashMap::new();
        for item in t.range((folder, super::tables::PEER_LO)..(folder, super::tables::PEER_HI))? {
            let (k, v) = item?;
            let peer = id32(name::PEER_READS, k.value().1)?;
            out.insert(peer, dec(name::PEER_READS, v.value())?);
        }
        Ok(out)
    }

    /// Save peers' reads, each merged with what was saved ([`PeerRead::merge`]).
    pub fn save_peer_reads(&self, folder: &str, reads: &[([u8; 32], PeerRead)]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PEER_READS)?;
            for (peer, read) in reads {
                let key = (folder, peer.as_slice());
                let old = t
                    .get(key)?
                    .map(|v| dec::<PeerRead>(name::PEER_READS, v.value()))
                    .transpose()?
                    .unwrap_or_default();
                t.insert(key, enc(&old.merge(*read)).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// If this node owes `peer` a full read of its index of `folder`: how
    /// far the peer had read ours when it answered "too old".
    pub fn rescan_owed(&self, folder: &str, peer: &[u8; 32]) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RESCANS)?;
        Ok(t.get((folder, peer.as_slice()))?.map(|v| v.value()))
    }

    /// Note (`Some(read_by)`: how far the peer had read our index) or
    /// clear (`None`) that `peer`'s index of `folder` must be read again
    /// from 0.
    pub fn set_rescan(&self, folder: &str, peer: &[u8; 32], read_by: Option<u64>) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(RESCANS)?;
            match read_by {
                Some(h) => t.insert((folder, peer.as_slice()), h)?,
                None => t.remove((folder, peer.as_slice()))?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Remove tombstones in sequence order, from just above the horizon,
    /// while they are old enough and within the bound; stops at the first
    /// that is not (everything after it is younger or unread), so the
    /// horizon never passes a tombstone that is still kept.
    pub fn expire_tombstones(&self, folder: &str, run: Expiry) -> Result<Expired> {
        let tx = self.db.begin_write()?;
        let out = {
            let mut horizons = tx.open_table(HORIZONS)?;
            let start = horizons.get(folder)?.map_or(0, |v| v.value());
            let mut t = Tables::open(&tx, folder)?;
            let out = expire_from(&mut t, start, run)?;
            if out.horizon > start {
                horizons.insert(folder, out.horizon)?;
            }
            t.finish()?;
            out
        };
        tx.commit()?;
        Ok(out)
    }
}

/// The walk of [`Index::expire_tombstones`] inside its transaction.
fn expire_from(t: &mut Tables<'_>, start: u64, run: Expiry) -> Result<Expired> {
    let mut out = Expired {
        horizon: start,
        ..Expired::default()
    };
    let mut at = start;
    while let Some(seq) = t.next_seq(at)? {
        if seq > run.bound {
            break;
        }
        at = seq;
        let Some(path) = t.path_at(seq)? else { break };
        let Some(rec) = t.get(&path)? else { break };
        if !rec.entry.deleted {
            continue;
        }
        // A tombstone without its history line is from before this build
        // kept one: as old as anything.
        let when = t.recorded_ns(&path, seq)?.unwrap_or(0);
        if when > run.cutoff_ns {
            break;
        }
        if out.removed == run.limit {
            out.more = true;
            break;
        }
        t.forget(&rec)?;
        out.removed += 1;
        out.horizon = seq;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::now_ns;
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const DAY_MS: i64 = 24 * 3600 * 1000;

    fn seen(read: u64, seen_ms: i64) -> PeerRead {
        PeerRead { read, seen_ms }
    }

    #[test]
    fn the_bound_is_the_slowest_reader_among_peers_seen_within_the_ttl() {
        let now = 100 * DAY_MS;
        let peers = [seen(40, now), seen(25, now - DAY_MS)];
        assert_eq!(read_bound(now, 2 * DAY, 90, &peers), 25);
        // Every peer has read everything: up to the head.
        assert_eq!(read_bound(now, 2 * DAY, 20, &peers), 20);
    }

    #[test]
    fn a_peer_not_seen_for_longer_than_the_ttl_no_longer_pins_tombstones() {
        let now = 100 * DAY_MS;
        let peers = [seen(40, now), seen(3, now - 3 * DAY_MS)];
        assert_eq!(read_bound(now, 2 * DAY, 90, &peers), 40);
        // Seen exactly at the TTL still counts.
        let peers = [seen(40, now), seen(3, now - 2 * DAY_MS)];
        assert_eq!(read_bound(now, 2 * DAY, 90, &peers), 3);
        // No peer at all: nothing pins.
        assert_eq!(read_bound(now, 2 * DAY, 90, &[]), 90);
    }

    #[test]
    fn merged_reads_only_move_forward() {
        assert_eq!(seen(5, 10).merge(seen(3, 20)), seen(5, 20));
    }

    fn gone(path: &str, v: u64) -> FileEntry {
        let mut e = file(path, 1, &[(1, v)]);
        e.deleted = true;
        e
    }

    fn run(cutoff_ns: i64, bound: u64) -> Expiry {
        Expiry {
            cutoff_ns,
            bound,
            limit: 100,
        }
    }

    #[test]
    fn old_tombstones_within_the_bound_go_and_the_horizon_follows() {
        let (_d, idx) = open();
        // seq 1 a (live), 2 b (gone), 3 c (gone), 4 d (live), 5 e (gone)
        put(&idx, vec![file("a", 1, &[(1, 1)])]);
        put(&idx, vec![gone("b", 2), gone("c", 2)]);
        put(&idx, vec![file("d", 1, &[(1, 1)]), gone("e", 2)]);
        let later = now_ns() + 1;
        // Bound 3: b and c go, e (seq 5) stays: a peer has not read it.
        let out = idx.expire_tombstones("f", run(later, 3)).unwrap();
        assert_eq!((out.removed, out.horizon, out.more), (2, 3, false));
        assert!(idx.get("f", "b").unwrap().is_none());
        assert!(idx.get("f", "c").unwrap().is_none());
        assert!(idx.history("f", "b").unwrap().is_empty());
        assert!(idx.get("f", "a").unwrap().is_some());
        assert!(idx.get("f", "e").unwrap().is_some());
        let meta = idx.folder_meta("f").unwrap().unwrap();
        assert_eq!((meta.tombstones, meta.files), (1, 2));
        // The removed ones are no longer served; the rest is.
        let served: Vec<String> = idx
            .since("f", 0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.entry.path)
            .collect();
        assert_eq!(served, vec!["a", "d", "e"]);
        let out = idx.expire_tombstones("f", run(later, 5)).unwrap();
        assert_eq!((out.removed, out.horizon), (1, 5));
        assert_eq!(idx.horizon("f").unwrap(), 5);
    }

    #[test]
    fn a_tombstone_younger_than_the_ttl_stops_the_run() {
        let (_d, idx) = open();
        let before = now_ns() - 1;
        put(&idx, vec![gone("b", 2)]);
        let out = idx.expire_tombstones("f", run(before, 10)).unwrap();
        assert_eq!((out.removed, out.horizon), (0, 0));
        assert!(idx.get("f", "b").unwrap().is_some());
        assert_eq!(idx.horizon("f").unwrap(), 0);
    }

    #[test]
    fn the_limit_leaves_the_rest_for_the_next_call() {
        let (_d, idx) = open();
        put(&idx, vec![gone("a", 2), gone("b", 2), gone("c", 2)]);
        let mut r = run(now_ns() + 1, 10);
        r.limit = 2;
        let out = idx.expire_tombstones("f", r).unwrap();
        assert_eq!((out.removed, out.horizon, out.more), (2, 2, true));
        let out = idx.expire_tombstones("f", r).unwrap();
        assert_eq!((out.removed, out.horizon, out.more), (1, 3, false));
    }

    #[test]
    fn reads_and_rescans_are_kept() {
        let (_d, idx) = open();
        idx.save_peer_reads("f", &[(PEER, seen(7, 100))]).unwrap();
        idx.save_peer_reads("f", &[(PEER, seen(5, 200))]).unwrap();
        assert_eq!(idx.peer_reads("f").unwrap()[&PEER], seen(7, 200));
        assert!(idx.peer_reads("g").unwrap().is_empty());
        assert_eq!(idx.rescan_owed("f", &PEER).unwrap(), None);
        idx.set_rescan("f", &PEER, Some(4)).unwrap();
        assert_eq!(idx.rescan_owed("f", &PEER).unwrap(), Some(4));
        idx.set_rescan("f", &PEER, None).unwrap();
        assert_eq!(idx.rescan_owed("f", &PEER).unwrap(), None);
    }
}
