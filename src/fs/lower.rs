//! The layer below the overlay: the cache as the read-only mount shows it. `/<org>/<name>/` for
//! every cached model (the snapshot `refs/main` names), `/<org>/<name>@<rev>/` for any ref or
//! sha prefix (resolved on lookup, not listed), the snapshot's files and the virtual files of
//! [`ModelView`]. Nodes are addressed by their path in this tree (`org/name/config.json`); a
//! file node carries its snapshot sha, so its content never changes.

use crate::fs::FastHash;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::SystemTime;

use dashmap::DashMap;

use super::view::{ModelView, ViewEntry, VirtualFile};
use super::viewcache::ViewCache;
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
        repo: Arc<str>,
        sha: Arc<str>,
        rel: String,
    },
    /// A cache file of a snapshot.
    File {
        repo: Arc<str>,
        sha: Arc<str>,
        rel: String,
    },
    Virtual {
        repo: Arc<str>,
        sha: Arc<str>,
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
    views: DashMap<(String, String), Arc<ModelView>, FastHash>,
    /// The cache's repos by org (every lookup at the root or in an org needs them; the
    /// watcher drops the index when the cache changes).
    repo_index: std::sync::Mutex<Option<CachedIndex>>,
    /// Each repo's default snapshot as last resolved (refs/main, else the newest): every lookup
    /// in a model needs it, and resolving it reads the repo's directories (~20 system calls).
    /// Trusted for [`REPO_LIST_TTL`], and beyond while the watcher covers the repo (see
    /// [`Watches`]): the watcher drops it when the repo changes.
    defaults: DashMap<String, Resolved, FastHash>,
    /// Which repos the cache watcher covers, and when each was last invalidated.
    watches: Watches,
    /// How long the repo index and the default snapshots are trusted ([`REPO_LIST_TTL`]).
    ttl: std::time::Duration,
    started: SystemTime,
    /// Views' virtual files kept across mounts (none: computed from the headers every time).
    view_cache: Option<Arc<ViewCache>>,
    /// Views being built, so that one build serves every caller that asks meanwhile (a reader
    /// that reaches a model the read-ahead is building waits for that build).
    building: DashMap<(String, String), Arc<ViewBuild>, FastHash>,
    /// Views built ahead of a reader that walks an org's models in order.
    readahead: Readahead,
}

/// One build of a view, awaited by every caller that asks while it runs (`None`: the snapshot
/// could not be opened).
type ViewBuild = OnceLock<Option<Arc<ModelView>>>;

/// How many models ahead of a reader walking an org in order their views are built.
const READAHEAD_VIEWS: usize = 8;

/// Read-ahead for views. `ls -lR`, `du` or `find` walk an org's model directories one after
/// the other, and each first listing of a model builds its view (the snapshot's walk, the
/// view cache or the headers) inside a request the reader waits for. Once a reader lists a
/// model right after a sibling before it, the views of the next [`READAHEAD_VIEWS`] models are
/// built on a thread of their own, on a core the chain of requests leaves idle. A model listed
/// alone, or an org's own listing, builds nothing ahead.
#[derive(Default)]
struct Readahead {
    /// Where the repo ids to build go (the daemon's read-ahead thread; none: no read-ahead).
    to_build: OnceLock<mpsc::Sender<String>>,
    /// The model directory last listed (org, position in the org) and the position up to which
    /// views were asked for.
    last: Mutex<Option<(String, usize, usize)>>,
    /// Views asked for ahead of a reader.
    asked: AtomicUsize,
}

/// The cache's repos as the root and the org directories show them: lookups are a map probe,
/// not a scan of every repo id (which made each lookup's cost grow with the cache).
#[derive(Debug, Default)]
struct RepoIndex {
    /// Org → its models' names, sorted.
    orgs: BTreeMap<String, Vec<String>>,
    /// Repos without an org (`gpt2`), sorted.
    bare: Vec<String>,
}

impl RepoIndex {
    fn of(ids: Vec<String>) -> RepoIndex {
        let mut index = RepoIndex::default();
        for id in ids {
            match id.split_once('/') {
                Some((org, name)) => index
                    .orgs
                    .entry(org.to_string())
                    .or_default()
                    .push(name.to_string()),
                None => index.bare.push(id),
            }
        }
        index.orgs.values_mut().for_each(|names| names.sort());
        index.bare.sort();
        index
    }
}

