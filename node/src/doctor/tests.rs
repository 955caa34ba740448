//! Offline checks against temp dirs (tests run as root: an unwritable
//! folder cannot be made, so a path that is a file, a missing data dir, a
//! reserve above the free space, and inotify limits from a fake
//! /proc/sys/fs/inotify stand in), and the judging of a status document.

use std::path::{Path, PathBuf};

use super::*;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const PEER: &str = "aa00000000000000000000000000000000000000000000000000000000000001";

struct Setup {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    folder: PathBuf,
    inotify: PathBuf,
}

/// A node's config in a temp dir: data dir and folder exist, admin API
/// on port 0 with no address file (so: not running), inotify limits
/// generous. `folder_extra`: more lines of the `[[folders]]` block.
fn setup(folder_extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let folder = tmp.path().join("shared");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    let inotify = tmp.path().join("inotify");
    std::fs::create_dir_all(&inotify).unwrap();
    set_limits(&inotify, 524_288, 128);
    let config = data.join("fleetsync.toml");
    write_config(&config, &data, &folder, folder_extra);
    Setup {
        config,
        data,
        folder,
        inotify,
        _tmp: tmp,
    }
}

fn write_config(config: &Path, data: &Path, folder: &Path, folder_extra: &str) {
    let text = format!(
        "data_dir = {data:?}\n\n[mesh]\nlisten = \"127.0.0.1:0\"\nfleet_secret = \"{SECRET}\"\nmdns = false\n\
         peers = [\"{PEER}@127.0.0.1:4000\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[folders]]\nid = \"shared\"\npath = {folder:?}\n{folder_extra}\n"
    );
    std::fs::write(config, text).unwrap();
    std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o600)).unwrap();
}

use std::os::unix::fs::PermissionsExt as _;

fn set_limits(dir: &Path, watches: u64, instances: u64) {
    std::fs::write(dir.join("max_user_watches"), format!("{watches}\n")).unwrap();
    std::fs::write(dir.join("max_user_instances"), format!("{instances}\n")).unwrap();
}

fn diagnose_at(s: &Setup) -> Report {
    diagnose(
        Some(&s.config),
        None,
        &Probe {
            inotify_dir: s.inotify.clone(),
            systemd: false,
        },
    )
}

fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in:\n{}", r.text()))
}

#[test]
fn a_healthy_setup_passes_every_offline_check_and_fails_only_for_the_stopped_node() {
    let s = setup("");
    let r = diagnose_at(&s);
    for name in [
        "config",
        "config file",
        "data dir",
        "folder shared",
        "folder shared space",
        "inotify watches",
        "inotify instances",
    ] {
        assert_eq!(find(&r, name).status, Status::Ok, "{}", r.text());
    }
    let node = find(&r, "node");
    assert_eq!(node.status, Status::Fail, "{}", r.text());
    assert!(node.detail.contains("not running"), "{}", r.text());
    assert!(
        node.fix.as_deref().unwrap().contains("fleetsync"),
        "{node:?}"
    );
    assert_eq!(r.exit_code(), EXIT_FAIL);
    let text = r.text();
    assert!(text.contains("ok    data dir: "), "{text}");
    assert!(text.contains("fail  node: not running"), "{text}");
}

#[test]
fn a_bad_config_is_one_fail_line_naming_the_key_not_a_crash() {
    let s = setup("mode = \"sideways\"");
    let r = diagnose_at(&s);
    assert_eq!(r.checks.len(), 1, "{}", r.text());
    let c = &r.checks[0];
    assert_eq!((c.name.as_str(), c.status), ("config", Status::Fail));
    assert!(c.detail.contains("folders[0].mode"), "{c:?}");
    assert!(c.fix.as_deref().is_some_and(|f| !f.is_empty()), "{c:?}");
    assert_eq!(r.exit_code(), EXIT_FAIL);

    let missing = diagnose(
        Some(Path::new("/nonexistent/fleetsync.toml")),
        None,
        &Probe::default(),
    );
    assert_eq!(missing.checks[0].status, Status::Fail);
    assert!(missing.checks[0]
        .fix
        .as_deref()
        .unwrap()
        .contains("fleetsync init"));
}

