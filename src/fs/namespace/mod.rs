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

use std::collections::BTreeSet;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;

use super::lower::{LowerContent, LowerNode, LowerTree};
use super::view::VirtualFile;
use crate::store::config::ModelConfig;
use crate::store::index::rebuild_index;
use crate::store::overlay::{is_internal, Marker, OverlayDir};
use crate::store::safetensors::read_header;

mod write;

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

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A directory of the union.
    Dir {
        read_only: bool,
    },
    Status,
    /// A file, symlink or other non-directory in the overlay.
    Upper {
        dev: u64,
        ino: u64,
    },
    /// A cache file or a virtual file (sentinel, index, `.orig`).
    Lower {
        node: LowerNode,
        read_only: bool,
    },
    /// The index recomputed from the union's shards (the overlay changed some).
    Generated {
        bytes: Arc<[u8]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ident {
    Dir(u64, String),
    /// Device, inode and birth time: ext4 reuses inode numbers of deleted files.
    Upper(u64, u64, Option<SystemTime>),
    Lower(u64, String, LowerNode),
    Generated(u64, String, u64),
    Status,
}

pub struct Node {
    pub ino: u64,
    pub kind: NodeKind,
    ident: Mutex<Ident>,
    /// Where the node is: (parent, name), the first being where it was last seen. Overlay files
    /// can have several (hard links).
    places: Mutex<Vec<(u64, String)>>,
    refs: Mutex<Refs>,
    superseded: AtomicBool,
}

/// The kernel's references to a node (its lookup count). A node is dropped from the tables at
/// zero, under this lock, so a lookup racing a forget either takes its reference first or sees
/// the node forgotten and makes a new one: the kernel never holds an inode the tables lost.
#[derive(Debug, Default)]
struct Refs {
    count: u64,
    forgotten: bool,
}

impl Node {
    fn first_place(&self) -> Option<(u64, String)> {
        lock(&self.places).first().cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a name of a directory resolves to.
#[derive(Debug)]
enum Found {
    Dir { read_only: bool },
    Upper(Metadata),
    Lower { node: LowerNode, read_only: bool },
    Generated(Arc<[u8]>),
    Status,
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
    Entry(u64, String),
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

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
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

fn upper_ident(m: &Metadata) -> Ident {
    Ident::Upper(m.dev(), m.ino(), m.created().ok())
}

fn not_found_like(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

pub struct Namespace {
    lower: LowerTree,
    overlay: OverlayDir,
    nodes: DashMap<u64, Arc<Node>>,
    ids: DashMap<Ident, u64>,
    next_ino: AtomicU64,
    tree: RwLock<()>,
    invalidations: Mutex<Option<mpsc::Sender<Invalidation>>>,
    pub counters: Counters,
    pub passthrough: AtomicBool,
    started: SystemTime,
    is_root: bool,
    uid: u32,
    gid: u32,
}

impl Namespace {
    pub fn new(lower: LowerTree, overlay: OverlayDir) -> Namespace {
        let ns = Namespace {
            lower,
            overlay,
            nodes: DashMap::new(),
            ids: DashMap::new(),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            tree: RwLock::new(()),
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
            ident: Mutex::new(Ident::Dir(0, String::new())),
            places: Mutex::new(vec![]),
            refs: Mutex::new(Refs {
                count: 1,
                forgotten: false,
            }),
            superseded: AtomicBool::new(false),
        });
        ns.nodes.insert(ROOT_INO, root);
        ns
    }

    pub fn lower(&self) -> &LowerTree {
        &self.lower
    }

    pub fn overlay(&self) -> &OverlayDir {
        &self.overlay
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

    fn write_tree(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn node(&self, ino: u64) -> NsResult<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or(NsError::NotFound)
    }

    /// The inode of the directory at mount path `path`, if the kernel knows it.
    pub fn known_dir(&self, path: &str) -> Option<u64> {
        let mut ino = ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            ino = *self.ids.get(&Ident::Dir(ino, name.to_string()))?;
        }
        Some(ino)
    }

    // ----- paths and resolution (callers hold the tree lock) -----

    fn path_of(&self, ino: u64) -> NsResult<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let node = self.node(cur)?;
            let (parent, name) = node.first_place().ok_or(NsError::NotFound)?;
            parts.push(name);
            cur = parent;
            if parts.len() > 4096 {
                return Err(NsError::Io(libc::ELOOP));
            }
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// The overlay path of an overlay file node and its metadata, checked to still be that file.
    fn upper_of(&self, node: &Node) -> NsResult<(PathBuf, Metadata)> {
        let NodeKind::Upper { dev, ino } = node.kind else {
            return Err(NsError::Invalid);
        };
        let places = lock(&node.places).clone();
        for (parent, name) in places {
            let Ok(dir) = self.path_of(parent) else {
                continue;
            };
            let p = self.overlay.path(&join(&dir, &name));
            if let Ok(m) = fs::symlink_metadata(&p) {
                if m.dev() == dev && m.ino() == ino {
                    return Ok((p, m));
                }
            }
        }
        Err(NsError::NotFound)
    }

    /// The directory of the cache tree a union directory at `path` shows, if any: its path and
    /// node. Walks every level (a redirect below an opaque or overlay-only directory still
    /// brings a cache directory back), resolving each level once.
    fn lower_dir(&self, path: &str) -> Option<(String, LowerNode)> {
        let mut lower = Some((String::new(), LowerNode::Root));
        let mut cur = String::new();
        for name in path.split('/').filter(|c| !c.is_empty()) {
            // Below a directory with nothing of the cache, only a redirect can bring some back:
            // no need to look for whiteouts and opaque markers there.
            let marker = if lower.is_some() {
                self.overlay.marker(&cur, name)
            } else {
                self.overlay.redirect(&cur, name).map(Marker::Ref)
            };
            lower = match marker {
                Some(Marker::Ref(t)) => self.lower.resolve(&t).map(|n| (t, n)),
                Some(Marker::Whiteout) => None,
                None => lower.and_then(|(l, n)| {
                    let child = self.lower.child(&n, name)?;
                    Some((join(&l, name), child))
                }),
            }
            .filter(|(_, n)| n.is_dir());
            cur = join(&cur, name);
            if lower.is_some() && self.overlay.is_opaque(&cur) {
                lower = None;
            }
        }
        lower
    }

    /// The cache path `name` of `dir` shows when the overlay records nothing for it.
    fn lower_default(&self, dir: &str, name: &str) -> Option<String> {
        self.lower_default_node(dir, name).map(|(l, _)| l)
    }

    fn lower_default_node(&self, dir: &str, name: &str) -> Option<(String, LowerNode)> {
        let (l, node) = self.lower_dir(dir)?;
        let child = self.lower.child(&node, name)?;
        Some((join(&l, name), child))
    }

    /// The cache path and node `name` of `dir` shows now (its redirect, else its default).
    fn lower_path(&self, dir: &str, name: &str) -> Option<(String, LowerNode)> {
        match self.overlay.marker(dir, name) {
            Some(Marker::Ref(t)) => self.lower.resolve(&t).map(|n| (t, n)),
            Some(Marker::Whiteout) => None,
            None => self.lower_default_node(dir, name),
        }
    }

    fn find(&self, dir: &str, dir_ro: bool, name: &str) -> NsResult<Found> {
        if dir.is_empty() && name == STATUS_FILE {
            return Ok(Found::Status);
        }
        if is_internal(name) || name.contains('/') {
            return Err(NsError::NotFound);
        }
        let child = join(dir, name);
        match fs::symlink_metadata(self.overlay.path(&child)) {
            Ok(m) if m.is_dir() => return Ok(Found::Dir { read_only: dir_ro }),
            Ok(m) => return Ok(Found::Upper(m)),
            Err(e) if not_found_like(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let (_, node) = self.lower_path(dir, name).ok_or(NsError::NotFound)?;
        if node.is_dir() {
            return Ok(Found::Dir {
                read_only: dir_ro || node.is_pinned_model(),
            });
        }
        if let LowerNode::Virtual {
            file: VirtualFile::Index,
            ..
        } = &node
        {
            if !dir_ro {
                if let Some(bytes) = self.union_index(dir)? {
                    return Ok(Found::Generated(bytes));
                }
            }
        }
        Ok(Found::Lower {
            node,
            read_only: dir_ro,
        })
    }

    /// The index of model directory `dir` recomputed from the union's shards, when the overlay
    /// changed the shard set (`Ok(None)`: the cache's view stands; `NotFound`: no index).
    fn union_index(&self, dir: &str) -> NsResult<Option<Arc<[u8]>>> {
        let listing = self.overlay.read_dir(dir)?;
        let shard = crate::store::files::is_safetensors;
        let changed = listing.entries.iter().any(|n| shard(n))
            || listing.whiteouts.iter().any(|n| shard(n))
            || listing.refs.iter().any(|(n, _)| shard(n));
        if !changed {
            return Ok(None);
        }
        let mut shards = Vec::new();
        for name in self.list_names(dir)? {
            if !shard(&name) {
                continue;
            }
            let path = match self.readable_path(dir, &name) {
                Some(p) => p,
                None => continue,
            };
            // A shard being written cannot be indexed yet: no index until it is complete.
            let header = read_header(&path, &name).map_err(|_| NsError::NotFound)?;
            shards.push(header);
        }
        let quant = self
            .readable_path(dir, "config.json")
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| ModelConfig::parse(&b).ok())
            .and_then(|c| c.quantization());
        let index = rebuild_index(&shards, quant.as_ref()).map_err(|_| NsError::NotFound)?;
        Ok(Some(Arc::from(index.to_json_string().into_bytes())))
    }

    /// A real file holding what `name` of `dir` shows (overlay file or cache blob).
    fn readable_path(&self, dir: &str, name: &str) -> Option<PathBuf> {
        let upper = self.overlay.path(&join(dir, name));
        if let Ok(m) = fs::metadata(&upper) {
            return m.is_file().then_some(upper);
        }
        let (_, node) = self.lower_path(dir, name)?;
        match self.lower.content(&node)? {
            LowerContent::Blob(p) => Some(p),
            LowerContent::Bytes(_) => None,
        }
    }

    /// The names of union directory `dir`, sorted (`.`/`..` excluded).
    fn list_names(&self, dir: &str) -> NsResult<Vec<String>> {
        let ol = self.overlay.read_dir(dir)?;
        let mut names: BTreeSet<String> = ol.entries.iter().cloned().collect();
        for (n, t) in &ol.refs {
            if self.lower.resolve(t).is_some() {
                names.insert(n.clone());
            }
        }
        if !ol.opaque {
            if let Some((_, node)) = self.lower_dir(dir) {
                for (n, _) in self.lower.children(&node) {
                    if !ol.whiteouts.contains(&n) && !ol.refs.iter().any(|(r, _)| *r == n) {
                        names.insert(n);
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The node for what `name` of `parent` resolved to, allocated on first sight; with
    /// `take_ref`, the kernel is given a reference to it (a lookup).
    fn node_for(&self, parent: u64, name: &str, found: Found, take_ref: bool) -> Arc<Node> {
        let (ident, kind) = match found {
            Found::Dir { read_only } => (
                Ident::Dir(parent, name.to_string()),
                NodeKind::Dir { read_only },
            ),
            Found::Upper(m) => (
                upper_ident(&m),
                NodeKind::Upper {
                    dev: m.dev(),
                    ino: m.ino(),
                },
            ),
            Found::Lower { node, read_only } => (
                Ident::Lower(parent, name.to_string(), node.clone()),
                NodeKind::Lower { node, read_only },
            ),
            Found::Generated(bytes) => (
                Ident::Generated(parent, name.to_string(), hash_bytes(&bytes)),
                NodeKind::Generated { bytes },
            ),
            Found::Status => (Ident::Status, NodeKind::Status),
        };
        if let Some(ino) = self.ids.get(&ident).map(|i| *i) {
            if let Ok(node) = self.node(ino) {
                let mut refs = lock(&node.refs);
                if !refs.forgotten && !node.superseded.load(Ordering::Acquire) {
                    if take_ref {
                        refs.count += 1;
                    }
                    drop(refs);
                    let mut places = lock(&node.places);
                    let here = (parent, name.to_string());
                    if let Some(i) = places.iter().position(|p| *p == here) {
                        places.swap(0, i);
                    } else {
                        places.insert(0, here);
                    }
                    drop(places);
                    return node;
                }
            }
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node {
            ino,
            kind,
            ident: Mutex::new(ident.clone()),
            places: Mutex::new(vec![(parent, name.to_string())]),
            refs: Mutex::new(Refs {
                count: take_ref as u64,
                forgotten: false,
            }),
            superseded: AtomicBool::new(false),
        });
        self.nodes.insert(ino, node.clone());
        self.ids.insert(ident, ino);
        node
    }

    /// A lookup's answer: the node, referenced, and its attributes.
    fn entry_for(&self, parent: u64, name: &str, found: Found) -> NsResult<NodeInfo> {
        let node = self.node_for(parent, name, found, true);
        match self.info_of(&node) {
            Ok(info) => Ok(info),
            Err(e) => {
                self.forget(node.ino, 1);
                Err(e)
            }
        }
    }

    /// Whether a cache, virtual or generated file node is still what its place shows (a
    /// copy-up, a deletion, a changed shard set or a moved snapshot make it something else).
    /// A node found replaced is retired: by-path callers get ESTALE and look the name up again.
    fn still_shown(&self, node: &Node) -> bool {
        if node.superseded.load(Ordering::Acquire) {
            return false;
        }
        let Some((parent, name)) = node.first_place() else {
            return false;
        };
        let shown = (|| {
            let (_, ro) = self.dir_node(parent).ok()?;
            let dir = self.path_of(parent).ok()?;
            let ident = match self.find(&dir, ro, &name).ok()? {
                Found::Lower { node, .. } => Ident::Lower(parent, name.clone(), node),
                Found::Generated(b) => Ident::Generated(parent, name.clone(), hash_bytes(&b)),
                _ => return None,
            };
            Some(ident == *lock(&node.ident))
        })()
        .unwrap_or(false);
        if !shown {
            node.superseded.store(true, Ordering::Release);
        }
        shown
    }

    fn dir_node(&self, ino: u64) -> NsResult<(Arc<Node>, bool)> {
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::Dir { read_only } => Ok((node, read_only)),
            _ => Err(NsError::NotADirectory),
        }
    }

    fn info_of(&self, node: &Node) -> NsResult<NodeInfo> {
        match &node.kind {
            NodeKind::Dir { .. } => {
                let path = self.path_of(node.ino)?;
                match fs::symlink_metadata(self.overlay.path(&path)) {
                    Ok(m) if m.is_dir() => return Ok(self.meta_info(node.ino, &m)),
                    Ok(_) => return Err(NsError::Stale),
                    Err(_) => {}
                }
                let attr = self
                    .lower_dir(&path)
                    .and_then(|(_, n)| self.lower.attr(&n))
                    .ok_or(if node.ino == ROOT_INO {
                        NsError::Io(libc::EIO)
                    } else {
                        NsError::Stale
                    })?;
                Ok(self.synthetic(node.ino, Kind::Dir, 0, attr.mtime, attr.perm, false))
            }
            NodeKind::Upper { .. } => {
                let (_, m) = self.upper_of(node).map_err(gone_is_stale)?;
                Ok(self.meta_info(node.ino, &m))
            }
            NodeKind::Lower { node: lower, .. } => {
                if !self.still_shown(node) {
                    return Err(NsError::Stale);
                }
                self.lower_info(node.ino, lower)
            }
            NodeKind::Generated { bytes } => {
                if !self.still_shown(node) {
                    return Err(NsError::Stale);
                }
                Ok(self.synthetic(
                    node.ino,
                    Kind::File,
                    bytes.len() as u64,
                    self.started,
                    0o644,
                    false,
                ))
            }
            NodeKind::Status => Ok(self.synthetic(
                node.ino,
                Kind::File,
                self.status_json().len() as u64,
                SystemTime::now(),
                0o444,
                false,
            )),
        }
    }

    fn lower_info(&self, ino: u64, lower: &LowerNode) -> NsResult<NodeInfo> {
        let attr = self.lower.attr(lower).ok_or(NsError::NotFound)?;
        // A virtual file's place can come to show other bytes (the index follows the shards).
        let immutable = matches!(lower, LowerNode::File { .. });
        Ok(self.synthetic(ino, Kind::File, attr.size, attr.mtime, attr.perm, immutable))
    }

    /// The index shown next to a shard may change when the shard does: drop the kernel's entry.
    fn shard_changed(&self, parent: u64, name: &str) {
        if crate::store::files::is_safetensors(name) {
            self.invalidate(Invalidation::Entry(
                parent,
                crate::store::index::INDEX_FILE.to_string(),
            ));
        }
    }

    /// A writable handle of `ino` was closed.
    pub fn released_writable(&self, ino: u64) {
        if let Some((parent, name)) = self.node(ino).ok().and_then(|n| n.first_place()) {
            self.shard_changed(parent, &name);
        }
    }

    fn synthetic(
        &self,
        ino: u64,
        kind: Kind,
        size: u64,
        mtime: SystemTime,
        perm: u16,
        immutable: bool,
    ) -> NodeInfo {
        NodeInfo {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            immutable,
        }
    }

    fn meta_info(&self, ino: u64, m: &Metadata) -> NodeInfo {
        let t = |s: i64, ns: i64| {
            if s >= 0 {
                SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns as u32)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
                    + Duration::from_nanos(ns as u64)
            }
        };
        use std::os::unix::fs::FileTypeExt;
        let ft = m.file_type();
        NodeInfo {
            ino,
            kind: if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else if ft.is_char_device() {
                Kind::CharDevice
            } else if ft.is_block_device() {
                Kind::BlockDevice
            } else {
                Kind::File
            },
            size: m.len(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            immutable: false,
        }
    }

    // ----- lookups and attributes -----

    /// Looks `name` up in directory `parent`; the kernel now holds one more reference.
    pub fn lookup(&self, parent: u64, name: &str) -> NsResult<NodeInfo> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let _g = self.read_tree();
        self.lookup_locked(parent, name)
    }

    fn lookup_locked(&self, parent: u64, name: &str) -> NsResult<NodeInfo> {
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        self.entry_for(parent, name, found)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Ok(node) = self.node(ino) else { return };
        let mut refs = lock(&node.refs);
        refs.count = refs.count.saturating_sub(n);
        if refs.count == 0 && !refs.forgotten {
            refs.forgotten = true;
            let ident = lock(&node.ident).clone();
            self.ids.remove_if(&ident, |_, i| *i == ino);
            self.nodes.remove(&ino);
        }
    }

    /// Attributes of `ino`; `by_handle` when asked through an open file (a replaced node then
    /// still describes what that handle reads).
    pub fn getattr(&self, ino: u64, handle: Option<&File>) -> NsResult<NodeInfo> {
        let _g = self.read_tree();
        let node = self.node(ino)?;
        match (&node.kind, handle) {
            (NodeKind::Lower { node: lower, .. }, Some(_)) => self.lower_info(ino, lower),
            // Open, perhaps unlinked: the handle knows the file.
            (NodeKind::Upper { .. }, Some(f)) => Ok(self.meta_info(ino, &f.metadata()?)),
            _ => self.info_of(&node),
        }
    }

    /// The names of directory `ino` (`.`/`..` excluded).
    pub fn list(&self, ino: u64) -> NsResult<Vec<String>> {
        let _g = self.read_tree();
        self.dir_node(ino)?;
        let dir = self.path_of(ino)?;
        self.list_names(&dir)
    }

    pub fn readlink(&self, ino: u64) -> NsResult<Vec<u8>> {
        let _g = self.read_tree();
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::Upper { .. } => {
                let (p, _) = self.upper_of(&node)?;
                Ok(fs::read_link(p)?.as_os_str().as_bytes().to_vec())
            }
            _ => Err(NsError::Invalid),
        }
    }

    // ----- opening -----

    /// Opens file `ino`. A write-intent open of a cache or virtual file copies it up first and
    /// answers [`NsError::Stale`]: the kernel looks the name up again and opens the copy.
    pub fn open(&self, ino: u64, flags: i32, write_intent: bool) -> NsResult<Opened> {
        let node = self.node(ino)?;
        match &node.kind {
            NodeKind::Dir { .. } => Err(NsError::IsADirectory),
            NodeKind::Status => {
                if write_intent {
                    return Err(NsError::ReadOnly);
                }
                Ok(Opened::Bytes(Arc::from(self.status_json().into_bytes())))
            }
            NodeKind::Upper { .. } => {
                let path = {
                    let _g = self.read_tree();
                    self.upper_of(&node).map_err(gone_is_stale)?.0
                };
                Ok(Opened::Upper(open_upper(&path, flags)?))
            }
            NodeKind::Lower {
                node: lower,
                read_only,
            } => {
                if write_intent {
                    if *read_only {
                        return Err(NsError::ReadOnly);
                    }
                    self.copy_up(&node)?;
                    return Err(NsError::Stale);
                }
                if !self.still_shown_locked(&node) {
                    return Err(NsError::Stale);
                }
                match self.lower.content(lower).ok_or(NsError::NotFound)? {
                    // Read-only, always: this fd is what a passthrough backing is registered from.
                    LowerContent::Blob(p) => Ok(Opened::Blob(File::open(p)?)),
                    LowerContent::Bytes(b) => Ok(Opened::Bytes(b)),
                }
            }
            NodeKind::Generated { bytes } => {
                if write_intent {
                    self.copy_up(&node)?;
                    return Err(NsError::Stale);
                }
                if !self.still_shown_locked(&node) {
                    return Err(NsError::Stale);
                }
                Ok(Opened::Bytes(bytes.clone()))
            }
        }
    }

    fn still_shown_locked(&self, node: &Node) -> bool {
        let _g = self.read_tree();
        self.still_shown(node)
    }

    /// Queues kernel invalidations for every known directory along mount path `path`.
    pub fn invalidate_path(&self, path: &str) {
        let mut parent = ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            self.invalidate(Invalidation::Entry(parent, name.to_string()));
            self.invalidate(Invalidation::Inode(parent));
            match self.ids.get(&Ident::Dir(parent, name.to_string())) {
                Some(ino) => parent = *ino,
                None => return,
            }
        }
        self.invalidate(Invalidation::Inode(parent));
    }

    /// The root names a cache repo shows at (for the watcher's kernel invalidations).
    pub fn invalidate_repo(&self, repo: &str) {
        let names = self.lower.invalidate_repo(repo);
        let model_dir = repo.to_string();
        if let Some(ino) = {
            let _g = self.read_tree();
            self.known_dir(&model_dir)
        } {
            for name in names {
                self.invalidate(Invalidation::Entry(ino, name));
            }
        }
        self.invalidate_path(&model_dir);
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
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Open options for an overlay file from a client's open flags (creation flags and O_TRUNC
/// excluded: the kernel truncates with a setattr once the open succeeded).
fn upper_options(flags: i32, read: bool) -> OpenOptions {
    let acc = flags & libc::O_ACCMODE;
    let mut o = OpenOptions::new();
    o.read(read || acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(
            flags
                & (libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT),
        );
    o
}

/// Opens an overlay file for a client. Write-only opens are opened read-write where the mode
/// allows: the kernel may read pages back through a handle it opened for writing.
fn open_upper(path: &Path, flags: i32) -> io::Result<File> {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        if let Ok(f) = upper_options(flags, true).open(path) {
            return Ok(f);
        }
    }
    upper_options(flags, false).open(path)
}
