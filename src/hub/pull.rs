//! `mlxk pull`: a revision of a repository into the cache. The revision is resolved to its
//! commit, the commit's tree listed (and filtered), and every file not already there is
//! downloaded by a few workers at once — each under the blob's lock, through its
//! `.incomplete`, verified, renamed, linked. A model already complete costs two metadata
//! requests.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::{HubClient, RepoFile};
use super::download::{fetch_counted, Fetch};
use super::layout::RepoLayout;
use super::patterns::FileFilter;
use super::{check_repo_id, HubError};

/// Files downloaded at once.
pub const DEFAULT_WORKERS: usize = 4;

#[derive(Debug, Clone)]
pub struct PullRequest<'a> {
    pub repo: &'a str,
    /// Branch, tag, `refs/pr/N` or commit sha; `main` when absent.
    pub revision: Option<&'a str>,
    pub filter: &'a FileFilter,
    pub workers: usize,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub snapshot: PathBuf,
    /// Files of the commit that the filter selected.
    pub files: usize,
    pub files_downloaded: usize,
    /// Files that were there already (linked, or linked from a blob another snapshot has).
    pub files_present: usize,
    /// Bytes received over the network.
    pub bytes_downloaded: u64,
    /// Bytes of partial downloads that were continued instead of fetched again.
    pub bytes_resumed: u64,
    /// Size of the selected files.
    pub bytes_total: u64,
    pub elapsed: Duration,
}

/// Progress for a bar: the plan once known, then bytes as they arrive and files as they end.
#[derive(Debug, Clone)]
pub enum PullProgress<'a> {
    Plan { files: usize, bytes_to_get: u64 },
    Bytes(u64),
    FileDone(&'a str),
}

pub fn pull(
    client: &HubClient,
    cache_root: &Path,
    req: &PullRequest<'_>,
    progress: &(dyn Fn(PullProgress<'_>) + Sync),
) -> Result<PullOutcome, HubError> {
    let started = Instant::now();
    check_repo_id(req.repo)?;
    let revision = req.revision.unwrap_or("main");
    let commit = if is_commit_sha(revision) {
        revision.to_string()
    } else {
        client.commit_of(req.repo, revision)?
    };
    let files: Vec<RepoFile> = client
        .tree(req.repo, &commit)?
        .into_iter()
        .filter(|f| req.filter.wants(&f.path))
        .collect();
    let layout = RepoLayout::new(cache_root, req.repo);
    layout.prepare()?;
    layout.write_ref(revision, &commit)?;
    std::fs::create_dir_all(layout.snapshot(&commit)).map_err(super::layout::io_err(
        &layout.snapshot(&commit),
        "cannot create",
    ))?;

    // What is already there needs no request at all.
    let mut todo = VecDeque::new();
    let mut present = 0;
    for f in &files {
        let blob = layout.blob(f.etag());
        let linked = std::fs::read_link(layout.pointer(&commit, &f.path)).is_ok();
        if blob.is_file() {
            if !linked {
                layout.link(&commit, &f.path, f.etag())?;
            }
            present += 1;
        } else {
            todo.push_back(f);
        }
    }
    let bytes_to_get: u64 = todo.iter().map(|f| f.size).sum();
    progress(PullProgress::Plan {
        files: files.len(),
        bytes_to_get,
    });
    let totals = download_all(
        todo,
        req.workers,
        progress,
        |file, cancel| get_one(client, &layout, req.repo, &commit, file, cancel, progress),
        |file| {
            on_disk(
                &layout.blob(file.etag()),
                &layout.incomplete(file.etag()),
                file.size,
            )
        },
    )?;
    Ok(PullOutcome {
        repo: req.repo.to_string(),
        revision: revision.to_string(),
        snapshot: layout.snapshot(&commit),
        commit,
        files: files.len(),
        files_downloaded: totals.files,
        files_present: present,
        bytes_downloaded: totals.received,
        bytes_resumed: totals.resumed,
        bytes_total: files.iter().map(|f| f.size).sum(),
        elapsed: started.elapsed(),
    })
}

/// What a set of downloads amounted to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub files: usize,
    pub received: u64,
    pub resumed: u64,
}

/// Bytes of a file already on disk: all of them once its destination exists, else what its
/// partial holds.
pub(crate) fn on_disk(dest: &Path, partial: &Path, size: u64) -> u64 {
    if dest.is_file() {
        return size;
    }
    std::fs::metadata(partial).map_or(0, |m| m.len().min(size))
}

/// Runs `job` for every file on `workers` threads; the first error cancels the others (they
/// stop at their next chunk, keeping their partial files) and is returned. A full disk is
/// reported with what the whole download still needs (`have` says what each file has on
/// disk), not just the file that hit it: with several files in flight, that one may be small.
pub(crate) fn download_all<'f>(
    todo: VecDeque<&'f RepoFile>,
    workers: usize,
    progress: &(dyn Fn(PullProgress<'_>) + Sync),
    job: impl Fn(&'f RepoFile, &AtomicBool) -> Result<Option<(u64, u64)>, HubError> + Sync,
    have: impl Fn(&RepoFile) -> u64,
) -> Result<Totals, HubError> {
    let all: Vec<&RepoFile> = todo.iter().copied().collect();
    let downloaded = AtomicU64::new(0);
    let resumed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let cancel = AtomicBool::new(false);
    let first_error: Mutex<Option<HubError>> = Mutex::new(None);
    let queue = Mutex::new(todo);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, 16) {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(file) = next else { break };
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                match job(file, &cancel) {
                    Ok(Some((received, from))) => {
                        downloaded.fetch_add(received, Ordering::Relaxed);
                        resumed.fetch_add(from, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                        progress(PullProgress::FileDone(&file.path));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        cancel.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(HubError::DiskFull {
            file,
            written,
            total,
            partial,
            ..
        }) => {
            return Err(HubError::DiskFull {
                file,
                needed: all.iter().map(|f| f.size - have(f)).sum(),
                written,
                total,
                partial,
            })
        }
        Some(e) => return Err(e),
        None => {}
    }
    Ok(Totals {
        files: done.into_inner() as usize,
        received: downloaded.into_inner(),
        resumed: resumed.into_inner(),
    })
}

/// One file under its blob's lock: linked if another process (or snapshot) brought the blob
/// meanwhile, else downloaded. `None` when the pull was cancelled.
fn get_one(
    client: &HubClient,
    layout: &RepoLayout,
    repo: &str,
    commit: &str,
    file: &RepoFile,
    cancel: &AtomicBool,
    progress: &(dyn Fn(PullProgress<'_>) + Sync),
) -> Result<Option<(u64, u64)>, HubError> {
    let etag = file.etag();
    let _lock = layout.lock(etag)?;
    let blob = layout.blob(etag);
    if blob.is_file() {
        layout.link(commit, &file.path, etag)?;
        progress(PullProgress::Bytes(file.size));
        return Ok(Some((0, 0)));
    }
    let partial = layout.incomplete(etag);
    let fetched = fetch_counted(
        &Fetch {
            client,
            repo,
            commit,
            file,
            partial: &partial,
            dest: &blob,
            cancel,
        },
        &|n| progress(PullProgress::Bytes(n)),
    )?;
    if let Some((_, resumed_from)) = fetched {
        if resumed_from > 0 {
            progress(PullProgress::Bytes(resumed_from));
        }
        layout.link(commit, &file.path, etag)?;
    }
    Ok(fetched)
}

pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
