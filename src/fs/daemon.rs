//! Mounting and serving: preflight checks (stale mounts, double mounts), the FUSE session,
//! signal handling for a clean unmount, the registry record and the cache watcher.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use super::filesystem::MlxkFs;
use super::lower::LowerTree;
use super::mountinfo;
use super::namespace::{Invalidation, Namespace};
use super::sandbox::PrivateCache;
use super::viewcache::ViewCache;
use crate::store::cache::HubCache;
use crate::store::mounts::{self, MountRecord};
use crate::store::overlay::OverlayDir;
use crate::store::sentinel::iso8601;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub cache: PathBuf,
    /// Where every write lands.
    pub overlay: PathBuf,
    pub allow_other: bool,
    pub passthrough: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Extended attributes served (else the kernel is told the file system has none).
    pub xattrs: bool,
    /// Where views' virtual files are kept across mounts (`None`: not kept).
    pub view_cache: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("mountpoint {0} does not exist (create it first: mkdir -p {0})")]
    MountpointMissing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("{0} is a stale mount left by an mlxk-fs daemon that is gone (\"transport endpoint is not connected\"); clear it with `mlxk-fs umount {0}` (or `fusermount3 -uz {0}`), then mount again")]
    StaleMount(PathBuf),
    #[error("{path} is already an mlxk-fs mount (pid {pid}); `mlxk-fs umount {path}` first")]
    AlreadyMounted { path: PathBuf, pid: u32 },
    #[error("overlay directory {overlay} is inside the cache {cache}: the cache is never written; choose another --overlay")]
    OverlayInCache { overlay: PathBuf, cache: PathBuf },
    #[error("the cache {cache} is inside overlay directory {overlay}; choose another --overlay")]
    CacheInOverlay { overlay: PathBuf, cache: PathBuf },
    #[error("overlay directory {0} is inside the mountpoint; choose a directory outside it")]
    OverlayInMount(PathBuf),
    #[error("mountpoint {mountpoint} is inside the cache {cache}: the mount would hide part of the cache from the daemon serving it; choose a directory outside the cache (e.g. ~/mlx)")]
    MountpointInCache { mountpoint: PathBuf, cache: PathBuf },
    #[error("overlay directory {overlay} is already used by the mount at {mountpoint} (pid {pid}); two daemons must not write one overlay")]
    OverlayBusy {
        overlay: PathBuf,
        mountpoint: PathBuf,
        pid: u32,
    },
    #[error("cannot use overlay directory {path}: {source}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("/dev/fuse (mode {mode:o}, owner uid {owner}, group gid {group}) may not be opened by uid {uid}: this system lets only root mount FUSE filesystems, and fusermount3 refuses too (it opens the device with your rights). An administrator can allow users with `chmod 0666 /dev/fuse` (the mode fuse3's udev rule sets), or mount as root")]
    DeviceRefused {
        mode: u32,
        owner: u32,
        group: u32,
        uid: u32,
    },
    #[error("cannot open the cache: {0}")]
    Cache(#[from] crate::store::StoreError),
    #[error("cannot mount {path}: {source}{}", mount_hint(.source))]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn mount_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if !fusermount_installed() => {
            " (unprivileged mounts need fusermount3: install Debian's `fuse3` package, or run as root)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => " (is the fuse kernel module loaded? /dev/fuse must exist)",
        _ => "",
    }
}

/// Whether `fusermount3` (fuser's fallback for users mount(2) refuses) is on the PATH.
fn fusermount_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
    })
}

/// Whether `path` is a mountpoint of an mlxk-fs filesystem (per /proc/self/mountinfo).
pub fn is_mlxk_mount(path: &Path) -> bool {
    mountinfo::read()
        .iter()
        .any(|m| m.mountpoint == path && m.is_mlxk())
}

/// The kernel caps a FUSE mount's readahead at 128 KiB during init; 1 MiB (what `max_pages`
/// allows per request) is set afterwards through the mount's bdi, so sequential reads served by
/// the daemon arrive as 1 MiB requests. Needs root; without it the default stays.
fn raise_readahead(mountpoint: &Path) {
    // The device number comes from mountinfo: a stat of the mountpoint would ask this very
    // daemon, whose request loop is not running yet.
    let dev = mountinfo::read()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == mountpoint)
        .map(|m| m.device);
    if let Some(dev) = dev {
        let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        match std::fs::write(&knob, "1024") {
            Ok(()) => tracing::debug!(%knob, "readahead raised to 1 MiB"),
            Err(e) => tracing::debug!(%knob, "readahead left at the default: {e}"),
        }
    }
}

