//! Receiver (one per folder): pulls each connected peer's index and makes
//! the folder match the fleet.
//!
//! Per peer session, a pull task subscribes to the peer's index from where
//! we left off (the peer's index id and sequence number, persisted), checks
//! every entry (hostile paths and malformed entries are rejected and logged,
//! the rest still applies), and hands batches to the actor with
//! [`msg::Ingest`], whose reply is the backpressure. Ingest persists the
//! entries as *pending* together with the new mark, in one transaction.
//!
//! Processing rounds ([`round::Round`], at most one running, further kicks
//! coalesced) read pending entries, decide with [`crate::rules`], and carry
//! the decisions out through [`crate::apply`]: directories first, then
//! small files and symlinks, then deletions deepest first. Big files are
//! handed off: each content group is a job of its own ([`big`]), in flight
//! next to the rounds (which skip its paths), so a stalled transfer holds
//! back nothing else. Results are committed in batches ([`outcomes`]: the
//! same rules for rounds and big-file jobs); failures wait by cause
//! ([`retry`]); a local edit that raced an apply is handed to the watcher
//! so it becomes a proper conflict.
//!
//! Supervision: a round, each big-file job, each transfer and each ingest
//! is work of this incarnation's [`Health`]; outcomes, commits and bytes
//! arriving are progress. Every task is started with [`Health::spawn`]
//! (aborted when the incarnation is replaced) and every commit is fenced
//! ([`crate::index::Index::commit_unless`]).
//!
//! Parts: `pull` (index subscriptions), [`round`] (one processing round),
//! [`big`] (big-file jobs), [`outcomes`] (outcomes into the index),
//! [`retry`] (when a failed entry is tried again).
//!
//! All state that matters is in the index (`pending`, `remote`): a restarted
//! receiver just starts pulling and processing again.

pub mod big;
pub mod outcomes;
mod pull;
pub mod retry;
pub mod round;
pub mod tree;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use actix::prelude::*;
use fleetsync_mesh::{backoff::Backoff, EndpointId};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::warn;

use self::{
    outcomes::{Failure, Planned, RoundError, RoundReport},
    retry::{Retries, Wait},
    round::Round,
};
use crate::{
    apply::Sources,
    folder::Folder,
    health::Health,
    msg::{PeerDown, PeerUp, Ping},
    rt,
    slot::Slot,
    watcher::{msg::MarkDirty, Watcher},
};

pub mod msg {
    use actix::Message;
    use fleetsync_mesh::{model::FileEntry, EndpointId};

    use crate::index::{IndexError, Ingested, RemoteMark};

    /// A validated batch of a peer's index. The reply (how many entries
    /// became pending, how many the folder's caps deferred) is the
    /// subscription's backpressure.
    #[derive(Debug, Message)]
    #[rtype(result = "Result<Ingested, IngestError>")]
    pub struct Ingest {
        pub peer: EndpointId,
        pub mark: RemoteMark,
        pub entries: Vec<FileEntry>,
    }

    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum IngestError {
        #[error(transparent)]
        Index(#[from] IndexError),
        #[error(transparent)]
        Task(#[from] crate::rt::TaskError),
    }

    /// The peer has sent everything it had.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct CaughtUp {
        pub peer: EndpointId,
        pub seq: u64,
    }

    #[derive(Debug, Message)]
    #[rtype(result = "Vec<super::Inbound>")]
    pub struct GetInbound;

    /// Run a round now (the mass-delete guard let its deletes through).
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct Kick;

    /// Paths taken away from disk outside a round (files the fleet deleted
    /// while this node was away, `crate::tombs::take_away`): the watcher
    /// records them as local deletions.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct Recheck {
        pub paths: Vec<String>,
    }
}

use msg::{CaughtUp, GetInbound, Ingest, IngestError, Kick};

use crate::index::Ingested;

/// What we know of one peer's index of this folder.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub peer: EndpointId,
    pub caught_up: bool,
    pub seq: u64,
}

