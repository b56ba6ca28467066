//! The one place where namespace errors become errno values.

use fuser::Errno;

use super::namespace::NsError;

pub fn to_errno(e: NsError) -> Errno {
    match e {
        NsError::NotFound => Errno::ENOENT,
        NsError::NotADirectory => Errno::ENOTDIR,
        NsError::IsADirectory => Errno::EISDIR,
        NsError::Io(code) => Errno::from_i32(code),
    }
}
