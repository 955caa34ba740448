//! The mass-delete guard: a burst of deletes from one node that would
//! remove most of a folder is held on the others (status says so, with the
//! command to go on) while everything else keeps syncing; `fleetsync
//! folder resume` applies it; an ordinary delete passes unhindered.

use std::fs;

use fleetsync_integration_tests::*;
use serde_json::Value;

const FILES: usize = 200;

fn name(i: usize) -> String {
    format!("d{}/file-{i:03}.txt", i % 4)
}

/// A 3-node cluster whose folder holds [`FILES`] files on every node.
fn cluster_with_files() -> Cluster {
    cluster_with(3, FolderSpec::new("shared"), |i| {
        format!("content of file {i}\n")
    })
}

/// An `n`-node cluster whose folder holds [`FILES`] files on every node,
/// file `i` with `content(i)`, in four directories `d0`..`d3`.
fn cluster_with(n: usize, spec: FolderSpec, content: impl Fn(usize) -> String) -> Cluster {
    let c = Cluster::start(n, Topology::Full, |_| vec![spec.clone()]);
    let a = &c.nodes[0];
    for d in 0..4 {
        fs::create_dir_all(a.path(&format!("d{d}"))).unwrap();
    }
    for i in 0..FILES {
        fs::write(a.path(&name(i)), content(i)).unwrap();
    }
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("{FILES} files on {}", n.name), || {
            files_on_disk(n) == FILES && field(n, "files") == FILES as u64
        });
    }
    c
}

fn files_on_disk(n: &Node) -> usize {
    tree(&n.path(""))
        .values()
        .filter(|i| matches!(i, Item::File { .. }))
        .count()
}

fn field(n: &Node, key: &str) -> u64 {
    n.folder_status("shared")
        .and_then(|f: Value| f[key].as_u64())
        .unwrap_or(0)
}

/// Every pending row of the node is a held delete, and some are held.
fn holding_all_pending(n: &Node) -> bool {
    n.folder_status("shared").is_some_and(|f| {
        let held = f["deletes_held"].as_u64().unwrap_or(0);
        held > 0 && f["pending"].as_u64() == Some(held)
    })
}

#[test]
fn deleting_80_percent_on_one_node_is_held_on_the_others_until_resume() {
    let mut c = cluster_with_files();
    let deleted: Vec<usize> = (0..FILES).filter(|i| i % 5 != 0).collect();
    assert_eq!(deleted.len(), 160);
    for i in &deleted {
        fs::remove_file(c.nodes[0].path(&name(*i))).unwrap();
    }
    for n in &c.nodes[1..] {
        wait_until(DEADLINE, &format!("{} to hold the deletes", n.name), || {
            holding_all_pending(n)
        });
        // The burst may have begun with a batch that passed, never with
        // more than the fraction (0.5) of the folder.
        let left = files_on_disk(n);
        assert!(left >= FILES / 2, "{}: only {left} files left", n.name);
        eprintln!(
            "{}: held {} deletes, {left} of {FILES} files still there",
            n.name,
            field(n, "deletes_held")
        );
    }

    // The status line says what is held and how to go on.
    let b = &c.nodes[1];
    let (code, out, err) = b.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("holding"))
        .unwrap_or_else(|| panic!("no holding line in status:\n{out}"));
    let resume = format!(
        "fleetsync folder resume --config {} --folder shared",
        b.config.display()
    );
    assert!(line.contains("deletes from peers"), "{line}");
    assert!(line.contains(&resume), "{line}");
    assert!(line.contains("fleetsync restore"), "{line}");
    let metrics = get(b.admin, "/metrics").unwrap();
    assert!(
        metrics.contains("fleetsync_folder_deletes_held{folder=\"shared\"}"),
        "{metrics}"
    );

    // Everything else keeps syncing.
    fs::write(c.nodes[0].path("new.txt"), "made while held\n").unwrap();
    for n in &c.nodes[1..] {
        wait_until(DEADLINE, &format!("new.txt on {}", n.name), || {
            fs::read(n.path("new.txt")).is_ok_and(|b| b == b"made while held\n")
        });
        assert!(field(n, "deletes_held") > 0, "{}: still held", n.name);
    }

    // Still held after a restart (the rows are pending in the index; the
    // restarted receiver sees them again as one burst).
    let held_before = files_on_disk(&c.nodes[1]);
    c.nodes[1].stop();
    c.nodes[1].start();
    c.wait_connected();
    let b = &c.nodes[1];
    wait_until(DEADLINE, "b to hold the deletes after a restart", || {
        holding_all_pending(b)
    });
    assert_eq!(files_on_disk(b), held_before, "nothing deleted on restart");

    // `folder resume` applies them, on each node that holds them.
    for n in &c.nodes[1..] {
        let (code, out, err) = n.cli(&["folder", "resume", "--folder", "shared"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("held deletes"), "{out}");
    }
    let t = c.wait_converged("the deletes applied everywhere");
    let files = t
        .values()
        .filter(|i| matches!(i, Item::File { .. }))
        .count();
    assert_eq!(files, FILES - deleted.len() + 1);
    for n in &c.nodes[1..] {
        wait_until(DEADLINE, &format!("{} to hold nothing", n.name), || {
            n.folder_status("shared")
                .is_some_and(|f| f["deletes_held"] == 0 && f["pending"] == 0)
        });
    }
    let (_, out, _) = c.nodes[1].cli(&["status"]);
    assert!(!out.contains("holding"), "{out}");
}

