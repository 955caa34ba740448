//! `fleetsync doctor` against real nodes: a peer that is up (ok, with its
//! rtt), the same peer stopped (a warning with a fix), the node itself
//! stopped (a failure), and a config that does not load (a failure naming
//! the key).

use std::{
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;

/// doctor's exit codes (node/src/doctor/mod.rs).
const EXIT_FAIL: i32 = 1;
const EXIT_WARN: i32 = 2;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Poll `fleetsync doctor` on `n` until `want(code, stdout)` holds; panics
/// with the last output when the deadline passes.
fn doctor_until(n: &Node, what: &str, want: impl Fn(i32, &str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (code, out, err) = n.cli(&["doctor"]);
        if want(code, &out) {
            return out;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for doctor on {}: {what}; last exit {code}:\n{out}{err}",
            n.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The report line of check `name`, and the line after it.
fn line_of<'a>(out: &'a str, name: &str) -> Option<(&'a str, Option<&'a str>)> {
    let lines: Vec<&str> = out.lines().collect();
    let i = lines.iter().position(|l| {
        l.split_once("  ")
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{name}: ")))
    })?;
    Some((lines[i], lines.get(i + 1).copied()))
}

#[test]
fn doctor_passes_with_the_peer_and_its_rtt_warns_when_it_stops_and_fails_when_the_node_does() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    // The harness writes configs 0644; doctor rightly warns about a
    // readable fleet secret, which is not what this test is about.
    for n in &c.nodes {
        std::fs::set_permissions(&n.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let peer = format!("peer {}", &c.nodes[1].id_hex()[..10]);

    let out = doctor_until(&c.nodes[0], "exit 0 with the peer's rtt", |code, out| {
        code == 0
            && line_of(out, &peer).is_some_and(|(l, _)| {
                l.starts_with("ok ") && l.contains("rtt ") && !l.contains("not measured")
            })
    });
    for check in [
        "config",
        "data dir",
        "folder shared",
        "node",
        "clock offset",
        "recent errors",
    ] {
        let (l, _) = line_of(&out, check).unwrap_or_else(|| panic!("no {check} line:\n{out}"));
        assert!(l.starts_with("ok "), "{l}\n{out}");
    }
    let (code, json, err) = c.nodes[0].cli(&["doctor", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}{err}"));
    assert_eq!(code, 0, "{json}");
    assert_eq!(v["summary"]["fail"], 0, "{json}");
    let p = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == peer.as_str())
        .unwrap_or_else(|| panic!("no {peer} in {json}"));
    assert_eq!(p["status"], "ok", "{json}");
    assert!(p["fix"].is_null(), "{json}");

    c.nodes[1].stop();
    let out = doctor_until(&c.nodes[0], "the stopped peer reported", |code, out| {
        code == EXIT_WARN
            && line_of(out, &peer)
                .is_some_and(|(l, _)| l.starts_with("warn ") && l.contains("not connected"))
    });
    let (_, fix) = line_of(&out, &peer).unwrap();
    assert!(
        fix.is_some_and(
            |f| f.trim_start().starts_with("fix: ") && f.contains("systemctl start fleetsync")
        ),
        "{out}"
    );

    c.nodes[0].stop();
    let (code, out, err) = c.nodes[0].cli(&["doctor"]);
    assert_eq!(code, EXIT_FAIL, "{out}{err}");
    let (node, fix) = line_of(&out, "node").unwrap_or_else(|| panic!("no node line:\n{out}"));
    assert!(
        node.starts_with("fail ") && node.contains("not running"),
        "{out}"
    );
    assert!(fix.is_some_and(|f| f.contains("fix: ")), "{out}");
    // What it can check offline, it still does.
    let (dir, _) = line_of(&out, "data dir").unwrap();
    assert!(dir.starts_with("ok "), "{out}");
}

#[test]
fn a_config_that_does_not_load_is_a_fail_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleetsync.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[mesh]\nlisten = \"not an address\"\nfleet_secret = \"{}\"\n",
            dir.path().join("data"),
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["doctor", "--config"])
        .arg(&config)
        .env_remove("FLEETSYNC_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(EXIT_FAIL),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (line, fix) = line_of(&text, "config").unwrap_or_else(|| panic!("no config line:\n{text}"));
    assert!(
        line.starts_with("fail ") && line.contains("mesh.listen"),
        "{text}"
    );
    assert!(fix.is_some_and(|f| f.contains("fix: ")), "{text}");
}
