//! Output shards planned before a byte of tensor data is computed: every output tensor's size
//! is known from the source headers, so the shard split (mlx-lm's 5 GiB rule), the file names
//! and each tensor's offset are fixed up front. Headers are written first; tensor data is then
//! written at its offset, in any order, by any thread.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use super::ConvertError;

/// mlx-lm's `MAX_FILE_SIZE_GB = 5`, in bytes of tensor data per shard.
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn nbytes(&self) -> u64 {
        let elems: u64 = self.shape.iter().map(|&d| d as u64).product();
        elems * self.dtype.bitsize() as u64 / 8
    }
}

/// Where an output tensor's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub shard: usize,
    /// Absolute offset in the shard file.
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct PlannedShard {
    pub file_name: String,
    /// The header as written (`8 + N` bytes: the length, then the JSON padded to 8 bytes).
    header: Vec<u8>,
    pub data_len: u64,
}

impl PlannedShard {}

#[derive(Debug, Clone)]
pub struct ShardPlan {
    pub shards: Vec<PlannedShard>,
    pub locations: BTreeMap<String, Location>,
}

impl ShardPlan {
    /// Splits `tensors` (in name order) the way mlx-lm's `make_shards` does: a new shard when
    /// the next tensor would push the current one past `max_bytes` (a bigger tensor gets a
    /// shard of its own). Names: `model.safetensors`, else `model-0000i-of-0000N.safetensors`.
    pub fn new(tensors: &[OutTensor], max_bytes: u64) -> ShardPlan {
        let mut sorted: Vec<&OutTensor> = tensors.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut groups: Vec<(Vec<&OutTensor>, u64)> = Vec::new();
        for t in sorted {
            let n = t.nbytes();
            match groups.last_mut() {
                Some((members, size)) if *size + n <= max_bytes => {
                    members.push(t);
                    *size += n;
                }
                _ => groups.push((vec![t], n)),
            }
        }
        let count = groups.len();
        let mut shards = Vec::with_capacity(count);
        let mut locations = BTreeMap::new();
        for (i, (members, data_len)) in groups.into_iter().enumerate() {
            let file_name = if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
            };
            let mut header = Map::new();
            header.insert("__metadata__".into(), json!({"format": "mlx"}));
            let mut begin = 0u64;
            let mut relative = Vec::with_capacity(members.len());
            for t in &members {
                let end = begin + t.nbytes();
                header.insert(
                    t.name.clone(),
                    json!({
                        "dtype": dtype_name(t.dtype),
                        "shape": t.shape,
                        "data_offsets": [begin, end],
                    }),
                );
                relative.push((t.name.clone(), begin));
                begin = end;
            }
            let mut text = Value::Object(header).to_string().into_bytes();
            // Padded with spaces to 8 bytes (as the safetensors crate does) so that tensor
            // data of mapped files stays aligned.
            while !text.len().is_multiple_of(8) {
                text.push(b' ');
            }
            let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&text);
            let data_start = bytes.len() as u64;
            for (name, begin) in relative {
                locations.insert(
                    name,
                    Location {
                        shard: i,
                        offset: data_start + begin,
                    },
                );
            }
            shards.push(PlannedShard {
                file_name,
                header: bytes,
                data_len,
            });
        }
        ShardPlan { shards, locations }
    }

    pub fn data_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.data_len).sum()
    }
}

/// The open output shards.
pub struct ShardFiles {
    files: Vec<(PathBuf, File)>,
}

impl ShardFiles {
    /// Creates every shard file in `dir` (which must not hold them yet) and writes its header.
    pub fn create(dir: &Path, plan: &ShardPlan) -> Result<ShardFiles, ConvertError> {
        let mut files = Vec::with_capacity(plan.shards.len());
        for shard in &plan.shards {
            let path = dir.join(&shard.file_name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|source| ConvertError::Io {
                    path: path.clone(),
                    what: "cannot create the shard",
                    source,
                })?;
            file.write_all_at(&shard.header, 0)
                .map_err(|source| ConvertError::Io {
                    path: path.clone(),
                    what: "cannot write the shard header",
                    source,
                })?;
            files.push((path, file));
        }
        Ok(ShardFiles { files })
    }

    /// Writes `bytes` at `offset` of shard `shard`.
    pub fn write_at(&self, shard: usize, offset: u64, bytes: &[u8]) -> Result<(), ConvertError> {
        let (path, file) = &self.files[shard];
        file.write_all_at(bytes, offset)
            .map_err(|source| ConvertError::Io {
                path: path.clone(),
                what: "cannot write tensor data",
                source,
            })?;
        // Start writeback now, asynchronously, so the final fsync finds little left to do.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file descriptor this struct owns.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as libc::off64_t,
                    bytes.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(())
    }

    /// Flushes every shard to stable storage (the index is written after this).
    pub fn sync(&self) -> Result<(), ConvertError> {
        for (path, file) in &self.files {
            file.sync_all().map_err(|source| ConvertError::Io {
                path: path.clone(),
                what: "cannot flush the shard",
                source,
            })?;
        }
        Ok(())
    }
}

/// The header spelling of a dtype.
pub fn dtype_name(d: Dtype) -> String {
    // safetensors serializes its Dtype as the header spelling ("F16", "U32", ...).
    serde_json::to_value(d)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{d:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, bytes: usize) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![bytes],
        }
    }

    #[test]
    fn splits_like_mlx_lm_and_names_the_files() {
        let plan = ShardPlan::new(
            &[t("b", 40), t("a", 50), t("c", 200), t("e", 30), t("d", 10)],
            100,
        );
        let names: Vec<_> = plan.shards.iter().map(|s| s.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors"
            ]
        );
        // In name order: a+b = 90 fit; c (200) is bigger than a shard and gets its own; d+e.
        let sizes: Vec<u64> = plan.shards.iter().map(|s| s.data_len).collect();
        assert_eq!(sizes, [90, 200, 40]);
        assert_eq!(plan.locations["c"].shard, 1);
        assert_eq!(plan.locations["e"].offset, plan.locations["d"].offset + 10);
        let one = ShardPlan::new(&[t("x", 4)], MAX_SHARD_BYTES);
        assert_eq!(one.shards[0].file_name, "model.safetensors");
        assert_eq!(one.shards[0].header.len() % 8, 0);
        assert_eq!(dtype_name(Dtype::BF16), "BF16");
    }

    #[test]
    fn written_shards_parse_as_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = [
            OutTensor {
                name: "w".into(),
                dtype: Dtype::U32,
                shape: vec![2, 2],
            },
            OutTensor {
                name: "s".into(),
                dtype: Dtype::F16,
                shape: vec![3],
            },
        ];
        let plan = ShardPlan::new(&tensors, MAX_SHARD_BYTES);
        let files = ShardFiles::create(dir.path(), &plan).unwrap();
        let w = plan.locations["w"];
        files.write_at(w.shard, w.offset, &[7u8; 16]).unwrap();
        let s = plan.locations["s"];
        files.write_at(s.shard, s.offset, &[1u8; 6]).unwrap();
        files.sync().unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let planned = &plan.shards[0];
        assert_eq!(
            bytes.len() as u64,
            planned.header.len() as u64 + planned.data_len
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("w").unwrap().data(), &[7u8; 16]);
        assert_eq!(st.tensor("s").unwrap().dtype(), Dtype::F16);
    }
}
