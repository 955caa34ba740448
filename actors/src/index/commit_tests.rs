//! Unit tests of [`Index::commit`]: how observations and applied records
//! are resolved against the index inside the transaction.

use super::fixtures::*;
use super::{Commit, Index, IndexError, Item, Local, Observed, Released};

fn dir(ino: u64, mode: u32) -> Observed {
    Observed::Dir {
        stat: LocalStat {
            size: 4096,
            mtime_ns: ino as i64,
            ino,
            mode,
        },
    }
}

fn link(ino: u64, target: &str) -> Observed {
    Observed::Symlink {
        stat: LocalStat {
            size: target.len() as u64,
            mtime_ns: ino as i64,
            ino,
            mode: 0o120777,
        },
        target: target.into(),
    }
}

fn current(idx: &Index, path: &str) -> Record {
    idx.get("f", path).unwrap().unwrap()
}

#[test]
fn commit_assigns_sequences_and_keeps_one_seq_per_path() {
    let (_d, idx) = open();
    let m = put(&idx, vec![file("a", 1, &[(1, 1)]), file("b", 2, &[(1, 1)])]).meta;
    assert_eq!((m.seq, m.files, m.bytes), (2, 2, 20));
    put(&idx, vec![file("a", 3, &[(1, 2)])]);
    let all = idx.since("f", 0, 100).unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|r| (r.entry.path.as_str(), r.entry.sequence))
        .collect();
    assert_eq!(got, vec![("b", 2), ("a", 3)]);
    assert_eq!(idx.since("f", 2, 100).unwrap().len(), 1);
    assert_eq!(idx.paths_with_hash("f", &[3; 32]).unwrap(), vec!["a"]);
    assert!(idx.paths_with_hash("f", &[1; 32]).unwrap().is_empty());
    assert_eq!(idx.history("f", "a").unwrap().len(), 2);
}

#[test]
fn observations_bump_skip_or_adopt_inside_the_transaction() {
    let (_d, idx) = open();
    // New file: our first version.
    let c = commit(&idx, vec![observed("a", seen_file(10, 1, 1, None))]);
    assert_eq!(c.written, 1);
    let a = current(&idx, "a");
    assert_eq!(a.entry.version.get(ME.me), 1);
    // Same stat again: nothing to do.
    let c = commit(&idx, vec![observed("a", seen_file(10, 1, 1, None))]);
    assert_eq!(c.written, 0);
    // A peer's newer entry is pending and the disk now shows exactly it
    // (our receiver wrote it): adopt it, don't mint a local version.
    let mut remote = file("a", 2, &[(9 << 56, 1)]);
    remote.version = a.entry.version.bump(ShortId(9 << 56)).unwrap();
    ingest(&idx, &PEER, 1, std::slice::from_ref(&remote));
    commit(&idx, vec![observed("a", seen_file(10, 2, 2, None))]);
    let a2 = current(&idx, "a");
    assert_eq!(a2.entry.version, remote.version);
    assert_eq!(a2.received_from, Some(ShortId::from_node_id(&PEER)));
    assert_eq!(idx.pending_count("f").unwrap(), 0);
    // A file that vanished becomes a tombstone on top of what we had.
    commit(&idx, vec![observed("a", Observed::Gone)]);
    let gone = current(&idx, "a");
    assert!(gone.entry.deleted);
    assert_eq!(
        gone.entry.version.compare(&remote.version),
        Causality::Dominates
    );
}

#[test]
fn an_observation_unlike_any_pending_content_is_a_local_change_and_keeps_the_row() {
    let (_d, idx) = open();
    ingest(&idx, &PEER, 1, &[file("b", 2, &[(1, 1)])]);
    let c = commit(&idx, vec![observed("b", seen_file(10, 1, 3, None))]);
    assert_eq!(c.written, 1);
    let b = current(&idx, "b");
    assert_eq!((b.entry.hash, b.received_from), (Some([3; 32]), None));
    assert_eq!(b.entry.version.get(ME.me), 1);
    assert_eq!(idx.pending_for("f", "b").unwrap().len(), 1);
    assert_eq!(idx.history("f", "b").unwrap()[0].note, "local change");
}

