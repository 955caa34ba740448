//! Disk space and permissions (issue 10, cases 3, 4 and 12): an announced
//! size is checked against free space before any fetch and against the
//! verified content after it; remote modes go through the folder's umask
//! without echoing; a full folder disk keeps the old file and recovers.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use fleetsync_integration_tests::{
    member::{file_entry, Member},
    *,
};
use serde_json::Value;

const FOLDER: &str = "shared";

fn folder_status(n: &Node) -> Value {
    n.folder_status(FOLDER).unwrap_or(Value::Null)
}

fn last_error(n: &Node) -> String {
    folder_status(n)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn counter(n: &Node, key: &str) -> u64 {
    folder_status(n)[key].as_u64().unwrap_or(0)
}

fn mode_of(p: &Path) -> Option<u32> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Wait for `rel` to hold `content` on `n`.
fn wait_content(n: &Node, rel: &str, content: &[u8]) {
    wait_until(DEADLINE, &format!("{rel} to arrive on {}", n.name), || {
        std::fs::read(n.path(rel)).is_ok_and(|b| b == content)
    });
}

/// The history rows `n` holds for `rel`.
fn history(n: &Node, rel: &str) -> Vec<Value> {
    let body = get(n.admin, &format!("/history?folder={FOLDER}&path={rel}"))
        .unwrap_or_else(|| panic!("history of {rel} on {}", n.name));
    serde_json::from_str::<Vec<Value>>(&body).unwrap()
}

#[test]
fn announced_10tb_file_is_refused_for_no_space_and_the_node_keeps_syncing() {
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new(FOLDER)]);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let member = Member::join(n0);
    let huge = file_entry("huge.bin", member.me, random_bytes::<32>(), 10 << 40);
    member.serve_batches(vec![vec![huge]]);

    wait_until(DEADLINE, "status to say no space for huge.bin", || {
        let e = last_error(n0);
        e.contains("huge.bin") && e.contains("no space on the filesystem of")
    });
    let e = last_error(n0);
    assert!(
        e.contains("needed") && e.contains("10995116277760 announced"),
        "{e}"
    );
    assert!(counter(n0, "pending") >= 1, "the entry stays pending");
    assert!(!n0.path("huge.bin").exists());
    assert!(
        du(&n0.data) < 64 << 20,
        "the data dir must not fill: {} bytes",
        du(&n0.data)
    );

    // The node stays up and keeps syncing honest files, both ways.
    std::fs::write(n1.path("honest.txt"), b"from n1").unwrap();
    wait_content(n0, "honest.txt", b"from n1");
    std::fs::write(n0.path("back.txt"), b"from n0").unwrap();
    wait_content(n1, "back.txt", b"from n0");
    // An honest big file is not cut by the announced-size cap.
    write_big(&n1.path("big.bin"), 24 << 20, 5);
    let want = hash_file(&n1.path("big.bin"));
    wait_until(DEADLINE, "big.bin to arrive on n0", || {
        hash_file(&n0.path("big.bin")) == want
    });
    assert!(n0.log().contains("no space on the filesystem of"));
    drop(member);
}

#[test]
fn announced_size_mismatch_is_rejected_counted_and_not_applied() {
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new(FOLDER)]);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    // An honest blob the fleet serves (n1 has it)...
    let content = pseudo_random(100 << 10, 7);
    std::fs::write(n1.path("real.bin"), &content).unwrap();
    wait_content(n0, "real.bin", &content);
    let rejected_before = counter(n0, "rejected");
    // ...announced by a member under another name with a wrong size.
    let member = Member::join(n0);
    let hash = *fleetsync_mesh::Hash::new(&content).as_bytes();
    let liar = file_entry("liar.bin", member.me, hash, content.len() as u64 - 1);
    member.serve_batches(vec![vec![liar]]);

    wait_until(DEADLINE, "the size mismatch to be rejected", || {
        counter(n0, "rejected") > rejected_before
    });
    let e = last_error(n0);
    assert!(e.contains("liar.bin") && e.contains("announced as"), "{e}");
    assert!(!n0.path("liar.bin").exists(), "not applied");
    assert!(n0.log().contains("rejected remote entry"));
    std::fs::write(n1.path("after.txt"), b"still syncing").unwrap();
    wait_content(n0, "after.txt", b"still syncing");
    drop(member);
}

