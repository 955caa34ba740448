//! Config reload on a running node (`fleetsync reload`, SIGHUP): peers,
//! the log level and the folder list change without a restart; other
//! changes are named as needing one; a bad config is refused and the node
//! keeps running.

use std::fs;

use fleetsync_integration_tests::{wait_until, Cluster, FolderSpec, Node, Topology, DEADLINE};

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Two nodes that know nobody (no peers, no exchange, no mDNS).
fn strangers() -> Cluster {
    let mut c = Cluster::new(2, Topology::Full, folders);
    for n in &mut c.nodes {
        n.peers.clear();
        n.mesh_extra.push_str("peer_exchange = false\n");
        n.start();
    }
    c
}

fn has_file(n: &Node, rel: &str, data: &[u8]) -> bool {
    fs::read(n.path(rel)).is_ok_and(|d| d == data)
}

#[test]
fn a_peer_added_by_reload_is_dialed_and_syncs_without_a_restart() {
    let mut c = strangers();
    fs::write(c.nodes[0].path("before.txt"), b"made before they met").unwrap();
    assert_eq!(c.nodes[1].connected_peers(), 0);
    let pid = c.nodes[1].pid();

    let (name, id, udp) = (c.nodes[0].name.clone(), c.nodes[0].id, c.nodes[0].udp);
    c.nodes[1].peers.push((name, id, udp));
    c.nodes[1].write_config();
    let (code, out, err) = c.nodes[1].cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mesh.peers: 1 added, 0 removed"), "{out}");
    assert!(!out.contains("needs a restart"), "{out}");

    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    wait_until(DEADLINE, "the added peer connected", || {
        b.connected_peers() == 1
    });
    wait_until(DEADLINE, "the file synced", || {
        has_file(b, "before.txt", b"made before they met")
    });
    fs::write(a.path("after.txt"), b"and after").unwrap();
    wait_until(DEADLINE, "a new file synced", || {
        has_file(b, "after.txt", b"and after")
    });
    assert_eq!(b.pid(), pid, "the node was not restarted");

    // Taken off the list again: no longer configured, but the live
    // session is not cut (a member may still talk to us).
    c.nodes[1].peers.clear();
    c.nodes[1].write_config();
    let (code, out, err) = c.nodes[1].cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mesh.peers: 0 added, 1 removed"), "{out}");
    assert_eq!(c.nodes[1].connected_peers(), 1);
    let (code, out, _) = c.nodes[1].cli(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: nothing changed"));
}

#[test]
fn log_level_applies_at_once_and_other_changes_are_named_as_needing_a_restart() {
    let mut c = strangers();
    let n = &mut c.nodes[0];
    // The harness runs nodes at debug: their scans log at debug.
    n.extra.push_str("[supervisor]\nmax_restarts = 9\n");
    n.write_config();
    let text = fs::read_to_string(&n.config)
        .unwrap()
        .replace("level = \"debug\"", "level = \"warn\"");
    fs::write(&n.config, text).unwrap();
    let (code, out, err) = n.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reloaded: log.level: now \"warn\""), "{out}");
    assert!(
        out.contains("needs a restart: supervisor.max_restarts"),
        "{out}"
    );

    // Debug lines stop: a change made now is indexed without its
    // "hash batch done" debug line.
    let before = n.log().matches("hash batch done").count();
    fs::write(n.path("quiet.txt"), b"x").unwrap();
    wait_until(DEADLINE, "the file indexed", || {
        n.status().is_some_and(|s| s["folders"][0]["files"] == 1)
    });
    assert_eq!(
        n.log().matches("hash batch done").count(),
        before,
        "debug lines still written after the reload to warn"
    );
}

#[test]
fn a_bad_config_is_refused_and_the_node_keeps_its_running_one() {
    let mut c = strangers();
    let n = &mut c.nodes[1];
    let good = fs::read_to_string(&n.config).unwrap();
    fs::write(&n.config, good.replace("[mesh]", "[mesh]\nlisten_typo = 1")).unwrap();
    let (code, out, err) = n.cli(&["reload"]);
    // The CLI loads the config itself first: the same one-line error.
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("mesh.listen_typo"), "{err}");

    // SIGHUP reaches the daemon itself: it refuses too, and says why.
    n.signal(rustix::process::Signal::HUP);
    wait_until(DEADLINE, "the refusal logged", || {
        n.log()
            .contains("reload refused, keeping the running config")
    });
    assert!(n.log().contains("mesh.listen_typo"));
    let (code, out, err) = n.cli(&["status"]);
    assert_eq!(code, 3, "status loads the bad config too: {out}{err}");
    fs::write(&n.config, &good).unwrap();
    let (code, out, err) = n.cli(&["status"]);
    assert_eq!(code, 0, "the node kept running: {out}{err}");

    // With the good config back, SIGHUP reloads with nothing to change.
    n.signal(rustix::process::Signal::HUP);
    wait_until(DEADLINE, "the reload logged", || {
        n.log().contains("config reloaded: nothing changed")
    });
}

