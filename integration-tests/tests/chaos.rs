//! Chaos with real processes: kill -9 at seeded-random points during a
//! stream of transfers, and a node whose clock runs a day ahead.
//!
//! The kill test prints its seed; `FLEETSYNC_CHAOS_SEED=<seed>` replays the
//! same schedule of operations and kills (the timing of the processes
//! themselves still varies from run to run).

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use fleetsync_integration_tests::*;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// A small seeded generator (xorshift64*): the same seed, the same choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.next() as usize % items.len()].clone()
    }
}

fn chaos_seed() -> u64 {
    match std::env::var("FLEETSYNC_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("FLEETSYNC_CHAOS_SEED must be a u64"),
        Err(_) => u64::from_le_bytes(random_bytes::<8>()),
    }
}

fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What the writer did: the folder it should have left, every content it
/// ever put there, and every path it ever touched.
#[derive(Default)]
struct Written {
    model: BTreeMap<String, Item>,
    hashes: HashSet<String>,
    paths: Vec<String>,
    ops: usize,
}

/// Writes a stream of changes into one node's folder until stopped: new
/// small and big files, overwrites, renames, deletes, in a few
/// directories. Every content is unique and staged outside the folder,
/// then renamed in, so the folder only ever shows complete versions; its
/// hash is recorded before it appears.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<Written>>,
    thread: Option<JoinHandle<()>>,
}

const DIRS: [&str; 3] = ["", "d1/", "d2/deeper/"];

