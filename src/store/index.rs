//! `model.safetensors.index.json`: rebuilt from shard headers, parsed, and compared.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::QuantizationConfig;
use super::safetensors::ShardHeader;

/// File name of the index that loaders look for.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The index as mlx-lm writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightIndex {
    pub total_size: u64,
    /// Absent in indexes written by older tools.
    pub total_parameters: Option<u64>,
    /// Tensor name -> shard file name, sorted by name.
    pub weight_map: BTreeMap<String, String>,
}

/// Why an index cannot be rebuilt from a set of shards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    #[error("tensor `{tensor}` is stored in two shards: {first} and {second}")]
    DuplicateTensor {
        tensor: String,
        first: String,
        second: String,
    },
    #[error("no safetensors shards to index")]
    NoShards,
}

/// Rebuilds the index of a model from its shard headers, deterministically.
///
/// `total_size` is the sum of tensor data bytes (headers excluded), and `total_parameters`
/// counts what mlx-lm's `get_total_parameters` counts: a packed quantized weight stands for
/// `elements * 32 / bits` parameters and its `scales` / `biases` for none.
pub fn rebuild_index(
    shards: &[ShardHeader],
    quantization: Option<&QuantizationConfig>,
) -> Result<WeightIndex, RebuildError> {
    if shards.is_empty() {
        return Err(RebuildError::NoShards);
    }
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    for shard in shards {
        for name in shard.tensors.keys() {
            if let Some(first) = weight_map.insert(name.clone(), shard.file_name.clone()) {
                let (first, second) = ordered(first, shard.file_name.clone());
                return Err(RebuildError::DuplicateTensor {
                    tensor: name.clone(),
                    first,
                    second,
                });
            }
        }
    }
    let all: BTreeMap<&str, &super::safetensors::TensorMeta> = shards
        .iter()
        .flat_map(|s| s.tensors.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    let mut total_size = 0u64;
    let mut total_parameters = 0u64;
    for (&name, meta) in &all {
        total_size += meta.nbytes;
        total_parameters += parameter_count(name, meta, &all, quantization);
    }
    Ok(WeightIndex {
        total_size,
        total_parameters: Some(total_parameters),
        weight_map,
    })
}

fn ordered(a: String, b: String) -> (String, String) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The module a quantized tensor belongs to, if `name` is one of its quantization companions.
fn quantized_module<'a>(
    name: &'a str,
    all: &BTreeMap<&str, &super::safetensors::TensorMeta>,
) -> Option<&'a str> {
    let module = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".scales"))
        .or_else(|| name.strip_suffix(".biases"))?;
    let scales = format!("{module}.scales");
    all.contains_key(scales.as_str()).then_some(module)
}

fn parameter_count(
    name: &str,
    meta: &super::safetensors::TensorMeta,
    all: &BTreeMap<&str, &super::safetensors::TensorMeta>,
    quantization: Option<&QuantizationConfig>,
) -> u64 {
    let Some(module) = quantized_module(name, all) else {
        return meta.elements();
    };
    if !name.ends_with(".weight") {
        return 0; // scales and biases of a quantized layer
    }
    match quantization.and_then(|q| q.bits_for(module)) {
        Some(bits) if bits > 0 => meta.elements() * 32 / u64::from(bits),
        // A `.scales` sibling without a quantization block: count what is stored.
        _ => meta.elements(),
    }
}

impl WeightIndex {
    /// Serializes the index byte-for-byte as mlx-lm's `json.dump(..., indent=4)` does:
    /// 4-space indent, `": "` between key and value, ASCII only, no trailing newline.
    pub fn to_json_string(&self) -> String {
        let mut metadata = serde_json::Map::new();
        metadata.insert("total_size".into(), Value::from(self.total_size));
        if let Some(p) = self.total_parameters {
            metadata.insert("total_parameters".into(), Value::from(p));
        }
        let weight_map: serde_json::Map<String, Value> = self
            .weight_map
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut root = serde_json::Map::new();
        root.insert("metadata".into(), Value::Object(metadata));
        root.insert("weight_map".into(), Value::Object(weight_map));
        to_python_json(&Value::Object(root))
    }

    /// Parses an index file's bytes. Unknown metadata fields are ignored.
    pub fn parse(bytes: &[u8]) -> Result<WeightIndex, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = value.as_object().ok_or("not a JSON object")?;
        let map = obj
            .get("weight_map")
            .ok_or("no `weight_map`")?
            .as_object()
            .ok_or("`weight_map` is not an object")?;
        let mut weight_map = BTreeMap::new();
        for (k, v) in map {
            let shard = v
                .as_str()
                .ok_or_else(|| format!("`weight_map.{k}` is not a file name"))?;
            weight_map.insert(k.clone(), shard.to_string());
        }
        let metadata = obj.get("metadata").and_then(Value::as_object);
        let number = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_u64);
        Ok(WeightIndex {
            total_size: number("total_size").unwrap_or(0),
            total_parameters: number("total_parameters"),
            weight_map,
        })
    }

    /// The distinct shard file names the index refers to, sorted.
    pub fn shard_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.weight_map.values().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Pretty JSON in Python's `json.dumps(indent=4)` form (ensure_ascii included).
