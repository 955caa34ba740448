//! Watcher (one per folder): notices changes and hands the hasher batches
//! of paths that are *stable*.
//!
//! Sources: OS notifications through `notify` (inotify; or its poll
//! watcher for bind mounts and network filesystems), a full rescan at
//! start-up and every `rescan` interval as a safety net, a rescan whenever
//! the event queue overflows, and paths the receiver hands back.
//!
//! Settle rule: a path is handed on only once its `lstat` is unchanged for
//! `settle` after the last event, so a file still being written is never
//! sent. `lstat` calls and walks run on the blocking pool; the actor keeps
//! only small maps, bounded: past [`MAX_DIRTY`] paths it drops them and
//! rescans instead (at most one scan pending, like Syncthing's folder loop).
//! One batch at a time is in flight to the hasher (backpressure); paths that
//! keep arriving meanwhile are coalesced.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use fleetsync_config::WatchMode;
use fleetsync_mesh::model::EntryKind;
use notify::{RecursiveMode, Watcher as _};
use tracing::{debug, info, warn};

use crate::{
    folder::Folder,
    fsutil::rel_of,
    hasher::{msg::HashPaths, Hasher},
    ignore::IGNORE_FILE,
    index::now_ns,
    msg::Ping,
    record::DiskState,
    record::Record,
    rt, scan,
    slot::Slot,
};

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
}

use msg::{FsEvent, MarkDirty, Rescan};

/// Most paths tracked individually before falling back to a rescan.
pub const MAX_DIRTY: usize = 100_000;
/// Most paths per hasher batch.
pub const BATCH: usize = 1000;
const MAILBOX: usize = 4096;

struct Dirty {
    changed: Instant,
    seen: Option<DiskState>,
}

pub struct Watcher {
    ctx: Arc<Folder>,
    hasher: Slot<Hasher>,
    os_watch: Option<Box<dyn notify::Watcher + Send>>,
    overflow: Arc<AtomicBool>,
    dirty: HashMap<String, Dirty>,
    ready: BTreeSet<String>,
    in_flight: bool,
    checking: bool,
    scanning: bool,
    scan_again: bool,
    timer_armed: bool,
}

impl Watcher {
    pub fn new(ctx: Arc<Folder>, hasher: Slot<Hasher>) -> Self {
        Watcher {
            ctx,
            hasher,
            os_watch: None,
            overflow: Arc::new(AtomicBool::new(false)),
            dirty: HashMap::new(),
            ready: BTreeSet::new(),
            in_flight: false,
            checking: false,
            scanning: false,
            scan_again: false,
            timer_armed: false,
        }
    }

    fn settle(&self) -> Duration {
        self.ctx.cfg.settle
    }

    /// The safety-net tick (overflow flag, missed timers); precise wake-ups
    /// come from [`Self::arm`].
    fn tick_every(&self) -> Duration {
        Duration::from_millis(250)
    }

    fn mark(&mut self, rel: String, ctx: &mut Context<Self>) {
        if self.dirty.len() >= MAX_DIRTY {
            warn!(
                folder = self.ctx.id(),
                "too many changes to track one by one; rescanning"
            );
            self.dirty.clear();
            self.request_scan(ctx);
            return;
        }
        self.dirty.insert(
            rel,
            Dirty {
                changed: Instant::now(),
                seen: None,
            },
        );
        self.arm(ctx);
    }