impl Writer {
    fn start(folder: PathBuf, staging: PathBuf, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Written::default()));
        let (flag, out) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let mut w = StreamState::new(folder, staging, seed, out);
            while !flag.load(Ordering::Relaxed) {
                w.step();
            }
        });
        Writer {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.written.lock().unwrap())
    }

    fn hashes(&self) -> HashSet<String> {
        self.written.lock().unwrap().hashes.clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct StreamState {
    folder: PathBuf,
    staging: PathBuf,
    rng: Rng,
    n: u64,
    live: Vec<String>,
    out: Arc<Mutex<Written>>,
}

impl StreamState {
    fn new(folder: PathBuf, staging: PathBuf, seed: u64, out: Arc<Mutex<Written>>) -> Self {
        fs::create_dir_all(&staging).unwrap();
        {
            let mut w = out.lock().unwrap();
            for d in ["d1", "d2", "d2/deeper"] {
                fs::create_dir_all(folder.join(d)).unwrap();
                w.model.insert(d.into(), Item::Dir);
            }
        }
        StreamState {
            folder,
            staging,
            rng: Rng::new(seed ^ 0x5752_4954_4552),
            n: 0,
            live: Vec::new(),
            out,
        }
    }

    fn step(&mut self) {
        self.n += 1;
        let roll = self.rng.range(0, 100);
        match roll {
            _ if self.live.len() < 5 || roll < 35 => {
                let path = format!("{}f{:04}", self.rng.pick(&DIRS), self.n);
                self.put(&path);
            }
            35..=59 => {
                let path = self.rng.pick(&self.live);
                self.put(&path);
            }
            60..=79 => self.rename(),
            _ => self.delete(),
        }
        self.out.lock().unwrap().ops += 1;
        // Pacing between operations (not a wait for a condition).
        std::thread::sleep(Duration::from_millis(self.rng.range(10, 40)));
    }

    /// A new version of `path`: one in twelve is big (4–16 MiB, so a kill
    /// often lands mid-transfer), the rest 1 byte – 64 KiB.
    fn put(&mut self, path: &str) {
        let staged = self.staging.join("next");
        let seed = self.rng.next();
        let hash = if self.rng.range(0, 12) == 0 {
            write_big(&staged, self.rng.range(4 << 20, 16 << 20), seed);
            hash_file(&staged).unwrap()
        } else {
            let bytes = pseudo_random(self.rng.range(1, 64 << 10) as usize, seed);
            fs::write(&staged, &bytes).unwrap();
            content_hash(&bytes)
        };
        {
            let mut w = self.out.lock().unwrap();
            w.hashes.insert(hash.clone());
            w.model.insert(path.into(), file_item(hash));
            w.paths.push(path.into());
        }
        fs::rename(&staged, self.folder.join(path)).unwrap();
        if !self.live.iter().any(|p| p == path) {
            self.live.push(path.into());
        }
    }

    /// Rename a live file to a new name (never reused), maybe in another
    /// directory.
    fn rename(&mut self) {
        let i = self.rng.range(0, self.live.len() as u64) as usize;
        let from = self.live.swap_remove(i);
        let to = format!("{}r{:04}", self.rng.pick(&DIRS), self.n);
        {
            let mut w = self.out.lock().unwrap();
            let item = w.model.remove(&from).unwrap();
            w.model.insert(to.clone(), item);
            w.paths.push(to.clone());
        }
        fs::rename(self.folder.join(&from), self.folder.join(&to)).unwrap();
        self.live.push(to);
    }

    fn delete(&mut self) {
        let i = self.rng.range(0, self.live.len() as u64) as usize;
        let gone = self.live.swap_remove(i);
        self.out.lock().unwrap().model.remove(&gone);
        fs::remove_file(self.folder.join(&gone)).unwrap();
    }
}

fn file_item(hash: String) -> Item {
    Item::File { hash, exec: false }
}

/// Every file in `root` holds a content the writer produced: nothing
/// partial, nothing invented.
/// `hashes` is read after the tree: the writer records a content before it
/// appears.
fn assert_only_written_contents(node: &Node, hashes: impl Fn() -> HashSet<String>, when: &str) {
    let snapshot = tree(&node.path(""));
    let hashes = hashes();
    for (path, item) in snapshot {
        if let Item::File { hash, .. } = item {
            assert!(
                hashes.contains(&hash),
                "{when}: {}'s {path} holds content no writer produced (partial?) {hash}",
                node.name
            );
        }
    }
}

/// The history `node` keeps for `path` (`GET /history`).
fn history(node: &Node, path: &str) -> Vec<Value> {
    let body = get(node.admin, &format!("/history?folder=shared&path={path}"))
        .unwrap_or_else(|| panic!("{}: history of {path}", node.name));
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Nothing applied twice, nothing re-announced: every version in a path's
/// history is a distinct content (the writer never reuses one on a path)
/// or its one deletion; none is a conflict; and a node that only received
/// the path never authored a version of it.
fn check_history(node: &Node, writer_short: &str, path: &str) {
    let rows = history(node, path);
    let mut seen = HashSet::new();
    for r in &rows {
        let key = if r["deleted"] == true {
            "deleted".to_string()
        } else {
            r["hash"].as_str().unwrap_or("-").to_string()
        };
        let note = r["note"].as_str().unwrap_or("");
        let what = format!("{}: {path}: {rows:#?}", node.name);
        assert!(seen.insert(key), "a version recorded twice on {what}");
        assert!(!note.contains("conflict"), "a conflict on {what}");
        assert_eq!(
            r["modified_by"].as_str(),
            Some(writer_short),
            "a version not authored by the writer on {what}"
        );
    }
}

/// Kills in a seeded order: `each` of the sending node (0) and of the
/// receiving node (1), shuffled.
fn kill_schedule(rng: &mut Rng, each: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..2 * each).map(|i| i % 2).collect();
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Issue 10, case 13: kill -9 at seeded-random points, on the sending and
/// on the receiving node, during a stream of big and small files,
/// renames and deletes. Each killed node holds only complete, written
/// contents; after the last restart all three nodes converge on exactly
/// what the writer left, and no history shows a version twice, a
/// conflict, or a version authored by a node that only received it.
#[test]
fn kill9_at_random_points_during_a_stream_leaves_only_complete_files_and_converges() {
    let seed = chaos_seed();
    eprintln!("chaos seed {seed} (replay: FLEETSYNC_CHAOS_SEED={seed})");
    let started = Instant::now();
    let mut c = Cluster::start(3, Topology::Full, folders);
    let mut rng = Rng::new(seed);
    let writer = Writer::start(c.nodes[0].path(""), c.dir.path().join("staging"), seed);
    let schedule = kill_schedule(&mut rng, 5);
    for (round, &victim) in schedule.iter().enumerate() {
        // A seeded-random point in the stream (pacing, not a wait).
        std::thread::sleep(Duration::from_millis(rng.range(300, 1500)));
        c.nodes[victim].kill9();
        let when = format!("kill {round} (seed {seed})");
        assert_only_written_contents(&c.nodes[victim], || writer.hashes(), &when);
        std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        c.nodes[victim].start();
    }
    let written = writer.finish();
    let killed = started.elapsed();
    converge_on(&c, &written.model, seed);
    for n in &c.nodes {
        assert_only_written_contents(n, || written.hashes.clone(), "after the last restart");
    }
    let writer_short = &c.nodes[0].id_hex()[..10];
    for path in &written.paths {
        for n in &c.nodes {
            check_history(n, writer_short, path);
        }
    }
    eprintln!(
        "seed {seed}: {} operations, {} contents, {} kills ({schedule:?}) in {killed:?}; converged at {:?}",
        written.ops,
        written.hashes.len(),
        schedule.len(),
        started.elapsed()
    );
}

/// Every node's folder equals the writer's final state.
fn converge_on(c: &Cluster, model: &BTreeMap<String, Item>, seed: u64) {
    let mut diff = String::new();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            DEADLINE,
            "all nodes to hold the writer's final state",
            || {
                diff.clear();
                for n in &c.nodes {
                    let t = tree(&n.path(""));
                    if &t != model {
                        diff = describe_diff(&n.name, &t, model);
                        return false;
                    }
                }
                true
            },
        )
    }));
    assert!(ok.is_ok(), "seed {seed}: no convergence: {diff}");
}