/// How often due retries are looked for (sooner ones schedule a wake-up).
const RETRY_TICK: Duration = Duration::from_millis(250);
/// A round that could not run at all (the index unreadable) is tried again
/// after this, doubling up to [`ROUND_RETRY_MAX`] while it keeps failing.
const ROUND_RETRY_FIRST: Duration = Duration::from_millis(500);
const ROUND_RETRY_MAX: Duration = Duration::from_secs(60);

pub struct Receiver {
    folder: Arc<Folder>,
    health: Arc<Health>,
    watcher: Slot<Watcher>,
    /// Pull task per session (by connection id).
    sessions: HashMap<u64, (EndpointId, JoinHandle<()>)>,
    inbound: BTreeMap<EndpointId, Inbound>,
    /// A round is running; `again`: another was asked for meanwhile.
    running: bool,
    again: bool,
    retries: Retries,
    /// Rounds in a row that could not run at all.
    failed_rounds: u32,
    /// Paths whose big-file job is in flight: rounds leave them alone.
    big_in_flight: HashSet<String>,
    /// Big-file jobs transferring at once ([`big::BIG_CONCURRENCY`]).
    big_slots: Arc<Semaphore>,
    /// A round is due then: deletes waiting out the mass-delete guard's
    /// grace are judged again ([`crate::guard`]).
    recheck_at: Option<Instant>,
}

impl Receiver {
    pub fn new(folder: Arc<Folder>, watcher: Slot<Watcher>, health: Arc<Health>) -> Self {
        Receiver {
            health,
            folder,
            watcher,
            sessions: HashMap::new(),
            inbound: BTreeMap::new(),
            running: false,
            again: false,
            retries: Retries::default(),
            failed_rounds: 0,
            big_in_flight: HashSet::new(),
            big_slots: Arc::new(Semaphore::new(big::BIG_CONCURRENCY)),
            recheck_at: None,
        }
    }

