//! The apply pipeline driven through the in-memory content fake: real
//! folder, real index, real file system; peers and the store are fakes.

use std::{
    collections::HashSet,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
    sync::atomic::Ordering,
};

use fleetsync_mesh::{
    model::{EntryKind, FileEntry, ShortId},
    EndpointId, Hash,
};

use super::*;
use crate::content::Content;
use crate::{
    folder::Folder,
    index::Released,
    testing::{self, FakeContent, Scene},
};

const PEER_SHORT: u64 = 9 << 56;

fn entry(path: &str, kind: EntryKind, content: Option<&[u8]>, counter: u64) -> FileEntry {
    testing::entry(path, kind, content, ShortId(PEER_SHORT), counter)
}

fn file(path: &str, content: &[u8], counter: u64) -> FileEntry {
    entry(path, EntryKind::File, Some(content), counter)
}

fn job(folder: &Folder, target: FileEntry, from: EndpointId) -> Job {
    Job {
        path: target.path.clone(),
        local: folder.index.get(folder.id(), &target.path).unwrap(),
        target,
        conflict_copy: false,
        verbatim: true,
        from: *from.as_bytes(),
    }
}

fn fixture() -> Scene {
    Scene::new()
}

trait ApplyIn {
    /// Apply one job with the scene's connected peers as providers.
    async fn apply(&self, j: Job) -> Outcome;
}

impl ApplyIn for Scene {
    async fn apply(&self, j: Job) -> Outcome {
        apply_one(&self.folder, j, &testing::sources(&*self.fake)).await
    }
}

