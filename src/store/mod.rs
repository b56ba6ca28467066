//! The model store: pure knowledge of the HF cache, workspaces, safetensors headers, indexes,
//! health and the workspace sentinel. No FUSE, no CLI; it calls nothing else in the crate.

pub mod cache;
pub mod config;
pub mod content;
pub mod error;
pub mod files;
pub mod health;
pub mod index;
pub mod mounts;
pub mod overlay;
pub mod problem;
pub mod safetensors;
pub mod sentinel;
pub mod spec;
pub mod summary;

pub use cache::HubCache;
pub use error::StoreError;
pub use files::ModelFile;
pub use health::check;
pub use index::{WeightIndex, INDEX_FILE};
pub use safetensors::read_header;
pub use sentinel::{Sentinel, SENTINEL_FILE};
pub use spec::resolve;
