//! Resolving what a user typed (`org/name`, `name@rev`, `./dir`, a bare name) to a model.

use std::path::{Path, PathBuf};

use super::cache::{canonicalize_lenient, expand_tilde, HubCache, ModelRepo, Snapshot};
use super::error::StoreError;
use super::files::{workspace_files, ModelFile};
use super::mounts::MountRecord;
use super::sentinel::{Sentinel, SENTINEL_FILE};

/// Org that bare names are tried in first.
pub const DEFAULT_ORG: &str = "mlx-community";

/// Where a resolved model lives.
#[derive(Debug, Clone)]
pub enum ModelLocation {
    /// A snapshot in the HF cache.
    Cache {
        cache: HubCache,
        repo: ModelRepo,
        snapshot: Snapshot,
    },
    /// A directory outside the cache; managed when it holds a valid sentinel.
    Workspace {
        dir: PathBuf,
        sentinel: Option<Sentinel>,
        /// Why a sentinel that exists is not valid.
        sentinel_error: Option<String>,
    },
}

/// A model ready to be inspected: where it is and its files.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// `org/name` for cache models, the directory path for workspaces.
    pub name: String,
    pub location: ModelLocation,
    pub files: Vec<ModelFile>,
    /// The live mlxk-fs mount the user named the model through, when they did: its files are
    /// read from the cache directly, and work meant for that path goes to the mount's overlay.
    pub mount: Option<MountRecord>,
}

impl ResolvedModel {
    /// The directory the model's files appear in.
    pub fn dir(&self) -> &Path {
        match &self.location {
            ModelLocation::Cache { snapshot, .. } => &snapshot.dir,
            ModelLocation::Workspace { dir, .. } => dir,
        }
    }

    /// The cache a cache model lives in (which no convert may write into).
    pub fn cache(&self) -> Option<&HubCache> {
        match &self.location {
            ModelLocation::Cache { cache, .. } => Some(cache),
            ModelLocation::Workspace { .. } => None,
        }
    }

    pub fn file(&self, rel_path: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.rel_path == rel_path)
    }

    pub fn snapshot_sha(&self) -> Option<&str> {
        match &self.location {
            ModelLocation::Cache { snapshot, .. } => Some(&snapshot.sha),
            ModelLocation::Workspace { .. } => None,
        }
    }

    pub fn repo_id(&self) -> Option<&str> {
        match &self.location {
            ModelLocation::Cache { repo, .. } => Some(&repo.repo_id),
            ModelLocation::Workspace { .. } => None,
        }
    }

    /// Whether this is a managed workspace (`None` for cache models, which are not workspaces).
    pub fn managed(&self) -> Option<bool> {
        match &self.location {
            ModelLocation::Cache { .. } => None,
            ModelLocation::Workspace { sentinel, .. } => {
                Some(sentinel.as_ref().is_some_and(|s| s.managed))
            }
        }
    }

    pub fn sentinel(&self) -> Option<&Sentinel> {
        match &self.location {
            ModelLocation::Workspace { sentinel, .. } => sentinel.as_ref(),
            ModelLocation::Cache { .. } => None,
        }
    }

    /// The model's files, the sentinel excluded (it describes the directory, not the model).
    pub fn model_files(&self) -> impl Iterator<Item = &ModelFile> {
        self.files.iter().filter(|f| f.rel_path != SENTINEL_FILE)
    }
}

/// Opens one cache snapshot as a model.
pub fn open_snapshot(
    cache: &HubCache,
    repo: ModelRepo,
    snapshot: Snapshot,
) -> Result<ResolvedModel, StoreError> {
    let files = cache.snapshot_files(&snapshot)?;
    Ok(ResolvedModel {
        name: repo.repo_id.clone(),
        location: ModelLocation::Cache {
            cache: cache.clone(),
            repo,
            snapshot,
        },
        files,
        mount: None,
    })
}

