//! The randomized operation model shared by the exercisers (in the spirit of fsx and of
//! mountpoint-s3's reference-model tests): the operations, their generator, how a plain
//! directory (the reference) applies them, and the tree snapshots the runs compare.
//! tests/exerciser.rs applies them through a real FUSE mount; tests/namespace_model.rs to the
//! namespace directly, without a kernel.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mlxk_fs::testkit::Rng;

/// Entries in the working tree past which the generator favours removals.
const MAX_TREE: usize = 300;

/// Every mode `Chmod` may set (as root, nothing they forbid stops the reference or the mount).
pub const ALL_MODES: &[u32] = &[0o600, 0o640, 0o644, 0o700, 0o755, 0o444];
/// The modes that leave the owner every right: for runs that are not root, where a model of
/// the kernel's permission checks would otherwise be needed.
pub const OWNER_MODES: &[u32] = &[0o700, 0o755];

/// Bytes to write; shown by length in failure messages.
#[derive(Clone)]
pub struct Data(pub Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Create {
        path: String,
        data: Data,
    },
    OpenWrite {
        path: String,
        flags: i32,
        offset: u64,
        data: Data,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Ftruncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Utimes {
        path: String,
        secs: i64,
    },
    SetXattr {
        path: String,
        name: String,
        value: Data,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    MmapWrite {
        path: String,
        offset: u64,
        data: Data,
    },
    Fallocate {
        path: String,
        offset: u64,
        len: u64,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    CopyFile {
        from: String,
        to: String,
    },
    /// `rm -rf`.
    RemoveTree {
        path: String,
    },
}

/// What an operation returned: Ok, or the errno.
pub type Outcome = Result<(), i32>;

pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn check(r: i32) -> Outcome {
    if r < 0 {
        Err(errno(std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

pub fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |s: &str| root.join(s);
    match op {
        Op::Create { path, data } => {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p(path))
                .map_err(errno)?;
            f.write_all(data).map_err(errno)
        }
        Op::OpenWrite {
            path,
            flags,
            offset,
            data,
        } => {
            let acc = flags & libc::O_ACCMODE;
            let mut f = OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .custom_flags(flags & !libc::O_ACCMODE)
                .mode(0o644)
                .open(p(path))
                .map_err(errno)?;
            if acc != libc::O_RDONLY {
                if flags & libc::O_APPEND != 0 {
                    f.write_all(data).map_err(errno)?;
                } else {
                    f.write_all_at(data, *offset).map_err(errno)?;
                }
            } else {
                let mut v = Vec::new();
                f.read_to_end(&mut v).map_err(errno)?;
            }
            Ok(())
        }
        Op::Truncate { path, len } => {
            nix::unistd::truncate(&p(path), *len as i64).map_err(|e| e as i32)
        }
        Op::Ftruncate { path, len } => OpenOptions::new()
            .read(true)
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*len))
            .map_err(errno),
        Op::Rename { from, to } => fs::rename(p(from), p(to)).map_err(errno),
        Op::Unlink { path } => fs::remove_file(p(path)).map_err(errno),
        Op::Mkdir { path } => {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .mode(0o755)
                .create(p(path))
                .map_err(errno)
        }
        Op::Rmdir { path } => fs::remove_dir(p(path)).map_err(errno),
        Op::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).map_err(errno)
        }
        Op::Utimes { path, secs } => {
            let t = nix::sys::time::TimeSpec::new(*secs, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p(path),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
            .map_err(|e| e as i32)
        }
        Op::SetXattr { path, name, value } => {
            let (c, n) = (cpath(&p(path)), CString::new(name.as_str()).unwrap());
            check(unsafe {
                libc::setxattr(
                    c.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            })
        }
        Op::RemoveXattr { path, name } => {
            let (c, n) = (cpath(&p(path)), CString::new(name.as_str()).unwrap());
            check(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) })
        }
        Op::MmapWrite { path, offset, data } => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            let len = f.metadata().map_err(errno)?.len();
            if len == 0 {
                return Ok(());
            }
            let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.map_err(errno)?;
            let start = (*offset % len) as usize;
            let end = (start + data.len()).min(len as usize);
            map[start..end].copy_from_slice(&data[..end - start]);
            map.flush().map_err(errno)
        }
        Op::Fallocate { path, offset, len } => {
            let f = OpenOptions::new()
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::empty(),
                *offset as i64,
                *len as i64,
            )
            .map_err(|e| e as i32)
        }
        Op::Link { from, to } => fs::hard_link(p(from), p(to)).map_err(errno),
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path)).map_err(errno),
        Op::CopyFile { from, to } => fs::copy(p(from), p(to)).map(drop).map_err(errno),
        Op::RemoveTree { path } => fs::remove_dir_all(p(path)).map_err(errno),
    }
}

