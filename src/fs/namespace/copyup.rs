//! Copy-up: a cache, virtual or generated file becomes an overlay file (complete in the temp
//! directory first, then renamed into place), and the overlay directories a change needs.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::fs::lower::LowerContent;

/// Copies a cache blob for a copy-up: a reflink where the filesystem shares extents, else
/// in-kernel copies of 64 MiB at a time (each one short, so the daemon stays killable and a
/// copy-up of a large shard is never one uninterruptible call).
pub(super) fn copy_blob(src: &Path, dst: &Path) -> io::Result<()> {
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

pub(super) fn copy_rest(from: &File, to: &File, mut done: u64, len: u64) -> io::Result<()> {
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
            && self.path_of(parent).ok().as_deref() == Some(dir.as_path());
        let target = self.overlay.path(dir.join(&name));
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
    pub(super) fn ensure_upper_dir(&self, dir: &Path) -> NsResult<()> {
        // Usually it exists: one stat then, not one per level.
        if fs::symlink_metadata(self.overlay.path(dir)).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        // The overlay's root first, then each level below it.
        for name in std::iter::once(OsStr::new("")).chain(dir.iter()) {
            cur.push(name);
            let p = self.overlay.path(&cur);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(NsError::NotADirectory),
                // What the cache shows as 0755 keeps that mode once it exists in the overlay.
                Err(e) if not_found_like(&e) => {
                    match fs::DirBuilder::new().mode(0o755).create(&p) {
                        // The directory's attributes are its overlay directory's from now on:
                        // the kernel may hold the cache's for seconds (a watched model
                        // directory), so it is told.
                        Ok(()) => {
                            if let Some(ino) = self.known_dir(&cur) {
                                self.invalidate(Invalidation::Inode(ino));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The overlay path to change for `node`, copying a cache file up first. Returns the path
    /// and whether the node was replaced by the copy.
    pub(super) fn writable_path(&self, node: &Arc<Node>) -> NsResult<PathBuf> {
        match &node.kind {
            NodeKind::Status => Err(NsError::ReadOnly),
            NodeKind::Dir { read_only: true }
            | NodeKind::Lower {
                read_only: true, ..
            } => Err(NsError::ReadOnly),
            NodeKind::Dir { .. } => {
                let mut g = self.write_tree_scoped();
                let path = self.path_of(node.ino)?;
                if self.overlay_absent(&path) {
                    g.changing(path.ancestors().map(Path::to_path_buf).collect());
                }
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
                Ok(self.overlay.path(self.path_of(parent)?.join(&name)))
            }
        }
    }
}
