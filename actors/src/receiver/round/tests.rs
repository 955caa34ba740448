//! The round's pure decisions, and whole rounds over a real folder and
//! index with peers faked by [`FakeContent`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering, Arc},
};

use fleetsync_mesh::{
    model::{EntryKind, FileEntry, ShortId},
    EndpointId, Hash,
};

use super::*;
use crate::guard::Removes;
use crate::{
    content::Content,
    health::Health,
    index::{Index, RemoteMark},
    receiver::{big, retry::Wait},
    testing::{self, FakeContent, Scene, ME},
};

const P1: u64 = 1 << 56;
const P2: u64 = 2 << 56;

fn entry(path: &str, kind: EntryKind, content: Option<&[u8]>, by: u64, counter: u64) -> FileEntry {
    testing::entry(path, kind, content, ShortId(by), counter)
}

fn file(path: &str, content: &[u8]) -> FileEntry {
    entry(path, EntryKind::File, Some(content), P1, 1)
}

fn pending(peer: u8, e: FileEntry) -> Pending {
    Pending {
        path: e.path.clone(),
        peer: [peer; 32],
        entry: e,
    }
}

fn by_path(rows: Vec<Pending>) -> BTreeMap<String, Vec<Pending>> {
    let mut m: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    for r in rows {
        m.entry(r.path.clone()).or_default().push(r);
    }
    m
}

fn paths(list: &[Planned]) -> Vec<&str> {
    list.iter().map(|p| p.job.path.as_str()).collect()
}

#[test]
fn plan_sorts_jobs_into_steps_and_deletes_children_first() {
    let mut big = file("big", b"x");
    big.size = BATCH_FILE_MAX + 1;
    let mut gone_dir = entry("old", EntryKind::Directory, None, P1, 1);
    gone_dir.deleted = true;
    let mut gone_child = file("old/f", b"y");
    gone_child.deleted = true;
    let rows = vec![
        pending(1, entry("d", EntryKind::Directory, None, P1, 1)),
        pending(1, file("d/small", b"s")),
        pending(1, big),
        pending(1, entry("l", EntryKind::Symlink, None, P1, 1)),
        pending(1, gone_dir),
        pending(1, gone_child),
    ];
    let plan = plan(by_path(rows), &HashMap::new());
    assert_eq!(paths(&plan.dirs), vec!["d"]);
    assert_eq!(paths(&plan.small_files), vec!["d/small"]);
    assert_eq!(paths(&plan.big_files), vec!["big"]);
    assert_eq!(paths(&plan.links), vec!["l"]);
    assert_eq!(paths(&plan.deletes), vec!["old/f", "old"]);
    assert!(plan.keep.is_empty());
}

#[test]
fn retry_marks_of_rows_that_are_gone_are_stale_only_after_a_complete_read() {
    let waiting: HashSet<Key> = [("a".to_string(), [1; 32]), ("b".to_string(), [1; 32])].into();
    let rows = vec![pending(1, file("a", b"x")), pending(2, file("b", b"y"))];
    let stale = stale_waits(&waiting, &rows, true);
    assert_eq!(
        stale,
        vec![("b".to_string(), [1; 32])],
        "b's row is another peer's"
    );
    assert!(
        stale_waits(&waiting, &rows, false).is_empty(),
        "a partial read tells nothing"
    );
}

fn record(e: FileEntry) -> Record {
    Record {
        entry: e,
        local: None,
        local_changed: false,
        received_from: None,
        refs: None,
    }
}

#[test]
fn rows_of_several_peers_for_one_path_fold_into_one_job() {
    let v1 = entry("a", EntryKind::File, Some(b"v1"), P1, 1);
    let mut v2 = entry("a", EntryKind::File, Some(b"v2"), P1, 2);
    v2.version = v1.version.bump(ShortId(P2)).unwrap();
    let plan = plan(
        by_path(vec![pending(1, v1), pending(2, v2.clone())]),
        &HashMap::new(),
    );
    assert_eq!(plan.small_files.len(), 1);
    let p = &plan.small_files[0];
    assert_eq!(p.job.target, v2, "the newest wins");
    assert_eq!(p.rows.len(), 2, "both rows answered by the one job");
    assert_eq!(p.job.from, [2; 32]);
}

#[test]
fn a_row_older_than_our_record_is_kept_not_applied() {
    let theirs = entry("a", EntryKind::File, Some(b"old"), P1, 1);
    let mut ours = theirs.clone();
    ours.version = ours.version.bump(ME).unwrap();
    let locals = HashMap::from([("a".to_string(), record(ours))]);
    let plan = plan(by_path(vec![pending(1, theirs)]), &locals);
    assert_eq!(plan.keep, vec![("a".to_string(), [1; 32])]);
    assert!(plan.small_files.is_empty());
}