fn describe_diff(
    name: &str,
    got: &BTreeMap<String, Item>,
    want: &BTreeMap<String, Item>,
) -> String {
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    format!("{name}: extra {extra:?}, missing {missing:?}, different {differ:?}")
}

/// A day, as `faketime -f '+1d'` shifts the clock.
const DAY: Duration = Duration::from_secs(86_400);

/// Where a distribution puts libfaketime.
const LIBFAKETIME: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

fn find_libfaketime() -> Option<PathBuf> {
    let on_path = std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let lib = LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.exists());
    lib.filter(|_| on_path)
}

/// libfaketime, installed by the project's own script when missing
/// (`scripts/install-test-deps.sh`, which `.ci/run` also calls). Without
/// it the test fails and says why: it never passes silently.
fn libfaketime() -> PathBuf {
    if let Some(lib) = find_libfaketime() {
        return lib;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-deps.sh");
    let ran = std::process::Command::new(&script).status();
    find_libfaketime().unwrap_or_else(|| {
        panic!(
            "faketime (libfaketime) is missing and {} could not install it ({ran:?}): \
             run it as root, or install the distribution's `faketime` package",
            script.display()
        )
    })
}

/// Run `node` a day ahead: libfaketime preloaded through `env` (which
/// execs the node, so `stop`/`kill9` reach it; the `faketime` launcher
/// would fork). Only the wall clock moves: monotonic clocks (tokio's and
/// QUIC's timers) stay real.
fn a_day_ahead(node: &mut Node, lib: &Path) {
    node.wrapper = vec![
        "env".into(),
        format!("LD_PRELOAD={}", lib.display()),
        "FAKETIME=+1d".into(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ];
}

/// Write `text` at `rel` as an editor on a host with this clock would:
/// the kernel stamps the real time, so the mtime is set to `clock`'s now.
fn edit(node: &Node, rel: &str, text: &str, ahead: Duration) {
    let p = node.path(rel);
    fs::write(&p, text).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::now() + ahead).unwrap();
}

fn read(node: &Node, rel: &str) -> Option<String> {
    fs::read_to_string(node.path(rel)).ok()
}

/// When `node` recorded the last version of `rel`, by its own clock (the
/// file is placed a moment before its record is committed).
fn recorded_at(node: &Node, rel: &str) -> SystemTime {
    let mut ns = None;
    wait_until(
        DEADLINE,
        &format!("{}'s record of {rel}", node.name),
        || {
            ns = history(node, rel)
                .last()
                .and_then(|r| r["recorded_ns"].as_i64());
            ns.is_some()
        },
    );
    let ns = ns.unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
}

/// Seconds from the real now to `t` (negative: in the past).
fn offset_from_now(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Issue 10, case 14: node b's clock runs a day ahead (libfaketime). An
/// edit made on a after it saw b's version wins everywhere although its
/// mtime is a day older; edits made on both sides of a partition leave
/// exactly one conflict copy, the same on all three nodes.
#[test]
fn clock_skew_a_day_ahead_keeps_causal_order_and_one_conflict_copy() {
    let lib = libfaketime();
    let mut c = Cluster::new(3, Topology::Full, folders);
    a_day_ahead(&mut c.nodes[1], &lib);
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    doctor_names_the_clock_a_day_off(&c);
    causal_edit_beats_a_newer_mtime(&c);
    concurrent_edits_leave_one_conflict_copy(&mut c);
}

/// `n`'s peers as its status lists them (for failure messages).
fn peers_of(n: &Node) -> Value {
    n.status().map_or(Value::Null, |st| st["peers"].clone())
}

/// doctor's "clock offset" check on `n`, from `doctor --json`.
fn clock_check(n: &Node) -> Value {
    let (_, out, err) = n.cli(&["doctor", "--json"]);
    let report: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor --json: {e}: {out}{err}"));
    report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "clock offset").cloned())
        .unwrap_or_else(|| panic!("no clock offset check on {}: {out}", n.name))
}

