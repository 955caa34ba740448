//! Convergence rules: what a node does with a peer's entry for a path.
//! Pure functions, identical on every node, so the fleet converges without
//! coordination (see the property tests at the bottom).
//!
//! - remote dominates local → apply;
//! - local dominates, or equal → nothing (the peer will get ours);
//! - concurrent (a true conflict) → the winner under [`beats`] (an edit
//!   beats a delete, then newer mtime, then larger node id, then content) is
//!   kept under the path with the *merged* version vector; if the local side
//!   loses, its content is first kept as a conflict copy beside it.
//!
//! File vs directory (paths are not independent: `d` and `d/x`): a live
//! file or symlink at `d` and a live entry below `d/` cannot both be on
//! disk. The directory wins while anything below it is live
//! ([`directory_wins`]): `d` becomes a directory whose version dominates
//! the file's, and the file is kept as a conflict copy named after it
//! ([`kept_copy`], the same name on every node). Once everything below `d`
//! is deleted (tombstones that dominate), nothing blocks the file and it
//! wins on its versions like any entry. Children are never dropped.
//!
//! A node only ever moves to a state with a larger version vector (or, for
//! equal vectors, a larger entry under [`beats`]), so each node changes
//! finitely often; two neighbours that have seen each other's final state
//! are identical. Wall-clock time only breaks ties between concurrent
//! versions: a causally newer version always wins, whatever its mtime.

use std::cmp::Ordering;

use fleetsync_mesh::model::{Causality, CounterOverflow, EntryKind, FileEntry, ShortId};

use crate::record::Record;

/// What to do with a remote entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Ours is equal or wins: keep it.
    Keep,
    /// Make `entry` our state for the path. If `conflict_copy` is set, our
    /// current content lost a conflict and must be preserved first.
    Apply {
        entry: FileEntry,
        conflict_copy: bool,
        /// Adopted verbatim (not merged): don't echo it to its sender.
        verbatim: bool,
    },
}

fn kind_rank(k: EntryKind) -> u8 {
    match k {
        EntryKind::Directory => 0,
        EntryKind::Symlink => 1,
        EntryKind::File => 2,
    }
}

/// Total order used to pick a winner between versions that are not
/// causally ordered. `Greater` means `a` wins.
pub fn beats(a: &FileEntry, b: &FileEntry) -> Ordering {
    (!a.deleted)
        .cmp(&!b.deleted)
        .then(a.mtime_ns.cmp(&b.mtime_ns))
        .then(a.modified_by.cmp(&b.modified_by))
        .then(a.hash.cmp(&b.hash))
        .then(kind_rank(a.kind).cmp(&kind_rank(b.kind)))
        .then(a.size.cmp(&b.size))
        .then(a.symlink_target.cmp(&b.symlink_target))
        .then(a.mode.cmp(&b.mode))
}

fn needs_copy(local: &FileEntry, remote: &FileEntry) -> bool {
    !local.deleted
        && local.kind == EntryKind::File
        && (remote.deleted || remote.kind != EntryKind::File || remote.hash != local.hash)
}

pub fn decide(local: Option<&Record>, remote: &FileEntry) -> Decision {
    let apply = |entry: FileEntry, conflict_copy, verbatim| Decision::Apply {
        entry,
        conflict_copy,
        verbatim,
    };
    let Some(local) = local else {
        return apply(remote.clone(), false, true);
    };
    let l = &local.entry;
    let rel = l.version.compare(&remote.version);
    if local.local_changed && matches!(rel, Causality::Equal | Causality::DominatedBy) {
        // Receive-only: an unannounced local edit yields to the fleet.
        return apply(remote.clone(), false, true);
    }
    match rel {
        Causality::DominatedBy => apply(remote.clone(), false, true),
        Causality::Dominates => Decision::Keep,
        Causality::Equal => {
            if beats(remote, l) == Ordering::Greater {
                apply(remote.clone(), needs_copy(l, remote), true)
            } else {
                Decision::Keep
            }
        }
        Causality::Concurrent => {
            // Identical content reached by different histories (two nodes
            // made the same edit, or the same conflict copy): both sides
            // move to the merged vector, so they end up equal.
            if beats(remote, l) != Ordering::Less {
                let mut entry = remote.clone();
                entry.version = l.version.merge(&remote.version);
                apply(entry, needs_copy(l, remote), false)
            } else {
                Decision::Keep
            }
        }
    }
}

