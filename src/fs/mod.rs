//! The FUSE adapter: the cache as a tree of managed, repaired workspaces.
//!
//! - [`namespace`]: the tree, inode table and what each node is (no FUSE types);
//! - [`view`]: one snapshot as shown, with its virtual sentinel and rebuilt index;
//! - [`filesystem`]: fuser callbacks, handles, passthrough backing ids;
//! - [`daemon`]: mounting, signals, the registry record, the cache watcher;
//! - [`errno`]: namespace errors to errno.

pub mod daemon;
mod errno;
pub mod filesystem;
pub mod namespace;
mod sandbox;
pub mod view;
mod watch;
