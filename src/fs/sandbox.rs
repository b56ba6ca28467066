//! Defence in depth for a root daemon: the cache seen through a read-only bind mount in a
//! private mount namespace.
//!
//! Passthrough has the kernel re-open a backing file by path with the daemon's rights. The
//! filesystem never grants it to a write-intent open; if that check were ever wrong, the write
//! would still fail here (EROFS/EIO) instead of reaching the cache.
//!
//! The FUSE mount itself must stay in the user's namespace, so it is made first; the daemon then
//! moves into its own namespace, drops its copy of the FUSE mount (so an unmount from outside
//! still ends the session), and remounts the cache read-only. Unmounting on a signal is done by
//! a helper forked back into the original namespace.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

/// The nosuid / nodev / noexec flags of a mount, to keep across a read-only remount.
fn restrictions(flags: FsFlags) -> MsFlags {
    let mut keep = MsFlags::empty();
    for (have, set) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if flags.contains(have) {
            keep |= set;
        }
    }
    keep
}

pub struct PrivateCache {
    original_ns: File,
    mountpoint: CString,
    /// Whether every mount at or below the cache's root is read-only here (checked, not
    /// assumed: what `mlxk-fs status` reports as `cache_read_only`).
    pub read_only: bool,
}

impl PrivateCache {
    /// Enters a private mount namespace with `cache_root` read-only. Must be called while the
    /// process is single-threaded (unshare of the mount namespace requires it).
    pub fn enter(cache_root: &Path, mountpoint: &Path) -> io::Result<PrivateCache> {
        let original_ns = File::open("/proc/self/ns/mnt")?;
        let mountpoint_c =
            CString::new(mountpoint.as_os_str().as_bytes()).map_err(io::Error::other)?;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Nothing done here may propagate back to the user's namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;
        umount2(mountpoint, MntFlags::MNT_DETACH)?;
        // Copies of other FUSE mounts (other mlxk-fs daemons among them) would pin their
        // superblocks: their owners' unmounts would then never end their sessions.
        for m in super::mountinfo::read().iter().filter(|m| m.is_fuse()) {
            let _ = umount2(&m.mountpoint, MntFlags::MNT_DETACH);
        }
        mount(
            Some(cache_root),
            cache_root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
        mount(
            None::<&str>,
            cache_root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
        // The bind is recursive, the read-only flag is not: each mount below the cache's root
        // (a disk mounted under a repo, a bind of another directory) is made read-only too,
        // keeping its other restrictions.
        let below = |m: &&super::mountinfo::MountEntry| {
            m.mountpoint != cache_root && m.mountpoint.starts_with(cache_root)
        };
        for m in super::mountinfo::read().iter().filter(below) {
            let keep = statvfs(&m.mountpoint).map_or(MsFlags::empty(), |s| restrictions(s.flags()));
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep;
            if let Err(e) = mount(
                None::<&str>,
                &m.mountpoint,
                None::<&str>,
                flags,
                None::<&str>,
            ) {
                tracing::warn!(mount = %m.mountpoint.display(), "cannot make it read-only: {e}");
            }
        }
        // What is true, not what was asked for: every mount at or below the root read-only.
        let read_only = super::mountinfo::read()
            .iter()
            .filter(|m| m.mountpoint.starts_with(cache_root))
            .all(|m| {
                let ro = statvfs(&m.mountpoint)
                    .is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY));
                if !ro {
                    tracing::warn!(mount = %m.mountpoint.display(), "writable below the read-only cache");
                }
                ro
            });
        Ok(PrivateCache {
            read_only,
            original_ns,
            mountpoint: mountpoint_c,
        })
    }

    /// Lazily detaches the FUSE mount in the user's namespace, from a helper process that
    /// joins it (a multi-threaded process cannot).
    pub fn detach_outside(&self) -> io::Result<()> {
        let ns_fd = self.original_ns.as_raw_fd();
        let path = self.mountpoint.clone();
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe syscalls run (setns, umount2), on
        // a path allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0
                    || libc::umount2(path.as_ptr(), libc::MNT_DETACH) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "unmount helper failed ({status})"
            )))
        }
    }
}
