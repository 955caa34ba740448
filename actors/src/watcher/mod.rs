//! Watcher (one per folder): notices changes and hands the hasher batches
//! of paths that are *stable*.
//!
//! Sources: OS notifications ([`os_watch`]: inotify, or polling for bind
//! mounts and network filesystems), a look into every directory that
//! appears, once it is watched ([`new_dirs`]: what was written into it
//! before its watch existed produced no event), a full rescan ([`rescan`])
//! at start-up (begun once the OS watch is up, so no change falls between
//! the two) and every `rescan` interval as a safety net, a rescan
//! whenever the event queue overflows, paths the receiver hands back, and
//! paths the hasher could not commit (retried after a backoff).
//!
//! Settle rule ([`settle`], plain state tested with explicit times): a path
//! is handed on only once its `lstat` is unchanged for `settle` after the
//! last event, so a file still being written is never sent; a file whose
//! writer signalled it is done waits much less (closed after writing:
//! [`settle::CLOSE_WAIT`]; moved into place: not at all), and the hasher
//! hashes it at once only while it still shows what the watcher saw
//! (the snapshot re-check before the commit stays). This actor does
//! the I/O around it: `lstat` calls and walks on the blocking pool, one
//! timer armed for the exact next wake-up, and one batch at a time in
//! flight to the hasher (backpressure; paths arriving meanwhile are
//! coalesced). At most one scan runs and one more is pending; at most one
//! look into new directories runs, the ones appearing meanwhile wait.
//!
//! Supervision: scans, looks into new directories and `lstat` rounds are
//! work of this incarnation (`Health::begin`, run through `Health::spawn`)
//! and report progress per entry. The folder's live status says whether
//! the watcher still holds local changes the index lacks
//! (`FolderStatus::unindexed`), so `in_sync` is never claimed on the
//! strength of the index alone.

mod new_dirs;
mod os_watch;
mod rescan;
pub mod settle;

