//! The admin API's status page (`GET /`) as a person sees it: loaded in
//! headless Chromium (Debian's `chromium`, installed by
//! scripts/install-test-deps.sh) from a running 2-node cluster, checking
//! the rendered DOM's text.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;
use fleetsync_mesh::model::ShortId;

/// How long one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The DOM Chromium renders for `url` (`--dump-dom`), or why not.
fn dump_dom(url: &str, scratch: &Path) -> Result<String, String> {
    let profile = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
    let out_path = profile.path().join("dom.html");
    let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        // Its own process group: on a timeout the renderer and GPU
        // helpers are killed with it.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run chromium ({e}): install it with scripts/install-test-deps.sh \
                 (Debian package chromium)"
            )
        })?;
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            let dom = fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
            return if st.success() {
                Ok(dom)
            } else {
                Err(format!("chromium exited with {st}"))
            };
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let pgid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
            rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).ok();
            child.wait().ok();
            return Err(format!("chromium took over {CHROMIUM_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fail, naming the fix, when the browser the test needs is missing.
fn require_chromium() {
    let found = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "chromium is missing: this test loads the status page in headless Chromium; \
         install it with scripts/install-test-deps.sh (Debian package chromium)"
    );
}

#[test]
fn the_status_page_shows_both_nodes_the_folder_and_the_synced_file_in_chromium() {
    require_chromium();
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("page-proof.txt"), b"seen on the page").unwrap();
    wait_until(DEADLINE, "page-proof.txt on b, in sync", || {
        b.path("page-proof.txt").exists() && b.in_sync("shared")
    });

    let url = format!("http://{}/", b.admin);
    let a_short = ShortId::from_node_id(&a.id).to_string();
    let mut dom = String::new();
    // The page renders the snapshot the node refreshes once a second:
    // the change and the folder's in-sync state may take a refresh each
    // to show (regression: the file showed one snapshot before "in sync").
    wait_until(
        DEADLINE,
        "the page to show the synced file, in sync",
        || {
            dom = dump_dom(&url, c.dir.path()).unwrap_or_else(|e| panic!("{e}"));
            dom.contains("page-proof.txt") && dom.contains("in sync")
        },
    );
    for (what, text) in [
        ("this node's id", b.id_hex()),
        ("the peer's id", a.id_hex()),
        ("the folder id", "shared".to_string()),
        ("the synced file", "page-proof.txt".to_string()),
        ("who made the change", a_short.clone()),
        ("the folder in sync", "in sync".to_string()),
    ] {
        assert!(
            dom.contains(&text),
            "{what} ({text}) not on the page:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"http-equiv="refresh""#),
        "refreshes itself:\n{dom}"
    );
    assert!(!dom.contains("<script"), "no script on the page:\n{dom}");
}

#[test]
fn the_status_page_keeps_the_admin_apis_host_rule() {
    let c = Cluster::start(1, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let n = &c.nodes[0];
    let page = get(n.admin, "/").expect("the page from its own address");
    assert!(page.contains("<!DOCTYPE html>"), "{page}");
    // A DNS-rebinding page sends its own name as Host: refused as for
    // every admin route.
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(n.admin).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: evil.example:80\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.0 421"), "{reply}");
}
