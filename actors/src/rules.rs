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
//! A node only ever moves to a state with a larger version vector (or, for
//! equal vectors, a larger entry under [`beats`]), so each node changes
//! finitely often; two neighbours that have seen each other's final state
//! are identical. Wall-clock time only breaks ties between concurrent
//! versions: a causally newer version always wins, whatever its mtime.

use std::cmp::Ordering;

use fleetsync_mesh::model::{Causality, EntryKind, FileEntry, ShortId};

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

    // ---- simulation: random edit histories on N nodes converge ----

    #[derive(Clone, Debug)]
    enum Op {
        Edit {
            node: usize,
            path: usize,
            mtime: i64,
        },
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
        prop_oneof![
            (0..nodes, 0..paths, 0i64..20).prop_map(|(node, path, mtime)| Op::Edit {
                node,
                path,
                mtime
            }),
            (0..nodes, 0..paths, 0i64..20).prop_map(|(node, path, mtime)| Op::Delete {
                node,
                path,
                mtime
            }),
            (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    type State = BTreeMap<String, FileEntry>;

    struct Sim {
        nodes: Vec<State>,
        next_content: u8,
        /// (node, content hash) pairs that lost a conflict on that node.
        lost: Vec<(usize, [u8; 32])>,
    }

    impl Sim {
        fn local_write(
            &mut self,
            n: usize,
            path: String,
            mtime: i64,
            deleted: bool,
            hash: Option<[u8; 32]>,
        ) {
            let me = ShortId((n as u64 + 1) << 56);
            let prev = self.nodes[n]
                .get(&path)
                .map(|e| e.version.clone())
                .unwrap_or_default();
            if deleted && self.nodes[n].get(&path).is_none_or(|e| e.deleted) {
                return;
            }
            let e = FileEntry {
                path: path.clone(),
                kind: EntryKind::File,
                size: 1,
                mtime_ns: mtime,
                mode: 0o644,
                hash,
                symlink_target: None,
                deleted,
                version: prev.bump(me),
                modified_by: me,
                sequence: 0,
            };
            self.nodes[n].insert(path, e);
        }

        fn edit(&mut self, n: usize, path: String, mtime: i64) {
            self.next_content = self.next_content.wrapping_add(1);
            let h = [self.next_content; 32];
            self.local_write(n, path, mtime, false, Some(h));
        }

        /// Deliver every entry of `from` to `to` (what the distributor does).
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
                        let name = conflict_name(&l.path, l.mtime_ns, l.modified_by);
                        // The copy is a brand-new local file on `to`.
                        let me = ShortId((to as u64 + 1) << 56);
                        let prev = self.nodes[to]
                            .get(&name)
                            .map(|e| e.version.clone())
                            .unwrap_or_default();
                        let mut c = l.clone();
                        c.path = name.clone();
                        c.version = prev.bump(me);
                        c.modified_by = me;
                        let keep = self.nodes[to]
                            .get(&name)
                            .is_none_or(|e| e.deleted || e.hash != c.hash);
                        if keep {
                            self.nodes[to].insert(name, c);
                        }
                    }
                    self.nodes[to].insert(r.path.clone(), entry);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]
        #[test]
        fn random_histories_converge(
            n in 2usize..5,
            ops in proptest::collection::vec(op(4, 3), 1..60),
        ) {
            let mut sim = Sim { nodes: vec![State::new(); n], next_content: 0, lost: vec![] };
            for o in ops {
                match o {
                    Op::Edit { node, path, mtime } => sim.edit(node % n, format!("p{path}.txt"), mtime),
                    Op::Delete { node, path, mtime } => {
                        sim.local_write(node % n, format!("p{path}.txt"), mtime, true, None)
                    }
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
            a in (0u8..4, 0i64..4, 1u64..4, proptest::collection::vec((1u64..4, 1u64..4), 1..4), any::<bool>()),
            b in (0u8..4, 0i64..4, 1u64..4, proptest::collection::vec((1u64..4, 1u64..4), 1..4), any::<bool>()),
        ) {
            let mk = |(h, m, by, v, d): (u8, i64, u64, Vec<(u64, u64)>, bool)| {
                let mut e = entry(h, m, by, vv(&v));
                e.deleted = d;
                if d { e.hash = None; e.size = 0; }
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
            prop_assert_eq!(ab, decide(Some(&rec(a)), &b));
        }
    }
}
