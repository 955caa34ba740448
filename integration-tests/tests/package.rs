//! The Debian package (scripts/build-deb.sh, cargo-deb): built from the
//! binary the tests use (no release build), then inspected with dpkg-deb:
//! the files and their modes, the control fields, and the maintainer
//! scripts (the service user, the config made only when missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use fleetsync_integration_tests::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: run scripts/install-test-deps.sh (as root) to install it"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// scripts/build-deb.sh on the test binary's target dir and profile, once
/// per test run (the tests share it; the script's staging dir is one); the
/// path of the .deb it made, under `<target>/deb-test/`.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let started = Instant::now();
        let profile_dir = bin().parent().unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let out = target.join("deb-test");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let mut cmd = Command::new(repo().join("scripts/build-deb.sh"));
        cmd.args(["--no-build", "--profile", &profile, "--output"])
            .arg(&out)
            // Fast compression: the package is only inspected and thrown away.
            .args(["--", "--fast"])
            .env("CARGO_TARGET_DIR", target);
        let res = cmd.output().expect("run scripts/build-deb.sh");
        assert!(
            res.status.success(),
            "scripts/build-deb.sh failed (it installs cargo-deb on first use: \
             `cargo install cargo-deb --locked` must reach crates.io):\n{}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        let debs: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        assert_eq!(
            debs.len(),
            1,
            "one .deb expected in {}: {debs:?}",
            out.display()
        );
        eprintln!("package built in {:?}", started.elapsed());
        debs[0].clone()
    })
}

/// `dpkg-deb -c`: path → (mode string, owner/group).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // mode owner size date time path
            let path = f[5].trim_start_matches('.').to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

