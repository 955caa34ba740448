//! File vs directory (issue 10, case 5): a node replaces a directory by a
//! file while another adds and edits children in it (a partition). The
//! directory wins while it has live children and the file is kept as a
//! conflict copy; a file whose directory was emptied wins. Every node ends
//! with the same tree, no content is lost, nothing retries forever.

use std::{collections::BTreeSet, fs};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Content hashes of every file in a tree.
fn contents(t: &std::collections::BTreeMap<String, Item>) -> BTreeSet<String> {
    t.values()
        .filter_map(|i| match i {
            Item::File { hash, .. } => Some(hash.clone()),
            _ => None,
        })
        .collect()
}

fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every node caught up: nothing pending (no entry retried forever).
fn wait_nothing_pending(c: &Cluster) {
    for n in &c.nodes {
        wait_until(
            DEADLINE,
            &format!("{} to have nothing pending", n.name),
            || {
                n.folder_status("shared")
                    .is_some_and(|f| f["pending"].as_u64() == Some(0))
            },
        );
    }
}

#[test]
fn fsdir_file_vs_directory_with_live_children_converges_without_loss() {
    let mut c = Cluster::start(3, Topology::Full, folders);
    let a = 0;
    let b = 1;
    fs::create_dir_all(c.nodes[a].path("d/sub")).unwrap();
    fs::write(c.nodes[a].path("d/x"), "x v1").unwrap();
    fs::write(c.nodes[a].path("d/y"), "y v1").unwrap();
    fs::write(c.nodes[a].path("d/sub/w"), "w v1").unwrap();
    fs::create_dir(c.nodes[a].path("e")).unwrap();
    fs::write(c.nodes[a].path("e/gone"), "deleted with e").unwrap();
    let base = c.wait_converged("the directories everywhere");
    assert!(base.contains_key("d/sub/w"));
    // Recorded too, not only on disk: b's deletions below must cover them.
    wait_nothing_pending(&c);

    // Partition: b is down. On a's side d gets a new child and an edit.
    c.nodes[b].stop();
    fs::write(c.nodes[a].path("d/x"), "x edited on a").unwrap();
    fs::write(c.nodes[a].path("d/z"), "z made on a").unwrap();
    wait_until(DEADLINE, "c to get a's edits", || {
        fs::read_to_string(c.nodes[2].path("d/z")).is_ok()
            && fs::read_to_string(c.nodes[2].path("d/x")).ok().as_deref() == Some("x edited on a")
    });
    // b's user replaces both directories by files.
    fs::remove_dir_all(c.nodes[b].path("d")).unwrap();
    fs::write(c.nodes[b].path("d"), "file d made on b").unwrap();
    set_mtime(&c.nodes[b].path("d"), 1_800_000_000);
    fs::remove_dir_all(c.nodes[b].path("e")).unwrap();
    fs::write(c.nodes[b].path("e"), "file e made on b").unwrap();

    // Heal.
    c.nodes[b].start();
    c.wait_connected();
    let t = c.wait_converged("every node to hold the same tree after the partition");
    wait_nothing_pending(&c);
    let t2 = c.wait_converged("the same tree once nothing is pending");
    assert_eq!(t, t2, "the tree changed after it had converged");

    // d keeps its live children; b's file is kept as a conflict copy named
    // after it (its mtime and author), the same on every node.
    let b_short = &c.nodes[b].id_hex()[..10];
    let copy = format!("d.sync-conflict-20270115-080000-{b_short}");
    assert_eq!(t.get("d"), Some(&Item::Dir), "{t:?}");
    assert!(t.contains_key(&copy), "{copy} missing: {t:?}\n{}", logs(&c));
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".sync-conflict-")).collect();
    assert_eq!(copies, vec![&copy], "exactly one copy");
    for n in &c.nodes {
        assert_eq!(
            fs::read_to_string(n.path(&copy)).unwrap(),
            "file d made on b"
        );
        assert_eq!(fs::read_to_string(n.path("d/x")).unwrap(), "x edited on a");
        assert_eq!(fs::read_to_string(n.path("d/z")).unwrap(), "z made on a");
    }
    // b deleted what a did not touch again: gone everywhere.
    assert!(
        !t.contains_key("d/y") && !t.contains_key("d/sub/w"),
        "{t:?}"
    );
    // e's children were all deleted: the file wins.
    assert_eq!(
        fs::read_to_string(c.nodes[a].path("e")).unwrap(),
        "file e made on b"
    );
    // No content any user wrote and nobody deleted is lost.
    let have = contents(&t);
    for kept in [
        "x edited on a",
        "z made on a",
        "file d made on b",
        "file e made on b",
    ] {
        assert!(
            have.contains(&hash_of(kept.as_bytes())),
            "{kept:?} lost: {t:?}"
        );
    }
    // Nothing was refused as an escape (a symlink in the path), nothing
    // rejected.
    for n in &c.nodes {
        let log = n.log();
        assert!(
            !log.contains("leads through a symlink"),
            "{}: {}",
            n.name,
            logs(&c)
        );
        let rejected = n.folder_status("shared").map(|f| f["rejected"].as_u64());
        assert!(
            matches!(rejected, Some(Some(0) | None)),
            "{}: {rejected:?}",
            n.name
        );
    }
}

fn logs(c: &Cluster) -> String {
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    dump_logs(&nodes)
}