    /// Wake up exactly when the earliest dirty path is due (first look, or
    /// settle elapsed), so a file is handed on `settle` after its last
    /// change rather than at the next coarse tick. At most one timer.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        if self.timer_armed || self.checking || self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let settle = self.settle();
        let next = self
            .dirty
            .values()
            .map(|d| {
                if d.seen.is_none() {
                    now
                } else {
                    d.changed + settle
                }
            })
            .min()
            .unwrap_or(now);
        let delay = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(2));
        self.timer_armed = true;
        ctx.run_later(delay, |act, ctx| {
            act.timer_armed = false;
            act.on_tick(ctx);
        });
    }

    fn start_os_watch(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let overflow = self.overflow.clone();
        let root = self.ctx.cfg.path.clone();
        let mode = self.ctx.cfg.watch;
        let poll = self.ctx.cfg.poll_interval;
        let folder = self.ctx.id().to_string();
        // Setting up a recursive inotify watch walks the tree: not on our thread.
        let fut = rt::blocking(move || {
            let handler = move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if ev.need_rescan() => overflow.store(true, Ordering::Relaxed),
                // Reads (ours included: scans, hashing, serving) change nothing.
                Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                Ok(ev) => {
                    if addr.try_send(FsEvent { paths: ev.paths }).is_err() {
                        overflow.store(true, Ordering::Relaxed);
                    }
                }
                Err(_) => overflow.store(true, Ordering::Relaxed),
            };
            let cfg = notify::Config::default()
                .with_follow_symlinks(false)
                .with_poll_interval(poll);
            // Our own temp and refs files generate no work: stop watching
            // .fleetsync/ (events for it would be filtered out anyway).
            let reserved = root.join(fleetsync_mesh::model::RESERVED_DIR);
            let mk_poll = |h| -> notify::Result<Box<dyn notify::Watcher + Send>> {
                let mut w = notify::PollWatcher::new(h, cfg)?;
                w.watch(&root, RecursiveMode::Recursive)?;
                let _ = w.unwatch(&reserved);
                Ok(Box::new(w))
            };
            match mode {
                WatchMode::Poll => mk_poll(handler),
                WatchMode::Notify => {
                    let h2 = handler.clone();
                    let native = notify::RecommendedWatcher::new(handler, cfg).and_then(|mut w| {
                        w.watch(&root, RecursiveMode::Recursive)?;
                        let _ = w.unwatch(&reserved);
                        Ok(Box::new(w) as Box<dyn notify::Watcher + Send>)
                    });
                    match native {
                        Ok(w) => Ok(w),
                        Err(e) => {
                            warn!(
                                folder,
                                "OS file notifications unavailable ({e}); falling back to polling every {poll:?} (raise fs.inotify.max_user_watches to fix)"
                            );
                            mk_poll(h2)
                        }
                    }
                }
            }
        });
        ctx.spawn(fut.into_actor(self).map(|res, act, _| match res {
            Ok(Ok(w)) => act.os_watch = Some(w),
            Ok(Err(e)) => {
                act.ctx.status.error(format!("cannot watch folder: {e}"));
                warn!(
                    folder = act.ctx.id(),
                    "cannot watch folder: {e}; relying on rescans"
                );
            }
            Err(e) => warn!(folder = act.ctx.id(), "watch setup failed: {e}"),
        }));
    }

    fn request_scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            self.scan_again = true;
            return;
        }
        self.scanning = true;
        self.ctx.status.scanning.store(true, Ordering::Relaxed);
        let fctx = self.ctx.clone();
        let started = Instant::now();
        ctx.spawn(
            rt::blocking(move || scan_folder(&fctx))
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.scanning = false;
                    act.ctx.status.scanning.store(false, Ordering::Relaxed);
                    match res {
                        Ok(r) => {
                            debug!(
                                folder = act.ctx.id(),
                                changed = r.changed.len(),
                                fresh = r.fresh.len(),
                                took = ?started.elapsed(),
                                "scan done"
                            );
                            act.ready.extend(r.changed);
                            for p in r.fresh {
                                act.mark(p, ctx);
                            }
                        }
                        Err(e) => act.ctx.status.error(e.to_string()),
                    }
                    act.ctx
                        .status
                        .initial_scan_done
                        .store(true, Ordering::Relaxed);
                    if std::mem::take(&mut act.scan_again) {
                        act.request_scan(ctx);
                    }
                    act.flush(ctx);
                }),
        );
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if self.overflow.swap(false, Ordering::Relaxed) {
            info!(
                folder = self.ctx.id(),
                "change notifications overflowed; rescanning"
            );
            self.request_scan(ctx);
        }
        if !self.checking && !self.dirty.is_empty() {
            let now = Instant::now();
            let settle = self.settle();
            let due: Vec<String> = self
                .dirty
                .iter()
                .filter(|(_, d)| d.seen.is_none() || now.duration_since(d.changed) >= settle)
                .map(|(p, _)| p.clone())
                .collect();
            if !due.is_empty() {
                self.checking = true;
                let fctx = self.ctx.clone();
                ctx.spawn(
                    rt::blocking(move || {
                        due.into_iter()
                            .map(|p| {
                                // Change detection only (the hasher re-checks
                                // safely before acting): one plain lstat.
                                let n = rustix::fs::lstat(fctx.fs.abs(&p))
                                    .map(|st| crate::fsutil::meta_from_stat(&st))
                                    .unwrap_or(DiskState::Missing);
                                (p, n)
                            })
                            .collect::<Vec<_>>()
                    })
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        act.checking = false;
                        let Ok(checked) = res else { return };
                        let after = Instant::now();
                        let settle = act.settle();
                        for (p, node) in checked {
                            let Some(d) = act.dirty.get_mut(&p) else {
                                continue;
                            };
                            if d.changed > now {
                                continue; // a newer event arrived meanwhile
                            }
                            match d.seen {
                                Some(prev)
                                    if prev == node
                                        && after.duration_since(d.changed) >= settle =>
                                {
                                    act.dirty.remove(&p);
                                    act.ready.insert(p);
                                }
                                Some(prev) if prev == node => {}
                                Some(_) => {
                                    d.seen = Some(node);
                                    d.changed = after;
                                }
                                None => d.seen = Some(node),
                            }
                        }
                        act.flush(ctx);
                        act.arm(ctx);
                    }),
                );
            }
        }
        self.flush(ctx);
        self.arm(ctx);
    }

    /// Send the next batch to the hasher if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.ready.is_empty() {
            return;
        }
        let Some(hasher) = self.hasher.get() else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH.min(self.ready.len()));
        while batch.len() < BATCH {
            match self.ready.pop_first() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        self.in_flight = true;
        let sent = batch.clone();
        ctx.spawn(
            hasher
                .send(HashPaths { paths: batch })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.in_flight = false;
                    match res {
                        Ok(out) => {
                            for p in out.deferred {
                                act.mark(p, ctx);
                            }
                        }
                        Err(e) => {
                            // Hasher restarting: keep the paths.
                            debug!(folder = act.ctx.id(), "hasher unavailable: {e}");
                            act.ready.extend(sent);
                            return;
                        }
                    }
                    act.flush(ctx);
                }),
        );
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        if self.ctx.fault().is_some() {
            return;
        }
        self.start_os_watch(ctx);
        self.request_scan(ctx);
        ctx.run_interval(self.tick_every(), |act, ctx| act.on_tick(ctx));
        let every = self.ctx.cfg.rescan;
        ctx.run_interval(every, |act, ctx| act.request_scan(ctx));
    }
}

