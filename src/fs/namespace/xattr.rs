//! Extended attributes: on overlay files and directories (a cache file is copied up to get
//! one); the hidden status file's invalidation request.

use std::ffi::{CString, OsStr};
use std::fs::{self};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::*;

pub(super) fn cstr(p: &Path) -> NsResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| NsError::Invalid)
}

pub(super) fn errno_result(r: i32) -> NsResult<i32> {
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

impl Namespace {
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> NsResult<()> {
        let node = self.node(ino)?;
        if matches!(node.kind, NodeKind::Status) {
            if name == INVALIDATE_XATTR {
                self.invalidate_path(Path::new(OsStr::from_bytes(value)));
                return Ok(());
            }
            return Err(NsError::ReadOnly);
        }
        let path = self.writable_path(&node)?;
        let (p, n) = (
            cstr(&path)?,
            CString::new(name.as_bytes()).map_err(|_| NsError::Invalid)?,
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

    /// Whether `ino` is the hidden status file (whose setxattr is a request, not an attribute).
    pub fn is_status_file(&self, ino: u64) -> bool {
        self.node(ino)
            .is_ok_and(|node| matches!(node.kind, NodeKind::Status))
    }

    /// An extended attribute (`size` 0: its length). Cache files have none.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: usize) -> NsResult<Vec<u8>> {
        let Some(path) = self.xattr_source(ino)? else {
            return Err(NsError::Io(libc::ENODATA));
        };
        let (p, n) = (
            cstr(&path)?,
            CString::new(name.as_bytes()).map_err(|_| NsError::Invalid)?,
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

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> NsResult<()> {
        if self.xattr_source(ino)?.is_none() {
            return Err(NsError::Io(libc::ENODATA));
        }
        let node = self.node(ino)?;
        let path = self.writable_path(&node)?;
        let (p, n) = (
            cstr(&path)?,
            CString::new(name.as_bytes()).map_err(|_| NsError::Invalid)?,
        );
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        errno_result(r).map(drop)
    }

    /// The overlay path holding `ino`'s extended attributes, if it has one.
    pub(super) fn xattr_source(&self, ino: u64) -> NsResult<Option<PathBuf>> {
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
