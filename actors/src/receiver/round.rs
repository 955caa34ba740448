//! One processing round: pending remote entries → decisions → disk → index.
//!
//! ```text
//!  read pending ─► plan (rules::decide per path) ─► resolve the kept rows
//!    ─► directories (parents first) ─► small files (batches, one syncfs)
//!    ─► symlinks ─► big files (a few at a time) ─► deletions (children first)
//!    ─► check: every planned job got exactly one outcome
//! ```
//!
//! Every outcome is recorded against the pending rows it answers: applied
//! (committed with the rows resolved in one transaction), rejected (rows
//! resolved), or failed with a cause and a [`Wait`]. Commits are retried;
//! if one still fails, the rows it would have resolved are reported as
//! failed (they stay pending and are tried again), never dropped.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use fleetsync_mesh::{model::EntryKind, EndpointId};
use n0_future::{BufferedStreamExt, StreamExt};
use tracing::{debug, error, info, warn};

use super::retry::{Key, Wait};
use crate::{
    apply::{self, apply_files, ApplyError, Disposition, Flush, Job, Outcome},
    content::Hold,
    folder::{ApplyGuard, Folder},
    index::{Commit, Committed, IndexError, Item, Pending},
    record::Record,
    rt::{self, TaskError},
    rules::{decide, Decision},
};

/// Pending rows read per round (beyond those waiting for a retry).
const ROUND_LIMIT: usize = 2000;
/// Big files applied at once.
const BIG_CONCURRENCY: usize = 4;
/// Files up to this size are applied in batches sharing one sync.
pub const BATCH_FILE_MAX: u64 = 1 << 20;
/// Files per batch.
const BATCH_FILES: usize = 512;
/// Applied entries per index commit while big files stream in.
const COMMIT_EVERY: usize = 200;
/// Attempts at one index commit before its rows are reported failed.
const COMMIT_ATTEMPTS: u32 = 3;
/// Wait before the second attempt (doubling after).
const COMMIT_RETRY: Duration = Duration::from_millis(50);

/// Why a round could not run at all, or why a row was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("index commit failed {COMMIT_ATTEMPTS} times: {0}")]
    Commit(#[source] IndexError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("{path}: the round gave this job no outcome (a bug; retried)")]
    NoOutcome { path: String },
}

/// A pending row to try again, and why.
#[derive(Debug)]
pub struct Failure {
    pub key: Key,
    pub wait: Wait,
    pub cause: Arc<RoundError>,
}

/// What a round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Rows done with: applied and committed, rejected, or nothing to do.
    pub resolved: Vec<Key>,
    pub failed: Vec<Failure>,
    /// Paths a local edit raced: the watcher should look at them.
    pub races: Vec<String>,
    /// Something changed: worth another round at once.
    pub progressed: bool,
    /// Rows left waiting for their retry (not looked at).
    pub remaining: usize,
}

/// A decided job and the pending rows it answers.
#[derive(Debug, Clone)]
pub struct Planned {
    pub job: Job,
    pub rows: Vec<Key>,
}

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

/// Big files grouped by content: a group runs one job after the other,
/// so the first fetch serves the rest.
pub fn group_by_hash(big: Vec<Planned>) -> Vec<Vec<Planned>> {
    let mut groups: BTreeMap<Option<[u8; 32]>, Vec<Planned>> = BTreeMap::new();
    for p in big {
        groups.entry(p.job.target.hash).or_default().push(p);
    }
    groups.into_values().collect()
}

/// Outcomes per planned path: exactly one each, checked at the end.
#[derive(Debug, Default)]
struct Ledger {
    answers: HashMap<String, (Vec<Key>, u32)>,
}

impl Ledger {
    fn planned(&mut self, plan: &Plan) {
        let all = [
            &plan.dirs,
            &plan.small_files,
            &plan.links,
            &plan.big_files,
            &plan.deletes,
        ];
        for p in all.into_iter().flatten() {
            self.answers.insert(p.job.path.clone(), (p.rows.clone(), 0));
        }
    }

    fn answered(&mut self, path: &str) {
        if let Some((_, n)) = self.answers.get_mut(path) {
            *n += 1;
        }
    }

    /// Planned jobs with no outcome (their rows), and jobs answered twice.
    fn audit(self) -> (Vec<(String, Vec<Key>)>, Vec<String>) {
        let mut missing = Vec::new();
        let mut doubled = Vec::new();
        for (path, (rows, n)) in self.answers {
            match n {
                0 => missing.push((path, rows)),
                1 => {}
                _ => doubled.push(path),
            }
        }
        (missing, doubled)
    }
}

