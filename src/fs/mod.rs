//! The FUSE adapter: the cache as a tree of managed, repaired workspaces.
//!
//! - [`namespace`]: the union of the overlay over the cache, the inode table, lookups and opens;
//!   its `write` part: copy-up, creation, removal, rename (whiteouts, redirects), attributes
//!   (no FUSE types);
//! - [`lower`]: the cache as the read-only tree below the overlay;
//! - [`view`]: one snapshot as shown, with its virtual sentinel and rebuilt index;
//! - [`filesystem`]: fuser callbacks, handles, passthrough backing ids;
//! - [`daemon`]: mounting, signals, the registry record, the cache watcher;
//! - [`errno`]: namespace errors to errno.

pub mod daemon;
mod errno;
pub mod filesystem;
pub mod lower;
mod mountinfo;
pub mod namespace;
mod sandbox;
pub mod view;
mod watch;
