//! Is there room for a fetch? Before content is fetched, the announced
//! size plus the folder's reserve (`[[folders]] min_free`) must fit on
//! the folder's filesystem (temp files, `refs/` links, the placed file)
//! and on the one holding the data dir (blob store and index): a member
//! announcing a huge file must not fill the disk the index needs.
//!
//! [`decide`] is the rule, pure; [`check`] asks the kernel (`statvfs`).

use std::{
    io,
    path::{Path, PathBuf},
};

use fleetsync_config::MinFree;

/// One filesystem's numbers, as `statvfs` gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpace {
    /// A path on it, as errors name it.
    pub path: PathBuf,
    /// Device id: two paths on one filesystem are checked once.
    pub dev: u64,
    /// Bytes an unprivileged writer may still use.
    pub avail: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

/// Not enough room on one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no space on the filesystem of {}: {avail} bytes free, {need} needed \
     ({size} announced + {reserve} reserve, [[folders]] min_free)",
    fs.display()
)]
pub struct NoSpace {
    pub fs: PathBuf,
    pub avail: u64,
    pub need: u64,
    pub size: u64,
    pub reserve: u64,
}

/// Does `size` plus the reserve fit on each filesystem (once per device)?
pub fn decide(filesystems: &[FsSpace], size: u64, min_free: MinFree) -> Result<(), NoSpace> {
    let mut seen = Vec::with_capacity(filesystems.len());
    for fs in filesystems {
        if seen.contains(&fs.dev) {
            continue;
        }
        seen.push(fs.dev);
        let reserve = min_free.reserve(fs.total);
        let need = size.saturating_add(reserve);
        if fs.avail < need {
            return Err(NoSpace {
                fs: fs.path.clone(),
                avail: fs.avail,
                need,
                size,
                reserve,
            });
        }
    }
    Ok(())
}

/// `statvfs` and the device of `path` (blocking).
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let v = rustix::fs::statvfs(path)?;
    let dev = rustix::fs::stat(path)?.st_dev;
    Ok(FsSpace {
        path: path.to_path_buf(),
        dev,
        avail: v.f_bavail.saturating_mul(v.f_frsize),
        total: v.f_blocks.saturating_mul(v.f_frsize),
    })
}

/// Why a fetch may not start: no room, or the kernel could not tell.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(transparent)]
    NoSpace(#[from] NoSpace),
    #[error("cannot read the free space of {}: {source}", path.display())]
    Statvfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// May `size` bytes be fetched into `folder_root` through the blob store
/// in `data_dir`? (blocking)
pub fn check(
    folder_root: &Path,
    data_dir: &Path,
    size: u64,
    min_free: MinFree,
) -> Result<(), SpaceError> {
    let mut filesystems = Vec::with_capacity(2);
    for path in [folder_root, data_dir] {
        let fs = fs_space(path).map_err(|source| SpaceError::Statvfs {
            path: path.to_path_buf(),
            source,
        })?;
        filesystems.push(fs);
    }
    Ok(decide(&filesystems, size, min_free)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn fs(path: &str, dev: u64, avail: u64, total: u64) -> FsSpace {
        FsSpace {
            path: path.into(),
            dev,
            avail,
            total,
        }
    }

    #[test]
    fn a_file_fits_only_with_the_reserve_left_over() {
        let disk = [fs("/srv", 1, 10 * GIB, 100 * GIB)];
        // Default reserve on 100 GiB: 1 GiB.
        assert!(decide(&disk, 9 * GIB, MinFree::Default).is_ok());
        let e = decide(&disk, 9 * GIB + 1, MinFree::Default).unwrap_err();
        assert_eq!((e.need, e.reserve), (10 * GIB + 1, GIB));
        assert!(
            e.to_string()
                .starts_with("no space on the filesystem of /srv"),
            "{e}"
        );
        assert!(decide(&disk, 10 * GIB, MinFree::Bytes(0)).is_ok());
        assert!(decide(&disk, 5 * GIB, MinFree::Percent(5)).is_ok());
        assert!(decide(&disk, 5 * GIB + 1, MinFree::Percent(5)).is_err());
    }

    #[test]
    fn a_10_tb_announcement_never_fits_and_does_not_overflow() {
        let disk = [fs("/srv", 1, 10 * GIB, 100 * GIB)];
        let e = decide(&disk, 10 << 40, MinFree::Default).unwrap_err();
        assert_eq!(e.size, 10 << 40);
        assert!(decide(&disk, u64::MAX, MinFree::Bytes(u64::MAX)).is_err());
    }

    #[test]
    fn the_data_dir_filesystem_is_checked_too_and_each_device_once() {
        let big = fs("/srv", 1, 100 * GIB, 1000 * GIB);
        let small = fs("/var/lib/fleetsync", 2, 100 * MIB, 8 * GIB);
        let e = decide(&[big.clone(), small], 200 * MIB, MinFree::Default).unwrap_err();
        assert_eq!(e.fs, PathBuf::from("/var/lib/fleetsync"));
        // The same device under two paths: the size is needed once.
        let same = fs("/srv/data", 1, 100 * GIB, 1000 * GIB);
        assert!(decide(&[big, same], 90 * GIB, MinFree::Bytes(0)).is_ok());
    }

    #[test]
    fn statvfs_reads_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_space(dir.path()).unwrap();
        assert!(s.total > 0 && s.avail <= s.total, "{s:?}");
        assert!(check(dir.path(), dir.path(), 0, MinFree::Bytes(0)).is_ok());
        let e = check(dir.path(), dir.path(), u64::MAX / 2, MinFree::Bytes(0)).unwrap_err();
        assert!(matches!(e, SpaceError::NoSpace(_)), "{e}");
        let gone = check(&dir.path().join("nope"), dir.path(), 0, MinFree::Bytes(0));
        assert!(matches!(gone, Err(SpaceError::Statvfs { .. })));
    }
}
