//! What the daemon holds for open files and directories: the handle table (an fd per open
//! file, or bytes served from memory), directory listings snapshotted per handle, and the
//! passthrough backing ids, one per inode, shared by its handles (virtiofsd's rule: an fd's
//! lifetime is its handle's).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use fuser::BackingId;

/// One open file.
pub(crate) enum Handle {
    /// A cache blob (read-only) or an overlay file: read by the kernel itself (passthrough) or
    /// by pread / pwrite in the daemon.
    File {
        ino: u64,
        file: File,
        writable: bool,
        /// This handle's share of the inode's backing id (dropped with the handle).
        _backing: Option<Arc<BackingId>>,
    },
    /// Served from memory (virtual files, the status file).
    Bytes(Arc<[u8]>),
}

impl Handle {
    /// The open file, unless the handle serves bytes.
    pub(crate) fn file(&self) -> Option<&File> {
        match self {
            Handle::File { file, .. } => Some(file),
            Handle::Bytes(_) => None,
        }
    }

    /// The open file, when it was opened for writing.
    pub(crate) fn writable_file(&self) -> Option<&File> {
        match self {
            Handle::File {
                file,
                writable: true,
                ..
            } => Some(file),
            _ => None,
        }
    }
}

/// A directory handle's names, once its first read took them.
struct Listing {
    names: Option<Arc<[OsString]>>,
}

#[derive(Default)]
pub(crate) struct Handles {
    files: DashMap<u64, Handle>,
    /// Directory listings, taken at the first read (and at each rewind), so that entries
    /// removed while a reader walks the directory do not shift what it has not seen yet. Not
    /// at opendir: the first read comes from offset 0 and would list the directory again.
    dirs: DashMap<u64, Listing>,
    next_fh: AtomicU64,
    /// One backing id per inode, shared by its open handles, dropped with the last of them.
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl Handles {
    /// A fresh handle number (never 0).
    pub(crate) fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Ref<'_, u64, Handle>> {
        self.files.get(&fh)
    }

    pub(crate) fn insert(&self, fh: u64, handle: Handle) {
        self.files.insert(fh, handle);
    }

    /// Closes handle `fh` (its fd, and its share of the backing id); returns it.
    pub(crate) fn remove(&self, fh: u64) -> Option<Handle> {
        self.files.remove(&fh).map(|(_, h)| h)
    }

    /// Some open file of inode `ino` (fstat of an open, unlinked file comes without its handle).
    pub(crate) fn any_file_of<T>(&self, ino: u64, f: impl FnOnce(&File) -> T) -> Option<T> {
        let h = self
            .files
            .iter()
            .find(|h| matches!(h.value(), Handle::File { ino: i, .. } if *i == ino))?;
        h.value().file().map(f)
    }

    /// The inode's live backing id, or a new one made by `register`.
    pub(crate) fn backing_for(
        &self,
        ino: u64,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = map.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(register()?);
        map.insert(ino, Arc::downgrade(&id));
        map.retain(|_, w| w.strong_count() > 0);
        Ok(id)
    }

    /// A directory handle `fh`, its listing not taken yet.
    pub(crate) fn open_dir(&self, fh: u64) {
        self.dirs.insert(fh, Listing { names: None });
    }

    /// The listing handle `fh` reads at `offset`, taken by `list` at the first read and again
    /// whenever a read starts over from offset 0 (rewinddir). Shared, not copied: a large
    /// directory is read in many requests.
    pub(crate) fn listing<E>(
        &self,
        fh: u64,
        offset: u64,
        list: impl FnOnce() -> Result<Vec<OsString>, E>,
        closed: E,
    ) -> Result<Arc<[OsString]>, E> {
        match self.dirs.get(&fh) {
            None => return Err(closed),
            Some(entry) => match &entry.names {
                Some(names) if offset != 0 => return Ok(Arc::clone(names)),
                _ => {}
            },
        }
        // Listed without the map's lock held: a large directory takes a while.
        let names: Arc<[OsString]> = list()?.into();
        match self.dirs.get_mut(&fh) {
            None => Err(closed),
            Some(mut entry) => {
                entry.names = Some(Arc::clone(&names));
                Ok(names)
            }
        }
    }

    pub(crate) fn remove_listing(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
