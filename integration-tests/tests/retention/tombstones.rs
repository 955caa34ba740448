//! Tombstone expiry with a short `tombstone_ttl`: deletions are forgotten
//! once every peer seen within the TTL has read them, and a node that was
//! away for longer is told to rescan instead of bringing deleted files
//! back; what it made while away still reaches the fleet.

use std::{fs, time::Duration};

use fleetsync_integration_tests::*;

/// Generous: expiry waits for the TTL (2 s) and a sweep (every 0.5 s).
const DEADLINE: Duration = Duration::from_secs(30);

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared").key("tombstone_ttl", "\"2s\"")]
}

fn field(n: &Node, key: &str) -> Option<u64> {
    n.folder_status("shared").and_then(|f| f[key].as_u64())
}

const DOOMED: [&str; 3] = ["doomed-1.txt", "doomed-2.txt", "dir/doomed-3.txt"];

#[test]
fn a_node_away_longer_than_the_ttl_brings_no_deleted_file_back_and_its_new_file_arrives() {
    let mut c = Cluster::start(3, Topology::Full, folders);
    fs::create_dir_all(c.nodes[0].path("dir")).unwrap();
    fs::write(c.nodes[0].path("keep.txt"), pseudo_random(3000, 1)).unwrap();
    for (i, p) in DOOMED.iter().enumerate() {
        fs::write(c.nodes[0].path(p), pseudo_random(2000, 10 + i as u64)).unwrap();
    }
    let t = c.wait_converged("the first tree on all three nodes");
    assert!(t.contains_key("dir/doomed-3.txt"));
    wait_until(DEADLINE, "all three in sync", || {
        c.nodes.iter().all(|n| n.in_sync("shared"))
    });

    // Node 2 goes away; the others delete while it is gone.
    c.nodes[2].stop();
    for p in DOOMED {
        fs::remove_file(c.nodes[0].path(p)).unwrap();
    }
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    wait_until(DEADLINE, "node 1 applies the deletions", || {
        DOOMED.iter().all(|p| !b.path(p).exists())
    });
    // Both forget them: older than the TTL, read by every peer seen
    // within it (node 2, unseen for longer, no longer counts).
    for n in [a, b] {
        wait_until(
            DEADLINE,
            &format!("{} forgets the deletions", n.name),
            || field(n, "tombstones") == Some(0) && field(n, "tombstone_horizon") > Some(0),
        );
    }

    // While away, node 2's user made a file (and nothing else changed).
    fs::write(
        c.nodes[2].path("made-while-away.txt"),
        pseudo_random(1500, 99),
    )
    .unwrap();
    c.nodes[2].start();
    c.wait_connected();

    let t = c.wait_converged("one tree again, with node 2's new file everywhere");
    // Converged could be "all three without the new file" for a moment
    // only if it were lost: it must be there.
    wait_until(DEADLINE, "node 2's new file on nodes 0 and 1", || {
        [&c.nodes[0], &c.nodes[1]]
            .iter()
            .all(|n| n.path("made-while-away.txt").exists())
    });
    wait_until(DEADLINE, "all three in sync after the return", || {
        c.nodes.iter().all(|n| n.in_sync("shared"))
    });
    let t_end = c.wait_converged("still one tree");
    for p in DOOMED {
        assert!(!t_end.contains_key(p), "{p} came back: {:?}", t_end.keys());
        assert!(!t.contains_key(p), "{p} came back: {:?}", t.keys());
    }
    assert!(t_end.contains_key("keep.txt"));
    assert_eq!(
        fs::read(c.nodes[0].path("made-while-away.txt")).unwrap(),
        pseudo_random(1500, 99)
    );
    // The way it happened: node 2 was told to rescan, and took the files
    // away itself.
    let log = c.nodes[2].log();
    assert!(
        log.contains("reading its index again from 0"),
        "node 2 was never told it was too old:\n{}",
        dump_logs(&[&c.nodes[2]])
    );
    assert!(
        log.contains("took away files the fleet deleted"),
        "{}",
        dump_logs(&[&c.nodes[2]])
    );
    // What it took away is kept as a version there: undoable.
    let (code, out, err) = c.nodes[2].cli(&["versions", "--json", "--folder", "shared"]);
    assert_eq!(code, 0, "fleetsync versions failed: {err}");
    let kept: serde_json::Value = serde_json::from_str(&out).unwrap();
    for p in DOOMED {
        assert!(
            kept.as_array().unwrap().iter().any(|v| v["path"] == *p),
            "{p} taken away but not kept as a version: {out}"
        );
    }
}
