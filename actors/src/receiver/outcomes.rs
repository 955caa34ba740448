//! What became of applied jobs, into the index: [`Outcomes`], shared by a
//! [`Round`](super::round::Round) and by the big-file jobs
//! ([`big`](super::big)), so both follow the same rules.
//!
//! ```text
//!  planned jobs ─► record(outcome) ─► Batch (commit items, holds, guards)
//!                    │ rejected: rows resolved    │
//!                    │ failed: Failure + Wait     ▼
//!                    │              commit: retried; fenced → nothing
//!                    └──────────────► audit: exactly one outcome per job
//! ```
//!
//! Every outcome is recorded against the pending rows it answers: applied
//! (committed with the rows resolved in one transaction), rejected (rows
//! resolved), or failed with a cause and a [`Wait`]. Commits are retried;
//! if one still fails, the rows it would have resolved are reported as
//! failed (they stay pending and are tried again), never dropped. A commit
//! of a replaced receiver incarnation is refused inside its transaction
//! (the generation fence) and does nothing: the new incarnation redoes it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use fleetsync_mesh::{backoff::Backoff, StoreError};
use tracing::{debug, error, info, warn};

use super::retry::{Key, Wait};
use crate::{
    apply::{ApplyError, Disposition, Job, Outcome},
    content::Hold,
    folder::{ApplyGuard, Folder},
    health::Health,
    index::{Commit, Committed, IndexError, Item},
    rt::{self, TaskError},
};

/// Applied entries per index commit while big files stream in.
pub const COMMIT_EVERY: usize = 200;
/// Attempts at one index commit before its rows are reported failed.
const COMMIT_ATTEMPTS: u32 = 3;
/// Wait before the second attempt (doubling after, jittered: [`Backoff`]).
const COMMIT_RETRY: Duration = Duration::from_millis(50);
/// Longest wait between attempts (the third, with [`COMMIT_ATTEMPTS`] 3).
const COMMIT_RETRY_MAX: Duration = Duration::from_millis(100);

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
    #[error("blob store sync before the index commit: {0}")]
    StoreSync(#[source] StoreError),
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

/// A decided job and the pending rows it answers.
#[derive(Debug, Clone)]
pub struct Planned {
    pub job: Job,
    pub rows: Vec<Key>,
}

/// What a round (or a big-file job) did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Rows done with: applied and committed, rejected, or nothing to do.
    pub resolved: Vec<Key>,
    pub failed: Vec<Failure>,
    /// Paths a local edit raced: the watcher should look at them.
    pub races: Vec<String>,
    /// Something changed: worth another round at once.
    pub progressed: bool,
    /// Rows left waiting for their retry or their big-file job (not looked at).
    pub remaining: usize,
    /// Retry marks whose row no longer exists (see `round::stale_waits`).
    pub stale: Vec<Key>,
    /// Big-file jobs handed off, grouped by content: each group runs
    /// outside the round ([`super::big`]).
    pub big_files: Vec<Vec<Planned>>,
}

/// Outcomes per planned path: exactly one each, checked at the end.
#[derive(Debug, Default)]
pub struct Ledger {
    answers: HashMap<String, (Vec<Key>, u32)>,
}

