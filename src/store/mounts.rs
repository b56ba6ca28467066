//! The mount registry: one JSON record per running `mlxk-fs` mount, so that `mlxk-fs status`
//! can list mounts and `mlxk` can map a path inside a mount back to its cache.
//!
//! Records live in `$MLXK_FS_STATE_DIR`, else `$XDG_RUNTIME_DIR/mlxk-fs/mounts`, else
//! `~/.local/state/mlxk-fs/mounts`. The daemon writes its record once the mount works and
//! removes it when it ends; a record whose daemon is gone is stale.
//!
//! What the registry trusts: the directory is created 0700 and records 0600, whatever the
//! process umask; a record is read only when it and its directory belong to this user and no
//! one else can write them (anything else is refused with the reason), and a record's pid is
//! signalled only when it is an `mlxk-fs` process of this user ([`MountRecord::check_daemon`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hidden, unlisted file at a mount's root with the daemon's counters (JSON).
pub const STATUS_FILE: &str = ".mlxk-fs-status";
/// Setting this extended attribute on the status file (value: a path relative to the mount)
/// makes the daemon drop the kernel's cached entries along that path. `mlxk` does this after
/// writing straight into the overlay directory.
pub const INVALIDATE_XATTR: &str = "user.mlxk-fs.invalidate";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Absolute, canonical mountpoint.
    pub mountpoint: PathBuf,
    /// The cache root being presented.
    pub cache: PathBuf,
    /// The overlay directory holding the mount's writes.
    #[serde(default)]
    pub overlay: Option<PathBuf>,
    pub pid: u32,
    pub passthrough: bool,
    pub started_at: String,
    pub version: String,
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// The daemon reaches the cache through a read-only bind mount in its own namespace.
    #[serde(default)]
    pub cache_read_only: bool,
    /// Extended attributes of overlay files are served (`mlxk-fs mount --xattrs`).
    #[serde(default)]
    pub xattrs: bool,
}

/// Where records are kept.
pub fn registry_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MLXK_FS_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("mlxk-fs").join("mounts");
    }
    super::cache::home_dir().join(".local/state/mlxk-fs/mounts")
}

/// Where mounts keep what they learned from headers across restarts (never in the HF cache):
/// `$MLXK_FS_STATE_DIR/views`, else `$XDG_CACHE_HOME/mlxk-fs/views`, else
/// `~/.cache/mlxk-fs/views`.
pub fn view_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MLXK_FS_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("views");
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("mlxk-fs").join("views");
    }
    super::cache::home_dir().join(".cache/mlxk-fs/views")
}

fn record_path(dir: &Path, mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.json"))
}

/// A record (or the registry directory) that is not this user's alone.
#[derive(Debug, thiserror::Error)]
#[error("refusing the mount registry record {path}: {why}; remove it if it is not yours")]
pub struct UntrustedRecord {
    pub path: PathBuf,
    pub why: String,
}

