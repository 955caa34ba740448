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

/// Content bytes `from` has served to `to` (its status, per peer).
fn served(from: &Node, to: &Node) -> u64 {
    let short = &to.id_hex()[..10];
    from.status()
        .and_then(|s| {
            s["peers"]
                .as_array()?
                .iter()
                .find(|p| p["short_id"] == short)?["bytes_sent"]
                .as_u64()
        })
        .unwrap_or(0)
}

/// Issue 13 (swarm): a big file two members have is fetched from both at
/// once, in pieces, not from the one that announced it alone.
#[test]
fn a_big_file_is_fetched_in_pieces_from_every_member_that_has_it() {
    let c = Cluster::start(3, Topology::Full, folders);
    let (a, b, late) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // The third node holds back until a and b both have the file.
    let (code, out, err) = late.cli(&["folder", "pause", "--folder", "shared"]);
    assert_eq!(code, 0, "{out}{err}");
    let size: u64 = 24 << 20;
    write_big(&a.path("big.bin"), size, 7);
    let want = hash_file(&a.path("big.bin")).unwrap();
    wait_until(DEADLINE, "the file on b", || {
        hash_file(&b.path("big.bin")).is_some_and(|h| h == want)
    });
    wait_until(DEADLINE, "the file pending on the paused node", || {
        late.folder_status("shared")
            .and_then(|f| f["pending"].as_u64())
            .is_some_and(|n| n >= 1)
    });
    let (before_a, before_b) = (served(a, late), served(b, late));
    let (code, out, err) = late.cli(&["folder", "resume", "--folder", "shared"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(DEADLINE, "the file on the third node", || {
        hash_file(&late.path("big.bin")).is_some_and(|h| h == want)
    });
    let mut from = (0, 0);
    wait_until(
        DEADLINE,
        "both providers' counts of what they served",
        || {
            from = (served(a, late) - before_a, served(b, late) - before_b);
            from.0 + from.1 >= size
        },
    );
    assert!(
        from.0 > 0 && from.1 > 0,
        "served to the third node: a {} bytes, b {} bytes: one provider gave it all",
        from.0,
        from.1
    );
}
