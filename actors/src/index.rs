//! The folder index: redb in the node's data directory (never in a synced
//! folder). It is the single source of truth every actor rebuilds its state
//! from after a restart.
//!
//! Tables (all keyed by folder id first):
//!
//! | table      | key                          | value                         |
//! |------------|------------------------------|-------------------------------|
//! | `meta`     | name                         | schema version, …             |
//! | `folders`  | folder                       | [`FolderMeta`] (index id, next seq, counters) |
//! | `files`    | (folder, path)               | [`Record`]: our entry + local stat |
//! | `seq`      | (folder, seq)                | path — the delta index sent to peers |
//! | `hashes`   | (hash, folder, path)         | () — find local copies of content |
//! | `remote`   | (folder, peer id)            | [`RemoteMark`]: how far we read the peer's index |
//! | `pending`  | (folder, path, peer id)      | a peer's entry not yet applied |
//! | `history`  | (folder, path, seq)          | [`HistoryEvent`] — the audit trail |
//!
//! Every value starts with a schema byte; [`Index::open`] refuses a newer
//! schema and migrates older ones, so on-disk state is never misread.
//!
//! Ingesting a peer's batch writes its entries to `pending` and advances its
//! [`RemoteMark`] in one transaction; applying an entry writes the new
//! `files` record and deletes the `pending` row in one transaction. So a
//! crash at any point neither loses a remote change nor fetches one twice.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use fleetsync_mesh::model::{EntryKind, FileEntry, ShortId};

use crate::record::{LocalStat, Record};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const SCHEMA_VERSION: u8 = 1;
const SCHEMA_KEY: &str = "schema";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FOLDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("folders");
const FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("files");
const SEQ: TableDefinition<(&str, u64), &str> = TableDefinition::new("seq");
const HASHES: TableDefinition<(&[u8], &str, &str), ()> = TableDefinition::new("hashes");
const REMOTE: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("remote");
const PENDING: TableDefinition<(&str, &str, &[u8]), &[u8]> = TableDefinition::new("pending");
const HISTORY: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("history");

/// Page cache of the index database.
pub const INDEX_CACHE: usize = 16 << 20;

/// History rows kept per path; older ones are dropped as new ones land.
pub const HISTORY_PER_PATH: usize = 32;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(String),
    #[error("index schema {found} is newer than this build understands ({supported}); upgrade fleetsync or move the data directory aside")]
    SchemaTooNew { found: u8, supported: u8 },
    #[error("corrupt index value in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, IndexError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    out.extend(postcard::to_stdvec(v).expect("index values always serialize"));
    out
}

fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T> {
    match b.split_first() {
        Some((&SCHEMA_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| IndexError::Corrupt {
                table,
                message: e.to_string(),
            })
        }
        Some((v, _)) => Err(IndexError::Corrupt {
            table,
            message: format!("unknown value schema {v}"),
        }),
        None => Err(IndexError::Corrupt {
            table,
            message: "empty value".into(),
        }),
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source unavailable");
    u64::from_le_bytes(b)
}

fn path_upper(prefix: &str) -> String {
    // Every path under `prefix` sorts before prefix + U+10FFFF.
    format!("{prefix}\u{10FFFF}")
}

/// Shared handle; all methods block, so actors call them on the blocking pool.
#[derive(Clone, Debug)]
pub struct Index {
    db: Arc<Database>,
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
}

/// A `refs` link the index stopped using, with the hash its record had
/// (what the content was when last hashed; not a promise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub name: String,
    pub hash: Option<[u8; 32]>,
}

/// The entry a local observation produces, on top of `cur`.
fn local_entry(path: &str, cur: Option<&Record>, seen: &Observed, l: Local) -> FileEntry {
    let base = cur.map(|r| r.entry.version.clone()).unwrap_or_default();
    let version = if l.receive_only {
        base
    } else {
        base.bump(l.me)
    };
    let mut e = FileEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: 0,
        mtime_ns: 0,
        mode: 0,
        hash: None,
        symlink_target: None,
        deleted: false,
        version,
        modified_by: l.me,
        sequence: 0,
    };
    match seen {
        Observed::Gone => {
            e.kind = cur.map(|r| r.entry.kind).unwrap_or(EntryKind::File);
            e.deleted = true;
            e.mtime_ns = now_ns();
        }
        Observed::Dir { stat } => {
            e.kind = EntryKind::Directory;
            e.mtime_ns = stat.mtime_ns;
            e.mode = stat.mode;
        }
        Observed::Symlink { stat, target } => {
            e.kind = EntryKind::Symlink;
            e.mtime_ns = stat.mtime_ns;
            e.mode = stat.mode;
            e.symlink_target = Some(target.clone());
        }
        Observed::File { stat, hash, .. } => {
            e.size = stat.size;
            e.mtime_ns = stat.mtime_ns;
            e.mode = stat.mode;
            e.hash = Some(*hash);
        }
    }
    e
}