#[test]
fn a_conflict_that_ours_loses_asks_for_a_conflict_copy() {
    let mut ours = entry("a", EntryKind::File, Some(b"ours"), ME.0, 1);
    ours.mtime_ns = 1;
    let mut theirs = entry("a", EntryKind::File, Some(b"theirs"), P1, 1);
    theirs.mtime_ns = 2;
    let locals = HashMap::from([("a".to_string(), record(ours.clone()))]);
    let plan = plan(by_path(vec![pending(1, theirs)]), &locals);
    let job = &plan.small_files[0].job;
    assert!(job.conflict_copy);
    assert_eq!(job.local.as_ref().map(|r| &r.entry), Some(&ours));
    assert!(!job.verbatim, "a merged vector is not the peer's entry");
}

fn planned(path: &str, content: &[u8], from: u8) -> Planned {
    let e = file(path, content);
    Planned {
        rows: vec![(path.to_string(), [from; 32])],
        job: Job {
            path: path.into(),
            local: None,
            target: e,
            conflict_copy: false,
            verbatim: true,
            from: [from; 32],
        },
    }
}

#[test]
fn a_batch_takes_one_job_per_content_and_at_most_its_size() {
    let mut q: VecDeque<Planned> = VecDeque::new();
    q.push_back(planned("a", b"same", 1));
    q.push_back(planned("b", b"same", 1));
    q.push_back(planned("c", b"other", 1));
    let first = next_batch(&mut q);
    assert_eq!(paths(&first), vec!["a", "c"]);
    assert_eq!(paths(&next_batch(&mut q)), vec!["b"]);
    assert!(q.is_empty());
    let mut many: VecDeque<Planned> = (0..BATCH_FILES + 3)
        .map(|i| planned(&i.to_string(), i.to_string().as_bytes(), 1))
        .collect();
    assert_eq!(next_batch(&mut many).len(), BATCH_FILES);
    assert_eq!(many.len(), 3);
}

#[test]
fn big_files_with_equal_content_share_a_group() {
    let groups = group_by_hash(vec![
        planned("a", b"x", 1),
        planned("b", b"y", 1),
        planned("c", b"x", 1),
    ]);
    let mut sizes: Vec<Vec<&str>> = groups.iter().map(|g| paths(g)).collect();
    sizes.sort();
    assert_eq!(sizes, vec![vec!["a", "c"], vec!["b"]]);
}

#[test]
fn the_peers_that_announced_are_asked_first() {
    let peers: Vec<EndpointId> = (0..3).map(|_| FakeContent::new_peer()).collect();
    let mut p = planned("a", b"x", 0);
    p.job.from = *peers[2].as_bytes();
    let order = order_providers(&peers, &[p.clone(), p]);
    assert_eq!(order, vec![peers[2], peers[0], peers[1]]);
    let stranger = planned("b", b"y", 9);
    assert_eq!(order_providers(&peers, &[stranger]), peers);
}

// --- whole rounds -------------------------------------------------------

/// The scene, plus the peer's index sequence as it sends batches.
struct Fixture {
    scene: Scene,
    seq: u64,
}

impl std::ops::Deref for Fixture {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.scene
    }
}

fn fixture() -> Fixture {
    Fixture {
        scene: Scene::new(),
        seq: 0,
    }
}

impl Fixture {
    fn key(&self, path: &str) -> Key {
        (path.to_string(), *self.peer.as_bytes())
    }

    /// The peer's index batch arrives (as the subscription would store it).
    fn ingest(&mut self, entries: &[FileEntry]) {
        self.seq += 1;
        let mark = RemoteMark {
            index_id: 1,
            seq: self.seq,
        };
        let peer = *self.peer.as_bytes();
        let f = &self.scene.folder;
        f.index
            .ingest(f.id(), &peer, mark, entries, crate::index::Limits::NONE)
            .unwrap();
    }

    /// One round, then the big-file jobs it handed off, as the receiver
    /// would run them: one report for all.
    async fn round(&self, waiting: HashSet<Key>) -> RoundReport {
        let sources = testing::sources(&*self.fake);
        let mut report = Round::new(self.folder.clone(), sources.clone())
            .run(waiting, HashSet::new())
            .await
            .unwrap();
        for group in std::mem::take(&mut report.big_files) {
            let done = big::apply_group(self.folder.clone(), group, &sources).await;
            report.resolved.extend(done.resolved);
            report.failed.extend(done.failed);
            report.races.extend(done.races);
            report.progressed |= done.progressed;
        }
        report
    }
}

