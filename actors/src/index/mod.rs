//! The folder index: redb in the node's data directory (never in a synced
//! folder). It is the single source of truth every actor rebuilds its state
//! from after a restart.
//!
//! Tables (all keyed by folder id first, except `meta` and `hashes`):
//!
//! | table      | key                          | value                         |
//! |------------|------------------------------|-------------------------------|
//! | `meta`     | name                         | schema version                |
//! | `folders`  | folder                       | [`FolderMeta`] (index id, next seq, counters) |
//! | `files`    | (folder, path)               | [`Record`]: our entry + local stat |
//! | `seq`      | (folder, seq)                | path — the delta index sent to peers |
//! | `hashes`   | (hash, folder, path)         | () — find local copies of content |
//! | `remote`   | (folder, peer id)            | [`RemoteMark`]: how far we read the peer's index |
//! | `pending`  | (folder, path, peer id)      | a peer's entry not yet applied |
//! | `history`  | (folder, path, seq)          | [`HistoryEvent`] — the audit trail, with the proven sender ([`Via`]) |
//! | `pending_peers` | (folder, peer id)       | u64: that peer's `pending` rows (for [`Limits`]) |
//! | `peer_reads` | (folder, peer id)          | [`PeerRead`]: how far a peer read our index, when last seen |
//! | `horizons` | folder                       | u64: highest sequence number whose tombstone expired |
//! | `rescans`  | (folder, peer id)            | u64: that peer said "too old": read it again from 0 (value: how far it had read us) |
//!
//! Every value starts with a schema byte ([`SCHEMA_VERSION`], now 3; the
//! `pending_peers`, `horizons` and `rescans` values are plain u64). Schema
//! 3 only added the last three tables (tombstone expiry, `tombs`). A value of a schema its table
//! cannot read is refused as [`IndexError::Corrupt`], never misread, and
//! [`Index::open`] refuses a database of a newer schema. A database of
//! schema 1 is migrated when opened (`migrate`: history lines gain
//! [`Via::Unknown`], the pending counters are counted).
//!
//! Ingest enforces the folder's caps ([`Limits`]): past `max_pending` rows
//! from one peer, or `max_files` paths in the folder, entries are deferred —
//! not stored, and the peer's mark stops short of them, so they are
//! offered again.
//!
//! Ingesting a peer's batch writes its entries to `pending` and advances its
//! [`RemoteMark`] in one transaction; applying an entry writes the new
//! `files` record and deletes the `pending` row in one transaction. So a
//! crash at any point neither loses a remote change nor fetches one twice.
//!
//! Parts: this file (the [`Index`] handle, `open`, the public types),
//! `schema` (value encoding), `tables` (table definitions and the
//! write-transaction helper that keeps `seq`, `hashes`, `history` and the
//! folder counters in step with `files`), `commit` ([`Index::commit`]),
//! `ingest` (peers' batches into `pending`), `read` (queries).

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use fleetsync_mesh::model::{FileEntry, ShortId};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::record::{LocalStat, Record};

mod commit;
#[cfg(test)]
mod commit_tests;
#[cfg(test)]
mod fixtures;
mod ingest;
mod migrate;
mod read;
mod schema;
mod tables;
mod tombs;

pub use ingest::{Full, Ingested, Limits};
pub use schema::{CorruptValue, SCHEMA_VERSION};
pub use tombs::{read_bound, Expired, Expiry, PeerRead};

/// Page cache of the index database. redb's default is 1 GiB and fills as
/// pages are read; a few MiB keep memory flat however large the folder is.
/// 16 MiB filled up as a few thousand files were synced, the rise of the
/// node's peak RSS in S3; with 4 MiB, S3 and S7 took as long, and a
/// no-change rescan of a million files 4.5 s (docs/benchmarks.md).
pub const INDEX_CACHE: usize = 4 << 20;

/// History rows kept per path; older ones are dropped as new ones land.
pub const HISTORY_PER_PATH: usize = 32;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    #[error("creating the index directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("index schema {found} is newer than this build understands ({supported}); upgrade fleetsync or move the data directory aside")]
    SchemaTooNew { found: u8, supported: u8 },
    #[error("folder {folder:?} is not initialised in the index")]
    FolderNotInitialised { folder: String },
    #[error("corrupt index value in {table}: {source}")]
    Corrupt {
        table: &'static str,
        #[source]
        source: CorruptValue,
    },
    /// The writer was replaced (a restarted actor): nothing was written.
    #[error("not committed: the actor that made these changes was replaced")]
    Fenced,
}

