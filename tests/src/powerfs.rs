//! A FUSE filesystem, in memory, that loses power on command: file contents and sizes not
//! covered by an `fsync`/`fdatasync` of their file, and directory entries not covered by an
//! `fsync` of their directory, are dropped all at once by [`PowerFs::power_cut`] — the model
//! of a machine whose disk cache dies with it (Jepsen's lazyfs does the same). The kernel
//! reaches it through its real FUSE paths, so a program under test uses its real I/O
//! (io_uring, O_DIRECT, mmap) and learns nothing of the test.
//!
//! Only root can mount it here (the mount is made with mount(2), no fusermount); see
//! [`PowerFs::unavailable`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno as OsErrno;
use nix::mount::MntFlags;

/// How long an unmount may wait for the filesystem to stop being busy.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(10);
/// The unit in which file contents become durable (a page).
const BLOCK_BYTES: u64 = 4096;
/// How long the kernel may cache attributes and entries; it makes every change itself, so
/// its cache never goes stale while mounted, and a power cut remounts.
const TTL: Duration = Duration::from_secs(1);

/// A file's bytes as the program sees them, and as the last sync left them.
#[derive(Default)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Blocks whose live bytes may differ from the durable ones.
    dirty: BTreeSet<u64>,
}

impl FileData {
    fn mark(&mut self, from: u64, to: u64) {
        if to > from {
            self.dirty
                .extend(from / BLOCK_BYTES..to.div_ceil(BLOCK_BYTES));
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset as usize + bytes.len();
        let old_len = self.live.len() as u64;
        if end > self.live.len() {
            self.live.resize(end, 0);
        }
        self.live[offset as usize..end].copy_from_slice(bytes);
        self.mark(offset.min(old_len), end as u64);
    }

    fn set_len(&mut self, len: u64) {
        let old = self.live.len() as u64;
        self.live.resize(len as usize, 0);
        self.mark(old.min(len), old.max(len));
    }

    fn sync(&mut self) {
        self.durable.resize(self.live.len(), 0);
        for block in std::mem::take(&mut self.dirty) {
            let from = (block * BLOCK_BYTES) as usize;
            let to = (from + BLOCK_BYTES as usize).min(self.live.len());
            if from < to {
                self.durable[from..to].copy_from_slice(&self.live[from..to]);
            }
        }
    }

    /// Returns whether anything was lost.
    fn cut(&mut self) -> bool {
        let lost = !self.dirty.is_empty();
        self.live.clone_from(&self.durable);
        self.dirty.clear();
        lost
    }
}

/// A directory's entries as the program sees them, and as its last sync left them.
#[derive(Default)]
struct DirData {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

enum Content {
    File(FileData),
    Dir(DirData),
}

struct Node {
    content: Content,
    perm: u16,
}

/// What a power cut dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Files that lost writes or size changes.
    pub files: usize,
    /// Directories that lost entries created, renamed or removed.
    pub dirs: usize,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Syncs of files and of directories so far.
    file_syncs: u64,
    dir_syncs: u64,
}

impl State {
    fn new() -> Self {
        let root = Node {
            content: Content::Dir(DirData::default()),
            perm: 0o755,
        };
        Self {
            nodes: HashMap::from([(u64::from(INodeNo::ROOT), root)]),
            next_ino: u64::from(INodeNo::ROOT) + 1,
            file_syncs: 0,
            dir_syncs: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.content {
            Content::File(f) => (FileType::RegularFile, f.live.len() as u64, 1),
            Content::Dir(_) => (FileType::Directory, 0, 2),
        };
        let epoch = SystemTime::UNIX_EPOCH;
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: epoch,
            mtime: epoch,
            ctime: epoch,
            crtime: epoch,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK_BYTES as u32,
            flags: 0,
        })
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::Dir(d)) => Ok(d),
            Some(Content::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::File(f)) => Ok(f),
            Some(Content::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entry(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir_mut(parent)?
            .live
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Adds a new node under `parent`, failing if the name is taken.
    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        content: Content,
        perm: u16,
    ) -> Result<u64, Errno> {
        let ino = self.next_ino;
        let dir = self.dir_mut(parent)?;
        if dir.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.live.insert(name.to_os_string(), ino);
        self.next_ino += 1;
        self.nodes.insert(ino, Node { content, perm });
        Ok(ino)
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.nodes.get(&ino).map(|n| &n.content), Some(Content::Dir(d)) if d.live.is_empty())
    }

    fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values_mut() {
            match &mut node.content {
                Content::File(f) => report.files += usize::from(f.cut()),
                Content::Dir(d) => {
                    if d.live != d.durable {
                        report.dirs += 1;
                        d.live.clone_from(&d.durable);
                    }
                }
            }
        }
        report
    }
}

/// The FUSE side: answers the kernel from the shared state.
struct Handler {
    state: Arc<Mutex<State>>,
    gate: Arc<Gate>,
}

