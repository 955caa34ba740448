//! The choosing rule of a restore, pure: which kept version of which path
//! comes back, given the versions kept, the path asked for and the time.
//!
//! - `--version VID`: that version, if it is of the path or below it.
//! - no time (default): for each path at or below the one asked for, its
//!   newest kept version (undo the last change of each file).
//! - `--at TIME`: for each path at or below, the content it had at TIME:
//!   among the versions kept after TIME (`kept_at > TIME`) whose content
//!   existed at TIME (`mtime <= TIME`), the earliest kept. A path with no
//!   such version is left alone (it did not change since TIME, or did not
//!   exist then).
//!
//! Whether the disk already holds the chosen content (then the path is
//! left alone too) is the caller's check: it needs the disk.

use std::collections::BTreeMap;

use crate::versions::{under, VersionInfo};

/// Which content a restore brings back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Each path's newest kept version.
    Newest,
    /// One version, by id.
    Version(String),
    /// As of this moment (unix milliseconds).
    At(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    #[error("no kept version has id {0:?} (list them with: fleetsync versions --folder ID PATH)")]
    NoSuchVersion(String),
    #[error("version {id} is of {path:?}, not of {target:?} or a path below it")]
    NotUnder {
        id: String,
        path: String,
        target: String,
    },
    #[error("no version of {target:?} (or of a path below it) is kept on this node")]
    NothingKept { target: String },
}

/// The root of the folder, however it is spelt.
pub fn is_root(target: &str) -> bool {
    matches!(target, "" | "." | "/")
}

/// `target` without a trailing slash (`dir/` is `dir`).
pub fn normalize(target: &str) -> &str {
    let t = target.trim_end_matches('/');
    if is_root(t) {
        ""
    } else {
        t
    }
}

/// Is `path` the target itself or below it? (`dir` covers `dir` and
/// `dir/x`, never `dir2/x`; the store's own rule, with "." for the root.)
pub fn covers(target: &str, path: &str) -> bool {
    under(path, normalize(target))
}

/// The versions to write back, one per path at most, sorted by path.
/// `kept` is any order (the store lists newest first).
pub fn choose<'a>(
    kept: &'a [VersionInfo],
    target: &str,
    when: &When,
) -> Result<Vec<&'a VersionInfo>, ChooseError> {
    let target = normalize(target);
    if let When::Version(id) = when {
        let v = kept
            .iter()
            .find(|v| &v.id == id)
            .ok_or_else(|| ChooseError::NoSuchVersion(id.clone()))?;
        if !covers(target, &v.path) {
            return Err(ChooseError::NotUnder {
                id: id.clone(),
                path: v.path.clone(),
                target: target.to_string(),
            });
        }
        return Ok(vec![v]);
    }
    let mut under = kept.iter().filter(|v| covers(target, &v.path)).peekable();
    if under.peek().is_none() {
        return Err(ChooseError::NothingKept {
            target: target.to_string(),
        });
    }
    let at = match when {
        When::At(t) => Some(*t),
        _ => None,
    };
    let mut best: BTreeMap<&str, &VersionInfo> = BTreeMap::new();
    for v in under {
        if at.is_some_and(|t| {
            v.kept_at_ms <= t || mtime_ms(v) > i64::try_from(t).unwrap_or(i64::MAX)
        }) {
            continue; // replaced before TIME, or written after it
        }
        best.entry(&v.path)
            .and_modify(|cur| {
                // Newest: the last kept; at TIME: the first kept after it.
                let replace = if at.is_some() {
                    later(cur, v)
                } else {
                    later(v, cur)
                };
                if replace {
                    *cur = v;
                }
            })
            .or_insert(v);
    }
    Ok(best.into_values().collect())
}

/// Kept after `b` (ids break ties: they start with the time kept and
/// sort).
fn later(a: &VersionInfo, b: &VersionInfo) -> bool {
    (a.kept_at_ms, &a.id) > (b.kept_at_ms, &b.id)
}