#[test]
fn a_missing_data_dir_fails_with_the_command_that_creates_it() {
    let s = setup("");
    std::fs::remove_dir_all(&s.data).unwrap();
    // The config lives elsewhere now that its directory is gone.
    let config = s.folder.join("fleetsync.toml");
    write_config(&config, &s.data, &s.folder, "");
    let r = diagnose(
        Some(&config),
        None,
        &Probe {
            inotify_dir: s.inotify.clone(),
            systemd: false,
        },
    );
    let c = find(&r, "data dir");
    assert_eq!(c.status, Status::Fail, "{}", r.text());
    assert!(c.detail.contains("does not exist"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains(&format!("mkdir -p {}", s.data.display())),
        "{c:?}"
    );
}

#[test]
fn a_folder_path_that_is_a_file_fails() {
    let s = setup("");
    std::fs::remove_dir_all(&s.folder).unwrap();
    std::fs::write(&s.folder, b"not a directory").unwrap();
    let r = diagnose_at(&s);
    let c = find(&r, "folder shared");
    assert_eq!(c.status, Status::Fail, "{}", r.text());
    assert!(c.detail.contains("is not a directory"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("mv "), "{c:?}");
}

#[test]
fn a_reserve_above_the_free_space_fails_naming_min_free() {
    let s = setup("min_free = \"1000TiB\"");
    let r = diagnose_at(&s);
    let c = find(&r, "folder shared space");
    assert_eq!(c.status, Status::Fail, "{}", r.text());
    assert!(c.detail.contains("below the reserve"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("min_free"), "{c:?}");
}

#[test]
fn a_world_readable_config_is_a_warning_with_chmod() {
    let s = setup("");
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = files::config_file_mode(&s.config).unwrap();
    assert_eq!(c.status, Status::Warn);
    assert_eq!(
        c.fix.as_deref(),
        Some(format!("chmod 600 {}", s.config.display()).as_str())
    );
}

#[test]
fn inotify_limits_are_judged_against_the_directory_count() {
    let s = setup("");
    for d in ["a", "b", "c/d", "c/e"] {
        std::fs::create_dir_all(s.folder.join(d)).unwrap();
    }
    // shared, a, b, c, c/d, c/e: 6 directories.
    assert_eq!(files::count_dirs(&s.folder, 100), 6);
    assert_eq!(files::count_dirs(&s.folder, 3), 3, "stops at the limit");

    set_limits(&s.inotify, 4, 128);
    let r = diagnose_at(&s);
    let c = find(&r, "inotify watches");
    assert_eq!(c.status, Status::Fail, "{}", r.text());
    assert!(c.detail.contains("max_user_watches = 4"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("sysctl -w fs.inotify.max_user_watches="),
        "{c:?}"
    );

    set_limits(&s.inotify, 7, 1);
    let r = diagnose_at(&s);
    assert_eq!(
        find(&r, "inotify watches").status,
        Status::Warn,
        "{}",
        r.text()
    );
    assert_eq!(
        find(&r, "inotify instances").status,
        Status::Warn,
        "{}",
        r.text()
    );

    set_limits(&s.inotify, 1000, 0);
    let r = diagnose_at(&s);
    assert_eq!(
        find(&r, "inotify instances").status,
        Status::Fail,
        "{}",
        r.text()
    );

    // Polled folders need no watches.
    let polled = setup("watch = \"poll\"");
    set_limits(&polled.inotify, 0, 0);
    let r = diagnose_at(&polled);
    assert!(
        r.checks.iter().all(|c| !c.name.starts_with("inotify")),
        "{}",
        r.text()
    );
}

fn view(json: serde_json::Value) -> node::NodeView {
    serde_json::from_value(json).unwrap()
}

fn loaded(s: &Setup) -> Config {
    Config::load(&s.config, &Overrides::default()).unwrap()
}

#[test]
fn a_connected_peer_is_ok_with_its_rtt_and_a_lost_one_warns_with_a_fix() {
    let s = setup("");
    let config = loaded(&s);
    let up = view(serde_json::json!({
        "short_id": "me", "healthy": true,
        "peers": [{"id": PEER, "short_id": "aa00000000", "connected": true,
                   "source": "static", "addr": "127.0.0.1:4000", "rtt_ms": 0.42}],
    }));
    let c = node::peers(Some(&config), &up);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Ok);
    assert_eq!(c[0].name, "peer aa00000000");
    assert!(c[0].detail.contains("rtt 0.4 ms"), "{:?}", c[0]);
    assert!(c[0].detail.contains("proven"), "{:?}", c[0]);

    let down = view(serde_json::json!({
        "short_id": "me", "healthy": true,
        "peers": [{"id": PEER, "short_id": "aa00000000", "connected": false,
                   "source": "static", "addrs": ["127.0.0.1:4000"],
                   "last_seen_secs_ago": 12, "last_error": "timed out"}],
    }));
    let c = node::peers(Some(&config), &down);
    assert_eq!(c[0].status, Status::Warn);
    assert!(c[0].detail.contains("last error: timed out"), "{:?}", c[0]);
    assert!(
        c[0].fix.as_deref().unwrap().contains("127.0.0.1:4000"),
        "{:?}",
        c[0]
    );

    let unknown = view(serde_json::json!({"short_id": "me", "healthy": true}));
    let c = node::peers(Some(&config), &unknown);
    assert_eq!(c[0].status, Status::Warn);
    assert!(
        c[0].fix.as_deref().unwrap().contains("restart"),
        "{:?}",
        c[0]
    );
}

/// A status with connected peers `(short id, offset ms, uncertainty ms)`.
fn with_clocks(peers: &[(&str, Option<i64>, u64)]) -> node::NodeView {
    let peers: Vec<serde_json::Value> = peers
        .iter()
        .map(|(id, off, unc)| {
            serde_json::json!({"id": id, "short_id": id, "connected": true,
                "clock_offset_ms": off, "clock_uncertainty_ms": unc})
        })
        .collect();
    view(serde_json::json!({"short_id": "me", "healthy": true, "peers": peers}))
}

#[test]
fn clock_offset_is_ok_within_a_second_warns_beyond_and_fails_past_a_minute() {
    let ok = node::clock(&with_clocks(&[("p1", Some(40), 1), ("p2", Some(-900), 5)]));
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    assert!(ok.detail.contains("peer p2 is 900 ms behind"), "{ok:?}");

    let warn = node::clock(&with_clocks(&[("p1", Some(3_200), 1), ("p2", Some(20), 1)]));
    assert_eq!(warn.status, Status::Warn, "{warn:?}");
    assert!(warn.detail.contains("peer p1 is 3.2 s ahead"), "{warn:?}");
    let fix = warn.fix.as_deref().unwrap();
    assert!(
        fix.contains("peer p1") && fix.contains("timedatectl set-ntp true"),
        "{warn:?}"
    );

    let day = node::clock(&with_clocks(&[("p1", Some(86_400_000), 0)]));
    assert_eq!(day.status, Status::Fail, "{day:?}");
    assert!(day.detail.contains("peer p1 is 1day ahead"), "{day:?}");
}

#[test]
fn clock_offset_within_the_readings_uncertainty_is_not_held_against_it() {
    // 1.3 s off, but the reading may be 400 ms out: within the second.
    let c = node::clock(&with_clocks(&[("p1", Some(1_300), 400)]));
    assert_eq!(c.status, Status::Ok, "{c:?}");
}

#[test]
fn clock_offset_blames_this_node_when_every_peer_differs_the_same_way() {
    let c = node::clock(&with_clocks(&[
        ("p1", Some(-120_000), 0),
        ("p2", Some(-121_000), 0),
    ]));
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(c.detail.starts_with("this node's clock is off"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().starts_with("here:"), "{c:?}");
    // Split opinions name the worst peer instead.
    let split = node::clock(&with_clocks(&[
        ("p1", Some(-5_000), 0),
        ("p2", Some(4_000), 0),
    ]));
    assert!(
        split.detail.starts_with("peer p1 is 5.0 s behind"),
        "{split:?}"
    );
}

#[test]
fn clock_offset_says_why_it_is_not_measured() {
    let none = node::clock(&with_clocks(&[]));
    assert_eq!(none.status, Status::Ok);
    assert!(none.detail.contains("no peer connected"), "{none:?}");
    let old = node::clock(&with_clocks(&[("p1", None, 0)]));
    assert_eq!(old.status, Status::Ok);
    assert!(old.detail.contains("protocol version 3"), "{old:?}");
}

#[test]
fn recent_errors_are_grouped_within_ten_minutes_errors_first() {
    let now = 10_000;
    let ev = |ago: u64, kind: &str, peer: Option<&str>, msg: &str| serde_json::json!({"at_secs": now - ago, "kind": kind, "peer": peer, "message": msg});
    let v = view(serde_json::json!({
        "short_id": "me", "healthy": true,
        "folders": [{"id": "shared", "recent": [
            ev(900, "error", None, "too old to count"),
            ev(300, "rejected", Some("bb"), "rejected x: bad"),
            ev(200, "rejected", Some("bb"), "rejected y: bad"),
            ev(100, "rejected", Some("bb"), "rejected z: bad"),
            ev(50, "error", None, "cannot write a: Permission denied"),
        ]}],
    }));
    let c = node::recent(&v, now, Path::new("/etc/fleetsync/fleetsync.toml"));
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].name, "folder shared errors");
    assert!(c[0].detail.starts_with("1×"), "{:?}", c[0]);
    assert!(c[0].detail.contains("Permission denied"), "{:?}", c[0]);
    assert_eq!(c[1].name, "folder shared rejected input");
    assert!(c[1].detail.starts_with("3× from peer bb"), "{:?}", c[1]);
    assert!(
        c[1].detail.contains("rejected z: bad"),
        "latest shown: {:?}",
        c[1]
    );
    assert!(c
        .iter()
        .all(|c| c.status == Status::Warn && c.fix.is_some()));

    let quiet = view(serde_json::json!({"short_id": "me", "healthy": true,
        "folders": [{"id": "shared", "recent": [ev(900, "error", None, "old")]}]}));
    let c = node::recent(&quiet, now, Path::new("x"));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Ok);
}

#[test]
fn systemd_state_is_judged_only_where_systemd_runs_the_unit() {
    assert_eq!(systemd::judge(false, None, None).status, Status::Ok);
    assert!(systemd::judge(false, None, None)
        .detail
        .contains("not under systemd"));
    assert_eq!(
        systemd::judge(true, Some("not-found"), None).status,
        Status::Ok
    );
    assert_eq!(
        systemd::judge(true, Some("loaded"), Some("active")).status,
        Status::Ok
    );
    let failed = systemd::judge(true, Some("loaded"), Some("failed"));
    assert_eq!(failed.status, Status::Fail);
    assert!(failed.fix.unwrap().contains("journalctl -u fleetsync"));
    let off = systemd::judge(true, Some("loaded"), Some("inactive"));
    assert_eq!(off.status, Status::Warn);
    assert_eq!(off.fix.as_deref(), Some("systemctl enable --now fleetsync"));
}

#[test]
fn exit_codes_and_json_follow_the_worst_check() {
    let mut r = Report::default();
    r.checks.push(Check::ok("a", "fine"));
    assert_eq!(r.exit_code(), 0);
    r.checks.push(Check::warn("b", "meh", "do x"));
    assert_eq!(r.exit_code(), EXIT_WARN);
    let j = r.json();
    assert_eq!(j["summary"]["status"], "warn");
    assert_eq!(j["summary"]["warn"], 1);
    assert_eq!(j["checks"][1]["fix"], "do x");
    assert_eq!(j["checks"][0]["fix"], serde_json::Value::Null);
    assert_eq!(j["checks"][0]["status"], "ok");
    r.checks.push(Check::fail("c", "bad", "do y"));
    assert_eq!(r.exit_code(), EXIT_FAIL);
    assert!(
        r.text().contains("fail  c: bad\n      fix: do y\n"),
        "{}",
        r.text()
    );
}
