//! Opening files: overlay files with the client's access mode, cache blobs read-only (what a
//! passthrough backing is registered from), virtual and generated files from memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
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
}
