//! Where async and blocking work runs.
//!
//! Each actor lives on its own actix arbiter (a single-threaded runtime), so
//! one stuck actor cannot stall the others or the supervisor. Anything that
//! touches iroh, the blob store, the disk or the index is handed to the
//! node's multi-threaded tokio runtime through these helpers, and the actor
//! only awaits the result.

use std::{future::Future, sync::OnceLock};

use tokio::{runtime::Handle, task::JoinHandle};

static MAIN: OnceLock<Handle> = OnceLock::new();

/// Record the node's multi-threaded runtime (once, at start-up).
pub fn init(handle: Handle) {
    let _ = MAIN.set(handle);
}

fn handle() -> Handle {
    MAIN.get().cloned().unwrap_or_else(Handle::current)
}

pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(fut)
}

pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    handle().spawn_blocking(f)
}

/// Run blocking work on the pool and wait for it; a panic in `f` becomes an
/// error instead of taking the caller down.
pub async fn blocking<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task failed: {e}"))
}
