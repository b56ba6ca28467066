//! The Hugging Face hub cache on disk: where it is, its model repos, refs, snapshots, and the
//! files a snapshot links to.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::error::StoreError;
use super::files::{FileState, ModelFile};

/// Where the cache is, in the order huggingface_hub looks: an explicit directory, then
/// `HF_HUB_CACHE` (or its legacy spelling), then `$HF_HOME/hub`, then `$XDG_CACHE_HOME/huggingface/hub`,
/// then `~/.cache/huggingface/hub`.
pub fn cache_root(explicit: Option<&Path>) -> PathBuf {
    cache_root_from(explicit, |k| std::env::var_os(k))
}

fn cache_root_from(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(p) = explicit {
        return expand_tilde(p);
    }
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
        return expand_tilde(&p);
    }
    if let Some(home) = set("HF_HOME") {
        return expand_tilde(&home).join("hub");
    }
    if let Some(xdg) = set("XDG_CACHE_HOME") {
        return xdg.join("huggingface").join("hub");
    }
    home_dir().join(".cache").join("huggingface").join("hub")
}

pub(crate) fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `~` and `~/x` expanded against $HOME.
pub fn expand_tilde(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => p.to_path_buf(),
    }
}

/// An opened cache directory.
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
    /// The root with every symlink resolved: what "inside the cache" is checked against.
    canonical_root: PathBuf,
}

/// One `models--org--name` directory.
#[derive(Debug, Clone)]
pub struct ModelRepo {
    /// `org/name` (or `name` for repos without an org).
    pub repo_id: String,
    pub dir: PathBuf,
}

/// One downloaded commit of a repo.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sha: String,
    pub dir: PathBuf,
    pub modified: SystemTime,
}

