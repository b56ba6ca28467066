//! The tree the mount presents, independent of FUSE: a union of the overlay directory (every
//! write) over the cache as [`LowerTree`] shows it (virtual files included). Kernel overlayfs is
//! the model; `docs/overlay.md` lists the differences.
//!
//! Inodes: a directory is its position (parent inode, name); an overlay file is its identity on
//! disk (device, inode: hard links and renames keep it); a cache or virtual file is its position
//! plus what it shows (snapshot sha included, so its content never changes). A copy-up therefore
//! makes a NEW inode: the old one keeps serving reads to handles opened before, and answers
//! ESTALE to anything that reaches it by path, which makes the kernel look the name up again and
//! find the copy. That is what keeps a passthrough backing registered for a cache blob from ever
//! being handed to a write.
//!
//! Every call that touches several on-disk records (rename, unlink, mkdir over a whiteout, the
//! final step of a copy-up) holds the tree lock for writing; lookups and attribute reads hold it
//! for reading. File data never takes it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::SystemTime;

use dashmap::DashMap;

use super::lower::LowerTree;
use crate::store::overlay::{
    is_internal, Marker, OverlayDir, OPAQUE_MARKER, REF_PREFIX, WHITEOUT_PREFIX,
};

mod attr;
mod copyup;
mod create;
mod inodes;
mod known;
mod open;
mod remove;
mod rename;
mod resolve;
mod xattr;

use crate::fs::FastHash;
use inodes::{lock, Ident, Refs};
pub use inodes::{Node, NodeKind};

pub use crate::store::mounts::{INVALIDATE_XATTR, STATUS_FILE};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What a node is right now, for attributes.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    /// True when the node's content can never change (cache- or sha-keyed).
    pub immutable: bool,
    /// A model directory of a repo the cache watcher covers, with nothing of it in the overlay:
    /// whatever would change its name or attributes reaches the daemon (the watcher's report,
    /// or the kernel's own request), which tells the kernel at once, so the kernel may keep
    /// them longer than a second.
    pub watched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsError {
    NotFound,
    NotADirectory,
    IsADirectory,
    /// A pinned revision or the status file: shown, never written.
    ReadOnly,
    /// The node was replaced (copied up, deleted, renamed over): look the name up again.
    Stale,
    Exists,
    NotEmpty,
    /// A name the overlay format reserves, or an unsupported request.
    Invalid,
    /// A node type the workspace does not hold (fifo, socket, device).
    NotPermitted,
    Io(i32),
}

impl NsError {
    /// The errno a client sees (the one mapping: the FUSE adapter replies with it, the
    /// namespace-level model test compares it with a real filesystem's).
    pub fn errno(self) -> i32 {
        match self {
            NsError::NotFound => libc::ENOENT,
            NsError::NotADirectory => libc::ENOTDIR,
            NsError::IsADirectory => libc::EISDIR,
            NsError::ReadOnly => libc::EROFS,
            // The kernel retries a path walk once with revalidation on ESTALE: that is how a
            // copied-up file replaces its cache inode under an open(2) already in flight.
            NsError::Stale => libc::ESTALE,
            NsError::Exists => libc::EEXIST,
            NsError::NotEmpty => libc::ENOTEMPTY,
            NsError::Invalid => libc::EINVAL,
            NsError::NotPermitted => libc::EPERM,
            NsError::Io(code) => code,
        }
    }
}

impl From<io::Error> for NsError {
    fn from(e: io::Error) -> NsError {
        match e.raw_os_error() {
            Some(libc::ENOENT) => NsError::NotFound,
            Some(code) => NsError::Io(code),
            None => NsError::Io(libc::EIO),
        }
    }
}

type NsResult<T> = Result<T, NsError>;

/// Counters shown by `mlxk-fs status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub lookups: AtomicU64,
    pub opens: AtomicU64,
    pub passthrough_opens: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    pub copy_ups: AtomicU64,
    pub write_attempts_refused: AtomicU64,
}

/// What an open of a file node gives.
pub enum Opened {
    /// An overlay file, opened with the client's access mode.
    Upper(File),
    /// A cache blob, opened read-only.
    Blob(File),
    /// Served from memory.
    Bytes(Arc<[u8]>),
}

/// Kernel cache invalidations, sent by a separate thread: a notification sent from inside a
/// request can deadlock on the directory lock the request's caller holds.
#[derive(Debug, Clone)]
pub enum Invalidation {
    Entry(u64, OsString),
    Inode(u64),
}

/// Attribute changes of a setattr.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Option<SystemTime>>,
    pub mtime: Option<Option<SystemTime>>,
}