fn resolved_set(r: &RoundReport) -> HashSet<Key> {
    r.resolved.iter().cloned().collect()
}

#[tokio::test]
async fn a_round_applies_every_kind_and_resolves_every_row() {
    let mut fx = fixture();
    let old = fx.local_file("x", b"to be deleted");
    let mut gone = old.clone();
    gone.deleted = true;
    gone.version = old.version.bump(ShortId(P1)).unwrap();
    let big = vec![5u8; (BATCH_FILE_MAX + 10) as usize];
    fx.fake.serve(fx.peer, b"small");
    fx.fake.serve(fx.peer, &big);
    let entries = vec![
        entry("d", EntryKind::Directory, None, P1, 1),
        entry("d/small", EntryKind::File, Some(b"small"), P1, 1),
        entry("big", EntryKind::File, Some(&big), P1, 1),
        entry("l", EntryKind::Symlink, None, P1, 1),
        gone,
    ];
    fx.ingest(&entries);
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let want: HashSet<Key> = ["d", "d/small", "big", "l", "x"]
        .iter()
        .map(|p| fx.key(p))
        .collect();
    assert_eq!(resolved_set(&report), want);
    assert_eq!(report.resolved.len(), want.len(), "each row answered once");
    assert!(report.progressed);
    assert_eq!(fx.pending_count(), 0);
    assert_eq!(std::fs::read(fx.root().join("d/small")).unwrap(), b"small");
    assert_eq!(std::fs::read(fx.root().join("big")).unwrap(), big);
    assert!(std::fs::symlink_metadata(fx.root().join("l"))
        .unwrap()
        .is_symlink());
    assert!(!fx.root().join("x").exists());
    for e in &entries {
        let r = fx.recorded(&e.path).unwrap();
        assert_eq!(
            (r.entry.deleted, &r.entry.version),
            (e.deleted, &e.version),
            "{}",
            e.path
        );
    }
    assert!(
        *fx.folder.watch_head().borrow() > 0,
        "the distributor was told"
    );
}

#[tokio::test]
async fn content_no_peer_has_is_reported_with_its_cause_and_stays_pending() {
    let mut fx = fixture();
    fx.fake.serve(fx.peer, b"here");
    fx.ingest(&[file("ok", b"here"), file("missing", b"nobody has this")]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("ok")]));
    assert_eq!(report.failed.len(), 1);
    let f = &report.failed[0];
    assert_eq!(f.key, fx.key("missing"));
    assert_eq!(f.wait, Wait::Backoff);
    assert!(f.cause.to_string().contains("missing"), "{}", f.cause);
    assert_eq!(fx.pending_count(), 1, "the row waits for its retry");
    // The content turns up: the next round applies it.
    fx.fake.serve(fx.peer, b"nobody has this");
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("missing")]));
    assert_eq!(fx.pending_count(), 0);
}

#[tokio::test]
async fn a_local_edit_racing_the_round_goes_to_the_watcher_and_waits() {
    let mut fx = fixture();
    let mine = fx.local_file("a", b"mine");
    std::fs::write(fx.root().join("a"), b"mine, edited, not indexed").unwrap();
    let mut theirs = file("a", b"theirs");
    theirs.version = mine.version.bump(ShortId(P1)).unwrap();
    fx.fake.serve(fx.peer, b"theirs");
    fx.ingest(&[theirs]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(report.races, vec!["a".to_string()]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].wait, Wait::Race);
    assert_eq!(
        std::fs::read(fx.root().join("a")).unwrap(),
        b"mine, edited, not indexed"
    );
}

#[tokio::test]
async fn a_hostile_path_is_rejected_counted_and_its_row_resolved() {
    let mut fx = fixture();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), fx.root().join("evil")).unwrap();
    fx.fake.serve(fx.peer, b"payload");
    fx.ingest(&[file("evil/x", b"payload")]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("evil/x")]));
    assert!(report.failed.is_empty());
    assert_eq!(fx.folder.status.rejected.load(Ordering::Relaxed), 1);
    assert!(fx
        .folder
        .status
        .last_error()
        .is_some_and(|e| e.contains("evil/x")));
    assert_eq!(fx.pending_count(), 0);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn rows_waiting_for_their_retry_are_left_alone() {
    let mut fx = fixture();
    fx.fake.serve(fx.peer, b"c");
    fx.ingest(&[file("a", b"c")]);
    let report = fx.round(HashSet::from([fx.key("a")])).await;
    assert_eq!(report.remaining, 1);
    assert!(report.resolved.is_empty() && report.failed.is_empty());
    assert!(!fx.root().join("a").exists());
}