#[test]
fn an_already_recorded_observation_releases_its_duplicate_link_without_a_hash() {
    let (_d, idx) = open();
    commit(&idx, vec![observed("a", seen_file(10, 1, 1, Some("l1")))]);
    let c = commit(&idx, vec![observed("a", seen_file(10, 1, 1, Some("l2")))]);
    assert_eq!(c.written, 0);
    assert_eq!(
        c.released,
        vec![Released {
            name: "l2".into(),
            hash: None
        }]
    );
    assert_eq!(current(&idx, "a").refs.as_deref(), Some("l1"));
}

#[test]
fn observing_gone_for_a_path_the_index_never_had_writes_nothing() {
    let (_d, idx) = open();
    let c = commit(&idx, vec![observed("x", Observed::Gone)]);
    assert_eq!((c.written, c.meta.seq, c.meta.tombstones), (0, 0, 0));
    assert_eq!(idx.get("f", "x").unwrap(), None);
    assert!(idx.history("f", "x").unwrap().is_empty());
}

#[test]
fn a_vanished_directory_is_a_tombstone_of_a_directory_and_only_once() {
    let (_d, idx) = open();
    commit(&idx, vec![observed("d", dir(1, 0o40755))]);
    let c = commit(&idx, vec![observed("d", Observed::Gone)]);
    assert_eq!((c.meta.dirs, c.meta.tombstones), (0, 1));
    let d = current(&idx, "d");
    assert!(d.entry.deleted);
    assert_eq!(d.entry.kind, EntryKind::Directory);
    assert_eq!(d.entry.version.get(ME.me), 2);
    assert_eq!(d.local, None);
    assert_eq!(idx.history("f", "d").unwrap()[1].note, "local delete");
    // Still gone: the tombstone already says so.
    assert_eq!(commit(&idx, vec![observed("d", Observed::Gone)]).written, 0);
}

#[test]
fn a_directory_is_already_recorded_whatever_its_mode() {
    let (_d, idx) = open();
    assert_eq!(
        commit(&idx, vec![observed("d", dir(1, 0o40755))]).written,
        1
    );
    // New inode and mtime, same permission bits.
    assert_eq!(
        commit(&idx, vec![observed("d", dir(2, 0o40755))]).written,
        0
    );
    // A directory's mode is never synced (record::synced_mode), so
    // neither setgid nor a chmod is a change.
    assert_eq!(
        commit(&idx, vec![observed("d", dir(2, 0o42755))]).written,
        0
    );
    assert_eq!(
        commit(&idx, vec![observed("d", dir(2, 0o40700))]).written,
        0
    );
}

#[test]
fn a_recreated_symlink_with_the_same_target_is_already_recorded() {
    let (_d, idx) = open();
    assert_eq!(commit(&idx, vec![observed("l", link(1, "t"))]).written, 1);
    assert_eq!(commit(&idx, vec![observed("l", link(2, "t"))]).written, 0);
    assert_eq!(commit(&idx, vec![observed("l", link(3, "u"))]).written, 1);
    let l = current(&idx, "l");
    assert_eq!(l.entry.symlink_target.as_deref(), Some("u"));
    assert_eq!(l.entry.kind, EntryKind::Symlink);
}

#[test]
fn a_receive_only_observation_records_local_changed_without_bumping_the_vector() {
    let (_d, idx) = open();
    put(&idx, vec![file("a", 1, &[(1, 1)])]);
    let receive_only = Local {
        receive_only: true,
        ..ME
    };
    let c = commit_as(
        &idx,
        vec![observed("a", seen_file(10, 2, 2, None))],
        receive_only,
    );
    assert_eq!(c.written, 1);
    let a = current(&idx, "a");
    assert!(a.local_changed);
    assert_eq!(a.entry.hash, Some([2; 32]));
    assert_eq!(
        a.entry.version,
        VersionVector::from_pairs([(ShortId(1), 1)])
    );
}

