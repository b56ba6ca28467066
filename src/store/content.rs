//! A workspace's content identity, as mlx-knife's JSON API names it: `content_hash`
//! (`sha256:<hex>`, one hash over every file), taken when convert finishes, and whether the
//! workspace is still `clean` (unchanged since then).
//!
//! Hashing reads every byte, so `show` does not re-hash to answer `clean`: convert also records
//! a stat fingerprint (each file's path, size and mtime), and a workspace whose fingerprint
//! still matches is clean. `show --recalc-hash` hashes the content itself.

use std::collections::HashMap;
use std::io::{self, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::files::{open_regular, FileState, ModelFile};
use super::sentinel::{iso8601, Sentinel, SENTINEL_FILE};
use super::spec::ResolvedModel;

/// Sentinel keys (beside mlx-knife's own fields) holding what [`ContentStamp`] records.
pub const CONTENT_HASH_KEY: &str = "content_hash";
pub const HASH_MODIFIED_KEY: &str = "hash_modified";
pub const CONTENT_STAT_KEY: &str = "content_stat";

/// What a finished workspace records about its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentStamp {
    /// `sha256:` + the hex SHA-256 of the lines `<path>\0<sha256 of the file>\n`, in path order.
    pub content_hash: String,
    /// The hex SHA-256 of the lines `<path>\0<size>\0<mtime ns>\n`, in path order.
    pub content_stat: String,
}

/// The files that make up a workspace's content: all but the sentinel (which holds the stamp).
fn content_files<'a>(files: &'a [ModelFile]) -> impl Iterator<Item = &'a ModelFile> + 'a {
    files.iter().filter(|f| f.rel_path != SENTINEL_FILE)
}

/// Hashes every file of a workspace (`files` as `workspace_files` lists them, sorted by path).
/// A file that is missing or not a regular file is an error: such a workspace has no content
/// identity.
pub fn content_hash(files: &[ModelFile]) -> io::Result<String> {
    content_hash_known(files, &HashMap::new())
}

/// [`content_hash`], taking the sha256 of the files in `known` (by relative path) as given
/// instead of reading them; the others are hashed on all cores.
pub fn content_hash_known(
    files: &[ModelFile],
    known: &HashMap<String, String>,
) -> io::Result<String> {
    use rayon::prelude::*;
    let listed: Vec<&ModelFile> = content_files(files).collect();
    let digests: Vec<String> = listed
        .par_iter()
        .map(|f| match known.get(&f.rel_path) {
            Some(d) => Ok(d.clone()),
            None => file_sha256(f),
        })
        .collect::<io::Result<_>>()?;
    let mut all = Sha256::new();
    for (f, digest) in listed.iter().zip(&digests) {
        all.update(f.rel_path.as_bytes());
        all.update(b"\0");
        all.update(digest.as_bytes());
        all.update(b"\n");
    }
    Ok(format!("sha256:{}", hex(&all.finalize())))
}

fn file_sha256(f: &ModelFile) -> io::Result<String> {
    let Some(path) = f.readable() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is missing or not a regular file", f.rel_path),
        ));
    };
    let mut file = open_regular(path)?;
    let mut one = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        one.update(&buf[..n]);
    }
    Ok(hex(&one.finalize()))
}

/// The sha256 of a model's files that a cache already names: an LFS blob's name is the sha256
/// of its content (the hub's etag, verified when `mlxk pull` downloaded it; a blob whose bytes
/// no longer match its name is a corrupt cache, which this trusts as every cache reader does). A byte-for-byte
/// copy of such a file (convert's reflinks) has that digest without being read again.
pub fn known_digests(model: &ResolvedModel) -> HashMap<String, String> {
    model
        .files
        .iter()
        .filter_map(|f| {
            let FileState::Present { resolved, .. } = &f.state else {
                return None;
            };
            // A blob of a cache: `<repo>/blobs/<sha256>` (a snapshot's link, or a directory of
            // links into a cache given as a path).
            if resolved.parent()?.file_name()? != "blobs" {
                return None;
            }
            let name = resolved.file_name()?.to_str()?;
            let sha256 = name.len() == 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            sha256.then(|| (f.rel_path.clone(), name.to_string()))
        })
        .collect()
}

/// The stat fingerprint of a workspace's files: cheap (no content read), and changed by any
/// write, truncation, replacement, addition or removal of a file.
pub fn content_stat(files: &[ModelFile]) -> String {
    let mut all = Sha256::new();
    for f in content_files(files) {
        let line = match &f.state {
            FileState::Present { size, modified, .. } => {
                let ns = modified
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{}\0{size}\0{ns}\n", f.rel_path)
            }
            _ => format!("{}\0absent\n", f.rel_path),
        };
        all.update(line.as_bytes());
    }
    hex(&all.finalize())
}

