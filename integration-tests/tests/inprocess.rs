//! Two nodes inside this test process (one actix system, one tokio
//! runtime), so the test can look at their indexes directly: after sync both
//! hold the same entry, with the same version vector, for every path.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fleetsync_actors::{start_node, NodeHandle};
use fleetsync_config::{Config, Overrides};
use fleetsync_integration_tests::{free_udp, random_bytes};

fn config(
    dir: &Path,
    name: &str,
    secret: &str,
    udp: std::net::SocketAddr,
    peer: (&str, std::net::SocketAddr),
) -> Config {
    let text = format!(
        "data_dir = {:?}\n[mesh]\nlisten = \"{udp}\"\nfleet_secret = \"{secret}\"\nmdns = false\npeers = [\"{}@{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[[folders]]\nid = \"f\"\npath = {:?}\nsettle = \"50ms\"\n",
        dir.join(name).join("data"),
        peer.0,
        peer.1,
        dir.join(name).join("folder"),
    );
    Config::from_toml_str(
        &text,
        &dir.join(format!("{name}.toml")),
        std::iter::empty(),
        &Overrides::default(),
    )
    .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn entry(n: &NodeHandle, path: &str) -> Option<fleetsync_mesh::model::FileEntry> {
    n.index.get("f", path).ok().flatten().map(|r| r.entry)
}

#[test]
fn two_in_process_nodes_converge_to_identical_index_entries() {
    // Logs go to the test's captured output, shown only when it fails.
    tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("fleetsync=debug,fleetsync_actors=debug,fleetsync_mesh=debug")
        .init();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = hex::encode(random_bytes::<32>());
    let ida = fleetsync_mesh::identity::load_or_create(&d.join("a/data"))
        .unwrap()
        .public()
        .to_string();
    let idb = fleetsync_mesh::identity::load_or_create(&d.join("b/data"))
        .unwrap()
        .public()
        .to_string();
    let (ua, ub) = (free_udp(), free_udp());
    let ca = config(d, "a", &secret, ua, (&idb, ub));
    let cb = config(d, "b", &secret, ub, (&ida, ua));
    let sys = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    let (fa, fb) = (d.join("a/folder"), d.join("b/folder"));
    sys.block_on(async move {
        let a = start_node(&ca).await.unwrap();
        let b = start_node(&cb).await.unwrap();
        until("the link", || {
            !a.mesh.connected_peers().is_empty() && !b.mesh.connected_peers().is_empty()
        })
        .await;
        std::fs::create_dir_all(fa.join("sub")).unwrap();
        std::fs::write(fa.join("sub/from-a.txt"), "a").unwrap();
        std::fs::write(fb.join("from-b.txt"), "b").unwrap();
        until("both files on both nodes", || {
            fb.join("sub/from-a.txt").exists() && fa.join("from-b.txt").exists()
        })
        .await;
        for p in ["sub", "sub/from-a.txt", "from-b.txt"] {
            until(&format!("{p} recorded alike on both"), || {
                let (x, y) = (entry(&a, p), entry(&b, p));
                match (x, y) {
                    (Some(mut x), Some(mut y)) => {
                        x.sequence = 0;
                        y.sequence = 0;
                        x == y
                    }
                    _ => false,
                }
            })
            .await;
        }
        // The author is kept across the hop; the vector has one entry.
        let e = entry(&b, "sub/from-a.txt").unwrap();
        assert_eq!(e.modified_by, a.mesh.short_id());
        assert_eq!(e.version.len(), 1);
        a.shutdown().await;
        b.shutdown().await;
    });
}
