//! Looking into directories that just appeared. A recursive inotify watch
//! learns of a new directory from its parent's event and watches it only
//! afterwards, so files written into it in between (`mkdir -p a/b && echo
//! x > a/b/f`, an unpacked archive, a `cp -r`) produce no event at all.
//! The index cannot be trusted to fill the gap either: a peer may already
//! have announced the directory, so the hasher finds it "known" and does
//! not expand it. So for each new directory the watcher makes sure it is
//! watched (from then on every change in it produces an event), and only
//! then walks it: every path found is marked like an event would have.
//!
//! Parts: [`outermost`] (a walk of a directory covers the new directories
//! below it) and [`look_into`] (blocking: watch, then walk).

use std::collections::BTreeSet;

use fleetsync_mesh::model::EntryKind;

use crate::{folder::Folder, record::DiskState, scan};

use super::os_watch::OsWatch;

/// What [`look_into`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Every path below the directories (not the directories themselves:
    /// their own events marked them).
    pub paths: Vec<String>,
    /// Directories whose watch could not be set up (inotify watch limit,
    /// I/O error): changes in them may go unnoticed until a rescan.
    pub unwatched: Vec<(String, notify::Error)>,
    /// Entries the walks could not read.
    pub errors: usize,
}

/// The directories of `dirs` that no other one of them contains: walking
/// those covers the rest.
pub fn outermost(dirs: BTreeSet<String>) -> Vec<String> {
    dirs.iter()
        .filter(|d| !ancestors(d).any(|a| dirs.contains(a)))
        .cloned()
        .collect()
}

/// `a/b/c` → `a/b`, `a`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(rel.rsplit_once('/').map(|(p, _)| p), |p| {
        p.rsplit_once('/').map(|(q, _)| q)
    })
}

/// For each of `dirs` that is (still) a directory of the folder: make sure
/// it is watched, then walk it. Blocking. `progress` is called per entry
/// walked.
pub fn look_into(
    folder: &Folder,
    watch: Option<&OsWatch>,
    dirs: &[String],
    progress: &dyn Fn(),
) -> Found {
    let mut found = Found::default();
    let ignore = folder.ignore();
    for dir in dirs {
        progress();
        // Through the folder's own lookup (no symlink followed on the way):
        // only a real directory inside the folder is watched and walked.
        let is_dir = matches!(
            folder.fs.lstat(dir),
            Ok(DiskState::Present(m)) if m.kind == EntryKind::Directory
        );
        if !is_dir {
            continue; // a file, or gone again: its own events tell
        }
        if let Some(w) = watch {
            match w.watch_new_dir(&folder.fs.abs(dir)) {
                Ok(()) => {}
                // Gone meanwhile: the event of its removal marks it.
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => continue,
                Err(e) => found.unwatched.push((dir.clone(), e)),
            }
        }
        let (entries, errors) = scan::walk_under(&folder.cfg.path, dir, &ignore, progress);
        found.errors += errors.len();
        found.paths.extend(entries.into_iter().map(|(rel, _)| rel));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, FakeContent};

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn outermost_keeps_only_directories_no_other_one_contains() {
        let dirs = set(&["a", "a!x", "a/b", "a/b/c", "ab", "z/y", "z/y/x/w"]);
        assert_eq!(outermost(dirs), vec!["a", "a!x", "ab", "z/y"]);
        assert!(outermost(BTreeSet::new()).is_empty());
    }

    #[test]
    fn ancestors_go_up_to_the_top() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert_eq!(ancestors("a").count(), 0);
    }

    #[test]
    fn look_into_finds_everything_already_inside_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        let root = folder.cfg.path.clone();
        std::fs::create_dir_all(root.join("new/sub")).unwrap();
        std::fs::write(root.join("new/f0"), "written before any watch").unwrap();
        std::fs::write(root.join("new/sub/f1"), "so was this").unwrap();
        std::fs::write(root.join("plain"), "a file, not a directory").unwrap();
        std::fs::write(root.join("new/x.tmp"), "ignored").unwrap();
        std::fs::write(root.join(".fleetsyncignore"), "*.tmp\n").unwrap();
        folder.reload_ignore();
        let walked = std::cell::Cell::new(0);
        let dirs = ["new", "plain", "gone"].map(String::from);
        let mut found = look_into(&folder, None, &dirs, &|| walked.set(walked.get() + 1));
        found.paths.sort();
        assert_eq!(found.paths, vec!["new/f0", "new/sub", "new/sub/f1"]);
        assert!(found.unwatched.is_empty());
        assert!(walked.get() >= 3, "progress reported while walking");
    }

    #[test]
    fn look_into_does_not_follow_a_symlink_out_of_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = testing::folder(dir.path(), FakeContent::new());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), folder.cfg.path.join("link")).unwrap();
        let found = look_into(&folder, None, &["link".to_string()], &|| {});
        assert!(found.paths.is_empty(), "{:?}", found.paths);
    }
}
