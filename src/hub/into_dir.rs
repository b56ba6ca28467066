//! A commit's files straight into a directory (a workspace being cloned), never through the
//! cache: each through `<path>.incomplete` (resumed by a later run), verified, renamed into
//! place. Files already in place — verified before their rename — are kept.

use std::collections::VecDeque;
use std::path::Path;

use super::client::{HubClient, RepoFile};
use super::download::{fetch_counted, Fetch};
use super::layout::io_err;
use super::pull::{download_all, on_disk, PullProgress, Totals};
use super::HubError;

/// Downloads `files` of `repo` at `commit` into `dir`.
pub fn fetch_into_dir(
    client: &HubClient,
    repo: &str,
    commit: &str,
    files: &[RepoFile],
    dir: &Path,
    workers: usize,
    progress: &(dyn Fn(PullProgress<'_>) + Sync),
) -> Result<Totals, HubError> {
    let mut todo = VecDeque::new();
    for f in files {
        if !dir.join(&f.path).is_file() {
            todo.push_back(f);
        }
    }
    progress(PullProgress::Plan {
        files: files.len(),
        bytes_to_get: todo.iter().map(|f| f.size).sum(),
    });
    let partial_of = |file: &RepoFile| dir.join(format!("{}.incomplete", file.path));
    let job = |file: &RepoFile, cancel: &std::sync::atomic::AtomicBool| {
        let dest = dir.join(&file.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent, "cannot create"))?;
        }
        let partial = partial_of(file);
        fetch_counted(
            &Fetch {
                client,
                repo,
                commit,
                file,
                partial: &partial,
                dest: &dest,
                cancel,
            },
            &|n| progress(PullProgress::Bytes(n)),
        )
    };
    download_all(todo, workers, progress, job, |file| {
        on_disk(&dir.join(&file.path), &partial_of(file), file.size)
    })
}
