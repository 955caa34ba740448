//! The data model every node agrees on: one [`FileEntry`] per path, ordered
//! by [`VersionVector`]s. It is both the wire format of index exchange and
//! what the index stores, so a peer's entry and ours compare directly.
//!
//! Everything a peer sends is untrusted: [`validate_rel_path`] and
//! [`FileEntry::validate`] are the single choke point that keeps hostile
//! paths (`../x`, `/etc/x`, NUL, backslashes) out of the node.

use std::{cmp::Ordering, collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// A node's short id: the first 8 bytes of its endpoint id (big endian).
/// Version vectors are keyed by it; with at most a few hundred nodes per
/// fleet a 64-bit prefix of a public key does not collide in practice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ShortId(pub u64);

impl ShortId {
    pub fn from_node_id(id: &[u8; 32]) -> Self {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id[..8]);
        ShortId(u64::from_be_bytes(b))
    }
}

impl fmt::Display for ShortId {
    /// Ten hex chars, the same prefix iroh's `fmt_short` prints for the
    /// endpoint id, so log lines and conflict file names line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.to_be_bytes();
        write!(f, "{}", hex::encode(&bytes[..5]))
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({self})")
    }
}

/// Highest version counter accepted from a peer or produced by
/// [`VersionVector::bump`] (2^62). A node bumps its counter once per local
/// change, so an honest fleet never gets near it; the headroom up to
/// `u64::MAX` means no counter arithmetic can wrap.
pub const MAX_COUNTER: u64 = 1 << 62;

/// Most (node, counter) pairs accepted in one version vector. A vector has
/// one pair per node that ever changed the path, and a fleet has at most a
/// few hundred nodes, so only a hostile member reaches this. The cap keeps
/// one entry (and so an index batch) far below the frame limits.
///
/// The rule: validation is the gate. Entries from peers over the cap are
/// rejected. Local merges are not capped: merging two capped vectors and
/// bumping can exceed it (only with hostile input), and such an entry is
/// then rejected by peers in turn, while the index server splits batches
/// (and skips an entry that cannot fit a frame at all) so a stream never
/// wedges on it.
pub const MAX_VECTOR_LEN: usize = 1024;

/// Largest file size accepted from a peer (2^60 bytes, an exbibyte): far
/// beyond any disk, low enough that sums of a few sizes cannot overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// [`VersionVector::bump`] would take a counter past [`MAX_COUNTER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("version counter of {node} is at its ceiling ({MAX_COUNTER}); cannot record a new change")]
pub struct CounterOverflow {
    pub node: ShortId,
}

/// How two versions relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// Self has seen everything other has, and more.
    Dominates,
    /// Other has seen everything self has, and more.
    DominatedBy,
    /// Each has changes the other has not seen: a true conflict.
    Concurrent,
}

/// node → counter. Stored sorted so equal vectors encode identically.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ShortId, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, node: ShortId) -> u64 {
        self.0.get(&node).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }

    /// A new local change by `node`: its counter moves past everything this
    /// vector has seen from it. Checked: a counter never wraps (a wrapped
    /// counter would make the change look older than the one it replaces
    /// and lose it) and never passes [`MAX_COUNTER`], which peers would
    /// reject. [`FileEntry::validate`] keeps peers' counters at or below
    /// [`MAX_COUNTER`], so this fails only for a vector stored before that
    /// check existed.
    pub fn bump(&self, node: ShortId) -> Result<Self, CounterOverflow> {
        let mut next = self.clone();
        let c = next.0.entry(node).or_insert(0);
        *c = c
            .checked_add(1)
            .filter(|n| *n <= MAX_COUNTER)
            .ok_or(CounterOverflow { node })?;
        Ok(next)
    }

    /// The least vector that dominates-or-equals both.
    pub fn merge(&self, other: &Self) -> Self {
        let mut out = self.0.clone();
        for (k, v) in &other.0 {
            let e = out.entry(*k).or_insert(0);
            *e = (*e).max(*v);
        }
        VersionVector(out)
    }

    pub fn compare(&self, other: &Self) -> Causality {
        let mut self_greater = false;
        let mut other_greater = false;
        for (k, v) in &self.0 {
            match v.cmp(&other.get(*k)) {
                Ordering::Greater => self_greater = true,
                Ordering::Less => other_greater = true,
                Ordering::Equal => {}
            }
        }
        for (k, v) in &other.0 {
            if !self.0.contains_key(k) && *v > 0 {
                other_greater = true;
            }
        }
        match (self_greater, other_greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (ShortId, u64)>) -> Self {
        VersionVector(pairs.into_iter().filter(|(_, v)| *v > 0).collect())
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}:{v}")?;
        }
        f.write_str("}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

/// One path's state as announced by a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Normalised relative path: UTF-8, `/`-separated, no `.`/`..`.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits (`0o7777` mask); only the executable bits are applied
    /// on the receiving side, like Syncthing, so umasks stay in charge.
    pub mode: u32,
    /// BLAKE3 of the content (files only).
    pub hash: Option<[u8; 32]>,
    /// Link target (symlinks only), stored verbatim and never followed.
    pub symlink_target: Option<String>,
    /// A tombstone: the path was deleted.
    pub deleted: bool,
    pub version: VersionVector,
    /// The node that made this change (not whoever relayed it).
    pub modified_by: ShortId,
    /// The announcing node's local sequence number for this entry.
    pub sequence: u64,
}

