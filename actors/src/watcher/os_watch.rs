//! OS change notifications for one folder: `notify`'s native watcher
//! (inotify), or its poll watcher when the folder is configured so or the
//! native one cannot be set up (bind mounts, network filesystems, too few
//! inotify watches). Events go to the watcher as [`FsEvent`]s; anything
//! that means events were lost raises the overflow flag, and the watcher
//! rescans.
//!
//! Two inotify events say the writer is done with a file, and let it skip
//! most of the settle wait ([`Signal`]): `IN_CLOSE_WRITE` (notify's
//! `Access(Close(Write))`) and `IN_MOVED_TO` (`Modify(Name(To))`, and the
//! new name of `Modify(Name(Both))`). Other accesses (opens, reads: ours
//! too) are not asked for ([`EVENTS`]), and dropped if they come. The
//! polling watch tells neither, so with it every change waits `settle`.
//!
//! The recursive inotify watch has a gap: `notify` reports a new directory
//! first and adds its watch later (after it has read every queued event),
//! so whatever is written into the directory meanwhile produces no event.
//! Events for paths that may be directories which just appeared say so
//! (`appeared`), and [`OsWatch::watch_new_dir`] lets the watcher make sure
//! such a directory is watched before it looks inside.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use actix::Recipient;
use fleetsync_config::WatchMode;
use notify::{
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
    EventKind, EventKindMask, RecursiveMode, Watcher as _,
};
use tracing::warn;

use super::{msg::FsEvent, settle::Signal};

/// The running OS watch of one folder.
pub struct OsWatch {
    inner: Mutex<Box<dyn notify::Watcher + Send>>,
    /// inotify (not polling): only its watches have the new-directory gap.
    native: bool,
}

impl OsWatch {
    /// Make sure the directory `abs` (and everything below it) is watched,
    /// and return only once it is: whatever is created in it afterwards
    /// produces events. Blocking (it waits for `notify`'s thread). A
    /// polling watch sees new directories whole at its next poll anyway.
    pub fn watch_new_dir(&self, abs: &Path) -> notify::Result<()> {
        if !self.native {
            return Ok(());
        }
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.watch(abs, RecursiveMode::Recursive)
    }
}

/// Hands `notify`'s events to the watcher actor.
#[derive(Clone)]
pub struct Forward {
    pub to: Recipient<FsEvent>,
    /// Set when events were (or may have been) lost: the watcher rescans.
    pub overflow: Arc<AtomicBool>,
}

impl Forward {
    fn send(&self, paths: Vec<PathBuf>, appeared: bool, signal: Signal) {
        let msg = FsEvent {
            paths,
            appeared,
            signal,
        };
        // A full mailbox: the rescan finds what this event said.
        if self.to.try_send(msg).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}

impl notify::EventHandler for Forward {
    fn handle_event(&mut self, res: notify::Result<notify::Event>) {
        let ev = match res {
            Ok(ev) if !ev.need_rescan() => ev,
            _ => return self.overflow.store(true, Ordering::Relaxed),
        };
        match ev.kind {
            // Both names of a rename (inotify sends `From` and `To` for
            // them as well): the old one changed, the new one moved in.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                let mut paths = ev.paths;
                let to = (paths.len() == 2).then(|| paths.split_off(1));
                self.send(paths, false, Signal::Changed);
                if let Some(to) = to {
                    self.send(to, false, Signal::MovedIn);
                }
            }
            kind => {
                if let Some(signal) = signal_of(&kind) {
                    self.send(ev.paths, may_be_a_new_dir(&kind), signal);
                }
            }
        }
    }
}

/// What an event says of the writer; `None`: it changes nothing (opens
/// and reads, ours included: scans, hashing, serving).
pub fn signal_of(kind: &EventKind) -> Option<Signal> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Signal::Closed),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Signal::MovedIn),
        _ => Some(Signal::Changed),
    }
}

/// May this event's path be a directory that just appeared (created, or
/// moved in: a rename does not say whether it moved a directory)? The
/// polling watch reports every new path as `Create(Any)` and has no gap:
/// those are not flagged.
pub fn may_be_a_new_dir(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(CreateKind::Folder)
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any))
    )
}

/// What inotify is asked for: changes, and the close of a file written
/// (`IN_CLOSE_WRITE`). Not opens and reads: every file the node itself
/// opens (scans, hashing, serving) would queue an event and wake
/// `notify`'s thread: a quarter of the CPU of indexing a folder of many
/// small files (S7, docs/benchmarks.md).
const EVENTS: EventKindMask = EventKindMask::CORE.union(EventKindMask::ACCESS_CLOSE);

/// Where and how to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub folder: String,
    pub root: PathBuf,
    pub mode: WatchMode,
    pub poll: Duration,
}