/// Checks and opens the overlay directory: outside the cache (which is never written), not
/// holding the cache, outside the mountpoint, and not in use by another live mount.
fn open_overlay(dir: &Path, cache: &Path, mountpoint: &Path) -> Result<OverlayDir, DaemonError> {
    let wrap = |source| DaemonError::Overlay {
        path: dir.to_path_buf(),
        source,
    };
    let planned =
        crate::store::cache::canonicalize_lenient(&std::path::absolute(dir).map_err(wrap)?);
    if planned.starts_with(cache) {
        return Err(DaemonError::OverlayInCache {
            overlay: planned,
            cache: cache.to_path_buf(),
        });
    }
    if cache.starts_with(&planned) {
        return Err(DaemonError::CacheInOverlay {
            overlay: planned,
            cache: cache.to_path_buf(),
        });
    }
    if planned.starts_with(mountpoint) {
        return Err(DaemonError::OverlayInMount(planned));
    }
    if let Some(r) = mounts::list()
        .into_iter()
        .find(|r| r.alive() && r.overlay.as_deref() == Some(planned.as_path()))
    {
        return Err(DaemonError::OverlayBusy {
            overlay: planned,
            mountpoint: r.mountpoint,
            pid: r.pid,
        });
    }
    OverlayDir::open(&planned).map_err(wrap)
}

/// Checks the mountpoint before mounting. Returns its canonical path.
pub fn preflight(mountpoint: &Path) -> Result<PathBuf, DaemonError> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(DaemonError::StaleMount(mountpoint.to_path_buf()));
        }
        Err(_) => return Err(DaemonError::MountpointMissing(mountpoint.to_path_buf())),
        Ok(m) if !m.is_dir() => {
            return Err(DaemonError::MountpointNotDir(mountpoint.to_path_buf()))
        }
        Ok(_) => {}
    }
    let canonical = std::fs::canonicalize(mountpoint)?;
    // An untrusted record is ignored here: `mlxk-fs umount` and `status` name it.
    if let Some(r) = mounts::find(&canonical)
        .ok()
        .flatten()
        .filter(MountRecord::alive)
    {
        if is_mlxk_mount(&canonical) {
            return Err(DaemonError::AlreadyMounted {
                path: canonical,
                pid: r.pid,
            });
        }
    }
    Ok(canonical)
}

