//! The randomized operation model run against the namespace itself, without FUSE or a kernel
//! (mountpoint-s3's reference-model tests are the model): the same operations as
//! tests/exerciser.rs, applied to [`Namespace`] through a small model of what the kernel's VFS
//! does with a path (walk it component by component, follow symlinks where the call does,
//! retry once on ESTALE, look the name up before creating it, truncate after an O_TRUNC open)
//! AND to a plain reference directory. After every step both give the same result (success,
//! or the same errno) and the trees compare equal; at the end the cache's full-tree
//! fingerprint is unchanged and cache files opened at the start still read the cache's bytes.
//! It runs where /dev/fuse is absent, and fast enough for tens of thousands of operations.
//!
//! `MLXK_MODEL_OPS` (default 20,000) and `MLXK_MODEL_SEED` (default: from the clock) steer it;
//! the seed is printed and named in every failure. `MLXK_MODEL_TREE_EVERY` (default 10)
//! spaces out the whole-tree comparisons (the directories an operation touched, and the
//! content it wrote, are compared at every step).

mod common;
mod ops;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{tree_state, Fixture};
use mlxk_fs::fs::lower::LowerTree;
use mlxk_fs::fs::namespace::{
    Caller, Kind, Namespace, NodeInfo, NsError, Opened, SetAttr, ROOT_INO,
};
use mlxk_fs::store::cache::HubCache;
use mlxk_fs::store::overlay::OverlayDir;
use ops::{diff, snapshot, Entry, Op, Outcome, Run, Subject};

/// The directory of the union the run works in: an org with several cached models.
const WORK: &str = "mlx-community";
/// Symlinks followed in one walk before ELOOP (the kernel's limit).
const MAX_LINKS: usize = 40;

type Errno = i32;

fn err(e: NsError) -> Errno {
    e.errno()
}

/// What the kernel does with paths, over the namespace: inode references taken by lookups are
/// given back when the operation ends (as the kernel's dentry cache eventually does).
struct Vfs<'a> {
    ns: &'a Namespace,
    work: u64,
    caller: Caller,
    umask: u32,
    looked_up: Vec<u64>,
}

/// A resolved path: its parent directory (and where that really is, symlinks followed), its
/// last name, and what is there (if anything).
struct Place {
    parent: u64,
    parent_path: PathBuf,
    name: OsString,
    node: Option<NodeInfo>,
}

impl Place {
    /// Where the name really is (its parent's real path and the name).
    fn real_path(&self) -> PathBuf {
        self.parent_path.join(&self.name)
    }
}