/// One entry of a compared tree.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if r >= 0 {
            v.truncate(r as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), v);
        }
    }
    out
}

/// What a tree comparison records of one entry.
pub fn entry(path: &Path, m: &fs::Metadata, with_content: bool) -> Entry {
    let ft = m.file_type();
    Entry {
        kind: if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "file"
        },
        size: if ft.is_file() { m.len() } else { 0 },
        mode: if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        },
        content: (with_content && ft.is_file()).then(|| fs::read(path).unwrap()),
        link: ft.is_symlink().then(|| fs::read_link(path).unwrap()),
        xattrs: if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattrs(path)
        },
    }
}

pub fn snapshot(root: &Path, with_content: bool) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let path = root.join(&r);
            let m = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.insert(
                r.to_string_lossy().into_owned(),
                entry(&path, &m, with_content),
            );
        }
    }
    out
}

/// The directories an operation changes (parents of the paths it names).
pub fn op_dirs(op: &Op) -> Vec<String> {
    let paths: Vec<&String> = match op {
        Op::Create { path, .. }
        | Op::OpenWrite { path, .. }
        | Op::Truncate { path, .. }
        | Op::Ftruncate { path, .. }
        | Op::Unlink { path }
        | Op::Mkdir { path }
        | Op::Rmdir { path }
        | Op::Chmod { path, .. }
        | Op::Utimes { path, .. }
        | Op::SetXattr { path, .. }
        | Op::RemoveXattr { path, .. }
        | Op::MmapWrite { path, .. }
        | Op::Fallocate { path, .. }
        | Op::Symlink { path, .. }
        | Op::RemoveTree { path } => vec![path],
        Op::Rename { from, to } | Op::Link { from, to } | Op::CopyFile { from, to } => {
            vec![from, to]
        }
    };
    let mut dirs: Vec<String> = paths
        .iter()
        .map(|p| {
            p.rsplit_once('/')
                .map_or(String::new(), |(d, _)| d.to_string())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The entries of some directories only (not recursive), keyed as in [`snapshot`]; a directory
/// that does not exist contributes nothing.
pub fn snapshot_dirs(root: &Path, dirs: &[String]) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let rel = Path::new(dir).join(e.file_name());
            let path = root.join(&rel);
            if let Ok(m) = fs::symlink_metadata(&path) {
                out.insert(rel.to_string_lossy().into_owned(), entry(&path, &m, false));
            }
        }
    }
    out
}

/// Copies the mount's view into a plain directory (modes kept).
pub fn copy_view(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let m = fs::symlink_metadata(&src).unwrap();
        if m.is_dir() {
            copy_view(&src, &dst);
        } else {
            fs::write(&dst, fs::read(&src).unwrap()).unwrap();
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    }
}

pub struct Gen {
    pub rng: Rng,
    /// The modes `Chmod` picks from.
    pub modes: &'static [u32],
}