impl Ledger {
    pub fn planned<'a>(&mut self, jobs: impl IntoIterator<Item = &'a Planned>) {
        for p in jobs {
            self.answers.insert(p.job.path.clone(), (p.rows.clone(), 0));
        }
    }

    fn answered(&mut self, path: &str) {
        if let Some((_, n)) = self.answers.get_mut(path) {
            *n += 1;
        }
    }

    /// Planned jobs with no outcome (their rows), and jobs answered twice.
    pub fn audit(self) -> (Vec<(String, Vec<Key>)>, Vec<String>) {
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

/// Outcomes of one round or one big-file job, on their way to the index.
pub struct Outcomes {
    folder: Arc<Folder>,
    health: Arc<Health>,
    pub report: RoundReport,
    batch: Batch,
    ledger: Ledger,
}

impl Outcomes {
    pub fn new(folder: Arc<Folder>, health: Arc<Health>) -> Self {
        Outcomes {
            folder,
            health,
            report: RoundReport::default(),
            batch: Batch::default(),
            ledger: Ledger::default(),
        }
    }

    /// These jobs each owe exactly one outcome.
    pub fn planned<'a>(&mut self, jobs: impl IntoIterator<Item = &'a Planned>) {
        self.ledger.planned(jobs);
    }

    /// Rows that need nothing: resolved with the next commit.
    pub fn resolve(&mut self, keep: Vec<Key>) {
        self.batch.commit.resolved.extend(keep.iter().cloned());
        self.batch.rows.extend(keep);
        self.report.progressed = true;
    }

    /// Take one outcome into the report and the next commit.
    pub fn record(&mut self, job: &Job, rows: Vec<Key>, outcome: Outcome) {
        self.ledger.answered(&job.path);
        self.health.progress();
        let e = match outcome {
            Ok(applied) => {
                info!(folder = self.folder.id(), path = %job.path, "{}", applied.note);
                self.batch.commit.items.push(Item::Applied {
                    record: applied.record,
                    note: applied.note,
                    resolves: rows.clone(),
                    from: job.from,
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
        self.folder.status.reject(
            fleetsync_mesh::model::ShortId::from_node_id(&job.from),
            format!("rejected {}: {e}", job.path),
            true,
        );
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
    pub async fn commit(&mut self, force: bool) {
        let n = self.batch.commit.items.len();
        if self.batch.commit.is_empty() || (!force && n < COMMIT_EVERY) {
            return;
        }
        let Batch { commit, held, rows } = std::mem::take(&mut self.batch);
        match commit_with_retries(&self.folder, &self.health, commit).await {
            Ok(Some(done)) => {
                self.health.progress();
                self.committed(done);
                self.report.resolved.extend(rows);
            }
            Ok(None) => {
                debug!(
                    folder = self.folder.id(),
                    "receiver replaced; its successor redoes these changes"
                );
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
    pub fn audit(&mut self) {
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
/// nothing, so another attempt is safe. `None`: this receiver incarnation
/// was replaced (the fence, checked inside the transaction): nothing was
/// written and nothing is to be done.
async fn commit_with_retries(
    folder: &Arc<Folder>,
    health: &Arc<Health>,
    commit: Commit,
) -> Result<Option<Committed>, RoundError> {
    if commit
        .items
        .iter()
        .any(|i| matches!(i, Item::Applied { .. }))
    {
        // What the store recorded for this content (fetched, exported to
        // `refs/`, imported) is made durable before the index points at
        // it: a crash in between would leave an entry this node can never
        // serve (forgotten, or placed in a file the store moved away).
        folder.content.sync().await.map_err(RoundError::StoreSync)?;
    }
    let mut backoff = Backoff::new(COMMIT_RETRY, COMMIT_RETRY_MAX);
    let mut attempt = 1;
    loop {
        let f = folder.clone();
        let h = health.clone();
        let c = commit.clone();
        let res = rt::blocking(move || {
            f.index
                .commit_unless(f.id(), c, f.local(), || !h.is_current())
        })
        .await?;
        match res {
            Ok(done) => return Ok(Some(done)),
            Err(IndexError::Fenced) => return Ok(None),
            Err(e) if attempt >= COMMIT_ATTEMPTS => return Err(RoundError::Commit(e)),
            Err(e) => {
                debug!(
                    folder = folder.id(),
                    attempt, "index commit failed ({e}); trying again"
                );
                tokio::time::sleep(backoff.next_wait()).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn planned(path: &str) -> Planned {
        let e = testing::entry(
            path,
            fleetsync_mesh::model::EntryKind::File,
            Some(b"x"),
            testing::ME,
            1,
        );
        Planned {
            rows: vec![(path.to_string(), [1; 32])],
            job: Job {
                path: path.into(),
                local: None,
                target: e,
                conflict_copy: false,
                verbatim: true,
                from: [1; 32],
            },
        }
    }

    #[test]
    fn the_ledger_finds_jobs_without_an_outcome_and_with_several() {
        let jobs = [planned("a"), planned("b"), planned("c")];
        let mut ledger = Ledger::default();
        ledger.planned(&jobs);
        ledger.answered("a");
        ledger.answered("c");
        ledger.answered("c");
        let (missing, doubled) = ledger.audit();
        assert_eq!(
            missing,
            vec![("b".to_string(), vec![("b".to_string(), [1; 32])])]
        );
        assert_eq!(doubled, vec!["c".to_string()]);
    }
}