/// Opens a directory as a workspace (managed or not).
pub fn open_workspace(dir: &Path) -> Result<ResolvedModel, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::PathNotFound {
            path: dir.to_path_buf(),
        });
    }
    // Absolute, so that a sentinel's provenance and messages mean the same from any cwd.
    let dir = &std::fs::canonicalize(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = workspace_files(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (sentinel, sentinel_error) = match Sentinel::read(dir) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(ResolvedModel {
        name: dir.display().to_string(),
        location: ModelLocation::Workspace {
            dir: dir.to_path_buf(),
            sentinel,
            sentinel_error,
        },
        files,
        mount: None,
    })
}

/// Whether `spec` is written as a path (`./x`, `../x`, `/x`, `~`, `~/x`).
pub fn looks_like_path(spec: &str) -> bool {
    spec.starts_with("./")
        || spec.starts_with("../")
        || spec.starts_with('/')
        || spec == "~"
        || spec.starts_with("~/")
        || spec == "."
        || spec == ".."
}

/// Resolves `spec` to a model: a directory (explicit path, or any existing directory holding
/// config.json) is a workspace — unless it is a snapshot directory inside the cache, which is
/// that cache model; otherwise a cache spec.
pub fn resolve(cache: Option<&HubCache>, spec: &str) -> Result<ResolvedModel, StoreError> {
    let as_path = expand_tilde(Path::new(spec));
    if looks_like_path(spec) || (as_path.is_dir() && as_path.join("config.json").exists()) {
        if !as_path.is_dir() {
            return Err(StoreError::PathNotFound { path: as_path });
        }
        if let Some(cache) = cache {
            if let Some(model) = snapshot_of_path(cache, &as_path)? {
                return Ok(model);
            }
        }
        return open_workspace(&as_path);
    }
    let cache = cache.ok_or_else(|| StoreError::ModelNotFound {
        spec: spec.to_string(),
        suggestions: vec![],
    })?;
    let (name, rev) = match spec.split_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r)),
        _ => (spec, None),
    };
    let repo = find_repo(cache, name)?;
    let snapshot = match rev {
        Some(rev) => find_revision(&repo, rev)?,
        None => repo
            .default_snapshot()
            .ok_or_else(|| StoreError::NoSnapshot {
                repo: repo.repo_id.clone(),
            })?,
    };
    open_snapshot(cache, repo, snapshot)
}

/// A path that is (a directory inside) `<cache>/models--x/snapshots/<sha>` is that cache model.
fn snapshot_of_path(cache: &HubCache, path: &Path) -> Result<Option<ResolvedModel>, StoreError> {
    let canonical = canonicalize_lenient(path);
    let Ok(rest) = canonical.strip_prefix(cache.canonical_root()) else {
        return Ok(None);
    };
    let mut parts = rest.iter().filter_map(|p| p.to_str());
    let (Some(repo_dir), Some("snapshots"), Some(sha)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let Some(repo_id) = super::cache::repo_id_from_dir_name(repo_dir) else {
        return Ok(None);
    };
    let Some(repo) = cache.repo(&repo_id) else {
        return Ok(None);
    };
    let Some(snapshot) = repo.snapshots().into_iter().find(|s| s.sha == sha) else {
        return Ok(None);
    };
    open_snapshot(cache, repo, snapshot).map(Some)
}

/// `org/name` exactly (then case-insensitively); a bare `name` as `mlx-community/name`, else
/// the unique case-insensitive substring match.
/// The cached repository named exactly (case-insensitively; a bare name as in mlx-community),
/// never a substring match: what removal and cloning act on.
pub fn exact_repo(cache: &HubCache, name: &str) -> Result<Option<ModelRepo>, StoreError> {
    let lower = name.to_lowercase();
    let wanted = [lower.clone(), format!("{DEFAULT_ORG}/{lower}")];
    Ok(cache
        .repos()?
        .into_iter()
        .find(|r| wanted.contains(&r.repo_id.to_lowercase())))
}

pub fn find_repo(cache: &HubCache, name: &str) -> Result<ModelRepo, StoreError> {
    if let Some(repo) = cache.repo(name) {
        return Ok(repo);
    }
    let repos = cache.repos()?;
    let lower = name.to_lowercase();
    if let Some(r) = repos.iter().find(|r| r.repo_id.to_lowercase() == lower) {
        return Ok(r.clone());
    }
    if !name.contains('/') {
        let in_default = format!("{DEFAULT_ORG}/{lower}");
        if let Some(r) = repos
            .iter()
            .find(|r| r.repo_id.to_lowercase() == in_default)
        {
            return Ok(r.clone());
        }
    }
    let hits: Vec<&ModelRepo> = repos
        .iter()
        .filter(|r| r.repo_id.to_lowercase().contains(&lower))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(StoreError::ModelNotFound {
            spec: name.to_string(),
            suggestions: closest(name, repos.iter().map(|r| r.repo_id.as_str())),
        }),
        many => Err(StoreError::AmbiguousMatch {
            spec: name.to_string(),
            matches: many.iter().map(|r| r.repo_id.clone()).collect(),
        }),
    }
}