/// Changes on their way into the index, with what keeps them safe until
/// committed (GC holds, hasher guards) and the rows they answer.
#[derive(Debug, Default)]
struct Batch {
    commit: Commit,
    held: Vec<(Option<Hold>, ApplyGuard)>,
    rows: Vec<Key>,
}

/// One round, from reading pending rows to the last commit.
pub struct Round {
    folder: Arc<Folder>,
    providers: Vec<EndpointId>,
    report: RoundReport,
    batch: Batch,
    ledger: Ledger,
}

impl Round {
    pub fn new(folder: Arc<Folder>, providers: Vec<EndpointId>) -> Self {
        Round {
            folder,
            providers,
            report: RoundReport::default(),
            batch: Batch::default(),
            ledger: Ledger::default(),
        }
    }

    /// Run every step; rows in `waiting` are left for their retry.
    pub async fn run(mut self, waiting: HashSet<Key>) -> Result<RoundReport, RoundError> {
        let pending = self.read_pending(&waiting).await?;
        if pending.is_empty() {
            return Ok(self.report);
        }
        let locals = self.read_locals(&pending).await?;
        let plan = plan(pending, &locals);
        self.ledger.planned(&plan);
        self.resolve_kept(plan.keep).await;
        self.directories(plan.dirs).await;
        self.small_files(plan.small_files).await;
        self.one_by_one(plan.links).await;
        self.big_files(plan.big_files).await;
        self.one_by_one(plan.deletes).await;
        self.audit();
        Ok(self.report)
    }

