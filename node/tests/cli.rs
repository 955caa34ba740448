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

/// `fleetsync` with exactly these `FLEETSYNC_*` variables (the test's own
/// are removed, as in [`fleetsync`]).
fn fleetsync_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetsync"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETSYNC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(args).output().expect("run fleetsync")
}

/// A member (not running) listening on a specific loopback port, as
/// `fleetsync init` makes one: its data dir, id, listen address, secret.
fn inviting_member(dir: &Path) -> (std::path::PathBuf, String, String, String) {
    let data = dir.join("member");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let out = fleetsync(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--admin-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = fleetsync(&["id", "--data-dir", data.to_str().unwrap()]);
    let id = text(&id.stdout).trim().to_string();
    let cfg = fleetsync_config::Config::load(
        &data.join("fleetsync.toml"),
        &fleetsync_config::Overrides::default(),
    )
    .unwrap();
    (data, id, listen, cfg.mesh.fleet_secret.to_hex())
}

fn invite_ticket(data: &Path, extra: &[&str]) -> String {
    let mut args = vec!["invite", "--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = fleetsync(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().last().unwrap().to_string()
}

#[test]
fn join_writes_a_config_that_loads_with_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let (member, member_id, member_listen, secret) = inviting_member(dir.path());
    let ticket = invite_ticket(&member, &[]);
    let joiner = dir.path().join("joiner");
    let folder = dir.path().join("my docs");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let env = [
        ("FLEETSYNC_MESH_LISTEN", listen.clone()),
        ("FLEETSYNC_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("FLEETSYNC_MESH_MDNS", "false".to_string()),
        ("FLEETSYNC_LOG_LEVEL", "debug".to_string()),
    ];
    let join_args = [
        "join",
        "-",
        "--data-dir",
        joiner.to_str().unwrap(),
        "--folder",
        folder.to_str().unwrap(),
    ];
    // The ticket comes in on stdin (`-`), out of the process list.
    let out = {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetsync"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLEETSYNC_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(join_args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{ticket}").unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains(&secret) && !stdout.contains(&ticket));

    let cfg_path = joiner.join("fleetsync.toml");
    assert_eq!(
        fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o077,
        0
    );
    // The file alone (no variables set) holds what the variables said.
    let c = fleetsync_config::Config::load_with_env(
        &cfg_path,
        std::iter::empty(),
        &fleetsync_config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.mesh.listen.to_string(), listen);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:0");
    assert!(!c.mesh.mdns);
    assert_eq!(c.mesh.fleet_secret.to_hex(), secret);
    assert!(
        c.mesh.peers.is_empty(),
        "the inviting member is a ticket peer"
    );
    assert_eq!(c.mesh.ticket_peers.len(), 1);
    assert_eq!(
        c.mesh.ticket_peers[0].to_string(),
        format!("{member_id}@{member_listen}")
    );
    assert_eq!(c.folders.len(), 1);
    assert_eq!(c.folders[0].id, "my-docs");
    assert_eq!(c.folders[0].path, folder);
    // The joiner's identity is the one join reported.
    let id = text(&fleetsync(&["id", "--data-dir", joiner.to_str().unwrap()]).stdout);
    assert!(stdout.contains(id.trim()), "{stdout}");
    assert_ne!(id.trim(), member_id);

    // Loading with the env set, as `run` will, still validates.
    let e: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let c = fleetsync_config::Config::load_with_env(
        &cfg_path,
        e,
        &fleetsync_config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.log.level, "debug");

    // A second join does not clobber the config; --force does, keeping the id.
    let ticket_args = |force: bool| {
        let mut a = vec![
            "join".to_string(),
            ticket.clone(),
            "--data-dir".into(),
            joiner.to_str().unwrap().into(),
            "--folder".into(),
            folder.to_str().unwrap().into(),
            "--folder-id".into(),
            "docs".into(),
        ];
        if force {
            a.push("--force".into());
        }
        a
    };
    let args = ticket_args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = fleetsync_env(&args, &env);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    let args = ticket_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let forced = fleetsync_env(&args, &env);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let c = fleetsync_config::Config::load_with_env(
        &cfg_path,
        std::iter::empty(),
        &fleetsync_config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.folders[0].id, "docs");
    let id2 = text(&fleetsync(&["id", "--data-dir", joiner.to_str().unwrap()]).stdout);
    assert_eq!(id, id2);
}

/// `s` with the character at `i` changed to another base32 character.
fn typo(s: &str, i: usize) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    chars[i] = if chars[i] == 'q' { 'r' } else { 'q' };
    chars.into_iter().collect()
}

