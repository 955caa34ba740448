//! Step one of a hash batch: look at each path (`lstat`, never following
//! symlinks) and compare it with the index through the one rule,
//! [`disk_matches`]. What it finds is handed on as it goes ([`Found`]:
//! observations ready to commit, files to hash), so hashing starts while
//! the rest of the batch is still looked at; what is left at the end is a
//! [`Plan`]: the paths to look at again. Blocking.

use std::{
    collections::{HashSet, VecDeque},
    io,
};

use fleetsync_mesh::model::{validate_rel_path, EntryKind};

use crate::{
    folder::Folder,
    fsutil::{is_escape, Parents, Session},
    ignore::Ignore,
    index::{now_ns, Observed},
    record::{disk_matches, DiskState, Meta, Record},
    scan,
};

use super::{Done, HashError};

/// What the classifier found since it last handed on.
#[derive(Debug, Default)]
pub struct Found {
    /// Ready to commit as they are: deletions, directories, symlinks.
    pub observed: Vec<(String, Observed)>,
    /// Changed files to hash, with what `lstat` showed.
    pub files: Vec<(String, Meta)>,
}

/// The classifier hands on what it found once this many files wait: the
/// hasher's chunk of small files ([`super::SMALL_CHUNK`]).
const HAND_ON_AT: usize = super::SMALL_CHUNK;

/// Takes what the classifier found; `false` means nobody takes it any
/// more (the batch was given up: its hasher was replaced), and the
/// classifier stops.
pub type HandOn<'a> = &'a mut dyn FnMut(Found) -> bool;

/// What is left of a batch's paths once all were looked at.
#[derive(Debug, Default)]
pub struct Plan {
    /// Look again once settled (still changing, being applied).
    pub deferred: Vec<String>,
    /// Could not be looked at (index or disk error): retry after a backoff.
    pub failed: Vec<String>,
}

/// Classify `paths`, and the contents of any directory that appeared;
/// the files of `done` are hashed at once while they show that state.
/// What is found goes to `hand_on`, a piece at a time; the last piece
/// comes before this returns.
pub fn classify(folder: &Folder, paths: Vec<String>, done: &Done, hand_on: HandOn<'_>) -> Plan {
    let session = match folder.fs.session() {
        Ok(s) => s,
        Err(e) => {
            folder.status.error(HashError::Root(e).to_string());
            return Plan {
                failed: paths,
                ..Plan::default()
            };
        }
    };
    let mut walk = Classifier {
        folder,
        session,
        parents: Parents::default(),
        ignore: folder.ignore(),
        now_ns: now_ns(),
        done,
        seen: HashSet::new(),
        parents_recorded: HashSet::new(),
        queue: paths.into(),
        found: Found::default(),
        plan: Plan::default(),
    };
    while let Some(rel) = walk.queue.pop_front() {
        walk.look(rel);
        if walk.found.files.len() >= HAND_ON_AT && !hand_on(std::mem::take(&mut walk.found)) {
            return walk.plan;
        }
    }
    if !walk.found.files.is_empty() || !walk.found.observed.is_empty() {
        hand_on(walk.found);
    }
    walk.plan
}

/// What an `lstat` told.
enum Looked {
    Disk(DiskState),
    /// A name no peer could accept (`validate_rel_path`): never synced.
    Unsyncable,
    /// An error that may pass (I/O, permissions): retry later.
    Failed,
}

struct Classifier<'a> {
    folder: &'a Folder,
    session: Session,
    /// A batch's paths come a directory at a time (a scan lists them so).
    parents: Parents,
    ignore: std::sync::Arc<Ignore>,
    now_ns: i64,
    done: &'a Done,
    /// Paths already classified in this batch.
    seen: HashSet<String>,
    /// Directories found recorded (live) by [`Classifier::parent_too`].
    parents_recorded: HashSet<String>,
    queue: VecDeque<String>,
    /// Not yet handed on.
    found: Found,
    plan: Plan,
}

