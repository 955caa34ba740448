//! Self-healing, driven the way an operator would drive it: real nodes,
//! faults injected with `fleetsync debug …`, and what `status --json`, the
//! exit code and systemd's notify socket say.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Fault injection on, and a short stall timeout so the tests are quick.
fn faults_on(n: &mut Node, stall_timeout: &str, max_restarts: u32) {
    n.extra = format!(
        "\n[supervisor]\nstall_timeout = \"{stall_timeout}\"\nmax_restarts = {max_restarts}\n\n[debug]\nfault_injection = true\n"
    );
}

fn restarts(n: &Node, actor: &str) -> u64 {
    n.actor(actor)
        .and_then(|a| a["restarts"].as_u64())
        .unwrap_or(0)
}

fn healthy(n: &Node, actor: &str) -> bool {
    n.actor(actor).is_some_and(|a| a["healthy"] == true)
}

fn debug(n: &Node, args: &[&str]) {
    let mut all = vec!["debug"];
    all.extend_from_slice(args);
    let (code, out, err) = n.cli(&all);
    assert_eq!(code, 0, "fleetsync debug {args:?}: {out}{err}");
}

#[test]
fn a_stalled_hasher_is_replaced_and_changes_made_during_the_stall_reach_the_peer() {
    let mut c = Cluster::new(2, Topology::Full, folders);
    faults_on(&mut c.nodes[0], "3s", 5);
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("before.txt"), "before the stall").unwrap();
    wait_until(DEADLINE, "the first file on b", || {
        b.path("before.txt").exists()
    });

    let stalled = Instant::now();
    debug(a, &["stall", "hasher", "--for", "60s"]);
    fs::write(a.path("during.txt"), "written while the hasher is stuck").unwrap();
    wait_until(DEADLINE, "the stalled hasher to be replaced", || {
        restarts(a, "hasher:shared") >= 1 && healthy(a, "hasher:shared")
    });
    let to_replacement = stalled.elapsed();
    fs::write(a.path("after.txt"), "written after the replacement").unwrap();
    c.wait_converged("both files to reach b");
    assert_eq!(
        fs::read(b.path("during.txt")).unwrap(),
        b"written while the hasher is stuck"
    );
    assert_eq!(
        fs::read(b.path("after.txt")).unwrap(),
        b"written after the replacement"
    );
    eprintln!("stall to replacement: {to_replacement:?} (stall_timeout 3 s)");
    let st = a.status().expect("a still answers");
    assert_eq!(st["healthy"], true, "{st}");
    assert!(
        a.log().contains("replacing it"),
        "the replacement is logged"
    );
}

#[test]
fn a_panicking_receiver_is_restarted_and_sync_goes_on() {
    let mut c = Cluster::new(2, Topology::Full, folders);
    faults_on(&mut c.nodes[1], "5s", 5);
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    debug(b, &["panic", "receiver"]);
    wait_until(DEADLINE, "b's receiver to be restarted", || {
        restarts(b, "receiver:shared") >= 1 && healthy(b, "receiver:shared")
    });
    fs::write(a.path("after-panic.txt"), "applied by the new receiver").unwrap();
    c.wait_converged("the file to reach b");
    assert_eq!(
        fs::read(b.path("after-panic.txt")).unwrap(),
        b"applied by the new receiver"
    );
}

#[test]
fn a_crash_loop_past_the_restart_budget_ends_the_process_with_code_70() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    faults_on(&mut c.nodes[0], "5s", 1);
    c.nodes[0].start();
    let n = &c.nodes[0];
    debug(n, &["panic", "hasher"]);
    wait_until(DEADLINE, "the first restart", || {
        restarts(n, "hasher:shared") >= 1
    });
    // The second crash within the window is one more than the budget.
    debug(n, &["panic", "hasher"]);
    let status = c.nodes[0].wait_exit(DEADLINE).expect("the node gives up");
    assert_eq!(status.code(), Some(70), "{}", c.nodes[0].log_tail(20));
}

#[test]
fn faults_are_refused_unless_fault_injection_is_on() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    c.nodes[0].start();
    let (code, _, err) = c.nodes[0].cli(&["debug", "stall", "hasher", "--for", "1s"]);
    assert_ne!(code, 0);
    assert!(err.contains("fault_injection"), "{err}");
    assert_eq!(restarts(&c.nodes[0], "hasher:shared"), 0);
}

/// What arrived on the notify socket: (time, message) in order.
fn drain(sock: &UnixDatagram, into: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push((
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ));
    }
}

#[test]
fn systemd_gets_ready_status_and_a_watchdog_that_stops_while_an_actor_is_stalled() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    let sock_path = c.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let n = &mut c.nodes[0];
    faults_on(n, "8s", 5);
    n.env = vec![
        ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
        // Half a second between WATCHDOG=1 messages.
        ("WATCHDOG_USEC".into(), "1000000".into()),
    ];
    n.start();
    let mut got = Vec::new();
    wait_until(DEADLINE, "READY=1, STATUS= and a few WATCHDOG=1", || {
        drain(&sock, &mut got);
        let has = |m: &str| got.iter().any(|(_, g)| g.contains(m));
        has("READY=1")
            && has("STATUS=")
            && got.iter().filter(|(_, g)| g.contains("WATCHDOG=1")).count() >= 3
    });
    let status = got.iter().find(|(_, g)| g.contains("STATUS=")).unwrap();
    assert!(status.1.contains("folders in sync"), "{}", status.1);

    let stalled = Instant::now();
    debug(n, &["stall", "hasher", "--for", "30s"]);
    wait_until(DEADLINE, "the hasher to be replaced", || {
        drain(&sock, &mut got);
        restarts(n, "hasher:shared") >= 1 && healthy(n, "hasher:shared")
    });
    let replaced = Instant::now();
    wait_until(DEADLINE, "the watchdog to resume", || {
        drain(&sock, &mut got);
        got.iter()
            .any(|(t, g)| *t > replaced && g.contains("WATCHDOG=1"))
    });
    let pings: Vec<Instant> = got
        .iter()
        .filter(|(t, g)| *t >= stalled && g.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    let longest_gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Pings every 0.5 s while healthy; withheld from about two missed
    // pings after the stall until the replacement (stall_timeout 8 s).
    assert!(
        longest_gap >= Duration::from_secs(3),
        "the watchdog kept going during the stall (longest gap {longest_gap:?})"
    );
}

#[test]
fn a_frozen_peer_is_dropped_and_catches_up_both_ways_after_it_thaws() {
    let c = Cluster::start(3, Topology::Full, folders);
    let (a, b, frozen) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    frozen.signal(rustix::process::Signal::STOP);
    // The others notice the silence (QUIC idle timeout) and go on.
    wait_until(DEADLINE, "a and b to drop the frozen peer", || {
        a.connected_peers() == 1 && b.connected_peers() == 1
    });
    fs::write(a.path("while-frozen.txt"), "written while c was frozen").unwrap();
    wait_until(DEADLINE, "a and b to sync without c", || {
        b.path("while-frozen.txt").exists()
    });
    frozen.signal(rustix::process::Signal::CONT);
    fs::write(frozen.path("from-thawed.txt"), "written after the thaw").unwrap();
    c.wait_converged("all three to converge after the thaw");
    assert_eq!(
        fs::read(frozen.path("while-frozen.txt")).unwrap(),
        b"written while c was frozen"
    );
    assert_eq!(
        fs::read(a.path("from-thawed.txt")).unwrap(),
        b"written after the thaw"
    );
}
