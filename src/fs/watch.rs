//! Keeps the mount live: watches the cache with inotify, drops the views of repos whose refs,
//! snapshots or blobs changed, and tells the kernel to forget what it cached about them.
//!
//! inotify directly, not the notify crate: notify subscribes every watch to opens and closes,
//! and every file the daemon opens in the cache (a header, a blob read through the mount) woke
//! this thread — ~18k wake-ups and 100k system calls while `ls -lR` listed 1,000 models, on the
//! cores serving the listing. Only what changes the cache is asked for here. The watches are
//! added on this thread, after the mount serves (notify added them before: 80 ms per 1,000
//! models of the time until the mount answered); what changes meanwhile is seen through the
//! daemon's one-second caches, as when a watch cannot be added (`max_user_watches`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::namespace::Namespace;
use crate::store::cache::repo_id_from_dir_name;

/// Events are gathered for this long after the first one, so a download's burst is one update.
const SETTLE: Duration = Duration::from_millis(150);

/// Directories deeper than this below the cache root are not watched (a snapshot mirrors a
/// repo's tree, which is shallow; the bound guards against loops and pathological trees).
const MAX_DEPTH: usize = 32;

/// What changes the cache: entries created, removed, renamed, files written; a watched
/// directory removed or moved. Not opens, reads or closes without a write.
fn changes() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// Starts the watcher thread, which owns the watches; they are added there, in the background.
pub fn start(ns: Arc<Namespace>) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    let root = ns.lower().cache().root().to_path_buf();
    std::thread::Builder::new()
        .name("mlxk-fs-watch".into())
        .spawn(move || Watcher::new(inotify, root).run(&ns))?;
    Ok(())
}

struct Watcher {
    inotify: Inotify,
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// A watch could not be added (the user's inotify limit): said once.
    limited: bool,
}

/// What a burst of events changed.
#[derive(Default)]
struct Changed {
    repos: BTreeSet<String>,
    /// The kernel dropped events (queue overflow): anything may have changed.
    rescan: bool,
    /// Directories that appeared: watched (with what is already below them) after the burst.
    new_dirs: Vec<PathBuf>,
    /// Repos that appeared with every directory watched, and repos where a new directory
    /// could not be watched (see `LowerTree::repo_watched`).
    covered: Vec<String>,
    uncovered: Vec<String>,
}

impl Watcher {
    fn new(inotify: Inotify, root: PathBuf) -> Watcher {
        Watcher {
            inotify,
            root,
            dirs: HashMap::new(),
            limited: false,
        }
    }

    fn run(mut self, ns: &Namespace) {
        self.watch_cache(ns);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match self.collect(&mut buffer, None) {
                Ok(Some(changed)) => {
                    apply(ns, &changed);
                    if changed.rescan {
                        // Events were lost: a directory that appeared meanwhile is unwatched.
                        self.watch_cache(ns);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    ns.lower().nothing_watched();
                    tracing::warn!(
                        "the cache watcher stopped ({e}): new models appear within a second anyway"
                    );
                    return;
                }
            }
        }
    }

    /// Watches the whole cache, repo by repo; each repo whose directories are all watched is
    /// said to be covered as soon as it is (a listing that starts with the mount gains from
    /// the first repos while the rest are watched).
    fn watch_cache(&mut self, ns: &Namespace) {
        let started = Instant::now();
        let root = self.root.clone();
        if self.watch_one(&root) {
            let entries = std::fs::read_dir(&root).into_iter().flatten().flatten();
            for entry in entries {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let dir = entry.path();
                let all_watched = self.watch_tree(&dir, 1);
                if let Some(repo) = repo_of(&root, &dir) {
                    if all_watched {
                        ns.lower().repo_watched(&repo);
                    } else {
                        ns.lower().repo_unwatched(&repo);
                    }
                }
            }
        }
        tracing::debug!(
            watches = self.dirs.len(),
            took = ?started.elapsed(),
            "watching the cache"
        );
    }

