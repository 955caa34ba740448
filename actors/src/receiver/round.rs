//! One processing round: pending remote entries → decisions → disk → index.
//!
//! ```text
//!  read pending (minus rows waiting for a retry or a big-file job)
//!    ─► plan (rules::decide per path) ─► mass-delete guard (crate::guard:
//!       moves excused by the index's paths by hash; a burst waits out
//!       its grace, then is held)
//!    ─► resolve the kept rows
//!    ─► directories (parents first) ─► small files (batches, one syncfs)
//!    ─► symlinks ─► deletions (children first)
//!    ─► check: every planned job got exactly one outcome
//!  big files ─► handed off (RoundReport::big_files): each content group
//!               runs outside the round (super::big), so a stalled one
//!               holds back nothing else
//! ```
//!
//! Outcomes go through [`Outcomes`] (recorded against their rows,
//! committed with retries behind the generation fence, audited).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Instant,
};

use fleetsync_mesh::{model::EntryKind, EndpointId};
use tracing::{debug, warn};

pub use super::outcomes::{Failure, Planned, RoundError, RoundReport};
use super::{
    outcomes::Outcomes,
    retry::Key,
    tree::{self, DirWins},
};
use crate::{
    apply::{self, apply_prefetched, ApplyError, Flush, Job, Sources},
    folder::Folder,
    guard::{Delete, DeleteGuard, Removes, DELETE_GRACE},
    health::Work,
    index::{IndexError, Pending},
    record::Record,
    rt,
    rules::{decide, Decision},
};

/// Pending rows read per round (beyond those waiting for a retry).
const ROUND_LIMIT: usize = 2000;
/// Files up to this size are applied in batches sharing one sync.
pub const BATCH_FILE_MAX: u64 = 1 << 20;
// Batches park what they fetch without an import (`apply::acquire`).
const _: () = assert!(BATCH_FILE_MAX <= crate::content::HELD_OUTSIDE_MAX);
/// Files per batch.
const BATCH_FILES: usize = 512;
// A batch is placed while the next one is prefetched: both stay parked.
const _: () = assert!(2 * BATCH_FILES <= crate::folder::PARKED_MAX / 2);

/// The round's decisions, in the order they are carried out.
#[derive(Debug, Default)]
pub struct Plan {
    /// Rows that need nothing: ours is equal or newer.
    pub keep: Vec<Key>,
    pub dirs: Vec<Planned>,
    pub small_files: Vec<Planned>,
    pub links: Vec<Planned>,
    pub big_files: Vec<Planned>,
    /// Children before their parents.
    pub deletes: Vec<Planned>,
    /// Peers' files that lost to a directory with live children (after
    /// the small files: copy first, then the directory).
    pub dir_wins: Vec<DirWins>,
}

/// Decide every path from its pending rows and our record.
pub fn plan(pending: BTreeMap<String, Vec<Pending>>, locals: &HashMap<String, Record>) -> Plan {
    let mut plan = Plan::default();
    for (path, rows) in pending {
        let (planned, keep) = decide_path(&path, locals.get(&path), rows);
        plan.keep.extend(keep);
        let Some(p) = planned else { continue };
        let t = &p.job.target;
        let list = match (t.deleted, t.kind) {
            (true, _) => &mut plan.deletes,
            (false, EntryKind::Directory) => &mut plan.dirs,
            (false, EntryKind::Symlink) => &mut plan.links,
            (false, EntryKind::File) if t.size <= BATCH_FILE_MAX => &mut plan.small_files,
            (false, EntryKind::File) => &mut plan.big_files,
        };
        list.push(p);
    }
    // Paths come sorted, so parents precede children; deletions go the
    // other way, so directories are empty when reached.
    plan.deletes.reverse();
    plan
}

/// Fold a path's rows (one per peer that announced it) into at most one
/// job: each row is decided against the state the previous ones lead to.
fn decide_path(
    path: &str,
    local: Option<&Record>,
    rows: Vec<Pending>,
) -> (Option<Planned>, Vec<Key>) {
    let mut state = local.cloned();
    let mut chosen: Option<Job> = None;
    let mut answered = Vec::new();
    let mut keep = Vec::new();
    for row in rows {
        let key = (path.to_string(), row.peer);
        match decide(state.as_ref(), &row.entry) {
            Decision::Keep => keep.push(key),
            Decision::Apply {
                entry,
                conflict_copy,
                verbatim,
            } => {
                // Our content lost to the first winner already.
                let conflict_copy = chosen.as_ref().map_or(conflict_copy, |j| j.conflict_copy);
                state = Some(Record {
                    entry: entry.clone(),
                    local: state.and_then(|r| r.local),
                    local_changed: false,
                    received_from: None,
                    refs: None,
                });
                chosen = Some(Job {
                    path: path.to_string(),
                    local: local.cloned(),
                    target: entry,
                    conflict_copy,
                    verbatim,
                    from: row.peer,
                });
                answered.push(key);
            }
        }
    }
    let planned = chosen.map(|job| Planned {
        job,
        rows: answered,
    });
    (planned, keep)
}