/// The registry directory, created 0700 (parents too) if missing; one that exists is made
/// 0700 if it is this user's and more open (older versions made it 0777).
fn registry_dir_for_writing() -> io::Result<PathBuf> {
    let dir = registry_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = fs::metadata(&dir)?;
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Why `path` (a record or the registry directory) cannot be trusted, if it cannot.
fn untrusted(path: &Path) -> Option<String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        Some("it is a symbolic link".into())
    } else if meta.uid() != me {
        Some(format!(
            "it is owned by uid {}, not by you (uid {me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "it is writable by others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    }
}

/// Reads the record at `path` if it and its directory can be trusted.
fn read_record(path: &Path) -> Result<Option<MountRecord>, UntrustedRecord> {
    if !path.exists() && fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let refuse = |why: String| UntrustedRecord {
        path: path.to_path_buf(),
        why,
    };
    if let Some(why) = untrusted(dir) {
        return Err(refuse(format!("its directory: {why}")));
    }
    if let Some(why) = untrusted(path) {
        return Err(refuse(why));
    }
    let bytes =
        super::files::read_small(path, 1 << 20, &mut 0).map_err(|e| refuse(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| refuse(format!("not a record ({e})")))
}

impl MountRecord {
    /// Writes the record (0600, atomically) into the registry (0700).
    pub fn write(&self) -> io::Result<()> {
        let dir = registry_dir_for_writing()?;
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let path = record_path(&dir, &self.mountpoint);
        let tmp = dir.join(format!(".record.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes this mount's record if it is still this daemon's.
    pub fn remove(&self) -> io::Result<()> {
        let path = record_path(&registry_dir(), &self.mountpoint);
        match read_record(&path) {
            Ok(Some(r)) if r.pid == self.pid => fs::remove_file(path),
            _ => Ok(()),
        }
    }

    /// That the record's pid is an `mlxk-fs` process of this user: what must hold before it is
    /// signalled (a record pointing at another process must not get it killed).
    pub fn check_daemon(&self) -> Result<(), String> {
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let exe = fs::read_link(proc.join("exe"))
            .map_err(|e| format!("pid {} cannot be inspected ({e})", self.pid))?;
        let name = exe.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        });
        if name.as_deref() != Some("mlxk-fs") {
            return Err(format!(
                "pid {} is {}, not an mlxk-fs daemon",
                self.pid,
                exe.display()
            ));
        }
        let owner = fs::metadata(&proc).map_err(|e| e.to_string())?.uid();
        let me = nix::unistd::geteuid().as_raw();
        if owner != me {
            return Err(format!(
                "pid {} belongs to uid {owner}, not to you (uid {me})",
                self.pid
            ));
        }
        Ok(())
    }

    /// Whether the daemon process is still running.
    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }
}

fn pid_alive(pid: u32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    // A zombie has exited; it only waits for its parent (or init) to reap it.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM still means the process exists.
    matches!(
        kill(Pid::from_raw(pid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// Every trusted record, sorted by mountpoint. Records that cannot be trusted or read are
/// skipped, with a warning saying why.
pub fn list() -> Vec<MountRecord> {
    let mut out: Vec<MountRecord> = fs::read_dir(registry_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| match read_record(&e.path()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out
}

/// The record of the mount at exactly `mountpoint` (`Ok(None)`: there is none).
pub fn find(mountpoint: &Path) -> Result<Option<MountRecord>, UntrustedRecord> {
    read_record(&record_path(&registry_dir(), mountpoint))
}

/// Removes the record of `mountpoint` whatever daemon wrote it (for stale records).
pub fn forget(mountpoint: &Path) -> io::Result<()> {
    match fs::remove_file(record_path(&registry_dir(), mountpoint)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The live mount containing `path` and the path relative to its mountpoint.
pub fn containing(path: &Path) -> Option<(MountRecord, PathBuf)> {
    let canonical = super::cache::canonicalize_lenient(path);
    list()
        .into_iter()
        .filter(MountRecord::alive)
        .filter_map(|r| {
            let rel = canonical.strip_prefix(&r.mountpoint).ok()?.to_path_buf();
            Some((r, rel))
        })
        .max_by_key(|(r, _)| r.mountpoint.as_os_str().len())
}

/// A path inside a live mount with an overlay: where it lives in the overlay directory (which
/// `mlxk` writes directly, not through FUSE) and its path relative to the mountpoint.
#[derive(Debug, Clone)]
pub struct OverlayTarget {
    pub record: MountRecord,
    /// Relative to the mountpoint, `/`-separated.
    pub rel: String,
    pub overlay_path: PathBuf,
}

pub fn overlay_target(path: &Path) -> Option<OverlayTarget> {
    let (record, rel) = containing(path)?;
    let overlay = record.overlay.clone()?;
    let rel: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let overlay_path = rel.iter().fold(overlay, |p, c| p.join(c));
    Some(OverlayTarget {
        record,
        rel: rel.join("/"),
        overlay_path,
    })
}

/// Asks the daemon of the mount at `mountpoint` to drop the kernel's cached entries along
/// `rel` (after something wrote its overlay directory directly).
#[cfg(target_os = "linux")]
pub fn ask_to_invalidate(mountpoint: &Path, rel: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let status = mountpoint.join(STATUS_FILE);
    let p = std::ffi::CString::new(status.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = std::ffi::CString::new(INVALIDATE_XATTR).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings and a live slice for the call's duration.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), rel.as_ptr().cast(), rel.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// No mount exists in this build: nothing to invalidate.
#[cfg(not(target_os = "linux"))]
pub fn ask_to_invalidate(_mountpoint: &Path, _rel: &str) -> io::Result<()> {
    Ok(())
}
