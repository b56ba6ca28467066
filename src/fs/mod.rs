//! The FUSE adapter: the cache as a tree of managed, repaired, writable workspaces.
//!
//! - [`namespace`]: the union of the overlay over the cache, without FUSE types (one room per
//!   concern: inodes, resolve, attr, open, copyup, create, remove, rename, xattr);
//! - [`lower`]: the cache as the read-only tree below the overlay;
//! - [`view`]: one snapshot as shown, with its virtual sentinel and rebuilt index;
//!   [`viewcache`]: those virtual files kept on disk across mounts;
//! - [`filesystem`]: fuser callbacks, which only translate; `handles`: open files, directory
//!   snapshots, passthrough backing ids;
//! - [`daemon`]: mounting, signals, the registry record, the cache watcher, status;
//! - `errno`, `mountinfo`, `sandbox`, `watch`: errno values, the mount table, root's private
//!   read-only view of the cache, cache change events.

pub mod daemon;
mod errno;
pub mod filesystem;
mod handles;
pub mod lower;
mod mountinfo;
pub mod namespace;
mod sandbox;
pub mod view;
pub mod viewcache;
mod watch;

/// The hasher of the daemon's in-memory tables: keys are inode numbers and names, many lookups
/// per request.
pub(crate) type FastHash = foldhash::fast::RandomState;