/// The session with `other` as `n` reports it (unix ms it began).
fn session_of(n: &Node, other: &Node) -> Option<u64> {
    let st = n.status()?;
    let id = other.id_hex();
    st["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id.as_str() && p["connected"] == true)
        .and_then(|p| p["connected_since_ms"].as_u64())
}

fn now_ms() -> u64 {
    let since = std::time::UNIX_EPOCH.elapsed().expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit")
}

/// A folder added to a running node by reload syncs both ways with a peer
/// that already had it (the peer had been told "not shared" and is woken
/// when we subscribe), while the session and the other folder carry on; a
/// folder removed by reload stops syncing and keeps its files.
#[test]
fn a_folder_added_by_reload_syncs_both_ways_and_a_removed_one_stops() {
    let mut c = Cluster::start(2, Topology::Full, |i| {
        let mut f = vec![FolderSpec::new("shared")];
        if i == 0 {
            f.push(FolderSpec::new("extra"));
        }
        f
    });
    let extra = |n: &Node, rel: &str| n.folder("extra").join(rel);
    fs::write(extra(&c.nodes[0], "from-a.txt"), b"a had it first").unwrap();
    fs::write(c.nodes[0].path("hello.txt"), b"hello").unwrap();
    wait_until(DEADLINE, "the first folder synced", || {
        has_file(&c.nodes[1], "hello.txt", b"hello")
    });
    // Two nodes dialing each other as they start may swap their session
    // once in the first second (the duplicate tie-break): compare with a
    // session that has outlived that.
    wait_until(DEADLINE, "a settled session", || {
        session_of(&c.nodes[1], &c.nodes[0]).is_some_and(|since| now_ms() > since + 3_000)
    });
    let session = session_of(&c.nodes[1], &c.nodes[0]);
    let pid = c.nodes[1].pid();

    c.nodes[1].folders.push(FolderSpec::new("extra"));
    c.nodes[1].write_config();
    let (code, out, err) = c.nodes[1].cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("folder extra: added"), "{out}");
    assert!(!out.contains("needs a restart"), "{out}");

    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    wait_until(DEADLINE, "a's file in the added folder reached b", || {
        fs::read(extra(b, "from-a.txt")).is_ok_and(|d| d == b"a had it first")
    });
    fs::write(extra(b, "from-b.txt"), b"b's own").unwrap();
    wait_until(DEADLINE, "b's file in the added folder reached a", || {
        fs::read(extra(a, "from-b.txt")).is_ok_and(|d| d == b"b's own")
    });
    fs::write(a.path("still.txt"), b"the first folder too").unwrap();
    wait_until(DEADLINE, "the first folder still syncs", || {
        has_file(b, "still.txt", b"the first folder too")
    });
    assert_eq!(b.pid(), pid, "the node was not restarted");
    assert_eq!(session_of(b, a), session, "the session was not dropped");

    // Removed again: nothing more arrives there, its files stay.
    c.nodes[1].folders.retain(|f| f.id != "extra");
    c.nodes[1].write_config();
    let (code, out, err) = c.nodes[1].cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("folder extra: removed"), "{out}");
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let st = b.status().expect("status");
    let ids: Vec<&str> = (st["folders"].as_array().unwrap().iter())
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, ["shared"]);
    fs::write(extra(a, "late.txt"), b"after the removal").unwrap();
    wait_until(DEADLINE, "a indexed late.txt", || {
        a.folder_status("extra").is_some_and(|f| f["files"] == 3)
    });
    // Announced on the same session as this later file of the other
    // folder: once that arrived, late.txt would have too.
    fs::write(a.path("marker.txt"), b"written after late.txt").unwrap();
    wait_until(DEADLINE, "the first folder still syncs", || {
        has_file(b, "marker.txt", b"written after late.txt")
    });
    assert!(
        !extra(b, "late.txt").exists(),
        "a removed folder got a file"
    );
    assert!(
        extra(b, "from-b.txt").exists(),
        "a removed folder keeps its files"
    );
    assert_eq!(session_of(b, a), session, "the session was not dropped");
}