impl Gen {
    pub fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len())])
    }

    pub fn data(&mut self, max: usize) -> Data {
        let n = self.below(max) + 1;
        let b = self.rng.next_u64() as u8;
        Data((0..n).map(|i| b.wrapping_add(i as u8)).collect())
    }

    pub fn name(&mut self) -> String {
        const NAMES: [&str; 10] = [
            "a",
            "b",
            "c.json",
            "d.safetensors.bak",
            "e",
            "notes.txt",
            "sub",
            "x",
            "y",
            "z",
        ];
        NAMES[self.below(NAMES.len())].to_string()
    }

    /// A new path: an existing directory (often) plus a name (which may exist).
    pub fn new_path(&mut self, dirs: &[String], all: &[String]) -> String {
        if self.below(4) == 0 {
            if let Some(p) = self.pick(all) {
                return p.clone();
            }
        }
        let dir = self.pick(dirs).cloned().unwrap_or_default();
        let name = self.name();
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    pub fn op(&mut self, tree: &BTreeMap<String, Entry>) -> Op {
        let files: Vec<String> = tree
            .iter()
            .filter(|(_, e)| e.kind == "file")
            .map(|(k, _)| k.clone())
            .collect();
        let mut dirs: Vec<String> = tree
            .iter()
            .filter(|(_, e)| e.kind == "dir")
            .map(|(k, _)| k.clone())
            .collect();
        // The working root itself is never removed (it is where both trees live).
        let subdirs = dirs.clone();
        dirs.push(String::new());
        let all: Vec<String> = tree.keys().cloned().collect();
        let file = |g: &mut Gen| {
            g.pick(&files)
                .cloned()
                .unwrap_or_else(|| "missing".to_string())
        };
        let any = |g: &mut Gen| g.pick(&all).cloned().unwrap_or_else(|| "missing".into());
        // A tree that only grew would make long runs ever slower: past a size, half the steps
        // remove (a file, or a whole directory tree).
        if tree.len() > MAX_TREE && self.below(2) == 0 {
            return match self.below(3) {
                0 => Op::RemoveTree {
                    path: self
                        .pick(&subdirs)
                        .cloned()
                        .unwrap_or_else(|| "missing".into()),
                },
                _ => Op::Unlink { path: any(self) },
            };
        }
        match self.below(20) {
            0 | 1 => Op::Create {
                path: self.new_path(&dirs, &all),
                data: self.data(5000),
            },
            2..=4 => {
                let acc = [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR][self.below(3)];
                let mut flags = acc;
                for f in [libc::O_TRUNC, libc::O_APPEND, libc::O_CREAT, libc::O_EXCL] {
                    if self.below(4) == 0 {
                        flags |= f;
                    }
                }
                let path = if flags & libc::O_CREAT != 0 && self.below(2) == 0 {
                    self.new_path(&dirs, &all)
                } else {
                    file(self)
                };
                Op::OpenWrite {
                    path,
                    flags,
                    offset: self.rng.next_u64() % 300_000,
                    data: self.data(70_000),
                }
            }
            5 => Op::Truncate {
                path: file(self),
                len: self.rng.next_u64() % 200_000,
            },
            6 => Op::Ftruncate {
                path: file(self),
                len: self.rng.next_u64() % 200_000,
            },
            7 | 8 => Op::Rename {
                from: any(self),
                to: self.new_path(&dirs, &all),
            },
            9 => Op::Unlink { path: any(self) },
            10 => Op::Mkdir {
                path: self.new_path(&dirs, &all),
            },
            11 => Op::Rmdir {
                path: self
                    .pick(&subdirs)
                    .cloned()
                    .unwrap_or_else(|| "missing".into()),
            },
            12 => Op::Chmod {
                path: any(self),
                mode: self.modes[self.below(self.modes.len())],
            },
            13 => Op::Utimes {
                path: any(self),
                secs: 1_600_000_000 + self.below(1_000_000) as i64,
            },
            14 => {
                let name = format!("user.k{}", self.below(3));
                if self.below(3) == 0 {
                    Op::RemoveXattr {
                        path: any(self),
                        name,
                    }
                } else {
                    Op::SetXattr {
                        path: any(self),
                        name,
                        value: self.data(64),
                    }
                }
            }
            15 => Op::MmapWrite {
                path: file(self),
                offset: self.rng.next_u64(),
                data: self.data(9000),
            },
            16 => Op::Fallocate {
                path: file(self),
                offset: self.rng.next_u64() % 100_000,
                len: self.rng.next_u64() % 100_000 + 1,
            },
            17 => Op::Link {
                from: file(self),
                to: self.new_path(&dirs, &all),
            },
            18 => Op::Symlink {
                target: self.name(),
                path: self.new_path(&dirs, &all),
            },
            _ => {
                let from = file(self);
                let mut to = self.new_path(&dirs, &all);
                // `cp` refuses to copy a file onto itself; through a symlink to it, the result
                // would hinge on a reader opened before the copy-up seeing the truncation,
                // which the overlay documents it does not (docs/overlay.md, Copy-up).
                while resolves_to(tree, &to, &from) {
                    to.push_str(".copy");
                }
                Op::CopyFile { from, to }
            }
        }
    }
}

