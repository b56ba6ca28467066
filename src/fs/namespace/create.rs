//! New names: create, mkdir, mknod, symlink and hard links, each in the overlay, replacing a
//! whiteout of the same name (a directory made over one is opaque).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::open::upper_options;
use super::*;
use crate::store::overlay::Marker;

impl Namespace {
    pub(super) fn check_new_name(&self, dir: &Path, dir_ro: bool, name: &OsStr) -> NsResult<()> {
        if dir_ro {
            return Err(NsError::ReadOnly);
        }
        check_name(name)?;
        match self.find(dir, dir_ro, name) {
            Ok(_) => Err(NsError::Exists),
            Err(NsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives what was just created to its creator, as a real filesystem would (root daemons).
    pub(super) fn chown_to(&self, path: &Path, caller: Caller) {
        if self.is_root && (caller.uid != self.uid || caller.gid != self.gid) {
            if let Err(e) = std::os::unix::fs::lchown(path, Some(caller.uid), Some(caller.gid)) {
                tracing::debug!(path = %path.display(), "cannot chown: {e}");
            }
        }
    }

    /// Runs `make` to create `name` in `parent` (in the overlay), then resolves it.
    pub(super) fn create_with<T>(
        &self,
        parent: u64,
        name: &OsStr,
        caller: Caller,
        is_dir: bool,
        make: impl FnOnce(&Path) -> io::Result<T>,
    ) -> NsResult<(NodeInfo, T)> {
        let mut g = self.write_tree_scoped();
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        self.check_new_name(&dir, ro, name)?;
        g.changing(self.entry_scope(&dir, name));
        self.ensure_upper_dir(&dir)?;
        let child = dir.join(name);
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

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> NsResult<NodeInfo> {
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
        name: &OsStr,
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
        name: &OsStr,
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
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> NsResult<NodeInfo> {
        self.create_with(parent, name, caller, false, |p| {
            std::os::unix::fs::symlink(target, p)
        })
        .map(|(info, ())| info)
    }

    /// A hard link (inside the overlay: a cache file is copied up first).
    pub fn link(&self, ino: u64, parent: u64, name: &OsStr) -> NsResult<NodeInfo> {
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
        let mut g = self.write_tree_scoped();
        let (src, _) = self.upper_of(&node)?;
        let (_, ro) = self.dir_node(parent)?;
        let dir = self.path_of(parent)?;
        self.check_new_name(&dir, ro, name)?;
        g.changing(self.entry_scope(&dir, name));
        self.ensure_upper_dir(&dir)?;
        fs::hard_link(&src, self.overlay.path(dir.join(name)))?;
        self.overlay.remove_whiteout(&dir, name)?;
        let found = self.find(&dir, ro, name)?;
        self.entry_for(parent, name, found)
    }
}
