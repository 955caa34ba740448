//! Helpers for multi-node tests: real `fleetsync run` processes on
//! 127.0.0.1, each with its own temp data dir and folder, mDNS off, static
//! peers. Every process a test starts is stopped when its [`Node`] drops.
//!
//! - [`bin`] finds (or builds) the `fleetsync` binary of this workspace.
//! - [`Cluster::start`] creates N nodes linked by a [`Topology`], starts
//!   them and waits until every link is up.
//! - [`wait_until`] polls a condition every few ms until a deadline; tests
//!   never sleep for a fixed time.
//! - [`tree`] snapshots a folder (kind, content hash, exec bit, link
//!   target) for convergence checks.
//! - [`member::Member`] is a scripted fleet member (holds the secret,
//!   answers index subscriptions with whatever a test scripts).

use std::{
    collections::BTreeMap,
    io::Read,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub mod member;

pub use serde_json::Value;

/// Default time a test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `fleetsync` binary: next to this test executable's target dir
/// (`cargo test --workspace` builds it), else built once with cargo.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("FLEETSYNC_TEST_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/<test> → target/<profile>/fleetsync
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let candidate = profile_dir.join("fleetsync");
        // `cargo test --workspace` builds it (the fleetsync package has
        // integration tests of its own); running this crate alone may not.
        if !candidate.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "fleetsync", "--bin", "fleetsync"])
                .env(
                    "CARGO_TARGET_DIR",
                    profile_dir.parent().expect("target root"),
                )
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "could not build the fleetsync binary: {status:?}"
            );
        }
        assert!(
            candidate.exists(),
            "no fleetsync binary at {}",
            candidate.display()
        );
        candidate
    })
    .clone()
}

/// Poll `f` every 10 ms until it holds or `timeout` passes (then panic
/// with `what`).
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for a condition that can say what it saw: polls `f`
/// every 10 ms until it returns `Ok`, and on timeout panics with `what`
/// and the last `Err` (so a failure shows the state it stopped in).
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let seen = match f() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}; last seen: {seen}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn free_udp() -> SocketAddr {
    fleetsync_mesh::loopback::free_udp_addr().unwrap()
}

/// An iroh endpoint of a fresh identity on 127.0.0.1 (no relay), for tests
/// that play a stranger or a hand-built member from `fleetsync-mesh` parts.
pub async fn loopback_endpoint() -> fleetsync_mesh::iroh::Endpoint {
    use fleetsync_mesh::iroh::{endpoint::presets, Endpoint, RelayMode, SecretKey};
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::generate())
        .relay_mode(RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap();
    b
}

/// Deterministic pseudo-random content (fast; for big files).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `len` bytes of pseudo-random data in chunks (never all in memory).
pub fn write_big(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let chunk = 4 << 20;
    let mut left = len;
    let mut i = 0;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        f.write_all(&pseudo_random(n, seed ^ i)).unwrap();
        left -= n as u64;
        i += 1;
    }
    f.flush().unwrap();
}

pub fn hash_file(path: &Path) -> Option<String> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().to_hex().to_string())
}

/// What a folder looks like, for comparing nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Dir,
    File { hash: String, exec: bool },
    Link(String),
}

