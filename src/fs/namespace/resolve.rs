//! Resolution: a node's path, what a name of a union directory shows (overlay entry, redirect,
//! whiteout, opaque directory, cache), lookups and listings, and the index recomputed from the
//! union's shards.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::inodes::hash_bytes;
use super::*;
use crate::fs::lower::{LowerContent, LowerNode};
use crate::fs::view::VirtualFile;
use crate::store::config::ModelConfig;
use crate::store::files::join_rel;
use crate::store::index::rebuild_index;
use crate::store::overlay::Marker;
use crate::store::safetensors::read_header;

/// What a name of a directory resolves to.
#[derive(Debug)]
pub(super) enum Found {
    Dir { read_only: bool },
    Upper(Metadata),
    Lower { node: LowerNode, read_only: bool },
    Generated(Arc<[u8]>),
    Status,
}

impl Namespace {
    pub(super) fn path_of(&self, ino: u64) -> NsResult<PathBuf> {
        let mut parts: Vec<OsString> = Vec::new();
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
        Ok(parts.iter().rev().collect())
    }

    /// The overlay path of an overlay file node and its metadata, checked to still be that file.
    pub(super) fn upper_of(&self, node: &Node) -> NsResult<(PathBuf, Metadata)> {
        let NodeKind::Upper { dev, ino } = node.kind else {
            return Err(NsError::Invalid);
        };
        let places = lock(&node.places).clone();
        for (parent, name) in places {
            let Ok(dir) = self.path_of(parent) else {
                continue;
            };
            let p = self.overlay.path(dir.join(name));
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
    pub(super) fn lower_dir(&self, path: &Path) -> Option<(String, LowerNode)> {
        let mut lower = Some((String::new(), LowerNode::Root));
        let mut cur = PathBuf::new();
        for name in path.iter() {
            // Below a directory with nothing of the cache, only a redirect can bring some back:
            // no need to look for whiteouts and opaque markers there.
            let marker = if lower.is_some() {
                self.overlay_marker(&cur, name)
            } else {
                self.overlay_redirect(&cur, name).map(Marker::Ref)
            };
            lower = match marker {
                Some(Marker::Ref(t)) => self.lower.resolve(&t).map(|n| (t, n)),
                Some(Marker::Whiteout) => None,
                None => lower.and_then(|(l, n)| self.lower_child(&l, &n, name)),
            }
            .filter(|(_, n)| n.is_dir());
            cur.push(name);
            if lower.is_some() && self.overlay_opaque(&cur) {
                lower = None;
            }
        }
        lower
    }

    /// The cache path `name` of `dir` shows when the overlay records nothing for it.
    pub(super) fn lower_default(&self, dir: &Path, name: &OsStr) -> Option<String> {
        self.lower_default_node(dir, name).map(|(l, _)| l)
    }

    pub(super) fn lower_default_node(
        &self,
        dir: &Path,
        name: &OsStr,
    ) -> Option<(String, LowerNode)> {
        let (l, node) = self.lower_dir(dir)?;
        self.lower_child(&l, &node, name)
    }

    /// `name` of cache directory `node` (at cache path `l`): its path and node. The cache's
    /// names are UTF-8 (hub paths are); any other name has nothing below it.
    fn lower_child(&self, l: &str, node: &LowerNode, name: &OsStr) -> Option<(String, LowerNode)> {
        let name = name.to_str()?;
        let child = self.lower.child(node, name)?;
        Some((join_rel(l, name), child))
    }

    /// The cache path and node `name` of `dir` shows now (its redirect, else its default).
    pub(super) fn lower_path(&self, dir: &Path, name: &OsStr) -> Option<(String, LowerNode)> {
        match self.overlay_marker(dir, name) {
            Some(Marker::Ref(t)) => self.lower.resolve(&t).map(|n| (t, n)),
            Some(Marker::Whiteout) => None,
            None => self.lower_default_node(dir, name),
        }
    }

    pub(super) fn find(&self, dir: &Path, dir_ro: bool, name: &OsStr) -> NsResult<Found> {
        if dir.as_os_str().is_empty() && name == STATUS_FILE {
            return Ok(Found::Status);
        }
        // Names the overlay format reserves are never shown.
        if check_name(name).is_err() {
            return Err(NsError::NotFound);
        }
        if self.overlay_may_hold(dir, name) {
            match fs::symlink_metadata(self.overlay.path(dir.join(name))) {
                Ok(m) if m.is_dir() => return Ok(Found::Dir { read_only: dir_ro }),
                Ok(m) => return Ok(Found::Upper(m)),
                Err(e) if not_found_like(&e) => {}
                Err(e) => return Err(e.into()),
            }
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
    pub(super) fn union_index(&self, dir: &Path) -> NsResult<Option<Arc<[u8]>>> {
        if self.overlay_absent(dir) {
            return Ok(None);
        }
        let listing = self.overlay.read_dir(dir)?;
        let shard = |n: &OsStr| n.to_str().is_some_and(crate::store::files::is_safetensors);
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
            let header =
                read_header(&path, &name.to_string_lossy()).map_err(|_| NsError::NotFound)?;
            shards.push(header);
        }
        let quant = self
            .readable_path(dir, OsStr::new("config.json"))
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| ModelConfig::parse(&b).ok())
            .and_then(|c| c.quantization());
        let index = rebuild_index(&shards, quant.as_ref()).map_err(|_| NsError::NotFound)?;
        Ok(Some(Arc::from(index.to_json_string().into_bytes())))
    }

    /// A real file holding what `name` of `dir` shows (overlay file or cache blob).
    pub(super) fn readable_path(&self, dir: &Path, name: &OsStr) -> Option<PathBuf> {
        if self.overlay_may_hold(dir, name) {
            let upper = self.overlay.path(dir.join(name));
            if let Ok(m) = fs::metadata(&upper) {
                return m.is_file().then_some(upper);
            }
        }
        let (_, node) = self.lower_path(dir, name)?;
        match self.lower.content(&node)? {
            LowerContent::Blob(p) => Some(p),
            LowerContent::Bytes(_) => None,
        }
    }

    /// The names of union directory `dir`, sorted (`.`/`..` excluded).
    pub(super) fn list_names(&self, dir: &Path) -> NsResult<Vec<OsString>> {
        let ol = if self.overlay_absent(dir) {
            Default::default()
        } else {
            self.overlay.read_dir(dir)?
        };
        let mut names: BTreeSet<OsString> = ol.entries.iter().cloned().collect();
        for (n, t) in &ol.refs {
            if self.lower.resolve(t).is_some() {
                names.insert(n.clone());
            }
        }
        if !ol.opaque {
            if let Some((_, node)) = self.lower_dir(dir) {
                for (n, _) in self.lower.children(&node) {
                    let n = OsString::from(n);
                    if !ol.whiteouts.contains(&n) && !ol.refs.iter().any(|(r, _)| *r == n) {
                        names.insert(n);
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Whether a cache, virtual or generated file node is still what its place shows (a
    /// copy-up, a deletion, a changed shard set or a moved snapshot make it something else).
    /// A node found replaced is retired: by-path callers get ESTALE and look the name up again.
    pub(super) fn still_shown(&self, node: &Node) -> bool {
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

    pub(super) fn still_shown_locked(&self, node: &Node) -> bool {
        let _g = self.read_tree();
        self.still_shown(node)
    }

    /// Looks `name` up in directory `parent`; the kernel now holds one more reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> NsResult<NodeInfo> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let _g = self.read_tree();
        self.lookup_locked(parent, name)
    }

    pub(super) fn lookup_locked(&self, parent: u64, name: &OsStr) -> NsResult<NodeInfo> {
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        let found = self.find(&dir, ro, name)?;
        self.entry_for(parent, name, found)
    }

    /// Whether `ino` is a directory still in the tree (what opening it for reading needs).
    pub fn check_dir(&self, ino: u64) -> NsResult<()> {
        let _g = self.read_tree();
        self.dir_node(ino)?;
        self.path_of(ino).map(drop)
    }

    /// The names of directory `ino` (`.`/`..` excluded).
    pub fn list(&self, ino: u64) -> NsResult<Vec<OsString>> {
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
}
