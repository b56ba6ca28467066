//! Keeps the mount live: watches the cache (notify crate), drops the views of repos whose
//! refs, snapshots or blobs changed, and tells the kernel to forget what it cached about them.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::namespace::Namespace;
use crate::store::cache::repo_id_from_dir_name;

/// Events are gathered for this long after the first one, so a download's burst is one update.
const SETTLE: Duration = Duration::from_millis(150);

/// Starts the watcher; the returned value keeps it alive.
pub fn start(ns: Arc<Namespace>) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    let root = ns.lower().cache().root().to_path_buf();
    watcher.watch(&root, RecursiveMode::Recursive)?;
    std::thread::Builder::new()
        .name("mlxk-fs-watch".into())
        .spawn(move || run(&ns, &root, &rx))
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

fn run(ns: &Namespace, root: &Path, rx: &mpsc::Receiver<notify::Result<notify::Event>>) {
    while let Ok(first) = rx.recv() {
        let mut repos = BTreeSet::new();
        let mut rescan = false;
        let mut note = |ev: notify::Result<notify::Event>, repos: &mut BTreeSet<String>| match ev {
            // Opens and closes (the daemon's own reads among them) change nothing; acting on
            // them would drop the views and the kernel's page cache on every read.
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) => {
                rescan |= ev.need_rescan();
                for p in &ev.paths {
                    if let Some(repo) = repo_of(root, p) {
                        repos.insert(repo);
                    }
                }
            }
            Err(_) => rescan = true,
        };
        note(first, &mut repos);
        while let Ok(ev) = rx.recv_timeout(SETTLE) {
            note(ev, &mut repos);
        }
        if !rescan && repos.is_empty() {
            // Only opens and closes (the daemon's own reads while a listing runs): nothing
            // changed, and invalidating the root would make the kernel ask for it again.
            continue;
        }
        if rescan {
            ns.lower().invalidate_all();
        }
        for repo in &repos {
            tracing::debug!(%repo, "cache changed");
            ns.invalidate_repo(repo);
        }
        ns.invalidate_path(Path::new(""));
    }
}

/// `<root>/models--org--name/...` -> `org/name`.
fn repo_of(root: &Path, path: &Path) -> Option<String> {
    let first = path.strip_prefix(root).ok()?.iter().next()?;
    repo_id_from_dir_name(first.to_str()?)
}