#[test]
fn an_applied_record_over_a_local_changed_record_is_written() {
    let (_d, idx) = open();
    let mut edited = rec(file("a", 1, &[(1, 2)]));
    edited.local_changed = true;
    put_records(&idx, vec![edited]);
    // Ours dominates by vector, but an unannounced local edit yields.
    let c = put(&idx, vec![file("a", 3, &[(1, 1)])]);
    assert_eq!((c.written, c.superseded.len()), (1, 0));
    let a = current(&idx, "a");
    assert_eq!(a.entry.hash, Some([3; 32]));
    assert!(!a.local_changed);
}

#[test]
fn applied_entries_never_overwrite_a_newer_index_state() {
    let (_d, idx) = open();
    put(&idx, vec![file("a", 1, &[(1, 3)])]);
    let c = put(&idx, vec![file("a", 2, &[(1, 2)])]);
    assert_eq!(c.superseded.len(), 1);
    assert_eq!(current(&idx, "a").entry.hash, Some([1; 32]));
}

#[test]
fn an_applied_record_already_recorded_releases_only_a_different_link() {
    let (_d, idx) = open();
    let mut r = rec(file("a", 1, &[(1, 1)]));
    r.local = Some(stat(10, 1));
    r.refs = Some("l1".into());
    put_records(&idx, vec![r.clone()]);
    let c = put_records(&idx, vec![r.clone()]);
    assert_eq!((c.written, c.released.len()), (0, 0));
    r.refs = Some("l2".into());
    let c = put_records(&idx, vec![r]);
    assert_eq!(c.written, 0);
    assert_eq!(
        c.released,
        vec![Released {
            name: "l2".into(),
            hash: None
        }]
    );
    assert_eq!(current(&idx, "a").refs.as_deref(), Some("l1"));
}

#[test]
fn resolved_rows_are_removed_but_a_superseded_record_keeps_its_rows() {
    let (_d, idx) = open();
    put(&idx, vec![file("c", 1, &[(1, 3)])]);
    let concurrent = file("c", 2, &[(2, 1)]);
    ingest(
        &idx,
        &PEER,
        1,
        &[
            file("a", 1, &[(2, 1)]),
            file("b", 1, &[(2, 1)]),
            concurrent.clone(),
        ],
    );
    let c = Commit {
        items: vec![super::Item::Applied {
            record: rec(concurrent),
            note: "x".into(),
            resolves: vec![("c".into(), PEER)],
            from: PEER,
        }],
        resolved: vec![("a".into(), PEER)],
    };
    let c = idx.commit("f", c, ME).unwrap();
    assert_eq!((c.written, c.superseded.len()), (0, 1));
    let left: Vec<_> = idx
        .pending("f", 10)
        .unwrap()
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(left, vec!["b", "c"]);
}

#[test]
fn commit_on_an_unknown_folder_is_an_error() {
    let (_d, idx) = open();
    let err = idx.commit("nope", Commit::default(), ME).unwrap_err();
    assert!(matches!(err, IndexError::FolderNotInitialised { folder } if folder == "nope"));
    assert_eq!(idx.folder_meta("nope").unwrap(), None);
}

#[test]
fn a_replaced_writer_commits_nothing() {
    let (_d, idx) = open();
    let c = Commit {
        items: vec![Item::Applied {
            record: rec(file("a", 1, &[(1, 1)])),
            note: "late".into(),
            resolves: vec![],
            from: PEER,
        }],
        resolved: vec![],
    };
    let r = idx.commit_unless("f", c, ME, || true);
    assert!(matches!(r, Err(IndexError::Fenced)), "{r:?}");
    assert!(idx.get("f", "a").unwrap().is_none(), "nothing written");
}