/// Ask the peers that announced the entries first, then the others.
pub fn order_providers(all: &[EndpointId], group: &[Planned]) -> Vec<EndpointId> {
    let mut out: Vec<EndpointId> = Vec::with_capacity(all.len());
    let announcers = group
        .iter()
        .filter_map(|p| all.iter().find(|e| *e.as_bytes() == p.job.from));
    for p in announcers.chain(all) {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}

/// The next batch of small files: at most [`BATCH_FILES`], one job per
/// content hash (the first fetch serves the duplicates in a later batch).
/// Retry marks whose pending row is gone (resolved by a later version, by
/// the hasher adopting it, or by a peer's newer row): forgotten, so the
/// retry map holds only rows that exist. Only a `complete` read (every
/// pending row of the folder) can tell.
pub fn stale_waits(waiting: &HashSet<Key>, rows: &[Pending], complete: bool) -> Vec<Key> {
    if !complete || waiting.is_empty() {
        return Vec::new();
    }
    let live: HashSet<(&str, &[u8; 32])> =
        rows.iter().map(|p| (p.path.as_str(), &p.peer)).collect();
    waiting
        .iter()
        .filter(|(path, peer)| !live.contains(&(path.as_str(), peer)))
        .cloned()
        .collect()
}

pub fn next_batch(queue: &mut VecDeque<Planned>) -> Vec<Planned> {
    let mut seen = HashSet::new();
    let mut batch = Vec::new();
    let mut later = Vec::new();
    while batch.len() < BATCH_FILES {
        let Some(p) = queue.pop_front() else { break };
        if seen.insert(p.job.target.hash) {
            batch.push(p);
        } else {
            later.push(p);
        }
    }
    queue.extend(later);
    batch
}

/// The jobs, and the rows each one answers by path.
fn jobs_and_rows(planned: Vec<Planned>) -> (Vec<Job>, HashMap<String, Vec<Key>>) {
    let mut rows = HashMap::with_capacity(planned.len());
    let jobs = planned
        .into_iter()
        .map(|p| {
            rows.insert(p.job.path.clone(), p.rows);
            p.job
        })
        .collect();
    (jobs, rows)
}

fn jobs_of(batch: &[Planned]) -> Vec<Job> {
    batch.iter().map(|p| p.job.clone()).collect()
}

/// The next batch's prefetch, owning what it needs so it can run beside
/// the current batch.
async fn prefetch_ahead(folder: Arc<Folder>, jobs: Vec<Job>, sources: Sources) {
    if !jobs.is_empty() {
        apply::prefetch(&folder, &jobs, &sources).await;
    }
}

/// Big files grouped by content: a group runs one job after the other,
/// so the first fetch serves the rest.
pub fn group_by_hash(big: Vec<Planned>) -> Vec<Vec<Planned>> {
    let mut groups: BTreeMap<Option<[u8; 32]>, Vec<Planned>> = BTreeMap::new();
    for p in big {
        groups.entry(p.job.target.hash).or_default().push(p);
    }
    groups.into_values().collect()
}

/// The plan's deletes as the guard sees them: what each would remove
/// here. A file whose content stays live under another path is being
/// moved, not lost: it removes nothing. Its content may arrive in the same
/// round (each new file accounts for one delete of its content), or be
/// live already under a path in `live` (the index's paths by hash; each
/// accounts for one delete, and is then its [`Delete::witness`]). A path
/// this plan changes or deletes, or one `used` says is taken (a copy that
/// excused an earlier delete, or whose own delete is held), keeps nothing:
/// so deleting every copy of a content still counts.
pub fn guarded_deletes(
    plan: &Plan,
    live: &HashMap<[u8; 32], Vec<String>>,
    used: impl Fn(&str) -> bool,
) -> Vec<Delete> {
    let mut arriving: HashMap<[u8; 32], usize> = HashMap::new();
    for p in plan.small_files.iter().chain(&plan.big_files) {
        if let Some(h) = p.job.target.hash {
            *arriving.entry(h).or_default() += 1;
        }
    }
    let mut renamed = |hash: Option<[u8; 32]>| {
        let n = hash.and_then(|h| arriving.get_mut(&h)).filter(|n| **n > 0);
        n.map(|n| *n -= 1).is_some()
    };
    let mut copies = live_copies(plan, live, used);
    let mut copy_of = |hash: Option<[u8; 32]>| hash.and_then(|h| copies.get_mut(&h)?.pop());
    plan.deletes
        .iter()
        .map(|p| {
            let mut witness = None;
            let removes = match Record::live(p.job.local.as_ref()) {
                None => Removes::Nothing,
                Some(r) if r.entry.kind != EntryKind::File => Removes::Other,
                Some(r) if renamed(r.entry.hash) => Removes::Nothing,
                Some(r) => {
                    witness = copy_of(r.entry.hash).map(str::to_string);
                    if witness.is_some() {
                        Removes::Nothing
                    } else {
                        Removes::File
                    }
                }
            };
            Delete {
                path: p.job.path.clone(),
                peers: p.rows.iter().map(|(_, peer)| *peer).collect(),
                removes,
                witness,
            }
        })
        .collect()
}

/// The live paths by hash that can keep a deleted content: not touched by
/// this plan, not `used`.
fn live_copies<'a>(
    plan: &Plan,
    live: &'a HashMap<[u8; 32], Vec<String>>,
    used: impl Fn(&str) -> bool,
) -> HashMap<[u8; 32], Vec<&'a str>> {
    let jobs = [
        &plan.dirs,
        &plan.small_files,
        &plan.links,
        &plan.big_files,
        &plan.deletes,
    ];
    let touched: HashSet<&str> = jobs
        .into_iter()
        .flatten()
        .map(|p| p.job.path.as_str())
        .collect();
    live.iter()
        .map(|(h, paths)| {
            let free = paths
                .iter()
                .map(String::as_str)
                .filter(|p| !touched.contains(p) && !used(p))
                .collect();
            (*h, free)
        })
        .collect()
}

