//! The admin API on a Unix socket (node/src/admin/socket.rs): created
//! 0660 with the node's group, enough for `status`, `wait` and `doctor` as
//! a user of that group who may not read the 0600 config (the fleet secret
//! is in it); refused to a user outside the group; a stale one from a
//! killed node replaced; gone after a clean stop.
//!
//! The tests run as root; the unprivileged user is `nobody` (uid 65534)
//! through `setpriv` (util-linux), once with the socket's group as its
//! only group and once with its own group.

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
};

use fleetsync_integration_tests::*;

const NOBODY: u32 = 65534;
const EXIT_UNREACHABLE: i32 = 4;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// The run of one command: exit code, stdout, stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

/// `fleetsync ARGS`, as uid 65534 with `gid` as its only group when
/// `as_gid` is given, else as the test's user; no FLEETSYNC_* from the
/// test's environment.
fn fleetsync(as_gid: Option<u32>, args: &[&str]) -> Run {
    let mut cmd = match as_gid {
        Some(gid) => {
            let mut c = Command::new(setpriv());
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETSYNC_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).output().expect("run fleetsync");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `setpriv`, or a failure saying how to get it.
fn setpriv() -> &'static str {
    let found = Command::new("setpriv").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "setpriv (util-linux) is needed to run the CLI as another user: \
         run scripts/install-test-deps.sh"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "this test switches users with setpriv and must run as root"
    );
    "setpriv"
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_group_member_reaches_the_node_through_the_socket_without_the_config_others_do_not() {
    setpriv();
    let mut c = Cluster::new(1, Topology::Full, folders);
    let n = &mut c.nodes[0];
    n.start();
    let sock = n.data.join("admin.sock");
    let config = n.config.to_str().unwrap().to_string();

    // The socket: a socket, 0660, the node's group (root's, here: one
    // nobody is not in).
    let meta = std::fs::symlink_metadata(&sock).expect("the node made <data_dir>/admin.sock");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    let group = meta.gid();
    assert_ne!(group, NOBODY);

    // Directories nobody may pass through but not list; the config holds
    // the secret and only root reads it.
    for d in [c.dir.path(), &n.root, &n.data] {
        chmod(d, 0o711);
    }
    chmod(&n.config, 0o600);
    let cat = Command::new(setpriv())
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={group}")])
        .args(["--clear-groups", "cat", &config])
        .output()
        .unwrap();
    assert!(!cat.status.success(), "nobody can read the config: {cat:?}");

    // Root, with only the socket: no config read at all.
    let short = &n.id_hex()[..10];
    let r = fleetsync(None, &["status", "--socket", sock.to_str().unwrap()]);
    assert_eq!(r.code, 0, "status --socket: {}{}", r.out, r.err);
    assert!(r.out.contains(short), "{}", r.out);

    // A member of the socket's group who cannot read the config: the CLI
    // falls back to the socket beside it.
    let r = fleetsync(Some(group), &["status", "--config", &config]);
    assert_eq!(r.code, 0, "status as a group member: {}{}", r.out, r.err);
    assert!(r.out.contains(short), "{}", r.out);
    let r = fleetsync(
        Some(group),
        &["status", "--json", "--socket", sock.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "status --socket as a group member: {}", r.err);
    assert!(r.out.contains(&n.id_hex()), "{}", r.out);
    let r = fleetsync(
        Some(group),
        &[
            "wait",
            "--in-sync",
            "--allow-alone",
            "--timeout",
            "60s",
            "--config",
            &config,
        ],
    );
    assert_eq!(r.code, 0, "wait as a group member: {}{}", r.out, r.err);
    let r = fleetsync(Some(group), &["doctor", "--json", "--config", &config]);
    let report: serde_json::Value = serde_json::from_str(&r.out)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}{}", r.out, r.err));
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
    };
    assert_eq!(check("node")["status"], "ok", "{report}");
    assert_eq!(check("config")["status"], "warn", "{report}");
    assert!(
        check("config")["detail"]
            .as_str()
            .unwrap()
            .contains("admin socket"),
        "{report}"
    );

    // Not in the group: refused, saying what would let them in.
    let r = fleetsync(Some(NOBODY), &["status", "--config", &config]);
    assert_eq!(r.code, EXIT_UNREACHABLE, "{}{}", r.out, r.err);
    assert!(
        r.err.contains("not allowed to use the admin socket")
            && r.err.contains("group")
            && r.err.contains("Permission denied"),
        "{}",
        r.err
    );
    assert!(!r.out.contains(short), "{}", r.out);

    // A killed node leaves its socket; the next start replaces it.
    n.kill9();
    assert!(sock.exists(), "kill -9 cannot remove the socket");
    let r = fleetsync(None, &["status", "--socket", sock.to_str().unwrap()]);
    assert_eq!(r.code, EXIT_UNREACHABLE, "stale socket: {}{}", r.out, r.err);
    assert!(r.err.contains("is it running?"), "{}", r.err);
    n.start();
    // The node makes its data dir owner-only again on start.
    chmod(&n.data, 0o711);
    let r = fleetsync(Some(group), &["status", "--config", &config]);
    assert_eq!(r.code, 0, "after the restart: {}{}", r.out, r.err);

    // A clean stop removes it.
    assert!(n.stop().is_some_and(|s| s.success()), "{}", n.log_tail(20));
    assert!(!sock.exists(), "the socket outlived the node");
}

#[test]
fn admin_socket_off_and_a_set_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(1, Topology::Full, folders);
    let n = &mut c.nodes[0];
    let sock = dir.path().join("fs.sock");
    n.env
        .push(("FLEETSYNC_ADMIN_SOCKET".into(), sock.display().to_string()));
    n.start();
    assert!(sock.exists(), "admin socket at FLEETSYNC_ADMIN_SOCKET");
    assert!(!n.data.join("admin.sock").exists());
    // The same variable points the CLI at it.
    let out = Command::new(bin())
        .arg("status")
        .env("FLEETSYNC_ADMIN_SOCKET", &sock)
        .env_remove("FLEETSYNC_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    n.stop();
    assert!(!sock.exists());

    n.env = vec![("FLEETSYNC_ADMIN_SOCKET".into(), "off".into())];
    n.start();
    assert!(!sock.exists() && !n.data.join("admin.sock").exists());
    n.stop();
}
