//! The watcher actor in an actix system, with a real hasher, inotify and
//! index (content faked): what reaches the index, and what the folder's
//! status says meanwhile.

use std::time::{Duration, Instant};

use fleetsync_mesh::model::{EntryKind, ShortId};

use super::*;
use crate::testing::{self, Scene};

/// The node that announced the directory.
const PEER: ShortId = ShortId(9 << 56);

/// Generous: a loaded CI machine; the waits end as soon as the condition holds.
const DEADLINE: Duration = Duration::from_secs(20);

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A watcher and its hasher on the scene's folder, once the first scan is
/// done (the OS watch is up before it starts).
async fn start(scene: &Scene) -> Addr<Watcher> {
    let hasher = Slot::default();
    hasher.set(Hasher::new(scene.folder.clone(), Health::new(1)).start());
    let watcher = Watcher::new(scene.folder.clone(), hasher, Health::new(1)).start();
    let status = &scene.folder.status;
    until("the first scan", || {
        status.initial_scan_done.load(Ordering::Relaxed)
    })
    .await;
    watcher
}

fn indexed(scene: &Scene, path: &str) -> bool {
    scene.recorded(path).is_some_and(|r| !r.entry.deleted)
}

/// Regression (issue 8): a directory whose contents produced no events
/// (written before its watch existed; here: moved in whole) was indexed by
/// the hasher only if the index did not know the directory yet. When a
/// peer had already announced it (the receiver records a directory a
/// remote file needs), its files were never indexed until the hourly
/// rescan, while status said `in_sync`.
#[actix::test]
async fn files_inside_a_directory_a_peer_already_announced_are_indexed_when_it_appears() {
    let scene = Scene::new();
    let _watcher = start(&scene).await;
    // Built outside the folder (same filesystem), so nothing inside it
    // ever produces an event of its own.
    let staged = scene.root().parent().unwrap().join("staged");
    std::fs::create_dir_all(staged.join("sub")).unwrap();
    std::fs::write(staged.join("f0"), "first file").unwrap();
    std::fs::write(staged.join("sub/f1"), "nested file").unwrap();
    // The peer's directory entry, recorded as the receiver would.
    let mode = std::fs::metadata(&staged).unwrap().permissions();
    let mut dir = testing::entry("new", EntryKind::Directory, None, PEER, 1);
    dir.mode = std::os::unix::fs::PermissionsExt::mode(&mode);
    scene.record(dir, None);
    // Give the OS watch time to be up: a change at the root shows it is.
    std::fs::write(scene.root().join("probe"), "p").unwrap();
    until("the probe indexed", || indexed(&scene, "probe")).await;

    std::fs::rename(&staged, scene.root().join("new")).unwrap();
    until("the moved-in files indexed", || {
        indexed(&scene, "new/f0") && indexed(&scene, "new/sub") && indexed(&scene, "new/sub/f1")
    })
    .await;
    let status = &scene.folder.status;
    until("nothing left unindexed", || {
        !status.unindexed.load(Ordering::Relaxed)
    })
    .await;
}

#[actix::test]
async fn the_folder_reads_as_unindexed_while_a_change_settles_and_not_once_it_is_indexed() {
    let scene = Scene::new();
    let watcher = start(&scene).await;
    let status = &scene.folder.status;
    until("idle after the first scan", || {
        !status.unindexed.load(Ordering::Relaxed)
    })
    .await;
    std::fs::write(scene.root().join("a"), "a").unwrap();
    watcher
        .send(MarkDirty {
            paths: vec!["a".into()],
        })
        .await
        .unwrap();
    // It cannot have settled yet: `settle` has not passed since the mark.
    assert!(status.unindexed.load(Ordering::Relaxed));
    until("a indexed", || indexed(&scene, "a")).await;
    until("nothing left unindexed", || {
        !status.unindexed.load(Ordering::Relaxed)
    })
    .await;
}

/// Regression (CI, inprocess test): the first scan and the OS watch were
/// started together. When the scan finished first, a file written between
/// its end and the watch being up produced neither a row nor an event, and
/// stayed unsynced until the hourly rescan. Here the watch takes 500 ms to
/// set up (a huge tree) and the file is written the moment the first scan
/// is reported done.
#[actix::test]
async fn a_file_written_right_after_the_first_scan_is_indexed_without_a_rescan() {
    let scene = Scene::new();
    let hasher = Slot::default();
    hasher.set(Hasher::new(scene.folder.clone(), Health::new(1)).start());
    let mut watcher = Watcher::new(scene.folder.clone(), hasher, Health::new(1));
    watcher.slow_watch_setup = Duration::from_millis(500);
    let _watcher = watcher.start();
    let status = &scene.folder.status;
    while !status.initial_scan_done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    std::fs::write(scene.root().join("late"), "late").unwrap();
    until("the late file indexed", || indexed(&scene, "late")).await;
}