/// Who asks (owner of what is created, when the daemon may set it).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Whether `name` may be created in a directory: the overlay format reserves `.wh.` names
/// (lookups of them find nothing), and a name is one path component.
fn check_name(name: &OsStr) -> NsResult<()> {
    use std::os::unix::ffi::OsStrExt;
    if is_internal(name) || name.as_bytes().contains(&b'/') || name.is_empty() {
        return Err(NsError::Invalid);
    }
    Ok(())
}

/// A node whose file is gone from under it (removed outside the daemon, e.g. by `mlxk-fs
/// overlay reset`) is stale, not missing: the kernel's retry looks its name up again and finds
/// what is there now (the cache's file, or nothing).
fn gone_is_stale(e: NsError) -> NsError {
    match e {
        NsError::NotFound => NsError::Stale,
        e => e,
    }
}

fn not_found_like(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

pub struct Namespace {
    lower: LowerTree,
    overlay: OverlayDir,
    nodes: DashMap<u64, Arc<Node>, FastHash>,
    ids: DashMap<Ident, u64, FastHash>,
    next_ino: AtomicU64,
    tree: RwLock<()>,
    /// Overlay directories known not to exist, and the names in those that do (forgotten
    /// whenever the tree is written).
    known: known::KnownDirs,
    invalidations: Mutex<Option<mpsc::Sender<Invalidation>>>,
    pub counters: Counters,
    pub passthrough: AtomicBool,
    started: SystemTime,
    is_root: bool,
    uid: u32,
    gid: u32,
}

/// The longest file name (bytes) the overlay's file systems take.
const NAME_MAX: usize = 255;

impl Namespace {
    pub fn new(lower: LowerTree, overlay: OverlayDir) -> Namespace {
        let ns = Namespace {
            lower,
            overlay,
            nodes: DashMap::default(),
            ids: DashMap::default(),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            tree: RwLock::new(()),
            known: Default::default(),
            invalidations: Mutex::new(None),
            counters: Counters::default(),
            passthrough: Default::default(),
            started: SystemTime::now(),
            is_root: nix::unistd::geteuid().is_root(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let root = Arc::new(Node {
            ino: ROOT_INO,
            kind: NodeKind::Dir { read_only: false },
            ident: Mutex::new(Ident::Dir(0, OsString::new())),
            places: Mutex::new(vec![]),
            refs: Mutex::new(Refs {
                count: 1,
                forgotten: false,
            }),
            superseded: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            orphan: Mutex::new(None),
        });
        ns.nodes.insert(ROOT_INO, root);
        ns
    }

    pub fn lower(&self) -> &LowerTree {
        &self.lower
    }

    /// Where kernel invalidations go (set once the session exists).
    pub fn set_invalidator(&self, tx: mpsc::Sender<Invalidation>) {
        *lock(&self.invalidations) = Some(tx);
    }

    fn invalidate(&self, inv: Invalidation) {
        if let Some(tx) = lock(&self.invalidations).as_ref() {
            let _ = tx.send(inv);
        }
    }

    fn read_tree(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every change to the overlay holds this: it forgets what is known of overlay directories.
    fn write_tree(&self) -> known::WriteTree<'_> {
        known::WriteTree::new(&self.tree, &self.known)
    }

    /// The write lock for a change that will name what it touches
    /// ([`known::WriteTree::changing`]) before it makes it.
    fn write_tree_scoped(&self) -> known::WriteTree<'_> {
        known::WriteTree::scoped(&self.tree, &self.known)
    }

    /// What a change that adds or removes `name` of union directory `dir` touches: the entry,
    /// `dir`, and every level above when `dir` has no overlay directory yet (making it adds an
    /// entry to each level it creates).
    fn entry_scope(&self, dir: &Path, name: &OsStr) -> Vec<std::path::PathBuf> {
        let mut scope = vec![dir.join(name)];
        if self.overlay_absent(dir) {
            scope.extend(dir.ancestors().map(Path::to_path_buf));
        } else {
            scope.push(dir.to_path_buf());
        }
        scope
    }

    /// Whether union directory `dir` has no overlay directory (nothing of it was written):
    /// then no name of it has an overlay entry, redirect, whiteout or opaque marker.
    fn overlay_absent(&self, dir: &Path) -> bool {
        self.known.is_absent(dir, || {
            matches!(std::fs::symlink_metadata(self.overlay.path(dir)),
                Err(e) if not_found_like(&e))
        })
    }

    /// Whether the overlay directory of union directory `dir` may hold the raw entry `name`:
    /// `false` only when it is known absent or its listing is known without it.
    fn overlay_may_hold(&self, dir: &Path, name: &OsStr) -> bool {
        if self.overlay_absent(dir) {
            return false;
        }
        // A name longer than a file name may be is asked of the overlay, whose ENAMETOOLONG
        // is the answer (no listing holds it, and "absent" would turn it into ENOENT).
        if name.len() > NAME_MAX {
            return true;
        }
        let names = self.known.names(dir, || {
            let entries = std::fs::read_dir(self.overlay.path(dir)).ok()?;
            entries
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
                .ok()
        });
        names.is_none_or(|n| n.contains(name))
    }

    /// The marker (redirect or whiteout) of `name` in union directory `dir`, asking the
    /// overlay only when its records may be there.
    fn overlay_marker(&self, dir: &Path, name: &OsStr) -> Option<Marker> {
        let may = |prefix: &str| {
            let mut record = OsString::from(prefix);
            record.push(name);
            self.overlay_may_hold(dir, &record)
        };
        if may(REF_PREFIX) || may(WHITEOUT_PREFIX) {
            self.overlay.marker(dir, name)
        } else {
            None
        }
    }

    /// The redirect of `name` in union directory `dir`, as [`Namespace::overlay_marker`].
    fn overlay_redirect(&self, dir: &Path, name: &OsStr) -> Option<String> {
        let mut record = OsString::from(REF_PREFIX);
        record.push(name);
        if self.overlay_may_hold(dir, &record) {
            self.overlay.redirect(dir, name)
        } else {
            None
        }
    }

    /// Whether union directory `dir` is opaque in the overlay.
    fn overlay_opaque(&self, dir: &Path) -> bool {
        self.overlay_may_hold(dir, OsStr::new(OPAQUE_MARKER)) && self.overlay.is_opaque(dir)
    }

    /// The index shown next to a shard may change when the shard does: drop the kernel's entry.
    fn shard_changed(&self, parent: u64, name: &OsStr) {
        if name
            .to_str()
            .is_some_and(crate::store::files::is_safetensors)
        {
            self.invalidate(Invalidation::Entry(
                parent,
                crate::store::index::INDEX_FILE.into(),
            ));
        }
    }

    /// A writable handle of `ino` was closed.
    pub fn released_writable(&self, ino: u64) {
        if let Some((parent, name)) = self.node(ino).ok().and_then(|n| n.first_place()) {
            self.shard_changed(parent, &name);
        }
    }

    /// Queues kernel invalidations for every known directory along mount path `path`.
    pub fn invalidate_path(&self, path: &Path) {
        // Whoever asks wrote the overlay behind the daemon (a convert, an overlay reset).
        self.known.forget_all();
        let mut parent = ROOT_INO;
        for name in path.iter().filter(|c| !c.is_empty() && *c != "/") {
            self.invalidate(Invalidation::Entry(parent, name.to_os_string()));
            self.invalidate(Invalidation::Inode(parent));
            match self.ids.get(&Ident::Dir(parent, name.to_os_string())) {
                Some(ino) => parent = *ino,
                None => return,
            }
        }
        self.invalidate(Invalidation::Inode(parent));
    }

    /// The root names a cache repo shows at (for the watcher's kernel invalidations).
    pub fn invalidate_repo(&self, repo: &str) {
        let names = self.lower.invalidate_repo(repo);
        let model_dir = Path::new(repo);
        if let Some(ino) = {
            let _g = self.read_tree();
            self.known_dir(model_dir)
        } {
            for name in names {
                self.invalidate(Invalidation::Entry(ino, name.into()));
            }
        }
        self.invalidate_path(model_dir);
    }

    pub fn statfs_path(&self) -> &Path {
        self.overlay.root()
    }

    /// The daemon's counters as JSON.
    pub fn status_json(&self) -> String {
        let c = &self.counters;
        let v = serde_json::json!({
            "pid": std::process::id(),
            "cache": self.lower.cache().root(),
            "overlay": self.overlay.root(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "started_at": crate::store::sentinel::iso8601(self.started),
            "lookups": c.lookups.load(Ordering::Relaxed),
            "opens": c.opens.load(Ordering::Relaxed),
            "passthrough_opens": c.passthrough_opens.load(Ordering::Relaxed),
            "reads": c.reads.load(Ordering::Relaxed),
            "bytes_read": c.bytes_read.load(Ordering::Relaxed),
            "writes": c.writes.load(Ordering::Relaxed),
            "bytes_written": c.bytes_written.load(Ordering::Relaxed),
            "copy_ups": c.copy_ups.load(Ordering::Relaxed),
            "write_attempts_refused": c.write_attempts_refused.load(Ordering::Relaxed),
            "inodes": self.nodes.len(),
            "models_viewed": self.lower.views_len(),
            "header_bytes_read": self.lower.header_bytes_read(),
            "views_from_cache": self.lower.views_from_cache(),
            "views_read_ahead": self.lower.views_read_ahead(),
            "repos_watched": self.lower.repos_watched(),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}
