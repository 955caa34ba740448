//! Keeping what a remote change replaces: right before a peer's content
//! overwrites a file, or a peer's delete removes it, the file's content
//! goes into the folder's versions store.
//!
//! Only content the index records as synced is kept (the disk matches the
//! record): a local edit the index does not have yet stops the apply
//! anyway, and a losing version that becomes a conflict copy is already
//! kept under its own name.

use fleetsync_mesh::model::EntryKind;
use tracing::warn;

use super::Job;
use crate::{
    folder::Folder,
    fsutil::Session,
    record::{disk_matches, DiskState},
    versions::{KeepMeta, Reason},
};

/// Keep the file at the job's path as a version, if it is synced content
/// the job replaces (blocking). True if it tried (the caller looks at the
/// disk again: keeping took time). A failure to keep does
/// not stop the sync — losing the undo is better than never applying —
/// but is logged and shown as the folder's last error.
pub(super) fn keep_replaced(
    folder: &Folder,
    session: &Session,
    job: &Job,
    disk: &DiskState,
    reason: Reason,
) -> bool {
    let Some(record) = job.local.as_ref() else {
        return false;
    };
    let is_file = matches!(disk, DiskState::Present(m) if m.kind == EntryKind::File);
    if !folder.versions.policy().enabled
        || job.conflict_copy
        || !is_file
        || !disk_matches(disk, Some(record))
    {
        return false;
    }
    let meta = KeepMeta::of_entry(&record.entry, job.target.modified_by.to_string(), reason);
    let kept = keep_file_at(folder, session, &job.path, disk, meta);
    match kept {
        Ok(_) => true,
        Err(e) => {
            warn!(folder = folder.id(), path = %job.path, "previous content not kept as a version: {e}");
            folder.status.error(format!(
                "{}: previous content not kept as a version: {e}",
                job.path
            ));
            true
        }
    }
}

/// Keep the regular file at `path` as a version, if it is still the very
/// inode `disk` describes (opened without following symlinks). The one
/// way a file on disk becomes a version: applies and take-aways use it.
pub(crate) fn keep_file_at(
    folder: &Folder,
    session: &Session,
    path: &str,
    disk: &DiskState,
    meta: KeepMeta,
) -> Result<(), String> {
    let file = session
        .open_regular(path)
        .and_then(|opened| {
            if opened.meta() != *disk {
                return Err(std::io::Error::other("changed while being opened"));
            }
            opened.file()
        })
        .map_err(|e| e.to_string())?;
    folder
        .versions
        .keep_file(&file, meta)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
