//! A real `mlxk-fs` mount for tests: the daemon binary in the foreground, with an isolated
//! registry, unmounted (SIGTERM, then a forced detach) when dropped.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Whether this machine can mount FUSE; prints a loud SKIP (or panics under MLXK_REQUIRE_FUSE=1).
pub fn fuse_available(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let have_helper = Command::new("fusermount3").arg("-V").output().is_ok();
    if Path::new("/dev/fuse").exists() && (root || have_helper) {
        return true;
    }
    let msg = format!("SKIP {test}: FUSE is not available (needs /dev/fuse and root or fusermount3 from Debian's fuse3)");
    if std::env::var("MLXK_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{msg} (MLXK_REQUIRE_FUSE=1 makes this a failure)");
    }
    eprintln!("\n========== {msg} ==========\n");
    false
}

pub fn mlxk_fs(state_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlxk-fs"))
        .args(args)
        .env("MLXK_FS_STATE_DIR", state_dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mlxk-fs")
}

pub struct MountGuard {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub state_dir: PathBuf,
    pub record: serde_json::Value,
}

impl MountGuard {
    /// `mlxk-fs mount <mountpoint> --cache <cache> -f <extra>`, returned once it is ready.
    pub fn new(cache: &Path, mountpoint: &Path, state_dir: &Path, extra: &[&str]) -> MountGuard {
        std::fs::create_dir_all(mountpoint).expect("mkdir mountpoint");
        // Never the user's default overlay: each mount's writes stay in its own directory.
        let overlay = state_dir.join(format!(
            "overlay-{}",
            mountpoint
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("mnt")
        ));
        let overlay_args: Vec<&std::ffi::OsStr> = if extra.contains(&"--overlay") {
            vec![]
        } else {
            vec!["--overlay".as_ref(), overlay.as_os_str()]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlxk-fs"))
            .arg("mount")
            .arg(mountpoint)
            .arg("--cache")
            .arg(cache)
            .arg("-f")
            .args(overlay_args)
            .args(extra)
            .env("MLXK_FS_STATE_DIR", state_dir)
            .env("MLXK_FS_REPORT_READY", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mlxk-fs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let json = line
            .trim_end()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("mount did not become ready: {line:?}"));
        MountGuard {
            child: Some(child),
            mountpoint: std::fs::canonicalize(mountpoint).expect("canonical"),
            state_dir: state_dir.to_path_buf(),
            record: serde_json::from_str(json).expect("record"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's counters (the hidden status file).
    pub fn counters(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(".mlxk-fs-status")).expect("status file"))
            .expect("json")
    }

    /// Sends `signal` and waits: on SIGTERM or SIGINT the daemon unmounts and exits 0.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
        child.wait().expect("wait")
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        // Whatever happened, leave no mount behind.
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}
