//! The namespace's changes: copy-up, creation, removal, rename, attributes and extended
//! attributes. Every change that touches several on-disk records holds the tree lock for
//! writing; the order of the record writes is chosen so that a crash between two of them
//! leaves the older state or the newer, never the cache's copy in place of an edit.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::store::overlay::{is_internal, Marker};

impl Namespace {
    /// Copies a cache, virtual or generated file into the overlay at the node's place: complete
    /// in the temp directory first (reflink where the filesystems allow), then renamed into
    /// place, so a crash never leaves a partial copy visible. The node is superseded after.
    pub(super) fn copy_up(&self, node: &Arc<Node>) -> NsResult<()> {
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
}

fn cstr(p: &Path) -> NsResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| NsError::Invalid)
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