/// Issue 10, case 13 (seen in the kill -9 chaos test): a peer's delete
/// arrives while the receiver is still fetching the create it replaced
/// as the peer's pending row. Committing the create must not resolve the
/// newer delete with it: that row stays for the next round (it was lost,
/// and the deleted file stayed on the receivers for good).
#[test]
fn kill9_an_applied_create_keeps_the_newer_pending_delete_that_replaced_its_row() {
    let (_d, idx) = open();
    let created = file("x", 1, &[(2, 1)]);
    ingest(&idx, &PEER, 1, std::slice::from_ref(&created));
    let mut deleted = file("x", 1, &[(2, 2)]);
    deleted.deleted = true;
    ingest(&idx, &PEER, 2, &[deleted]);
    let c = Commit {
        items: vec![Item::Applied {
            record: rec(created),
            note: "applied".into(),
            resolves: vec![("x".into(), PEER)],
            from: PEER,
        }],
        resolved: vec![],
    };
    assert_eq!(idx.commit("f", c, ME).unwrap().written, 1);
    let left = idx.pending_for("f", "x").unwrap();
    assert_eq!(
        left.len(),
        1,
        "the newer row was resolved with the older one"
    );
    assert!(left[0].entry.deleted);
    // The row the record answers is still resolved as before.
    let c = Commit {
        items: vec![Item::Applied {
            record: rec(left[0].entry.clone()),
            note: "deleted".into(),
            resolves: vec![("x".into(), PEER)],
            from: PEER,
        }],
        resolved: vec![],
    };
    idx.commit("f", c, ME).unwrap();
    assert!(idx.pending_for("f", "x").unwrap().is_empty());
}

/// Regression (issue 10, counter overflow): our counter stored at
/// `u64::MAX` (accepted before validation capped counters) made the next
/// local edit panic (debug) or wrap to 0 and be lost (release). Now that
/// edit is refused (logged), its refs link released, and the rest of the
/// commit goes on.
#[test]
fn counter_overflow_a_local_edit_on_a_counter_at_its_ceiling_is_refused_not_wrapped() {
    let (_d, idx) = open();
    put(&idx, vec![file("a", 1, &[(ME.me.0, u64::MAX)])]);
    let c = commit(
        &idx,
        vec![
            observed("a", seen_file(10, 5, 2, Some("link-a"))),
            observed("b", seen_file(10, 6, 3, None)),
        ],
    );
    assert_eq!(c.written, 1, "b is still recorded");
    assert_eq!(current(&idx, "a").entry.version.get(ME.me), u64::MAX);
    assert_eq!(current(&idx, "a").entry.hash, Some([1; 32]));
    assert!(
        c.released.iter().any(|r| r.name == "link-a"),
        "{:?}",
        c.released
    );
}

/// What `versions.local` keeps: the record a local observation replaced
/// with other content, a delete or another kind — never one that only
/// changed its stat, a file that was never on this disk, or a change our
/// receiver made (adopted).
#[test]
fn a_local_delete_or_new_content_reports_the_record_it_replaced() {
    let (_d, idx) = open();
    commit(&idx, vec![observed("a", seen_file(10, 1, 1, Some("l1")))]);
    commit(&idx, vec![observed("b", seen_file(10, 2, 2, Some("l2")))]);
    commit(&idx, vec![observed("c", seen_file(10, 3, 3, Some("l3")))]);
    commit(&idx, vec![observed("d", seen_file(10, 4, 4, Some("l4")))]);
    let c = commit(
        &idx,
        vec![
            observed("a", Observed::Gone),
            observed("b", seen_file(10, 5, 5, Some("l5"))),
            // Same content, another inode (touched, or copied back).
            observed("c", seen_file(10, 6, 3, Some("l6"))),
            observed("d", dir(4, 0o40755)),
        ],
    );
    assert_eq!(c.written, 4);
    let got: Vec<_> = c
        .replaced_locally
        .iter()
        .map(|r| (r.entry.path.as_str(), r.refs.as_deref(), r.entry.hash))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", Some("l1"), Some([1; 32])),
            ("b", Some("l2"), Some([2; 32])),
            ("d", Some("l4"), Some([4; 32])),
        ]
    );
    // A peer's content our receiver wrote is adopted: nothing local.
    let mut remote = file("b", 8, &[(9 << 56, 1)]);
    remote.version = current(&idx, "b")
        .entry
        .version
        .bump(ShortId(9 << 56))
        .unwrap();
    ingest(&idx, &PEER, 1, std::slice::from_ref(&remote));
    let c = commit(&idx, vec![observed("b", seen_file(10, 9, 8, Some("l9")))]);
    assert_eq!((c.written, c.replaced_locally.len()), (1, 0));
    // A record never on this disk (applied, not yet placed) had nothing here.
    put(&idx, vec![file("e", 1, &[(1, 1)])]);
    let c = commit(&idx, vec![observed("e", seen_file(10, 10, 6, None))]);
    assert_eq!((c.written, c.replaced_locally.len()), (1, 0));
}