#[tokio::test]
async fn every_pending_row_gets_exactly_one_answer() {
    for seed in 0..4u64 {
        let mut fx = fixture();
        let mut entries = Vec::new();
        for i in 0..24u64 {
            let pick = (i * 7 + seed * 13) % 5;
            let name = format!("p{i}");
            let e = match pick {
                0 => entry(&name, EntryKind::Directory, None, P1, 1),
                1 => entry(&name, EntryKind::Symlink, None, P1, 1),
                2 => {
                    // Content nobody has: fails, retried later.
                    file(&name, format!("absent {i}").as_bytes())
                }
                _ => {
                    let c = format!("content {i} {seed}");
                    fx.fake.serve(fx.peer, c.as_bytes());
                    file(&name, c.as_bytes())
                }
            };
            entries.push(e);
        }
        fx.ingest(&entries);
        let report = fx.round(HashSet::new()).await;
        let mut answered: Vec<Key> = report.resolved.clone();
        answered.extend(report.failed.iter().map(|f| f.key.clone()));
        answered.sort();
        let mut want: Vec<Key> = entries.iter().map(|e| fx.key(&e.path)).collect();
        want.sort();
        assert_eq!(answered, want, "seed {seed}: each row exactly once");
    }
}

#[tokio::test]
async fn a_commit_that_keeps_failing_reports_its_rows_failed_not_resolved() {
    // An index that never initialised the folder refuses every commit
    // (FolderNotInitialised) while still holding pending rows: the honest
    // way to make the real Index::commit fail here.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContent::new();
    let peer = FakeContent::new_peer();
    fake.serve(peer, b"content");
    let mut folder = testing::folder(dir.path(), fake.clone());
    let broken = Index::open(&dir.path().join("uninitialised.redb")).unwrap();
    let mark = RemoteMark {
        index_id: 1,
        seq: 1,
    };
    broken
        .ingest(
            "f",
            peer.as_bytes(),
            mark,
            &[file("a", b"content")],
            crate::index::Limits::NONE,
        )
        .unwrap();
    Arc::get_mut(&mut folder).expect("unshared").index = broken;
    let report = Round::new(folder.clone(), testing::sources(&*fake))
        .run(HashSet::new(), HashSet::new())
        .await
        .unwrap();
    assert!(report.resolved.is_empty(), "nothing counts as done");
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].wait, Wait::Backoff);
    assert!(matches!(*report.failed[0].cause, RoundError::Commit(_)));
    assert_eq!(folder.index.pending_count("f").unwrap(), 1, "row kept");
    assert!(folder.status.last_error().is_some());
}

#[tokio::test]
async fn a_round_hands_big_files_off_and_leaves_paths_in_flight_alone() {
    let mut fx = fixture();
    let big = vec![6u8; (BATCH_FILE_MAX + 1) as usize];
    fx.fake.serve(fx.peer, &big);
    fx.fake.serve(fx.peer, b"small");
    fx.ingest(&[
        file("big", &big),
        file("busy", b"small"),
        file("s", b"small"),
    ]);
    let report = Round::new(fx.folder.clone(), testing::sources(&*fx.fake))
        .run(HashSet::new(), HashSet::from(["busy".to_string()]))
        .await
        .unwrap();
    let handed: Vec<Vec<&str>> = report.big_files.iter().map(|g| paths(g)).collect();
    assert_eq!(handed, vec![vec!["big"]], "handed off, not applied");
    assert!(!fx.root().join("big").exists());
    assert!(fx.fake.fetches().iter().all(|(_, h)| *h != Hash::new(&big)));
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("s")]));
    assert_eq!(report.remaining, 1, "the path in flight waits for its job");
    assert!(!fx.root().join("busy").exists());
    assert!(report.failed.is_empty());
}

#[tokio::test]
async fn a_replaced_receivers_round_commits_nothing_and_reports_nothing() {
    let mut fx = fixture();
    fx.fake.serve(fx.peer, b"late");
    fx.ingest(&[file("a", b"late")]);
    let health = Health::new(1);
    let round = Round::new(
        fx.folder.clone(),
        Sources::new(fx.fake.providers(), health.clone()),
    );
    // Replaced before it commits: the fence is checked in the transaction.
    health.retire();
    let report = round.run(HashSet::new(), HashSet::new()).await.unwrap();
    assert!(report.resolved.is_empty() && report.failed.is_empty());
    assert!(fx.recorded("a").is_none(), "no record written");
    assert_eq!(fx.pending_count(), 1, "its successor finds the row");
}