#[test]
fn permission_bits_go_through_each_nodes_umask_and_converge_without_echo() {
    let c = Cluster::start(2, Topology::Full, |i| {
        let umask = if i == 0 { "022" } else { "077" };
        vec![FolderSpec::new(FOLDER).key("umask", &format!("\"{umask}\""))]
    });
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let set = |p: PathBuf, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
    std::fs::create_dir(n0.path("d")).unwrap();
    set(n0.path("d"), 0o755).unwrap();
    std::fs::write(n0.path("d/inner.txt"), b"inner").unwrap();
    std::fs::write(n0.path("ww.txt"), b"world-writable on n0").unwrap();
    set(n0.path("ww.txt"), 0o666).unwrap();
    std::fs::write(n0.path("run.sh"), b"#!/bin/sh\n").unwrap();
    set(n0.path("run.sh"), 0o4777).unwrap();

    // n1 (umask 077): nothing for group or others, the exec bit kept,
    // setuid never.
    wait_until(DEADLINE, "modes through n1's umask", || {
        mode_of(&n1.path("ww.txt")) == Some(0o600)
            && mode_of(&n1.path("run.sh")) == Some(0o700)
            && mode_of(&n1.path("d")) == Some(0o700)
            && mode_of(&n1.path("d/inner.txt")) == Some(0o600)
    });
    // A round trip each way after the applies: any echo (n1 taking its own
    // masked apply for a local change) would have happened by then.
    std::fs::write(n1.path("marker1"), b"1").unwrap();
    wait_content(n0, "marker1", b"1");
    std::fs::write(n0.path("marker2"), b"2").unwrap();
    wait_content(n1, "marker2", b"2");
    for n in [n0, n1] {
        for rel in ["d", "d/inner.txt", "ww.txt", "run.sh"] {
            let h = history(n, rel);
            assert_eq!(h.len(), 1, "{rel} on {}: one version only: {h:?}", n.name);
        }
    }
    assert_eq!(
        mode_of(&n0.path("ww.txt")),
        Some(0o666),
        "n0's own file untouched"
    );

    // A local chmod +x is a change: it reaches n0 as the exec bit.
    std::fs::write(n1.path("tool"), b"tool").unwrap();
    wait_content(n0, "tool", b"tool");
    assert_eq!(mode_of(&n0.path("tool")), Some(0o644));
    set(n1.path("tool"), 0o700).unwrap();
    wait_until(DEADLINE, "chmod +x to reach n0", || {
        mode_of(&n0.path("tool")) == Some(0o744)
    });
    std::fs::write(n0.path("marker3"), b"3").unwrap();
    wait_content(n1, "marker3", b"3");
    for n in [n0, n1] {
        assert_eq!(
            history(n, "tool").len(),
            2,
            "create and chmod on {}",
            n.name
        );
    }
    assert_eq!(mode_of(&n1.path("tool")), Some(0o700));
}

/// A tmpfs mounted for the test; unmounted when dropped, even on failure.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(dir.to_path_buf()),
            other => panic!(
                "this test needs root to mount a tmpfs at {}: {other:?}",
                dir.display()
            ),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the node may still hold it open when a test fails.
        let ok = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount the tmpfs at {}", self.0.display());
        }
    }
}

#[test]
fn disk_full_keeps_the_old_file_says_no_space_and_recovers_without_leftovers() {
    let mut c = Cluster::new(2, Topology::Full, |_| vec![FolderSpec::new(FOLDER)]);
    let _tmpfs = Tmpfs::mount(&c.nodes[1].folder(FOLDER), "8m");
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let old = pseudo_random(4 << 10, 1);
    std::fs::write(n0.path("doc.bin"), &old).unwrap();
    wait_content(n1, "doc.bin", &old);

    // Leave about 1 MiB free on n1's folder filesystem (outside the synced
    // tree, so only n1's disk fills).
    let filler = n1.path(".fleetsync/filler");
    write_big(&filler, 7 << 20, 2);
    let new = pseudo_random(3 << 20, 3);
    std::fs::write(n0.path("doc.bin"), &new).unwrap();
    wait_until(DEADLINE, "n1's status to say no space", || {
        let e = last_error(n1).to_lowercase();
        e.contains("doc.bin") && e.contains("no space")
    });
    assert_eq!(
        std::fs::read(n1.path("doc.bin")).unwrap(),
        old,
        "old file intact"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_content(n1, "doc.bin", &new);
    let tmp = n1.path(".fleetsync/tmp");
    wait_until(DEADLINE, ".fleetsync/tmp to hold nothing", || {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    });
    let tree = c.wait_converged("both nodes to converge");
    assert!(tree.contains_key("doc.bin"));
    for n in &mut c.nodes {
        n.stop();
    }
}
