//! Full walk of a folder: every syncable path with its `lstat`, never
//! following symlinks, skipping ignored subtrees without descending.

use std::path::Path;

use crate::{
    fsutil::{meta_from_stat, rel_of},
    ignore::Ignore,
    record::{DiskState, Meta},
};

/// Walk `root`; returns (relative path, meta) for every file, dir and
/// symlink that is not ignored. Unreadable entries are reported, not fatal.
pub fn walk(root: &Path, ignore: &Ignore) -> (Vec<(String, Meta)>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut wb = ignore::WalkBuilder::new(root);
    wb.standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .same_file_system(false);
    let root_owned = root.to_path_buf();
    let ig = ignore.clone();
    wb.filter_entry(move |e| {
        let is_dir = e.file_type().is_some_and(|t| t.is_dir());
        match rel_of(&root_owned, e.path()) {
            Some(rel) => !ig.is_ignored(&rel, is_dir),
            // The root itself, or a name we cannot sync (non-UTF-8, …).
            None => e.path() == root_owned,
        }
    });
    for item in wb.build() {
        let e = match item {
            Ok(e) => e,
            Err(err) => {
                errors.push(err.to_string());
                continue;
            }
        };
        let Some(rel) = rel_of(root, e.path()) else {
            continue;
        };
        match rustix::fs::lstat(e.path()) {
            Ok(st) => {
                if let DiskState::Present(m) = meta_from_stat(&st) {
                    out.push((rel, m));
                }
            }
            Err(err) => errors.push(format!("{rel}: {err}")),
        }
    }
    (out, errors)
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
        let (found, errs) = walk(r, &Ignore::load(r));
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
}
