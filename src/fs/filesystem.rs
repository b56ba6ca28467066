//! The fuser adapter: each callback translates, asks the [`Namespace`], and replies. Errno
//! mapping lives in [`errno`]; file handles and passthrough backing ids live here.
//!
//! Read-only: every write path answers EROFS. A write-intent open of a cache file is refused
//! BEFORE any passthrough is granted: the kernel re-opens a backing file by path with the
//! client's flags and the daemon's rights, so granting it would write into the cache.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::errno::to_errno;
use super::namespace::{Kind, Namespace, NodeInfo, OpenTarget};

/// Directories and names can change (a model is pulled or removed): revalidate every second.
const DIR_TTL: Duration = Duration::from_secs(1);
/// A file inode is keyed by its snapshot sha: its content never changes.
const FILE_TTL: Duration = Duration::from_secs(60);

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

enum Handle {
    /// A cache blob: read by the kernel itself (passthrough) or by pread here.
    Blob {
        file: File,
        _backing: Option<Arc<BackingId>>,
    },
    /// Served from memory.
    Bytes(Arc<[u8]>),
}

pub struct MlxkFs {
    ns: Arc<Namespace>,
    want_passthrough: bool,
    passthrough: AtomicBool,
    handles: DashMap<u64, Handle>,
    next_fh: AtomicU64,
    /// One backing id per inode, shared by its open handles, dropped with the last of them.
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
    uid: u32,
    gid: u32,
}

impl MlxkFs {
    pub fn new(ns: Arc<Namespace>, want_passthrough: bool) -> MlxkFs {
        MlxkFs {
            ns,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            backing: Mutex::new(HashMap::new()),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn attr(&self, info: &NodeInfo) -> FileAttr {
        let nlink = if info.kind == Kind::Dir { 2 } else { 1 };
        let kind = file_type(info.kind);
        FileAttr {
            ino: INodeNo(info.ino),
            size: info.size,
            blocks: info.size.div_ceil(512),
            atime: info.mtime,
            mtime: info.mtime,
            ctime: info.mtime,
            crtime: info.mtime,
            kind,
            perm: info.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 1 << 20,
        }
    }

    fn ttl(info: &NodeInfo) -> Duration {
        if info.kind == Kind::File && info.immutable {
            FILE_TTL
        } else {
            DIR_TTL
        }
    }

    /// A directory's entries, `.` and `..` first (both with the directory's own attributes).
    fn listing(&self, ino: u64) -> Result<Vec<(String, NodeInfo)>, Errno> {
        let this = self.ns.getattr(ino).map_err(to_errno)?;
        let entries = self.ns.readdir(ino).map_err(to_errno)?;
        let mut all = Vec::with_capacity(entries.len() + 2);
        all.push((".".to_string(), this.clone()));
        all.push(("..".to_string(), this));
        all.extend(entries);
        Ok(all)
    }

    fn refuse_write(&self) -> Errno {
        self.ns
            .counters
            .write_attempts_refused
            .fetch_add(1, Ordering::Relaxed);
        Errno::EROFS
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The inode's live backing id, or a new one registered from `file`.
    fn backing_for(
        &self,
        ino: u64,
        file: &File,
        reply: &ReplyOpen,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = map.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(reply.open_backing(file)?);
        map.insert(ino, Arc::downgrade(&id));
        map.retain(|_, w| w.strong_count() > 0);
        Ok(id)
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// O_WRONLY, O_RDWR, O_TRUNC or O_APPEND.
pub fn write_intent(flags: OpenFlags) -> bool {
    flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0
}

impl Filesystem for MlxkFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
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
        if self.want_passthrough {
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
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.ns.lookup(parent.0, name) {
            // The name can come to mean another inode (refs/main moves), so the entry is
            // revalidated every second even when the inode's attributes never change.
            Ok(info) => reply.entry_with_ttls(
                &Self::ttl(&info),
                &DIR_TTL,
                &self.attr(&info),
                Generation(0),
            ),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ns.getattr(ino.0) {
            Ok(info) => reply.attr(&Self::ttl(&info), &self.attr(&info)),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
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
        reply.error(self.refuse_write());
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_write());
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(self.refuse_write());
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write());
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write());
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(self.refuse_write());
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write());
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(self.refuse_write());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.ns.counters.opens.fetch_add(1, Ordering::Relaxed);
        if write_intent(flags) {
            return reply.error(self.refuse_write());
        }
        let target = match self.ns.open_target(ino.0) {
            Ok(t) => t,
            Err(e) => return reply.error(to_errno(e)),
        };
        let fh = self.next_fh();
        match target {
            OpenTarget::Bytes(bytes) => {
                self.handles.insert(fh, Handle::Bytes(bytes));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            OpenTarget::Blob(path) => {
                // Read-only, always: this fd is what a passthrough backing is registered from.
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => return reply.error(Errno::from(e)),
                };
                if self.passthrough.load(Ordering::Relaxed) {
                    match self.backing_for(ino.0, &file, &reply) {
                        Ok(id) => {
                            self.ns
                                .counters
                                .passthrough_opens
                                .fetch_add(1, Ordering::Relaxed);
                            self.handles.insert(
                                fh,
                                Handle::Blob {
                                    file,
                                    _backing: Some(id.clone()),
                                },
                            );
                            return reply.opened_passthrough(
                                FileHandle(fh),
                                FopenFlags::empty(),
                                &id,
                            );
                        }
                        Err(e) => {
                            // No backing exists for this inode, so a cached open is still allowed.
                            tracing::warn!(path = %path.display(), "passthrough refused ({e}); serving reads from the daemon");
                            self.passthrough.store(false, Ordering::Relaxed);
                            self.ns.passthrough.store(false, Ordering::Relaxed);
                        }
                    }
                }
                // The daemon reads this blob front to back for sequential readers: ask for
                // the larger readahead window.
                let _ = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
                );
                self.handles.insert(
                    fh,
                    Handle::Blob {
                        file,
                        _backing: None,
                    },
                );
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
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
        let Some(handle) = self.handles.get(&fh.0) else {
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
            Handle::Blob { file, .. } => READ_BUF.with(|buf| {
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
                        Err(e) => return reply.error(Errno::from(e)),
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
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(self.refuse_write());
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Dropping the handle drops its share of the backing id (and closes the fd).
        self.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if write_intent(flags) {
            return reply.error(Errno::EISDIR);
        }
        match self.ns.getattr(ino.0) {
            Ok(info) if info.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (name, info)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(info.ino),
                (i + 1) as u64,
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
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (name, info)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(info.ino),
                (i + 1) as u64,
                name,
                &DIR_TTL,
                &self.attr(info),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(self.ns.cache().root()) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.fragment_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write());
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_write());
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.ns.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.refuse_write());
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_write());
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(self.refuse_write());
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