/// A ref name (`main`, `pr/5`, a tag) or a hex prefix of a downloaded snapshot.
pub fn find_revision(repo: &ModelRepo, rev: &str) -> Result<Snapshot, StoreError> {
    let snapshots = repo.snapshots();
    let refs = repo.refs();
    if let Some(sha) = refs.get(rev) {
        if let Some(s) = snapshots.iter().find(|s| &s.sha == sha) {
            return Ok(s.clone());
        }
    }
    let lower = rev.to_lowercase();
    let hits: Vec<&Snapshot> = if lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        snapshots
            .iter()
            .filter(|s| s.sha.starts_with(&lower))
            .collect()
    } else {
        vec![]
    };
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(StoreError::RevisionNotFound {
            repo: repo.repo_id.clone(),
            rev: rev.to_string(),
            available: refs
                .keys()
                .cloned()
                .chain(snapshots.iter().map(|s| s.sha.chars().take(12).collect()))
                .collect(),
        }),
        many => Err(StoreError::AmbiguousRevision {
            repo: repo.repo_id.clone(),
            rev: rev.to_string(),
            matches: many.iter().map(|s| s.sha.clone()).collect(),
        }),
    }
}

/// Up to three repo ids closest to `name` (Jaro-Winkler on lowercase, also against the name part).
fn closest<'a>(name: &str, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(f64, &str)> = ids
        .map(|id| {
            let l = id.to_lowercase();
            let short = l.rsplit('/').next().unwrap_or(&l).to_string();
            let score = strsim::jaro_winkler(&lower, &l).max(strsim::jaro_winkler(&lower, &short));
            (score, id)
        })
        .filter(|(s, _)| *s > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(3)
        .map(|(_, id)| id.to_string())
        .collect()
}

/// A model directory inside a live mlxk-fs mount (`<mount>/<org>/<name>[@rev]`), resolved to the
/// cache snapshot it shows, so heavy work reads the cache directly instead of through FUSE.
/// `None` for any other path.
///
/// A model the mount's overlay changes (edits, deletions, moves, or a workspace only the
/// overlay holds) is not the snapshot: `None`, and the caller reads it through the mount as a
/// workspace (zero-copy with passthrough).
pub fn resolve_mounted(path: &Path) -> Option<ResolvedModel> {
    let (record, rel) = super::mounts::containing(path)?;
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    if let Some(overlay) = &record.overlay {
        let o = super::overlay::OverlayDir::at(overlay);
        let mut dir = PathBuf::new();
        for name in &parts {
            if o.marker(&dir, name).is_some() {
                return None;
            }
            dir.push(name);
        }
        if o.path(&dir).exists() {
            return None;
        }
    }
    let cache = HubCache::open(&record.cache).ok()?;
    // `<org>/<name>[@rev]`, or `<name>[@rev]` for repos without an org.
    let (spec, depth) = match parts.as_slice() {
        [org, name, ..]
            if cache
                .repo(&format!("{org}/{}", split_rev(name).0))
                .is_some() =>
        {
            (format!("{org}/{name}"), 2)
        }
        [name, ..] if cache.repo(split_rev(name).0).is_some() => (name.to_string(), 1),
        _ => return None,
    };
    if parts.len() != depth {
        return None; // a file or subdirectory inside the model, not the model
    }
    let (repo_id, rev) = split_rev(&spec);
    let repo = cache.repo(repo_id)?;
    let snapshot = match rev {
        Some(r) => find_revision(&repo, r).ok()?,
        None => repo.default_snapshot()?,
    };
    let mut model = open_snapshot(&cache, repo, snapshot).ok()?;
    model.mount = Some(record);
    Some(model)
}

/// What a command names a model by: a directory inside a live mount reads its cache snapshot
/// directly ([`resolve_mounted`]); anything else is resolved by [`resolve`].
pub fn resolve_any(cache: Option<&HubCache>, spec: &str) -> Result<ResolvedModel, StoreError> {
    match resolve_mounted(Path::new(spec)) {
        Some(model) => Ok(model),
        None => resolve(cache, spec),
    }
}

/// `name@rev` -> (`name`, Some(`rev`)).
pub fn split_rev(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('@') {
        Some((n, r)) if !n.is_empty() && !r.is_empty() => (n, Some(r)),
        _ => (name, None),
    }
}
