//! Safetensors headers, read from the first `8 + N` bytes of a file and never from its data.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};

/// Upper bound for the JSON header; the reference implementation rejects anything larger.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// `end - begin` of its data offsets, already checked against dtype and shape.
    pub nbytes: u64,
    /// Where its data starts in the file (`8 + N + begin`), checked to lie inside it.
    pub offset: u64,
}

impl TensorMeta {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// The validated header of one safetensors file.
#[derive(Debug, Clone)]
pub struct ShardHeader {
    /// File name as it stands in the model directory (the index's vocabulary).
    pub file_name: String,
    /// `N`, the JSON header length.
    pub header_len: u64,
    /// Sorted by tensor name.
    pub tensors: BTreeMap<String, TensorMeta>,
    /// `__metadata__`, if present.
    pub metadata: BTreeMap<String, String>,
}

impl ShardHeader {
    /// Bytes that had to be read to obtain this header.
    pub fn bytes_read(&self) -> u64 {
        8 + self.header_len
    }

    /// Sum of the tensors' data bytes (what the index calls `total_size`).
    pub fn data_len(&self) -> u64 {
        self.tensors.values().map(|t| t.nbytes).sum()
    }

    /// `__metadata__.format`, e.g. `mlx` or `pt`.
    pub fn format(&self) -> Option<&str> {
        self.metadata.get("format").map(String::as_str)
    }
}

/// Why a header cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {len} bytes is too small for a safetensors file (the 8-byte header length alone is missing)")]
    TooSmall { path: PathBuf, len: u64 },
    #[error("{path}: header length {header_len} is absurd (limit {MAX_HEADER_LEN} bytes, file is {file_len} bytes)")]
    HeaderTooLarge {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{path}: header length {header_len} runs past the end of the {file_len}-byte file")]
    HeaderPastEnd {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{path}: corrupt header: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: truncated: tensor data ends at byte {expected_len} but the file has {file_len} bytes")]
    Truncated {
        path: PathBuf,
        expected_len: u64,
        file_len: u64,
    },
    #[error("{path}: {extra} unexpected bytes after the last tensor (file is {file_len} bytes, tensors end at {expected_len})")]
    TrailingBytes {
        path: PathBuf,
        extra: u64,
        expected_len: u64,
        file_len: u64,
    },
}

/// Reads and validates the header of the safetensors file at `path`.
///
/// `file_name` is how the file is known inside its model directory. Only `8 + N` bytes are
/// read; `N` is bounded before anything is allocated, and every offset is checked against the
/// file's size, so a truncated download is caught without touching its data.
pub fn read_header(path: &Path, file_name: &str) -> Result<ShardHeader, HeaderError> {
    read_header_counted(path, file_name, &mut 0)
}

/// [`read_header`], adding to `bytes_read` every byte it reads from the file, also when it
/// fails: the accounting that proves health and index rebuilds never touch tensor data.
pub fn read_header_counted(
    path: &Path,
    file_name: &str,
    bytes_read: &mut u64,
) -> Result<ShardHeader, HeaderError> {
    let io_err = |source| HeaderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = super::files::open_regular(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    if file_len < 8 {
        return Err(HeaderError::TooSmall {
            path: path.to_path_buf(),
            len: file_len,
        });
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(io_err)?;
    *bytes_read += 8;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    if 8 + header_len > file_len {
        return Err(HeaderError::HeaderPastEnd {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    // Bounded above by MAX_HEADER_LEN and by the file size, so the allocation is safe.
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json).map_err(io_err)?;
    *bytes_read += header_len;
    let header = parse_header_json(&json).map_err(|reason| HeaderError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    let data_len = header.data_len() as u64;
    let expected_len = 8 + header_len + data_len;
    if expected_len > file_len {
        return Err(HeaderError::Truncated {
            path: path.to_path_buf(),
            expected_len,
            file_len,
        });
    }
    if expected_len < file_len {
        return Err(HeaderError::TrailingBytes {
            path: path.to_path_buf(),
            extra: file_len - expected_len,
            expected_len,
            file_len,
        });
    }
    let tensors = header
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (begin, end) = info.data_offsets;
            let meta = TensorMeta {
                dtype: info.dtype,
                shape: info.shape.clone(),
                nbytes: (end - begin) as u64,
                offset: 8 + header_len + begin as u64,
            };
            (name, meta)
        })
        .collect();
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(ShardHeader {
        file_name: file_name.to_string(),
        header_len,
        tensors,
        metadata,
    })
}

/// Parses the JSON header with the safetensors crate, which checks dtypes, that shapes match
/// byte ranges and that the ranges are contiguous.
fn parse_header_json(json: &[u8]) -> Result<Metadata, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8 ({e})"))?;
    if !text.trim_start().starts_with('{') {
        return Err("header is not a JSON object".to_string());
    }
    // A JSON object keeps the last of two equal keys: a tensor listed twice would otherwise
    // surface as "trailing bytes" (its first range unaccounted for).
    let keys: TopLevelKeys = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(name) = keys.duplicates.first() {
        return Err(format!("tensor `{name}` is listed twice in the header"));
    }
    serde_json::from_str::<Metadata>(text).map_err(|e| e.to_string())
}

/// The keys of a JSON object that appear more than once (values skipped, not parsed).
struct TopLevelKeys {
    duplicates: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut duplicates = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(key.clone()) {
                        duplicates.push(key);
                    }
                }
                Ok(TopLevelKeys { duplicates })
            }
        }
        d.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn a_tensor_listed_twice_is_named_not_reported_as_trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        let p = dir.path().join("dup.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let e = read_header(&p, "dup.safetensors").unwrap_err();
        assert!(matches!(e, HeaderError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("tensor `a` is listed twice"), "{e}");
    }
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn file_with_header(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    #[test]
    fn reads_a_valid_header_and_counts_only_header_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"__metadata__":{"format":"mlx"},"b":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"a":{"dtype":"U32","shape":[4],"data_offsets":[12,28]}}"#;
        let p = write(dir.path(), "m.safetensors", &file_with_header(h, 28));
        let hdr = read_header(&p, "m.safetensors").unwrap();
        assert_eq!(hdr.tensors.len(), 2);
        assert_eq!(hdr.tensors["a"].nbytes, 16);
        assert_eq!(hdr.tensors["b"].shape, vec![2, 3]);
        assert_eq!(hdr.data_len(), 28);
        assert_eq!(hdr.format(), Some("mlx"));
        assert_eq!(hdr.bytes_read(), 8 + h.len() as u64);
        // BTreeMap: sorted names
        assert_eq!(hdr.tensors.keys().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn padded_headers_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}      "#;
        let p = write(dir.path(), "m.safetensors", &file_with_header(h, 4));
        assert!(read_header(&p, "m.safetensors").is_ok());
    }

    #[test]
    fn truncated_file_is_reported_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"a":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#;
        let p = write(dir.path(), "m.safetensors", &file_with_header(h, 100));
        let e = read_header(&p, "m.safetensors").unwrap_err();
        assert!(matches!(e, HeaderError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("m.safetensors"));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let p = write(dir.path(), "m.safetensors", &file_with_header(h, 9));
        let e = read_header(&p, "m.safetensors").unwrap_err();
        assert!(
            matches!(e, HeaderError::TrailingBytes { extra: 5, .. }),
            "{e}"
        );
    }

    #[test]
    fn absurd_header_length_is_rejected_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let p = write(dir.path(), "m.safetensors", &bytes);
        let e = read_header(&p, "m.safetensors").unwrap_err();
        assert!(matches!(e, HeaderError::HeaderTooLarge { .. }), "{e}");
        // just under the bound but past the end of the file
        let mut bytes = (MAX_HEADER_LEN - 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let p = write(dir.path(), "n.safetensors", &bytes);
        let e = read_header(&p, "n.safetensors").unwrap_err();
        assert!(matches!(e, HeaderError::HeaderPastEnd { .. }), "{e}");
    }

    #[test]
    fn corrupt_headers_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]"#, // bad JSON
            r#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#, // unknown dtype
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, // shape vs bytes
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, // gap
            r#"[1,2,3]"#,                                              // not an object
            r#"{"a":"X"}"#,                                            // not UTF-8 (patched below)
        ];
        for (i, h) in cases.iter().enumerate() {
            let mut bytes = file_with_header(h, 8);
            if i == 5 {
                let x = bytes.iter().position(|&b| b == b'X').unwrap();
                bytes[x] = 0xff;
            }
            let name = format!("c{i}.safetensors");
            let p = write(dir.path(), &name, &bytes);
            let e = read_header(&p, &name).unwrap_err();
            assert!(
                matches!(
                    e,
                    HeaderError::Corrupt { .. }
                        | HeaderError::Truncated { .. }
                        | HeaderError::TrailingBytes { .. }
                ),
                "case {i}: {e}"
            );
            assert!(e.to_string().contains(&name));
        }
    }

    #[test]
    fn tiny_file_is_too_small() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.safetensors", b"abc");
        assert!(matches!(
            read_header(&p, "m.safetensors").unwrap_err(),
            HeaderError::TooSmall { len: 3, .. }
        ));
    }
}
