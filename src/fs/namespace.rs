//! The tree the mount presents, independent of FUSE: `/<org>/<name>/` for every cached model
//! (the snapshot `refs/main` names), `/<org>/<name>@<rev>/` for any ref or sha prefix (resolved
//! on lookup, not listed), the snapshot's files and the virtual files of [`ModelView`].
//!
//! Inode numbers are stable for the life of the mount: a node's identity is its [`NodeKey`],
//! which for files includes the snapshot sha, so a blob-backed inode never changes content.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;

use super::view::{ModelView, ViewEntry, VirtualFile};
use crate::store::cache::{dir_name_from_repo_id, HubCache, ModelRepo, Snapshot};
use crate::store::spec::{find_revision, open_snapshot, split_rev};

pub const ROOT_INO: u64 = 1;
/// Hidden, unlisted file at the root with the daemon's counters (JSON).
pub const STATUS_FILE: &str = ".mlxk-fs-status";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    Status,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What a node is right now, for attributes.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// True when the node's content can never change (blob- or sha-keyed).
    pub immutable: bool,
}

/// What an open of a file node reads from.
#[derive(Debug, Clone)]
pub enum OpenTarget {
    /// A blob in the cache.
    Blob(PathBuf),
    /// Bytes served from memory.
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsError {
    NotFound,
    NotADirectory,
    IsADirectory,
    Io(i32),
}

type NsResult<T> = Result<T, NsError>;

/// Counters shown by `mlxk-fs status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub lookups: AtomicU64,
    pub opens: AtomicU64,
    pub passthrough_opens: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub write_attempts_refused: AtomicU64,
}

pub struct Namespace {
    cache: HubCache,
    by_ino: DashMap<u64, NodeKey>,
    by_key: DashMap<NodeKey, u64>,
    next_ino: AtomicU64,
    views: DashMap<(String, String), Arc<ModelView>>,
    pub counters: Counters,
    pub passthrough: std::sync::atomic::AtomicBool,
    started: SystemTime,
}

