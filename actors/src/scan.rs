//! Walks of a folder: [`walk`] (the whole folder) and [`walk_under`] (one
//! directory in it) list every syncable path with its `lstat`, never
//! following symlinks, skipping ignored subtrees without descending, and
//! call a progress hook per entry (a walk of a huge tree is long work the
//! supervisor must see move); and [`written_moments_ago`], the rule the
//! watcher's rescan and the hasher share for a file found while it may
//! still be written.

use std::{io, path::Path, time::Duration};

use crate::{
    fsutil::{meta_from_stat, rel_of},
    ignore::Ignore,
    record::{DiskState, Meta},
};

/// An entry the walk could not read (reported, not fatal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    #[error("{0}")]
    Walk(#[from] ignore::Error),
    #[error("{path}: {source}")]
    Lstat {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Walk `root`; returns (relative path, meta) for every file, dir and
/// symlink that is not ignored. Unreadable entries are reported, not fatal.
/// `progress` is called once per entry.
pub fn walk(
    root: &Path,
    ignore: &Ignore,
    progress: &dyn Fn(),
) -> (Vec<(String, Meta)>, Vec<WalkError>) {
    walk_from(root, root, ignore, progress)
}

/// [`walk`] of the directory `rel` of the folder at `root` and everything
/// below it (`rel` itself is not listed). Paths are relative to `root`.
pub fn walk_under(
    root: &Path,
    rel: &str,
    ignore: &Ignore,
    progress: &dyn Fn(),
) -> (Vec<(String, Meta)>, Vec<WalkError>) {
    walk_from(root, &root.join(rel), ignore, progress)
}

fn walk_from(
    root: &Path,
    start: &Path,
    ignore: &Ignore,
    progress: &dyn Fn(),
) -> (Vec<(String, Meta)>, Vec<WalkError>) {
    let mut out = Vec::new();
    let errors = walk_each(root, start, ignore, progress, &mut |rel, m| {
        out.push((rel, m))
    });
    (out, errors)
}

/// [`walk`] handing each entry to `found` as it is walked, so a walk of a
/// huge folder holds no list of it (the rescan compares as it goes).
pub fn walk_folder_each(
    root: &Path,
    ignore: &Ignore,
    progress: &dyn Fn(),
    found: &mut dyn FnMut(String, Meta),
) -> Vec<WalkError> {
    walk_each(root, root, ignore, progress, found)
}

fn walk_each(
    root: &Path,
    start: &Path,
    ignore: &Ignore,
    progress: &dyn Fn(),
    found: &mut dyn FnMut(String, Meta),
) -> Vec<WalkError> {
    let mut errors = Vec::new();
    let mut wb = ignore::WalkBuilder::new(start);
    wb.standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .same_file_system(false);
    let (root_owned, start_owned) = (root.to_path_buf(), start.to_path_buf());
    let ig = ignore.clone();
    wb.filter_entry(move |e| {
        let is_dir = e.file_type().is_some_and(|t| t.is_dir());
        match rel_of(&root_owned, e.path()) {
            Some(rel) => !ig.is_ignored(&rel, is_dir),
            // The start itself, or a name we cannot sync (non-UTF-8, …).
            None => e.path() == start_owned,
        }
    });
    for item in wb.build() {
        progress();
        let e = match item {
            Ok(e) => e,
            Err(err) => {
                errors.push(WalkError::Walk(err));
                continue;
            }
        };
        if e.depth() == 0 {
            continue;
        }
        let Some(rel) = rel_of(root, e.path()) else {
            continue;
        };
        match rustix::fs::lstat(e.path()) {
            Ok(st) => {
                if let DiskState::Present(m) = meta_from_stat(&st) {
                    found(rel, m);
                }
            }
            Err(err) => errors.push(WalkError::Lstat {
                path: rel,
                source: err.into(),
            }),
        }
    }
    errors
}

/// Was a file with this mtime written less than `settle` before `now_ns`
/// (so it may still be being written, and should settle first)? A future
/// mtime is a skewed clock, not a fresh write.
pub fn written_moments_ago(mtime_ns: i64, now_ns: i64, settle: Duration) -> bool {
    let settle_ns = i64::try_from(settle.as_nanos()).unwrap_or(i64::MAX);
    (0..settle_ns).contains(&now_ns.saturating_sub(mtime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsync_mesh::model::EntryKind;

    #[test]
    fn walk_lists_what_syncs_and_not_what_does_not() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join(".fleetsync/tmp")).unwrap();
        std::fs::create_dir_all(r.join("skip")).unwrap();
        std::fs::write(r.join("a/b/f.txt"), b"x").unwrap();
        std::fs::write(r.join("skip/g.txt"), b"x").unwrap();
        std::fs::write(r.join(".fleetsync/tmp/p.part"), b"x").unwrap();
        std::fs::write(r.join(".fleetsyncignore"), b"skip/\n").unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        std::fs::write(out_dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(out_dir.path(), r.join("link")).unwrap();
        let (found, errs) = walk(r, &Ignore::load(r), &|| {});
        assert!(errs.is_empty(), "{errs:?}");
        let mut names: Vec<_> = found.iter().map(|(p, m)| (p.as_str(), m.kind)).collect();
        names.sort_by_key(|(p, _)| p.to_string());
        assert_eq!(
            names,
            vec![
                ("a", EntryKind::Directory),
                ("a/b", EntryKind::Directory),
                ("a/b/f.txt", EntryKind::File),
                ("link", EntryKind::Symlink),
            ]
        );
    }

    #[test]
    fn walk_under_lists_a_directorys_tree_relative_to_the_root_with_progress() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("top/new/deeper")).unwrap();
        std::fs::write(r.join("top/new/a.txt"), b"a").unwrap();
        std::fs::write(r.join("top/new/deeper/b.txt"), b"b").unwrap();
        std::fs::write(r.join("top/new/deeper/b.o"), b"b").unwrap();
        std::fs::write(r.join("top/other.txt"), b"o").unwrap();
        std::fs::write(r.join(".fleetsyncignore"), b"*.o\n").unwrap();
        let entries = std::cell::Cell::new(0);
        let (found, errs) = walk_under(r, "top/new", &Ignore::load(r), &|| {
            entries.set(entries.get() + 1)
        });
        assert!(errs.is_empty(), "{errs:?}");
        let mut names: Vec<_> = found.iter().map(|(p, _)| p.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["top/new/a.txt", "top/new/deeper", "top/new/deeper/b.txt"]
        );
        assert!(entries.get() >= names.len(), "progress per entry");
        let (gone, _) = walk_under(r, "top/missing", &Ignore::load(r), &|| {});
        assert!(gone.is_empty());
    }

    #[test]
    fn only_an_mtime_within_settle_before_now_is_moments_ago() {
        let settle = Duration::from_millis(200);
        let now = 10_000_000_000;
        assert!(written_moments_ago(now, now, settle));
        assert!(written_moments_ago(now - 199_999_999, now, settle));
        assert!(!written_moments_ago(now - 200_000_000, now, settle));
        assert!(
            !written_moments_ago(now + 1, now, settle),
            "future mtime: skewed clock"
        );
        assert!(!written_moments_ago(now, now, Duration::ZERO));
    }

    #[test]
    fn walk_reports_an_ignored_directory_without_descending_and_skips_special_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("build/deep")).unwrap();
        std::fs::write(r.join("build/deep/x.o"), b"x").unwrap();
        std::fs::write(r.join("keep.txt"), b"x").unwrap();
        std::fs::write(r.join(".fleetsyncignore"), b"build\n").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (found, errs) = walk(r, &Ignore::load(r), &|| {});
        assert!(errs.is_empty(), "{errs:?}");
        let names: Vec<_> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, vec!["keep.txt"]);
    }
}
