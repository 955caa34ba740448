//! Watcher (one per folder): notices changes and hands the hasher batches
//! of paths that are *stable*.
//!
//! Sources: OS notifications ([`os_watch`]: inotify, or polling for bind
//! mounts and network filesystems), a full rescan ([`rescan`]) at start-up
//! and every `rescan` interval as a safety net, a rescan whenever the event
//! queue overflows, paths the receiver hands back, and paths the hasher
//! could not commit (retried after a backoff).
//!
//! Settle rule ([`settle`], plain state tested with explicit times): a path
//! is handed on only once its `lstat` is unchanged for `settle` after the
//! last event, so a file still being written is never sent. This actor does
//! the I/O around it: `lstat` calls and walks on the blocking pool, one
//! timer armed for the exact next wake-up, and one batch at a time in
//! flight to the hasher (backpressure; paths arriving meanwhile are
//! coalesced). At most one scan runs and one more is pending.

mod os_watch;
mod rescan;
pub mod settle;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::{
    folder::Folder,
    fsutil::{meta_from_stat, rel_of},
    hasher::{
        msg::{HashOutcome, HashPaths},
        Hasher,
    },
    health::Health,
    ignore::IGNORE_FILE,
    msg::Ping,
    record::DiskState,
    rt,
    slot::Slot,
};
use os_watch::{Forward, OsWatch, WatchSpec};
use rescan::{scan_folder, ScanResult};
use settle::{Marked, Settle};

pub use settle::MAX_DIRTY;

pub mod msg {
    use std::path::PathBuf;

    use actix::Message;

    /// Raw paths from the OS watcher.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct FsEvent {
        pub paths: Vec<PathBuf>,
    }

    /// Look at these paths again (the receiver saw them change under it).
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct MarkDirty {
        pub paths: Vec<String>,
    }

    /// Walk the whole folder (coalesced: at most one pending).
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct Rescan;

    /// The hasher was replaced: a batch in flight to the old one will
    /// never be answered (or its answer no longer counts). Send its paths
    /// again, to the new one.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct HasherReplaced;
}

use msg::{FsEvent, MarkDirty, Rescan};

/// Most paths per hasher batch: a batch is one reply the watcher waits
/// for, and the hasher commits in chunks of its own, so this only bounds
/// how much one reply carries.
pub const BATCH: usize = 1000;

/// Events queued for this actor before the OS watcher's sends fail and it
/// raises the overflow flag instead (a rescan then finds the changes): a
/// burst of a few thousand events is absorbed, a flood costs one walk.
const MAILBOX: usize = 4096;

/// The safety-net tick: picks up the overflow flag (set on notify's
/// thread, which cannot wake us) and any timer missed; precise wake-ups
/// come from [`Watcher::arm`]. A quarter second bounds how long an
/// overflow waits for its rescan without costing anything when idle.
const TICK: Duration = Duration::from_millis(250);

/// Shortest timer armed: a path due "now" is looked at after this, so the
/// events of one burst (a `cp -r`, an editor's save dance) are coalesced
/// into one `lstat` round instead of one round per event.
const MIN_WAKE: Duration = Duration::from_millis(2);

pub struct Watcher {
    health: Arc<Health>,
    folder: Arc<Folder>,
    hasher: Slot<Hasher>,
    os_watch: Option<OsWatch>,
    overflow: Arc<AtomicBool>,
    settle: Settle,
    /// A hasher batch is in flight.
    /// The batch at the hasher, if one is: its number and its paths.
    in_flight: Option<(u64, Vec<String>)>,
    /// Numbers batches, so an answer to an abandoned one is ignored.
    batches_sent: u64,
    /// An `lstat` round is running.
    checking: bool,
    scanning: bool,
    scan_again: bool,
    timer_armed: bool,
}

impl Watcher {
    pub fn new(folder: Arc<Folder>, hasher: Slot<Hasher>, health: Arc<Health>) -> Self {
        Watcher {
            health,
            settle: Settle::new(folder.cfg.settle),
            folder,
            hasher,
            os_watch: None,
            overflow: Arc::new(AtomicBool::new(false)),
            in_flight: None,
            batches_sent: 0,
            checking: false,
            scanning: false,
            scan_again: false,
            timer_armed: false,
        }
    }

