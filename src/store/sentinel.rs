//! `.mlxk_workspace.json`: the sentinel that makes a directory a managed workspace.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SENTINEL_FILE: &str = ".mlxk_workspace.json";

/// The sentinel's fields (mlx-knife's names). Unknown fields written by other versions are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentinel {
    pub mlxk_version: String,
    pub created_at: String,
    pub source_repo: Option<String>,
    pub source_revision: Option<String>,
    pub managed: bool,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `in_progress` while a convert is filling the directory; absent once it finished.
    /// A workspace left with it was interrupted and must not be mistaken for a complete one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert_state: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("{path}: cannot read the workspace sentinel: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid workspace sentinel: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: cannot write the workspace sentinel: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The largest sentinel read (they are a few hundred bytes).
const SENTINEL_MAX: u64 = 1 << 20;

impl Sentinel {
    /// A new managed sentinel stamped with this crate's version and the current time.
    pub fn new(
        operation: &str,
        mode: Option<&str>,
        source_repo: Option<String>,
        source_revision: Option<String>,
    ) -> Sentinel {
        Sentinel {
            mlxk_version: crate::VERSION.to_string(),
            created_at: iso8601(SystemTime::now()),
            source_repo,
            source_revision,
            managed: true,
            operation: operation.to_string(),
            mode: mode.map(str::to_string),
            convert_state: None,
            extra: Default::default(),
        }
    }

    /// Parses and validates sentinel bytes: a JSON object with the required fields.
    pub fn parse(bytes: &[u8]) -> Result<Sentinel, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
        if !value.is_object() {
            return Err("not a JSON object".into());
        }
        let s: Sentinel = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if s.operation.is_empty() {
            return Err("`operation` is empty".into());
        }
        Ok(s)
    }

    /// Reads the sentinel of `dir` (a regular file of at most 1 MiB); `Ok(None)` when there is
    /// none.
    pub fn read(dir: &Path) -> Result<Option<Sentinel>, SentinelError> {
        let path = dir.join(SENTINEL_FILE);
        let bytes = match super::files::read_small(&path, SENTINEL_MAX, &mut 0) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SentinelError::Read { path, source }),
        };
        Sentinel::parse(&bytes)
            .map(Some)
            .map_err(|reason| SentinelError::Invalid { path, reason })
    }

    /// The value of `convert_state` while a convert is still writing.
    pub const IN_PROGRESS: &'static str = "in_progress";

    pub fn is_incomplete(&self) -> bool {
        self.convert_state.as_deref() == Some(Self::IN_PROGRESS)
    }

    pub fn to_json_string(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut text = crate::store::index::to_python_json(&value);
        text.push('\n');
        text
    }

    /// Writes the sentinel into `dir` atomically: temp file in the same directory, fsync,
    /// rename, fsync of the directory. A crash leaves either no sentinel or a whole one.
    pub fn write_atomic(&self, dir: &Path) -> Result<(), SentinelError> {
        write_file_atomic(&dir.join(SENTINEL_FILE), self.to_json_string().as_bytes()).map_err(
            |source| SentinelError::Write {
                path: dir.join(SENTINEL_FILE),
                source,
            },
        )
    }
}

/// Replaces `path` with `bytes` atomically (same-directory temp file, fsync, rename, fsync dir).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // create_new: never clobber (or later remove) a file this call did not create.
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `2025-12-29T10:30:00Z`.
pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sentinel::new(
            "convert",
            Some("repair-index"),
            Some("a/b".into()),
            Some("abc".into()),
        );
        s.extra
            .insert("quantization".into(), serde_json::json!({"bits": 4}));
        s.write_atomic(dir.path()).unwrap();
        let back = Sentinel::read(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert!(
            back.created_at.ends_with('Z') && back.created_at.len() == 20,
            "{}",
            back.created_at
        );
        assert_eq!(back.mlxk_version, crate::VERSION);
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SENTINEL_FILE)]);
    }

    #[test]
    fn atomic_write_replaces_whole_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_file_atomic(&p, b"first").unwrap();
        write_file_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        // A temp file that cannot be created leaves the old content intact.
        let blocker = dir
            .path()
            .join(format!(".f.json.tmp-{}", std::process::id()));
        fs::write(&blocker, b"x").unwrap();
        assert!(write_file_atomic(&p, b"third").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::read(&blocker).unwrap(), b"x");
    }

    #[test]
    fn invalid_sentinels_are_explained() {
        assert!(Sentinel::parse(b"{")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(Sentinel::parse(b"[]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(Sentinel::parse(br#"{"managed": true}"#)
            .unwrap_err()
            .contains("missing field"));
        let dir = tempfile::tempdir().unwrap();
        assert!(Sentinel::read(dir.path()).unwrap().is_none());
        fs::write(dir.path().join(SENTINEL_FILE), b"{").unwrap();
        let e = Sentinel::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains(SENTINEL_FILE));
    }
}
