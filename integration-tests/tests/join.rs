//! Joining a fleet: `fleetsync invite` on a running member, `fleetsync
//! join` on a new machine (here: a new data dir on 127.0.0.1, with the
//! environment choosing its ports), `fleetsync run`, files both ways. And
//! static peers given by host name.

use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
};

use fleetsync_integration_tests::*;
use fleetsync_mesh::ticket::FleetTicket;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// `fleetsync join - ARGS` with the ticket on stdin and exactly `env` as
/// the process's `FLEETSYNC_*` variables.
fn join(ticket: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETSYNC_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("join")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetsync join");
    writeln!(child.stdin.take().unwrap(), "{ticket}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn arrives(n: &Node, rel: &str, want: &[u8]) -> bool {
    fs::read(n.path(rel)).is_ok_and(|b| b == want)
}

#[test]
fn an_invited_node_joins_with_a_ticket_and_syncs_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut n0 = Node::new(dir.path(), "n0", random_bytes(), folders(0));
    n0.start();

    // The running member's listen address goes into the ticket.
    let (code, stdout, stderr) = n0.cli(&["invite", "--expires", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    let ticket = stdout.lines().last().unwrap().to_string();
    let t = FleetTicket::parse(&ticket).unwrap();
    assert_eq!(t.addrs, vec![n0.udp]);
    assert_eq!(t.node.as_bytes(), &n0.id);

    // The new node: its identity and folder exist, its config comes from
    // `join` (never written by the harness), n0's config does not list it.
    let mut n1 = Node::new(dir.path(), "n1", [0; 32], folders(1));
    n1.keep_config = true;
    let env = [
        ("FLEETSYNC_MESH_LISTEN", n1.udp.to_string()),
        ("FLEETSYNC_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("FLEETSYNC_MESH_MDNS", "false".to_string()),
    ];
    let (ok, out, err) = join(
        &ticket,
        &[
            "--data-dir",
            n1.data.to_str().unwrap(),
            "--folder",
            n1.folder("shared").to_str().unwrap(),
            "--folder-id",
            "shared",
        ],
        &env,
    );
    assert!(ok, "join failed: {err}");
    assert!(out.contains(&n1.id_hex()), "{out}");
    assert!(n1.config.exists());
    // Debug logging, and a short settle so the test does not wait on the
    // default: both through the environment, as an operator would.
    n1.env = vec![
        ("FLEETSYNC_LOG_LEVEL".into(), "debug".into()),
        ("FLEETSYNC_FOLDER_SHARED_SETTLE".into(), "100ms".into()),
    ];
    n1.start();

    wait_until(DEADLINE, "n0 and n1 connected", || {
        n0.connected_peers() == 1 && n1.connected_peers() == 1
    });
    fs::write(n0.path("from-n0.txt"), b"hello from the member").unwrap();
    fs::write(n1.path("from-n1.txt"), b"hello from the new node").unwrap();
    wait_until(DEADLINE, "files both ways", || {
        arrives(&n1, "from-n0.txt", b"hello from the member")
            && arrives(&n0, "from-n1.txt", b"hello from the new node")
    });

    // The new node shows where it learned of n0.
    let st = n1.status().unwrap();
    let sources: Vec<&str> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["source"].as_str())
        .collect();
    assert_eq!(sources, vec!["ticket"], "{st}");

    let secret = hex::encode(t.secret);
    let body = &ticket["fleetsync".len()..];
    for n in [&n0, &n1] {
        let (code, status, err) = n.cli(&["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        for (what, text) in [("log", n.log()), ("status --json", status)] {
            assert!(
                !text.contains(&secret),
                "{}'s {what} holds the secret",
                n.name
            );
            assert!(!text.contains(body), "{}'s {what} holds the ticket", n.name);
        }
    }
    n1.stop();
    n0.stop();
}

#[test]
fn a_peer_named_localhost_connects() {
    let dir = tempfile::tempdir().unwrap();
    let mut n0 = Node::new(dir.path(), "n0", random_bytes(), folders(0));
    let mut n1 = Node::new(dir.path(), "n1", n0.secret, folders(1));
    // Only n1 knows the other, and only by name: a connection means the
    // name was resolved and dialled.
    n1.env = vec![(
        "FLEETSYNC_MESH_PEERS".into(),
        format!("{}@localhost:{}", n0.id_hex(), n0.udp.port()),
    )];
    n0.start();
    n1.start();
    wait_until(DEADLINE, "n1 connected to n0 by name", || {
        n0.connected_peers() == 1 && n1.connected_peers() == 1
    });
    fs::write(n0.path("named.txt"), b"found by name").unwrap();
    wait_until(DEADLINE, "a file over the named link", || {
        arrives(&n1, "named.txt", b"found by name")
    });
    n1.stop();
    n0.stop();
}
