//! A model directory's files, wherever they live: a cache snapshot (links into blobs/) or a
//! workspace (plain files).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One file of a model directory.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Path relative to the model directory, `/`-separated.
    pub rel_path: String,
    /// The path as it stands in the model directory (a link, in a snapshot).
    pub path: PathBuf,
    pub state: FileState,
}

#[derive(Debug, Clone)]
pub enum FileState {
    /// Readable content at `resolved` (the blob, for a snapshot link).
    Present {
        resolved: PathBuf,
        size: u64,
        modified: SystemTime,
        /// Permission bits (and set-id, sticky) of the content.
        mode: u32,
    },
    /// A link whose target does not exist; `incomplete` when the blob is still `.incomplete`.
    Missing {
        target: Option<PathBuf>,
        incomplete: bool,
    },
    /// A snapshot link pointing outside the cache: never followed.
    EscapesCache { target: PathBuf },
    /// Something that is not a regular file where a file is (a FIFO, a device, a socket):
    /// never opened.
    NotRegular { what: &'static str },
}

impl ModelFile {
    pub fn present(
        rel_path: String,
        path: PathBuf,
        resolved: PathBuf,
        meta: &fs::Metadata,
    ) -> ModelFile {
        ModelFile {
            rel_path,
            path,
            state: FileState::Present {
                resolved,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                mode: std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
            },
        }
    }

    pub fn missing(
        rel_path: String,
        path: PathBuf,
        target: Option<PathBuf>,
        incomplete: bool,
    ) -> ModelFile {
        ModelFile {
            rel_path,
            path,
            state: FileState::Missing { target, incomplete },
        }
    }

    /// A file that is not a regular file (`what` says what it is).
    pub fn not_regular(rel_path: String, path: PathBuf, meta: &fs::Metadata) -> ModelFile {
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        ModelFile {
            rel_path,
            path,
            state: FileState::NotRegular { what },
        }
    }

    /// The path to open for reading, when the content is there.
    pub fn readable(&self) -> Option<&Path> {
        match &self.state {
            FileState::Present { resolved, .. } => Some(resolved),
            _ => None,
        }
    }

    pub fn size(&self) -> Option<u64> {
        match &self.state {
            FileState::Present { size, .. } => Some(*size),
            _ => None,
        }
    }

    pub fn modified(&self) -> Option<SystemTime> {
        match &self.state {
            FileState::Present { modified, .. } => Some(*modified),
            _ => None,
        }
    }

    /// Permission bits of the content, as they were when the directory was read.
    pub fn mode(&self) -> Option<u32> {
        match &self.state {
            FileState::Present { mode, .. } => Some(*mode),
            _ => None,
        }
    }

    /// The file name (last path component).
    pub fn name(&self) -> &str {
        self.rel_path.rsplit('/').next().unwrap_or(&self.rel_path)
    }

    pub fn kind(&self) -> FileKind {
        FileKind::of(&self.rel_path)
    }

    /// A top-level safetensors file: a shard the index describes.
    pub fn is_top_level_shard(&self) -> bool {
        self.is_top_level() && is_safetensors(&self.rel_path)
    }

    /// Top-level file (not in a subdirectory).
    pub fn is_top_level(&self) -> bool {
        !self.rel_path.contains('/')
    }
}

/// What a model file is, by its name: the one place that knows the naming conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Tensor data: safetensors, GGUF, PyTorch pickles, NumPy archives.
    Weights,
    /// `model.safetensors.index.json`.
    Index,
    Tokenizer,
    /// `.mlxk_workspace.json`.
    Sentinel,
    /// Other JSON and Jinja files (config, generation config, chat templates).
    Config,
    Docs,
    Code,
    Other,
}

impl FileKind {
    /// The kind of the file at `rel` (a `/`-separated path or a bare name).
    pub fn of(rel: &str) -> FileKind {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if is_weights_name(name) {
            FileKind::Weights
        } else if name == super::INDEX_FILE {
            FileKind::Index
        } else if name.starts_with("tokenizer")
            || name == "special_tokens_map.json"
            || name == "vocab.json"
            || name == "merges.txt"
        {
            FileKind::Tokenizer
        } else if name == super::SENTINEL_FILE {
            FileKind::Sentinel
        } else if name.ends_with(".json") || name.ends_with(".jinja") {
            FileKind::Config
        } else if name.ends_with(".md") {
            FileKind::Docs
        } else if name.ends_with(".py") {
            FileKind::Code
        } else {
            FileKind::Other
        }
    }