/// Snapshot of a folder tree (excluding `.fleetsync/`).
pub fn tree(root: &Path) -> BTreeMap<String, Item> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Item>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == ".fleetsync" || rel == ".fleetsyncignore" {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, Item::Link(t));
            } else if md.is_dir() {
                out.insert(rel, Item::Dir);
                walk(root, &p, out);
            } else if md.is_file() {
                out.insert(
                    rel,
                    Item::File {
                        hash: hash_file(&p).unwrap_or_default(),
                        exec: md.permissions().mode() & 0o111 != 0,
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// One folder of a node.
#[derive(Debug, Clone)]
pub struct FolderSpec {
    pub id: String,
    pub mode: String,
    pub settle: String,
    /// Further `key = value` lines of this `[[folders]]` block (values as
    /// TOML: quote strings yourself).
    pub extra: Vec<(String, String)>,
}

impl FolderSpec {
    pub fn new(id: &str) -> Self {
        FolderSpec {
            id: id.into(),
            mode: "send-receive".into(),
            settle: "100ms".into(),
            extra: Vec::new(),
        }
    }

    /// Set another folder key, e.g. `.key("max_files", "20")`.
    pub fn key(mut self, k: &str, toml_value: &str) -> Self {
        self.extra.push((k.into(), toml_value.into()));
        self
    }

    pub fn mode(mut self, m: &str) -> Self {
        self.mode = m.into();
        self
    }

    pub fn settle(mut self, s: &str) -> Self {
        self.settle = s.into();
        self
    }
}

/// A fleetsync process under test.
pub struct Node {
    pub name: String,
    pub root: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub udp: SocketAddr,
    /// The admin API's address while running: the config says port 0 and
    /// the node reports what it bound in `<data>/admin.addr` (a port picked
    /// in advance could be taken by any outgoing connection meanwhile).
    pub admin: SocketAddr,
    pub id: [u8; 32],
    pub secret: [u8; 32],
    pub folders: Vec<FolderSpec>,
    pub peers: Vec<(String, [u8; 32], SocketAddr)>,
    /// Extra lines appended to the config (e.g. `allow = [...]` in [mesh]).
    pub mesh_extra: String,
    /// Extra config sections (e.g. `[supervisor]`, `[debug]`).
    pub extra: String,
    /// Extra environment for the process (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`); its admin API
    /// is then reached through the CLI run in the same namespace.
    pub netns: Option<String>,
    /// `mdns = true` (only inside a network namespace the test made).
    pub mdns: bool,
    /// Run the node (and its CLI) through this command, e.g.
    /// `["env", "LD_PRELOAD=…", "FAKETIME=+1d"]`. It must exec the node,
    /// not fork it (`env`, `taskset`, `nice` do; the `faketime` launcher
    /// forks), so that `stop` and `kill9` reach the node itself.
    pub wrapper: Vec<String>,
    /// Start with the config file as it is (written by `fleetsync join`,
    /// say) instead of writing one from the fields above.
    pub keep_config: bool,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    /// Create a node's directories and identity (not started).
    pub fn new(base: &Path, name: &str, secret: [u8; 32], folders: Vec<FolderSpec>) -> Node {
        let root = base.join(name);
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for f in &folders {
            std::fs::create_dir_all(root.join(format!("folder-{}", f.id))).unwrap();
        }
        let out = Command::new(bin())
            .args(["id", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run fleetsync id");
        assert!(out.status.success(), "fleetsync id failed: {out:?}");
        let id_hex = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let id: [u8; 32] = hex::decode(&id_hex).unwrap().try_into().unwrap();
        Node {
            name: name.into(),
            config: data.join("fleetsync.toml"),
            root,
            data,
            udp: free_udp(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            id,
            secret,
            folders,
            peers: vec![],
            mesh_extra: String::new(),
            extra: String::new(),
            env: Vec::new(),
            netns: None,
            mdns: false,
            wrapper: Vec::new(),
            keep_config: false,
            child: None,
            starts: 0,
        }
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    pub fn folder(&self, id: &str) -> PathBuf {
        self.root.join(format!("folder-{id}"))
    }

    /// Path inside the first folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.folder(&self.folders[0].id).join(rel)
    }

    pub fn link_to(&mut self, other: &Node) {
        self.peers.push((other.name.clone(), other.id, other.udp));
    }

    pub fn write_config(&self) {
        let mut t = String::new();
        t.push_str(&format!("data_dir = {:?}\n\n[mesh]\nlisten = \"{}\"\nfleet_secret = \"{}\"\nmdns = {}\npeers = [", self.data, self.udp, hex::encode(self.secret), self.mdns));
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|(_, id, a)| format!("\"{}@{}\"", hex::encode(id), a))
            .collect();
        t.push_str(&peers.join(", "));
        t.push_str("]\n");
        t.push_str(&self.mesh_extra);
        t.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nlevel = \"debug\"\n");
        t.push_str(&self.extra);
        for f in &self.folders {
            t.push_str(&format!(
                "\n[[folders]]\nid = \"{}\"\npath = {:?}\nmode = \"{}\"\nsettle = \"{}\"\nrescan = \"1h\"\n",
                f.id,
                self.folder(&f.id),
                f.mode,
                f.settle,
            ));
            for (k, v) in &f.extra {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
        std::fs::write(&self.config, t).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join(format!("node-{}.log", self.starts))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        if !self.keep_config {
            self.write_config();
        }
        self.starts += 1;
        // The previous run's address (after a kill -9) must not be read.
        let addr_file = self.data.join("admin.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = self.command();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start fleetsync");
        self.child = Some(child);
        let name = self.name.clone();
        let mut admin = None;
        wait_until(
            Duration::from_secs(30),
            &format!("{name}'s admin API"),
            || {
                self.poll_exit();
                admin = admin.or_else(|| {
                    std::fs::read_to_string(&addr_file)
                        .ok()
                        .and_then(|t| t.trim().parse::<SocketAddr>().ok())
                });
                admin.is_some_and(|a| {
                    self.netns.is_some()
                        || get(a, "/health").is_some()
                        || get(a, "/status").is_some()
                })
            },
        );
        self.admin = admin.expect("waited for it");
        if self.netns.is_some() {
            wait_until(Duration::from_secs(30), &format!("{name}'s status"), || {
                self.status().is_some()
            });
        }
    }

    /// `fleetsync`, inside the node's network namespace if it has one
    /// (`ip netns exec` execs it: the child is the node itself), through
    /// the node's wrapper if it has one.
    fn command(&self) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        argv.extend(self.wrapper.iter().map(Into::into));
        argv.push(bin().into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        // The node and the CLI see only the variables the test gives them:
        // the test runner's own (`FLEETSYNC_IT_KEEP`, an operator's
        // FLEETSYNC_*) would be refused or would change the config.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLEETSYNC_") {
                c.env_remove(k);
            }
        }
        c
    }

    fn poll_exit(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "{} exited early with {st}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Wait (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Send a signal (SIGSTOP / SIGCONT: freeze and thaw the node).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = self
            .pid()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32));
        let pid = pid.expect("node is running");
        rustix::process::kill_process(pid, sig).expect("signal the node");
    }

    /// Run `fleetsync ARGS --config <this node's config>`; exit code, stdout
    /// and stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run fleetsync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// This node's actor `name` as `status --json` shows it.
    pub fn actor(&self, name: &str) -> Option<Value> {
        let st = self.status()?;
        st["actors"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }

    /// SIGKILL: the crash case.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status(&self) -> Option<Value> {
        if self.netns.is_some() {
            // Any reply counts: `status` exits 5/6 (unhealthy, faulted)
            // with the JSON still on stdout.
            let (_, out, _) = self.cli(&["status", "--json"]);
            return serde_json::from_str(&out).ok();
        }
        get(self.admin, "/status").and_then(|b| serde_json::from_str(&b).ok())
    }

    pub fn folder_status(&self, id: &str) -> Option<Value> {
        let st = self.status()?;
        st["folders"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
    }

    /// Does `folder`'s status say it is in sync with nothing pending?
    pub fn in_sync(&self, folder: &str) -> bool {
        self.folder_status(folder)
            .is_some_and(|f| f["in_sync"] == true && f["pending"] == 0)
    }

    pub fn connected_peers(&self) -> usize {
        self.status()
            .and_then(|s| {
                s["peers"]
                    .as_array()
                    .map(|p| p.iter().filter(|p| p["connected"] == true).count())
            })
            .unwrap_or(0)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            out.push_str(
                &std::fs::read_to_string(self.root.join(format!("node-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal HTTP GET against a node's admin API.
pub fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    Some(body.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Everyone knows everyone.
    Full,
    /// 0 – 1 – 2 – …: each knows only its neighbours, and peer exchange
    /// is off so that the chain stays one (changes must be relayed).
    Chain,
    /// Every node knows only node 0; node 0 knows nobody (peer exchange
    /// must do the rest).
    Star,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// `n` nodes sharing a secret, each with the given folders.
    pub fn new(n: usize, topo: Topology, folders: impl Fn(usize) -> Vec<FolderSpec>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("fleetsync-it-")
            .tempdir()
            .unwrap();
        let secret = random_bytes::<32>();
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node::new(dir.path(), &format!("n{i}"), secret, folders(i)))
            .collect();
        for i in 0..n {
            for j in 0..n {
                let linked = match topo {
                    Topology::Full => i != j,
                    Topology::Chain => i.abs_diff(j) == 1,
                    Topology::Star => i != 0 && j == 0,
                };
                if linked {
                    let other = (nodes[j].name.clone(), nodes[j].id, nodes[j].udp);
                    nodes[i].peers.push(other);
                }
            }
        }
        if let Topology::Chain = topo {
            for n in &mut nodes {
                n.mesh_extra.push_str("peer_exchange = false\n");
            }
        }
        Cluster { dir, nodes }
    }

    /// Start every node and wait until each has all its links up.
    pub fn start(n: usize, topo: Topology, folders: impl Fn(usize) -> Vec<FolderSpec>) -> Cluster {
        let mut c = Cluster::new(n, topo, folders);
        for node in &mut c.nodes {
            node.start();
        }
        c.wait_connected();
        c
    }

    pub fn wait_connected(&self) {
        for node in &self.nodes {
            let want = node.peers.len();
            wait_until(
                DEADLINE,
                &format!("{} to connect to {want} peers", node.name),
                || node.connected_peers() >= want,
            );
        }
    }

    /// Wait until every node's first folder has the same tree, and return it.
    pub fn wait_converged(&self, what: &str) -> BTreeMap<String, Item> {
        let mut last = BTreeMap::new();
        wait_until(DEADLINE, what, || {
            let trees: Vec<_> = self.nodes.iter().map(|n| tree(&n.path(""))).collect();
            let same = trees.windows(2).all(|w| w[0] == w[1]);
            last = trees[0].clone();
            same
        });
        last
    }
}

/// Panic message helper: every node's log tail.
pub fn dump_logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(60)))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Cluster {
    /// On a failing test, show what the nodes said (the temp dir is about
    /// to go); `FLEETSYNC_IT_KEEP=1` keeps the whole directory instead.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let nodes: Vec<&Node> = self.nodes.iter().collect();
            eprintln!("{}", dump_logs(&nodes));
        }
        if std::env::var_os("FLEETSYNC_IT_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// Set a file's mtime to `secs` after the epoch (tests that need a known
/// order of edits, whatever the clock did).
pub fn set_mtime(p: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// The conflict copies of `stem` in the root of `node`'s first folder,
/// sorted.
pub fn conflict_copies(node: &Node, stem: &str) -> Vec<String> {
    let prefix = format!("{stem}.sync-conflict-");
    let mut v: Vec<String> = std::fs::read_dir(node.path(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|f| f.starts_with(&prefix))
        .collect();
    v.sort();
    v
}
