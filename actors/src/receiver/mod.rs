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
//! Processing rounds (at most one running, further kicks coalesced) read
//! pending entries, decide with [`crate::rules`], and carry the decisions
//! out through [`crate::apply`]: directories first, then files several at
//! a time, then deletions deepest first. Results are committed in batches;
//! failures are retried with backoff; a local edit that raced an apply is
//! handed to the watcher so it becomes a proper conflict.
//!
//! All state that matters is in the index (`pending`, `remote`): a restarted
//! receiver just starts pulling and processing again.

mod pull;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use actix::prelude::*;
use fleetsync_mesh::{model::EntryKind, EndpointId};
use n0_future::{BufferedStreamExt, StreamExt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{
    apply::{apply, apply_batch, Job, Outcome},
    folder::Folder,
    index::{Commit, Item},
    msg::{PeerDown, PeerUp, Ping},
    record::Record,
    rt,
    rules::{decide, Decision},
    slot::Slot,
    watcher::{msg::MarkDirty, Watcher},
};

pub mod msg {
    use actix::Message;
    use fleetsync_mesh::{model::FileEntry, EndpointId};

    use crate::index::RemoteMark;

    /// A validated batch of a peer's index.
    #[derive(Debug, Message)]
    #[rtype(result = "Result<usize, String>")]
    pub struct Ingest {
        pub peer: EndpointId,
        pub mark: RemoteMark,
        pub entries: Vec<FileEntry>,
    }

    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct CaughtUp {
        pub peer: EndpointId,
        pub seq: u64,
    }

    /// Look at pending entries now.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct Kick;

    #[derive(Debug, Message)]
    #[rtype(result = "Vec<super::Inbound>")]
    pub struct GetInbound;
}

use msg::{CaughtUp, GetInbound, Ingest, Kick};

/// What we know of one peer's index of this folder.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub peer: EndpointId,
    pub caught_up: bool,
    pub seq: u64,
}

/// Pending rows read per round.
const ROUND_LIMIT: usize = 2000;
/// Big files applied at once.
const BIG_CONCURRENCY: usize = 4;
/// Files up to this size are applied in batches sharing one sync.
const BATCH_FILE_MAX: u64 = 1 << 20;
/// Files per batch.
const BATCH_FILES: usize = 512;
/// Applied entries per index commit.
const COMMIT_EVERY: usize = 200;
const MAX_RETRY_ENTRIES: usize = 100_000;
/// How often due retries are looked for (sooner ones schedule a wake-up).
const RETRY_TICK: Duration = Duration::from_millis(250);

type Key = (String, [u8; 32]);
/// A decided job and the pending rows it settles.
type Planned = (Job, Vec<Key>);
/// What an applied file keeps alive until its record is committed.
type Held = (
    Option<crate::content::Hold>,
    Option<crate::folder::ApplyGuard>,
);

struct RetryState {
    next: Instant,
    attempts: u32,
}

pub struct Receiver {
    ctx: Arc<Folder>,
    watcher: Slot<Watcher>,
    sessions: HashMap<u64, (EndpointId, JoinHandle<()>)>,
    inbound: BTreeMap<EndpointId, Inbound>,
    running: bool,
    again: bool,
    retry: HashMap<Key, RetryState>,
}

impl Receiver {
    pub fn new(ctx: Arc<Folder>, watcher: Slot<Watcher>) -> Self {
        Receiver {
            ctx,
            watcher,
            sessions: HashMap::new(),
            inbound: BTreeMap::new(),
            running: false,
            again: false,
            retry: HashMap::new(),
        }
    }

