//! Garbage collection and bounded memory: a forced sweep (`fleetsync
//! sweep`) never takes content a transfer needs, removes what no entry
//! references, stale temp files and start-up orphans; the in-memory maps
//! go back to their baseline after many create/sync/delete cycles.

use std::{fs, time::Duration};

use fleetsync_integration_tests::*;
use serde_json::Value;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// `fleetsync sweep --json` on `n`; the report (panics if it failed).
fn sweep(n: &Node) -> Value {
    let (code, out, err) = n.cli(&["sweep", "--json"]);
    assert_eq!(code, 0, "fleetsync sweep on {} failed: {err}", n.name);
    serde_json::from_str(&out).expect("sweep --json prints JSON")
}

fn transfer_progress(n: &Node) -> Option<(u64, u64)> {
    let f = n.folder_status("shared")?;
    let t = f["transfers"].as_array()?.first()?.clone();
    Some((t["bytes_done"].as_u64()?, t["bytes_total"].as_u64()?))
}

fn bytes_received(n: &Node) -> u64 {
    n.folder_status("shared").unwrap()["bytes_received"]
        .as_u64()
        .unwrap()
}

/// Files in `n`'s blob store whose name holds `hash_hex` (the store keeps
/// a blob's data and outboard as `<hash>.data` / `<hash>.obao4`).
fn store_files(n: &Node, hash_hex: &str) -> Vec<String> {
    fn walk(dir: &std::path::Path, hash: &str, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, hash, out);
            } else if e.file_name().to_string_lossy().contains(hash) {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&n.data.join("blobs"), hash_hex, &mut out);
    out
}

/// The sender dies in the middle of a big transfer, so the receiver holds
/// a partial blob; GC is forced again and again while the sender is away
/// and while the transfer resumes. The file arrives intact, and it resumed
/// (the partial content was never collected: a collected one would be
/// fetched from zero).
#[test]
fn forced_gc_never_removes_content_mid_transfer() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    let size: u64 = 512 << 20;
    write_big(&c.nodes[0].path("big.bin"), size, 11);
    let want = hash_file(&c.nodes[0].path("big.bin")).unwrap();
    wait_until(DEADLINE, "b in the middle of the download", || {
        transfer_progress(&c.nodes[1]).is_some_and(|(d, t)| d > t / 16 && d < t / 2)
    });
    let before = bytes_received(&c.nodes[1]);
    c.nodes[0].kill9();
    let mut runs = 0;
    for _ in 0..3 {
        runs = sweep(&c.nodes[1])["gc_runs"].as_u64().unwrap();
    }
    assert!(runs >= 3, "each forced sweep runs GC ({runs} runs)");
    c.nodes[0].start();
    let mut during = 0;
    wait_until(DEADLINE, "the big file intact on b", || {
        if fs::metadata(c.nodes[1].path("big.bin")).is_ok_and(|m| m.len() == size) {
            return true;
        }
        sweep(&c.nodes[1]);
        during += 1;
        false
    });
    assert_eq!(hash_file(&c.nodes[1].path("big.bin")).unwrap(), want);
    let fetched = bytes_received(&c.nodes[1]) - before;
    eprintln!(
        "{during} forced sweeps while resuming; {fetched} of {size} bytes fetched after the cut"
    );
    assert!(
        fetched < size,
        "fetched {fetched} bytes after the cut: the partial content was collected and the transfer started over"
    );
}

/// Content no entry references any more leaves the blob store at the next
/// sweep (not only within GC's ten minutes).
#[test]
fn a_forced_sweep_removes_content_no_entry_references() {
    let c = Cluster::start(2, Topology::Full, folders);
    // Big enough that the store keeps its outboard in a file of its own.
    write_big(&c.nodes[0].path("gone.bin"), 16 << 20, 5);
    let hash = hash_file(&c.nodes[0].path("gone.bin")).unwrap();
    wait_until(DEADLINE, "gone.bin on b", || {
        hash_file(&c.nodes[1].path("gone.bin")).as_deref() == Some(hash.as_str())
    });
    for n in &c.nodes {
        sweep(n);
        assert!(
            !store_files(n, &hash).is_empty(),
            "{}: the store has no file of a blob in use (the test looks in the wrong place)",
            n.name
        );
    }
    fs::remove_file(c.nodes[0].path("gone.bin")).unwrap();
    wait_until(DEADLINE, "the delete on b", || {
        !c.nodes[1].path("gone.bin").exists()
    });
    for n in &c.nodes {
        let report = sweep(n);
        let left = store_files(n, &hash);
        assert!(
            left.is_empty(),
            "{}: still in the store after a sweep: {left:?} ({report})",
            n.name
        );
        let refs = content_links(&n.path(".fleetsync/refs"));
        assert_eq!(
            refs,
            Vec::<String>::new(),
            "{}: a content link outlived its file",
            n.name
        );
    }
}

