//! Fleet mesh between real nodes on loopback: one bootstrap peer is
//! enough (peer exchange), the fleet outlives its bootstrap node, and a
//! mesh of bounded degree still carries every change everywhere.

use std::{fs, time::Instant};

use fleetsync_integration_tests::*;
use serde_json::Value;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// The peers `n` is connected to, with how it came to know each.
fn connected(n: &Node) -> Vec<(String, String)> {
    let Some(st) = n.status() else {
        return Vec::new();
    };
    st["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["connected"] == true)
                .map(|p| (str_of(&p["short_id"]), str_of(&p["source"])))
                .collect()
        })
        .unwrap_or_default()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Every node except those in `except` has the same tree; returns it.
fn converged(c: &Cluster, except: &[usize], what: &str) -> usize {
    let live: Vec<&Node> = (0..c.nodes.len())
        .filter(|i| !except.contains(i))
        .map(|i| &c.nodes[i])
        .collect();
    let mut size = 0;
    wait_until(DEADLINE, what, || {
        let trees: Vec<_> = live.iter().map(|n| tree(&n.path(""))).collect();
        size = trees[0].len();
        trees.windows(2).all(|w| w[0] == w[1])
    });
    size
}

#[test]
fn eight_nodes_that_know_only_node_one_form_a_full_mesh_and_keep_converging_without_it() {
    const N: usize = 8;
    let started = Instant::now();
    let mut c = Cluster::start(N, Topology::Star, folders);
    wait_until(DEADLINE, "every node connected to all 7 others", || {
        c.nodes.iter().all(|n| connected(n).len() == N - 1)
    });
    let meshed = started.elapsed();
    // The spokes met through the hub: they know each other by exchange.
    let by_exchange = connected(&c.nodes[3])
        .iter()
        .filter(|(_, src)| src == "exchange" || src == "inbound")
        .count();
    assert!(by_exchange >= N - 2, "{:?}", connected(&c.nodes[3]));
    // status --json: each peer with id, connected, source, addr, rtt, version.
    let st = c.nodes[3].status().unwrap();
    for p in st["peers"].as_array().unwrap() {
        assert!(p["id"].as_str().is_some_and(|id| id.len() == 64), "{p}");
        assert_eq!(p["connected"], true, "{p}");
        assert!(
            p["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{p}"
        );
        assert!(p["rtt_ms"].as_f64().is_some(), "{p}");
        assert_eq!(p["version"], fleetsync_mesh::proto::PROTOCOL_VERSION, "{p}");
        assert_eq!(p["direct"], true, "{p}");
    }

    for i in [2, 5, 7] {
        fs::write(c.nodes[i].path(&format!("from-{i}.txt")), format!("n{i}")).unwrap();
    }
    let t0 = Instant::now();
    assert_eq!(converged(&c, &[], "the files of n2, n5, n7 everywhere"), 3);
    let first = t0.elapsed();

    // Without the bootstrap node, the rest go on among themselves.
    c.nodes[0].stop();
    fs::write(c.nodes[3].path("after-hub.txt"), "n3").unwrap();
    fs::remove_file(c.nodes[6].path("from-5.txt")).unwrap();
    let t1 = Instant::now();
    let size = converged(&c, &[0], "n3's file and n6's delete on n1..n7");
    assert_eq!(size, 3, "from-2, from-7, after-hub");
    assert!(!c.nodes[1].path("from-5.txt").exists());
    let second = t1.elapsed();
    fs::write(c.nodes[7].path("again.txt"), "n7").unwrap();
    converged(&c, &[0], "a later file on n1..n7");
    eprintln!(
        "{N} nodes, each knowing only n0: full mesh after {meshed:?}; \
         3 files converged in {first:?}; without n0: converged in {second:?}"
    );
}

#[test]
fn a_bounded_degree_mesh_still_carries_every_change_everywhere() {
    const N: usize = 6;
    let mut c = Cluster::new(N, Topology::Star, folders);
    for n in &mut c.nodes {
        n.mesh_extra = "max_peers = 2\n".into();
    }
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    for i in [1, 4, 5] {
        fs::write(c.nodes[i].path(&format!("from-{i}.txt")), format!("n{i}")).unwrap();
    }
    assert_eq!(converged(&c, &[], "every file on every node"), 3);
    // Spokes dial at most max_peers - they may still be dialed by others.
    let degrees: Vec<usize> = c.nodes.iter().map(|n| connected(n).len()).collect();
    assert!(
        degrees[1..].iter().any(|&d| d < N - 1),
        "max_peers = 2 and yet a full mesh: {degrees:?}"
    );
    eprintln!("degrees with max_peers = 2: {degrees:?}");
}

/// `[mesh] deny` revokes a node that still holds the fleet secret: it is
/// refused on every protocol, never dialed, and its changes go nowhere.
#[test]
fn a_denied_node_is_refused_and_its_changes_reach_nobody() {
    let mut c = Cluster::new(3, Topology::Full, folders);
    let denied = c.nodes[2].id_hex();
    for n in &mut c.nodes[..2] {
        n.mesh_extra = format!("deny = [\"{denied}\"]\n");
    }
    for n in &mut c.nodes {
        n.start();
    }
    fs::write(c.nodes[2].path("from-revoked.txt"), "should go nowhere").unwrap();
    fs::write(c.nodes[0].path("from-n0.txt"), "n0").unwrap();
    wait_until(DEADLINE, "n0's file on n1", || {
        c.nodes[1].path("from-n0.txt").exists()
    });
    wait_until(
        DEADLINE,
        "n0 and n1 refusing the denied node's dials",
        || {
            c.nodes[..2]
                .iter()
                .all(|n| n.log().contains("denied by this node"))
        },
    );
    assert!(
        connected(&c.nodes[2]).is_empty(),
        "{:?}",
        connected(&c.nodes[2])
    );
    for n in &c.nodes[..2] {
        assert!(!n.path("from-revoked.txt").exists(), "{} got it", n.name);
        let st = n.status().unwrap();
        let ids: Vec<&str> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_str())
            .collect();
        assert!(
            !ids.contains(&denied.as_str()),
            "{} keeps a record: {ids:?}",
            n.name
        );
    }
}