/// Whether `path`, following the tree's symlinks, names the entry `target`.
fn resolves_to(tree: &BTreeMap<String, Entry>, path: &str, target: &str) -> bool {
    let mut cur = path.to_string();
    for _ in 0..16 {
        if cur == target {
            return true;
        }
        let Some(link) = tree.get(&cur).and_then(|e| e.link.as_ref()) else {
            return false;
        };
        if link.is_absolute() {
            return false;
        }
        let mut parts: Vec<String> = cur.split('/').map(str::to_string).collect();
        parts.pop();
        for c in link.components() {
            match c {
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        cur = parts.join("/");
    }
    false
}

pub fn diff(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> String {
    let mut out = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => out += &format!("  only in the mount: {k} ({})\n", v.kind),
            Some(w) if w != v => {
                let short = |e: &Entry| {
                    format!(
                        "{} size {} mode {:o} link {:?} xattrs {:?} content {}",
                        e.kind,
                        e.size,
                        e.mode,
                        e.link,
                        e.xattrs.keys().collect::<Vec<_>>(),
                        e.content
                            .as_ref()
                            .map(|c| format!("{:x?}", &c[..c.len().min(16)]))
                            .unwrap_or_default()
                    )
                };
                out += &format!("  {k}:\n    mount: {}\n    ref:   {}\n", short(v), short(w));
            }
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            out += &format!("  only in the reference: {k} ({})\n", v.kind);
        }
    }
    out
}

/// The paths an operation writes file content to (compared after every step).
pub fn touched(op: &Op) -> Vec<&String> {
    match op {
        Op::Create { path, .. }
        | Op::OpenWrite { path, .. }
        | Op::Truncate { path, .. }
        | Op::Ftruncate { path, .. }
        | Op::MmapWrite { path, .. }
        | Op::Fallocate { path, .. } => vec![path],
        Op::Rename { to, .. } | Op::Link { to, .. } | Op::CopyFile { to, .. } => vec![to],
        _ => vec![],
    }
}

/// What the operations are applied to besides the reference: a directory of a mount, or the
/// namespace through a model of the VFS.
pub trait Subject {
    fn apply(&mut self, op: &Op) -> Outcome;
    /// The whole working tree, as [`snapshot`] records a real one.
    fn snapshot(&mut self, with_content: bool) -> BTreeMap<String, Entry>;
    /// The entries of some directories only, as [`snapshot_dirs`] records them.
    fn snapshot_dirs(&mut self, dirs: &[String]) -> BTreeMap<String, Entry>;
    /// The content of a file (None when there is no file to read there).
    fn content(&mut self, path: &str) -> Option<Vec<u8>>;
}

/// A directory of a real filesystem (the mount).
pub struct Dir(pub PathBuf);

impl Subject for Dir {
    fn apply(&mut self, op: &Op) -> Outcome {
        apply(&self.0, op)
    }
    fn snapshot(&mut self, with_content: bool) -> BTreeMap<String, Entry> {
        snapshot(&self.0, with_content)
    }
    fn snapshot_dirs(&mut self, dirs: &[String]) -> BTreeMap<String, Entry> {
        snapshot_dirs(&self.0, dirs)
    }
    fn content(&mut self, path: &str) -> Option<Vec<u8>> {
        fs::read(self.0.join(path)).ok()
    }
}

/// One run's settings, from `<PREFIX>_OPS`, `<PREFIX>_SEED` (default: from the clock) and
/// `<PREFIX>_TREE_EVERY`.
pub struct Run {
    pub ops: usize,
    pub seed: u64,
    /// Whole trees are compared every this many steps (the directories an operation touched,
    /// and the content it wrote, at every step).
    pub tree_every: usize,
    /// The environment prefix, and the test target that reproduces a failure.
    pub prefix: &'static str,
    pub test: &'static str,
}

impl Run {
    pub fn from_env(
        prefix: &'static str,
        test: &'static str,
        ops: usize,
        tree_every: usize,
    ) -> Run {
        let var = |k: &str| -> Option<u64> {
            std::env::var(format!("{prefix}_{k}"))
                .ok()
                .and_then(|v| v.parse().ok())
        };
        let run = Run {
            ops: var("OPS").map_or(ops, |v| v as usize),
            seed: var("SEED").unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            tree_every: var("TREE_EVERY")
                .filter(|n| *n > 0)
                .map_or(tree_every, |v| v as usize),
            prefix,
            test,
        };
        eprintln!(
            "{test}: {} operations, {prefix}_SEED={}, whole trees compared every {} step(s)",
            run.ops, run.seed, run.tree_every
        );
        run
    }

    /// Applies `ops` random operations (Chmod from `modes`) to `subject` and to the plain
    /// directory `reference`: after every step the same result and equal trees, or a panic
    /// naming the seed, the step and the way to reproduce it.
    pub fn go(&self, subject: &mut impl Subject, reference: &Path, modes: &'static [u32]) {
        let seed = self.seed;
        let mut gen = Gen {
            rng: Rng::new(seed),
            modes,
        };
        let mut tree = snapshot(reference, false);
        for step in 0..self.ops {
            let op = gen.op(&tree);
            let got = subject.apply(&op);
            let want = apply(reference, &op);
            let last = step + 1 == self.ops;
            let whole = step % self.tree_every == self.tree_every - 1 || last;
            // Every file's content too, every 50 steps (or at each whole-tree step when rarer).
            let content_every = self.tree_every.max(50);
            let full = step % content_every == content_every - 1 || last;
            let b = snapshot(reference, full);
            let d = if whole {
                diff(&subject.snapshot(full), &b)
            } else {
                let dirs = op_dirs(&op);
                diff(
                    &subject.snapshot_dirs(&dirs),
                    &snapshot_dirs(reference, &dirs),
                )
            };
            if got != want || !d.is_empty() {
                panic!(
                    "seed {seed}, step {step}: {op:?}\n  {}: {got:?}  reference: {want:?}\n{d}\
                     reproduce: {p}_SEED={seed} {p}_OPS={} cargo test --test {t}",
                    self.test,
                    step + 1,
                    p = self.prefix,
                    t = self.test,
                );
            }
            tree = b;
            for t in touched(&op) {
                let (x, y) = (subject.content(t), fs::read(reference.join(t)).ok());
                assert!(
                    x == y,
                    "seed {seed}, step {step}: content of {t} differs after {op:?}"
                );
            }
            if (step + 1) % 10_000 == 0 {
                eprintln!(
                    "{}: {} operations done, {} entries in the tree",
                    self.test,
                    step + 1,
                    tree.len()
                );
            }
        }
    }
}