/// The content links in `refs`, in its shard directories (`3f/l3f…`) or
/// in itself.
fn content_links(refs: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(refs).unwrap().flatten() {
        if !e.file_type().unwrap().is_dir() {
            out.push(e.file_name().to_string_lossy().to_string());
            continue;
        }
        for f in fs::read_dir(e.path()).unwrap().flatten() {
            out.push(f.path().display().to_string());
        }
    }
    out
}

/// A temp file older than its timeout goes at the next sweep, a young one
/// stays; at start every temp file and unused link (orphans of the last
/// run) goes. Status shows the last sweep.
#[test]
fn stale_temp_files_and_start_up_orphans_are_swept() {
    let mut c = Cluster::start(1, Topology::Full, folders);
    let n = &c.nodes[0];
    assert!(
        n.folder_status("shared").unwrap()["last_sweep"].is_string(),
        "the start-up sweep is in status"
    );
    let tmp = n.path(".fleetsync/tmp");
    fs::write(tmp.join("old.part"), b"left by a crash two hours ago").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let secs = two_hours_ago
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    set_mtime(&tmp.join("old.part"), secs);
    fs::write(tmp.join("new.part"), b"a transfer in progress").unwrap();
    fs::write(n.path(".fleetsync/refs/orphan"), b"nobody links here").unwrap();
    let report = sweep(n);
    assert_eq!(report["folders"][0]["files"].as_u64(), Some(1), "{report}");
    assert!(!tmp.join("old.part").exists(), "the stale temp file stays");
    assert!(
        tmp.join("new.part").exists(),
        "a young temp file was removed"
    );
    assert!(
        n.path(".fleetsync/refs/orphan").exists(),
        "a young unused link was removed while running (a commit may be about to use it)"
    );
    let st = n.folder_status("shared").unwrap();
    assert!(st["swept_files"].as_u64().unwrap() >= 1, "{st}");
    c.nodes[0].stop();
    c.nodes[0].start();
    let n = &c.nodes[0];
    assert!(
        !tmp.join("new.part").exists(),
        "temp file orphaned by the stop survived the start"
    );
    assert!(
        !n.path(".fleetsync/refs/orphan").exists(),
        "unused link survived the start"
    );
}

/// Sizes of every in-memory map status shows, on one node.
fn maps(n: &Node) -> Value {
    let st = n.status().unwrap();
    let mut m = st["debug"].clone();
    // Blob connections are dialed on first use and kept while the peer
    // is: at most one per peer, whatever happened before.
    let peers = st["peers"].as_array().unwrap().len() as u64;
    let conns = m["blob_conns"].as_u64().unwrap();
    assert!(
        conns <= peers,
        "{} blob connections for {peers} peers",
        conns
    );
    m["blob_conns"] = Value::Null;
    m
}

/// Many create/sync/delete cycles, of one path and of many distinct
/// paths: afterwards (and one sweep later) every map is back to its size
/// before them.
#[test]
fn maps_return_to_their_baseline_after_many_create_sync_delete_cycles() {
    // Deleting the whole directory of distinct paths at once is the churn
    // wanted here, not an accident for the mass-delete guard to hold.
    let c = Cluster::start(2, Topology::Full, |_| {
        vec![FolderSpec::new("shared").key("max_delete_fraction", "1")]
    });
    let base: Vec<Value> = c.nodes.iter().map(maps).collect();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    for i in 0..30u64 {
        let content = pseudo_random(20_000 + i as usize, i);
        fs::write(a.path("same.bin"), &content).unwrap();
        wait_until(DEADLINE, "same.bin on b", || {
            fs::read(b.path("same.bin")).ok().as_deref() == Some(&content[..])
        });
        fs::remove_file(a.path("same.bin")).unwrap();
        wait_until(DEADLINE, "same.bin gone on b", || {
            !b.path("same.bin").exists()
        });
    }
    fs::create_dir(a.path("many")).unwrap();
    for i in 0..300u64 {
        fs::write(a.path(&format!("many/{i}.bin")), pseudo_random(1000, i)).unwrap();
    }
    wait_until(DEADLINE, "300 files on b", || {
        fs::read_dir(b.path("many")).map(|d| d.count()).unwrap_or(0) == 300
    });
    fs::remove_dir_all(a.path("many")).unwrap();
    wait_until(DEADLINE, "the directory gone on b", || {
        !b.path("many").exists()
    });
    c.wait_converged("after the cycles");
    for n in &c.nodes {
        sweep(n);
    }
    for (n, base) in c.nodes.iter().zip(&base) {
        let mut now = Value::Null;
        wait_until(DEADLINE, "maps back to their baseline", || {
            now = maps(n);
            now == *base
        });
        eprintln!("{}: {now}", n.name);
    }
}