/// Can this entry not stand where something below it is live?
pub fn blocks_children(e: &FileEntry) -> bool {
    !e.deleted && e.kind != EntryKind::Directory
}

/// The file-vs-directory rule: `file` (live, not a directory) stands at a
/// path below which something is live, so the directory wins. This is the
/// directory entry `me` records for the path: its version dominates every
/// version of the path this node has seen (`file`'s is the latest), so the
/// file cannot come back unless someone edits it again. Nodes that settle
/// the same conflict concurrently make concurrent directory entries, which
/// [`decide`] merges like any other.
pub fn directory_wins(file: &FileEntry, me: ShortId) -> Result<FileEntry, CounterOverflow> {
    Ok(FileEntry {
        path: file.path.clone(),
        kind: EntryKind::Directory,
        size: 0,
        mtime_ns: file.mtime_ns,
        mode: 0o755,
        hash: None,
        symlink_target: None,
        deleted: false,
        version: file.version.bump(me)?,
        modified_by: me,
        sequence: 0,
    })
}

/// The conflict copy of `file` after it lost to a directory (or any
/// conflict): a new local entry of `me` at [`conflict_name`] of the loser,
/// over whatever this node recorded at that name (`prev`).
pub fn kept_copy(
    file: &FileEntry,
    prev: Option<&FileEntry>,
    me: ShortId,
) -> Result<FileEntry, CounterOverflow> {
    let mut copy = file.clone();
    copy.path = copy_name(file);
    copy.version = prev
        .map(|p| p.version.clone())
        .unwrap_or_default()
        .bump(me)?;
    copy.modified_by = me;
    copy.sequence = 0;
    Ok(copy)
}

/// Where [`kept_copy`] puts `file`.
pub fn copy_name(file: &FileEntry) -> String {
    conflict_name(&file.path, file.mtime_ns, file.modified_by)
}

/// `dir/name.ext` → `dir/name.sync-conflict-YYYYMMDD-HHMMSS-<short id>.ext`,
/// from the *loser's* mtime and author, so every node that keeps the same
/// loser picks the same name.
pub fn conflict_name(path: &str, mtime_ns: i64, by: ShortId) -> String {
    conflict_name_try(path, mtime_ns, by, 0)
}

/// The `n`th candidate conflict name (`n > 0` when the first is taken:
/// `….ext.n`). Always within NAME_MAX: the stem is shortened first, then
/// the extension, never the marker or the try number, so the result is
/// the same on every node and never fails for being too long.
pub fn conflict_name_try(path: &str, mtime_ns: i64, by: ShortId, n: usize) -> String {
    use fleetsync_mesh::model::{shorten_name, MAX_NAME_LEN};
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let marker = format!(".sync-conflict-{}-{by}", format_utc(mtime_ns));
    let tail = if n == 0 {
        String::new()
    } else {
        format!(".{n}")
    };
    let fixed = marker.len() + tail.len();
    // A short extension is kept whole; the stem gives way first.
    let ext = shorten_name(ext, MAX_NAME_LEN - fixed);
    let stem = shorten_name(stem, MAX_NAME_LEN - fixed - ext.len());
    format!("{dir}{stem}{marker}{ext}{tail}")
}

/// Whether a path is a conflict copy (the property test checks that
/// copies are made; nothing else needs to tell them apart).
#[cfg(test)]
fn is_conflict_copy(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .unwrap_or(path)
        .contains(".sync-conflict-")
}

