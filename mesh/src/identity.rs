//! The node's identity: an ed25519 key in `<data_dir>/identity.key`, created
//! on first use and never rotated silently (peers' allowlists and version
//! vectors refer to it).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use iroh::{EndpointId, SecretKey};

use crate::model::ShortId;

pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read identity {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity file {path} is corrupt (expected 64 hex chars); move it away to create a new identity")]
    Corrupt { path: PathBuf },
    #[error("cannot write identity {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Load the identity, creating it (0600) when missing. The data dir is
/// made private first ([`private_data_dir`]): every command that uses it
/// (`init`, `join`, node start) comes through here.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, IdentityError> {
    private_data_dir(data_dir).map_err(|source| IdentityError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(IDENTITY_FILE);
    tighten(&path, 0o600);
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text).ok_or(IdentityError::Corrupt { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            write_new(&path, &key).map_err(|source| IdentityError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Create the data dir owner-only (0700): it holds the key, the index
/// and the blob store, which other local users must not read. A data dir
/// an older version created with default permissions is tightened (with a
/// warning) rather than refused, so an upgrade keeps working.
pub fn private_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir, 0o700);
    Ok(())
}

/// Remove group and other permission bits from an existing `path` (if it
/// has any), logging that we did. Best effort: a file we may not chmod is
/// left as it is, with a warning.
pub fn tighten(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let now = meta.permissions().mode() & 0o777;
    if meta.file_type().is_symlink() || now & !mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(now & mode)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            "was readable by other users (mode {now:o}); now {:o}",
            now & mode
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            "is readable by other users (mode {now:o}) and cannot be tightened: {e}"
        ),
    }
}

fn parse(text: &str) -> Option<SecretKey> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    Some(SecretKey::from_bytes(&bytes))
}

fn write_new(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("key.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{}", hex::encode(key.to_bytes()))?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

pub fn short_id(id: &EndpointId) -> ShortId {
    ShortId::from_node_id(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "identity readable by others: {mode:o}");
    }

    #[test]
    fn corrupt_identity_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), "nope").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