impl Handler<Ping> for Watcher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<FsEvent> for Watcher {
    type Result = ();

    fn handle(&mut self, ev: FsEvent, ctx: &mut Context<Self>) {
        let root = self.ctx.cfg.path.clone();
        let ig = self.ctx.ignore();
        for p in ev.paths {
            let Some(rel) = rel_of(&root, &p) else {
                // Events on the root itself (its mtime changes with every
                // entry added) say nothing the events for the entries don't.
                continue;
            };
            if rel == IGNORE_FILE {
                info!(
                    folder = self.ctx.id(),
                    "ignore patterns changed; rescanning"
                );
                self.ctx.reload_ignore();
                self.request_scan(ctx);
                continue;
            }
            if ig.is_ignored(&rel, false) && ig.is_ignored(&rel, true) {
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

impl Handler<Rescan> for Watcher {
    type Result = ();

    fn handle(&mut self, _: Rescan, ctx: &mut Context<Self>) {
        self.request_scan(ctx);
    }
}

struct ScanResult {
    changed: Vec<String>,
    fresh: Vec<String>,
}

/// Compare the disk with the index; return paths worth hashing.
fn scan_folder(ctx: &Folder) -> ScanResult {
    let mut out = ScanResult {
        changed: vec![],
        fresh: vec![],
    };
    if ctx.fault().is_some() {
        return out;
    }
    if !ctx.fs.has_marker() {
        let msg = format!(
            "folder marker {}/.fleetsync is missing: is the disk mounted? (if the folder was emptied on purpose: mkdir {}/.fleetsync)",
            ctx.cfg.path.display(),
            ctx.cfg.path.display()
        );
        warn!(folder = ctx.id(), "{msg}; sync paused");
        ctx.set_fault(Some(msg));
        return out;
    }
    let mut known: HashMap<String, Record> = HashMap::new();
    if let Err(e) = ctx.index.for_each(ctx.id(), |r| {
        if !r.entry.deleted {
            known.insert(r.entry.path.clone(), r.clone());
        }
    }) {
        ctx.status.error(format!("index: {e}"));
        return out;
    }
    let (found, errors) = scan::walk(&ctx.cfg.path, &ctx.ignore());
    for e in errors.iter().take(5) {
        warn!(folder = ctx.id(), "scan: {e}");
    }
    let settle_ns = ctx.cfg.settle.as_nanos() as i64;
    let now = now_ns();
    for (rel, meta) in found {
        let unchanged = known.remove(&rel).is_some_and(|r| {
            r.entry.kind == meta.kind
                && match meta.kind {
                    EntryKind::Directory => r.entry.mode == meta.stat.mode,
                    _ => r.local == Some(meta.stat),
                }
        });
        if unchanged {
            continue;
        }
        // Written moments ago (a future mtime is a skewed clock, not "fresh").
        let age = now - meta.stat.mtime_ns;
        if meta.kind == EntryKind::File && (0..settle_ns).contains(&age) {
            out.fresh.push(rel);
        } else {
            out.changed.push(rel);
        }
    }
    // Known but not found: deleted while we were not looking.
    out.changed.extend(known.into_keys());
    out
}
