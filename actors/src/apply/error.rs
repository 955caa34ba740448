//! Why an apply did not happen, and what the receiver does about it.
//!
//! Every failure of every step is an [`ApplyError`]; [`ApplyError::disposition`]
//! is the one place that decides whether it is retried, retried soon,
//! waited out until a local edit is indexed, or rejected for good. File
//! system errors pass through [`ApplyError::io`], the one escape
//! classifier: a path that leads through a symlink is rejected; a path
//! through a file (a file that won against a directory, until the
//! file-vs-directory rule settles it) is retried soon; anything else is
//! retried.

use std::{io, sync::Arc};

use super::watchdog::Oversized;

use fleetsync_mesh::{FetchError, StoreError};

use crate::{
    fsutil::{is_blocked_by_file, is_escape},
    rt::{self, TaskError},
    space::SpaceError,
};

/// What the receiver does with a failed apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Never doing this (the path leads through a symlink): drop the entry.
    /// Only an escape is rejected: a file in the way of a directory is not.
    Reject,
    /// The local path changed under us: let the watcher index the edit
    /// first, then decide again (it may now be a conflict).
    LocalRace,
    /// Waits for other entries to land first: retry soon.
    Soon,
    /// Anything else (no peer has the content, a disk error): back off.
    Backoff,
    /// The disk is full (or would be): back off like any disk error, and
    /// say so in status at once.
    NoSpace,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("{path}: leads through a symlink; refused")]
    Escape {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: blocked by a file where a directory is expected")]
    BlockedByFile {
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
    #[error("{path}: {source}")]
    NoSpace {
        path: String,
        #[source]
        source: SpaceError,
    },
    #[error("{what} {path}: no space left on the device: {source}")]
    DiskFull {
        what: &'static str,
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
    #[error(
        "{path}: announced as {announced} bytes but its content is {actual} bytes; \
         a garbage announcement, rejected"
    )]
    SizeMismatch {
        path: String,
        announced: u64,
        actual: u64,
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
        if is_no_space(&source) {
            ApplyError::DiskFull {
                what,
                path: path.to_string(),
                source,
            }
        } else if is_escape(&source) {
            ApplyError::Escape {
                path: path.to_string(),
                source,
            }
        } else if is_blocked_by_file(&source) {
            ApplyError::BlockedByFile {
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
            // The parent's file-vs-directory resolution lands first.
            ApplyError::NotEmptyYet { .. } | ApplyError::BlockedByFile { .. } => Disposition::Soon,
            ApplyError::SizeMismatch { .. } => Disposition::Reject,
            ApplyError::NoSpace { .. } | ApplyError::DiskFull { .. } => Disposition::NoSpace,
            ApplyError::Fetch { source, .. } if in_chain::<Oversized>(source.as_ref()) => {
                Disposition::Reject
            }
            ApplyError::Fetch { source, .. } if no_space_in(source.as_ref()) => {
                Disposition::NoSpace
            }
            _ => Disposition::Backoff,
        }
    }
}

/// A full disk or an exhausted quota.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::NOSPC.raw_os_error()
            || c == rustix::io::Errno::DQUOT.raw_os_error()
    )
}

/// Does a full disk show anywhere in this error's chain (a fetch that could
/// not write what it received)?
fn no_space_in(e: &(dyn std::error::Error + 'static)) -> bool {
    any_in_chain(e, |e| {
        e.downcast_ref::<io::Error>().is_some_and(is_no_space)
    })
}

/// Is an error of type `T` anywhere in this error's chain?
fn in_chain<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    any_in_chain(e, |e| e.is::<T>())
}

fn any_in_chain(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if pred(e) {
            return true;
        }
        cur = e.source();
    }
    false
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
    fn a_file_where_a_directory_is_expected_is_retried_not_an_escape() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("d"), b"file won").unwrap();
        std::fs::create_dir(root.path().join("e")).unwrap();
        std::fs::write(root.path().join("e/f"), b"deeper").unwrap();
        let fs = FolderFs::new(root.path());
        for (rel, at) in [("d/x", "d"), ("d/y/z", "d"), ("e/f/g", "e/f")] {
            let err = fs.mkdir(rel, 0o755).unwrap_err();
            assert!(is_blocked_by_file(&err) && !is_escape(&err), "{rel}: {err}");
            assert!(
                err.to_string().contains(&format!("{at:?} is a file")),
                "{err}"
            );
            let e = ApplyError::io("mkdir", rel, err);
            assert!(matches!(e, ApplyError::BlockedByFile { .. }), "{e:?}");
            assert_eq!(e.disposition(), Disposition::Soon, "{rel}");
            // Nothing can be below a file: a deletion there is done.
            assert_eq!(
                fs.lstat(rel).unwrap(),
                crate::record::DiskState::Missing,
                "{rel}"
            );
        }
        // A symlink in the path still is an escape, wherever it points.
        std::os::unix::fs::symlink("d", root.path().join("to_file")).unwrap();
        std::os::unix::fs::symlink("e", root.path().join("to_dir")).unwrap();
        std::os::unix::fs::symlink("gone", root.path().join("dangling")).unwrap();
        for rel in ["to_file/x", "to_dir/x", "dangling/x", "to_dir/f/x"] {
            let err = fs.mkdir(rel, 0o755).unwrap_err();
            assert!(fs.lstat(rel).is_err(), "{rel}: must not look");
            let e = ApplyError::io("mkdir", rel, err);
            assert_eq!(e.disposition(), Disposition::Reject, "{rel}: {e}");
        }
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
