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

pub struct PrivateCache {
    original_ns: File,
    mountpoint: CString,
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
        Ok(PrivateCache {
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
