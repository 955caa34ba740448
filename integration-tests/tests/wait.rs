//! `fleetsync wait --in-sync` and `fleetsync status`'s exit codes, driven
//! the way a rollout script drives them: real nodes, the CLI's exit code.

use std::{fs, time::Instant};

use fleetsync_integration_tests::*;

/// Exit codes (node/src/cli.rs).
const EXIT_UNREACHABLE: i32 = 4;
const EXIT_UNHEALTHY: i32 = 5;
const EXIT_FAULTED: i32 = 6;
const EXIT_TIMEOUT: i32 = 7;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

fn fault_injection(n: &mut Node, stall_timeout: &str) {
    n.extra = format!(
        "\n[supervisor]\nstall_timeout = \"{stall_timeout}\"\n\n[debug]\nfault_injection = true\n"
    );
}

fn cli_ok(n: &Node, args: &[&str]) {
    let (code, out, err) = n.cli(args);
    assert_eq!(code, 0, "fleetsync {args:?}: {out}{err}");
}

/// The first folder's field as `status --json` shows it.
fn folder_u64(n: &Node, key: &str) -> u64 {
    n.folder_status("shared")
        .and_then(|f| f[key].as_u64())
        .unwrap_or(0)
}

#[test]
fn wait_in_sync_returns_0_only_once_the_file_written_on_the_peer_is_here() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    cli_ok(b, &["wait", "--in-sync", "--timeout", "60s"]);

    let data = pseudo_random(8 << 20, 7);
    fs::write(a.path("big.bin"), &data).unwrap();
    // Once `a` has indexed the file and sent its index to `b`, `b` knows
    // of it: from then on `wait` on `b` may only return 0 with the file.
    wait_until(DEADLINE, "a to index big.bin and send it to b", || {
        a.folder_status("shared").is_some_and(|f| {
            f["files"] == 1 && f["peers"][0]["sent_all"] == true && f["in_sync"] == true
        })
    });
    let (code, out, err) = b.cli(&["wait", "--in-sync", "--timeout", "60s"]);
    assert_eq!(code, 0, "wait on b: {out}{err}");
    let got = fs::read(b.path("big.bin")).expect("wait returned 0 before big.bin was on b");
    assert!(got == data, "big.bin on b differs after wait returned 0");
    assert!(out.contains("in sync"), "{out}");
}

#[test]
fn wait_times_out_with_its_code_while_a_change_is_pending_and_after_the_peer_stops() {
    let mut c = Cluster::new(2, Topology::Full, folders);
    fault_injection(&mut c.nodes[0], "1m");
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    // `a` announces the file but never sends its bytes: `b` has it pending.
    cli_ok(&c.nodes[0], &["debug", "hang-fetch", "--for", "5m"]);
    fs::write(c.nodes[0].path("stuck.bin"), pseudo_random(1 << 20, 3)).unwrap();
    let b = &c.nodes[1];
    wait_until(DEADLINE, "stuck.bin pending on b", || {
        folder_u64(b, "pending") > 0
    });

    let started = Instant::now();
    let (code, out, err) = b.cli(&["wait", "--in-sync", "--timeout", "2s"]);
    assert_eq!(code, EXIT_TIMEOUT, "wait on b while pending: {out}{err}");
    assert!(err.contains("pending"), "the reason is given: {err}");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());

    // The peer stops mid-transfer: still pending, and alone.
    c.nodes[0].stop();
    let b = &c.nodes[1];
    wait_until(DEADLINE, "b to see a gone", || b.connected_peers() == 0);
    let (code, out, err) = b.cli(&["wait", "--in-sync", "--timeout", "2s", "--allow-alone"]);
    assert_eq!(code, EXIT_TIMEOUT, "wait on b, a stopped: {out}{err}");
    assert!(err.contains("pending"), "{err}");
    let (code, _, err) = b.cli(&["wait", "--in-sync", "--timeout", "2s"]);
    assert_eq!(code, EXIT_TIMEOUT, "{err}");
    assert!(err.contains("no peer connected"), "{err}");
    // Healthy, nothing faulted: status itself is fine while syncing.
    let (code, out, err) = b.cli(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn wait_alone_is_in_sync_only_with_allow_alone_and_waits_for_a_node_not_running() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    let n = &mut c.nodes[0];
    n.write_config();
    // Not running: wait keeps trying until its timeout.
    let (code, _, err) = n.cli(&["wait", "--in-sync", "--timeout", "1s"]);
    assert_eq!(code, EXIT_TIMEOUT, "{err}");
    assert!(err.contains("is it running"), "{err}");
    n.start();
    let (code, _, err) = n.cli(&["wait", "--in-sync", "--timeout", "2s"]);
    assert_eq!(code, EXIT_TIMEOUT, "{err}");
    assert!(err.contains("--allow-alone"), "{err}");
    cli_ok(
        n,
        &["wait", "--in-sync", "--timeout", "60s", "--allow-alone"],
    );
}

#[test]
fn status_exit_code_says_not_running_unhealthy_and_faulted() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    fault_injection(&mut c.nodes[0], "1m");
    let n = &mut c.nodes[0];
    n.start();
    fs::write(
        n.path("keep.txt"),
        "content, so a missing marker is a fault",
    )
    .unwrap();
    wait_until(DEADLINE, "keep.txt indexed", || folder_u64(n, "files") == 1);
    cli_ok(n, &["status"]);
    cli_ok(n, &["status", "--json"]);

    // An actor stuck (and not replaced for a minute): unhealthy.
    cli_ok(n, &["debug", "stall", "hasher", "--for", "15s"]);
    let mut last = (0, String::new());
    wait_until(DEADLINE, "status to exit 5", || {
        let (code, out, _) = n.cli(&["status"]);
        last = (code, out);
        last.0 == EXIT_UNHEALTHY
    });
    assert!(last.1.contains("UNHEALTHY"), "{}", last.1);
    let (code, _, _) = n.cli(&["status", "--json"]);
    assert!(code == EXIT_UNHEALTHY || code == 0, "json: {code}");
    wait_until(DEADLINE, "the stall to end", || n.cli(&["status"]).0 == 0);

    // Down: not reachable.
    n.stop();
    let (code, _, err) = n.cli(&["status"]);
    assert_eq!(code, EXIT_UNREACHABLE, "{err}");

    // The folder's marker gone while it holds files: the folder is paused.
    let marker = n.path(".fleetsync");
    fs::rename(&marker, c.dir.path().join("moved-marker")).unwrap();
    let n = &mut c.nodes[0];
    n.start();
    wait_until(DEADLINE, "status to exit 6", || {
        n.cli(&["status"]).0 == EXIT_FAULTED
    });
    let (code, _, _) = n.cli(&["status", "--json"]);
    assert_eq!(code, EXIT_FAULTED);
    let (code, _, err) = n.cli(&["wait", "--in-sync", "--timeout", "1s", "--allow-alone"]);
    assert_eq!(code, EXIT_TIMEOUT, "{err}");
    assert!(err.contains("folder shared"), "{err}");
}