/// Hashes and fingerprints a workspace's files.
pub fn stamp(files: &[ModelFile]) -> io::Result<ContentStamp> {
    stamp_known(files, &HashMap::new())
}

/// [`stamp`] with the digests of `known` files taken as given (see [`known_digests`]).
pub fn stamp_known(
    files: &[ModelFile],
    known: &HashMap<String, String>,
) -> io::Result<ContentStamp> {
    Ok(ContentStamp {
        content_hash: content_hash_known(files, known)?,
        content_stat: content_stat(files),
    })
}

impl Sentinel {
    /// Records `stamp` (and the time it was taken) in the sentinel.
    pub fn record_content(&mut self, stamp: &ContentStamp) {
        self.extra
            .insert(CONTENT_HASH_KEY.into(), stamp.content_hash.clone().into());
        self.extra
            .insert(HASH_MODIFIED_KEY.into(), iso8601(SystemTime::now()).into());
        self.extra
            .insert(CONTENT_STAT_KEY.into(), stamp.content_stat.clone().into());
    }

    /// The recorded content hash, in either of the forms the schema admits (`sha256:<hex>` or
    /// a bare 64-hex v1 hash); anything else is ignored.
    pub fn content_hash(&self) -> Option<&str> {
        let h = self.extra.get(CONTENT_HASH_KEY)?.as_str()?;
        let hex_part = h.strip_prefix("sha256:").unwrap_or(h);
        let valid = hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then_some(h)
    }

    pub fn hash_modified(&self) -> Option<&str> {
        self.extra.get(HASH_MODIFIED_KEY)?.as_str()
    }

    /// Whether the workspace is unchanged since its content was recorded, judged by the stat
    /// fingerprint; `None` when the sentinel recorded none (a workspace of another tool, or one
    /// written before content stamps).
    pub fn clean(&self, files: &[ModelFile]) -> Option<bool> {
        let recorded = self.extra.get(CONTENT_STAT_KEY)?.as_str()?;
        Some(recorded == content_stat(files))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::workspace_files;

    #[test]
    fn the_hash_covers_names_and_content_and_the_stat_sees_every_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"a").unwrap();
        std::fs::write(dir.path().join(SENTINEL_FILE), b"{}").unwrap();
        let files = workspace_files(dir.path()).unwrap();
        let first = stamp(&files).unwrap();
        assert!(first.content_hash.starts_with("sha256:"));
        assert_eq!(first.content_hash.len(), 7 + 64);

        // The sentinel is not content.
        std::fs::write(dir.path().join(SENTINEL_FILE), b"{\"x\": 1}").unwrap();
        let files = workspace_files(dir.path()).unwrap();
        assert_eq!(stamp(&files).unwrap(), first);

        // A renamed file changes the hash though the bytes are the same.
        std::fs::rename(dir.path().join("sub/a.txt"), dir.path().join("sub/b.txt")).unwrap();
        let files = workspace_files(dir.path()).unwrap();
        let renamed = stamp(&files).unwrap();
        assert_ne!(renamed.content_hash, first.content_hash);
        assert_ne!(renamed.content_stat, first.content_stat);

        // Same size, other bytes, mtime restored: the hash sees it (the stat cannot).
        let meta = std::fs::metadata(dir.path().join("config.json")).unwrap();
        std::fs::write(dir.path().join("config.json"), b"[]").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("config.json"))
            .unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
        let files = workspace_files(dir.path()).unwrap();
        let edited = stamp(&files).unwrap();
        assert_ne!(edited.content_hash, renamed.content_hash);
        assert_eq!(edited.content_stat, renamed.content_stat);
    }

    #[test]
    fn the_sentinel_answers_clean_from_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let files = workspace_files(dir.path()).unwrap();
        let mut s = Sentinel::new("convert", None, None, None);
        assert_eq!(s.clean(&files), None);
        assert_eq!(s.content_hash(), None);
        s.record_content(&stamp(&files).unwrap());
        assert_eq!(s.clean(&files), Some(true));
        assert!(s.content_hash().unwrap().starts_with("sha256:"));
        std::fs::write(dir.path().join("extra.txt"), b"x").unwrap();
        let files = workspace_files(dir.path()).unwrap();
        assert_eq!(s.clean(&files), Some(false));
        // A malformed recorded hash is not passed on.
        s.extra.insert(CONTENT_HASH_KEY.into(), "md5:abc".into());
        assert_eq!(s.content_hash(), None);
    }
}
