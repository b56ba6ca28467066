//! What the daemon learned from a snapshot's files (the synthesized sentinel, the rebuilt
//! index, whether the cached index differs), kept on disk across mounts so that a remount
//! reads no header again.
//!
//! Keyed by what the answer depends on: the snapshot (repo, sha, time) and, for every file,
//! its path, where its content lives (a blob is named by its content's hash and never changes
//! under that name), size, mtime and mode — a new revision, a blob replaced or a file gone is
//! a new key. Also in the key: this program's version (the health rules and the JSON it
//! writes change between versions).
//!
//! One append-only file per cache, beside the mount's state, never inside the HF cache:
//!
//! ```text
//! header:  b"MLXKVIEW" | u32 format | u16 n | n bytes of mlxk's version
//! record:  u32 len | 32-byte key | 32-byte sha256 of payload | payload (len - 64 bytes)
//! payload: u32 n | sentinel | u8 flags (1: index, 2: original index differs) | u32 n | index
//! ```
//!
//! Nothing in it is trusted: a file with another header is started afresh; a record running
//! past the end (a crash mid-append) ends the file there and is cut off; a record whose
//! checksum fails is a miss, computed again and appended anew. The file is bounded: past
//! [`MAX_BYTES`] nothing more is appended, and the next mount starts it afresh.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::store::files::FileState;
use crate::store::spec::ResolvedModel;

use super::view::Virtuals;

const MAGIC: &[u8; 8] = b"MLXKVIEW";
const FORMAT: u32 = 1;
/// The largest the file grows (about 100,000 models' views); the next mount starts afresh.
pub const MAX_BYTES: u64 = 256 << 20;
/// A record's fixed part: its length, key and checksum.
const RECORD_HEAD: usize = 4 + 32 + 32;

pub type ViewKey = [u8; 32];

/// The on-disk cache of views' virtual files for one HF cache.
pub struct ViewCache {
    path: PathBuf,
    /// Opened and scanned at first use (a mount that lists nothing never reads it).
    state: OnceLock<Option<Mutex<Store>>>,
}

impl std::fmt::Debug for ViewCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCache")
            .field("path", &self.path)
            .finish()
    }
}

struct Store {
    file: File,
    /// Key -> (offset, length) of its latest record.
    records: HashMap<ViewKey, (u64, u32)>,
    end: u64,
}

impl ViewCache {
    /// The cache of views for the HF cache at `cache_root`, in directory `dir`.
    pub fn new(dir: &Path, cache_root: &Path) -> ViewCache {
        let root = fs::canonicalize(cache_root).unwrap_or_else(|_| cache_root.to_path_buf());
        let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        ViewCache {
            path: dir.join(format!("views-{name}.bin")),
            state: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn store(&self) -> Option<&Mutex<Store>> {
        self.state
            .get_or_init(|| match Store::open(&self.path) {
                Ok(s) => Some(Mutex::new(s)),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "view cache unusable, headers are read on every mount: {e}");
                    None
                }
            })
            .as_ref()
    }

    /// The virtual files stored under `key`, when a record for it is there and intact.
    pub fn get(&self, key: &ViewKey) -> Option<Virtuals> {
        let store = self.store()?.lock().unwrap_or_else(|p| p.into_inner());
        let &(offset, len) = store.records.get(key)?;
        let mut buf = vec![0u8; len as usize];
        store.file.read_exact_at(&mut buf, offset).ok()?;
        drop(store);
        let parsed = parse_record(&buf).filter(|(k, _)| k == key);
        if parsed.is_none() {
            tracing::warn!(path = %self.path.display(), offset, "view cache record damaged; computing it again");
        }
        parsed.map(|(_, v)| v)
    }

    /// Stores `v` under `key` (best effort: a full disk only costs the next mount a read).
    pub fn put(&self, key: &ViewKey, v: &Virtuals) {
        let Some(store) = self.store() else { return };
        let record = encode_record(key, v);
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        if store.end + record.len() as u64 > MAX_BYTES {
            return;
        }
        let offset = store.end;
        match store.file.write_all_at(&record, offset) {
            Ok(()) => {
                store.end += record.len() as u64;
                store.records.insert(*key, (offset, record.len() as u32));
            }
            Err(e) => {
                tracing::debug!("view cache append failed: {e}");
                // Whatever part landed is cut off when the file is next opened.
            }
        }
    }
}

