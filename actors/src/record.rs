//! What the index records about a path ([`Record`]) and what the disk
//! shows there ([`DiskState`]), and the one rule that compares the two:
//! [`disk_matches`]. Watcher, hasher, index and apply all ask "is the
//! disk still what we recorded?" through it, so they never disagree.
//!
//! This module sits below the index, the rules and the filesystem layer;
//! it imports none of them.

use fleetsync_mesh::model::{EntryKind, FileEntry, ShortId};
use serde::{Deserialize, Serialize};

/// What a path looked like on disk when we recorded it; if the disk still
/// matches, the hasher need not read the file again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

/// Our entry for a path, plus local bookkeeping that never goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub entry: FileEntry,
    /// None for tombstones and entries not (yet) on disk.
    pub local: Option<LocalStat>,
    /// Receive-only folders: a local edit that is recorded but never
    /// announced, and that the next remote version overwrites.
    pub local_changed: bool,
    /// We adopted this exact entry from this peer (so don't echo it back).
    pub received_from: Option<ShortId>,
    /// Name of this file's hard link in `<root>/.fleetsync/refs`, which the
    /// blob store references instead of the user-visible path (so renames,
    /// conflict copies and replacements never make it serve wrong bytes).
    pub refs: Option<String>,
}

impl Record {
    /// The record, if it describes something that exists (not a tombstone).
    pub fn live(rec: Option<&Record>) -> Option<&Record> {
        rec.filter(|r| !r.entry.deleted)
    }
}

/// Kind and `lstat` of something on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub stat: LocalStat,
}

/// What `lstat` shows at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    Missing,
    /// A socket, fifo or device: never synced.
    Special,
    Present(Meta),
}

/// The part of a mode that is synced: a file's executable bits, nothing
/// of a directory's or a symlink's. Everything else about permissions is
/// the receiving node's own business (its folder `umask`,
/// [`applied_mode`]), so a difference there is never a change to sync.
pub fn synced_mode(kind: EntryKind, mode: u32) -> u32 {
    match kind {
        EntryKind::File => mode & 0o111,
        EntryKind::Directory | EntryKind::Symlink => 0,
    }
}

/// The permission bits a received entry gets here: a file `0o666` plus
/// the sender's executable bits, a directory `0o777`, both without the
/// folder's `umask` bits. Never setuid, setgid or sticky, never more
/// than the umask allows, whatever the sender's mode says.
pub fn applied_mode(kind: EntryKind, remote: u32, umask: u32) -> u32 {
    let wanted = match kind {
        EntryKind::File => 0o666 | synced_mode(kind, remote),
        EntryKind::Directory | EntryKind::Symlink => 0o777,
    };
    wanted & !umask & 0o777
}

/// A stat as it is compared: only the synced part of its mode counts.
fn comparable(kind: EntryKind, stat: LocalStat) -> LocalStat {
    LocalStat {
        mode: synced_mode(kind, stat.mode),
        ..stat
    }
}

/// Does the disk still show what the index recorded for this path?
///
/// - nothing recorded (or a tombstone): only if nothing is there;
/// - a directory: a directory (its mode is not synced);
/// - a file or symlink: the same kind with the same size, mtime, inode and
///   synced mode bits ([`synced_mode`]; a rewrite in place changes mtime; a
///   replacement, the inode; `chmod +x`, the exec bits).
pub fn disk_matches(disk: &DiskState, rec: Option<&Record>) -> bool {
    disk_matches_recorded(disk, Record::live(rec).map(Recorded::of))
}

/// What [`disk_matches`] reads of a live record: a rescan of a huge folder
/// keeps only this per path, not whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub kind: EntryKind,
    pub local: Option<LocalStat>,
}

impl Recorded {
    pub fn of(r: &Record) -> Self {
        Recorded {
            kind: r.entry.kind,
            local: r.local,
        }
    }
}

/// [`disk_matches`] against what a live record holds (`None`: nothing
/// recorded, or a tombstone).
pub fn disk_matches_recorded(disk: &DiskState, rec: Option<Recorded>) -> bool {
    match (disk, rec) {
        (DiskState::Missing, None) => true,
        (DiskState::Present(m), Some(r)) => {
            r.kind == m.kind
                && match m.kind {
                    EntryKind::Directory => true,
                    k => r.local.map(|l| comparable(k, l)) == Some(comparable(k, m.stat)),
                }
        }
        _ => false,
    }
}

