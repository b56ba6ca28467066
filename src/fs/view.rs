//! One snapshot as the mount shows it: its files (subdirectories included), the synthesized
//! sentinel, the index rebuilt from the shard headers, and the cached original index when the
//! rebuilt one differs. Headers are read only when the virtual files are first needed.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::store::files::{join_rel, read_small};
use crate::store::health;
use crate::store::index::INDEX_FILE;
use crate::store::sentinel::{iso8601, SENTINEL_FILE};
use crate::store::spec::ResolvedModel;

use super::viewcache::ViewCache;

/// Name under which a differing cached index stays readable.
pub const ORIG_INDEX_FILE: &str = "model.safetensors.index.json.orig";
/// The largest cached index served as it is (a 1,000-shard index is a few MB).
const INDEX_MAX: u64 = 64 << 20;

/// A directory entry of a model view.
#[derive(Debug, Clone)]
pub enum ViewEntry {
    Dir,
    /// A file of the snapshot (found by its path in `ModelView::model`).
    File,
    Virtual(VirtualFile),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VirtualFile {
    Sentinel,
    Index,
    OrigIndex,
}

impl VirtualFile {
    pub fn name(self) -> &'static str {
        match self {
            VirtualFile::Sentinel => SENTINEL_FILE,
            VirtualFile::Index => INDEX_FILE,
            VirtualFile::OrigIndex => ORIG_INDEX_FILE,
        }
    }
}

/// The synthesized contents, computed once per view.
#[derive(Debug)]
pub struct Virtuals {
    pub sentinel: Arc<[u8]>,
    /// The rebuilt index, when the headers could be read and an index belongs here.
    pub index: Option<Arc<[u8]>>,
    /// Whether the cached index differs from the rebuilt one (and is shown as `.orig`).
    pub orig_index: bool,
    /// Header bytes read to compute this (0 when it came from the view cache).
    pub bytes_read: u64,
}

#[derive(Debug)]
pub struct ModelView {
    /// Shared with every node of the view (each file's node holds both).
    pub repo_id: Arc<str>,
    pub sha: Arc<str>,
    pub modified: SystemTime,
    pub model: ResolvedModel,
    /// Directory (relative, "" for the model root) -> name -> entry, for the cache's files.
    dirs: BTreeMap<String, BTreeMap<String, ViewEntry>>,
    virtuals: OnceLock<Virtuals>,
    /// Where computed virtual files are kept across mounts.
    view_cache: Option<Arc<ViewCache>>,
    /// Whether `virtuals` came from the view cache.
    cached: std::sync::atomic::AtomicBool,
}