/// Mounts and serves until unmounted (SIGINT / SIGTERM, `mlxk-fs umount`, or an unmount from
/// outside). `on_ready` runs once the mount answers requests.
pub fn serve(opts: &MountOptions, on_ready: impl FnOnce(&MountRecord)) -> Result<(), DaemonError> {
    let mountpoint = preflight(&opts.mountpoint)?;
    let cache = HubCache::open(&opts.cache)?;
    let cache_root = std::fs::canonicalize(cache.root())?;
    // A daemon that reads the cache through its own mount waits on itself (unprivileged
    // daemons have no private view of the cache to escape it).
    if cache.contains(&mountpoint) {
        return Err(DaemonError::MountpointInCache {
            mountpoint,
            cache: cache_root,
        });
    }
    let overlay = open_overlay(&opts.overlay, &cache_root, &mountpoint)?;
    // Modes of what users create are exactly what they ask for (the kernel applied their umask).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    // Signals are taken by one thread with sigwait; block them before any thread exists so
    // that every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP); // ignored: a daemon outlives its terminal
    signals.thread_block().map_err(io::Error::from)?;

    let overlay_root = overlay.root().to_path_buf();
    let mut overlay = overlay;
    // Still single-threaded: the daemon works from inside its overlay from here on.
    overlay
        .work_from_inside()
        .map_err(|source| DaemonError::Overlay {
            path: overlay_root.clone(),
            source,
        })?;
    let mut lower = LowerTree::new(cache);
    match &opts.view_cache {
        // The cache is never written, not even by this.
        Some(dir) if crate::store::cache::canonicalize_lenient(dir).starts_with(&cache_root) => {
            tracing::warn!(dir = %dir.display(), "view cache directory is inside the HF cache: not kept");
        }
        Some(dir) => lower = lower.with_view_cache(ViewCache::new(dir, &cache_root)),
        None => {}
    }
    let ns = Arc::new(Namespace::new(lower, overlay));
    let fs = MlxkFs::new(ns.clone(), opts.passthrough, opts.xattrs);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("mlxk-fs".into()),
        MountOption::Subtype("mlxk-fs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    let mount_error = |source| DaemonError::Mount {
        path: mountpoint.clone(),
        source,
    };
    // fuser falls back to fusermount3 when mount(2) refuses a user; a device the user may not
    // open is refused by fusermount3 as well (it opens /dev/fuse with the user's rights), so
    // that case is said plainly instead of ending in a bare EACCES.
    if !nix::unistd::geteuid().is_root() {
        if let Some(device) = fuse_device_refused() {
            return Err(device);
        }
    }
    let mut session = Session::new(fs, &mountpoint, &config).map_err(mount_error)?;
    raise_readahead(&mountpoint);
    let mut unmounter = session.unmount_callable();
    // Still single-threaded here: the one moment the daemon can change mount namespace.
    let sandbox = if nix::unistd::geteuid().is_root() {
        match PrivateCache::enter(&cache_root, &mountpoint) {
            Ok(p) => {
                // fuser's own unmount would act in this namespace, where the mount is gone;
                // consume it so that only the helper (below) ever unmounts.
                let _ = unmounter.unmount();
                Some(p)
            }
            Err(e) => {
                tracing::warn!("cache not isolated behind a read-only bind mount ({e})");
                None
            }
        }
    } else {
        None
    };
    let isolated = sandbox.as_ref().is_some_and(|s| s.read_only);
    let notifier = session.notifier();
    let (inval_tx, inval_rx) = std::sync::mpsc::channel::<Invalidation>();
    ns.set_invalidator(inval_tx);
    std::thread::Builder::new()
        .name("mlxk-fs-inval".into())
        .spawn(move || {
            // Errors mean "the kernel holds nothing for it".
            for inv in inval_rx {
                let _ = match inv {
                    Invalidation::Entry(parent, name) => {
                        notifier.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name))
                    }
                    Invalidation::Inode(ino) => notifier.inval_inode(fuser::INodeNo(ino), 0, 0),
                };
            }
        })?;
    let (ahead_tx, ahead_rx) = std::sync::mpsc::channel::<String>();
    ns.lower().set_readahead(ahead_tx);
    // Weak: the namespace holds the sender, so the thread ends when the namespace goes.
    let ahead_ns = Arc::downgrade(&ns);
    std::thread::Builder::new()
        .name("mlxk-fs-ahead".into())
        .spawn(move || {
            for repo in ahead_rx {
                let Some(ns) = ahead_ns.upgrade() else { return };
                ns.lower().build_ahead(&repo);
            }
        })?;
    if let Err(e) = super::watch::start(ns.clone()) {
        tracing::warn!(
            "cannot watch the cache for changes ({e}): new models appear within a second anyway"
        );
    }
    let signal_mountpoint = mountpoint.clone();
    std::thread::Builder::new()
        .name("mlxk-fs-signals".into())
        .spawn(move || loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => continue,
                Ok(sig) => {
                    tracing::info!(?sig, "unmounting");
                    if let Some(sandbox) = &sandbox {
                        if let Err(e) = sandbox.detach_outside() {
                            tracing::error!("cannot unmount {}: {e}", signal_mountpoint.display());
                        }
                    } else if let Err(e) = unmounter.unmount() {
                        // Busy (a file is still open): detach now; the session ends when the
                        // last open file is closed. A signal must always end the mount.
                        tracing::warn!("unmount failed ({e}); detaching lazily");
                        if let Err(e) = detach(&signal_mountpoint) {
                            tracing::error!("cannot detach {}: {e}", signal_mountpoint.display());
                        }
                    }
                    return;
                }
                Err(_) => return,
            }
        })?;

    let record = MountRecord {
        mountpoint: mountpoint.clone(),
        cache: cache_root,
        overlay: Some(overlay_root),
        pid: std::process::id(),
        passthrough: ns.passthrough.load(std::sync::atomic::Ordering::Relaxed),
        started_at: iso8601(std::time::SystemTime::now()),
        version: crate::VERSION.to_string(),
        log_file: opts.log_file.clone(),
        cache_read_only: isolated,
        xattrs: opts.xattrs,
    };
    if let Err(e) = record.write() {
        tracing::warn!("cannot write the mount registry record: {e}");
    }
    on_ready(&record);
    let result = session.run();
    let _ = record.remove();
    result.map_err(DaemonError::Io)
}