#[test]
fn deleting_10_percent_passes_unhindered() {
    let c = cluster_with_files();
    for i in (0..FILES).filter(|i| i % 10 == 0) {
        fs::remove_file(c.nodes[0].path(&name(i))).unwrap();
    }
    let t = c.wait_converged("the deletes applied everywhere");
    let files = t
        .values()
        .filter(|i| matches!(i, Item::File { .. }))
        .count();
    assert_eq!(files, FILES - FILES / 10);
    for n in &c.nodes[1..] {
        assert_eq!(field(n, "deletes_held"), 0, "{}", n.name);
    }
}

#[test]
fn renaming_most_of_the_folder_is_not_a_mass_delete() {
    let c = cluster_with_files();
    let a = &c.nodes[0];
    for d in 0..3 {
        fs::rename(a.path(&format!("d{d}")), a.path(&format!("moved{d}"))).unwrap();
    }
    let t = c.wait_converged("the renames applied everywhere");
    let files = t
        .values()
        .filter(|i| matches!(i, Item::File { .. }))
        .count();
    assert_eq!(files, FILES);
    assert!(t
        .keys()
        .all(|p| !p.starts_with("d0") && !p.starts_with("d2")));
    for n in &c.nodes[1..] {
        assert_eq!(field(n, "deletes_held"), 0, "{}", n.name);
    }
}

/// Files on disk, or the guard holds something: whichever comes first.
fn converged_or_held(c: &Cluster, what: &str) {
    wait_until(DEADLINE, what, || {
        let trees: Vec<_> = c.nodes.iter().map(|n| tree(&n.path(""))).collect();
        let held = c.nodes.iter().any(|n| field(n, "deletes_held") > 0);
        held || trees.windows(2).all(|w| w[0] == w[1])
    });
    for n in &c.nodes {
        assert_eq!(field(n, "deletes_held"), 0, "{}: a move was held", n.name);
    }
}

/// Three of the four directories (150 of 200 files) moved to new names in
/// two steps, out of the folder and back in: the peer gets all the
/// deletes first and the creates only once it has them (as when a big
/// rename spans batches, old names first). Not held: the creates arrive
/// within the guard's grace, and the burst is a move.
#[test]
fn a_rename_whose_deletes_reach_a_peer_before_its_creates_is_not_held() {
    let c = cluster_with(2, FolderSpec::new("shared"), |i| {
        format!("content of file {i}\n")
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let parked = a.root.join("parked");
    fs::create_dir_all(&parked).unwrap();
    for d in 0..3 {
        fs::rename(a.path(&format!("d{d}")), parked.join(format!("d{d}"))).unwrap();
    }
    // b has judged the deletes: holding them (the old guard), or waiting
    // out the grace for their creates.
    wait_until(DEADLINE, "b to judge the 150 deletes", || {
        field(b, "deletes_waiting") >= 150 || field(b, "deletes_held") > 0
    });
    for d in 0..3 {
        fs::rename(parked.join(format!("d{d}")), a.path(&format!("moved{d}"))).unwrap();
    }
    converged_or_held(&c, "the move applied on b");
    let t = c.wait_converged("the move applied on b");
    let files: Vec<&String> = t
        .iter()
        .filter(|(_, i)| matches!(i, Item::File { .. }))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files.len(), FILES);
    assert_eq!(files.iter().filter(|p| p.starts_with("moved")).count(), 150);
    assert!(!t.keys().any(|p| p.starts_with("d0") || p.starts_with("d2")));
    wait_until(DEADLINE, "nothing pending on b", || {
        field(b, "pending") == 0
    });
}

/// A move whose creates reach the peer first (copies made, synced, then
/// the originals deleted): the deletes remove no content the folder does
/// not still have under another path, so they are not a mass delete.
/// (Then the folder holds the copies too, so the deletes are at most half
/// of it: a fraction of 0.3 makes them a burst over it.)
#[test]
fn deleting_files_whose_content_is_live_under_other_paths_is_not_held() {
    let spec = FolderSpec::new("shared").key("max_delete_fraction", "0.3");
    let c = cluster_with(2, spec, |i| format!("content of file {i}\n"));
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    for i in (0..FILES).filter(|i| i % 4 != 3) {
        let copy = a.path(&format!("copies/{}", name(i)));
        fs::create_dir_all(copy.parent().unwrap()).unwrap();
        fs::copy(a.path(&name(i)), copy).unwrap();
    }
    wait_until(DEADLINE, "the 150 copies on b", || {
        files_on_disk(b) == FILES + 150 && field(b, "files") == (FILES + 150) as u64
    });
    for d in 0..3 {
        fs::remove_dir_all(a.path(&format!("d{d}"))).unwrap();
    }
    converged_or_held(&c, "the deletes applied on b");
    assert_eq!(files_on_disk(b), FILES);
}

/// Every file comes in two copies (file 2k and 2k+1 share a content); 80%
/// of the files go, both copies of each content: no content survives
/// under another path, so the burst is still held.
#[test]
fn deleting_every_copy_of_the_contents_is_still_a_mass_delete() {
    let c = cluster_with(2, FolderSpec::new("shared"), |i| {
        format!("content shared by a pair {}\n", i / 2)
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    for i in (0..FILES).filter(|i| (i / 2) % 5 != 0) {
        fs::remove_file(a.path(&name(i))).unwrap();
    }
    wait_until(DEADLINE, "b to hold the deletes", || holding_all_pending(b));
    let left = files_on_disk(b);
    assert!(left >= FILES / 2, "only {left} files left on b");
    eprintln!(
        "b: held {} deletes, {left} of {FILES} files still there",
        field(b, "deletes_held")
    );
}
