//! `fleetsync demo`: three real nodes (this binary, `fleetsync run`) on
//! 127.0.0.1 in a temp dir, chained A–B–C (so C only hears of A's files
//! through B), with mDNS off. It writes files on different nodes, shows
//! them arriving everywhere with timings, then stops the nodes and removes
//! everything.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use fleetsync_config::{render_init_config, FleetSecret, InitParams, PeerAddr};

struct Node {
    name: &'static str,
    data: PathBuf,
    folder: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The admin API's address, once the node has bound it (port 0 in the
    /// config: nothing to race other processes for).
    fn admin(&self) -> Option<SocketAddr> {
        crate::admin::read_addr_file(&self.data).ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn run(keep: bool) -> anyhow::Result<i32> {
    let tmp = tempfile::Builder::new()
        .prefix("fleetsync-demo-")
        .tempdir()?;
    let res = run_in(tmp.path(), keep);
    if res.is_err() {
        // Show what the nodes said, then clean up as usual.
        for name in ["A", "B", "C"] {
            let log = tmp.path().join(format!("node-{name}/node.log"));
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- node {name} log (last lines) ---");
                for l in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
    if std::env::var_os("FLEETSYNC_DEMO_KEEP_DIR").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
    res
}

fn run_in(dir: &Path, keep: bool) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locate the fleetsync binary")?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("OS random source unavailable");
    let names = ["A", "B", "C"];
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    let mut listens = Vec::new();
    for name in names {
        let data = dir.join(format!("node-{name}"));
        let folder = dir.join(format!("folder-{name}"));
        std::fs::create_dir_all(&folder)?;
        let key = fleetsync_mesh::identity::load_or_create(&data)?;
        ids.push(*key.public().as_bytes());
        listens.push(fleetsync_mesh::loopback::free_udp_addr()?);
        nodes.push(Node {
            name,
            config: data.join(fleetsync_config::CONFIG_FILE_NAME),
            data,
            folder,
            child: None,
        });
    }
    // A–B–C chain in the configs: A and C learn of each other from B
    // (peer exchange) and then connect directly.
    let links: [&[usize]; 3] = [&[1], &[0, 2], &[1]];
    for (i, n) in nodes.iter().enumerate() {
        let text = render_init_config(&InitParams {
            data_dir: n.data.clone(),
            folders: vec![("demo".into(), n.folder.clone())],
            fleet_secret: FleetSecret(secret),
            mesh_listen: listens[i],
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: links[i]
                .iter()
                .map(|j| PeerAddr {
                    id: ids[*j],
                    addr: listens[*j].into(),
                })
                .collect(),
            mdns: false,
            ticket_peers: vec![],
        });
        std::fs::write(&n.config, text)?;
    }
    println!(
        "fleetsync demo: 3 nodes on 127.0.0.1, configured A — B — C (A and C meet through B), in {}",
        dir.display()
    );
    for (i, n) in nodes.iter_mut().enumerate() {
        let log = std::fs::File::create(n.data.join("node.log"))?;
        let mut cmd = Command::new(&exe);
        // The demo's nodes take their settings from their config files only.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLEETSYNC_") && k != "FLEETSYNC_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&n.config)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start a node")?;
        n.child = Some(child);
        println!(
            "  node {} id {}…  udp {}  folder {}",
            n.name,
            &hex::encode(ids[i])[..10],
            listens[i],
            n.folder.display()
        );
    }
    let connected = |n: &Node, want: usize| -> bool {
        n.admin()
            .and_then(|a| crate::client::get(&crate::client::Endpoint::Tcp(a), "/status").ok())
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| {
                v["peers"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter(|p| p["connected"].as_bool() == Some(true))
                            .count()
                    })
                    .unwrap_or(0)
                    >= want
            })
            .unwrap_or(false)
    };
    let t = wait_for("the nodes to connect", Duration::from_secs(30), || {
        connected(&nodes[0], 1) && connected(&nodes[1], 2) && connected(&nodes[2], 1)
    })?;
    println!("mesh up in {} ms\n", t.as_millis());

    let show = |label: &str, rel: &str, from: usize| -> anyhow::Result<()> {
        let src = nodes[from].folder.join(rel);
        let mut line = format!("  {label:<44}");
        for (j, n) in nodes.iter().enumerate() {
            if j == from {
                continue;
            }
            let dst = n.folder.join(rel);
            let t = wait_for(
                &format!("{rel} on node {}", n.name),
                Duration::from_secs(60),
                || same_file(&src, &dst),
            )?;
            line.push_str(&format!("  on {}: {:>5} ms", n.name, t.as_millis()));
        }
        println!("{line}");
        Ok(())
    };
    std::fs::write(nodes[0].folder.join("hello-from-A.txt"), b"hello from A\n")?;
    show("A writes hello-from-A.txt", "hello-from-A.txt", 0)?;
    std::fs::create_dir_all(nodes[2].folder.join("reports/2026"))?;
    std::fs::write(
        nodes[2].folder.join("reports/2026/q4.csv"),
        b"quarter,revenue\nq4,42\n",
    )?;
    show("C writes reports/2026/q4.csv", "reports/2026/q4.csv", 2)?;
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(nodes[1].folder.join("model.bin"), &big)?;
    show("B writes model.bin (8 MiB)", "model.bin", 1)?;
    std::fs::write(
        nodes[2].folder.join("hello-from-A.txt"),
        b"hello from A, edited on C\n",
    )?;
    show("C edits hello-from-A.txt", "hello-from-A.txt", 2)?;
    std::fs::remove_file(nodes[0].folder.join("model.bin"))?;
    let mut line = format!("  {:<44}", "A deletes model.bin");
    for n in &nodes[1..] {
        let p = n.folder.join("model.bin");
        let t = wait_for("the delete", Duration::from_secs(60), || !p.exists())?;
        line.push_str(&format!("  on {}: {:>5} ms", n.name, t.as_millis()));
    }
    println!("{line}");
    println!("\nevery folder now holds the same files:");
    for n in &nodes {
        let mut files = Vec::new();
        list(&n.folder, &n.folder, &mut files);
        files.sort();
        println!("  {}: {}", n.name, files.join(", "));
    }
    if keep {
        println!(
            "\ncluster keeps running; try: fleetsync status --config {}\npress Ctrl-C to stop",
            nodes[0].config.display()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = ctrlc_wait(tx);
        let _ = rx.recv();
    }
    drop(nodes);
    println!("\nnodes stopped; temp dir removed");
    Ok(0)
}

fn list(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name() == ".fleetsync" {
            continue;
        }
        if p.is_dir() {
            list(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// Block until SIGINT (the children get it too, from the terminal).
fn ctrlc_wait(tx: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let _ = tx.send(());
    Ok(())
}