impl Store {
    fn open(path: &Path) -> io::Result<Store> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // The daemon runs with umask 0: modes are explicit, this user's alone (another user
        // able to write it could make the mount show what they like).
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let header = header();
        let len = file.metadata()?.len();
        let mut head = vec![0u8; header.len()];
        let fresh = len > MAX_BYTES || file.read_exact_at(&mut head, 0).is_err() || head != header;
        if fresh {
            file.set_len(0)?;
            file.write_all_at(&header, 0)?;
            return Ok(Store {
                file,
                records: HashMap::new(),
                end: header.len() as u64,
            });
        }
        let bytes = {
            let mut b = vec![0u8; len as usize];
            file.read_exact_at(&mut b, 0)?;
            b
        };
        let mut records = HashMap::new();
        let mut at = header.len();
        // Lengths and keys only: a record's checksum is checked when it is read.
        while let Some(head) = bytes.get(at..at + RECORD_HEAD) {
            let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let total = 4 + n;
            if n < 64 || at + total > bytes.len() {
                break;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&head[4..36]);
            records.insert(key, (at as u64, total as u32));
            at += total;
        }
        if (at as u64) < len {
            // A record cut short by a crash, or garbage: dropped so that appends follow the
            // last whole record.
            file.set_len(at as u64)?;
        }
        Ok(Store {
            file,
            records,
            end: at as u64,
        })
    }
}

fn header() -> Vec<u8> {
    let version = crate::VERSION.as_bytes();
    let mut h = Vec::with_capacity(16 + version.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&(version.len() as u16).to_le_bytes());
    h.extend_from_slice(version);
    h
}

fn encode_record(key: &ViewKey, v: &Virtuals) -> Vec<u8> {
    let index: &[u8] = v.index.as_deref().unwrap_or(&[]);
    let mut payload = Vec::with_capacity(9 + v.sentinel.len() + index.len());
    payload.extend_from_slice(&(v.sentinel.len() as u32).to_le_bytes());
    payload.extend_from_slice(&v.sentinel);
    payload.push(u8::from(v.index.is_some()) | (u8::from(v.orig_index) << 1));
    payload.extend_from_slice(&(index.len() as u32).to_le_bytes());
    payload.extend_from_slice(index);
    let mut r = Vec::with_capacity(RECORD_HEAD + payload.len());
    r.extend_from_slice(&((64 + payload.len()) as u32).to_le_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&Sha256::digest(&payload));
    r.extend_from_slice(&payload);
    r
}

/// A whole record (from its length field on) -> its key and contents; `None` when anything
/// does not add up.
fn parse_record(r: &[u8]) -> Option<(ViewKey, Virtuals)> {
    let n = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
    if r.len() != 4 + n || n < 64 {
        return None;
    }
    let key: ViewKey = r[4..36].try_into().ok()?;
    let payload = &r[RECORD_HEAD..];
    if Sha256::digest(payload).as_slice() != &r[36..68] {
        return None;
    }
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = payload.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    let sentinel_len = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    let sentinel = take(&mut at, sentinel_len)?;
    let flags = *take(&mut at, 1)?.first()?;
    let index_len = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    let index = take(&mut at, index_len)?;
    if at != payload.len() || flags > 3 {
        return None;
    }
    Some((
        key,
        Virtuals {
            sentinel: Arc::from(sentinel),
            index: (flags & 1 != 0).then(|| Arc::from(index)),
            orig_index: flags & 2 != 0,
            bytes_read: 0,
        },
    ))
}

