//! Offline checks: what the config points at on this machine.

use std::{
    io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use fleetsync_actors::space::{self, FsSpace};
use fleetsync_config::{Config, FolderConfig, WatchMode};

use super::{Check, Probe};
use crate::admin::human_bytes;

/// Every offline check of the data dir and the folders.
pub fn checks(config: &Config, probe: &Probe) -> Vec<Check> {
    let mut out = vec![directory(
        "data dir",
        &config.data_dir,
        "the data dir",
        None,
    )];
    for f in &config.folders {
        out.push(directory(
            &format!("folder {}", f.id),
            &f.path,
            &format!("[[folders]] id = \"{}\" path", f.id),
            Some(f),
        ));
        out.push(free_space(config, f));
    }
    out.extend(inotify(config, &probe.inotify_dir));
    out
}

/// The config holds the fleet secret: nobody but its owner should read it.
pub fn config_file_mode(path: &Path) -> Option<Check> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    Some(if mode & 0o077 == 0 {
        Check::ok(
            "config file",
            format!("{} is private (mode {mode:04o})", path.display()),
        )
    } else {
        Check::warn(
            "config file",
            format!(
                "{} holds the fleet secret and other users may read it (mode {mode:04o})",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
        )
    })
}

/// Exists, is a directory, who owns it, its mode, writable by this user,
/// which filesystem (and whether inotify sees changes made on it).
fn directory(name: &str, path: &Path, key: &str, folder: Option<&FolderConfig>) -> Check {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::fail(
                name,
                format!("{} does not exist", path.display()),
                format!(
                    "mkdir -p {p} && chown {u} {p} (or point {key} at an existing directory)",
                    p = path.display(),
                    u = user_name(rustix::process::geteuid().as_raw()),
                ),
            )
        }
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot look at {}: {e}", path.display()),
                format!(
                    "give the user fleetsync runs as access to every directory above {}",
                    path.display()
                ),
            )
        }
    };
    if !md.is_dir() {
        return Check::fail(
            name,
            format!("{} is not a directory", path.display()),
            format!(
                "move the file away (mv {p} {p}.old && mkdir {p}) or point {key} at a directory",
                p = path.display()
            ),
        );
    }
    let owner = user_name(md.uid());
    let mode = md.permissions().mode() & 0o7777;
    let fs = fs_type(path);
    let described = format!(
        "{}: owner {owner}, mode {mode:04o}, on {fs}",
        path.display()
    );
    if let Err(e) = rustix::fs::access(
        path,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    ) {
        let me = user_name(rustix::process::geteuid().as_raw());
        return Check::fail(
            name,
            format!("{described}, not writable by {me}: {e}"),
            format!(
                "chown -R {me} {} (or run fleetsync as {owner})",
                path.display()
            ),
        );
    }
    match folder {
        Some(f) if f.watch == WatchMode::Notify && is_network_fs(&fs) => Check::warn(
            name,
            format!(
                "{described}, writable; inotify does not see changes other machines make on {fs}"
            ),
            format!(
                "set watch = \"poll\" in the [[folders]] block with id = \"{}\"",
                f.id
            ),
        ),
        _ => Check::ok(name, format!("{described}, writable")),
    }
}

/// The user name of `uid` from /etc/passwd, else the number.
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// The filesystem's name from its `statfs` magic number (the common ones;
/// others as hex).
fn fs_type(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "an unknown filesystem".to_string();
    };
    #[allow(clippy::unnecessary_cast)] // the field's width differs by target
    let magic = st.f_type as u64 & 0xffff_ffff;
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x6573_5546 => "fuse",
        0x4D44 => "vfat",
        0x5346_544E => "ntfs",
        0xF2F5_2010 => "f2fs",
        0x0027_e0eb => "cgroup",
        0x0BD0_0BD0 => "lustre",
        0x0063_6973 => "cifs",
        0xCA45_1A4E => "bcachefs",
        _ => return format!("filesystem type {magic:#x}"),
    };
    name.to_string()
}

/// Filesystems whose files other machines change (inotify only reports
/// changes made through this kernel).
fn is_network_fs(name: &str) -> bool {
    matches!(name, "nfs" | "cifs" | "smb2" | "fuse" | "lustre")
}

