//! Attributes: what a node is now (overlay metadata, or synthesized for cache, virtual and
//! generated files), and setattr (a cache file is copied up and the change applied to the copy).

use std::fs::{self, File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use super::*;
use crate::fs::lower::LowerNode;

impl Namespace {
    /// What `node` is now; a cache, virtual or generated file is first checked to be still
    /// what its place shows (ESTALE when not).
    pub(super) fn info_of(&self, node: &Node) -> NsResult<NodeInfo> {
        self.info(node, true)
    }

    /// [`Namespace::info_of`] of a node that was just found at its place, under the tree lock
    /// held since: that finding is the check (made again, it doubled every lookup's work).
    pub(super) fn info_of_found(&self, node: &Node) -> NsResult<NodeInfo> {
        self.info(node, false)
    }

    fn info(&self, node: &Node, check_shown: bool) -> NsResult<NodeInfo> {
        let stale = |node: &Node| {
            check_shown && !self.still_shown(node) && !node.detached.load(Ordering::Acquire)
        };
        match &node.kind {
            NodeKind::Dir { .. } => {
                let path = self.path_of(node.ino)?;
                // A directory known to have no overlay directory (nothing of it written; the
                // usual case for a model) is the cache's: no stat of the overlay. Listing a
                // model asked three times per model directory.
                if !self.overlay_absent(&path) {
                    match fs::symlink_metadata(self.overlay.path(&path)) {
                        Ok(m) if m.is_dir() => return Ok(self.meta_info(node.ino, &m)),
                        Ok(_) => return Err(NsError::Stale),
                        Err(_) => {}
                    }
                }
                let (attr, watched) = self
                    .lower_dir(&path)
                    .and_then(|(_, n)| {
                        let watched = matches!(&n, LowerNode::Model { repo, rev: None }
                            if self.lower.watched(repo));
                        Some((self.lower.attr(&n)?, watched))
                    })
                    .ok_or(if node.ino == ROOT_INO {
                        NsError::Io(libc::EIO)
                    } else {
                        NsError::Stale
                    })?;
                Ok(NodeInfo {
                    watched,
                    ..self.synthetic(node.ino, Kind::Dir, 0, attr.mtime, attr.perm, false)
                })
            }
            NodeKind::Upper { .. } => match self.upper_of(node) {
                Ok((_, m)) => Ok(self.meta_info(node.ino, &m)),
                // Detached by a rename over it or an unlink: its attributes are still those of
                // the file (nlink 0), as on a local filesystem.
                Err(e) => match lock(&node.orphan).as_ref().map(File::metadata) {
                    Some(Ok(m)) => Ok(self.meta_info(node.ino, &m)),
                    _ => Err(gone_is_stale(e)),
                },
            },
            NodeKind::Lower { node: lower, .. } => {
                if stale(node) {
                    return Err(NsError::Stale);
                }
                self.lower_info(node.ino, lower)
            }
            NodeKind::Generated { bytes } => {
                if stale(node) {
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

    pub(super) fn lower_info(&self, ino: u64, lower: &LowerNode) -> NsResult<NodeInfo> {
        let attr = self.lower.attr(lower).ok_or(NsError::NotFound)?;
        // A virtual file's place can come to show other bytes (the index follows the shards).
        let immutable = matches!(lower, LowerNode::File { .. });
        Ok(self.synthetic(ino, Kind::File, attr.size, attr.mtime, attr.perm, immutable))
    }

    pub(super) fn synthetic(
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
            watched: false,
        }
    }

    pub(super) fn meta_info(&self, ino: u64, m: &Metadata) -> NodeInfo {
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
            watched: false,
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

    /// Changes attributes. A cache or virtual file is copied up and the change applied to the
    /// copy; the answer then still describes the old inode (marked `immutable`): its open
    /// handles keep reading the cache, and by path it answers ESTALE, so the next lookup finds
    /// the copy.
    pub fn setattr(&self, ino: u64, set: &SetAttr, handle: Option<&File>) -> NsResult<NodeInfo> {
        let node = self.node(ino)?;
        if let (NodeKind::Upper { .. }, Some(f)) = (&node.kind, handle) {
            // The handle is this node's file (an overlay file is its inode): no path to walk.
            return self.setattr_fd(ino, set, f);
        }
        let path = self.writable_path(&node)?;
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

    pub(super) fn setattr_fd(&self, ino: u64, set: &SetAttr, f: &File) -> NsResult<NodeInfo> {
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
}
