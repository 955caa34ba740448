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

/// A task handed to the runtime did not finish: it panicked or was
/// cancelled (runtime shutting down).
#[derive(Debug, thiserror::Error)]
#[error("background task failed: {0}")]
pub struct TaskError(#[from] pub tokio::task::JoinError);

/// Record the node's multi-threaded runtime (once, at start-up). A second
/// call (a second node in one process, as tests do) keeps the first.
pub fn init(handle: Handle) {
    MAIN.get_or_init(|| handle);
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

/// [`spawn_blocking`] from code that may run outside any runtime (a
/// `Drop` in a plain unit test): `None`, and nothing runs, if there is none.
pub fn try_spawn_blocking<F, R>(f: F) -> Option<JoinHandle<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let handle = MAIN.get().cloned().or_else(|| Handle::try_current().ok())?;
    Some(handle.spawn_blocking(f))
}

/// Run blocking work on the pool and wait for it; a panic in `f` becomes an
/// error instead of taking the caller down.
pub async fn blocking<F, R>(f: F) -> Result<R, TaskError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    Ok(spawn_blocking(f).await?)
}

/// [`blocking`] for work that can fail: one error type for both ways.
pub async fn try_blocking<F, R, E>(f: F) -> Result<R, E>
where
    F: FnOnce() -> Result<R, E> + Send + 'static,
    R: Send + 'static,
    E: From<TaskError> + Send + 'static,
{
    blocking(f).await?
}