/// YYYYMMDD-HHMMSS in UTC (civil-from-days, no time zone database needed).
fn format_utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsync_mesh::model::VersionVector;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn vv(p: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(p.iter().map(|(a, b)| (ShortId(*a), *b)))
    }

    fn entry(hash: u8, mtime: i64, by: u64, v: VersionVector) -> FileEntry {
        FileEntry {
            path: "a.txt".into(),
            kind: EntryKind::File,
            size: hash as u64,
            mtime_ns: mtime,
            mode: 0o644,
            hash: Some([hash; 32]),
            symlink_target: None,
            deleted: false,
            version: v,
            modified_by: ShortId(by),
            sequence: 0,
        }
    }

    fn rec(e: FileEntry) -> Record {
        Record {
            entry: e,
            local: None,
            local_changed: false,
            received_from: None,
            refs: None,
        }
    }

    #[test]
    fn causally_newer_wins_even_with_an_older_clock() {
        let local = rec(entry(1, 1_000, 1, vv(&[(1, 1)])));
        let remote = entry(2, 5, 2, vv(&[(1, 1), (2, 1)]));
        assert!(matches!(
            decide(Some(&local), &remote),
            Decision::Apply {
                conflict_copy: false,
                verbatim: true,
                ..
            }
        ));
        assert_eq!(
            decide(Some(&rec(remote.clone())), &local.entry),
            Decision::Keep
        );
    }

    #[test]
    fn conflict_newer_mtime_wins_loser_is_copied_vectors_merge() {
        let a = entry(1, 100, 1, vv(&[(1, 1)]));
        let b = entry(2, 200, 2, vv(&[(2, 1)]));
        match decide(Some(&rec(a.clone())), &b) {
            Decision::Apply {
                entry,
                conflict_copy,
                verbatim,
            } => {
                assert!(conflict_copy && !verbatim);
                assert_eq!(entry.hash, b.hash);
                assert_eq!(entry.version, vv(&[(1, 1), (2, 1)]));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(decide(Some(&rec(b)), &a), Decision::Keep);
    }

    #[test]
    fn edit_beats_delete_whatever_the_clock() {
        let edit = entry(1, 100, 1, vv(&[(1, 2)]));
        let mut del = entry(1, 999_999, 9, vv(&[(1, 1), (2, 1)]));
        del.deleted = true;
        assert_eq!(decide(Some(&rec(edit.clone())), &del), Decision::Keep);
        assert!(matches!(
            decide(Some(&rec(del)), &edit),
            Decision::Apply {
                conflict_copy: false,
                ..
            }
        ));
    }

    #[test]
    fn ties_break_by_node_id() {
        let a = entry(1, 100, 1, vv(&[(1, 1)]));
        let b = entry(2, 100, 2, vv(&[(2, 1)]));
        assert!(matches!(
            decide(Some(&rec(a.clone())), &b),
            Decision::Apply { .. }
        ));
        assert_eq!(decide(Some(&rec(b)), &a), Decision::Keep);
    }

    #[test]
    fn conflict_names() {
        // 2026-11-22 19:35:40 UTC
        let t = 1_795_376_140 * 1_000_000_000i64;
        let id = ShortId(0xdeadbeef01020304);
        assert_eq!(
            conflict_name("dir/report.final.pdf", t, id),
            "dir/report.final.sync-conflict-20261122-193540-deadbeef01.pdf"
        );
        assert_eq!(
            conflict_name("Makefile", t, id),
            "Makefile.sync-conflict-20261122-193540-deadbeef01"
        );
        assert_eq!(
            conflict_name(".bashrc", t, id),
            ".bashrc.sync-conflict-20261122-193540-deadbeef01"
        );
        assert!(is_conflict_copy(&conflict_name("a/b.txt", t, id)));
        let long = conflict_name(&format!("{}.bin", "x".repeat(250)), t, id);
        assert!(long.len() <= 255 && long.ends_with("-deadbeef01.bin"));
        assert_eq!(
            conflict_name_try("a.txt", t, id, 3),
            format!("{}.3", conflict_name("a.txt", t, id))
        );
    }

    #[test]
    fn long_names_conflict_names_stay_within_name_max_on_char_boundaries() {
        let t = 1_795_376_140 * 1_000_000_000i64;
        let id = ShortId(0xdeadbeef01020304);
        let names = [
            format!("{}.bin", "x".repeat(250)),
            format!("{}.bin", "é".repeat(125)),
            format!("d/{}", "ü".repeat(127)),
            format!("a.{}", "e".repeat(252)),
            format!("{}.{}", "ö".repeat(60), "ß".repeat(66)),
            "€".repeat(85),
        ];
        for name in &names {
            for n in [0, 1, 9] {
                let c = conflict_name_try(name, t, id, n);
                let file = c.rsplit('/').next().unwrap();
                assert!(file.len() <= 255, "{} bytes: {c}", file.len());
                assert!(is_conflict_copy(&c), "{c}");
                assert!(fleetsync_mesh::model::validate_rel_path(&c).is_ok(), "{c}");
                // Deterministic: every node names the same loser the same.
                assert_eq!(c, conflict_name_try(name, t, id, n));
                if n > 0 {
                    assert!(c.ends_with(&format!(".{n}")), "{c}");
                }
            }
        }
        // Different tries stay different after shortening.
        let a = conflict_name_try(&names[0], t, id, 1);
        assert_ne!(a, conflict_name_try(&names[0], t, id, 2));
        assert_ne!(a, conflict_name_try(&names[0], t, ShortId(1), 1));
        assert_eq!(format_utc(0), "19700101-000000");
    }

    #[test]
    fn a_directory_with_live_children_beats_a_file_and_keeps_it_as_a_copy() {
        let mut file = entry(7, 5_000_000_000, 2, vv(&[(1, 1), (2, 3)]));
        file.path = "d".into();
        assert!(blocks_children(&file));
        let dir = directory_wins(&file, ShortId(1)).unwrap();
        assert_eq!(dir.kind, EntryKind::Directory);
        assert!(!blocks_children(&dir));
        assert_eq!(dir.version.compare(&file.version), Causality::Dominates);
        // Every node that adopts the directory loses the file to it and
        // keeps it under the same name the settling node gave it.
        let copy = kept_copy(&file, None, ShortId(1)).unwrap();
        assert_eq!(
            copy.path,
            conflict_name("d", file.mtime_ns, file.modified_by)
        );
        assert_eq!(
            (copy.hash, copy.version.clone()),
            (file.hash, vv(&[(1, 1)]))
        );
        // Nodes that adopt the directory replace the file (the directory
        // is its causal successor); the copy reaches them as an entry.
        assert!(matches!(
            decide(Some(&rec(file.clone())), &dir),
            Decision::Apply { .. }
        ));
        assert_eq!(decide(Some(&rec(dir)), &file), Decision::Keep);
    }

    // ---- simulation: random file/directory histories on N nodes converge ----

    /// Paths the random histories touch: files and directories with
    /// children, nested ("d/s" is a directory only implicitly).
    const PATHS: [&str; 5] = ["a.txt", "d", "d/x", "d/y", "d/s/z"];

    #[derive(Clone, Debug)]
    enum Op {
        /// Write a file (parents become directories, like `mkdir -p`; a
        /// directory there is removed first, like `rm -r`).
        Edit {
            node: usize,
            path: usize,
            mtime: i64,
        },
        /// Make a directory (a file there is removed first).
        Mkdir {
            node: usize,
            path: usize,
            mtime: i64,
        },
        /// `rm -r`.
        Delete {
            node: usize,
            path: usize,
            mtime: i64,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn op(nodes: usize, paths: usize) -> impl Strategy<Value = Op> {
        let at = move || (0..nodes, 0..paths, 0i64..20);
        prop_oneof![
            at().prop_map(|(node, path, mtime)| Op::Edit { node, path, mtime }),
            at().prop_map(|(node, path, mtime)| Op::Mkdir { node, path, mtime }),
            at().prop_map(|(node, path, mtime)| Op::Delete { node, path, mtime }),
            (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Sync { from, to }),
            (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    type State = BTreeMap<String, FileEntry>;

    fn parent(path: &str) -> Option<&str> {
        path.rsplit_once('/').map(|(d, _)| d)
    }

    fn live(s: &State, path: &str) -> Option<EntryKind> {
        s.get(path).filter(|e| !e.deleted).map(|e| e.kind)
    }

    fn live_below(s: &State, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        s.iter()
            .filter(|(k, e)| k.starts_with(&prefix) && !e.deleted)
            .map(|(k, _)| k.clone())
            .collect()
    }

    struct Sim {
        nodes: Vec<State>,
        next_content: u8,
        /// Writes so far: keeps every write's mtime distinct (a conflict
        /// copy's name comes from its mtime and author).
        writes: i64,
        /// (node, content hash) pairs that lost a conflict on that node.
        lost: Vec<(usize, [u8; 32])>,
        /// Contents of files that lost to a directory: must survive.
        kept: Vec<[u8; 32]>,
    }

    fn me(n: usize) -> ShortId {
        ShortId((n as u64 + 1) << 56)
    }

    impl Sim {
        /// A local change at `path` on node `n` (what its scanner records).
        fn record(&mut self, n: usize, path: &str, kind: EntryKind, mtime: i64, deleted: bool) {
            let prev = self.nodes[n].get(path);
            if deleted && prev.is_none_or(|e| e.deleted) {
                return;
            }
            let version = prev
                .map(|e| e.version.clone())
                .unwrap_or_default()
                .bump(me(n))
                .unwrap();
            let hash = (kind == EntryKind::File && !deleted).then(|| {
                self.next_content = self.next_content.wrapping_add(1);
                [self.next_content; 32]
            });
            self.writes += 1;
            let e = FileEntry {
                path: path.to_string(),
                kind,
                size: u64::from(hash.is_some()),
                // Seconds apart: copies are named to the second.
                mtime_ns: (mtime * 10_000 + self.writes) * 1_000_000_000,
                mode: 0o644,
                hash,
                symlink_target: None,
                deleted,
                version,
                modified_by: me(n),
                sequence: 0,
            };
            self.nodes[n].insert(path.to_string(), e);
        }

        /// `rm -r path` on node `n`.
        fn remove(&mut self, n: usize, path: &str, mtime: i64) {
            for child in live_below(&self.nodes[n], path).iter().rev() {
                self.record(n, child, EntryKind::File, mtime, true);
            }
            self.record(n, path, EntryKind::File, mtime, true);
        }

        /// `mkdir -p` of `path`'s parents on node `n`.
        fn make_parents(&mut self, n: usize, path: &str, mtime: i64) {
            let Some(p) = parent(path) else { return };
            self.make_parents(n, p, mtime);
            match live(&self.nodes[n], p) {
                Some(EntryKind::Directory) => {}
                Some(_) => {
                    self.remove(n, p, mtime);
                    self.record(n, p, EntryKind::Directory, mtime, false);
                }
                None => self.record(n, p, EntryKind::Directory, mtime, false),
            }
        }

        fn write(&mut self, n: usize, path: &str, kind: EntryKind, mtime: i64) {
            self.make_parents(n, path, mtime);
            let here = live(&self.nodes[n], path);
            if here.is_some() && here != Some(kind) {
                // Replacing one kind by another: what was there goes first.
                for child in live_below(&self.nodes[n], path).iter().rev() {
                    self.record(n, child, EntryKind::File, mtime, true);
                }
            }
            if kind == EntryKind::Directory && here == Some(kind) {
                return;
            }
            self.record(n, path, kind, mtime, false);
        }

        /// Deliver every entry of `from` to `to` (what the distributor
        /// does), then let `to` settle its tree (what its receiver and
        /// scanner do).
        fn sync(&mut self, from: usize, to: usize) {
            if from == to {
                return;
            }
            let entries: Vec<FileEntry> = self.nodes[from].values().cloned().collect();
            for r in entries {
                let local = self.nodes[to].get(&r.path).cloned().map(rec);
                if let Decision::Apply {
                    entry,
                    conflict_copy,
                    ..
                } = decide(local.as_ref(), &r)
                {
                    if conflict_copy {
                        let l = local.unwrap().entry;
                        self.lost.push((to, l.hash.unwrap()));
                        self.copy(to, &l);
                    }
                    self.nodes[to].insert(r.path.clone(), entry);
                }
            }
            self.settle(to);
        }

        /// Keep `file` as its conflict copy on node `n` (a new local file);
        /// a name taken by other content gets `.1`, `.2`, … (as the placer).
        fn copy(&mut self, n: usize, file: &FileEntry) {
            let base = copy_name(file);
            for i in 0.. {
                let name = if i == 0 {
                    base.clone()
                } else {
                    format!("{base}.{i}")
                };
                let prev = self.nodes[n].get(&name);
                if prev.is_some_and(|e| !e.deleted && e.hash == file.hash) {
                    return;
                }
                if prev.is_none_or(|e| e.deleted) {
                    let mut c = kept_copy(file, prev, me(n)).unwrap();
                    c.path = name.clone();
                    self.nodes[n].insert(name, c);
                    return;
                }
            }
        }

        /// Make node `n`'s entries a tree: a file with something live below
        /// it loses to the directory (the rule under test); a live entry
        /// whose parent is gone brings the parent back (placing it creates
        /// the directory, which the scanner records).
        fn settle(&mut self, n: usize) {
            loop {
                let s = &self.nodes[n];
                let blocked = s
                    .values()
                    .find(|e| blocks_children(e) && !live_below(s, &e.path).is_empty())
                    .cloned();
                if let Some(file) = blocked {
                    if let Some(h) = file.hash {
                        self.kept.push(h);
                    }
                    self.copy(n, &file);
                    self.nodes[n].insert(file.path.clone(), directory_wins(&file, me(n)).unwrap());
                    continue;
                }
                let orphan = s.iter().find_map(|(k, e)| {
                    let p = parent(k).filter(|p| !e.deleted && live(s, p).is_none())?;
                    Some(p.to_string())
                });
                let Some(p) = orphan else { return };
                self.record(n, &p, EntryKind::Directory, 0, false);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]
        #[test]
        fn random_histories_converge(
            n in 2usize..5,
            ops in proptest::collection::vec(op(4, PATHS.len()), 1..60),
        ) {
            let mut sim = Sim {
                nodes: vec![State::new(); n],
                next_content: 0,
                writes: 0,
                lost: vec![],
                kept: vec![],
            };
            for o in ops {
                match o {
                    Op::Edit { node, path, mtime } => {
                        sim.write(node % n, PATHS[path], EntryKind::File, mtime)
                    }
                    Op::Mkdir { node, path, mtime } => {
                        sim.write(node % n, PATHS[path], EntryKind::Directory, mtime)
                    }
                    Op::Delete { node, path, mtime } => sim.remove(node % n, PATHS[path], mtime),
                    Op::Sync { from, to } => sim.sync(from % n, to % n),
                }
            }
            // Heal: every link carries both directions (each side
            // subscribes to the other), here a ring, long enough to settle.
            for _ in 0..(4 * n + 8) {
                for i in 0..n {
                    sim.sync(i, (i + 1) % n);
                    sim.sync((i + 1) % n, i);
                }
            }
            for i in 1..n {
                prop_assert_eq!(&sim.nodes[0], &sim.nodes[i], "node 0 and {} differ", i);
            }
            // The same tree everywhere: everything live sits in a live
            // directory (no child orphaned below a file or a tombstone).
            let s = &sim.nodes[0];
            for (k, e) in s.iter().filter(|(_, e)| !e.deleted) {
                if let Some(p) = parent(k) {
                    prop_assert_eq!(live(s, p), Some(EntryKind::Directory), "{} under {}", k, p);
                }
                prop_assert!(e.kind == EntryKind::Directory || live_below(s, k).is_empty());
            }
            // A file that lost to a directory survives as its copy.
            for h in &sim.kept {
                prop_assert!(s.values().any(|e| !e.deleted && e.hash == Some(*h)), "lost {:?}", h[0]);
            }
            // No content that lost a conflict vanished: it survives as a
            // conflict copy (or, by a later edit's choice, in history).
            for (_, h) in &sim.lost {
                let kept = sim.nodes[0].values().any(|e| e.hash == Some(*h));
                let copy_made = sim.nodes.iter().flat_map(|s| s.keys()).any(|k| is_conflict_copy(k));
                prop_assert!(kept || copy_made);
            }
        }

        #[test]
        fn decide_is_deterministic_and_antisymmetric(
            a in (0u8..4, 0i64..4, 1u64..4, proptest::collection::vec((1u64..4, 1u64..4), 1..4), any::<bool>(), any::<bool>()),
            b in (0u8..4, 0i64..4, 1u64..4, proptest::collection::vec((1u64..4, 1u64..4), 1..4), any::<bool>(), any::<bool>()),
        ) {
            let mk = |(h, m, by, v, d, dir): (u8, i64, u64, Vec<(u64, u64)>, bool, bool)| {
                let mut e = entry(h, m, by, vv(&v));
                e.deleted = d;
                if d || dir { e.hash = None; e.size = 0; }
                if dir { e.kind = EntryKind::Directory; }
                e
            };
            let (a, b) = (mk(a), mk(b));
            let ab = decide(Some(&rec(a.clone())), &b);
            let ba = decide(Some(&rec(b.clone())), &a);
            // Never both sides adopt each other for a true conflict.
            if a.version.compare(&b.version) == Causality::Concurrent && a != b {
                let both = matches!(ab, Decision::Apply { .. }) && matches!(ba, Decision::Apply { .. });
                prop_assert!(!both || a.same_content(&b));
            }
            // A live file that loses to anything else is kept as a copy.
            let concurrent = a.version.compare(&b.version) != Causality::DominatedBy;
            if let (Decision::Apply { conflict_copy, ref entry, .. }, true) = (&ab, concurrent) {
                let lost = !a.deleted && a.kind == EntryKind::File && !entry.same_content(&a);
                prop_assert!(!lost || *conflict_copy, "{:?} lost to {:?}", a, entry);
            }
            // The directory that wins over a file dominates it.
            if blocks_children(&a) {
                let d = directory_wins(&a, ShortId(9)).unwrap();
                prop_assert_eq!(decide(Some(&rec(a.clone())), &d).clone(), decide(Some(&rec(a.clone())), &d));
                prop_assert_eq!(decide(Some(&rec(d)), &a), Decision::Keep);
            }
            prop_assert_eq!(ab, decide(Some(&rec(a)), &b));
        }
    }
}