pub fn to_python_json(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing a Value into a Vec cannot fail.
    serde::Serialize::serialize(value, &mut ser).unwrap_or_default();
    let text = String::from_utf8(out).unwrap_or_default();
    escape_non_ascii(&text)
}

/// Non-ASCII can only stand inside JSON strings, where `\uXXXX` is equivalent.
fn escape_non_ascii(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// One way an on-disk index disagrees with the shards that are really there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexDifference {
    /// The index names a shard file that does not exist.
    ShardMissing { shard: String, keys: usize },
    /// A shard exists that the index does not name.
    ShardUnlisted { shard: String },
    /// A header key that the index lacks.
    KeyMissing { key: String, shard: String },
    /// An index key that no header has.
    KeyExtra { key: String, shard: String },
    /// A key the index places in another shard than the one holding it.
    KeyWrongShard {
        key: String,
        index_shard: String,
        actual_shard: String,
    },
    TotalSizeMismatch {
        on_disk: u64,
        rebuilt: u64,
        /// The on-disk value equals the sum of whole shard file sizes (older tools' convention).
        file_size_convention: bool,
    },
}

/// Lists every difference between an on-disk index and the one rebuilt from the headers.
///
/// `shard_file_sizes` (file name, size) lets a total that follows the file-size convention of
/// older tools be recognised as such instead of being called wrong.
pub fn compare(
    on_disk: &WeightIndex,
    rebuilt: &WeightIndex,
    shard_file_sizes: &[(String, u64)],
) -> Vec<IndexDifference> {
    let mut diffs = Vec::new();
    let actual_shards: Vec<&str> = rebuilt.shard_names();
    let named_shards = on_disk.shard_names();
    for shard in &named_shards {
        if !actual_shards.contains(shard) && !shard_file_sizes.iter().any(|(n, _)| n == shard) {
            let keys = on_disk.weight_map.values().filter(|s| s == shard).count();
            diffs.push(IndexDifference::ShardMissing {
                shard: shard.to_string(),
                keys,
            });
        }
    }
    for shard in &actual_shards {
        if !named_shards.contains(shard) {
            diffs.push(IndexDifference::ShardUnlisted {
                shard: shard.to_string(),
            });
        }
    }
    for (key, actual) in &rebuilt.weight_map {
        match on_disk.weight_map.get(key) {
            None => diffs.push(IndexDifference::KeyMissing {
                key: key.clone(),
                shard: actual.clone(),
            }),
            Some(named) if named != actual => diffs.push(IndexDifference::KeyWrongShard {
                key: key.clone(),
                index_shard: named.clone(),
                actual_shard: actual.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, shard) in &on_disk.weight_map {
        if !rebuilt.weight_map.contains_key(key) {
            diffs.push(IndexDifference::KeyExtra {
                key: key.clone(),
                shard: shard.clone(),
            });
        }
    }
    if on_disk.total_size != rebuilt.total_size {
        let file_sizes: u64 = shard_file_sizes.iter().map(|(_, s)| s).sum();
        diffs.push(IndexDifference::TotalSizeMismatch {
            on_disk: on_disk.total_size,
            rebuilt: rebuilt.total_size,
            file_size_convention: on_disk.total_size == file_sizes,
        });
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::safetensors::TensorMeta;
    use safetensors::Dtype;

    fn shard(name: &str, tensors: &[(&str, Dtype, &[usize])]) -> ShardHeader {
        let tensors = tensors
            .iter()
            .map(|(n, d, s)| {
                let elems: usize = s.iter().product();
                let meta = TensorMeta {
                    dtype: *d,
                    shape: s.to_vec(),
                    nbytes: (elems * d.bitsize() / 8) as u64,
                    offset: 0,
                };
                (n.to_string(), meta)
            })
            .collect();
        ShardHeader {
            file_name: name.into(),
            header_len: 100,
            tensors,
            metadata: Default::default(),
        }
    }

    #[test]
    fn rebuild_is_sorted_and_sums_data_bytes() {
        let a = shard(
            "model-00001-of-00002.safetensors",
            &[("z.weight", Dtype::F16, &[4, 4])],
        );
        let b = shard(
            "model-00002-of-00002.safetensors",
            &[("a.weight", Dtype::F32, &[3])],
        );
        let idx = rebuild_index(&[a, b], None).unwrap();
        assert_eq!(idx.total_size, 32 + 12);
        assert_eq!(idx.total_parameters, Some(16 + 3));
        assert_eq!(
            idx.weight_map.keys().collect::<Vec<_>>(),
            vec!["a.weight", "z.weight"]
        );
        // order of the input does not matter
        let a2 = shard(
            "model-00001-of-00002.safetensors",
            &[("z.weight", Dtype::F16, &[4, 4])],
        );
        let b2 = shard(
            "model-00002-of-00002.safetensors",
            &[("a.weight", Dtype::F32, &[3])],
        );
        assert_eq!(rebuild_index(&[b2, a2], None).unwrap(), idx);
    }

    #[test]
    fn quantized_weights_count_unpacked_parameters() {
        let q: QuantizationConfig = serde_json::from_str(
            r#"{"group_size": 64, "bits": 4, "l.1": {"group_size": 64, "bits": 8}}"#,
        )
        .unwrap();
        let s = shard(
            "model.safetensors",
            &[
                ("l.0.weight", Dtype::U32, &[8, 8]), // 64 u32 = 512 4-bit params
                ("l.0.scales", Dtype::F16, &[8, 1]),
                ("l.0.biases", Dtype::F16, &[8, 1]),
                ("l.0.bias", Dtype::F16, &[8]),
                ("l.1.weight", Dtype::U32, &[8, 16]), // 128 u32 = 512 8-bit params
                ("l.1.scales", Dtype::F16, &[8, 1]),
                ("l.1.biases", Dtype::F16, &[8, 1]),
                ("norm.weight", Dtype::F16, &[64]),
            ],
        );
        let idx = rebuild_index(&[s], Some(&q)).unwrap();
        assert_eq!(idx.total_parameters, Some(512 + 8 + 512 + 64));
    }

    #[test]
    fn a_key_in_two_shards_names_both() {
        let a = shard(
            "model-00002-of-00002.safetensors",
            &[("k", Dtype::F16, &[1])],
        );
        let b = shard(
            "model-00001-of-00002.safetensors",
            &[("k", Dtype::F16, &[1])],
        );
        let e = rebuild_index(&[a, b], None).unwrap_err();
        assert_eq!(
            e,
            RebuildError::DuplicateTensor {
                tensor: "k".into(),
                first: "model-00001-of-00002.safetensors".into(),
                second: "model-00002-of-00002.safetensors".into()
            }
        );
    }

    #[test]
    fn serializes_like_python_json_dump_indent_4() {
        let mut weight_map = BTreeMap::new();
        weight_map.insert("b".to_string(), "model.safetensors".to_string());
        weight_map.insert("a\u{e9}".to_string(), "model.safetensors".to_string());
        let idx = WeightIndex {
            total_size: 10,
            total_parameters: Some(5),
            weight_map,
        };
        let expected = "{\n    \"metadata\": {\n        \"total_size\": 10,\n        \"total_parameters\": 5\n    },\n    \"weight_map\": {\n        \"a\\u00e9\": \"model.safetensors\",\n        \"b\": \"model.safetensors\"\n    }\n}";
        assert_eq!(idx.to_json_string(), expected);
        assert_eq!(WeightIndex::parse(expected.as_bytes()).unwrap(), idx);
    }

    #[test]
    fn compare_lists_every_difference() {
        let rebuilt = rebuild_index(
            &[
                shard(
                    "model-00001-of-00002.safetensors",
                    &[("a", Dtype::F16, &[2]), ("b", Dtype::F16, &[2])],
                ),
                shard(
                    "model-00002-of-00002.safetensors",
                    &[("c", Dtype::F16, &[2])],
                ),
            ],
            None,
        )
        .unwrap();
        let mut on_disk = rebuilt.clone();
        on_disk.weight_map.remove("a");
        on_disk
            .weight_map
            .insert("b".into(), "model-00002-of-00002.safetensors".into());
        on_disk
            .weight_map
            .insert("x".into(), "model-00003-of-00003.safetensors".into());
        on_disk.weight_map.remove("c");
        on_disk.total_size = 999;
        let sizes = vec![
            ("model-00001-of-00002.safetensors".to_string(), 500),
            ("model-00002-of-00002.safetensors".to_string(), 499),
        ];
        let diffs = compare(&on_disk, &rebuilt, &sizes);
        assert!(diffs.contains(&IndexDifference::ShardMissing {
            shard: "model-00003-of-00003.safetensors".into(),
            keys: 1
        }));
        assert!(diffs.contains(&IndexDifference::ShardUnlisted {
            shard: "model-00001-of-00002.safetensors".into()
        }));
        assert!(diffs.contains(&IndexDifference::KeyMissing {
            key: "a".into(),
            shard: "model-00001-of-00002.safetensors".into()
        }));
        assert!(diffs.contains(&IndexDifference::KeyMissing {
            key: "c".into(),
            shard: "model-00002-of-00002.safetensors".into()
        }));
        assert!(diffs.contains(&IndexDifference::KeyWrongShard {
            key: "b".into(),
            index_shard: "model-00002-of-00002.safetensors".into(),
            actual_shard: "model-00001-of-00002.safetensors".into()
        }));
        assert!(diffs.contains(&IndexDifference::KeyExtra {
            key: "x".into(),
            shard: "model-00003-of-00003.safetensors".into()
        }));
        assert!(diffs.contains(&IndexDifference::TotalSizeMismatch {
            on_disk: 999,
            rebuilt: 12,
            file_size_convention: true
        }));
        assert_eq!(diffs.len(), 7);
        assert!(compare(&rebuilt, &rebuilt, &sizes).is_empty());
    }
}
