//! The fuser adapter: each callback translates, asks the [`Namespace`], and replies. Errno
//! mapping lives in [`errno`]; file handles, directory snapshots and passthrough backing ids
//! in [`handles`](super::handles).
//!
//! The passthrough rule: a backing id is registered from the file a handle reads, one per
//! inode, shared by its handles. Cache blobs are only ever opened read-only and a write-intent
//! open of a cache inode never reaches this point (the namespace copies the file up and answers
//! ESTALE, so the kernel opens the copy, a different inode): the kernel re-opens a backing file
//! by path with the CLIENT's flags and the daemon's rights, so a cache backing handed to a write
//! would write into the cache. Overlay files are ours to write and get passthrough both ways.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::errno::{io_errno, to_errno};
use super::handles::{Handle, Handles};
use super::namespace::{Caller, Kind, Namespace, NodeInfo, NsError, Opened, SetAttr};

/// Names and attributes can change (a model is pulled, a file written): revalidate every second.
const TTL: Duration = Duration::from_secs(1);
/// A cache file inode is keyed by its snapshot sha: its attributes never change.
const IMMUTABLE_TTL: Duration = Duration::from_secs(60);
/// A model directory of a watched repo: the daemon invalidates its entry and attributes when
/// the watcher reports a change (and the kernel drops them itself on its own changes). Long
/// enough that `ls -lR` of many models finds every model directory's entry still valid (no
/// LOOKUP per model); short enough that events the watcher lost (a queue overflow, after which
/// it rescans) leave a model directory's entry stale for seconds at most.
const WATCHED_TTL: Duration = Duration::from_secs(10);
/// st_blksize of a regular file: `cp`, `dd` and Python size their reads and writes by it, and
/// the daemon path is fastest with requests of up to 1 MiB.
const FILE_BLKSIZE: u32 = 1 << 20;
/// st_blksize of everything else. glibc sizes a directory stream's buffer by it (up to 1 MiB),
/// each `getdents64` asks for that much, and the kernel allocates (vmalloc) a buffer of that
/// size for every READDIRPLUS it sends: 1 MiB per directory listed made `ls -lR` of 10,000
/// models spend a third of its time mapping and freeing pages. One page gives glibc's 32 KiB.
const OTHER_BLKSIZE: u32 = 4096;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub struct MlxkFs {
    ns: Arc<Namespace>,
    want_passthrough: bool,
    /// Extended attributes served; without them getxattr and listxattr answer ENOSYS once and
    /// the kernel never asks again (`ls -l` asks two of every entry it lists).
    xattrs: bool,
    passthrough: AtomicBool,
    handles: Handles,
}

impl MlxkFs {
    pub fn new(ns: Arc<Namespace>, want_passthrough: bool, xattrs: bool) -> MlxkFs {
        MlxkFs {
            ns,
            want_passthrough,
            xattrs,
            passthrough: AtomicBool::new(false),
            handles: Handles::default(),
        }
    }

    fn attr(info: &NodeInfo) -> FileAttr {
        FileAttr {
            ino: INodeNo(info.ino),
            size: info.size,
            blocks: info.blocks,
            atime: info.atime,
            mtime: info.mtime,
            ctime: info.ctime,
            crtime: info.mtime,
            kind: file_type(info.kind),
            perm: info.perm,
            nlink: info.nlink,
            uid: info.uid,
            gid: info.gid,
            rdev: info.rdev,
            flags: 0,
            blksize: if info.kind == Kind::File {
                FILE_BLKSIZE
            } else {
                OTHER_BLKSIZE
            },
        }
    }

    /// How long the kernel may keep a node's attributes.
    fn ttl(info: &NodeInfo) -> Duration {
        if info.kind == Kind::File && info.immutable {
            IMMUTABLE_TTL
        } else if info.watched {
            WATCHED_TTL
        } else {
            TTL
        }
    }

    /// How long the kernel may keep a name's entry. The name can come to mean another inode
    /// (refs/main moves, a copy-up), so it is revalidated every second even when the inode's
    /// attributes never change — except a watched model directory's, which the daemon
    /// invalidates itself.
    fn entry_ttl(info: &NodeInfo) -> Duration {
        if info.watched {
            WATCHED_TTL
        } else {
            TTL
        }
    }

