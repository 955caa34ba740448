//! Why an apply did not happen, and what the receiver does about it.
//!
//! Every failure of every step is an [`ApplyError`]; [`ApplyError::disposition`]
//! is the one place that decides whether it is retried, retried soon,
//! waited out until a local edit is indexed, or rejected for good. File
//! system errors pass through [`ApplyError::io`], the one escape
//! classifier: a path that leads through a symlink is rejected, anything
//! else is retried.

use std::{io, sync::Arc};

use fleetsync_mesh::{FetchError, StoreError};

use crate::{
    fsutil::is_escape,
    rt::{self, TaskError},
};

/// What the receiver does with a failed apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Never doing this (the path leads through a symlink): drop the entry.
    Reject,
    /// The local path changed under us: let the watcher index the edit
    /// first, then decide again (it may now be a conflict).
    LocalRace,
    /// Waits for other entries to land first: retry soon.
    Soon,
    /// Anything else (no peer has the content, a disk error): back off.
    Backoff,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("{path}: leads through a symlink or non-directory; refused")]
    Escape {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: changed locally while the remote version was being applied")]
    LocalChange { path: String },
    #[error("{path}: directory not empty yet")]
    NotEmptyYet { path: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what} is in the way")]
    InTheWay { path: String, what: &'static str },
    #[error("{path}: file entry without a content hash")]
    NoHash { path: String },
    #[error("{path}: no connected peer to fetch from")]
    NoProvider { path: String },
    #[error("fetch {path} from {peer}: {source}")]
    Stalled {
        path: String,
        peer: String,
        #[source]
        source: super::Stalled,
    },
    #[error("fetch {path}: {source}")]
    Fetch {
        path: String,
        /// Boxed: iroh's connect errors are large, and every step returns
        /// this type.
        #[source]
        source: Box<FetchError>,
    },
    #[error("{path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("{path}: prefetched content went away")]
    ContentGone { path: String },
    #[error("{path}: too many conflict copies already")]
    TooManyConflictCopies { path: String },
    #[error("{path}: the batch it was part of failed: {source}")]
    Batch {
        path: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: placed, but its directory could not be made durable: {source}")]
    NotDurable {
        path: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{path}: a non-empty directory is in the way")]
    DirectoryInTheWay {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The filesystem here cannot hold this name (its NAME_MAX is below
    /// the wire limit: eCryptfs, some network filesystems): retrying never
    /// helps, so the entry is rejected (logged once, counted).
    #[error("{path}: name too long for this filesystem; not applied")]
    NameTooLong {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl ApplyError {
    /// The one classifier for file system errors: an escape or a name this
    /// filesystem cannot hold is refused for good, anything else is worth
    /// another try. (Every name fleetsync makes up itself is kept within
    /// NAME_MAX, so "too long" is always the entry's own name.)
    pub fn io(what: &'static str, path: &str, source: io::Error) -> Self {
        if is_escape(&source) {
            ApplyError::Escape {
                path: path.to_string(),
                source,
            }
        } else if source.raw_os_error() == Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()) {
            ApplyError::NameTooLong {
                path: path.to_string(),
                source,
            }
        } else {
            ApplyError::Io {
                what,
                path: path.to_string(),
                source,
            }
        }
    }

    /// A closure for `map_err`: `.map_err(ApplyError::io_at("mkdir", path))`.
    pub fn io_at<'a>(what: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> Self + 'a {
        move |e| ApplyError::io(what, path, e)
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            ApplyError::Escape { .. } | ApplyError::NameTooLong { .. } => Disposition::Reject,
            ApplyError::LocalChange { .. } => Disposition::LocalRace,
            ApplyError::NotEmptyYet { .. } => Disposition::Soon,
            _ => Disposition::Backoff,
        }
    }
}

/// Run a blocking file system step; its error is classified for `path`.
pub(super) async fn on_disk<T: Send + 'static>(
    what: &'static str,
    path: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, ApplyError> {
    rt::blocking(f)
        .await?
        .map_err(ApplyError::io_at(what, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::FolderFs;

    #[test]
    fn an_escape_is_rejected_and_other_io_errors_are_retried() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        let fs = FolderFs::new(root.path());
        let escape = fs.mkdir("evil/x", 0o755).unwrap_err();
        let e = ApplyError::io("mkdir", "evil/x", escape);
        assert_eq!(e.disposition(), Disposition::Reject);
        assert!(e.to_string().contains("refused"), "{e}");
        let long = io::Error::from_raw_os_error(rustix::io::Errno::NAMETOOLONG.raw_os_error());
        let e = ApplyError::io("place", "x", long);
        assert_eq!(e.disposition(), Disposition::Reject, "{e}");
        assert!(e.to_string().contains("name too long"), "{e}");
        let plain = io::Error::new(io::ErrorKind::PermissionDenied, "no");
        let e = ApplyError::io("mkdir", "x", plain);
        assert_eq!(e.disposition(), Disposition::Backoff);
        assert!(std::error::Error::source(&e).is_some(), "source kept");
    }

    #[test]
    fn races_wait_for_the_watcher_and_non_empty_directories_retry_soon() {
        let race = ApplyError::LocalChange { path: "a".into() };
        assert_eq!(race.disposition(), Disposition::LocalRace);
        let dir = ApplyError::NotEmptyYet { path: "d".into() };
        assert_eq!(dir.disposition(), Disposition::Soon);
        let none = ApplyError::NoProvider { path: "f".into() };
        assert_eq!(none.disposition(), Disposition::Backoff);
        let stalled = ApplyError::Stalled {
            path: "f".into(),
            peer: "abc".into(),
            source: super::super::Stalled {
                idle: std::time::Duration::from_secs(30),
            },
        };
        assert_eq!(stalled.disposition(), Disposition::Backoff);
        assert!(stalled.to_string().contains("no data for 30s"), "{stalled}");
    }
}
