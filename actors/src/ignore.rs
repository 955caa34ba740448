//! What a folder never syncs: fleetsync's own `.fleetsync/` and in-place
//! temp names (always), the `.fleetsyncignore` file itself (a node-local
//! policy, like Syncthing's `.stignore`), and the gitignore-syntax patterns
//! in `<root>/.fleetsyncignore`, matched with the `ignore` crate.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tracing::warn;

use crate::fsutil::TMP_MARK;

pub const IGNORE_FILE: &str = ".fleetsyncignore";

#[derive(Debug, Clone)]
pub struct Ignore {
    rules: Option<Gitignore>,
}

impl Ignore {
    /// Load the folder's ignore file (missing file = no patterns). A bad
    /// pattern is logged and skipped; the rest still apply.
    pub fn load(root: &Path) -> Ignore {
        let file = root.join(IGNORE_FILE);
        if !file.is_file() {
            return Ignore { rules: None };
        }
        let mut b = GitignoreBuilder::new(root);
        if let Some(e) = b.add(&file) {
            warn!(file = %file.display(), "ignore file: {e}");
        }
        match b.build() {
            Ok(g) => Ignore { rules: Some(g) },
            Err(e) => {
                warn!(file = %file.display(), "ignore file unusable: {e}");
                Ignore { rules: None }
            }
        }
    }

    pub fn none() -> Ignore {
        Ignore { rules: None }
    }

    /// Built-in exclusions that no pattern can re-include.
    pub fn always_ignored(rel: &str) -> bool {
        let first = rel.split('/').next().unwrap_or(rel);
        if first == fleetsync_mesh::model::RESERVED_DIR || rel == IGNORE_FILE {
            return true;
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        name.contains(TMP_MARK)
    }

    /// Ignored whether it turns out to be a file or a directory: an event
    /// or a queued path says nothing about its kind yet, so only such a
    /// path can be dropped before its `lstat`.
    pub fn is_ignored_regardless_of_kind(&self, rel: &str) -> bool {
        self.is_ignored(rel, false) && self.is_ignored(rel, true)
    }

    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if Self::always_ignored(rel) {
            return true;
        }
        match &self.rules {
            Some(g) => g.matched_path_or_any_parents(rel, is_dir).is_ignore(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_patterns_and_builtins() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join(IGNORE_FILE),
            "*.log\n/build/\ncache\n!keep.log\n",
        )
        .unwrap();
        let ig = Ignore::load(root.path());
        assert!(ig.is_ignored("a.log", false));
        assert!(ig.is_ignored("deep/b.log", false));
        assert!(!ig.is_ignored("keep.log", false));
        assert!(ig.is_ignored("build", true));
        assert!(ig.is_ignored("build/x/y.o", false));
        assert!(!ig.is_ignored("src/build.rs", false));
        assert!(ig.is_ignored("x/cache/y", false));
        assert!(ig.is_ignored(".fleetsync/tmp/x.part", false));
        assert!(ig.is_ignored(".fleetsyncignore", false));
        assert!(ig.is_ignored("d/.f.fleetsync-tmp-0001", false));
        assert!(!ig.is_ignored("notes.txt", false));
        assert!(!Ignore::none().is_ignored("a.log", false));
    }

    #[test]
    fn a_directory_only_pattern_does_not_ignore_a_path_of_unknown_kind() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(IGNORE_FILE), "out/\n*.tmp\n").unwrap();
        let ig = Ignore::load(root.path());
        // `out` may be a file, which the pattern does not cover: look first.
        assert!(ig.is_ignored("out", true));
        assert!(!ig.is_ignored_regardless_of_kind("out"));
        // Anything below an ignored directory, and a glob, are ignored as
        // either kind.
        assert!(ig.is_ignored_regardless_of_kind("out/x"));
        assert!(ig.is_ignored_regardless_of_kind("a/b.tmp"));
        assert!(ig.is_ignored_regardless_of_kind(".fleetsync/refs/l1"));
        assert!(!ig.is_ignored_regardless_of_kind("a/b.txt"));
    }

    #[test]
    fn a_bad_pattern_is_skipped_and_the_rest_still_apply() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(IGNORE_FILE), "a[\n*.log\n").unwrap();
        let ig = Ignore::load(root.path());
        assert!(ig.is_ignored("x.log", false));
        assert!(!ig.is_ignored("a", false));
    }

    #[test]
    fn no_ignore_file_ignores_only_the_builtins() {
        let root = tempfile::tempdir().unwrap();
        let ig = Ignore::load(root.path());
        assert!(!ig.is_ignored("anything.log", false));
        assert!(ig.is_ignored(".fleetsync", true));
        assert!(ig.is_ignored("dir/name.fleetsync-tmp-01", false));
    }
}