    fn error(&self, e: NsError) -> Errno {
        if e == NsError::ReadOnly {
            self.ns
                .counters
                .write_attempts_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        to_errno(e)
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<NodeInfo, NsError>) {
        match result {
            Ok(info) => reply.entry_with_ttls(
                &Self::ttl(&info),
                &Self::entry_ttl(&info),
                &Self::attr(&info),
                Generation(0),
            ),
            Err(e) => reply.error(self.error(e)),
        }
    }

    /// Keeps an open file as handle `fh`. With passthrough on, the inode's backing id (shared,
    /// or registered from this file by `open_backing`) goes with the handle and is returned;
    /// `None` means the daemon serves this handle's I/O.
    fn keep_file(
        &self,
        fh: u64,
        ino: u64,
        file: File,
        writable: bool,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let backing = if self.passthrough.load(Ordering::Relaxed) {
            match self.handles.backing_for(ino, || open_backing(&file)) {
                Ok(id) => {
                    self.ns
                        .counters
                        .passthrough_opens
                        .fetch_add(1, Ordering::Relaxed);
                    Some(id)
                }
                // No backing exists for this inode, so a cached open is still allowed.
                Err(e) => {
                    self.passthrough_failed(&format!("inode {ino}"), e);
                    None
                }
            }
        } else {
            None
        };
        self.handles.insert(
            fh,
            Handle::File {
                ino,
                file,
                writable,
                _backing: backing.clone(),
            },
        );
        backing
    }

    /// Passthrough is given up for the whole mount the first time the kernel refuses it.
    fn passthrough_failed(&self, what: &str, e: std::io::Error) {
        tracing::warn!("passthrough refused for {what} ({e}); serving I/O from the daemon");
        self.passthrough.store(false, Ordering::Relaxed);
        self.ns.passthrough.store(false, Ordering::Relaxed);
    }

    /// Runs `f` on handle `fh`'s file, which must have been opened for writing.
    fn with_writable<T>(&self, fh: FileHandle, f: impl FnOnce(&File) -> T) -> Result<T, Errno> {
        let h = self.handles.get(fh.0).ok_or(Errno::EBADF)?;
        h.writable_file().map(f).ok_or(Errno::EBADF)
    }

    /// The listing a directory handle reads from (taken afresh when a reader starts over).
    fn dir_names(&self, ino: u64, fh: u64, offset: u64) -> Result<Arc<[OsString]>, Errno> {
        self.handles.listing(
            fh,
            offset,
            || self.ns.list(ino).map_err(|e| self.error(e)),
            Errno::EBADF,
        )
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// O_WRONLY, O_RDWR, O_TRUNC or O_APPEND.
pub fn write_intent(flags: OpenFlags) -> bool {
    flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Requests this large come only from big sequential writers (the kernel sends at most
/// `max_write`, 1 MiB, per request): their data is sent to disk as it arrives.
const EARLY_WRITEBACK_MIN: usize = 512 * 1024;

/// Starts writeback of a range just written, without waiting for it. Through the mount a write
/// is copied twice more than directly (into the daemon, into the overlay file), and the
/// overlay's filesystem would otherwise start writing only at the writer's fsync (or its
/// dirty-page thresholds): starting now overlaps the disk with those copies.
fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open file descriptor the handle owns; it only starts
        // writeback of dirty pages in the range and reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

fn time_of(t: Option<TimeOrNow>) -> Option<Option<SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => Some(t),
        TimeOrNow::Now => None,
    })
}

impl Filesystem for MlxkFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Not ATOMIC_O_TRUNC: with it the daemon would truncate in open(), before the kernel
        // refuses O_TRUNC of a running executable (ETXTBSY). O_TRUNC arrives as a setattr.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks capability");
            }
        }
        let _ = config.set_max_write(1 << 20);
        if self.want_passthrough && !may_register_backing_files() {
            // The kernel checks CAP_SYS_ADMIN when a backing file is registered: without it
            // every open would be refused, so passthrough is off from the start and the
            // mount says so.
            tracing::info!(
                "kernel FUSE passthrough needs CAP_SYS_ADMIN (root): serving reads from the daemon"
            );
        } else if self.want_passthrough {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    // Backing files on a stacked filesystem (overlayfs) need depth 2.
                    let _ = config.set_max_stack_depth(2);
                    self.passthrough.store(true, Ordering::Relaxed);
                }
                Err(_) => tracing::warn!(
                    "kernel FUSE passthrough unavailable: serving reads from the daemon"
                ),
            }
        }
        self.ns
            .passthrough
            .store(self.passthrough.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.ns.lookup(parent.0, name);
        tracing::trace!(parent = parent.0, ?name, result = ?r.as_ref().map(|i| i.ino), "lookup");
        self.reply_entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        tracing::trace!(ino = ino.0, nlookup, "forget");
        self.ns.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let file = handle.as_deref().and_then(Handle::file);
        let r = match self.ns.getattr(ino.0, file) {
            // fstat(2) of an open, unlinked file comes without its handle: any handle of the
            // inode describes it.
            Err(NsError::NotFound | NsError::Stale) => self
                .handles
                .any_file_of(ino.0, |f| self.ns.getattr(ino.0, Some(f)))
                .unwrap_or(Err(NsError::Stale)),
            r => r,
        };
        match r {
            Ok(info) => reply.attr(&Self::ttl(&info), &Self::attr(&info)),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_of(atime),
            mtime: time_of(mtime),
        };
        // A truncate through a writable handle uses that handle (the file may be unlinked).
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let file = handle.as_deref().and_then(Handle::writable_file);
        match self.ns.setattr(ino.0, &set, file) {
            // A cache inode answers with its own, unchanged attributes, not cached: the change
            // went to its copy, which the next lookup finds.
            Ok(info) if info.immutable => reply.attr(&Duration::ZERO, &Self::attr(&info)),
            Ok(info) => reply.attr(&TTL, &Self::attr(&info)),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ns.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .ns
            .mknod(parent.0, name, mode & !umask, rdev, caller(req));
        self.reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.ns.mkdir(parent.0, name, mode & !umask, caller(req));
        self.reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ns.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ns.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name;
        let r = self.ns.symlink(parent.0, name, target, caller(req));
        self.reply_entry(reply, r);
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
        match self
            .ns
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname;
        let r = self.ns.link(ino.0, newparent.0, name);
        self.reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.ns.counters.opens.fetch_add(1, Ordering::Relaxed);
        let intent = write_intent(flags);
        let opened = match self.ns.open(ino.0, flags.0, intent) {
            Ok(o) => o,
            Err(e) => {
                tracing::trace!(ino = ino.0, flags = flags.0, ?e, "open refused");
                return reply.error(self.error(e));
            }
        };
        let fh = self.handles.next_fh();
        let (file, writable, cacheable) = match opened {
            Opened::Bytes(bytes) => {
                self.handles.insert(fh, Handle::Bytes(bytes));
                return reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Opened::Blob(file) => (file, false, true),
            Opened::Upper(file) => (file, intent, false),
        };
        if cacheable {
            // Read front to back by sequential readers when the daemon serves it.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
            );
        }
        match self.keep_file(fh, ino.0, file, writable, |f| reply.open_backing(f)) {
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            // A cache blob's content never changes: the kernel may keep its pages.
            None if cacheable => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            None => reply.opened(FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (info, file) = match self
            .ns
            .create(parent.0, name, mode & !umask, flags, caller(req))
        {
            Ok(r) => r,
            Err(e) => return reply.error(self.error(e)),
        };
        self.ns.counters.opens.fetch_add(1, Ordering::Relaxed);
        let fh = self.handles.next_fh();
        let attr = Self::attr(&info);
        let flags = FopenFlags::empty();
        match self.keep_file(fh, info.ino, file, true, |f| reply.open_backing(f)) {
            Some(id) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), FileHandle(fh), flags, &id)
            }
            None => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), flags),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        self.ns.counters.reads.fetch_add(1, Ordering::Relaxed);
        match &*handle {
            Handle::Bytes(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                self.ns
                    .counters
                    .bytes_read
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
                reply.data(&bytes[start..end]);
            }
            Handle::File { file, .. } => READ_BUF.with(|buf| {
                // One buffer per worker thread, reused: no allocation or zeroing per request.
                let mut buf = buf.borrow_mut();
                if buf.len() < size as usize {
                    buf.resize(size as usize, 0);
                }
                let buf = &mut buf[..size as usize];
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return reply.error(io_errno(e)),
                    }
                }
                self.ns
                    .counters
                    .bytes_read
                    .fetch_add(filled as u64, Ordering::Relaxed);
                reply.data(&buf[..filled]);
            }),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.with_writable(fh, |file| {
            file.write_all_at(data, offset).map_err(io_errno)?;
            if data.len() >= EARLY_WRITEBACK_MIN {
                start_writeback(file, offset, data.len());
            }
            Ok(())
        });
        match r.and_then(|r| r) {
            Ok(()) => {
                let c = &self.ns.counters;
                c.writes.fetch_add(1, Ordering::Relaxed);
                c.bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (data goes to the overlay file as it is written, and POSIX
        // locks stay in the kernel): ENOSYS once, and the kernel sends no more FLUSH requests —
        // one round trip less per file closed (an untar closes one per file).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Dropping the handle drops its share of the backing id (and closes the fd).
        if let Some(Handle::File { writable: true, .. }) = self.handles.remove(fh.0) {
            self.ns.released_writable(ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self.handles.get(fh.0);
        let r = match handle.as_deref().and_then(Handle::writable_file) {
            Some(file) if datasync => file.sync_data(),
            Some(file) => file.sync_all(),
            None => Ok(()),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if write_intent(flags) {
            return reply.error(Errno::EISDIR);
        }
        if let Err(e) = self.ns.check_dir(ino.0) {
            return reply.error(self.error(e));
        }
        let fh = self.handles.next_fh();
        self.handles.open_dir(fh);
        reply.opened(FileHandle(fh), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let names = match self.dir_names(ino.0, fh.0, offset) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // `.` and `..` first; the kernel fills in `..`'s real inode.
        let dots = [(".", ino.0), ("..", ino.0)];
        for (i, (name, dino)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*dino), (i + 1) as u64, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, name) in names.iter().enumerate().skip(skip) {
            // Plain readdir takes no reference: stat the entry without keeping it.
            let Ok(info) = self.ns.lookup(ino.0, name) else {
                continue;
            };
            self.ns.forget(info.ino, 1);
            if reply.add(
                INodeNo(info.ino),
                (i + 3) as u64,
                file_type(info.kind),
                name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let names = match self.dir_names(ino.0, fh.0, offset) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let this = match self.ns.getattr(ino.0, None) {
            Ok(i) => i,
            Err(e) => return reply.error(self.error(e)),
        };
        let attr = Self::attr(&this);
        for (i, name) in [".", ".."].iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(ino.0),
                (i + 1) as u64,
                name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                return reply.ok();
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, name) in names.iter().enumerate().skip(skip) {
            // Every entry but `.` and `..` counts as a lookup for the kernel.
            let Ok(info) = self.ns.lookup(ino.0, name) else {
                continue;
            };
            // One time for the entry and the attributes here: a second, or longer for a
            // watched model directory (both are invalidated by the daemon then).
            if reply.add(
                INodeNo(info.ino),
                (i + 3) as u64,
                name,
                &Self::entry_ttl(&info),
                &Self::attr(&info),
                Generation(0),
            ) {
                self.ns.forget(info.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove_listing(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(self.ns.statfs_path()) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // The status file's invalidation request is a setxattr too, and always served.
        if !self.xattrs && !self.ns.is_status_file(ino.0) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.ns.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self.ns.getxattr(ino.0, name, size as usize) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self.ns.listxattr(ino.0, size as usize) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self.ns.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); this only says the
        // node exists.
        match self.ns.getattr(ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(self.error(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.with_writable(fh, |file| {
            nix::fcntl::fallocate(
                file,
                nix::fcntl::FallocateFlags::from_bits_retain(mode),
                offset as i64,
                length as i64,
            )
            .map_err(|e| Errno::from_i32(e as i32))
        });
        match r.and_then(|r| r) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let handle = self.handles.get(fh.0);
        let Some(file) = handle.as_deref().and_then(Handle::file) else {
            return reply.error(Errno::EBADF);
        };
        // SAFETY: a valid fd owned by the handle, which the map entry keeps alive.
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if r < 0 {
            return reply.error(io_errno(std::io::Error::last_os_error()));
        }
        reply.offset(r)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let input = self.handles.get(fh_in.0);
        let output = self.handles.get(fh_out.0);
        let (Some(src), Some(dst)) = (
            input.as_deref().and_then(Handle::file),
            output.as_deref().and_then(Handle::writable_file),
        ) else {
            return reply.error(Errno::EBADF);
        };
        let mut off_in = offset_in as i64;
        let mut off_out = offset_out as i64;
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        // SAFETY: valid fds kept alive by the handle map entries; offsets point at locals.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        if r < 0 {
            return reply.error(io_errno(std::io::Error::last_os_error()));
        }
        reply.written(r as u32);
    }

    /// Model files are not terminals or devices (Python asks isatty via TCGETS on every open).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

/// Whether this process holds CAP_SYS_ADMIN, which the kernel requires to register a
/// passthrough backing file (FUSE_DEV_IOC_BACKING_OPEN).
fn may_register_backing_files() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}