    /// Start a round, or ask for another after the running one.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        let stopped = self.folder.fault().is_some() || self.folder.is_paused();
        if stopped || !self.folder.mode().can_receive() {
            return;
        }
        self.running = true;
        self.again = false;
        self.folder.status.syncing.store(true, Ordering::Relaxed);
        let waiting = self.retries.waiting(Instant::now());
        let sources = Sources::new(self.folder.content.providers(), self.health.clone());
        let round = Round::new(self.folder.clone(), sources).retrying(self.retries.keys());
        let task = self
            .health
            .spawn(round.run(waiting, self.big_in_flight.clone()));
        ctx.spawn(task.into_actor(self).map(|res, act, ctx| {
            act.running = false;
            if !act.health.is_current() {
                return; // replaced: the successor redoes the round
            }
            match res {
                Ok(Ok(report)) => {
                    act.failed_rounds = 0;
                    act.round_done(report, ctx);
                }
                Ok(Err(e)) => act.round_failed(e.to_string(), ctx),
                Err(e) => act.round_failed(e.to_string(), ctx),
            }
        }));
    }

    /// Nothing was applied and nothing reported: try the whole round again
    /// after a backoff, so pending rows never wait for an unrelated event.
    fn round_failed(&mut self, why: String, ctx: &mut Context<Self>) {
        self.failed_rounds += 1;
        let delay = round_retry_delay(self.failed_rounds);
        warn!(
            folder = self.folder.id(),
            "receiver round failed: {why}; trying again in {delay:?}"
        );
        self.folder
            .status
            .error(format!("receiver round failed: {why}"));
        ctx.run_later(delay, |act, ctx| act.kick(ctx));
    }

    fn round_done(&mut self, mut report: RoundReport, ctx: &mut Context<Self>) {
        for group in std::mem::take(&mut report.big_files) {
            self.start_big(group, ctx);
        }
        let (progressed, remaining) = (report.progressed, report.remaining);
        self.take_outcomes(report, ctx);
        self.recheck_deferred_deletes(ctx);
        if progressed || self.again {
            self.kick(ctx);
        } else {
            let busy = remaining > 0 || !self.big_in_flight.is_empty();
            self.folder.status.syncing.store(busy, Ordering::Relaxed);
        }
    }

    /// Deletes wait out the guard's grace: a round judges them again when
    /// it ends, even if nothing else arrives (one wake-up per instant).
    fn recheck_deferred_deletes(&mut self, ctx: &mut Context<Self>) {
        let due = self.folder.deletes.lock().expect("guard lock").recheck_at();
        let Some(at) = due.filter(|at| self.recheck_at != Some(*at)) else {
            return;
        };
        self.recheck_at = Some(at);
        let wait = at.saturating_duration_since(Instant::now());
        ctx.run_later(wait, move |act, ctx| {
            if act.recheck_at == Some(at) {
                act.recheck_at = None;
            }
            act.kick(ctx);
        });
    }

    /// Resolved rows are done with, failed ones wait for their retry, raced
    /// paths go to the watcher.
    fn take_outcomes(&mut self, report: RoundReport, ctx: &mut Context<Self>) {
        let mut guard = self.folder.deletes.lock().expect("guard lock");
        for key in report.resolved.iter().chain(&report.stale) {
            self.retries.done(key);
            guard.done(key);
        }
        drop(guard);
        self.schedule_retries(report.failed, ctx);
        let marks = self.retries.len();
        self.folder.status.retrying.store(marks, Ordering::Relaxed);
        if !report.races.is_empty() {
            if let Some(w) = self.watcher.get() {
                w.do_send(MarkDirty {
                    paths: report.races,
                });
            }
        }
    }

    /// Run a group of big-file jobs next to the rounds; its paths are in
    /// flight until it reports back.
    fn start_big(&mut self, group: Vec<Planned>, ctx: &mut Context<Self>) {
        let paths: Vec<String> = group.iter().map(|p| p.job.path.clone()).collect();
        let rows: Vec<_> = group.iter().flat_map(|p| p.rows.clone()).collect();
        self.big_in_flight.extend(paths.iter().cloned());
        let job = big::run(
            self.folder.clone(),
            group,
            self.health.clone(),
            self.big_slots.clone(),
        );
        let task = self.health.spawn(job);
        ctx.spawn(task.into_actor(self).map(move |res, act, ctx| {
            for p in &paths {
                act.big_in_flight.remove(p);
            }
            if !act.health.is_current() {
                return; // replaced: the successor redoes the job
            }
            let report = res.unwrap_or_else(|e| lost_job(rows, e));
            act.take_outcomes(report, ctx);
            // Its paths are free again; newer rows may wait for them.
            act.kick(ctx);
        }));
    }

    /// Remember when each failure is due; wake up for one due before the
    /// next tick. Transient causes clear up by themselves: only
    /// persistent ones warn.
    fn schedule_retries(&mut self, failed: Vec<Failure>, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let settle = self.folder.cfg.settle;
        let mut soonest: Option<Instant> = None;
        for f in failed {
            let (attempts, due) = self.retries.failed(f.key.clone(), f.wait, settle, now);
            soonest = Some(soonest.map_or(due, |s| s.min(due)));
            if f.wait.warn(attempts) {
                let path = &f.key.0;
                warn!(folder = self.folder.id(), %path, attempt = attempts, "cannot apply yet: {}", f.cause);
                self.folder.status.error(format!("{path}: {}", f.cause));
            }
        }
        if let Some(at) = soonest.filter(|at| *at < now + RETRY_TICK) {
            ctx.run_later(at - now, |act, ctx| {
                if !act.running {
                    act.kick(ctx);
                }
            });
        }
    }
}

/// A big-file job that ended without a report (it panicked, or it was
/// aborted with its incarnation): its rows are tried again after a backoff.
fn lost_job(rows: Vec<retry::Key>, e: tokio::task::JoinError) -> RoundReport {
    let cause = Arc::new(RoundError::Task(rt::TaskError(e)));
    let failed = rows
        .into_iter()
        .map(|key| Failure {
            key,
            wait: Wait::Backoff,
            cause: cause.clone(),
        })
        .collect();
    RoundReport {
        failed,
        ..RoundReport::default()
    }
}

