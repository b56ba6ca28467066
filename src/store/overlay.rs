//! The overlay directory's on-disk format: where the mount keeps every write, and how it
//! records what it hides or moves in the cache below. Portable (plain files only: works
//! unprivileged, on any filesystem, on macOS), readable with `ls -a`.
//!
//! The overlay mirrors the mount's paths (`<overlay>/<org>/<name>/...`). In any directory:
//! - `.wh.<name>`: a whiteout, an empty file: `<name>` of the layer below is deleted;
//! - `.wh..wh..opq`: an opaque marker: nothing of the layer below shows in this directory;
//! - `.wh..wh..ref.<name>`: a redirect, holding one line, a path in the layer below (the cache
//!   tree as the read-only mount shows it, e.g. `org/name/config.json`): `<name>` shows that
//!   file or directory. A rename of something that lives in the cache writes one of these
//!   instead of copying it;
//! - `<overlay>/.wh..wh..tmp/`: copy-ups and record writes in progress (renamed into place when
//!   complete; emptied at every mount).
//!
//! Every name starting with `.wh.` belongs to the format: the mount hides it and refuses to
//! create it. Precedence for a name: an overlay entry, then a redirect, then a whiteout, then
//! the layer below (unless an ancestor or the directory is opaque).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const REF_PREFIX: &str = ".wh..wh..ref.";
pub const TMP_DIR: &str = ".wh..wh..tmp";

/// Whether `name` belongs to the overlay format (hidden in the mount, refused as a user name).
/// Names are bytes: a workspace may hold any name Linux allows.
pub fn is_internal(name: impl AsRef<OsStr>) -> bool {
    name.as_ref()
        .as_bytes()
        .starts_with(WHITEOUT_PREFIX.as_bytes())
}

/// The record file `<prefix><name>`.
fn record(prefix: &str, name: impl AsRef<OsStr>) -> OsString {
    let mut r = OsString::from(prefix);
    r.push(name);
    r
}

/// `$XDG_DATA_HOME/mlxk-fs/overlay`, else `~/.local/share/mlxk-fs/overlay`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("mlxk-fs").join("overlay"),
        None => super::cache::home_dir().join(".local/share/mlxk-fs/overlay"),
    }
}

/// What the overlay records for one name of one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Whiteout,
    /// A redirect to this path of the layer below.
    Ref(String),
}

/// One overlay directory (the upper layer of a mount).
#[derive(Debug, Clone)]
pub struct OverlayDir {
    root: PathBuf,
    /// What [`OverlayDir::path`] joins onto: `root`, or `.` once the process works from inside
    /// the overlay (see [`OverlayDir::work_from_inside`]).
    base: PathBuf,
}