/// The content hashes the plan's deletes would take away (live files).
fn deleted_hashes(plan: &Plan) -> Vec<[u8; 32]> {
    let hashes: HashSet<[u8; 32]> = plan
        .deletes
        .iter()
        .filter_map(|p| Record::live(p.job.local.as_ref()))
        .filter(|r| r.entry.kind == EntryKind::File)
        .filter_map(|r| r.entry.hash)
        .collect();
    hashes.into_iter().collect()
}

/// One round, from reading pending rows to the last commit. It is work of
/// its receiver incarnation while it lives.
pub struct Round {
    folder: Arc<Folder>,
    sources: Sources,
    out: Outcomes,
    /// Every row the receiver holds a retry mark for (due or not).
    retrying: HashSet<Key>,
    _work: Work,
}

impl Round {
    pub fn new(folder: Arc<Folder>, sources: Sources) -> Self {
        let out = Outcomes::new(folder.clone(), sources.health.clone());
        Round {
            _work: sources.health.begin(),
            folder,
            sources,
            out,
            retrying: HashSet::new(),
        }
    }

    /// The rows with a retry mark: those whose row is gone are reported
    /// stale, so the mark is forgotten.
    pub fn retrying(mut self, keys: HashSet<Key>) -> Self {
        self.retrying = keys;
        self
    }

    /// Run every step; rows in `waiting` are left for their retry, paths
    /// in `in_flight` for their big-file job. Big files are handed off in
    /// the report.
    pub async fn run(
        mut self,
        waiting: HashSet<Key>,
        in_flight: HashSet<String>,
    ) -> Result<RoundReport, RoundError> {
        let pending = self.read_pending(&waiting, &in_flight).await?;
        if pending.is_empty() {
            return Ok(self.out.report);
        }
        let locals = self.read_locals(&pending).await?;
        let plan = self.guard_deletes(plan(pending, &locals)).await?;
        let plan = self.settle_tree(plan).await?;
        // Big files owe their outcome to their own job, not to the round.
        let owed = [&plan.dirs, &plan.small_files, &plan.links, &plan.deletes];
        self.out.planned(owed.into_iter().flatten());
        let settled = plan.dir_wins.iter().flat_map(|w| [&w.copy, &w.dir]);
        self.out.planned(settled);
        self.resolve_kept(plan.keep).await;
        self.directories(plan.dirs).await;
        self.small_files(plan.small_files).await;
        self.directories_that_won(plan.dir_wins).await;
        self.one_by_one(plan.links).await;
        self.out.report.big_files = group_by_hash(plan.big_files);
        self.one_by_one(plan.deletes).await;
        self.out.audit();
        Ok(self.out.report)
    }

