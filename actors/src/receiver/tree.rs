//! File vs directory in a round: the plan is made a tree before anything
//! touches the disk ([`rules::directory_wins`] is the rule).
//!
//! What this node will hold for a path is the round's target for it, or
//! else its record. Where that is a live file (or symlink) at `d` while
//! something below `d/` is live, the directory wins:
//!
//! - the file is the round's target (it came from a peer): its content is
//!   placed as its conflict copy first, and only then is `d` recorded as
//!   the winning directory ([`DirWins`], after the round's small files);
//!   the file's rows are answered by the directory, so they are never
//!   resolved before the content is kept;
//! - the file is our record (a child arrived under it): `d` becomes the
//!   winning directory with our file moved aside as its conflict copy (a
//!   rename, like any conflict copy; the scanner records the copy), before
//!   the children are placed.
//!
//! Either way the directory's version dominates the file's, so every node
//! ends with the same tree whichever of them settled it.

use std::collections::{BTreeMap, BTreeSet};

use fleetsync_mesh::model::{CounterOverflow, EntryKind, FileEntry, ShortId};
use tracing::warn;

use super::round::{Plan, Planned};
use crate::{
    apply::Job,
    folder::Folder,
    index::{Index, IndexError},
    record::{DiskState, Record},
    rules::{blocks_children, copy_name, directory_wins, kept_copy},
};

/// A peer's file that lost to a directory with live children: keep its
/// content as `copy` first, then record `dir` (which answers the file's
/// rows).
#[derive(Debug, Clone)]
pub struct DirWins {
    pub copy: Planned,
    pub dir: Planned,
}

/// Settle every file-vs-directory conflict in `plan` (blocking: reads the
/// index).
pub fn settle(index: &Index, folder: &str, me: ShortId, plan: &mut Plan) -> Result<(), IndexError> {
    let targets: BTreeMap<String, FileEntry> = all_planned(plan)
        .map(|p| (p.job.path.clone(), p.job.target.clone()))
        .collect();
    let view = View {
        index,
        folder,
        targets: &targets,
    };
    settle_peer_files(&view, me, plan)?;
    settle_our_files(&view, me, plan)
}

fn all_planned(plan: &Plan) -> impl Iterator<Item = &Planned> {
    let lists = [
        &plan.dirs,
        &plan.small_files,
        &plan.links,
        &plan.big_files,
        &plan.deletes,
    ];
    lists.into_iter().flatten()
}

/// What this node will hold: the round's targets over the index.
struct View<'a> {
    index: &'a Index,
    folder: &'a str,
    targets: &'a BTreeMap<String, FileEntry>,
}

impl View<'_> {
    /// Will anything below `path` be live after the round?
    fn live_below(&self, path: &str) -> Result<bool, IndexError> {
        let prefix = format!("{path}/");
        let planned = self
            .targets
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .any(|(_, t)| !t.deleted);
        if planned {
            return Ok(true);
        }
        let recorded = self.index.descendants(self.folder, path)?;
        Ok(recorded
            .iter()
            .any(|r| !r.entry.deleted && !self.targets.contains_key(&r.entry.path)))
    }
}

/// Peers' files planned where something stays live below: the directory
/// wins, their content becomes a conflict copy.
fn settle_peer_files(view: &View, me: ShortId, plan: &mut Plan) -> Result<(), IndexError> {
    let mut lost = Vec::new();
    for list in [&mut plan.small_files, &mut plan.big_files, &mut plan.links] {
        let mut kept = Vec::with_capacity(list.len());
        for p in std::mem::take(list) {
            if blocks_children(&p.job.target) && view.live_below(&p.job.path)? {
                let prev = view.index.get(view.folder, &copy_name(&p.job.target))?;
                match settled_targets(&p.job.target, prev.as_ref(), me) {
                    Ok(targets) => lost.push(peer_file_loses(p, prev, targets)),
                    Err(e) => {
                        // Left as it is: it waits (blocked) instead of
                        // winning with a wrapped vector.
                        warn!(path = %p.job.path, "file vs directory not settled: {e}");
                        kept.push(p);
                    }
                }
            } else {
                kept.push(p);
            }
        }
        *list = kept;
    }
    plan.dir_wins.extend(lost);
    Ok(())
}

/// The entries a settled conflict records: the file's copy and the
/// directory that wins.
fn settled_targets(
    file: &FileEntry,
    prev_copy: Option<&Record>,
    me: ShortId,
) -> Result<(FileEntry, FileEntry), CounterOverflow> {
    Ok((
        kept_copy(file, prev_copy.map(|r| &r.entry), me)?,
        directory_wins(file, me)?,
    ))
}

