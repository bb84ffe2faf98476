//! What the data directory's filesystem can be trusted with: whether it keeps data at all
//! (tmpfs does not), whether it has O_DIRECT, and whether an io_uring write with `RWF_DSYNC`
//! is durable when it completes.
//!
//! Why `RWF_DSYNC` is trusted on ext4 and xfs only: both do direct I/O through iomap
//! (`iomap_dio_rw`), which completes a `DSYNC` write only once it is durable whether the write
//! is synchronous or asynchronous, as an io_uring write is: it either writes with FUA or calls
//! `generic_write_sync` from the completion worker before the completion is posted. Other
//! filesystems have their own direct-I/O paths, and some drop the flag for asynchronous writes:
//! FUSE (Linux 6.18) completes an io_uring `RWF_DSYNC` write without any sync, so a power cut
//! loses it, while a plain `pwritev2(RWF_DSYNC)` or a write followed by `fdatasync` survives.
//! Everywhere but ext4 and xfs a flush is therefore a write followed by a linked `fdatasync`.
//!
//! No other durability point relies on the flag: the offset tables, the small metadata files
//! and the directories are made durable with plain `fdatasync`/`fsync` system calls, which
//! every filesystem turns into its own sync (FUSE: a `FSYNC`/`FSYNCDIR` request), and the
//! engine's blocking writes (zeroing, recovery) link an `fdatasync` too.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::FlushSync;
use crate::error::OpenError;

const EXT4_SUPER_MAGIC: i64 = 0xef53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Filesystem types whose io_uring `RWF_DSYNC` writes are durable on completion (see the
/// module documentation for why these and no others).
const DSYNC_TRUSTED: [&str; 2] = ["ext4", "xfs"];

/// The filesystem a directory is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// The type `/proc/self/mounts` gives ("ext4", "xfs", "fuse.name"), or, if that cannot be
    /// read, a name for the type `statfs` reports.
    pub kind: String,
    /// The magic number `statfs` reports (0 if it failed).
    pub magic: i64,
}

impl Filesystem {
    /// The filesystem `path` is on.
    pub fn of(path: &Path) -> Self {
        let magic = statfs_magic(path).unwrap_or(0);
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let kind = fs::read_to_string("/proc/self/mounts")
            .ok()
            .and_then(|mounts| mount_type(&mounts, &canonical))
            .unwrap_or_else(|| magic_name(magic));
        Self { kind, magic }
    }

    /// Whether an io_uring write with `RWF_DSYNC` is durable when it completes here. Both
    /// sources must agree: the mount table's type, and the superblock's magic number (ext2 and
    /// ext3 share ext4's magic; the mount table tells them apart).
    pub fn trusts_dsync_writes(&self) -> bool {
        let magic_ok = matches!(self.magic, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC);
        magic_ok && DSYNC_TRUSTED.contains(&self.kind.as_str())
    }

    /// The name of the in-memory filesystem this is, if it is one.
    pub fn volatile(&self) -> Option<&'static str> {
        match self.magic {
            TMPFS_MAGIC => Some("tmpfs"),
            RAMFS_MAGIC => Some("ramfs"),
            _ => None,
        }
    }

    /// What a flush must do to be durable here, given what the configuration asks for:
    /// `Auto` becomes `DsyncWrite` where that is trusted, `Fdatasync` elsewhere; asking for
    /// `DsyncWrite` where it is not trusted is refused.
    pub fn resolve(&self, asked: FlushSync, data_dir: &Path) -> Result<FlushSync, OpenError> {
        match asked {
            FlushSync::Auto if self.trusts_dsync_writes() => Ok(FlushSync::DsyncWrite),
            FlushSync::Auto | FlushSync::Fdatasync => Ok(FlushSync::Fdatasync),
            FlushSync::DsyncWrite if self.trusts_dsync_writes() => Ok(FlushSync::DsyncWrite),
            FlushSync::DsyncWrite => Err(OpenError::InvalidConfig(format!(
                "flush_sync = \"dsync-write\" but data directory {} is on {}, where an io_uring \
                 RWF_DSYNC write is not known to be durable (trusted only on ext4 and xfs): \
                 use \"auto\" or \"fdatasync\"",
                data_dir.display(),
                self.kind
            ))),
        }
    }
}

/// Fails with a clear error when `data_dir` cannot hold a durable log: a filesystem in memory
/// (tmpfs, ramfs: newer kernels accept O_DIRECT there, but nothing survives a reboot), or one
/// without O_DIRECT (some FUSE mounts, and tmpfs before Linux 6.6). Returns the filesystem.
pub fn check_data_dir(data_dir: &Path) -> Result<Filesystem, OpenError> {
    let filesystem = Filesystem::of(data_dir);
    if let Some(fs) = filesystem.volatile() {
        return Err(OpenError::VolatileFilesystem {
            path: data_dir.to_path_buf(),
            fs,
        });
    }
    let probe = data_dir.join(".direct-io-probe");
    let opened = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = fs::remove_file(&probe);
    match opened {
        Ok(_) => Ok(filesystem),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(OpenError::DirectIoUnsupported {
            path: data_dir.to_path_buf(),
            source: std::sync::Arc::new(e),
        }),
        Err(e) => Err(OpenError::io("probe O_DIRECT in", data_dir, e)),
    }
}

