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
//! files, then deletions deepest first. Results are committed in batches;
//! failures wait by cause ([`retry`]); a local edit that raced an apply is
//! handed to the watcher so it becomes a proper conflict.
//!
//! Parts: `pull` (index subscriptions), [`round`] (one processing round),
//! [`retry`] (when a failed entry is tried again).
//!
//! All state that matters is in the index (`pending`, `remote`): a restarted
//! receiver just starts pulling and processing again.

mod pull;
pub mod retry;
pub mod round;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use actix::prelude::*;
use fleetsync_mesh::EndpointId;
use tokio::task::JoinHandle;
use tracing::warn;

use self::{
    retry::Retries,
    round::{Failure, Round, RoundReport},
};
use crate::{
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

    use crate::index::{IndexError, RemoteMark};

    /// A validated batch of a peer's index. The reply (how many entries
    /// became pending) is the subscription's backpressure.
    #[derive(Debug, Message)]
    #[rtype(result = "Result<usize, IngestError>")]
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
}

use msg::{CaughtUp, GetInbound, Ingest, IngestError};

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
        }
    }

    /// Start a round, or ask for another after the running one.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        if self.folder.fault().is_some() || !self.folder.mode().can_receive() {
            return;
        }
        self.running = true;
        self.again = false;
        self.folder.status.syncing.store(true, Ordering::Relaxed);
        let waiting = self.retries.waiting(Instant::now());
        let round = Round::new(self.folder.clone(), self.folder.content.providers());
        let task = rt::spawn(round.run(waiting));
        ctx.spawn(task.into_actor(self).map(|res, act, ctx| {
            act.running = false;
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

    fn round_done(&mut self, report: RoundReport, ctx: &mut Context<Self>) {
        for key in &report.resolved {
            self.retries.done(key);
        }
        self.schedule_retries(report.failed, ctx);
        if !report.races.is_empty() {
            if let Some(w) = self.watcher.get() {
                w.do_send(MarkDirty {
                    paths: report.races,
                });
            }
        }
        if report.progressed || self.again {
            self.kick(ctx);
        } else {
            let busy = report.remaining > 0;
            self.folder.status.syncing.store(busy, Ordering::Relaxed);
        }
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

/// Wait before the round after `failed` rounds in a row could not run.
fn round_retry_delay(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(8);
    (ROUND_RETRY_FIRST * 2u32.pow(doublings)).min(ROUND_RETRY_MAX)
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
            rt::spawn(pull::pull(ctx.address(), self.folder.clone(), s.clone()))
        } else {
            rt::spawn(async {})
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
    type Result = ResponseActFuture<Self, Result<usize, IngestError>>;

    fn handle(&mut self, m: Ingest, _: &mut Context<Self>) -> Self::Result {
        let f = self.folder.clone();
        let peer = *m.peer.as_bytes();
        let fut = rt::blocking(move || f.index.ingest(f.id(), &peer, m.mark, &m.entries));
        Box::pin(fut.into_actor(self).map(|res, act, ctx| {
            let n = res??;
            if n > 0 {
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

impl Handler<GetInbound> for Receiver {
    type Result = MessageResult<GetInbound>;

    fn handle(&mut self, _: GetInbound, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.inbound.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests;