fn peer_file_loses(
    p: Planned,
    prev_copy: Option<Record>,
    (copy_target, mut dir): (FileEntry, FileEntry),
) -> DirWins {
    let file = &p.job.target;
    // Other content under the copy's name is kept as a copy of its own.
    let clobbers = Record::live(prev_copy.as_ref())
        .is_some_and(|r| r.entry.kind == EntryKind::File && r.entry.hash != file.hash);
    let copy = Job {
        path: copy_target.path.clone(),
        local: prev_copy,
        target: copy_target,
        conflict_copy: clobbers,
        verbatim: false,
        from: p.job.from,
    };
    if let Some(ours) = Record::live(p.job.local.as_ref()).filter(|r| !blocks_children(&r.entry)) {
        // Our directory stays as it is.
        dir.mode = ours.entry.mode;
        dir.mtime_ns = ours.entry.mtime_ns;
    }
    let ours_is_a_file = Record::live(p.job.local.as_ref())
        .is_some_and(|r| r.entry.kind == EntryKind::File && r.entry.hash != file.hash);
    let dir = Job {
        target: dir,
        conflict_copy: ours_is_a_file,
        verbatim: false,
        ..p.job
    };
    DirWins {
        copy: Planned {
            job: copy,
            rows: Vec::new(),
        },
        dir: Planned {
            job: dir,
            rows: p.rows,
        },
    }
}

/// The parents of the round's live entries that this node has no record
/// of (or a record of something else than a directory): placing a child
/// makes them before their own entry is applied (a peer can commit, and
/// send, a child before its directory). A parent recorded as deleted is
/// not one of them: the child revives it, like an edit beats a delete, so
/// the hasher records the directory again as this node's change. Marked
/// expected instead, it stayed a tombstone here, and a peer holding that
/// delete could never apply it under the live child (regression: a
/// directory renamed away while another node wrote into it left the
/// fleet with a pending delete for good). Blocking: reads the index.
pub fn unrecorded_parents(
    index: &Index,
    folder: &str,
    plan: &Plan,
) -> Result<Vec<String>, IndexError> {
    let mut parents: BTreeSet<String> = BTreeSet::new();
    for p in all_planned(plan).filter(|p| !p.job.target.deleted) {
        let path = p.job.path.as_str();
        parents.extend(path.match_indices('/').map(|(i, _)| path[..i].to_string()));
    }
    let parents: Vec<String> = parents.into_iter().collect();
    let recorded = index.get_many(folder, &parents)?;
    let dir_or_deleted = |p: &String| {
        recorded
            .get(p)
            .is_some_and(|r| r.entry.deleted || r.entry.kind == EntryKind::Directory)
    };
    Ok(parents.into_iter().filter(|p| !dir_or_deleted(p)).collect())
}

/// Of `parents` (unrecorded), the directories the round will make: those
/// not on disk, and those an earlier round made and still expects. One
/// that is on disk already and not expected was made here (a `mkdir` the
/// watcher has not indexed yet): ours to record, not the peer's to bring.
/// Marking it expected would leave it unrecorded for good, so a delete of
/// the tree on this node could never remove it elsewhere. Blocking.
pub fn dirs_to_make(folder: &Folder, parents: Vec<String>) -> Vec<String> {
    parents
        .into_iter()
        .filter(|p| {
            folder.is_expected_dir(p) || matches!(folder.fs.lstat(p), Ok(DiskState::Missing))
        })
        .collect()
}

/// Our own files with something planned live below them: the directory
/// wins, ours is moved aside as its conflict copy.
fn settle_our_files(view: &View, me: ShortId, plan: &mut Plan) -> Result<(), IndexError> {
    let mut parents: BTreeSet<&str> = BTreeSet::new();
    for p in all_planned(plan).filter(|p| !p.job.target.deleted) {
        let path = p.job.path.as_str();
        parents.extend(path.match_indices('/').map(|(i, _)| &path[..i]));
    }
    let mut settled = Vec::new();
    for parent in parents {
        if view.targets.contains_key(parent) {
            continue; // planned itself: settled above, or a directory
        }
        let Some(rec) = view.index.get(view.folder, parent)? else {
            continue;
        };
        if !blocks_children(&rec.entry) {
            continue;
        }
        let target = match directory_wins(&rec.entry, me) {
            Ok(target) => target,
            Err(e) => {
                warn!(path = parent, "file vs directory not settled: {e}");
                continue;
            }
        };
        let from = all_planned(plan)
            .find(|p| p.job.path.starts_with(&format!("{parent}/")))
            .map_or([0; 32], |p| p.job.from);
        let job = Job {
            path: parent.to_string(),
            target,
            local: Some(rec),
            conflict_copy: true,
            verbatim: false,
            from,
        };
        settled.push(Planned {
            job,
            rows: Vec::new(),
        });
    }
    plan.dirs.extend(settled);
    // Parents before children.
    plan.dirs.sort_by(|a, b| a.job.path.cmp(&b.job.path));
    Ok(())
}