/// A special file (a FIFO) at `p`.
fn make_fifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn files_under_root(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != ".fleetsync")
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_new_file_is_fetched_verified_and_placed_with_mode_and_mtime() {
    let fx = fixture();
    fx.fake.serve(fx.peer, b"hello fleet");
    let target = file("a.txt", b"hello fleet", 1);
    let applied = fx
        .apply(job(&fx.folder, target.clone(), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("a.txt"), b"hello fleet");
    let meta = std::fs::metadata(fx.root().join("a.txt")).unwrap();
    // The sender's 0o640 has no exec bits: 0o666 through the umask 022.
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_eq!(
        meta.mtime() as i64 * 1_000_000_000 + meta.mtime_nsec(),
        target.mtime_ns
    );
    let stat = fx.stat("a.txt");
    assert_eq!(applied.record.local, Some(stat), "record matches the disk");
    assert_eq!(applied.record.entry, target);
    let link = applied
        .record
        .refs
        .clone()
        .expect("content kept in a refs link");
    assert!(fx.folder.fs.refs_dir().join(link).is_file());
    assert!(applied.note.starts_with("applied from"), "{}", applied.note);
    assert_eq!(fx.folder.status.files_in.load(Ordering::Relaxed), 1);
    assert_eq!(fx.folder.status.bytes_in.load(Ordering::Relaxed), 11);
}

#[tokio::test]
async fn a_batch_of_small_files_is_fetched_once_each_and_placed_together() {
    let fx = fixture();
    std::fs::create_dir(fx.root().join("d")).unwrap();
    let jobs: Vec<Job> = (0..20)
        .map(|i| {
            let content = format!("file {i}");
            fx.fake.serve(fx.peer, content.as_bytes());
            job(
                &fx.folder,
                file(&format!("d/{i}"), content.as_bytes(), 1),
                fx.peer,
            )
        })
        .collect();
    let out = apply_files(&fx.folder, jobs, &testing::sources(&*fx.fake), Flush::Batch).await;
    assert_eq!(out.len(), 20, "one outcome per job");
    for (j, o) in &out {
        assert!(o.is_ok(), "{}: {:?}", j.path, o.as_ref().err());
        assert_eq!(
            fx.read(&j.path),
            format!("file {}", &j.path[2..]).as_bytes()
        );
    }
    assert_eq!(
        fx.fake.fetches().len(),
        20,
        "each content fetched exactly once"
    );
    assert_eq!(
        std::fs::read_dir(fx.folder.fs.tmp_dir()).unwrap().count(),
        0,
        "no temp files left behind"
    );
}

#[tokio::test]
async fn a_local_edit_made_during_the_apply_is_never_overwritten() {
    let fx = fixture();
    let mine = fx.local_file("a.txt", b"mine v1");
    // The user edits the file after the remote change was decided.
    let j = job(&fx.folder, file("a.txt", b"theirs", 2), fx.peer);
    std::fs::write(fx.root().join("a.txt"), b"mine v2, not indexed yet").unwrap();
    fx.fake.serve(fx.peer, b"theirs");
    let e = fx.apply(j).await.unwrap_err();
    assert!(matches!(e, ApplyError::LocalChange { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::LocalRace);
    assert_eq!(fx.read("a.txt"), b"mine v2, not indexed yet");
    assert_eq!(mine.path, "a.txt");
}

#[tokio::test]
async fn a_losing_local_file_is_kept_as_a_conflict_copy() {
    let fx = fixture();
    fx.local_file("notes.md", b"ours");
    fx.fake.serve(fx.peer, b"theirs");
    let mut j = job(&fx.folder, file("notes.md", b"theirs", 2), fx.peer);
    j.conflict_copy = true;
    let applied = fx.apply(j).await.unwrap();
    assert_eq!(fx.read("notes.md"), b"theirs");
    let names = files_under_root(fx.root());
    let copy = names
        .iter()
        .find(|n| n.starts_with("notes.sync-conflict-") && n.ends_with(".md"))
        .unwrap_or_else(|| panic!("no conflict copy in {names:?}"));
    assert_eq!(fx.read(copy), b"ours");
    assert!(applied.note.contains("conflict"), "{}", applied.note);
    assert_eq!(fx.folder.status.conflicts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_fetch_that_breaks_half_way_leaves_the_old_file_and_succeeds_on_retry() {
    let fx = fixture();
    fx.local_file("big.bin", b"old content");
    let new = vec![7u8; 4096];
    let hash = fx.fake.serve(fx.peer, &new);
    fx.fake.break_after(hash, 1000);
    let target = file("big.bin", &new, 2);
    let e = fx
        .apply(job(&fx.folder, target.clone(), fx.peer))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::Fetch { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Backoff);
    assert_eq!(fx.read("big.bin"), b"old content", "never partial");
    assert_eq!(files_under_root(fx.root()), vec!["big.bin"]);
    assert!(
        fx.folder.status.transfers().is_empty(),
        "transfer no longer shown"
    );
    fx.fake.mend(&hash);
    fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
    assert_eq!(fx.read("big.bin"), new);
}

#[tokio::test]
async fn with_no_connected_peer_the_apply_is_retried_later() {
    let fx = fixture();
    fx.fake.disconnect(&fx.peer);
    let e = fx
        .apply(job(&fx.folder, file("a", b"x", 1), fx.peer))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::NoProvider { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Backoff);
    assert!(!fx.root().join("a").exists());
}

#[tokio::test]
async fn another_peer_serves_what_the_first_cannot() {
    let fx = fixture();
    let second = FakeContent::new_peer();
    let hash = fx.fake.serve(second, b"only the second has it");
    let sources = Sources::new(vec![fx.peer, second], crate::health::Health::new(1));
    let j = job(&fx.folder, file("a", b"only the second has it", 1), fx.peer);
    apply_one(&fx.folder, j, &sources).await.unwrap();
    assert_eq!(fx.read("a"), b"only the second has it");
    assert_eq!(fx.fake.fetches(), vec![(fx.peer, hash), (second, hash)]);
}

#[tokio::test]
async fn a_metadata_only_change_fetches_nothing() {
    let fx = fixture();
    let mine = fx.local_file("run.sh", b"#!/bin/sh\n");
    let mut target = mine.clone();
    target.version = target.version.bump(ShortId(PEER_SHORT)).unwrap();
    target.mode = 0o755;
    let applied = fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
    assert_eq!(mode_of(&fx.root().join("run.sh")), 0o755);
    assert!(fx.fake.fetches().is_empty());
    assert!(
        applied.note.starts_with("updated metadata"),
        "{}",
        applied.note
    );
}

#[tokio::test]
async fn an_empty_file_needs_no_transfer() {
    let fx = fixture();
    fx.apply(job(&fx.folder, file("empty", b"", 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("empty"), b"");
    assert!(fx.fake.fetches().is_empty());
}

#[tokio::test]
async fn a_file_replacing_an_empty_directory_is_placed_in_one_round() {
    // Regression: the directory was removed, but the apply then compared the
    // disk with its pre-removal snapshot and stopped as a "local race".
    let fx = fixture();
    fx.local_dir("x");
    fx.fake.serve(fx.peer, b"now a file");
    fx.apply(job(&fx.folder, file("x", b"now a file", 2), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("x"), b"now a file");
}

#[tokio::test]
async fn a_non_empty_directory_in_the_way_of_a_file_is_retried() {
    let fx = fixture();
    fx.local_dir("x");
    std::fs::write(fx.root().join("x/keep"), b"k").unwrap();
    fx.fake.serve(fx.peer, b"f");
    let e = fx
        .apply(job(&fx.folder, file("x", b"f", 2), fx.peer))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::DirectoryInTheWay { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Backoff);
    assert!(fx.root().join("x/keep").is_file());
}

#[tokio::test]
async fn an_unknown_directory_in_the_way_is_a_local_change() {
    let fx = fixture();
    std::fs::create_dir(fx.root().join("x")).unwrap();
    fx.fake.serve(fx.peer, b"f");
    let e = fx
        .apply(job(&fx.folder, file("x", b"f", 2), fx.peer))
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::LocalRace, "{e}");
    assert!(fx.root().join("x").is_dir());
}

#[tokio::test]
async fn a_path_through_a_symlink_is_rejected_and_nothing_is_written_outside() {
    let fx = fixture();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), fx.root().join("evil")).unwrap();
    fx.fake.serve(fx.peer, b"payload");
    let e = fx
        .apply(job(&fx.folder, file("evil/x", b"payload", 1), fx.peer))
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Reject, "{e}");
    let e = fx
        .apply(job(
            &fx.folder,
            entry("evil/d", EntryKind::Directory, None, 1),
            fx.peer,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Reject, "{e}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_directory_gets_0o777_through_the_umask_whatever_its_sender_says() {
    let fx = fixture();
    fx.apply(job(
        &fx.folder,
        entry("d", EntryKind::Directory, None, 1),
        fx.peer,
    ))
    .await
    .unwrap();
    assert_eq!(mode_of(&fx.root().join("d")), 0o755);
    for (name, mode) in [("e", 0), ("g", 0o42777), ("h", 0o700)] {
        let mut e = entry(name, EntryKind::Directory, None, 1);
        e.mode = mode;
        let applied = fx.apply(job(&fx.folder, e, fx.peer)).await.unwrap();
        assert_eq!(mode_of(&fx.root().join(name)), 0o755, "{mode:o}");
        assert!(applied.note.starts_with("created directory"));
    }
}

/// CI flake of `permission_bits_go_through_each_nodes_umask…`: `d/inner.txt`
/// was indexed (and so arrived) before `d`, its apply made `d` with the
/// daemon's umask (0o755), and `d`'s own entry then found a directory and
/// kept that mode, whatever the folder's `umask = "077"` said.
#[tokio::test]
async fn regression_a_parent_made_for_a_file_before_its_own_entry_gets_the_folder_umask() {
    let fx = Scene::with_cfg(crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT, |c| {
        c.umask = fleetsync_config::Umask(0o077)
    });
    fx.fake.serve(fx.peer, b"inner");
    fx.apply(job(&fx.folder, file("d/e/inner.txt", b"inner", 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(mode_of(&fx.root().join("d")), 0o700);
    assert_eq!(mode_of(&fx.root().join("d/e")), 0o700);
    assert_eq!(mode_of(&fx.root().join("d/e/inner.txt")), 0o600);
    for dir in ["d", "d/e"] {
        fx.apply(job(
            &fx.folder,
            entry(dir, EntryKind::Directory, None, 1),
            fx.peer,
        ))
        .await
        .unwrap();
        assert_eq!(mode_of(&fx.root().join(dir)), 0o700, "{dir}");
    }
}

#[tokio::test]
async fn a_received_file_mode_keeps_only_exec_bits_through_the_umask() {
    // A member asking for world-writable, setuid or mode 0 gets neither.
    let fx = fixture();
    for (name, mode, want) in [
        ("ww", 0o100666, 0o644),
        ("suid", 0o104777, 0o755),
        ("zero", 0o100000, 0o644),
        ("x", 0o100700, 0o744),
    ] {
        fx.fake.serve(fx.peer, name.as_bytes());
        let mut target = file(name, name.as_bytes(), 1);
        target.mode = mode;
        let applied = fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
        assert_eq!(mode_of(&fx.root().join(name)), want, "{name}");
        assert_eq!(
            applied.record.local,
            Some(fx.stat(name)),
            "record matches the disk"
        );
    }
}

fn tombstone(path: &str, kind: EntryKind, counter: u64) -> FileEntry {
    let mut e = entry(path, kind, None, counter);
    e.deleted = true;
    e
}

#[tokio::test]
async fn a_directory_delete_waits_for_its_contents_to_go() {
    let fx = fixture();
    fx.local_dir("d");
    std::fs::write(fx.root().join("d/f"), b"x").unwrap();
    let j = job(&fx.folder, tombstone("d", EntryKind::Directory, 2), fx.peer);
    let e = fx.apply(j).await.unwrap_err();
    assert!(matches!(e, ApplyError::NotEmptyYet { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Soon);
    assert!(fx.root().join("d/f").is_file());
}

#[tokio::test]
async fn a_directory_holding_only_ignored_files_is_kept_but_recorded_deleted() {
    let fx = fixture();
    std::fs::write(fx.root().join(".fleetsyncignore"), "*.tmp\n").unwrap();
    fx.folder.reload_ignore();
    fx.local_dir("d");
    std::fs::write(fx.root().join("d/scratch.tmp"), b"x").unwrap();
    let j = job(&fx.folder, tombstone("d", EntryKind::Directory, 2), fx.peer);
    let applied = fx.apply(j).await.unwrap();
    assert!(applied.record.entry.deleted);
    assert!(
        fx.root().join("d/scratch.tmp").is_file(),
        "ignored file kept"
    );
}

#[tokio::test]
async fn a_symlink_is_created_as_a_link_and_never_followed() {
    let fx = fixture();
    let mut link = entry("l", EntryKind::Symlink, None, 1);
    link.symlink_target = Some("../../etc/passwd".into());
    fx.apply(job(&fx.folder, link, fx.peer)).await.unwrap();
    let target = std::fs::read_link(fx.root().join("l")).unwrap();
    assert_eq!(target.to_str(), Some("../../etc/passwd"));
}

#[tokio::test]
async fn deleting_what_is_already_gone_succeeds_and_a_changed_file_is_kept() {
    let fx = fixture();
    let j = job(
        &fx.folder,
        tombstone("never-here", EntryKind::File, 2),
        fx.peer,
    );
    assert!(fx.apply(j).await.unwrap().record.entry.deleted);
    fx.local_file("a", b"v1");
    let j = job(&fx.folder, tombstone("a", EntryKind::File, 2), fx.peer);
    std::fs::write(fx.root().join("a"), b"v2 edited").unwrap();
    let e = fx.apply(j).await.unwrap_err();
    assert_eq!(e.disposition(), Disposition::LocalRace);
    assert_eq!(fx.read("a"), b"v2 edited");
}

#[tokio::test]
async fn content_of_a_file_deleted_a_moment_ago_is_reused_for_its_new_name() {
    let fx = fixture();
    let content = b"renamed, not re-downloaded";
    let hash = *Hash::new(content).as_bytes();
    std::fs::write(fx.folder.fs.refs_dir().join("lold"), content).unwrap();
    fx.folder.release(vec![Released {
        name: "lold".into(),
        hash: Some(hash),
    }]);
    fx.fake.disconnect(&fx.peer);
    fx.apply(job(&fx.folder, file("new-name", content, 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("new-name"), content);
    assert!(fx.fake.fetches().is_empty(), "nothing downloaded");
}

#[tokio::test]
async fn a_local_copy_edited_in_place_since_it_was_hashed_is_not_trusted() {
    let fx = fixture();
    let content = b"the real content";
    // The store references a local file that was then edited in place.
    let local = fx.root().join("copy");
    std::fs::write(&local, content).unwrap();
    fx.fake.import(local.clone(), &|_| {}).await.unwrap();
    std::fs::write(&local, b"edited in place!").unwrap();
    let hash = fx.fake.serve(fx.peer, content);
    fx.apply(job(&fx.folder, file("b", content, 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("b"), content, "verified content only");
    assert_eq!(fx.fake.fetches(), vec![(fx.peer, hash)], "fetched instead");
}

#[tokio::test]
async fn content_already_in_the_store_needs_no_peer() {
    let fx = fixture();
    let content = b"fetched by an earlier attempt";
    let hash = fx.fake.serve(fx.peer, content);
    let progress = std::sync::atomic::AtomicU64::new(0);
    fx.fake.fetch(fx.peer, hash, &progress).await.unwrap();
    fx.fake.disconnect(&fx.peer);
    fx.apply(job(&fx.folder, file("a", content, 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("a"), content);
    assert_eq!(fx.fake.fetches().len(), 1, "only the earlier fetch");
}

#[tokio::test]
async fn duplicate_content_in_one_batch_still_gets_one_outcome_per_job() {
    let fx = fixture();
    fx.fake.serve(fx.peer, b"same");
    let jobs = vec![
        job(&fx.folder, file("a", b"same", 1), fx.peer),
        job(&fx.folder, file("b", b"same", 1), fx.peer),
    ];
    let out = apply_files(&fx.folder, jobs, &testing::sources(&*fx.fake), Flush::Batch).await;
    let mut paths: Vec<_> = out.iter().map(|(j, _)| j.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, vec!["a", "b"]);
    assert!(out.iter().any(|(_, o)| o.is_ok()));
}

#[tokio::test]
async fn the_hasher_stays_off_a_path_until_its_applied_record_is_gone() {
    // Regression: a metadata-only apply dropped its guard before the
    // record was committed, so the hasher could index against a stale one.
    let fx = fixture();
    let mine = fx.local_file("run.sh", b"echo");
    let mut target = mine.clone();
    target.version = target.version.bump(ShortId(PEER_SHORT)).unwrap();
    target.mode = 0o755;
    let applied = fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
    assert!(fx.folder.is_applying("run.sh"), "metadata-only apply");
    drop(applied);
    assert!(!fx.folder.is_applying("run.sh"));
    fx.fake.serve(fx.peer, b"new");
    let applied = fx
        .apply(job(&fx.folder, file("new", b"new", 1), fx.peer))
        .await
        .unwrap();
    assert!(fx.folder.is_applying("new"), "content apply");
    drop(applied);
    assert!(!fx.folder.is_applying("new"));
}

#[tokio::test]
async fn a_local_edit_made_while_the_content_downloads_is_never_overwritten() {
    let fx = fixture();
    fx.local_file("a", b"v1");
    let new = b"v2 from the fleet";
    let hash = fx.fake.serve(fx.peer, new);
    let path = fx.root().join("a");
    fx.fake.while_sending(hash, move || {
        std::fs::write(path, b"v1 edited meanwhile").unwrap()
    });
    let e = fx
        .apply(job(&fx.folder, file("a", new, 2), fx.peer))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::LocalChange { .. }), "{e}");
    assert_eq!(fx.read("a"), b"v1 edited meanwhile");
    // The edit is indexed (as the hasher would), the entry decided again
    // as a conflict: the downloaded content was kept, no peer is needed.
    fx.local_file("a", b"v1 edited meanwhile");
    fx.fake.disconnect(&fx.peer);
    let mut j = job(&fx.folder, file("a", new, 2), fx.peer);
    j.conflict_copy = true;
    fx.apply(j).await.unwrap();
    assert_eq!(fx.read("a"), new);
    assert_eq!(fx.fake.fetches().len(), 1, "fetched once");
}

#[tokio::test]
async fn a_parked_link_that_a_placed_file_shares_is_never_placed_again() {
    // Regression: a superseded record's refs link (already a second name of
    // a placed file) was parked and could be placed at another path, tying
    // the two files to one inode.
    let fx = fixture();
    let content = b"shared content";
    let hash = fx.fake.serve(fx.peer, content);
    let first = fx
        .apply(job(&fx.folder, file("first", content, 1), fx.peer))
        .await
        .unwrap();
    let link = first.record.refs.clone().unwrap();
    fx.folder.park(*hash.as_bytes(), link);
    fx.apply(job(&fx.folder, file("second", content, 1), fx.peer))
        .await
        .unwrap();
    let ino = |p: &str| std::fs::metadata(fx.root().join(p)).unwrap().ino();
    assert_ne!(ino("first"), ino("second"));
    std::fs::write(fx.root().join("first"), b"edited").unwrap();
    assert_eq!(fx.read("second"), content, "editing one leaves the other");
}

#[tokio::test]
async fn a_special_file_in_the_way_of_a_directory_is_retried_not_replaced() {
    let fx = fixture();
    let fifo = fx.root().join("d");
    make_fifo(&fifo);
    let e = fx
        .apply(job(
            &fx.folder,
            entry("d", EntryKind::Directory, None, 1),
            fx.peer,
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::InTheWay { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Backoff);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[tokio::test]
async fn a_directory_chmod_is_not_a_local_change() {
    // A directory's mode is not synced (record::synced_mode): a chmod
    // neither holds back a remote delete nor becomes a version.
    let fx = fixture();
    fx.local_dir("d");
    std::fs::set_permissions(fx.root().join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    fx.apply(job(
        &fx.folder,
        tombstone("d", EntryKind::Directory, 2),
        fx.peer,
    ))
    .await
    .unwrap();
    assert!(!fx.root().join("d").exists());
}

#[tokio::test]
async fn when_the_folder_root_vanishes_mid_batch_every_job_still_gets_an_outcome() {
    let fx = fixture();
    let root = fx.root().to_path_buf();
    let away = root.with_file_name("root-away");
    let jobs: Vec<Job> = (0..5)
        .map(|i| {
            let c = format!("small {i}");
            let h = fx.fake.serve(fx.peer, c.as_bytes());
            if i == 0 {
                let (r, a) = (root.clone(), away.clone());
                fx.fake
                    .while_sending(h, move || std::fs::rename(r, a).unwrap());
            }
            job(&fx.folder, file(&format!("f{i}"), c.as_bytes(), 1), fx.peer)
        })
        .collect();
    let out = apply_files(
        &fx.folder,
        jobs.clone(),
        &testing::sources(&*fx.fake),
        Flush::Batch,
    )
    .await;
    assert_eq!(out.len(), 5, "one outcome per job");
    for (j, o) in &out {
        let e = o
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{} applied without a root", j.path));
        assert_eq!(e.disposition(), Disposition::Backoff, "{}: {e}", j.path);
    }
    std::fs::rename(&away, &root).unwrap();
    let out = apply_files(&fx.folder, jobs, &testing::sources(&*fx.fake), Flush::Batch).await;
    assert!(
        out.iter().all(|(_, o)| o.is_ok()),
        "applied once the root is back"
    );
    assert_eq!(fx.read("f3"), b"small 3");
}

// --- deadlines and failover (paused time: the stall timeout passes at once)

const STALL: std::time::Duration = std::time::Duration::from_secs(30);
/// Slack over the stall timeout: the watchdog looks once a second.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Another connected peer that serves `content` too.
fn second_peer(fx: &Scene, content: &[u8]) -> EndpointId {
    let p = FakeContent::new_peer();
    fx.fake.serve(p, content);
    p
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stalls_mid_transfer_is_given_up_and_another_finishes_the_file() {
    let fx = Scene::with_stall(STALL);
    let content = vec![3u8; 64 * 1024];
    let hash = fx.fake.serve(fx.peer, &content);
    let other = second_peer(&fx, &content);
    fx.fake.hang(fx.peer, hash, 1000);
    let start = tokio::time::Instant::now();
    fx.apply(job(&fx.folder, file("big", &content, 1), fx.peer))
        .await
        .unwrap();
    let waited = start.elapsed();
    assert!(waited >= STALL && waited <= STALL + TICK, "{waited:?}");
    assert_eq!(fx.read("big"), content);
    assert_eq!(
        fx.fake.fetches(),
        vec![(fx.peer, hash), (other, hash)],
        "the announcer first, then the other member"
    );
    assert!(fx.folder.slow_since(hash.as_bytes(), &fx.peer).is_some());
    assert!(fx.folder.slow_since(hash.as_bytes(), &other).is_none());
    assert!(fx.folder.status.transfers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn when_the_only_peer_stalls_the_job_fails_and_its_retry_asks_a_new_member_first() {
    let fx = Scene::with_stall(STALL);
    let content = vec![4u8; 64 * 1024];
    let hash = fx.fake.serve(fx.peer, &content);
    fx.fake.hang(fx.peer, hash, 0);
    let target = file("big", &content, 1);
    let e = fx
        .apply(job(&fx.folder, target.clone(), fx.peer))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::Stalled { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Backoff);
    assert_eq!(fx.fake.fetches().len(), 1, "not asked twice in one attempt");
    assert!(!fx.root().join("big").exists());
    // A member that has the content connects: the retry asks it before
    // the announcer, which is slow for this content.
    let other = second_peer(&fx, &content);
    fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
    assert_eq!(fx.fake.fetches(), vec![(fx.peer, hash), (other, hash)]);
    assert_eq!(fx.read("big"), content);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_batch_request_falls_back_to_one_by_one_from_other_peers() {
    let fx = Scene::with_stall(STALL);
    let other = FakeContent::new_peer();
    let contents: Vec<String> = (0..6).map(|i| format!("small {i}")).collect();
    let hashes: Vec<Hash> = contents
        .iter()
        .map(|c| {
            fx.fake.serve(other, c.as_bytes());
            fx.fake.serve(fx.peer, c.as_bytes())
        })
        .collect();
    // Six files make three requests of two; the second one hangs.
    fx.fake.hang(fx.peer, hashes[2], 0);
    let jobs: Vec<Job> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| job(&fx.folder, file(&format!("s{i}"), c.as_bytes(), 1), fx.peer))
        .collect();
    let start = tokio::time::Instant::now();
    let out = apply_files(&fx.folder, jobs, &testing::sources(&*fx.fake), Flush::Batch).await;
    assert!(start.elapsed() >= STALL);
    assert_eq!(out.len(), 6);
    for (j, o) in &out {
        assert!(o.is_ok(), "{}: {:?}", j.path, o.as_ref().err());
        assert_eq!(
            fx.read(&j.path),
            contents[j.path[1..].parse::<usize>().unwrap()].as_bytes()
        );
    }
    let fetches = fx.fake.fetches();
    let from_other: HashSet<Hash> = fetches
        .iter()
        .filter(|(p, _)| *p == other)
        .map(|(_, h)| *h)
        .collect();
    assert_eq!(
        from_other,
        HashSet::from([hashes[2], hashes[3]]),
        "only what stalled"
    );
    let asked_again = fetches
        .iter()
        .filter(|f| **f == (fx.peer, hashes[2]))
        .count();
    assert_eq!(
        asked_again, 1,
        "the stalled peer is not asked again in this attempt"
    );
    assert!(!fetches.contains(&(fx.peer, hashes[3])));
}

#[tokio::test(start_paused = true)]
async fn a_direct_fetch_that_stalls_goes_on_with_another_peer() {
    let fx = Scene::with_stall(STALL);
    let content = b"the real content";
    // The store's copy is stale (edited in place): only a direct fetch helps.
    let local = fx.root().join("copy");
    std::fs::write(&local, content).unwrap();
    fx.fake.import(local.clone(), &|_| {}).await.unwrap();
    std::fs::write(&local, b"edited in place!").unwrap();
    let hash = fx.fake.serve(fx.peer, content);
    let other = second_peer(&fx, content);
    fx.fake.hang(fx.peer, hash, 4);
    fx.apply(job(&fx.folder, file("b", content, 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("b"), content, "no byte of the stalled attempt left");
    assert_eq!(fx.fake.fetches(), vec![(fx.peer, hash), (other, hash)]);
}

#[tokio::test]
async fn content_of_another_size_than_announced_is_rejected_and_not_placed() {
    // The blob is honest (it hashes right) but the entry lies about its
    // size: the verified length decides, and the entry is garbage.
    let fx = fixture();
    fx.fake.serve(fx.peer, b"twelve bytes");
    let mut target = file("liar", b"twelve bytes", 1);
    target.size = 5;
    let e = fx
        .apply(job(&fx.folder, target.clone(), fx.peer))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApplyError::SizeMismatch {
                announced: 5,
                actual: 12,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.disposition(), Disposition::Reject);
    assert!(!fx.root().join("liar").exists(), "not applied");
    // The same content announced with its true size still applies.
    target.size = 12;
    target.path = "honest".into();
    fx.apply(job(&fx.folder, target, fx.peer)).await.unwrap();
    assert_eq!(fx.read("honest"), b"twelve bytes");
}

#[tokio::test]
async fn a_fetch_that_does_not_fit_is_not_started_and_says_no_space() {
    let fx = Scene::with_cfg(crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT, |c| {
        c.min_free = fleetsync_config::MinFree::Percent(0);
    });
    fx.fake.serve(fx.peer, b"small honest content");
    let mut huge = file("huge", b"small honest content", 1);
    huge.size = 10 << 40; // 10 TiB
    let e = fx.apply(job(&fx.folder, huge, fx.peer)).await.unwrap_err();
    assert!(matches!(e, ApplyError::NoSpace { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::NoSpace);
    assert!(
        e.to_string().contains("no space on the filesystem of"),
        "{e}"
    );
    assert!(fx.fake.fetches().is_empty(), "no byte was asked for");
    // A reserve bigger than the disk refuses even a small file.
    let fx = Scene::with_cfg(crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT, |c| {
        c.min_free = fleetsync_config::MinFree::Bytes(u64::MAX / 4);
    });
    fx.fake.serve(fx.peer, b"small honest content");
    let small = file("small", b"small honest content", 1);
    let e = fx.apply(job(&fx.folder, small, fx.peer)).await.unwrap_err();
    assert!(matches!(e, ApplyError::NoSpace { .. }), "{e}");
    assert!(fx.fake.fetches().is_empty());
}

#[tokio::test]
async fn a_fetch_bringing_more_than_announced_is_cut_and_rejected() {
    // The entry says 1000 bytes, its hash names 300 KiB: the transfer is
    // cut once it passes the announced size (plus slack), long before the
    // stall deadline, and the entry is rejected, not retried.
    let fx = fixture();
    let big = vec![7u8; 300 << 10];
    let h = fx.fake.serve(fx.peer, &big);
    fx.fake.hang(fx.peer, h, 200 << 10);
    let mut liar = file("liar", &big, 1);
    liar.size = 1000;
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        fx.apply(job(&fx.folder, liar, fx.peer)),
    )
    .await
    .expect("cut well before the stall deadline")
    .unwrap_err();
    assert_eq!(e.disposition(), Disposition::Reject, "{e}");
    assert!(
        e.to_string().contains("more than the 1000 announced"),
        "{e}"
    );
    assert!(!fx.root().join("liar").exists());
    fx.fake.release(fx.peer, h);
}

fn versions_of(fx: &Scene, path: &str) -> Vec<crate::versions::VersionInfo> {
    fx.folder.versions.list(Some(path))
}

#[tokio::test]
async fn synced_content_a_peer_overwrites_is_kept_as_a_version() {
    let fx = fixture();
    let old = fx.local_file("a.txt", b"old synced content");
    fx.fake.serve(fx.peer, b"new");
    let target = file("a.txt", b"new", 2);
    fx.apply(job(&fx.folder, target.clone(), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.read("a.txt"), b"new");
    let kept = versions_of(&fx, "a.txt");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let v = &kept[0];
    assert_eq!(v.reason, crate::versions::Reason::Overwrite);
    assert_eq!(v.replaced_by, target.modified_by.to_string());
    assert_eq!(v.modified_by, old.modified_by.to_string());
    assert_eq!(v.mtime_ns, old.mtime_ns);
    assert_eq!(
        fx.folder.versions.read(&v.id).unwrap(),
        b"old synced content"
    );
}

#[tokio::test]
async fn synced_content_a_peer_deletes_is_kept_as_a_version() {
    let fx = fixture();
    fx.local_file("gone.txt", b"was here");
    let j = job(
        &fx.folder,
        tombstone("gone.txt", EntryKind::File, 2),
        fx.peer,
    );
    fx.apply(j).await.unwrap();
    assert!(!fx.root().join("gone.txt").exists());
    let kept = versions_of(&fx, "gone.txt");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].reason, crate::versions::Reason::Delete);
    assert_eq!(fx.folder.versions.read(&kept[0].id).unwrap(), b"was here");
}

#[tokio::test]
async fn a_conflict_copy_a_new_file_or_versions_off_keep_no_version() {
    let fx = fixture();
    fx.local_file("notes.md", b"ours");
    fx.fake.serve(fx.peer, b"theirs");
    let mut j = job(&fx.folder, file("notes.md", b"theirs", 2), fx.peer);
    j.conflict_copy = true;
    fx.apply(j).await.unwrap();
    fx.fake.serve(fx.peer, b"fresh");
    fx.apply(job(&fx.folder, file("fresh", b"fresh", 1), fx.peer))
        .await
        .unwrap();
    assert_eq!(fx.folder.versions.count(), 0);

    let fx = Scene::with_cfg(crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT, |c| {
        c.versions = fleetsync_config::VersionsPolicy::off();
    });
    fx.local_file("a", b"old");
    let j = job(&fx.folder, tombstone("a", EntryKind::File, 2), fx.peer);
    fx.apply(j).await.unwrap();
    assert_eq!(fx.folder.versions.count(), 0);
    assert!(!fx.folder.versions.dir().exists());
}

/// Directories go in runs made in one blocking call; one with something
/// in the way (a known file to replace, a special file) takes the general
/// way, in order, and the run goes on after it.
#[tokio::test]
async fn directories_in_a_run_are_made_and_one_in_the_way_is_handled_in_its_turn() {
    let fx = fixture();
    fx.local_file("c", b"ours, a file where their directory goes");
    let fifo = fx.root().join("f");
    make_fifo(&fifo);
    std::fs::create_dir(fx.root().join("e")).unwrap();
    let paths = ["a", "a/b", "a/b/x", "c", "c/d", "e", "f", "g"];
    let jobs: Vec<Job> = paths
        .iter()
        .map(|p| job(&fx.folder, entry(p, EntryKind::Directory, None, 1), fx.peer))
        .collect();
    let out = apply_dirs(&fx.folder, jobs).await;
    let order: Vec<&str> = out.iter().map(|(j, _)| j.path.as_str()).collect();
    assert_eq!(order, paths, "one outcome per job, in order");
    for (job, outcome) in &out {
        let dir = fx.root().join(&job.path);
        if job.path == "f" {
            let e = outcome.as_ref().unwrap_err();
            assert!(matches!(e, ApplyError::InTheWay { .. }), "{e}");
            assert!(std::fs::symlink_metadata(&dir)
                .unwrap()
                .file_type()
                .is_fifo());
            continue;
        }
        let applied = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", job.path));
        assert!(dir.is_dir(), "{}", job.path);
        assert_eq!(mode_of(&dir), 0o755, "{}", job.path);
        let stat = applied.record.local.expect("a directory's stat");
        let now = fx.stat(&job.path);
        assert_eq!((stat.ino, stat.mode), (now.ino, now.mode), "{}", job.path);
    }
    assert!(fx.folder.maps().applying > 0, "guards go with the outcomes");
    drop(out);
    assert_eq!(fx.folder.maps().applying, 0, "no guard left behind");
}