/// While closed, every operation waits: the filesystem hangs, as a stalled disk would.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Handler {
    fn state(&self) -> MutexGuard<'_, State> {
        self.gate.pass();
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply_entry(&self, result: Result<u64, Errno>, reply: ReplyEntry) {
        let state = self.state();
        match result.and_then(|ino| state.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Handler {
    /// Asks for asynchronous direct I/O, as libfuse does by default (so most FUSE filesystems
    /// run with it): the kernel then completes an asynchronous O_DIRECT write, an io_uring one,
    /// when the daemon answers the write, without the sync `RWF_DSYNC` asks for.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_ASYNC_DIO)
            .map_err(|_| io::Error::other("the kernel offers no asynchronous direct I/O"))
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.state().entry(parent.into(), name);
        self.reply_entry(found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.into()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let ino = u64::from(ino);
        if let Some(len) = size {
            match state.file_mut(ino) {
                Ok(f) => f.set_len(len),
                Err(e) => return reply.error(e),
            }
        }
        if let (Some(mode), Some(node)) = (mode, state.nodes.get_mut(&ino)) {
            node.perm = (mode & 0o7777) as u16;
        }
        match state.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Content::Dir(DirData::default());
        let added = self
            .state()
            .add(parent.into(), name, dir, (mode & 0o7777) as u16);
        self.reply_entry(added, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let file = Content::File(FileData::default());
        let added = state.add(parent.into(), name, file, (mode & 0o7777) as u16);
        match added.and_then(|ino| state.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let removed = state
            .dir_mut(parent.into())
            .and_then(|d| d.live.remove(name).map(|_| ()).ok_or(Errno::ENOENT));
        empty(removed, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let removed = state.entry(parent.into(), name).and_then(|ino| {
            if !state.is_empty_dir(ino) {
                return Err(Errno::ENOTEMPTY);
            }
            state.dir_mut(parent.into())?.live.remove(name);
            Ok(())
        });
        empty(removed, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let moved = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            let ino = state.entry(parent.into(), name)?;
            let target = state.dir_mut(newparent.into())?.live.get(newname).copied();
            if let Some(target) = target {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                let target_is_dir = matches!(
                    state.nodes.get(&target).map(|n| &n.content),
                    Some(Content::Dir(_))
                );
                if target_is_dir && !state.is_empty_dir(target) {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            state.dir_mut(parent.into())?.live.remove(name);
            state
                .dir_mut(newparent.into())?
                .live
                .insert(newname.to_os_string(), ino);
            Ok(())
        })();
        empty(moved, reply);
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        match state.file_mut(ino.into()) {
            Ok(f) => {
                let from = (offset as usize).min(f.live.len());
                let to = (from + size as usize).min(f.live.len());
                reply.data(&f.live[from..to]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().file_mut(ino.into()) {
            Ok(f) => {
                f.write(offset, data);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        state.file_syncs += 1;
        empty(state.file_mut(ino.into()).map(FileData::sync), reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let names: Vec<(OsString, u64)> = match state.dir_mut(ino.into()) {
            Ok(d) => d.live.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            Err(e) => return reply.error(e),
        };
        let dots = [
            (OsString::from("."), u64::from(ino)),
            (OsString::from(".."), u64::from(ino)),
        ];
        let all = dots.into_iter().chain(names);
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match state.nodes.get(&child).map(|n| &n.content) {
                Some(Content::File(_)) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        state.dir_syncs += 1;
        let synced = state
            .dir_mut(ino.into())
            .map(|d| d.durable.clone_from(&d.live));
        empty(synced, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: this filesystem is bounded by the test's memory, not by a size.
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            1 << 20,
            1 << 19,
            BLOCK_BYTES as u32,
            255,
            BLOCK_BYTES as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut state = self.state();
        let grown = state.file_mut(ino.into()).map(|f| {
            if offset + length > f.live.len() as u64 {
                f.set_len(offset + length);
            }
        });
        empty(grown, reply);
    }
}

/// A mounted [`PowerFs`]; unmounted when dropped.
pub struct PowerFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    gate: Arc<Gate>,
    session: Option<BackgroundSession>,
}

impl PowerFs {
    /// Why the filesystem cannot be mounted here, if it cannot (not root, no `/dev/fuse`).
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("mounting FUSE without fusermount needs root".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("/dev/fuse is missing (no FUSE in this kernel or container)".into());
        }
        None
    }

    /// Mounts an empty filesystem at `mountpoint` (an existing, empty directory).
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let mut fs = Self {
            mountpoint: mountpoint.to_path_buf(),
            state: Arc::new(Mutex::new(State::new())),
            gate: Arc::default(),
            session: None,
        };
        fs.session = Some(fs.spawn()?);
        Ok(fs)
    }

    fn spawn(&self) -> io::Result<BackgroundSession> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerfs".into()),
            MountOption::Subtype("powerfs".into()),
        ];
        let handler = Handler {
            state: Arc::clone(&self.state),
            gate: Arc::clone(&self.gate),
        };
        fuser::spawn_mount(handler, &self.mountpoint, &config)
    }

    /// Cuts the power: unmounts (the kernel hands over what it still caches, such as dirty
    /// mapped pages, as unsynced writes), drops everything no sync covered, and mounts again
    /// with an empty kernel cache. Nothing may have a file open on the filesystem.
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        self.unmount()?;
        let report = self.lock().cut();
        self.session = Some(self.spawn()?);
        Ok(report)
    }

    /// Unmounts, waiting out a moment of "busy": a process another test thread is starting
    /// holds copies of this process's descriptors, some perhaps on this filesystem, until it
    /// calls exec.
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + UNMOUNT_PATIENCE;
        loop {
            match nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
                Ok(()) => break,
                Err(OsErrno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    self.session = Some(session);
                    return Err(io::Error::from(e));
                }
            }
        }
        // The kernel has ended the session; the thread serving it returns.
        session.join()
    }

    /// Makes every operation on the filesystem wait until [`PowerFs::thaw`].
    pub fn freeze(&self) {
        self.gate.set(true);
    }

    /// Lets waiting and later operations through again.
    pub fn thaw(&self) {
        self.gate.set(false);
    }

    /// File and directory syncs the filesystem has received so far.
    pub fn syncs(&self) -> (u64, u64) {
        let state = self.lock();
        (state.file_syncs, state.dir_syncs)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        self.thaw();
        if self.unmount().is_err() {
            // Still busy: detach it, so that the test's directory can go.
            let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        }
    }
}