impl<'a> Vfs<'a> {
    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<Option<NodeInfo>, Errno> {
        match self.ns.lookup(parent, name) {
            Ok(info) => {
                self.looked_up.push(info.ino);
                Ok(Some(info))
            }
            Err(NsError::NotFound) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Gives the kernel's references back (end of an operation).
    fn release(&mut self) {
        for ino in self.looked_up.drain(..) {
            self.ns.forget(ino, 1);
        }
    }

    /// Resolves `path` below directory `dir`: every component but the last must be a
    /// directory (symlinks followed); the last is followed too when `follow` says so.
    fn walk_from(
        &mut self,
        dir: (u64, PathBuf),
        path: &Path,
        follow: bool,
        links: &mut usize,
    ) -> Result<Place, Errno> {
        let comps: Vec<&OsStr> = path.iter().collect();
        let Some((last, parents)) = comps.split_last() else {
            return Err(libc::ENOENT);
        };
        let (mut cur, mut cur_path) = dir;
        for c in parents {
            let info = self.lookup(cur, c)?.ok_or(libc::ENOENT)?;
            (cur, cur_path) = match info.kind {
                Kind::Dir => (info.ino, cur_path.join(c)),
                Kind::Symlink => {
                    let p = self.follow((cur, cur_path), info.ino, links)?;
                    match p.node {
                        Some(ref n) if n.kind == Kind::Dir => (n.ino, p.real_path()),
                        Some(_) => return Err(libc::ENOTDIR),
                        None => return Err(libc::ENOENT),
                    }
                }
                _ => return Err(libc::ENOTDIR),
            };
        }
        let node = self.lookup(cur, last)?;
        match node {
            Some(n) if follow && n.kind == Kind::Symlink => {
                self.follow((cur, cur_path), n.ino, links)
            }
            node => Ok(Place {
                parent: cur,
                parent_path: cur_path,
                name: last.to_os_string(),
                node,
            }),
        }
    }

    /// Where symlink `link` (in directory `dir`) leads.
    fn follow(
        &mut self,
        dir: (u64, PathBuf),
        link: u64,
        links: &mut usize,
    ) -> Result<Place, Errno> {
        *links += 1;
        if *links > MAX_LINKS {
            return Err(libc::ELOOP);
        }
        let target = self.ns.readlink(link).map_err(err)?;
        let target = PathBuf::from(OsStr::from_bytes(&target));
        // The generator's targets are names in the link's own directory.
        assert!(target.is_relative() && target.components().count() == 1);
        self.walk_from(dir, &target, true, links)
    }

    fn walk(&mut self, path: &str, follow: bool) -> Result<Place, Errno> {
        self.walk_from((self.work, PathBuf::new()), Path::new(path), follow, &mut 0)
    }

    /// The existing node at `path`.
    fn existing(&mut self, path: &str, follow: bool) -> Result<NodeInfo, Errno> {
        self.walk(path, follow)?.node.ok_or(libc::ENOENT)
    }

    /// Runs `f` on the node at `path`, walking again once if it answers ESTALE (the kernel's
    /// retry with revalidation: a copy-up replaced the node).
    fn on_node<T>(
        &mut self,
        path: &str,
        follow: bool,
        mut f: impl FnMut(&Namespace, &NodeInfo) -> Result<T, NsError>,
    ) -> Result<T, Errno> {
        let node = self.existing(path, follow)?;
        match f(self.ns, &node) {
            Err(NsError::Stale) => {
                let node = self.existing(path, follow)?;
                f(self.ns, &node).map_err(err)
            }
            r => r.map_err(err),
        }
    }

    /// open(2) of an existing node: a directory only for reading (then any read is EISDIR).
    fn open_node(&mut self, path: &str, follow: bool, flags: i32) -> Result<(u64, Opened), Errno> {
        let acc = flags & libc::O_ACCMODE;
        let intent = acc != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_APPEND) != 0;
        let node = self.existing(path, follow)?;
        if node.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let mut ino = node.ino;
        let opened = match self.ns.open(ino, flags, intent) {
            Err(NsError::Stale) => {
                ino = self.existing(path, follow)?.ino;
                self.ns.open(ino, flags, intent)
            }
            r => r,
        }
        .map_err(err)?;
        if flags & libc::O_TRUNC != 0 {
            // No atomic O_TRUNC: the kernel truncates with a setattr once the open succeeded.
            let file = match &opened {
                Opened::Upper(f) if acc != libc::O_RDONLY => Some(f),
                _ => None,
            };
            let set = SetAttr {
                size: Some(0),
                ..SetAttr::default()
            };
            self.ns.setattr(ino, &set, file).map_err(err)?;
        }
        Ok((ino, opened))
    }

    fn create(&mut self, place: &Place, flags: i32) -> Result<(u64, File), Errno> {
        let (info, file) = self
            .ns
            .create(
                place.parent,
                &place.name,
                0o644 & !self.umask,
                flags,
                self.caller,
            )
            .map_err(err)?;
        self.looked_up.push(info.ino);
        Ok((info.ino, file))
    }

    fn read_all(opened: &Opened) -> Result<Vec<u8>, Errno> {
        match opened {
            Opened::Upper(f) | Opened::Blob(f) => {
                let mut v = Vec::new();
                f.read_at_all(&mut v)
                    .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                Ok(v)
            }
            Opened::Bytes(b) => Ok(b.to_vec()),
        }
    }

    fn setattr(&mut self, path: &str, follow: bool, set: SetAttr) -> Outcome {
        self.on_node(path, follow, |ns, n| {
            ns.setattr(n.ino, &set, None).map(drop)
        })
    }

    /// The file an operation writes through, released afterwards like a closed fd.
    fn write_at(&mut self, ino: u64, file: &File, data: &[u8], offset: u64) -> Outcome {
        file.write_all_at(data, offset)
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        self.ns.released_writable(ino);
        Ok(())
    }

    fn apply_inner(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Create { path, data } => {
                let place = self.walk(path, false)?;
                if place.node.is_some() {
                    return Err(libc::EEXIST);
                }
                let (ino, file) =
                    self.create(&place, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
                self.write_at(ino, &file, data, 0)
            }
            Op::OpenWrite {
                path,
                flags,
                offset,
                data,
            } => {
                let acc = flags & libc::O_ACCMODE;
                let (creat, excl) = (flags & libc::O_CREAT != 0, flags & libc::O_EXCL != 0);
                let place = self.walk(path, !(creat && excl))?;
                let (ino, opened) = match &place.node {
                    Some(_) if creat && excl => return Err(libc::EEXIST),
                    Some(_) => self.open_node(path, true, *flags)?,
                    None if creat => {
                        let (ino, f) = self.create(&place, *flags)?;
                        (ino, Opened::Upper(f))
                    }
                    None => return Err(libc::ENOENT),
                };
                if acc == libc::O_RDONLY {
                    return Self::read_all(&opened).map(drop);
                }
                let Opened::Upper(file) = &opened else {
                    panic!("a write-intent open gave something other than an overlay file");
                };
                let at = if flags & libc::O_APPEND != 0 {
                    file.metadata()
                        .map_err(|e| e.raw_os_error().unwrap_or(-1))?
                        .len()
                } else {
                    *offset
                };
                self.write_at(ino, file, data, at)
            }
            Op::Truncate { path, len } => {
                let node = self.existing(path, true)?;
                if node.kind == Kind::Dir {
                    return Err(libc::EISDIR);
                }
                self.setattr(
                    path,
                    true,
                    SetAttr {
                        size: Some(*len),
                        ..SetAttr::default()
                    },
                )
            }
            Op::Ftruncate { path, len } => {
                let (ino, opened) = self.open_node(path, true, libc::O_RDWR)?;
                let Opened::Upper(file) = &opened else {
                    panic!("O_RDWR gave something other than an overlay file");
                };
                let set = SetAttr {
                    size: Some(*len),
                    ..SetAttr::default()
                };
                self.ns.setattr(ino, &set, Some(file)).map_err(err)?;
                self.ns.released_writable(ino);
                Ok(())
            }
            Op::Rename { from, to } => {
                let src = self.walk(from, false)?;
                if src.node.is_none() {
                    return Err(libc::ENOENT);
                }
                let dst = self.walk(to, false)?;
                // The VFS's checks before the filesystem is asked (lock_rename's trap): the
                // source an ancestor of the target's directory, or the target one of the
                // source's.
                let (from_real, to_real) = (src.real_path(), dst.real_path());
                if from_real != to_real {
                    if dst.parent_path.starts_with(&from_real) {
                        return Err(libc::EINVAL);
                    }
                    if src.parent_path.starts_with(&to_real) {
                        return Err(libc::ENOTEMPTY);
                    }
                }
                self.ns
                    .rename(src.parent, &src.name, dst.parent, &dst.name, 0)
                    .map_err(err)
            }
            Op::Unlink { path } => {
                let p = self.walk(path, false)?;
                p.node.ok_or(libc::ENOENT)?;
                self.ns.unlink(p.parent, &p.name).map_err(err)
            }
            Op::Mkdir { path } => {
                let p = self.walk(path, false)?;
                if p.node.is_some() {
                    return Err(libc::EEXIST);
                }
                self.ns
                    .mkdir(p.parent, &p.name, 0o755 & !self.umask, self.caller)
                    .map(|i| self.looked_up.push(i.ino))
                    .map_err(err)
            }
            Op::Rmdir { path } => {
                let p = self.walk(path, false)?;
                match p.node {
                    None => Err(libc::ENOENT),
                    Some(n) if n.kind != Kind::Dir => Err(libc::ENOTDIR),
                    Some(_) => self.ns.rmdir(p.parent, &p.name).map_err(err),
                }
            }
            Op::Chmod { path, mode } => self.setattr(
                path,
                true,
                SetAttr {
                    mode: Some(*mode),
                    ..SetAttr::default()
                },
            ),
            Op::Utimes { path, secs } => {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*secs as u64);
                self.setattr(
                    path,
                    true,
                    SetAttr {
                        atime: Some(Some(t)),
                        mtime: Some(Some(t)),
                        ..SetAttr::default()
                    },
                )
            }
            Op::SetXattr { path, name, value } => self.on_node(path, true, |ns, n| {
                ns.setxattr(n.ino, OsStr::new(name), value, 0)
            }),
            Op::RemoveXattr { path, name } => {
                self.on_node(path, true, |ns, n| ns.removexattr(n.ino, OsStr::new(name)))
            }
            Op::MmapWrite { path, offset, data } => {
                let (ino, opened) = self.open_node(path, true, libc::O_RDWR)?;
                let Opened::Upper(file) = &opened else {
                    panic!("O_RDWR gave something other than an overlay file");
                };
                let len = file
                    .metadata()
                    .map_err(|e| e.raw_os_error().unwrap_or(-1))?
                    .len();
                if len == 0 {
                    return Ok(());
                }
                // A shared mapping written and flushed: the same bytes as a pwrite that does
                // not grow the file.
                let start = offset % len;
                let n = (data.len() as u64).min(len - start) as usize;
                self.write_at(ino, file, &data[..n], start)
            }
            Op::Fallocate { path, offset, len } => {
                let (ino, opened) = self.open_node(path, true, libc::O_WRONLY)?;
                let Opened::Upper(file) = &opened else {
                    panic!("O_WRONLY gave something other than an overlay file");
                };
                nix::fcntl::fallocate(
                    file,
                    nix::fcntl::FallocateFlags::empty(),
                    *offset as i64,
                    *len as i64,
                )
                .map_err(|e| e as i32)?;
                self.ns.released_writable(ino);
                Ok(())
            }
            Op::Link { from, to } => {
                let src = self.existing(from, false)?;
                if src.kind == Kind::Dir {
                    return Err(libc::EPERM);
                }
                let dst = self.walk(to, false)?;
                if dst.node.is_some() {
                    return Err(libc::EEXIST);
                }
                let info = match self.ns.link(src.ino, dst.parent, &dst.name) {
                    Err(NsError::Stale) => {
                        let src = self.existing(from, false)?;
                        self.ns.link(src.ino, dst.parent, &dst.name)
                    }
                    r => r,
                }
                .map_err(err)?;
                self.looked_up.push(info.ino);
                Ok(())
            }
            Op::Symlink { target, path } => {
                let p = self.walk(path, false)?;
                if p.node.is_some() {
                    return Err(libc::EEXIST);
                }
                let info = self
                    .ns
                    .symlink(p.parent, &p.name, Path::new(target), self.caller)
                    .map_err(err)?;
                self.looked_up.push(info.ino);
                Ok(())
            }
            Op::CopyFile { from, to } => {
                // std::fs::copy: the source opened and checked to be a regular file, the target
                // opened with O_CREAT | O_TRUNC (following a symlink), given the source's
                // permissions, then filled.
                let (_, src) = self.open_node(from, true, libc::O_RDONLY)?;
                let src_info = self.existing(from, true)?;
                if src_info.kind != Kind::File {
                    return Err(-1);
                }
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                let place = self.walk(to, true)?;
                let (ino, file) = match &place.node {
                    Some(_) => match self.open_node(to, true, flags)? {
                        (ino, Opened::Upper(f)) => (ino, f),
                        _ => {
                            panic!("a write-intent open gave something other than an overlay file")
                        }
                    },
                    None => self.create(&place, flags)?,
                };
                let set = SetAttr {
                    mode: Some(src_info.perm as u32),
                    ..SetAttr::default()
                };
                self.ns.setattr(ino, &set, Some(&file)).map_err(err)?;
                // Read through the source's handle only now: copying a file onto itself
                // copies what the truncation left (nothing).
                let content = Self::read_all(&src)?;
                self.write_at(ino, &file, &content, 0)
            }
            Op::RemoveTree { path } => {
                let p = self.walk(path, false)?;
                let node = p.node.ok_or(libc::ENOENT)?;
                self.remove_tree(p.parent, &p.name, &node)
            }
        }
    }

