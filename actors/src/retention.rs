//! Retention (one per node): keeps what fleetsync stores from growing
//! without bound.
//!
//! - Temp files in each folder's `.fleetsync/tmp` left by a crash or an
//!   aborted transfer: all of them at start-up (before any receiver runs),
//!   then any older than [`TMP_MAX_AGE`] on every sweep.
//! - Blobs no index entry (current or pending) references: the blob
//!   store's garbage collector runs with [`gc_config`], whose protect
//!   callback reads the live set from the index. Files referenced in place
//!   are never deleted by it, only the store's bookkeeping for them.
//! - `refs` links the index released: kept for [`RELEASE_GRACE`] so a
//!   rename's create can reuse a delete's content, then removed (checked
//!   every [`RELEASE_GRACE`]); any other unused link on every sweep.
//! - In-memory maps are bounded by their owners (watcher dirty set,
//!   receiver retry map, history rows per path in the index).
//!
//! Left out for now: keeping previous versions of overwritten files, and
//! expiring tombstones (kept forever, so a node that was offline for months
//! cannot resurrect deleted files).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use actix::prelude::*;
use iroh_blobs::{
    store::{GcConfig, ProtectOutcome},
    Hash,
};
use tracing::{debug, info, warn};

use crate::{
    folder::{Folder, RELEASE_GRACE},
    index::Index,
    msg::Ping,
    rt,
};

pub const TMP_MAX_AGE: Duration = Duration::from_secs(3600);
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
pub const GC_EVERY: Duration = Duration::from_secs(600);

pub mod msg {
    use actix::Message;

    /// Sweep now (tests, `fleetsync doctor`).
    #[derive(Debug, Message)]
    #[rtype(result = "usize")]
    pub struct Sweep;
}

pub struct Retention {
    folders: Arc<HashMap<String, Arc<Folder>>>,
}

impl Retention {
    pub fn new(folders: Arc<HashMap<String, Arc<Folder>>>) -> Self {
        Retention { folders }
    }
}

impl Actor for Retention {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(RELEASE_GRACE, |act, ctx| {
            let folders = act.folders.clone();
            ctx.spawn(
                rt::blocking(move || {
                    for f in folders.values() {
                        f.expire_released(RELEASE_GRACE);
                    }
                })
                .into_actor(act)
                .map(|_, _, _| ()),
            );
        });
        ctx.run_interval(SWEEP_EVERY, |act, ctx| {
            let folders = act.folders.clone();
            ctx.spawn(
                rt::blocking(move || sweep_all(&folders, TMP_MAX_AGE))
                    .into_actor(act)
                    .map(|_, _, _| ()),
            );
        });
    }
}

impl Handler<Ping> for Retention {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<msg::Sweep> for Retention {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: msg::Sweep, _: &mut Context<Self>) -> Self::Result {
        let folders = self.folders.clone();
        Box::pin(async move {
            rt::blocking(move || sweep_all(&folders, TMP_MAX_AGE))
                .await
                .unwrap_or(0)
        })
    }
}

fn sweep_all(folders: &HashMap<String, Arc<Folder>>, max_age: Duration) -> usize {
    folders
        .values()
        .map(|f| sweep_tmp(f, max_age) + sweep_refs(f, max_age))
        .sum()
}

/// Remove `refs` links no record uses and no abandoned apply kept, once
/// older than `max_age` (so a link made a moment ago for a commit in
/// flight survives).
pub fn sweep_refs(ctx: &Folder, max_age: Duration) -> usize {
    let dir = ctx.fs.refs_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut keep = match ctx.index.refs_in_use(ctx.id()) {
        Ok(k) => k,
        Err(e) => {
            warn!(folder = ctx.id(), "refs sweep skipped: {e}");
            return 0;
        }
    };
    keep.extend(ctx.parked_names());
    if max_age.is_zero() {
        ctx.expire_released(Duration::ZERO);
    } else {
        keep.extend(ctx.released_names());
    }
    let now = SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if keep.contains(&name) {
            continue;
        }
        // The content's mtime can be anything; creating the link set its
        // ctime, so that is the age that counts.
        let old = max_age.is_zero()
            || e.metadata().map_or(true, |m| {
                use std::os::unix::fs::MetadataExt;
                let ctime = std::time::UNIX_EPOCH
                    + Duration::new(
                        m.ctime().max(0) as u64,
                        m.ctime_nsec().clamp(0, 999_999_999) as u32,
                    );
                now.duration_since(ctime).unwrap_or_default() >= max_age
            });
        if old && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        debug!(
            folder = ctx.id(),
            removed = n,
            "released content no entry needs"
        );
    }
    n
}

/// Remove temp files older than `max_age` (all of them with `ZERO`).
pub fn sweep_tmp(ctx: &Folder, max_age: Duration) -> usize {
    let dir = ctx.fs.tmp_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= max_age)
            .unwrap_or(true);
        if old && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) => warn!(folder = ctx.id(), "cannot remove stale temp file: {err}"),
            }
        }
    }
    if n > 0 {
        info!(folder = ctx.id(), removed = n, "removed stale temp files");
    }
    n
}

/// Blob garbage collection that keeps every hash the index still needs.
pub fn gc_config(index: Index, every: Duration) -> GcConfig {
    GcConfig {
        interval: every,
        add_protected: Some(Arc::new(move |live| {
            let index = index.clone();
            Box::pin(async move {
                match rt::blocking(move || index.live_hashes()).await {
                    Ok(Ok(hs)) => {
                        debug!(protected = hs.len(), "blob gc: protecting live content");
                        live.extend(hs.into_iter().map(Hash::from_bytes));
                        ProtectOutcome::Continue
                    }
                    // Never sweep on an incomplete picture.
                    Ok(Err(e)) => {
                        warn!("blob gc skipped: index unreadable: {e}");
                        ProtectOutcome::Abort
                    }
                    Err(e) => {
                        warn!("blob gc skipped: {e}");
                        ProtectOutcome::Abort
                    }
                }
            })
        })),
    }
}
