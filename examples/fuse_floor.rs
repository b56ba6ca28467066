//! The floor of a listing through FUSE on this machine (issue 19): a file system that does no
//! work at all — a fixed tree in memory of the shape `ls -lR` meets in the mount (root, one org,
//! N model directories of nine files each) — served by fuser with the daemon's own session
//! settings (worker threads, one cloned /dev/fuse fd per worker, READDIRPLUS, the same entry
//! and attribute times). Whatever `ls -lR` of it takes is the cost of the requests alone: the
//! kernel's, fuser's and the hand-overs between `ls` and the workers.
//!
//!   fuse_floor MOUNTPOINT MODELS [NAME...]   (the files of each model; default: nine names
//!                                             as a two-shard model shows them)
//!
//! Runs in the foreground until the mount is unmounted (`umount MOUNTPOINT`).

use std::ffi::OsStr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, MountOption, OpenFlags, ReplyAttr, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

/// The files of a model directory as the mount shows a two-shard model.
const FILES: [&str; 9] = [
    ".mlxk_workspace.json",
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
const ROOT: u64 = 1;
const ORG: u64 = 2;
const FIRST_MODEL: u64 = 3;

/// The tree: inode numbers say where a node is, so no table is needed.
struct Floor {
    models: u64,
    files: Vec<String>,
}

/// The daemon's entry and attribute time.
const TTL: Duration = Duration::from_secs(1);
/// The daemon's worker threads by default.
const THREADS: usize = 4;

enum Node {
    Dir,
    File,
}

impl Floor {
    fn first_file(&self) -> u64 {
        FIRST_MODEL + self.models
    }

    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT | ORG => Some(Node::Dir),
            i if i < self.first_file() => Some(Node::Dir),
            i if i < self.first_file() + self.models * self.files.len() as u64 => Some(Node::File),
            _ => None,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, blksize) = match self.node(ino)? {
            Node::Dir => (FileType::Directory, 0o755, 0, 4096),
            Node::File => (FileType::RegularFile, 0o644, 300, 1 << 20),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink: if matches!(kind, FileType::Directory) {
                2
            } else {
                1
            },
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize,
        })
    }

    /// The names and inodes of a directory, `.` and `..` first.
    fn entries(&self, ino: u64) -> Vec<(u64, String)> {
        let mut out = vec![(ino, ".".to_string()), (ino, "..".to_string())];
        match ino {
            ROOT => out.push((ORG, "mlx-community".into())),
            ORG => out
                .extend((0..self.models).map(|i| (FIRST_MODEL + i, format!("bench-model-{i:04}")))),
            m => {
                let base = self.first_file() + (m - FIRST_MODEL) * self.files.len() as u64;
                out.extend(
                    self.files
                        .iter()
                        .enumerate()
                        .map(|(j, f)| (base + j as u64, f.clone())),
                );
            }
        }
        out
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let name = name.to_str()?;
        match parent {
            ROOT => (name == "mlx-community").then_some(ORG),
            ORG => {
                let i: u64 = name.strip_prefix("bench-model-")?.parse().ok()?;
                (i < self.models).then_some(FIRST_MODEL + i)
            }
            m if m < self.first_file() => {
                let j = self.files.iter().position(|f| f == name)? as u64;
                Some(self.first_file() + (m - FIRST_MODEL) * self.files.len() as u64 + j)
            }
            _ => None,
        }
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent.0, name).and_then(|i| self.attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        for (i, (child, name)) in self.entries(ino.0).into_iter().enumerate() {
            if (i as u64) < offset {
                continue;
            }
            let Some(attr) = self.attr(child) else {
                continue;
            };
            if reply.add(
                INodeNo(child),
                i as u64 + 1,
                name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mountpoint), Some(Ok(models))) = (args.first(), args.get(1).map(|n| n.parse()))
    else {
        eprintln!("usage: fuse_floor MOUNTPOINT MODELS [NAME...]");
        return ExitCode::from(2);
    };
    let mut files: Vec<String> = args[2..].to_vec();
    if files.is_empty() {
        files = FILES.iter().map(|f| f.to_string()).collect();
    }
    files.sort();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("fuse-floor".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let fs = Floor { models, files };
    match fuser::mount(fs, mountpoint, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fuse_floor: cannot mount {mountpoint}: {e}");
            ExitCode::FAILURE
        }
    }
}
