//! A local user with write access to a synced folder (the node runs as
//! root): symlink races, staging directories, long names, local exposure.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared").settle("0s")]
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Does any file below `dir` contain `needle`?
fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let md = fs::symlink_metadata(&p).ok()?;
        if md.is_dir() {
            if let Some(hit) = any_file_contains(&p, needle) {
                return Some(hit);
            }
        } else if md.is_file() {
            let bytes = fs::read(&p).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(p.display().to_string());
            }
        }
    }
    None
}

/// A "secret" outside every folder: big enough to live in a blob file, with
/// a marker to look for on the peer.
fn secret_file(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let marker = format!("SECRET-{}", hex::encode(random_bytes::<8>())).into_bytes();
    let mut bytes = pseudo_random(64 << 10, 7);
    bytes.extend_from_slice(&marker);
    let p = dir.join("shadow");
    fs::write(&p, &bytes).unwrap();
    (p, marker)
}

#[test]
fn hasher_race_a_symlink_to_a_file_outside_never_sends_its_content() {
    let c = Cluster::start(2, Topology::Full, folders);
    let outside = tempfile::tempdir().unwrap();
    let (secret, marker) = secret_file(outside.path());
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    std::os::unix::fs::symlink(&secret, a.path("plain-link")).unwrap();
    // The race: a file swapped with a symlink to the secret and back (the
    // same inode, size and mtime each time) while the node hashes it.
    fs::write(a.path("swap"), vec![b'x'; 64 << 10]).unwrap();
    let (keep, evil) = (a.path(".keep"), a.path(".evil"));
    let until = Instant::now() + Duration::from_secs(6);
    let mut swaps = 0;
    while Instant::now() < until {
        std::os::unix::fs::symlink(&secret, &evil).unwrap();
        fs::rename(a.path("swap"), &keep).unwrap();
        fs::rename(&evil, a.path("swap")).unwrap();
        fs::rename(&keep, a.path("swap")).unwrap();
        swaps += 1;
    }
    fs::write(a.path("done"), b"done").unwrap();
    wait_until(DEADLINE, "b to receive the last file", || {
        b.path("done").exists() && b.path("plain-link").is_symlink()
    });
    converged(&c, "the swapped file settles");
    assert!(swaps > 100, "only {swaps} swaps");
    if let Some(hit) = any_file_contains(&b.root, &marker) {
        panic!("the secret reached the peer: {hit}\n{}", dump_logs(&[a, b]));
    }
    assert!(any_file_contains(&a.data, &marker).is_none(), "stored on a");
}

#[test]
fn local_exposure_data_dir_and_index_are_private_after_init_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let folder = dir.path().join("f");
    let out = std::process::Command::new(bin())
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--folder")
        .arg(&folder)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_of(&data), 0o700, "data dir after init");
    for f in fs::read_dir(&data).unwrap().flatten() {
        assert_eq!(mode_of(&f.path()) & 0o077, 0, "{:?}", f.path());
    }
    // A data dir an older version left open is tightened on start.
    let mut c = Cluster::new(1, Topology::Full, folders);
    let n = &mut c.nodes[0];
    fs::set_permissions(&n.data, fs::Permissions::from_mode(0o755)).unwrap();
    n.start();
    wait_until(DEADLINE, "the node to answer", || n.status().is_some());
    assert_eq!(mode_of(&n.data), 0o700, "data dir after start");
    assert_eq!(mode_of(&n.data.join("index.redb")), 0o600, "index");
    assert_eq!(mode_of(&n.data.join("identity.key")), 0o600, "key");
}

/// A raw request to the admin API with this `Host`: the status line.
fn request_with_host(addr: std::net::SocketAddr, host: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf.lines().next().unwrap_or_default().to_string()
}

#[test]
fn local_exposure_admin_api_refuses_a_foreign_host() {
    let c = Cluster::start(1, Topology::Full, folders);
    let n = &c.nodes[0];
    let port = n.admin.port();
    for evil in [
        "evil.example",
        &format!("evil.example:{port}"),
        "127.0.0.1:1",
    ] {
        let line = request_with_host(n.admin, evil);
        assert!(line.contains(" 421 "), "Host {evil}: {line}");
    }
    for good in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let line = request_with_host(n.admin, &good);
        assert!(line.contains(" 200 "), "Host {good}: {line}");
    }
    let (code, out, err) = n.cli(&["status"]);
    assert_eq!(code, 0, "fleetsync status: {out}{err}");
    wait_until(DEADLINE, "the refusal to be logged", || {
        n.log().contains("refused a request for another host")
    });
}

#[test]
fn long_names_a_240_byte_symlink_and_file_sync() {
    let c = Cluster::start(2, Topology::Full, folders);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let link = "l".repeat(240);
    let file = format!("{}.txt", "é".repeat(123));
    let full = "f".repeat(255);
    std::os::unix::fs::symlink("some/target", a.path(&link)).unwrap();
    fs::write(a.path(&file), b"long").unwrap();
    fs::write(a.path(&full), b"full").unwrap();
    wait_until(DEADLINE, "the long names on b", || {
        b.path(&link).is_symlink() && b.path(&file).exists() && b.path(&full).exists()
    });
    // Replacing the symlink goes through a temp name too.
    fs::remove_file(a.path(&link)).unwrap();
    std::os::unix::fs::symlink("other/target", a.path(&link)).unwrap();
    let t = c.wait_converged("the replaced symlink");
    assert_eq!(t.get(&link), Some(&Item::Link("other/target".into())));
    assert!(
        !b.log().contains("File name too long"),
        "{}",
        b.log_tail(30)
    );
}

