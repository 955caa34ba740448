//! The allocator's share of resident memory. glibc's malloc gives every
//! busy thread an arena (up to 8 per core) and returns little of a freed
//! arena to the system, so under hours of churn a node sat at 4-5 times its
//! live heap (issue 11 soak: 11 MiB of heap, 50+ MiB resident and rising).
//! Two things keep resident memory near the heap: at most two arenas, set
//! before any thread exists, and a trim of freed pages once a minute.
//! mimalloc and jemalloc were measured too and sat higher
//! (docs/benchmarks.md, soak). Other platforms and allocators: no-ops.

use std::time::Duration;

/// How often freed pages are handed back.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// At most two malloc arenas, unless the operator set `MALLOC_ARENA_MAX`.
/// Call first thing in `main`, before any thread exists.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other
        // thread exists yet to allocate concurrently.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hand freed pages back to the system every [`TRIM_EVERY`], for as long
/// as the node runs (the caller aborts the task). A trim on a heap of tens
/// of MiB takes about a millisecond; it runs off the async workers anyway.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = tokio::task::spawn_blocking(trim).await {
            tracing::debug!("malloc trim task failed: {e}");
        }
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
