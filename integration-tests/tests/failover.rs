//! Failover: a member that freezes in the middle of serving a big file is
//! replaced by another member that has the content (the swarm fetch goes
//! on with the others), and nothing else of the folder waits for the big
//! file meanwhile.
//!
//! The freeze is a SIGSTOP of the serving process: its keep-alives stop,
//! so its connections end after the QUIC idle timeout (10 s) unless the
//! transfer deadline (`[mesh] transfer_stall_timeout`, 30 s by default)
//! gives up first. With `fleetsync debug hang-fetch` a node keeps its
//! connections alive but sends no data, so only the transfer deadline can
//! end the fetch: the second test.

use std::{
    fs,
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Big enough that a loopback transfer is caught half way.
const BIG: u64 = 768 << 20;

/// The two tests move about 1 GiB through the disk each; run side by side
/// on a 2-core machine they starved each other past the deadlines once.
/// One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// (peer short id, bytes done, bytes total) of `n`'s transfer of `path`.
fn transfer(n: &Node, path: &str) -> Option<(String, u64, u64)> {
    let f = n.folder_status("shared")?;
    let t = f["transfers"]
        .as_array()?
        .iter()
        .find(|t| t["path"] == path)?
        .clone();
    Some((
        t["peer"].as_str()?.to_string(),
        t["bytes_done"].as_u64()?,
        t["bytes_total"].as_u64()?,
    ))
}

fn signal(n: &Node, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(n.pid().expect("running") as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// The whole file, with the expected content (size first: hashing is slow).
fn has_big(n: &Node, want: &str) -> bool {
    fs::metadata(n.path("big.bin")).is_ok_and(|m| m.len() == BIG)
        && hash_file(&n.path("big.bin")).as_deref() == Some(want)
}

#[test]
fn a_member_frozen_mid_transfer_is_replaced_by_another_and_holds_back_nothing_else() {
    let _serial = one_at_a_time();
    let mut c = Cluster::start(3, Topology::Full, folders);
    fs::write(c.nodes[2].path("old.txt"), b"to be deleted").unwrap();
    // Indexed everywhere, not only placed: n1 is stopped next, and a stop
    // between placing a file and recording it leaves the content to be
    // fetched again after the restart (small content is in no blob
    // store, `mesh::lazy`), which the byte count below would count.
    wait_until(DEADLINE, "old.txt everywhere", || {
        c.nodes
            .iter()
            .all(|n| n.path("old.txt").exists() && n.in_sync("shared"))
    });
    // n1 is away while the big file reaches n2: two members have it.
    c.nodes[1].stop();
    write_big(&c.nodes[0].path("big.bin"), BIG, 11);
    let want = hash_file(&c.nodes[0].path("big.bin")).unwrap();
    wait_until(Duration::from_secs(120), "the big file on n2", || {
        has_big(&c.nodes[2], &want)
    });
    c.nodes[1].start();

    // n1 fetches from both members at once (a swarm: its transfer shows
    // "2 peers"); one of them is frozen half way.
    let mut from = String::new();
    let mut done_at_freeze = 0;
    wait_until(
        DEADLINE,
        "n1 half way through the big file",
        || match transfer(&c.nodes[1], "big.bin") {
            Some((peer, done, total)) if done > 0 && done < total / 2 => {
                from = peer;
                done_at_freeze = done;
                true
            }
            _ => false,
        },
    );
    assert_eq!(from, "2 peers", "n1 fetches from both members that have it");
    let (frozen, up) = (0, 2);
    signal(&c.nodes[frozen], rustix::process::Signal::STOP);
    let stopped = Instant::now();

    // Meanwhile, on the member that is up: small files and a delete.
    for i in 0..5 {
        fs::write(c.nodes[up].path(&format!("small-{i}.txt")), format!("{i}")).unwrap();
    }
    fs::remove_file(c.nodes[up].path("old.txt")).unwrap();
    let n1 = &c.nodes[1];
    let small_in = wait_until(DEADLINE, "small files and the delete on n1", || {
        (0..5).all(|i| fs::read(n1.path(&format!("small-{i}.txt"))).is_ok())
            && !n1.path("old.txt").exists()
    });
    assert!(
        !n1.path("big.bin").exists(),
        "the small files and the delete came after the big file: they waited for it"
    );

    let mut failover = None;
    wait_until(DEADLINE, "n1 receiving from the member that is up", || {
        let moving = transfer(n1, "big.bin").is_some_and(|(_, done, _)| done > done_at_freeze);
        if moving || n1.path("big.bin").exists() {
            failover = Some(stopped.elapsed());
        }
        failover.is_some()
    });
    wait_until(Duration::from_secs(120), "the big file on n1", || {
        has_big(n1, &want)
    });
    eprintln!(
        "froze n{from} half way; on n1: small files and the delete {small_in:?} later, \
         bytes from n{up} {failover:?} later, the whole big file {:?} later",
        stopped.elapsed(),
        from = frozen
    );
    let received = n1.folder_status("shared").unwrap()["bytes_received"]
        .as_u64()
        .unwrap();
    // The big file once, plus the five one-byte small files.
    let want_at_most = BIG + 5;
    assert!(
        received <= want_at_most,
        "received {received} bytes, more than the {want_at_most} sent: a verified piece was fetched again"
    );

    signal(&c.nodes[frozen], rustix::process::Signal::CONT);
    c.wait_converged("all three after the frozen member wakes up");
}

/// Megabytes enough that the failover is visibly a transfer, small enough
/// for a loaded CI machine.
const FAILOVER_BIG: u64 = 64 << 20;

#[test]
fn a_node_that_hangs_its_fetches_is_failed_over_and_small_changes_do_not_wait() {
    let _serial = one_at_a_time();
    // Only n0 ever announces the big file (send-only: it relays nothing),
    // and then hangs its blob serving. n1 holds the same bytes in a folder
    // it does not share: it announces nothing, but serves the blob (blobs
    // go by hash) — "any member that has it". n3, send-only too, writes
    // small changes. n2 arrives late: it must ask the hung announcer
    // first, give up after the transfer deadline and fetch from n1, while
    // n3's small changes reach it at once.
    let mut c = Cluster::new(4, Topology::Full, |i| match i {
        0 | 3 => vec![FolderSpec::new("shared").mode("send-only")],
        1 => vec![FolderSpec::new("other")],
        _ => vec![FolderSpec::new("shared")],
    });
    c.nodes[0].extra = "\n[debug]\nfault_injection = true\n".into();
    for n in &mut c.nodes {
        n.mesh_extra = "transfer_stall_timeout = \"3s\"\n".into();
    }
    for i in [0, 1, 3] {
        c.nodes[i].start();
    }
    fs::write(c.nodes[3].path("old.txt"), b"to be deleted").unwrap();
    write_big(&c.nodes[0].path("big.bin"), FAILOVER_BIG, 7);
    write_big(&c.nodes[1].path("big.bin"), FAILOVER_BIG, 7);
    let want = hash_file(&c.nodes[0].path("big.bin")).unwrap();
    let indexed = |n: &Node, folder: &str| {
        n.folder_status(folder)
            .is_some_and(|f| f["files"].as_u64() >= Some(1))
    };
    wait_until(DEADLINE, "n0, n1 and n3 to index their files", || {
        indexed(&c.nodes[0], "shared")
            && indexed(&c.nodes[1], "other")
            && indexed(&c.nodes[3], "shared")
    });
    let (code, out, err) = c.nodes[0].cli(&["debug", "hang-fetch", "--for", "10m"]);
    assert_eq!(code, 0, "{out}{err}");

    let started = Instant::now();
    c.nodes[2].start();
    fs::write(
        c.nodes[3].path("small.txt"),
        b"not waiting for the big file",
    )
    .unwrap();
    fs::remove_file(c.nodes[3].path("old.txt")).unwrap();
    let n2 = &c.nodes[2];
    let copy = |n: &Node| {
        fs::metadata(n.path("big.bin")).is_ok_and(|m| m.len() == FAILOVER_BIG)
            && hash_file(&n.path("big.bin")).as_deref() == Some(want.as_str())
    };
    wait_until(DEADLINE, "the small file and the delete on n2", || {
        n2.path("small.txt").exists() && !n2.path("old.txt").exists()
    });
    let small_after = started.elapsed();
    assert!(
        !copy(n2),
        "the small changes came first (the big file needs the deadline)"
    );
    wait_until(DEADLINE, "the big file on n2, from n1", || copy(n2));
    let big_after = started.elapsed();
    assert!(
        big_after >= Duration::from_secs(3),
        "the big file came before the transfer deadline ({big_after:?}): was the hung node asked?\n{}",
        dump_logs(&[&c.nodes[2], &c.nodes[0]])
    );
    // The swarm asks n1 first and the hung announcer for what n1 cannot
    // take at once; those pieces stall until the deadline gives them up.
    let n2_log = n2.log();
    assert!(
        n2_log.contains("transfer stalled") || n2_log.contains("piece stalled"),
        "the deadline gave the hung node up"
    );
    eprintln!(
        "n2 started; small file + delete after {small_after:?}, big file ({} MiB, announcer hung, \
         transfer_stall_timeout 3 s) after {big_after:?}",
        FAILOVER_BIG >> 20,
    );
}
