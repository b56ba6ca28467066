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
use crate::store::{mounts, overlay};

use super::ConvertError;

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
    require_absent_or_empty(target, dst)
}

/// `shown` (where the target is looked at) must not exist or be an empty directory; errors
/// name `named`, the path the user gave.
fn require_absent_or_empty(shown: &Path, named: &Path) -> Result<(), ConvertError> {
    match fs::symlink_metadata(shown) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(ConvertError::TargetNotDirectory {
            target: named.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = fs::read_dir(shown).map_err(|source| ConvertError::Io {
                path: named.to_path_buf(),
                what: "cannot read the target directory",
                source,
            })?;
            if entries.next().is_some() {
                Err(ConvertError::TargetNotEmpty {
                    target: named.to_path_buf(),
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
        ModelLocation::Cache { repo, snapshot, .. } => {
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
        .filter(|p| p.code.blocks_convert())
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

/// A convert target inside a live mlxk-fs mount: written straight into the mount's overlay
/// directory (never through FUSE, never into the cache), after which the daemon is asked to
/// drop the kernel's cached entries along the path.
pub(crate) struct MountedTarget {
    pub(crate) overlay_path: PathBuf,
    mountpoint: PathBuf,
    rel: String,
}

impl MountedTarget {
    /// `None` when `target` is not inside a live mount. The target is checked as the mount
    /// shows it: not the mount's root, no name the overlay format reserves, absent or empty.
    pub(crate) fn find(target: &Path) -> Result<Option<MountedTarget>, ConvertError> {
        let Some(t) = mounts::overlay_target(target) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConvertError::InvalidTarget {
            target: target.to_path_buf(),
            reason,
        };
        if t.rel.is_empty() {
            return Err(invalid(
                "it is the root of an mlxk-fs mount; convert into <mount>/<org>/<name>".into(),
            ));
        }
        if let Some(c) = t.rel.split('/').find(|c| overlay::is_internal(c)) {
            return Err(invalid(format!(
                "names starting with `.wh.` are reserved by the mount's overlay format ({c})"
            )));
        }
        require_absent_or_empty(target, target)?;
        Ok(Some(MountedTarget {
            overlay_path: t.overlay_path,
            mountpoint: t.record.mountpoint,
            rel: t.rel,
        }))
    }

    /// Tells the daemon to drop the kernel's cached entries along the target's path.
    pub(crate) fn invalidate(&self) {
        if let Err(e) = mounts::ask_to_invalidate(&self.mountpoint, &self.rel) {
            tracing::debug!("cannot ask the mount to invalidate {}: {e}", self.rel);
        }
    }
}