/// Longest path we accept, in bytes (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// `name` cut to at most `max` bytes on a UTF-8 character boundary (the
/// one rule for every name fleetsync builds from a user's name: temp
/// names, conflict copies), so a generated name stays within
/// [`MAX_NAME_LEN`] and stays valid UTF-8, the same on every node.
pub fn shorten_name(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
/// Longest symlink target we accept.
pub const MAX_SYMLINK_TARGET: usize = 4096;
/// The per-folder directory fleetsync owns (temp files, markers); never synced.
pub const RESERVED_DIR: &str = ".fleetsync";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path is {0} bytes, limit {MAX_PATH_LEN}")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a NUL or control character")]
    ControlChar,
    #[error("path has an empty, '.' or '..' component")]
    BadComponent,
    #[error("path component longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("path is inside the reserved {RESERVED_DIR}/ directory")]
    Reserved,
}

/// Accept only normalised relative paths. Peers are untrusted: this is what
/// keeps every read, write and delete inside the folder root (invariant 1),
/// together with the no-symlink-traversal checks where paths are opened.
pub fn validate_rel_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.len()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        // A Windows peer could mean a separator; on Linux it would be a
        // literal name that differs per OS. Reject rather than guess.
        return Err(PathError::Backslash);
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlChar);
    }
    for (i, comp) in path.split('/').enumerate() {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(PathError::BadComponent);
        }
        if comp.len() > MAX_NAME_LEN {
            return Err(PathError::NameTooLong);
        }
        if i == 0 && comp == RESERVED_DIR {
            return Err(PathError::Reserved);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("bad path {path:?}: {source}")]
    Path { path: String, source: PathError },
    #[error("{path:?}: {problem}")]
    Inconsistent { path: String, problem: &'static str },
}

