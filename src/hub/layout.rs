//! The write side of the cache layout, exactly as `huggingface_hub` writes it: blobs named by
//! their etag, written as `<etag>.incomplete` and renamed into place, relative symlinks in
//! `snapshots/<commit>/`, `refs/<revision>` holding the commit, `.locks/<repo>/<etag>.lock`
//! (flock, mode 0664: the lock Python's downloads wait on too), and `CACHEDIR.TAG`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::store::cache::dir_name_from_repo_id;

use super::HubError;

/// What `huggingface_hub` writes into a cache root it downloads into.
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by huggingface_hub.\n\
# For information about cache directory tags, see:\n\
#\thttps://bford.info/cachedir/\n";

/// One repository's place in a cache.
#[derive(Debug, Clone)]
pub struct RepoLayout {
    pub root: PathBuf,
    pub repo_dir: PathBuf,
    locks_dir: PathBuf,
}

impl RepoLayout {
    pub fn new(cache_root: &Path, repo: &str) -> RepoLayout {
        let name = dir_name_from_repo_id(repo);
        RepoLayout {
            root: cache_root.to_path_buf(),
            repo_dir: cache_root.join(&name),
            locks_dir: cache_root.join(".locks").join(name),
        }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.repo_dir.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.repo_dir
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }

    pub fn pointer(&self, commit: &str, rel: &str) -> PathBuf {
        let mut p = self.snapshot(commit);
        p.extend(rel.split('/'));
        p
    }

    /// The directories a pull writes into, and the cache's tag.
    pub fn prepare(&self) -> Result<(), HubError> {
        for dir in [self.repo_dir.join("blobs"), self.locks_dir.clone()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create"))?;
        }
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            // As huggingface_hub: best effort (a read-only root is not an error here).
            let _ = fs::write(&tag, CACHEDIR_TAG);
        }
        Ok(())
    }

    /// Takes `.locks/<repo>/<etag>.lock` (blocks while another process, mlxk or Python, holds
    /// it), released when dropped.
    pub fn lock(&self, etag: &str) -> Result<Flock<File>, HubError> {
        let path = self.locks_dir.join(format!("{etag}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o664)
            .open(&path)
            .map_err(io_err(&path, "cannot open the lock"))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| HubError::Io {
            path,
            what: "cannot take the lock",
            source: e.into(),
        })
    }

    /// Links `snapshots/<commit>/<rel>` to `blobs/<etag>` by a relative symlink (replacing a
    /// link that points elsewhere), as huggingface_hub does.
    pub fn link(&self, commit: &str, rel: &str, etag: &str) -> Result<(), HubError> {
        let pointer = self.pointer(commit, rel);
        let depth = rel.split('/').count() - 1;
        let target: PathBuf = ["..", ".."]
            .into_iter()
            .chain(std::iter::repeat_n("..", depth))
            .chain(["blobs", etag])
            .collect();
        if fs::read_link(&pointer).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let parent = pointer.parent().unwrap_or(&self.repo_dir);
        fs::create_dir_all(parent).map_err(io_err(parent, "cannot create"))?;
        // A new link under a temporary name renamed over the old: never a moment without one.
        let tmp = parent.join(format!(
            ".{}.mlxk-link-{}",
            pointer
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .map_err(io_err(&tmp, "cannot create the link"))?;
        fs::rename(&tmp, &pointer).map_err(io_err(&pointer, "cannot place the link"))
    }

    /// `refs/<revision>` = `commit`, written atomically, unless the revision is the commit.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir.join("refs").join(revision);
        if fs::read_to_string(&path).is_ok_and(|c| c == commit) {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(&self.repo_dir);
        fs::create_dir_all(parent).map_err(io_err(parent, "cannot create"))?;
        let tmp = parent.join(format!(
            ".{}.mlxk-{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        fs::write(&tmp, commit).map_err(io_err(&tmp, "cannot write"))?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "cannot write the ref"))
    }
}

pub(crate) fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> HubError {
    let path = path.to_path_buf();
    move |source| HubError::Io { path, what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_at_every_depth_and_refs_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let l = RepoLayout::new(dir.path(), "org/name");
        l.prepare().unwrap();
        l.link("c0ffee", "config.json", "abc").unwrap();
        l.link("c0ffee", "sub/dir/x.bin", "def").unwrap();
        assert_eq!(
            fs::read_link(l.pointer("c0ffee", "config.json")).unwrap(),
            Path::new("../../blobs/abc")
        );
        assert_eq!(
            fs::read_link(l.pointer("c0ffee", "sub/dir/x.bin")).unwrap(),
            Path::new("../../../../blobs/def")
        );
        l.link("c0ffee", "config.json", "abd").unwrap();
        assert_eq!(
            fs::read_link(l.pointer("c0ffee", "config.json")).unwrap(),
            Path::new("../../blobs/abd")
        );
        l.write_ref("main", "c0ffee").unwrap();
        l.write_ref("refs/pr/5", "c0ffee").unwrap();
        l.write_ref("c0ffee", "c0ffee").unwrap();
        assert_eq!(
            fs::read_to_string(l.repo_dir.join("refs/main")).unwrap(),
            "c0ffee"
        );
        assert!(l.repo_dir.join("refs/refs/pr/5").exists());
        assert!(!l.repo_dir.join("refs/c0ffee").exists());
        assert!(fs::read_to_string(dir.path().join("CACHEDIR.TAG"))
            .unwrap()
            .starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
        let _held = l.lock("abc").unwrap();
        assert!(dir
            .path()
            .join(".locks/models--org--name/abc.lock")
            .exists());
    }
}
