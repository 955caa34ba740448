//! The rescan: walk the whole folder and compare it with the index, for
//! what notifications missed (start-up, overflow, the periodic safety net).
//! Blocking; the watcher runs it on the blocking pool.

use std::collections::HashMap;

use fleetsync_mesh::model::EntryKind;
use tracing::warn;

use crate::{
    folder::{Folder, MarkerMissing},
    index::{now_ns, IndexError},
    record::{disk_matches_recorded, DiskState, Recorded},
    rt::TaskError,
    scan,
};

/// Walk errors logged per scan (the rest are counted out of the log: a
/// tree of unreadable directories would otherwise flood it every hour).
const SCAN_ERRORS_LOGGED: usize = 5;

/// New and changed paths are handed on this many at a time while the
/// walk goes on, so hashing starts before the walk ends (the first scan of
/// a folder of 50,000 files walks for 150 ms).
pub const HAND_ON_AT: usize = 2048;

/// Paths a rescan found different from the index.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// New, changed or deleted, not handed on yet: ready for the hasher.
    pub changed: Vec<String>,
    /// Files written moments ago: they settle first.
    pub fresh: Vec<String>,
}

/// Why a rescan found nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The folder is not there (an unmounted disk?): the folder is put in
    /// a fault state rather than synced as empty.
    #[error(transparent)]
    MarkerMissing(#[from] MarkerMissing),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Compare the disk with the index; return the paths worth hashing, or
/// hand them to `hand_on` as the walk goes ([`HAND_ON_AT`] at a time). A
/// missing folder marker puts the folder in a fault state. `progress` is
/// called for every record read and every entry walked.
pub fn scan_folder(
    folder: &Folder,
    progress: &dyn Fn(),
    hand_on: &mut dyn FnMut(Vec<String>),
) -> Result<ScanResult, ScanError> {
    if folder.fault().is_some() {
        return Ok(ScanResult::default());
    }
    folder.check_marker()?;
    let mut known = live_records(folder, progress)?;
    let mut out = ScanResult::default();
    let now = now_ns();
    // Compared as the walk goes: a folder of a million files is never
    // held as a list besides the map of what the index knows.
    let errors = scan::walk_folder_each(
        &folder.cfg.path,
        &folder.ignore(),
        progress,
        &mut |rel, meta| {
            let disk = DiskState::Present(meta);
            if disk_matches_recorded(&disk, known.remove(&rel)) {
                return;
            }
            if meta.kind == EntryKind::File
                && scan::written_moments_ago(meta.stat.mtime_ns, now, folder.cfg.settle)
            {
                out.fresh.push(rel);
            } else {
                out.changed.push(rel);
                if out.changed.len() >= HAND_ON_AT {
                    hand_on(std::mem::take(&mut out.changed));
                }
            }
        },
    );
    for e in errors.iter().take(SCAN_ERRORS_LOGGED) {
        warn!(folder = folder.id(), "scan: {e}");
    }
    // Known but not found: deleted while we were not looking.
    out.changed.extend(known.into_keys());
    Ok(out)
}

/// What the index records of each path that exists (not tombstones):
/// only what the comparison reads ([`Recorded`]), a fraction of a record.
fn live_records(
    folder: &Folder,
    progress: &dyn Fn(),
) -> Result<HashMap<String, Recorded>, IndexError> {
    let mut known = HashMap::new();
    folder.index.for_each(folder.id(), |r| {
        progress();
        if !r.entry.deleted {
            known.insert(r.entry.path.clone(), Recorded::of(r));
        }
    })?;
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hasher::{hash_batch, tests::folder_with_settle},
        testing::{self, FakeContent},
    };
    use std::time::{Duration, SystemTime};

    fn set_mtime_past(path: &std::path::Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// [`scan_folder`], what it handed on included in `changed`.
    fn scan(folder: &Folder) -> Result<ScanResult, ScanError> {
        let mut handed = Vec::new();
        let mut out = scan_folder(folder, &|| {}, &mut |p| handed.extend(p))?;
        handed.append(&mut out.changed);
        out.changed = handed;
        Ok(out)
    }

    #[tokio::test]
    async fn scan_folder_finds_new_changed_and_deleted_paths() {
        let dir = tempfile::tempdir().unwrap();
        // Long enough that "fresh" is surely written moments ago; the
        // other files are an hour old.
        let settle = Duration::from_secs(600);
        let folder = folder_with_settle(dir.path(), FakeContent::new(), settle);
        let root = folder.cfg.path.clone();
        for name in ["same", "edited", "gone"] {
            std::fs::write(root.join(name), name).unwrap();
            set_mtime_past(&root.join(name));
        }
        std::fs::create_dir(root.join("d")).unwrap();
        let paths = ["same", "edited", "gone", "d"].map(String::from).to_vec();
        let out = hash_batch(folder.clone(), crate::health::Health::new(1), paths).await;
        assert_eq!(out.committed, 4, "{out:?}");
        assert!(scan(&folder).unwrap().changed.is_empty());

        std::fs::write(root.join("edited"), "longer now").unwrap();
        set_mtime_past(&root.join("edited"));
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::write(root.join("new"), "n").unwrap();
        set_mtime_past(&root.join("new"));
        std::fs::write(root.join("fresh"), "still being written").unwrap();
        let out = scan(&folder).unwrap();
        assert_eq!(sorted(out.changed), vec!["edited", "gone", "new"]);
        assert_eq!(out.fresh, vec!["fresh".to_string()]);
    }

    #[test]
    fn scan_folder_hands_on_new_paths_while_it_walks_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        let root = folder.cfg.path.clone();
        let n = HAND_ON_AT + 5;
        for i in 0..n {
            let p = root.join(format!("f{i:05}"));
            std::fs::write(&p, "x").unwrap();
            set_mtime_past(&p);
        }
        let mut handed: Vec<Vec<String>> = Vec::new();
        let out = scan_folder(&folder, &|| {}, &mut |p| handed.push(p)).unwrap();
        assert_eq!(handed.len(), 1, "one full piece handed on during the walk");
        assert_eq!(handed[0].len(), HAND_ON_AT);
        assert_eq!(
            out.changed.len(),
            n - HAND_ON_AT,
            "the rest comes with the result"
        );
        let mut all: Vec<String> = handed.concat();
        all.extend(out.changed);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every path exactly once");
    }

    #[tokio::test]
    async fn scan_folder_treats_a_directory_with_another_mode_as_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        let d = folder.cfg.path.join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            hash_batch(
                folder.clone(),
                crate::health::Health::new(1),
                vec!["d".into()]
            )
            .await
            .committed,
            1
        );
        // A directory's mode is never synced: the same record, by the one
        // rule (record::synced_mode).
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert!(scan(&folder).unwrap().changed.is_empty());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(scan(&folder).unwrap().changed.is_empty());
    }

    #[test]
    fn scan_folder_reports_a_missing_folder_marker_as_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        std::fs::write(folder.cfg.path.join("a"), "a").unwrap();
        std::fs::remove_dir_all(folder.cfg.path.join(".fleetsync")).unwrap();
        let err = scan(&folder).unwrap_err();
        assert!(matches!(err, ScanError::MarkerMissing { .. }), "{err}");
        let fault = folder.fault().expect("folder is in a fault state");
        assert!(fault.contains("is the disk mounted"), "{fault}");
        // Faulted: later scans find nothing rather than "everything deleted".
        assert!(scan(&folder).unwrap().changed.is_empty());
    }
}
