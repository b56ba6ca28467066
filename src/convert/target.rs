//! The rules every convert shares: where a target may be, creating it, undoing a failed
//! convert, the source problems no convert can cure, and the source's identity for the sentinel.

use std::fs;
use std::path::{Path, PathBuf};

use crate::store::cache::canonicalize_lenient;
use crate::store::cache::HubCache;
use crate::store::config::QuantizationConfig;
use crate::store::health::{self, Problem};
use crate::store::index::{rebuild_index, WeightIndex, INDEX_FILE};
use crate::store::safetensors::read_header_counted;
use crate::store::sentinel::write_file_atomic;
use crate::store::spec::{open_workspace, ModelLocation, ResolvedModel};

use super::ConvertError;

/// Problems of a source that no convert can cure: converting would only copy them.
pub(crate) const BLOCKING: &[&str] = &[
    "download_incomplete",
    "file_missing",
    "link_escapes_cache",
    "file_unreadable",
    "lfs_pointer",
    "config_missing",
    "config_invalid",
    "weights_missing",
    "weights_empty",
    "shard_truncated",
    "shard_header_invalid",
    "shard_header_too_large",
    "shard_trailing_bytes",
    "tensor_duplicated",
    "convert_incomplete",
];

pub(crate) fn check_target(
    src: &ResolvedModel,
    dst: &Path,
    target: &Path,
    caches: &[&HubCache],
) -> Result<(), ConvertError> {
    for cache in caches {
        if cache.contains(target) {
            return Err(ConvertError::TargetInsideCache {
                target: dst.to_path_buf(),
                cache: cache.root().to_path_buf(),
            });
        }
    }
    let src_dir = canonicalize_lenient(src.dir());
    if target.starts_with(&src_dir) {
        return Err(ConvertError::TargetInsideSource {
            target: dst.to_path_buf(),
            source_dir: src.dir().to_path_buf(),
        });
    }
    match fs::symlink_metadata(target) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(ConvertError::TargetNotDirectory {
            target: dst.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = fs::read_dir(target).map_err(|source| ConvertError::Io {
                path: dst.to_path_buf(),
                what: "cannot read the target directory",
                source,
            })?;
            if entries.next().is_some() {
                Err(ConvertError::TargetNotEmpty {
                    target: dst.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
    }
}

/// Creates `target` (and missing parents); returns the topmost directory this call created,
/// which is what undoing removes.
pub(crate) fn create_target(target: &Path) -> Result<Option<PathBuf>, ConvertError> {
    let mut topmost = None;
    let mut p = Some(target);
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        topmost = Some(dir.to_path_buf());
        p = dir.parent();
    }
    fs::create_dir_all(target).map_err(|source| ConvertError::Io {
        path: target.to_path_buf(),
        what: "cannot create the target directory",
        source,
    })?;
    Ok(topmost)
}

/// Removes what a failed convert wrote: the directories it created, or the contents it put
/// into a directory that already existed (and was empty, as checked before).
pub(crate) fn undo(target: &Path, created: Option<&Path>) {
    let result = match created {
        Some(top) => fs::remove_dir_all(top),
        None => fs::read_dir(target).and_then(|entries| {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
            Ok(())
        }),
    };
    if let Err(e) = result {
        tracing::warn!(target = %target.display(), "could not clean up after a failed convert: {e}");
    }
}

pub(crate) fn source_identity(src: &ResolvedModel) -> (Option<String>, Option<String>) {
    match &src.location {
        ModelLocation::Cache { repo, snapshot } => {
            (Some(repo.repo_id.clone()), Some(snapshot.sha.clone()))
        }
        ModelLocation::Workspace { dir, sentinel, .. } => match sentinel {
            Some(s) => (
                s.source_repo
                    .clone()
                    .or_else(|| Some(dir.display().to_string())),
                s.source_revision.clone(),
            ),
            None => (Some(dir.display().to_string()), None),
        },
    }
}

/// Refuses a source whose health has problems no convert can cure; returns its report.
pub(crate) fn gate_source(src: &ResolvedModel) -> Result<health::HealthReport, ConvertError> {
    let report = health::check(src);
    let blocking: Vec<Problem> = report
        .problems
        .iter()
        .filter(|p| BLOCKING.contains(&p.code))
        .cloned()
        .collect();
    if !blocking.is_empty() {
        return Err(ConvertError::SourceUnusable {
            source_name: src.name.clone(),
            problems: blocking,
        });
    }
    Ok(report)
}

/// Rebuilds the index from the headers of `shard_names` as they stand in `target` (so it
/// describes exactly the bytes there) and writes it atomically. Header bytes read are added to
/// `bytes_read`.
pub(crate) fn write_index(
    target: &Path,
    shard_names: &[&str],
    quantization: Option<&QuantizationConfig>,
    bytes_read: &mut u64,
) -> Result<WeightIndex, ConvertError> {
    let shards = shard_names
        .iter()
        .map(|name| read_header_counted(&target.join(name), name, bytes_read))
        .collect::<Result<Vec<_>, _>>()?;
    let index = rebuild_index(&shards, quantization)?;
    let path = target.join(INDEX_FILE);
    write_file_atomic(&path, index.to_json_string().as_bytes()).map_err(|source| {
        ConvertError::Io {
            path,
            what: "cannot write the index",
            source,
        }
    })?;
    Ok(index)
}

/// The health of a finished workspace, unless skipped.
pub(crate) fn check_result(
    target: &Path,
    skip: bool,
) -> Result<Option<health::HealthReport>, ConvertError> {
    if skip {
        return Ok(None);
    }
    let ws = open_workspace(target).map_err(|e| ConvertError::Io {
        path: target.to_path_buf(),
        what: "cannot read the new workspace",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Some(health::check(&ws)))
}