#[test]
fn the_debian_package_installs_the_binary_unit_user_man_page_and_completions() {
    need("dpkg-deb");
    need("cargo");
    let started = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let deb = package();

    // Files and modes: all root's, the binary executable, the rest 0644.
    let files = contents(deb);
    let expect = [
        ("/usr/bin/fleetsync", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/fleetsync.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/fleetsync.conf", "-rw-r--r--"),
        ("/usr/share/man/man1/fleetsync.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/fleetsync",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_fleetsync", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/fleetsync.fish",
            "-rw-r--r--",
        ),
    ];
    for (path, mode) in expect {
        let Some((m, owner)) = files.get(path) else {
            panic!("{path} missing from the package: {:#?}", files.keys());
        };
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "0/0", "{path} must belong to root");
    }
    // The config (with its secret) is made per machine by postinst: a
    // shipped one would give every machine the same secret and be a
    // conffile dpkg might replace on upgrade.
    assert!(
        !files.keys().any(|p| p.starts_with("/etc/")),
        "the package must not ship files in /etc: {:#?}",
        files.keys()
    );

    // Control: the package, and what creates the user.
    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb));
    assert!(info.contains("Package: fleetsync"), "{info}");
    assert!(info.contains("systemd-sysusers"), "{info}");

    // The installed files themselves.
    let root = out.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap();
    let unit = read("/usr/lib/systemd/system/fleetsync.service");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/fleetsync run --config /etc/fleetsync/fleetsync.toml"),
        "the unit must run the packaged binary on the packaged config:\n{unit}"
    );
    for line in [
        "User=fleetsync",
        "Group=fleetsync",
        "StateDirectory=fleetsync",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(!unit.contains("/usr/local"), "{unit}");
    let sysusers = read("/usr/lib/sysusers.d/fleetsync.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.starts_with("u fleetsync - ") && l.contains("/var/lib/fleetsync")),
        "a fleetsync system user (and group) at home in the state dir:\n{sysusers}"
    );
    let man = std::fs::read(root.join("usr/share/man/man1/fleetsync.1.gz")).unwrap();
    assert_eq!(&man[..2], &[0x1f, 0x8b], "the man page is gzip");
    assert!(read("/usr/share/bash-completion/completions/fleetsync").contains("fleetsync"));
    assert!(read("/usr/share/zsh/vendor-completions/_fleetsync").starts_with("#compdef fleetsync"));
    assert!(read("/usr/share/fish/vendor_completions.d/fleetsync.fish")
        .contains("complete -c fleetsync"));
    let version = run(Command::new(root.join("usr/bin/fleetsync")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("fleetsync {}", env!("CARGO_PKG_VERSION"))
    );

    // Maintainer scripts.
    let ctl = out.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap_or_default();
    assert!(
        !conffiles.contains("fleetsync.toml"),
        "the config is no conffile: {conffiles}"
    );
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    for script in ["postinst", "postrm"] {
        run(Command::new("sh").arg("-n").arg(ctl.join(script)));
    }
    let at = |needle: &str| {
        postinst
            .find(needle)
            .unwrap_or_else(|| panic!("postinst lacks {needle:?}:\n{postinst}"))
    };
    // The user first (sysusers), then the config as that user, only when
    // there is none: an upgrade or reinstall keeps the machine's secret.
    let user = at("systemd-sysusers");
    assert!(postinst.contains("fleetsync.conf"), "{postinst}");
    let guard = at(r#"if [ "$1" = "configure" ] && [ ! -e "$conf" ]; then"#);
    assert!(
        postinst.contains("conf=/etc/fleetsync/fleetsync.toml"),
        "{postinst}"
    );
    let init = at("runuser -u fleetsync -- /usr/bin/fleetsync init --data-dir \"$state\"");
    assert!(
        user < guard && user < init,
        "the user must exist before init:\n{postinst}"
    );
    assert!(
        postinst.contains("mv \"$state/fleetsync.toml\" \"$conf\""),
        "{postinst}"
    );
    // Not enabled or started on install (the fresh config has no folders);
    // restarted on upgrade only when it runs.
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(
        postinst.contains("try-restart fleetsync.service"),
        "{postinst}"
    );
    let postrm = std::fs::read_to_string(ctl.join("postrm")).unwrap();
    assert!(
        postrm.contains(r#"if [ "$1" = "purge" ]; then"#)
            && postrm.contains("rm -f /etc/fleetsync/fleetsync.toml"),
        "purge removes the generated config:\n{postrm}"
    );
    eprintln!("package test took {:?}", started.elapsed());
}

/// dpkg for real, in a private mount namespace with overlays on /etc,
/// /var/lib and /usr (tests/package/install.sh): install makes the user,
/// the group and a private config that loads; an upgrade keeps the config;
/// purge removes it and the state dir. Needs root (namespaces, dpkg).
#[test]
fn the_package_installs_upgrades_and_purges_for_real() {
    need("dpkg");
    need("unshare");
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (a mount namespace, dpkg inside overlays)"
    );
    let deb = package();
    let started = Instant::now();
    let dd = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--"])
        .arg(repo().join("integration-tests/tests/package/install.sh"))
        .env("DD", dd.path())
        .env("DEB", deb)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = ["install.log", "upgrade.log", "purge.log"]
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(dd.path().join(f)).unwrap_or_default()
            )
        })
        .join("\n");
    let why = format!("{stdout}{}\n{logs}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install.sh failed:\n{why}");
    let got: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let check = "config ok: /etc/fleetsync/fleetsync.toml (data dir /var/lib/fleetsync, \
                 0 folders: , 0 peers configured)";
    for (key, want) in [
        ("user", "fleetsync:/var/lib/fleetsync:/usr/sbin/nologin"),
        ("group", "fleetsync"),
        ("config", "600 fleetsync"),
        ("state", "700 fleetsync"),
        ("check", check),
        ("kept_on_upgrade", "yes"),
        ("config_after_purge", "no"),
        ("state_after_purge", "no"),
        ("bin_after_purge", "no"),
    ] {
        assert_eq!(got.get(key).copied(), Some(want), "{key}:\n{why}");
    }
    eprintln!("install, upgrade, purge took {:?}", started.elapsed());
}

/// `init` as postinst runs it writes a config only the service user reads
/// (0600) that names the state dir; moved to /etc it stays valid.
#[test]
fn postinsts_init_makes_a_private_config_that_works_from_etc() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var-lib-fleetsync");
    let etc = dir.path().join("etc-fleetsync");
    std::fs::create_dir_all(&etc).unwrap();
    let out = Command::new(bin())
        .args(["init", "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let conf = etc.join("fleetsync.toml");
    std::fs::rename(state.join("fleetsync.toml"), &conf).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds the fleet secret");
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(&conf)
        .env_remove("FLEETSYNC_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        text.contains(&format!("data dir {}", state.display())),
        "{text}"
    );
}
