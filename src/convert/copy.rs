//! Copy-on-write copies of model files (FICLONE on Linux, clonefile on macOS, a plain copy
//! where the filesystem cannot share extents).

use std::fs;
use std::path::Path;

use super::ConvertError;

/// What copying a tree cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: usize,
    /// Files that share extents with their source instead of being copied.
    pub reflinked: usize,
    pub bytes: u64,
}

/// Copies `from` to `to` (which must not exist), reflinking where possible.
pub fn copy_file(from: &Path, to: &Path, stats: &mut CopyStats) -> Result<(), ConvertError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|source| ConvertError::Io {
            path: parent.to_path_buf(),
            what: "cannot create directory",
            source,
        })?;
    }
    let copied = reflink_copy::reflink_or_copy(from, to).map_err(|source| ConvertError::Io {
        path: from.to_path_buf(),
        what: "cannot copy",
        source,
    })?;
    let size = fs::metadata(to)
        .map_err(|source| ConvertError::Io {
            path: to.to_path_buf(),
            what: "cannot stat the copy",
            source,
        })?
        .len();
    stats.files += 1;
    stats.bytes += size;
    if copied.is_none() {
        stats.reflinked += 1;
    }
    Ok(())
}
