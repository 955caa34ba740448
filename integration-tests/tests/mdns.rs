//! LAN discovery with mDNS, for real: nodes in network namespaces that this
//! test creates (a bridge and one veth per node, addresses only inside
//! those namespaces, nothing leaves the machine) find each other with no
//! peers configured, and a node of another fleet on the same LAN is never
//! dialed. mDNS multicasts on every interface, so it runs nowhere else.
//!
//! Needs root and `ip netns`; without them the test fails and says so.

use std::{fs, process::Command};

use fleetsync_integration_tests::*;
use serde_json::Value;

/// Prefix of this test's namespaces (stale ones from killed runs are
/// removed first).
const PREFIX: &str = "fsmd-";

/// A LAN of network namespaces joined by a bridge; removed on drop.
struct Lan {
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// `n` hosts on 10.213.<net>.0/24; host `i` is `<i+2>`.
    fn create(n: usize) -> Result<Lan, String> {
        sweep_stale();
        let tag = std::process::id() % 100_000;
        let mut lan = Lan {
            namespaces: Vec::new(),
        };
        let br = format!("{PREFIX}{tag}-br");
        ip(&["netns", "add", &br])?;
        lan.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            lan.add_host(&br, tag, i)?;
        }
        Ok(lan)
    }

    fn add_host(&mut self, br: &str, tag: u32, i: usize) -> Result<(), String> {
        let ns = self.host(tag, i);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        // Made in our namespace under unique names, then moved.
        let (host_end, bridge_end) = (format!("f{tag}h{i}"), format!("f{tag}b{i}"));
        ip(&[
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            &bridge_end,
        ])?;
        ip(&["link", "set", &host_end, "netns", &ns])?;
        ip(&["link", "set", &bridge_end, "netns", br])?;
        ip(&["-n", br, "link", "set", &bridge_end, "master", "br0"])?;
        ip(&["-n", br, "link", "set", &bridge_end, "up"])?;
        let addr = format!("{}/24", Lan::addr(tag, i));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &host_end])?;
        ip(&["-n", &ns, "link", "set", &host_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &host_end])
    }

    fn host(&self, tag: u32, i: usize) -> String {
        format!("{PREFIX}{tag}-{i}")
    }

    fn addr(tag: u32, i: usize) -> String {
        format!("10.213.{}.{}", tag % 200, i + 2)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Remove namespaces a killed earlier run left behind.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(PREFIX) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn peers_of(n: &Node) -> Vec<(String, bool, String)> {
    let Some(st) = n.status() else {
        return Vec::new();
    };
    st["peers"]
        .as_array()
        .map(|ps| ps.iter().map(peer_line).collect())
        .unwrap_or_default()
}

fn peer_line(p: &Value) -> (String, bool, String) {
    (
        p["id"].as_str().unwrap_or_default().to_string(),
        p["connected"] == true,
        p["source"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn nodes_in_network_namespaces_find_each_other_with_mdns_and_sync() {
    let is_root = rustix::process::geteuid().is_root();
    assert!(
        is_root,
        "the mDNS test needs root to build a LAN of network namespaces (`ip netns`); run the tests as root"
    );
    let tag = std::process::id() % 100_000;
    let lan = Lan::create(4).unwrap_or_else(|e| {
        panic!("the mDNS test needs `ip netns`, veth and bridge support to build a LAN: {e}")
    });
    // Three members (one fleet) and a stranger of another fleet.
    let mut c = Cluster::new(4, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    for (i, n) in c.nodes.iter_mut().enumerate() {
        n.peers.clear();
        n.netns = Some(lan.host(tag, i));
        n.mdns = true;
        n.udp = format!("{}:7300", Lan::addr(tag, i)).parse().unwrap();
    }
    c.nodes[3].secret = [0x5a; 32];
    for n in &mut c.nodes {
        n.start();
    }
    let stranger = c.nodes[3].id_hex();
    wait_until(
        DEADLINE,
        "a, b and c connected to each other by mDNS",
        || {
            c.nodes[..3]
                .iter()
                .all(|n| peers_of(n).iter().filter(|(_, up, _)| *up).count() == 2)
        },
    );
    let sources: Vec<String> = c.nodes[..3]
        .iter()
        .flat_map(|n| peers_of(n).into_iter().map(|(_, _, s)| s))
        .collect();
    assert!(sources.iter().any(|s| s == "mdns"), "{sources:?}");
    fs::write(c.nodes[0].path("hello.txt"), "found on the LAN").unwrap();
    wait_until(DEADLINE, "a's file on b and c", || {
        c.nodes[1..3]
            .iter()
            .all(|n| fs::read_to_string(n.path("hello.txt")).is_ok_and(|t| t == "found on the LAN"))
    });
    // The other fleet's node was never dialed, nor did it get in.
    for n in &c.nodes[..3] {
        assert!(
            peers_of(n).iter().all(|(id, _, _)| *id != stranger),
            "{} knows the stranger: {:?}",
            n.name,
            peers_of(n)
        );
    }
    assert!(
        peers_of(&c.nodes[3]).is_empty(),
        "{:?}",
        peers_of(&c.nodes[3])
    );
    drop(c);
    drop(lan);
}
