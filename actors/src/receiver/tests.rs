//! The receiver actor in an actix system, with peers faked: what an
//! ingested batch leads to, without being prompted again.

use std::time::{Duration, Instant};

use fleetsync_mesh::{
    model::{EntryKind, FileEntry, ShortId, VersionVector},
    Hash,
};

use super::*;
use crate::{
    health::Health,
    index::RemoteMark,
    testing::{self, FakeContent},
};

/// Generous: a loaded CI machine; the waits end as soon as the condition holds.
const DEADLINE: Duration = Duration::from_secs(20);

fn file(path: &str, content: &[u8]) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        size: content.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        hash: Some(*Hash::new(content).as_bytes()),
        symlink_target: None,
        deleted: false,
        version: VersionVector::from_pairs([(ShortId(1 << 56), 1)]),
        modified_by: ShortId(1 << 56),
        sequence: 1,
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix::test]
async fn an_ingested_batch_is_applied_without_further_prompting() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContent::new();
    let peer = FakeContent::new_peer();
    fake.serve(peer, b"one");
    fake.serve(peer, b"two");
    let folder = testing::folder(dir.path(), fake.clone());
    let receiver = Receiver::new(folder.clone(), Slot::default(), Health::new(1)).start();
    let n = receiver
        .send(Ingest {
            peer,
            mark: RemoteMark {
                index_id: 1,
                seq: 2,
            },
            entries: vec![file("a", b"one"), file("b", b"two")],
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2, "both entries became pending");
    let root = folder.fs.root().to_path_buf();
    until("both files on disk", || {
        std::fs::read(root.join("a")).is_ok_and(|c| c == b"one")
            && std::fs::read(root.join("b")).is_ok_and(|c| c == b"two")
    })
    .await;
    until("no pending rows", || {
        folder.index.pending_count("f").unwrap() == 0
    })
    .await;
    let mark = folder.index.remote_mark("f", peer.as_bytes()).unwrap();
    assert_eq!(mark.map(|m| m.seq), Some(2), "the peer's mark advanced");
}

#[actix::test]
async fn a_failed_entry_is_retried_on_its_own_once_the_content_exists() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContent::new();
    let peer = FakeContent::new_peer();
    fake.connect(peer);
    let folder = testing::folder(dir.path(), fake.clone());
    let receiver = Receiver::new(folder.clone(), Slot::default(), Health::new(1)).start();
    receiver
        .send(Ingest {
            peer,
            mark: RemoteMark {
                index_id: 1,
                seq: 1,
            },
            entries: vec![file("late", b"arrives later")],
        })
        .await
        .unwrap()
        .unwrap();
    let fetched_once = || !fake.fetches().is_empty();
    until("a first, failing attempt", fetched_once).await;
    assert!(!folder.fs.root().join("late").exists());
    // The content appears; nobody kicks the receiver: its retry does.
    fake.serve(peer, b"arrives later");
    let path = folder.fs.root().join("late");
    until("the retried apply", || {
        std::fs::read(&path).is_ok_and(|c| c == b"arrives later")
    })
    .await;
    assert!(fake.fetches().len() >= 2, "applied by a retry");
}

#[test]
fn a_round_that_cannot_run_is_retried_after_a_doubling_wait() {
    let waits: Vec<Duration> = (1..=9).map(round_retry_delay).collect();
    assert_eq!(waits[0], Duration::from_millis(500));
    assert_eq!(waits[1], Duration::from_secs(1));
    assert_eq!(waits[3], Duration::from_secs(4));
    assert_eq!(waits[8], ROUND_RETRY_MAX);
    assert_eq!(round_retry_delay(u32::MAX), ROUND_RETRY_MAX);
}