    /// The name `show --files` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Weights => "weights",
            FileKind::Index => "index",
            FileKind::Tokenizer => "tokenizer",
            FileKind::Sentinel => "sentinel",
            FileKind::Config => "config",
            FileKind::Docs => "docs",
            FileKind::Code => "code",
            FileKind::Other => "other",
        }
    }
}

fn is_weights_name(name: &str) -> bool {
    [".safetensors", ".gguf", ".bin", ".npz", ".pt", ".pth"]
        .iter()
        .any(|ext| name.ends_with(ext))
        && !name.ends_with("training_args.bin")
}

/// A safetensors file (any name): what headers are read from and what an index describes.
pub fn is_safetensors(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// The weight files mlx-lm loads (`glob("model*.safetensors")` in the model directory).
pub fn is_mlx_lm_weights(name: &str) -> bool {
    name.starts_with("model") && is_safetensors(name)
}

/// `prefix/name` for the `/`-separated relative paths of a model directory or the cache tree
/// (`name` alone when `prefix` is empty): the one place these paths are joined.
pub fn join_rel(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Opens `path` for reading if it is a regular file. The open is non-blocking, so a FIFO never
/// makes it wait for a writer; FIFOs, devices (a link to `/dev/zero`), sockets and directories
/// are refused with an error naming the file and what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with_metadata(path).map(|(file, _)| file)
}

/// [`open_regular`], with the metadata it checked (one `fstat` for both).
fn open_regular_with_metadata(path: &Path) -> io::Result<(File, fs::Metadata)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    let what = if ft.is_file() {
        return Ok((file, meta));
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is {what}, not a regular file", path.display()),
    ))
}

/// Reads a whole small regular file of at most `limit` bytes, counting what was read. A larger
/// file is an error saying so (never a truncated read that looks complete).
pub fn read_small(path: &Path, limit: u64, bytes_read: &mut u64) -> io::Result<Vec<u8>> {
    let (file, meta) = open_regular_with_metadata(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than the {} limit for this file",
                path.display(),
                limit_text(limit)
            ),
        )
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf)?;
    *bytes_read += buf.len() as u64;
    if buf.len() as u64 > limit {
        return Err(too_large()); // it grew while it was read
    }
    Ok(buf)
}

/// The first (at most) `n` bytes of a regular file, counting what was read.
pub fn read_prefix(path: &Path, n: u64, bytes_read: &mut u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_regular(path)?.take(n).read_to_end(&mut buf)?;
    *bytes_read += buf.len() as u64;
    Ok(buf)
}

fn limit_text(limit: u64) -> String {
    if limit >= 1 << 20 && limit.is_multiple_of(1 << 20) {
        format!("{} MiB", limit >> 20)
    } else if limit >= 1 << 10 && limit.is_multiple_of(1 << 10) {
        format!("{} KiB", limit >> 10)
    } else {
        format!("{limit}-byte")
    }
}

/// Lists a workspace directory's files recursively (symlinks followed, `.git` skipped).
pub fn workspace_files(dir: &Path) -> io::Result<Vec<ModelFile>> {
    let mut out = Vec::new();
    walk_workspace(dir, "", &mut out, 0)?;
    out.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(out)
}

fn walk_workspace(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<ModelFile>,
    depth: usize,
) -> io::Result<()> {
    if depth > 32 {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name == ".git" {
            continue;
        }
        let rel = join_rel(prefix, &name);
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk_workspace(&path, &rel, out, depth + 1)?,
            Ok(meta) if meta.is_file() => {
                let resolved = if entry.file_type()?.is_symlink() {
                    fs::canonicalize(&path).unwrap_or_else(|_| path.clone())
                } else {
                    path.clone()
                };
                out.push(ModelFile::present(rel, path, resolved, &meta));
            }
            Ok(meta) => out.push(ModelFile::not_regular(rel, path, &meta)),
            Err(_) => {
                let target = fs::read_link(&path).ok();
                out.push(ModelFile::missing(rel, path, target, false));
            }
        }
    }
    Ok(())
}