    fn mark(&mut self, rel: String, ctx: &mut Context<Self>) {
        if self.settle.mark(rel, Instant::now()) == Marked::Overflow {
            self.overflowed(ctx);
            return;
        }
        self.arm(ctx);
    }

    fn overflowed(&mut self, ctx: &mut Context<Self>) {
        warn!(
            folder = self.folder.id(),
            "too many changes to track one by one; rescanning"
        );
        self.request_scan(ctx);
    }

    /// Wake up exactly when the next dirty path or retry is due, so a file
    /// is handed on `settle` after its last change rather than at the next
    /// tick. At most one timer; none while an `lstat` round runs (its end
    /// arms again).
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if self.timer_armed || self.checking {
            return;
        }
        let now = Instant::now();
        let Some(next) = self.settle.next_wake(now) else {
            return;
        };
        let delay = next.saturating_duration_since(now).max(MIN_WAKE);
        self.timer_armed = true;
        ctx.run_later(delay, |act, ctx| {
            act.timer_armed = false;
            act.on_tick(ctx);
        });
    }

    fn start_os_watch(&mut self, ctx: &mut Context<Self>) {
        let forward = Forward {
            to: ctx.address().recipient(),
            overflow: self.overflow.clone(),
        };
        let spec = WatchSpec {
            folder: self.folder.id().to_string(),
            root: self.folder.cfg.path.clone(),
            mode: self.folder.cfg.watch,
            poll: self.folder.cfg.poll_interval,
        };
        // Setting up a recursive inotify watch walks the tree: not on our thread.
        let fut = rt::blocking(move || os_watch::start(&spec, forward));
        ctx.spawn(fut.into_actor(self).map(|res, act, _| match res {
            Ok(Ok(w)) => act.os_watch = Some(w),
            Ok(Err(e)) => {
                act.folder.status.error(format!("cannot watch folder: {e}"));
                warn!(
                    folder = act.folder.id(),
                    "cannot watch folder: {e}; relying on rescans"
                );
            }
            Err(e) => warn!(folder = act.folder.id(), "watch setup failed: {e}"),
        }));
    }

    fn request_scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            self.scan_again = true;
            return;
        }
        self.scanning = true;
        self.folder.status.scanning.store(true, Ordering::Relaxed);
        let folder = self.folder.clone();
        let started = Instant::now();
        ctx.spawn(
            rt::try_blocking(move || scan_folder(&folder))
                .into_actor(self)
                .map(move |res, act, ctx| act.scanned(res, started, ctx)),
        );
    }

    fn scanned(
        &mut self,
        res: Result<ScanResult, rescan::ScanError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.scanning = false;
        self.folder.status.scanning.store(false, Ordering::Relaxed);
        match res {
            Ok(r) => {
                debug!(
                    folder = self.folder.id(),
                    changed = r.changed.len(),
                    fresh = r.fresh.len(),
                    took = ?started.elapsed(),
                    "scan done"
                );
                self.settle.add_ready(r.changed);
                for p in r.fresh {
                    self.mark(p, ctx);
                }
            }
            Err(e) => self.folder.status.error(e.to_string()),
        }
        self.folder
            .status
            .initial_scan_done
            .store(true, Ordering::Relaxed);
        if std::mem::take(&mut self.scan_again) {
            self.request_scan(ctx);
        }
        self.flush(ctx);
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if self.overflow.swap(false, Ordering::Relaxed) {
            info!(
                folder = self.folder.id(),
                "change notifications overflowed; rescanning"
            );
            self.request_scan(ctx);
        }
        if self.settle.retry_due(Instant::now()) == Marked::Overflow {
            self.overflowed(ctx);
        }
        if !self.checking {
            self.look(ctx);
        }
        self.flush(ctx);
        self.arm(ctx);
    }

    /// `lstat` the paths that are due, on the blocking pool.
    fn look(&mut self, ctx: &mut Context<Self>) {
        let asked = Instant::now();
        let due = self.settle.due(asked);
        if due.is_empty() {
            return;
        }
        self.checking = true;
        let folder = self.folder.clone();
        ctx.spawn(
            rt::blocking(move || lstat_all(&folder, due))
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.checking = false;
                    match res {
                        Ok(results) => act.settle.looked(results, asked, Instant::now()),
                        // The paths stay dirty: the next tick looks again.
                        Err(e) => warn!(folder = act.folder.id(), "lstat round failed: {e}"),
                    }
                    act.flush(ctx);
                    act.arm(ctx);
                }),
        );
    }

    /// Send the next batch to the hasher if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || !self.settle.has_ready() {
            return;
        }
        let Some(hasher) = self.hasher.get() else {
            return;
        };
        let batch = self.settle.next_batch(BATCH);
        self.batches_sent += 1;
        let id = self.batches_sent;
        self.in_flight = Some((id, batch.clone()));
        ctx.spawn(
            hasher
                .send(HashPaths { paths: batch })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    // An abandoned batch's answer (a replaced hasher): its
                    // paths were sent again already.
                    if act.in_flight.as_ref().map(|(i, _)| *i) != Some(id) {
                        return;
                    }
                    let (_, sent) = act.in_flight.take().expect("checked");
                    match res {
                        Ok(out) => act.hashed(out, ctx),
                        Err(e) => {
                            // Hasher restarting: keep the paths.
                            debug!(folder = act.folder.id(), "hasher unavailable: {e}");
                            act.settle.add_ready(sent);
                        }
                    }
                }),
        );
    }

    /// Give up on the batch at a replaced hasher: its paths go out again.
    fn abandon_batch(&mut self, ctx: &mut Context<Self>) {
        if let Some((_, paths)) = self.in_flight.take() {
            debug!(
                folder = self.folder.id(),
                paths = paths.len(),
                "hasher replaced; sending its batch again"
            );
            self.settle.add_ready(paths);
        }
        self.flush(ctx);
    }

    /// A batch came back: deferred paths settle again, failed ones wait
    /// for the backoff.
    fn hashed(&mut self, out: HashOutcome, ctx: &mut Context<Self>) {
        for p in out.deferred {
            self.mark(p, ctx);
        }
        if !out.failed.is_empty() {
            debug!(
                folder = self.folder.id(),
                failed = out.failed.len(),
                "hashing failed; retrying after a backoff"
            );
        }
        self.settle.batch_done(out.failed, Instant::now());
        self.flush(ctx);
        self.arm(ctx);
    }
}

