//! `convert --repair-index` (ADR-018): a new managed workspace holding the source's files
//! byte for byte and an index rebuilt from the shard headers that are really there.

use std::path::{Path, PathBuf};

use crate::store::cache::{canonicalize_lenient, HubCache};
use crate::store::config::ModelConfig;
use crate::store::content;
use crate::store::health::{HealthReport, Problem};
use crate::store::index::{WeightIndex, INDEX_FILE};
use crate::store::sentinel::{Sentinel, SENTINEL_FILE};
use crate::store::spec::ResolvedModel;

use super::copy::{copy_file, CopyStats};
use super::target::{
    check_result, check_target, create_target, gate_source, source_identity, undo, write_index,
};
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
    /// The workspace's content hash (`sha256:<hex>`), recorded in its sentinel.
    pub content_hash: String,
}

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
    let source_health = gate_source(src)?;
    let created = create_target(&target)?;
    match fill_target(src, &target, &source_health, opts, progress) {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            undo(&target, created.as_deref());
            Err(e)
        }
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
        .filter(|f| f.is_top_level_shard())
        .map(|f| f.rel_path.as_str())
        .collect();
    let mut index_bytes_read = 0;
    let index = if shard_names.len() >= 2 || (had_index && !shard_names.is_empty()) {
        let quantization = source_health
            .config
            .as_ref()
            .and_then(ModelConfig::quantization);
        let index = write_index(
            target,
            &shard_names,
            quantization.as_ref(),
            &mut index_bytes_read,
        )?;
        Some(index)
    } else {
        None
    };

    let mut known = content::known_digests(src);
    known.remove(INDEX_FILE); // rewritten from the headers, not copied
    let content_hash = super::finish_sentinel(target, &mut sentinel, &known)?;

    let repaired = source_health
        .problems
        .iter()
        .filter(|p| p.code.is_index())
        .cloned()
        .collect();
    let health = check_result(target, opts.skip_health)?;
    Ok(RepairOutcome {
        target: target.to_path_buf(),
        copy,
        index,
        repaired,
        health,
        index_bytes_read,
        content_hash,
    })
}