/// Regression: the kill -9 chaos resurrection (seed
/// 17877190349297766957; reproduced 1 of 3 runs when 3 ran at once, 0 of
/// 5 alone). The receiver placed a peer's create (pending row P1) and was
/// killed before its `Applied` commit; the peer's newer delete (or edit)
/// replaced P1 as the peer's pending row (ingest keeps one row per path
/// and peer), before the kill or just after the restart. The start-up
/// rescan finds the placed file with no record; its content matches no
/// pending row, so the index mints a new *local* version, concurrent with
/// the delete, and an edit beats a delete: the file the writer deleted
/// comes back on every node, authored by the receiver (a newer edit gives
/// conflict copies instead). Now ingest keeps the replaced live row
/// (`replaced` table) and the rescan adopts P1; the delete stays pending.
#[test]
fn kill9_a_placed_create_whose_row_a_delete_replaced_is_not_minted_as_a_local_edit() {
    let (_d, idx) = open();
    let created = file("x", 5, &[(2, 1)]);
    ingest(&idx, &PEER, 1, std::slice::from_ref(&created));
    let mut deleted = file("x", 5, &[(2, 2)]);
    deleted.deleted = true;
    ingest(&idx, &PEER, 2, std::slice::from_ref(&deleted));
    // Restart: the rescan observes the placed create's content.
    commit(&idx, vec![observed("x", seen_file(10, 1, 5, None))]);
    let x = current(&idx, "x");
    assert_eq!(
        x.entry.version.compare(&deleted.version),
        Causality::DominatedBy,
        "the placed create was minted as a local edit that beats the peer's delete: {x:?}"
    );
    assert_eq!(x.entry.version, created.version);
    assert_eq!(x.received_from, Some(ShortId::from_node_id(&PEER)));
    let left = idx.pending_for("f", "x").unwrap();
    assert_eq!(
        left.len(),
        1,
        "the newer delete must stay for the next round"
    );
    assert!(left[0].entry.deleted);
}

/// The replaced entry goes with its row: once the delete is applied, a
/// file with the old content is a local change again (nothing to adopt).
#[test]
fn a_replaced_entry_is_forgotten_with_its_pending_row() {
    let (_d, idx) = open();
    let created = file("y", 6, &[(2, 1)]);
    ingest(&idx, &PEER, 1, std::slice::from_ref(&created));
    let mut deleted = file("y", 6, &[(2, 2)]);
    deleted.deleted = true;
    ingest(&idx, &PEER, 2, std::slice::from_ref(&deleted));
    let c = Commit {
        items: vec![Item::Applied {
            record: rec(deleted.clone()),
            note: "deleted".into(),
            resolves: vec![("y".into(), PEER)],
            from: PEER,
        }],
        resolved: vec![],
    };
    idx.commit("f", c, ME).unwrap();
    assert!(idx.pending_for("f", "y").unwrap().is_empty());
    commit(&idx, vec![observed("y", seen_file(10, 2, 6, None))]);
    let y = current(&idx, "y");
    assert_eq!(y.received_from, None);
    assert_eq!(
        y.entry.version.compare(&deleted.version),
        Causality::Dominates
    );
}
