//! The layer below the overlay: the cache as the read-only mount shows it. `/<org>/<name>/` for
//! every cached model (the snapshot `refs/main` names), `/<org>/<name>@<rev>/` for any ref or
//! sha prefix (resolved on lookup, not listed), the snapshot's files and the virtual files of
//! [`ModelView`]. Nodes are addressed by their path in this tree (`org/name/config.json`); a
//! file node carries its snapshot sha, so its content never changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;

use super::view::{ModelView, ViewEntry, VirtualFile};
use crate::store::cache::{dir_name_from_repo_id, HubCache, ModelRepo, Snapshot};
use crate::store::files::join_rel;
use crate::store::spec::{find_revision, open_snapshot, split_rev};

/// A node of the cache tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LowerNode {
    Root,
    Org(String),
    /// A model directory: the default snapshot (`rev: None`) or `name@rev`.
    Model {
        repo: String,
        rev: Option<String>,
    },
    /// A subdirectory of a snapshot.
    Dir {
        repo: String,
        sha: String,
        rel: String,
    },
    /// A cache file of a snapshot.
    File {
        repo: String,
        sha: String,
        rel: String,
    },
    Virtual {
        repo: String,
        sha: String,
        file: VirtualFile,
    },
}

impl LowerNode {
    pub fn is_dir(&self) -> bool {
        matches!(
            self,
            LowerNode::Root | LowerNode::Org(_) | LowerNode::Model { .. } | LowerNode::Dir { .. }
        )
    }

    /// A pinned revision (`name@rev`) or anything inside one: shown, never written.
    pub fn is_pinned_model(&self) -> bool {
        matches!(self, LowerNode::Model { rev: Some(_), .. })
    }
}

/// What reading a lower file means.
#[derive(Debug, Clone)]
pub enum LowerContent {
    /// A blob in the cache.
    Blob(PathBuf),
    /// Bytes served from memory.
    Bytes(Arc<[u8]>),
}

/// Attributes of a lower node.
#[derive(Debug, Clone)]
pub struct LowerAttr {
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
}

pub struct LowerTree {
    cache: HubCache,
    views: DashMap<(String, String), Arc<ModelView>>,
    /// The cache's repo ids, listed at most once a second (every lookup at the root or in an
    /// org needs them; the watcher drops the list when the cache changes).
    repo_ids: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<String>>)>>,
    started: SystemTime,
}

