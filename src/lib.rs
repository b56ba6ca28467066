//! mlxk-fs: a Hugging Face model cache seen as ready-to-use MLX workspaces.
//!
//! The crate is layered one way: [`cli`] and the FUSE adapter call into [`convert`], [`engine`]
//! and [`store`]; `store` calls nobody. See docs/ARCHITECTURE.md.

#![warn(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod convert;
pub mod engine;
pub mod mlx;
pub mod serve;
pub mod simd;
pub mod store;
#[doc(hidden)]
pub mod testkit;

/// This crate's version, recorded in every sentinel it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(target_os = "linux")]
pub mod fs;
/// Downloads from a Hugging Face hub (pull, clone) and removals from the cache (rm).
pub mod hub;
