//! `fleetsync status --watch` against running nodes, with stdout not a
//! terminal (plain blocks, no escape codes): `--count`, a transfer in
//! flight, and SIGINT ending it with exit code 0.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// Snapshots in plain output: each starts with a `-- <time>` line.
fn blocks(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("-- ")).count()
}

#[test]
fn watch_with_count_prints_that_many_plain_snapshots_and_exits_0() {
    let c = Cluster::start(1, Topology::Full, folders);
    let n = &c.nodes[0];
    let (code, out, err) = n.cli(&["status", "--watch", "--interval", "200ms", "--count", "3"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(blocks(&out), 3, "{out}");
    assert!(out.contains("folder shared: "), "{out}");
    assert!(out.contains("node "), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no escape codes off a terminal: {out:?}"
    );
}

#[test]
fn watch_shows_a_transfer_in_flight_and_stops_cleanly_on_sigint() {
    let mut c = Cluster::new(2, Topology::Full, folders);
    c.nodes[0].extra = "\n[debug]\nfault_injection = true\n".into();
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    // `a` announces the file but serves no bytes for a while: `b` keeps
    // a transfer in flight that the watch must show.
    let (code, out, err) = c.nodes[0].cli(&["debug", "hang-fetch", "--for", "5m"]);
    assert_eq!(code, 0, "{out}{err}");
    // Over the 1 MiB batch limit: a big-file transfer, tracked as such.
    fs::write(c.nodes[0].path("stuck.bin"), pseudo_random(4 << 20, 5)).unwrap();
    let b = &c.nodes[1];
    wait_until(DEADLINE, "a transfer of stuck.bin on b", || {
        b.folder_status("shared").is_some_and(|f| {
            f["transfers"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["path"] == "stuck.bin"))
        })
    });

    let out_path = c.dir.path().join("watch.out");
    let mut watch = Command::new(bin())
        .args(["status", "--watch", "--interval", "200ms", "--config"])
        .arg(&b.config)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetsync status --watch");
    let mut out = String::new();
    wait_until(DEADLINE, "two snapshots from status --watch", || {
        out = fs::read_to_string(&out_path).unwrap_or_default();
        blocks(&out) >= 2
    });
    let pid = rustix::process::Pid::from_raw(watch.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = watch.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(10) {
            watch.kill().ok();
            watch.wait().ok();
            panic!("status --watch still running 10 s after SIGINT:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read as _;
    watch.stderr.take().unwrap().read_to_string(&mut err).ok();
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}; {err}");
    let out = fs::read_to_string(&out_path).unwrap();
    assert!(
        out.contains("↓ shared/stuck.bin from ") && out.contains("ETA"),
        "the transfer line:\n{out}"
    );
    assert!(!out.contains('\x1b'), "no escape codes off a terminal");
}

#[test]
fn watch_against_no_node_says_it_is_not_running_with_code_4() {
    let c = Cluster::new(1, Topology::Full, folders);
    c.nodes[0].write_config();
    let (code, out, err) = c.nodes[0].cli(&["status", "--watch", "--count", "2"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("is it running"), "{err}");
}