impl FileEntry {
    /// Structural checks on an entry from a peer, before anything looks at it.
    pub fn validate(&self) -> Result<(), EntryError> {
        validate_rel_path(&self.path).map_err(|source| EntryError::Path {
            path: self.path.clone(),
            source,
        })?;
        let bad = |problem| {
            Err(EntryError::Inconsistent {
                path: self.path.clone(),
                problem,
            })
        };
        if self.version.is_empty() {
            return bad("empty version vector");
        }
        if self.version.len() > MAX_VECTOR_LEN {
            return bad("version vector longer than MAX_VECTOR_LEN");
        }
        if self.version.iter().any(|(_, c)| c == 0 || c > MAX_COUNTER) {
            return bad("version counter zero or above MAX_COUNTER");
        }
        if self.size > MAX_FILE_SIZE {
            return bad("size above MAX_FILE_SIZE");
        }
        if self.deleted {
            return Ok(());
        }
        match self.kind {
            EntryKind::File if self.hash.is_none() => bad("file without hash"),
            EntryKind::Symlink => match &self.symlink_target {
                None => bad("symlink without target"),
                Some(t) if t.is_empty() || t.len() > MAX_SYMLINK_TARGET || t.contains('\0') => {
                    bad("bad symlink target")
                }
                Some(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Same content and metadata as far as the folder is concerned, ignoring
    /// version and bookkeeping. Used to tell "nothing to do on disk" apart
    /// from a real change.
    pub fn same_content(&self, other: &FileEntry) -> bool {
        self.deleted == other.deleted
            && (self.deleted
                || (self.kind == other.kind
                    && self.hash == other.hash
                    && self.symlink_target == other.symlink_target
                    && self.size == other.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(p: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_pairs(p.iter().map(|(a, b)| (ShortId(*a), *b)))
    }

    #[test]
    fn compare_covers_all_relations() {
        assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(1, 1)])), Causality::Equal);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 1)])), Causality::Dominates);
        assert_eq!(
            vv(&[(1, 1)]).compare(&vv(&[(1, 1), (2, 1)])),
            Causality::DominatedBy
        );
        assert_eq!(
            vv(&[(1, 2)]).compare(&vv(&[(1, 1), (2, 1)])),
            Causality::Concurrent
        );
        assert_eq!(
            VersionVector::new().compare(&vv(&[(3, 1)])),
            Causality::DominatedBy
        );
    }

    #[test]
    fn merge_dominates_both_and_bump_dominates_self() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 1), (3, 4)]);
        let m = a.merge(&b);
        assert!(matches!(m.compare(&a), Causality::Dominates));
        assert!(matches!(m.compare(&b), Causality::Dominates));
        assert_eq!(
            m.bump(ShortId(2)).unwrap().compare(&m),
            Causality::Dominates
        );
        assert_eq!(m.bump(ShortId(2)).unwrap().get(ShortId(2)), 2);
    }

    /// Regression (issue 10, counter overflow): `bump` did `+= 1`, so a
    /// counter a member had set to `u64::MAX` panicked (debug) or wrapped
    /// to 0 and lost the change (release).
    #[test]
    fn counter_overflow_bump_is_checked() {
        let me = ShortId(2);
        assert_eq!(
            vv(&[(2, u64::MAX)]).bump(me),
            Err(CounterOverflow { node: me })
        );
        assert!(vv(&[(2, MAX_COUNTER)]).bump(me).is_err());
        let top = vv(&[(2, MAX_COUNTER - 1)]).bump(me).unwrap();
        assert_eq!(top.get(me), MAX_COUNTER);
    }

    fn dir(version: VersionVector) -> FileEntry {
        FileEntry {
            path: "d".into(),
            kind: EntryKind::Directory,
            size: 0,
            mtime_ns: 1,
            mode: 0o755,
            hash: None,
            symlink_target: None,
            deleted: false,
            version,
            modified_by: ShortId(1),
            sequence: 1,
        }
    }

    /// Regression (issue 10, oversized version vectors / counter overflow):
    /// only "non-empty" was checked.
    #[test]
    fn oversized_vectors_absurd_counters_and_sizes_are_rejected() {
        let pairs = |n: u64| vv(&(1..=n).map(|i| (i, 1)).collect::<Vec<_>>());
        assert!(dir(pairs(MAX_VECTOR_LEN as u64)).validate().is_ok());
        assert!(dir(pairs(MAX_VECTOR_LEN as u64 + 1)).validate().is_err());
        assert!(dir(vv(&[(1, MAX_COUNTER)])).validate().is_ok());
        assert!(dir(vv(&[(1, MAX_COUNTER + 1)])).validate().is_err());
        assert!(dir(vv(&[(1, u64::MAX)])).validate().is_err());
        let zero = VersionVector(BTreeMap::from([(ShortId(1), 0)]));
        assert!(dir(zero).validate().is_err(), "a zero counter is empty");
        let mut big = dir(vv(&[(1, 1)]));
        big.size = MAX_FILE_SIZE;
        assert!(big.validate().is_ok());
        big.size = MAX_FILE_SIZE + 1;
        assert!(big.validate().is_err());
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
            ".fleetsync/tmp/x",
            "..",
            ".",
        ] {
            assert!(validate_rel_path(p).is_err(), "{p:?} accepted");
        }
        assert!(validate_rel_path(&"a/".repeat(3000)).is_err());
        assert!(validate_rel_path(&"x".repeat(256)).is_err());
        for p in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "dir/.fleetsync",
            "ünïcode/ファイル",
            "a..b",
        ] {
            assert!(validate_rel_path(p).is_ok(), "{p:?} rejected");
        }
    }

    #[test]
    fn short_id_display_matches_iroh_fmt_short_width() {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(ShortId::from_node_id(&id).to_string(), "deadbeef01");
    }
}