impl Classifier<'_> {
    fn look(&mut self, rel: String) {
        if !self.seen.insert(rel.clone()) || self.ignore.is_ignored_regardless_of_kind(&rel) {
            return;
        }
        if self.folder.is_applying(&rel) {
            self.plan.deferred.push(rel);
            return;
        }
        let disk = match self.lstat(&rel) {
            Looked::Disk(d) => d,
            Looked::Unsyncable => return,
            Looked::Failed => {
                self.plan.failed.push(rel);
                return;
            }
        };
        let rec = match self.folder.index.get(self.folder.id(), &rel) {
            Ok(r) => r,
            Err(e) => {
                self.error(&HashError::Index(e));
                self.plan.failed.push(rel);
                return;
            }
        };
        match disk {
            DiskState::Missing | DiskState::Special => self.gone(rel, rec.as_ref()),
            DiskState::Present(meta) => self.present(rel, meta, rec.as_ref()),
        }
    }

    /// What is at `rel` (errors recorded in the status).
    fn lstat(&mut self, rel: &str) -> Looked {
        match self.session.lstat_in(&mut self.parents, rel) {
            Ok(d) => Looked::Disk(d),
            // A parent turned into a symlink: the path is no longer in the folder.
            Err(e) if is_escape(&e) => Looked::Disk(DiskState::Missing),
            Err(e) => {
                let unsyncable = e.kind() == io::ErrorKind::InvalidInput;
                self.error(&HashError::Disk {
                    path: rel.to_string(),
                    source: e,
                });
                if unsyncable {
                    Looked::Unsyncable
                } else {
                    Looked::Failed
                }
            }
        }
    }

    /// Nothing (syncable) at `rel`: it and everything indexed below it
    /// become tombstones.
    fn gone(&mut self, rel: String, rec: Option<&Record>) {
        let children = match self.folder.index.descendants(self.folder.id(), &rel) {
            Ok(c) => c,
            Err(e) => {
                self.error(&HashError::Index(e));
                self.plan.failed.push(rel.clone());
                Vec::new()
            }
        };
        if Record::live(rec).is_some() {
            self.found.observed.push((rel, Observed::Gone));
        }
        for child in children.into_iter().filter(|c| !c.entry.deleted) {
            let path = child.entry.path;
            if self.seen.insert(path.clone()) {
                self.found.observed.push((path, Observed::Gone));
            }
        }
    }

    fn present(&mut self, rel: String, meta: Meta, rec: Option<&Record>) {
        if self
            .ignore
            .is_ignored(&rel, meta.kind == EntryKind::Directory)
        {
            return;
        }
        if disk_matches(&DiskState::Present(meta), rec) {
            return;
        }
        self.parent_too(&rel);
        match meta.kind {
            EntryKind::Directory => self.directory(rel, meta, rec),
            EntryKind::Symlink => self.symlink(rel, meta),
            EntryKind::File => self.file(rel, meta),
        }
    }

    /// Whatever is recorded at `rel` needs its parent directory recorded:
    /// a child may settle (and reach peers) before its new parent does,
    /// and if the tree is removed before the parent is ever classified,
    /// peers keep the parent they made for the child, with no entry that
    /// could ever delete it. So a parent with no live record is looked at
    /// in the same batch.
    fn parent_too(&mut self, rel: &str) {
        let Some((parent, _)) = rel.rsplit_once('/') else {
            return;
        };
        if self.seen.contains(parent) || self.parents_recorded.contains(parent) {
            return;
        }
        match self.folder.index.get(self.folder.id(), parent) {
            Ok(r) if Record::live(r.as_ref()).is_some() => {
                self.parents_recorded.insert(parent.to_string());
            }
            // Looked at like any queued path (its own lookup reports an
            // index error).
            _ => self.queue.push_back(parent.to_string()),
        }
    }

    /// A directory that is new or whose permissions changed. One that
    /// appeared (mkdir -p, mv in) brings contents that produce no events of
    /// their own: they are queued.
    fn directory(&mut self, rel: String, meta: Meta, rec: Option<&Record>) {
        let known = Record::live(rec).is_some_and(|r| r.entry.kind == EntryKind::Directory);
        if !known {
            // Best effort: an unreadable directory is still recorded, and
            // its contents are found by events or the next rescan.
            if let Ok(rd) = std::fs::read_dir(self.folder.fs.abs(&rel)) {
                for e in rd.flatten() {
                    // Names we cannot sync (non-UTF-8, control chars…) are
                    // skipped, as events and scans skip them.
                    let child = e.file_name().to_str().map(|n| format!("{rel}/{n}"));
                    if let Some(child) = child.filter(|c| validate_rel_path(c).is_ok()) {
                        self.queue.push_back(child);
                    }
                }
            }
        }
        if !known && self.folder.is_expected_dir(&rel) {
            // Made by the receiver for a peer's child before the
            // directory's own entry came: that entry is its version (the
            // receiver applies it). A version of our own could outlive a
            // delete of the tree on the origin and bring it back.
            tracing::debug!(folder = self.folder.id(), path = %rel, "directory made for a peer's child: not recorded as ours");
            return;
        }
        self.found
            .observed
            .push((rel, Observed::Dir { stat: meta.stat }));
    }

    /// A symlink whose stat changed: read its target and let the index
    /// decide (it treats an equal target as already recorded).
    fn symlink(&mut self, rel: String, meta: Meta) {
        match self.session.read_link(&rel) {
            Ok(target) => self.found.observed.push((
                rel,
                Observed::Symlink {
                    stat: meta.stat,
                    target,
                },
            )),
            Err(e) => {
                self.error(&HashError::Disk {
                    path: rel.clone(),
                    source: e,
                });
                self.plan.failed.push(rel);
            }
        }
    }

    /// A changed file is hashed, unless it was written moments ago (a scan
    /// found it) and its writer did not signal it is done with what is
    /// there now: then it settles first.
    fn file(&mut self, rel: String, meta: Meta) {
        let as_left = self.done.get(&rel) == Some(&DiskState::Present(meta));
        let fresh =
            scan::written_moments_ago(meta.stat.mtime_ns, self.now_ns, self.folder.cfg.settle);
        if fresh && !as_left {
            self.plan.deferred.push(rel);
        } else {
            self.found.files.push((rel, meta));
        }
    }

    fn error(&self, e: &HashError) {
        self.folder.status.error(e.to_string());
    }
}
