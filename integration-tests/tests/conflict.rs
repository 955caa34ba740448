//! Conflicting edits made while nodes were apart (one stopped: a
//! partition), resolved the same way on every node.

use std::fs;

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

#[test]
fn concurrent_edits_converge_on_the_newer_and_keep_the_loser_as_a_conflict_copy() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    fs::write(c.nodes[0].path("report.txt"), "base").unwrap();
    fs::write(
        c.nodes[0].path("doomed.txt"),
        "will be deleted on a, edited on b",
    )
    .unwrap();
    c.wait_converged("the base versions");

    // Partition: b is down while both sides edit.
    c.nodes[1].stop();
    fs::write(c.nodes[0].path("report.txt"), "edit made on a").unwrap();
    set_mtime(&c.nodes[0].path("report.txt"), 1_800_000_000);
    fs::remove_file(c.nodes[0].path("doomed.txt")).unwrap();
    wait_until(DEADLINE, "a to index its edits", || {
        c.nodes[0]
            .folder_status("shared")
            .is_some_and(|f| f["seq"].as_u64() >= Some(4))
    });
    fs::write(c.nodes[1].path("report.txt"), "edit made on b, later").unwrap();
    set_mtime(&c.nodes[1].path("report.txt"), 1_800_000_100);
    fs::write(
        c.nodes[1].path("doomed.txt"),
        "b edited it: an edit beats a delete",
    )
    .unwrap();

    // Heal.
    c.nodes[1].start();
    c.wait_connected();
    let t = c.wait_converged("both nodes to agree after the partition");
    for n in &c.nodes {
        assert_eq!(
            fs::read_to_string(n.path("report.txt")).unwrap(),
            "edit made on b, later"
        );
        assert_eq!(
            fs::read_to_string(n.path("doomed.txt")).unwrap(),
            "b edited it: an edit beats a delete"
        );
    }
    // Exactly one conflict copy, named after the loser (a), holding a's edit.
    let a_short = &c.nodes[0].id_hex()[..10];
    let copies = conflict_copies(&c.nodes[0], "report");
    assert_eq!(copies, conflict_copies(&c.nodes[1], "report"));
    assert_eq!(
        copies.len(),
        1,
        "{copies:?}\n{}",
        dump_logs(&[&c.nodes[0], &c.nodes[1]])
    );
    let name = &copies[0];
    // report.sync-conflict-YYYYMMDD-HHMMSS-<short id>.txt, from the loser's mtime
    assert_eq!(
        name,
        &format!("report.sync-conflict-20270115-080000-{a_short}.txt")
    );
    assert_eq!(
        fs::read_to_string(c.nodes[1].path(name)).unwrap(),
        "edit made on a"
    );
    assert!(t.contains_key(name.as_str()));
}

#[test]
fn a_causally_newer_version_wins_even_with_an_older_clock() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("clock.txt"), "first, stamped in the future").unwrap();
    set_mtime(&a.path("clock.txt"), 4_000_000_000);
    wait_until(DEADLINE, "first version on b", || {
        b.path("clock.txt").exists()
    });
    c.wait_converged("first version");
    // b has seen a's version; its edit carries a clock far in the past.
    fs::write(
        b.path("clock.txt"),
        "second, on a node whose clock is behind",
    )
    .unwrap();
    set_mtime(&b.path("clock.txt"), 1_000_000_000);
    wait_until(DEADLINE, "b's newer version on a", || {
        fs::read_to_string(a.path("clock.txt")).ok().as_deref()
            == Some("second, on a node whose clock is behind")
    });
    c.wait_converged("after the edit");
    assert!(conflict_copies(a, "clock").is_empty());
}

#[test]
fn a_local_edit_racing_a_download_becomes_a_conflict_not_an_overwrite() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("race.bin"), "v1").unwrap();
    c.wait_converged("v1 everywhere");
    // A big new version starts downloading to b; meanwhile b's user edits.
    write_big(&a.path("race.bin"), 200 << 20, 7);
    wait_until(DEADLINE, "the download to start on b", || {
        b.folder_status("shared").is_some_and(|f| {
            f["transfers"].as_array().is_some_and(|t| !t.is_empty())
                || f["pending"].as_u64() > Some(0)
        })
    });
    fs::write(b.path("race.bin"), "edited on b during the download").unwrap();
    c.wait_converged("the race resolved identically on both");
    // Both versions still exist somewhere: nothing was silently lost.
    let texts: Vec<Vec<u8>> = fs::read_dir(a.path(""))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("race"))
        .map(|e| fs::read(e.path()).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t == b"edited on b during the download"),
        "b's edit was lost"
    );
    assert!(
        texts.iter().any(|t| t.len() == 200 << 20),
        "a's version was lost"
    );
}

/// Regression (found by the two-hour soak): a directory renamed away on
/// one node while another wrote a file into it left every node with the
/// same files but a pending delete of the directory for good (it could
/// never apply under the live child), so nothing was ever in sync. The
/// child revives the directory on the renaming node, like an edit beats
/// a delete, and the fleet settles.
#[test]
fn dir_renamed_away_while_a_peer_writes_into_it_converges_with_nothing_pending() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    fs::create_dir_all(c.nodes[0].path("d")).unwrap();
    fs::write(c.nodes[0].path("d/old.txt"), "moves with its directory").unwrap();
    c.wait_converged("the directory on both");

    c.nodes[1].stop();
    fs::rename(c.nodes[0].path("d"), c.nodes[0].path("d.moved")).unwrap();
    wait_until(DEADLINE, "a to index the rename", || {
        c.nodes[0]
            .folder_status("shared")
            .is_some_and(|f| f["files"] == 1 && f["dirs"] == 1)
    });
    fs::write(c.nodes[1].path("d/new.txt"), "written into d meanwhile").unwrap();
    c.nodes[1].start();

    for n in &c.nodes {
        wait_until(DEADLINE, &format!("{} to hold both files", n.name), || {
            fs::read(n.path("d/new.txt")).is_ok_and(|b| b == b"written into d meanwhile")
                && n.path("d.moved/old.txt").exists()
                && !n.path("d/old.txt").exists()
        });
    }
    wait_until(DEADLINE, "nothing pending on either node", || {
        c.nodes.iter().all(|n| n.in_sync("shared"))
    });
}
