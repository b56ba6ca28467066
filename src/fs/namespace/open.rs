//! Opening files: overlay files with the client's access mode, cache blobs read-only (what a
//! passthrough backing is registered from), virtual and generated files from memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::fs::lower::LowerContent;

/// Open options for an overlay file from a client's open flags (creation flags and O_TRUNC
/// excluded: the kernel truncates with a setattr once the open succeeded).
pub(super) fn upper_options(flags: i32, read: bool) -> OpenOptions {
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
pub(super) fn open_upper(path: &Path, flags: i32) -> io::Result<File> {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        if let Ok(f) = upper_options(flags, true).open(path) {
            return Ok(f);
        }
    }
    upper_options(flags, false).open(path)
}

impl Namespace {
    /// Reopens a detached overlay file (see `Node::orphan`) with the client's flags, through
    /// the handle kept when its name went. `None` when there is none.
    pub(super) fn open_orphan(&self, node: &Node, flags: i32) -> Option<io::Result<File>> {
        use std::os::fd::AsRawFd;
        let orphan = lock(&node.orphan);
        let fd = orphan.as_ref()?.as_raw_fd();
        let proc_path = format!("/proc/self/fd/{fd}");
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            if let Ok(f) = upper_options(flags, true).open(&proc_path) {
                return Some(Ok(f));
            }
        }
        Some(upper_options(flags, false).open(&proc_path))
    }

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
            NodeKind::Upper { dev, ino: file_ino } => {
                // Under the tree lock, so that no rename lands between finding the file and
                // opening it; the open is checked to be that file all the same.
                let _g = self.read_tree();
                if let Ok((path, _)) = self.upper_of(&node) {
                    let file = open_upper(&path, flags)?;
                    let meta = file.metadata()?;
                    if meta.dev() == *dev && meta.ino() == *file_ino {
                        return Ok(Opened::Upper(file));
                    }
                }
                self.open_orphan(&node, flags)
                    .ok_or(NsError::Stale)?
                    .map(Opened::Upper)
                    .map_err(NsError::from)
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
                if !self.still_shown_locked(&node) && !node.detached.load(Ordering::Acquire) {
                    return Err(NsError::Stale);
                }
                // A detached node (renamed over or unlinked while this open was on its way)
                // still reads the blob it showed, as a local filesystem reads an unlinked file.
                match self.lower.content(lower).ok_or(NsError::Stale)? {
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
                if !self.still_shown_locked(&node) && !node.detached.load(Ordering::Acquire) {
                    return Err(NsError::Stale);
                }
                Ok(Opened::Bytes(bytes.clone()))
            }
        }
    }
}