impl HubCache {
    /// Opens the cache at `root`; it must be an existing directory.
    pub fn open(root: &Path) -> Result<HubCache, StoreError> {
        let canonical_root =
            fs::canonicalize(root).map_err(|source| StoreError::CacheUnreadable {
                path: root.to_path_buf(),
                source,
            })?;
        if !canonical_root.is_dir() {
            return Err(StoreError::CacheNotADirectory {
                path: root.to_path_buf(),
            });
        }
        Ok(HubCache {
            root: root.to_path_buf(),
            canonical_root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn canonical_root(&self) -> &Path {
        &self.canonical_root
    }

    /// Whether `path` (which need not exist) lies inside the cache once every symlink of its
    /// existing part is resolved.
    ///
    /// Checked by path (canonicalized) and by identity: a bind mount or another alias of the
    /// cache shows its directories under another path, with the same device and inode, so
    /// every existing ancestor of `path` is compared with the cache's root and its repo,
    /// `snapshots` and `blobs` directories.
    pub fn contains(&self, path: &Path) -> bool {
        let canonical = canonicalize_lenient(path);
        if canonical.starts_with(&self.canonical_root) {
            return true;
        }
        let ids = self.directory_identities();
        canonical
            .ancestors()
            .filter_map(|a| fs::metadata(a).ok())
            .any(|m| ids.contains(&(m.dev(), m.ino())))
    }

    /// (device, inode) of the cache's root and of its repos' directories (for [`Self::contains`]).
    fn directory_identities(&self) -> std::collections::HashSet<(u64, u64)> {
        let mut dirs = vec![self.canonical_root.clone()];
        if let Ok(entries) = fs::read_dir(&self.canonical_root) {
            for e in entries.flatten() {
                let repo = e.path();
                dirs.extend([repo.join("snapshots"), repo.join("blobs"), repo]);
            }
        }
        dirs.iter()
            .filter_map(|d| fs::symlink_metadata(d).ok())
            .filter(|m| m.is_dir())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    }

    /// Every model repo, sorted by repo id. Datasets, spaces and stray entries are skipped.
    pub fn repos(&self) -> Result<Vec<ModelRepo>, StoreError> {
        let entries = fs::read_dir(&self.root).map_err(|source| StoreError::CacheUnreadable {
            path: self.root.clone(),
            source,
        })?;
        let mut repos = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(repo_id) = name.to_str().and_then(repo_id_from_dir_name) else {
                continue;
            };
            if entry.path().is_dir() {
                repos.push(ModelRepo {
                    repo_id,
                    dir: entry.path(),
                });
            }
        }
        repos.sort_by(|a, b| a.repo_id.cmp(&b.repo_id));
        Ok(repos)
    }

    /// The repo with exactly this id, if cached.
    pub fn repo(&self, repo_id: &str) -> Option<ModelRepo> {
        self.repo_with_metadata(repo_id).map(|(repo, _)| repo)
    }

    /// [`HubCache::repo`] with its directory's metadata (one `stat` for both).
    pub fn repo_with_metadata(&self, repo_id: &str) -> Option<(ModelRepo, fs::Metadata)> {
        let dir = self.root.join(dir_name_from_repo_id(repo_id));
        let meta = fs::metadata(&dir).ok().filter(|m| m.is_dir())?;
        let repo = ModelRepo {
            repo_id: repo_id.to_string(),
            dir,
        };
        Some((repo, meta))
    }

    /// Lists the files of a snapshot, subdirectories included, following each relative link
    /// into blobs/. A link that leaves the cache is reported and never followed; a dangling
    /// link is a missing file (an `.incomplete` blob beside its target is noticed).
    pub fn snapshot_files(&self, snapshot: &Snapshot) -> Result<Vec<ModelFile>, StoreError> {
        let mut files = Vec::new();
        let mut dirs = RealDirs::below(&self.root, &self.canonical_root);
        self.walk_snapshot(&snapshot.dir, "", &mut files, &mut dirs, 0)?;
        files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        Ok(files)
    }

    fn walk_snapshot(
        &self,
        dir: &Path,
        prefix: &str,
        out: &mut Vec<ModelFile>,
        dirs: &mut RealDirs,
        depth: usize,
    ) -> Result<(), StoreError> {
        // HF snapshots mirror repo trees, which are shallow; the bound guards against loops.
        if depth > 32 {
            return Ok(());
        }
        let entries = fs::read_dir(dir).map_err(|source| StoreError::CacheUnreadable {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            let rel = super::files::join_rel(prefix, &name);
            let path = entry.path();
            // The type from the directory entry where the file system gives one: a snapshot
            // is links, and a link needs no lstat of its own.
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                out.push(self.follow_link(&path, rel, dirs));
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.walk_snapshot(&path, &rel, out, dirs, depth + 1)?;
            } else if meta.file_type().is_symlink() {
                out.push(self.follow_link(&path, rel, dirs));
            } else if meta.is_file() {
                // Caches on filesystems without symlinks hold plain copies.
                out.push(ModelFile::present(rel, path.clone(), path, &meta));
            }
        }
        Ok(())
    }

    fn follow_link(&self, link: &Path, rel: String, dirs: &mut RealDirs) -> ModelFile {
        let target = match fs::read_link(link) {
            Ok(t) => t,
            Err(_) => return ModelFile::missing(rel, link.to_path_buf(), None, false),
        };
        let parent = link.parent().unwrap_or(Path::new("/"));
        let joined = normalize_lexically(&parent.join(&target));
        // Checked lexically first, so a link pointing outside is never even stat'ed.
        let lexically_inside =
            joined.starts_with(&self.root) || joined.starts_with(&self.canonical_root);
        if !lexically_inside {
            return ModelFile {
                rel_path: rel,
                path: link.to_path_buf(),
                state: FileState::EscapesCache { target },
            };
        }
        match dirs.resolve(link, &target) {
            Ok((resolved, _)) if !resolved.starts_with(&self.canonical_root) => ModelFile {
                rel_path: rel,
                path: link.to_path_buf(),
                state: FileState::EscapesCache { target },
            },
            Ok((resolved, known)) => match known.map_or_else(|| fs::metadata(&resolved), Ok) {
                Ok(meta) if meta.is_file() => {
                    ModelFile::present(rel, link.to_path_buf(), resolved, &meta)
                }
                Ok(meta) if !meta.is_dir() => {
                    ModelFile::not_regular(rel, link.to_path_buf(), &meta)
                }
                _ => ModelFile::missing(rel, link.to_path_buf(), Some(target), false),
            },
            Err(_) => {
                let mut incomplete = joined.clone().into_os_string();
                incomplete.push(".incomplete");
                let incomplete = Path::new(&incomplete).exists();
                ModelFile::missing(rel, link.to_path_buf(), Some(target), incomplete)
            }
        }
    }
}

impl ModelRepo {
    /// Every snapshot, newest first.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.join("snapshots")) {
            for entry in entries.flatten() {
                let Some(sha) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    out.push(Snapshot {
                        sha,
                        dir: entry.path(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        out.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.sha.cmp(&b.sha)));
        out
    }

    /// The sha `refs/main` names, read as [`ModelRepo::refs`] reads every ref (a plain small
    /// file, never through a link; anything else is no ref).
    fn main_ref(&self) -> Option<String> {
        let path = self.dir.join("refs").join("main");
        if !fs::symlink_metadata(&path).ok()?.is_file() {
            return None;
        }
        let bytes = super::files::read_small(&path, 4096, &mut 0).ok()?;
        ref_sha(&String::from_utf8_lossy(&bytes)).map(str::to_string)
    }

    /// Every ref (`main`, `pr/5`, tags) and the sha it names.
    pub fn refs(&self) -> BTreeMap<String, String> {
        let mut refs = BTreeMap::new();
        collect_refs(&self.dir.join("refs"), "", &mut refs, 0);
        refs
    }

    /// The snapshot `refs/main` names, else the newest one.
    pub fn default_snapshot(&self) -> Option<Snapshot> {
        // Nearly every repo has refs/main and its snapshot: one ref read and one stat, instead
        // of listing refs/ and snapshots/ (the mount resolves every model of an org to list it).
        if let Some(sha) = self.main_ref() {
            let dir = self.dir.join("snapshots").join(&sha);
            // As `snapshots` sees entries: not through a link.
            if let Ok(meta) = fs::symlink_metadata(&dir) {
                if meta.is_dir() {
                    return Some(Snapshot {
                        sha,
                        dir,
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        let snapshots = self.snapshots();
        if let Some(sha) = self.refs().get("main") {
            if let Some(s) = snapshots.iter().find(|s| &s.sha == sha) {
                return Some(s.clone());
            }
            tracing::debug!(repo = %self.repo_id, %sha, "refs/main names a snapshot that is not downloaded; using the newest");
        }
        snapshots.into_iter().next()
    }
}

/// The sha a ref file holds: 40 (or up to 64) hex digits, surrounding whitespace ignored.
fn ref_sha(text: &str) -> Option<&str> {
    let sha = text.trim();
    (!sha.is_empty() && sha.len() <= 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(sha)
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>, depth: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let key = super::files::join_rel(prefix, &name);
        let path = entry.path();
        // Refs are plain files the hub client writes: a link is never followed (it could lead
        // anywhere outside the cache).
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            tracing::warn!("skipping ref {key}: a symbolic link");
            continue;
        }
        if path.is_dir() && depth < 8 {
            collect_refs(&path, &key, out, depth + 1);
        } else {
            // A ref is 40 hex digits: anything that is not a small regular file (a FIFO, a
            // link to a device) is skipped without waiting on it or reading it whole.
            let text = match super::files::read_small(&path, 4096, &mut 0) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    tracing::warn!("skipping ref {key}: {e}");
                    continue;
                }
            };
            if let Some(sha) = ref_sha(&text) {
                out.insert(key, sha.to_string());
            }
        }
    }
}

/// `models--org--name` -> `org/name`; `None` for anything that is not a model repo.
pub fn repo_id_from_dir_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    if rest.is_empty() {
        return None;
    }
    Some(match rest.split_once("--") {
        Some((org, model)) if !org.is_empty() && !model.is_empty() => format!("{org}/{model}"),
        _ => rest.to_string(),
    })
}

/// `org/name` -> `models--org--name`.
pub fn dir_name_from_repo_id(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// `.` and `..` removed without touching the filesystem.
pub fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Where a snapshot's links lead, as `fs::canonicalize` says, for a fraction of its cost: a
/// link's real directory and its target's directory are canonicalized once per walk (every
/// link of a snapshot points into the same `blobs/`), and only the target's last component is
/// looked at per link. `canonicalize` walks the whole path again for every file, a `readlink`
/// per component: ~70 of a listed model's ~100 system calls in the daemon (N = 1,000 models).
/// Below the cache root, whose real path is known, a directory is made real by looking at its
/// components under the root only (an `lstat` each, shared by the directories of a walk): the
/// path above the root is not walked again for every model.
#[derive(Default)]
struct RealDirs {
    known: std::collections::HashMap<PathBuf, Option<PathBuf>>,
    /// The cache root as given and its real path.
    root: Option<(PathBuf, PathBuf)>,
}

impl RealDirs {
    /// Directories below `root` (whose real path is `canonical_root`) made real from there.
    fn below(root: &Path, canonical_root: &Path) -> RealDirs {
        RealDirs {
            known: Default::default(),
            root: Some((root.to_path_buf(), canonical_root.to_path_buf())),
        }
    }

    fn real(&mut self, dir: &Path) -> Option<PathBuf> {
        if let Some(known) = self.known.get(dir) {
            return known.clone();
        }
        let real = match self.real_below_root(dir) {
            Some(real) => Some(real),
            None => fs::canonicalize(dir).ok(),
        };
        self.known.insert(dir.to_path_buf(), real.clone());
        real
    }

    /// `dir`'s real path when it lies below the root through plain directories only (each
    /// level's answer kept for the walk). `None`: not below the root, or some level is a link,
    /// missing or no directory — `canonicalize` decides then.
    fn real_below_root(&mut self, dir: &Path) -> Option<PathBuf> {
        let (root, canonical_root) = self.root.as_ref()?;
        // A link's real directory, with its `..` applied, is below the real root.
        let (rest, mut lexical) = match dir.strip_prefix(root) {
            Ok(rest) => (rest, root.clone()),
            Err(_) => (
                dir.strip_prefix(canonical_root).ok()?,
                canonical_root.clone(),
            ),
        };
        let mut real = canonical_root.clone();
        for component in rest.components() {
            let Component::Normal(name) = component else {
                return None;
            };
            lexical.push(name);
            real.push(name);
            match self.known.get(&lexical) {
                Some(Some(known)) if known == &real => continue,
                Some(_) => return None,
                None => {}
            }
            let plain_dir = fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir());
            if !plain_dir {
                return None;
            }
            self.known.insert(lexical.clone(), Some(real.clone()));
        }
        Some(real)
    }

    /// The real path of symlink `link`, whose target is `target`. Exact when the target is
    /// some `..` then plain names (what the hub writes: `../../blobs/<sha>`): the `..` are
    /// applied to the link's real directory (a path without links, whose parent is its
    /// lexical parent), the names' directory is made real, and a last component that is a
    /// link itself, or any other target, goes to `fs::canonicalize`. The metadata of the
    /// resolved file comes along when the fast path had to stat it anyway.
    fn resolve(
        &mut self,
        link: &Path,
        target: &Path,
    ) -> std::io::Result<(PathBuf, Option<fs::Metadata>)> {
        let canonical = |link: &Path| fs::canonicalize(link).map(|p| (p, None));
        let mut ups = 0;
        let mut names: Vec<&std::ffi::OsStr> = Vec::new();
        for c in target.components() {
            match c {
                Component::ParentDir if names.is_empty() => ups += 1,
                Component::Normal(n) => names.push(n),
                _ => return canonical(link),
            }
        }
        let (Some(last), Some(link_dir)) = (names.pop(), link.parent()) else {
            return canonical(link);
        };
        let Some(mut dir) = self.real(link_dir) else {
            return canonical(link);
        };
        for _ in 0..ups {
            dir.pop();
        }
        dir.extend(names);
        let Some(dir) = self.real(&dir) else {
            return canonical(link);
        };
        let resolved = dir.join(last);
        match fs::symlink_metadata(&resolved) {
            Ok(m) if !m.file_type().is_symlink() => Ok((resolved, Some(m))),
            _ => canonical(link),
        }
    }
}

/// Canonicalizes the longest existing prefix of `path` and appends the rest, so a path that
/// does not exist yet is judged by where it would be created. Symlinks in the existing part
/// are resolved before any `..` after them is applied, as the kernel would.
pub fn canonicalize_lenient(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let components: Vec<Component> = absolute.components().collect();
    let mut split = components.len();
    let mut base = None;
    while split > 0 {
        let prefix: PathBuf = components[..split].iter().collect();
        if let Ok(c) = fs::canonicalize(&prefix) {
            base = Some(c);
            break;
        }
        split -= 1;
    }
    let mut out = base.unwrap_or_else(|| PathBuf::from("/"));
    for c in &components[split..] {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::Normal(part) => out.push(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// refs/main names the default snapshot, even an older one; a ref that is no plain file of
    /// hex digits, or that names a snapshot not downloaded (or one that is a link), leaves the
    /// newest snapshot.
    #[test]
    fn the_default_snapshot_is_what_refs_main_names_else_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("models--o--m");
        let (old, new) = ("a".repeat(40), "b".repeat(40));
        for (sha, secs) in [(&old, 1_000_000), (&new, 2_000_000)] {
            let dir = repo_dir.join("snapshots").join(sha);
            fs::create_dir_all(&dir).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            fs::File::open(&dir).unwrap().set_modified(t).unwrap();
        }
        fs::create_dir_all(repo_dir.join("refs")).unwrap();
        let cache = HubCache::open(tmp.path()).unwrap();
        let default = || cache.repo("o/m").unwrap().default_snapshot().unwrap().sha;
        let main = repo_dir.join("refs/main");
        assert_eq!(default(), new, "no refs/main: the newest");
        fs::write(&main, format!("{old}\n")).unwrap();
        assert_eq!(default(), old);
        let snapshot = cache.repo("o/m").unwrap().default_snapshot().unwrap();
        assert_eq!(snapshot.dir, repo_dir.join("snapshots").join(&old));
        assert_eq!(
            snapshot.modified,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)
        );
        fs::write(&main, "c".repeat(40)).unwrap();
        assert_eq!(default(), new, "a snapshot not downloaded");
        fs::write(&main, "../../elsewhere").unwrap();
        assert_eq!(default(), new, "not a sha");
        fs::remove_file(&main).unwrap();
        let elsewhere = tmp.path().join("main-elsewhere");
        fs::write(&elsewhere, &old).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &main).unwrap();
        assert_eq!(default(), new, "a link is never followed");
        fs::remove_file(&main).unwrap();
        let linked = "d".repeat(40);
        std::os::unix::fs::symlink(
            repo_dir.join("snapshots").join(&old),
            repo_dir.join("snapshots").join(&linked),
        )
        .unwrap();
        fs::write(&main, &linked).unwrap();
        assert_eq!(default(), new, "a snapshot that is a link");
    }

    #[test]
    fn cache_root_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(*v))
            }
        };
        assert_eq!(
            cache_root_from(Some(Path::new("/x")), env(&[("HF_HUB_CACHE", "/y")])),
            PathBuf::from("/x")
        );
        assert_eq!(
            cache_root_from(None, env(&[("HF_HUB_CACHE", "/y"), ("HF_HOME", "/h")])),
            PathBuf::from("/y")
        );
        assert_eq!(
            cache_root_from(None, env(&[("HUGGINGFACE_HUB_CACHE", "/l")])),
            PathBuf::from("/l")
        );
        assert_eq!(
            cache_root_from(None, env(&[("HF_HOME", "/h")])),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            cache_root_from(None, env(&[("HF_HUB_CACHE", ""), ("HF_HOME", "/h")])),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            cache_root_from(None, env(&[("XDG_CACHE_HOME", "/c")])),
            PathBuf::from("/c/huggingface/hub")
        );
    }

    #[test]
    fn repo_dir_names() {
        assert_eq!(
            repo_id_from_dir_name("models--mlx-community--Qwen3-4bit").as_deref(),
            Some("mlx-community/Qwen3-4bit")
        );
        assert_eq!(
            repo_id_from_dir_name("models--gpt2").as_deref(),
            Some("gpt2")
        );
        assert_eq!(repo_id_from_dir_name("datasets--x--y"), None);
        assert_eq!(repo_id_from_dir_name("models--"), None);
        assert_eq!(dir_name_from_repo_id("a/b"), "models--a--b");
    }

    #[test]
    fn lenient_canonicalization_of_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        fs::create_dir(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(real.join("sub"), real.join("sublink")).unwrap();
        assert_eq!(
            canonicalize_lenient(&real.join("link/new/c")),
            real.join("new/c")
        );
        // `..` after a symlink climbs from the link's target, not from the link.
        assert_eq!(
            canonicalize_lenient(&real.join("sublink/../x")),
            real.join("x")
        );
        assert_eq!(
            canonicalize_lenient(&real.join("sublink/../sub/y/../z")),
            real.join("sub/z")
        );
    }

    /// A snapshot walk's link resolution says what `fs::canonicalize` says, link by link: the
    /// hub's `../../blobs/<sha>`, a nested file's `../../../blobs/<sha>`, `snapshots/` and
    /// `blobs/` themselves links (elsewhere inside the tree and outside it), a blob that is a
    /// link, dangling links, and targets of other shapes (absolute, `./`, `..` after a name).
    #[test]
    fn snapshot_links_resolve_as_canonicalize_does() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let top = fs::canonicalize(dir.path()).unwrap();
        let repo = top.join("hub/models--o--n");
        let (real_blobs, real_snaps) = (top.join("elsewhere/blobs"), top.join("elsewhere/snaps"));
        let other_blobs = top.join("other/blobs");
        for d in [
            &real_blobs,
            &real_snaps,
            &other_blobs,
            &repo.join("blobs2"),
            &top.join("outside"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        // `snapshots` a link to a directory beside the hub: the kernel climbs from there, to
        // `elsewhere/blobs`; `blobs` a link to yet another directory (where a lexical climb
        // from the link would land).
        symlink(&other_blobs, repo.join("blobs")).unwrap();
        symlink(&real_snaps, repo.join("snapshots")).unwrap();
        fs::write(real_blobs.join("aa"), b"a").unwrap();
        fs::write(other_blobs.join("aa"), b"other").unwrap();
        fs::write(repo.join("blobs2/bb"), b"b").unwrap();
        fs::write(top.join("outside/cc"), b"c").unwrap();
        symlink(real_blobs.join("aa"), real_blobs.join("linked")).unwrap();
        let snap = repo.join("snapshots/sha");
        fs::create_dir_all(snap.join("sub")).unwrap();
        let links: [(&str, PathBuf); 10] = [
            ("plain", "../../blobs/aa".into()),
            ("sub/nested", "../../../blobs/aa".into()),
            ("other", "../../../hub/models--o--n/blobs2/bb".into()),
            ("blob-is-a-link", "../../blobs/linked".into()),
            ("dangling", "../../blobs/none".into()),
            ("dangling-dir", "../../nowhere/aa".into()),
            ("up-after-name", "../../blobs/../blobs/aa".into()),
            ("dot", "./../../blobs/aa".into()),
            ("absolute", top.join("outside/cc")),
            ("too-far-up", "../../../../../../../../outside/cc".into()),
        ];
        for (name, target) in &links {
            symlink(target, snap.join(name)).unwrap();
        }
        // A repo of plain directories beside it, and the hub also reached through a link.
        let plain = top.join("hub/models--p--q");
        fs::create_dir_all(plain.join("snapshots/sha/sub")).unwrap();
        fs::create_dir_all(plain.join("blobs")).unwrap();
        fs::write(plain.join("blobs/aa"), b"a").unwrap();
        symlink("../../blobs/aa", plain.join("snapshots/sha/plain")).unwrap();
        symlink("../../../blobs/aa", plain.join("snapshots/sha/sub/nested")).unwrap();
        symlink("../../blobs/none", plain.join("snapshots/sha/dangling")).unwrap();
        let hub = top.join("hub");
        let hub_link = top.join("hub-link");
        symlink(&hub, &hub_link).unwrap();
        let mut cases: Vec<(PathBuf, PathBuf)> = Vec::new();
        for root in [&hub, &hub_link] {
            for (name, target) in &links {
                cases.push((
                    root.join("models--o--n/snapshots/sha").join(name),
                    target.clone(),
                ));
            }
            for name in ["plain", "sub/nested", "dangling"] {
                let link = root.join("models--p--q/snapshots/sha").join(name);
                let target = fs::read_link(&link).unwrap();
                cases.push((link, target));
            }
        }
        // The root-based resolver: from the hub as given, and from the hub through a link.
        for mut dirs in [
            RealDirs::default(),
            RealDirs::below(&hub, &hub),
            RealDirs::below(&hub_link, &hub),
        ] {
            for (link, target) in &cases {
                let want = fs::canonicalize(link).ok();
                let got = dirs.resolve(link, target).ok().map(|(p, _)| p);
                assert_eq!(got, want, "{} -> {}", link.display(), target.display());
            }
        }
    }
}
