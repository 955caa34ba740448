use std::{
    os::unix::fs::MetadataExt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fleetsync_config::FolderMode;

use super::*;
use crate::{
    folder::Folder,
    testing::{folder_with_cfg, FakeContent, ME},
    versions::Reason,
};

fn folder(dir: &Path) -> Arc<Folder> {
    folder_with_cfg(
        dir,
        FakeContent::new(),
        crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT,
        |_| {},
    )
}

/// Keep what is at `rel` now as a version (as the apply hook does before
/// a peer's change replaces it); its id.
fn keep(folder: &Folder, rel: &str, reason: Reason) -> String {
    let file = File::open(folder.fs.abs(rel)).unwrap();
    let meta = KeepMeta {
        path: rel.to_string(),
        mtime_ns: 1_000_000_000,
        version: Default::default(),
        modified_by: ME,
        replaced_by: "peer".into(),
        reason,
    };
    folder
        .versions
        .keep_file(&file, meta)
        .unwrap()
        .unwrap()
        .meta
        .id
}

fn write(folder: &Folder, rel: &str, data: &[u8]) {
    let p = folder.fs.abs(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn read(folder: &Folder, rel: &str) -> Vec<u8> {
    std::fs::read(folder.fs.abs(rel)).unwrap()
}

fn req(path: &str, when: When) -> Request {
    Request {
        path: path.into(),
        when,
    }
}

#[test]
fn a_deleted_directory_comes_back_with_its_parents_and_mtime_now() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "d/e/one", b"one");
    write(&f, "d/two", b"two");
    keep(&f, "d/e/one", Reason::Delete);
    keep(&f, "d/two", Reason::Delete);
    std::fs::remove_dir_all(f.fs.abs("d")).unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);

    let report = restore(&f, &req("d/", When::Newest)).unwrap();

    let paths: Vec<_> = report.restored.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec!["d/e/one", "d/two"], "{report:?}");
    assert!(report.restored.iter().all(|r| r.kept_current.is_none()));
    assert_eq!(read(&f, "d/e/one"), b"one");
    assert_eq!(read(&f, "d/two"), b"two");
    let mtime = std::fs::metadata(f.fs.abs("d/two"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(mtime >= before, "a restore is a new change: mtime now");
    assert_eq!(
        std::fs::read_dir(f.fs.tmp_dir()).unwrap().count(),
        0,
        "no temp file left"
    );
}

#[test]
fn different_content_is_kept_first_so_a_restore_can_be_undone() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "a", b"old");
    let old = keep(&f, "a", Reason::Overwrite);
    write(&f, "a", b"new content");

    let report = restore(&f, &req("a", When::Version(old.clone()))).unwrap();
    assert_eq!(read(&f, "a"), b"old");
    let undo = report.restored[0].kept_current.clone().expect("kept first");
    assert_eq!(f.versions.read(&undo).unwrap(), b"new content");
    assert_eq!(f.versions.get(&undo).unwrap().reason, Reason::Restore);

    restore(&f, &req("a", When::Version(undo))).unwrap();
    assert_eq!(read(&f, "a"), b"new content", "undone");
}

/// Regression (CI, restore right after a sync): a restore that found the
/// receiver still finishing the path failed with "a sync is writing it";
/// it now waits for that apply to end.
#[test]
fn a_restore_waits_for_a_sync_that_is_applying_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "a", b"old");
    let old = keep(&f, "a", Reason::Overwrite);
    write(&f, "a", b"new content");
    let applying = crate::folder::ApplyGuard::new(&f, "a");
    let ends = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(applying);
    });

    let report = restore(&f, &req("a", When::Version(old))).unwrap();
    ends.join().unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(read(&f, "a"), b"old");
}

#[test]
fn a_path_that_holds_the_chosen_content_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "same", b"x");
    keep(&f, "same", Reason::Overwrite);
    let ino = std::fs::metadata(f.fs.abs("same")).unwrap().ino();

    let report = restore(&f, &req("", When::Newest)).unwrap();
    assert_eq!(report.unchanged, vec!["same".to_string()]);
    assert!(report.restored.is_empty() && report.failed.is_empty());
    assert_eq!(f.versions.count(), 1, "nothing more kept");
    assert_eq!(std::fs::metadata(f.fs.abs("same")).unwrap().ino(), ino);
}

