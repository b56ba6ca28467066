//! The model store: pure knowledge of the HF cache, workspaces, safetensors headers, indexes,
//! health and the workspace sentinel. No FUSE, no CLI; it calls nothing else in the crate.

pub mod cache;
pub mod config;
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

pub use cache::{cache_root, HubCache, ModelRepo, Snapshot};
pub use error::StoreError;
pub use files::{FileState, ModelFile};
pub use health::{check, Framework, HealthReport, Problem};
pub use index::{rebuild_index, WeightIndex, INDEX_FILE};
pub use problem::ProblemCode;
pub use safetensors::{read_header, ShardHeader};
pub use sentinel::{Sentinel, SENTINEL_FILE};
pub use spec::{resolve, ModelLocation, ResolvedModel};