impl Namespace {
    pub fn new(cache: HubCache) -> Namespace {
        let ns = Namespace {
            cache,
            by_ino: DashMap::new(),
            by_key: DashMap::new(),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            views: DashMap::new(),
            counters: Counters::default(),
            passthrough: Default::default(),
            started: SystemTime::now(),
        };
        ns.by_ino.insert(ROOT_INO, NodeKey::Root);
        ns.by_key.insert(NodeKey::Root, ROOT_INO);
        ns
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// The inode of `key`, allocated on first sight.
    pub fn ino(&self, key: NodeKey) -> u64 {
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let entry = self
            .by_key
            .entry(key.clone())
            .or_insert_with(|| self.next_ino.fetch_add(1, Ordering::Relaxed));
        let ino = *entry;
        drop(entry);
        self.by_ino.entry(ino).or_insert(key);
        ino
    }

    /// The inode of `key` if it was ever handed out (for kernel invalidations).
    pub fn known_ino(&self, key: &NodeKey) -> Option<u64> {
        self.by_key.get(key).map(|i| *i)
    }

    pub fn key(&self, ino: u64) -> NsResult<NodeKey> {
        self.by_ino
            .get(&ino)
            .map(|k| k.clone())
            .ok_or(NsError::NotFound)
    }

    /// Forgets the cached views of `repo` (its blobs, refs or snapshots changed).
    /// Returns the root names the dropped views showed: their kernel entries must go too.
    pub fn invalidate_repo(&self, repo: &str) -> Vec<String> {
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
        self.views.clear();
    }

    fn repo_ids(&self) -> Vec<String> {
        self.cache
            .repos()
            .map(|r| r.into_iter().map(|r| r.repo_id).collect())
            .unwrap_or_default()
    }

    /// The view of `repo` at `rev` (default snapshot when `None`).
    pub fn view(&self, repo: &str, rev: Option<&str>) -> NsResult<Arc<ModelView>> {
        let repo_handle = self.cache.repo(repo).ok_or(NsError::NotFound)?;
        let snapshot = match rev {
            None => repo_handle.default_snapshot().ok_or(NsError::NotFound)?,
            Some(r) => find_revision(&repo_handle, r).map_err(|_| NsError::NotFound)?,
        };
        self.cached_or_build(repo_handle, snapshot)
    }

    /// The view of a snapshot by sha, building it if needed.
    pub fn view_at(&self, repo: &str, sha: &str) -> NsResult<Arc<ModelView>> {
        if let Some(v) = self.views.get(&(repo.to_string(), sha.to_string())) {
            return Ok(v.clone());
        }
        let repo_handle = self.cache.repo(repo).ok_or(NsError::NotFound)?;
        let snapshot = repo_handle
            .snapshots()
            .into_iter()
            .find(|s| s.sha == sha)
            .ok_or(NsError::NotFound)?;
        self.cached_or_build(repo_handle, snapshot)
    }

    fn cached_or_build(&self, repo: ModelRepo, snapshot: Snapshot) -> NsResult<Arc<ModelView>> {
        let key = (repo.repo_id.clone(), snapshot.sha.clone());
        if let Some(v) = self.views.get(&key) {
            return Ok(v.clone());
        }
        let model =
            open_snapshot(&self.cache, repo, snapshot).map_err(|_| NsError::Io(libc::EIO))?;
        let view = Arc::new(ModelView::new(model));
        self.views.insert(key, view.clone());
        Ok(view)
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> NsResult<NodeInfo> {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let key = match self.key(parent)? {
            NodeKey::Root => {
                if name == STATUS_FILE {
                    NodeKey::Status
                } else {
                    self.root_child(name)?
                }
            }
            NodeKey::Org(org) => {
                let (model, rev) = split_rev(name);
                let repo = format!("{org}/{model}");
                self.model_exists(&repo, rev)?;
                NodeKey::Model {
                    repo,
                    rev: rev.map(str::to_string),
                }
            }
            NodeKey::Model { repo, rev } => {
                let view = self.view(&repo, rev.as_deref())?;
                self.child_key(&view, "", name)?
            }
            NodeKey::Dir { repo, sha, rel } => {
                let view = self.view_at(&repo, &sha)?;
                self.child_key(&view, &rel, name)?
            }
            NodeKey::File { .. } | NodeKey::Virtual { .. } | NodeKey::Status => {
                return Err(NsError::NotADirectory)
            }
        };
        let ino = self.ino(key.clone());
        self.info(ino, &key)
    }

    fn root_child(&self, name: &str) -> NsResult<NodeKey> {
        let (base, rev) = split_rev(name);
        let ids = self.repo_ids();
        if rev.is_none()
            && ids
                .iter()
                .any(|id| id.split_once('/').is_some_and(|(o, _)| o == base))
        {
            return Ok(NodeKey::Org(base.to_string()));
        }
        // Repos without an org (`gpt2`) sit at the root.
        if ids.iter().any(|id| id == base) {
            self.model_exists(base, rev)?;
            return Ok(NodeKey::Model {
                repo: base.to_string(),
                rev: rev.map(str::to_string),
            });
        }
        Err(NsError::NotFound)
    }

    fn model_exists(&self, repo: &str, rev: Option<&str>) -> NsResult<()> {
        let r = self.cache.repo(repo).ok_or(NsError::NotFound)?;
        match rev {
            None => r.default_snapshot().map(|_| ()).ok_or(NsError::NotFound),
            Some(rev) => find_revision(&r, rev)
                .map(|_| ())
                .map_err(|_| NsError::NotFound),
        }
    }

    fn child_key(&self, view: &ModelView, rel: &str, name: &str) -> NsResult<NodeKey> {
        let entry = view.lookup(rel, name).ok_or(NsError::NotFound)?;
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        Ok(match entry {
            ViewEntry::Dir => NodeKey::Dir {
                repo: view.repo_id.clone(),
                sha: view.sha.clone(),
                rel: child_rel,
            },
            ViewEntry::File(_) => NodeKey::File {
                repo: view.repo_id.clone(),
                sha: view.sha.clone(),
                rel: child_rel,
            },
            ViewEntry::Virtual(file) => NodeKey::Virtual {
                repo: view.repo_id.clone(),
                sha: view.sha.clone(),
                file,
            },
        })
    }

    pub fn getattr(&self, ino: u64) -> NsResult<NodeInfo> {
        let key = self.key(ino)?;
        self.info(ino, &key)
    }

    fn dir_info(&self, ino: u64, mtime: SystemTime, immutable: bool) -> NodeInfo {
        NodeInfo {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime,
            perm: 0o755,
            immutable,
        }
    }

    fn info(&self, ino: u64, key: &NodeKey) -> NsResult<NodeInfo> {
        let mtime_of = |p: &std::path::Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .unwrap_or(self.started)
        };
        Ok(match key {
            NodeKey::Root => self.dir_info(ino, mtime_of(self.cache.root()), false),
            NodeKey::Org(_) => self.dir_info(ino, mtime_of(self.cache.root()), false),
            NodeKey::Model { repo, rev } => {
                self.model_exists(repo, rev.as_deref())?;
                let dir = self.cache.root().join(dir_name_from_repo_id(repo));
                self.dir_info(ino, mtime_of(&dir), false)
            }
            NodeKey::Dir { repo, sha, .. } => {
                let view = self.view_at(repo, sha)?;
                self.dir_info(ino, view.modified, true)
            }
            NodeKey::File { repo, sha, rel } => {
                let view = self.view_at(repo, sha)?;
                let path = view
                    .model
                    .file(rel)
                    .and_then(|f| f.readable())
                    .ok_or(NsError::NotFound)?;
                let meta = std::fs::metadata(path)
                    .map_err(|e| NsError::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
                NodeInfo {
                    ino,
                    kind: Kind::File,
                    size: meta.len(),
                    mtime: meta.modified().unwrap_or(view.modified),
                    perm: (std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777)
                        as u16,
                    immutable: true,
                }
            }
            NodeKey::Virtual { repo, sha, file } => {
                let view = self.view_at(repo, sha)?;
                let bytes = view.virtual_bytes(*file).ok_or(NsError::NotFound)?;
                NodeInfo {
                    ino,
                    kind: Kind::File,
                    size: bytes.len() as u64,
                    mtime: view.modified,
                    perm: 0o444,
                    immutable: true,
                }
            }
            NodeKey::Status => NodeInfo {
                ino,
                kind: Kind::File,
                size: self.status_json().len() as u64,
                mtime: SystemTime::now(),
                perm: 0o444,
                immutable: false,
            },
        })
    }

    /// The entries of directory `ino`, with their attributes (`.` and `..` excluded).
    pub fn readdir(&self, ino: u64) -> NsResult<Vec<(String, NodeInfo)>> {
        let keys: Vec<(String, NodeKey)> = match self.key(ino)? {
            NodeKey::Root => {
                let mut orgs: Vec<String> = Vec::new();
                let mut out = Vec::new();
                for id in self.repo_ids() {
                    match id.split_once('/') {
                        Some((org, _)) => {
                            if !orgs.iter().any(|o| o == org) {
                                orgs.push(org.to_string());
                            }
                        }
                        None => out.push((id.clone(), NodeKey::Model { repo: id, rev: None })),
                    }
                }
                out.extend(orgs.into_iter().map(|o| (o.clone(), NodeKey::Org(o))));
                out
            }
            NodeKey::Org(org) => self
                .repo_ids()
                .into_iter()
                .filter_map(|id| {
                    let (o, name) = id.split_once('/')?;
                    (o == org).then(|| (name.to_string(), NodeKey::Model { repo: id.clone(), rev: None }))
                })
                .filter(|(_, k)| matches!(k, NodeKey::Model { repo, .. } if self.model_exists(repo, None).is_ok()))
                .collect(),
            NodeKey::Model { repo, rev } => {
                let view = self.view(&repo, rev.as_deref())?;
                self.view_children(&view, "")?
            }
            NodeKey::Dir { repo, sha, rel } => {
                let view = self.view_at(&repo, &sha)?;
                self.view_children(&view, &rel)?
            }
            _ => return Err(NsError::NotADirectory),
        };
        let mut out = Vec::with_capacity(keys.len());
        for (name, key) in keys {
            let ino = self.ino(key.clone());
            // An entry that vanished between listing and stat is simply not listed.
            if let Ok(info) = self.info(ino, &key) {
                out.push((name, info));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn view_children(&self, view: &ModelView, rel: &str) -> NsResult<Vec<(String, NodeKey)>> {
        let entries = view.list(rel).ok_or(NsError::NotFound)?;
        entries
            .into_iter()
            .map(|(name, _)| {
                let key = self.child_key(view, rel, &name)?;
                Ok((name, key))
            })
            .collect()
    }

    /// What reading file `ino` means.
    pub fn open_target(&self, ino: u64) -> NsResult<OpenTarget> {
        match self.key(ino)? {
            NodeKey::File { repo, sha, rel } => {
                let view = self.view_at(&repo, &sha)?;
                let path = view
                    .model
                    .file(&rel)
                    .and_then(|f| f.readable())
                    .ok_or(NsError::NotFound)?;
                Ok(OpenTarget::Blob(path.to_path_buf()))
            }
            NodeKey::Virtual { repo, sha, file } => {
                let view = self.view_at(&repo, &sha)?;
                view.virtual_bytes(file)
                    .map(OpenTarget::Bytes)
                    .ok_or(NsError::NotFound)
            }
            NodeKey::Status => Ok(OpenTarget::Bytes(Arc::from(
                self.status_json().into_bytes(),
            ))),
            _ => Err(NsError::IsADirectory),
        }
    }

    /// Whether `ino` is backed by a cache file (the passthrough hazard applies to these).
    pub fn is_cache_backed(&self, ino: u64) -> bool {
        matches!(self.key(ino), Ok(NodeKey::File { .. }))
    }

    /// The daemon's counters as JSON.
    pub fn status_json(&self) -> String {
        let c = &self.counters;
        let header_bytes: u64 = self
            .views
            .iter()
            .map(|v| v.value().virtuals_bytes_read())
            .sum();
        let v = serde_json::json!({
            "pid": std::process::id(),
            "cache": self.cache.root(),
            "passthrough": self.passthrough.load(Ordering::Relaxed),
            "started_at": crate::store::sentinel::iso8601(self.started),
            "lookups": c.lookups.load(Ordering::Relaxed),
            "opens": c.opens.load(Ordering::Relaxed),
            "passthrough_opens": c.passthrough_opens.load(Ordering::Relaxed),
            "reads": c.reads.load(Ordering::Relaxed),
            "bytes_read": c.bytes_read.load(Ordering::Relaxed),
            "write_attempts_refused": c.write_attempts_refused.load(Ordering::Relaxed),
            "models_viewed": self.views.len(),
            "header_bytes_read": header_bytes,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}
