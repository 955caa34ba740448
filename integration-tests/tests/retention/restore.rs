//! `fleetsync restore`: kept versions come back as a new local change that
//! reaches every node, even the ones that deleted them.

use std::{fs, os::unix::fs::PermissionsExt, time::SystemTime};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// `fleetsync restore` on `node`, which must succeed; its stdout.
fn restore(node: &Node, args: &[&str]) -> String {
    let mut all = vec!["restore", "--folder", "shared"];
    all.extend_from_slice(args);
    let (code, out, err) = node.cli(&all);
    assert_eq!(code, 0, "restore {args:?}: {out}\n{err}");
    out
}

/// Wait until every node holds exactly `files` (path → content).
fn wait_everywhere(c: &Cluster, files: &[(&str, &[u8])], what: &str) {
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("{what} on {}", n.name), || {
            files
                .iter()
                .all(|(p, want)| fs::read(n.path(p)).is_ok_and(|got| got == *want))
        });
    }
}

fn gone_everywhere(c: &Cluster, paths: &[&str]) {
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("the deletes on {}", n.name), || {
            paths.iter().all(|p| !n.path(p).exists())
        });
    }
}

#[test]
fn a_deleted_file_and_a_deleted_directory_come_back_on_every_node() {
    let c = Cluster::start(3, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", pseudo_random(1_000, 1)),
        ("proj/a.bin", pseudo_random(300_000, 2)),
        ("proj/sub/b.txt", b"small".to_vec()),
        ("proj/sub/deeper/c", pseudo_random(5_000, 3)),
        ("proj/empty", Vec::new()),
    ];
    for (p, data) in &files {
        fs::create_dir_all(a.path(p).parent().unwrap()).unwrap();
        fs::write(a.path(p), data).unwrap();
    }
    let want: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    wait_everywhere(&c, &want, "the files");
    // Every node settled before the delete. In one CI run `proj` stayed
    // on n1 after the delete: the origin's index never had it (7 of 8
    // paths indexed), not reproduced in 25 runs since. A directory made
    // locally and marked expected by a round was one way to lose it (fixed:
    // `tree::dirs_to_make`); the hasher now logs at debug when it skips an
    // expected directory, so a recurrence shows whether that is the path.
    wait_until(DEADLINE, "every node in sync", || {
        c.nodes.iter().all(|n| n.in_sync("shared"))
    });

    // The accident, on A: every other node applies it (and keeps versions).
    fs::remove_file(a.path("notes.txt")).unwrap();
    fs::remove_dir_all(a.path("proj")).unwrap();
    gone_everywhere(&c, &["notes.txt", "proj"]);

    // Undo it from B, which kept what it deleted.
    let out = restore(b, &["proj"]);
    assert!(out.contains("restored 4 files of proj"), "{out}");
    assert!(out.contains("proj/sub/deeper/c"), "{out}");
    let out = restore(b, &["notes.txt"]);
    assert!(out.contains("restored 1 file of notes.txt"), "{out}");
    wait_everywhere(&c, &want, "the restored files");
    c.wait_converged("the same tree everywhere");

    // Nothing left to restore: every path holds its newest kept content.
    let out = restore(b, &["."]);
    assert!(out.contains("restored 0 files"), "{out}");
}

/// The current time in RFC 3339 with milliseconds (what `--at` takes).
fn now_rfc3339() -> String {
    let t = SystemTime::now();
    // A version kept from now on is kept strictly after `t`.
    while humantime::format_rfc3339_millis(SystemTime::now()).to_string()
        == humantime::format_rfc3339_millis(t).to_string()
    {
        std::thread::yield_now();
    }
    humantime::format_rfc3339_millis(t).to_string()
}

#[test]
fn at_a_time_and_by_version_after_two_overwrites() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let f = "config/app.toml";
    fs::create_dir_all(a.path("config")).unwrap();
    fs::write(a.path(f), "version = 1\n").unwrap();
    wait_everywhere(&c, &[(f, b"version = 1\n")], "the first content");
    let t1 = now_rfc3339();
    fs::write(a.path(f), "version = 2\n").unwrap();
    wait_everywhere(&c, &[(f, b"version = 2\n")], "the second content");
    let t2 = now_rfc3339();
    fs::write(a.path(f), "version = 3, broken\n").unwrap();
    wait_everywhere(&c, &[(f, b"version = 3, broken\n")], "the third content");

    // As of t1: the first content; what it replaces is kept (undo).
    let (code, out, err) = b.cli(&["restore", "--folder", "shared", f, "--at", &t1, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let undo = report["restored"][0]["kept_current"]
        .as_str()
        .unwrap_or_else(|| panic!("what was replaced is kept: {report}"))
        .to_string();
    wait_everywhere(&c, &[(f, b"version = 1\n")], "the content as of t1");

    // As of t2: the second one.
    let out = restore(b, &[f, "--at", &t2]);
    assert!(out.contains("restored 1 file"), "{out}");
    wait_everywhere(&c, &[(f, b"version = 2\n")], "the content as of t2");

    // By version: the content the first restore replaced comes back.
    restore(b, &[f, "--version", &undo]);
    wait_everywhere(&c, &[(f, b"version = 3, broken\n")], "the undone restore");
    c.wait_converged("the same tree on both nodes");
}

fn mode_of(n: &Node, p: &str) -> Option<u32> {
    fs::metadata(n.path(p))
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[test]
fn an_executable_comes_back_executable_on_every_node() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let script = pseudo_random(2_000, 7);
    fs::create_dir_all(a.path("bin")).unwrap();
    fs::write(a.path("bin/run.sh"), &script).unwrap();
    fs::set_permissions(a.path("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("the executable on {}", n.name), || {
            mode_of(n, "bin/run.sh") == Some(0o755)
        });
    }

    fs::remove_file(a.path("bin/run.sh")).unwrap();
    gone_everywhere(&c, &["bin/run.sh"]);
    let out = restore(b, &["bin/run.sh"]);
    assert!(out.contains("restored 1 file"), "{out}");
    wait_everywhere(&c, &[("bin/run.sh", &script)], "the restored file");
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("mode 0o755 on {}", n.name), || {
            mode_of(n, "bin/run.sh") == Some(0o755)
        });
    }
    c.wait_converged("the same tree on both nodes");
}