/// Free space on the folder's filesystem and the data dir's against the
/// folder's reserve (`min_free`): below it, every fetch is refused.
fn free_space(config: &Config, f: &FolderConfig) -> Check {
    let name = format!("folder {} space", f.id);
    let mut filesystems: Vec<FsSpace> = Vec::new();
    for p in [&f.path, &config.data_dir] {
        match space::fs_space(p) {
            Ok(s) => filesystems.push(s),
            // The directory check already says why it is missing.
            Err(e) => {
                return Check::warn(
                    name,
                    format!("cannot measure free space at {}: {e}", p.display()),
                    format!("create {} first (see the line above)", p.display()),
                )
            }
        }
    }
    match space::decide(&filesystems, 0, f.min_free) {
        Ok(()) => {
            let fs = &filesystems[0];
            Check::ok(
                name,
                format!(
                    "{} free of {} at {}, reserve {} (min_free = {})",
                    human_bytes(fs.avail),
                    human_bytes(fs.total),
                    fs.path.display(),
                    human_bytes(f.min_free.reserve(fs.total)),
                    f.min_free
                ),
            )
        }
        Err(no) => Check::fail(
            name,
            format!(
                "{} free at {}, below the reserve of {} (min_free = {}): every fetch is refused",
                human_bytes(no.avail),
                no.fs.display(),
                human_bytes(no.reserve),
                f.min_free
            ),
            format!(
                "free at least {} on the filesystem of {}, or lower min_free in the [[folders]] block with id = \"{}\"",
                human_bytes(no.reserve.saturating_sub(no.avail)),
                no.fs.display(),
                f.id
            ),
        ),
    }
}

/// inotify's per-user limits against what the `watch = "notify"` folders
/// need: one watch per directory, one instance per folder.
pub fn inotify(config: &Config, dir: &Path) -> Vec<Check> {
    let notify: Vec<&FolderConfig> = config
        .folders
        .iter()
        .filter(|f| f.watch == WatchMode::Notify)
        .collect();
    if notify.is_empty() {
        return vec![];
    }
    let read = |name: &str| -> Result<u64, String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{}: not a number: {e}", p.display()))
    };
    let (watches, instances) = match (read("max_user_watches"), read("max_user_instances")) {
        (Ok(w), Ok(i)) => (w, i),
        (Err(e), _) | (_, Err(e)) => {
            return vec![Check::warn(
                "inotify",
                format!("limits unknown: {e}"),
                "check them with: sysctl fs.inotify (or set watch = \"poll\" on the folders)",
            )]
        }
    };
    let mut dirs = 0u64;
    for f in &notify {
        dirs += count_dirs(&f.path, watches.saturating_sub(dirs).saturating_add(1));
    }
    vec![
        watch_check(dirs, watches, notify.len()),
        instance_check(notify.len() as u64, instances),
    ]
}

/// The sysctl line that raises `key` to `value` now and at boot.
fn sysctl_fix(key: &str, value: u64) -> String {
    format!(
        "sysctl -w fs.inotify.{key}={value} && echo fs.inotify.{key}={value} > /etc/sysctl.d/60-fleetsync-inotify.conf"
    )
}

/// Other programs of the same user share the limit: past three quarters
/// of it is a warning.
fn watch_check(dirs: u64, max: u64, folders: usize) -> Check {
    let name = "inotify watches";
    let detail = format!(
        "{}{dirs} directories to watch in {folders} folders, fs.inotify.max_user_watches = {max}",
        if dirs > max { "more than " } else { "" }
    );
    let raise = (dirs.saturating_mul(2)).max(524_288).next_power_of_two();
    if dirs > max {
        Check::fail(
            name,
            format!("{detail}: changes in the rest go unseen until a rescan"),
            format!(
                "{} (or set watch = \"poll\" on the biggest folders)",
                sysctl_fix("max_user_watches", raise)
            ),
        )
    } else if dirs > max / 4 * 3 {
        Check::warn(
            name,
            format!("{detail}: little room for other programs of this user"),
            sysctl_fix("max_user_watches", raise),
        )
    } else {
        Check::ok(name, detail)
    }
}

fn instance_check(folders: u64, max: u64) -> Check {
    let name = "inotify instances";
    let detail = format!("{folders} watched folders, fs.inotify.max_user_instances = {max}");
    let raise = (folders.saturating_mul(2)).max(1024).next_power_of_two();
    if folders > max {
        Check::fail(name, detail, sysctl_fix("max_user_instances", raise))
    } else if folders > max / 2 {
        Check::warn(
            name,
            format!("{detail}: other programs of this user need instances too"),
            sysctl_fix("max_user_instances", raise),
        )
    } else {
        Check::ok(name, detail)
    }
}

/// Directories under `root` (itself included), not following symlinks,
/// as the recursive watch sees them (`.fleetsync` too); stops at `limit`
/// (a huge tree need not be walked to know it is too big).
pub fn count_dirs(root: &Path, limit: u64) -> u64 {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .take(limit)
        .count() as u64
}
