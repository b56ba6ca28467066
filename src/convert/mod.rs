//! Conversions that produce a new managed workspace from a model: `--repair-index`,
//! `--quantize` and `--dequantize`.
//! Sources are only ever read; nothing here opens a cache file for writing.

pub mod copy;
pub mod family;
pub mod plan;
pub mod quant;
pub mod repair_index;
pub mod shards;
mod target;
pub mod weights;

use std::io;
use std::path::PathBuf;

use crate::store::health::Problem;
use crate::store::index::RebuildError;
use crate::store::safetensors::HeaderError;
use crate::store::sentinel::SentinelError;

pub use repair_index::{repair_index, RepairOptions, RepairOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("target {target} is inside the Hugging Face cache ({cache}); the cache is never written: choose a directory outside it")]
    TargetInsideCache { target: PathBuf, cache: PathBuf },
    #[error("target {target} is inside the source model directory {source_dir}: choose a directory outside it")]
    TargetInsideSource {
        target: PathBuf,
        source_dir: PathBuf,
    },
    #[error("target {target} exists and is not empty: choose a new directory or empty it")]
    TargetNotEmpty { target: PathBuf },
    #[error("target {target} exists and is not a directory")]
    TargetNotDirectory { target: PathBuf },
    #[error("source {source_name} cannot be converted: {}", describe(.problems))]
    SourceUnusable {
        source_name: String,
        problems: Vec<Problem>,
    },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{model}: {reason}")]
    Plan { model: String, reason: String },
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("cannot rebuild the index: {0}")]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
}

fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{} [{}]", p.message, p.code))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConvertError {
    /// The machine-readable error type of the JSON envelope.
    pub fn kind(&self) -> &'static str {
        match self {
            ConvertError::TargetInsideCache { .. } => "target_in_cache",
            ConvertError::TargetInsideSource { .. } => "target_in_source",
            ConvertError::TargetNotEmpty { .. } | ConvertError::TargetNotDirectory { .. } => {
                "target_exists"
            }
            ConvertError::SourceUnusable { .. } => "source_unhealthy",
            ConvertError::Plan { .. } => "source_unsupported",
            _ => "CommandError",
        }
    }
}