use std::{
    collections::{BTreeSet, VecDeque},
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
use settle::{Marked, Settle, Signal};

pub use settle::MAX_DIRTY;

pub mod msg {
    use std::path::PathBuf;

    use actix::Message;

    use super::settle::Signal;

    /// Raw paths from the OS watcher.
    #[derive(Debug, Message)]
    #[rtype(result = "()")]
    pub struct FsEvent {
        pub paths: Vec<PathBuf>,
        /// The paths may be directories that just appeared (created or
        /// moved in): what is inside them is looked at once they are
        /// watched.
        pub appeared: bool,
        /// What the event says of the writer.
        pub signal: Signal,
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
/// for, and the hasher commits in groups of its own, so this bounds how
/// much one reply carries. A batch starts by classifying and ends with
/// its last commit, each on one thread: a large drop of files (the first
/// scan of a folder) pays that once per batch, partly hidden by the
/// second batch in flight ([`IN_FLIGHT`]). S7, 50,000 files: 1.57–1.70 s
/// with 8,192 paths a batch and 512-file commits against 1.79–2.11 s
/// with 2,048 and 64 (alternating builds); 65,536 made no difference
/// beyond the noise (medians 1.70 against 1.74 s, six runs each) and
/// raised peak RSS by 8 MiB.
pub const BATCH: usize = 8192;

/// Batches at the hasher at once. Two: the next batch is classified and
/// hashed while the last one's final commit runs on one thread (the
/// hasher keeps their commits in order, `hasher::Turns`). S7 (50,000
/// files, six batches): median 1.64 s over 15 runs against 1.76 s with
/// one in flight, alternating builds; the spread of either (1.4–2.2 s)
/// is larger than the gain.
const IN_FLIGHT: usize = 2;

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
    os_watch: Option<Arc<OsWatch>>,
    /// The OS watch is being set up: new directories wait for it.
    os_watch_starting: bool,
    overflow: Arc<AtomicBool>,
    settle: Settle,
    /// Directories that appeared and are not looked into yet.
    new_dirs: BTreeSet<String>,
    /// A look into new directories is running.
    looking_into: bool,
    /// The batches at the hasher ([`IN_FLIGHT`] at most), oldest first:
    /// their numbers and paths.
    in_flight: VecDeque<(u64, Batch)>,
    /// Numbers batches, so an answer to an abandoned one is ignored.
    batches_sent: u64,
    /// An `lstat` round is running.
    checking: bool,
    scanning: bool,
    scan_again: bool,
    /// A rescan for changes that may have been missed (events lost, ignore
    /// rules changed) is pending or running.
    catching_up: bool,
    timer_armed: bool,
    /// Tests: how long setting up the OS watch takes at least (a huge
    /// tree, a slow filesystem).
    #[cfg(test)]
    slow_watch_setup: Duration,
}

impl Watcher {
    pub fn new(folder: Arc<Folder>, hasher: Slot<Hasher>, health: Arc<Health>) -> Self {
        Watcher {
            health,
            settle: Settle::new(folder.cfg.settle),
            folder,
            hasher,
            os_watch: None,
            os_watch_starting: false,
            overflow: Arc::new(AtomicBool::new(false)),
            new_dirs: BTreeSet::new(),
            looking_into: false,
            in_flight: VecDeque::new(),
            batches_sent: 0,
            checking: false,
            scanning: false,
            scan_again: false,
            catching_up: false,
            timer_armed: false,
            #[cfg(test)]
            slow_watch_setup: Duration::ZERO,
        }
    }

    fn mark(&mut self, rel: String, ctx: &mut Context<Self>) {
        self.signalled(rel, Signal::Changed, ctx);
    }

    fn signalled(&mut self, rel: String, signal: Signal, ctx: &mut Context<Self>) {
        if self.settle.signalled(rel, signal, Instant::now()) == Marked::Overflow {
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
        self.rescan_for_lost_changes(ctx);
    }

    /// Changes were (or may have been) missed: only a walk finds them, and
    /// until it has, the index is known to lack them.
    fn rescan_for_lost_changes(&mut self, ctx: &mut Context<Self>) {
        self.catching_up = true;
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
        self.os_watch_starting = true;
        // Setting up a recursive inotify watch walks the tree: not on our
        // thread. Not counted as work: `notify` reports no progress while
        // it walks, and a huge tree must not read as a stall.
        #[cfg(test)]
        let slow = self.slow_watch_setup;
        let task = self.health.spawn(rt::blocking(move || {
            #[cfg(test)]
            std::thread::sleep(slow);
            os_watch::start(&spec, forward)
        }));
        ctx.spawn(task.into_actor(self).map(|res, act, ctx| {
            act.os_watch_starting = false;
            match res {
                Ok(Ok(Ok(w))) => act.os_watch = Some(Arc::new(w)),
                Ok(Ok(Err(e))) => {
                    act.folder.status.error(format!("cannot watch folder: {e}"));
                    warn!(
                        folder = act.folder.id(),
                        "cannot watch folder: {e}; relying on rescans"
                    );
                }
                Ok(Err(e)) => warn!(folder = act.folder.id(), "watch setup failed: {e}"),
                Err(_) => return, // retired: the replacement watches
            }
            // Only now: a file written after a scan that ran before the
            // watch existed would have produced neither an event nor a
            // row (the scan had passed), until the next hourly rescan.
            act.request_scan(ctx);
            act.look_into_new_dirs(ctx);
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
        let work = self.health.begin();
        // What the walk finds goes to the hasher while it walks on. A
        // retired incarnation's pieces go to its own address: nowhere.
        let me = ctx.address();
        let task = self.health.spawn(rt::try_blocking(move || {
            scan_folder(&folder, &|| work.progress(), &mut |paths| {
                me.do_send(ScanFound(paths))
            })
        }));
        ctx.spawn(task.into_actor(self).map(move |res, act, ctx| {
            // Cancelled: this incarnation was retired, its replacement scans.
            if let Ok(res) = res {
                act.scanned(res, started, ctx);
            }
        }));
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
        } else {
            // A scan that started after the loss has covered it.
            self.catching_up = false;
        }
        self.flush(ctx);
        self.publish();
    }

    /// Look into the directories that appeared, once the OS watch is up:
    /// make sure each is watched, then walk it and mark what is inside.
    fn look_into_new_dirs(&mut self, ctx: &mut Context<Self>) {
        if self.looking_into || self.os_watch_starting || self.new_dirs.is_empty() {
            return;
        }
        self.looking_into = true;
        let dirs = new_dirs::outermost(std::mem::take(&mut self.new_dirs));
        let (folder, watch) = (self.folder.clone(), self.os_watch.clone());
        let work = self.health.begin();
        let task = self.health.spawn(rt::blocking(move || {
            new_dirs::look_into(&folder, watch.as_deref(), &dirs, &|| work.progress())
        }));
        ctx.spawn(task.into_actor(self).map(|res, act, ctx| {
            act.looking_into = false;
            match res {
                Ok(Ok(found)) => act.found_in_new_dirs(found, ctx),
                Ok(Err(e)) => {
                    // What those directories hold is unknown: walk everything.
                    warn!(
                        folder = act.folder.id(),
                        "looking into new directories failed: {e}; rescanning"
                    );
                    act.rescan_for_lost_changes(ctx);
                }
                Err(_) => return, // retired: the replacement scans at start
            }
            act.look_into_new_dirs(ctx);
            act.publish();
        }));
    }

    fn found_in_new_dirs(&mut self, found: new_dirs::Found, ctx: &mut Context<Self>) {
        for (dir, e) in &found.unwatched {
            warn!(
                folder = self.folder.id(),
                path = %dir,
                "cannot watch new directory ({e}); its later changes wait for a rescan"
            );
            self.folder.status.error(format!("cannot watch {dir}: {e}"));
        }
        if found.errors > 0 {
            debug!(
                folder = self.folder.id(),
                errors = found.errors,
                "unreadable entries in new directories"
            );
        }
        for p in found.paths {
            self.mark(p, ctx);
        }
    }

    /// Tell the folder's status whether local changes are still on their
    /// way to the index.
    fn publish(&self) {
        let busy = !self.settle.is_idle()
            || !self.in_flight.is_empty()
            || self.looking_into
            || !self.new_dirs.is_empty()
            || self.catching_up
            || self.overflow.load(Ordering::Relaxed);
        self.folder.status.unindexed.store(busy, Ordering::Relaxed);
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if self.overflow.swap(false, Ordering::Relaxed) {
            info!(
                folder = self.folder.id(),
                "change notifications overflowed; rescanning"
            );
            self.rescan_for_lost_changes(ctx);
        }
        if self.settle.retry_due(Instant::now()) == Marked::Overflow {
            self.overflowed(ctx);
        }
        if !self.checking {
            self.look(ctx);
        }
        self.flush(ctx);
        self.arm(ctx);
        self.publish();
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
        let work = self.health.begin();
        let task = self.health.spawn(rt::blocking(move || {
            lstat_all(&folder, due, &|| work.progress())
        }));
        ctx.spawn(task.into_actor(self).map(move |res, act, ctx| {
            act.checking = false;
            match res {
                Ok(Ok(results)) => act.settle.looked(results, asked, Instant::now()),
                // The paths stay dirty: the next tick looks again.
                Ok(Err(e)) => warn!(folder = act.folder.id(), "lstat round failed: {e}"),
                Err(_) => return, // retired
            }
            act.flush(ctx);
            act.arm(ctx);
            act.publish();
        }));
    }

    /// Send the next batches to the hasher, up to [`IN_FLIGHT`].
    fn flush(&mut self, ctx: &mut Context<Self>) {
        while self.send_batch(ctx) {}
    }

    /// Send one batch if there is room and anything is ready; false if not.
    fn send_batch(&mut self, ctx: &mut Context<Self>) -> bool {
        // Paused: ready paths wait here (a resume sends a rescan, which
        // also finds whatever an overflow dropped meanwhile).
        if self.in_flight.len() >= IN_FLIGHT || !self.settle.has_ready() || self.folder.is_paused()
        {
            return false;
        }
        let Some(hasher) = self.hasher.get() else {
            return false;
        };
        let batch = self.settle.next_batch(BATCH);
        let msg = HashPaths {
            paths: batch.iter().map(|(p, _)| p.clone()).collect(),
            done: batch
                .iter()
                .filter_map(|(p, d)| Some((p.clone(), (*d)?)))
                .collect(),
        };
        self.batches_sent += 1;
        let id = self.batches_sent;
        self.in_flight.push_back((id, batch));
        self.publish();
        ctx.spawn(hasher.send(msg).into_actor(self).map(move |res, act, ctx| {
            // An abandoned batch's answer (a replaced hasher): its
            // paths were sent again already.
            let Some(at) = act.in_flight.iter().position(|(i, _)| *i == id) else {
                return;
            };
            let (_, sent) = act.in_flight.remove(at).expect("found");
            match res {
                Ok(out) => act.hashed(out, ctx),
                Err(e) => {
                    // Hasher restarting: keep the paths.
                    debug!(folder = act.folder.id(), "hasher unavailable: {e}");
                    act.settle.add_ready_again(sent);
                    act.publish();
                }
            }
        }));
        true
    }

    /// Give up on the batches at a replaced hasher: their paths go out
    /// again.
    fn abandon_batches(&mut self, ctx: &mut Context<Self>) {
        for (_, paths) in std::mem::take(&mut self.in_flight) {
            debug!(
                folder = self.folder.id(),
                paths = paths.len(),
                "hasher replaced; sending its batch again"
            );
            self.settle.add_ready_again(paths);
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
        self.publish();
    }
}

/// Ready paths, each with the state a look saw after its writer signalled
/// it was done (if it did).
type Batch = Vec<(String, Option<DiskState>)>;

/// Change detection only (the hasher re-checks safely before acting): one
/// plain `lstat` per path; an unreadable path counts as missing.
fn lstat_all(folder: &Folder, paths: Vec<String>, progress: &dyn Fn()) -> Vec<(String, DiskState)> {
    paths
        .into_iter()
        .map(|p| {
            progress();
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
        // The first scan starts once the OS watch is up (see there).
        self.start_os_watch(ctx);
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
                self.rescan_for_lost_changes(ctx);
                continue;
            }
            if ig.is_ignored_regardless_of_kind(&rel) {
                continue;
            }
            if ev.appeared {
                self.new_dirs.insert(rel.clone());
            }
            self.signalled(rel, ev.signal, ctx);
        }
        self.look_into_new_dirs(ctx);
        self.publish();
    }
}

/// Paths a running scan found new or changed so far ([`rescan::HAND_ON_AT`]
/// at a time): ready for the hasher at once, like the scan's result.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ScanFound(Vec<String>);

impl Handler<ScanFound> for Watcher {
    type Result = ();
    fn handle(&mut self, msg: ScanFound, ctx: &mut Context<Self>) {
        self.settle.add_ready(msg.0);
        self.flush(ctx);
        self.publish();
    }
}

impl Handler<MarkDirty> for Watcher {
    type Result = ();

    fn handle(&mut self, m: MarkDirty, ctx: &mut Context<Self>) {
        for p in m.paths {
            self.mark(p, ctx);
        }
        self.publish();
    }
}

impl Handler<msg::HasherReplaced> for Watcher {
    type Result = ();

    fn handle(&mut self, _: msg::HasherReplaced, ctx: &mut Context<Self>) {
        self.abandon_batches(ctx);
    }
}

impl Handler<Rescan> for Watcher {
    type Result = ();

    fn handle(&mut self, _: Rescan, ctx: &mut Context<Self>) {
        self.request_scan(ctx);
    }
}

#[cfg(test)]
mod tests;
