//! Errors as the client sees them: the namespace's (mapped by [`NsError::errno`], the one
//! mapping) and the host filesystem's (which carry theirs).

use fuser::Errno;

use super::namespace::NsError;

pub fn to_errno(e: NsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// An I/O error of the overlay or the cache, as the client sees it.
pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}