    /// Pending rows by path, minus those waiting for a retry or for the
    /// big-file job in flight on their path.
    async fn read_pending(
        &mut self,
        waiting: &HashSet<Key>,
        in_flight: &HashSet<String>,
    ) -> Result<BTreeMap<String, Vec<Pending>>, RoundError> {
        let f = self.folder.clone();
        let held = {
            let guard = f.deletes.lock().expect("guard lock");
            // Rows waiting out the grace are read again: they must not
            // crowd out the creates that may excuse them.
            guard.held_rows() + guard.deferred_rows()
        };
        let limit = ROUND_LIMIT + waiting.len() + in_flight.len() + held;
        let rows = rt::blocking(move || f.index.pending(f.id(), limit)).await??;
        self.out.report.stale = stale_waits(&self.retrying, &rows, rows.len() < limit);
        let guard = self.folder.deletes.lock().expect("guard lock");
        let mut by_path: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in rows {
            if p.entry.deleted && guard.is_held(&p.path, &p.peer) {
                // Held by the mass-delete guard until `folder resume`.
                continue;
            }
            if in_flight.contains(&p.path) || waiting.contains(&(p.path.clone(), p.peer)) {
                self.out.report.remaining += 1;
            } else {
                by_path.entry(p.path.clone()).or_default().push(p);
            }
        }
        Ok(by_path)
    }

    async fn read_locals(
        &self,
        pending: &BTreeMap<String, Vec<Pending>>,
    ) -> Result<HashMap<String, Record>, RoundError> {
        let f = self.folder.clone();
        let paths: Vec<String> = pending.keys().cloned().collect();
        Ok(rt::blocking(move || f.index.get_many(f.id(), &paths)).await??)
    }

    /// The mass-delete guard ([`crate::guard`]): deletes it holds, or that
    /// wait out its grace, leave the plan (their rows stay pending); the
    /// rest go on.
    async fn guard_deletes(&self, mut plan: Plan) -> Result<Plan, RoundError> {
        if plan.deletes.is_empty() {
            self.folder.deletes.lock().expect("guard lock").no_deletes();
            return Ok(plan);
        }
        let f = self.folder.clone();
        let hashes = deleted_hashes(&plan);
        let (files, live) = rt::blocking(move || {
            let files = f.index.folder_meta(f.id())?.map_or(0, |m| m.files);
            Ok::<_, IndexError>((files, f.index.paths_with_hashes(f.id(), &hashes)?))
        })
        .await??;
        let mut guard = self.folder.deletes.lock().expect("guard lock");
        let deletes = guarded_deletes(&plan, &live, |p| {
            guard.is_witness(p) || guard.is_held_path(p)
        });
        let was_holding = guard.held().is_some();
        let verdict = guard.judge(
            Instant::now(),
            files,
            self.folder.cfg.max_delete_fraction,
            &deletes,
        );
        if !was_holding {
            self.tell_what_waits(&guard);
        }
        drop(guard);
        let mut verdict = verdict.into_iter();
        plan.deletes
            .retain(|_| verdict.next().expect("one verdict per delete"));
        Ok(plan)
    }

    /// A hold that just began warns, with the command to go on; deletes
    /// waiting out the grace are logged (they may yet turn out a move).
    fn tell_what_waits(&self, guard: &DeleteGuard) {
        let (id, fraction) = (self.folder.id(), self.folder.cfg.max_delete_fraction);
        if let Some(held) = guard.held() {
            warn!(
                folder = id,
                "holding {} deletes from peers ({} of {} files): more than max_delete_fraction {} in one burst; \
                 apply them with: fleetsync folder resume --folder {}",
                held.paths,
                held.files_deleted,
                held.files,
                fraction,
                id
            );
        } else if guard.deferred_rows() > 0 {
            debug!(
                folder = id,
                "{} deletes from peers over max_delete_fraction {fraction}: waiting {:?} for the \
                 creates of a move before holding them",
                guard.deferred_rows(),
                DELETE_GRACE
            );
        }
    }