impl ModelView {
    pub fn new(model: ResolvedModel, view_cache: Option<Arc<ViewCache>>) -> ModelView {
        let repo_id: Arc<str> = Arc::from(model.repo_id().unwrap_or_default());
        let sha: Arc<str> = Arc::from(model.snapshot_sha().unwrap_or_default());
        let modified = match &model.location {
            crate::store::spec::ModelLocation::Cache { snapshot, .. } => snapshot.modified,
            crate::store::spec::ModelLocation::Workspace { .. } => SystemTime::UNIX_EPOCH,
        };
        let mut dirs: BTreeMap<String, BTreeMap<String, ViewEntry>> = BTreeMap::new();
        dirs.insert(String::new(), BTreeMap::new());
        for f in &model.files {
            // Missing and escaping links are not served; health on the mount names them.
            if f.readable().is_none() {
                continue;
            }
            let mut parent = String::new();
            let parts: Vec<&str> = f.rel_path.split('/').collect();
            for (depth, part) in parts.iter().enumerate() {
                let is_last = depth == parts.len() - 1;
                let entry = if is_last {
                    ViewEntry::File
                } else {
                    ViewEntry::Dir
                };
                dirs.entry(parent.clone())
                    .or_default()
                    .insert(part.to_string(), entry);
                if !is_last {
                    parent = join_rel(&parent, part);
                    dirs.entry(parent.clone()).or_default();
                }
            }
        }
        ModelView {
            repo_id,
            sha,
            modified,
            model,
            dirs,
            virtuals: OnceLock::new(),
            view_cache,
            cached: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Entries of directory `rel` ("" = model root), virtual files included at the root.
    pub fn list(&self, rel: &str) -> Option<Vec<(String, ViewEntry)>> {
        let dir = self.dirs.get(rel)?;
        let mut out: Vec<(String, ViewEntry)> =
            dir.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if rel.is_empty() {
            let v = self.virtuals();
            out.retain(|(name, _)| {
                name != SENTINEL_FILE && !(name == INDEX_FILE && v.index.is_some())
            });
            out.push((
                SENTINEL_FILE.to_string(),
                ViewEntry::Virtual(VirtualFile::Sentinel),
            ));
            if v.index.is_some() {
                out.push((
                    INDEX_FILE.to_string(),
                    ViewEntry::Virtual(VirtualFile::Index),
                ));
            }
            if v.orig_index {
                out.push((
                    ORIG_INDEX_FILE.to_string(),
                    ViewEntry::Virtual(VirtualFile::OrigIndex),
                ));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Some(out)
    }

    /// Names at the model root, virtual ones included, without reading any header.
    pub fn root_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs
            .get("")
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        names.extend([SENTINEL_FILE, INDEX_FILE, ORIG_INDEX_FILE].map(str::to_string));
        names
    }

    /// One entry of directory `rel`.
    pub fn lookup(&self, rel: &str, name: &str) -> Option<ViewEntry> {
        if rel.is_empty() {
            match name {
                SENTINEL_FILE => return Some(ViewEntry::Virtual(VirtualFile::Sentinel)),
                INDEX_FILE if self.virtuals().index.is_some() => {
                    return Some(ViewEntry::Virtual(VirtualFile::Index));
                }
                ORIG_INDEX_FILE if self.virtuals().orig_index => {
                    return Some(ViewEntry::Virtual(VirtualFile::OrigIndex));
                }
                _ => {}
            }
        }
        self.dirs.get(rel)?.get(name).cloned()
    }

    /// The bytes of a virtual file (`None` when it does not exist in this view).
    pub fn virtual_bytes(&self, v: VirtualFile) -> Option<Arc<[u8]>> {
        let virtuals = self.virtuals();
        match v {
            VirtualFile::Sentinel => Some(virtuals.sentinel.clone()),
            VirtualFile::Index => virtuals.index.clone(),
            VirtualFile::OrigIndex if virtuals.orig_index => {
                let f = self.model.file(INDEX_FILE)?;
                read_small(f.readable()?, INDEX_MAX, &mut 0)
                    .ok()
                    .map(Arc::from)
            }
            VirtualFile::OrigIndex => None,
        }
    }

    /// Header bytes read for this view so far (0 while its virtual files were never needed).
    pub fn virtuals_bytes_read(&self) -> u64 {
        self.virtuals.get().map_or(0, |v| v.bytes_read)
    }

    /// Whether the virtual files were taken from the view cache (no header read).
    pub fn virtuals_from_cache(&self) -> bool {
        self.cached.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn virtuals(&self) -> &Virtuals {
        self.virtuals.get_or_init(|| {
            let Some(cache) = &self.view_cache else {
                return compute_virtuals(&self.model, self.modified);
            };
            let key = super::viewcache::key_of(&self.model, self.modified);
            if let Some(v) = cache.get(&key) {
                self.cached
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return v;
            }
            let v = compute_virtuals(&self.model, self.modified);
            cache.put(&key, &v);
            v
        })
    }
}

/// The sentinel the mount synthesizes for a snapshot, and the rebuilt index.
fn compute_virtuals(model: &ResolvedModel, modified: SystemTime) -> Virtuals {
    let mut report = health::check(model);
    let shard_count = report.shards.len();
    let cached_index = model.file(INDEX_FILE).and_then(|f| f.readable().map(|_| f));
    let index_bytes: Option<Vec<u8>> = report
        .rebuilt_index
        .as_ref()
        .filter(|_| shard_count >= 2 || cached_index.is_some())
        .map(|i| i.to_json_string().into_bytes());
    // As the check read it; read here only when the check did not (an LFS pointer).
    let original: Option<Vec<u8>> = match report.index_bytes.take() {
        Some(bytes) => Some(bytes).filter(|b| b.len() as u64 <= INDEX_MAX),
        None => cached_index.and_then(|f| read_small(f.readable()?, INDEX_MAX, &mut 0).ok()),
    };
    let orig_index = matches!((&index_bytes, &original), (Some(a), Some(b)) if a != b);
    let repairs: Vec<Value> = if index_bytes.is_some() {
        report
            .problems
            .iter()
            .filter(|p| p.code.is_index())
            .map(|p| json!({"code": p.code, "file": p.file, "message": p.message}))
            .collect()
    } else {
        vec![]
    };
    let unrepaired: Vec<Value> = report
        .problems
        .iter()
        .filter(|p| index_bytes.is_none() || !p.code.is_index())
        .map(|p| json!({"code": p.code, "file": p.file, "message": p.message}))
        .collect();
    let mut sentinel = json!({
        "mlxk_version": crate::VERSION,
        "created_at": iso8601(modified),
        "source_repo": model.repo_id(),
        "source_revision": model.snapshot_sha(),
        "managed": true,
        "operation": "mount",
        "repairs": repairs,
    });
    if orig_index {
        sentinel["original_index"] = json!(ORIG_INDEX_FILE);
    }
    if !unrepaired.is_empty() {
        sentinel["unrepaired"] = Value::Array(unrepaired);
    }
    let mut text = crate::store::index::to_python_json(&sentinel);
    text.push('\n');
    Virtuals {
        sentinel: Arc::from(text.into_bytes()),
        index: index_bytes.map(Arc::from),
        orig_index,
        bytes_read: report.bytes_read,
    }
}