#[tokio::test]
async fn a_round_is_work_of_its_receiver_while_it_runs() {
    let fx = fixture();
    let health = Health::new(1);
    let round = Round::new(
        fx.folder.clone(),
        Sources::new(fx.fake.providers(), health.clone()),
    );
    assert_eq!(health.vitals().busy, 1);
    round.run(HashSet::new(), HashSet::new()).await.unwrap();
    assert_eq!(health.vitals().busy, 0);
}

#[tokio::test]
async fn a_failed_big_file_job_reports_its_rows_failed_with_their_wait() {
    let mut fx = fixture();
    let big = vec![8u8; (BATCH_FILE_MAX + 1) as usize];
    // Nobody has the content.
    fx.ingest(&[file("big", &big)]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].key, fx.key("big"));
    assert_eq!(report.failed[0].wait, Wait::Backoff);
    assert_eq!(fx.pending_count(), 1);
}

/// Issue 10, case 13 (kill -9 at random points): content a round fetched
/// into the store and placed is durable in the store before the index
/// records it, so a crash right after the commit cannot leave an applied
/// entry this node could never serve onward.
#[tokio::test]
async fn kill9_right_after_an_apply_commit_leaves_the_content_in_the_store() {
    let mut fx = fixture();
    let big = vec![9u8; (BATCH_FILE_MAX + 10) as usize];
    fx.fake.serve(fx.peer, b"small one");
    fx.fake.serve(fx.peer, &big);
    fx.ingest(&[
        file("small", b"small one"),
        entry("big", EntryKind::File, Some(&big), P1, 1),
    ]);
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let stored: Vec<Hash> = ["small", "big"]
        .iter()
        .map(|p| Hash::from_bytes(fx.recorded(p).unwrap().entry.hash.unwrap()))
        .filter(|h| fx.fake.in_store(h))
        .collect();
    assert!(!stored.is_empty(), "the big file went through the store");
    fx.fake.crash();
    for h in stored {
        assert!(
            fx.fake.in_store(&h),
            "the index references content the store lost in the crash"
        );
    }
}

// ---- file vs directory (issue 10, case 5) ----

#[tokio::test]
async fn fsdir_a_peer_file_over_our_directory_with_live_children_is_kept_as_a_copy() {
    let mut fx = fixture();
    fx.local_dir("d");
    fx.local_file("d/x", b"our child");
    // The peer replaced d by a file after seeing our directory.
    let mut file = entry("d", EntryKind::File, Some(b"peer file"), P1, 1);
    file.version = fx.recorded("d").unwrap().entry.version.merge(&file.version);
    fx.fake.serve(fx.peer, b"peer file");
    fx.ingest(std::slice::from_ref(&file));
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(fx.pending_count(), 0);
    assert_eq!(fx.read("d/x"), b"our child");
    let copy = crate::rules::conflict_name("d", file.mtime_ns, file.modified_by);
    assert_eq!(fx.read(&copy), b"peer file");
    let d = fx.recorded("d").unwrap().entry;
    assert_eq!(d.kind, EntryKind::Directory);
    assert_eq!(
        d.version.compare(&file.version),
        fleetsync_mesh::model::Causality::Dominates
    );
    assert!(fx
        .recorded(&copy)
        .is_some_and(|r| r.entry.hash == file.hash));
}

#[tokio::test]
async fn fsdir_a_file_over_a_directory_whose_children_are_deleted_wins() {
    let mut fx = fixture();
    fx.local_dir("e");
    let child = fx.local_file("e/x", b"deleted by the peer");
    let mut gone = child.clone();
    gone.deleted = true;
    gone.version = child.version.bump(ShortId(P1)).unwrap();
    let mut file = entry("e", EntryKind::File, Some(b"peer file"), P1, 1);
    file.version = fx
        .recorded("e")
        .unwrap()
        .entry
        .version
        .bump(ShortId(P1))
        .unwrap();
    fx.fake.serve(fx.peer, b"peer file");
    fx.ingest(&[gone, file]);
    for _ in 0..5 {
        if fx.pending_count() == 0 {
            break;
        }
        fx.round(HashSet::new()).await;
    }
    assert_eq!(fx.pending_count(), 0);
    assert_eq!(fx.read("e"), b"peer file");
    assert_eq!(fx.recorded("e").unwrap().entry.kind, EntryKind::File);
}

