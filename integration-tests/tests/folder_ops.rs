//! `fleetsync folder pause | resume | rescan` on a running node.

use std::fs;

use fleetsync_integration_tests::{wait_until, Cluster, FolderSpec, Node, Topology, DEADLINE};

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

fn has(n: &Node, rel: &str, data: &[u8]) -> bool {
    fs::read(n.path(rel)).is_ok_and(|d| d == data)
}

fn folder_status(n: &Node) -> serde_json::Value {
    n.status().expect("status")["folders"][0].clone()
}

#[test]
fn a_paused_folder_applies_and_indexes_nothing_until_resumed_even_across_a_restart() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    let (code, out, err) = c.nodes[1].cli(&["folder", "pause", "--folder", "shared"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("paused"), "{out}");
    let (_, out, _) = c.nodes[1].cli(&["folder", "pause", "--folder", "shared"]);
    assert!(out.contains("already paused"), "{out}");

    // From the peer: received, pending, not applied.
    fs::write(c.nodes[0].path("in.txt"), b"from a").unwrap();
    wait_until(DEADLINE, "the change pending on the paused node", || {
        folder_status(&c.nodes[1])["pending"].as_u64() >= Some(1)
    });
    assert!(!c.nodes[1].path("in.txt").exists(), "applied while paused");
    // Local: seen, not indexed (so not announced).
    fs::write(c.nodes[1].path("out.txt"), b"from b").unwrap();
    wait_until(DEADLINE, "the local change waiting, unindexed", || {
        let f = folder_status(&c.nodes[1]);
        f["paused"] == true && f["in_sync"] == false
    });
    assert_eq!(
        folder_status(&c.nodes[1])["files"],
        0,
        "indexed while paused"
    );
    let (code, out, _) = c.nodes[1].cli(&["status"]);
    assert_eq!(code, 0, "paused is not unhealthy");
    assert!(
        out.contains("PAUSED:") && out.contains("folder resume"),
        "{out}"
    );

    // A restart keeps it paused.
    c.nodes[1].stop();
    c.nodes[1].start();
    c.wait_connected();
    assert_eq!(folder_status(&c.nodes[1])["paused"], true);
    assert!(!c.nodes[1].path("in.txt").exists());

    let (code, out, err) = c.nodes[1].cli(&["folder", "resume", "--folder", "shared"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resumed"), "{out}");
    wait_until(DEADLINE, "the peer's file applied", || {
        has(&c.nodes[1], "in.txt", b"from a")
    });
    wait_until(DEADLINE, "the local file synced to the peer", || {
        has(&c.nodes[0], "out.txt", b"from b")
    });
    assert_eq!(folder_status(&c.nodes[1])["paused"], false);
}

#[test]
fn rescan_finds_a_change_no_notification_reported() {
    // Polling so slow that only a walk finds the file in time.
    let mut c = Cluster::new(1, Topology::Full, |_| {
        vec![FolderSpec::new("shared")
            .key("watch", "\"poll\"")
            .key("poll_interval", "\"1h\"")]
    });
    c.nodes[0].start();
    let n = &c.nodes[0];
    wait_until(DEADLINE, "the first scan", || {
        n.status()
            .is_some_and(|s| s["folders"][0]["in_sync"] == true)
    });
    fs::write(n.path("quiet.txt"), b"no event for this").unwrap();
    let (code, out, err) = n.cli(&["folder", "rescan", "--folder", "shared"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the file indexed after the rescan", || {
        folder_status(n)["files"] == 1
    });
    let (code, _, err) = n.cli(&["folder", "rescan", "--folder", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no folder"), "{err}");
}
