//! Core sync behaviour between real nodes on loopback.

use std::{
    fs,
    os::unix::fs::{symlink, MetadataExt, PermissionsExt},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

fn bytes_received(n: &Node) -> u64 {
    n.folder_status("shared")
        .map(|f| f["bytes_received"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

fn seq(n: &Node) -> u64 {
    n.folder_status("shared")
        .map(|f| f["seq"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

#[test]
fn create_modify_delete_dirs_empty_files_modes_mtimes_and_symlinks() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    fs::create_dir_all(a.path("docs/deep/er")).unwrap();
    fs::write(a.path("docs/deep/er/note.txt"), "hello").unwrap();
    fs::create_dir_all(a.path("empty/dir")).unwrap();
    fs::write(a.path("empty.bin"), b"").unwrap();
    fs::write(a.path("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(a.path("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    fs::File::options()
        .write(true)
        .open(a.path("run.sh"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    symlink("docs/deep", a.path("link-to-docs")).unwrap();
    symlink("/etc/passwd", a.path("abs-link")).unwrap();
    let t = c.wait_converged("the new tree on both nodes");
    assert_eq!(t["empty/dir"], Item::Dir);
    assert!(matches!(&t["empty.bin"], Item::File { .. }));
    assert_eq!(fs::read(b.path("empty.bin")).unwrap().len(), 0);
    assert_eq!(t["link-to-docs"], Item::Link("docs/deep".into()));
    assert_eq!(t["abs-link"], Item::Link("/etc/passwd".into()));
    let mb = fs::metadata(b.path("run.sh")).unwrap();
    assert_eq!(mb.permissions().mode() & 0o777, 0o755, "exec bit lost");
    assert_eq!(mb.modified().unwrap(), when, "mtime not preserved");
    // Links were created as links, not followed: nothing of /etc/passwd came along.
    assert!(fs::symlink_metadata(b.path("abs-link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Modify on the other side: sync is bidirectional.
    fs::write(b.path("docs/deep/er/note.txt"), "hello, edited on b").unwrap();
    wait_until(DEADLINE, "b's edit on a", || {
        fs::read_to_string(a.path("docs/deep/er/note.txt"))
            .ok()
            .as_deref()
            == Some("hello, edited on b")
    });

    // Delete a file and a directory tree.
    fs::remove_file(a.path("empty.bin")).unwrap();
    fs::remove_dir_all(a.path("empty")).unwrap();
    fs::remove_file(a.path("abs-link")).unwrap();
    let t = c.wait_converged("deletions on both nodes");
    assert!(
        !t.contains_key("empty.bin") && !t.contains_key("empty") && !t.contains_key("abs-link")
    );
    assert!(!b.path("empty").exists());

    // Replace a file's content many times quickly: the last one wins everywhere.
    for i in 0..5 {
        fs::write(a.path("docs/deep/er/note.txt"), format!("version {i}")).unwrap();
    }
    wait_until(DEADLINE, "the last version on b", || {
        fs::read_to_string(b.path("docs/deep/er/note.txt"))
            .ok()
            .as_deref()
            == Some("version 4")
    });
    c.wait_converged("final state");
}

#[test]
fn rename_of_a_directory_reuses_local_content() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::create_dir_all(a.path("photos/2026")).unwrap();
    for i in 0..40 {
        fs::write(
            a.path(&format!("photos/2026/img-{i:03}.raw")),
            pseudo_random(64 << 10, i),
        )
        .unwrap();
    }
    fs::write(a.path("single.bin"), pseudo_random(1 << 20, 99)).unwrap();
    c.wait_converged("the photos on b");
    wait_until(DEADLINE, "b in sync", || b.in_sync("shared"));
    let before = bytes_received(b);
    assert!(before >= 40 * (64 << 10), "b fetched only {before} bytes");

    fs::create_dir_all(a.path("archive")).unwrap();
    fs::rename(a.path("photos"), a.path("archive/photos-2026")).unwrap();
    fs::rename(a.path("single.bin"), a.path("archive/single-renamed.bin")).unwrap();
    let t = c.wait_converged("the renamed tree on b");
    assert!(t.contains_key("archive/photos-2026/2026/img-039.raw"));
    assert!(t.contains_key("archive/single-renamed.bin"));
    assert!(!t.contains_key("photos") && !t.contains_key("single.bin"));
    wait_until(DEADLINE, "b in sync", || b.in_sync("shared"));
    assert_eq!(
        bytes_received(b),
        before,
        "content was fetched again after a rename"
    );
}

#[test]
fn three_nodes_in_a_chain_converge_through_the_middle() {
    let c = Cluster::start(3, Topology::Chain, folders);
    let (a, m, z) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    assert_eq!(a.peers.len(), 1);
    assert_eq!(z.peers.len(), 1);
    // Both ends write at once.
    fs::write(a.path("from-a.txt"), "made on a").unwrap();
    fs::write(z.path("from-z.txt"), "made on z").unwrap();
    fs::create_dir_all(m.path("mid/dir")).unwrap();
    fs::write(m.path("mid/dir/from-m.txt"), "made in the middle").unwrap();
    let t = c.wait_converged("all three files on all three nodes");
    for f in ["from-a.txt", "from-z.txt", "mid/dir/from-m.txt"] {
        assert!(t.contains_key(f), "{f} missing");
    }
    assert_eq!(
        fs::read_to_string(z.path("from-a.txt")).unwrap(),
        "made on a"
    );
    // The ends never talked to each other directly.
    assert_eq!(a.connected_peers(), 1);
    assert_eq!(z.connected_peers(), 1);
}

#[test]
fn a_file_being_written_is_not_sent_until_stable_and_never_seen_partial() {
    let c = Cluster::start(2, Topology::Full, |_| {
        vec![FolderSpec::new("shared").settle("1s")]
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let chunks: Vec<Vec<u8>> = (0..10).map(|i| pseudo_random(100_000, i)).collect();
    let full: Vec<u8> = chunks.concat();
    let target = b.path("growing.bin");
    let stop = Arc::new(AtomicBool::new(false));
    // How often the reader on b has read the complete file; the test waits for
    // it rather than assuming the reader thread got scheduled in time.
    let seen = Arc::new(AtomicU32::new(0));
    // A reader on b that would notice any partial file.
    let reader = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let full = full.clone();
        let target = target.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(data) = fs::read(&target) {
                    assert!(data == full, "b saw a partial file of {} bytes", data.len());
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    {
        use std::io::Write;
        let mut f = fs::File::create(a.path("growing.bin")).unwrap();
        for ch in &chunks {
            f.write_all(ch).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100)); // a slow writer, pausing < settle
            assert!(!target.exists(), "sent before the writer finished");
        }
    }
    wait_until(DEADLINE, "the finished file on b", || {
        fs::read(&target).ok().as_deref() == Some(&full[..])
    });
    // Regression (CI, 2026-11-22): the test stopped the reader as soon as the
    // main thread saw the file, sometimes before the reader had looked once.
    // A reader that panicked (it saw a partial file) has finished: join it
    // at once so its message is the failure, not a timeout.
    wait_until(
        DEADLINE,
        "the reader on b to have read the whole file",
        || seen.load(Ordering::Relaxed) > 0 || reader.is_finished(),
    );
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader on b saw a partial file");
    assert!(seen.load(Ordering::Relaxed) > 0);
}

#[test]
fn no_echo_and_a_restart_resends_and_refetches_nothing() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    for i in 0..50 {
        fs::write(c.nodes[0].path(&format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    c.wait_converged("50 files on b");
    wait_until(DEADLINE, "both in sync", || {
        c.nodes[0].in_sync("shared") && c.nodes[1].in_sync("shared")
    });
    let (seq_a, seq_b) = (seq(&c.nodes[0]), seq(&c.nodes[1]));
    // Applying on b must not have produced new local versions that come back.
    assert_eq!(seq_a, 50, "a's index grew beyond its own 50 changes: echo");
    assert!(seq_b >= 50);

    c.nodes[1].stop();
    c.nodes[1].start();
    c.wait_connected();
    wait_until(DEADLINE, "b in sync after restart", || {
        c.nodes[1].in_sync("shared") && c.nodes[0].in_sync("shared")
    });
    assert_eq!(
        seq(&c.nodes[0]),
        seq_a,
        "a's index changed after b restarted"
    );
    assert_eq!(seq(&c.nodes[1]), seq_b, "b re-indexed after restart");
    let fb = c.nodes[1].folder_status("shared").unwrap();
    assert_eq!(
        fb["files_received"], 0,
        "b fetched files again after restart"
    );
    assert_eq!(fb["bytes_received"], 0);
}

#[test]
fn send_only_never_applies_and_receive_only_never_announces() {
    let c = Cluster::start(3, Topology::Full, |i| {
        vec![FolderSpec::new("shared").mode(["send-only", "receive-only", "send-receive"][i])]
    });
    let (src, mirror, peer) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    fs::write(src.path("published.txt"), "from the source").unwrap();
    wait_until(DEADLINE, "published.txt on the mirror", || {
        mirror.path("published.txt").exists()
    });
    wait_until(DEADLINE, "published.txt on the peer", || {
        peer.path("published.txt").exists()
    });

    // A local edit on the receive-only mirror goes nowhere…
    fs::write(mirror.path("local-only.txt"), "mine").unwrap();
    // …and a change from a send-receive peer is not applied on the send-only source.
    fs::write(peer.path("from-peer.txt"), "peer").unwrap();
    wait_until(DEADLINE, "from-peer.txt on the mirror", || {
        mirror.path("from-peer.txt").exists()
    });
    wait_until(DEADLINE, "the mirror to index its local file", || {
        mirror
            .folder_status("shared")
            .is_some_and(|f| f["files"].as_u64() == Some(3))
    });
    // Positive control: the source still sends, after all of the above.
    fs::write(src.path("later.txt"), "later").unwrap();
    wait_until(DEADLINE, "later.txt on the peer", || {
        peer.path("later.txt").exists()
    });
    wait_until(DEADLINE, "later.txt on the mirror", || {
        mirror.path("later.txt").exists()
    });
    assert!(
        !peer.path("local-only.txt").exists(),
        "receive-only folder announced a local change"
    );
    assert!(!src.path("local-only.txt").exists());
    assert!(
        !src.path("from-peer.txt").exists(),
        "send-only folder applied a remote change"
    );

    // The fleet's next version overwrites the mirror's local edit.
    fs::write(mirror.path("published.txt"), "tampered on the mirror").unwrap();
    wait_until(DEADLINE, "the mirror to index its edit", || {
        get(mirror.admin, "/history?folder=shared&path=published.txt")
            .is_some_and(|h| h.contains("local change"))
    });
    fs::write(src.path("published.txt"), "v2 from the source").unwrap();
    wait_until(DEADLINE, "v2 on the mirror", || {
        fs::read_to_string(mirror.path("published.txt"))
            .ok()
            .as_deref()
            == Some("v2 from the source")
    });
}

#[test]
fn ignored_paths_are_neither_announced_nor_touched() {
    let c = Cluster::new(2, Topology::Full, folders);
    let mut c = c;
    fs::write(
        c.nodes[0].path(".fleetsyncignore"),
        "*.log\nbuild/\n*.tmp\n",
    )
    .unwrap();
    fs::write(c.nodes[1].path(".fleetsyncignore"), "*.log\nbuild/\n").unwrap();
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("debug.log"), "noise").unwrap();
    fs::create_dir_all(a.path("build/obj")).unwrap();
    fs::write(a.path("build/obj/x.o"), "obj").unwrap();
    fs::write(a.path("keep.txt"), "keep").unwrap();
    // b does not ignore *.tmp, a does: b's x.tmp must not be written on a.
    fs::write(b.path("x.tmp"), "scratch").unwrap();
    fs::write(b.path("from-b.txt"), "b").unwrap();
    wait_until(DEADLINE, "keep.txt on b", || b.path("keep.txt").exists());
    wait_until(DEADLINE, "from-b.txt on a", || {
        a.path("from-b.txt").exists()
    });
    assert!(!b.path("debug.log").exists());
    assert!(!b.path("build").exists());
    assert!(!a.path("x.tmp").exists(), "a wrote a path it ignores");
    // The ignore file itself is local policy, not synced.
    assert_eq!(
        fs::read_to_string(b.path(".fleetsyncignore")).unwrap(),
        "*.log\nbuild/\n"
    );
    assert!(c.nodes[0].log().contains("indexed changes"));
}

#[test]
fn identical_inode_numbers_do_not_confuse_change_detection() {
    // Rewriting a file with the same size within the same second must
    // still be noticed (mtime is compared in nanoseconds, with the inode).
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("same-size.txt"), "AAAA").unwrap();
    wait_until(DEADLINE, "first version", || {
        fs::read_to_string(b.path("same-size.txt")).ok().as_deref() == Some("AAAA")
    });
    let ino = fs::metadata(a.path("same-size.txt")).unwrap().ino();
    fs::write(a.path("same-size.txt"), "BBBB").unwrap();
    assert_eq!(fs::metadata(a.path("same-size.txt")).unwrap().ino(), ino);
    wait_until(DEADLINE, "second version", || {
        fs::read_to_string(b.path("same-size.txt")).ok().as_deref() == Some("BBBB")
    });
}
