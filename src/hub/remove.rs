//! `mlxk rm`: a model out of the cache — the whole repository, or one snapshot and the blobs no
//! other snapshot of it links to (and the refs that named it).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::store::cache::{HubCache, ModelRepo, Snapshot};

use super::layout::io_err;
use super::HubError;

/// What `remove` would take, or took.
#[derive(Debug, Clone)]
pub struct Removal {
    pub repo: String,
    /// The snapshot removed alone (`None`: the whole repository).
    pub snapshot: Option<String>,
    pub snapshots: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// What removing `repo` (or only `snapshot` of it) would delete.
pub fn plan(repo: &ModelRepo, snapshot: Option<&Snapshot>) -> Removal {
    let all = repo.snapshots();
    let doomed: Vec<&Snapshot> = match snapshot {
        Some(s) => all.iter().filter(|x| x.sha == s.sha).collect(),
        None => all.iter().collect(),
    };
    let kept_blobs = linked_blobs(
        all.iter()
            .filter(|s| !doomed.iter().any(|d| d.sha == s.sha)),
    );
    let blobs: Vec<PathBuf> = match snapshot {
        // The whole repository: every blob, linked or not (partials included).
        None => list(&repo.dir.join("blobs")),
        Some(_) => linked_blobs(doomed.iter().copied())
            .into_iter()
            .filter(|b| !kept_blobs.contains(b))
            .collect(),
    };
    Removal {
        repo: repo.repo_id.clone(),
        snapshot: snapshot.map(|s| s.sha.clone()),
        snapshots: doomed.len(),
        blobs: blobs.len(),
        bytes: blobs
            .iter()
            .filter_map(|b| fs::symlink_metadata(b).ok())
            .map(|m| m.len())
            .sum(),
    }
}

/// Removes `repo` from `cache`, or only `snapshot` of it (the repository goes too when it was
/// its last snapshot).
pub fn remove(
    cache: &HubCache,
    repo: &ModelRepo,
    snapshot: Option<&Snapshot>,
) -> Result<Removal, HubError> {
    let removal = plan(repo, snapshot);
    let last = repo.snapshots().len() <= 1;
    match snapshot {
        Some(s) if !last => {
            let kept = linked_blobs(repo.snapshots().iter().filter(|x| x.sha != s.sha));
            let doomed = linked_blobs(std::iter::once(s));
            fs::remove_dir_all(&s.dir).map_err(io_err(&s.dir, "cannot remove the snapshot"))?;
            for blob in doomed.iter().filter(|b| !kept.contains(*b)) {
                if let Err(e) = fs::remove_file(blob) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(io_err(blob, "cannot remove the blob")(e));
                    }
                }
            }
            remove_refs_to(&repo.dir.join("refs"), &s.sha)?;
        }
        _ => {
            fs::remove_dir_all(&repo.dir).map_err(io_err(&repo.dir, "cannot remove"))?;
            let locks = cache
                .root()
                .join(".locks")
                .join(repo.dir.file_name().unwrap_or_default());
            let _ = fs::remove_dir_all(locks);
        }
    }
    Ok(removal)
}

/// The blobs the snapshots' links point to (inside the repository's `blobs/`).
fn linked_blobs<'a>(snapshots: impl Iterator<Item = &'a Snapshot>) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for s in snapshots {
        walk_links(&s.dir, &mut out);
    }
    out
}

fn walk_links(dir: &Path, out: &mut HashSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_links(&p, out),
            Ok(t) if t.is_symlink() => {
                if let Ok(target) = fs::read_link(&p) {
                    // Lexically: the links are relative (`../../blobs/<etag>`), never followed.
                    let joined = dir.join(target);
                    if let Some(name) = joined.file_name() {
                        if joined.parent().and_then(Path::file_name) == Some("blobs".as_ref()) {
                            let blobs_dir = blobs_dir_of(dir);
                            if let Some(b) = blobs_dir {
                                out.insert(b.join(name));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `<repo>/blobs` for a directory somewhere under `<repo>/snapshots/`.
fn blobs_dir_of(dir: &Path) -> Option<PathBuf> {
    let mut cur = dir;
    loop {
        if cur.file_name() == Some("snapshots".as_ref()) {
            return cur.parent().map(|r| r.join("blobs"));
        }
        cur = cur.parent()?;
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|es| es.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Removes every ref (nested ones too) that names `sha`.
fn remove_refs_to(dir: &Path, sha: &str) -> Result<(), HubError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = e.file_type().map_err(io_err(&p, "cannot stat"))?;
        if t.is_dir() {
            remove_refs_to(&p, sha)?;
        } else if t.is_file()
            && crate::store::files::read_small(&p, 4096, &mut 0)
                .is_ok_and(|b| String::from_utf8_lossy(&b).trim() == sha)
        {
            fs::remove_file(&p).map_err(io_err(&p, "cannot remove the ref"))?;
        }
    }
    Ok(())
}