/// Start watching `spec.root` recursively (blocking: a recursive inotify
/// watch walks the tree). Falls back to polling if notifications are
/// unavailable.
pub fn start(spec: &WatchSpec, forward: Forward) -> notify::Result<OsWatch> {
    let cfg = notify::Config::default()
        .with_follow_symlinks(false)
        .with_poll_interval(spec.poll)
        .with_event_kinds(EVENTS);
    if spec.mode == WatchMode::Poll {
        return start_poll(&spec.root, forward, cfg);
    }
    let native = notify::RecommendedWatcher::new(forward.clone(), cfg)
        .and_then(|w| watch(w, &spec.root))
        .map(|w| OsWatch {
            inner: Mutex::new(Box::new(w)),
            native: true,
        });
    native.or_else(|e| {
        warn!(
            folder = spec.folder,
            "OS file notifications unavailable ({e}); falling back to polling every {:?} (raise fs.inotify.max_user_watches to fix)",
            spec.poll
        );
        start_poll(&spec.root, forward, cfg)
    })
}

fn start_poll(root: &Path, forward: Forward, cfg: notify::Config) -> notify::Result<OsWatch> {
    let w = notify::PollWatcher::new(forward, cfg)?;
    Ok(OsWatch {
        inner: Mutex::new(Box::new(watch(w, root)?)),
        native: false,
    })
}

/// Watch `root` recursively, except our own `.fleetsync/`: temp and refs
/// files generate no work (their events would be filtered out anyway).
fn watch<W: notify::Watcher>(mut w: W, root: &Path) -> notify::Result<W> {
    w.watch(root, RecursiveMode::Recursive)?;
    // Best effort: if it cannot be unwatched, its events are ignored later.
    let _ = w.unwatch(&root.join(fleetsync_mesh::model::RESERVED_DIR));
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    #[test]
    fn closes_after_writing_and_names_moved_in_signal_the_writer_is_done() {
        use notify::event::{AccessKind, AccessMode, MetadataKind};
        let cases = [
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                Some(Signal::Closed),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                Some(Signal::MovedIn),
            ),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), None),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), None),
            (EventKind::Access(AccessKind::Read), None),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                Some(Signal::Changed),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                Some(Signal::Changed),
            ),
            (EventKind::Create(CreateKind::File), Some(Signal::Changed)),
            // All the polling watch reports: every change waits settle.
            (EventKind::Create(CreateKind::Any), Some(Signal::Changed)),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
                Some(Signal::Changed),
            ),
            (EventKind::Remove(RemoveKind::Any), Some(Signal::Changed)),
        ];
        for (k, want) in cases {
            assert_eq!(signal_of(&k), want, "{k:?}");
        }
    }

    /// What `Forward` sent: each message's paths and signal.
    type Sent = Vec<(Vec<PathBuf>, Signal)>;

    /// The events `Forward` sends for `ev`.
    fn forwarded(ev: notify::Event) -> Sent {
        use actix::Actor;
        struct Sink(Arc<Mutex<Sent>>);
        impl Actor for Sink {
            type Context = actix::Context<Self>;
        }
        impl actix::Handler<FsEvent> for Sink {
            type Result = ();
            fn handle(&mut self, m: FsEvent, _: &mut Self::Context) {
                self.0.lock().unwrap().push((m.paths, m.signal));
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let sys = actix::System::new();
        let got2 = got.clone();
        sys.block_on(async move {
            let addr = Sink(got2).start();
            let mut fwd = Forward {
                to: addr.clone().recipient(),
                overflow: Arc::new(AtomicBool::new(false)),
            };
            notify::EventHandler::handle_event(&mut fwd, Ok(ev));
            // A round trip: every message sent before it was handled.
            addr.send(FsEvent {
                paths: vec![],
                appeared: false,
                signal: Signal::Changed,
            })
            .await
            .unwrap();
        });
        let mut v = std::mem::take(&mut *got.lock().unwrap());
        v.pop();
        v
    }

    #[test]
    fn a_rename_within_the_folder_moves_its_new_name_in() {
        let ev = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/f/old".into())
            .add_path("/f/new".into());
        assert_eq!(
            forwarded(ev),
            vec![
                (vec![PathBuf::from("/f/old")], Signal::Changed),
                (vec![PathBuf::from("/f/new")], Signal::MovedIn)
            ]
        );
        let read = notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Read)))
            .add_path("/f/a".into());
        assert!(forwarded(read).is_empty(), "reads are dropped");
    }

    #[test]
    fn only_created_directories_and_names_moved_in_may_be_new_directories() {
        let new_dir = [
            EventKind::Create(CreateKind::Folder),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
        ];
        for k in new_dir {
            assert!(may_be_a_new_dir(&k), "{k:?}");
        }
        let not = [
            EventKind::Create(CreateKind::File),
            // The polling watch reports every new path so.
            EventKind::Create(CreateKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Remove(RemoveKind::Folder),
        ];
        for k in not {
            assert!(!may_be_a_new_dir(&k), "{k:?}");
        }
    }
}
