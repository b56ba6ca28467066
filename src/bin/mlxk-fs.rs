//! `mlxk-fs`: the FUSE filesystem that presents the HF cache as MLX workspaces.

use std::process::ExitCode;

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    mlxk_fs::cli::fs::mlxk_fs_main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    eprintln!("mlxk-fs: the mount is Linux-only in this build; see macfuse/README.md");
    ExitCode::from(1)
}
