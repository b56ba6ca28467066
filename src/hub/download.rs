//! One file from the hub onto disk: into a partial file (resumed with a Range request from the
//! bytes it holds), every byte hashed on the way (sha256 for LFS files, the git blob sha1
//! otherwise) and checked against the tree's etag before the partial is renamed into place. A
//! dropped connection is retried with backoff, resuming; only attempts without progress count.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::client::{HubClient, RepoFile};
use super::layout::io_err;
use super::HubError;

/// Attempts in a row that made no progress before a download gives up.
const MAX_STALLED_ATTEMPTS: u32 = 5;
const CHUNK: usize = 1 << 20;

/// What to download and where.
pub(crate) struct Fetch<'a> {
    pub client: &'a HubClient,
    pub repo: &'a str,
    pub commit: &'a str,
    pub file: &'a RepoFile,
    /// The partial file (`<etag>.incomplete` in the cache).
    pub partial: &'a Path,
    /// Where the verified file is renamed to.
    pub dest: &'a Path,
    /// Set when another download of the same pull failed: stop at the next chunk, keeping the
    /// partial for a later resume.
    pub cancel: &'a AtomicBool,
}

/// How a fetch ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// Bytes received over the network (those already in the partial file not counted).
    Done {
        received: u64,
        resumed_from: u64,
    },
    Cancelled,
}

enum Hasher {
    Lfs(Sha256),
    Git(Sha1),
}

impl Hasher {
    fn new(file: &RepoFile) -> Hasher {
        match file.lfs_sha256 {
            Some(_) => Hasher::Lfs(Sha256::new()),
            None => {
                let mut h = Sha1::new();
                h.update(format!("blob {}\0", file.size).as_bytes());
                Hasher::Git(h)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Lfs(h) => h.update(bytes),
            Hasher::Git(h) => h.update(bytes),
        }
    }

    fn finish(self) -> (&'static str, String) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match self {
            Hasher::Lfs(h) => ("sha256", hex(&h.finalize())),
            Hasher::Git(h) => ("git blob sha1", hex(&h.finalize())),
        }
    }
}

/// Downloads `f.file` to `f.dest` through `f.partial`; `on_bytes` hears every chunk received.
pub(crate) fn fetch(f: &Fetch<'_>, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<Fetched, HubError> {
    let size = f.file.size;
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(f.partial)
        .map_err(io_err(f.partial, "cannot open the partial download"))?;
    let mut hasher = Hasher::new(f.file);
    let mut have = out
        .metadata()
        .map_err(io_err(f.partial, "cannot stat"))?
        .len();
    if have > size {
        // Longer than the file can be: nothing in it can be trusted.
        out.set_len(0)
            .map_err(io_err(f.partial, "cannot truncate"))?;
        have = 0;
    }
    // The bytes already there are hashed first; the download continues after them.
    if have > 0 {
        hash_prefix(&mut out, have, &mut hasher).map_err(io_err(f.partial, "cannot read"))?;
    }
    out.seek(SeekFrom::Start(have))
        .map_err(io_err(f.partial, "cannot seek"))?;
    let resumed_from = have;
    let mut received = 0u64;
    let mut stalled = 0u32;
    let mut last_error: Option<HubError> = None;
    let mut buf = vec![0u8; CHUNK];
    while have < size {
        if f.cancel.load(Ordering::Relaxed) {
            return Ok(Fetched::Cancelled);
        }
        if stalled > 0 {
            if stalled > MAX_STALLED_ATTEMPTS {
                return Err(last_error.unwrap_or_else(|| HubError::Network {
                    url: f.file.path.clone(),
                    reason: "the connection keeps dropping".into(),
                }));
            }
            std::thread::sleep(Duration::from_millis(100 << (stalled - 1).min(6)));
        }
        let mut stream = match f.client.open_file(f.repo, f.commit, &f.file.path, have) {
            Ok(s) => s,
            Err(e @ HubError::Network { .. }) => {
                tracing::warn!(file = %f.file.path, "{e}; retrying");
                last_error = Some(e);
                stalled += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if stream.offset != have {
            if stream.offset != 0 {
                return Err(HubError::Protocol {
                    url: f.file.path.clone(),
                    reason: format!(
                        "asked for bytes from {have}, got them from {}",
                        stream.offset
                    ),
                });
            }
            // The server ignored the Range: start over.
            out.set_len(0)
                .map_err(io_err(f.partial, "cannot truncate"))?;
            out.seek(SeekFrom::Start(0))
                .map_err(io_err(f.partial, "cannot seek"))?;
            hasher = Hasher::new(f.file);
            have = 0;
        }
        let before = have;
        loop {
            if f.cancel.load(Ordering::Relaxed) {
                return Ok(Fetched::Cancelled);
            }
            let n = match stream.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(file = %f.file.path, at = have, "connection dropped ({e}); resuming");
                    last_error = Some(HubError::Network {
                        url: f.file.path.clone(),
                        reason: e.to_string(),
                    });
                    break;
                }
            };
            if have + n as u64 > size {
                drop(out);
                let _ = fs::remove_file(f.partial);
                return Err(HubError::Verification {
                    file: f.file.path.clone(),
                    what: "the size",
                    expected: size.to_string(),
                    actual: format!("more than {size}"),
                });
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                return Err(write_error(f, e, have));
            }
            hasher.update(&buf[..n]);
            have += n as u64;
            received += n as u64;
            on_bytes(n as u64);
        }
        stalled = if have > before { 0 } else { stalled + 1 };
        if have < size && last_error.is_none() {
            last_error = Some(HubError::Network {
                url: f.file.path.clone(),
                reason: format!("the connection ended at byte {have} of {size}"),
            });
        }
        if have < size && stalled == 0 {
            // Progress was made before the drop: try again at once.
            stalled = 1;
        }
    }
    if let Err(e) = out.sync_all() {
        return Err(write_error(f, e, have));
    }
    drop(out);
    let (what, actual) = hasher.finish();
    if actual != f.file.etag() {
        let _ = fs::remove_file(f.partial);
        return Err(HubError::Verification {
            file: f.file.path.clone(),
            what,
            expected: f.file.etag().to_string(),
            actual,
        });
    }
    fs::rename(f.partial, f.dest).map_err(io_err(f.dest, "cannot move the download into place"))?;
    Ok(Fetched::Done {
        received,
        resumed_from,
    })
}

/// [`fetch`] as the download loops count it: `(received, resumed_from)`, `None` if cancelled.
pub(crate) fn fetch_counted(
    f: &Fetch<'_>,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Option<(u64, u64)>, HubError> {
    Ok(match fetch(f, on_bytes)? {
        Fetched::Done {
            received,
            resumed_from,
        } => Some((received, resumed_from)),
        Fetched::Cancelled => None,
    })
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Hasher) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut rest = len;
    let mut buf = vec![0u8; CHUNK];
    while rest > 0 {
        let want = rest.min(CHUNK as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        rest -= want as u64;
    }
    Ok(())
}

/// A failed write: disk full says how much is missing (the partial stays for a resume).
fn write_error(f: &Fetch<'_>, e: io::Error, written: u64) -> HubError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        HubError::DiskFull {
            file: f.file.path.clone(),
            needed: f.file.size - written,
            written,
            total: f.file.size,
            partial: f.partial.to_path_buf(),
        }
    } else {
        HubError::Io {
            path: f.partial.to_path_buf(),
            what: "cannot write the download",
            source: e,
        }
    }
}