/// How long a listing of the cache's repos is trusted without the watcher's word.
const REPO_LIST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl LowerTree {
    pub fn new(cache: HubCache) -> LowerTree {
        LowerTree {
            cache,
            views: DashMap::new(),
            repo_ids: std::sync::Mutex::new(None),
            started: SystemTime::now(),
        }
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// Forgets the cached views of `repo` (its blobs, refs or snapshots changed). Returns the
    /// root names the dropped views showed: their kernel entries must go too.
    pub fn invalidate_repo(&self, repo: &str) -> Vec<String> {
        self.forget_repo_list();
        let mut names = Vec::new();
        self.views.retain(|(r, _), v| {
            if r == repo {
                names.extend(v.root_names());
                false
            } else {
                true
            }
        });
        names.sort();
        names.dedup();
        names
    }

    pub fn invalidate_all(&self) {
        self.forget_repo_list();
        self.views.clear();
    }

    fn forget_repo_list(&self) {
        *self.repo_ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn views_len(&self) -> usize {
        self.views.len()
    }

    pub fn header_bytes_read(&self) -> u64 {
        self.views
            .iter()
            .map(|v| v.value().virtuals_bytes_read())
            .sum()
    }

    fn repo_ids(&self) -> Arc<Vec<String>> {
        let mut cached = self.repo_ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ids)) = cached.as_ref() {
            if at.elapsed() < REPO_LIST_TTL {
                return ids.clone();
            }
        }
        let ids: Arc<Vec<String>> = Arc::new(
            self.cache
                .repos()
                .map(|r| r.into_iter().map(|r| r.repo_id).collect())
                .unwrap_or_default(),
        );
        *cached = Some((std::time::Instant::now(), ids.clone()));
        ids
    }

    /// The view of `repo` at `rev` (default snapshot when `None`).
    pub fn view(&self, repo: &str, rev: Option<&str>) -> Option<Arc<ModelView>> {
        let repo_handle = self.cache.repo(repo)?;
        let snapshot = match rev {
            None => repo_handle.default_snapshot()?,
            Some(r) => find_revision(&repo_handle, r).ok()?,
        };
        self.cached_or_build(repo_handle, snapshot)
    }

    /// The view of a snapshot by sha, building it if needed.
    pub fn view_at(&self, repo: &str, sha: &str) -> Option<Arc<ModelView>> {
        if let Some(v) = self.views.get(&(repo.to_string(), sha.to_string())) {
            return Some(v.clone());
        }
        let repo_handle = self.cache.repo(repo)?;
        let snapshot = repo_handle.snapshots().into_iter().find(|s| s.sha == sha)?;
        self.cached_or_build(repo_handle, snapshot)
    }

    fn cached_or_build(&self, repo: ModelRepo, snapshot: Snapshot) -> Option<Arc<ModelView>> {
        let key = (repo.repo_id.clone(), snapshot.sha.clone());
        if let Some(v) = self.views.get(&key) {
            return Some(v.clone());
        }
        let model = open_snapshot(&self.cache, repo, snapshot).ok()?;
        let view = Arc::new(ModelView::new(model));
        self.views.insert(key, view.clone());
        Some(view)
    }

    /// The node at `path` ("" = the root).
    pub fn resolve(&self, path: &str) -> Option<LowerNode> {
        let mut node = LowerNode::Root;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            node = self.child(&node, name)?;
        }
        Some(node)
    }

    /// Child `name` of directory node `node`.
    pub fn child(&self, node: &LowerNode, name: &str) -> Option<LowerNode> {
        match node {
            LowerNode::Root => self.root_child(name),
            LowerNode::Org(org) => {
                let (model, rev) = split_rev(name);
                let repo = format!("{org}/{model}");
                self.model_exists(&repo, rev).then(|| LowerNode::Model {
                    repo,
                    rev: rev.map(str::to_string),
                })
            }
            LowerNode::Model { repo, rev } => {
                let view = self.view(repo, rev.as_deref())?;
                child_in_view(&view, "", name)
            }
            LowerNode::Dir { repo, sha, rel } => {
                let view = self.view_at(repo, sha)?;
                child_in_view(&view, rel, name)
            }
            LowerNode::File { .. } | LowerNode::Virtual { .. } => None,
        }
    }

    fn root_child(&self, name: &str) -> Option<LowerNode> {
        let (base, rev) = split_rev(name);
        let ids = self.repo_ids();
        if rev.is_none()
            && ids
                .iter()
                .any(|id| id.split_once('/').is_some_and(|(o, _)| o == base))
        {
            return Some(LowerNode::Org(base.to_string()));
        }
        // Repos without an org (`gpt2`) sit at the root.
        if ids.iter().any(|id| id == base) && self.model_exists(base, rev) {
            return Some(LowerNode::Model {
                repo: base.to_string(),
                rev: rev.map(str::to_string),
            });
        }
        None
    }

    fn model_exists(&self, repo: &str, rev: Option<&str>) -> bool {
        let Some(r) = self.cache.repo(repo) else {
            return false;
        };
        match rev {
            None => r.default_snapshot().is_some(),
            Some(rev) => find_revision(&r, rev).is_ok(),
        }
    }

    /// The children of directory node `node`, sorted by name.
    pub fn children(&self, node: &LowerNode) -> Vec<(String, LowerNode)> {
        let mut out: Vec<(String, LowerNode)> = match node {
            LowerNode::Root => {
                let mut orgs: Vec<String> = Vec::new();
                let mut out = Vec::new();
                for id in self.repo_ids().iter().cloned() {
                    match id.split_once('/') {
                        Some((org, _)) => {
                            if !orgs.iter().any(|o| o == org) {
                                orgs.push(org.to_string());
                            }
                        }
                        None => {
                            if self.model_exists(&id, None) {
                                out.push((
                                    id.clone(),
                                    LowerNode::Model {
                                        repo: id,
                                        rev: None,
                                    },
                                ))
                            }
                        }
                    }
                }
                out.extend(orgs.into_iter().map(|o| (o.clone(), LowerNode::Org(o))));
                out
            }
            LowerNode::Org(org) => self
                .repo_ids()
                .iter()
                .filter_map(|id| {
                    let (o, name) = id.split_once('/')?;
                    (o == org && self.model_exists(id, None)).then(|| {
                        (
                            name.to_string(),
                            LowerNode::Model {
                                repo: id.clone(),
                                rev: None,
                            },
                        )
                    })
                })
                .collect(),
            LowerNode::Model { repo, rev } => match self.view(repo, rev.as_deref()) {
                Some(view) => view_children(&view, ""),
                None => vec![],
            },
            LowerNode::Dir { repo, sha, rel } => match self.view_at(repo, sha) {
                Some(view) => view_children(&view, rel),
                None => vec![],
            },
            LowerNode::File { .. } | LowerNode::Virtual { .. } => vec![],
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn attr(&self, node: &LowerNode) -> Option<LowerAttr> {
        let mtime_of = |p: &std::path::Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .unwrap_or(self.started)
        };
        let dir = |mtime| LowerAttr {
            size: 0,
            mtime,
            perm: 0o755,
        };
        Some(match node {
            LowerNode::Root | LowerNode::Org(_) => dir(mtime_of(self.cache.root())),
            LowerNode::Model { repo, rev } => {
                if !self.model_exists(repo, rev.as_deref()) {
                    return None;
                }
                dir(mtime_of(
                    &self.cache.root().join(dir_name_from_repo_id(repo)),
                ))
            }
            LowerNode::Dir { repo, sha, .. } => dir(self.view_at(repo, sha)?.modified),
            LowerNode::File { repo, sha, rel } => {
                let view = self.view_at(repo, sha)?;
                let path = view.model.file(rel)?.readable()?.to_path_buf();
                let meta = std::fs::metadata(path).ok()?;
                LowerAttr {
                    size: meta.len(),
                    mtime: meta.modified().unwrap_or(view.modified),
                    perm: (std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777)
                        as u16,
                }
            }
            LowerNode::Virtual { repo, sha, file } => {
                let view = self.view_at(repo, sha)?;
                LowerAttr {
                    size: view.virtual_bytes(*file)?.len() as u64,
                    mtime: view.modified,
                    // Editable like any file (a write copies it up).
                    perm: 0o644,
                }
            }
        })
    }

    /// What reading file node `node` means.
    pub fn content(&self, node: &LowerNode) -> Option<LowerContent> {
        match node {
            LowerNode::File { repo, sha, rel } => {
                let view = self.view_at(repo, sha)?;
                let path = view.model.file(rel)?.readable()?.to_path_buf();
                Some(LowerContent::Blob(path))
            }
            LowerNode::Virtual { repo, sha, file } => self
                .view_at(repo, sha)?
                .virtual_bytes(*file)
                .map(LowerContent::Bytes),
            _ => None,
        }
    }
}

fn child_in_view(view: &ModelView, rel: &str, name: &str) -> Option<LowerNode> {
    let entry = view.lookup(rel, name)?;
    let child_rel = join_rel(rel, name);
    Some(match entry {
        ViewEntry::Dir => LowerNode::Dir {
            repo: view.repo_id.clone(),
            sha: view.sha.clone(),
            rel: child_rel,
        },
        ViewEntry::File => LowerNode::File {
            repo: view.repo_id.clone(),
            sha: view.sha.clone(),
            rel: child_rel,
        },
        ViewEntry::Virtual(file) => LowerNode::Virtual {
            repo: view.repo_id.clone(),
            sha: view.sha.clone(),
            file,
        },
    })
}

fn view_children(view: &ModelView, rel: &str) -> Vec<(String, LowerNode)> {
    view.list(rel)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, _)| {
            let node = child_in_view(view, rel, &name)?;
            Some((name, node))
        })
        .collect()
}