#[derive(Debug)]
struct CachedIndex {
    index: Arc<RepoIndex>,
    /// When the hub directory was last checked, and its mtime then.
    checked: std::time::Instant,
    hub_mtime: Option<SystemTime>,
}

/// A repo's default snapshot as resolved, and the repo directory's mtime (the model
/// directory's own time in the mount).
#[derive(Debug)]
struct Resolved {
    at: std::time::Instant,
    /// [`Watches::tick`] taken before the repo was read.
    tick: u64,
    /// Shared, not copied, by every lookup that asks (each would copy four paths and names).
    found: Option<Arc<DefaultSnapshot>>,
}

#[derive(Debug)]
struct DefaultSnapshot {
    repo: ModelRepo,
    snapshot: Snapshot,
    mtime: SystemTime,
}

/// What lets an answer about a repo outlive [`REPO_LIST_TTL`]: the cache watcher covers every
/// directory of the repo, and nothing changed there since the answer was read. One clock
/// orders the three events — a repo's watches all added, an answer read, the repo invalidated —
/// so an answer read before its repo was fully watched, or before its last invalidation (a
/// change seen while the answer was being read), lasts only the TTL.
#[derive(Debug, Default)]
struct Watches {
    clock: std::sync::atomic::AtomicU64,
    /// Repo → the tick after its watches were all in place.
    covered: DashMap<String, u64>,
    /// Repo → the tick of its last invalidation.
    invalidated: DashMap<String, u64>,
    /// The tick of the last invalidation of everything.
    all_invalidated: std::sync::atomic::AtomicU64,
}

impl Watches {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// Whether an answer about `repo` read at `tick` still holds without looking again.
    fn holds(&self, repo: &str, tick: u64) -> bool {
        let covered_before = self.covered.get(repo).is_some_and(|w| *w < tick);
        covered_before && self.unchanged_since(repo, tick)
    }

    /// Whether neither `repo` nor everything was invalidated after `tick`.
    fn unchanged_since(&self, repo: &str, tick: u64) -> bool {
        self.invalidated.get(repo).is_none_or(|i| *i < tick)
            && self
                .all_invalidated
                .load(std::sync::atomic::Ordering::SeqCst)
                < tick
    }
}

/// How long the repo index is trusted without looking at the hub directory again.
const REPO_LIST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A hub directory changed this recently may change again within its mtime's granularity
/// unseen (a second on some file systems): such an index is rebuilt rather than trusted.
const MTIME_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

impl LowerTree {
    pub fn new(cache: HubCache) -> LowerTree {
        LowerTree {
            cache,
            views: DashMap::default(),
            repo_index: std::sync::Mutex::new(None),
            defaults: DashMap::default(),
            watches: Watches::default(),
            ttl: REPO_LIST_TTL,
            started: SystemTime::now(),
            view_cache: None,
            building: DashMap::default(),
            readahead: Readahead::default(),
        }
    }

    /// Sends the repos whose views are worth building ahead of a reader to `to_build`, whose
    /// receiver calls [`LowerTree::build_ahead`] for each.
    pub fn set_readahead(&self, to_build: mpsc::Sender<String>) {
        let _ = self.readahead.to_build.set(to_build);
    }

    /// Builds the view of `repo`'s default snapshot, virtual files included, unless it is
    /// built already (the read-ahead thread's work).
    pub fn build_ahead(&self, repo: &str) {
        if let Some(view) = self.view(repo, None) {
            view.virtuals();
        }
    }

    /// Views asked for ahead of a reader so far.
    pub fn views_read_ahead(&self) -> usize {
        self.readahead.asked.load(Ordering::Relaxed)
    }

