//! `mlxk clone`: a managed workspace holding a model as it is (ADR-005 / ADR-018). From a
//! cached snapshot, by reflink-or-copy; for a model not in the cache, the hub's files are
//! downloaded straight into the workspace by the caller (the cache is never touched), between
//! [`begin`] and [`PendingClone::finish`]. Either way the sentinel (operation "clone", source
//! repo and commit) is written first, marked in progress, and completed last.

use std::fs;
use std::path::{Path, PathBuf};

use super::copy::{copy_file, CopyStats};
use super::target::{check_result, check_target, create_target, source_identity, undo};
use super::ConvertError;
use crate::store::cache::{canonicalize_lenient, HubCache};
use crate::store::content;
use crate::store::health::HealthReport;
use crate::store::sentinel::Sentinel;
use crate::store::spec::ResolvedModel;

/// What a clone produced.
#[derive(Debug)]
pub struct CloneOutcome {
    pub target: PathBuf,
    pub source_repo: Option<String>,
    pub source_revision: Option<String>,
    pub copy: CopyStats,
    pub content_hash: String,
    /// `None` with `--skip-health`.
    pub health: Option<HealthReport>,
}

pub const OPERATION: &str = "clone";

/// Clones a model the store resolved (a cache snapshot, or any model directory) into `dst`.
pub fn clone_model(
    src: &ResolvedModel,
    dst: &Path,
    caches: &[&HubCache],
    skip_health: bool,
) -> Result<CloneOutcome, ConvertError> {
    let target = canonicalize_lenient(dst);
    check_target(src, dst, &target, caches)?;
    let created = create_target(&target)?;
    let result = (|| {
        let (repo, revision) = source_identity(src);
        let mut sentinel = in_progress(repo.clone(), revision.clone());
        sentinel.write_atomic(&target)?;
        let mut copy = CopyStats::default();
        for f in src.model_files() {
            let from = f.readable().ok_or_else(|| ConvertError::Io {
                path: f.path.clone(),
                what: "is missing or not a regular file; the clone would be incomplete",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            let to = target.join(&f.rel_path);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|source| ConvertError::Io {
                    path: parent.to_path_buf(),
                    what: "cannot create",
                    source,
                })?;
            }
            copy_file(from, &to, &mut copy)?;
        }
        // Every file is a byte copy: the cache's blob names are their digests.
        let content_hash =
            super::finish_sentinel(&target, &mut sentinel, &content::known_digests(src))?;
        Ok(CloneOutcome {
            health: check_result(&target, skip_health)?,
            target: target.clone(),
            source_repo: repo,
            source_revision: revision,
            copy,
            content_hash,
        })
    })();
    if result.is_err() {
        undo(&target, created.as_deref());
    }
    result
}

/// A workspace being filled from the hub: its sentinel says so until [`PendingClone::finish`].
#[derive(Debug)]
pub struct PendingClone {
    target: PathBuf,
    sentinel: Sentinel,
    /// Whether this run started it (an interrupted clone of the same commit is resumed).
    pub resumed: bool,
}

/// Starts (or resumes) a clone of `repo` at `commit` into `dst`: `dst` must be new, empty, or
/// an interrupted clone of that same commit, and outside every cache.
pub fn begin(
    dst: &Path,
    caches: &[&HubCache],
    repo: &str,
    commit: &str,
) -> Result<PendingClone, ConvertError> {
    let target = canonicalize_lenient(dst);
    for cache in caches {
        if cache.contains(&target) {
            return Err(ConvertError::TargetInsideCache {
                target: dst.to_path_buf(),
                cache: cache.root().to_path_buf(),
            });
        }
    }
    if let Ok(Some(s)) = Sentinel::read(&target) {
        let same = s.is_incomplete()
            && s.operation == OPERATION
            && s.source_repo.as_deref() == Some(repo)
            && s.source_revision.as_deref() == Some(commit);
        if same {
            return Ok(PendingClone {
                target,
                sentinel: s,
                resumed: true,
            });
        }
    }
    let empty = match fs::read_dir(&target) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => !target.exists(),
    };
    if !empty {
        return Err(ConvertError::TargetNotEmpty {
            target: dst.to_path_buf(),
        });
    }
    create_target(&target)?;
    let sentinel = in_progress(Some(repo.to_string()), Some(commit.to_string()));
    sentinel.write_atomic(&target)?;
    Ok(PendingClone {
        target,
        sentinel,
        resumed: false,
    })
}

impl PendingClone {
    pub fn dir(&self) -> &Path {
        &self.target
    }

    /// Completes the sentinel (content hash and fingerprint included) and checks the result.
    pub fn finish(mut self, skip_health: bool) -> Result<CloneOutcome, ConvertError> {
        let content_hash =
            super::finish_sentinel(&self.target, &mut self.sentinel, &Default::default())?;
        Ok(CloneOutcome {
            health: check_result(&self.target, skip_health)?,
            source_repo: self.sentinel.source_repo.clone(),
            source_revision: self.sentinel.source_revision.clone(),
            target: self.target,
            copy: CopyStats::default(),
            content_hash,
        })
    }
}

fn in_progress(repo: Option<String>, revision: Option<String>) -> Sentinel {
    let mut s = Sentinel::new(OPERATION, None, repo, revision);
    s.convert_state = Some(Sentinel::IN_PROGRESS.to_string());
    s
}