/// May a remote change replace what is on disk without losing a local
/// change? Yes if the disk matches the record, or if nothing is there any
/// more (a local delete has nothing to lose).
pub fn safe_to_replace(disk: &DiskState, rec: Option<&Record>) -> bool {
    matches!(disk, DiskState::Missing) || disk_matches(disk, rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsync_mesh::model::VersionVector;

    fn stat(ino: u64, mode: u32) -> LocalStat {
        LocalStat {
            size: 3,
            mtime_ns: 7,
            ino,
            mode,
        }
    }

    fn rec(kind: EntryKind, local: Option<LocalStat>, mode: u32, deleted: bool) -> Record {
        Record {
            entry: FileEntry {
                path: "p".into(),
                kind,
                size: 3,
                mtime_ns: 7,
                mode,
                hash: None,
                symlink_target: None,
                deleted,
                version: VersionVector::from_pairs([(ShortId(1), 1)]),
                modified_by: ShortId(1),
                sequence: 1,
            },
            local,
            local_changed: false,
            received_from: None,
            refs: None,
        }
    }

    fn present(kind: EntryKind, stat: LocalStat) -> DiskState {
        DiskState::Present(Meta { kind, stat })
    }

    #[test]
    fn nothing_recorded_matches_only_nothing_on_disk() {
        let s = stat(1, 0o644);
        assert!(disk_matches(&DiskState::Missing, None));
        assert!(!disk_matches(&present(EntryKind::File, s), None));
        assert!(!disk_matches(&DiskState::Special, None));
        let tomb = rec(EntryKind::File, None, 0o644, true);
        assert!(disk_matches(&DiskState::Missing, Some(&tomb)));
        assert!(!disk_matches(&present(EntryKind::File, s), Some(&tomb)));
    }

    #[test]
    fn a_file_matches_only_its_recorded_stat_and_kind() {
        let s = stat(1, 0o100644);
        let r = rec(EntryKind::File, Some(s), 0o100644, false);
        assert!(disk_matches(&present(EntryKind::File, s), Some(&r)));
        assert!(!disk_matches(
            &present(EntryKind::File, stat(2, 0o100644)),
            Some(&r)
        ));
        assert!(!disk_matches(&present(EntryKind::Symlink, s), Some(&r)));
        assert!(!disk_matches(&DiskState::Missing, Some(&r)));
        assert!(!disk_matches(&DiskState::Special, Some(&r)));
    }

    #[test]
    fn a_directory_matches_whatever_its_mode_or_inode() {
        let r = rec(EntryKind::Directory, Some(stat(1, 0o2755)), 0o2755, false);
        assert!(disk_matches(
            &present(EntryKind::Directory, stat(9, 0o755)),
            Some(&r)
        ));
        assert!(disk_matches(
            &present(EntryKind::Directory, stat(1, 0o700)),
            Some(&r)
        ));
        assert!(!disk_matches(
            &present(EntryKind::File, stat(1, 0o755)),
            Some(&r)
        ));
    }

    #[test]
    fn a_file_mode_counts_only_by_its_exec_bits() {
        let r = rec(EntryKind::File, Some(stat(1, 0o100644)), 0o100644, false);
        let disk = |mode| present(EntryKind::File, stat(1, mode));
        assert!(
            disk_matches(&disk(0o100600), Some(&r)),
            "umask bits are local"
        );
        assert!(disk_matches(&disk(0o100666), Some(&r)));
        assert!(
            !disk_matches(&disk(0o100744), Some(&r)),
            "chmod u+x is a change"
        );
        assert!(
            !disk_matches(&disk(0o100645), Some(&r)),
            "chmod o+x is a change"
        );
    }

    #[test]
    fn a_received_mode_is_masked_by_the_umask_keeping_only_exec_bits() {
        let f = |remote, umask| applied_mode(EntryKind::File, remote, umask);
        assert_eq!(f(0o100644, 0o022), 0o644);
        assert_eq!(f(0o100777, 0o022), 0o755, "never world-writable");
        assert_eq!(f(0o104777, 0o022), 0o755, "never setuid");
        assert_eq!(f(0o100000, 0o022), 0o644, "never mode 0");
        assert_eq!(f(0o100755, 0o077), 0o700);
        assert_eq!(f(0o100711, 0o000), 0o777);
        let d = |remote, umask| applied_mode(EntryKind::Directory, remote, umask);
        assert_eq!(d(0, 0o022), 0o755);
        assert_eq!(d(0o2700, 0o022), 0o755, "a directory's mode is not synced");
        assert_eq!(d(0o777, 0o027), 0o750);
        // What a node applies matches what it compares: the synced part
        // survives the mask (unless the umask removes it everywhere).
        for umask in [0o022, 0o077, 0o002] {
            for remote in [0o100644, 0o100755, 0o100700] {
                let applied = f(remote, umask);
                assert_eq!(
                    synced_mode(EntryKind::File, applied),
                    synced_mode(EntryKind::File, remote) & !umask
                );
            }
        }
    }

    #[test]
    fn a_vanished_path_is_safe_to_replace_but_a_changed_one_is_not() {
        let s = stat(1, 0o100644);
        let r = rec(EntryKind::File, Some(s), 0o100644, false);
        assert!(safe_to_replace(&DiskState::Missing, Some(&r)));
        assert!(safe_to_replace(&present(EntryKind::File, s), Some(&r)));
        assert!(!safe_to_replace(
            &present(EntryKind::File, stat(5, 0o100644)),
            Some(&r)
        ));
        assert!(!safe_to_replace(&present(EntryKind::File, s), None));
    }
}