fn set_mtime(p: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn long_names_a_conflict_on_a_250_byte_name_converges() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    let name = format!("{}.txt", "c".repeat(246));
    let loser =
        fleetsync_mesh::model::ShortId(u64::from_be_bytes(c.nodes[0].id[..8].try_into().unwrap()));
    let loser_mtime = 1_800_000_000;
    let base =
        fleetsync_actors::rules::conflict_name(&name, loser_mtime as i64 * 1_000_000_000, loser);
    // The first conflict name is taken already: the copy needs the next
    // one (`….1`), which must fit too.
    fs::write(c.nodes[0].path(&name), b"base").unwrap();
    fs::write(c.nodes[0].path(&base), b"an older copy").unwrap();
    c.wait_converged("the base versions");

    c.nodes[1].stop();
    fs::write(c.nodes[0].path(&name), b"edit made on a").unwrap();
    set_mtime(&c.nodes[0].path(&name), loser_mtime);
    wait_until(DEADLINE, "a to index its edit", || {
        c.nodes[0]
            .folder_status("shared")
            .is_some_and(|f| f["seq"].as_u64() >= Some(3))
    });
    fs::write(c.nodes[1].path(&name), b"edit made on b, later").unwrap();
    set_mtime(&c.nodes[1].path(&name), loser_mtime + 100);
    c.nodes[1].start();
    c.wait_connected();
    let t = c.wait_converged("both nodes to agree after the partition");
    let copy = fleetsync_actors::rules::conflict_name_try(
        &name,
        loser_mtime as i64 * 1_000_000_000,
        loser,
        1,
    );
    assert!(copy.len() <= 255);
    assert!(
        t.contains_key(&copy),
        "{:?}\n{}",
        t.keys(),
        dump_logs(&[&c.nodes[0], &c.nodes[1]])
    );
    for n in &c.nodes {
        assert_eq!(fs::read(n.path(&copy)).unwrap(), b"edit made on a");
        assert_eq!(fs::read(n.path(&name)).unwrap(), b"edit made on b, later");
    }
}

/// `wait_converged`, with both logs in the panic message.
fn converged(c: &Cluster, what: &str) -> std::collections::BTreeMap<String, Item> {
    let started = Instant::now();
    loop {
        let trees: Vec<_> = c.nodes.iter().map(|n| tree(&n.path(""))).collect();
        if trees.windows(2).all(|w| w[0] == w[1]) {
            return trees[0].clone();
        }
        if started.elapsed() > DEADLINE {
            let nodes: Vec<&Node> = c.nodes.iter().collect();
            panic!(
                "timed out waiting for {what}: {trees:?}\n{}",
                dump_logs(&nodes)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

#[test]
fn staging_dirs_a_symlinked_fleetsync_is_never_written_through() {
    let mut c = Cluster::start(2, Topology::Full, folders);
    let outside = tempfile::tempdir().unwrap();
    for sub in ["tmp", "refs"] {
        fs::create_dir(outside.path().join(sub)).unwrap();
    }
    // A local user on b replaces the staging directories with symlinks
    // (the real ones moved out of the folder, where they would be synced).
    let reserved = c.nodes[1].path(".fleetsync");
    for sub in ["tmp", "refs"] {
        fs::rename(
            reserved.join(sub),
            c.dir.path().join(format!("moved-{sub}")),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join(sub), reserved.join(sub)).unwrap();
    }
    for i in 0..5 {
        fs::write(c.nodes[0].path(&format!("small-{i}")), format!("small {i}")).unwrap();
    }
    write_big(&c.nodes[0].path("big.bin"), 3 << 20, 11);
    let t = converged(&c, "b to apply with its staging area replaced");
    assert_eq!(t.len(), 6, "{:?}", t.keys());
    let untouched = |outside: &Path| {
        for sub in ["tmp", "refs"] {
            assert_eq!(
                count_files(&outside.join(sub)),
                0,
                "written through to {sub}"
            );
        }
    };
    untouched(outside.path());
    // On restart they are replaced by plain directories, with a log line.
    c.nodes[1].stop();
    c.nodes[1].start();
    let b = &c.nodes[1];
    wait_until(DEADLINE, "the replacement to be logged", || {
        b.log().contains("replaced with a plain directory")
    });
    for sub in ["tmp", "refs"] {
        assert!(
            fs::symlink_metadata(reserved.join(sub)).unwrap().is_dir(),
            "{sub}"
        );
    }
    // The marker itself a symlink: refused (it may stand in for an
    // unmounted disk's), with its own message; still nothing written there.
    let b = &mut c.nodes[1];
    b.stop();
    fs::rename(&reserved, c.dir.path().join("moved-reserved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &reserved).unwrap();
    b.start();
    wait_until(DEADLINE, "the refusal to be logged", || {
        b.log().contains(".fleetsync is a symlink")
    });
    untouched(outside.path());
    assert_eq!(count_files(outside.path()), 2);
}
