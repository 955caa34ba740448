//! The supervisor restarts an actor whose thread died, the node keeps
//! working, and a crash loop ends the process with a non-zero code.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fleetsync_actors::{
    start_node,
    supervisor::{ActorId, CrashActor, EXIT_CRASH_LOOP},
    NodeHandle,
};
use fleetsync_config::{Config, Overrides};

fn config(dir: &Path) -> Config {
    let text = format!(
        "data_dir = {:?}\n[mesh]\nlisten = \"127.0.0.1:0\"\nfleet_secret = \"{}\"\nmdns = false\n[admin]\nlisten = \"127.0.0.1:0\"\n[[folders]]\nid = \"f\"\npath = {:?}\nsettle = \"50ms\"\n",
        dir.join("data"),
        "11".repeat(32),
        dir.join("folder")
    );
    Config::from_toml_str(
        &text,
        &dir.join("fleetsync.toml"),
        std::iter::empty(),
        &Overrides::default(),
    )
    .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn indexed(node: &NodeHandle, path: &str) -> bool {
    node.index.get("f", path).ok().flatten().is_some()
}

#[test]
fn a_dead_actor_is_restarted_and_a_crash_loop_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let sys = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    sys.block_on(async move {
        let node = start_node(&cfg).await.unwrap();
        let slot = node.slots.folder("f").expect("folder f").hasher;
        until("the hasher to start", || slot.get().is_some()).await;
        std::fs::write(dir.path().join("folder/one.txt"), "1").unwrap();
        until("one.txt indexed", || indexed(&node, "one.txt")).await;
        until("the node to report healthy", || node.healthy()).await;

        // Kill the hasher's thread: the supervisor must bring up a new one.
        let before = slot.get().unwrap();
        assert!(node
            .supervisor
            .send(CrashActor(ActorId::Hasher("f".into())))
            .await
            .unwrap());
        until("a new hasher", || {
            slot.get().is_some_and(|a| a != before && a.connected())
        })
        .await;
        std::fs::write(dir.path().join("folder/two.txt"), "2").unwrap();
        until("two.txt indexed by the restarted hasher", || {
            indexed(&node, "two.txt")
        })
        .await;

        // Crash it over and over: past the restart budget the node gives up.
        let fatal = {
            let node = node.clone();
            tokio::spawn(async move { node.fatal().await })
        };
        for _ in 0..10 {
            let cur = slot.get().unwrap();
            if fatal.is_finished() {
                break;
            }
            node.supervisor
                .send(CrashActor(ActorId::Hasher("f".into())))
                .await
                .ok();
            let start = Instant::now();
            while slot.get().is_some_and(|a| a == cur) && !fatal.is_finished() {
                assert!(start.elapsed() < Duration::from_secs(30));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let code = tokio::time::timeout(Duration::from_secs(30), fatal)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, EXIT_CRASH_LOOP);
        node.mesh.shutdown().await;
    });
}