    /// std::fs::remove_dir_all: a symlink or file is unlinked, a directory emptied then removed.
    fn remove_tree(&mut self, parent: u64, name: &OsStr, node: &NodeInfo) -> Outcome {
        if node.kind != Kind::Dir {
            return self.ns.unlink(parent, name).map_err(err);
        }
        for child in self.ns.list(node.ino).map_err(err)? {
            let Some(c) = self.lookup(node.ino, &child)? else {
                continue;
            };
            self.remove_tree(node.ino, &child, &c)?;
        }
        self.ns.rmdir(parent, name).map_err(err)
    }

    /// The tree below directory `ino`, as `ops::snapshot` records a real one.
    fn snapshot(&mut self, with_content: bool) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(self.work, PathBuf::new())];
        while let Some((dir, rel)) = stack.pop() {
            let names = self
                .ns
                .list(dir)
                .unwrap_or_else(|e| panic!("list {rel:?}: {e:?}"));
            for name in names {
                let r = rel.join(&name);
                let Some(info) = self
                    .lookup(dir, &name)
                    .unwrap_or_else(|e| panic!("lookup {r:?}: {e}"))
                else {
                    panic!("{r:?} is listed but not found");
                };
                if info.kind == Kind::Dir {
                    stack.push((info.ino, r.clone()));
                }
                let entry = self.entry(&info, with_content);
                out.insert(r.to_string_lossy().into_owned(), entry);
            }
        }
        self.release();
        out
    }

    /// The entries of some directories only (not recursive); a missing one contributes nothing.
    fn snapshot_dirs(&mut self, dirs: &[String]) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        for d in dirs {
            let dir = if d.is_empty() {
                self.work
            } else {
                match self.walk(d, false) {
                    Ok(Place { node: Some(n), .. }) if n.kind == Kind::Dir => n.ino,
                    _ => continue,
                }
            };
            for name in self.ns.list(dir).unwrap_or_default() {
                if let Ok(Some(info)) = self.lookup(dir, &name) {
                    let entry = self.entry(&info, false);
                    out.insert(
                        Path::new(d).join(&name).to_string_lossy().into_owned(),
                        entry,
                    );
                }
            }
        }
        self.release();
        out
    }

    /// The content of the file at `path` (None when there is none to read).
    fn content(&mut self, path: &str) -> Option<Vec<u8>> {
        let r = self
            .open_node(path, true, libc::O_RDONLY)
            .ok()
            .and_then(|(_, o)| Self::read_all(&o).ok());
        self.release();
        r
    }

    fn entry(&self, info: &NodeInfo, with_content: bool) -> Entry {
        let kind = match info.kind {
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            _ => "file",
        };
        let content = (with_content && info.kind == Kind::File).then(|| {
            let opened = self
                .ns
                .open(info.ino, libc::O_RDONLY, false)
                .unwrap_or_else(|e| panic!("open inode {}: {e:?}", info.ino));
            Self::read_all(&opened).unwrap_or_else(|e| panic!("read inode {}: errno {e}", info.ino))
        });
        let link = (info.kind == Kind::Symlink).then(|| {
            let t = self.ns.readlink(info.ino).expect("readlink");
            PathBuf::from(OsStr::from_bytes(&t))
        });
        Entry {
            kind,
            size: if info.kind == Kind::File {
                info.size
            } else {
                0
            },
            mode: if info.kind == Kind::Symlink {
                0
            } else {
                info.perm as u32 & 0o7777
            },
            content,
            link,
            xattrs: if info.kind == Kind::Symlink {
                BTreeMap::new()
            } else {
                self.xattrs(info.ino)
            },
        }
    }

    fn xattrs(&self, ino: u64) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let Ok(list) = self.ns.listxattr(ino, 4096) else {
            return out;
        };
        for name in list.split(|b| *b == 0).filter(|s| !s.is_empty()) {
            if let Ok(v) = self.ns.getxattr(ino, OsStr::from_bytes(name), 4096) {
                out.insert(String::from_utf8_lossy(name).into_owned(), v);
            }
        }
        out
    }
}