/// The kept content's mtime in milliseconds (rounded down: content
/// written within TIME's millisecond existed at TIME).
fn mtime_ms(v: &VersionInfo) -> i64 {
    v.mtime_ns.div_euclid(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version of `path` whose content was written at `mtime` and kept
    /// (replaced) at `kept` (both in ms).
    fn v(path: &str, mtime: i64, kept: u64) -> VersionInfo {
        super::super::test_version(path, mtime * 1_000_000, kept)
    }

    fn paths_ids(chosen: &[&VersionInfo]) -> Vec<(String, String)> {
        chosen
            .iter()
            .map(|v| (v.path.clone(), v.id.clone()))
            .collect()
    }

    #[test]
    fn newest_is_the_last_kept_of_each_path() {
        let kept = vec![
            v("a", 10, 100),
            v("a", 100, 200),
            v("d/b", 5, 150),
            v("d/b", 150, 120), // kept before the other one (clock order is kept_at's)
        ];
        let got = choose(&kept, "", &When::Newest).unwrap();
        assert_eq!(
            paths_ids(&got),
            vec![
                ("a".into(), kept[1].id.clone()),
                ("d/b".into(), kept[2].id.clone())
            ]
        );
        let file = choose(&kept, "a", &When::Newest).unwrap();
        assert_eq!(paths_ids(&file), vec![("a".into(), kept[1].id.clone())]);
    }

    #[test]
    fn at_picks_the_content_the_path_had_then_after_two_overwrites() {
        // "a" held X (written at 10) until 200, then Y until 300, then Z.
        let kept = vec![v("a", 10, 200), v("a", 200, 300)];
        let x = &kept[0].id;
        let y = &kept[1].id;
        // At 150 it held X: the first version kept after 150.
        assert_eq!(&choose(&kept, "a", &When::At(150)).unwrap()[0].id, x);
        // At 250 it held Y: X (kept at 200) was gone by then.
        assert_eq!(&choose(&kept, "a", &When::At(250)).unwrap()[0].id, y);
        // At 200 exactly X was replaced: Y, written at 200, is what it held.
        assert_eq!(&choose(&kept, "a", &When::At(200)).unwrap()[0].id, y);
        // At 350 it held Z, which is still there: nothing to restore.
        assert!(choose(&kept, "a", &When::At(350)).unwrap().is_empty());
    }

    #[test]
    fn at_skips_content_written_after_the_time() {
        // "n" did not exist at 50: created at 100, overwritten at 120.
        let kept = vec![v("n", 100, 120)];
        assert!(choose(&kept, "n", &When::At(50)).unwrap().is_empty());
        // Content with a later mtime kept before an older one is not what
        // the path held at TIME; the older one is.
        let odd = vec![v("m", 90, 100), v("m", 40, 130)];
        assert_eq!(&choose(&odd, "m", &When::At(50)).unwrap()[0].id, &odd[1].id);
    }

    #[test]
    fn a_directory_covers_everything_below_it_and_nothing_beside_it() {
        let kept = vec![
            v("dir/a", 10, 100),
            v("dir/sub/b", 10, 100),
            v("dir2/c", 10, 100),
            v("dir", 10, 90), // once a file called "dir"
        ];
        let got = choose(&kept, "dir/", &When::At(50)).unwrap();
        let paths: Vec<_> = got.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, vec!["dir", "dir/a", "dir/sub/b"]);
        assert_eq!(choose(&kept, ".", &When::At(50)).unwrap().len(), 4);
    }

    #[test]
    fn a_version_by_id_must_be_of_the_path_or_below() {
        let kept = vec![v("dir/a", 10, 100), v("b", 10, 100)];
        let id = kept[0].id.clone();
        assert_eq!(
            choose(&kept, "dir", &When::Version(id.clone())).unwrap()[0].id,
            id
        );
        assert_eq!(
            choose(&kept, "b", &When::Version(id.clone())).unwrap_err(),
            ChooseError::NotUnder {
                id,
                path: "dir/a".into(),
                target: "b".into()
            }
        );
        assert_eq!(
            choose(&kept, "b", &When::Version("nope".into())).unwrap_err(),
            ChooseError::NoSuchVersion("nope".into())
        );
    }

    #[test]
    fn nothing_kept_under_the_path_is_an_error() {
        let kept = vec![v("a", 10, 100)];
        assert_eq!(
            choose(&kept, "ab", &When::Newest).unwrap_err(),
            ChooseError::NothingKept {
                target: "ab".into()
            }
        );
        assert!(covers("a", "a/b") && !covers("a", "ab") && covers("", "x"));
    }
}
