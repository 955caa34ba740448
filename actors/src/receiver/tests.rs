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
    receiver::round::BATCH_FILE_MAX,
    testing::{self, FakeContent, Scene},
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
    assert_eq!(n.stored, 2, "both entries became pending");
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

fn ingest(peer: EndpointId, seq: u64, entries: Vec<FileEntry>) -> Ingest {
    Ingest {
        peer,
        mark: RemoteMark { index_id: 1, seq },
        entries,
    }
}

#[actix::test]
async fn a_big_file_whose_peer_hangs_holds_back_nothing_else_and_lands_once_another_peer_serves_it()
{
    let scene = Scene::new();
    let (fake, folder, peer) = (scene.fake.clone(), scene.folder.clone(), scene.peer);
    let gone = scene.local_file("gone", b"to be deleted");
    let big = vec![9u8; BATCH_FILE_MAX as usize + 1];
    let big_hash = fake.serve(peer, &big);
    fake.serve(peer, b"small");
    // The peer accepts the fetch, sends a little, then nothing (its
    // connection stays up): only the transfer deadline would end it.
    fake.hang(peer, big_hash, 1000);
    let receiver = Receiver::new(folder.clone(), Slot::default(), Health::new(1)).start();
    receiver
        .send(ingest(peer, 1, vec![file("big", &big)]))
        .await
        .unwrap()
        .unwrap();
    let in_transfer = || folder.status.transfers().iter().any(|(p, _)| p == "big");
    until("the big file's transfer to hang", in_transfer).await;

    let mut dir = file("d", b"");
    (dir.kind, dir.size, dir.hash) = (EntryKind::Directory, 0, None);
    let mut tombstone = gone.clone();
    tombstone.deleted = true;
    tombstone.version = gone.version.bump(ShortId(1 << 56)).unwrap();
    let batch = vec![dir, file("d/small", b"small"), tombstone];
    receiver
        .send(ingest(peer, 2, batch))
        .await
        .unwrap()
        .unwrap();
    let root = folder.fs.root().to_path_buf();
    until("the small file, directory and delete", || {
        std::fs::read(root.join("d/small")).is_ok_and(|c| c == b"small")
            && !root.join("gone").exists()
            && folder.index.pending_count("f").unwrap() == 1
    })
    .await;
    assert!(in_transfer(), "applied while the big file still hangs");
    assert!(!root.join("big").exists());
    let big_fetches = || fake.fetches().iter().filter(|f| f.1 == big_hash).count();
    assert_eq!(big_fetches(), 1, "the hung transfer was never restarted");

    // Another member that has the content; the hung connection finally drops.
    let other = FakeContent::new_peer();
    fake.serve(other, &big);
    fake.release(peer, big_hash);
    until("the big file from the other member", || {
        std::fs::read(root.join("big")).is_ok_and(|c| c == big)
    })
    .await;
    until("no pending rows", || {
        folder.index.pending_count("f").unwrap() == 0
    })
    .await;
    assert!(fake.fetches().contains(&(other, big_hash)));
}

#[test]
fn a_round_that_cannot_run_is_retried_after_a_doubling_wait() {
    // The n-th wait lies in [d/2, d], d doubling from 500 ms to the cap.
    let within = |w: Duration, d: Duration| w >= d / 2 && w <= d;
    let waits: Vec<Duration> = (1..=9).map(round_retry_delay).collect();
    assert!(within(waits[0], Duration::from_millis(500)), "{waits:?}");
    assert!(within(waits[1], Duration::from_secs(1)), "{waits:?}");
    assert!(within(waits[3], Duration::from_secs(4)), "{waits:?}");
    assert!(within(waits[8], ROUND_RETRY_MAX), "{waits:?}");
    assert!(within(round_retry_delay(u32::MAX), ROUND_RETRY_MAX));
}

/// Small files go in batches; the next batch's content used to be asked
/// for only once the previous batch was placed and committed, so every
/// batch waited for its transfer and then for the disk, in turn.
#[actix::test]
async fn the_next_batch_is_fetched_while_the_one_before_is_placed() {
    let scene = Scene::new();
    let (fake, folder, peer) = (scene.fake.clone(), scene.folder.clone(), scene.peer);
    let first: Vec<FileEntry> = (0..512)
        .map(|i| {
            let content = format!("first batch, file {i}");
            fake.serve(peer, content.as_bytes());
            file(&format!("a/f{i:03}"), content.as_bytes())
        })
        .collect();
    let last_of_first = first.last().unwrap().path.clone();
    let next = fake.serve(peer, b"next batch");
    // While the next batch's content is sent: is the first one committed?
    let seen = Arc::new(std::sync::Mutex::new(None));
    let (f, s, last) = (folder.clone(), seen.clone(), last_of_first.clone());
    fake.while_sending(next, move || {
        let committed = f.index.get("f", &last).unwrap().is_some();
        *s.lock().unwrap() = Some(committed);
    });
    let mut entries = first;
    entries.push(file("b", b"next batch"));
    let receiver = Receiver::new(folder.clone(), Slot::default(), Health::new(1)).start();
    receiver
        .send(ingest(peer, 1, entries))
        .await
        .unwrap()
        .unwrap();
    until("every file applied", || {
        folder.index.pending_count("f").unwrap() == 0
    })
    .await;
    assert_eq!(scene.read("b"), b"next batch");
    assert_eq!(scene.read(&last_of_first), b"first batch, file 511");
    let committed = seen
        .lock()
        .unwrap()
        .expect("the next batch's content was sent");
    assert!(
        !committed,
        "the next batch was fetched only after the first was committed"
    );
}