    /// Waits up to `timeout` (`None`: for ever) for an event, then gathers events until
    /// [`SETTLE`] passes without one; directories that appeared are watched. `Ok(None)`: no
    /// event came.
    fn collect(
        &mut self,
        buffer: &mut [u8],
        timeout: Option<Duration>,
    ) -> std::io::Result<Option<Changed>> {
        if !self.wait(timeout)? {
            return Ok(None);
        }
        let mut changed = Changed::default();
        loop {
            match self.inotify.read_events(buffer) {
                Ok(events) => {
                    for event in events {
                        self.note(event.wd, event.mask, event.name, &mut changed);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.wait(Some(SETTLE))? {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        for dir in std::mem::take(&mut changed.new_dirs) {
            let depth = dir
                .strip_prefix(&self.root)
                .map_or(0, |p| p.components().count());
            let all_watched = self.watch_tree(&dir, depth);
            if let Some(repo) = repo_of(&self.root, &dir) {
                if !all_watched {
                    changed.uncovered.push(repo);
                } else if depth == 1 {
                    // The repo directory itself arrived (a download's first step, or a move).
                    changed.covered.push(repo);
                }
            }
        }
        Ok(Some(changed))
    }

    /// Waits until events can be read (`false`: `timeout` passed).
    fn wait(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        let mut fd = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        loop {
            // SAFETY: `fd` is one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Watches `dir`; `false` when it could not be.
    fn watch_one(&mut self, dir: &Path) -> bool {
        match self.inotify.watches().add(dir, changes()) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                true
            }
            Err(e) => {
                if !self.limited && e.raw_os_error() == Some(libc::ENOSPC) {
                    self.limited = true;
                    tracing::warn!(
                        "not every cache directory is watched (fs.inotify.max_user_watches): \
                         changes there appear within a second anyway"
                    );
                }
                false
            }
        }
    }

    /// Watches `dir` and every directory below it (not following links); `false` when some
    /// directory is left unwatched (a watch refused, a listing failed, the depth bound).
    fn watch_tree(&mut self, dir: &Path, depth: usize) -> bool {
        let mut all_watched = true;
        let mut stack = vec![(dir.to_path_buf(), depth)];
        while let Some((dir, depth)) = stack.pop() {
            if !self.watch_one(&dir) {
                all_watched = false;
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                // Gone meanwhile (its parent's event says so) or unreadable.
                all_watched &= !dir.exists();
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if depth >= MAX_DEPTH {
                        all_watched = false;
                        break;
                    }
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        all_watched
    }

    fn note(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
        changed: &mut Changed,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            changed.rescan = true;
            return;
        }
        let Some(dir) = self.dirs.get(&wd) else {
            return;
        };
        let path = match name {
            Some(name) => dir.join(name),
            None => dir.clone(),
        };
        if mask.contains(EventMask::IGNORED) {
            // The watch is gone (its directory was removed, or the filesystem unmounted).
            self.dirs.remove(&wd);
            return;
        }
        if mask.contains(EventMask::MOVE_SELF) {
            // Its watches now name a path that is gone: dropped (the directory's new place, if
            // in the cache, was watched when it arrived there).
            let stale: Vec<WatchDescriptor> = self
                .dirs
                .iter()
                .filter(|(_, p)| p.starts_with(&path))
                .map(|(wd, _)| wd.clone())
                .collect();
            for wd in stale {
                let _ = self.inotify.watches().remove(wd.clone());
                self.dirs.remove(&wd);
            }
        }
        if mask.contains(EventMask::ISDIR)
            && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
        {
            changed.new_dirs.push(path.clone());
        }
        match repo_of(&self.root, &path) {
            Some(repo) => {
                changed.repos.insert(repo);
            }
            // The root itself removed or moved: anything may have changed. A name in it that
            // is no repo (`.locks`, `version.txt`) changes nothing shown.
            None => changed.rescan |= path == self.root,
        }
    }
}

fn apply(ns: &Namespace, changed: &Changed) {
    if !changed.rescan && changed.repos.is_empty() {
        // Nothing of a repo (lock files under `.locks`, the root's other names): invalidating
        // the root would only make the kernel ask for it again.
        return;
    }
    if changed.rescan {
        ns.lower().nothing_watched();
        ns.lower().invalidate_all();
    }
    for repo in &changed.uncovered {
        ns.lower().repo_unwatched(repo);
    }
    for repo in &changed.repos {
        tracing::debug!(%repo, "cache changed");
        ns.invalidate_repo(repo);
    }
    for repo in &changed.covered {
        ns.lower().repo_watched(repo);
    }
    ns.invalidate_path(Path::new(""));
}

/// `<root>/models--org--name/...` -> `org/name`.
fn repo_of(root: &Path, path: &Path) -> Option<String> {
    let first = path.strip_prefix(root).ok()?.iter().next()?;
    repo_id_from_dir_name(first.to_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn watcher_over(root: &Path) -> Watcher {
        let mut w = Watcher::new(Inotify::init().unwrap(), root.to_path_buf());
        w.watch_tree(root, 0);
        w
    }

    fn repos(w: &mut Watcher) -> Option<Vec<String>> {
        let mut buffer = vec![0u8; 64 * 1024];
        w.collect(&mut buffer, Some(Duration::from_millis(300)))
            .unwrap()
            .map(|c| c.repos.into_iter().collect())
    }

    /// Reads of the cache wake nothing; a ref written, a snapshot file added and a repo that
    /// appears (then files deep inside it, which needs its new directories watched) name
    /// their repo; lock files beside the repos change nothing.
    #[test]
    fn changes_name_their_repo_and_reads_wake_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = root.join("models--o--n");
        for d in ["refs", "snapshots/abc", "blobs"] {
            std::fs::create_dir_all(repo.join(d)).unwrap();
        }
        std::fs::write(repo.join("blobs/b1"), b"{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/b1", repo.join("snapshots/abc/config.json"))
            .unwrap();
        let mut w = watcher_over(root);
        let mut text = String::new();
        std::fs::File::open(repo.join("snapshots/abc/config.json"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        std::fs::read_dir(repo.join("snapshots/abc"))
            .unwrap()
            .for_each(drop);
        assert_eq!(repos(&mut w), None, "reads are no change");
        std::fs::write(repo.join("refs/main"), b"abc").unwrap();
        assert_eq!(repos(&mut w), Some(vec!["o/n".to_string()]));
        std::fs::write(repo.join("blobs/b2"), b"x").unwrap();
        std::os::unix::fs::symlink("../../blobs/b2", repo.join("snapshots/abc/tokenizer.json"))
            .unwrap();
        assert_eq!(repos(&mut w), Some(vec!["o/n".to_string()]));
        let fresh = root.join("models--p--q");
        std::fs::create_dir_all(fresh.join("snapshots/def/sub")).unwrap();
        assert_eq!(repos(&mut w), Some(vec!["p/q".to_string()]));
        std::fs::write(fresh.join("snapshots/def/sub/deep.json"), b"{}").unwrap();
        assert_eq!(repos(&mut w), Some(vec!["p/q".to_string()]));
        std::fs::create_dir_all(root.join(".locks/models--o--n")).unwrap();
        std::fs::write(root.join(".locks/models--o--n/x.lock"), b"").unwrap();
        assert_eq!(
            repos(&mut w),
            Some(vec![]),
            "no repo in the lock directory's events"
        );
    }
}