/// The key of a view of `model` shown with time `modified`: everything its virtual files are
/// computed from (see the module's comment).
pub fn key_of(model: &ResolvedModel, modified: SystemTime) -> ViewKey {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let time = |t: SystemTime| -> [u8; 12] {
        let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => (
                -(e.duration().as_secs() as i64),
                e.duration().subsec_nanos(),
            ),
        };
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&secs.to_le_bytes());
        b[8..].copy_from_slice(&nanos.to_le_bytes());
        b
    };
    field(crate::VERSION.as_bytes());
    field(model.repo_id().unwrap_or_default().as_bytes());
    field(model.snapshot_sha().unwrap_or_default().as_bytes());
    field(&time(modified));
    for f in &model.files {
        field(f.rel_path.as_bytes());
        field(f.path.as_os_str().as_encoded_bytes());
        match &f.state {
            FileState::Present {
                resolved,
                size,
                modified,
                mode,
            } => {
                field(b"present");
                field(resolved.as_os_str().as_encoded_bytes());
                field(&size.to_le_bytes());
                field(&time(*modified));
                field(&mode.to_le_bytes());
            }
            FileState::Missing { target, incomplete } => {
                field(b"missing");
                field(
                    target
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .as_os_str()
                        .as_encoded_bytes(),
                );
                field(&[u8::from(*incomplete)]);
            }
            FileState::EscapesCache { target } => {
                field(b"escapes");
                field(target.as_os_str().as_encoded_bytes());
            }
            FileState::NotRegular { what } => {
                field(b"not-regular");
                field(what.as_bytes());
            }
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn virtuals(tag: &str, index: bool, orig: bool) -> Virtuals {
        Virtuals {
            sentinel: Arc::from(format!("{{\"s\": \"{tag}\"}}\n").into_bytes()),
            index: index.then(|| Arc::from(format!("{{\"i\": \"{tag}\"}}").into_bytes())),
            orig_index: orig,
            bytes_read: 123,
        }
    }

    fn same(a: &Virtuals, b: &Virtuals) -> bool {
        a.sentinel == b.sentinel && a.index == b.index && a.orig_index == b.orig_index
    }

    fn key(n: u8) -> ViewKey {
        [n; 32]
    }

    #[test]
    fn records_survive_a_reopen_and_the_latest_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let c = ViewCache::new(dir.path(), Path::new("/nonexistent/hub"));
        assert!(c.get(&key(1)).is_none());
        c.put(&key(1), &virtuals("a", true, false));
        c.put(&key(2), &virtuals("b", false, false));
        c.put(&key(1), &virtuals("c", true, true));
        let c = ViewCache::new(dir.path(), Path::new("/nonexistent/hub"));
        let got = c.get(&key(1)).unwrap();
        assert!(same(&got, &virtuals("c", true, true)));
        assert_eq!(got.bytes_read, 0, "nothing was read from headers");
        assert!(same(&c.get(&key(2)).unwrap(), &virtuals("b", false, false)));
        assert!(c.get(&key(3)).is_none());
        // Another cache root is another file.
        let other = ViewCache::new(dir.path(), Path::new("/nonexistent/other"));
        assert_ne!(other.path(), c.path());
        assert!(other.get(&key(1)).is_none());
    }

    #[test]
    fn a_file_cut_short_keeps_its_whole_records_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/nonexistent/hub");
        let c = ViewCache::new(dir.path(), root);
        c.put(&key(1), &virtuals("a", true, false));
        c.put(&key(2), &virtuals("b", true, false));
        let path = c.path().to_path_buf();
        drop(c);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let c = ViewCache::new(dir.path(), root);
        assert!(same(&c.get(&key(1)).unwrap(), &virtuals("a", true, false)));
        assert!(c.get(&key(2)).is_none(), "a cut record was trusted");
        c.put(&key(3), &virtuals("d", false, false));
        let c = ViewCache::new(dir.path(), root);
        assert!(same(&c.get(&key(3)).unwrap(), &virtuals("d", false, false)));
        assert!(same(&c.get(&key(1)).unwrap(), &virtuals("a", true, false)));
    }

    #[test]
    fn a_damaged_record_or_a_foreign_file_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/nonexistent/hub");
        let c = ViewCache::new(dir.path(), root);
        c.put(&key(1), &virtuals("a", true, false));
        c.put(&key(2), &virtuals("b", true, false));
        let path = c.path().to_path_buf();
        drop(c);
        // One byte of the first record's sentinel flipped.
        let mut bytes = fs::read(&path).unwrap();
        let at = header().len() + RECORD_HEAD + 6;
        bytes[at] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let c = ViewCache::new(dir.path(), root);
        assert!(c.get(&key(1)).is_none(), "a damaged record was trusted");
        assert!(same(&c.get(&key(2)).unwrap(), &virtuals("b", true, false)));
        // Computed again and stored anew: the new record is the one read.
        c.put(&key(1), &virtuals("a", true, false));
        assert!(same(&c.get(&key(1)).unwrap(), &virtuals("a", true, false)));
        drop(c);
        // Another program's file (or another version's) is started afresh.
        fs::write(&path, b"not a view cache at all, just some bytes").unwrap();
        let c = ViewCache::new(dir.path(), root);
        assert!(c.get(&key(1)).is_none());
        c.put(&key(4), &virtuals("e", false, true));
        let c = ViewCache::new(dir.path(), root);
        assert!(same(&c.get(&key(4)).unwrap(), &virtuals("e", false, true)));
        assert!(fs::read(&path).unwrap().starts_with(&header()));
    }

    #[test]
    fn a_file_past_its_bound_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/nonexistent/hub");
        let c = ViewCache::new(dir.path(), root);
        c.put(&key(1), &virtuals("a", true, false));
        let path = c.path().to_path_buf();
        drop(c);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(MAX_BYTES + 1)
            .unwrap();
        let c = ViewCache::new(dir.path(), root);
        assert!(c.get(&key(1)).is_none());
        assert_eq!(fs::metadata(&path).unwrap().len(), header().len() as u64);
    }
}