/// Set in the environment of a daemon started by [`spawn_background`]: it then reports
/// `READY <record>` or `ERROR <message>` on stdout, once, and detaches stdout.
pub const READY_ENV: &str = "MLXK_FS_REPORT_READY";

/// Reports readiness to a waiting parent (see [`READY_ENV`]), then points stdout at /dev/null.
pub fn report_ready(record: &MountRecord) {
    if std::env::var_os(READY_ENV).is_none() {
        return;
    }
    let json = serde_json::to_string(record).unwrap_or_default();
    report_line(&format!("READY {json}"));
}

/// Reports a failure to a waiting parent (see [`READY_ENV`]).
pub fn report_error(message: &str) {
    if std::env::var_os(READY_ENV).is_some() {
        report_line(&format!("ERROR {}", message.replace('\n', " ")));
    }
}

fn report_line(line: &str) {
    use std::io::Write;
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Starts the daemon in the background (`exe mount --foreground ...`) and returns once the
/// mount works, or with the daemon's own error when it does not.
pub fn spawn_background(
    exe: &Path,
    args: &[String],
    log_file: Option<&Path>,
) -> Result<MountRecord, DaemonError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let stderr = match log_file {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(exe)
        .args(args)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Its own process group: Ctrl-C in the shell that mounted must not unmount.
        .process_group(0)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no pipe to the daemon"))?;
    let mut line = String::new();
    io::BufReader::new(stdout).read_line(&mut line)?;
    if let Some(json) = line.trim_end().strip_prefix("READY ") {
        return serde_json::from_str(json).map_err(|e| DaemonError::Io(io::Error::other(e)));
    }
    let status = child.wait()?;
    let message = line
        .trim_end()
        .strip_prefix("ERROR ")
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!("the mlxk-fs daemon exited ({status}) before the mount was ready")
        });
    Err(DaemonError::Io(io::Error::other(message)))
}

/// What `unmount` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmounted {
    /// The daemon was asked to unmount; the mount is gone. `exited` is false while files it
    /// serves are still open somewhere (it exits when they are closed).
    Daemon { pid: u32, exited: bool },
    /// Detached directly: a stale mount (its daemon gone), or a serving mlxk-fs mount whose
    /// daemon has no record here (mounted with another `MLXK_FS_STATE_DIR`): it cannot be
    /// asked, and exits once the mount is gone and the files it serves are closed.
    Detached { stale: bool },
}

/// Unmounts an mlxk-fs mount: asks its daemon (SIGTERM) and waits for it, or detaches a
/// stale mount whose daemon is gone.
pub fn unmount(mountpoint: &Path) -> Result<Unmounted, DaemonError> {
    let stale =
        matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    let canonical = if stale {
        crate::store::cache::normalize_lexically(&std::path::absolute(mountpoint)?)
    } else {
        std::fs::canonicalize(mountpoint)?
    };
    let record = mounts::find(&canonical).map_err(|e| DaemonError::Io(io::Error::other(e)))?;
    if let Some(record) = record.filter(MountRecord::alive) {
        if !stale {
            // Signalled only if it is this user's daemon, serving this mountpoint.
            record.check_daemon().map_err(|why| {
                DaemonError::Io(io::Error::other(format!(
                    "refusing to signal the process of {}'s record: {why}",
                    canonical.display()
                )))
            })?;
            if !is_mlxk_mount(&canonical) {
                return Err(DaemonError::Io(io::Error::other(format!(
                    "refusing to signal pid {}: {} is not an mlxk-fs mount (yet, or any more)",
                    record.pid,
                    canonical.display()
                ))));
            }
            let pid = nix::unistd::Pid::from_raw(record.pid as i32);
            nix::sys::signal::kill(pid, Signal::SIGTERM).map_err(io::Error::from)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while record.alive() && std::time::Instant::now() < deadline {
                if !is_mlxk_mount(&canonical) {
                    // Unmounted; give the daemon a moment to finish, no more.
                    let grace = std::time::Instant::now() + std::time::Duration::from_secs(2);
                    while record.alive() && std::time::Instant::now() < grace {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !is_mlxk_mount(&canonical) {
                let _ = mounts::forget(&canonical);
                return Ok(Unmounted::Daemon {
                    pid: record.pid,
                    exited: !record.alive(),
                });
            }
        }
    }
    if !stale && !is_mlxk_mount(&canonical) {
        let _ = mounts::forget(&canonical);
        return Err(DaemonError::Io(io::Error::other(format!(
            "{} is not an mlxk-fs mount",
            canonical.display()
        ))));
    }
    detach(&canonical)?;
    let _ = mounts::forget(&canonical);
    Ok(Unmounted::Detached { stale })
}

/// `/dev/fuse` exists but this user may not open it: the error that says why and what helps.
fn fuse_device_refused() -> Option<DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let refused = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
    {
        Ok(_) => false,
        Err(e) => matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)),
    };
    if !refused {
        return None;
    }
    let meta = std::fs::metadata(FUSE_DEVICE).ok()?;
    Some(DaemonError::DeviceRefused {
        mode: meta.mode() & 0o777,
        owner: meta.uid(),
        group: meta.gid(),
        uid: nix::unistd::getuid().as_raw(),
    })
}