/// redb reports each step with its own error type; all of them are the
/// database failing, kept whole as [`IndexError::Db`]'s source.
macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, IndexError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FolderMeta {
    /// Random id of this folder's index; changes only if the index is
    /// recreated, telling peers to resend everything.
    pub index_id: u64,
    /// The last sequence number handed out.
    pub seq: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub tombstones: u64,
}

/// The refs link names a folder's records use ([`Index::refs_in_use`]),
/// as of sequence number `seq`.
#[derive(Debug, Default)]
pub struct RefsInUse {
    pub names: HashSet<String>,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemoteMark {
    pub index_id: u64,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub path: String,
    pub peer: [u8; 32],
    pub entry: FileEntry,
}

/// One line of `fleetsync history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub seq: u64,
    pub modified_by: ShortId,
    pub mtime_ns: i64,
    pub hash: Option<[u8; 32]>,
    pub deleted: bool,
    pub size: u64,
    pub version: Vec<(ShortId, u64)>,
    /// When this node recorded it (ns since epoch).
    pub recorded_ns: i64,
    /// Some(peer) when it was applied from a peer; None for a local change.
    pub applied_from: Option<ShortId>,
    /// Free text: "local edit", "applied", "conflict: kept … as …".
    pub note: String,
    /// Who handed us this change, as proven (unlike `modified_by` and
    /// `version`, which the sender claims).
    pub via: Via,
}

/// Where a change recorded in the history came from, as this node knows
/// it (not as the entry claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// Made on this node (seen on its disk).
    Local,
    /// Received from this peer: the endpoint id its session's handshake
    /// proved (the key of the pending row the change answered).
    Peer([u8; 32]),
    /// Recorded before the index kept the sender (schema 1).
    Unknown,
}

/// Nanoseconds since the Unix epoch (0 before it, `i64::MAX` after 2262).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the hasher saw at a path.
#[derive(Debug, Clone)]
pub enum Observed {
    Gone,
    Dir {
        stat: LocalStat,
    },
    Symlink {
        stat: LocalStat,
        target: String,
    },
    File {
        stat: LocalStat,
        hash: [u8; 32],
        /// The refs link made for this observation, if any.
        refs: Option<String>,
    },
}

/// One change in a [`Commit`]. Both kinds are resolved against the record
/// as it is *inside* the write transaction, because the hasher and the
/// receiver write the same paths concurrently.
#[derive(Debug, Clone)]
pub enum Item {
    /// The hasher's observation: skipped if the index already says exactly
    /// this (e.g. the receiver wrote it), adopted from a matching pending
    /// remote entry (no echo), else a new local version on top of the
    /// current one.
    Observed { path: String, seen: Observed },
    /// A remote entry the receiver put on disk: written only if the index
    /// has not moved past it meanwhile; then the pending rows it
    /// answers are resolved (removed).
    Applied {
        record: Record,
        note: String,
        resolves: Vec<(String, [u8; 32])>,
        /// The peer whose index announced it (its proven endpoint id):
        /// the history's [`Via::Peer`].
        from: [u8; 32],
    },
}

/// Who is committing local observations.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub me: ShortId,
    /// Receive-only folder: local changes are recorded, never announced.
    pub receive_only: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub items: Vec<Item>,
    /// Pending rows that need nothing done (ours is equal or newer).
    pub resolved: Vec<(String, [u8; 32])>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.resolved.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Committed {
    pub meta: FolderMeta,
    /// Records written (each got a new sequence number).
    pub written: usize,
    /// Applied items the index had moved past: their pending rows remain.
    pub superseded: Vec<Record>,
    /// Refs links nothing references any more: the caller hands them to
    /// [`crate::folder::Folder::release`].
    pub released: Vec<Released>,
    /// The records a local observation replaced with other content, a
    /// delete or another kind (`commit::replaces_content`): what
    /// `versions.local` keeps, from their refs links, before the caller
    /// releases those.
    pub replaced_locally: Vec<Record>,
}

