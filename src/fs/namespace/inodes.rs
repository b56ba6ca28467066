//! The inode table: nodes, their identities and places, the kernel's lookup counts, and the
//! retirement of nodes whose place now shows something else.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::resolve::Found;
use super::*;
use crate::fs::lower::LowerNode;

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
pub(super) enum Ident {
    Dir(u64, OsString),
    /// Device, inode and birth time: ext4 reuses inode numbers of deleted files.
    Upper(u64, u64, Option<SystemTime>),
    Lower(u64, OsString, LowerNode),
    Generated(u64, OsString, u64),
    Status,
}

pub struct Node {
    pub ino: u64,
    pub kind: NodeKind,
    pub(super) ident: Mutex<Ident>,
    /// Where the node is: (parent, name), the first being where it was last seen. Overlay files
    /// can have several (hard links).
    pub(super) places: Mutex<Vec<(u64, OsString)>>,
    pub(super) refs: Mutex<Refs>,
    /// Replaced at its place (copied up, deleted, renamed over): by-path callers get ESTALE.
    pub(super) superseded: AtomicBool,
    /// Its name was removed by a rename over it or an unlink that came through the kernel. The
    /// kernel already dropped the name, so an open that still reaches this node raced that
    /// operation (its lookup came first): like a local filesystem, it opens the old file
    /// instead of failing with ESTALE, which the kernel retries only once.
    pub(super) detached: AtomicBool,
    /// For an overlay file detached that way: a handle on the file taken before its name went,
    /// so that it can still be opened and stat'ed until the kernel forgets the node.
    pub(super) orphan: Mutex<Option<File>>,
}

/// The kernel's references to a node (its lookup count). A node is dropped from the tables at
/// zero, under this lock, so a lookup racing a forget either takes its reference first or sees
/// the node forgotten and makes a new one: the kernel never holds an inode the tables lost.
#[derive(Debug, Default)]
pub(super) struct Refs {
    pub(super) count: u64,
    pub(super) forgotten: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn upper_ident(m: &Metadata) -> Ident {
    Ident::Upper(m.dev(), m.ino(), m.created().ok())
}

pub(super) fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Node {
    pub(super) fn first_place(&self) -> Option<(u64, OsString)> {
        lock(&self.places).first().cloned()
    }
}

impl Namespace {
    pub fn node(&self, ino: u64) -> NsResult<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or(NsError::NotFound)
    }

    /// The inode of the directory at mount path `path`, if the kernel knows it.
    pub fn known_dir(&self, path: &Path) -> Option<u64> {
        let mut ino = ROOT_INO;
        for name in path.iter() {
            ino = *self.ids.get(&Ident::Dir(ino, name.to_os_string()))?;
        }
        Some(ino)
    }

    /// The node for what `name` of `parent` resolved to, allocated on first sight; with
    /// `take_ref`, the kernel is given a reference to it (a lookup).
    pub(super) fn node_for(
        &self,
        parent: u64,
        name: &OsStr,
        found: Found,
        take_ref: bool,
    ) -> Arc<Node> {
        let (ident, kind) = match found {
            Found::Dir { read_only } => (
                Ident::Dir(parent, name.to_os_string()),
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
                Ident::Lower(parent, name.to_os_string(), node.clone()),
                NodeKind::Lower { node, read_only },
            ),
            Found::Generated(bytes) => (
                Ident::Generated(parent, name.to_os_string(), hash_bytes(&bytes)),
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
                    let here = (parent, name.to_os_string());
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
            places: Mutex::new(vec![(parent, name.to_os_string())]),
            refs: Mutex::new(Refs {
                count: take_ref as u64,
                forgotten: false,
            }),
            superseded: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            orphan: Mutex::new(None),
        });
        self.nodes.insert(ino, node.clone());
        self.ids.insert(ident, ino);
        node
    }

    /// A lookup's answer: the node, referenced, and its attributes. `found` is fresh: the
    /// caller found it at `parent`/`name` under the tree lock it still holds.
    pub(super) fn entry_for(&self, parent: u64, name: &OsStr, found: Found) -> NsResult<NodeInfo> {
        let node = self.node_for(parent, name, found, true);
        match self.info_of_found(&node) {
            Ok(info) => Ok(info),
            Err(e) => {
                self.forget(node.ino, 1);
                Err(e)
            }
        }
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

    /// Marks the node (if any) that showed `found` at `parent`/`name` as gone from there.
    pub(super) fn retire(&self, parent: u64, name: &OsStr, found: &Found) {
        let ident = match found {
            Found::Dir { .. } => Ident::Dir(parent, name.to_os_string()),
            Found::Lower { node, .. } => Ident::Lower(parent, name.to_os_string(), node.clone()),
            Found::Generated(b) => Ident::Generated(parent, name.to_os_string(), hash_bytes(b)),
            Found::Upper(m) => {
                let ident = upper_ident(m);
                if let Some(ino) = self.ids.get(&ident).map(|i| *i) {
                    if let Ok(node) = self.node(ino) {
                        let mut places = lock(&node.places);
                        places.retain(|p| *p != (parent, name.to_os_string()));
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
                node.detached.store(true, Ordering::Release);
            }
        }
    }

    /// Before a rename over (or an unlink of) the overlay file at `path`, which `found`
    /// describes: keeps a handle on it in its node, if the kernel holds one, so that an open
    /// racing the operation still lands on it (see [`Node::detached`]).
    pub(super) fn keep_victim(&self, found: &Found, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let Found::Upper(m) = found else { return };
        if !m.is_file() {
            return;
        }
        let Some(ino) = self.ids.get(&upper_ident(m)).map(|i| *i) else {
            return;
        };
        let Ok(node) = self.node(ino) else { return };
        // O_PATH: no access to the content is needed to keep the file; it is reopened with the
        // client's own flags through /proc/self/fd.
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)
        else {
            return;
        };
        if file
            .metadata()
            .is_ok_and(|f| f.dev() == m.dev() && f.ino() == m.ino())
        {
            *lock(&node.orphan) = Some(file);
            node.detached.store(true, Ordering::Release);
        }
    }

    pub(super) fn dir_node(&self, ino: u64) -> NsResult<(Arc<Node>, bool)> {
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::Dir { read_only } => Ok((node, read_only)),
            _ => Err(NsError::NotADirectory),
        }
    }
}
