//! The operator surface of the binary: `history` times, logs written to a
//! file (no colour codes; JSON one object per line), shell completions,
//! the man page, and `config check` / `config show --origins`.

use std::process::Command;

use fleetsync_integration_tests::{bin, wait_until, Cluster, FolderSpec, Topology, DEADLINE};
use serde_json::Value;

const SUBCOMMANDS: &[&str] = &[
    "init",
    "invite",
    "join",
    "run",
    "status",
    "config",
    "history",
    "restore",
    "versions",
    "completions",
    "man",
];

/// `fleetsync ARGS` without a node: exit code, stdout, stderr.
fn fleetsync(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run fleetsync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = fleetsync(&["completions", shell]);
        assert_eq!(code, 0, "completions {shell}: {err}");
        for sub in SUBCOMMANDS {
            assert!(
                script.contains(sub),
                "{shell} completion script does not mention `{sub}`"
            );
        }
    }
    let (code, _, err) = fleetsync(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
}

#[test]
fn bash_accepts_the_bash_completion_script() {
    let (code, script, err) = fleetsync(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleetsync.bash");
    std::fs::write(&file, script).unwrap();
    let out = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("this test needs bash (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "bash -n rejects the completion script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_page_is_roff_with_the_subcommands() {
    let (code, page, err) = fleetsync(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.lines().any(|l| l.starts_with(".TH fleetsync")),
        "no .TH line:\n{page}"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "man page does not mention `{sub}`");
    }
}

/// A time `history` printed: RFC 3339 UTC to the second.
fn is_rfc3339_seconds(s: &str) -> bool {
    s.len() == 20 && s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok()
}

#[test]
fn history_prints_rfc3339_times() {
    let c = Cluster::start(1, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let n = &c.nodes[0];
    std::fs::write(n.path("a.txt"), b"hello").unwrap();
    let mut text = String::new();
    wait_until(DEADLINE, "a history line for a.txt", || {
        let (code, out, _) = n.cli(&["history", "--folder", "shared", "a.txt"]);
        text = out;
        code == 0 && text.starts_with("seq ")
    });
    let line = text.lines().next().unwrap();
    let when = line.split_whitespace().nth(2).unwrap_or("");
    assert!(is_rfc3339_seconds(when), "not an RFC 3339 time: {line}");
    assert!(!line.contains("t="), "epoch seconds still printed: {line}");

    let (code, out, err) = n.cli(&["history", "--folder", "shared", "a.txt", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let row = &rows[0];
    assert!(row["recorded_ns"].is_i64(), "numbers are kept: {row}");
    for key in ["recorded", "mtime"] {
        let t = row[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {row}"));
        let parsed = humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{key} {t}: {e}"));
        let ns = parsed
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert_eq!(ns, row[format!("{key}_ns")].as_i64().unwrap(), "{row}");
    }
}

/// Start one node with this `[log]` format writing to a file, make it log
/// a synced file, stop it, and return the log.
fn node_log(format: &str) -> String {
    let mut c = Cluster::new(1, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    c.nodes[0]
        .extra
        .push_str(&format!("format = \"{format}\"\n"));
    c.nodes[0].start();
    let n = &c.nodes[0];
    std::fs::write(n.path("a.txt"), b"hello").unwrap();
    wait_until(DEADLINE, "a.txt indexed", || {
        n.cli(&["history", "--folder", "shared", "a.txt"])
            .1
            .starts_with("seq ")
    });
    let log_path = n.log_path();
    c.nodes[0].stop();
    std::fs::read_to_string(log_path).unwrap()
}

#[test]
fn human_log_to_a_file_has_no_colour_codes() {
    let log = node_log("human");
    assert!(log.lines().count() > 1, "the node logged nothing:\n{log}");
    assert!(!log.contains('\x1b'), "ANSI escape in a log file:\n{log}");
}

#[test]
fn json_log_is_one_object_per_line_with_the_documented_fields() {
    let log = node_log("json");
    assert!(!log.contains('\x1b'), "ANSI escape in a log file:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 1, "the node logged nothing:\n{log}");
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "not an object: {line}");
        let timestamp = v["timestamp"].as_str().unwrap_or("");
        assert!(
            humantime::parse_rfc3339_weak(timestamp.trim_end_matches('Z')).is_ok(),
            "timestamp: {line}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "level: {line}"
        );
        assert!(v["target"].is_string(), "target: {line}");
        assert!(v["fields"].is_object(), "fields: {line}");
        assert!(v["fields"]["message"].is_string(), "fields.message: {line}");
    }
}

/// A config made by `fleetsync init` in a temp dir: (dir, config path).
fn init_config() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let folder = dir.path().join("folder");
    let (code, _, err) = fleetsync(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--folder",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "init: {err}");
    let config = data.join("fleetsync.toml");
    // It holds the fleet secret: owner-only, and no temp file left over.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "config mode {mode:o}");
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().starts_with(".tmp")),
        "{files:?}"
    );
    (dir, config)
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_key_of_a_bad_one() {
    let (_dir, config) = init_config();
    let path = config.to_str().unwrap();
    let (code, out, err) = fleetsync(&["config", "check", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("config ok:") && out.contains("1 folder"),
        "{out}"
    );

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("settle = ", "setle = ")).unwrap();
    let (code, out, err) = fleetsync(&["config", "check", path]);
    assert_eq!(code, 3, "a bad config is exit 3: {out}{err}");
    assert!(
        err.contains("folders[0].setle") && err.contains("settle"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn config_show_origins_tells_where_each_value_came_from_and_hides_the_secret() {
    let (_dir, config) = init_config();
    let text = std::fs::read_to_string(&config).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("fleet_secret = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("init writes the secret inline")
        .to_string();
    let out = Command::new(bin())
        .args(["config", "show", "--origins", "--config"])
        .arg(&config)
        .env("FLEETSYNC_MESH_MAX_PEERS", "7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{shown}"))
            .to_string()
    };
    assert!(line("mesh.max_peers").contains("= 7"), "{shown}");
    assert!(
        line("mesh.max_peers").ends_with("# env FLEETSYNC_MESH_MAX_PEERS"),
        "{shown}"
    );
    assert!(line("mesh.listen").ends_with("# file"), "{shown}");
    assert!(line("mesh.allow").ends_with("# default"), "{shown}");
    assert!(line("mesh.fleet_secret").contains("<redacted>"), "{shown}");
    assert!(!shown.contains(&secret), "the secret was printed:\n{shown}");

    let (code, json, err) = fleetsync(&[
        "config",
        "show",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!json.contains(&secret));
    let v: Value = serde_json::from_str(&json).unwrap();
    let settings = v["settings"].as_array().unwrap();
    let settle = settings
        .iter()
        .find(|s| s["key"] == "folders[0].settle")
        .unwrap();
    assert_eq!(settle["source"]["from"], "file", "{settle}");
}
