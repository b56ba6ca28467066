//! `convert --repair-index` (ADR-018): a new managed workspace holding the source's files
//! byte for byte and an index rebuilt from the shard headers that are really there.

use std::fs;
use std::path::{Path, PathBuf};

use crate::store::cache::{canonicalize_lenient, HubCache};
use crate::store::config::ModelConfig;
use crate::store::health::{self, HealthReport, Problem};
use crate::store::index::{rebuild_index, WeightIndex, INDEX_FILE};
use crate::store::safetensors::{read_header_counted, ShardHeader};
use crate::store::sentinel::{write_file_atomic, Sentinel, SENTINEL_FILE};
use crate::store::spec::{open_workspace, ModelLocation, ResolvedModel};

use super::copy::{copy_file, CopyStats};
use super::ConvertError;

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    pub skip_health: bool,
}

/// Where a long convert is, for progress bars.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub files_done: usize,
    pub files_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub current: &'a str,
}

#[derive(Debug)]
pub struct RepairOutcome {
    pub target: PathBuf,
    pub copy: CopyStats,
    /// The index written into the target (`None` for a single shard without an index).
    pub index: Option<WeightIndex>,
    /// What was wrong with the source's index (empty when it was already right).
    pub repaired: Vec<Problem>,
    /// Health of the target, unless skipped.
    pub health: Option<HealthReport>,
    /// Header bytes read to rebuild the index (tensor data is never read for it).
    pub index_bytes_read: u64,
}

/// Problems of a source that a rebuilt index cannot cure: converting would only copy them.
const BLOCKING: &[&str] = &[
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

/// Converts `src` into a new managed workspace at `dst` with a rebuilt index.
///
/// `dst` must not exist or be an empty directory, and must not resolve into any of `caches`. The
/// sentinel is written first (marked in progress), then every source file is copied
/// (reflink where possible), then the index, then the sentinel is marked complete. On error,
/// whatever this call created is removed; `src` is never written.
pub fn repair_index(
    src: &ResolvedModel,
    dst: &Path,
    caches: &[&HubCache],
    opts: &RepairOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RepairOutcome, ConvertError> {
    let target = canonicalize_lenient(dst);
    check_target(src, dst, &target, caches)?;
    let source_health = health::check(src);
    let blocking: Vec<Problem> = source_health
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
    let created = create_target(&target)?;
    match fill_target(src, &target, &source_health, opts, progress) {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            undo(&target, created.as_deref());
            Err(e)
        }
    }
}

fn check_target(
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
fn create_target(target: &Path) -> Result<Option<PathBuf>, ConvertError> {
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
fn undo(target: &Path, created: Option<&Path>) {
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

fn source_identity(src: &ResolvedModel) -> (Option<String>, Option<String>) {
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

fn fill_target(
    src: &ResolvedModel,
    target: &Path,
    source_health: &HealthReport,
    opts: &RepairOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RepairOutcome, ConvertError> {
    let (source_repo, source_revision) = source_identity(src);
    let mut sentinel = Sentinel::new(
        "convert",
        Some("repair-index"),
        source_repo,
        source_revision,
    );
    sentinel.convert_state = Some(Sentinel::IN_PROGRESS.to_string());
    sentinel.write_atomic(target)?;

    let to_copy: Vec<_> = src
        .model_files()
        .filter(|f| f.rel_path != INDEX_FILE && f.rel_path != SENTINEL_FILE)
        .collect();
    let bytes_total = to_copy.iter().filter_map(|f| f.size()).sum();
    let mut copy = CopyStats::default();
    for (i, f) in to_copy.iter().enumerate() {
        progress(Progress {
            files_done: i,
            files_total: to_copy.len(),
            bytes_done: copy.bytes,
            bytes_total,
            current: &f.rel_path,
        });
        // Checked by the health gate; a file vanishing since then is an error like any other.
        let from = f.readable().ok_or_else(|| ConvertError::Io {
            path: f.path.clone(),
            what: "source file disappeared",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        copy_file(from, &target.join(&f.rel_path), &mut copy)?;
    }
    progress(Progress {
        files_done: to_copy.len(),
        files_total: to_copy.len(),
        bytes_done: copy.bytes,
        bytes_total,
        current: "",
    });

    let had_index = src.file(INDEX_FILE).is_some();
    let shard_names: Vec<&str> = to_copy
        .iter()
        .filter(|f| f.is_top_level() && f.rel_path.ends_with(".safetensors"))
        .map(|f| f.rel_path.as_str())
        .collect();
    let mut index_bytes_read = 0;
    let index = if shard_names.len() >= 2 || (had_index && !shard_names.is_empty()) {
        // Rebuilt from the copies: the index describes exactly the bytes the target holds.
        let shards = shard_names
            .iter()
            .map(|name| read_header_counted(&target.join(name), name, &mut index_bytes_read))
            .collect::<Result<Vec<ShardHeader>, _>>()?;
        let quantization = source_health
            .config
            .as_ref()
            .and_then(ModelConfig::quantization);
        let index = rebuild_index(&shards, quantization.as_ref())?;
        let path = target.join(INDEX_FILE);
        write_file_atomic(&path, index.to_json_string().as_bytes()).map_err(|source| {
            ConvertError::Io {
                path,
                what: "cannot write the index",
                source,
            }
        })?;
        Some(index)
    } else {
        None
    };

    sentinel.convert_state = None;
    sentinel.write_atomic(target)?;

    let repaired = source_health
        .problems
        .iter()
        .filter(|p| p.code.starts_with("index_"))
        .cloned()
        .collect();
    let health = if opts.skip_health {
        None
    } else {
        let ws = open_workspace(target).map_err(|e| ConvertError::Io {
            path: target.to_path_buf(),
            what: "cannot read the new workspace",
            source: std::io::Error::other(e.to_string()),
        })?;
        Some(health::check(&ws))
    };
    Ok(RepairOutcome {
        target: target.to_path_buf(),
        copy,
        index,
        repaired,
        health,
        index_bytes_read,
    })
}