/// Revocation without a restart: add a member to `[mesh] deny` and send
/// SIGHUP; its sessions end at once and it is refused from then on.
#[test]
fn a_member_denied_on_reload_is_disconnected_at_once_and_refused_after() {
    let mut c = Cluster::start(3, Topology::Full, folders);
    fs::write(c.nodes[2].path("before.txt"), "still a member").unwrap();
    c.wait_converged("n2's file everywhere while it is a member");
    let denied = c.nodes[2].id_hex();
    let t0 = Instant::now();
    for n in &mut c.nodes[..2] {
        n.mesh_extra = format!("deny = [\"{denied}\"]\n");
        n.write_config();
        n.signal(rustix::process::Signal::HUP);
    }
    wait_until(DEADLINE, "n2 cut off by n0 and n1", || {
        connected(&c.nodes[2]).is_empty()
            && c.nodes[..2].iter().all(|n| {
                n.status().is_some_and(|st| {
                    st["peers"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().all(|p| p["id"] != denied.as_str()))
                })
            })
    });
    let cut_after = t0.elapsed();
    fs::write(c.nodes[2].path("after.txt"), "revoked").unwrap();
    wait_until(DEADLINE, "n0 refusing n2's redials", || {
        c.nodes[0].log().contains("denied by this node")
    });
    fs::write(c.nodes[0].path("n0-after.txt"), "members only").unwrap();
    wait_until(DEADLINE, "n0's new file on n1", || {
        c.nodes[1].path("n0-after.txt").exists()
    });
    for n in &c.nodes[..2] {
        assert!(
            !n.path("after.txt").exists(),
            "{} got the revoked node's file",
            n.name
        );
    }
    assert!(!c.nodes[2].path("n0-after.txt").exists());
    eprintln!("n2 disconnected {cut_after:?} after the SIGHUP");
}