/// Change detection only (the hasher re-checks safely before acting): one
/// plain `lstat` per path; an unreadable path counts as missing.
fn lstat_all(folder: &Folder, paths: Vec<String>) -> Vec<(String, DiskState)> {
    paths
        .into_iter()
        .map(|p| {
            let disk = rustix::fs::lstat(folder.fs.abs(&p))
                .map(|st| meta_from_stat(&st))
                .unwrap_or(DiskState::Missing);
            (p, disk)
        })
        .collect()
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        if self.folder.fault().is_some() {
            return;
        }
        self.start_os_watch(ctx);
        self.request_scan(ctx);
        ctx.run_interval(TICK, |act, ctx| act.on_tick(ctx));
        let every = self.folder.cfg.rescan;
        ctx.run_interval(every, |act, ctx| act.request_scan(ctx));
    }
}

impl Handler<Ping> for Watcher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
        self.health.pong();
    }
}

impl Handler<FsEvent> for Watcher {
    type Result = ();

    fn handle(&mut self, ev: FsEvent, ctx: &mut Context<Self>) {
        let root = self.folder.cfg.path.clone();
        let ig = self.folder.ignore();
        for p in ev.paths {
            let Some(rel) = rel_of(&root, &p) else {
                // Events on the root itself (its mtime changes with every
                // entry added) say nothing the events for the entries don't.
                continue;
            };
            if rel == IGNORE_FILE {
                info!(
                    folder = self.folder.id(),
                    "ignore patterns changed; rescanning"
                );
                self.folder.reload_ignore();
                self.request_scan(ctx);
                continue;
            }
            if ig.is_ignored_regardless_of_kind(&rel) {
                continue;
            }
            self.mark(rel, ctx);
        }
    }
}

impl Handler<MarkDirty> for Watcher {
    type Result = ();

    fn handle(&mut self, m: MarkDirty, ctx: &mut Context<Self>) {
        for p in m.paths {
            self.mark(p, ctx);
        }
    }
}

impl Handler<msg::HasherReplaced> for Watcher {
    type Result = ();

    fn handle(&mut self, _: msg::HasherReplaced, ctx: &mut Context<Self>) {
        self.abandon_batch(ctx);
    }
}

impl Handler<Rescan> for Watcher {
    type Result = ();

    fn handle(&mut self, _: Rescan, ctx: &mut Context<Self>) {
        self.request_scan(ctx);
    }
}