impl Subject for Vfs<'_> {
    fn apply(&mut self, op: &Op) -> Outcome {
        let r = self.apply_inner(op);
        self.release();
        r
    }
    fn snapshot(&mut self, with_content: bool) -> BTreeMap<String, Entry> {
        Vfs::snapshot(self, with_content)
    }
    fn snapshot_dirs(&mut self, dirs: &[String]) -> BTreeMap<String, Entry> {
        Vfs::snapshot_dirs(self, dirs)
    }
    fn content(&mut self, path: &str) -> Option<Vec<u8>> {
        Vfs::content(self, path)
    }
}

/// Reads a whole file by position (the handle may be shared).
trait ReadAtAll {
    fn read_at_all(&self, out: &mut Vec<u8>) -> std::io::Result<()>;
}

impl ReadAtAll for File {
    fn read_at_all(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.read_at(&mut buf, out.len() as u64)?;
            if n == 0 {
                return Ok(());
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

/// The namespace over the fixture's cache with a fresh overlay, and this process as its caller.
fn namespace_over(fx: &Fixture) -> (Namespace, Caller) {
    let cache = HubCache::open(&fx.cache).unwrap();
    let overlay = OverlayDir::open(&fx.path("overlay")).unwrap();
    let caller = Caller {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    (Namespace::new(LowerTree::new(cache), overlay), caller)
}

/// The daemon remembers the overlay directories that do not exist (a fresh overlay has none of
/// the cache's) so that lookups stop probing them; what it writes there is seen at once all the
/// same: a file created, a directory renamed into a model whose absence was known, a cache file
/// removed (a whiteout in a directory that did not exist).
#[test]
fn what_is_written_where_the_overlay_was_known_absent_is_seen_at_once() {
    let fx = Fixture::new();
    let (ns, caller) = namespace_over(&fx);
    let work = ns.lookup(ROOT_INO, OsStr::new(WORK)).unwrap().ino;
    let models = ns.list(work).unwrap();
    assert!(models.len() >= 3, "{models:?}");
    let look_all = |dir: u64| {
        for n in ns.list(dir).unwrap() {
            let _ = ns.lookup(dir, &n);
        }
    };
    let ino = |m: &OsString| ns.lookup(work, m).unwrap().ino;
    let (a, b, c) = (ino(&models[0]), ino(&models[1]), ino(&models[2]));
    for m in [a, b, c] {
        look_all(m);
    }
    for m in &models[..3] {
        assert!(!fx.path("overlay").join(WORK).join(m).exists(), "{m:?}");
    }
    // A file created where nothing of the overlay existed.
    let notes = OsStr::new("notes.txt");
    assert!(matches!(ns.lookup(a, notes), Err(NsError::NotFound)));
    ns.create(a, notes, 0o644, libc::O_WRONLY, caller).unwrap();
    assert_eq!(ns.lookup(a, notes).unwrap().kind, Kind::File);
    assert!(ns.list(a).unwrap().iter().any(|n| n == notes));
    // A directory renamed into model b, whose absence was just learned again.
    let d = ns.mkdir(a, OsStr::new("d"), 0o755, caller).unwrap();
    ns.create(d.ino, OsStr::new("inner"), 0o644, libc::O_WRONLY, caller)
        .unwrap();
    look_all(b);
    ns.rename(a, OsStr::new("d"), b, OsStr::new("moved"), 0)
        .unwrap();
    let moved = ns.lookup(b, OsStr::new("moved")).unwrap();
    assert_eq!(moved.kind, Kind::Dir);
    assert_eq!(
        ns.lookup(moved.ino, OsStr::new("inner")).unwrap().kind,
        Kind::File
    );
    // A cache file of model c removed: its whiteout goes into a new overlay directory.
    let config = OsStr::new("config.json");
    assert!(ns.lookup(c, config).is_ok());
    look_all(c);
    ns.unlink(c, config).unwrap();
    assert!(matches!(ns.lookup(c, config), Err(NsError::NotFound)));
    assert!(!ns.list(c).unwrap().iter().any(|n| n == config));
}

/// A directory's attributes are the cache's while it is known to have no overlay directory
/// (nothing asked of the overlay), and its overlay directory's as soon as the daemon makes one:
/// a chmod of a model directory is seen at once although its absence was just learned.
#[test]
fn a_directory_known_to_have_no_overlay_shows_its_overlay_attributes_once_written() {
    let fx = Fixture::new();
    let (ns, _caller) = namespace_over(&fx);
    let work = ns.lookup(ROOT_INO, OsStr::new(WORK)).unwrap().ino;
    let model = ns.list(work).unwrap()[0].clone();
    let a = ns.lookup(work, &model).unwrap().ino;
    assert_eq!(ns.getattr(a, None).unwrap().perm, 0o755);
    assert!(!fx.path("overlay").join(WORK).join(&model).exists());
    let chmod = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    ns.setattr(a, &chmod, None).unwrap();
    assert!(fx.path("overlay").join(WORK).join(&model).is_dir());
    assert_eq!(ns.getattr(a, None).unwrap().perm, 0o700);
}

/// The listing the daemon keeps of an existing overlay directory (so that a lookup there does
/// not probe the overlay for each name's records) is forgotten by each change that touches that
/// directory (a change names what it touches; both tests fail when the directory or the levels
/// above a new overlay directory are left out of that scope): a file created,
/// a cache file removed (its whiteout) and one renamed (its redirect) in a directory whose
/// overlay listing was just learned are seen at once.
#[test]
fn what_is_written_where_the_overlay_listing_was_known_is_seen_at_once() {
    let fx = Fixture::new();
    let (ns, caller) = namespace_over(&fx);
    let work = ns.lookup(ROOT_INO, OsStr::new(WORK)).unwrap().ino;
    let model = ns.list(work).unwrap()[0].clone();
    let a = ns.lookup(work, &model).unwrap().ino;
    let look_all = |dir: u64| {
        for n in ns.list(dir).unwrap() {
            let _ = ns.lookup(dir, &n);
        }
        let _ = ns.lookup(dir, OsStr::new("not-there"));
    };
    // The model's overlay directory exists from here on.
    ns.create(a, OsStr::new("first.txt"), 0o644, libc::O_WRONLY, caller)
        .unwrap();
    assert!(fx.path("overlay").join(WORK).join(&model).is_dir());
    look_all(a);
    let second = OsStr::new("second.txt");
    ns.create(a, second, 0o644, libc::O_WRONLY, caller).unwrap();
    assert_eq!(ns.lookup(a, second).unwrap().kind, Kind::File);
    look_all(a);
    let config = OsStr::new("config.json");
    ns.unlink(a, config).unwrap();
    assert!(matches!(ns.lookup(a, config), Err(NsError::NotFound)));
    look_all(a);
    let (tok, renamed) = (OsStr::new("tokenizer.json"), OsStr::new("renamed.json"));
    ns.rename(a, tok, a, renamed, 0).unwrap();
    assert_eq!(ns.lookup(a, renamed).unwrap().kind, Kind::File);
    assert!(matches!(ns.lookup(a, tok), Err(NsError::NotFound)));
    let names = ns.list(a).unwrap();
    assert!(names.iter().any(|n| n == renamed) && !names.iter().any(|n| n == tok));
}

#[test]
fn randomized_operations_on_the_namespace_match_a_reference_directory() {
    let run = Run::from_env("MLXK_MODEL", "namespace_model", 20_000, 10);
    let root = nix::unistd::geteuid().is_root();
    let umask = {
        // SAFETY: umask only swaps the process mask; it is restored at once.
        let m = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(m) };
        m as u32
    };

    let fx = Fixture::new();
    let cache_before = tree_state(&fx.cache);
    let (ns, caller) = namespace_over(&fx);
    let work = ns.lookup(ROOT_INO, OsStr::new(WORK)).unwrap().ino;
    let mut vfs = Vfs {
        ns: &ns,
        work,
        caller,
        umask,
        looked_up: Vec::new(),
    };
    // As in the FUSE run: the virtual files become ordinary overlay files first (a
    // write-intent open copies them up), so that the two trees compare byte for byte.
    let models: Vec<OsString> = ns.list(work).unwrap();
    for model in &models {
        let model = model.to_string_lossy();
        for name in [
            mlxk_fs::store::INDEX_FILE,
            mlxk_fs::store::SENTINEL_FILE,
            "model.safetensors.index.json.orig",
        ] {
            let path = format!("{model}/{name}");
            if vfs.walk(&path, false).is_ok_and(|p| p.node.is_some()) {
                vfs.open_node(&path, false, libc::O_WRONLY | libc::O_APPEND)
                    .unwrap_or_else(|e| panic!("copy up {path}: errno {e}"));
            }
            vfs.release();
        }
    }
    let reference = fx.path("reference");
    let view = vfs.snapshot(true);
    fs::create_dir_all(&reference).unwrap();
    for (rel, e) in &view {
        let p = reference.join(rel);
        match e.kind {
            "dir" => fs::create_dir_all(&p).unwrap(),
            _ => fs::write(&p, e.content.as_ref().unwrap()).unwrap(),
        }
    }
    for (rel, e) in &view {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(reference.join(rel), fs::Permissions::from_mode(e.mode)).unwrap();
    }
    assert_eq!(
        diff(&vfs.snapshot(true), &snapshot(&reference, true)),
        "",
        "the copy differs from the view"
    );

    // Cache files opened read-only before the run keep reading the cache's bytes.
    let held: Vec<(Opened, Vec<u8>)> = view
        .iter()
        .filter(|(k, e)| e.kind == "file" && k.ends_with(".safetensors"))
        .map(|(k, e)| {
            let (_, o) = vfs.open_node(k, false, libc::O_RDONLY).unwrap();
            (o, e.content.clone().unwrap())
        })
        .collect();
    vfs.release();
    assert!(held.len() >= 4);
    assert!(held.iter().all(|(o, _)| matches!(o, Opened::Blob(_))));

    run.go(
        &mut vfs,
        &reference,
        if root {
            ops::ALL_MODES
        } else {
            ops::OWNER_MODES
        },
    );
    for (opened, bytes) in &held {
        let again = Vfs::read_all(opened).unwrap();
        assert!(
            again == *bytes,
            "a handle opened before the run no longer reads the cache's bytes"
        );
    }
    drop(held);
    let c = &ns.counters;
    eprintln!(
        "namespace model: {} lookups, {} copy-ups, {} inodes at the end",
        c.lookups.load(std::sync::atomic::Ordering::Relaxed),
        c.copy_ups.load(std::sync::atomic::Ordering::Relaxed),
        ns.status_json()
            .lines()
            .find(|l| l.contains("\"inodes\""))
            .unwrap_or("")
            .trim()
    );
    drop(vfs);
    drop(ns);
    assert_eq!(
        cache_before,
        tree_state(&fx.cache),
        "seed {}: the cache changed",
        run.seed
    );
}
