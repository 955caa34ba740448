//! The `fleetsync` command line as an operator uses it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

fn fleetsync(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetsync"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETSYNC_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).output().expect("run fleetsync")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn free_udp_port() -> u16 {
    fleetsync_mesh::loopback::free_udp_addr().unwrap().port()
}

#[test]
fn init_writes_identity_and_private_config_and_id_prints_only_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let folder = dir.path().join("shared");
    let out = fleetsync(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--folder",
        folder.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id_line = stdout
        .lines()
        .find(|l| l.starts_with("node id: "))
        .expect("node id line");
    let id = id_line.trim_start_matches("node id: ").trim();
    assert_eq!(id.len(), 64);
    let cfg = data.join("fleetsync.toml");
    assert!(stdout.contains(&cfg.display().to_string()));
    assert_eq!(
        fs::metadata(&cfg).unwrap().permissions().mode() & 0o077,
        0,
        "config readable by others"
    );
    let toml = fs::read_to_string(&cfg).unwrap();
    assert!(toml.contains("fleet_secret"));
    assert!(toml.contains(&folder.display().to_string()));

    let out = fleetsync(&["id", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), id);

    // A second init does not clobber the config.
    let again = fleetsync(&["init", "--data-dir", data.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("--force"));

    // Joining an existing fleet with a given secret; a bad secret is refused.
    let secret = "ab".repeat(32);
    let other = dir.path().join("other");
    let out = fleetsync(&[
        "init",
        "--data-dir",
        other.to_str().unwrap(),
        "--fleet-secret",
        &secret,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read_to_string(other.join("fleetsync.toml"))
        .unwrap()
        .contains(&secret));
    let bad = fleetsync(&[
        "init",
        "--data-dir",
        dir.path().join("x").to_str().unwrap(),
        "--fleet-secret",
        "abc",
    ]);
    assert!(!bad.status.success());
}

fn config_error(body: &str, dir: &Path) -> (i32, String) {
    let cfg = dir.join("bad.toml");
    fs::write(&cfg, body).unwrap();
    let out = fleetsync(&["run", "--config", cfg.to_str().unwrap()]);
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

#[test]
fn bad_configs_exit_3_with_one_line_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = "0".repeat(64);
    let good_folder = d.join("f");
    // The folders live beside the data directory, not inside it.
    let dd = format!("data_dir = {:?}\n", d.join("data"));
    let cases: Vec<(String, &str)> = vec![
        (format!("{dd}[mesh]\nfleet_secret = \"{secret}\"\nlistn = \"0.0.0.0:1\"\n"), "mesh.listn"),
        (format!("{dd}[mesh]\nfleet_secret = \"{secret}\"\n[[folders]]\nid = \"a\"\n"), "folders[0].path"),
        (
            format!("data_dir = {:?}\n[mesh]\nfleet_secret = \"{secret}\"\n[[folders]]\nid = \"a\"\npath = {:?}\n", d, d.join("inside")),
            "folders[0].path",
        ),
        (format!("{dd}[mesh]\nfleet_secret = \"abcd\"\n"), "mesh.fleet_secret"),
        (
            format!("{dd}[mesh]\nfleet_secret = \"{secret}\"\n[[folders]]\nid = \"a\"\npath = {:?}\n[[folders]]\nid = \"a\"\npath = {:?}\n", good_folder, d.join("g")),
            "folders[1].id",
        ),
        (
            format!("{dd}[mesh]\nfleet_secret = \"{secret}\"\n[[folders]]\nid = \"a\"\npath = {:?}\nsettle = \"two parsecs\"\n", good_folder),
            "folders[0].settle",
        ),
    ];
    for (body, key) in cases {
        let (code, err) = config_error(&body, d);
        assert_eq!(code, 3, "expected exit 3 for {key}, got {code}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(key), "error does not name {key}: {err}");
        assert!(err.contains("fix"), "error gives no fix: {err}");
    }
    // Not running: status says so, with exit code 4 (port 0: the address
    // would come from the running node's admin.addr, and there is none).
    let cfg = d.join("ok.toml");
    fs::write(
        &cfg,
        format!("[mesh]\nfleet_secret = \"{secret}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let out = fleetsync(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is it running"));
}

#[test]
fn run_serves_status_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let folder = dir.path().join("shared");
    // Port 0: status and history find the bound port in admin.addr.
    let admin = "127.0.0.1:0".to_string();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let out = fleetsync(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--folder",
        folder.to_str().unwrap(),
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
        "--no-mdns",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join("hello.txt"), "hi").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetsync"))
        .args(["run", "--data-dir", data.to_str().unwrap()])
        .env_remove("FLEETSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        let out = fleetsync(&["status", "--data-dir", data.to_str().unwrap(), "--json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["folders"][0]["files"] == 1 {
                break v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node never reported its file"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status["peers"].is_array());
    let f = &status["folders"][0];
    for key in ["id", "files", "bytes", "pending"] {
        assert!(!f[key].is_null(), "status folder lacks {key}: {f}");
    }
    assert_eq!(f["id"], "shared");
    assert_eq!(f["bytes"], 2);
    let human = fleetsync(&["status", "--data-dir", data.to_str().unwrap()]);
    assert!(
        text(&human.stdout).contains("shared"),
        "{}",
        text(&human.stdout)
    );
    let hist = fleetsync(&[
        "history",
        "--data-dir",
        data.to_str().unwrap(),
        "--folder",
        "shared",
        "hello.txt",
    ]);
    assert!(
        text(&hist.stdout).contains("local change"),
        "{}",
        text(&hist.stdout)
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(0));
    assert!(
        !data.join("admin.addr").exists(),
        "a clean shutdown leaves no admin.addr behind"
    );
}

#[test]
fn the_demo_from_the_readme_runs_and_converges() {
    let out = fleetsync(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("every folder now holds the same files"),
        "{stdout}"
    );
    assert!(stdout.contains("temp dir removed"));
}