/// Does the index already say what the disk shows?
fn already_recorded(cur: Option<&Record>, seen: &Observed) -> bool {
    let live = cur.filter(|r| !r.entry.deleted);
    match (seen, live) {
        (Observed::Gone, None) => true,
        (Observed::Gone, Some(_)) => false,
        (_, None) => false,
        (Observed::Dir { stat }, Some(r)) => {
            r.entry.kind == EntryKind::Directory && r.entry.mode == stat.mode
        }
        (Observed::Symlink { target, .. }, Some(r)) => {
            r.entry.kind == EntryKind::Symlink
                && r.entry.symlink_target.as_deref() == Some(target.as_str())
        }
        (Observed::File { stat, .. }, Some(r)) => {
            r.entry.kind == EntryKind::File && r.local == Some(*stat)
        }
    }
}

fn stat_of(seen: &Observed) -> Option<LocalStat> {
    match seen {
        Observed::Gone => None,
        Observed::Dir { stat } | Observed::Symlink { stat, .. } | Observed::File { stat, .. } => {
            Some(*stat)
        }
    }
}

impl Index {
    pub fn open(path: &Path) -> Result<Index> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| IndexError::Db(e.to_string()))?;
        }
        // redb's default page cache is 1 GiB and fills as pages are read:
        // bound it so memory does not grow with the folder.
        let db = Database::builder()
            .set_cache_size(INDEX_CACHE)
            .create(path)?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value().first().copied());
            match found {
                None => {
                    meta.insert(SCHEMA_KEY, [SCHEMA_VERSION].as_slice())?;
                }
                Some(Some(v)) if v > SCHEMA_VERSION => {
                    return Err(IndexError::SchemaTooNew {
                        found: v,
                        supported: SCHEMA_VERSION,
                    })
                }
                // Older schemas would be migrated here, table by table.
                Some(_) => {}
            }
            tx.open_table(FOLDERS)?;
            tx.open_table(FILES)?;
            tx.open_table(SEQ)?;
            tx.open_table(HASHES)?;
            tx.open_table(REMOTE)?;
            tx.open_table(PENDING)?;
            tx.open_table(HISTORY)?;
        }
        tx.commit()?;
        Ok(Index { db: Arc::new(db) })
    }

    /// The folder's metadata, creating it (with a fresh index id) if new.
    pub fn ensure_folder(&self, folder: &str) -> Result<FolderMeta> {
        if let Some(m) = self.folder_meta(folder)? {
            return Ok(m);
        }
        let tx = self.db.begin_write()?;
        let meta = {
            let mut t = tx.open_table(FOLDERS)?;
            let existing = match t.get(folder)? {
                Some(v) => Some(dec::<FolderMeta>("folders", v.value())?),
                None => None,
            };
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
                    t.insert(folder, enc(&m).as_slice())?;
                    m
                }
            }
        };
        tx.commit()?;
        Ok(meta)
    }

    pub fn folder_meta(&self, folder: &str) -> Result<Option<FolderMeta>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FOLDERS)?;
        let v = t.get(folder)?;
        v.map(|v| dec("folders", v.value())).transpose()
    }

    pub fn get(&self, folder: &str, path: &str) -> Result<Option<Record>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let v = t.get((folder, path))?;
        v.map(|v| dec("files", v.value())).transpose()
    }

    /// Records for many paths in one read transaction.
    pub fn get_many(&self, folder: &str, paths: &[String]) -> Result<HashMap<String, Record>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let mut out = HashMap::with_capacity(paths.len());
        for p in paths {
            if let Some(v) = t.get((folder, p.as_str()))? {
                out.insert(p.clone(), dec("files", v.value())?);
            }
        }
        Ok(out)
    }

    /// Every record strictly below directory `dir` ("" = the whole folder).
    pub fn descendants(&self, folder: &str, dir: &str) -> Result<Vec<Record>> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let upper = path_upper(&prefix);
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for item in t.range((folder, prefix.as_str())..(folder, upper.as_str()))? {
            let (_, v) = item?;
            out.push(dec("files", v.value())?);
        }
        Ok(out)
    }

    /// Visit every record of a folder (scan comparisons, retention).
    pub fn for_each(&self, folder: &str, mut f: impl FnMut(&Record)) -> Result<()> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        for item in t.range((folder, "")..(folder, upper.as_str()))? {
            let (_, v) = item?;
            f(&dec("files", v.value())?);
        }
        Ok(())
    }

    /// Paths in this folder whose current content has this hash.
    pub fn paths_with_hash(&self, folder: &str, hash: &[u8; 32]) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HASHES)?;
        let upper = path_upper("");
        let mut out = Vec::new();
        for item in
            t.range((hash.as_slice(), folder, "")..(hash.as_slice(), folder, upper.as_str()))?
        {
            let (k, _) = item?;
            out.push(k.value().2.to_string());
        }
        Ok(out)
    }

    /// Every refs link name a record uses.
    pub fn refs_in_use(&self, folder: &str) -> Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        self.for_each(folder, |r| {
            if let Some(n) = &r.refs {
                out.insert(n.clone());
            }
        })?;
        Ok(out)
    }

    /// Every content hash any current entry or pending entry needs: what
    /// blob garbage collection must keep.
    pub fn live_hashes(&self) -> Result<Vec<[u8; 32]>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        let t = tx.open_table(HASHES)?;
        let mut last: Option<Vec<u8>> = None;
        for item in t.iter()? {
            let (k, _) = item?;
            let h = k.value().0;
            if last.as_deref() != Some(h) {
                if let Ok(a) = <[u8; 32]>::try_from(h) {
                    out.push(a);
                }
                last = Some(h.to_vec());
            }
        }
        let p = tx.open_table(PENDING)?;
        for item in p.iter()? {
            let (_, v) = item?;
            let e: FileEntry = dec("pending", v.value())?;
            if let Some(h) = e.hash {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Resolve and write a batch of changes (each written record gets the
    /// next sequence number), resolve pending rows, append history — one
    /// durable transaction.
    pub fn commit(&self, folder: &str, commit: Commit, local: Local) -> Result<Committed> {
        use crate::rules::{decide, Decision};
        use fleetsync_mesh::model::Causality;
        let tx = self.db.begin_write()?;
        let out = {
            let mut folders = tx.open_table(FOLDERS)?;
            let mut meta: FolderMeta = match folders.get(folder)? {
                Some(v) => dec("folders", v.value())?,
                None => {
                    return Err(IndexError::Db(format!("folder {folder:?} not initialised")));
                }
            };
            let mut t = Tables {
                files: tx.open_table(FILES)?,
                seqs: tx.open_table(SEQ)?,
                hashes: tx.open_table(HASHES)?,
                history: tx.open_table(HISTORY)?,
                pending: tx.open_table(PENDING)?,
            };
            let mut written = 0;
            let mut superseded = Vec::new();
            let mut released = Vec::new();
            for item in commit.items {
                match item {
                    Item::Observed { path, seen } => {
                        let cur = t.get(folder, &path)?;
                        let new_refs = match &seen {
                            Observed::File { refs, .. } => refs.clone(),
                            _ => None,
                        };
                        if already_recorded(cur.as_ref(), &seen) {
                            // A second link to a live file: nothing to keep.
                            released.extend(new_refs.map(|name| Released { name, hash: None }));
                            continue;
                        }
                        let cand = local_entry(&path, cur.as_ref(), &seen, local);
                        // Did our receiver just write this (maybe before a crash)?
                        let mut adopted = None;
                        {
                            for (peer, p) in t.pending_for(folder, &path)? {
                                if !p.same_content(&cand) {
                                    continue;
                                }
                                if let Decision::Apply {
                                    entry, verbatim, ..
                                } = decide(cur.as_ref(), &p)
                                {
                                    adopted = Some((peer, entry, verbatim));
                                    break;
                                }
                            }
                        }
                        let (rec, note) = match adopted {
                            Some((peer, entry, verbatim)) => {
                                let from = crate::identity_short(&peer);
                                t.pending.remove((folder, path.as_str(), peer.as_slice()))?;
                                (
                                    Record {
                                        entry,
                                        local: stat_of(&seen),
                                        local_changed: false,
                                        received_from: verbatim.then_some(from),
                                        refs: new_refs.clone(),
                                    },
                                    format!("applied from {from}"),
                                )
                            }
                            None => (
                                Record {
                                    local: stat_of(&seen),
                                    local_changed: local.receive_only,
                                    received_from: None,
                                    refs: new_refs.clone(),
                                    entry: cand,
                                },
                                if matches!(seen, Observed::Gone) {
                                    "local delete".to_string()
                                } else {
                                    "local change".to_string()
                                },
                            ),
                        };
                        released.extend(t.write(folder, &mut meta, cur, rec, Some(note))?);
                        written += 1;
                    }
                    Item::Applied {
                        record,
                        note,
                        resolves,
                    } => {
                        let path = record.entry.path.clone();
                        let cur = t.get(folder, &path)?;
                        let ok = match &cur {
                            None => true,
                            Some(c) => {
                                c.local_changed
                                    || matches!(
                                        c.entry.version.compare(&record.entry.version),
                                        Causality::DominatedBy | Causality::Equal
                                    )
                            }
                        };
                        if !ok {
                            superseded.push(record);
                            continue;
                        }
                        for (p, peer) in &resolves {
                            t.pending.remove((folder, p.as_str(), peer.as_slice()))?;
                        }
                        let same = cur.as_ref().is_some_and(|c| {
                            let mut a = c.entry.clone();
                            a.sequence = record.entry.sequence;
                            a == record.entry && c.local == record.local
                        });
                        if same {
                            // Already recorded (the hasher adopted it): the
                            // staged link is a duplicate.
                            if record.refs != cur.as_ref().and_then(|c| c.refs.clone()) {
                                released
                                    .extend(record.refs.map(|name| Released { name, hash: None }));
                            }
                        } else {
                            released.extend(t.write(folder, &mut meta, cur, record, Some(note))?);
                            written += 1;
                        }
                    }
                }
            }
            for (path, peer) in &commit.resolved {
                t.pending.remove((folder, path.as_str(), peer.as_slice()))?;
            }
            folders.insert(folder, enc(&meta).as_slice())?;
            Committed {
                meta,
                written,
                superseded,
                released,
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// Our entries with sequence numbers in `(since, ..]`, oldest first.
    pub fn since(&self, folder: &str, since: u64, limit: usize) -> Result<Vec<Record>> {
        let tx = self.db.begin_read()?;
        let seqs = tx.open_table(SEQ)?;
        let files = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for item in seqs.range((folder, since.saturating_add(1))..=(folder, u64::MAX))? {
            let (_, path) = item?;
            if let Some(v) = files.get((folder, path.value()))? {
                out.push(dec("files", v.value())?);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn remote_mark(&self, folder: &str, peer: &[u8; 32]) -> Result<Option<RemoteMark>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REMOTE)?;
        let v = t.get((folder, peer.as_slice()))?;
        v.map(|v| dec("remote", v.value())).transpose()
    }

    /// Store a peer's batch as pending and advance its mark, atomically.
    /// Entries that cannot change anything (ours is equal or newer) are
    /// dropped here. Returns how many became pending.
    pub fn ingest(
        &self,
        folder: &str,
        peer: &[u8; 32],
        mark: RemoteMark,
        entries: &[FileEntry],
    ) -> Result<usize> {
        use fleetsync_mesh::model::Causality;
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let files = tx.open_table(FILES)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut remote = tx.open_table(REMOTE)?;
            for e in entries {
                let local: Option<Record> = match files.get((folder, e.path.as_str()))? {
                    Some(v) => Some(dec("files", v.value())?),
                    None => None,
                };
                let useless = match &local {
                    Some(l) if !l.local_changed => match l.entry.version.compare(&e.version) {
                        Causality::Dominates => true,
                        Causality::Equal => l.entry.same_content(e),
                        _ => false,
                    },
                    _ => false,
                };
                if useless {
                    continue;
                }
                pending.insert(
                    (folder, e.path.as_str(), peer.as_slice()),
                    enc(e).as_slice(),
                )?;
                n += 1;
            }
            remote.insert((folder, peer.as_slice()), enc(&mark).as_slice())?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Forget everything received from a peer's index (its index id changed).
    pub fn reset_remote(&self, folder: &str, peer: &[u8; 32]) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(REMOTE)?.remove((folder, peer.as_slice()))?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` pending rows of a folder, in path order.
    pub fn pending(&self, folder: &str, limit: usize) -> Result<Vec<Pending>> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for item in t.range((folder, "", [].as_slice())..(folder, upper.as_str(), [].as_slice()))? {
            let (k, v) = item?;
            let (_, path, peer) = k.value();
            out.push(Pending {
                path: path.to_string(),
                peer: peer.try_into().unwrap_or([0; 32]),
                entry: dec("pending", v.value())?,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn pending_for(&self, folder: &str, path: &str) -> Result<Vec<Pending>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        let lo: &[u8] = &[];
        let hi: &[u8] = &[0xff; 33];
        for item in t.range((folder, path, lo)..(folder, path, hi))? {
            let (k, v) = item?;
            out.push(Pending {
                path: path.to_string(),
                peer: k.value().2.try_into().unwrap_or([0; 32]),
                entry: dec("pending", v.value())?,
            });
        }
        Ok(out)
    }

    pub fn pending_count(&self, folder: &str) -> Result<u64> {
        let upper = path_upper("");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut n = 0;
        for item in t.range((folder, "", [].as_slice())..(folder, upper.as_str(), [].as_slice()))? {
            item?;
            n += 1;
        }
        Ok(n)
    }

    pub fn history(&self, folder: &str, path: &str) -> Result<Vec<HistoryEvent>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HISTORY)?;
        let mut out = Vec::new();
        for item in t.range((folder, path, 0)..=(folder, path, u64::MAX))? {
            let (_, v) = item?;
            out.push(dec("history", v.value())?);
        }
        Ok(out)
    }
}

struct Tables<'t> {
    files: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    seqs: redb::Table<'t, (&'static str, u64), &'static str>,
    hashes: redb::Table<'t, (&'static [u8], &'static str, &'static str), ()>,
    history: redb::Table<'t, (&'static str, &'static str, u64), &'static [u8]>,
    pending: redb::Table<'t, (&'static str, &'static str, &'static [u8]), &'static [u8]>,
}

impl Tables<'_> {
    fn get(&self, folder: &str, path: &str) -> Result<Option<Record>> {
        match self.files.get((folder, path))? {
            Some(v) => Ok(Some(dec("files", v.value())?)),
            None => Ok(None),
        }
    }

    fn pending_for(&self, folder: &str, path: &str) -> Result<Vec<([u8; 32], FileEntry)>> {
        let lo: &[u8] = &[];
        let hi: &[u8] = &[0xff; 33];
        let mut out = Vec::new();
        for item in self.pending.range((folder, path, lo)..(folder, path, hi))? {
            let (k, v) = item?;
            out.push((
                k.value().2.try_into().unwrap_or([0; 32]),
                dec("pending", v.value())?,
            ));
        }
        Ok(out)
    }

    /// Replace `old` with `rec` under a new sequence number. Returns the
    /// old record's refs link if the new one no longer uses it.
    fn write(
        &mut self,
        folder: &str,
        meta: &mut FolderMeta,
        old: Option<Record>,
        mut rec: Record,
        note: Option<String>,
    ) -> Result<Option<Released>> {
        let path = rec.entry.path.clone();
        let rec_refs = rec.refs.clone();
        if let Some(old) = &old {
            self.seqs.remove((folder, old.entry.sequence))?;
            if let (Some(h), false) = (old.entry.hash, old.entry.deleted) {
                self.hashes.remove((h.as_slice(), folder, path.as_str()))?;
            }
            count(meta, &old.entry, -1);
        }
        meta.seq += 1;
        rec.entry.sequence = meta.seq;
        count(meta, &rec.entry, 1);
        self.seqs.insert((folder, meta.seq), path.as_str())?;
        if let (Some(h), false) = (rec.entry.hash, rec.entry.deleted) {
            self.hashes
                .insert((h.as_slice(), folder, path.as_str()), ())?;
        }
        self.files
            .insert((folder, path.as_str()), enc(&rec).as_slice())?;
        if let Some(note) = note {
            let ev = HistoryEvent {
                seq: meta.seq,
                modified_by: rec.entry.modified_by,
                mtime_ns: rec.entry.mtime_ns,
                hash: rec.entry.hash,
                deleted: rec.entry.deleted,
                size: rec.entry.size,
                version: rec.entry.version.iter().collect(),
                recorded_ns: now_ns(),
                applied_from: rec.received_from,
                note,
            };
            self.history
                .insert((folder, path.as_str(), meta.seq), enc(&ev).as_slice())?;
            // Bound the trail per path.
            let keys: Vec<u64> = self
                .history
                .range((folder, path.as_str(), 0)..(folder, path.as_str(), meta.seq))?
                .map(|r| r.map(|(k, _)| k.value().2))
                .collect::<std::result::Result<_, _>>()?;
            if keys.len() >= HISTORY_PER_PATH {
                for s in &keys[..keys.len() + 1 - HISTORY_PER_PATH] {
                    self.history.remove((folder, path.as_str(), *s))?;
                }
            }
        }
        Ok(old.and_then(|o| {
            let hash = o.entry.hash.filter(|_| !o.entry.deleted);
            o.refs
                .filter(|r| Some(r) != rec_refs.as_ref())
                .map(|name| Released { name, hash })
        }))
    }
}

fn count(meta: &mut FolderMeta, e: &FileEntry, d: i64) {
    let add = |x: &mut u64, by: i64| *x = (*x as i64 + by).max(0) as u64;
    if e.deleted {
        add(&mut meta.tombstones, d);
        return;
    }
    match e.kind {
        EntryKind::File => {
            add(&mut meta.files, d);
            add(&mut meta.bytes, d * e.size as i64);
        }
        EntryKind::Directory => add(&mut meta.dirs, d),
        EntryKind::Symlink => add(&mut meta.symlinks, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetsync_mesh::model::VersionVector;

    const ME: Local = Local {
        me: ShortId(7 << 56),
        receive_only: false,
    };

    pub(crate) fn file(path: &str, hash: u8, vv: &[(u64, u64)]) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: 10,
            mtime_ns: 1,
            mode: 0o644,
            hash: Some([hash; 32]),
            symlink_target: None,
            deleted: false,
            version: VersionVector::from_pairs(vv.iter().map(|(a, b)| (ShortId(*a), *b))),
            modified_by: ShortId(vv[0].0),
            sequence: 0,
        }
    }

    fn rec(e: FileEntry) -> Record {
        Record {
            entry: e,
            local: None,
            local_changed: false,
            received_from: None,
            refs: None,
        }
    }

    fn put(idx: &Index, entries: Vec<FileEntry>) -> Committed {
        let c = Commit {
            items: entries
                .into_iter()
                .map(|e| Item::Applied {
                    record: rec(e),
                    note: "test".into(),
                    resolves: vec![],
                })
                .collect(),
            resolved: vec![],
        };
        idx.commit("f", c, ME).unwrap()
    }

    fn stat(size: u64, ino: u64) -> LocalStat {
        LocalStat {
            size,
            mtime_ns: 5,
            ino,
            mode: 0o100644,
        }
    }

    fn open() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.redb")).unwrap();
        idx.ensure_folder("f").unwrap();
        (dir, idx)
    }

    #[test]
    fn commit_assigns_sequences_and_keeps_one_seq_per_path() {
        let (_d, idx) = open();
        let m = put(&idx, vec![file("a", 1, &[(1, 1)]), file("b", 2, &[(1, 1)])]).meta;
        assert_eq!((m.seq, m.files, m.bytes), (2, 2, 20));
        put(&idx, vec![file("a", 3, &[(1, 2)])]);
        let all = idx.since("f", 0, 100).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|r| (r.entry.path.as_str(), r.entry.sequence))
            .collect();
        assert_eq!(got, vec![("b", 2), ("a", 3)]);
        assert_eq!(idx.since("f", 2, 100).unwrap().len(), 1);
        assert_eq!(idx.paths_with_hash("f", &[3; 32]).unwrap(), vec!["a"]);
        assert!(idx.paths_with_hash("f", &[1; 32]).unwrap().is_empty());
        assert_eq!(idx.history("f", "a").unwrap().len(), 2);
    }

    #[test]
    fn observations_bump_skip_or_adopt_inside_the_transaction() {
        let (_d, idx) = open();
        let obs = |path: &str, size, ino, hash| Item::Observed {
            path: path.into(),
            seen: Observed::File {
                stat: stat(size, ino),
                hash: [hash; 32],
                refs: None,
            },
        };
        // New file: our first version.
        let c = idx
            .commit(
                "f",
                Commit {
                    items: vec![obs("a", 10, 1, 1)],
                    resolved: vec![],
                },
                ME,
            )
            .unwrap();
        assert_eq!(c.written, 1);
        let a = idx.get("f", "a").unwrap().unwrap();
        assert_eq!(a.entry.version.get(ME.me), 1);
        // Same stat again: nothing to do.
        let c = idx
            .commit(
                "f",
                Commit {
                    items: vec![obs("a", 10, 1, 1)],
                    resolved: vec![],
                },
                ME,
            )
            .unwrap();
        assert_eq!(c.written, 0);
        // A peer's newer entry is pending and the disk now shows exactly it
        // (our receiver wrote it): adopt it, don't mint a local version.
        let peer = [9u8; 32];
        let mut remote = file("a", 2, &[(9 << 56, 1)]);
        remote.version = a.entry.version.bump(ShortId(9 << 56));
        remote.size = 10;
        idx.ingest(
            "f",
            &peer,
            RemoteMark {
                index_id: 1,
                seq: 1,
            },
            std::slice::from_ref(&remote),
        )
        .unwrap();
        idx.commit(
            "f",
            Commit {
                items: vec![obs("a", 10, 2, 2)],
                resolved: vec![],
            },
            ME,
        )
        .unwrap();
        let a2 = idx.get("f", "a").unwrap().unwrap();
        assert_eq!(a2.entry.version, remote.version);
        assert_eq!(a2.received_from, Some(ShortId::from_node_id(&peer)));
        assert_eq!(idx.pending_count("f").unwrap(), 0);
        // A file that vanished becomes a tombstone on top of what we had.
        idx.commit(
            "f",
            Commit {
                items: vec![Item::Observed {
                    path: "a".into(),
                    seen: Observed::Gone,
                }],
                resolved: vec![],
            },
            ME,
        )
        .unwrap();
        let gone = idx.get("f", "a").unwrap().unwrap();
        assert!(gone.entry.deleted);
        assert_eq!(
            gone.entry.version.compare(&remote.version),
            fleetsync_mesh::model::Causality::Dominates
        );
    }

    #[test]
    fn applied_entries_never_overwrite_a_newer_index_state() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 3)])]);
        let stale = file("a", 2, &[(1, 2)]);
        let c = idx
            .commit(
                "f",
                Commit {
                    items: vec![Item::Applied {
                        record: rec(stale),
                        note: "x".into(),
                        resolves: vec![],
                    }],
                    resolved: vec![],
                },
                ME,
            )
            .unwrap();
        assert_eq!(c.superseded.len(), 1);
        assert_eq!(
            idx.get("f", "a").unwrap().unwrap().entry.hash,
            Some([1; 32])
        );
    }

    #[test]
    fn ingest_drops_useless_entries_and_commit_resolves_pending() {
        let (_d, idx) = open();
        put(&idx, vec![file("a", 1, &[(1, 2)])]);
        let peer = [9u8; 32];
        let n = idx
            .ingest(
                "f",
                &peer,
                RemoteMark {
                    index_id: 5,
                    seq: 7,
                },
                &[file("a", 1, &[(1, 1)]), file("b", 2, &[(2, 1)])],
            )
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(idx.remote_mark("f", &peer).unwrap().unwrap().seq, 7);
        let p = idx.pending("f", 10).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "b");
        assert_eq!(idx.pending_for("f", "b").unwrap().len(), 1);
        let live = idx.live_hashes().unwrap();
        assert!(live.contains(&[1; 32]) && live.contains(&[2; 32]));
        let c = Commit {
            items: vec![Item::Applied {
                record: rec(p[0].entry.clone()),
                note: "x".into(),
                resolves: vec![("b".into(), peer)],
            }],
            resolved: vec![],
        };
        idx.commit("f", c, ME).unwrap();
        assert_eq!(idx.pending_count("f").unwrap(), 0);
    }

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
            let tx = idx.db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, [SCHEMA_VERSION + 1].as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(
            Index::open(&p),
            Err(IndexError::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn descendants_stop_at_the_prefix() {
        let (_d, idx) = open();
        put(
            &idx,
            ["d", "d/x", "d/y/z", "d2", "e", "dd/x"]
                .iter()
                .map(|p| file(p, 1, &[(1, 1)]))
                .collect(),
        );
        let mut got: Vec<_> = idx
            .descendants("f", "d")
            .unwrap()
            .into_iter()
            .map(|r| r.entry.path)
            .collect();
        got.sort();
        assert_eq!(got, vec!["d/x", "d/y/z"]);
        assert_eq!(idx.descendants("f", "").unwrap().len(), 6);
    }
}