const FUSE_DEVICE: &str = "/dev/fuse";

/// Lazily detaches a mount: umount2(MNT_DETACH) as root, else `fusermount3 -uz`.
fn detach(path: &Path) -> Result<(), DaemonError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(path)
                .status()
                .map_err(|e| {
                    io::Error::other(format!(
                        "cannot run fusermount3 ({e}): install Debian's `fuse3` package"
                    ))
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(DaemonError::Io(io::Error::other(format!(
                    "fusermount3 -uz {} failed ({status})",
                    path.display()
                ))))
            }
        }
        Err(e) => Err(DaemonError::Io(io::Error::from(e))),
    }
}

/// mlxk-fs mounts in the mount table that no live daemon owns.
pub fn stale_mounts() -> Vec<PathBuf> {
    mountinfo::read()
        .into_iter()
        .filter(|m| m.is_mlxk())
        .map(|m| m.mountpoint)
        .filter(
            |p| matches!(std::fs::metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
        )
        .collect()
}

/// What `mlxk-fs status` knows of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// Its daemon is alive and the mount is in the mount table.
    Active,
    /// Mounted, but no daemon serves it (killed): `mlxk-fs umount` clears it.
    Stale,
    /// Its daemon is alive and has not mounted yet.
    Starting,
}

impl MountState {
    pub fn as_str(self) -> &'static str {
        match self {
            MountState::Active => "active",
            MountState::Stale => "stale",
            MountState::Starting => "starting",
        }
    }
}

/// One mount as `status` reports it.
#[derive(Debug, Clone)]
pub struct MountStatus {
    pub mountpoint: PathBuf,
    pub state: MountState,
    /// Its registry record; `None` for a stale mount the registry no longer knows.
    pub record: Option<MountRecord>,
    /// The daemon's counters (its status file), for an active mount.
    pub counters: Option<serde_json::Value>,
}

/// Every registered mount and every stale mlxk-fs mount in the mount table. Records whose
/// daemon is gone and whose mount is gone too are removed from the registry.
pub fn status() -> Vec<MountStatus> {
    let mut out = Vec::new();
    for record in mounts::list() {
        let state = match (record.alive(), is_mlxk_mount(&record.mountpoint)) {
            (true, true) => MountState::Active,
            (false, true) => MountState::Stale,
            (true, false) => MountState::Starting,
            (false, false) => {
                if let Err(e) = mounts::forget(&record.mountpoint) {
                    tracing::debug!(mountpoint = %record.mountpoint.display(), "cannot forget a gone mount: {e}");
                }
                continue;
            }
        };
        let counters = (state == MountState::Active)
            .then(|| std::fs::read(record.mountpoint.join(super::namespace::STATUS_FILE)).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(MountStatus {
            mountpoint: record.mountpoint.clone(),
            state,
            record: Some(record),
            counters,
        });
    }
    for mountpoint in stale_mounts() {
        if !out.iter().any(|s| s.mountpoint == mountpoint) {
            out.push(MountStatus {
                mountpoint,
                state: MountState::Stale,
                record: None,
                counters: None,
            });
        }
    }
    out
}