    fn providers(&self) -> Vec<EndpointId> {
        let mut seen = HashSet::new();
        self.sessions
            .values()
            .map(|(p, _)| *p)
            .filter(|p| seen.insert(*p))
            .collect()
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        if self.ctx.fault().is_some() || !self.ctx.mode().can_receive() {
            return;
        }
        self.running = true;
        self.again = false;
        self.ctx.status.syncing.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let skip: HashSet<Key> = self
            .retry
            .iter()
            .filter(|(_, r)| r.next > now)
            .map(|(k, _)| k.clone())
            .collect();
        let fut = rt::spawn(process_round(self.ctx.clone(), self.providers(), skip));
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.running = false;
            let mut remaining = 0;
            match res {
                Ok(report) => {
                    remaining = report.remaining;
                    for k in report.settled {
                        act.retry.remove(&k);
                    }
                    let now = Instant::now();
                    let mut soonest: Option<Instant> = None;
                    for (k, why, wait) in report.failed {
                        let r = act.retry.entry(k.clone()).or_insert(RetryState {
                            next: now,
                            attempts: 0,
                        });
                        r.attempts += 1;
                        r.next = now + wait.delay(act.ctx.cfg.settle, r.attempts);
                        soonest = Some(soonest.map_or(r.next, |s| s.min(r.next)));
                        // Transient causes (content still on its way, a
                        // directory whose contents are still being removed)
                        // clear up by themselves: only persistent ones warn.
                        if wait.warn(r.attempts) {
                            warn!(folder = act.ctx.id(), path = %k.0, attempt = r.attempts, "cannot apply yet: {why}");
                            act.ctx.status.error(format!("{}: {why}", k.0));
                        }
                    }
                    // Sooner than the periodic check: wake up for it.
                    if let Some(at) = soonest.filter(|at| *at < now + RETRY_TICK) {
                        ctx.run_later(at - now, |act, ctx| {
                            if !act.running {
                                act.kick(ctx);
                            }
                        });
                    }
                    if !report.races.is_empty() {
                        if let Some(w) = act.watcher.get() {
                            w.do_send(MarkDirty { paths: report.races });
                        }
                    }
                    if report.progressed {
                        act.again = true;
                    }
                }
                Err(e) => act.ctx.status.error(format!("receiver round failed: {e}")),
            }
            if act.retry.len() > MAX_RETRY_ENTRIES {
                act.retry.clear();
            }
            if act.again {
                act.kick(ctx);
            } else {
                act.ctx
                    .status
                    .syncing
                    .store(remaining > 0, Ordering::Relaxed);
            }
        }));
    }
}