#[cfg(any(test, feature = "testing"))]
/// True when `path` is on tmpfs or ramfs.
pub fn is_tmpfs(path: &Path) -> bool {
    Filesystem::of(path).volatile().is_some()
}

fn statfs_magic(path: &Path) -> Option<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is NUL-terminated; stat is a valid out-pointer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs succeeded, so it filled the struct (it was zeroed before anyway).
    let kind = unsafe { stat.assume_init() }.f_type;
    // `f_type` is an i64 on x86_64 but narrower on some architectures.
    #[allow(clippy::unnecessary_cast)]
    Some(kind as i64)
}

fn magic_name(magic: i64) -> String {
    match magic {
        EXT4_SUPER_MAGIC => "ext2/ext3/ext4".into(),
        XFS_SUPER_MAGIC => "xfs".into(),
        TMPFS_MAGIC => "tmpfs".into(),
        RAMFS_MAGIC => "ramfs".into(),
        0x6573_5546 => "fuse".into(),
        other => format!("filesystem type {other:#x}"),
    }
}

/// The type of the filesystem mounted at the longest mount point that is a path prefix of
/// `dir` (the last such line: a later mount hides an earlier one on the same point).
pub fn mount_type(mounts: &str, dir: &Path) -> Option<String> {
    mount_entry(mounts, dir).map(|(kind, _)| kind)
}

#[cfg(any(test, feature = "testing"))]
/// "TYPE on DEVICE" of the mount `dir` is on, as [`mount_type`] finds it.
pub fn mount_description(mounts: &str, dir: &Path) -> Option<String> {
    mount_entry(mounts, dir).map(|(kind, device)| format!("{kind} on {device}"))
}

fn mount_entry(mounts: &str, dir: &Path) -> Option<(String, String)> {
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_field(point));
        if !dir.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            best = Some((depth, kind.to_string(), unescape_mount_field(device)));
        }
    }
    best.map(|(_, kind, device)| (kind, device))
}

/// The kernel writes space, tab, newline and backslash in mount fields as `\ooo` octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "/dev/vda1 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n\
        /dev/vdb /work xfs rw 0 0\npowerfs /work/fuse\\040dir fuse.powerfs rw 0 0\n\
        /dev/vdc /work ext4 rw 0 0\n";

    #[test]
    fn the_longest_and_latest_matching_mount_point_wins() {
        let kind = |dir: &str| mount_type(MOUNTS, Path::new(dir));
        assert_eq!(kind("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(kind("/home").as_deref(), Some("ext4"));
        // Mounted later on the same point, it hides the xfs mount.
        assert_eq!(kind("/work/data").as_deref(), Some("ext4"));
        assert_eq!(kind("/work/fuse dir/data").as_deref(), Some("fuse.powerfs"));
        // A mount point is a path prefix, not a string prefix.
        assert_eq!(kind("/workspace").as_deref(), Some("ext4"));
        assert_eq!(
            mount_description(MOUNTS, Path::new("/work/data")).as_deref(),
            Some("ext4 on /dev/vdc")
        );
    }

    #[test]
    fn dsync_writes_are_trusted_on_ext4_and_xfs_only() {
        let fs = |kind: &str, magic| Filesystem {
            kind: kind.into(),
            magic,
        };
        assert!(fs("ext4", EXT4_SUPER_MAGIC).trusts_dsync_writes());
        assert!(fs("xfs", XFS_SUPER_MAGIC).trusts_dsync_writes());
        // ext3 shares ext4's magic number; the mount table tells them apart.
        assert!(!fs("ext3", EXT4_SUPER_MAGIC).trusts_dsync_writes());
        // A FUSE filesystem calling itself ext4 is still FUSE.
        assert!(!fs("ext4", 0x6573_5546).trusts_dsync_writes());
        assert!(!fs("fuse.powerfs", 0x6573_5546).trusts_dsync_writes());
        assert!(!fs("btrfs", 0x9123_683e).trusts_dsync_writes());
    }

    #[test]
    fn auto_takes_dsync_writes_only_where_trusted_and_dsync_is_refused_elsewhere() {
        let dir = Path::new("/data");
        let ext4 = Filesystem {
            kind: "ext4".into(),
            magic: EXT4_SUPER_MAGIC,
        };
        let fuse = Filesystem {
            kind: "fuse.powerfs".into(),
            magic: 0x6573_5546,
        };
        let resolve = |fs: &Filesystem, asked| fs.resolve(asked, dir).ok();
        assert_eq!(resolve(&ext4, FlushSync::Auto), Some(FlushSync::DsyncWrite));
        assert_eq!(resolve(&fuse, FlushSync::Auto), Some(FlushSync::Fdatasync));
        assert_eq!(
            resolve(&ext4, FlushSync::Fdatasync),
            Some(FlushSync::Fdatasync)
        );
        assert_eq!(
            resolve(&ext4, FlushSync::DsyncWrite),
            Some(FlushSync::DsyncWrite)
        );
        let refused = fuse.resolve(FlushSync::DsyncWrite, dir);
        assert!(
            matches!(&refused, Err(OpenError::InvalidConfig(m)) if m.contains("fuse.powerfs")),
            "{refused:?}"
        );
    }

    #[test]
    fn the_test_machine_s_temp_dir_is_described() {
        let fs = Filesystem::of(&std::env::temp_dir());
        assert!(!fs.kind.is_empty());
        assert_ne!(fs.magic, 0);
    }
}