#[tokio::test]
async fn fsdir_a_peer_child_under_our_file_moves_the_file_aside() {
    let mut fx = fixture();
    let ours = fx.local_file("d", b"our file");
    fx.fake.serve(fx.peer, b"peer child");
    fx.ingest(&[entry("d/x", EntryKind::File, Some(b"peer child"), P1, 1)]);
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(fx.pending_count(), 0);
    assert_eq!(fx.read("d/x"), b"peer child");
    let copy = crate::rules::conflict_name("d", ours.mtime_ns, ours.modified_by);
    assert_eq!(fx.read(&copy), b"our file");
    let d = fx.recorded("d").unwrap().entry;
    assert_eq!(d.kind, EntryKind::Directory);
    assert_eq!(d.version, ours.version.bump(ME).unwrap());
}

fn deleted(e: &FileEntry, by: u64) -> FileEntry {
    let mut gone = e.clone();
    gone.deleted = true;
    gone.version = e.version.bump(ShortId(by)).unwrap();
    gone
}

#[test]
fn a_delete_whose_content_arrives_elsewhere_in_the_round_is_a_rename_not_counted() {
    let old: Vec<FileEntry> = (0..3)
        .map(|i| entry(&format!("old/{i}"), EntryKind::File, Some(b"same"), P1, 1))
        .collect();
    let locals: HashMap<String, Record> = old
        .iter()
        .map(|e| (e.path.clone(), record(e.clone())))
        .collect();
    let mut rows: Vec<Pending> = old.iter().map(|e| pending(1, deleted(e, P1))).collect();
    // One new file with that content: it accounts for one delete only.
    rows.push(pending(1, file("new/0", b"same")));
    let plan = plan(by_path(rows), &locals);
    let removes: Vec<Removes> = guarded_deletes(&plan, &HashMap::new(), |_| false)
        .iter()
        .map(|d| d.removes)
        .collect();
    let renamed = removes.iter().filter(|r| **r == Removes::Nothing).count();
    assert_eq!(renamed, 1, "{removes:?}");
    assert_eq!(removes.len() - renamed, 2);
    assert!(removes
        .iter()
        .all(|r| matches!(r, Removes::Nothing | Removes::File)));
}

#[tokio::test]
async fn a_mass_delete_stays_pending_and_on_disk_until_resume() {
    let mut fx = fixture();
    *fx.folder.deletes.lock().unwrap() = DeleteGuard::with_grace(std::time::Duration::ZERO);
    let files: Vec<FileEntry> = (0..100)
        .map(|i| fx.local_file(&format!("f{i:03}"), format!("{i}").as_bytes()))
        .collect();
    let gone: Vec<FileEntry> = files[..60].iter().map(|e| deleted(e, P1)).collect();
    fx.fake.serve(fx.peer, b"new");
    let mut batch = gone.clone();
    batch.push(entry("new", EntryKind::File, Some(b"new"), P1, 1));
    fx.ingest(&batch);

    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("new")]));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(fx.pending_count(), 60, "held, not lost");
    assert!(fx.root().join("f000").exists() && fx.root().join("new").exists());
    let held = fx.folder.deletes.lock().unwrap().held().unwrap();
    assert_eq!((held.paths, held.files_deleted, held.files), (60, 60, 100));

    // The next round leaves the held rows alone.
    let again = fx.round(HashSet::new()).await;
    assert!(again.resolved.is_empty() && again.failed.is_empty() && !again.progressed);

    assert_eq!(fx.folder.deletes.lock().unwrap().resume(), 60);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(report.resolved.len(), 60);
    let mut guard = fx.folder.deletes.lock().unwrap();
    for key in &report.resolved {
        guard.done(key);
    }
    assert_eq!(guard.held(), None);
    drop(guard);
    assert_eq!(fx.pending_count(), 0);
    assert!(!fx.root().join("f000").exists() && fx.root().join("f060").exists());
}

