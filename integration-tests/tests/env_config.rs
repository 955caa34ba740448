//! A node configured by `FLEETSYNC_*` variables alone, as in the container
//! (deploy/Containerfile): no config file anywhere, `fleetsync run` and
//! `fleetsync status` with no --config / --data-dir.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fleetsync_integration_tests::{bin, free_udp, get, random_bytes, wait_until, DEADLINE};

/// One node's directories, identity and address; the process while running.
struct EnvNode {
    name: &'static str,
    data: PathBuf,
    folder: PathBuf,
    secret_file: PathBuf,
    udp: SocketAddr,
    id: String,
    child: Option<Child>,
}

impl EnvNode {
    fn new(base: &Path, name: &'static str, secret: &str) -> EnvNode {
        let root = base.join(name);
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        // A container secret: a file only the node's user reads.
        let secret_file = root.join("fleet.secret");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new(bin())
            .args(["id", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "fleetsync id: {out:?}");
        EnvNode {
            name,
            folder: root.join("shared"),
            data,
            secret_file,
            udp: free_udp(),
            id: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            child: None,
        }
    }

    /// Everything the node needs, as variables; the folder does not exist
    /// yet (the node creates it).
    fn env(&self, peer: &EnvNode) -> Vec<(String, String)> {
        [
            ("FLEETSYNC_DATA_DIR", self.data.display().to_string()),
            (
                "FLEETSYNC_MESH_FLEET_SECRET_FILE",
                self.secret_file.display().to_string(),
            ),
            (
                "FLEETSYNC_FOLDERS",
                format!("shared={}", self.folder.display()),
            ),
            ("FLEETSYNC_FOLDER_SHARED_SETTLE", "100ms".to_string()),
            ("FLEETSYNC_MESH_LISTEN", self.udp.to_string()),
            ("FLEETSYNC_MESH_PEERS", format!("{}@{}", peer.id, peer.udp)),
            ("FLEETSYNC_MESH_MDNS", "false".to_string()),
            ("FLEETSYNC_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
            ("FLEETSYNC_LOG_LEVEL", "debug".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn start(&mut self, env: &[(String, String)]) {
        let log = std::fs::File::create(self.data.with_file_name("node.log")).unwrap();
        let child = clean_command(env)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start fleetsync");
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_file_name("node.log")).unwrap_or_default()
    }

    /// The admin address the node reports once it is up.
    fn admin(&mut self) -> SocketAddr {
        let file = self.data.join("admin.addr");
        let mut addr = None;
        wait_until(DEADLINE, &format!("{}'s admin API", self.name), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited early with {st}:\n{}", self.name, self.log());
            }
            addr = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<SocketAddr>().ok())
                .filter(|a| get(*a, "/health").is_some());
            addr.is_some()
        });
        addr.expect("waited for it")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            wait_until(DEADLINE, "the node to stop", || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
        }
    }
}

impl Drop for EnvNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `fleetsync` with exactly `env` as its `FLEETSYNC_*` variables (none
/// inherited from the test's environment), run from a directory with no
/// config file in it.
fn clean_command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETSYNC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn run_cli(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = clean_command(env).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_nodes_from_env_alone_sync_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = hex::encode(random_bytes::<32>());
    let mut a = EnvNode::new(dir.path(), "a", &secret);
    let mut b = EnvNode::new(dir.path(), "b", &secret);
    let (env_a, env_b) = (a.env(&b), b.env(&a));
    a.start(&env_a);
    b.start(&env_b);
    a.admin();
    b.admin();
    for d in [&a.data, &b.data] {
        assert!(
            !d.join("fleetsync.toml").exists(),
            "no config file may be written"
        );
    }

    wait_until(DEADLINE, "a's folder to be created", || a.folder.is_dir());
    std::fs::write(a.folder.join("hello.txt"), b"from the environment").unwrap();
    wait_until(DEADLINE, "hello.txt to reach b", || {
        std::fs::read(b.folder.join("hello.txt")).ok().as_deref() == Some(b"from the environment")
    });

    // The container's HEALTHCHECK: `fleetsync status` with the node's own
    // variables and no config file finds the node (port 0: through the
    // address file in the data dir) and exits 0 when healthy.
    let (code, out, err) = run_cli(&env_a, &["status"]);
    assert_eq!(code, 0, "status: {out}{err}");
    assert!(out.contains("shared"), "{out}");
    assert!(out.contains(&b.id[..8]), "peer b missing from: {out}");
    // `podman exec ... fleetsync id`: the node id, for the other nodes' peers.
    let (code, out, err) = run_cli(&env_a, &["id"]);
    assert_eq!((code, out.trim()), (0, a.id.as_str()), "{err}");

    a.stop();
    b.stop();
}

#[test]
fn a_missing_variable_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let folders = (
        "FLEETSYNC_FOLDERS".to_string(),
        format!("shared={}", dir.path().join("shared").display()),
    );
    // No data dir: exit 3, the variable to set.
    let (code, _, err) = run_cli(std::slice::from_ref(&folders), &["run"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("FLEETSYNC_DATA_DIR") && err.contains("fix: set FLEETSYNC_DATA_DIR="),
        "{err}"
    );
    // No secret: the two variables that can give it.
    let data = (
        "FLEETSYNC_DATA_DIR".to_string(),
        dir.path().join("data").display().to_string(),
    );
    let (code, _, err) = run_cli(&[folders, data], &["run"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("FLEETSYNC_MESH_FLEET_SECRET_FILE=")
            && err.contains("FLEETSYNC_MESH_FLEET_SECRET="),
        "{err}"
    );
    // Nothing at all: which node, and both ways to say it.
    let (code, _, err) = run_cli(&[], &["run"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--config FILE") && err.contains("FLEETSYNC_FOLDERS"),
        "{err}"
    );
}

/// deploy/Containerfile cannot be built here (no container engine): its
/// runtime stage is checked as text instead. The node it runs is the one
/// the tests above start: `run` and `status` from the environment alone.
#[test]
fn the_container_recipe_runs_unprivileged_from_env_alone() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("deploy/Containerfile")).unwrap();
    // The runtime stage: after the last FROM, continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let stage: Vec<&str> = joined
        .rsplit_once("\nFROM ")
        .expect("a multi-stage recipe")
        .1
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let find = |word: &str| -> Vec<&str> {
        stage
            .iter()
            .filter_map(|l| l.strip_prefix(word).map(str::trim))
            .collect()
    };
    let user = find("USER ");
    assert_eq!(user.len(), 1, "one USER line: {user:?}");
    assert!(
        !["root", "0"].contains(&user[0].split(':').next().unwrap()),
        "runs as root: {user:?}"
    );
    let health = find("HEALTHCHECK ");
    assert!(
        health.len() == 1 && health[0].contains(r#"CMD ["/usr/local/bin/fleetsync", "status"]"#),
        "HEALTHCHECK fleetsync status: {health:?}"
    );
    assert_eq!(find("VOLUME "), [r#"["/data", "/sync"]"#]);
    assert_eq!(find("ENV "), ["FLEETSYNC_DATA_DIR=/data"]);
    assert_eq!(
        find("CMD "),
        [r#"["run"]"#],
        "no config file on the command line"
    );
    assert!(!joined.contains("fleetsync init"), "no config file to make");

    let ignore = std::fs::read_to_string(repo.join(".dockerignore")).unwrap();
    for entry in [".git", "target", "dist"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            "{entry} not in .dockerignore"
        );
    }
}
