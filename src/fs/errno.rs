//! The one place where namespace errors become errno values.

use fuser::Errno;

use super::namespace::NsError;

pub fn to_errno(e: NsError) -> Errno {
    match e {
        NsError::NotFound => Errno::ENOENT,
        NsError::NotADirectory => Errno::ENOTDIR,
        NsError::IsADirectory => Errno::EISDIR,
        NsError::ReadOnly => Errno::EROFS,
        // The kernel retries a path walk once with revalidation on ESTALE: that is how a
        // copied-up file replaces its cache inode under an open(2) already in flight.
        NsError::Stale => Errno::ESTALE,
        NsError::Exists => Errno::EEXIST,
        NsError::NotEmpty => Errno::ENOTEMPTY,
        NsError::Invalid => Errno::EINVAL,
        NsError::NotPermitted => Errno::EPERM,
        NsError::Io(code) => Errno::from_i32(code),
    }
}