/// A peer can send a child before its directory (its hasher committed the
/// file first). The directory the round makes for the child must not be
/// recorded by our hasher as a new local version: that version could reach
/// the origin after it deleted the tree and bring the directory back on
/// every node, empty (issue 11, found by the restore test in CI).
#[tokio::test]
async fn a_parent_made_for_a_child_before_its_own_entry_is_not_recorded_as_ours() {
    let mut fx = fixture();
    fx.fake.serve(fx.peer, b"child");
    fx.ingest(&[file("d/f", b"child")]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("d/f")]));
    assert!(fx.root().join("d").is_dir(), "made for its child");
    assert_eq!(fx.folder.maps().expected_dirs, 1);

    // The watcher saw the new directory: the hasher leaves it unrecorded.
    let health = crate::health::Health::new(1);
    let out = crate::hasher::hash_batch(fx.folder.clone(), health, vec!["d".into()]).await;
    assert!(out.failed.is_empty(), "{out:?}");
    assert!(
        fx.recorded("d").is_none(),
        "recorded as ours: {:?}",
        fx.recorded("d")
    );

    // Its own entry arrives and is applied: the peer's version, not ours.
    let d = entry("d", EntryKind::Directory, None, P1, 1);
    fx.ingest(std::slice::from_ref(&d));
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("d")]));
    assert_eq!(fx.recorded("d").unwrap().entry.version, d.version);
    assert_eq!(fx.folder.maps().expected_dirs, 0, "no longer expected");

    // The origin deletes the tree: it goes here too.
    let mut gone_f = entry("d/f", EntryKind::File, Some(b"child"), P1, 2);
    gone_f.deleted = true;
    let mut gone_d = entry("d", EntryKind::Directory, None, P1, 2);
    gone_d.deleted = true;
    fx.ingest(&[gone_d, gone_f]);
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(!fx.root().join("d").exists());
    assert!(fx.recorded("d").unwrap().entry.deleted);
}

/// The other side of the expected-directory mark: a directory made here
/// (by the user) that the watcher has not indexed yet when a peer's child
/// of the same name arrives is ours. Marked expected, it was never
/// recorded, so deleting the tree here left it on every other node
/// (issue 11: `proj` stayed on n1 in the restore test in CI).
#[tokio::test]
async fn a_local_directory_not_yet_indexed_is_not_taken_for_one_the_round_makes() {
    let mut fx = fixture();
    std::fs::create_dir(fx.root().join("d")).unwrap();
    fx.fake.serve(fx.peer, b"child");
    fx.ingest(&[file("d/f", b"child")]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("d/f")]));
    assert_eq!(fx.folder.maps().expected_dirs, 0, "made by the user");

    let health = crate::health::Health::new(1);
    let out = crate::hasher::hash_batch(fx.folder.clone(), health, vec!["d".into()]).await;
    assert!(out.failed.is_empty(), "{out:?}");
    let d = fx
        .recorded("d")
        .expect("the user's directory is recorded as ours");
    assert_eq!(d.entry.kind, EntryKind::Directory);
    assert!(!d.entry.deleted);
}

/// Regression: a directory this node deleted (its record a tombstone),
/// recreated for a peer's file, was marked expected and so never recorded
/// again: the tombstone stayed and peers holding it could not apply it
/// under the live child. The child revives the directory.
#[tokio::test]
async fn a_directory_deleted_here_and_revived_by_a_peers_file_is_recorded_again() {
    let mut fx = fixture();
    let health = || crate::health::Health::new(1);
    std::fs::create_dir(fx.root().join("d")).unwrap();
    crate::hasher::hash_batch(fx.folder.clone(), health(), vec!["d".into()]).await;
    std::fs::remove_dir(fx.root().join("d")).unwrap();
    crate::hasher::hash_batch(fx.folder.clone(), health(), vec!["d".into()]).await;
    let gone = fx.recorded("d").expect("a tombstone");
    assert!(gone.entry.deleted);

    fx.fake.serve(fx.peer, b"child");
    fx.ingest(&[file("d/f", b"child")]);
    let report = fx.round(HashSet::new()).await;
    assert_eq!(resolved_set(&report), HashSet::from([fx.key("d/f")]));
    assert_eq!(fx.folder.maps().expected_dirs, 0, "revived, not expected");

    let out = crate::hasher::hash_batch(fx.folder.clone(), health(), vec!["d".into()]).await;
    assert!(out.failed.is_empty(), "{out:?}");
    let d = fx.recorded("d").expect("recorded");
    assert_eq!(d.entry.kind, EntryKind::Directory);
    assert!(!d.entry.deleted, "live again");
    assert_eq!(
        gone.entry.version.compare(&d.entry.version),
        fleetsync_mesh::model::Causality::DominatedBy,
        "the revival supersedes the delete everywhere"
    );
}

/// Live paths by hash, as `Index::paths_with_hashes` gives them.
fn live_by_hash(files: &[FileEntry]) -> HashMap<[u8; 32], Vec<String>> {
    let mut m: HashMap<[u8; 32], Vec<String>> = HashMap::new();
    for e in files {
        m.entry(e.hash.unwrap()).or_default().push(e.path.clone());
    }
    m
}

