//! Issue 10, cases 6 (unbounded growth, index part) and 7 (forged
//! authorship): a member that floods a folder with entries is capped by
//! `max_pending` / `max_files` (the rest deferred and counted, honest files
//! still sync), and a member that claims an honest node wrote its change
//! is named in the history as the node it came through.

use fleetsync_integration_tests::{
    get,
    member::{dir_entry, file_entry, Member},
    random_bytes, tree, wait_until, Cluster, FolderSpec, Node, Topology, DEADLINE,
};
use fleetsync_mesh::model::{FileEntry, ShortId};
use serde_json::Value;

fn folder_u64(n: &Node, key: &str) -> u64 {
    n.folder_status("shared")
        .and_then(|f| f[key].as_u64())
        .unwrap_or(0)
}

/// `count` entries made by `make(i)`, numbered 1.. as the member's index
/// sequence, in batches of `per_batch`.
fn batches(count: u64, per_batch: usize, make: impl Fn(u64) -> FileEntry) -> Vec<Vec<FileEntry>> {
    let all: Vec<FileEntry> = (1..=count)
        .map(|i| FileEntry {
            sequence: i,
            ..make(i)
        })
        .collect();
    all.chunks(per_batch).map(<[FileEntry]>::to_vec).collect()
}

fn metric(n: &Node, name: &str) -> f64 {
    let body = get(n.admin, "/metrics").unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with(name) && l.contains("folder=\"shared\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

/// Write `rel` on `from` and wait until `to` has the same bytes.
fn sync_honest_file(from: &Node, to: &Node, rel: &str, body: &[u8]) {
    std::fs::write(from.path(rel), body).unwrap();
    wait_until(DEADLINE, &format!("{} to sync {rel}", to.name), || {
        std::fs::read(to.path(rel)).ok().as_deref() == Some(body)
    });
}

/// Case 6: a member announcing more files than `max_pending` (content it
/// cannot serve, so every row stays pending) gets at most that many rows;
/// the rest are deferred and counted, and honest files still sync.
#[test]
fn unbounded_growth_pending_rows_stop_at_max_pending() {
    let cap = 10;
    let c = Cluster::start(2, Topology::Full, |_| {
        vec![FolderSpec::new("shared").key("max_pending", &cap.to_string())]
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let member = Member::join(a);
    let me = member.me;
    member.serve_batches(batches(60, 20, |i| {
        file_entry(&format!("flood/{i:03}"), me, random_bytes::<32>(), 1000)
    }));
    wait_until(DEADLINE, "the flood to be deferred", || {
        folder_u64(a, "deferred") > 0 && folder_u64(a, "pending") >= cap
    });
    assert_eq!(folder_u64(a, "pending"), cap, "at most max_pending rows");
    // /metrics serves a snapshot up to a second old.
    wait_until(DEADLINE, "deferred entries in /metrics", || {
        metric(a, "fleetsync_folder_deferred_total") > 0.0
    });
    sync_honest_file(b, a, "honest.txt", b"honest work\n");
    sync_honest_file(a, b, "back.txt", b"and back\n");
    assert_eq!(folder_u64(a, "pending"), cap, "still capped");
    assert!(a.status().is_some(), "the node is up");
}

/// Case 6: a member announcing more empty directories (no fetch needed,
/// an inode each) than `max_files` leaves the folder holding at most
/// `max_files` paths, status says the folder is full and counts the
/// deferred entries; changes to files the folder holds still sync.
#[test]
fn unbounded_growth_entries_stop_at_max_files() {
    let cap = 20;
    let c = Cluster::start(2, Topology::Full, |_| {
        vec![FolderSpec::new("shared").key("max_files", &cap.to_string())]
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    sync_honest_file(b, a, "honest.txt", b"v1\n");
    let member = Member::join(a);
    let me = member.me;
    member.serve_batches(batches(60, 20, |i| dir_entry(&format!("d{i:03}"), me)));
    wait_until(DEADLINE, "the folder to be full", || {
        a.folder_status("shared")
            .is_some_and(|f| f["full"] == Value::Bool(true))
    });
    wait_until(DEADLINE, "the admitted directories to be applied", || {
        folder_u64(a, "pending") == 0
    });
    let f = a.folder_status("shared").unwrap();
    let held = ["files", "dirs", "symlinks"]
        .iter()
        .map(|k| f[*k].as_u64().unwrap())
        .sum::<u64>();
    assert!(held <= cap, "the index holds {held} paths: {f}");
    let on_disk = tree(&a.path("")).len() as u64;
    assert!(on_disk <= cap, "{on_disk} paths on disk");
    assert!(f["deferred"].as_u64().unwrap() > 0, "{f}");
    let err = f["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("folder full") && err.contains("max_files"),
        "{f}"
    );
    wait_until(DEADLINE, "the full folder in /metrics", || {
        metric(a, "fleetsync_folder_full") == 1.0
    });
    sync_honest_file(b, a, "honest.txt", b"v2\n");
    assert!(a.status().is_some(), "the node is up");
}

/// Case 7: a member announcing a change as made by an honest node (its
/// short id in `modified_by` and the version) is named in the history as
/// the node the change came through, next to the forged claim.
#[test]
fn forged_authorship_history_names_the_proven_sender() {
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let victim = ShortId::from_node_id(&b.id);
    let member = Member::join(a);
    let proven = member.ep.id();
    let mut forged = dir_entry("forged", victim);
    forged.sequence = 1;
    member.serve_batches(vec![vec![forged]]);
    // The directory is made before the commit that records its history:
    // wait for the history row itself (regression: under load the row was
    // read between the two).
    let mut row = Value::Null;
    wait_until(DEADLINE, "the forged directory in the history", || {
        let (code, out, err) = a.cli(&["history", "--folder", "shared", "forged", "--json"]);
        assert_eq!(code, 0, "{err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        row = rows
            .as_array()
            .and_then(|r| r.last())
            .cloned()
            .unwrap_or_default();
        !row.is_null()
    });
    assert!(a.path("forged").is_dir());
    let member_short = ShortId::from_node_id(proven.as_bytes()).to_string();
    assert_eq!(row["modified_by"], victim.to_string(), "{row}");
    assert_eq!(row["via"], member_short, "{row}");
    assert_eq!(
        row["received_from"],
        hex::encode(proven.as_bytes()),
        "{row}"
    );
    let (_, text, _) = a.cli(&["history", "--folder", "shared", "forged"]);
    assert!(
        text.contains(&format!("by {victim}  via {member_short}")),
        "{text}"
    );
    // A local change names this node.
    std::fs::write(a.path("local.txt"), b"mine\n").unwrap();
    let me = ShortId::from_node_id(&a.id).to_string();
    wait_until(DEADLINE, "the local change in the history", || {
        let (_, t, _) = a.cli(&["history", "--folder", "shared", "local.txt"]);
        t.contains(&format!("by {me}  via {me}"))
    });
}