#[test]
fn join_refuses_expired_and_malformed_tickets_with_one_line() {
    use fleetsync_mesh::ticket::FleetTicket;
    let dir = tempfile::tempdir().unwrap();
    let (member, ..) = inviting_member(dir.path());
    let good = invite_ticket(&member, &[]);
    let mut expired = FleetTicket::parse(&good).unwrap();
    expired.expires_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3 * 3600;
    let mut nowhere = FleetTicket::parse(&good).unwrap();
    nowhere.addrs.clear();
    let cases = [
        (expired.encode(), "expired 3h ago"),
        (nowhere.encode(), "holds no address"),
        (good[..good.len() - 7].to_string(), "malformed ticket"),
        (typo(&good, good.len() / 2), "malformed ticket"),
        (
            good.replacen("fleetsync", "endpoint", 1),
            "not a fleetsync join ticket",
        ),
        (
            format!("0{}", "a".repeat(63)),
            "not a fleetsync join ticket",
        ),
    ];
    for (ticket, why) in cases {
        let joiner = dir.path().join("joiner");
        let out = fleetsync(&[
            "join",
            &ticket,
            "--data-dir",
            joiner.to_str().unwrap(),
            "--folder",
            dir.path().join("f").to_str().unwrap(),
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{why}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(why), "{why}: {err}");
        assert!(!joiner.exists(), "{why}: join wrote something");
    }
}

#[test]
fn join_refuses_when_the_env_sets_another_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (member, ..) = inviting_member(dir.path());
    let ticket = invite_ticket(&member, &[]);
    let joiner = dir.path().join("joiner");
    let out = fleetsync_env(
        &[
            "join",
            &ticket,
            "--data-dir",
            joiner.to_str().unwrap(),
            "--folder",
            dir.path().join("f").to_str().unwrap(),
        ],
        &[("FLEETSYNC_MESH_FLEET_SECRET", "ab".repeat(32))],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("FLEETSYNC_MESH_FLEET_SECRET"), "{err}");
    assert!(!joiner.join("fleetsync.toml").exists());
}

#[test]
fn invite_prints_the_ticket_last_and_never_the_secret_elsewhere() {
    use fleetsync_mesh::ticket::FleetTicket;
    let dir = tempfile::tempdir().unwrap();
    let (member, member_id, member_listen, secret) = inviting_member(dir.path());
    let out = fleetsync(&[
        "invite",
        "--data-dir",
        member.to_str().unwrap(),
        "--expires",
        "2h",
        "--addr",
        "192.0.2.10:7300",
        "--addr",
        "fleet-1.example:7301",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (last, info) = {
        let lines: Vec<&str> = stdout.lines().collect();
        let (last, info) = lines.split_last().unwrap();
        (last.to_string(), info.join("\n"))
    };
    let t = FleetTicket::parse(&last).unwrap();
    assert_eq!(hex::encode(t.secret), secret);
    assert_eq!(t.node.to_string(), member_id);
    assert_eq!(t.addrs, vec!["192.0.2.10:7300".parse().unwrap()]);
    assert_eq!(t.hosts, vec![("fleet-1.example".to_string(), 7301)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 7100..=now + 7300).contains(&t.expires_unix));
    for elsewhere in [info.as_str(), &text(&out.stderr)] {
        assert!(!elsewhere.contains(&secret), "secret in: {elsewhere}");
        assert!(!elsewhere.contains(&last), "ticket in: {elsewhere}");
    }
    assert!(info.contains(&member_id), "{info}");

    // Without --addr and not running: mesh.listen, with a loopback warning.
    let out = fleetsync(&["invite", "--data-dir", member.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last = text(&out.stdout).lines().last().unwrap().to_string();
    let t = FleetTicket::parse(&last).unwrap();
    assert_eq!(t.addrs, vec![member_listen.parse().unwrap()]);
    assert!(
        text(&out.stderr).contains("loopback"),
        "{}",
        text(&out.stderr)
    );

    // mesh.listen on every interface and no node running: ask for --addr.
    let wild = dir.path().join("wild");
    let out = fleetsync(&[
        "init",
        "--data-dir",
        wild.to_str().unwrap(),
        "--listen",
        "0.0.0.0:7300",
        "--admin-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = fleetsync(&["invite", "--data-dir", wild.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--addr HOST:PORT"), "{err}");
}