/// Wait before the round after `failed` rounds in a row could not run.
/// Jittered ([`Backoff`]): folders that failed together do not retry in
/// step.
fn round_retry_delay(failed: u32) -> Duration {
    Backoff::nth_wait(ROUND_RETRY_FIRST, ROUND_RETRY_MAX, failed)
}

impl Actor for Receiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Pending work from before a restart.
        self.kick(ctx);
        ctx.run_interval(RETRY_TICK, |act, ctx| {
            if !act.running && act.retries.any_due(Instant::now()) {
                act.kick(ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, (_, h)) in self.sessions.drain() {
            h.abort();
        }
    }
}

impl Handler<Ping> for Receiver {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

impl Handler<PeerUp> for Receiver {
    type Result = ();

    fn handle(&mut self, PeerUp(s): PeerUp, ctx: &mut Context<Self>) {
        if self.sessions.contains_key(&s.conn_id) {
            return;
        }
        // send-only folders never apply remote changes: don't even ask.
        let pull = if self.folder.mode().can_receive() {
            let pull = pull::pull(ctx.address(), self.folder.clone(), s.clone());
            self.health.spawn(pull)
        } else {
            self.health.spawn(async {})
        };
        self.sessions.insert(s.conn_id, (s.peer, pull));
        self.inbound.insert(
            s.peer,
            Inbound {
                peer: s.peer,
                caught_up: false,
                seq: 0,
            },
        );
        // A new provider: retry what was waiting for content.
        self.retries.wake_all(Instant::now());
        self.kick(ctx);
    }
}

impl Handler<PeerDown> for Receiver {
    type Result = ();

    fn handle(&mut self, m: PeerDown, _: &mut Context<Self>) {
        if let Some((_, h)) = self.sessions.remove(&m.conn_id) {
            h.abort();
        }
        if !self.sessions.values().any(|(p, _)| *p == m.peer) {
            self.inbound.remove(&m.peer);
        }
    }
}

impl Handler<Ingest> for Receiver {
    type Result = ResponseActFuture<Self, Result<Ingested, IngestError>>;

    fn handle(&mut self, m: Ingest, _: &mut Context<Self>) -> Self::Result {
        let f = self.folder.clone();
        let peer = *m.peer.as_bytes();
        let work = self.health.begin();
        let limits = f.limits();
        let fut = rt::blocking(move || f.index.ingest(f.id(), &peer, m.mark, &m.entries, limits));
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let n = res??;
            work.progress();
            act.folder
                .status
                .deferred
                .fetch_add(n.deferred as u64, Ordering::Relaxed);
            if n.stored > 0 {
                act.kick(ctx);
            }
            Ok(n)
        }))
    }
}

impl Handler<CaughtUp> for Receiver {
    type Result = ();

    fn handle(&mut self, m: CaughtUp, _: &mut Context<Self>) {
        if let Some(i) = self.inbound.get_mut(&m.peer) {
            i.caught_up = true;
            i.seq = m.seq;
        }
    }
}

impl Handler<msg::Recheck> for Receiver {
    type Result = ();

    fn handle(&mut self, m: msg::Recheck, _: &mut Context<Self>) {
        match self.watcher.get() {
            Some(w) => w.do_send(MarkDirty { paths: m.paths }),
            // No watcher right now: its successor's first scan finds them.
            None => warn!(
                folder = self.folder.id(),
                "watcher unavailable; {} removed paths wait for its next scan",
                m.paths.len()
            ),
        }
    }
}

impl Handler<GetInbound> for Receiver {
    type Result = MessageResult<GetInbound>;

    fn handle(&mut self, _: GetInbound, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.inbound.values().cloned().collect())
    }
}

impl Handler<Kick> for Receiver {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.kick(ctx);
    }
}

#[cfg(test)]
mod tests;