fn join_rel(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

impl OverlayDir {
    /// Opens (creating if needed) the overlay at `root` and empties its temp directory:
    /// whatever is there is an unfinished copy-up or record write of a daemon that died.
    pub fn open(root: &Path) -> io::Result<OverlayDir> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let tmp = root.join(TMP_DIR);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        Ok(OverlayDir {
            base: root.clone(),
            root,
        })
    }

    /// The overlay at `root` as it is, without touching it (for readers such as the CLI).
    pub fn at(root: &Path) -> OverlayDir {
        OverlayDir {
            root: root.to_path_buf(),
            base: root.to_path_buf(),
        }
    }

    /// Makes the overlay root the process's working directory and every path this value
    /// hands out relative to it. A path in the mount then costs as many bytes in the overlay
    /// as it does under the mountpoint, so what fits PATH_MAX there fits here (an absolute
    /// overlay path would be longer by the root's length). For a daemon, once, before threads.
    pub fn work_from_inside(&mut self) -> io::Result<()> {
        std::env::set_current_dir(&self.root)?;
        self.base = PathBuf::from(".");
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The overlay's path for mount path `rel` ("" = the root).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        join_rel(&self.base, rel.as_ref())
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.base.join(TMP_DIR)
    }

    /// A fresh path in the temp directory.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// The redirect of `name` in directory `dir`, if any.
    pub fn redirect(&self, dir: impl AsRef<Path>, name: impl AsRef<OsStr>) -> Option<String> {
        fs::read_to_string(self.path(dir).join(record(REF_PREFIX, name)))
            .ok()
            .map(|t| t.trim_end_matches('\n').to_string())
    }

    /// The marker of `name` in directory `dir` (a redirect wins over a whiteout).
    pub fn marker(&self, dir: impl AsRef<Path>, name: impl AsRef<OsStr>) -> Option<Marker> {
        let (dir, name) = (dir.as_ref(), name.as_ref());
        if let Some(target) = self.redirect(dir, name) {
            return Some(Marker::Ref(target));
        }
        fs::symlink_metadata(self.path(dir).join(record(WHITEOUT_PREFIX, name)))
            .ok()
            .map(|_| Marker::Whiteout)
    }

    pub fn is_opaque(&self, dir: impl AsRef<Path>) -> bool {
        fs::symlink_metadata(self.path(dir).join(OPAQUE_MARKER)).is_ok()
    }

    /// Records a whiteout for `name` in `dir` (whose overlay directory must exist).
    pub fn add_whiteout(&self, dir: impl AsRef<Path>, name: impl AsRef<OsStr>) -> io::Result<()> {
        let p = self.path(dir).join(record(WHITEOUT_PREFIX, name));
        match record_options().open(&p) {
            Ok(f) => f.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn remove_whiteout(
        &self,
        dir: impl AsRef<Path>,
        name: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        remove_if_present(&self.path(dir).join(record(WHITEOUT_PREFIX, name)))
    }

    /// Records that `name` in `dir` shows `target` of the layer below (atomically replaced).
    pub fn set_ref(
        &self,
        dir: impl AsRef<Path>,
        name: impl AsRef<OsStr>,
        target: &str,
    ) -> io::Result<()> {
        let tmp = self.tmp_path("ref");
        let mut f = record_options().open(&tmp)?;
        f.write_all(target.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(dir).join(record(REF_PREFIX, name)))
    }

    pub fn remove_ref(&self, dir: impl AsRef<Path>, name: impl AsRef<OsStr>) -> io::Result<()> {
        remove_if_present(&self.path(dir).join(record(REF_PREFIX, name)))
    }

    pub fn set_opaque(&self, dir: impl AsRef<Path>) -> io::Result<()> {
        match record_options().open(self.path(dir).join(OPAQUE_MARKER)) {
            Ok(f) => f.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The user-visible names of overlay directory `dir` and the markers it holds.
    pub fn read_dir(&self, dir: impl AsRef<Path>) -> io::Result<OverlayListing> {
        let dir = dir.as_ref();
        let mut out = OverlayListing::default();
        let rd = match fs::read_dir(self.path(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let strip = |name: &OsStr, prefix: &str| {
            name.as_bytes()
                .strip_prefix(prefix.as_bytes())
                .map(|n| OsStr::from_bytes(n).to_os_string())
        };
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name();
            if name == OPAQUE_MARKER {
                out.opaque = true;
            } else if let Some(n) = strip(&name, REF_PREFIX) {
                let target = fs::read_to_string(entry.path()).unwrap_or_default();
                out.refs
                    .push((n, target.trim_end_matches('\n').to_string()));
            } else if name == TMP_DIR && dir.as_os_str().is_empty() {
            } else if let Some(n) = strip(&name, WHITEOUT_PREFIX) {
                out.whiteouts.push(n);
            } else {
                out.entries.push(name);
            }
        }
        out.entries.sort();
        out.refs.sort();
        out.whiteouts.sort();
        Ok(out)
    }
}

/// Records are 0644 whatever the process umask (the daemon runs with umask 0).
fn record_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true).mode(0o644);
    o
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One overlay directory as read by [`OverlayDir::read_dir`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OverlayListing {
    /// Real entries (files, directories, symlinks), sorted (bytewise).
    pub entries: Vec<OsString>,
    pub whiteouts: Vec<OsString>,
    /// (name, target in the layer below).
    pub refs: Vec<(OsString, String)>,
    pub opaque: bool,
}

/// One change the overlay holds for a model (for `mlxk-fs overlay ls / diff`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Path relative to the model directory.
    pub path: String,
    /// `written` (a file or directory in the overlay), `deleted` (whiteout), `moved` (redirect:
    /// shows `from`), `opaque` (the directory hides the cache's content).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl OverlayDir {
    /// Every change recorded under mount path `rel` (a model directory), depth first, sorted.
    pub fn changes(&self, rel: &str) -> io::Result<Vec<Change>> {
        let mut out = Vec::new();
        self.collect_changes(rel, Path::new(""), &mut out)?;
        Ok(out)
    }

    fn collect_changes(&self, base: &str, sub: &Path, out: &mut Vec<Change>) -> io::Result<()> {
        let dir = Path::new(base).join(sub);
        let listing = self.read_dir(&dir)?;
        // Shown as text; a name that is not UTF-8 is shown with replacement characters.
        let shown = |p: &Path| p.to_string_lossy().into_owned();
        let change = |path: String, kind, from, size| Change {
            path,
            kind,
            from,
            size,
        };
        if listing.opaque {
            let path = if sub.as_os_str().is_empty() {
                ".".into()
            } else {
                shown(sub)
            };
            out.push(change(path, "opaque", None, None));
        }
        for n in &listing.whiteouts {
            out.push(change(shown(&sub.join(n)), "deleted", None, None));
        }
        for (n, target) in &listing.refs {
            out.push(change(
                shown(&sub.join(n)),
                "moved",
                Some(target.clone()),
                None,
            ));
        }
        for n in &listing.entries {
            let child = sub.join(n);
            let meta = fs::symlink_metadata(self.path(&dir).join(n))?;
            if meta.is_dir() {
                out.push(change(shown(&child), "directory", None, None));
                self.collect_changes(base, &child, out)?;
            } else {
                out.push(change(shown(&child), "written", None, Some(meta.len())));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(b.kind)));
        out.dedup();
        Ok(())
    }

    /// Deletes every overlay record of mount path `rel` (a model directory) and the record of
    /// the model itself in its parent (a whiteout or redirect of its name). Returns whether
    /// anything was there.
    pub fn reset(&self, rel: &str) -> io::Result<bool> {
        let mut any = false;
        let p = self.path(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&p)?;
                any = true;
            }
            Ok(_) => {
                fs::remove_file(&p)?;
                any = true;
            }
            Err(_) => {}
        }
        let (parent, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", rel),
        };
        if self.marker(parent, name).is_some() {
            self.remove_ref(parent, name)?;
            self.remove_whiteout(parent, name)?;
            any = true;
        }
        Ok(any)
    }

    /// Overlay directories at model depth (`org/name`, or `name` for org-less names) holding
    /// anything, plus models the overlay deletes or moves. Sorted.
    pub fn models(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let top = self.read_dir("")?;
        for org in &top.entries {
            if !self.path(org).is_dir() {
                continue;
            }
            let l = self.read_dir(org)?;
            let org = org.to_string_lossy();
            let names = l
                .entries
                .iter()
                .chain(&l.whiteouts)
                .chain(l.refs.iter().map(|(n, _)| n));
            out.extend(names.map(|n| format!("{org}/{}", n.to_string_lossy())));
        }
        let names = top.whiteouts.iter().chain(top.refs.iter().map(|(n, _)| n));
        out.extend(names.map(|n| n.to_string_lossy().into_owned()));
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stay_hidden() {
        let t = tempfile::tempdir().unwrap();
        let o = OverlayDir::open(t.path()).unwrap();
        fs::create_dir_all(o.path("org/m")).unwrap();
        fs::write(o.path("org/m/config.json"), b"{}").unwrap();
        o.add_whiteout("org/m", "README.md").unwrap();
        o.set_ref("org/m", "tok.bak", "org/m/tokenizer.json")
            .unwrap();
        o.set_opaque("org/m").unwrap();
        assert_eq!(o.marker("org/m", "README.md"), Some(Marker::Whiteout));
        assert_eq!(
            o.marker("org/m", "tok.bak"),
            Some(Marker::Ref("org/m/tokenizer.json".into()))
        );
        assert_eq!(o.marker("org/m", "config.json"), None);
        let l = o.read_dir("org/m").unwrap();
        assert_eq!(l.entries, vec!["config.json"]);
        assert_eq!(l.whiteouts, vec!["README.md"]);
        assert!(l.opaque);
        assert!(o.read_dir("").unwrap().entries == vec!["org"]);
        let kinds: Vec<_> = o
            .changes("org/m")
            .unwrap()
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (".".to_string(), "opaque"),
                ("README.md".to_string(), "deleted"),
                ("config.json".to_string(), "written"),
                ("tok.bak".to_string(), "moved"),
            ]
        );
        assert_eq!(o.models().unwrap(), vec!["org/m"]);
        assert!(o.reset("org/m").unwrap());
        assert!(!o.path("org/m").exists());
        assert!(!o.reset("org/m").unwrap());
    }

    #[test]
    fn open_empties_the_temp_directory() {
        let t = tempfile::tempdir().unwrap();
        let o = OverlayDir::open(t.path()).unwrap();
        fs::write(o.tmp_path("copyup"), b"half").unwrap();
        let o = OverlayDir::open(t.path()).unwrap();
        assert_eq!(fs::read_dir(o.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn internal_names() {
        assert!(is_internal(".wh.x"));
        assert!(is_internal(TMP_DIR));
        assert!(!is_internal(".whx"));
        assert!(!is_internal("config.json"));
    }
}
