//! OS change notifications for one folder: `notify`'s native watcher
//! (inotify), or its poll watcher when the folder is configured so or the
//! native one cannot be set up (bind mounts, network filesystems, too few
//! inotify watches). Events go to the watcher as [`FsEvent`]s; anything
//! that means events were lost raises the overflow flag, and the watcher
//! rescans.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::Recipient;
use fleetsync_config::WatchMode;
use notify::{RecursiveMode, Watcher as _};
use tracing::warn;

use super::msg::FsEvent;

pub type OsWatch = Box<dyn notify::Watcher + Send>;

/// Hands `notify`'s events to the watcher actor.
#[derive(Clone)]
pub struct Forward {
    pub to: Recipient<FsEvent>,
    /// Set when events were (or may have been) lost: the watcher rescans.
    pub overflow: Arc<AtomicBool>,
}

impl notify::EventHandler for Forward {
    fn handle_event(&mut self, res: notify::Result<notify::Event>) {
        match res {
            Ok(ev) if ev.need_rescan() => self.overflow.store(true, Ordering::Relaxed),
            // Reads (ours included: scans, hashing, serving) change nothing.
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
            Ok(ev) => {
                // A full mailbox: the rescan finds what this event said.
                if self.to.try_send(FsEvent { paths: ev.paths }).is_err() {
                    self.overflow.store(true, Ordering::Relaxed);
                }
            }
            Err(_) => self.overflow.store(true, Ordering::Relaxed),
        }
    }
}

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
        .with_poll_interval(spec.poll);
    if spec.mode == WatchMode::Poll {
        return start_poll(&spec.root, forward, cfg);
    }
    let native = notify::RecommendedWatcher::new(forward.clone(), cfg)
        .and_then(|w| watch(w, &spec.root).map(|w| Box::new(w) as OsWatch));
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
    Ok(Box::new(watch(w, root)?))
}

/// Watch `root` recursively, except our own `.fleetsync/`: temp and refs
/// files generate no work (their events would be filtered out anyway).
fn watch<W: notify::Watcher>(mut w: W, root: &Path) -> notify::Result<W> {
    w.watch(root, RecursiveMode::Recursive)?;
    // Best effort: if it cannot be unwatched, its events are ignored later.
    let _ = w.unwatch(&root.join(fleetsync_mesh::model::RESERVED_DIR));
    Ok(w)
}
