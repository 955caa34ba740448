//! Big transfers: kill -9 in the middle, and files of several GiB that
//! must stream (never be held in memory).

use std::fs;

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

fn transfer_progress(n: &Node) -> Option<(u64, u64)> {
    let f = n.folder_status("shared")?;
    let t = f["transfers"].as_array()?.first()?.clone();
    Some((t["bytes_done"].as_u64()?, t["bytes_total"].as_u64()?))
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn kill_9_mid_transfer_leaves_the_old_file_and_the_transfer_completes_after_restart() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    fs::write(c.nodes[0].path("model.bin"), b"old weights").unwrap();
    wait_until(DEADLINE, "the old version on b", || {
        c.nodes[1].path("model.bin").exists()
    });
    let size: u64 = 768 << 20;
    write_big(&c.nodes[0].path("model.bin"), size, 42);
    let want = hash_file(&c.nodes[0].path("model.bin")).unwrap();
    let mut seen = (0, 0);
    wait_until(
        DEADLINE,
        "b to be in the middle of the download",
        || match transfer_progress(&c.nodes[1]) {
            Some((done, total)) if done > total / 4 && done < total => {
                seen = (done, total);
                true
            }
            _ => false,
        },
    );
    c.nodes[1].kill9();
    // Old or new, never partial: here the old one, as the download was cut.
    assert_eq!(
        fs::read(c.nodes[1].path("model.bin")).unwrap(),
        b"old weights",
        "after kill -9 at {seen:?} the file is neither old nor new"
    );
    c.nodes[1].start();
    c.wait_connected();
    wait_until(DEADLINE, "the new version on b after restart", || {
        fs::metadata(c.nodes[1].path("model.bin"))
            .map(|m| m.len())
            .ok()
            == Some(size)
            && hash_file(&c.nodes[1].path("model.bin")).as_deref() == Some(want.as_str())
    });
    // Nothing of the interrupted attempt lingers in the folder.
    let b = &c.nodes[1];
    let parts = fs::read_dir(b.path(".fleetsync/tmp")).unwrap().count();
    assert_eq!(parts, 0, "stale temp files after the restart");
    let after = b.folder_status("shared").unwrap()["bytes_received"]
        .as_u64()
        .unwrap();
    eprintln!(
        "killed at {} of {} bytes; fetched {} more after restart",
        seen.0, seen.1, after
    );
    // The download resumed where it was cut (iroh-blobs keeps verified
    // partial content), it did not start over.
    assert!(
        after < size,
        "fetched {after} bytes after restart: the transfer restarted from zero"
    );
}

#[test]
fn a_file_of_several_gib_streams_with_bounded_memory() {
    let c = Cluster::start(2, Topology::Full, folders);
    let size: u64 = 3 << 30; // 3 GiB
    write_big(&c.nodes[0].path("dataset.bin"), size, 7);
    let want = hash_file(&c.nodes[0].path("dataset.bin")).unwrap();
    let b = &c.nodes[1];
    wait_until(std::time::Duration::from_secs(240), "3 GiB on b", || {
        fs::metadata(b.path("dataset.bin")).map(|m| m.len()).ok() == Some(size)
    });
    assert_eq!(hash_file(&b.path("dataset.bin")).unwrap(), want);
    let (ra, rb) = (
        peak_rss(c.nodes[0].pid().unwrap()),
        peak_rss(b.pid().unwrap()),
    );
    eprintln!(
        "peak RSS: sender {} MiB, receiver {} MiB",
        ra >> 20,
        rb >> 20
    );
    // Streaming: memory stays a small fraction of the file.
    assert!(
        ra < 400 << 20 && rb < 400 << 20,
        "peak RSS {ra} / {rb} bytes for a {size}-byte file"
    );
}
