//! Conversions that produce a new managed workspace from a model: `--repair-index`,
//! `--quantize` and `--dequantize`.
//! Sources are only ever read; nothing here opens a cache file for writing.

pub mod clone;
pub mod copy;
pub mod family;
pub mod plan;
pub mod repair_index;
pub mod shards;
mod target;
pub mod weights;

use std::io;
use std::path::{Path, PathBuf};

use crate::store::cache::HubCache;
use crate::store::content;
use crate::store::files::workspace_files;
use crate::store::health::Problem;
use crate::store::index::RebuildError;
use crate::store::safetensors::HeaderError;
use crate::store::sentinel::{Sentinel, SentinelError};
use crate::store::spec::ResolvedModel;
use plan::Operation;
use target::MountedTarget;

pub use repair_index::{repair_index, RepairOptions, RepairOutcome};
pub use weights::{WeightsOptions, WeightsOutcome};

/// What `mlxk convert` was asked to do.
#[derive(Debug, Clone)]
pub enum ConvertOperation {
    RepairIndex,
    Weights(Operation),
}

/// One convert: a source model, the target directory the user named, the operation.
#[derive(Debug, Clone)]
pub struct ConvertRequest<'a> {
    pub source: &'a ResolvedModel,
    pub target: &'a Path,
    pub operation: ConvertOperation,
    pub skip_health: bool,
}

/// What a convert produced.
#[derive(Debug)]
pub enum ConvertOutcome {
    Repair(RepairOutcome),
    Weights(WeightsOutcome),
}

/// Where a running convert is, for progress bars.
#[derive(Debug, Clone)]
pub enum ConvertProgress<'a> {
    Files(repair_index::Progress<'a>),
    Tensors(weights::WeightsProgress<'a>),
}

/// Runs a convert. Neither `cache` (the one configured) nor the cache the source lives in may
/// receive the output; a target inside a live mount is written into that mount's overlay.
pub fn convert(
    cache: Option<&HubCache>,
    request: &ConvertRequest<'_>,
    progress: &mut dyn FnMut(ConvertProgress<'_>),
) -> Result<ConvertOutcome, ConvertError> {
    let caches: Vec<&HubCache> = cache
        .iter()
        .copied()
        .chain(request.source.cache())
        .collect();
    let mounted = MountedTarget::find(request.target)?;
    let write_to = mounted
        .as_ref()
        .map_or(request.target, |t| t.overlay_path.as_path());
    let result = match &request.operation {
        ConvertOperation::RepairIndex => {
            let opts = RepairOptions {
                skip_health: request.skip_health,
            };
            let mut on = |p: repair_index::Progress<'_>| progress(ConvertProgress::Files(p));
            repair_index(request.source, write_to, &caches, &opts, &mut on)
                .map(ConvertOutcome::Repair)
        }
        ConvertOperation::Weights(op) => {
            let opts = WeightsOptions {
                skip_health: request.skip_health,
                max_shard_bytes: None,
            };
            let mut on = |p: weights::WeightsProgress<'_>| progress(ConvertProgress::Tensors(p));
            weights::convert_weights(request.source, write_to, &caches, op, &opts, &mut on)
                .map(ConvertOutcome::Weights)
        }
    };
    if let Some(t) = &mounted {
        t.invalidate();
    }
    result
}

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
    #[error("target {target}: {reason}")]
    InvalidTarget { target: PathBuf, reason: String },
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

/// Marks a workspace complete: its content hashed and fingerprinted into the sentinel, which
/// is then written without the in-progress mark. Files in `known` (copies of cache blobs named
/// by their sha256) are not read again. Returns the content hash.
pub(crate) fn finish_sentinel(
    target: &Path,
    sentinel: &mut Sentinel,
    known: &std::collections::HashMap<String, String>,
) -> Result<String, ConvertError> {
    let io_err = |what: &'static str| {
        move |source: io::Error| ConvertError::Io {
            path: target.to_path_buf(),
            what,
            source,
        }
    };
    let files = workspace_files(target).map_err(io_err("listing the result"))?;
    let stamp = content::stamp_known(&files, known).map_err(io_err("hashing the result"))?;
    sentinel.record_content(&stamp);
    sentinel.convert_state = None;
    sentinel.write_atomic(target)?;
    Ok(stamp.content_hash)
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
            ConvertError::InvalidTarget { .. } => "InvalidTarget",
            ConvertError::SourceUnusable { .. } => "source_unhealthy",
            ConvertError::Plan { .. } => "source_unsupported",
            _ => "CommandError",
        }
    }
}