    /// Pending rows by path, minus those waiting for a retry.
    async fn read_pending(
        &mut self,
        waiting: &HashSet<Key>,
    ) -> Result<BTreeMap<String, Vec<Pending>>, RoundError> {
        let f = self.folder.clone();
        let limit = ROUND_LIMIT + waiting.len();
        let rows = rt::blocking(move || f.index.pending(f.id(), limit)).await??;
        let mut by_path: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in rows {
            if waiting.contains(&(p.path.clone(), p.peer)) {
                self.report.remaining += 1;
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

    async fn resolve_kept(&mut self, keep: Vec<Key>) {
        if keep.is_empty() {
            return;
        }
        self.batch.commit.resolved.extend(keep.iter().cloned());
        self.batch.rows.extend(keep);
        self.report.progressed = true;
        self.commit(true).await;
    }

    async fn directories(&mut self, dirs: Vec<Planned>) {
        self.one_by_one(dirs).await;
        // Directories are committed before their contents' rows may be.
        self.commit(true).await;
    }

    /// Small files in batches that share one filesystem sync.
    async fn small_files(&mut self, small: Vec<Planned>) {
        let mut queue: VecDeque<Planned> = small.into();
        while !queue.is_empty() {
            let batch = next_batch(&mut queue);
            let providers = order_providers(&self.providers, &batch);
            let mut rows: HashMap<String, Vec<Key>> = HashMap::new();
            let jobs: Vec<Job> = batch
                .into_iter()
                .map(|p| {
                    rows.insert(p.job.path.clone(), p.rows);
                    p.job
                })
                .collect();
            for (job, outcome) in apply_files(&self.folder, jobs, &providers, Flush::Batch).await {
                let rows = rows.remove(&job.path).unwrap_or_default();
                self.record(&job, rows, outcome);
            }
            self.commit(true).await;
        }
    }

    /// Jobs applied one after the other (directories, links, deletions).
    async fn one_by_one(&mut self, jobs: Vec<Planned>) {
        for p in jobs {
            let outcome = apply::apply_one(&self.folder, p.job.clone(), &self.providers).await;
            self.record(&p.job, p.rows, outcome);
        }
        self.commit(true).await;
    }

    /// Big files a few at a time, committed as they land.
    async fn big_files(&mut self, big: Vec<Planned>) {
        let folder = self.folder.clone();
        let all = self.providers.clone();
        let mut results = n0_future::stream::iter(group_by_hash(big))
            .map(|group| {
                let folder = folder.clone();
                let providers = order_providers(&all, &group);
                async move {
                    let mut outs = Vec::with_capacity(group.len());
                    for p in group {
                        let outcome = apply::apply_one(&folder, p.job.clone(), &providers).await;
                        outs.push((p, outcome));
                    }
                    outs
                }
            })
            .buffered_unordered(BIG_CONCURRENCY);
        while let Some(outs) = results.next().await {
            for (p, outcome) in outs {
                self.record(&p.job, p.rows, outcome);
            }
            self.commit(false).await;
        }
        drop(results);
        self.commit(true).await;
    }

    /// Take one outcome into the report and the next commit.
    fn record(&mut self, job: &Job, rows: Vec<Key>, outcome: Outcome) {
        self.ledger.answered(&job.path);
        let e = match outcome {
            Ok(applied) => {
                info!(folder = self.folder.id(), path = %job.path, "{}", applied.note);
                self.batch.commit.items.push(Item::Applied {
                    record: applied.record,
                    note: applied.note,
                    resolves: rows.clone(),
                });
                self.batch.held.push((applied.hold, applied.guard));
                self.batch.rows.extend(rows);
                self.report.progressed = true;
                return;
            }
            Err(e) => e,
        };
        match Wait::of(e.disposition()) {
            None => self.rejected(job, rows, e),
            Some(wait) => {
                if e.disposition() == Disposition::LocalRace {
                    debug!(folder = self.folder.id(), path = %job.path, "local change raced a remote one; re-indexing first");
                    self.report.races.push(job.path.clone());
                }
                self.fail(rows, wait, Arc::new(e.into()));
            }
        }
    }

    fn rejected(&mut self, job: &Job, rows: Vec<Key>, e: ApplyError) {
        warn!(folder = self.folder.id(), path = %job.path, "rejected remote entry: {e}");
        self.folder.status.rejected.fetch_add(1, Ordering::Relaxed);
        self.folder
            .status
            .error(format!("rejected {}: {e}", job.path));
        self.batch.commit.resolved.extend(rows.iter().cloned());
        self.batch.rows.extend(rows);
        self.report.progressed = true;
    }

    fn fail(&mut self, rows: Vec<Key>, wait: Wait, cause: Arc<RoundError>) {
        for key in rows {
            self.report.failed.push(Failure {
                key,
                wait,
                cause: cause.clone(),
            });
        }
    }

    /// Commit what is collected (when `force`, or past [`COMMIT_EVERY`]).
    async fn commit(&mut self, force: bool) {
        let n = self.batch.commit.items.len();
        if self.batch.commit.is_empty() || (!force && n < COMMIT_EVERY) {
            return;
        }
        let Batch { commit, held, rows } = std::mem::take(&mut self.batch);
        match commit_with_retries(&self.folder, commit).await {
            Ok(done) => {
                self.committed(done);
                self.report.resolved.extend(rows);
            }
            Err(e) => {
                warn!(
                    folder = self.folder.id(),
                    "{e}; its changes stay pending and are retried"
                );
                self.folder.status.error(e.to_string());
                self.fail(rows, Wait::Backoff, Arc::new(e));
            }
        }
        // Only now may the hasher look at the paths and GC at the content.
        drop(held);
    }

    fn committed(&self, done: Committed) {
        if done.written > 0 {
            self.folder.announce(done.meta.seq);
        }
        self.folder.release(done.released);
        for r in done.superseded {
            debug!(folder = self.folder.id(), path = %r.entry.path, "index moved on while applying; deciding again");
            if let (Some(n), Some(h)) = (r.refs, r.entry.hash) {
                self.folder.park(h, n);
            }
        }
    }

    /// Every planned job must have had exactly one outcome.
    fn audit(&mut self) {
        let (missing, doubled) = std::mem::take(&mut self.ledger).audit();
        for path in &doubled {
            error!(folder = self.folder.id(), %path, "a job had more than one outcome (a bug)");
        }
        debug_assert!(
            doubled.is_empty(),
            "jobs with several outcomes: {doubled:?}"
        );
        for (path, rows) in missing {
            error!(folder = self.folder.id(), %path, "a planned job had no outcome (a bug); retrying it");
            let cause = Arc::new(RoundError::NoOutcome { path });
            self.fail(rows, Wait::Backoff, cause);
        }
    }
}

/// Commit, trying again a few times: a failed write transaction wrote
/// nothing, so another attempt is safe.
async fn commit_with_retries(
    folder: &Arc<Folder>,
    commit: Commit,
) -> Result<Committed, RoundError> {
    let mut wait = COMMIT_RETRY;
    let mut attempt = 1;
    loop {
        let f = folder.clone();
        let c = commit.clone();
        let res = rt::blocking(move || f.index.commit(f.id(), c, f.local())).await?;
        match res {
            Ok(done) => return Ok(done),
            Err(e) if attempt >= COMMIT_ATTEMPTS => return Err(RoundError::Commit(e)),
            Err(e) => {
                debug!(
                    folder = folder.id(),
                    attempt, "index commit failed ({e}); trying again"
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