#[test]
fn a_delete_whose_content_is_live_under_another_path_is_a_move_each_copy_used_once() {
    // "same" lives at old/0, old/1 and keep; "only" at old/2 and gone.
    let old: Vec<FileEntry> = (0..2)
        .map(|i| entry(&format!("old/{i}"), EntryKind::File, Some(b"same"), P1, 1))
        .chain([entry("old/2", EntryKind::File, Some(b"only"), P1, 1)])
        .collect();
    let keep = entry("keep", EntryKind::File, Some(b"same"), P1, 1);
    let gone = entry("gone", EntryKind::File, Some(b"only"), P1, 1);
    let all: Vec<FileEntry> = old.iter().chain([&keep, &gone]).cloned().collect();
    let locals: HashMap<String, Record> = all
        .iter()
        .map(|e| (e.path.clone(), record(e.clone())))
        .collect();
    let mut rows: Vec<Pending> = old.iter().map(|e| pending(1, deleted(e, P1))).collect();
    rows.push(pending(1, deleted(&gone, P1)));
    let plan = plan(by_path(rows), &locals);
    let deletes = guarded_deletes(&plan, &live_by_hash(&all), |_| false);
    let by: HashMap<&str, (Removes, Option<&str>)> = deletes
        .iter()
        .map(|d| (d.path.as_str(), (d.removes, d.witness.as_deref())))
        .collect();
    // One of old/0, old/1 moved onto keep; the other is a loss: keep is
    // used up, and old/0 and old/1 are both deleted here.
    let moved: Vec<_> = ["old/0", "old/1"]
        .iter()
        .filter(|p| by[*p] == (Removes::Nothing, Some("keep")))
        .collect();
    assert_eq!(moved.len(), 1, "{by:?}");
    assert_eq!(
        ["old/0", "old/1"]
            .iter()
            .filter(|p| by[*p].0 == Removes::File)
            .count(),
        1,
        "{by:?}"
    );
    // Every copy of "only" is deleted: both count.
    assert_eq!(by["old/2"], (Removes::File, None));
    assert_eq!(by["gone"], (Removes::File, None));

    // A copy the guard says is used up (held, or it excused a delete
    // before) keeps nothing.
    let deletes = guarded_deletes(&plan, &live_by_hash(&all), |p| p == "keep");
    assert!(
        deletes.iter().all(|d| d.removes == Removes::File),
        "{deletes:?}"
    );
}

#[tokio::test]
async fn a_delete_burst_whose_content_was_received_under_new_paths_first_is_applied() {
    let mut fx = fixture();
    *fx.folder.deletes.lock().unwrap() = DeleteGuard::with_grace(std::time::Duration::ZERO);
    let files: Vec<FileEntry> = (0..100)
        .map(|i| fx.local_file(&format!("f{i:03}"), format!("{i}").as_bytes()))
        .collect();
    // 60 of them copied to new paths (a move whose creates came first) ...
    fx.local_dir("moved");
    for (i, e) in files[..60].iter().enumerate() {
        fx.local_file(&format!("moved/{}", e.path), format!("{i}").as_bytes());
    }
    // ... then the old paths' deletes: 60 of 160 live files, but no
    // content is lost.
    let gone: Vec<FileEntry> = files[..60].iter().map(|e| deleted(e, P1)).collect();
    fx.ingest(&gone);
    let report = fx.round(HashSet::new()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.resolved.len(), 60);
    assert_eq!(fx.folder.deletes.lock().unwrap().held(), None);
    assert_eq!(fx.pending_count(), 0);
    assert!(!fx.root().join("f000").exists() && fx.root().join("moved/f000").exists());
}

#[tokio::test]
async fn a_mass_delete_waits_out_the_grace_pending_and_is_held_after_it() {
    let mut fx = fixture();
    let files: Vec<FileEntry> = (0..100)
        .map(|i| fx.local_file(&format!("f{i:03}"), format!("{i}").as_bytes()))
        .collect();
    let gone: Vec<FileEntry> = files[..60].iter().map(|e| deleted(e, P1)).collect();
    fx.ingest(&gone);
    let report = fx.round(HashSet::new()).await;
    assert!(report.resolved.is_empty() && report.failed.is_empty());
    let guard = fx.folder.deletes.lock().unwrap();
    assert_eq!(guard.held(), None, "waiting out the grace, not held yet");
    assert_eq!(guard.deferred_rows(), 60);
    assert!(
        guard.recheck_at().is_some(),
        "a round is due after the grace"
    );
    drop(guard);
    assert_eq!(fx.pending_count(), 60);
    assert!(fx.root().join("f000").exists());
}