/// The peers measure b's clock over their sessions: on a, doctor fails
/// naming b a day ahead, and status shows the offset; on b, both others
/// are a day behind, so doctor says b's own clock is the one off.
fn doctor_names_the_clock_a_day_off(c: &Cluster) {
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let b_short = &b.id_hex()[..10];
    let last = wait_for(DEADLINE, "doctor on a to name b a day ahead", || {
        let check = clock_check(a);
        // A reading is the day give or take a few ms of rtt/2 ("1day" or
        // "23h 59m 59s"): the offset's size is checked on /status below.
        let named = check["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with(&format!("peer {b_short} is ")) && d.contains(" ahead"));
        match check["status"] == "fail" && named {
            true => Ok(check),
            false => Err(format!("{check}; a's peers: {}", peers_of(a))),
        }
    });
    assert!(
        last["fix"]
            .as_str()
            .is_some_and(|f| f.contains(b_short) && f.contains("timedatectl set-ntp true")),
        "{last}"
    );
    let st = a.status().unwrap();
    let offset = st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["short_id"] == b_short))
        .and_then(|p| p["clock_offset_ms"].as_i64())
        .expect("a's status has b's clock offset");
    let day_ms = DAY.as_millis() as i64;
    assert!(
        (offset - day_ms).abs() < 5_000,
        "b's offset {offset} ms, want about {day_ms}"
    );
    wait_for(DEADLINE, "doctor on b to blame its own clock", || {
        let check = clock_check(b);
        let blamed = check["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("this node's clock is off: all 2 measured peers"));
        match check["status"] == "fail" && blamed {
            true => Ok(()),
            false => Err(format!("{check}; b's peers: {}", peers_of(b))),
        }
    });
    let c_check = clock_check(&c.nodes[2]);
    assert_eq!(
        c_check["status"], "fail",
        "c sees b a day ahead too: {c_check}"
    );
}

fn causal_edit_beats_a_newer_mtime(c: &Cluster) {
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    edit(b, "plan.txt", "b's version, stamped a day ahead", DAY);
    c.wait_converged("b's version everywhere");
    // The node itself runs a day ahead, not just the file's stamp.
    let skew = offset_from_now(recorded_at(b, "plan.txt"));
    assert!(
        (DAY.as_secs() as i64 - skew).abs() < 3600,
        "b recorded its edit {skew} s from now: libfaketime is not shifting b's clock"
    );
    assert!(offset_from_now(recorded_at(a, "plan.txt")).abs() < 3600);
    // a has seen b's version; its edit is causally later, mtime a day older.
    edit(
        a,
        "plan.txt",
        "a's later edit, by the right clock",
        Duration::ZERO,
    );
    let want = Some("a's later edit, by the right clock".to_string());
    wait_until(DEADLINE, "a's causally later edit on every node", || {
        c.nodes.iter().all(|n| read(n, "plan.txt") == want)
    });
    c.wait_converged("after a's edit");
    for n in &c.nodes {
        assert_eq!(read(n, "plan.txt"), want, "{}", n.name);
        assert!(conflict_copies(n, "plan").is_empty(), "{}", n.name);
    }
    let a_short = &a.id_hex()[..10];
    wait_until(DEADLINE, "b to record a's edit", || {
        history(b, "plan.txt")
            .last()
            .is_some_and(|r| r["modified_by"].as_str() == Some(a_short))
    });
}

fn concurrent_edits_leave_one_conflict_copy(c: &mut Cluster) {
    edit(&c.nodes[0], "both.txt", "base", Duration::ZERO);
    c.wait_converged("the base version everywhere");
    // Partition: b (a day ahead) is down while a and b both edit.
    c.nodes[1].stop();
    let seq = |n: &Node| n.folder_status("shared").and_then(|f| f["seq"].as_u64());
    let before = seq(&c.nodes[0]);
    edit(&c.nodes[0], "both.txt", "a's edit", Duration::ZERO);
    wait_until(DEADLINE, "a to index its edit", || {
        seq(&c.nodes[0]) > before
    });
    edit(&c.nodes[1], "both.txt", "b's edit, a day ahead", DAY);
    c.nodes[1].start();
    c.wait_connected();
    // Concurrent: the newer mtime (b's) wins; a's edit is kept as a copy.
    let want = Some("b's edit, a day ahead".to_string());
    wait_until(
        DEADLINE,
        "b's edit and one conflict copy everywhere",
        || {
            c.nodes
                .iter()
                .all(|n| read(n, "both.txt") == want && conflict_copies(n, "both").len() == 1)
        },
    );
    c.wait_converged("after the partition");
    let copies = conflict_copies(&c.nodes[0], "both");
    let a_short = c.nodes[0].id_hex()[..10].to_string();
    assert!(
        copies[0].ends_with(&format!("-{a_short}.txt")),
        "{copies:?}"
    );
    for n in &c.nodes {
        assert_eq!(conflict_copies(n, "both"), copies, "{}", n.name);
        assert_eq!(
            read(n, &copies[0]).as_deref(),
            Some("a's edit"),
            "{}",
            n.name
        );
        assert_eq!(read(n, "both.txt"), want, "{}", n.name);
    }
}
