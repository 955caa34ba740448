//! The admin API on a Unix socket, for the CLI of users who may not read
//! the config (it holds the fleet secret) but are in the node's group.
//!
//! - Where: `admin.socket`; by default `$RUNTIME_DIRECTORY/admin.sock`
//!   when systemd gives the node a runtime directory
//!   (`RuntimeDirectory=fleetsync`: `/run/fleetsync/admin.sock`, the
//!   CLI's default too), else `<data_dir>/admin.sock`.
//! - Who: mode 0660, owned by the node's user and group. Connecting needs
//!   write permission on the socket, so the node's user and the members of
//!   its group may; nobody else (the directory around it may restrict
//!   further: `RuntimeDirectoryMode=0750`).
//! - Lifetime: bound under a temporary name, given its mode, then renamed
//!   into place (no moment with a wider mode; a stale socket from a killed
//!   node is replaced in one step); removed on a clean exit. A socket a
//!   live node answers on is never taken over.

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use fleetsync_config::{AdminSocket, Config, MAX_SOCKET_PATH};

/// The socket's file name under the runtime or data directory.
pub const FILE_NAME: &str = "admin.sock";

/// Where the packaged node's socket is (`RuntimeDirectory=fleetsync`); the
/// CLI looks here when it has no config to read.
pub const DEFAULT_PATH: &str = "/run/fleetsync/admin.sock";

/// Owner and group read/write; connecting needs write.
const MODE: u32 = 0o660;

/// Where this node's socket goes, if anywhere (`runtime_dir`: systemd's
/// `$RUNTIME_DIRECTORY`).
pub fn path(config: &Config, runtime_dir: Option<&str>) -> Option<PathBuf> {
    match &config.admin.socket {
        AdminSocket::Off => None,
        AdminSocket::At(p) => Some(p.clone()),
        AdminSocket::Default => {
            // systemd lists several directories separated by ':' when the
            // unit names several; the first is ours.
            let dir = runtime_dir
                .and_then(|d| d.split(':').next())
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| config.data_dir.clone());
            let p = dir.join(FILE_NAME);
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                // The default must not stop a node that ran before the
                // socket existed; a set path that is too long is refused
                // by the config instead.
                tracing::warn!(
                    "no admin socket: {} is longer than a socket path may be ({MAX_SOCKET_PATH} bytes); set admin.socket to a shorter path",
                    p.display()
                );
                return None;
            }
            Some(p)
        }
    }
}

/// Bind the socket at `path` with mode 0660 and serve `app` on it.
pub async fn serve(path: &Path, app: axum::Router) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let fix = "set admin.socket to a path in a directory the node may write, or \"off\"";
    refuse_live(path).await?;
    let tmp = temp_name(path);
    // A temp file left by a crash between bind and rename.
    std::fs::remove_file(&tmp).ok();
    let listener = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("admin socket: cannot bind {} ({fix})", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(MODE))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        std::fs::remove_file(&tmp).ok();
        bail!(
            "admin socket: cannot create {}: {e} ({fix})",
            path.display()
        );
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin socket stopped: {e}");
        }
    }))
}

/// `<dir>/.<pid>.sock`: short, so that it fits wherever the final name
/// fits (give or take a few bytes), and unique per process.
fn temp_name(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(".{}.sock", std::process::id()))
}

/// An existing socket is stale unless a node answers on it; anything else
/// at the path is not ours to replace.
async fn refuse_live(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!(
            "admin socket: {} exists and is not a socket; remove it or set admin.socket to another path",
            path.display()
        );
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        bail!(
            "admin socket: another fleetsync node serves {}; stop it, or give this node its own admin.socket",
            path.display()
        );
    }
    tracing::info!("replacing the stale admin socket {}", path.display());
    Ok(())
}

/// Remove the socket on a clean exit (best effort: it may be gone).
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove the admin socket {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn config(data_dir: &Path, socket: &str) -> Config {
        let text = format!(
            "data_dir = {data_dir:?}\n[mesh]\nfleet_secret = \"{}\"\n{socket}",
            "ab".repeat(32)
        );
        Config::from_toml_str(
            &text,
            &data_dir.join("fleetsync.toml"),
            std::iter::empty(),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn default_is_the_runtime_directory_else_the_data_dir() {
        let c = config(Path::new("/var/lib/fs"), "");
        assert_eq!(
            path(&c, Some("/run/fleetsync:/run/other")),
            Some(PathBuf::from("/run/fleetsync/admin.sock"))
        );
        assert_eq!(
            path(&c, None),
            Some(PathBuf::from("/var/lib/fs/admin.sock"))
        );
        let off = config(Path::new("/var/lib/fs"), "[admin]\nsocket = \"off\"\n");
        assert_eq!(path(&off, Some("/run/fleetsync")), None);
        let set = config(
            Path::new("/var/lib/fs"),
            "[admin]\nsocket = \"/x/a.sock\"\n",
        );
        assert_eq!(path(&set, Some("/run/f")), Some(PathBuf::from("/x/a.sock")));
        let long = config(&PathBuf::from(format!("/{}", "d".repeat(110))), "");
        assert_eq!(
            path(&long, None),
            None,
            "too long: no socket, not a failure"
        );
    }

    #[tokio::test]
    async fn bound_0660_replaces_a_stale_one_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        // A stale socket: bound, then its listener gone (a killed node).
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok\n" }));
        let task = serve(&p, app.clone()).await.unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        let body = tokio::task::spawn_blocking({
            let p = p.clone();
            move || crate::client::get(&crate::client::Endpoint::Unix(p), "/health")
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(body, "ok\n");

        let e = serve(&p, app).await.unwrap_err();
        assert!(e.to_string().contains("another fleetsync node"), "{e}");
        task.abort();
        remove(&p);
        assert!(!p.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, "mine").unwrap();
        let e = serve(&p, axum::Router::new()).await.unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "mine");
    }
}