    /// File vs directory: the plan becomes a tree (see [`tree`]). The
    /// parents its entries will make without a record of their own are
    /// marked expected first, so the watcher does not record them as ours
    /// ([`Folder::expect_dirs`]).
    async fn settle_tree(&self, mut plan: Plan) -> Result<Plan, RoundError> {
        let f = self.folder.clone();
        rt::blocking(move || {
            tree::settle(&f.index, f.id(), f.me, &mut plan)?;
            let parents = tree::unrecorded_parents(&f.index, f.id(), &plan)?;
            f.expect_dirs(tree::dirs_to_make(&f, parents));
            Ok(plan)
        })
        .await?
    }

    /// Each peer file that lost to a directory: its conflict copy is kept
    /// first; only then is the directory recorded (answering the file's
    /// rows), so the content is never let go before it is safe.
    async fn directories_that_won(&mut self, won: Vec<DirWins>) {
        for DirWins { copy, dir } in won {
            let copied = apply::apply_one(&self.folder, copy.job.clone(), &self.sources).await;
            let outcome = match copied {
                Ok(applied) => {
                    self.out.record(&copy.job, copy.rows, Ok(applied));
                    apply::apply_one(&self.folder, dir.job.clone(), &self.sources).await
                }
                Err(e) => {
                    let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::new(e);
                    let failed = |path: &str| ApplyError::Batch {
                        path: path.to_string(),
                        source: cause.clone(),
                    };
                    self.out
                        .record(&copy.job, copy.rows, Err(failed(&copy.job.path)));
                    Err(failed(&dir.job.path))
                }
            };
            self.out.record(&dir.job, dir.rows, outcome);
        }
        self.out.commit(true).await;
    }

    async fn resolve_kept(&mut self, keep: Vec<Key>) {
        if keep.is_empty() {
            return;
        }
        self.out.resolve(keep);
        self.out.commit(true).await;
    }

    async fn directories(&mut self, dirs: Vec<Planned>) {
        let (jobs, mut rows) = jobs_and_rows(dirs);
        for (job, outcome) in apply::apply_dirs(&self.folder, jobs).await {
            let rows = rows.remove(&job.path).unwrap_or_default();
            self.out.record(&job, rows, outcome);
        }
        // Directories are committed before their contents' rows may be.
        self.out.commit(true).await;
    }

    /// Small files in batches that share one filesystem sync. The next
    /// batch's content is fetched while this one is placed and committed:
    /// the transfer waits on the peer and the network, the placing on the
    /// disk, and each took about half of a batch's time in turn.
    async fn small_files(&mut self, small: Vec<Planned>) {
        let mut queue: VecDeque<Planned> = small.into();
        let mut batch = next_batch(&mut queue);
        if batch.is_empty() {
            return;
        }
        let mut sources = self.sources_for(&batch);
        apply::prefetch(&self.folder, &jobs_of(&batch), &sources).await;
        while !batch.is_empty() {
            let next = next_batch(&mut queue);
            let next_sources = self.sources_for(&next);
            let ahead = prefetch_ahead(self.folder.clone(), jobs_of(&next), next_sources.clone());
            tokio::join!(self.place_batch(batch, &sources), ahead);
            (batch, sources) = (next, next_sources);
        }
    }

    /// Providers for a batch: its announcers first.
    fn sources_for(&self, batch: &[Planned]) -> Sources {
        self.sources
            .ordered(order_providers(&self.sources.providers, batch))
    }

    /// Apply a prefetched batch and commit its outcomes.
    async fn place_batch(&mut self, batch: Vec<Planned>, sources: &Sources) {
        let (jobs, mut rows) = jobs_and_rows(batch);
        for (job, outcome) in apply_prefetched(&self.folder, jobs, sources, Flush::Batch).await {
            let rows = rows.remove(&job.path).unwrap_or_default();
            self.out.record(&job, rows, outcome);
        }
        self.out.commit(true).await;
    }

    /// Jobs applied one after the other (directories, links, deletions).
    async fn one_by_one(&mut self, jobs: Vec<Planned>) {
        for p in jobs {
            let outcome = apply::apply_one(&self.folder, p.job.clone(), &self.sources).await;
            self.out.record(&p.job, p.rows, outcome);
        }
        self.out.commit(true).await;
    }
}

#[cfg(test)]
mod tests;