    /// A reader listed model directory `repo`: when it came right after a sibling listed
    /// before it, the views of the next models of the org are asked for.
    fn read_ahead(&self, repo: &str) {
        let Some(to_build) = self.readahead.to_build.get() else {
            return;
        };
        let Some((org, name)) = repo.split_once('/') else {
            return;
        };
        let index = self.repo_index();
        let Some(names) = index.orgs.get(org) else {
            return;
        };
        let Ok(pos) = names.binary_search_by(|n| n.as_str().cmp(name)) else {
            return;
        };
        let (from, to) = {
            let mut last = self
                .readahead
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (from, to) = match last.as_ref() {
                // Forward within the window from the model listed last: a walk in order
                // (a reader that sorts names its own way may skip a few).
                Some((o, p, ahead)) if o == org && pos > *p && pos <= p + READAHEAD_VIEWS => {
                    let to = (pos + 1 + READAHEAD_VIEWS).min(names.len());
                    ((*ahead).max(pos + 1), to)
                }
                _ => (pos + 1, pos + 1),
            };
            *last = Some((org.to_string(), pos, to.max(from)));
            (from, to)
        };
        if from >= to {
            return;
        }
        for name in &names[from..to] {
            if to_build.send(format!("{org}/{name}")).is_err() {
                return;
            }
            self.readahead.asked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps views' virtual files in `cache` across mounts.
    pub fn with_view_cache(mut self, cache: ViewCache) -> LowerTree {
        self.view_cache = Some(Arc::new(cache));
        self
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// Forgets the cached views of `repo` (its blobs, refs or snapshots changed). Returns the
    /// root names the dropped views showed: their kernel entries must go too.
    pub fn invalidate_repo(&self, repo: &str) -> Vec<String> {
        self.forget_repo_list();
        let tick = self.watches.tick();
        self.watches.invalidated.insert(repo.to_string(), tick);
        self.defaults.remove(repo);
        // A build under way began before this change: callers from now on start their own.
        self.building.retain(|(r, _), _| r != repo);
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
        let tick = self.watches.tick();
        self.watches
            .all_invalidated
            .store(tick, std::sync::atomic::Ordering::SeqCst);
        self.defaults.clear();
        self.building.clear();
        self.views.clear();
    }

    /// The cache watcher has every directory of `repo` watched: what is read about it from now
    /// on holds until the watcher invalidates it.
    pub fn repo_watched(&self, repo: &str) {
        let tick = self.watches.tick();
        self.watches.covered.insert(repo.to_string(), tick);
    }

    /// Whether the cache watcher covers `repo` now: every change to it is reported.
    pub fn watched(&self, repo: &str) -> bool {
        self.watches.covered.contains_key(repo)
    }

    /// How many repos the cache watcher covers.
    pub fn repos_watched(&self) -> usize {
        self.watches.covered.len()
    }

    /// Some directory of `repo` may be unwatched (a watch could not be added, or the watcher
    /// lost events): its answers last [`REPO_LIST_TTL`] again.
    pub fn repo_unwatched(&self, repo: &str) {
        self.watches.covered.remove(repo);
    }

    /// The watcher stopped, or lost events: no repo is known to be watched.
    pub fn nothing_watched(&self) {
        self.watches.covered.clear();
    }

    fn forget_repo_list(&self) {
        *self.repo_index.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn views_len(&self) -> usize {
        self.views.len()
    }

    /// Views whose virtual files came from the view cache.
    pub fn views_from_cache(&self) -> usize {
        self.views
            .iter()
            .filter(|v| v.value().virtuals_from_cache())
            .count()
    }

    pub fn header_bytes_read(&self) -> u64 {
        self.views
            .iter()
            .map(|v| v.value().virtuals_bytes_read())
            .sum()
    }

    /// The repo index: trusted for [`REPO_LIST_TTL`], then kept as long as the hub
    /// directory's mtime has not moved (a repo appearing or going changes it) — one stat a
    /// second instead of a listing of every repo.
    fn repo_index(&self) -> Arc<RepoIndex> {
        let mut cached = self.repo_index.lock().unwrap_or_else(|p| p.into_inner());
        let hub_mtime = || {
            std::fs::metadata(self.cache.root())
                .and_then(|m| m.modified())
                .ok()
        };
        if let Some(c) = cached.as_mut() {
            if c.checked.elapsed() < self.ttl {
                return c.index.clone();
            }
            let now = hub_mtime();
            let settled = now.is_some_and(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|age| age >= MTIME_SETTLE)
            });
            if now.is_some() && now == c.hub_mtime && settled {
                c.checked = std::time::Instant::now();
                return c.index.clone();
            }
        }
        // The mtime first: a change during the listing shows as a newer mtime next time.
        let mtime = hub_mtime();
        let ids = self
            .cache
            .repos()
            .map(|r| r.into_iter().map(|r| r.repo_id).collect())
            .unwrap_or_default();
        let index = Arc::new(RepoIndex::of(ids));
        *cached = Some(CachedIndex {
            index: index.clone(),
            checked: std::time::Instant::now(),
            hub_mtime: mtime,
        });
        index
    }

    /// `repo`, its default snapshot and its directory's mtime (see `defaults`).
    fn resolved(&self, repo: &str) -> Option<Arc<DefaultSnapshot>> {
        if let Some(hit) = self.defaults.get(repo) {
            if hit.at.elapsed() < self.ttl || self.watches.holds(repo, hit.tick) {
                return hit.found.clone();
            }
        }
        let tick = self.watches.tick();
        let found = self.cache.repo_with_metadata(repo).and_then(|(r, meta)| {
            let mtime = meta.modified().unwrap_or(self.started);
            r.default_snapshot().map(|snapshot| {
                Arc::new(DefaultSnapshot {
                    repo: r,
                    snapshot,
                    mtime,
                })
            })
        });
        let resolved = Resolved {
            at: std::time::Instant::now(),
            tick,
            found: found.clone(),
        };
        self.defaults.insert(repo.to_string(), resolved);
        found
    }

    /// The view of `repo` at `rev` (default snapshot when `None`).
    pub fn view(&self, repo: &str, rev: Option<&str>) -> Option<Arc<ModelView>> {
        match rev {
            None => {
                let default = self.resolved(repo)?;
                self.cached_or_build(&default.repo, &default.snapshot)
            }
            Some(r) => {
                let repo_handle = self.cache.repo(repo)?;
                let snapshot = find_revision(&repo_handle, r).ok()?;
                self.cached_or_build(&repo_handle, &snapshot)
            }
        }
    }

    /// The view of a snapshot by sha, building it if needed.
    pub fn view_at(&self, repo: &str, sha: &str) -> Option<Arc<ModelView>> {
        if let Some(v) = self.views.get(&(repo.to_string(), sha.to_string())) {
            return Some(v.clone());
        }
        let repo_handle = self.cache.repo(repo)?;
        let snapshot = repo_handle.snapshots().into_iter().find(|s| s.sha == sha)?;
        self.cached_or_build(&repo_handle, &snapshot)
    }

    fn cached_or_build(&self, repo: &ModelRepo, snapshot: &Snapshot) -> Option<Arc<ModelView>> {
        let key = (repo.repo_id.clone(), snapshot.sha.clone());
        if let Some(v) = self.views.get(&key) {
            return Some(v.clone());
        }
        // One build for every caller meanwhile: the others wait for it instead of walking the
        // snapshot again. A view the watcher invalidated during the build is still the answer
        // of this call (as it is for the builder), but it is not kept.
        let build = self.building.entry(key.clone()).or_default().clone();
        let view = build
            .get_or_init(|| {
                let started = self.watches.tick();
                let model = open_snapshot(&self.cache, repo.clone(), snapshot.clone()).ok()?;
                let view = Arc::new(ModelView::new(model, self.view_cache.clone()));
                self.keep_view(key.clone(), &view, started);
                Some(view)
            })
            .clone();
        self.building.remove_if(&key, |_, b| Arc::ptr_eq(b, &build));
        view
    }

    /// Keeps `view`, whose snapshot walk began at tick `started`, unless the repo was
    /// invalidated since: the walk may have seen the repo before that change, and a view kept
    /// after the invalidation ran would outlive it. In first, checked after (as the watcher
    /// marks the invalidation before it drops views, one side or the other takes it out).
    fn keep_view(&self, key: (String, String), view: &Arc<ModelView>, started: u64) {
        self.views.insert(key.clone(), view.clone());
        if !self.watches.unchanged_since(&key.0, started) {
            self.views
                .remove_if(&key, |_, kept| Arc::ptr_eq(kept, view));
        }
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
        let index = self.repo_index();
        if rev.is_none() && index.orgs.contains_key(base) {
            return Some(LowerNode::Org(base.to_string()));
        }
        // Repos without an org (`gpt2`) sit at the root.
        if index
            .bare
            .binary_search_by(|b| b.as_str().cmp(base))
            .is_ok()
            && self.model_exists(base, rev)
        {
            return Some(LowerNode::Model {
                repo: base.to_string(),
                rev: rev.map(str::to_string),
            });
        }
        None
    }

    fn model_exists(&self, repo: &str, rev: Option<&str>) -> bool {
        match rev {
            None => self.resolved(repo).is_some(),
            Some(rev) => self
                .cache
                .repo(repo)
                .is_some_and(|r| find_revision(&r, rev).is_ok()),
        }
    }

    /// The children of directory node `node`, sorted by name.
    pub fn children(&self, node: &LowerNode) -> Vec<(String, LowerNode)> {
        let mut out: Vec<(String, LowerNode)> = match node {
            LowerNode::Root => {
                let index = self.repo_index();
                let mut out: Vec<(String, LowerNode)> = index
                    .bare
                    .iter()
                    .filter(|id| self.model_exists(id, None))
                    .map(|id| {
                        (
                            id.clone(),
                            LowerNode::Model {
                                repo: id.clone(),
                                rev: None,
                            },
                        )
                    })
                    .collect();
                out.extend(
                    index
                        .orgs
                        .keys()
                        .map(|o| (o.clone(), LowerNode::Org(o.clone()))),
                );
                out
            }
            LowerNode::Org(org) => self
                .repo_index()
                .orgs
                .get(org)
                .into_iter()
                .flatten()
                .filter_map(|name| {
                    let id = format!("{org}/{name}");
                    self.model_exists(&id, None).then(|| {
                        (
                            name.clone(),
                            LowerNode::Model {
                                repo: id,
                                rev: None,
                            },
                        )
                    })
                })
                .collect(),
            LowerNode::Model { repo, rev } => match self.view(repo, rev.as_deref()) {
                Some(view) => {
                    if rev.is_none() {
                        self.read_ahead(repo);
                    }
                    view_children(&view, "")
                }
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
            LowerNode::Model { repo, rev: None } => dir(self.resolved(repo)?.mtime),
            LowerNode::Model {
                repo,
                rev: Some(rev),
            } => {
                if !self.model_exists(repo, Some(rev)) {
                    return None;
                }
                dir(mtime_of(
                    &self.cache.root().join(dir_name_from_repo_id(repo)),
                ))
            }
            LowerNode::Dir { repo, sha, .. } => dir(self.view_at(repo, sha)?.modified),
            // What the snapshot's walk saw: a blob never changes under its name, and a new
            // revision is a new view (the watcher drops the old one).
            LowerNode::File { repo, sha, rel } => {
                let view = self.view_at(repo, sha)?;
                let file = view.model.file(rel)?;
                LowerAttr {
                    size: file.size()?,
                    mtime: file.modified().unwrap_or(view.modified),
                    perm: file.mode()? as u16,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{llama_model_files, FixtureCache, LlamaSpec};

    /// A tree over a cache of `org/a` and `gpt2` whose kept answers last `ttl`.
    fn tree(ttl: std::time::Duration) -> (tempfile::TempDir, FixtureCache, LowerTree) {
        let tmp = tempfile::tempdir().unwrap();
        let fx = FixtureCache::create(&tmp.path().join("hub")).unwrap();
        let files = llama_model_files(&LlamaSpec::default(), 1, false, "mlx");
        fx.add_model("org/a", "v1", &files).unwrap();
        fx.add_model("gpt2", "v1", &files).unwrap();
        let mut lower = LowerTree::new(HubCache::open(&fx.root).unwrap());
        lower.ttl = ttl;
        (tmp, fx, lower)
    }

    const LONG: std::time::Duration = std::time::Duration::from_secs(3600);
    const SHORT: std::time::Duration = std::time::Duration::from_millis(20);

    fn names(lower: &LowerTree, node: &LowerNode) -> Vec<String> {
        lower.children(node).into_iter().map(|(n, _)| n).collect()
    }

    /// The repo index answers lookups at the root and in an org; a repo that appears is
    /// listed as soon as the watcher's invalidation runs.
    #[test]
    fn the_repo_index_follows_the_cache() {
        let (_tmp, fx, lower) = tree(LONG);
        assert_eq!(names(&lower, &LowerNode::Root), ["gpt2", "org"]);
        assert!(lower.resolve("org/a").is_some() && lower.resolve("gpt2").is_some());
        assert!(lower.resolve("nope").is_none() && lower.resolve("org/b").is_none());
        let files = llama_model_files(&LlamaSpec::default(), 1, false, "mlx");
        fx.add_model("org/b", "v1", &files).unwrap();
        fx.add_model("new/c", "v1", &files).unwrap();
        // Within its time the index is trusted: the new repos are not seen yet.
        assert_eq!(names(&lower, &LowerNode::Org("org".into())), ["a"]);
        // The watcher's word drops it at once.
        lower.invalidate_repo("org/b");
        assert_eq!(names(&lower, &LowerNode::Org("org".into())), ["a", "b"]);
        assert_eq!(names(&lower, &LowerNode::Root), ["gpt2", "new", "org"]);
    }

    /// A tree over `org/m00` .. `org/m{n-1}` whose read-ahead requests land in the receiver.
    fn tree_of(n: usize) -> (tempfile::TempDir, LowerTree, mpsc::Receiver<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let fx = FixtureCache::create(&tmp.path().join("hub")).unwrap();
        let files = llama_model_files(&LlamaSpec::default(), 1, false, "mlx");
        for i in 0..n {
            fx.add_model(&format!("org/m{i:02}"), "v1", &files).unwrap();
        }
        let lower = LowerTree::new(HubCache::open(&fx.root).unwrap());
        let (tx, rx) = mpsc::channel();
        lower.set_readahead(tx);
        (tmp, lower, rx)
    }

    fn model(i: usize) -> LowerNode {
        LowerNode::Model {
            repo: format!("org/m{i:02}"),
            rev: None,
        }
    }

    /// A reader that lists model after model gets the next models' views built ahead of it;
    /// an org's listing, or a model listed out of order, asks for nothing, and nothing is
    /// asked twice.
    #[test]
    fn views_are_read_ahead_of_a_reader_walking_an_org_in_order() {
        let (_tmp, lower, rx) = tree_of(READAHEAD_VIEWS + 7);
        let asked = || rx.try_iter().collect::<Vec<_>>();
        let repos =
            |r: std::ops::Range<usize>| r.map(|i| format!("org/m{i:02}")).collect::<Vec<_>>();
        // The org's listing builds no view and asks for none: listing stays lazy.
        assert_eq!(
            names(&lower, &LowerNode::Org("org".into())).len(),
            READAHEAD_VIEWS + 7
        );
        assert_eq!(lower.views_len(), 0);
        // One model listed: no walk yet.
        names(&lower, &model(3));
        assert!(asked().is_empty());
        // Its sibling after it: a walk in order; the next READAHEAD_VIEWS are asked for.
        names(&lower, &model(4));
        assert_eq!(asked(), repos(5..5 + READAHEAD_VIEWS));
        // One further: only the model that came into the window, then the org's last.
        names(&lower, &model(5));
        assert_eq!(asked(), repos(13..14));
        names(&lower, &model(6));
        assert_eq!(asked(), repos(14..15));
        names(&lower, &model(7));
        assert!(asked().is_empty());
        // Back to the start: not a walk in order.
        names(&lower, &model(0));
        assert!(asked().is_empty());
        assert_eq!(lower.views_read_ahead(), READAHEAD_VIEWS + 2);
        assert_eq!(lower.views_len(), 6);
        // What the read-ahead thread does with a name: the view, virtual files included.
        lower.build_ahead("org/m09");
        assert_eq!(lower.views_len(), 7);
        let view = lower.view("org/m09", None).unwrap();
        assert!(view.virtuals_bytes_read() > 0);
    }

    /// Callers that ask for a view while it is being built (a reader reaching a model the
    /// read-ahead is building) share that one build instead of walking the snapshot again.
    #[test]
    fn concurrent_callers_share_one_build_of_a_view() {
        let (_tmp, lower, _rx) = tree_of(1);
        let start = std::sync::Barrier::new(8);
        let views: Vec<Arc<ModelView>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        lower.view("org/m00", None).unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(views.iter().all(|v| Arc::ptr_eq(v, &views[0])));
        assert!(lower.building.is_empty());
    }

    /// A build of a view that began before the watcher reported a change in its repo is not
    /// the answer of a caller that asks after the report: that caller builds the view anew.
    #[test]
    fn a_build_under_way_across_an_invalidation_is_not_shared_with_later_callers() {
        let (_tmp, lower, _rx) = tree_of(1);
        let before = lower.view("org/m00", None).unwrap();
        let key = ("org/m00".to_string(), before.sha.to_string());
        // A file lands in the snapshot while a build that walked it before is still shared.
        let top = before
            .model
            .files
            .iter()
            .find(|f| !f.rel_path.contains('/'));
        let snapshot_dir = top.unwrap().path.parent().unwrap();
        std::fs::write(snapshot_dir.join("added.txt"), b"new").unwrap();
        lower
            .building
            .insert(key, Arc::new(OnceLock::from(Some(before.clone()))));
        lower.invalidate_repo("org/m00");
        let after = lower.view("org/m00", None).unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(names(&lower, &model(0)).contains(&"added.txt".to_string()));
    }

    /// Without the watcher: once the index's time is up, a hub directory whose mtime moved
    /// (a repo removed) is listed again.
    #[test]
    fn the_repo_index_is_rebuilt_when_the_hub_changes() {
        let (_tmp, fx, lower) = tree(SHORT);
        let files = llama_model_files(&LlamaSpec::default(), 1, false, "mlx");
        fx.add_model("new/c", "v1", &files).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(names(&lower, &LowerNode::Root), ["gpt2", "new", "org"]);
        std::fs::remove_dir_all(fx.repo_dir("new/c")).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(names(&lower, &LowerNode::Root), ["gpt2", "org"]);
        assert!(lower.resolve("new").is_none());
    }

    /// A repo's default snapshot is kept for the index's time; a new revision is seen at once
    /// after the watcher's invalidation.
    #[test]
    fn the_default_snapshot_follows_refs_main() {
        let (_tmp, fx, lower) = tree(LONG);
        let v1 = lower.view("org/a", None).unwrap();
        let spec = LlamaSpec {
            seed: 9,
            ..LlamaSpec::default()
        };
        let sha2 = fx
            .add_snapshot("org/a", "v2", &llama_model_files(&spec, 2, true, "mlx"))
            .unwrap();
        fx.set_ref("org/a", "main", &sha2).unwrap();
        let sha = |v: &ModelView| v.sha.to_string();
        assert_eq!(sha(&lower.view("org/a", None).unwrap()), sha(&v1));
        lower.invalidate_repo("org/a");
        assert_eq!(sha(&lower.view("org/a", None).unwrap()), sha2);
        // Without the watcher's word, a tree whose answers last a moment sees it then.
        let (_tmp, fx, lower) = tree(SHORT);
        let v1 = lower.view("org/a", None).unwrap();
        let sha2 = fx
            .add_snapshot("org/a", "v2", &llama_model_files(&spec, 2, true, "mlx"))
            .unwrap();
        fx.set_ref("org/a", "main", &sha2).unwrap();
        std::thread::sleep(SHORT * 2);
        let now = lower.view("org/a", None).unwrap();
        assert_ne!(sha(&now), sha(&v1));
        assert_eq!(sha(&now), sha2);
    }

    /// While the watcher covers a repo, its default snapshot is kept past the TTL until the
    /// watcher says the repo changed; read before the repo was covered, or once it is no
    /// longer covered, it lasts the TTL again.
    #[test]
    fn a_watched_repo_keeps_its_default_snapshot_until_the_watcher_says() {
        let (_tmp, fx, lower) = tree(SHORT);
        let sha = |lower: &LowerTree| lower.view("org/a", None).unwrap().sha.to_string();
        let spec = LlamaSpec {
            seed: 9,
            ..LlamaSpec::default()
        };
        let sha1 = sha(&lower);
        let sha2 = fx
            .add_snapshot("org/a", "v2", &llama_model_files(&spec, 2, true, "mlx"))
            .unwrap();
        // Read before the repo was covered: the TTL holds, and then the change is seen.
        lower.repo_watched("org/a");
        fx.set_ref("org/a", "main", &sha2).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(
            sha(&lower),
            sha2,
            "an answer older than the watch lasts the TTL"
        );
        // Read while covered: kept past the TTL, until the watcher's word.
        fx.set_ref("org/a", "main", &sha1).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(sha(&lower), sha2, "kept while watched");
        lower.invalidate_repo("org/a");
        assert_eq!(sha(&lower), sha1, "the watcher's word drops it");
        // No longer covered (a watch lost): the TTL again.
        lower.repo_unwatched("org/a");
        fx.set_ref("org/a", "main", &sha2).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(sha(&lower), sha2);
        // Everything uncovered (the watcher stopped or lost events): the TTL again.
        lower.repo_watched("org/a");
        lower.invalidate_repo("org/a");
        assert_eq!(sha(&lower), sha2);
        lower.nothing_watched();
        fx.set_ref("org/a", "main", &sha1).unwrap();
        std::thread::sleep(SHORT * 2);
        assert_eq!(sha(&lower), sha1);
    }

    /// An answer is kept past the TTL only if its reading began after the repo was covered and
    /// after the repo's (and everything's) last invalidation: one that began before a change
    /// was seen may hold the old state.
    #[test]
    fn an_answer_read_across_an_invalidation_is_not_kept() {
        let w = Watches::default();
        let before_cover = w.tick();
        w.covered.insert("r".into(), w.tick());
        let read = w.tick();
        assert!(!w.holds("r", before_cover));
        assert!(w.holds("r", read));
        assert!(!w.holds("other", read), "a repo never covered");
        w.invalidated.insert("r".into(), w.tick());
        assert!(!w.holds("r", read), "read before the repo's invalidation");
        let after = w.tick();
        assert!(w.holds("r", after));
        w.all_invalidated
            .store(w.tick(), std::sync::atomic::Ordering::SeqCst);
        assert!(
            !w.holds("r", after),
            "read before everything was invalidated"
        );
        assert!(w.holds("r", w.tick()));
    }

    /// A view whose walk began before the watcher invalidated its repo is served to the one
    /// who asked but not kept: the next lookup walks the snapshot again.
    #[test]
    fn a_view_walked_across_an_invalidation_is_not_kept() {
        let (_tmp, _fx, lower) = tree(LONG);
        let build = || {
            let default = lower.resolved("org/a").unwrap();
            let (repo, snapshot) = (default.repo.clone(), default.snapshot.clone());
            let key = (repo.repo_id.clone(), snapshot.sha.clone());
            let model = open_snapshot(&lower.cache, repo, snapshot).unwrap();
            (key, Arc::new(ModelView::new(model, None)))
        };
        let started = lower.watches.tick();
        let (key, view) = build();
        lower.invalidate_repo("org/a");
        lower.keep_view(key.clone(), &view, started);
        assert!(
            lower.views.get(&key).is_none(),
            "a view older than the change was kept"
        );
        let started = lower.watches.tick();
        let (key, view) = build();
        lower.keep_view(key.clone(), &view, started);
        assert!(lower
            .views
            .get(&key)
            .is_some_and(|v| Arc::ptr_eq(&v, &view)));
    }

    /// What a view computed is kept across trees (a remount reads no header), and a snapshot
    /// whose shard was replaced by another blob is computed afresh, never taken from the
    /// record of its old content.
    #[test]
    fn views_are_kept_across_mounts_and_a_replaced_blob_is_computed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let fx = FixtureCache::create(&tmp.path().join("hub")).unwrap();
        let files = llama_model_files(&LlamaSpec::default(), 2, true, "mlx");
        let sha = fx.add_model("org/a", "v1", &files).unwrap();
        let views = tmp.path().join("views");
        let tree = |kept: bool| {
            let lower = LowerTree::new(HubCache::open(&fx.root).unwrap());
            if kept {
                lower.with_view_cache(ViewCache::new(&views, &fx.root))
            } else {
                lower
            }
        };
        let bytes = |lower: &LowerTree| {
            let v = lower.view("org/a", None).unwrap();
            let virtuals = v.virtuals();
            (
                virtuals.sentinel.clone(),
                virtuals.index.clone(),
                virtuals.orig_index,
            )
        };
        let first = tree(true);
        let computed = bytes(&first);
        assert!(computed.1.is_some(), "a two-shard model has an index");
        assert!(first.header_bytes_read() > 0 && first.views_from_cache() == 0);
        let again = tree(true);
        assert_eq!(bytes(&again), computed);
        assert_eq!(
            (again.header_bytes_read(), again.views_from_cache()),
            (0, 1)
        );
        // The second shard now holds other tensors: another blob under the same name.
        let spec = LlamaSpec {
            seed: 9,
            hidden: LlamaSpec::default().hidden * 2,
            ..LlamaSpec::default()
        };
        let (rel, shard) = llama_model_files(&spec, 2, true, "mlx")
            .into_iter()
            .find(|(rel, _)| rel.ends_with("00002-of-00002.safetensors"))
            .unwrap();
        let snapshot_mtime = std::fs::metadata(fx.snapshot_dir("org/a", &sha))
            .and_then(|m| m.modified())
            .unwrap();
        let etag = fx.write_blob("org/a", &shard).unwrap();
        fx.link("org/a", &sha, &rel, &etag).unwrap();
        // Only the blob differs: the snapshot directory keeps its time.
        fx.set_snapshot_mtime("org/a", &sha, snapshot_mtime)
            .unwrap();
        let replaced = tree(true);
        let fresh = bytes(&tree(false));
        assert_ne!(fresh, computed, "the new shard changes the index");
        assert_eq!(bytes(&replaced), fresh);
        assert_eq!(replaced.views_from_cache(), 0);
        assert!(replaced.header_bytes_read() > 0);
    }
}