impl Actor for Receiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Pending work from before a restart.
        self.kick(ctx);
        ctx.run_interval(RETRY_TICK, |act, ctx| {
            let now = Instant::now();
            if !act.running && act.retry.values().any(|r| r.next <= now) {
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
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<PeerUp> for Receiver {
    type Result = ();

    fn handle(&mut self, PeerUp(s): PeerUp, ctx: &mut Context<Self>) {
        if self.sessions.contains_key(&s.conn_id) {
            return;
        }
        // send-only folders never apply remote changes: don't even ask.
        let pull = if self.ctx.mode().can_receive() {
            rt::spawn(pull::pull(ctx.address(), self.ctx.clone(), s.clone()))
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
        // New provider: retry what was waiting for content.
        for r in self.retry.values_mut() {
            r.next = Instant::now();
        }
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
    type Result = ResponseActFuture<Self, Result<usize, String>>;

    fn handle(&mut self, m: Ingest, _: &mut Context<Self>) -> Self::Result {
        let c = self.ctx.clone();
        let peer = *m.peer.as_bytes();
        let fut = rt::blocking(move || c.index.ingest(c.id(), &peer, m.mark, &m.entries));
        Box::pin(fut.into_actor(self).map(|res, act, ctx| {
            let n = res.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
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

impl Handler<Kick> for Receiver {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.kick(ctx);
    }
}

impl Handler<GetInbound> for Receiver {
    type Result = MessageResult<GetInbound>;

    fn handle(&mut self, _: GetInbound, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.inbound.values().cloned().collect())
    }
}

/// How long a failed entry waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A local edit is settling: after it is indexed.
    Race,
    /// Other entries must land first: soon, doubling from 50 ms.
    Soon,
    /// Anything else: doubling from 500 ms up to a minute.
    Backoff,
}

impl Wait {
    fn delay(self, settle: Duration, attempts: u32) -> Duration {
        let doubling = |base: u64| {
            Duration::from_millis(base * 2u64.pow(attempts.min(12))).min(Duration::from_secs(60))
        };
        match self {
            Wait::Race => settle * 2 + Duration::from_millis(100),
            Wait::Soon => doubling(25),
            Wait::Backoff => doubling(250),
        }
    }

    /// Worth a warning: persistent, not just content on its way.
    fn warn(self, attempts: u32) -> bool {
        match self {
            Wait::Race => false,
            Wait::Soon => attempts == 8 || attempts.is_multiple_of(20),
            Wait::Backoff => attempts == 3 || attempts.is_multiple_of(10),
        }
    }
}

#[derive(Debug, Default)]
struct RoundReport {
    settled: Vec<Key>,
    failed: Vec<(Key, String, Wait)>,
    races: Vec<String>,
    progressed: bool,
    remaining: usize,
}

async fn process_round(
    ctx: Arc<Folder>,
    providers: Vec<EndpointId>,
    skip: HashSet<Key>,
) -> RoundReport {
    let mut report = RoundReport::default();
    let c = ctx.clone();
    let limit = ROUND_LIMIT + skip.len();
    let pending = match rt::blocking(move || c.index.pending(c.id(), limit)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            ctx.status.error(format!("index: {e}"));
            return report;
        }
        Err(e) => {
            ctx.status.error(e.to_string());
            return report;
        }
    };
    let mut by_path: BTreeMap<String, Vec<crate::index::Pending>> = BTreeMap::new();
    for p in pending {
        if skip.contains(&(p.path.clone(), p.peer)) {
            report.remaining += 1;
            continue;
        }
        by_path.entry(p.path.clone()).or_default().push(p);
    }
    if by_path.is_empty() {
        return report;
    }
    let paths: Vec<String> = by_path.keys().cloned().collect();
    let c = ctx.clone();
    let locals = match rt::blocking(move || c.index.get_many(c.id(), &paths)).await {
        Ok(Ok(l)) => l,
        _ => {
            ctx.status.error("index read failed");
            return report;
        }
    };
    // Decide.
    let mut keep = Commit::default();
    let mut jobs: Vec<(Job, Vec<Key>)> = Vec::new();
    for (path, rows) in by_path {
        let local = locals.get(&path).cloned();
        let mut virt = local.clone();
        let mut chosen: Option<Job> = None;
        let mut settles = Vec::new();
        for row in rows {
            match decide(virt.as_ref(), &row.entry) {
                Decision::Keep => keep.resolved.push((path.clone(), row.peer)),
                Decision::Apply {
                    entry,
                    conflict_copy,
                    verbatim,
                } => {
                    let cc = match &chosen {
                        None => conflict_copy,
                        Some(j) => j.conflict_copy,
                    };
                    virt = Some(Record {
                        entry: entry.clone(),
                        local: virt.and_then(|r| r.local),
                        local_changed: false,
                        received_from: None,
                        refs: None,
                    });
                    chosen = Some(Job {
                        path: path.clone(),
                        local: local.clone(),
                        target: entry,
                        conflict_copy: cc,
                        verbatim,
                        from: row.peer,
                    });
                    settles.push((path.clone(), row.peer));
                }
            }
        }
        if let Some(j) = chosen {
            jobs.push((j, settles));
        }
    }
    if !keep.is_empty() {
        report.progressed = true;
        for k in &keep.resolved {
            report.settled.push(k.clone());
        }
        let c = ctx.clone();
        let _ = rt::blocking(move || c.index.commit(c.id(), keep, c.local())).await;
    }
    // Order: directories (parents first), then files and links, then
    // deletions (children first, so directories are empty when reached).
    let (mut deletes, rest): (Vec<_>, Vec<_>) =
        jobs.into_iter().partition(|(j, _)| j.target.deleted);
    let (dirs, files): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(j, _)| j.target.kind == EntryKind::Directory);
    deletes.sort_by(|a, b| b.0.path.cmp(&a.0.path));

    let mut pending_commit = Commit::default();
    // Keep freshly referenced content safe from blob GC, and the hasher off
    // freshly placed paths, until their records are committed.
    let tags: std::sync::Mutex<Vec<Held>> = std::sync::Mutex::new(Vec::new());
    let flush = |pc: &mut Commit, force: bool| -> Option<Commit> {
        if pc.items.len() >= COMMIT_EVERY || (force && !pc.is_empty()) {
            Some(std::mem::take(pc))
        } else {
            None
        }
    };
    let handle = |out: Outcome,
                  job: &Job,
                  settles: Vec<Key>,
                  report: &mut RoundReport,
                  pc: &mut Commit| match out {
        Outcome::Applied {
            record,
            note,
            tag,
            guard,
        } => {
            // Both live until the record is committed.
            tags.lock().expect("tags lock").push((tag, guard));
            info!(folder = ctx.id(), path = %job.path, "{note}");
            for s in &settles {
                report.settled.push(s.clone());
            }
            pc.items.push(Item::Applied {
                record: *record,
                note,
                resolves: settles,
            });
            report.progressed = true;
        }
        Outcome::LocalRace => {
            debug!(folder = ctx.id(), path = %job.path, "local change raced a remote one; re-indexing first");
            report.races.push(job.path.clone());
            for s in settles {
                report
                    .failed
                    .push((s, "local change in progress".into(), Wait::Race));
            }
        }
        Outcome::Retry(why) => {
            for s in settles {
                report.failed.push((s, why.clone(), Wait::Backoff));
            }
        }
        Outcome::NotYet(why) => {
            for s in settles {
                report.failed.push((s, why.clone(), Wait::Soon));
            }
        }
        Outcome::Reject(why) => {
            warn!(folder = ctx.id(), path = %job.path, "rejected remote entry: {why}");
            ctx.status.rejected.fetch_add(1, Ordering::Relaxed);
            ctx.status.error(format!("rejected {}: {why}", job.path));
            for s in &settles {
                report.settled.push(s.clone());
            }
            pc.resolved.extend(settles);
            report.progressed = true;
        }
    };
    async fn commit(ctx: &Arc<Folder>, c: Option<Commit>, held: &std::sync::Mutex<Vec<Held>>) {
        if let Some(c) = c {
            let _held = std::mem::take(&mut *held.lock().expect("tags lock"));
            let cx = ctx.clone();
            match rt::blocking(move || cx.index.commit(cx.id(), c, cx.local())).await {
                Ok(Ok(done)) => {
                    if done.written > 0 {
                        ctx.announce(done.meta.seq);
                    }
                    ctx.release(done.released);
                    for r in done.superseded {
                        debug!(folder = ctx.id(), path = %r.entry.path, "index moved on while applying; deciding again");
                        if let (Some(n), Some(h)) = (r.refs, r.entry.hash) {
                            ctx.park(h, n);
                        }
                    }
                }
                Ok(Err(e)) => ctx.status.error(format!("index commit: {e}")),
                Err(e) => ctx.status.error(e.to_string()),
            }
        }
    }
    for (job, settles) in dirs {
        let out = apply(ctx.clone(), job.clone(), providers.clone()).await;
        handle(out, &job, settles, &mut report, &mut pending_commit);
    }
    // Directories must be committed before their contents' rows may be.
    commit(&ctx, flush(&mut pending_commit, true), &tags).await;
    // Small files go in batches that share one filesystem sync; big ones
    // (and symlinks) one by one (their own fsync is cheap next to their
    // transfer).
    let (small, big): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(j, _)| j.target.kind == EntryKind::File && j.target.size <= BATCH_FILE_MAX);
    let mut queue: std::collections::VecDeque<Planned> = small.into();
    while !queue.is_empty() {
        // One job per content hash per batch: the first fetch serves the
        // duplicates in a later batch.
        let mut seen = std::collections::HashSet::new();
        let mut batch = Vec::new();
        let mut later = Vec::new();
        while let Some(p) = queue.pop_front() {
            if batch.len() >= BATCH_FILES {
                queue.push_front(p);
                break;
            }
            if seen.insert(p.0.target.hash) {
                batch.push(p);
            } else {
                later.push(p);
            }
        }
        queue.extend(later);
        let providers = order_providers(&providers, &batch);
        let mut settles_by_path: HashMap<String, Vec<Key>> = HashMap::new();
        let jobs: Vec<Job> = batch
            .into_iter()
            .map(|(j, s)| {
                settles_by_path.insert(j.path.clone(), s);
                j
            })
            .collect();
        for (job, out) in apply_batch(ctx.clone(), jobs, providers).await {
            let settles = settles_by_path.remove(&job.path).unwrap_or_default();
            handle(out, &job, settles, &mut report, &mut pending_commit);
        }
        commit(&ctx, flush(&mut pending_commit, true), &tags).await;
    }
    let mut groups: BTreeMap<Option<[u8; 32]>, Vec<Planned>> = BTreeMap::new();
    for (j, s) in big {
        groups.entry(j.target.hash).or_default().push((j, s));
    }
    let mut results = n0_future::stream::iter(groups.into_values())
        .map(|group| {
            let ctx = ctx.clone();
            let providers = order_providers(&providers, &group);
            async move {
                let mut outs = Vec::with_capacity(group.len());
                for (job, settles) in group {
                    let out = apply(ctx.clone(), job.clone(), providers.clone()).await;
                    outs.push((out, job, settles));
                }
                outs
            }
        })
        .buffered_unordered(BIG_CONCURRENCY);
    while let Some(outs) = results.next().await {
        for (out, job, settles) in outs {
            handle(out, &job, settles, &mut report, &mut pending_commit);
        }
        commit(&ctx, flush(&mut pending_commit, false), &tags).await;
    }
    drop(results);
    commit(&ctx, flush(&mut pending_commit, true), &tags).await;
    for (job, settles) in deletes {
        let out = apply(ctx.clone(), job.clone(), providers.clone()).await;
        handle(out, &job, settles, &mut report, &mut pending_commit);
    }
    commit(&ctx, flush(&mut pending_commit, true), &tags).await;
    drop(tags);
    report
}

/// Ask the peer that announced the entry first.
fn order_providers(all: &[EndpointId], group: &[Planned]) -> Vec<EndpointId> {
    let mut out: Vec<EndpointId> = Vec::with_capacity(all.len());
    for (j, _) in group {
        if let Some(p) = all.iter().find(|p| *p.as_bytes() == j.from) {
            if !out.contains(p) {
                out.push(*p);
            }
        }
    }
    for p in all {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}