/// A `refs` link the index stopped using, with the hash its record had
/// (what the content was when last hashed; not a promise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub name: String,
    pub hash: Option<[u8; 32]>,
}

/// The index names every synced path: owner-only (0600). Created so
/// before the database opens it (no window with default permissions); an
/// existing one an older version made is tightened.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    fleetsync_mesh::identity::tighten(path, 0o600);
    Ok(())
}

/// Shared handle; all methods block, so actors call them on the blocking pool.
#[derive(Clone, Debug)]
pub struct Index {
    db: Arc<Database>,
    /// The directory holding the index file (the node's data dir, where
    /// the blob store lives too): its free space is checked before fetches.
    dir: Arc<Path>,
}

impl Index {
    /// Open (or create) the index at `path`, creating its directory, and
    /// check the schema: a database of a newer schema is refused.
    pub fn open(path: &Path) -> Result<Index> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        create_private(path).map_err(|source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = Database::builder()
            .set_cache_size(INDEX_CACHE)
            .create(path)?;
        let tx = db.begin_write()?;
        schema::check_or_init(&tx)?;
        tables::create_all(&tx)?;
        tx.commit()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(Index {
            db: Arc::new(db),
            dir: dir.into(),
        })
    }

    /// The directory holding the index file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder's metadata, creating it (with a fresh index id) if new.
    pub fn ensure_folder(&self, folder: &str) -> Result<FolderMeta> {
        if let Some(m) = self.folder_meta(folder)? {
            return Ok(m);
        }
        let tx = self.db.begin_write()?;
        let meta = {
            let mut t = tx.open_table(tables::FOLDERS)?;
            // Another caller may have created it since the read above.
            let existing = t
                .get(folder)?
                .map(|v| schema::dec::<FolderMeta>(schema::name::FOLDERS, v.value()))
                .transpose()?;
            match existing {
                Some(m) => m,
                None => {
                    let m = FolderMeta {
                        index_id: random_u64(),
                        seq: 0,
                        files: 0,
                        dirs: 0,
                        symlinks: 0,
                        bytes: 0,
                        tombstones: 0,
                    };
                    t.insert(folder, schema::enc(&m).as_slice())?;
                    m
                }
            }
        };
        tx.commit()?;
        Ok(meta)
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source unavailable");
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn reopening_keeps_everything_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.redb");
        let id = {
            let idx = Index::open(&p).unwrap();
            let m = idx.ensure_folder("f").unwrap();
            put(&idx, vec![file("a", 1, &[(1, 1)])]);
            m.index_id
        };
        {
            let idx = Index::open(&p).unwrap();
            assert_eq!(idx.ensure_folder("f").unwrap().index_id, id);
            assert!(idx.get("f", "a").unwrap().is_some());
            set_schema(&idx, SCHEMA_VERSION + 1);
        }
        assert!(matches!(
            Index::open(&p),
            Err(IndexError::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn a_database_of_an_older_unknown_schema_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.redb");
        set_schema(&Index::open(&p).unwrap(), 0);
        assert!(matches!(
            Index::open(&p),
            Err(IndexError::Corrupt {
                table: "meta",
                source: CorruptValue::Schema { found: 0, .. }
            })
        ));
    }

    #[test]
    fn open_creates_the_data_directory_and_reports_where_it_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/index.redb");
        Index::open(&nested).unwrap();
        assert!(nested.exists());
        // A regular file where the directory should be.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        match Index::open(&blocked.join("sub/index.redb")) {
            Err(IndexError::Io { path, .. }) => assert_eq!(path, blocked.join("sub")),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn ensure_folder_creates_once_and_folder_meta_is_none_for_unknown_folders() {
        let (_d, idx) = open();
        assert_eq!(idx.folder_meta("g").unwrap(), None);
        let m = idx.ensure_folder("g").unwrap();
        assert_eq!((m.seq, m.files), (0, 0));
        assert_eq!(idx.ensure_folder("g").unwrap(), m);
        assert_eq!(idx.folder_meta("g").unwrap(), Some(m));
    }
}
