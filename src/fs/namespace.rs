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
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

fn cstr(p: &Path) -> NsResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| NsError::Invalid)
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
        let shard = |n: &str| n.ends_with(".safetensors");
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
        if name.ends_with(".safetensors") {
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

    /// Copies a cache, virtual or generated file into the overlay at the node's place: complete
    /// in the temp directory first (reflink where the filesystems allow), then renamed into
    /// place, so a crash never leaves a partial copy visible. The node is superseded after.
    fn copy_up(&self, node: &Arc<Node>) -> NsResult<()> {
        let (dir, name, parent) = {
            let _g = self.read_tree();
            let (parent, name) = node.first_place().ok_or(NsError::NotFound)?;
            (self.path_of(parent)?, name, parent)
        };
        let (content, perm, mtime) = match &node.kind {
            NodeKind::Lower { node: lower, .. } => {
                let attr = self.lower.attr(lower).ok_or(NsError::NotFound)?;
                let content = self.lower.content(lower).ok_or(NsError::NotFound)?;
                // What users edit is theirs: a virtual file becomes an ordinary 0644 one.
                let perm = if matches!(content, LowerContent::Bytes(_)) {
                    0o644
                } else {
                    attr.perm
                };
                (content, perm, attr.mtime)
            }
            NodeKind::Generated { bytes } => {
                (LowerContent::Bytes(bytes.clone()), 0o644, self.started)
            }
            _ => return Ok(()),
        };
        let tmp = self.overlay.tmp_path("copyup");
        let result = (|| -> io::Result<()> {
            match &content {
                LowerContent::Blob(src) => copy_blob(src, &tmp)?,
                LowerContent::Bytes(b) => {
                    use std::io::Write;
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?
                        .write_all(b)?
                }
            }
            let f = OpenOptions::new().write(true).open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(perm as u32))?;
            f.set_times(fs::FileTimes::new().set_modified(mtime).set_accessed(mtime))?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let _g = self.write_tree();
        let still_here = !node.superseded.load(Ordering::Acquire)
            && node.first_place() == Some((parent, name.clone()))
            && self.path_of(parent).as_deref() == Ok(dir.as_str());
        let target = self.overlay.path(&join(&dir, &name));
        if !still_here || fs::symlink_metadata(&target).is_ok() {
            // Moved, deleted or already copied up by another caller meanwhile.
            let _ = fs::remove_file(&tmp);
            node.superseded.store(true, Ordering::Release);
            return Ok(());
        }
        let done = self
            .ensure_upper_dir(&dir)
            .and_then(|()| fs::rename(&tmp, &target).map_err(NsError::from));
        if let Err(e) = done {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let _ = self.overlay.remove_ref(&dir, &name);
        node.superseded.store(true, Ordering::Release);
        self.counters.copy_ups.fetch_add(1, Ordering::Relaxed);
        self.shard_changed(parent, &name);
        // No kernel invalidation here: the caller answers ESTALE, and the kernel's own retry
        // looks the name up again (an invalidation racing that retry can fail it with ENOENT).
        let _ = name;
        Ok(())
    }

    /// Creates the overlay directories of union directory `dir` and its ancestors.
    fn ensure_upper_dir(&self, dir: &str) -> NsResult<()> {
        let mut cur = String::new();
        for name in std::iter::once("").chain(dir.split('/').filter(|c| !c.is_empty())) {
            cur = join(&cur, name);
            let p = self.overlay.path(&cur);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(NsError::NotADirectory),
                // What the cache shows as 0755 keeps that mode once it exists in the overlay.
                Err(e) if not_found_like(&e) => {
                    match fs::DirBuilder::new().mode(0o755).create(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    // ----- creating -----

    fn check_new_name(&self, dir: &str, dir_ro: bool, name: &str) -> NsResult<()> {
        if dir_ro {
            return Err(NsError::ReadOnly);
        }
        if is_internal(name) || name.contains('/') {
            return Err(NsError::Invalid);
        }
        match self.find(dir, dir_ro, name) {
            Ok(_) => Err(NsError::Exists),
            Err(NsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives what was just created to its creator, as a real filesystem would (root daemons).
    fn chown_to(&self, path: &Path, caller: Caller) {
        if self.is_root && (caller.uid != self.uid || caller.gid != self.gid) {
            if let Err(e) = std::os::unix::fs::lchown(path, Some(caller.uid), Some(caller.gid)) {
                tracing::debug!(path = %path.display(), "cannot chown: {e}");
            }
        }
    }

    /// Runs `make` to create `name` in `parent` (in the overlay), then resolves it.
    fn create_with<T>(
        &self,
        parent: u64,
        name: &str,
        caller: Caller,
        is_dir: bool,
        make: impl FnOnce(&Path) -> io::Result<T>,
    ) -> NsResult<(NodeInfo, T)> {
        let _g = self.write_tree();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        self.check_new_name(&dir, ro, name)?;
        self.ensure_upper_dir(&dir)?;
        let child = join(&dir, name);
        let path = self.overlay.path(&child);
        let hidden_below = self.overlay.marker(&dir, name) == Some(Marker::Whiteout);
        let made = make(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                NsError::Exists
            } else {
                NsError::from(e)
            }
        })?;
        self.chown_to(&path, caller);
        if hidden_below {
            if is_dir {
                self.overlay.set_opaque(&child)?;
            }
            self.overlay.remove_whiteout(&dir, name)?;
        }
        self.shard_changed(parent, name);
        let found = self.find(&dir, ro, name)?;
        Ok((self.entry_for(parent, name, found)?, made))
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> NsResult<NodeInfo> {
        self.create_with(parent, name, caller, true, |p| {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(mode & 0o7777).create(p)
        })
        .map(|(info, ())| info)
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> NsResult<(NodeInfo, File)> {
        self.create_with(parent, name, caller, false, |p| {
            // The daemon's fd may always write (creation needs it; the client's own fd keeps
            // the access mode it asked for).
            let mut o = upper_options(flags, true);
            o.write(true).create_new(true).mode(mode & 0o7777);
            o.open(p)
        })
    }

    /// A regular file, fifo, socket or device node (devices need the daemon's CAP_MKNOD, and
    /// the mount is `nodev`: they never open a device).
    pub fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> NsResult<NodeInfo> {
        use nix::sys::stat::{Mode, SFlag};
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        let kind = if kind.is_empty() {
            SFlag::S_IFREG
        } else {
            kind
        };
        self.create_with(parent, name, caller, false, |p| {
            nix::sys::stat::mknod(p, kind, perm, rdev as libc::dev_t).map_err(io::Error::from)
        })
        .map(|(info, ())| info)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &Path,
        caller: Caller,
    ) -> NsResult<NodeInfo> {
        self.create_with(parent, name, caller, false, |p| {
            std::os::unix::fs::symlink(target, p)
        })
        .map(|(info, ())| info)
    }

    /// A hard link (inside the overlay: a cache file is copied up first).
    pub fn link(&self, ino: u64, parent: u64, name: &str) -> NsResult<NodeInfo> {
        let mut node = self.node(ino)?;
        match &node.kind {
            NodeKind::Dir { .. } => return Err(NsError::NotPermitted),
            NodeKind::Status => return Err(NsError::ReadOnly),
            NodeKind::Lower {
                read_only: true, ..
            } => return Err(NsError::ReadOnly),
            NodeKind::Lower { .. } | NodeKind::Generated { .. } => {
                self.copy_up(&node)?;
                let (p, n) = node.first_place().ok_or(NsError::NotFound)?;
                let _g = self.read_tree();
                let dir = self.path_of(p)?;
                let (_, ro) = self.dir_node(p)?;
                let found = self.find(&dir, ro, &n)?;
                node = self.node_for(p, &n, found, false);
            }
            NodeKind::Upper { .. } => {}
        }
        let _g = self.write_tree();
        let (src, _) = self.upper_of(&node)?;
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        self.check_new_name(&dir, ro, name)?;
        self.ensure_upper_dir(&dir)?;
        fs::hard_link(&src, self.overlay.path(&join(&dir, name)))?;
        self.overlay.remove_whiteout(&dir, name)?;
        let found = self.find(&dir, ro, name)?;
        self.entry_for(parent, name, found)
    }

    // ----- removing and renaming -----

    /// Marks the node (if any) that showed `found` at `parent`/`name` as gone from there.
    fn retire(&self, parent: u64, name: &str, found: &Found) {
        let ident = match found {
            Found::Dir { .. } => Ident::Dir(parent, name.to_string()),
            Found::Lower { node, .. } => Ident::Lower(parent, name.to_string(), node.clone()),
            Found::Generated(b) => Ident::Generated(parent, name.to_string(), hash_bytes(b)),
            Found::Upper(m) => {
                let ident = upper_ident(m);
                if let Some(ino) = self.ids.get(&ident).map(|i| *i) {
                    if let Ok(node) = self.node(ino) {
                        let mut places = lock(&node.places);
                        places.retain(|p| *p != (parent, name.to_string()));
                        // Its last name is gone: what later gets its inode number is another
                        // file. (Open handles keep describing it.)
                        if places.is_empty() && m.nlink() <= 1 {
                            self.ids.remove_if(&ident, |_, i| *i == ino);
                        }
                    }
                }
                return;
            }
            Found::Status => return,
        };
        if let Some((_, ino)) = self.ids.remove(&ident) {
            if let Ok(node) = self.node(ino) {
                node.superseded.store(true, Ordering::Release);
            }
        }
    }

    pub fn unlink(&self, parent: u64, name: &str) -> NsResult<()> {
        let _g = self.write_tree();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        match found {
            Found::Dir { .. } => return Err(NsError::IsADirectory),
            Found::Status => return Err(NsError::ReadOnly),
            _ if ro => return Err(NsError::ReadOnly),
            _ => {}
        }
        // The whiteout first: a crash in between leaves the file, never the older cache copy.
        if self.lower_default(&dir, name).is_some() {
            self.ensure_upper_dir(&dir)?;
            self.overlay.add_whiteout(&dir, name)?;
        }
        if let Found::Upper(_) = found {
            fs::remove_file(self.overlay.path(&join(&dir, name)))?;
        }
        self.overlay.remove_ref(&dir, name)?;
        self.retire(parent, name, &found);
        self.shard_changed(parent, name);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> NsResult<()> {
        let _g = self.write_tree();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        if !matches!(found, Found::Dir { .. }) {
            return Err(NsError::NotADirectory);
        }
        if ro {
            return Err(NsError::ReadOnly);
        }
        let child = join(&dir, name);
        if !self.list_names(&child)?.is_empty() {
            return Err(NsError::NotEmpty);
        }
        if self.lower_default(&dir, name).is_some() {
            self.ensure_upper_dir(&dir)?;
            self.overlay.add_whiteout(&dir, name)?;
        }
        let upper = self.overlay.path(&child);
        if fs::symlink_metadata(&upper).is_ok_and(|m| m.is_dir()) {
            // Empty as shown: only format records remain in it.
            fs::remove_dir_all(&upper)?;
        }
        self.overlay.remove_ref(&dir, name)?;
        self.retire(parent, name, &found);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: u32,
    ) -> NsResult<()> {
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(NsError::Invalid);
        }
        let src_generated = {
            let _g = self.read_tree();
            let (_, ro) = self.dir_node(parent)?;
            let dir = self.path_of(parent)?;
            match self.find(&dir, ro, name)? {
                Found::Generated(b) => {
                    Some(self.node_for(parent, name, Found::Generated(b), false))
                }
                _ => None,
            }
        };
        if let Some(node) = src_generated {
            // Its content depends on where it is: it moves as an ordinary file.
            self.copy_up(&node)?;
        }
        let _g = self.write_tree();
        let (_, ro1) = self.dir_node(parent)?;
        let (_, ro2) = self.dir_node(new_parent)?;
        let dir1 = self.path_of(parent)?;
        let dir2 = self.path_of(new_parent)?;
        let src = self.find(&dir1, ro1, name)?;
        if matches!(src, Found::Status) || ro1 || ro2 {
            return Err(NsError::ReadOnly);
        }
        if is_internal(new_name) || new_name.contains('/') {
            return Err(NsError::Invalid);
        }
        let dst = match self.find(&dir2, ro2, new_name) {
            Ok(f) => Some(f),
            Err(NsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let src_child = join(&dir1, name);
        let dst_child = join(&dir2, new_name);
        if src_child == dst_child {
            return Ok(());
        }
        let src_is_dir = matches!(src, Found::Dir { .. });
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(NsError::Exists);
            }
            let dst_is_dir = matches!(d, Found::Dir { .. });
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(NsError::NotADirectory),
                (false, true) => return Err(NsError::IsADirectory),
                (true, true) if !self.list_names(&dst_child)?.is_empty() => {
                    return Err(NsError::NotEmpty)
                }
                _ => {}
            }
            if matches!(d, Found::Status) {
                return Err(NsError::ReadOnly);
            }
            if let (Found::Upper(a), Found::Upper(b)) = (&src, d) {
                if a.dev() == b.dev() && a.ino() == b.ino() {
                    return Ok(()); // two links of one file: POSIX says do nothing
                }
            }
        }
        if src_is_dir && (dst_child.starts_with(&format!("{src_child}/"))) {
            return Err(NsError::Invalid);
        }
        // What the source shows from the cache (moved as a redirect, never copied).
        let src_lower = match &src {
            Found::Dir { .. } => self.lower_dir(&src_child).map(|(l, _)| l),
            Found::Lower { .. } => self.lower_path(&dir1, name).map(|(l, _)| l),
            _ => None,
        };
        let src_upper = self.overlay.path(&src_child);
        let dst_upper = self.overlay.path(&dst_child);
        let src_has_upper = fs::symlink_metadata(&src_upper).is_ok();
        self.ensure_upper_dir(&dir2)?;
        if let Some(Found::Dir { .. }) = &dst {
            if fs::symlink_metadata(&dst_upper).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(&dst_upper)?;
            }
        }
        if src_has_upper {
            fs::rename(&src_upper, &dst_upper)?;
        } else if let Some(Found::Upper(_)) = &dst {
            fs::remove_file(&dst_upper)?;
        }
        let dst_default = self.lower_default(&dir2, new_name);
        self.overlay.remove_ref(&dir2, new_name)?;
        if let Some(l) = &src_lower {
            if dst_default.as_ref() != Some(l) {
                self.overlay.set_ref(&dir2, new_name, l)?;
            }
        } else if src_is_dir && dst_default.is_some() {
            self.overlay.set_opaque(&dst_child)?;
        }
        self.overlay.remove_whiteout(&dir2, new_name)?;
        self.overlay.remove_ref(&dir1, name)?;
        if self.lower_default(&dir1, name).is_some() {
            self.ensure_upper_dir(&dir1)?;
            self.overlay.add_whiteout(&dir1, name)?;
        }
        // The tables follow the move.
        if let Some(d) = &dst {
            self.retire(new_parent, new_name, d);
        }
        let from = (parent, name.to_string());
        let to = (new_parent, new_name.to_string());
        let moved_ident = match &src {
            Found::Dir { .. } => Some((
                Ident::Dir(parent, name.to_string()),
                Ident::Dir(new_parent, new_name.to_string()),
            )),
            Found::Lower { node, .. } => Some((
                Ident::Lower(parent, name.to_string(), node.clone()),
                Ident::Lower(new_parent, new_name.to_string(), node.clone()),
            )),
            Found::Upper(m) => {
                if let Some(ino) = self.ids.get(&upper_ident(m)).map(|i| *i) {
                    if let Ok(node) = self.node(ino) {
                        let mut places = lock(&node.places);
                        places.retain(|p| *p != from);
                        places.insert(0, to.clone());
                    }
                }
                None
            }
            _ => None,
        };
        self.shard_changed(parent, name);
        self.shard_changed(new_parent, new_name);
        if let Some((old, new)) = moved_ident {
            if let Some((_, ino)) = self.ids.remove(&old) {
                if let Ok(node) = self.node(ino) {
                    *lock(&node.ident) = new.clone();
                    *lock(&node.places) = vec![to];
                }
                self.ids.insert(new, ino);
            }
        }
        Ok(())
    }

    // ----- attributes and extended attributes -----

    /// The overlay path to change for `node`, copying a cache file up first. Returns the path
    /// and whether the node was replaced by the copy.
    fn writable_path(&self, node: &Arc<Node>) -> NsResult<PathBuf> {
        match &node.kind {
            NodeKind::Status => Err(NsError::ReadOnly),
            NodeKind::Dir { read_only: true }
            | NodeKind::Lower {
                read_only: true, ..
            } => Err(NsError::ReadOnly),
            NodeKind::Dir { .. } => {
                let _g = self.write_tree();
                let path = self.path_of(node.ino)?;
                self.ensure_upper_dir(&path)?;
                Ok(self.overlay.path(&path))
            }
            NodeKind::Upper { .. } => {
                let _g = self.read_tree();
                Ok(self.upper_of(node)?.0)
            }
            NodeKind::Lower { .. } | NodeKind::Generated { .. } => {
                if node.superseded.load(Ordering::Acquire) {
                    return Err(NsError::Stale);
                }
                self.copy_up(node)?;
                let _g = self.read_tree();
                let (parent, name) = node.first_place().ok_or(NsError::NotFound)?;
                Ok(self.overlay.path(&join(&self.path_of(parent)?, &name)))
            }
        }
    }

    /// Changes attributes. A cache or virtual file is copied up and the change applied to the
    /// copy; the answer then still describes the old inode (marked `immutable`): its open
    /// handles keep reading the cache, and by path it answers ESTALE, so the next lookup finds
    /// the copy.
    pub fn setattr(&self, ino: u64, set: &SetAttr, handle: Option<&File>) -> NsResult<NodeInfo> {
        let node = self.node(ino)?;
        let path = match (self.writable_path(&node), &node.kind, handle) {
            (Ok(p), _, _) => p,
            // An open, unlinked overlay file: only its handle reaches it.
            (Err(NsError::NotFound), NodeKind::Upper { .. }, Some(f)) => {
                return self.setattr_fd(ino, set, f);
            }
            (Err(e), _, _) => return Err(e),
        };
        let replaced = match &node.kind {
            NodeKind::Lower { node: lower, .. } => Some(self.lower_info(ino, lower)?),
            NodeKind::Generated { bytes } => Some(self.synthetic(
                ino,
                Kind::File,
                bytes.len() as u64,
                self.started,
                0o644,
                true,
            )),
            _ => None,
        };
        // A handle of the old inode is not the copy's.
        let handle = if replaced.is_some() { None } else { handle };
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if let Some(size) = set.size {
            match handle {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new().write(true).open(&path)?.set_len(size)?,
            }
        }
        if let Some(mode) = set.mode {
            if !is_link {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&path, set.uid, set.gid)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            use nix::sys::stat::{utimensat, UtimensatFlags};
            use nix::sys::time::TimeSpec;
            let spec = |t: &Option<Option<SystemTime>>| match t {
                None => TimeSpec::UTIME_OMIT,
                Some(None) => TimeSpec::UTIME_NOW,
                Some(Some(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
                    Ok(d) => TimeSpec::from_duration(d),
                    Err(e) => -TimeSpec::from_duration(e.duration()),
                },
            };
            utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &spec(&set.atime),
                &spec(&set.mtime),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| NsError::Io(e as i32))?;
        }
        if let Some(info) = replaced {
            return Ok(NodeInfo {
                immutable: true,
                ..info
            });
        }
        let m = fs::symlink_metadata(&path)?;
        Ok(self.meta_info(ino, &m))
    }

    fn setattr_fd(&self, ino: u64, set: &SetAttr, f: &File) -> NsResult<NodeInfo> {
        if let Some(size) = set.size {
            f.set_len(size)?;
        }
        if let Some(mode) = set.mode {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::fchown(f, set.uid, set.gid)?;
        }
        let mut times = fs::FileTimes::new();
        let now = SystemTime::now();
        if let Some(t) = set.atime {
            times = times.set_accessed(t.unwrap_or(now));
        }
        if let Some(t) = set.mtime {
            times = times.set_modified(t.unwrap_or(now));
        }
        if set.atime.is_some() || set.mtime.is_some() {
            f.set_times(times)?;
        }
        Ok(self.meta_info(ino, &f.metadata()?))
    }

    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> NsResult<()> {
        let node = self.node(ino)?;
        if matches!(node.kind, NodeKind::Status) {
            if name == INVALIDATE_XATTR {
                self.invalidate_path(&String::from_utf8_lossy(value));
                return Ok(());
            }
            return Err(NsError::ReadOnly);
        }
        let path = self.writable_path(&node)?;
        let (p, n) = (
            cstr(&path)?,
            CString::new(name).map_err(|_| NsError::Invalid)?,
        );
        // SAFETY: valid NUL-terminated strings and a live slice for the call's duration.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        errno_result(r).map(drop)
    }

    /// An extended attribute (`size` 0: its length). Cache files have none.
    pub fn getxattr(&self, ino: u64, name: &str, size: usize) -> NsResult<Vec<u8>> {
        let Some(path) = self.xattr_source(ino)? else {
            return Err(NsError::Io(libc::ENODATA));
        };
        let (p, n) = (
            cstr(&path)?,
            CString::new(name).map_err(|_| NsError::Invalid)?,
        );
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds `size` writable bytes (a null pointer is fine when size is 0).
        let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
        let len = errno_result(r as i32).map(|_| r as usize)?;
        buf.truncate(if size == 0 { 0 } else { len });
        if size == 0 {
            return Ok(vec![0; len]);
        }
        Ok(buf)
    }

    pub fn listxattr(&self, ino: u64, size: usize) -> NsResult<Vec<u8>> {
        let Some(path) = self.xattr_source(ino)? else {
            return Ok(vec![]);
        };
        let p = cstr(&path)?;
        let mut buf = vec![0u8; size];
        // SAFETY: as in getxattr.
        let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) };
        let len = errno_result(r as i32).map(|_| r as usize)?;
        if size == 0 {
            return Ok(vec![0; len]);
        }
        buf.truncate(len);
        Ok(buf)
    }

    pub fn removexattr(&self, ino: u64, name: &str) -> NsResult<()> {
        if self.xattr_source(ino)?.is_none() {
            return Err(NsError::Io(libc::ENODATA));
        }
        let node = self.node(ino)?;
        let path = self.writable_path(&node)?;
        let (p, n) = (
            cstr(&path)?,
            CString::new(name).map_err(|_| NsError::Invalid)?,
        );
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        errno_result(r).map(drop)
    }

    /// The overlay path holding `ino`'s extended attributes, if it has one.
    fn xattr_source(&self, ino: u64) -> NsResult<Option<PathBuf>> {
        let _g = self.read_tree();
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::Upper { .. } => Ok(Some(self.upper_of(&node)?.0)),
            NodeKind::Dir { .. } => {
                let p = self.overlay.path(&self.path_of(ino)?);
                Ok(fs::symlink_metadata(&p)
                    .is_ok_and(|m| m.is_dir())
                    .then_some(p))
            }
            _ => Ok(None),
        }
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

/// Copies a cache blob for a copy-up: a reflink where the filesystem shares extents, else
/// in-kernel copies of 64 MiB at a time (each one short, so the daemon stays killable and a
/// copy-up of a large shard is never one uninterruptible call).
fn copy_blob(src: &Path, dst: &Path) -> io::Result<()> {
    if reflink_copy::reflink(src, dst).is_ok() {
        return Ok(());
    }
    let from = File::open(src)?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let len = from.metadata()?.len();
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(64 << 20) as usize;
        let mut off_in = done as i64;
        let mut off_out = done as i64;
        // SAFETY: two open fds and pointers to locals, valid for the call.
        let n = unsafe {
            libc::copy_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&from),
                &mut off_in,
                std::os::fd::AsRawFd::as_raw_fd(&to),
                &mut off_out,
                chunk,
                0,
            )
        };
        match n {
            n if n > 0 => done += n as u64,
            0 => break,
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // Across filesystems or where unsupported: an ordinary copy of the rest.
                    Some(libc::EXDEV)
                    | Some(libc::ENOSYS)
                    | Some(libc::EINVAL)
                    | Some(libc::EOPNOTSUPP) => return copy_rest(&from, &to, done, len),
                    Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
        }
    }
    if done < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} shrank while it was copied", src.display()),
        ));
    }
    Ok(())
}

fn copy_rest(from: &File, to: &File, mut done: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = from.read_at(&mut buf[..want], done)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    Ok(())
}

fn errno_result(r: i32) -> NsResult<i32> {
    if r < 0 {
        Err(NsError::Io(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(r)
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