#[test]
fn a_directory_where_the_file_was_is_not_replaced_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "p/x", b"x");
    write(&f, "p/y", b"y");
    keep(&f, "p/x", Reason::Delete);
    keep(&f, "p/y", Reason::Delete);
    std::fs::remove_file(f.fs.abs("p/x")).unwrap();
    std::fs::remove_file(f.fs.abs("p/y")).unwrap();
    std::fs::create_dir(f.fs.abs("p/x")).unwrap();

    let report = restore(&f, &req("p", When::Newest)).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].path, "p/x");
    assert!(f.fs.abs("p/x").is_dir());
    assert_eq!(read(&f, "p/y"), b"y");
}

#[test]
fn with_versions_off_different_content_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "a", b"old");
    keep(&f, "a", Reason::Overwrite);
    write(&f, "a", b"mine");
    drop(f); // closes the index
             // The same store, reopened with versions = "off": it still lists and
             // reads what it kept, but keeps nothing new.
    let off = folder_with_cfg(
        dir.path(),
        FakeContent::new(),
        crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT,
        |c| c.versions = fleetsync_config::VersionsPolicy::off(),
    );
    let report = restore(&off, &req("a", When::Newest)).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(read(&off, "a"), b"mine");
}

#[test]
fn receive_only_folders_and_unknown_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    assert!(matches!(
        restore(&f, &req("nothing", When::Newest)),
        Err(RestoreError::Choose(ChooseError::NothingKept { .. }))
    ));
    drop(f);
    let ro = folder_with_cfg(
        dir.path(),
        FakeContent::new(),
        crate::folder::DEFAULT_TRANSFER_STALL_TIMEOUT,
        |c| c.mode = FolderMode::ReceiveOnly,
    );
    assert!(matches!(
        restore(&ro, &req("nothing", When::Newest)),
        Err(RestoreError::ReceiveOnly(_))
    ));
}

#[test]
fn at_a_time_restores_what_the_path_held_then() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // "f" held "first" (mtime 1 s after the epoch) until it was kept;
    // the time in between is what --at names.
    write(&f, "f", b"first");
    let t = now_ms();
    wait_past(t);
    keep(&f, "f", Reason::Overwrite);
    write(&f, "f", b"second");
    let report = restore(&f, &req("f", When::At(t))).unwrap();
    assert_eq!(report.restored.len(), 1, "{report:?}");
    assert_eq!(read(&f, "f"), b"first");
}

/// Until the clock has moved past `t` (ms): a version kept now is kept
/// after `t`.
fn wait_past(t: u64) {
    while (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64)
        <= t
    {
        std::thread::yield_now();
    }
}

#[test]
fn a_restored_file_gets_the_mode_it_was_kept_with() {
    assert_eq!(restored_mode(Some(0o100_755), Some(0o644), 0o022), 0o755);
    assert_eq!(
        restored_mode(Some(0o4755), None, 0o022),
        0o755,
        "never setuid"
    );
    assert_eq!(
        restored_mode(None, Some(0o600), 0o022),
        0o600,
        "kept without a mode"
    );
    assert_eq!(restored_mode(None, None, 0o022), 0o644);
    assert_eq!(restored_mode(None, None, 0o077), 0o600);
}

#[test]
fn an_executable_deleted_and_restored_is_executable_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path());
    write(&f, "run.sh", b"#!/bin/sh\n");
    let exec = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(f.fs.abs("run.sh"), exec).unwrap();
    let id = keep(&f, "run.sh", Reason::Delete);
    assert_eq!(f.versions.get(&id).unwrap().mode, Some(0o755), "recorded");
    std::fs::remove_file(f.fs.abs("run.sh")).unwrap();

    restore(&f, &req("run.sh", When::Newest)).unwrap();
    let mode = std::fs::metadata(f.fs.abs("run.sh")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o755);
}
